"""Real ansible-vault data printed by a careless playbook, through `opsbook run`: absent from
the runner's artifacts, the operation log, the command's output and the run's HOME and TMPDIR.

The values sit under names no secret-name rule catches, so only the vault says they are
secret: a ``!vault`` value made by ``ansible-vault encrypt_string`` in the inventory's vars.yml,
an inventory ``vault.yml`` encrypted as a whole by ``ansible-vault encrypt``, and an encrypted
``-e @file``. The project is this one's configuration and plugins (the real operation log)
with one playbook of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsbook.secrets import REDACTED
from tests.harness import PROJECT_ROOT, VENV_BIN
from tests.integration.canaries import encrypt_file, encrypt_string, leaks

pytestmark = pytest.mark.integration

VAULT_PASSWORD = "Vault-Pa55-Runner-3e9d"
CHANNEL = "chan-Vaulted-Inline-71ab"  # encrypt_string, in vars.yml
REGION = "region-Vaulted-File-52cd"  # vault.yml, encrypted as a whole
DB_PASSWORD = "Db-Vaulted-Pw-0f4e"  # vault.yml: vault_database_url's password
MIRROR = "mirror-Vaulted-Extra-9a6b"  # -e @file, encrypted as a whole
CANARIES = (CHANNEL, REGION, DB_PASSWORD, MIRROR, VAULT_PASSWORD)

CARELESS = """\
# Print vaulted values, carelessly
- name: Careless
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Print the vaulted values (no no_log)
      ansible.builtin.debug:
        msg: "channel={{ release_channel }} region={{ deploy_region }} mirror={{ upstream_mirror }} db={{ database_url }}"
    - name: Publish them, and a proof that they arrived decrypted
      ansible.builtin.set_stats:
        data:
          careless:
            channel: "{{ release_channel }}"
            region: "{{ deploy_region }}"
            proof: "{{ (release_channel ~ deploy_region ~ upstream_mirror) | hash('sha256') }}"
    - name: Fail with vaulted values in the message
      ansible.builtin.fail:
        msg: "cannot reach {{ deploy_region }} through {{ upstream_mirror }} as {{ database_url }}"
"""  # noqa: E501

LINKED = ("callback_plugins", "module_utils", "library", "action_plugins", "filter_plugins",
          "doc_fragments", "plugin_utils", "collections")  # fmt: skip


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "playbooks").mkdir(parents=True)
    (root / "ansible.cfg").write_text((PROJECT_ROOT / "ansible.cfg").read_text())
    for name in LINKED:
        (root / name).symlink_to(PROJECT_ROOT / name)
    (root / "playbooks" / "careless.yml").write_text(CARELESS)
    password_file = tmp_path / "vault-pass"
    password_file.write_text(VAULT_PASSWORD + "\n")
    inventory = root / "inventories" / "test"
    group_vars = inventory / "group_vars" / "all"
    group_vars.mkdir(parents=True)
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    (group_vars / "vars.yml").write_text(
        "opsbook_env: local\n"
        "database_url: '{{ vault_database_url }}'\n"
        + encrypt_string("release_channel", CHANNEL, password_file)
    )
    encrypt_file(
        f"vault_database_url: postgresql://app:{DB_PASSWORD}@db.internal:5432/app\n"
        f"deploy_region: {REGION}\n",
        password_file,
        group_vars / "vault.yml",
    )
    encrypt_file(f"upstream_mirror: {MIRROR}\n", password_file, tmp_path / "secret-vars.yml")
    return root


def test_vault_values_printed_by_a_task_are_nowhere(project: Path, tmp_path: Path) -> None:
    run_dirs = {"HOME": tmp_path / "home", "TMPDIR": tmp_path / "tmp"}
    for path in run_dirs.values():
        path.mkdir()
    oplog = tmp_path / "oplog.jsonl"
    env = {
        **os.environ,
        **{name: str(path) for name, path in run_dirs.items()},
        "OPSBOOK_PROJECT_DIR": str(project),
        "OPSBOOK_RUNS_DIR": str(tmp_path / "runs"),
        "OPSBOOK_OPLOG": str(oplog),
        "ANSIBLE_NOCOLOR": "1",
    }
    for name in ("ANSIBLE_CONFIG", "ANSIBLE_VAULT_PASSWORD_FILE", "OPSBOOK_VAULT_PASSWORD_FILE"):
        env.pop(name, None)

    proc = subprocess.run(
        [str(VENV_BIN / "opsbook"), "run", "careless", "--env", "test", "-vvvv",
         "--vault-password-file", str(tmp_path / "vault-pass"),
         "-e", f"@{tmp_path / 'secret-vars.yml'}"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip

    # the run used the decrypted values: the playbook failed on purpose, its proof published
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [record] = [json.loads(line) for line in oplog.read_text().splitlines()]
    proof = hashlib.sha256(f"{CHANNEL}{REGION}{MIRROR}".encode()).hexdigest()
    assert record["outputs"]["careless"] == {"channel": "***", "region": "***", "proof": proof}
    [failure] = record["failures"]
    assert (
        failure["msg"] == "cannot reach *** through *** as ***"  # the DSN is a vault value
    )
    # ...and printed them: the artifacts show the task's line, redacted
    [stdout] = (tmp_path / "runs").glob("*/artifacts/*/stdout")
    printed = [line for line in stdout.read_text().splitlines() if "channel=" in line]
    assert printed and all(f"channel={REDACTED} region={REDACTED}" in line for line in printed)
    assert f"mirror={REDACTED}" in printed[0]
    # nowhere: the command's output, the artifacts, the operation log, HOME, TMPDIR, the project
    assert (
        leaks(
            CANARIES,
            roots=[tmp_path],
            texts={"stdout": proc.stdout, "stderr": proc.stderr},
            skip=[tmp_path / "vault-pass"],
        )
        == {}
    )
