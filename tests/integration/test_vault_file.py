"""The vault file an inventory names with opsbook_vault_file, read at job time by
playbooks/_vault.yml (docs/awx.md), in real runs:

- `opsbook run` scrubs the values of the file the inventory really names - here an inventory
  root outside the project, whose vault file sits beside it (``{{ inventory_dir }}/...``) -
  from its output, its artifacts and its --json lines, even under a name no rule calls secret;
- a play on localhost sees the vault's variables when the inventory does not list localhost
  (the implicit localhost is not in "all");
- --tags does not skip loading them (every task of _vault.yml is tagged always);
- a wrong vault password fails the run, under AWX too (no vault password at all is skipped
  under AWX: tests/integration/test_awx.py); so does a vault file that does not exist;
- a vault file holding variables not called vault_* is refused before anything is loaded,
  naming them, never their values.

The project is this one's configuration, plugins and playbooks/_vault.yml with one playbook
of its own (a debug on localhost: about two seconds a run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsbook.secrets import REDACTED
from tests.harness import PROJECT_ROOT, VENV_BIN
from tests.integration.canaries import encrypt_file, leaks
from tests.integration.test_runner_vault import LINKED

pytestmark = pytest.mark.integration

VAULT_PASSWORD = "Vault-Pa55-File-8c2e"
REGION = "Canary-Region-Vaulted-4d7a"  # under vault_region_name: no rule calls it secret
STRAY = "Canary-Stray-Value-19bf"  # the value of a variable not called vault_*
AWX_VARS = {"awx_job_id": 42, "awx_job_template_name": "opsbook-ext-show", "awx_user_name": "al"}

SHOW = """\
# Print a value of the vault file, carelessly (a name no rule calls secret)
- name: Secrets
  ansible.builtin.import_playbook: _vault.yml

- name: On localhost, which the inventory does not list
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Print the region
      ansible.builtin.debug:
        msg: "region={{ deploy_region }}"
      tags: [show]
