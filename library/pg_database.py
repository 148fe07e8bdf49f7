#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_database: create or drop one PostgreSQL database, guarded for scratch databases (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_database
short_description: Create or drop one PostgreSQL database (guarded for opsbook's scratch databases)
description:
  - Makes the database O(name) present (C(CREATE DATABASE)) or absent (C(DROP DATABASE)) on
    the server the DSN in O(dsn) reaches. The module connects to O(maintenance_db) on that
    server, not to the database the DSN names, so the application's own DSN can be used.
  - Built for short-lived B(scratch databases), such as the one C(restore_drill.yml) restores
    into and drops afterwards. Dropping is guarded - O(state=absent) drops O(name) only when
    the name starts with one of O(scratch_prefixes) (followed by at least one more
    character), or when O(confirm) equals O(name) (a typed confirmation). Anything else is
    refused before the server is touched and nothing is dropped. C(postgres),
    C(template0), C(template1) and O(maintenance_db) are never dropped.
  - With O(restore_leftovers=true), O(state=absent) also drops the databases the
    C(pg_restore) module names C(<name>__opsbook_restore_<id>) (its work copy, which it drops
    itself on failure; this catches one left by a killed run). They are dropped under the same
    guard as O(name).
  - Open sessions on a database to drop are an error naming how many, unless O(force=true)
    (C(DROP DATABASE ... WITH (FORCE)), which ends them).
  - Idempotent - an absent database stays absent (C(changed=false)), a present one is not
    altered (its owner is not changed).
  - The password never appears in any message.
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
# psycopg and the connection options
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
options:
  name:
    description:
      - The database to create or drop.
    type: str
    required: true
  state:
    description:
      - C(present) creates the database when it does not exist; C(absent) drops it when it
        exists (see the guard in the description).
    type: str
    choices: [present, absent]
    default: present
  owner:
    description:
      - With O(state=present), the owner of a database that is created. Default - the
        connecting role.
    type: str
  maintenance_db:
    description:
      - The database the module connects to. Must not be O(name).
    type: str
    default: postgres
  scratch_prefixes:
    description:
      - Name prefixes of scratch databases, which O(state=absent) may drop without
        O(confirm).
    type: list
    elements: str
    default: [opsbook_drill_]
  confirm:
    description:
      - Typed confirmation - equal to O(name), it lets O(state=absent) drop a database whose
        name has none of O(scratch_prefixes). A O(confirm) naming another database is refused.
    type: str
  force:
    description:
      - With O(state=absent), end the open sessions of the database (C(WITH (FORCE)),
        PostgreSQL 13 and later; C(pg_terminate_backend) before that). When false, open
        sessions are an error and nothing is dropped.
    type: bool
    default: false
  restore_leftovers:
    description:
      - With O(state=absent), also drop the C(<name>__opsbook_restore_<id>) databases a
        killed C(pg_restore) run may have left.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Connects and reads C(pg_database) (and the open sessions), applies the guard,
      and reports what it would create or drop; creates and drops nothing.
  diff_mode:
    support: none
    description: Databases are not diffed.
  platform:
    support: full
    platforms: posix
    description: Runs where the database is reachable (group C(dbadmin) in opsbook).
notes:
  - The role of O(dsn) needs C(CREATEDB) (or superuser) to create, and must own the database
    (or be a superuser) to drop it.
  - C(pg_restore) creates, replaces and verifies restored databases; this module only makes
    or removes an (empty) database, for scratch work such as restore drills.
seealso:
  - module: opsbook.runbooks.pg_restore
    description: Restore a backup into a new database, or replace one.
"""

EXAMPLES = r"""
- name: Drop the restore drill's scratch database (and a killed restore's work copy)
  pg_database:
    dsn: "{{ database_url }}"
    name: opsbook_drill_3fa2c1d0
    state: absent
    force: true
    restore_leftovers: true
  no_log: true

