"""Tables in docs/ rendered from committed result files, so that no figure is typed by hand.

    python -m drills.docs            # rewrite every marked table
    python -m drills.docs --check    # exit 1 when a table differs from its file

A table is marked in a Markdown file by

    <!-- table: KIND drills/results/FILE.json [only=DRILL,...] -->
    ...rendered here...
    <!-- /table -->

KIND is `load` (drills/load.py's document), `footprint` (drills/footprint.py's), `drills`
(the suite's: python -m drills) or `totalloss` (the total-loss records of a suite's document:
RPO and each phase's time). `only=` keeps the named drills' records of the file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drills import footprint, report
from drills.nodes import REPO

DOCS = REPO / "docs"
BLOCK = re.compile(
    r"(?P<head><!-- table: (?P<kind>[a-z]+) (?P<path>\S+)(?: only=(?P<only>[a-z,-]+))? -->\n)"
    r"(?P<body>.*?)(?P<end><!-- /table -->)", re.S
)


def _footprint(doc: dict[str, Any]) -> str:
    nodes = doc["nodes"]
    totals = ", ".join(
        f"{name} {n['cpu_percent']} % of a core / {n['pss_mib']:.0f} MiB" for name, n in
        nodes.items()
    )
    return (
        f"Sampled for {doc['seconds']:.0f} s at idle on {doc['machine']['cores']} host cores "
        f"({doc['date']}); per unit: CPU in % of one core / memory (Pss) in MiB; units under "
        f"5 MiB left out. Node totals: {totals}.\n\n" + footprint.text_table(nodes)
    )


def _total_loss(doc: dict[str, Any]) -> str:
    """The total-loss drill's own figures: RPO, rows lost, each phase to a working Airflow."""
    lines = ["| run | RPO s | rows acknowledged | rows lost | machines up s | first deploy s "
             "| restore s | second deploy s | to a successful DAG run s | total s | result |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in (r for r in doc["records"] if r["drill"] == "total-loss"):
        d = r.get("details", {})
        ph = d.get("phases", {})
        cells = [r.get("run"), d.get("rpo_s"), d.get("acked"), d.get("rows_lost"),
                 ph.get("machines_up_s"), ph.get("first_deploy_s"), ph.get("restore_s"),
                 ph.get("second_deploy_s"), ph.get("to_a_successful_dag_run_s"),
                 d.get("to_working_airflow_s"), "ok" if r.get("ok") else "NOT OK"]
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return f"`{doc['command']}` on {doc['date']}, host {doc['machine']['cores']} cores.\n\n" + (
        "\n".join(lines) + "\n")


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "load": report.load_markdown,
    "footprint": _footprint,
    "drills": report.drills_summary,
    "totalloss": _total_loss,
}


def render(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        doc = json.loads((REPO / match["path"]).read_text())
        if match["only"]:
            names = match["only"].split(",")
            records = [r for r in doc["records"] if r["drill"] in names]
            labels = {r["label"] for r in records}
            doc = {**doc, "records": records,
                   "table": [row for row in doc.get("table", []) if row["drill"] in labels]}
        body = RENDERERS[match["kind"]](doc).rstrip("\n") + "\n"
        return f"{match['head']}{body}{match['end']}"

    return BLOCK.sub(one, text)


def stale() -> list[Path]:
    return [p for p in sorted(DOCS.glob("*.md")) if render(p.read_text()) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drills.docs", description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(REPO)}: a table differs from its result file; "
                  "run python -m drills.docs", file=sys.stderr)
        return 1 if old else 0
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        new = render(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
