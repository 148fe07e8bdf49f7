"""module_utils/opsbook_proc.py: stop signals, children that die with the module, stopping
them (SIGTERM, then SIGKILL), pipelines, the client tools' environment, and the watch on the
Ansible processes. Real processes, no server needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.loaders import PROJECT_ROOT, load_module_utils

proc = load_module_utils("opsbook_proc")


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once pid no longer exists (reaped) or is a zombie nobody reaps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


# ----------------------------------------------------------------- pipelines


def test_run_pipeline_pipes_stages_and_collects_stderr(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = proc.run_pipeline(
        [["sh", "-c", "printf 'b\\na\\n'; echo note >&2"], ["sort"]],
        dict(os.environ),
        tmp_path,
        stdout_path=out,
    )
    assert [r.returncode for r in results] == [0, 0]
    assert [r.name for r in results] == ["sh", "sort"]
    assert results[0].stderr.strip() == "note"
    assert out.read_text() == "a\nb\n"


def test_run_pipeline_stops_its_children_when_interrupted(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def interrupt(signum: int, frame: Any) -> None:
        raise proc.Interrupted(signal.SIGTERM)

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(proc.Interrupted, match="interrupted by SIGTERM"):
            proc.run_pipeline(
                [["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"]], dict(os.environ), tmp_path
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 5  # SIGTERM ended sleep; no grace period waited out
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


# ----------------------------------------------------------------- stop


def test_stop_sends_sigterm_then_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    ignores = proc.spawn(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
        stdout=subprocess.PIPE,
    )
    polite = proc.spawn(["sleep", "30"])
    assert ignores.stdout.readline() == b"ready\n"
    started = time.monotonic()
    proc.stop([ignores, polite], grace_s=1.0)
    took = time.monotonic() - started
    assert polite.returncode == -signal.SIGTERM
    assert ignores.returncode == -signal.SIGKILL
    assert 0.9 <= took < 5
    ignores.stdout.close()
    proc.stop([ignores, polite])  # already reaped: nothing to do, no error


def test_a_child_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """The parent is SIGKILLed (no cleanup runs): PR_SET_PDEATHSIG still kills the child."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        from tests.loaders import load_module_utils
        proc = load_module_utils("opsbook_proc")
        child = proc.spawn(["sleep", "60"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child was not started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        os.kill(child, 0)  # alive while its parent is
        parent.kill()
        parent.wait()
        assert wait_gone(child), "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# ----------------------------------------------------------------- stop signals


def test_the_first_stop_signal_raises_and_later_ones_are_ignored() -> None:
    before = signal.getsignal(signal.SIGINT)
    with proc.stop_signals():
        with pytest.raises(proc.Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert raised.value.signum == signal.SIGTERM
        assert proc.interrupted_by() == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # during the cleanup: noted, not raised
        time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_signals_held_delivers_after_the_cleanup() -> None:
    events = []
    with proc.stop_signals():
        with pytest.raises(proc.Interrupted), proc.signals_held():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
            events.append("cleanup finished")
        assert events == ["cleanup finished"]
        assert proc.interrupted_by() == signal.SIGHUP


# ----------------------------------------------------------------- environment


def test_tool_env_puts_the_password_in_the_childs_environment_only() -> None:
    env = proc.tool_env("s3cr:et", base={"PATH": "/bin", "PGPASSWORD": "inherited"})
    assert env == {"PATH": "/bin", "PGPASSWORD": "s3cr:et"}
    assert proc.tool_env(None, base={"PGPASSWORD": "inherited"}) == {"PGPASSWORD": "inherited"}
    assert "PGPASSWORD" not in os.environ or os.environ["PGPASSWORD"] != "s3cr:et"
    seen = subprocess.run(
        ["sh", "-c", 'printf %s "$PGPASSWORD"'],
        env=proc.tool_env("s3cr:et"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert seen.stdout == "s3cr:et"


# ----------------------------------------------------------------- the watch on Ansible


def _module_under(tmp_path: Path, parent_name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A stand-in process named like Ansible (argv[0]) starting, through sh, a 'module' that
    runs watch_ansible() and stop_signals() and writes a marker when its cleanup ran."""
    marker = tmp_path / "cleaned"
    module = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        from tests.loaders import load_module_utils
        proc = load_module_utils("opsbook_proc")
        with proc.stop_signals():
            proc.watch_ansible(interval_s=0.1)
            try:
                print("watching", flush=True)
                time.sleep(60)
            except proc.Interrupted as exc:
                open({str(marker)!r}, "w").write(str(exc))
        """
    )
    script = tmp_path / "module.py"
    script.write_text(module)
    launcher = textwrap.dedent(
        f"""
        import subprocess, sys, time
        subprocess.Popen(["/bin/sh", "-c", "{sys.executable} {script} && sleep 0"])
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [parent_name, "-c", launcher], executable=sys.executable, stdout=subprocess.PIPE
    )
    return parent, marker


def test_the_module_stops_itself_when_ansible_is_gone(tmp_path: Path) -> None:
    parent, marker = _module_under(tmp_path, "ansible-playbook")
    try:
        time.sleep(1.5)  # the module is up and watching
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "interrupted by SIGTERM"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_ansible_ancestors_stop_at_the_first_process_that_is_not_ansible() -> None:
    chain = proc.ansible_ancestors()
    assert chain == [os.getppid()]  # pytest's parent is no Ansible process
    assert proc.ansible_ancestors(start=1) == []
