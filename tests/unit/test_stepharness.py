"""The step harness itself: a stub behaves as the command it stands for where a script relies
on it."""

from __future__ import annotations

from pathlib import Path

from tests.unit.stepharness import Answer, Node


def test_a_stub_reads_what_is_piped_into_it_so_the_writer_never_gets_sigpipe(
    tmp_path: Path
) -> None:
    # Unread, a short write (`echo ... | socat`) failed its writer under pipefail now and then,
    # when the stub happened to exit first; more than a pipe's buffer fails it every time.
    script = "set -euo pipefail\nprintf '%*s' 200000 '' | socat stdio x\necho written\n"
    ran = Node(tmp_path).run(script, {"socat": Answer()})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "written\n"
    assert len(ran.of("socat")) == 1
