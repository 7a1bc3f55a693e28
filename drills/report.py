"""The suite's table: printed, and written as JSON and Markdown to drills/results/."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

COLUMNS = (
    ("drill", "drill"),
    ("runs", "runs"),
    ("db_s", "DB writes s"),
    ("broker_s", "publishes s"),
    ("airflow_s", "new DAG run s"),
    ("airflow_after_db_s", "first task after DB s"),
    ("rows", "rows lost"),
    ("messages", "msgs lost"),
    ("dag_runs", "DAG runs lost"),
    ("rejoin_s", "rejoin s"),
    ("result", "result"),
)


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


def _sum(values: list[int | None]) -> int | str:
    return "?" if any(v is None for v in values) else sum(v for v in values if v is not None)


def table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per drill: medians of the outages and rejoin times, sums of what was lost."""
    rows = []
    for name in dict.fromkeys(r["drill"] for r in records):
        runs = [r for r in records if r["drill"] == name]
        done = [r for r in runs if "outage_s" in r]
        failed = sorted(
            {check for r in runs for check, ok in r.get("checks", {}).items() if not ok}
            | {f"error: {r['error'][:80]}" for r in runs if r.get("error")}
        )
        rows.append(
            {
                "drill": runs[0]["label"],
                "name": name,
                "runs": len(runs),
                "db_s": median([r["outage_s"]["db"] for r in done]),
                "broker_s": median([r["outage_s"]["broker"] for r in done]),
                "airflow_s": median([r["outage_s"]["airflow"] for r in done]),
                "airflow_after_db_s": median(
                    [r["outage_s"].get("airflow_after_db") for r in done]
                ),
                "outage_ranges": {
                    k: _range([r["outage_s"][k] for r in done]) for k in ("db", "broker", "airflow")
                },
                "rows": _sum([r.get("lost", {}).get("rows") for r in runs]),
                "messages": _sum([r.get("lost", {}).get("messages") for r in runs]),
                "dag_runs": _sum([r.get("lost", {}).get("dag_runs") for r in runs]),
                "rejoin_s": median([r.get("rejoin_s") for r in done]),
                "result": "ok"
                if all(r.get("ok") for r in runs)
                else "FAILED: " + "; ".join(failed),
            }
        )
    return rows


def _range(values: list[float | None]) -> list[float] | None:
    known = [v for v in values if v is not None]
    return [min(known), max(known)] if known else None


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def text_table(rows: list[dict[str, Any]]) -> str:
    widths = {key: max(len(title), *(len(_cell(r[key])) for r in rows)) for key, title in COLUMNS}
    widths["result"] = min(widths["result"], 60)
    lines = ["  ".join(title.ljust(widths[key]) for key, title in COLUMNS)]
    for row in rows:
        lines.append(
            "  ".join(
                _cell(row[key])[: widths[key]].ljust(widths[key])
                if key in ("drill", "result")
                else _cell(row[key]).rjust(widths[key])
                for key, _ in COLUMNS
            )
        )
    return "\n".join(lines)


def drills_table(doc: dict[str, Any]) -> str:
    """The table of a drills document, one row per drill (docs/ render it too)."""
    out = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" if key in ("drill", "result") else "--:" for key, _ in COLUMNS) + "|",
    ]
    out += ["| " + " | ".join(_cell(row[key]) for key, _ in COLUMNS) + " |" for row in doc["table"]]
    return "\n".join(out)


def drills_summary(doc: dict[str, Any]) -> str:
    """One drills document for docs/: how it was made, then its table."""
    machine = doc["machine"]
    return (
        f"`{doc['command']}` on {doc['date']}, {doc['runs']} run(s) per drill, host "
        f"{machine['cores']} cores / {machine['ram_gb']} GB; medians in seconds (columns as in "
        f"the result file's own .md).\n\n" + drills_table(doc)
    )


