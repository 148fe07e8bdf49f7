"""What the tools users run leave in the project is ignored by git (issue 16: ansible-navigator's
log and playbook artifacts, the sandbox, opsbook's runs and reports, the awx.awx cache)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.loaders import PROJECT_ROOT

LEFT_BY_TOOLS = (
    "ansible-navigator.log",
    "playbooks/deploy-artifact-2026-12-07T08:50:00.000000+00:00.json",
    ".sandbox/state/ledger.json",
    ".opsbook/oplog.jsonl",
    ".opsbook/reports/incident-local-20261207T085000Z.md",
    ".cache/collections/ansible_collections/awx/awx/MANIFEST.json",
)


@pytest.mark.skipif(
    shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists(),
    reason="needs the git checkout",
)
def test_what_the_tools_leave_is_ignored_and_the_project_is_not() -> None:
    def ignored(path: str) -> bool:
        return (
            subprocess.run(
                ["git", "check-ignore", "-q", "--no-index", path], cwd=PROJECT_ROOT, check=False
            ).returncode
            == 0
        )

    assert [path for path in LEFT_BY_TOOLS if not ignored(path)] == []
    assert not ignored("playbooks/deploy.yml") and not ignored("schedules.yml")
