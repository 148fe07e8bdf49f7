"""deploy.yml and rollback.yml against three real SSH app hosts (127.0.10.31-33).

One scenario, in order (each test states and checks its own starting point):
deploy v1, then v2; a re-run changes nothing; --check changes nothing; a v3 whose canary
fails its health gate is rolled back on the canary while the other hosts are untouched;
a host that becomes unreachable mid-run stops the rollout and the switched hosts are rolled
back; a second deploy is refused by the lock; rollback twice goes back two good releases.
Then the production gates: staging gate, hotfix, deploy window.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost, SshKeyPair, start_app_hosts, stop_all
from opsbook.lab.sampleapp import APP_SOURCE, build_release, sha256_file
from opsbook.lab.sshd import SshHost
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env
from tests.integration.faults import processes_with
from tests.integration.stats_helper import StatsRun, run_with_stats
from tests.webhook import Webhook

pytestmark = pytest.mark.integration

FIRST_ADDRESS = 31


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def deploy_hosts(
    tmp_path_factory: pytest.TempPathFactory, ssh_key: SshKeyPair
) -> Iterator[list[AppHost]]:
    base = tmp_path_factory.mktemp("deploy-hosts")
    hosts = start_app_hosts(3, base, ssh_key, first_address=FIRST_ADDRESS, version="0.9.0")
    try:
        yield hosts
    finally:
        stop_all(hosts)


@pytest.fixture(autouse=True)
def _hosts_back_up(deploy_hosts: list[AppHost]) -> Iterator[None]:
    """After each test every host answers SSH and serves (a fault test may kill one)."""
    yield
    for host in deploy_hosts:
        SshHost.start(host)
        if not host.app_running():
            host.start_app()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy-state")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Release archives: good 1.0.0, 2.0.0, 4.0.0, 5.0.0, 6.0.0; 3.0.0 whose /health answers 500."""
    out = tmp_path_factory.mktemp("artifacts")
    built = {v: build_release(v, out) for v in ("1.0.0", "2.0.0", "4.0.0", "5.0.0", "6.0.0")}
    built["3.0.0"] = broken_release("3.0.0", out)
    return built


def broken_release(version: str, out: Path) -> Path:
    """An artifact whose app starts but always fails /health (a bad release)."""
    source = APP_SOURCE.read_text()
    marker = "    def health_mode(self) -> tuple[str, int]:\n"
    assert marker in source
    patched = source.replace(marker, marker + '        return "fail", 0\n', 1)
    work = out / f"broken-{version}"
    work.mkdir()
    (work / "app.py").write_text(patched)
    (work / "VERSION").write_text(f"{version}\n")
    target = out / f"sampleapp-{version}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(work / "app.py", arcname="app.py")
        tar.add(work / "VERSION", arcname="VERSION")
    return target


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture
def inventory(make_inventory: Any, deploy_hosts: list[AppHost], state_dir: Path, webhook: Webhook):
    def make(env: str = "test", **extra: Any) -> Path:
        return make_inventory(
            env=env,
            app_hosts=deploy_hosts,
            extra_vars={
                "opsbook_state_url": f"file://{state_dir}",
                "opsbook_notify_webhook_url": webhook.url,
                "opsbook_notify_start": True,  # the operation log announces starts too
                **extra,
            },
        )

    return make


@pytest.fixture
def deploy(run_playbook: Any, tmp_path: Path, artifacts: dict[str, Path], inventory: Any):
    def run(
        version: str,
        env: str = "test",
        check: bool = False,
        args: tuple[str, ...] = (),
        **extravars: Any,
    ) -> StatsRun:
        variables = {"app_version": version, "app_artifact": str(artifacts[version]), **extravars}
        return run_with_stats(
            run_playbook,
            tmp_path,
            "deploy",
            inventory(env),
            extravars=variables,
            check=check,
            args=args,
        )

    return run


@pytest.fixture
def rollback(run_playbook: Any, tmp_path: Path, inventory: Any):
    def run(env: str = "test", check: bool = False, **extravars: Any) -> StatsRun:
        return run_with_stats(
            run_playbook, tmp_path, "rollback", inventory(env), extravars=extravars, check=check
        )

    return run


def lock_file(state_dir: Path, env: str = "local") -> Path:
    """Where deploy_lock keeps the lock of env on the file:// state URL (the inventory "test"
    is a sandbox-like one: its opsbook_env is local)."""
    return state_dir / "locks" / env / "deploy.json"


def switch_batches(run: StatsRun) -> int:
    """How many batches the switch play ran (its header is printed once per batch)."""
    return run.stdout.count("PLAY [Deploy | switch, canary first")


