"""AWX, ansible-runner and ansible-navigator without surprises (docs/awx.md), in real runs.

- the operation log (the collection's callback opsbook.runbooks.opsbook_oplog) under plain
  ansible-runner (its own ANSIBLE_CALLBACK_PLUGINS and stdout callback), under an AWX-shaped run
  (the project's checkout copied into the private data dir's project/, AWX's extra vars and
  collections path, the inventory AWX serves from what its sync imported) and under
  ansible-navigator --ee false;
- the inventories sync with no vault password; the vault file is read at job time;
- host key checking stays on under ansible-runner, which sets ANSIBLE_HOST_KEY_CHECKING=False.

The runbook is the real health_check.yml against localhost only (no app host, no database: it
checks, skips, publishes its verdict in about a second).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml

from opsbook.lab import AppHost
from tests.harness import PROJECT_ROOT, VENV_BIN
from tests.integration.canaries import encrypt_file
from tests.lab.inventory import app_host_vars

pytestmark = pytest.mark.integration

MARK = "OPSBOOK_OPLOG "
DSN_PASSWORD = "Canary-Awx-Dsn-7f1e"  # an AWX credential's database_url, refused by nothing
VAULT_PASSWORD = "Vault-Awx-Pa55-41c2"
VAULT_CANARY = "Canary-Awx-Vaulted-c3d9"
AWX_VARS = {
    "awx_job_id": 42,
    "awx_job_template_name": "opsbook-staging-health_check",
    "awx_user_name": "alice",
    "awx_job_launch_type": "manual",
    "tower_job_id": 42,
    "tower_job_template_name": "opsbook-staging-health_check",
    "tower_user_name": "alice",
}


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ansible or opsbook setting of the caller's reaches the runs (runner copies
    os.environ); this venv's tools first on PATH."""
    for name in list(os.environ):
        if name.startswith(("ANSIBLE_", "OPSBOOK_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    monkeypatch.setenv("ANSIBLE_NOCOLOR", "1")


def localhost_inventory(base: Path, **group_vars: Any) -> Path:
    """inventories/awx/: localhost as the dbadmin host, no app host, no database."""
    inventory = base / "inventories" / "awx"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    hosts = {
        "app": {"hosts": {}},
        "dbadmin": {
            "hosts": {
                "localhost": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                }
            }
        },
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": hosts}}))
    variables = {"opsbook_env": "staging", **group_vars}
    (inventory / "group_vars" / "all" / "vars.yml").write_text(yaml.safe_dump(variables))
    return inventory


def copy_checkout(source: Path, target: Path) -> None:
    """The project as AWX has it: the repository's files (tracked, and new ones not ignored -
    no .venv, .sandbox, .opsbook, .cache), symbolic links kept as links."""
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        src, dst = source / name, target / name
        if not os.path.lexists(src):
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def awx_inventory_script(inventory: Path, path: Path) -> Path:
    """What an AWX job gets as its inventory: a script printing what the inventory sync
    imported (ansible-inventory --list --export of the source)."""
    export = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(inventory / "hosts.yml"), "--list",
         "--export"],
        capture_output=True, text=True, check=True, cwd=PROJECT_ROOT,
    ).stdout  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{export}\nEOF\n")
    path.chmod(0o700)
    return path


def tree(root: Path) -> set[str]:
    """Every path under root but Python's bytecode caches."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


def record_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(MARK) :]) for line in text.splitlines() if line.startswith(MARK)]


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the operation log --------------------------------------------------------------------


def test_oplog_under_plain_ansible_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runner's ANSIBLE_CALLBACK_PLUGINS and awx_display stdout callback: the collection's
    callback still loads and writes the record where OPSBOOK_OPLOG says. Extra vars claiming
    an AWX job, in a process AWX did not start (no JOB_ID), are only a claim."""
    monkeypatch.delenv("JOB_ID", raising=False)
    inventory = localhost_inventory(tmp_path)
    oplog = tmp_path / "log" / "oplog.jsonl"
    (tmp_path / "runner").mkdir()
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        project_dir=str(PROJECT_ROOT),
        playbook="playbooks/health_check.yml",
        inventory=str(inventory),
        envvars={"OPSBOOK_OPLOG": str(oplog), "OPSBOOK_OPERATOR": "runner-user"},
        extravars={"opsbook_reason": "plain runner", "awx_job_id": 7, "awx_user_name": "mallory"},
        quiet=True,
    )
    output = runner.stdout.read()

    assert runner.status == "successful", output
    assert "unable to load" not in output and "Skipping callback" not in output
    [record] = read_log(oplog)
    assert (record["playbook"], record["env"], record["reason"]) == (
        "health_check", "staging", "plain runner",
    )  # fmt: skip
    assert record["status"] == "successful"
    assert record["outputs"]["health_check"]["verdict"] == "ok"
    assert "awx_job_id" not in record
    assert record["operator"] == "runner-user"  # not the claimed AWX user
    assert record["awx_claimed"] == {"awx_job_id": 7, "awx_user_name": "mallory"}
    assert record_lines(output) == []  # the stdout line is AWX's default, not runner's


