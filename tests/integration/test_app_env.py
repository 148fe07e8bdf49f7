"""app_env through ansible-playbook over SSH on the lab's three app hosts: set and remove,
an idempotent second run, check mode leaving every file byte-identical, a compare-and-set
that refuses, and a canary value absent from -vvvv output, the --diff output and the
operation log (only its fingerprint shows).

Each test writes its own starting env file on every host and puts the host's file back
afterwards (the lab's other tests use the seeded shared/.env)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost
from tests.harness import PROJECT_ROOT
from tests.integration.canaries import leaks
from tests.integration.stats_helper import StatsRun, run_with_stats

pytestmark = pytest.mark.integration

CANARY = "canary-app-env-it-5d1e9b7c3a0f"  # a secret value: only its fingerprint may show
START = "# opsbook test\nexport JWT_SECRET=old-jwt-value # kept in place\n\nJWT_SECRET_PENDING=p\n"

PLAYBOOK = """\
- name: app_env on the app hosts
  hosts: app
  gather_facts: false
  tasks:
    - name: Change the env file
      opsbook.runbooks.app_env:
        deploy_root: "{{ deploy_root }}"
        set: "{{ app_env_test_set }}"
        remove: "{{ app_env_test_remove }}"
        expect: "{{ app_env_test_expect | default(omit) }}"
      register: app_env_test_result
      ignore_errors: true

    - name: Hand the result to the test (set_stats, read by tests/integration/stats_helper.py)
      ansible.builtin.set_stats:
        data:
          app_env: "{{ app_env_test_result }}"
        per_host: true
"""


def fp(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


@pytest.fixture
def hosts(app_hosts: list[AppHost]) -> Iterator[list[AppHost]]:
    """Every host's env file holds START (0600) for the test; the file found is put back."""
    saved = []
    for host in app_hosts:
        path = host.deploy_root / "shared" / ".env"
        saved.append((path, path.read_bytes() if path.exists() else None))
        path.write_text(START)
        path.chmod(0o600)
    try:
        yield app_hosts
    finally:
        for path, content in saved:
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
                path.chmod(0o600)


class EnvRuns:
    """Runs the playbook above; returns the run and the module's result on each host."""

    def __init__(self, tmp_path: Path, inventory: Path, run_playbook: Any) -> None:
        self.tmp_path = tmp_path
        self.playbook = tmp_path / "app_env.yml"
        self.playbook.write_text(PLAYBOOK)
        self.inventory = inventory
        self.run_playbook = run_playbook

    def __call__(
        self, set_: dict[str, str], remove: list[str], *args: str, check: bool = False,
        **extra: Any,
    ) -> tuple[StatsRun, dict[str, dict[str, Any]]]:  # fmt: skip
        done = run_with_stats(
            self.run_playbook,
            self.tmp_path,
            os.path.relpath(self.playbook, PROJECT_ROOT / "playbooks"),
            self.inventory,
            extravars={"app_env_test_set": set_, "app_env_test_remove": remove, **extra},
            check=check,
            args=args,
        )
        assert done.rc == 0, done.stdout[-4000:] + done.stderr[-2000:]
        results = {host: data["app_env"] for host, data in done.data["custom"].items()
                   if host != "_run"}  # fmt: skip
        return done, results


@pytest.fixture
def runs(hosts: list[AppHost], make_inventory: Any, run_playbook: Any, tmp_path: Path) -> EnvRuns:
    return EnvRuns(tmp_path, make_inventory(), run_playbook)


def env_bytes(hosts: list[AppHost]) -> dict[str, bytes]:
    return {h.name: (h.deploy_root / "shared" / ".env").read_bytes() for h in hosts}


