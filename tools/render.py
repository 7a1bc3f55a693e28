"""Offline render: `python -m tools.render --stack dev --out DIR` (or `--all-stacks`).

Runs the real program under the engine double, with no credentials and no Pulumi CLI, and writes
what each node would get, in the order the steps would run:

    DIR/<node>/NN-<step>.sh          the step's whole script
    DIR/<node>/NN-<step>/<path>      each file the step writes, at its path on the node
    DIR/resources.txt                the resource tree: type, name, parent
    DIR/dependencies.txt             what each resource waits for (depends_on and the
                                     resources its inputs come from)
    DIR/outputs.json                 the stack outputs (secret ones shown as [secret])

Secrets appear as placeholders (<secret:...>), never as values. The order is the same on every
run: by depth in the dependency graph, then by name (see run_order).

`--all-stacks` renders every stacks/Pulumi.<stack>.yaml into DIR/<stack>. `--golden` writes the
form kept in tests/golden (`make golden`): each file's content once (a script's here-document
names the file beside it instead of repeating it), a committed file used verbatim (the lock
file) by its path and digest, so that the snapshots stay small and their diffs readable, and
every file name ending in `.golden`, so that tools that read code (ruff, `duplicates`) leave
the snapshots alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

from components.config import ConfigError
from components.remote import FILE_DELIMITER, TEMPLATES_DIR
from tools.engine import (
    FILE_BLOCK,
    RENDER_CA_CERTIFICATE,
    REPO,
    STACKS_DIR,
    Engine,
    Registered,
    Step,
    fake_host_keys,
    load_stack_file,
    parse_step,
    run_program,
    stack_path,
    with_ca_certificate,
    with_host_keys,
)

GOLDEN_SUFFIX = ".golden"


class RenderEngine(Engine):
    """Generated secrets render as placeholders naming the resource."""

    def secret_value(self, name: str, kind: str, inputs: dict) -> str:
        return f"<secret:{name}>"


def _key(r: Registered) -> str:
    return f"{r.type}::{r.name}"


def run_order(engine: Engine) -> list[Registered]:
    """Every resource in an order the engine could create them in, the same on every run: by
    depth (one more than the deepest of its dependencies and its parent), then by name.

    Registration order would not do: the SDK registers a resource once its inputs have resolved,
    from a thread pool, so two runs number the steps differently.
    """
    by_key = {_key(r): r for r in engine.resources}
    depth: dict[str, int] = {}

    def depth_of(key: str) -> int:
        if key not in depth:
            r = by_key[key]
            own = (r.type, r.name)
            waits = {*engine.dependencies.get(own, ()), engine.parents.get(own, "")}
            depth[key] = 1 + max((depth_of(k) for k in waits if k in by_key), default=-1)
        return depth[key]

    return sorted(engine.resources, key=lambda r: (depth_of(_key(r)), r.name, r.type))


def ordered_steps(engine: Engine) -> list[Step]:
    return [
        parse_step(r.inputs["stdin"])
        for r in run_order(engine)
        if r.type == "command:remote:Command"
    ]


def resource_tree(engine: Engine) -> str:
    """One line per resource, indented under its parent, with its type."""
    children: dict[str, list] = defaultdict(list)
    parents = engine.parents
    for r in run_order(engine):
        children[parents.get((r.type, r.name), "")].append(r)
    lines: list[str] = []

    def walk(key: str, depth: int) -> None:
        for r in children.get(key, []):
            lines.append(f"{'  ' * depth}{r.name}  [{r.type}]")
            walk(_key(r), depth + 1)

    walk("", 0)
    return "\n".join(lines) + "\n"


def _short(key: str) -> str:
    """"hcloud:index/server:Server::hel" -> "hel [Server]"."""
    typ, name = key.rsplit("::", 1)
    return f"{name} [{typ.rsplit(':', 1)[-1]}]"


def dependency_list(engine: Engine) -> str:
    """One line per resource that waits for others: what it waits for, sorted."""
    lines = []
    for r in run_order(engine):
        waits = engine.dependencies.get((r.type, r.name))
        if waits:
            lines.append(f"{_short(_key(r))} <- {', '.join(sorted(_short(k) for k in waits))}")
    return "\n".join(lines) + "\n"


def _verbatim_files() -> dict[str, str]:
    """Committed files a step writes as they are (not templates): content -> what names it."""
    named = {}
    for path in sorted(TEMPLATES_DIR.rglob("*")):
        if path.is_file() and path.suffix != ".j2":
            text = path.read_text()
            digest = hashlib.sha256(text.encode()).hexdigest()
            named[text] = f"(the committed {path.relative_to(REPO)}, sha256 {digest})\n"
    return named


def _golden_script(step: Step, stem: str) -> str:
    """The script with each here-document's content replaced by where the file is written."""

    def point(match) -> str:
        where = f"{stem}/{match['path'].lstrip('/')}"
        return (
            f"put_file {match['path']} {match['mode']} {match['owner']} <<'{FILE_DELIMITER}'\n"
            f"(tests/golden: the content is {where}{GOLDEN_SUFFIX})\n{FILE_DELIMITER}"
        )

    return FILE_BLOCK.sub(point, step.script)


