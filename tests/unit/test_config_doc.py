"""README.md's stack config tables are generated from the schema and kept current."""

from __future__ import annotations

from components import config_schema as schema
from tools import config_doc


def test_readme_tables_match_the_schema() -> None:
    assert config_doc.main(["--check"]) == 0, "run: .venv/bin/python -m tools.config_doc --write"


def test_every_declared_key_is_in_the_tables() -> None:
    text = config_doc.tables()
    keys = [*schema.TOP_KEYS, *schema.PATRONI_KEYS]
    keys += [k for node_keys in schema.NODE_KEYS.values() for k in node_keys]
    for key in keys:
        assert f"| `{key.name}` |" in text


def test_a_stale_readme_is_detected() -> None:
    readme = config_doc.README.read_text()
    stale = readme.replace("| `publicUi` |", "| `publicUI` |")
    assert config_doc.with_tables(stale) != stale
    assert config_doc.with_tables(readme) == readme
