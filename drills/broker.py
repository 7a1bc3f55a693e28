"""Broker node-loss drill on the local machines: `python3 -m drills.broker`.

Publishes N messages (default 10,000) with publisher confirms into a quorum queue of the
`airflow` vhost, through the failover URL list, from a process on one node (`--runner`); once
`--kill-at` of them are confirmed, the Erlang VM of another node's broker (`--victim`, which
also holds the publisher's first connection and so the queue's leader) is killed with kill -9.
Then it drains the queue from the survivors and prints what it measured:

  confirmed / lost / duplicates   every confirmed message must come back (lost = 0)
  stall seconds                   the longest the publisher waited between two confirms
  rejoin seconds                  kill -9 -> the killed node running in the cluster again
                                  (systemd restarts it: Restart=on-failure; the unit is
                                  Type=notify and RabbitMQ reports ready once it has synced
                                  with its peers), on the victim's own clock

AMQP listens on mesh addresses only: the AMQP client (drills/agents/broker_agent.py, pika) runs on
the runner node, which gets python3-pika from Debian if it lacks it. The airflow user's
password comes from the local deploy's state (.deploy-state/local.json) or
$AIRFLOW_HA_BROKER_PASSWORD. The drill holds /run/airflow-ha-cluster.lock from the first publish
until the killed node is back (about a minute), unless an ancestor process already holds it.
Nothing is asserted here: tests/cluster/test_broker.py asserts on the same figures.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from drills.nodes import AGENTS, DRILL_DIR, DRILL_LOCK_TIMEOUT_S, NODES, deploy_secret, ssh
from tools.localcloud.lock import ClusterLock
from tools.localcloud.machines import by_name, ssh_command

PASSWORD_SECRET = "rabbitmq-airflow-password/password"  # tools.deploy's key for the RandomPassword
AGENT = AGENTS / "broker_agent.py"
AGENT_ON_NODE = f"{DRILL_DIR}/broker_agent.py"
VHOST = "airflow"
USER = "airflow"
AMQP_PORT = 5672

# CLOCK_MONOTONIC in microseconds on a node, the clock of systemd's *TimestampMonotonic.
MONOTONIC_US = (
    "python3 -c 'import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)'"
)
RUNNING_NODES = (
    "rabbitmqctl -q cluster_status --formatter json | python3 -c "
    "'import json, sys; print(\" \".join(sorted(json.load(sys.stdin)[\"running_nodes\"])))'"
)


def broker_password() -> str:
    return deploy_secret(PASSWORD_SECRET, "AIRFLOW_HA_BROKER_PASSWORD", "broker password")


def urls(nodes: list[str], password: str) -> list[str]:
    """The failover list (Celery's syntax joins these with ';')."""
    return [f"amqp://{USER}:{password}@{n}:{AMQP_PORT}/{VHOST}" for n in nodes]


def running_nodes(node: str) -> list[str]:
    result = ssh(node, RUNNING_NODES, timeout=60, check=False)
    return result.stdout.split() if result.returncode == 0 else []


def prepare_runner(runner: str) -> None:
    ssh(runner, "dpkg-query -W -f='${Status}' python3-pika 2>/dev/null | grep -q 'ok installed' "
                "|| apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "
                "python3-pika >/dev/null", timeout=600)
    ssh(runner, f"install -d -m 0700 {DRILL_DIR} && "
                f"cat > {AGENT_ON_NODE}", stdin=AGENT.read_text())


def publisher(runner: str, settings: dict) -> subprocess.Popen[str]:
    """Start the agent on the runner; settings (with the password) go on stdin."""
    proc = subprocess.Popen(
        ssh_command(by_name(runner), f"python3 {AGENT_ON_NODE}"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(settings) + "\n")
    proc.stdin.close()
    return proc


def _reader(proc: subprocess.Popen[str], events: queue.Queue) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("{"):
            events.put(json.loads(line))
    events.put({"event": "eof"})


def kill_broker(victim: str) -> dict[str, Any]:
    """kill -9 the broker's Erlang VM (the unit's main process, beam.smp)."""
    out = ssh(victim, "pid=$(systemctl show -p MainPID --value rabbitmq-server); "
                      "[ \"$pid\" -gt 0 ]; echo \"comm=$(cat /proc/$pid/comm)\"; "
                      "echo \"restarts=$(systemctl show -p NRestarts --value rabbitmq-server)\"; "
                      f"echo \"mono=$({MONOTONIC_US})\"; "
                      "kill -9 \"$pid\"; echo \"pid=$pid\"").stdout
    return dict(line.split("=", 1) for line in out.split())


def wait_rejoin(victim: str, killed: dict, killed_at: float,
                timeout: float = 180) -> dict[str, Any]:
    """Until the victim runs in the cluster again; start it if systemd did not within 60s.

    The unit is Type=notify: RabbitMQ reports ready only once it has synced with the cluster,
    so "active again with a new main PID" is the moment it rejoined; its cluster view confirms.
    """
    expected = sorted(f"rabbit@{n}" for n in NODES)
    started_by_hand = False
    probe = ("echo \"state=$(systemctl is-active rabbitmq-server)\"; "
             "echo \"pid=$(systemctl show -p MainPID --value rabbitmq-server)\"; "
             "echo \"restarts=$(systemctl show -p NRestarts --value rabbitmq-server)\"")
    now: dict[str, str] = {}
    while time.monotonic() - killed_at < timeout:
        result = ssh(victim, probe, timeout=30, check=False)
        now = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
        if now.get("state") == "active" and now.get("pid") not in (None, "0", killed.get("pid")):
            break
        if not started_by_hand and time.monotonic() - killed_at > 60:
            ssh(victim, "systemctl is-active --quiet rabbitmq-server || "
                        "systemctl start --no-block rabbitmq-server", check=False)
            started_by_hand = True
        time.sleep(0.25)
    else:
        return {"rejoined": False, "rejoin_seconds": None, "restarted_by_systemd": False}
    seconds = time.monotonic() - killed_at
    # The same interval on the victim's own clock: kill -9 -> systemd saw it ready again.
    active = ssh(victim, "systemctl show -p ActiveEnterTimestampMonotonic --value rabbitmq-server",
                 check=False).stdout.strip()
    if active.isdigit() and killed.get("mono", "").isdigit():
        seconds = (int(active) - int(killed["mono"])) / 1e6
    members: list[str] = []
    while time.monotonic() - killed_at < timeout and members != expected:
        members = running_nodes(victim)
    return {
        "rejoined": members == expected,
        "rejoin_seconds": round(seconds, 1),
        "restarted_by_systemd": not started_by_hand
        and int(now.get("restarts", 0)) > int(killed.get("restarts", 0)),
        "new_pid": now.get("pid"),
    }


def queue_leader(node: str, name: str) -> str:
    out = ssh(node, f"rabbitmq-queues -q quorum_status {name} --vhost {VHOST} --formatter json",
              check=False).stdout
    try:
        members = json.loads(out)
        return next((m["Node Name"] for m in members if m.get("Raft State") == "leader"), "?")
    except (ValueError, TypeError, KeyError):
        return "?"


def run_drill(messages: int = 10_000, victim: str = "node-b", runner: str | None = None,
              kill_at: float = 0.3, password: str | None = None,
              log=print) -> dict[str, Any]:
    names = NODES
    if victim not in names:
        raise SystemExit(f"unknown victim {victim!r}: one of {', '.join(names)}")
    survivors = [n for n in names if n != victim]
    runner = runner or survivors[0]
    if runner == victim:
        raise SystemExit("the runner must survive: choose another --runner or --victim")
    password = password or broker_password()
    expected = sorted(f"rabbit@{n}" for n in names)
    prepare_runner(runner)
    queue_name = f"drill-{int(time.time())}"
    # The victim first: the publisher connects there and the queue's leader is placed there.
    publish_urls = urls([victim, *survivors], password)
    settings = {
        "phase": "publish", "urls": publish_urls, "queue": queue_name, "messages": messages,
        "retry_seconds": 90, "progress_every": max(1, messages // 50),
    }
    result: dict[str, Any] = {"messages": messages, "victim": victim, "runner": runner,
                              "queue": queue_name}
    with ClusterLock(timeout=DRILL_LOCK_TIMEOUT_S):
        # Another drill may have just brought a machine back: wait for the whole cluster.
        deadline = time.monotonic() + 300
        while (before := running_nodes(runner)) != expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not healthy before the drill: {before} != {expected}")
            time.sleep(2)
        log(f"publishing {messages} messages from {runner} into quorum queue {queue_name}, "
            f"failover list {' -> '.join([victim, *survivors])}; kill -9 of rabbit@{victim} "
            f"after {int(kill_at * messages)} confirms")
        started = time.monotonic()
        proc = publisher(runner, settings)
        events: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc, events), daemon=True).start()
        killed: dict[str, Any] | None = None
        killed_at = 0.0
        rejoin: threading.Thread | None = None
        rejoined: dict[str, Any] = {}
        published: dict[str, Any] | None = None
        errors: list[dict] = []
        while published is None:
            try:
                event = events.get(timeout=300)
            except queue.Empty:
                proc.kill()
                raise RuntimeError("the publisher said nothing for 300 s") from None
            kind = event["event"]
            if kind == "progress" and killed is None and event["confirmed"] >= kill_at * messages:
                result["leader_before"] = queue_leader(runner, queue_name)
                killed = kill_broker(victim)
                killed_at = time.monotonic()
                # Watch the victim come back while the publisher goes on.
                rejoin = threading.Thread(
                    target=lambda k=killed, t=killed_at: rejoined.update(wait_rejoin(victim, k, t)),
                    daemon=True,
                )
                rejoin.start()
                result["killed_at_s"] = round(killed_at - started, 2)
                log(f"killed {killed.get('comm')} pid {killed.get('pid')} on {victim} at "
                    f"{result['killed_at_s']}s ({event['confirmed']} confirmed)")
            elif kind == "error":
                errors.append(event)
            elif kind == "connected" and killed is not None:
                log(f"publisher reconnected to {event['host']} at {event['t']}s")
            elif kind == "published":
                published = event
            elif kind == "eof":
                stderr = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"the publisher ended without a result: {stderr[-2000:]}")
        proc.wait(timeout=60)
        if killed is None:
            raise RuntimeError("the publisher finished before the kill: raise --messages")
        result.update(
            confirmed=published["confirmed"],
            publish_seconds=published["seconds"],
            rate_per_s=published["rate_per_s"],
            stall_seconds=published["stall_seconds"],
            stall_began_at_s=published["stall_began_at"],
            publish_errors=published["errors"],
            first_errors=[e["error"] for e in errors[:3]],
            publisher_hosts=published["hosts"],
        )
        result["leader_after"] = queue_leader(runner, queue_name)
        assert rejoin is not None
        rejoin.join(timeout=300)
        result.update(rejoined or {"rejoined": False, "rejoin_seconds": None,
                                   "restarted_by_systemd": False})
    # Drain from the survivors only.
    drain = ssh(runner, f"python3 {AGENT_ON_NODE}", timeout=600, check=False, stdin=json.dumps({
        "phase": "consume", "urls": urls(survivors, password), "queue": queue_name,
        "messages": messages, "confirmed": result["confirmed"], "retry_seconds": 60,
        "idle_seconds": 5,
    }) + "\n")
    consumed = next((json.loads(line) for line in drain.stdout.splitlines()
                     if line.startswith("{") and '"consumed"' in line), None)
    if consumed is None:
        raise RuntimeError(f"the consumer gave no result: {drain.stderr[-2000:]}")
    ssh(runner, f"rm -f {AGENT_ON_NODE}", check=False)
    result.update(
        received=consumed["received"], unique=consumed["unique"],
        duplicates=consumed["duplicates"], lost=consumed["lost"],
        lost_ids=consumed["lost_ids"], drained_from=consumed["host"],
    )
    return result


