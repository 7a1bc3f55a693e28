"""The shared, read-only Debian 13 base image every machine's overlay sits on.

Built once with debootstrap into ``BASE_DIR`` and reused; rebuilt only when it is missing or when
the recipe recorded inside it differs from the recipe this code would build now.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .machines import BASE_DIR, CACHE_DIR
from .util import LocalCloudError, log, run

RECIPE_VERSION = 1
RECIPE_FILE = "etc/airflow-ha-localcloud-recipe"
SUITE = "trixie"
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "openssh-server",
    "python3",
    "ca-certificates",
    "curl",
    "gnupg",
    "debian-archive-keyring",
    "iputils-ping",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")

APT_PIN_NO_KERNEL = """\
# Containers have no kernel of their own: never let a Recommends pull one in
# (wireguard-tools recommends wireguard-modules, provided only by linux-image-*).
Package: linux-image-* initramfs-tools*
Pin: release *
Pin-Priority: -1
"""

SSHD_CONFIG = """\
# airflow-ha localcloud: root logs in with the tool's key only.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the base image's content."""

    version: int
    suite: str
    packages: tuple[str, ...]
    mirror: str
    components: tuple[str, ...]
    security_mirror: str | None
    nameservers: tuple[str, ...]
    ca_certificates: tuple[tuple[str, str], ...]  # (relative path, sha256)

    @property
    def ident(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"v{self.version}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8")
    except OSError:
        return ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.MULTILINE)
    return match.group(1) if match else ""


def _apt_entries() -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every ``deb`` source configured on the host."""
    entries: list[tuple[str, list[str], list[str]]] = []
    files = [Path("/etc/apt/sources.list")]
    source_dir = Path("/etc/apt/sources.list.d")
    if source_dir.is_dir():
        files += sorted(source_dir.iterdir())
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                key = ""
                for line in stanza.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    if line[0].isspace() and key:
                        fields[key] += " " + line.strip()
                        continue
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    suites = fields.get("suites", "").split()
                    entries.append((uri, suites, fields.get("components", "").split()))
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb":
                    entries.append((line[1], [line[2]], line[3:]))
    return entries


def _host_mirrors() -> tuple[str, tuple[str, ...], str | None]:
    """The host's Debian mirror, its components and its security mirror (if any)."""
    codename = _host_codename()
    mirror, components, security = DEFAULT_MIRROR, ("main",), None
    found_main = False
    for uri, suites, comps in _apt_entries():
        uri = uri.rstrip("/")
        if any(s.endswith("-security") or s.endswith("/updates") for s in suites):
            if security is None and "debian" in uri:
                security = uri
        elif not found_main and codename and codename in suites:
            mirror, components, found_main = uri, tuple(comps) or ("main",), True
    if security is None and mirror == DEFAULT_MIRROR:
        security = DEFAULT_SECURITY_MIRROR
    return mirror, components, security


def _host_nameservers() -> tuple[str, ...]:
    servers: list[str] = []
    try:
        text = Path("/etc/resolv.conf").read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalCloudError(f"cannot read the host's /etc/resolv.conf: {exc}") from exc
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            servers.append(parts[1])
    usable = tuple(s for s in servers if not s.startswith("127.") and s != "::1")
    if not usable:
        raise LocalCloudError(
            "the host's /etc/resolv.conf names no non-loopback nameserver the machines could use"
        )
    return usable


def _host_ca_files() -> list[Path]:
    if not HOST_CA_DIR.is_dir():
        return []
    return sorted(p for p in HOST_CA_DIR.rglob("*.crt") if p.is_file())


