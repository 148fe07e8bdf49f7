"""A runbook's inputs, checked by its preflight through ansible-playbook (the declaration in
playbooks/vars/inputs/, action_plugins/opsbook_inputs.py): a misspelt -e name is warned about
with the name meant, and the run is still refused for its real reason, before anything ran.
Deploy and rollback: tests/integration/test_deploy.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

NO_DATABASE = "postgresql://unused@127.0.0.1:1/none"  # the preflight never connects


@pytest.fixture
def fix_inventory(make_inventory: Any) -> Path:
    return make_inventory(env="test", app_hosts=[], database_url=NO_DATABASE)


def test_a_misspelt_input_is_warned_and_the_run_refused_for_its_real_reason(
    run_playbook: Any, fix_inventory: Path, tmp_path: Path
) -> None:
    fix = tmp_path / "data-fix-2024-05-01-rename.sql"
    fix.write_text("UPDATE users SET name = 'x' WHERE id = 1;\n")
    extravars = {"data_fix_file": str(fix), "data_fix_verify_sql": "SELECT 1 WHERE false"}
    proc = run_playbook("data_fix", fix_inventory, extravars=extravars)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert (
        "-e data_fix_verify_sql: data_fix has no input of that name; did you mean "
        "data_fix_verify?" in out
    )
    # the module's refusal is the task's own failure line (issue 12: one failure, one line)
    assert f"data fix {fix.name} refused, nothing was run: no verify query" in out

    # `opsbook run` warns before the run and tells the preflight not to say it again
    quiet = run_playbook(
        "data_fix", fix_inventory, extravars=extravars, env={"OPSBOOK_INPUT_WARNINGS_SHOWN": "1"}
    )
    assert quiet.returncode != 0
    assert "data_fix_verify_sql" not in quiet.stdout + quiet.stderr
    assert "no verify query" in quiet.stdout
