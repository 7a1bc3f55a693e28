"""Offline render: `python -m tools.render --stack dev --out DIR`.

Runs the real program under the engine double, with no credentials and no Pulumi CLI, and writes
what each node would get, in the order the steps would run:

    DIR/<node>/NN-<step>.sh          the step's whole script
    DIR/<node>/NN-<step>/<path>      each file the step writes, at its path on the node
    DIR/resources.txt                the resource tree: type, name, parent
    DIR/outputs.json                 the stack outputs (secret ones shown as [secret])

Secrets appear as placeholders (<secret:...>), never as values.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

from components.config import ConfigError
from tools.engine import Engine, load_stack_file, run_program, stack_path


class RenderEngine(Engine):
    """Generated secrets render as placeholders naming the resource."""

    def secret_value(self, name: str, kind: str, inputs: dict) -> str:
        return f"<secret:{name}>"


def resource_tree(engine: Engine) -> str:
    """One line per resource, indented under its parent, with its type."""
    children: dict[str, list] = defaultdict(list)
    ordered = sorted(engine.resources, key=lambda r: r.order)
    parents = engine.parents
    for r in ordered:
        children[parents.get((r.type, r.name), "")].append(r)
    lines: list[str] = []

    def walk(key: str, depth: int) -> None:
        for r in children.get(key, []):
            lines.append(f"{'  ' * depth}{r.name}  [{r.type}]")
            walk(f"{r.type}::{r.name}", depth + 1)

    walk("", 0)
    return "\n".join(lines) + "\n"


def write_render(engine: Engine, out: Path) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    counters: dict[str, int] = defaultdict(int)
    files = 0
    for step in engine.steps():
        counters[step.node] += 1
        stem = f"{counters[step.node]:02d}-{step.step}"
        node_dir = out / step.node
        node_dir.mkdir(exist_ok=True)
        (node_dir / f"{stem}.sh").write_text(step.script)
        for path, _mode, _owner, content in step.files:
            target = node_dir / stem / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            files += 1
    (out / "resources.txt").write_text(resource_tree(engine))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.render", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--stack-file", type=Path, help="a Pulumi.<stack>.yaml elsewhere")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.monotonic()
    path = args.stack_file or stack_path(args.stack)
    if not path.exists():
        print(f"error: no stack file {path}", file=sys.stderr)
        return 2
    engine = RenderEngine()
    try:
        values = load_stack_file(path)
        outputs = run_program(values, engine, args.stack)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = write_render(engine, args.out)
    shown = {k: "[secret]" if k in engine.secret_outputs else v for k, v in outputs.items()}
    (args.out / "outputs.json").write_text(json.dumps(shown, indent=1) + "\n")
    steps = len(engine.steps())
    print(
        f"rendered stack {args.stack}: {len(engine.resources)} resources, {steps} steps, "
        f"{files} files -> {args.out} in {time.monotonic() - started:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
