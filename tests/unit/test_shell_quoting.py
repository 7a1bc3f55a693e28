"""Values in step scripts are shell-quoted: a value no validator caught cannot add a command.

The steps are bash run as root. Every `{{ value }}` a shell template interpolates in code goes
through the `sh` filter (shlex.quote, components/remote.py). Checked two ways: the templates
(every interpolation in code is quoted), and the rendered scripts of every committed stack with
hostile values put past the validators, whose structure as bash parses it (`declare -f` prints
a function's parsed body) must be that of the same scripts with benign values.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from components import config as config_module
from components.remote import TEMPLATES_DIR, render
from tests.conftest import stack_values
from tools import engine as engine_module
from tools.engine import Engine, fake_public_key, parse_step, run_program

EXPRESSION = re.compile(r"\{\{(.*?)\}\}")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?\s*$")
# `| sh` (one word), `| map('sh') | join(' ')` (several), `| int` (a number: nothing to quote).
QUOTED = re.compile(r"\|\s*(sh|int)\s*$|\|\s*map\('sh'\)\s*\|\s*join\(")


def _shell_templates() -> list[str]:
    return sorted(
        str(p.relative_to(TEMPLATES_DIR)) for p in TEMPLATES_DIR.rglob("*.sh.j2")
    )


@pytest.mark.parametrize("template", _shell_templates())
def test_every_interpolation_in_shell_code_is_quoted(template: str) -> None:
    heredoc_end = None
    for number, line in enumerate((TEMPLATES_DIR / template).read_text().splitlines(), 1):
        if heredoc_end is not None:  # a quoted here-document (SQL): not shell
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        match = HEREDOC.search(line)
        if match and "<<<" not in line:
            heredoc_end = match.group(1)
        code = line if not line.lstrip().startswith("#") else ""
        for expression in EXPRESSION.findall(code):
            assert QUOTED.search(expression.strip()), (
                f"{template}:{number}: {{{{{expression}}}}} is not shell-quoted (add | sh)"
            )


def test_the_filter_quotes_only_what_needs_it() -> None:
    assert render_inline("{{ v | sh }}", v="node-a") == "node-a"
    assert render_inline("{{ v | sh }}", v="10.42.0.1:2380") == "10.42.0.1:2380"
    assert render_inline("{{ v | sh }}", v="x'; touch /tmp/pwned; echo '") == (
        "'x'\"'\"'; touch /tmp/pwned; echo '\"'\"''"
    )


def render_inline(source: str, **context: Any) -> str:
    from components.remote import _jinja

    return _jinja.from_string(source).render(**context)


# --- hostile values past the validators ----------------------------------------------------

# No file is touched if one of these ever ran: they only print.
PAYLOAD = "x'; echo pwned; echo '\" $(echo pwned) `echo pwned` | & ; > < * {a,b} $HOME"


def _hostile(tag: str) -> str:
    return f"{tag}{PAYLOAD}"


def _benign(tag: str) -> str:
    return f"{tag} benign"  # the space: quoted wherever the hostile value is


FIELD_TAGS = [f"{i}{kind}" for i in range(1, 4) for kind in "nhu"] + ["admin"]


def _canonical(name: str) -> str:
    """A resource name with hostile node names made benign: what the engine double derives
    addresses and keys from must not differ between the two renders."""
    for tag in FIELD_TAGS:
        name = name.replace(_hostile(tag), _benign(tag))
    return name


class _SecretsEngine(Engine):
    """Generated secrets hostile (or benign) too: passwords and the cookie land in scripts."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def secret_value(self, name: str, kind: str, inputs: dict) -> str:
        # A seed, never text: no shell sees it, only the key or certificate made from it.
        # The same in both renders where it lands in a step's file (the TLS keys).
        if name.endswith(("-host-key", "-pgbackrest-tls-key", "pgbackrest-tls-ca")):
            return super().secret_value(_canonical(name), kind, inputs)
        return self.make(f"s-{name}")

    def run_command(self, name: str, inputs: dict) -> dict:
        prints = parse_step(inputs.get("stdin", "")).prints
        values = {
            key: fake_public_key(f"{_canonical(name)}/{key}") if key == "wgPublicKey" else key
            for key in prints
        }
        return {"stdout": "".join(f"{k}={v}\n" for k, v in values.items()), "stderr": ""}