# --------------------------------------------------------------------------- helpers


def snapshot(host: AppHost) -> dict[str, Any]:
    """What a deploy may change on a host: current, the release dirs, the app's pid and version."""
    answer = host.get("/api/version")
    return {
        "current": os.readlink(host.current_link) if host.current_link.is_symlink() else None,
        "releases": sorted(p.name for p in host.releases_dir.iterdir()),
        "pid": answer.body.get("pid") if isinstance(answer.body, dict) else None,
        "version": answer.body.get("version") if isinstance(answer.body, dict) else None,
        "tree": sorted(
            (str(p.relative_to(host.deploy_root)), p.lstat().st_mtime_ns)
            for p in host.deploy_root.rglob("*")
            if "shared" not in p.relative_to(host.deploy_root).parts[:1]
        ),
    }


def versions(hosts: list[AppHost]) -> list[str]:
    return [host.version() for host in hosts]


def release_meta(host: AppHost) -> dict[str, Any]:
    current = Path(os.readlink(host.current_link))
    if not current.is_absolute():
        current = host.deploy_root / current
    return json.loads((current / ".opsbook-release.json").read_text())


def changed_on(run: StatsRun, hosts: list[AppHost]) -> dict[str, int]:
    return {h.name: run.hosts[h.name]["changed"] for h in hosts}


# --------------------------------------------------------------------------- scenario


def test_deploy_v1_then_v2(
    deploy: Any, deploy_hosts: list[AppHost], artifacts: dict[str, Path], webhook: Webhook
) -> None:
    assert versions(deploy_hosts) == ["0.9.0"] * 3
    first = deploy("1.0.0", args=("-e", "deploy_batch=50%"))  # text, as -e gives it
    assert first.rc == 0, first.output
    assert switch_batches(first) == 3  # the canary, then 50% of 3 hosts: one at a time
    assert versions(deploy_hosts) == ["1.0.0"] * 3
    pids_v1 = [snapshot(h)["pid"] for h in deploy_hosts]

    second = deploy("2.0.0", app_git_sha="0123abc")
    assert second.rc == 0, second.output
    assert versions(deploy_hosts) == ["2.0.0"] * 3
    report = second.stats["deploy"]
    assert report["status"] == "succeeded"
    assert sorted(report["deployed"]) == [h.name for h in deploy_hosts]
    # One release id for the whole run, whatever the batches.
    release_ids = {os.path.basename(os.readlink(h.current_link)) for h in deploy_hosts}
    assert release_ids == {report["release_id"]}
    assert report["release_id"].startswith("2.0.0-")
    # The new code really runs: a new process on every host.
    assert all(snapshot(h)["pid"] not in pids_v1 for h in deploy_hosts)
    meta = release_meta(deploy_hosts[0])
    assert meta["version"] == "2.0.0"
    assert meta["sha256"] == sha256_file(artifacts["2.0.0"])
    assert meta["git_sha"] == "0123abc"
    assert meta["status"] == "good"
    # The team heard of start and success; the webhook URL never shows.
    texts = webhook.texts()
    assert any("2.0.0" in t and "start" in t.lower() for t in texts)
    assert any("2.0.0" in t and "succeeded" in t for t in texts)
    assert "secret-token" not in second.output


def test_rerun_changes_nothing(deploy: Any, deploy_hosts: list[AppHost]) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    assert {s["version"] for s in before} == {"2.0.0"}
    again = deploy("2.0.0")
    assert again.rc == 0, again.output
    assert changed_on(again, deploy_hosts) == {h.name: 0 for h in deploy_hosts}
    assert again.stats["deploy"]["status"] == "unchanged"
    assert [snapshot(h) for h in deploy_hosts] == before


def test_check_mode_changes_nothing(
    deploy: Any, deploy_hosts: list[AppHost], state_dir: Path
) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    state_before = sorted(p.relative_to(state_dir).as_posix() for p in state_dir.rglob("*"))
    dry = deploy("4.0.0", check=True, args=("-e", "deploy_batch=2"))  # "2", text as -e gives it
    assert dry.rc == 0, dry.output
    assert switch_batches(dry) == 2  # the canary, then the 2 others
    assert [snapshot(h) for h in deploy_hosts] == before
    assert sorted(p.relative_to(state_dir).as_posix() for p in state_dir.rglob("*")) == state_before