def test_oplog_under_an_awx_shaped_run(tmp_path: Path) -> None:
    """As AWX runs a job: the checkout copied into <private data dir>/project, the inventory
    AWX serves from its sync, AWX's extra vars and a collections path of AWX's own without
    opsbook.runbooks (playbooks/collections finds it), no OPSBOOK_OPLOG. An AWX credential's
    database_url whose database is down fails the run: the record says so, masked."""
    private = tmp_path / "job_42"
    project = private / "project"
    copy_checkout(PROJECT_ROOT, project)
    before = tree(project)
    inventory = awx_inventory_script(localhost_inventory(tmp_path), private / "inventory" / "hosts")
    awx_collections = tmp_path / "awx_collections"
    (awx_collections / "ansible_collections").mkdir(parents=True)
    dsn = f"postgresql://app:{DSN_PASSWORD}@127.0.0.1:1/app?connect_timeout=2"

    runner = ansible_runner.run(
        private_data_dir=str(private),
        playbook="playbooks/health_check.yml",
        inventory=str(inventory),
        extravars={
            **AWX_VARS,
            "opsbook_reason": "from AWX",
            "database_url": dsn,
            "health_check_retries": 0,  # the database is down: one attempt is enough
        },
        envvars={
            "ANSIBLE_COLLECTIONS_PATH": f"{awx_collections}:/usr/share/ansible/collections",
            "ANSIBLE_COLLECTIONS_PATHS": f"{awx_collections}:/usr/share/ansible/collections",
            "JOB_ID": "42",
            "AWX_HOST": "https://awx.example.com",
        },
        quiet=True,
    )
    output = runner.stdout.read()

    assert runner.status == "failed", output  # the database is down: the verdict is fail
    [record] = record_lines(output)  # one line, in the job output
    assert record["operator"] == "alice"
    assert (record["awx_job_id"], record["awx_job_template_name"]) == (
        42, "opsbook-staging-health_check",
    )  # fmt: skip
    assert (record["playbook"], record["env"], record["reason"]) == (
        "health_check", "staging", "from AWX",
    )  # fmt: skip
    assert record["extra_var_keys"] == [  # not AWX's own awx_* / tower_*
        "database_url", "health_check_retries", "opsbook_reason",
    ]  # fmt: skip
    assert record["status"] == "failed" and record["failures"]
    # ...in runner's stdout artifact too, and the warning that no file was written
    [artifact] = private.glob("artifacts/*/stdout")
    assert record_lines(artifact.read_text()) == [record]
    assert "AWX job 42: no operation log file is configured" in output
    # nothing written into the job's copy of the project (no .opsbook/oplog.jsonl)
    assert tree(project) == before
    # the credential's password: nowhere in the job's output
    assert DSN_PASSWORD not in output
    assert DSN_PASSWORD not in artifact.read_text()


def test_oplog_under_ansible_navigator(tmp_path: Path) -> None:
    inventory = localhost_inventory(tmp_path)
    oplog = tmp_path / "oplog.jsonl"
    env = {**os.environ, "OPSBOOK_OPLOG": str(oplog), "OPSBOOK_OPERATOR": "nav-user"}
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-navigator"), "run", "playbooks/health_check.yml",
         "-i", str(inventory / "hosts.yml"), "--ee", "false", "--mode", "stdout",
         "--pae", "false", "--lf", str(tmp_path / "navigator.log"),
         "-e", "opsbook_reason=navigator"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unable to load" not in proc.stdout + proc.stderr
    [record] = read_log(oplog)
    assert (record["playbook"], record["operator"], record["reason"]) == (
        "health_check", "nav-user", "navigator",
    )  # fmt: skip
    assert record["status"] == "successful"


# -- secrets: the inventory syncs without vault, the vault file is read at job time ------


