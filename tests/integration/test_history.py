"""`opsbook history` reads back what real runs recorded: backup and db_health against the lab's
database (one ansible-playbook command line, one operation-log record each), then the command as
a user types it: the runbooks' Operation Logs Template in markdown, and --json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import PostgresCluster
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env, run_ansible

pytestmark = pytest.mark.integration


def test_history_reads_back_two_real_runs_as_the_operation_logs_template(
    make_inventory: Any, tmp_path: Path, pg: PostgresCluster
) -> None:
    oplog = tmp_path / "oplog.jsonl"
    inventory = make_inventory(env="staging", app_hosts=[])  # the database only
    env = ansible_env(oplog, {"OPSBOOK_OPERATOR": "history-tester"})
    runs = run_ansible(
        ["playbooks/backup.yml", "playbooks/db_health.yml", "-i", str(inventory),
         "-e", "opsbook_reason='morning checks'"],
        env=env, tool="ansible-playbook",
    )  # fmt: skip
    assert runs.returncode == 0, runs.stdout[-3000:] + runs.stderr[-2000:]

    def history(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "opsbook"), "history", *args],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    shown = history("--runbook", "backup,db_health", "--env", "staging", "--markdown")
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    text = shown.stdout
    assert text.startswith("# Operation log\n\n2 runs (runbook=backup,db_health; env=")
    records = [json.loads(line) for line in oplog.read_text().splitlines()]
    blocks = text.split("```")[1::2]
    assert len(blocks) == 2
    for record, block in zip(records, blocks, strict=True):
        lines = block.strip().splitlines()
        names = [line.split(":", 1)[0] for line in lines if not line.startswith("  ")]
        assert names == ["Date/Time", "Operation", "Reason", "Impact", "Duration", "Issues",
                         "Follow-up"]  # fmt: skip
        assert lines[1] == (
            f"Operation: {record['playbook']} on staging by history-tester, run {record['id']}"
        )
        assert lines[2] == "Reason: morning checks"
        # db_health on the session's shared database may find something to warn about (what
        # earlier tests left: dead tuples, a cold cache): the verdict is then an issue
        verdict = next(iter(record["outputs"].values())).get("verdict", "ok")
        assert lines[5] == ("Issues: none" if verdict == "ok" else f"Issues: verdict {verdict}")
        assert f"## {record['started'][:10]} {record['started'][11:16]} UTC" in text
    backup, db = blocks
    backup_id = records[0]["outputs"]["backup"]["backup_id"]
    assert "Impact: 1 host(s): changed localhost\n" in backup
    assert "Impact: 1 host(s): unchanged localhost\n" in db
    # each run's own summary lines (the two ran on one command line, their outputs apart)
    assert f"Follow-up: Backup {backup_id}: database app -> file://" in backup
    assert "Verified: size and sha256" in backup and "Database health" not in backup
    db_verdict = records[1]["outputs"]["db_health"]["verdict"].upper()
    assert f"Follow-up: Database health: {db_verdict}" in db and "Backup " not in db
    assert pg.password not in text

    as_json = history("--runbook", "db_health", "--json")
    assert as_json.returncode == 0
    assert as_json.stdout.splitlines() == [oplog.read_text().splitlines()[1]]
