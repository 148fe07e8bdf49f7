"""One failure, one line: a failing database task's own ``fatal:`` line carries the module's
reason (already free of the password), not Ansible's "output has been hidden" marker followed
by a second task that says why (issue 12)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import PostgresCluster

pytestmark = pytest.mark.integration

HIDDEN = "the output has been hidden"


def fatal_lines(stdout: str) -> list[str]:
    """The ``fatal: [host]: FAILED! => ...`` lines, each with the result printed under it."""
    blocks = re.split(r"\n(?=\S)", stdout)
    return [b for b in blocks if b.startswith("fatal: ")]


def assert_one_failure_line(stdout: str, reason: str, password: str) -> None:
    fatal = fatal_lines(stdout)
    assert fatal, stdout
    assert reason in fatal[0], stdout
    assert HIDDEN not in stdout, stdout
    assert len(fatal) == 1, stdout  # no second "fail with the reason" task
    assert password not in stdout


def test_data_fix_holding_commit_fails_with_the_reason_on_its_first_line(
    pg: PostgresCluster, make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    fix = tmp_path / "data-fix-2025-10-01-two-transactions.sql"
    fix.write_text("UPDATE users SET plan = 'pro' WHERE id = 1;\nCOMMIT;\n")
    run = run_playbook(
        "data_fix",
        make_inventory(app_hosts=[], database_url=pg.dsn_for("app")),
        extravars={"data_fix_file": str(fix), "data_fix_verify": "SELECT 1 WHERE false"},
    )
    assert run.returncode != 0
    assert_one_failure_line(run.stdout, "statement 2 (line 2) is COMMIT", pg.password)


def test_backup_to_an_ftp_url_fails_with_the_reason_on_its_first_line(
    pg: PostgresCluster, make_inventory: Callable[..., Path], run_playbook: Any
) -> None:
    url = "ftp://backups.example.com/app"
    run = run_playbook(
        "backup",
        make_inventory(app_hosts=[], database_url=pg.dsn_for("app"), backup_storage_url=url),
    )
    assert run.returncode != 0
    assert_one_failure_line(run.stdout, "ftp://", pg.password)