def write_render(engine: Engine, out: Path, golden: bool = False) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    verbatim = _verbatim_files() if golden else {}
    suffix = GOLDEN_SUFFIX if golden else ""
    counters: dict[str, int] = defaultdict(int)
    files = 0
    for step in ordered_steps(engine):
        counters[step.node] += 1
        stem = f"{counters[step.node]:02d}-{step.step}"
        node_dir = out / step.node
        node_dir.mkdir(exist_ok=True)
        script = _golden_script(step, stem) if golden else step.script
        (node_dir / f"{stem}.sh{suffix}").write_text(script)
        for path, _mode, _owner, content in step.files:
            target = node_dir / stem / f"{path.lstrip('/')}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(verbatim.get(content, content))
            files += 1
    (out / f"resources.txt{suffix}").write_text(resource_tree(engine))
    (out / f"dependencies.txt{suffix}").write_text(dependency_list(engine))
    return files


def render_stack(stack: str, out: Path, path: Path | None = None, golden: bool = False) -> str:
    """Render one stack into `out`; the summary line. Raises ConfigError for a bad stack."""
    started = time.monotonic()
    engine = RenderEngine()
    values = load_stack_file(path or stack_path(stack))
    if stack == "local":  # the machines' keys and the S3 CA exist once tools.localcloud made them
        values = with_host_keys(values, fake_host_keys(values))
        values = with_ca_certificate(values, RENDER_CA_CERTIFICATE)
    outputs = run_program(values, engine, stack)
    files = write_render(engine, out, golden)
    shown = {k: "[secret]" if k in engine.secret_outputs else v for k, v in outputs.items()}
    suffix = GOLDEN_SUFFIX if golden else ""
    (out / f"outputs.json{suffix}").write_text(json.dumps(shown, indent=1) + "\n")
    return (
        f"rendered stack {stack}: {len(engine.resources)} resources, {len(engine.steps())} "
        f"steps, {files} files -> {out} in {time.monotonic() - started:.2f}s"
    )


def all_stacks() -> list[str]:
    return sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml")
                  for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.render", description=__doc__.split("\n")[0]
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stack", default="dev")
    which.add_argument("--all-stacks", action="store_true", help="every stack, into OUT/<stack>")
    parser.add_argument("--stack-file", type=Path, help="a Pulumi.<stack>.yaml elsewhere")
    parser.add_argument("--golden", action="store_true", help="the form kept in tests/golden")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.all_stacks and args.stack_file:
        parser.error("--stack-file names one stack: use it with --stack")
    targets = (
        [(stack, args.out / stack) for stack in all_stacks()]
        if args.all_stacks
        else [(args.stack, args.out)]
    )
    for stack, out in targets:
        path = args.stack_file or stack_path(stack)
        if not path.exists():
            print(f"error: no stack file {path}", file=sys.stderr)
            return 2
        try:
            print(render_stack(stack, out, path, args.golden))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