"""


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """A project; an inventory root outside it (environment ``ext``: one app host, no
    localhost) whose vault file is beside it, named through ``{{ inventory_dir }}``."""
    project = tmp_path / "project"
    (project / "playbooks").mkdir(parents=True)
    (project / "ansible.cfg").write_text((PROJECT_ROOT / "ansible.cfg").read_text())
    for name in LINKED:
        (project / name).symlink_to(PROJECT_ROOT / name)
    shutil.copy(PROJECT_ROOT / "playbooks" / "_vault.yml", project / "playbooks")
    (project / "playbooks" / "show.yml").write_text(SHOW)

    elsewhere = tmp_path / "elsewhere"
    inventory = elsewhere / "inventories" / "ext"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    app1 = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {"app": {"hosts": {"app1": app1}}}}})
    )
    (inventory / "group_vars" / "all" / "vars.yml").write_text(
        "opsbook_env: ext\n"
        "opsbook_vault_file: '{{ inventory_dir }}/../../secrets/ext.yml'\n"
        "deploy_region: '{{ vault_region_name }}'\n"
    )
    password = tmp_path / "vault-pass"
    password.write_text(VAULT_PASSWORD + "\n")
    (elsewhere / "secrets").mkdir()
    encrypt_file(f"vault_region_name: {REGION}\n", password, elsewhere / "secrets" / "ext.yml")
    return {"project": project, "inventory": inventory, "password": password}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "OPSBOOK_"))}
    return {**env, "ANSIBLE_NOCOLOR": "1", **extra}


def test_opsbook_run_scrubs_the_vault_file_the_inventory_names(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """Item 1 and the implicit localhost: `opsbook run` and `opsbook run --json`, in parallel."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    procs = {}
    for mode in ("text", "json"):
        env = clean_env(
            HOME=str(home), TMPDIR=str(tmp),
            OPSBOOK_PROJECT_DIR=str(setup["project"]),
            OPSBOOK_INVENTORY_ROOT=str(setup["inventory"].parent),
            OPSBOOK_RUNS_DIR=str(tmp_path / f"runs-{mode}"),
            OPSBOOK_OPLOG=str(tmp_path / f"oplog-{mode}.jsonl"),
        )  # fmt: skip
        args = ["run", "show", "--env", "ext", "--vault-password-file", str(setup["password"])]
        procs[mode] = subprocess.Popen(
            [str(VENV_BIN / "opsbook"), *args, *(["--json"] if mode == "json" else [])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    out = {mode: proc.communicate(timeout=120) for mode, proc in procs.items()}

    for mode, proc in procs.items():  # localhost saw the vault's variable: the task printed it
        assert proc.returncode == 0, out[mode]
    [artifact] = (tmp_path / "runs-text").glob("*/artifacts/*/stdout")
    assert f"region={REDACTED}" in artifact.read_text()
    records = [json.loads(line) for line in out["json"][0].splitlines()]
    [printed] = [r for r in records if r.get("task") == "Print the region" and r.get("msg")]
    assert (printed["host"], printed["msg"]) == ("localhost", f"region={REDACTED}")
    texts = {f"{mode} {i}": text for mode, pair in out.items() for i, text in enumerate(pair)}
    assert leaks([REGION], roots=[tmp_path], texts=texts, skip=[setup["password"]]) == {}


def test_vault_file_failures_and_tags(setup: dict[str, Path], tmp_path: Path) -> None:
    """ansible-playbook, in parallel: --tags; a wrong vault password under AWX; a missing vault
    file under AWX; a vault file with variables not called vault_*. Each run gives
    deploy_region itself (-e), so only _vault.yml can fail it."""
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("not-the-password\n")
    stray = encrypt_file(
        f"vault_region_name: {REGION}\ndatabase_url: {STRAY}\nregion: {STRAY}\n",
        setup["password"],
        tmp_path / "stray.yml",
    )
    given = {"deploy_region": "given"}
    runs = {
        "tags": ["--tags", "show", "--vault-password-file", str(setup["password"])],
        "wrong": ["--vault-password-file", str(wrong), "-e", json.dumps({**AWX_VARS, **given})],
        "missing": ["-e", json.dumps({
            **AWX_VARS, **given, "opsbook_vault_file": str(tmp_path / "nowhere.yml"),
        })],
        "stray": ["--vault-password-file", str(setup["password"]),
                  "-e", json.dumps({**given, "opsbook_vault_file": str(stray)})],
    }  # fmt: skip
    playbook = [str(VENV_BIN / "ansible-playbook"), "playbooks/show.yml"]
    playbook += ["-i", str(setup["inventory"])]
    procs = {}
    for name, args in runs.items():
        procs[name] = subprocess.Popen(
            [*playbook, *args],
            cwd=setup["project"], env=clean_env(OPSBOOK_OPLOG=str(tmp_path / f"{name}.jsonl")),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    out = {name: proc.communicate(timeout=120)[0] for name, proc in procs.items()}
    rc = {name: proc.returncode for name, proc in procs.items()}

    # --tags: the vault file was loaded all the same (tagged always), on localhost too
    assert rc["tags"] == 0, out["tags"]
    assert f"region={REGION}" in out["tags"]
    # a wrong password fails the AWX job (not "no Vault credential": skipped)
    assert rc["wrong"] == 2, out["wrong"]
    assert "/secrets/ext.yml could not be decrypted with this run's vault password" in out["wrong"]
    assert "no Vault credential" not in out["wrong"]
    assert "Print the region" not in out["wrong"]
    # a vault file that does not exist: failed, under AWX too
    assert rc["missing"] == 2, out["missing"]
    assert f"names {tmp_path / 'nowhere.yml'}, which does not exist" in out["missing"]
    # variables not called vault_*: refused before loading, named, their values never shown
    assert rc["stray"] == 2, out["stray"]
    assert "whose names do not start with vault_: database_url, region." in out["stray"]
    assert STRAY not in out["stray"] and "Print the region" not in out["stray"]
