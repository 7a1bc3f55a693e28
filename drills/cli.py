"""python -m drills [--quick] [--runs N] [--only NAME,...]: the resilience suite."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from drills import common, failover, load, report
from drills.nodes import RESULTS, say, ssh
from drills.suite import Suite, catalogue, run
from drills.workload import PUBLISH_INTERVAL_S, Secrets


def settings(dag_interval: float) -> dict[str, Any]:
    tuned = failover.stack_timings()
    try:
        config = failover.dynamic_config()
    except Exception:  # node-a down right now: the settings line goes without it
        config = {}
    check = ssh(
        common.first_reachable(), "grep -m1 'default-server' /etc/haproxy/haproxy.cfg"
    )
    return {
        "patroni_stack": f"{tuned['ttl']}/{tuned['loop_wait']}/{tuned['retry_timeout']}",
        "patroni_defaults": "{ttl}/{loop_wait}/{retry_timeout}".format(**failover.PATRONI_DEFAULTS),
        "synchronous_mode": config.get("synchronous_mode"),
        "failsafe_mode": config.get("failsafe_mode"),
        "haproxy_check": " ".join(check.stdout.split()),
        "writer_interval_s": 0.1,
        "publish_interval_s": PUBLISH_INTERVAL_S,
        "dag_interval_s": dag_interval,
    }


def run_suite(
    quick: bool = False,
    runs: int = 3,
    only: list[str] | None = None,
    dag_interval: float = 5.0,
    out_dir: Path | None = RESULTS,
    command: str = "python -m drills",
) -> dict[str, Any]:
    """Run the drills; return the document that is also written (unless out_dir is None)."""
    began = time.time()
    selected = catalogue(quick)
    if only:
        known = {name for name, _, _ in catalogue(False)} | {"load"}
        unknown = set(only) - known
        if unknown:
            raise SystemExit(f"unknown drill(s) {sorted(unknown)}: choose from {sorted(known)}")
        selected = [d for d in catalogue(False) if d[0] in only]
    runs = 1 if quick else runs
    say(f"drills: {', '.join(name for name, _, _ in selected)}; {runs} run(s) each")
    secrets = Secrets.load()
    suite = Suite(secrets=secrets, mesh=common.mesh_addresses(), dag_interval=dag_interval)
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "quick": quick,
        "runs": runs,
        "machine": common.host_machine(),
        "versions": common.versions(),
        "settings": settings(dag_interval),
    }
    records = []
    for name, label, body in selected:
        for index in range(runs):
            record = run(suite, name, label, body)
            record["run"] = index + 1
            records.append(record)
    doc["records"] = records
    if only is None or "load" in only:
        conditions = list(load.QUICK_CONDITIONS if quick else load.CONDITIONS)
        doc["load"] = load.run(conditions, load.QUICK_RUNS if quick else load.FULL_RUNS)
        print("\n" + report.load_markdown(doc["load"]), flush=True)
    doc["table"] = report.table(records)
    doc["minutes"] = round((time.time() - began) / 60, 1)
    doc["ok"] = all(r.get("ok") for r in records) and doc.get("load", {}).get("ok", True)
    print("\n" + report.text_table(doc["table"]), flush=True)
    if out_dir is not None:
        # Named by time and host: a later run never overwrites an earlier one.
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(began))
        stem = f"{stamp}-drills" + ("-quick" if quick else "") + f"-{os.uname().nodename}"
        paths = report.write(doc, out_dir, stem)
        say(f"wrote {paths[0]} and {paths[1]}")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drills",
        description="The resilience suite on the local machines (root, local stack deployed).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="each drill once, stack timings only (the CI form)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per drill (default 3)")
    parser.add_argument(
        "--only",
        help="comma-separated drill names: "
        + ", ".join([*(name for name, _, _ in catalogue(False)), "load"]),
    )
    parser.add_argument(
        "--dag-interval", type=float, default=5.0, help="seconds between probe DAG runs (default 5)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="where <date>-drills.{json,md} go (default drills/results)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root (it stops, starts and partitions the local machines)")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    doc = run_suite(
        quick=args.quick,
        runs=args.runs,
        only=only,
        dag_interval=args.dag_interval,
        out_dir=None if args.no_write else args.out,
        command="python -m drills " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    return 0 if doc["ok"] else 1
