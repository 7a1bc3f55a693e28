"""Run a step script (or another bash script a node gets) here, under stubbed commands.

A test takes a script the real program rendered (`engine.steps()` under the engine double),
and runs it on a `Node`: a scratch root where every absolute path under /etc, /var, /opt,
/run, /usr/local and /srv of the script lands, and a PATH of stub commands and a short list of
harmless real tools. Anything else is "command not found": the tests run as root, and nothing
a step does may reach this machine.

A stub logs its arguments (and its stdin, when asked), reads any piped input, and answers
from a table of `Answer`s: the first whose glob matches "$*" and has calls left. `sleep` and
`date +%s` keep a fake clock, so waiting loops and deadlines take no time. `chown` is only
logged, `install` logged and run without its owner options (the service accounts do not exist
here), `runuser` logged, then its command run. `Ran.calls` is what ran, in order; tests
assert the decisions (which commands, with which arguments), not the script's text.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import stack_values
from tools.engine import FILE_BLOCK, Engine, Step, run_program

# Where a node's state lives: moved below the scratch root.
ROOTED = ("/etc/", "/var/", "/opt/", "/run/", "/usr/local/", "/srv/")
# Real tools a script may use as they are: none of them reaches beyond the paths it is given.
REAL_TOOLS = (
    "awk", "basename", "bash", "cat", "chmod", "cmp", "cp", "cut", "dirname", "env", "find",
    "flock", "grep", "head", "ln", "ls", "mkdir", "mktemp", "mv", "paste", "python3",
    "readlink", "rm", "sed", "seq", "sha256sum", "sort", "stat", "tail", "tee", "timeout",
    "touch", "tr", "wc", "xargs",
)
CLOCK_START = 1_700_000_000
FIELD, STDIN, RECORD = "\x1f", "\x1d", "\x1e"


@functools.cache
def local_stack() -> Engine:
    """The local stack rendered by the real program under the engine double, once."""
    engine = Engine()
    run_program(stack_values("local"), engine, "local")
    return engine


def rendered_step(name: str, node: str = "node-a", engine: Engine | None = None) -> Step:
    """One node's step as the program rendered it (the local stack unless `engine`)."""
    (found,) = [s for s in (engine or local_stack()).steps() if s.step == name and s.node == node]
    return found


@dataclass(frozen=True)
class Answer:
    """What a stub does for a call whose arguments ("$*") match the glob `match`.

    `times` limits the answer to its first N matching calls (0: all of them); then the next
    matching answer applies. `run` is bash run in the stub ($ROOT is the scratch root) after
    the output; its exit status is then the stub's.
    """

    match: str = "*"
    stdout: str = ""
    status: int = 0
    times: int = 0
    stderr: str = ""
    run: str = ""


Stub = Answer | Sequence[Answer]


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[str, ...]
    stdin: str | None = None

    def __str__(self) -> str:
        return " ".join((self.name, *self.args))


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    calls: list[Call]

    def of(self, *names: str) -> list[str]:
        """The calls of these commands, in order, as "name arg arg ..." lines."""
        return [str(c) for c in self.calls if c.name in names]


