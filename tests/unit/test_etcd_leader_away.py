"""The timer script that keeps etcd's leader off the PostgreSQL primary's and synchronous
standby's nodes, executed: a fake Patroni REST API answers /cluster, a stub etcdctl on PATH
answers from a scenario and logs its arguments."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from components import database
from components.remote import render

ME, PEER_DOWN, PEER_UP = 11, 22, 33  # etcd member ids (etcdctl prints them as decimal)

STUB_ETCDCTL = r"""#!/usr/bin/env python3
import json, os, sys
scenario = json.load(open(os.environ["SCENARIO"]))
with open(os.environ["CALLS"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
args = [a for a in sys.argv[1:] if not a.startswith("--")]
endpoint = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--endpoints="))
if args[:2] == ["endpoint", "status"]:
    print(json.dumps([{"Status": {"header": {"member_id": scenario["me"]},
                                  "leader": scenario["leader"]}}]))
elif args[:2] == ["endpoint", "health"]:
    print(json.dumps([{"endpoint": endpoint, "health": endpoint in scenario["healthy"]}]))
elif args[:2] == ["member", "list"]:
    print(json.dumps({"members": scenario["members"]}))
elif args[:1] == ["move-leader"]:
    print("Leadership transferred")
else:
    sys.exit(f"unexpected etcdctl call {sys.argv[1:]}")
"""


class _Patroni(http.server.BaseHTTPRequestHandler):
    roles: ClassVar[dict[str, str]] = {}

    def do_GET(self) -> None:
        members = [{"name": name, "role": role} for name, role in _Patroni.roles.items()]
        body = json.dumps({"members": members}).encode()
        self.send_response(200 if self.path == "/cluster" else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def patroni() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Patroni)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _member(member_id: int, name: str) -> dict:
    return {"ID": member_id, "name": name, "clientURLs": [f"http://{name}:2379"]}


MEMBERS = [_member(ME, "node-a"), _member(PEER_DOWN, "node-b"), _member(PEER_UP, "node-c")]


def _run(tmp_path: Path, port: int, *, roles: dict[str, str], leader: int, healthy: list[str]):
    _Patroni.roles = roles
    script = render(
        "database/etcd-leader-away.py.j2",
        {"node": "node-a", "mesh_address": "127.0.0.1", "rest_port": port,
         "client_port": 2379, "interval": 10},
    )
    (tmp_path / "away.py").write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "etcdctl").write_text(STUB_ETCDCTL)
    (bin_dir / "etcdctl").chmod(0o755)
    scenario = {"me": ME, "leader": leader, "members": MEMBERS, "healthy": healthy}
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    env = os.environ | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SCENARIO": str(tmp_path / "scenario.json"),
        "CALLS": str(tmp_path / "calls"),
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "away.py")], env=env, capture_output=True, text=True,
        timeout=30,
    )
    calls_file = tmp_path / "calls"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if (
        calls_file.exists()) else []
    return done, calls


def _moves(calls: list[list[str]]) -> list[str]:
    return [c[c.index("move-leader") + 1] for c in calls if "move-leader" in c]


PRIMARY_HERE = {"node-a": "leader", "node-b": "sync_standby", "node-c": "replica"}
SYNC_HERE = {"node-a": "sync_standby", "node-b": "leader", "node-c": "replica"}
ALL_UP = ["http://node-b:2379", "http://node-c:2379"]


def test_primary_and_etcd_leader_here_hands_it_to_the_async_replica(tmp_path, patroni):
    done, calls = _run(tmp_path, patroni, roles=PRIMARY_HERE, leader=ME, healthy=ALL_UP)
    assert done.returncode == 0, done.stderr
    assert _moves(calls) == [format(PEER_UP, "x")], "node-c, the replica, its id in hex"
    assert "moved to node-c (replica)" in done.stdout


def test_sync_standby_and_etcd_leader_here_hands_it_to_the_async_replica(tmp_path, patroni):
    done, calls = _run(tmp_path, patroni, roles=SYNC_HERE, leader=ME, healthy=ALL_UP)
    assert done.returncode == 0, done.stderr
    assert _moves(calls) == [format(PEER_UP, "x")], "never to node-b, the primary"


def test_replica_down_the_primary_gives_it_to_the_sync_standby(tmp_path, patroni):
    done, calls = _run(tmp_path, patroni, roles=PRIMARY_HERE, leader=ME,
                       healthy=["http://node-b:2379"])
    assert done.returncode == 0, done.stderr
    assert _moves(calls) == [format(PEER_DOWN, "x")], "node-b: the next best"


def test_replica_down_the_sync_standby_keeps_it_rather_than_give_it_to_the_primary(
    tmp_path, patroni
):
    done, calls = _run(tmp_path, patroni, roles=SYNC_HERE, leader=ME,
                       healthy=["http://node-b:2379"])
    assert done.returncode == 0, done.stderr
    assert _moves(calls) == []


def test_an_async_replica_keeps_etcd_leadership(tmp_path, patroni):
    roles = {"node-a": "replica", "node-b": "leader", "node-c": "sync_standby"}
    done, calls = _run(tmp_path, patroni, roles=roles, leader=ME, healthy=ALL_UP)
    assert done.returncode == 0, done.stderr
    assert _moves(calls) == []


def test_a_member_that_does_not_lead_etcd_asks_nothing_more(tmp_path, patroni):
    done, calls = _run(tmp_path, patroni, roles=PRIMARY_HERE, leader=PEER_UP, healthy=[])
    assert done.returncode == 0, done.stderr
    assert [c for c in calls if "status" not in c] == [], "only its own endpoint status"


def test_primary_with_no_healthy_peer_fails_the_check_and_says_why(tmp_path, patroni):
    done, calls = _run(tmp_path, patroni, roles=PRIMARY_HERE, leader=ME, healthy=[])
    assert done.returncode == 1
    assert _moves(calls) == []
    assert "no healthy peer" in done.stderr


def test_every_node_gets_the_script_and_its_timer(values, deploy) -> None:
    engine, outputs = deploy(values("local"), stack="local")
    steps = {s.node: s for s in engine.steps() if s.step == "patroni"}
    assert sorted(steps) == sorted(outputs["nodes"])
    for step in steps.values():
        files = {path: (mode, content) for path, mode, _, content in step.files}
        mode, script = files[database.LEADER_AWAY_SCRIPT]
        assert mode == "0755"
        compile(script, "etcd-leader-away", "exec")  # valid Python as rendered
        _, timer = files[f"/etc/systemd/system/{database.LEADER_AWAY_UNIT}.timer"]
        assert f"OnUnitActiveSec={database.LEADER_AWAY_INTERVAL_S}" in timer
