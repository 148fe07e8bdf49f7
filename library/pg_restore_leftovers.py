#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_restore_leftovers: the databases replaces kept, dropped past their age (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_restore_leftovers
short_description: List the databases restore replaces kept, and drop those past their age
description:
  - A restore that replaces a database (M(opsbook.runbooks.pg_restore) with C(mode=replace),
    C(restore.yml -e
    restore_mode=replace)) keeps the database it replaced, renamed
    C(<target>__opsbook_old_<UTC time>), as a safety net. This module lists them on the server
    O(dsn) reaches - B(only) databases whose name has exactly that shape, the rule
    M(opsbook.runbooks.pg_restore) names them by (C(module_utils/opsbook_restore_names.py)) - and,
    with
    O(older_than_days), drops the ones replaced more than that many days ago that no session
    uses.
  - It is what M(opsbook.runbooks.pg_restore)'s C(drop_previous_after_days) does at the end of a
    replace, without
    a restore - C(routine_checks.yml) runs it daily, so that the copies go once their age is
    past, whether or not another replace happens.
  - A database in use (a session opened on it) is never dropped - it is kept and named in
    RV(in_use); a drop the server refuses (privileges) is a warning naming the database
    (RV(not_dropped)), and the module goes on with the others.
  - The module connects to O(maintenance_db) on the server, not to the database the DSN names.
    The password never appears in any message.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# connections, action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
  - opsbook.runbooks.opsbook_controller
options:
  older_than_days:
    description:
      - Drop the kept databases replaced more than this many days ago (at least 1). Not set -
        list them only.
    type: int
  target_database:
    description:
      - Only the databases kept by replaces of this database (C(<target>__opsbook_old_...)).
        Not set - those of every target on the server.
    type: str
  maintenance_db:
    description:
      - The database the module connects to.
    type: str
    default: postgres
attributes:
  check_mode:
    support: full
    description: Lists, and reports what it would drop (RV(dropped)); drops nothing.
  diff_mode:
    support: none
    description: Databases are not diffed.
  platform:
    support: full
    platforms: posix
    description: Runs where the database is reachable (group C(dbadmin) in opsbook).
notes:
  - The role of O(dsn) must own the databases (or be a superuser) to drop them - the role that
    ran the replace does.
seealso:
  - module: opsbook.runbooks.pg_restore
    description: Restore a backup into a new database, or replace one (and keep the replaced one).
"""

EXAMPLES = r"""
- name: Drop the databases replaces kept, once they are more than 7 days old
  pg_restore_leftovers:
    dsn: "{{ database_url }}"
    older_than_days: 7
  register: replaced

- name: Which copies of app do replaces keep? (nothing dropped)
  pg_restore_leftovers:
    dsn: "{{ database_url }}"
    target_database: app
  register: kept
"""

RETURN = r"""
databases:
  description: The databases replaces kept, newest first, as found before anything was dropped.
  returned: when connected
  type: list
  elements: dict
  contains:
    database:
      description: Its name.
      type: str
    target:
      description: The database it was (cut, as its name holds it, when that was long).
      type: str
    replaced_at:
      description: When it was replaced (UTC, from its name).
      type: str
    age_days:
      description: Days since then (one decimal).
      type: float
    sessions:
      description: Sessions open on it when it was listed.
      type: int
  sample: [{database: app__opsbook_old_20240501T020000Z, target: app,
            replaced_at: "2024-05-01T02:00:00Z", age_days: 12.5, sessions: 0}]
dropped:
  description: The databases dropped (in check mode - that would be).
  returned: when connected
  type: list
  elements: str
  sample: [app__opsbook_old_20240501T020000Z]
kept:
  description: The databases left in place (younger than O(older_than_days), in use, not
    droppable, or O(older_than_days) not set).
  returned: when connected
  type: list
  elements: str
in_use:
  description: Databases past their age left in place because a session uses them.
  returned: when connected
  type: list
  elements: str
not_dropped:
  description: Databases past their age whose drop the server refused, each with why.
  returned: when connected
  type: list
  elements: dict
  sample: [{database: app__opsbook_old_20240501T020000Z, error: must be owner of database ...}]
msg:
  description: One line - what was found and dropped (would be, in check mode).
  returned: always
  type: str
  sample: "2 database(s) kept by replaces; dropped app__opsbook_old_20240501T020000Z (older
    than 7 days)"
