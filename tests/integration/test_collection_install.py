"""The collection as a user of it gets it: built with ansible-galaxy, installed into a
collections path of its own, and used by FQCN from another repository - not this project's
ansible.cfg, roles or library - against the lab's PostgreSQL.

The user's playbook sets the Postgres connection once for the action group
(group/opsbook.runbooks.postgres), calls pg_health, a filter and the pg_backup role, lists the
backup with pg_backup_info, and has the operation log (opsbook.runbooks.opsbook_oplog) record
the run. ansible-doc in that repository renders the modules with their doc fragments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsbook.lab import PostgresCluster
from tests.harness import PROJECT_ROOT, VENV_BIN
from tests.loaders import load_plugin

FQ = "opsbook.runbooks"
#: the filter's own function, for the value the user's playbook must get from it
redact = load_plugin("filter_plugins", "opsbook_filters").dsn_redact

PLAYBOOK = """\
- name: Back up the app's database with opsbook's collection
  hosts: dbadmin
  gather_facts: false
  module_defaults:
    group/opsbook.runbooks.postgres:
      dsn: "{{ database_url }}"
      application_name: user-repo
  tasks:
    - name: Health of the database (the dsn comes from the action group's defaults)
      opsbook.runbooks.pg_health:
      register: health

    - name: A filter of the collection
      ansible.builtin.set_fact:
        redacted: "{{ database_url | opsbook.runbooks.dsn_redact }}"

    - name: Show the filter's result (the operation log would redact it again)
      ansible.builtin.debug:
        msg: "redacted={{ redacted }}"

    - name: Back up with the collection's role
      ansible.builtin.include_role:
        name: opsbook.runbooks.pg_backup
      vars:
        pg_backup_database_url: "{{ database_url }}"
        pg_backup_storage_url: "file://{{ backup_dir }}"
        pg_backup_keep_last: 3

    - name: The backups in storage
      opsbook.runbooks.pg_backup_info:
        storage_url: "file://{{ backup_dir }}"
      register: info

    - name: What the user's repository sees
      ansible.builtin.set_stats:
        data:
          user_repo:
            connected: "{{ health.connected }}"
            database: "{{ health.database_name }}"
            redacted: "{{ redacted }}"
            backups: "{{ info.backups | map(attribute='backup_id') | list }}"
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built from this checkout and installed into a path of its own."""
    out = tmp_path_factory.mktemp("build")
    built = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "build_collection.py"), "--output-dir",
         str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    tarball = built.stdout.strip().splitlines()[-1]
    path = tmp_path_factory.mktemp("collections")
    done = subprocess.run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--offline", "-p", str(path),
         tarball],
        cwd=out, env=user_env(out, path), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (path / "ansible_collections" / "opsbook" / "runbooks" / "MANIFEST.json").is_file()
    return path


def user_env(repo: Path, collections: Path) -> dict[str, str]:
    """The environment of a user's shell: nothing of this project's Ansible settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "OPSBOOK_"))}
    env.update(
        ANSIBLE_CONFIG=str(repo / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        HOME=str(repo),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def user_repo(tmp_path: Path, collections: Path, pg: PostgresCluster) -> Path:
    repo = tmp_path / "infra"
    (repo / "inventory").mkdir(parents=True)
    (repo / "ansible.cfg").write_text(
        "[defaults]\n"
        f"collections_path = {collections}\n"
        "callbacks_enabled = opsbook.runbooks.opsbook_oplog\n"
        "stdout_callback = ansible.builtin.default\n"
        "gathering = explicit\n"
        "[connection]\npipelining = true\n"
    )
    (repo / "inventory" / "hosts.yml").write_text(
        json.dumps(
            {
                "dbadmin": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                            "database_url": pg.dsn_for("app"),
                            "backup_dir": str(tmp_path / "backups"),
                        }
                    }
                }
            }
        )
    )
    (repo / "backup.yml").write_text(PLAYBOOK)
    return repo


def test_a_playbook_in_another_repository_uses_the_installed_collection_by_fqcn(
    installed: Path, pg: PostgresCluster, tmp_path: Path
) -> None:
    repo = user_repo(tmp_path, installed, pg)
    env = user_env(repo, installed)
    oplog = tmp_path / "oplog.jsonl"
    env.update(OPSBOOK_OPLOG=str(oplog), ANSIBLE_SHOW_CUSTOM_STATS="1")
    done = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "inventory/hosts.yml", "backup.yml"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Skipping callback" not in output and "unable to load" not in output
    assert "couldn't resolve module" not in output
    # the backup happened, through the role, and is listed by the module
    backups = sorted((tmp_path / "backups").rglob("manifest.json"))
    assert backups, output
    # the operation log of the collection recorded the run, from the user's repository
    records = [json.loads(line) for line in oplog.read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] == "successful", records
    seen = records[0]["outputs"]["user_repo"]
    assert seen["backups"] and len(seen["backups"]) == len(backups), seen
    # the module ran with the dsn of the action group's defaults; the filter ran
    assert seen["connected"] is True and seen["database"] == "app", seen
    shown = f"redacted={redact(pg.dsn_for('app'))}"
    assert shown in output and "********@" in shown, output
    assert records[0]["playbook"] == "backup"
    assert pg.password and pg.password not in output and pg.password not in oplog.read_text()


def test_ansible_doc_in_another_repository_renders_modules_with_their_fragments(
    installed: Path, tmp_path: Path, pg: PostgresCluster
) -> None:
    repo = user_repo(tmp_path, installed, pg)
    done = subprocess.run(
        [str(VENV_BIN / "ansible-doc"), f"{FQ}.pg_health", f"{FQ}.pg_backup"],
        cwd=repo, env=user_env(repo, installed), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "unknown doc_fragment" not in done.stdout + done.stderr
    assert "Shared by every opsbook Postgres module" in done.stdout  # from the opsbook_pg fragment
    assert "s3_endpoint_url" in done.stdout  # from the opsbook_s3 fragment (pg_backup)