def test_set_remove_check_mode_and_idempotence_without_the_value_in_any_output(
    hosts: list[AppHost], runs: EnvRuns, tmp_path: Path
) -> None:
    change = (
        {"JWT_SECRET": CANARY, "JWT_SECRET_PREVIOUS": "old-jwt-value"},
        ["JWT_SECRET_PENDING"],
    )
    expected = (
        f"# opsbook test\nexport JWT_SECRET={CANARY} # kept in place\n\n"
        "JWT_SECRET_PREVIOUS=old-jwt-value\n"
    )
    names = sorted(h.name for h in hosts)

    # --check: every host reports the change, the masked diff shows the fingerprints.
    before = env_bytes(hosts)
    checked, results = runs(*change, "--diff", check=True)
    assert env_bytes(hosts) == before  # byte-identical
    assert sorted(results) == names
    for result in results.values():
        assert result["changed"] is True and not result.get("failed"), result
        assert result["changed_keys"] == ["JWT_SECRET", "JWT_SECRET_PENDING", "JWT_SECRET_PREVIOUS"]
        assert result["fingerprints"]["JWT_SECRET"] == fp(CANARY)
    assert f"export JWT_SECRET=******** ({fp(CANARY)}) # kept in place" in checked.stdout
    assert f"-JWT_SECRET_PENDING=******** ({fp('p')})" in checked.stdout

    # The change, then the same again: unchanged, the file not rewritten.
    applied, results = runs(*change, "--diff", "-vvvv")
    assert all(r["changed"] is True for r in results.values()), results
    for host in hosts:
        path = host.deploy_root / "shared" / ".env"
        assert path.read_text() == expected and (path.stat().st_mode & 0o777) == 0o600
        assert results[host.name]["path"] == str(path)
    after = {h.name: (h.deploy_root / "shared" / ".env").stat().st_mtime_ns for h in hosts}
    again, results = runs(*change, "--diff")
    assert all(r["changed"] is False for r in results.values()), results
    assert after == {h.name: (h.deploy_root / "shared" / ".env").stat().st_mtime_ns for h in hosts}

    outputs = {f"{name}.{stream}": getattr(run, stream)
               for name, run in (("check", checked), ("apply", applied), ("again", again))
               for stream in ("stdout", "stderr")}  # fmt: skip
    assert "SSH: EXEC" in applied.stdout  # -vvvv really was on
    oplog = (tmp_path / "oplog.jsonl").read_text()
    assert len(oplog.splitlines()) == 3  # the operation log recorded the three runs
    stats = [path.read_text() for path in tmp_path.glob("stats-*.json")]
    assert len(stats) == 3 and all(fp(CANARY) in text for text in stats)
    texts = {**outputs, "oplog": oplog, **{f"stats{i}": t for i, t in enumerate(stats)}}
    assert leaks([CANARY], texts=texts) == {}


def test_a_failed_compare_and_set_and_a_connection_without_pipelining_change_nothing(
    hosts: list[AppHost], runs: EnvRuns
) -> None:
    """The first host's connection does not pipeline (the values would be written to a file
    on it): refused on the controller. The others: the compare-and-set does not match."""
    no_pipelining, *others = hosts
    host_vars = runs.inventory / "host_vars"
    host_vars.mkdir(exist_ok=True)
    (host_vars / f"{no_pipelining.name}.yml").write_text("ansible_pipelining: false\n")
    before = env_bytes(hosts)
    done, results = runs(
        {"JWT_SECRET": CANARY}, [], app_env_test_expect={"JWT_SECRET": fp("not-the-value")}
    )
    assert env_bytes(hosts) == before
    refused = results[no_pipelining.name]
    assert refused["failed"] is True and "does not pipeline" in refused["msg"]
    assert "nothing was changed" in refused["msg"]
    for host in others:
        result = results[host.name]
        assert result["failed"] is True and result["changed"] is False
        assert result["msg"] == (
            f"app_env: expect does not match {host.deploy_root}/shared/.env: JWT_SECRET is "
            f"{fp('old-jwt-value')}, expected {fp('not-the-value')}; nothing was changed"
        )
    assert CANARY not in done.stdout + done.stderr
