"""App hosts failing under deploy.yml and rollback.yml: a full deploy root, a host lost mid-run.

This file's own three app hosts (127.0.10.71-73, sample app 1.0.0); flt3's ``releases/`` is a
small tmpfs, a disk a test can fill. In order (each test checks its own starting point):

- A full disk on one host: deploy.yml of 1.1.0 cannot unpack the release there. That host fails
  before any switch, the deploy stops before switching anything, the others are untouched
  (same release, same app process), no partial release is left, the lock is released.
- A host lost during rollback.yml: after a good deploy of 1.1.0, flt2 stops answering from the
  start of the run (its sshd, sessions and app frozen: SIGSTOP) and is killed (SIGKILL) while
  flt1 is being rolled back. The others are rolled back behind their health gates; flt2 is
  reported unreachable with its state unknown; the lock is released.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost, SshKeyPair, host_address, stop_all
from opsbook.lab._proc import descendants
from opsbook.lab.sampleapp import build_release
from opsbook.lab.sshd import SshHost
from tests.integration.faults import Injector, fill, small_filesystem
from tests.integration.stats_helper import StatsRun, run_with_stats

pytestmark = pytest.mark.integration

FIRST_ADDRESS = 71
RELEASES_DISK_KIB = 1024


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, ssh_key: SshKeyPair) -> Iterator[list[AppHost]]:
    """flt1..flt3 serving 1.0.0; flt3's releases/ on a small tmpfs."""
    base = tmp_path_factory.mktemp("fault-hosts")
    started: list[AppHost] = []
    with contextlib.ExitStack() as stack:
        try:
            for i in range(3):
                host = AppHost(f"flt{i + 1}", host_address(FIRST_ADDRESS + i), base / f"flt{i + 1}",
                               ssh_key)  # fmt: skip
                if i == 2:
                    stack.enter_context(small_filesystem(host.releases_dir, RELEASES_DISK_KIB))
                started.append(host)
                host.start("1.0.0")
            yield started
        finally:
            stop_all(started)


@pytest.fixture(autouse=True)
def _hosts_back_up(hosts: list[AppHost]) -> Iterator[None]:
    """After each test every host answers SSH and serves (a test may freeze or kill one)."""
    yield
    for host in hosts:
        SshHost.start(host)
        if not host.app_running():
            host.start_app()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("fault-artifacts")
    return {"1.1.0": build_release("1.1.0", out)}


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-state")


@pytest.fixture
def inventory(make_inventory: Any, hosts: list[AppHost], state_dir: Path) -> Path:
    return make_inventory(
        env="faults", app_hosts=hosts, extra_vars={"opsbook_state_url": f"file://{state_dir}"}
    )


def lock_file(state_dir: Path) -> Path:
    return state_dir / "locks" / "local" / "deploy.json"  # env "faults" is a local one


def served(host: AppHost) -> tuple[str, int]:
    """(version, pid) of what the host's app serves."""
    answer = host.get("/api/version")
    assert answer.status == 200, answer
    return answer.body["version"], answer.body["pid"]


def current(host: AppHost) -> str:
    """The release `current` points at."""
    return Path(os.readlink(host.current_link)).name


def deploy(run_playbook: Any, tmp_path: Path, inventory: Path, artifact: Path) -> StatsRun:
    return run_with_stats(
        run_playbook, tmp_path, "deploy", inventory,
        extravars={"app_version": "1.1.0", "app_artifact": str(artifact)},
    )  # fmt: skip


# ----------------------------------------------------------------- a full deploy root


def test_a_full_deploy_root_fails_that_host_before_any_switch(
    hosts: list[AppHost],
    inventory: Path,
    artifacts: dict[str, Path],
    state_dir: Path,
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    full = hosts[2]
    before = {h.name: (current(h), served(h)) for h in hosts}
    assert {v for _, (v, _) in before.values()} == {"1.0.0"}
    filler = fill(full.releases_dir, leave_bytes=4096)  # app.py alone is 9 KiB
    try:
        run = deploy(run_playbook, tmp_path, inventory, artifacts["1.1.0"])
    finally:
        filler.unlink()
    assert run.rc != 0
    # nothing switched, nothing restarted: every host serves 1.0.0 from the same process; no
    # release left anywhere (the others' unused copy removed, no partial one on the full disk)
    assert {h.name: (current(h), served(h)) for h in hosts} == before
    assert [sorted(p.name for p in h.releases_dir.iterdir()) for h in hosts] == [["1.0.0"]] * 3
    assert not lock_file(state_dir).exists()
    report = run.stats["deploy"]
    assert (report["status"], report["untouched"], report["failed"]) == (
        "aborted",
        ["flt1", "flt2"],
        ["flt3"],
    )
    error = report["hosts"]["flt3"]["error"]
    assert f"/release-archive into {full.releases_dir}/.1.1.0-" in error  # where the disk is full
    assert error.endswith(".partial: [Errno 28] No space left on device; nothing was installed")
    assert "Deploy of 1.1.0 aborted: no host was switched" in run.output
    assert "flt1: untouched, still on release 1.0.0; flt2: untouched, still on release 1.0.0" in (
        run.output
    )


# ----------------------------------------------------------------- a host lost mid-rollback


def freeze(host: AppHost) -> list[int]:
    """SIGSTOP the host's sshd, its sessions and its app: it stops answering anything."""
    pids = [p for p in [host.pid, *descendants(host.pid or 0), host.app_pid] if p]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return pids


def test_a_host_lost_mid_rollback_is_reported_unknown_and_the_others_roll_back(
    hosts: list[AppHost],
    inventory: Path,
    artifacts: dict[str, Path],
    state_dir: Path,
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    good = deploy(run_playbook, tmp_path, inventory, artifacts["1.1.0"])
    assert good.rc == 0, good.output
    assert [served(h)[0] for h in hosts] == ["1.1.0"] * 3
    first, lost, third = hosts
    deployed = {h.name: current(h) for h in hosts}
    assert freeze(lost)
    # Ansible runs a task on every host before the next task: flt1 is switched back (its
    # `current` moves) while flt2's switch hangs; flt1's restart waits for flt2's answer.
    killer = Injector(lambda: current(first) != deployed["flt1"], lambda: AppHost.kill(lost))
    try:
        with killer:
            run = run_with_stats(run_playbook, tmp_path, "rollback", inventory)
    finally:
        AppHost.kill(lost)  # never left frozen (the autouse fixture starts it again)
    killer.check(run.output)
    assert run.rc != 0
    # the others rolled back, restarted and through their health gates
    assert [served(first)[0], served(third)[0]] == ["1.0.0", "1.0.0"]
    report = run.stats["rollback"]
    for host in (first, third):
        assert report["hosts"][host.name] == {
            "outcome": "rolled_back", "from": deployed[host.name], "to": "1.0.0",
            "to_version": "1.0.0", "error": "",
        }  # fmt: skip
    # the lost one: unreachable, its state unknown (in fact nothing ran there)
    assert report["hosts"]["flt2"]["outcome"] == "unreachable"
    assert report["hosts"]["flt2"]["error"].startswith(
        "state unknown (it may or may not have been rolled back; look at it once it answers) - "
        'unreachable: Task failed: Data could not be sent to remote host "127.0.10.72".'
    )
    assert current(lost) == deployed["flt2"]
    assert "Rollback failed: flt1: rolled_back from " in run.output
    assert "flt2: unreachable - state unknown (it may or may not have been rolled back" in (
        run.output
    )
    # the lock released all the same
    assert not lock_file(state_dir).exists()