def test_failing_canary_is_rolled_back_and_the_others_untouched(
    deploy: Any, deploy_hosts: list[AppHost], webhook: Webhook
) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    assert {s["version"] for s in before} == {"2.0.0"}
    bad = deploy("3.0.0", deploy_health_retries=4, deploy_health_delay_s=0.25)
    assert bad.rc != 0
    report = bad.stats["deploy"]
    assert report["status"] == "rolled_back"
    canary, *others = deploy_hosts
    assert report["failed"] == [canary.name]
    assert sorted(report["untouched"]) == sorted(h.name for h in others)
    # The canary serves 2.0.0 again, from the release it served before.
    after = [snapshot(h) for h in deploy_hosts]
    assert after[0]["version"] == "2.0.0"
    assert after[0]["current"] == before[0]["current"]
    # The others were never touched: same release, same process.
    for b, a in zip(before[1:], after[1:], strict=True):
        assert (a["current"], a["pid"], a["version"]) == (b["current"], b["pid"], b["version"])
    # The failed release is marked failed on the canary and removed where it never served.
    failed_dir = canary.releases_dir / report["release_id"]
    assert json.loads((failed_dir / ".opsbook-release.json").read_text())["status"] == "failed"
    for host in others:
        assert not (host.releases_dir / report["release_id"]).exists()
    assert "rolled back" in bad.output and canary.name in bad.output
    assert any("3.0.0" in t and "rolled back" in t for t in webhook.texts())


def test_host_unreachable_mid_run_stops_and_rolls_back(
    deploy: Any, deploy_hosts: list[AppHost]
) -> None:
    canary, second, third = deploy_hosts
    assert versions(deploy_hosts) == ["2.0.0"] * 3
    killed = threading.Event()

    def kill_third_once_canary_switched() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if canary.version() == "4.0.0":
                    SshHost.kill(third)  # sshd and its sessions: the host stops answering
                    killed.set()
                    return
            except Exception:  # the canary restarting
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_third_once_canary_switched, daemon=True)
    watcher.start()
    run = deploy("4.0.0", deploy_health_retries=4, deploy_health_delay_s=0.25)
    watcher.join(5)
    assert killed.is_set(), run.output
    assert run.rc != 0
    report = run.stats["deploy"]
    assert report["status"] == "rolled_back"
    assert third.name in report["stopped_at"]
    assert report["hosts"][third.name]["outcome"] == "unreachable"
    # Every host this run switched serves 2.0.0 again.
    assert canary.version() == "2.0.0"
    assert second.version() == "2.0.0"


def holds_the_lock(state_dir: Path, reason: str) -> bool:
    """Whether the deploy lock of the "test" inventory is held by the run given reason."""
    try:
        return json.loads(lock_file(state_dir).read_text()).get("reason", "").startswith(reason)
    except (OSError, ValueError):
        return False


def test_concurrent_deploy_refused_by_the_lock(
    deploy: Any, deploy_hosts: list[AppHost], state_dir: Path
) -> None:
    for host in deploy_hosts:
        host.set_health("slow", 3000)  # keeps the first deploy in its health gates meanwhile
    results: dict[str, StatsRun] = {}
    first = threading.Thread(target=lambda: results.update(first=deploy("5.0.0")), daemon=True)
    first.start()
    try:
        # The second run starts once the first one holds the lock (not after a fixed delay).
        deadline = time.monotonic() + 120
        while not holds_the_lock(state_dir, "deploy 5.0.0"):
            assert first.is_alive(), results.get("first")
            assert time.monotonic() < deadline, "the first deploy never took the lock"
            time.sleep(0.02)
        results["second"] = deploy("6.0.0")
    finally:
        for host in deploy_hosts:
            host.set_health("ok")  # the second run is over: the first one's gates may pass
        first.join(300)
    assert results["first"].rc == 0, results["first"].output
    refused = results["second"]
    assert refused.rc != 0
    assert "lock" in refused.output.lower() and "deploy 5.0.0" in refused.output
    assert versions(deploy_hosts) == ["5.0.0"] * 3


def test_rollback_check_mode_changes_nothing(rollback: Any, deploy_hosts: list[AppHost]) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    dry = rollback(check=True)
    assert dry.rc == 0, dry.output
    assert [snapshot(h) for h in deploy_hosts] == before
    # the app broken now (why one rolls back): --check still says what it would do, and succeeds
    deploy_hosts[0].set_health("fail")
    try:
        before = [snapshot(h) for h in deploy_hosts]
        broken = rollback(check=True)
        assert broken.rc == 0, broken.output
        assert [snapshot(h) for h in deploy_hosts] == before
        assert "/health" not in str(broken.stats["rollback"]), broken.stats["rollback"]
    finally:
        deploy_hosts[0].set_health("ok")


