"""Every relative Markdown link in README.md and docs/*.md names a file inside the repository.

A fresh clone has nothing beside the repository: a link such as `../shared/DESIGN.md` is dead
there, and so is a link to a file that was moved or deleted.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# [text](target) and ![alt](target); the target may be <bracketed> and carry a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*(?P<target><[^>]*>|[^)\s]+)[^)]*\)")
# [label]: target (reference definitions)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(?P<target><[^>]*>|\S+)", re.M)
FENCE = re.compile(r"^\s*(```|~~~)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def documents(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else re.sub(r"`[^`\n]*`", "``", line))
    return "\n".join(lines)


def link_targets(text: str) -> list[str]:
    prose = _prose(text)
    found = [m["target"] for m in INLINE_LINK.finditer(prose)]
    found += [m["target"] for m in REFERENCE.finditer(prose)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in found]


def broken_links(doc: Path, repo: Path = REPO) -> list[str]:
    """The relative links of `doc` that leave the repository or name no existing file."""
    problems = []
    for target in link_targets(doc.read_text()):
        if SCHEME.match(target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same file
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path.startswith("/"):
            problems.append(f"{target}: an absolute path (write it relative to {doc.name})")
            continue
        resolved = (doc.parent / path).resolve()
        if not resolved.is_relative_to(repo.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file in the repository")
    return problems


def test_every_relative_link_in_the_docs_names_a_file_of_the_repository() -> None:
    docs = documents()
    assert (REPO / "docs" / "architecture.md") in docs
    problems = {
        str(doc.relative_to(REPO)): broken for doc in docs if (broken := broken_links(doc))
    }
    assert not problems, problems


def test_the_readme_links_the_architecture() -> None:
    assert "docs/architecture.md" in link_targets((REPO / "README.md").read_text())


def test_a_link_outside_or_to_a_missing_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# there\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "See [the design](../shared/DESIGN.md), [gone](docs/gone.md),\n"
        "[root](/etc/passwd), [ok](docs/there.md#there), ![img](<docs/there.md>),\n"
        '[web](https://example.org/x.md), [anchor](#run-it), [t](docs/there.md "title").\n'
        "[ref]: docs/missing.md\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "and `[in code](nowhere.md)`.\n"
    )
    assert broken_links(readme, tmp_path) == [
        "../shared/DESIGN.md: outside the repository",
        "docs/gone.md: no such file in the repository",
        "/etc/passwd: an absolute path (write it relative to README.md)",
        "docs/missing.md: no such file in the repository",
    ]
    nested = tmp_path / "docs" / "nested.md"
    nested.write_text("[up](../README.md) [out](../../x.md)\n")
    assert broken_links(nested, tmp_path) == ["../../x.md: outside the repository"]