def markdown(doc: dict[str, Any]) -> str:
    machine, versions = doc["machine"], doc["versions"]
    settings = doc["settings"]
    out = [
        f"# airflow-ha drills, {doc['date']}",
        "",
        f"`{doc['command']}` ({'quick form' if doc['quick'] else 'full suite'}, "
        f"{doc['runs']} run(s) per drill, {doc['minutes']} min). Host: {machine['cores']} cores "
        f"({machine['cpu']}), {machine['ram_gb']} GB RAM, {machine['host_os']}; "
        f"{machine['nodes']}, {versions['node_os']}.",
        "",
        f"Versions: PostgreSQL {versions['postgresql']}, Patroni {versions['patroni']}, "
        f"etcd {versions['etcd']}, RabbitMQ {versions['rabbitmq']}, HAProxy "
        f"{versions['haproxy']}, Airflow {versions['airflow']}.",
        "",
        f"Settings: Patroni (stack) ttl/loop_wait/retry_timeout {settings['patroni_stack']}, "
        f"synchronous_mode {settings['synchronous_mode']}; HAProxy `{settings['haproxy_check']}`; "
        f"workload: a commit every {settings['writer_interval_s']} s through HAProxy, a confirmed "
        f"publish every {settings['publish_interval_s']} s, a probe DAG run every "
        f"{settings['dag_interval_s']} s.",
        "",
        "Outage columns are medians over the runs, in seconds: DB writes = longest wait for an "
        "acknowledged commit after the event; publishes = the same for publisher confirms; new "
        "DAG run = event until the first task of a run created after it started (baseline "
        "trigger-to-start latency included); first task after DB = from the commit that ended "
        "the database's outage until the first probe task started after it (where the "
        "database was disturbed). Lost = acknowledged, then missing. Rejoin = how "
        "long the failed part took to come back by itself (per drill in docs/resilience.md).",
        "",
    ]
    out.append(drills_table(doc))
    if doc.get("load"):
        out += ["", "## Load drill (drills/load.py)", "", load_markdown(doc["load"])]
    out += ["", "## Every run", ""]
    for record in doc["records"]:
        out.append(f"- **{record['label']}** run {record.get('run', 1)}: " + summary(record))
    return "\n".join(out) + "\n"


def summary(record: dict[str, Any]) -> str:
    if "outage_s" not in record:
        return f"ERROR {record.get('error')}"
    details = record.get("details", {})
    parts = [
        f"victim {record.get('victim')}, workload on {record.get('runner')}",
        "outage " + ", ".join(f"{k} {_cell(v)} s" for k, v in record["outage_s"].items()),
        "lost " + ", ".join(f"{k} {_cell(v)}" for k, v in record["lost"].items()),
        f"rejoin {_cell(record.get('rejoin_s'))} s",
    ]
    brain = details.get("split_brain")
    if brain:
        seen = details["monitor"]
        parts.append(
            f"partition {details['partition_s']} s (ttl {details['ttl']}); new primary "
            f"{brain.get('new_primary')} after {details['new_primary_after_s']} s; acks per node "
            f"{brain['acknowledged']}; handover gap {brain.get('handover_gap_s')} s (isolated "
            f"primary's last ack -> new primary's first); isolated Patroni demoted after "
            f"{seen['patroni_demoted_after_s']} s; isolated RabbitMQ paused after "
            f"{seen['rabbit_paused_after_s']} s"
        )
    failed = [c for c, ok in record.get("checks", {}).items() if not ok]
    parts.append(
        "checks ok"
        if not failed and not record.get("error")
        else f"FAILED {failed} {record.get('error') or ''}".strip()
    )
    return "; ".join(parts)


def write(doc: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md_path.write_text(markdown(doc))
    return json_path, md_path


LOAD_COLUMNS = (
    ("condition", "condition"),
    ("task_instances", "task instances"),
    ("failed", "failed"),
    ("failed_never_ran", "failed without running"),
    ("runs_failed", "runs not success"),
    ("per_minute", "TIs / min"),
    ("slowest_run_s", "slowest PATCH /run s"),
    ("repeated", "repeated API calls"),
    ("writes_back_s", "DB writes back s"),
    ("first_task_after_writes_s", "first task after DB s"),
)


def load_rows(load: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in load["records"]:
        slowest = [v for v in r.get("slowest_run_call_s", {}).values() if v is not None]
        rows.append(
            {
                "condition": r["condition"],
                "task_instances": r["task_instances"],
                "failed": r["failed"],
                "failed_never_ran": r["failed_never_ran"],
                "runs_failed": len(r["runs_not_success"]),
                "per_minute": r["per_minute"],
                "slowest_run_s": max(slowest) if slowest else None,
                "repeated": r.get("execution_api_calls_repeated"),
                "writes_back_s": r.get("writes_back_s"),
                "first_task_after_writes_s": r.get("first_task_after_writes_s"),
            }
        )
    return rows


def load_markdown(load: dict[str, Any]) -> str:
    burst = load["burst"]
    machine = load["machine"]
    lines = [
        f"A burst of {burst['runs_of_burst_dag']} runs of a {burst['tasks_per_run']}-task DAG "
        f"plus one run of each of {', '.join(burst['examples'])}, created within one second; "
        f"host: {machine['cores']} cores. TIs / min = task instances that succeeded per minute "
        "from the burst to the last task's end.",
        "",
        "| " + " | ".join(title for _, title in LOAD_COLUMNS) + " |",
        "|" + "|".join("---" if k == "condition" else "--:" for k, _ in LOAD_COLUMNS) + "|",
    ]
    for row in load_rows(load):
        lines.append("| " + " | ".join(_cell(row[k]) for k, _ in LOAD_COLUMNS) + " |")
    return "\n".join(lines)
