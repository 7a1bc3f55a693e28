"""The broker tier: one RabbitMQ cluster over all nodes, on the mesh only, secrets kept secret."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess

import pulumi
import pytest

from components import broker
from components.config import NAMESPACE, parse_config
from tests.conftest import stack_values
from tools.engine import Engine, Step, run_program

NODES = ["node-a", "node-b", "node-c"]
BROKER_STEPS = ("rabbitmq-install", "rabbitmq-cluster", "rabbitmq-users", "rabbitmq-check")
CONF_LINE = re.compile(r"^(?P<key>[a-z][a-z0-9_]*(\.[A-Za-z0-9_$-]+)*) = (?P<value>\S.*)$")


def _steps(engine: Engine, name: str) -> dict[str, Step]:
    return {s.node: s for s in engine.steps() if s.step == name}


def _file(step: Step, path: str) -> str:
    (content,) = [c for p, _, _, c in step.files if p == path]
    return content


FORMATION = "/etc/rabbitmq/conf.d/10-airflow-ha-cluster-formation.conf"


def parse_rabbitmq_conf(text: str) -> dict[str, str]:
    """rabbitmq.conf (sysctl-like `key = value`): every line a comment, blank or a setting."""
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = CONF_LINE.match(line)
        assert match, f"line {number} is not `key = value`: {line!r}"
        assert match["key"] not in settings, f"{match['key']} set twice"
        settings[match["key"]] = match["value"]
    return settings


def _mesh(outputs: dict) -> dict[str, str]:
    return {name: node["meshAddress"] for name, node in outputs["nodes"].items()}


@pytest.fixture(scope="module")
def local() -> tuple[Engine, dict]:
    """The local stack (consumer timeout 2 h) under the engine double, once for this module."""
    config = stack_values("local") | {"rabbitmqConsumerTimeoutMs": 7_200_000}
    engine = Engine()
    return engine, run_program(config, engine, "local")


def test_every_node_gets_every_broker_step_and_users_are_made_once(local) -> None:
    engine, _ = local
    for name in ("rabbitmq-install", "rabbitmq-cluster", "rabbitmq-check"):
        assert sorted(_steps(engine, name)) == NODES
    assert list(_steps(engine, "rabbitmq-users")) == ["node-a"]


def test_rabbitmq_conf_listens_on_the_mesh_and_lists_the_whole_cluster(local) -> None:
    engine, outputs = local
    mesh = _mesh(outputs)
    for node, step in _steps(engine, "rabbitmq-install").items():
        conf = parse_rabbitmq_conf(_file(step, "/etc/rabbitmq/rabbitmq.conf"))
        # The peer list in conf.d (read after rabbitmq.conf): its change restarts nothing.
        formation = parse_rabbitmq_conf(_file(step, FORMATION))
        assert not set(conf) & set(formation)
        assert all(k.startswith("cluster_formation.") for k in formation)
        conf |= formation
        assert conf["listeners.tcp.1"] == f"{mesh[node]}:5672"
        assert not any(k.startswith(("listeners.ssl", "listeners.tcp.default")) for k in conf)
        assert conf["management.tcp.ip"] == mesh[node]
        assert conf["management.tcp.port"] == "15672"
        assert conf["cluster_formation.peer_discovery_backend"] == "classic_config"
        prefix = "cluster_formation.classic_config.nodes."
        listed = sorted(v for k, v in conf.items() if k.startswith(prefix))
        assert listed == [f"rabbit@{n}" for n in NODES]
        assert conf["cluster_partition_handling"] == "pause_minority"
        assert conf["consumer_timeout"] == "7200000"
        assert conf["cluster_name"] == "airflow-ha-local"
        assert not any(v.startswith(("0.0.0.0", "::")) for v in conf.values())


def test_rabbitmq_conf_defaults_consumer_timeout_to_one_day(values, deploy) -> None:
    engine, _ = deploy(values("dev"))
    for step in _steps(engine, "rabbitmq-install").values():
        conf = parse_rabbitmq_conf(_file(step, "/etc/rabbitmq/rabbitmq.conf"))
        assert conf["consumer_timeout"] == str(24 * 3600 * 1000)
        formation = parse_rabbitmq_conf(_file(step, FORMATION))
        assert formation["cluster_formation.classic_config.nodes.1"] == "rabbit@fsn"


def _source_env(path, tmp_path) -> dict[str, str]:
    """Source rabbitmq-env.conf with POSIX sh, as /usr/lib/rabbitmq/bin/rabbitmq-env does."""
    names = ("NODENAME", "NODE_IP_ADDRESS", "NODE_PORT", "DIST_PORT", "USE_LONGNAME",
             "SERVER_ADDITIONAL_ERL_ARGS", "CTL_ERL_ARGS", "ERL_EPMD_ADDRESS")
    script = f". {path}\n" + "".join(f'printf "%s=%s\\n" {n} "${n}"\n' for n in names)
    result = subprocess.run(["sh", "-eu", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_erlang_distribution_and_epmd_listen_on_the_mesh_only(local, tmp_path) -> None:
    engine, outputs = local
    mesh = _mesh(outputs)
    for node, step in _steps(engine, "rabbitmq-install").items():
        path = tmp_path / f"{node}-rabbitmq-env.conf"
        path.write_text(_file(step, "/etc/rabbitmq/rabbitmq-env.conf"))
        env = _source_env(path, tmp_path)
        tuple_ = "{" + mesh[node].replace(".", ",") + "}"
        assert env["NODENAME"] == f"rabbit@{node}"
        assert env["USE_LONGNAME"] == "false"
        assert env["NODE_IP_ADDRESS"] == mesh[node] and env["NODE_PORT"] == "5672"
        assert env["DIST_PORT"] == "25672"
        assert env["SERVER_ADDITIONAL_ERL_ARGS"] == f"-kernel inet_dist_use_interface {tuple_}"
        assert env["CTL_ERL_ARGS"] == f"-kernel inet_dist_use_interface {tuple_}"
        assert env["ERL_EPMD_ADDRESS"] == mesh[node]

        socket = _file(step, "/etc/systemd/system/epmd.socket.d/airflow-ha.conf")
        lines = socket.splitlines()
        listen = [line.partition("=")[2] for line in lines if line.startswith("ListenStream=")]
        # The empty assignment first drops the packaged ListenStream=4369 (every address).
        assert listen == ["", "127.0.0.1:4369", f"{mesh[node]}:4369"]
        assert "FreeBind=true" in socket.splitlines()

        unit = _file(step, "/etc/systemd/system/rabbitmq-server.service.d/airflow-ha.conf")
        assert "After=wg-quick@wg0.service epmd.socket" in unit.splitlines()
        assert _file(step, "/etc/rabbitmq/enabled_plugins").strip() == (
            "[rabbitmq_management,rabbitmq_prometheus]."
        )
        conf = _file(step, "/etc/rabbitmq/rabbitmq.conf").splitlines()
        # The metrics endpoint on the mesh only, like the management UI.
        assert f"prometheus.tcp.ip = {mesh[node]}" in conf
        assert "prometheus.tcp.port = 15692" in conf


def test_cookie_and_password_are_secrets_and_only_in_their_steps(local) -> None:
    engine, _ = local
    cookie = engine.secret_value("rabbitmq-erlang-cookie", "password", {"length": 48})
    password = engine.secret_value("rabbitmq-airflow-password", "password", {"length": 32})
    commands = {c.name: c for c in engine.of_type("command:remote:Command")}
    for node in NODES:
        cluster = commands[f"{node}-rabbitmq-cluster"]
        assert f"cookie={shlex.quote(cookie)}" in cluster.inputs["stdin"]
        assert "stdin" in cluster.secret_inputs
        for step in ("rabbitmq-install", "rabbitmq-check"):
            command = commands[f"{node}-{step}"]
            assert cookie not in command.inputs["stdin"] and password not in command.inputs["stdin"]
    users = commands["node-a-rabbitmq-users"]
    assert f"password={shlex.quote(password)}" in users.inputs["stdin"]
    assert "stdin" in users.secret_inputs
    # The password goes to rabbitmqctl on stdin, never as an argument.
    assert re.search(r"rabbitmqctl add_user \"\$user\" *>", users.inputs["stdin"])
    assert "$password\" | rabbitmqctl change_password \"$user\" >" in users.inputs["stdin"]
    # One cookie, the same on every node.
    assert all(cookie in commands[f"{n}-rabbitmq-cluster"].inputs["stdin"] for n in NODES)


def test_users_step_never_pipes_rabbitmqctl_into_grep_q(local) -> None:
    engine, _ = local
    script = _steps(engine, "rabbitmq-users")["node-a"].script
    # The vhost (quorum by default), the permissions and guest's removal are in the render
    # snapshots. rabbitmqctl never feeds `grep -q` directly (pipefail would fail on its EPIPE).
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"rabbitmqctl[^\n|]*\|\s*grep -q", code)


def test_step_scripts_pass_bash_and_shellcheck(local, tmp_path) -> None:
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is missing: apt-get install shellcheck")
    engine, _ = local
    for step in engine.steps():
        if step.step not in BROKER_STEPS:
            continue
        path = tmp_path / f"{step.node}-{step.step}.sh"
        path.write_text(step.script)
        syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{step.node} {step.step}: {syntax.stderr}"
        lint = subprocess.run(["shellcheck", "-S", "error", str(path)], capture_output=True,
                              text=True)
        assert lint.returncode == 0, f"{step.node} {step.step}:\n{lint.stdout}"


def _build_tier(values, stack: str) -> tuple[Engine, dict]:
    """Build nodes, mesh and the broker tier alone; return its outputs with their secretness."""
    from components.cluster import broker_args, nodes_args
    from components.nodes import Nodes
    from components.tier import TierArgs
    from components.vpn import VpnArgs, VpnMesh

    cfg = parse_config(values(stack), stack=stack)
    engine = Engine()
    pulumi.runtime.set_mocks(engine, project=NAMESPACE, stack=stack, preview=False)
    seen: dict = {}

    def program():
        nodes = Nodes("nodes", nodes_args(cfg))
        mesh = VpnMesh("mesh", VpnArgs(nodes.nodes, cfg.mesh_prefix_len))
        tier = broker.BrokerTier("broker", broker_args(cfg, TierArgs(nodes.nodes, mesh.ready)))

        async def gather() -> None:
            for attr in ("broker_url", "password", "management_tunnel"):
                output = getattr(tier, attr)
                seen[attr] = await output.future()
                seen[f"{attr}_secret"] = await output.is_secret()
            seen["ready"] = sorted(tier.ready)

        return pulumi.Output.from_input(asyncio.ensure_future(gather()))

    pulumi.runtime.test(program)()
    return engine, seen


def test_broker_url_is_a_secret_failover_list_over_every_node(values) -> None:
    engine, seen = _build_tier(values, "local")
    password = engine.secret_value("rabbitmq-airflow-password", "password", {"length": 32})
    assert seen["broker_url_secret"] and seen["password_secret"]
    assert seen["broker_url"] == ";".join(
        f"amqp://airflow:{password}@{n}:5672/airflow" for n in NODES
    )
    assert seen["ready"] == NODES
    assert not seen["management_tunnel_secret"]
    assert seen["management_tunnel"].startswith(
        "ssh -N -L 15672:10.42.0.1:15672 -p 22 root@172.31.77.11"
    )


def test_broker_url_quotes_credentials() -> None:
    url = broker.broker_url(["n1", "n2"], "p@ss/w:rd")
    assert url == "amqp://airflow:p%40ss%2Fw%3Ard@n1:5672/airflow;amqp://airflow:p%40ss%2Fw%3Ard@n2:5672/airflow"


def test_tunnel_command_is_a_stack_output(local) -> None:
    _, outputs = local
    assert outputs["brokerManagementTunnel"].startswith("ssh -N -L 15672:10.42.0.1:15672 ")
