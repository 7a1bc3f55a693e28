"""Every table marked in docs/ matches the committed result file it names (drills/docs.py)."""

from __future__ import annotations

import json

from drills import docs


def test_doc_tables_match_their_result_files() -> None:
    assert not docs.stale(), "run: .venv/bin/python -m drills.docs"


def test_a_marked_table_is_rendered_from_its_file(tmp_path, monkeypatch) -> None:
    result = tmp_path / "r.json"
    record = {
        "condition": "warm", "task_instances": 7, "failed": 0, "failed_never_ran": 0,
        "runs_not_success": [], "per_minute": 12.5, "slowest_run_call_s": {"a": 0.5, "b": 2.0},
        "execution_api_calls_repeated": 0,
    }
    doc = {"burst": {"runs_of_burst_dag": 1, "tasks_per_run": 2, "examples": ["x"]},
           "machine": {"cores": 2}, "records": [record]}
    result.write_text(json.dumps(doc))
    monkeypatch.setattr(docs, "REPO", tmp_path)
    text = "intro\n<!-- table: load r.json -->\nold figures\n<!-- /table -->\nafter\n"
    out = docs.render(text)
    assert "old figures" not in out and out.startswith("intro\n") and out.endswith("after\n")
    assert "| warm | 7 | 0 | 0 | 0 | 12.5 | 2.0 | 0 | - | - |" in out
    assert docs.render(out) == out


def test_the_total_loss_table_gives_the_rpo_and_every_phase(tmp_path, monkeypatch) -> None:
    record = {"drill": "total-loss", "run": 1, "ok": True, "details": {
        "rpo_s": 12.5, "acked": 300, "rows_lost": 4, "to_working_airflow_s": 900.0,
        "phases": {"machines_up_s": 8.0, "first_deploy_s": 600.0, "restore_s": 120.0,
                   "second_deploy_s": 150.0, "to_a_successful_dag_run_s": 22.0}}}
    doc = {"command": "python -m drills --only total-loss", "date": "2026-12-03",
           "machine": {"cores": 2}, "records": [{"drill": "pitr"}, record]}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    monkeypatch.setattr(docs, "REPO", tmp_path)
    out = docs.render("<!-- table: totalloss r.json -->\n<!-- /table -->\n")
    assert "| 1 | 12.5 | 300 | 4 | 8.0 | 600.0 | 120.0 | 150.0 | 22.0 | 900.0 | ok |" in out
    assert out.count("\n| ") == 2  # the header and the one total-loss run; pitr left out


def test_only_keeps_the_named_drills_of_a_suite_file(tmp_path, monkeypatch) -> None:
    doc = json.loads((docs.REPO / "drills/results/2026-12-03T135122Z-drills-vm.json").read_text())
    (tmp_path / "r.json").write_text(json.dumps(doc))
    monkeypatch.setattr(docs, "REPO", tmp_path)
    both = docs.render("<!-- table: drills r.json -->\n<!-- /table -->\n")
    one = docs.render("<!-- table: drills r.json only=backup-basics -->\n<!-- /table -->\n")
    assert "PostgreSQL primary crash" in both and "PostgreSQL primary crash" not in one
    assert "backups on the async replica" in one
    assert docs.render(one) == one
