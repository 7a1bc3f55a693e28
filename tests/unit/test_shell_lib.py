"""The shared shell every step gets (templates/common/lib.sh.j2, loaded by the prelude), run
under stubbed commands: retries honour set -e, waits and users and listener checks decide
as they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.remote import _assemble
from tests.unit.stepharness import Answer, Node


def _step(body: str) -> str:
    """A step of nothing but `body`, with the real prelude and library."""
    return _assemble("demo", "node-a", [], [], body, [])


# A function whose middle command fails: `f && ok || again` would take it for done.
TWO_COMMANDS = """
work() {
  step-one
  step-two
  echo "work done"
}
"""


def test_retry_runs_again_when_a_command_in_the_middle_fails(tmp_path: Path) -> None:
    ran = Node(tmp_path).run(
        _step(TWO_COMMANDS + "retry 3 5 work\necho after\n"),
        {"step-one": [Answer(status=1, times=1), Answer()], "step-two": Answer()},
    )
    assert ran.returncode == 0, ran.stderr
    # The failed step-one ended the first attempt: step-two ran only in the second.
    assert ran.of("step-one", "step-two", "sleep") == [
        "step-one", "sleep 5", "step-one", "step-two",
    ]
    assert ran.stdout.count("work done") == 1 and "after" in ran.stdout
    assert "work failed (attempt 1 of 3, exit status 1): retrying in 5 s" in ran.stderr


def test_retry_gives_up_after_its_attempts_and_ends_the_step(tmp_path: Path) -> None:
    ran = Node(tmp_path).run(
        _step(TWO_COMMANDS + "retry 3 2 work\necho after\n"),
        {"step-one": Answer(status=7), "step-two": Answer()},
    )
    assert ran.returncode == 7
    assert ran.of("step-one", "step-two", "sleep") == [
        "step-one", "sleep 2", "step-one", "sleep 4", "step-one",
    ]
    assert "giving up: work failed 3 times (last exit status 7)" in ran.stderr
    assert "after" not in ran.stdout


@pytest.mark.parametrize(
    "call", ["if retry 2 1 work; then :; fi", "try work || true", "wait_until 5 work && :"]
)
def test_a_helper_called_as_a_condition_refuses_to_run(tmp_path: Path, call: str) -> None:
    # There bash ignores set -e inside whatever the helper runs: it must not pretend to work.
    ran = Node(tmp_path).run(_step(TWO_COMMANDS + call + "\necho after\n"), {"step-one": Answer()})
    assert ran.returncode == 2
    assert "was called as a condition" in ran.stderr and "call it as a plain command" in ran.stderr
    assert ran.of("step-one") == [] and "after" not in ran.stdout


def test_try_reports_the_status_and_keeps_set_e(tmp_path: Path) -> None:
    body = TWO_COMMANDS + 'try work\necho "tried=$tried"\nfalse\necho "not reached"\n'
    ran = Node(tmp_path).run(_step(body), {"step-one": Answer(status=3)})
    assert "tried=3" in ran.stdout and ran.of("step-two") == []
    assert ran.returncode == 1 and "not reached" not in ran.stdout  # set -e is back on


def test_wait_until_polls_with_set_e_and_times_out_with_a_message(tmp_path: Path) -> None:
    node = Node(tmp_path)
    ran = node.run(_step(TWO_COMMANDS + "wait_until 30 work\n"),
                   {"step-one": [Answer(status=1, times=2), Answer()], "step-two": Answer()})
    assert ran.returncode == 0, ran.stderr
    assert ran.of("step-one", "step-two") == ["step-one", "step-one", "step-one", "step-two"]
    ran = node.run(_step(TWO_COMMANDS + "wait_until 30 work\n"),
                   {"step-one": Answer(status=1), "step-two": Answer()})
    assert ran.returncode == 1 and "timed out waiting for: work" in ran.stderr
    assert 30 <= len(ran.of("sleep")) <= 31 and ran.of("step-two") == []


def test_apt_install_installs_only_what_is_missing_and_refreshes_after_a_failure(
    tmp_path: Path,
) -> None:
    stubs = {
        "dpkg-query": [Answer("*curl", stdout="install ok installed"), Answer(status=1)],
        "apt-get": [Answer("* install *", status=100, times=1), Answer()],
    }
    ran = Node(tmp_path).run(_step("apt_install curl chrony\n"), stubs)
    assert ran.returncode == 0, ran.stderr
    installs = [c for c in ran.of("apt-get") if " install " in c]
    assert len(installs) == 2
    assert all(c.endswith("--no-install-recommends chrony") for c in installs)
    assert ran.of("apt-get", "sleep")[1:3] == [
        "apt-get -o DPkg::Lock::Timeout=300 update -q", "sleep 3",
    ]


USER_STEP = 'system_user airflow 50000 /opt/airflow "DAG sync needs the same uid"\necho done\n'


def test_system_user_makes_the_group_and_user_with_the_fixed_id(tmp_path: Path) -> None:
    node = Node(tmp_path)
    ran = node.run(_step(USER_STEP), {"getent": Answer(status=2), "groupadd": Answer(),
                                      "useradd": Answer(), "id": Answer(stdout="50000\n")})
    assert ran.returncode == 0, ran.stderr
    assert ran.of("groupadd", "useradd") == [
        "groupadd --system --gid 50000 airflow",
        "useradd --system --uid 50000 --gid 50000 --home-dir /opt/airflow --no-create-home "
        "--shell /usr/sbin/nologin airflow",
    ]
    assert node.path("/opt/airflow").is_dir()
    # Made meanwhile by the node's other step (a lost race): found, not an error.
    ran = node.run(_step(USER_STEP), {
        "getent": [Answer("group *", status=2, times=1), Answer("passwd *", status=2, times=1),
                   Answer()],
        "groupadd": Answer(status=9), "useradd": Answer(status=9), "id": Answer(stdout="50000\n"),
    })
    assert ran.returncode == 0, ran.stderr


def test_system_user_refuses_an_account_with_another_uid(tmp_path: Path) -> None:
    ran = Node(tmp_path).run(_step(USER_STEP), {"getent": Answer(), "id": Answer(stdout="1001\n")})
    assert ran.returncode == 1
    assert ran.of("groupadd", "useradd") == []
    assert "user airflow exists with uid 1001, not 50000: DAG sync needs the same uid" in ran.stderr
    assert "done" not in ran.stdout


SS = "LISTEN 0 128 {} 0.0.0.0:*\n"
CHECK = "listeners_on_mesh_only Airflow ':(8080|5555)$' '^10\\.42\\.0\\.1:'\necho fine\n"


@pytest.mark.parametrize(
    ("listeners", "exposed"),
    [
        (["10.42.0.1:8080", "10.42.0.1:5555", "0.0.0.0:22", "127.0.0.1:5000"], None),
        (["10.42.0.1:8080", "0.0.0.0:5555"], "0.0.0.0:5555"),
        (["[::]:8080"], "[::]:8080"),
        (["10.42.0.11:8080"], "10.42.0.11:8080"),
    ],
)
def test_listeners_on_mesh_only(tmp_path: Path, listeners: list[str], exposed: str | None) -> None:
    ss = "".join(SS.format(address) for address in listeners)
    ran = Node(tmp_path).run(_step(CHECK), {"ss": Answer("-Hltn", stdout=ss)})
    if exposed is None:
        assert ran.returncode == 0 and "fine" in ran.stdout, ran.stderr
    else:
        assert ran.returncode == 1
        assert f"Airflow listens beyond the mesh: {exposed}" in ran.stderr


def test_any_line_is(tmp_path: Path) -> None:
    body = (
        'members=$(printf "rabbit@node-a\\nrabbit@node-b\\n")\n'
        'if any_line_is "$members" rabbit@node-c rabbit@node-b; then echo yes; fi\n'
        'if ! any_line_is "$members" rabbit@node-c rabbit@node; then echo no; fi\n'
    )
    ran = Node(tmp_path).run(_step(body))
    assert ran.returncode == 0 and ran.stdout.split() == ["yes", "no"], ran.stderr
