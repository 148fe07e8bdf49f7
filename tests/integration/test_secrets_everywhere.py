"""Every runbook at -vvvv with canary secrets in the inventory's encrypted vault.yml: the
canaries are nowhere.

The canaries: the database password (in ``vault_database_url``, the DSN every database
runbook uses through ``database_url``), the deploy notifications' webhook URL
(``opsbook_notify_webhook_url``, and its token alone), the S3 secret key (AWS credentials
come from the environment: ``AWS_SECRET_ACCESS_KEY``, backups go to the lab's S3 server) and
the vault password. vault.yml is encrypted by ``ansible-vault encrypt``; nothing in clear ever
holds a canary but the vault password file.

Two runs, each with its own HOME (``~/.ansible/tmp``, the SSH control sockets) and TMPDIR:

1. one ``ansible-playbook -vvvv --diff`` of every runbook - tour.yml (health_check, backup,
   restore_drill, deploy of a new release to the app host, rollback, the rotation of
   JWT_SECRET: the value it replaced and the one it generated are canaries too), then
   restore.yml (the latest backup into a new database), maintenance_mode.yml, db_migrate.yml,
   data_fix.yml, db_maintenance.yml and db_health.yml - each succeeding (each publishes its report);
2. ``opsbook run health_check -vvvv`` (the app host over SSH, the database by the DSN),
   through ansible-runner: its artifacts hold the whole -vvvv output;
3. ``opsbook run rotate_secrets -e secrets=jwt -vvvv``: the JWT secret rotated again through
   ansible-runner (the value it made is a canary too).

Then no canary, in any form, is in ansible-playbook's stdout and stderr, opsbook's output,
the runner's artifacts, the operation log, any file under either run's HOME and TMPDIR, nor
any other file the test made (inventory, deploy state, ...). The webhook received the
notifications: the URL was used, not left out.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import (
    AppHost,
    PostgresCluster,
    SshKeyPair,
    load_app_schema,
    start_app_hosts,
    stop_all,
)
from opsbook.lab.sampleapp import build_release
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env
from tests.integration.canaries import encrypt_file, leaks
from tests.lab import MotoS3Server
from tests.webhook import Webhook

pytestmark = pytest.mark.integration

TAG = secrets.token_hex(4)
DB_PASSWORD = f"Canary-Db-Pw-{TAG}"
HOOK_TOKEN = f"canary-hook-{TAG}"
S3_SECRET = f"Canary/S3+Secret-{TAG}"  # AWS secret keys hold '/' and '+'
VAULT_PASSWORD = f"Canary-Vault-Pw-{TAG}"
BUCKET = "opsbook-test"
FIRST_ADDRESS = 91  # 127.0.10.91: this file's own app host

RUNBOOKS_AT_ONCE = (
    "tour", "restore", "maintenance_mode", "db_migrate", "data_fix", "db_maintenance",
    "db_health",
)  # fmt: skip
# set_stats keys: every runbook ran through to its report
PUBLISHED = {
    "tour": {
        "health_check", "backup", "restore_drill", "deploy", "rollback", "rotation",
        "routine_checks", "incident",
    },
    "restore": {"restore"},
    "maintenance_mode": {"maintenance_mode"},
    "db_migrate": {"db_migrate"},
    "data_fix": {"data_fix"},
    "db_maintenance": {"db_maintenance"},
    "db_health": {"db_health"},
    "health_check": {"health_check"},
    "rotate_secrets": {"rotation"},
}
FIX = """-- Data Fix: pro users back to team (canary test)
BEGIN;
UPDATE users SET plan = 'team' WHERE plan = 'pro' AND id < 0;
COMMIT;
"""


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook(f"/services/T0/B0/{HOOK_TOKEN}")
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def app_host(tmp_path_factory: pytest.TempPathFactory, ssh_key: SshKeyPair) -> Iterator[AppHost]:
    hosts = start_app_hosts(
        1, tmp_path_factory.mktemp("canary-hosts"), ssh_key, first_address=FIRST_ADDRESS,
        name_prefix="sec",
    )  # fmt: skip
    yield hosts[0]
    stop_all(hosts)


@pytest.fixture(scope="module")
def database(pg: PostgresCluster) -> Iterator[dict[str, str]]:
    """A role whose password is the canary, owning a small app database."""
    role, name = f"canary_{TAG}", f"canary_{TAG}"
    pg.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}'")
    pg.execute(f"CREATE DATABASE {name} OWNER {role}")
    dsn = f"postgresql://{role}:{DB_PASSWORD}@{pg.host}:{pg.port}/{name}"
    load_app_schema(dsn, users=20, tasks_per_user=2)
    info = {"role": role, "name": name, "dsn": dsn, "restored": f"{name}_restored"}
    yield info
    for db in (name, info["restored"]):
        pg.drop_database(db)
    pg.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def lab(
    tmp_path: Path,
    make_inventory: Any,
    app_host: AppHost,
    database: dict[str, str],
    s3: MotoS3Server,
    webhook: Webhook,
) -> dict[str, Any]:
    password_file = tmp_path / "vault-pass"
    password_file.write_text(VAULT_PASSWORD + "\n")
    artifacts = tmp_path / "artifacts"
    releases = {v: build_release(v, artifacts) for v in ("1.1.0",)}
    inventory = make_inventory(
        env="canary",
        app_hosts=[app_host],
        database_url="{{ vault_database_url }}",
        backup_storage_url=f"s3://{BUCKET}/canary-{TAG}",
        extra_vars={
            "s3_endpoint_url": s3.endpoint_url,
            "opsbook_state_url": f"file://{tmp_path / 'state'}",
            "tour_app_version": "1.1.0",
            "tour_app_artifact": str(releases["1.1.0"]),
            "opsbook_secrets": {"jwt": {"store": "env_file", "test_path": "/api/me"}},
        },
    )
    encrypt_file(
        f"vault_database_url: {database['dsn']}\nopsbook_notify_webhook_url: {webhook.url}\n",
        password_file,
        inventory / "group_vars" / "all" / "vault.yml",
    )
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "migration-001-widgets.sql").write_text("CREATE TABLE widgets (id int);\n")
    fix = tmp_path / "data-fix-2025-10-01-canary.sql"
    fix.write_text(FIX)
    return {
        "inventory": inventory, "password_file": password_file, "releases": releases,
        "migrations": migrations, "fix": fix,
    }  # fmt: skip


@pytest.fixture
def run_homes() -> Iterator[Path]:
    """Where each run's HOME and TMPDIR go: a short path (SSH control sockets live under
    HOME, and a Unix socket path has at most 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="sec-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def run_env(homes: Path, name: str, tmp_path: Path, oplog: Path) -> dict[str, str]:
    dirs = {"HOME": homes / name / "home", "TMPDIR": homes / name / "tmp"}
    for path in dirs.values():
        path.mkdir(parents=True)
    return ansible_env(oplog, {
        **{k: str(v) for k, v in dirs.items()},
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "OPSBOOK_PROJECT_DIR": str(PROJECT_ROOT),
        "OPSBOOK_RUNS_DIR": str(tmp_path / "runs"),
        "OPSBOOK_INVENTORY_ROOT": str(tmp_path / "inventories"),
        "OPSBOOK_OPLOG_STDOUT": "1",  # each record printed too (OPSBOOK_OPLOG {...}): scanned
    })  # fmt: skip