class Node:
    """A scratch machine: files persist from one run to the next, stubs are per run."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.root = tmp_path / "root"
        # The directories every Debian machine has.
        for sub in ("tmp", "root", "etc", "var/lib", "var/log", "opt", "run", "usr/local/sbin",
                    "usr/local/bin", "srv"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.runs = 0

    def path(self, path: str) -> Path:
        """Where an absolute path is on this node (below the root)."""
        return self.root / path.lstrip("/")

    def dir(self, path: str) -> Path:
        target = self.path(path)
        target.mkdir(parents=True, exist_ok=True)
        return target

    def file(self, path: str, content: str = "", mode: int = 0o644) -> Path:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)
        return target

    def rooted(self, text: str) -> str:
        """`text` with every absolute path under ROOTED moved below the root."""
        pattern = "|".join(re.escape(p) for p in sorted(ROOTED, key=len, reverse=True))
        return re.sub(rf"(?<![\w.-])(?:{pattern})", lambda m: f"{self.root}{m.group(0)}", text)

    def unrooted(self, text: str) -> str:
        return text.replace(str(self.root), "")

    def run(
        self,
        script: str,
        stubs: Mapping[str, Stub] | None = None,
        *,
        present: bool | Iterable[str] = (),
        stdin_of: Iterable[str] = (),
        timeout: float = 60,
    ) -> Ran:
        """Run `script` with bash; `present` names the step's files already in place (with
        this content: `changed` is false for them), True for all of them."""
        self.runs += 1
        work = self.base / f"run{self.runs}"
        bin_dir, real_dir, state = work / "bin", work / "real", work / "state"
        for d in (bin_dir, real_dir, state):
            d.mkdir(parents=True)
        log = work / "calls"
        log.touch()
        (state / "clock").write_text(f"{CLOCK_START}\n")
        for tool in REAL_TOOLS:
            found = shutil.which(tool)
            if found:
                (real_dir / tool).symlink_to(found)
        capture = set(stdin_of)
        for name, body in _builtin_stubs().items():
            self._write_stub(bin_dir, name, body)
        for name, stub in (stubs or {}).items():
            answers = [stub] if isinstance(stub, Answer) else list(stub)
            self._write_stub(bin_dir, name, _answers(name, answers, name in capture))

        text = self.rooted(script)
        self._put_present(text, present)
        for line in re.findall(r"^put_file (\S+) ", text, re.M):
            assert line.startswith(f"{self.root}/"), f"{line}: a file outside the scratch root"
        path = work / "script.sh"
        path.write_text(text)
        env = {
            "PATH": f"{bin_dir}:{real_dir}",
            "ROOT": str(self.root),
            "STATE": str(state),
            "LOG": str(log),
            "TMPDIR": str(self.root / "tmp"),
            "HOME": str(self.root / "root"),
            "LANG": "C.UTF-8",
        }
        result = subprocess.run(
            ["/bin/bash", str(path)], stdin=subprocess.DEVNULL, env=env, cwd=self.root,
            capture_output=True, text=True, timeout=timeout,
        )
        return Ran(
            returncode=result.returncode,
            stdout=self.unrooted(result.stdout),
            stderr=self.unrooted(result.stderr),
            calls=self._calls(log.read_text()),
        )

    def _write_stub(self, bin_dir: Path, name: str, body: str) -> None:
        # A name with a slash is a program the script runs by its path (a venv's pip).
        target = self.path(name) if name.startswith("/") else bin_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
        target.chmod(0o755)

    def _put_present(self, text: str, present: bool | Iterable[str]) -> None:
        wanted = None if present is True else {self.rooted(p) for p in (present or ())}
        for block in FILE_BLOCK.finditer(text):
            if wanted is None or block["path"] in wanted:
                target = Path(block["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block["content"])

    def _calls(self, log: str) -> list[Call]:
        calls = []
        for record in log.split(RECORD)[:-1]:
            argv, sep, stdin = record.partition(STDIN)
            name, *args = argv.split(FIELD)
            calls.append(
                Call(name, tuple(self.unrooted(a) for a in args),
                     self.unrooted(stdin) if sep else None)
            )
        return calls


def _log_line(name: str, capture_stdin: bool = False) -> str:
    """Bash that appends one record (name, arguments, stdin if captured) to $LOG in one write."""
    stdin = 'rec+=$\'\\035\'"$(cat)"\n' if capture_stdin else ""
    return (
        f"rec={shlex.quote(name)}\n"
        'for a in "$@"; do rec+=$\'\\037\'"$a"; done\n'
        f"{stdin}"
        "printf '%s\\036' \"$rec\" >> \"$LOG\"\n"
    )


def _answers(name: str, answers: list[Answer], capture_stdin: bool) -> str:
    key = re.sub(r"\W", "_", name)
    lines = [
        "#!/bin/bash",
        f"# stub {name} (tests/unit/stepharness.py)",
        _log_line(name, capture_stdin),
        # Input piped in is read to its end, as the real command would: a stub that exited
        # unread would fail the writer (`echo ... | socat ...`) with SIGPIPE under pipefail,
        # now and then, depending on which process runs first.
        '[ -p /dev/stdin ] && cat >/dev/null',
        'args="$*"',
        "_answer() {  # INDEX TIMES: count a call; false once the answer has had TIMES calls",
        f'  local f="$STATE/{key}.$1" n=0',
        '  [ -f "$f" ] && n=$(<"$f")',
        '  [ "$2" -gt 0 ] && [ "$n" -ge "$2" ] && return 1',
        '  echo $((n + 1)) > "$f"',
        "}",
    ]
    for index, a in enumerate(answers):
        lines += [
            f"pattern={shlex.quote(a.match)}",
            f'if [[ $args == $pattern ]] && _answer {index} {a.times}; then',
            f"  printf %s {shlex.quote(a.stdout)}",
            f"  printf %s {shlex.quote(a.stderr)} >&2",
        ]
        if a.run:
            assert a.status == 0, "an answer with `run` exits with run's status"
            lines += [a.run, "  exit $?"]
        else:
            lines.append(f"  exit {a.status}")
        lines.append("fi")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def _builtin_stubs() -> dict[str, str]:
    """Stand-ins every run has: the fake clock, and what needs accounts this machine lacks."""
    real_install = shutil.which("install") or "/usr/bin/install"
    real_date = shutil.which("date") or "/usr/bin/date"
    return {
        # `date +%s` reads the fake clock; any other format is the real date.
        "date": (
            "#!/bin/bash\n"
            'if [ "$*" = +%s ]; then cat "$STATE/clock"; exit 0; fi\n'
            f'exec {real_date} "$@"\n'
        ),
        # sleep moves the clock on (whole seconds, rounded up) and returns at once.
        "sleep": (
            "#!/bin/bash\n" + _log_line("sleep")
            + 's=${1%%.*}; s=${s:-0}; case $1 in *.*) s=$((s + 1)) ;; esac\n'
            + 'echo $(( $(<"$STATE/clock") + s )) > "$STATE/clock"\n'
        ),
        # Owners are logged, not set: the service accounts do not exist here.
        "chown": "#!/bin/bash\n" + _log_line("chown"),
        "install": (
            "#!/bin/bash\n" + _log_line("install")
            + "keep=()\n"
            + 'while [ $# -gt 0 ]; do\n'
            + '  case $1 in -o|-g) shift 2 ;; --owner=*|--group=*) shift ;;'
            + ' *) keep+=("$1"); shift ;; esac\n'
            + "done\n"
            + f'exec {real_install} "${{keep[@]}}"\n'
        ),
        # runuser -u USER -- CMD...: logged, then CMD runs (as this user).
        "runuser": (
            "#!/bin/bash\n" + _log_line("runuser")
            + 'while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done\n'
            + 'shift\nexec "$@"\n'
        ),
    }