def current_recipe() -> Recipe:
    mirror, components, security = _host_mirrors()
    cas = tuple(
        (str(p.relative_to(HOST_CA_DIR)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in _host_ca_files()
    )
    return Recipe(
        version=RECIPE_VERSION,
        suite=SUITE,
        packages=PACKAGES,
        mirror=mirror,
        components=components,
        security_mirror=security,
        nameservers=_host_nameservers(),
        ca_certificates=cas,
    )


def installed_recipe(base: Path = BASE_DIR) -> str | None:
    """The recipe ident recorded in the cached base, or None when there is no usable base."""
    try:
        return (base / RECIPE_FILE).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def _sources(recipe: Recipe) -> str:
    comps = " ".join(recipe.components)
    text = (
        f"Types: deb\nURIs: {recipe.mirror}\nSuites: {recipe.suite} {recipe.suite}-updates\n"
        f"Components: {comps}\nSigned-By: {KEYRING}\n"
    )
    if recipe.security_mirror:
        text += (
            f"\nTypes: deb\nURIs: {recipe.security_mirror}\nSuites: {recipe.suite}-security\n"
            f"Components: {comps}\nSigned-By: {KEYRING}\n"
        )
    return text


def _write(root: Path, relative: str, content: str, mode: int = 0o644) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(content, encoding="utf-8")
    os.chmod(path, mode)


def _chroot(root: Path, *argv: str) -> None:
    run(["chroot", str(root), *argv], env=CHROOT_ENV)


def _configure(root: Path, recipe: Recipe) -> None:
    """Turn a fresh debootstrap tree into the machines' shared base."""
    for stale in (root / "etc/apt/sources.list",):
        if stale.exists():
            stale.unlink()
    _write(root, "etc/apt/sources.list.d/debian.sources", _sources(recipe))
    _write(root, "etc/apt/preferences.d/airflow-ha-no-kernel", APT_PIN_NO_KERNEL)

    for source in _host_ca_files():
        target = root / "usr/local/share/ca-certificates" / source.relative_to(HOST_CA_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        os.chmod(target, 0o644)
    _chroot(root, "update-ca-certificates")

    _write(root, "etc/ssh/sshd_config.d/10-airflow-ha-localcloud.conf", SSHD_CONFIG)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every machine gets its own host keys when its disk is created

    _chroot(root, "systemctl", "--root=/", "enable", "systemd-networkd.service")

    resolv = "".join(f"nameserver {ns}\n" for ns in recipe.nameservers)
    _write(root, "etc/resolv.conf", resolv)
    _write(root, "etc/hostname", "localhost\n")
    _write(root, "etc/machine-id", "")  # each machine's disk gets its own id
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()

    _chroot(root, "apt-get", "clean")
    lists = root / "var/lib/apt/lists"
    for entry in lists.iterdir() if lists.is_dir() else ():
        if entry.is_file() and entry.name != "lock":
            entry.unlink()

    details = json.dumps(asdict(recipe), indent=2, sort_keys=True)
    _write(root, RECIPE_FILE, f"{recipe.ident}\n{details}\n")


def build(recipe: Recipe, base: Path = BASE_DIR) -> float:
    """Build the base image for ``recipe`` into ``base`` (replacing any old one); return seconds."""
    if not Path(KEYRING).exists():
        raise LocalCloudError(f"{KEYRING} missing: apt-get install -y debian-archive-keyring")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = base.with_name(base.name + ".build")
    if work.exists():
        shutil.rmtree(work)
    log_path = base.with_name(base.name + ".build.log")
    log(f"building base image {recipe.ident} with debootstrap {recipe.suite} from {recipe.mirror}")
    log(f"  (about 2 minutes; log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as log_file:
        result = subprocess.run(
            [
                "debootstrap",
                f"--include={','.join(recipe.packages)}",
                f"--components={','.join(recipe.components)}",
                f"--keyring={KEYRING}",
                recipe.suite,
                str(work),
                recipe.mirror,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**CHROOT_ENV},
            check=False,
        )
    if result.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise LocalCloudError(
            f"debootstrap failed (exit {result.returncode}); last lines of {log_path}:\n"
            + "\n".join(tail)
        )
    _configure(work, recipe)
    if base.exists():
        old = base.with_name(base.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        base.rename(old)
        shutil.rmtree(old)
    work.rename(base)
    seconds = time.monotonic() - started
    log(f"base image ready in {seconds:.0f}s: {base}")
    return seconds