def test_rollback_twice_goes_back_two_good_releases(
    rollback: Any, deploy_hosts: list[AppHost]
) -> None:
    assert versions(deploy_hosts) == ["5.0.0"] * 3
    one = rollback()
    assert one.rc == 0, one.output
    assert versions(deploy_hosts) == ["2.0.0"] * 3  # 4.0.0 and 3.0.0 never became good
    two = rollback()
    assert two.rc == 0, two.output
    assert versions(deploy_hosts) == ["1.0.0"] * 3
    report = two.stats["rollback"]
    assert {h["outcome"] for h in report["hosts"].values()} == {"rolled_back"}


def test_production_needs_a_staging_success_unless_hotfix(
    deploy: Any, deploy_hosts: list[AppHost]
) -> None:
    start = versions(deploy_hosts)
    refused = deploy("6.0.0", env="production")
    assert refused.rc != 0
    assert "staging" in refused.output
    assert versions(deploy_hosts) == start

    hotfix = deploy("6.0.0", env="production", hotfix=True)
    assert hotfix.rc == 0, hotfix.output
    assert versions(deploy_hosts) == ["6.0.0"] * 3
    assert hotfix.stats["deploy"]["hotfix"] is True


def test_staging_success_opens_the_gate(deploy: Any, deploy_hosts: list[AppHost]) -> None:
    staged = deploy("2.0.0", env="staging")
    assert staged.rc == 0, staged.output
    prod = deploy("1.0.0", env="production")
    assert prod.rc != 0  # 1.0.0 never succeeded in staging
    prod = deploy("2.0.0", env="production")
    assert prod.rc == 0, prod.output
    assert versions(deploy_hosts) == ["2.0.0"] * 3


def test_deploy_window_refuses_outside_unless_hotfix(
    deploy: Any, deploy_hosts: list[AppHost]
) -> None:
    now = time.gmtime()
    start = (now.tm_hour + 2) % 24
    window = f"{start:02d}:00-{(start + 1) % 24:02d}:00"  # an hour that is not now
    refused = deploy("2.0.0", env="production", deploy_window_utc=window, app_git_sha="x")
    assert refused.rc != 0
    assert "deploy window" in refused.output
    hotfix = deploy("2.0.0", env="production", deploy_window_utc=window, hotfix=True)
    assert hotfix.rc == 0, hotfix.output


def test_bad_input_is_refused_before_anything(
    deploy: Any, deploy_hosts: list[AppHost], artifacts: dict[str, Path]
) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    bad = deploy("2.0.0", app_version="not a version!")
    assert bad.rc != 0
    assert "app_version='not a version!' is not valid: app_version accepts 1-64" in bad.output
    wrong_sum = deploy("2.0.0", app_artifact_sha256="0" * 64)
    assert wrong_sum.rc != 0
    assert "sha256" in wrong_sum.output
    assert [snapshot(h) for h in deploy_hosts] == before


# --------------------------------------------------------------------------- bad input, the lock


def test_deploy_batch_abc_is_refused_in_the_preflight(
    deploy: Any, deploy_hosts: list[AppHost], state_dir: Path
) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    refused = deploy("6.0.0", args=("-e", "deploy_batch=abc"))
    assert refused.rc != 0
    assert "deploy refused, nothing was changed: 1 problem with its inputs" in refused.output
    assert (
        "deploy_batch='abc' is not valid: deploy_batch accepts a number of hosts (at least 1) "
        "or a percentage of the hosts from 1% to 100%" in refused.output
    )
    assert "Unexpected Exception" not in refused.output
    assert not lock_file(state_dir).exists()  # no lock taken
    assert set(refused.hosts) == {"localhost"}  # no task ran on an app host
    assert [snapshot(h) for h in deploy_hosts] == before  # nothing installed


def test_deploy_keep_releases_0_is_refused_before_any_switch(
    deploy: Any, deploy_hosts: list[AppHost], state_dir: Path
) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    refused = deploy("6.0.0", deploy_keep_releases=0, deploy_canary=0)
    assert refused.rc != 0
    assert "deploy refused, nothing was changed: 2 problems with its inputs" in refused.output
    assert "deploy_keep_releases=0 is out of range: deploy_keep_releases accepts" in refused.output
    assert "deploy_canary=0 is out of range" in refused.output  # every problem, at once
    assert not lock_file(state_dir).exists()
    assert set(refused.hosts) == {"localhost"}
    assert [snapshot(h) for h in deploy_hosts] == before  # no canary switched