def test_every_runbook_at_vvvv_leaves_no_canary_anywhere(
    tmp_path: Path,
    lab: dict[str, Any],
    database: dict[str, str],
    webhook: Webhook,
    app_host: AppHost,
    run_homes: Path,
) -> None:
    oplog = tmp_path / "oplog.jsonl"
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({
        "opsbook_reason": "canary test",
        "restore_target_database": database["restored"],
        "maintenance": "off",
        "migrations_dir": str(lab["migrations"]),
        "data_fix_file": str(lab["fix"]),
        "data_fix_verify": "SELECT id FROM users WHERE id < 0",
        "opsbook_report_dir": str(tmp_path / "reports"),  # the tour's reports, scanned too
    }))  # fmt: skip
    jwt_before = app_host.read_env()["JWT_SECRET"]  # the tour rotates it
    started = time.monotonic()
    every = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-vvvv", "--diff", "-i", str(lab["inventory"]),
         "--vault-password-file", str(lab["password_file"]), "-e", f"@{extra}",
         *(f"playbooks/{name}.yml" for name in RUNBOOKS_AT_ONCE)],
        cwd=PROJECT_ROOT, env=run_env(run_homes, "every", tmp_path, oplog),
        stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    every_s = time.monotonic() - started
    (tmp_path / "every.log").write_text(every.stdout + every.stderr)  # scanned too
    assert every.returncode == 0, every.stdout[-6000:] + every.stderr[-3000:]
    assert every.stdout.count("\nOPSBOOK_OPLOG {") == len(RUNBOOKS_AT_ONCE)  # the records

    started = time.monotonic()
    check = subprocess.run(
        [str(VENV_BIN / "opsbook"), "run", "health_check", "--env", "canary", "-vvvv",
         "--vault-password-file", str(lab["password_file"]), "--reason", "canary test"],
        cwd=PROJECT_ROOT, env=run_env(run_homes, "opsbook", tmp_path, oplog),
        stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    check_s = time.monotonic() - started
    (tmp_path / "check.log").write_text(check.stdout + check.stderr)  # scanned too
    assert check.returncode == 0, check.stdout[-6000:] + check.stderr[-3000:]
    print(f"ansible-playbook of every runbook: {every_s:.1f} s; opsbook run: {check_s:.1f} s")
    jwt_after = app_host.read_env()["JWT_SECRET"]  # the tour's rotation made it

    # the rotation again, through ansible-runner: its -vvvv artifacts see the values travel
    rotate = subprocess.run(
        [str(VENV_BIN / "opsbook"), "run", "rotate_secrets", "--env", "canary", "-vvvv",
         "-e", "secrets=jwt", "--vault-password-file", str(lab["password_file"]),
         "--reason", "canary test"],
        cwd=PROJECT_ROOT, env=run_env(run_homes, "rotate", tmp_path, oplog),
        stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    (tmp_path / "rotate.log").write_text(rotate.stdout + rotate.stderr)  # scanned too
    assert rotate.returncode == 0, rotate.stdout[-6000:] + rotate.stderr[-3000:]
    jwt_last = app_host.read_env()["JWT_SECRET"]

    # every runbook ran through to its report; the secrets were used
    records = [json.loads(line) for line in oplog.read_text().splitlines()]
    assert [r["playbook"] for r in records] == [*RUNBOOKS_AT_ONCE, "health_check", "rotate_secrets"]
    for record in records:
        assert record["status"] == "successful", record
        assert PUBLISHED[record["playbook"]] <= set(record["outputs"]), record
    tour = records[0]["outputs"]
    assert tour["backup"]["storage"].startswith(f"s3://{BUCKET}/") and tour["backup"]["verified"]
    assert tour["deploy"]["version"] == "1.1.0"  # deployed, then rolled back
    assert app_host.version() == "1.0.0"
    reports = sorted(path.name.split("-")[0] for path in (tmp_path / "reports").glob("*.md"))
    assert reports == ["incident", "routine_checks"]  # written where asked, scanned below
    assert len(webhook.payloads) >= 2  # the URL was used: deploy's and rollback's notifications
    artifacts = sorted((tmp_path / "runs").glob("*/artifacts/*"))
    assert len(artifacts) == 2
    assert "ESTABLISH SSH CONNECTION" in every.stdout  # -vvvv: connections are shown
    health_out, rotate_out = ((a / "stdout").read_text() for a in artifacts)  # by start time
    for output in (every.stdout, health_out):
        assert "ESTABLISH LOCAL CONNECTION" in output
    assert "ESTABLISH SSH CONNECTION" in rotate_out  # the env files, read and written over SSH

    assert len({jwt_before, jwt_after, jwt_last}) == 3  # rotated twice
    assert app_host.read_env()["JWT_SECRET_PREVIOUS"] == jwt_after
    assert tour["rotation"]["ok"] and tour["rotation"]["secrets"][0]["action"] == "rotate"

    # ...and are nowhere (the JWT secrets: the one replaced and the one generated by the run)
    found = leaks(
        (
            DB_PASSWORD,
            webhook.url,
            HOOK_TOKEN,
            S3_SECRET,
            VAULT_PASSWORD,
            jwt_before,
            jwt_after,
            jwt_last,
        ),
        roots=[tmp_path, run_homes],
        texts={
            "ansible-playbook stdout": every.stdout,
            "ansible-playbook stderr": every.stderr,
            "opsbook run stdout": check.stdout,
            "opsbook run stderr": check.stderr,
            "opsbook run rotate_secrets stdout": rotate.stdout,
            "opsbook run rotate_secrets stderr": rotate.stderr,
        },
        skip=[lab["password_file"]],
    )
    assert found == {}
