"""deploy.yml's hooks (roles/deploy: deploy_hook_*) and its release-id guard, on two real SSH app
hosts (127.0.10.61-62, hk1 the canary, then hk2).

In order: hooks after_unpack / before_switch / after_switch each write what they were given
into the release; a failing before_switch hook leaves `current` untouched and the deploy fails
naming it, the unused release removed; a failing after_switch hook rolls the canary back (the
previous release serving again) and the after_rollback hook runs there; a release id already
installed with another artifact is refused before any switch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost, SshKeyPair, start_app_hosts, stop_all
from opsbook.lab.sampleapp import build_release
from tests.integration.stats_helper import StatsRun, run_with_stats

pytestmark = pytest.mark.integration

FIRST_ADDRESS = 61
WRITE_HOOK = """---
- name: Write what the hook was given into the release
  ansible.builtin.copy:
    dest: "{{ deploy_hook_release_path }}/hook-{{ deploy_hook_phase }}.json"
    content: >-
      {{ {'phase': deploy_hook_phase, 'release_id': deploy_hook_release_id,
          'release_path': deploy_hook_release_path, 'version': deploy_hook_version,
          'previous_release': deploy_hook_previous_release} | to_json }}
    mode: "0644"
"""
FAIL_HOOK = """---
- name: Build the assets
  ansible.builtin.fail:
    msg: assets not built.
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, ssh_key: SshKeyPair) -> Iterator[list[AppHost]]:
    base = tmp_path_factory.mktemp("hook-hosts")
    started = start_app_hosts(2, base, ssh_key, first_address=FIRST_ADDRESS, version="1.0.0",
                              name_prefix="hk")  # fmt: skip
    try:
        yield started
    finally:
        stop_all(started)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hook-artifacts")
    return {v: build_release(v, out) for v in ("1.1.0", "1.2.0", "1.3.0", "1.4.0")}


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "write.yml").write_text(WRITE_HOOK)
    (folder / "fail.yml").write_text(FAIL_HOOK)
    return folder


@pytest.fixture
def deploy(make_inventory: Any, hosts: list[AppHost], run_playbook: Any, tmp_path: Path,
           artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # fmt: skip
    state = tmp_path_factory.mktemp("hook-state")
    inventory = make_inventory(
        env="hooks", app_hosts=hosts, extra_vars={"opsbook_state_url": f"file://{state}"}
    )

    def run(version: str, **extravars: Any) -> StatsRun:
        variables = {"app_version": version, "app_artifact": str(artifacts[version]), **extravars}
        return run_with_stats(run_playbook, tmp_path, "deploy", inventory, extravars=variables)

    return run


def current(host: AppHost) -> str:
    return Path(os.readlink(host.current_link)).name


def releases(host: AppHost) -> list[str]:
    return sorted(p.name for p in host.releases_dir.iterdir())


def hook_file(host: AppHost, release: str, phase: str) -> dict[str, Any]:
    return json.loads((host.releases_dir / release / f"hook-{phase}.json").read_text())


def test_hooks_run_in_the_release_with_its_variables(
    deploy: Any, hosts: list[AppHost], hooks: Path
) -> None:
    before = {h.name: current(h) for h in hosts}
    write = str(hooks / "write.yml")
    run = deploy("1.1.0", deploy_hook_after_unpack=write, deploy_hook_before_switch=write,
                 deploy_hook_after_switch=write)  # fmt: skip
    assert run.rc == 0, run.output
    assert [h.version() for h in hosts] == ["1.1.0", "1.1.0"]
    for host in hosts:
        release = current(host)
        assert release.startswith("1.1.0-")
        for phase in ("after_unpack", "before_switch", "after_switch"):
            assert hook_file(host, release, phase) == {
                "phase": phase,
                "release_id": release,
                "release_path": f"{host.deploy_root}/releases/{release}",
                "version": "1.1.0",
                "previous_release": before[host.name],
            }


def test_a_failing_before_switch_hook_leaves_current_untouched(
    deploy: Any, hosts: list[AppHost], hooks: Path
) -> None:
    before = {h.name: (current(h), releases(h), h.version()) for h in hosts}
    run = deploy("1.2.0", deploy_hook_before_switch=str(hooks / "fail.yml"))
    assert run.rc != 0
    assert (
        f"the before_switch hook failed on hk1 (deploy_hook_before_switch={hooks}/fail.yml): "
        "assets not built" in run.output
    )
    # current never moved; the release this run installed is removed everywhere
    assert {h.name: (current(h), releases(h), h.version()) for h in hosts} == before
    report = run.stats["deploy"]
    assert report["failed"] == ["hk1"] and report["untouched"] == ["hk2"]
    assert report["deployed"] == [] and report["hosts"]["hk1"]["rolled_back_to"] is None


def test_a_failing_after_switch_hook_rolls_the_host_back(
    deploy: Any, hosts: list[AppHost], hooks: Path
) -> None:
    before = {h.name: current(h) for h in hosts}
    run = deploy("1.3.0", deploy_hook_after_switch=str(hooks / "fail.yml"),
                 deploy_hook_after_rollback=str(hooks / "write.yml"))  # fmt: skip
    assert run.rc != 0
    assert "the after_switch hook failed on hk1" in run.output
    report = run.stats["deploy"]
    assert report["status"] == "rolled_back"
    assert report["hosts"]["hk1"]["outcome"] == "failed"
    assert report["hosts"]["hk1"]["rolled_back_to"] == before["hk1"]
    # the previous release serves again; hk2 was never touched
    assert [h.version() for h in hosts] == ["1.1.0", "1.1.0"]
    assert {h.name: current(h) for h in hosts} == before
    # the after_rollback hook ran on the canary, in the release rolled back to
    given = hook_file(hosts[0], before["hk1"], "after_rollback")
    assert given["release_id"] == before["hk1"] and given["version"] == "1.1.0"
    assert given["previous_release"].startswith("1.3.0-")
    assert not (hosts[1].releases_dir / before["hk2"] / "hook-after_rollback.json").exists()


def test_a_release_id_installed_with_another_artifact_is_refused(
    deploy: Any, hosts: list[AppHost]
) -> None:
    """The release role's guard, now the deploy's: the id of the release serving 1.1.0, given
    again for the 1.4.0 artifact, is refused on every host before any switch."""
    taken = current(hosts[0])
    before = {h.name: (current(h), releases(h), h.version()) for h in hosts}
    run = deploy("1.4.0", deploy_release_id=taken)
    assert run.rc != 0
    assert f"release {taken} is already installed with artifact sha256" in run.output
    assert "A release id names one artifact: use a new release id" in run.output
    assert run.stats["deploy"]["status"] == "aborted"
    assert {h.name: (current(h), releases(h), h.version()) for h in hosts} == before