def test_rollback_to_an_unknown_release_is_refused_listing_the_releases(
    rollback: Any, deploy_hosts: list[AppHost], state_dir: Path
) -> None:
    before = [snapshot(h) for h in deploy_hosts]
    refused = rollback(rollback_to="9.9.9")
    assert refused.rc != 0
    assert (
        "Rollback refused, nothing was changed and the deploy lock was released: "
        "release 9.9.9 is unknown: no release id or version 9.9.9 on" in refused.output
    )
    for host in deploy_hosts:
        current = os.path.basename(os.readlink(host.current_link))
        assert host.name in refused.output
        assert f"{current} ({host.version()}, good, current)" in refused.output
    assert "releases there: " in refused.output
    assert not lock_file(state_dir).exists()  # taken, then released by the report play
    assert [snapshot(h) for h in deploy_hosts] == before  # read-only
    assert refused.stats["rollback"] == {"refused": refused.stats["rollback"]["refused"]}


def test_a_failure_after_the_lock_releases_it(
    deploy: Any, rollback: Any, deploy_hosts: list[AppHost], state_dir: Path
) -> None:
    """The report play's ledger write fails (the ledger directory is a file): the deploy and
    then the rollback both fail saying so, and neither keeps the lock."""
    start = versions(deploy_hosts)
    ledger = state_dir / "ledger" / "local"  # the "test" inventory's opsbook_env
    saved = ledger.with_name("local.saved")
    ledger.parent.mkdir(parents=True, exist_ok=True)
    if ledger.exists():
        ledger.rename(saved)
    ledger.write_text("not a directory\n")
    try:
        deployed = deploy("6.0.0")
        assert deployed.rc != 0
        assert "deploy_ledger: recording the entry failed" in deployed.output
        assert versions(deploy_hosts) == ["6.0.0"] * 3  # the deploy itself went through
        assert not lock_file(state_dir).exists()

        back = rollback()
        assert back.rc != 0
        assert "deploy_ledger: recording the entry failed" in back.output
        assert versions(deploy_hosts) == start
        assert not lock_file(state_dir).exists()
    finally:
        ledger.unlink()
        if saved.exists():
            saved.rename(ledger)


def test_a_crashed_runs_lock_is_reported_with_the_commands_to_break_it(
    rollback: Any,
    deploy_hosts: list[AppHost],
    state_dir: Path,
    inventory: Any,
    artifacts: dict[str, Path],
    tmp_path: Path,
) -> None:
    """ansible-playbook is killed (SIGKILL) while its deploy holds the lock: nothing can
    release it. The next run names that run and says it is dead, with the exact commands."""
    marker = f"opsbook-crash-{os.getpid()}-{time.monotonic_ns()}"
    variables = tmp_path / "crash-vars.json"
    variables.write_text(
        json.dumps(
            {
                "app_version": "5.0.0",
                "app_artifact": str(artifacts["5.0.0"]),
                "opsbook_reason": "crash test",
            }
        )
    )
    argv = [str(VENV_BIN / "ansible-playbook"), "playbooks/deploy.yml", "-i",
            str(inventory()), "-e", f"@{variables}"]  # fmt: skip
    env = ansible_env(tmp_path / "oplog.jsonl", {"OPSBOOK_TEST_MARKER": marker})
    output = tmp_path / "crashed-deploy.log"
    with output.open("w") as sink:
        proc = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not lock_file(state_dir).exists():
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the deploy never took the lock"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for pid in processes_with(marker):  # its workers: nothing must release the lock
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    held = json.loads(lock_file(state_dir).read_text())
    assert held["pid"] == proc.pid and held["reason"] == "deploy 5.0.0: crash test"

    refused = rollback()
    assert refused.rc != 0
    for text in (
        "local is locked: the deploy lock is held by run " + held["run_id"],
        f"of {held['owner']} (playbook deploy",
        'reason "deploy 5.0.0: crash test"',
        f"expires {held['expires_at']}",
        f"(pid {proc.pid} on {held['host']}) is no longer running: that run crashed or was killed",
        "Break its lock: opsbook run rollback --env test -e break_lock=true",
        "(or: ansible-playbook -i ",
        "playbooks/rollback.yml -e break_lock=true",
    ):
        assert text in refused.output, (text, refused.output)
    assert json.loads(lock_file(state_dir).read_text())["run_id"] == held["run_id"]

    start = versions(deploy_hosts)
    broken = rollback(break_lock=True)
    assert broken.rc == 0, broken.output
    assert "broke the lock of run " + held["run_id"] in broken.output
    assert versions(deploy_hosts) != start  # it rolled back
    assert not lock_file(state_dir).exists()  # and released the lock it took
