"""No function in components/ runs over 60 lines: a tier reads as named steps, not one long
constructor (issue 18). Split a function that grows past it into ones with names."""

from __future__ import annotations

import ast
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
MAX_LINES = 60


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `source` longer than `limit` lines,
    decorators and docstring included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_no_function_in_components_is_longer_than_60_lines() -> None:
    too_long = [
        f"{path.name}: {name} ({lines} lines)"
        for path in sorted(COMPONENTS.glob("*.py"))
        for name, lines in long_functions(path.read_text())
    ]
    assert not too_long, f"split these into named functions: {', '.join(too_long)}"


def _body(indent: str, lines: int) -> str:
    return "".join(f"{indent}x{i} = {i}\n" for i in range(lines))


def test_the_walk_sees_methods_and_nested_functions() -> None:
    method = "class A:\n    def short(self):\n        pass\n\n    def long(self):\n"
    method += _body(" " * 8, MAX_LINES)  # 61 lines with its def
    nested = "def outer():\n    def inner():\n" + _body(" " * 8, MAX_LINES)
    assert sorted(long_functions(method + nested)) == [
        ("inner", MAX_LINES + 1),
        ("long", MAX_LINES + 1),
        ("outer", MAX_LINES + 2),
    ]
    assert long_functions("def f():\n" + _body("    ", MAX_LINES - 1)) == []