def report(result: dict[str, Any]) -> str:
    how = "restarted by systemd" if result.get("restarted_by_systemd") else "started by the drill"
    rejoin = f"{result['rejoin_seconds']} s ({how})" if result.get("rejoined") else "NOT rejoined"
    return "\n".join([
        f"broker node-loss drill: kill -9 of rabbit@{result['victim']} "
        f"at {result['killed_at_s']} s, publisher on {result['runner']}",
        f"  messages confirmed : {result['confirmed']} / {result['messages']} "
        f"({result['rate_per_s']} msg/s, {result['publish_seconds']} s)",
        f"  messages lost      : {result['lost']}"
        + (f" (ids {result['lost_ids']})" if result["lost"] else ""),
        f"  duplicates         : {result['duplicates']} (retried after an unconfirmed publish)",
        f"  publisher stall    : {result['stall_seconds']} s "
        f"(from {result['stall_began_at_s']} s; {result['publish_errors']} failed publishes)",
        f"  queue leader       : {result.get('leader_before')} -> {result.get('leader_after')}",
        f"  rejoin             : {rejoin}",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m drills.broker",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--victim", default="node-b")
    parser.add_argument("--runner", help="node that runs the AMQP client (default: a survivor)")
    parser.add_argument("--kill-at", type=float, default=0.3,
                        help="fraction of the messages confirmed before the kill")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.messages < 1 or not 0 < args.kill_at < 1:
        parser.error("--messages >= 1 and 0 < --kill-at < 1")
    result = run_drill(args.messages, args.victim, args.runner, args.kill_at)
    print(report(result))
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
