"""Which folder may import which: the program never depends on its tools, the tools never on the
drills, and what runs on a node imports nothing of the repository.

  components/, templates/  the program: nothing from tools/, drills/ or tests/
  tools/                   the program and itself, never drills/ (a deploy must not need them)
  drills/                  itself and tools.localcloud, tools.engine only: it drills the cluster
                           as deployed (no components/, no pulumi: the standalone drills run on
                           the host's python3), and the deploy is `python -m tools.deploy`
  drills/agents/           nothing: each file is copied alone to a node and runs there
  tests/                   anything

Imports are read with `ast` (inside functions too; relative ones resolved), not by importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("components", "templates", "tools", "drills", "tests", "policy")
# Folder (most specific first) -> the first-party modules its files may import.
ALLOWED: dict[str, tuple[str, ...]] = {
    "drills/agents": (),
    "drills": ("drills", "tools.localcloud", "tools.engine"),
    "tools": ("components", "tools"),
    "components": ("components",),
    "templates": (),
}


def module_name(path: Path, repo: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, repo: Path) -> bool:
    path = repo.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(path: Path, repo: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones made absolute; for
    `from X import a`, X.a when that is a module of the repository, else X."""
    package = module_name(path, repo)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from ..y import z
                parts = package.split(".")
                prefix = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{prefix}.{node.module}" if node.module else prefix
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate, repo) else base))
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def forbidden_imports(repo: Path = REPO) -> list[str]:
    """`file:line imports module` for every first-party import its folder may not make."""
    problems = set()
    for folder, allowed in ALLOWED.items():
        for path in sorted((repo / folder).rglob("*.py")):
            rel = path.relative_to(repo).as_posix()
            if next(f for f in ALLOWED if rel.startswith(f + "/")) != folder:
                continue  # a more specific folder's rule applies
            for line, module in imported(path, repo):
                first_party = any(within(module, top) for top in FIRST_PARTY)
                if first_party and not any(within(module, ok) for ok in allowed):
                    problems.add(f"{rel}:{line} imports {module}")
    return sorted(problems)


def test_no_folder_imports_against_the_direction() -> None:
    assert forbidden_imports() == []


def test_the_rules_cover_the_folders_that_hold_code() -> None:
    assert all((REPO / folder).is_dir() for folder in ("components", "tools", "drills"))
    assert any((REPO / "drills" / "agents").glob("*.py"))


def test_a_forbidden_import_is_found_wherever_it_is_written_and_only_those(tmp_path) -> None:
    """The imports listed at the end are forbidden; every other import in the tree is allowed."""
    files = {
        "components/a.py": "from .b import x\ndef f():\n    from tools import deploy\n",
        "tools/deploy.py": "import drills.suite\nfrom tools.localcloud import lock\n",
        "tools/localcloud/__init__.py": "",
        "tools/localcloud/lock.py": "from . import cli\nfrom ..render import x\n",
        "drills/suite.py": "from components.config import X\nfrom drills import nodes\n",
        "drills/nodes.py": "from tools.deploy import main\nfrom tools import localcloud\n",
        "drills/agents/f.py": "from drills.nodes import ssh\nimport json, pika\n",
        "drills/agents/g.py": "from broker_agent import close\n",
        "templates/g.py": "import components\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert forbidden_imports(tmp_path) == [
        "components/a.py:3 imports tools.deploy",
        "drills/agents/f.py:1 imports drills.nodes",
        "drills/nodes.py:1 imports tools.deploy",
        "drills/suite.py:1 imports components.config",
        "templates/g.py:1 imports components",
        "tools/deploy.py:1 imports drills.suite",
    ]