- name: Is there a database named app_copy? (check mode reports, changes nothing)
  pg_database:
    dsn: "{{ database_url }}"
    name: app_copy
    state: present
  check_mode: true
  no_log: true
  register: probe  # probe.exists

- name: Drop a database that is not a scratch database - needs the typed confirmation
  pg_database:
    dsn: "{{ database_url }}"
    name: app_copy
    state: absent
    confirm: "{{ confirm }}"  # the operator types: app_copy
  no_log: true
"""

RETURN = r"""
name:
  description: The database.
  returned: always
  type: str
  sample: opsbook_drill_3fa2c1d0
exists:
  description: Whether the database existed when the module started.
  returned: when connected
  type: bool
  sample: true
created:
  description: Whether the database was created (would be, in check mode).
  returned: when connected
  type: bool
  sample: false
dropped:
  description: Databases dropped (would be, in check mode) - O(name) and any restore leftovers.
  returned: when connected
  type: list
  elements: str
  sample: [opsbook_drill_3fa2c1d0]
open_sessions:
  description: Open sessions on the databases to drop at the time of the check.
  returned: when connected
  type: int
  sample: 0
msg:
  description: One line - what was (or would be) done; on failure what failed and that nothing
    was dropped or created.
  returned: always
  type: str
  sample: dropped database 'opsbook_drill_3fa2c1d0'
