"""The molecule scenario of roles/release (molecule/release), run as CI runs it.

`molecule test -s release`: destroy, syntax, create (an SSH test host on 127.0.10.41 with the
sample app 1.0.0, started by opsbook.lab), prepare (the 2.0.0 artifact), converge (roles/release
fetch, then roles/deploy install and switch - the path deploy.yml runs - with an after_unpack
hook), idempotence, verify (current, metadata, the hook, /api/version answering 2.0.0 from a new
pid; then roles/deploy's rollback back to 1.0.0 with the after_rollback hook), destroy. The
scenario's ephemeral directory is this test's tmp dir.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opsbook.lab import processes_referencing
from tests.harness import PROJECT_ROOT, VENV_BIN

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\x1b\]8;;[^\x1b]*\x1b\\")
STEPS = ("destroy", "syntax", "create", "prepare", "converge", "idempotence", "verify")


def test_molecule_release_scenario_passes(tmp_path: Path) -> None:
    ephemeral = tmp_path / "molecule"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral),
        NO_COLOR="1",
        ANSIBLE_NOCOLOR="1",
    )
    try:
        result = subprocess.run(
            [str(VENV_BIN / "molecule"), "test", "-s", "release"],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        # Whatever happened, nothing of the scenario's host may stay up.
        subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "molecule/release/lab_host.py"), "down",
             "--dir", str(ephemeral / "lab")],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, output[-10000:]
    for step in STEPS:
        assert re.search(rf"release\s+\S+\s+{step}: Executed: Successful", output), step
    assert re.search(r"release\s*: actions=8\s+successful=8", output), output[-3000:]
    assert "Idempotence test failed" not in output
    assert processes_referencing(ephemeral) == []