def _render(stack: str, make: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list]:
    """Each step's script by resource name, with every string field set by `make`."""
    values = copy.deepcopy(stack_values(stack))
    cfg = config_module.parse_config(values, stack=stack)
    tags: list[str] = []

    def field(tag: str) -> str:
        assert tag in FIELD_TAGS
        tags.append(tag)
        return make(tag)

    nodes = tuple(
        dataclasses.replace(
            n,
            name=field(f"{n.mesh_index}n"),
            host=field(f"{n.mesh_index}h") if n.host else None,
            user=field(f"{n.mesh_index}u") if n.cloud == "static" else n.user,
        )
        for n in cfg.nodes
    )
    spoiled = dataclasses.replace(cfg, nodes=nodes, airflow_admin_user=field("admin"))
    monkeypatch.setattr(config_module, "load_config", lambda: spoiled)
    host_byte = engine_module._host_byte
    monkeypatch.setattr(engine_module, "_host_byte", lambda name: host_byte(_canonical(name)))
    engine = _SecretsEngine(make)
    run_program(values, engine, stack)
    scripts = {r.name: r.inputs["stdin"] for r in engine.of_type("command:remote:Command")}
    secrets = [f"s-{r.name}" for r in engine.resources if r.type.startswith("random:")]
    # objectStorage.create's access keys: the secret and the key ID (the resource's id).
    for r in engine.of_type(engine_module.ACCESS_KEY):
        secrets += [f"s-{r.name}", f"s-{r.name}-id"]
    return scripts, tags + secrets


def _parsed(script: str, tmp_path: Path) -> str:
    """The script's body as bash parsed it (comments gone, words as written)."""
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(f"__step() {{\n{script}\n}}\ndeclare -f __step\n")
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", str(wrapper)],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )
    assert "pwned" not in result.stdout.split("{", 1)[0]  # nothing ran while defining it
    return result.stdout


# A quoted here-document (a file a step writes) is literal text to bash: a value in it is data
# (checked by the file's own validators and tests), not code.
QUOTED_HEREDOC = re.compile(r"<<'(\w+)'\n.*?^\1$", re.S | re.M)


def _raw_to_benign(text: str, tags: list[str]) -> str:
    for tag in tags:
        text = text.replace(_hostile(tag), _benign(tag))
    return text


def _json(value: str) -> str:
    """How the task logs' connection writes a key (components/airflow.py, connection_value)."""
    return json.dumps(value)[1:-1].replace("'", "\\u0027").replace("$", "\\u0024")


def _escaped(value: str) -> str:
    """How shlex.quote writes a value inside a larger single-quoted word."""
    return value.replace("'", "'\"'\"'")


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "local"])
def test_hostile_values_do_not_change_any_scripts_structure(
    stack: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hostile, tags = _render(stack, _hostile, monkeypatch)
    benign, _ = _render(stack, _benign, monkeypatch)

    def resource(name: str) -> str:  # step resources are named <node>-<step>
        for tag in tags:
            name = name.replace(_hostile(tag), _benign(tag))
        return name

    hostile = {resource(name): script for name, script in hostile.items()}
    assert sorted(hostile) == sorted(benign)
    checked = 0
    for name, script in hostile.items():
        parsed = _parsed(script, tmp_path)
        for tag in tags:
            parsed = parsed.replace(shlex.quote(_hostile(tag)), shlex.quote(_benign(tag)))
        for tag in tags:
            parsed = parsed.replace(_escaped(_hostile(tag)), _benign(tag))
            # In a file's content (airflow.cfg's broker URL), a secret is URL-encoded data.
            parsed = parsed.replace(quote(_hostile(tag), safe=""), quote(_benign(tag), safe=""))
            # In the env file's connection (JSON: objectStorage.create's keys), JSON text.
            parsed = parsed.replace(_json(_hostile(tag)), _json(_benign(tag)))
        parsed = QUOTED_HEREDOC.sub(lambda m: _raw_to_benign(m.group(0), tags), parsed)
        assert parsed == _parsed(benign[name], tmp_path), f"{name}: a value changed the script"
        checked += 1
    assert checked >= 30


def test_a_file_cannot_end_its_here_document_early() -> None:
    from components.remote import FILE_DELIMITER, RemoteFile, _file_block

    with pytest.raises(ValueError, match="delimiter"):
        _file_block(RemoteFile("/etc/x", ""), f"a\n{FILE_DELIMITER}\nreboot\n")


def test_render_of_a_shell_template_quotes_the_admin_user() -> None:
    script = render(
        "airflow/migrate.sh.j2",
        {
            "version": "3.3.2",
            "lock_digest": "0",
            "target": "/opt/airflow/venvs/3.3.2-0",
            "admin_user": "x'; touch /tmp/pwned; echo '",
            "admin_password": "p",
            "admin_role": "Admin",
        },
    )
    assert "--username 'x'\"'\"'; touch /tmp/pwned; echo '\"'\"''" in script
