"""The monitoring tier's rendered configs pass the real tools, and every alert rule is tested.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages,
extracted into .tools/bin by tools/setup.sh (`make setup`); without them these tests skip.
tests/unit/data/alert_rules_test.yml holds, for every alert, a non-firing case (a healthy
cluster) and a firing one; `promtool test rules` runs it against the rendered rules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components import monitoring

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
RULE_TESTS = Path(__file__).parent / "data" / "alert_rules_test.yml"


def _tool(name: str) -> str:
    found = TOOLS / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.skip(f"{name} is missing: `make setup` puts Debian's into .tools/bin")
    return on_path


def _files(engine, node: str = "node-a") -> dict[str, str]:
    (step,) = [s for s in engine.steps() if s.step == "monitoring" and s.node == node]
    return {path: content for path, _, _, content in step.files}


@pytest.fixture(scope="module")
def local():
    from tests.conftest import stack_values
    from tools.engine import Engine, run_program

    engine = Engine()
    run_program(stack_values("local"), engine, "local")
    return engine


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_config_and_rules(local, tmp_path) -> None:
    promtool = _tool("promtool")
    files = _files(local)
    rules = tmp_path / "airflow-ha-rules.yml"
    rules.write_text(files[monitoring.RULES_FILE])
    config = tmp_path / "prometheus.yml"
    config.write_text(
        files[monitoring.PROMETHEUS_CONFIG].replace(monitoring.RULES_FILE, str(rules))
    )
    result = _run(promtool, "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    result = _run(promtool, "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_rule_passes_its_promtool_tests(local, tmp_path) -> None:
    promtool = _tool("promtool")
    (tmp_path / "airflow-ha-rules.yml").write_text(_files(local)[monitoring.RULES_FILE])
    shutil.copy(RULE_TESTS, tmp_path / "tests.yml")
    result = _run(promtool, "test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_non_firing_case(local) -> None:
    rules = yaml.safe_load(_files(local)[monitoring.RULES_FILE])
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    cases = [
        c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]
    ]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts == firing, f"without a firing case: {alerts - firing}; unknown: {firing - alerts}"
    assert alerts == quiet, f"without a non-firing case: {alerts - quiet}"


def test_every_alert_links_its_runbook_section(local) -> None:
    rules = yaml.safe_load(_files(local)[monitoring.RULES_FILE])
    runbook = (REPO / "docs" / "operations.md").read_text().lower()
    for group in rules["groups"]:
        for rule in group["rules"]:
            anchor = rule["alert"].lower()
            assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{anchor}"
            assert f"\n#### {anchor}\n" in runbook, (
                f"docs/operations.md has no #### {rule['alert']}"
            )


def test_amtool_accepts_the_config_with_and_without_receivers(values, deploy, tmp_path) -> None:
    amtool = _tool("amtool")
    receivers = [
        {"name": "ops-hook", "kind": "webhook"},
        {"name": "ops-chat", "kind": "slack", "channel": "#alerts"},
        {
            "name": "ops-mail",
            "kind": "email",
            "to": "ops@example.com",
            "from": "airflow@example.com",
            "smarthost": "smtp.example.com:587",
            "authUsername": "airflow",
        },
    ]
    secrets = (
        '{"ops-hook": "https://hooks.example.com/a?token=x", '
        '"ops-chat": "https://hooks.slack.com/services/T/B/C", "ops-mail": "pw\\"; x"}'
    )
    stacks = {
        "none": values("local"),
        "all": values("local", alertReceivers=receivers, alertReceiverSecrets=secrets),
    }
    for name, config in stacks.items():
        engine, _ = deploy(config, stack="local")
        text = _files(engine)[monitoring.ALERTMANAGER_CONFIG]
        path = tmp_path / f"{name}.yml"
        path.write_text(text)
        result = _run(amtool, "check-config", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        parsed = yaml.safe_load(text)
        assert parsed["route"]["receiver"] == "null"
        if name == "all":
            by_name = {r["name"]: r for r in parsed["receivers"]}
            assert by_name["ops-hook"]["webhook_configs"][0]["url"].endswith("token=x")
            assert by_name["ops-mail"]["email_configs"][0]["auth_password"] == 'pw"; x'
            routed = [r["receiver"] for r in parsed["route"]["routes"]]
            assert routed == ["ops-hook", "ops-chat", "ops-mail"]