"""

from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    PgConnectError,
    close_quietly,
    connect_params,
    make_conninfo,
    pg_connection_argument_spec,
    pg_module,
    safe_error,
    sql,
    validate_connection_params,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import (
    typed_confirmation_problem,
)

NEVER_DROP = ("postgres", "template0", "template1")
RESTORE_SCRATCH_INFIX = "__opsbook_restore_"
MAX_IDENTIFIER_BYTES = 63


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        name={"type": "str", "required": True},
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
        owner={"type": "str"},
        maintenance_db={"type": "str", "default": "postgres"},
        scratch_prefixes={"type": "list", "elements": "str", "default": ["opsbook_drill_"]},
        confirm={"type": "str"},
        force={"type": "bool", "default": False},
        restore_leftovers={"type": "bool", "default": False},
    )


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors (empty when valid); no I/O."""
    errors = validate_connection_params(params)
    name = params.get("name") or ""
    if not name.strip():
        errors.append("name must not be empty")
    elif len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        errors.append(f"name {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    if "\x00" in name:
        errors.append("name must not contain a NUL character")
    if name and name == params.get("maintenance_db"):
        errors.append(
            f"name and maintenance_db are both {name!r}: the module connects to maintenance_db"
        )
    if any(not (p or "").strip() for p in params.get("scratch_prefixes") or []):
        errors.append("scratch_prefixes must not contain an empty prefix")
    return errors


def drop_refusal(name: str, prefixes: list[str], confirm: str | None) -> str | None:
    """Why ``name`` may not be dropped (None when it may)."""
    if name in NEVER_DROP:
        return f"{name!r} is a system database and is never dropped"
    scratch = any(name.startswith(p) and len(name) > len(p) for p in prefixes)
    shown = ", ".join(repr(p) for p in prefixes) or "none"
    needed = f"{name!r} is not a scratch database (scratch name prefixes: {shown})"
    return typed_confirmation_problem(
        name, confirm, None if scratch else needed, go_ahead=f"set confirm to {name!r} to drop it",
        quote=True,
    )


def leftover_names(name: str, existing: list[str]) -> list[str]:
    """The pg_restore work copies of ``name`` among ``existing`` database names."""
    prefix = name + RESTORE_SCRATCH_INFIX
    return sorted(n for n in existing if n.startswith(prefix) and len(n) > len(prefix))


def list_databases(cur: Any) -> list[str]:
    cur.execute("SELECT datname FROM pg_database")
    return [row[0] for row in cur.fetchall()]


def open_sessions(cur: Any, names: list[str]) -> int:
    if not names:
        return 0
    cur.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
        (names,),
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def drop_database(cur: Any, name: str, force: bool, server_version_num: int) -> None:
    ident = sql.Identifier(name)
    if force and server_version_num >= 130000:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        return
    if force:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


def run_absent(module: Any, conn: Any, result: dict[str, Any]) -> dict[str, Any]:
    params = module.params
    name = params["name"]
    with conn.cursor() as cur:
        existing = list_databases(cur)
        result["exists"] = name in existing
        targets = [name] if name in existing else []
        if params["restore_leftovers"]:
            targets += leftover_names(name, existing)
        sessions = open_sessions(cur, targets)
        result["open_sessions"] = sessions
        if not targets:
            result["msg"] = f"database {name!r} does not exist; nothing to drop"
            return result
        if sessions and not params["force"]:
            raise ModuleFailure(
                f"{sessions} open session(s) on {', '.join(repr(t) for t in targets)}: "
                "close them or set force=true; nothing was dropped"
            )
        result["changed"] = True
        result["dropped"] = targets
        if module.check_mode:
            result["msg"] = f"would drop {', '.join(repr(t) for t in targets)}"
            return result
        version = int(conn.info.server_version)
        done: list[str] = []
        for target in targets:
            try:
                drop_database(cur, target, params["force"], version)
            except Exception as exc:
                result["dropped"] = done
                left = [t for t in targets if t not in done]
                raise ModuleFailure(
                    f"dropping database {target!r} failed: {safe_error(exc, params['dsn'])}; "
                    f"dropped so far: {done or 'none'}; still there: {left}"
                ) from None
            done.append(target)
    result["msg"] = f"dropped {', '.join(repr(t) for t in targets)}"
    return result


def run_present(module: Any, conn: Any, result: dict[str, Any]) -> dict[str, Any]:
    params = module.params
    name = params["name"]
    with conn.cursor() as cur:
        existing = list_databases(cur)
        result["exists"] = name in existing
        if name in existing:
            result["msg"] = f"database {name!r} exists"
            return result
        result["changed"] = True
        result["created"] = True
        if module.check_mode:
            result["msg"] = f"would create database {name!r}"
            return result
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if params["owner"]:
            query = sql.SQL("{} OWNER {}").format(query, sql.Identifier(params["owner"]))
        try:
            cur.execute(query)
        except Exception as exc:
            raise ModuleFailure(
                f"creating database {name!r} failed: {safe_error(exc, params['dsn'])}; "
                "nothing was created"
            ) from None
    result["msg"] = f"created database {name!r}"
    return result


def nothing_done(params: dict[str, Any]) -> dict[str, Any]:
    """The result of a run that changed nothing (invalid input included)."""
    return {"changed": False, "name": params["name"], "created": False, "dropped": []}


class ModuleFailure(Exception):
    """A failure whose message is already free of secrets."""


def main() -> None:
    module = pg_module("pg_database", argument_spec(), validate_params, fail_fields=nothing_done)
    params = module.params
    name = params["name"]
    result = nothing_done(params)
    if params["state"] == "absent":
        refusal = drop_refusal(name, params["scratch_prefixes"], params["confirm"])
        if refusal:
            module.fail_json(msg=f"pg_database: refused: {refusal}; nothing was dropped", **result)
    what = "nothing was dropped" if params["state"] == "absent" else "nothing was created"
    conn = None
    try:
        dsn = make_conninfo(params["dsn"], dbname=params["maintenance_db"])
        conn = connect_params(params, dsn, autocommit=True)
        runner = run_absent if params["state"] == "absent" else run_present
        result = runner(module, conn, result)
    except PgConnectError as exc:
        module.fail_json(msg=f"pg_database: cannot connect: {exc}; {what}", **result)
    except ModuleFailure as exc:
        module.fail_json(msg=f"pg_database: {exc}", **result)
    except Exception as exc:
        # no traceback: it could quote the DSN
        module.fail_json(msg=f"pg_database: {safe_error(exc, params['dsn'])}; {what}", **result)
    finally:
        close_quietly(conn)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