"""

from datetime import UTC, datetime
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import (
    RunContext,
    finish_module,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    HAS_PSYCOPG,
    PgConnectError,
    close_quietly,
    connect_params,
    dsn_passwords,
    make_conninfo,
    pg_connection_argument_spec,
    pg_module,
    safe_error,
    scrub_data,
    sql,
    validate_connection_params,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_restore_names import (
    age_days,
    previous_databases,
    previous_older_than,
)

SESSIONS_SQL = (
    "SELECT datname, count(*) FROM pg_stat_activity "
    "WHERE datname = ANY(%s) AND pid <> pg_backend_pid() GROUP BY datname"
)
NOTHING_DROPPED = "nothing was dropped"


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        older_than_days={"type": "int"},
        target_database={"type": "str"},
        maintenance_db={"type": "str", "default": "postgres"},
    )


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors (empty when valid); no I/O."""
    errors = validate_connection_params(params)
    days = params.get("older_than_days")
    if days is not None and days < 1:
        errors.append(f"older_than_days must be >= 1 (days), got {days}")
    if params.get("target_database") is not None and not params["target_database"].strip():
        errors.append("target_database must not be empty")
    return errors


def plan(
    names: list[str], sessions: dict[str, int], params: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """What was found, and which to drop: the old ones no session uses."""
    found = previous_databases(names, params.get("target_database"))
    for item in found:
        item.setdefault("target", params.get("target_database") or "")
        item["age_days"] = round(age_days(item, now), 1)
        item["sessions"] = sessions.get(item["database"], 0)
    days = params.get("older_than_days")
    old = previous_older_than(found, now, days, keep=None) if days else []
    in_use = [name for name in old if sessions.get(name)]
    return {
        "databases": found,
        "drop": [name for name in old if name not in in_use],
        "in_use": in_use,
    }


def summarize(result: dict[str, Any], days: int | None, check_mode: bool) -> str:
    count = len(result["databases"])
    text = f"{count} database(s) kept by replaces"
    if result["dropped"]:
        verb = "would drop" if check_mode else "dropped"
        text += f"; {verb} {', '.join(result['dropped'])} (older than {days} days)"
    elif days:
        text += f"; none older than {days} days to drop"
    if result["in_use"]:
        text += f"; in use, left: {', '.join(result['in_use'])}"
    if result["not_dropped"]:
        text += f"; could not drop: {', '.join(i['database'] for i in result['not_dropped'])}"
    return text


def run(context: RunContext, conn: Any) -> dict[str, Any]:
    params, check_mode = context.params, context.check_mode
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        names = [row[0] for row in cur.fetchall()]
        cur.execute(SESSIONS_SQL, (names,))
        sessions = {row[0]: int(row[1]) for row in cur.fetchall()}
        chosen = plan(names, sessions, params, datetime.now(UTC))
        dropped: list[str] = []
        refused: list[dict[str, str]] = []
        for name in chosen["drop"]:
            if check_mode:
                dropped.append(name)
                continue
            try:  # the server refuses while a session uses it: never dropped in use
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            except Exception as exc:
                error = safe_error(exc, params["dsn"])
                refused.append({"database": name, "error": error})
                context.warn(f"could not drop {name!r} (kept by a replace, past its age): {error}")
                continue
            dropped.append(name)
    gone = set() if check_mode else set(dropped)
    result = {
        "changed": bool(dropped),
        "databases": chosen["databases"],
        "dropped": dropped,
        "kept": [i["database"] for i in chosen["databases"] if i["database"] not in gone],
        "in_use": chosen["in_use"],
        "not_dropped": refused,
    }
    result["msg"] = summarize(result, params.get("older_than_days"), check_mode)
    return result


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, ``failed`` on a failure, its
    ``warnings``. main() runs it in a module process; on the controller's local connection
    the action plugin (action_plugins/pg_restore_leftovers.py) runs it in the task's worker."""
    secrets = [params["dsn"], *dsn_passwords(params["dsn"])]
    failed = {"failed": True, "changed": False, "dropped": []}
    if not HAS_PSYCOPG:
        missing = "psycopg (psycopg 3) is not installed for this Python"
        return {**failed, "msg": f"pg_restore_leftovers: {missing}"}
    errors = validate_params(params)
    if errors:
        problems = "; ".join(errors)
        msg = f"pg_restore_leftovers: invalid input: {problems}; {NOTHING_DROPPED}"
        return {**failed, "msg": msg}
    context = RunContext(params, check_mode)
    conn = None
    try:
        dsn = make_conninfo(params["dsn"], dbname=params["maintenance_db"])
        conn = connect_params(params, dsn, autocommit=True)
        result = run(context, conn)
    except PgConnectError as exc:
        msg = f"pg_restore_leftovers: cannot connect: {exc}; {NOTHING_DROPPED}"
        result = {**failed, "msg": msg}
    except Exception as exc:  # no traceback: it could quote the DSN
        reason = safe_error(exc, params["dsn"])
        result = {**failed, "msg": f"pg_restore_leftovers: {reason}; nothing more was dropped"}
    finally:
        close_quietly(conn)
    result["warnings"] = context.warnings
    return scrub_data(result, secrets)


def main() -> None:
    module = pg_module("pg_restore_leftovers", argument_spec())
    finish_module(module, execute(module.params, module.check_mode))


if __name__ == "__main__":
    main()
