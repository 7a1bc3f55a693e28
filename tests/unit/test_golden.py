"""Snapshots of the offline render: every stack's files, scripts, resource tree, dependencies
and outputs, committed under tests/golden/<stack>/. A change to what any node would get shows
here as a diff to review; `make golden` writes the snapshots again after an intended change."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from tools.render import all_stacks, render_stack

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = "make golden (= python -m tools.render --all-stacks --golden --out tests/golden)"
MAX_DIFF_LINES = 200


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()
    }


def golden_diff(expected: dict[str, str], actual: dict[str, str], label: str) -> str:
    """A unified diff of two trees (missing and new files too), cut at MAX_DIFF_LINES."""
    lines: list[str] = []
    for name in sorted(expected.keys() | actual.keys()):
        before, after = expected.get(name), actual.get(name)
        if before == after:
            continue
        lines += difflib.unified_diff(
            (before or "").splitlines(keepends=True),
            (after or "").splitlines(keepends=True),
            fromfile=f"{label}/{name}" if before is not None else "/dev/null",
            tofile=f"rendered/{name}" if after is not None else "/dev/null",
        )
    text = [line if line.endswith("\n") else line + "\n\\ no newline at end of file\n"
            for line in lines]
    joined = "".join(text).splitlines()
    if len(joined) > MAX_DIFF_LINES:
        cut = len(joined) - MAX_DIFF_LINES
        joined = [*joined[:MAX_DIFF_LINES], f"... {cut} more diff lines"]
    return "\n".join(joined)


@pytest.mark.parametrize("stack", all_stacks())
def test_render_matches_the_golden_snapshot(stack: str, tmp_path: Path) -> None:
    golden = GOLDEN / stack
    assert golden.is_dir(), f"no snapshot for stack {stack}: run {UPDATE}"
    render_stack(stack, tmp_path, golden=True)
    expected, actual = _tree(golden), _tree(tmp_path)
    if expected != actual:
        changed = sorted(n for n in expected.keys() | actual.keys()
                         if expected.get(n) != actual.get(n))
        pytest.fail(
            f"the render of stack {stack} differs from tests/golden/{stack} in "
            f"{len(changed)} file(s): {', '.join(changed[:10])}"
            f"{' ...' if len(changed) > 10 else ''}\n"
            f"If the change is intended: {UPDATE}, then review git diff tests/golden.\n\n"
            + golden_diff(expected, actual, f"tests/golden/{stack}"),
            pytrace=False,
        )


def test_every_snapshot_belongs_to_a_stack() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == all_stacks()


def test_snapshots_hold_no_secret_material() -> None:
    for path in GOLDEN.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        assert not re.search(r"test-[\w-]+-[0-9a-f]{8}", text), path  # the unit engine's secrets
        # Generated secrets (passwords, cookies, keys) appear only as placeholders.
        for placeholder in re.findall(r"<secret:[^>]*>", text):
            assert re.fullmatch(r"<secret:[\w.-]+>", placeholder), (path, placeholder)


def test_the_diff_names_the_file_and_stays_short() -> None:
    expected = {"a/01-base.sh": "one\ntwo\n", "gone.txt": "x\n"}
    actual = {"a/01-base.sh": "one\nthree\n", "new.txt": "".join(f"{i}\n" for i in range(500))}
    diff = golden_diff(expected, actual, "tests/golden/dev").splitlines()
    assert "--- tests/golden/dev/a/01-base.sh" in diff and "+three" in diff
    assert "--- tests/golden/dev/gone.txt" in diff and "+++ /dev/null" in diff
    assert len(diff) == MAX_DIFF_LINES + 1 and diff[-1].endswith("more diff lines")
