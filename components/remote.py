"""The one way a tier puts files on a node or runs a step there.

A step is one `command:remote:Command` whose script (sent on stdin) writes the step's rendered
files and then runs the step's own shell. Files are written only when their content differs and
the names of the files that changed are in `$CHANGED`, so a re-run restarts nothing.

Triggers hold a hash of the script: an unchanged stack previews as no change and a changed
template re-runs exactly the steps that render it. A step reports values on stdout as
`key=value` lines; `step_output` reads them (that is how WireGuard public keys flow).
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pulumi
import pulumi_command as command

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
FILE_DELIMITER = "__AIRFLOW_HA_FILE__"
# The script arrives on stdin; it is saved first (mktemp: mode 0600) so that commands inside it
# (apt, ssh) cannot read the rest of it as their input. It runs with umask 022 whatever the login
# shell's is: the venv and configs it creates must be readable by the service users.
RUN_SCRIPT = 'f=$(mktemp); trap "rm -f $f" EXIT; cat > "$f"; umask 022; bash "$f" < /dev/null'

_jinja = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    # Shell uses "{#" (${#array[@]}): templates take no Jinja comments.
    comment_start_string="{##",
    comment_end_string="##}",
)


def shell_quote(value: Any) -> str:
    """`{{ value | sh }}`: one shell word whatever the value holds (shlex.quote). A plain word
    (a node name, a path, a number) stays as it is, so quoting changes no committed script;
    anything else is single-quoted. Every value a shell template interpolates goes through
    it (tests/unit/test_shell_quoting.py checks), so that a value no validator knows about
    cannot add a command to a step that runs as root."""
    return shlex.quote(str(value))


_jinja.filters["sh"] = shell_quote


def content_digest(*parts: str) -> str:
    """sha256 of texts joined by NUL: what a step's script carries of the files or settings
    it acts on, so that their change re-runs it."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def render(template: str, context: Mapping[str, Any]) -> str:
    """Render one template (path under templates/) with plain values."""
    return _jinja.get_template(template).render(**context)


def render_output(template: str, context: Mapping[str, Any]) -> pulumi.Output[str]:
    """Render once every Output in `context` (nested too) is known; secrets stay secret."""
    return pulumi.Output.from_input(dict(context)).apply(lambda ctx: render(template, ctx))


@dataclass(frozen=True)
class RemoteFile:
    """A file a step writes: `content` is rendered text (str or Output[str])."""

    path: str
    content: Any
    mode: str = "0644"
    owner: str = "root:root"


def timer_files(
    script: str, unit: str, templates: str, context: Mapping[str, Any]
) -> list[RemoteFile]:
    """A script run by a systemd timer: the script (0755), its oneshot service and its timer,
    from `<templates>.py.j2`, `.service.j2` and `.timer.j2` (unit: the path without suffix)."""
    return [
        RemoteFile(script, render(f"{templates}.py.j2", context), mode="0755"),
        RemoteFile(f"{unit}.service", render(f"{templates}.service.j2", context)),
        RemoteFile(f"{unit}.timer", render(f"{templates}.timer.j2", context)),
    ]


@dataclass(frozen=True)
class NodeAccess:
    """How steps reach a node: its name and the SSH connection."""

    name: str
    host: pulumi.Input[str]
    user: str
    port: int
    private_key: pulumi.Input[str]
    # The machine's identity (server id): a replaced server re-runs every step on it.
    instance: pulumi.Input[str] | None = None
    # The server's ssh-ed25519 host key: pulumi-command refuses a server that shows another.
    host_key: pulumi.Input[str] | None = None

    def connection(self) -> command.remote.ConnectionArgs:
        return command.remote.ConnectionArgs(
            host=self.host,
            user=self.user,
            port=self.port,
            private_key=self.private_key,
            host_key=self.host_key,
            dial_error_limit=30,
            per_dial_timeout=10,
        )


def _file_block(f: RemoteFile, content: str) -> str:
    # The content goes into a quoted here-document: only a line equal to the delimiter could
    # end it early and run what follows.
    if FILE_DELIMITER in content.splitlines():
        raise ValueError(f"{f.path}: a line of its content is the here-document delimiter")
    if not content.endswith("\n"):
        content += "\n"
    return f"put_file {f.path} {f.mode} {f.owner} <<'{FILE_DELIMITER}'\n{content}{FILE_DELIMITER}\n"


def _assemble(
    step: str,
    node: str,
    files: Sequence[RemoteFile],
    contents: Sequence[str],
    body: str,
    outputs: Sequence[str],
) -> str:
    prelude = render("common/prelude.sh.j2", {"step": step, "node": node, "outputs": list(outputs)})
    blocks = "".join(_file_block(f, c) for f, c in zip(files, contents, strict=True))
    return prelude + blocks + "\n# --- step ---\n" + body


def run_step(
    step: str,
    node: NodeAccess,
    body: pulumi.Input[str],
    *,
    parent: pulumi.Resource,
    files: Sequence[RemoteFile] = (),
    outputs: Sequence[str] = (),
    depends_on: Sequence[pulumi.Resource] = (),
    timeout_minutes: int = 20,
) -> command.remote.Command:
    """Create the Command that runs `body` (after writing `files`) on `node`.

    `outputs` names the `key=value` lines the step prints (for readers and the offline render).
    """
    script = pulumi.Output.all(body, *[f.content for f in files]).apply(
        lambda parts: _assemble(step, node.name, files, parts[1:], parts[0], outputs)
    )
    digest = script.apply(content_digest)
    run_as = RUN_SCRIPT if node.user == "root" else f"sudo -n bash -c '{RUN_SCRIPT}'"
    return command.remote.Command(
        f"{node.name}-{step}",
        connection=node.connection(),
        create=run_as,
        stdin=script,
        triggers=[digest] if node.instance is None else [digest, node.instance],
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on),
            custom_timeouts=pulumi.CustomTimeouts(
                create=f"{timeout_minutes}m", update=f"{timeout_minutes}m"
            ),
        ),
    )


def parse_outputs(stdout: str) -> dict[str, str]:
    """The `key=value` lines a step printed (the last one wins)."""
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            values[key] = value
    return values


def step_output(cmd: command.remote.Command, key: str) -> pulumi.Output[str]:
    """One `key=value` value printed by a step; fails loudly when the step did not print it."""

    def pick(stdout: str) -> str:
        values = parse_outputs(stdout or "")
        if key not in values:
            raise ValueError(f"step {cmd._name} printed no '{key}=' line")
        return values[key]

    return cmd.stdout.apply(pick)