def test_every_inventory_exports_without_a_vault_password() -> None:
    """What an AWX inventory sync runs, for each environment's directory and its hosts.yml
    (the source awx_setup.yml gives AWX): no vault secret needed, no vault data in it."""
    sources = [PROJECT_ROOT / "inventories" / "staging"]
    sources += sorted((PROJECT_ROOT / "inventories").glob("*/hosts.yml"))
    assert len(sources) >= 4
    procs = [
        (source, subprocess.Popen(
            [str(VENV_BIN / "ansible-inventory"), "-i", str(source), "--list", "--export"],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        for source in sources
    ]  # fmt: skip
    for source, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{source}: {err}"
        assert "ANSIBLE_VAULT" not in out and "__ansible_vault" not in out, source
        exported = json.loads(out)
        group_vars = exported["all"]["vars"]
        if group_vars["opsbook_env"] != "local":  # the sandbox's password is plain, local
            name = group_vars["opsbook_env"]
            assert group_vars["opsbook_vault_file"] == f"{{{{ playbook_dir }}}}/../vault/{name}.yml"
            header = (PROJECT_ROOT / "vault" / f"{name}.yml").read_text().split("\n", 1)[0]
            assert header.startswith("$ANSIBLE_VAULT;")


def test_the_vault_file_is_read_at_job_time(tmp_path: Path) -> None:
    """playbooks/_vault.yml: the inventory's opsbook_vault_file read with the run's vault
    password - its notification settings reach the operation log; without a password the run
    stops saying what to give; an AWX job without a Vault credential goes on without it."""
    password = tmp_path / "vault-pass"
    password.write_text(VAULT_PASSWORD + "\n")
    notify = tmp_path / "notify.jsonl"
    secrets = tmp_path / "vault" / "awx.yml"
    secrets.parent.mkdir()
    encrypt_file(  # vault_* names only (_vault.yml refuses others): the inventory maps them
        f"vault_notify_file: {notify}\n"
        "vault_notify_fields: {loaded_from: vault}\n"
        f"vault_api_token: {VAULT_CANARY}\n",
        password,
        secrets,
    )
    inventory = localhost_inventory(
        tmp_path,
        opsbook_vault_file=str(secrets),
        opsbook_notify_file="{{ vault_notify_file | default('') }}",
        opsbook_notify_fields="{{ vault_notify_fields | default({}) }}",
    )
    oplog = tmp_path / "oplog.jsonl"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "playbooks/health_check.yml",
             "-i", str(inventory), *args],
            cwd=PROJECT_ROOT, env={**os.environ, "OPSBOOK_OPLOG": str(oplog)},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    with_password = run("--vault-password-file", str(password))
    assert with_password.returncode == 0, with_password.stdout + with_password.stderr
    [success] = read_log(notify)  # read after the vault file was loaded: it was
    # (every value of a vault-encrypted file is a secret: even this field is masked)
    assert (success["event"], success["fields"]["loaded_from"]) == ("success", "***")
    assert VAULT_CANARY not in with_password.stdout + oplog.read_text()

    without = run()
    assert without.returncode == 2
    assert f"{secrets} is vault-encrypted and this run has no vault password" in without.stdout
    assert read_log(oplog)[-1]["status"] == "failed"

    awx_job = run("-e", json.dumps(AWX_VARS))
    assert awx_job.returncode == 0, awx_job.stdout + awx_job.stderr
    assert "awx.yml not read: this AWX job has no Vault credential" in awx_job.stdout
    assert len(read_log(notify)) == 1  # its settings were in the vault file: none this time


# -- host key checking ----------------------------------------------------------------------


def test_host_key_checking_stays_on_under_ansible_runner(
    app_hosts: list[AppHost], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False; the project's ansible.cfg (ssh_args
    -o StrictHostKeyChecking=yes) still refuses a host whose key is not known. With ssh_args
    overridden, the same run reaches the host - and the operation log warns in its output."""
    host = app_hosts[0]
    empty = tmp_path / "known_hosts"
    empty.touch()
    hostvars = app_host_vars(host, None, empty)
    hostvars["ansible_ssh_common_args"] = f"-o UserKnownHostsFile={empty}"  # nothing else
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"app1": hostvars}}}))
    playbook = tmp_path / "ping.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Reach the host", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Ping", "ansible.builtin.ping": {}}],
    }]))  # fmt: skip

    def run(name: str, **envvars: str) -> tuple[Any, str]:
        (tmp_path / name).mkdir()
        control_dir = tempfile.mkdtemp(prefix="cp", dir="/tmp")  # short: ssh's limit is 108
        request.addfinalizer(lambda: shutil.rmtree(control_dir, ignore_errors=True))
        runner = ansible_runner.run(
            private_data_dir=str(tmp_path / name),
            project_dir=str(PROJECT_ROOT),
            playbook=str(playbook),
            inventory=str(inventory),
            envvars={
                "OPSBOOK_OPLOG": str(tmp_path / "oplog.jsonl"),
                # a control master of another test's connection must not be reused
                "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
                **envvars,
            },
            quiet=True,
        )
        return runner, runner.stdout.read()

    refused, output = run("refused")
    assert refused.stats["dark"] == {"app1": 1}, output  # unreachable
    assert "Host key verification failed" in output
    assert "host key checking is off" not in output
    assert empty.read_text() == ""  # nothing learnt

    reached, output = run("unchecked", ANSIBLE_SSH_ARGS="-o ControlMaster=no")
    assert reached.status == "successful", output
    assert "SSH host key checking is off in this run (host app1)" in output
