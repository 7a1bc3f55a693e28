"""The runbook's marked commands are the drills' commands (drills/runbook.py).

Every command in a block of docs/operations.md marked `<!-- runnable -->` is one of
runbook.COMMANDS, word for word; every one of COMMANDS stands in such a block and is used in
drills/ or tests/. A command changed on one side only, a marked block with a command the drills
do not run, or a runbook command nothing runs any more: each fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from drills import runbook

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "operations.md"
MARKER = "<!-- runnable -->"
# `  # ...` after a command: the runbook's explanation, not part of what runs.
COMMENT = re.compile(r"\s+#.*$")


def runnable_blocks(text: str) -> list[list[str]]:
    """The commands of every marked block: continuation lines joined, comments dropped."""
    blocks = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if index + 1 >= len(lines) or lines[index + 1].strip() != "```sh":
            raise AssertionError(f"operations.md:{index + 1}: {MARKER} is not followed by ```sh")
        body = []
        for inner in lines[index + 2 :]:
            if inner.strip() == "```":
                break
            body.append(inner)
        else:
            raise AssertionError(f"operations.md:{index + 1}: the ```sh block never ends")
        joined = re.sub(r"\\\n\s*", "", "\n".join(body))
        commands = [COMMENT.sub("", c).strip() for c in joined.splitlines()]
        blocks.append([c for c in commands if c])
    return blocks


def names_used(folders: tuple[str, ...]) -> set[str]:
    """Every string constant in the Python files of `folders` (runbook.py and this file aside),
    which is where a command's name appears when it is used: runbook.command("name")."""
    skip = {REPO / "drills" / "runbook.py", Path(__file__).resolve()}
    found = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            if path.resolve() in skip:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.add(node.value)
    return found


def test_every_command_of_a_runnable_block_is_a_runbook_command() -> None:
    blocks = runnable_blocks(RUNBOOK.read_text())
    assert blocks, f"no {MARKER} block in {RUNBOOK.name}"
    known = set(runbook.COMMANDS.values())
    unknown = [c for block in blocks for c in block if c not in known]
    assert not unknown, f"marked runnable in operations.md, not in drills/runbook.py: {unknown}"


def test_every_runbook_command_stands_in_a_runnable_block() -> None:
    marked = {c for block in runnable_blocks(RUNBOOK.read_text()) for c in block}
    missing = [name for name, c in runbook.COMMANDS.items() if c not in marked]
    assert not missing, f"in drills/runbook.py, in no runnable block of operations.md: {missing}"


def test_every_runbook_command_is_run_by_the_drills_or_the_tests() -> None:
    used = names_used(("drills", "tests"))
    unused = sorted(set(runbook.COMMANDS) - used)
    assert not unused, f"runbook commands used nowhere in drills/ or tests/: {unused}"


def test_a_marked_block_is_read_as_the_commands_it_holds() -> None:
    text = (
        "intro\n\n<!-- runnable -->\n```sh\nsystemctl is-active a \\\n  b    # both\n\n"
        "wg show wg0   # peers\n```\n\n    not marked\n"
    )
    assert runnable_blocks(text) == [["systemctl is-active a b", "wg show wg0"]]
    with pytest.raises(AssertionError, match="not followed by"):
        runnable_blocks("<!-- runnable -->\n\n    indented\n")


def test_placeholders_are_filled_by_name() -> None:
    filled = runbook.command("patroni-switchover", current_leader="node-a", sync_standby="node-b")
    assert filled.endswith("switchover --leader node-a --candidate node-b --force")
    with pytest.raises(ValueError, match="<sync standby>"):
        runbook.command("patroni-switchover", current_leader="node-a")
    with pytest.raises(KeyError):
        runbook.command("patroni-list", member="node-a")
