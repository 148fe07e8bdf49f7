"""rotate_secrets.yml rotating the database password (secret db_password, DATABASE_URL) against
the lab's PostgreSQL (scram-sha-256, no trust) and SSH app hosts, the DSN's store of record
being the inventory's vault file (plain YAML here, as the sandbox's).

Single user: the login's own ALTER ROLE; DATABASE_URL and DIRECT_URL (its credentials only) on
every host and in the store; the new login works, the old one is refused, and the revoke proves
it dead. Alternating users: the other login role ensured with the new password, the old role
working until the revoke retires it. Each test makes its own roles; no password reaches the
-vvvv output or the operation log. (A failed run puts the old password back:
test_rotate_vendor_keys.py's failed run undoes the database password and Twilio's token at once.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from opsbook.lab import AppHost, PostgresCluster
from tests.integration.canaries import leaks

pytestmark = pytest.mark.integration

VAR = "vault_database_url"


@dataclass
class Db:
    """The inventory of one test, whose vault file holds the DSN being rotated."""

    inventory: Path
    vault: Path
    hosts: list[AppHost]

    def store(self) -> dict[str, Any]:
        return yaml.safe_load(self.vault.read_text())

    def journal(self) -> dict[str, Any]:
        state = self.inventory.parent.parent / "state" / "secrets" / "local" / "db_password.json"
        return json.loads(state.read_text())

    def envs(self) -> list[dict[str, str]]:
        return [host.read_env() for host in self.hosts]


def dsn(pg: PostgresCluster, role: str, password: str) -> str:
    return f"postgresql://{role}:{password}@{pg.host}:{pg.port}/app"


def logs_in(url: str) -> bool:
    """Whether the server accepts the DSN's password (refused: False; any other failure is an
    error of the test, never taken for a dead password)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT current_user").fetchone() is not None
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return False


def login(url: str) -> tuple[str, str]:
    """(user, password) of a DSN."""
    settings = conninfo_to_dict(url)
    return str(settings["user"]), str(settings["password"])


def password(tag: str) -> str:
    return f"CANARYdb{tag}" + uuid.uuid4().hex  # policy-free: the test sets it itself


@pytest.fixture
def make_db(
    app_hosts: list[AppHost], make_inventory: Callable[..., Path], tmp_path: Path
) -> Callable[..., Db]:
    """make_db(current, settings, hosts, extra, direct): an inventory rotating db_password
    (``settings``) with the vault file as its store (``current`` in it), ``current`` as
    DATABASE_URL on the hosts (and DIRECT_URL, the same credentials on another URL, when
    ``direct``), and ``extra`` inventory variables."""

    def make(
        current: str,
        settings: dict[str, Any] | None = None,
        hosts: list[AppHost] | None = None,
        extra: dict[str, Any] | None = None,
        direct: bool = False,
    ) -> Db:
        hosts = hosts or app_hosts
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        vault = tmp_path / "inventories" / "test" / "group_vars" / "all" / "vault.yml"
        store = {"type": "vault", "file": str(vault), "var": VAR}
        inventory = make_inventory(
            app_hosts=hosts,
            extra_vars={
                "opsbook_state_url": f"file://{state}",
                "database_url": "{{ " + VAR + " }}",
                "opsbook_secrets": {"db_password": {"store": store, **(settings or {})}},
                **(extra or {}),
            },
        )
        assert vault.parent == inventory / "group_vars" / "all"
        vault.write_text(f"---\n# the sandbox's secrets\n{VAR}: '{current}'\n")
        for host in hosts:
            env = host.read_env() | {"DATABASE_URL": current}
            if direct:
                env["DIRECT_URL"] = current + "?application_name=direct"
            host.write_env(env)
        return Db(inventory, vault, list(hosts))

    return make


def test_single_user_rotation_then_revoke(pg, make_db, run_playbook, tmp_path):
    tag = uuid.uuid4().hex[:8]
    role, old_pw = f"rot_{tag}_app", password(tag)
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{old_pw}'")
    old = dsn(pg, role, old_pw)
    db = make_db(old, direct=True)

    run = run_playbook("rotate_secrets", db.inventory, {"secrets": "db_password"}, args=["-vvvv"])
    assert run.returncode == 0, run.stdout[-3000:]
    store = db.store()
    new = store[VAR]
    assert store[f"{VAR}_previous"] == old and f"{VAR}_pending" not in store
    assert login(new)[0] == role and login(new)[1] != old_pw
    new_pw = login(new)[1]
    assert logs_in(new) and not logs_in(old)  # single user: the old password died at set
    for env in db.envs():
        assert env["DATABASE_URL"] == new
        assert env["DIRECT_URL"] == new + "?application_name=direct"
        assert "DATABASE_URL_PREVIOUS" not in env and "DATABASE_URL_PENDING" not in env
    entry = db.journal()
    assert entry["step"] == "finished" and entry["previous_fp"] is not None
    oplog = (tmp_path / "oplog.jsonl").read_text()
    assert leaks([old_pw, new_pw], texts={"stdout": run.stdout + run.stderr, "oplog": oplog}) == {}
    assert old_pw not in json.dumps(entry) and new_pw not in json.dumps(entry)

    revoke = run_playbook(
        "rotate_secrets", db.inventory, {"secrets": "db_password", "rotation_step": "revoke"}
    )
    assert revoke.returncode == 0, revoke.stdout[-3000:]
    assert f"the old login is refused ({role})" in revoke.stdout
    assert db.journal()["step"] == "revoked"
    assert f"{VAR}_previous" not in db.store() and db.store()[VAR] == new
    assert logs_in(new)


def test_alternating_users_switch_role_and_retire_the_old_one(pg, app_hosts, make_db, run_playbook):
    tag = uuid.uuid4().hex[:8]
    group, first, second, admin = (f"rot_{tag}_{n}" for n in ("grp", "a", "b", "adm"))
    first_pw, admin_pw = password(tag), password(tag)
    pg.execute(
        f"CREATE ROLE {group} NOLOGIN; "
        f"CREATE ROLE {first} LOGIN PASSWORD '{first_pw}' IN ROLE {group}; "
        f"CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{admin_pw}'"
    )
    old = dsn(pg, first, first_pw)
    settings = {"strategy": "alternating", "roles": [first, second], "admin_url_var": "rot_admin"}
    db = make_db(old, settings, hosts=app_hosts[:1], extra={"rot_admin": dsn(pg, admin, admin_pw)})

    run = run_playbook("rotate_secrets", db.inventory, {"secrets": "db_password"})
    assert run.returncode == 0, run.stdout[-3000:]
    new = db.store()[VAR]
    assert login(new)[0] == second and db.envs()[0]["DATABASE_URL"] == new
    assert logs_in(new) and logs_in(old)  # the old role works until the revoke
    member = pg.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", "app", (second, group))
    assert member == [(True,)]

    revoke = run_playbook(
        "rotate_secrets", db.inventory, {"secrets": "db_password", "rotation_step": "revoke"}
    )
    assert revoke.returncode == 0, revoke.stdout[-3000:]
    assert not logs_in(old) and logs_in(new)
    assert db.journal()["step"] == "revoked"
    assert f"retire the old login {first}" in revoke.stdout
