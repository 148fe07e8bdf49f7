#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_health: read-only PostgreSQL health probes (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_health
short_description: Read-only PostgreSQL health checks (connection, version, connections, size)
description:
  - Connects to PostgreSQL with psycopg 3 through the DSN in O(dsn) and runs the read-only
    checks named in O(checks), each adding its facts to the result.
  - C(version) returns RV(server_version), RV(server_version_num) and RV(server_version_full).
  - C(connections) counts client connections in C(pg_stat_activity) (rows whose
    C(backend_type) is C(client backend), in every database, this check's own connection
    included) and compares them with C(max_connections) - RV(connections_percent) is
    C(connections_used / max_connections * 100). At or above O(connections_warn_percent) the
    result carries a warning. Background processes (autovacuum, WAL senders, parallel and
    other background workers) are not counted; they have their own slots.
  - When the connecting role may not read other roles' sessions in detail (it is not a
    superuser and not a member of C(pg_read_all_stats)), PostgreSQL hides their
    C(backend_type); such rows that belong to a database are counted as client connections
    too (conservative, they may include autovacuum workers) and reported in
    RV(connections_hidden).
  - C(size) returns the size of the database the DSN names (RV(database_name),
    RV(database_size_bytes), RV(database_size_pretty)).
  - Every check runs in a C(READ ONLY) transaction that is rolled back; the connection is
    always closed.
  - "Verdict: a connection failure, or a check that cannot run, is a failure; crossing
    O(connections_warn_percent) is a warning. RV(verdict) is C(ok), C(warn) or C(fail),
    RV(problems) lists every warning and failure in words, and RV(ok) is false only on a
    failure."
  - "A connection failure is a normal result, not a task failure: RV(connected=false) with the
    reason in RV(error) (never containing the password) and RV(verdict=fail). This keeps the
    verdict logic of a caller in one place. Set O(fail_on_problem=true) to fail the task
    instead when the verdict is C(fail). Invalid input, or psycopg missing on the host, always
    fails the task."
  - Designed to grow - later checks (long-running queries, lock chains, pg_stat_statements,
    cache hit ratio, replication lag) are added as new O(checks) entries.
version_added: "0.1.0"
author:
  - opsbook maintainers
requirements:
  - psycopg >= 3.1 (psycopg 3) for the Python interpreter that runs the module
options:
  dsn:
    description:
      - libpq connection string, a URI (C(postgresql://user:password@host:5432/db)) or
        C(key=value) pairs. Secret (C(no_log)); the password never appears in the output.
      - Shared by every opsbook Postgres module (C(module_utils/opsbook_pg.py)).
    type: str
    required: true
  connect_timeout:
    description:
      - Seconds to wait for the connection (libpq C(connect_timeout); at least 1, and libpq
        waits at least 2).
      - Shared by every opsbook Postgres module.
    type: int
    default: 10
  application_name:
    description:
      - C(application_name) of the session, as seen in C(pg_stat_activity). Overrides one set
        in the DSN.
      - Shared by every opsbook Postgres module.
    type: str
    default: opsbook
  checks:
    description:
      - The checks to run, in this order. The connection itself is always checked.
    type: list
    elements: str
    choices: [version, connections, size]
    default: [connections, version, size]
  connections_warn_percent:
    description:
      - Warn when RV(connections_percent) is at or above this percentage of C(max_connections).
    type: float
    default: 80
  retries:
    description:
      - How many more times to try to connect when connecting fails (a blip, a failover).
    type: int
    default: 0
  retry_delay_s:
    description:
      - Seconds to wait between connection attempts.
    type: float
    default: 1
  fail_on_problem:
    description:
      - Fail the task when the verdict is C(fail). Warnings never fail the task.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Every check is read-only (a READ ONLY transaction, rolled back); the module
      runs and reports the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
  platform:
    platforms: posix
    description: Runs on the host that can reach the database (group C(dbadmin) in opsbook).
notes:
  - Read-only; RV(changed) is always false.
  - For an exact connection count when the role is not a superuser, grant it
    C(pg_read_all_stats).
seealso:
  - name: pg_stat_activity
    description: PostgreSQL documentation of the view the connection count reads.
    link: https://www.postgresql.org/docs/current/monitoring-stats.html#MONITORING-PG-STAT-ACTIVITY-VIEW
"""

EXAMPLES = r"""
- name: Check the database (connects, version, connections against max_connections, size)
  pg_health:
    dsn: "{{ database_url }}"
    connect_timeout: 5
    connections_warn_percent: 80
    retries: 2
  no_log: true
  register: db_health

- name: Only the connection count; fail the task when the database cannot be reached
  pg_health:
    dsn: "host=db.internal dbname=app user=monitor password={{ vault_monitor_password }}"
    checks: [connections]
    fail_on_problem: true
  no_log: true
"""

RETURN = r"""
connected:
  description: Whether a connection could be made.
  returned: always
  type: bool
  sample: true
error:
  description: Why connecting failed (the password is never included); null when connected.
  returned: always
  type: str
  sample: >-
    connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused
attempts:
  description: How many connection attempts were made.
  returned: always
  type: int
  sample: 1
checks:
  description: The checks that were run.
  returned: always
  type: list
  elements: str
  sample: [connections, version, size]
server_version:
  description: The server version, as C(server_version) reports it without the build details.
  returned: when connected and C(version) is in O(checks)
  type: str
  sample: "15.8"
server_version_num:
  description: The server version as a number (C(server_version_num)).
  returned: when connected and C(version) is in O(checks)
  type: int
  sample: 150008
server_version_full:
  description: The output of C(version()).
  returned: when connected and C(version) is in O(checks)
  type: str
  sample: PostgreSQL 15.8 (Debian 15.8-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc
connections_used:
  description: Client connections in C(pg_stat_activity), all databases, this one included
    (see the description for what is counted).
  returned: when connected and C(connections) is in O(checks)
  type: int
  sample: 12
connections_hidden:
  description: Of RV(connections_used), the rows whose C(backend_type) the role may not read
    (counted as client connections). 0 for a superuser or a C(pg_read_all_stats) member.
  returned: when connected and C(connections) is in O(checks)
  type: int
  sample: 0
max_connections:
  description: The server's C(max_connections).
  returned: when connected and C(connections) is in O(checks)
  type: int
  sample: 100
superuser_reserved_connections:
  description: The server's C(superuser_reserved_connections) (slots only superusers can use).
  returned: when connected and C(connections) is in O(checks)
  type: int
  sample: 3
reserved_connections:
  description: The server's C(reserved_connections) (PostgreSQL 16 and later); null before 16.
  returned: when connected and C(connections) is in O(checks)
  type: int
  sample: 0
connections_available:
  description: Slots still open to ordinary roles
    (C(max_connections - superuser_reserved_connections - reserved_connections - connections_used)),
    never below 0.
  returned: when connected and C(connections) is in O(checks)
  type: int
  sample: 85
connections_percent:
  description: C(connections_used / max_connections * 100), one decimal.
  returned: when connected and C(connections) is in O(checks)
  type: float
  sample: 12.0
connections_warn:
  description: Whether RV(connections_percent) is at or above O(connections_warn_percent).
  returned: when connected and C(connections) is in O(checks)
  type: bool
  sample: false
database_name:
  description: The database the DSN connects to.
  returned: when connected and C(size) is in O(checks)
  type: str
  sample: app
database_size_bytes:
  description: Its size on disk (C(pg_database_size)).
  returned: when connected and C(size) is in O(checks)
  type: int
  sample: 8385059
database_size_pretty:
  description: The same, human-readable (C(pg_size_pretty)).
  returned: when connected and C(size) is in O(checks)
  type: str
  sample: 8189 kB
verdict:
  description: C(ok), C(warn) (only warnings) or C(fail) (at least one failure).
  returned: always
  type: str
  sample: ok
ok:
  description: False when the verdict is C(fail); a warning alone keeps it true.
  returned: always
  type: bool
  sample: true
problems:
  description: Every warning and failure, one readable sentence each.
  returned: always
  type: list
  elements: str
  sample: ["connections at 85.0% of max_connections (17 of 20), warn at 80%"]
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: "connected to PostgreSQL 15.8: connections 3/20 (15.0%), size 7581 kB: ok"
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.opsbook_pg import (
    PgConnectError,
    pg_connection_argument_spec,
    pg_session,
    require_psycopg,
    safe_error,
    validate_connection_params,
)

DEFAULT_CHECKS = ["connections", "version", "size"]


@dataclass
class CheckOutcome:
    """What one check adds to the result: facts, failures and warnings."""

    facts: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# pure helpers


def percent(part: int, whole: int) -> float:
    """``part / whole * 100`` rounded to one decimal; 0.0 when ``whole`` is not positive."""
    if whole <= 0:
        return 0.0
    return round(part * 100.0 / whole, 1)


def short_version(server_version: str) -> str:
    """``'15.8 (Debian 15.8-1.pgdg120+1)'`` -> ``'15.8'``."""
    return (server_version or "").split(" ", 1)[0]


def connections_outcome(
    client: int,
    hidden: int,
    max_connections: int,
    superuser_reserved: int,
    reserved: int | None,
    warn_percent: float,
) -> CheckOutcome:
    """Facts and warnings for a connection count against ``max_connections``."""
    used = client + hidden
    pct = percent(used, max_connections)
    available = max(0, max_connections - superuser_reserved - (reserved or 0) - used)
    warn = pct >= warn_percent
    outcome = CheckOutcome(
        facts={
            "connections_used": used,
            "connections_hidden": hidden,
            "max_connections": max_connections,
            "superuser_reserved_connections": superuser_reserved,
            "reserved_connections": reserved,
            "connections_available": available,
            "connections_percent": pct,
            "connections_warn": warn,
        }
    )
    if warn:
        outcome.warnings.append(
            f"connections at {pct}% of max_connections ({used} of {max_connections}), "
            f"warn at {warn_percent:g}%"
        )
    return outcome


def connect_problem(error: str) -> str:
    """The problem sentence for a connection failure (psycopg's own prefix dropped)."""
    prefix = "connection failed: "
    reason = error[len(prefix) :] if error.startswith(prefix) else error
    return f"cannot connect: {reason}"


def verdict_of(failures: list[str], warnings: list[str]) -> str:
    if failures:
        return "fail"
    return "warn" if warnings else "ok"


def summarize(result: dict[str, Any]) -> str:
    """One line: what was found, then the verdict or the problems."""
    if not result.get("connected"):
        return f"cannot connect: {result.get('error')}"
    parts = []
    if "server_version" in result:
        parts.append(f"connected to PostgreSQL {result['server_version']}")
    else:
        parts.append("connected")
    if "connections_used" in result:
        parts.append(
            f"connections {result['connections_used']}/{result['max_connections']} "
            f"({result['connections_percent']}%)"
        )
    if "database_size_pretty" in result:
        parts.append(f"size {result['database_size_pretty']}")
    tail = result["verdict"] if not result["problems"] else "; ".join(result["problems"])
    return ", ".join(parts) + ": " + tail


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = validate_connection_params(params)
    pct = params.get("connections_warn_percent")
    if pct is not None and not 0 < pct <= 100:
        errors.append(f"connections_warn_percent must be > 0 and <= 100, got {pct}")
    if not params.get("checks"):
        errors.append("checks must name at least one check")
    if params.get("retries", 0) < 0:
        errors.append(f"retries must be >= 0, got {params['retries']}")
    if params.get("retry_delay_s", 0) < 0:
        errors.append(f"retry_delay_s must be >= 0, got {params['retry_delay_s']}")
    return errors


# ---------------------------------------------------------------------------
# checks: each takes a cursor and the module params and returns a CheckOutcome.
# A new check is one function here plus one entry in CHECKS (and in the
# ``checks`` choices of DOCUMENTATION and argument_spec()).


def check_version(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    cur.execute(
        "SELECT current_setting('server_version'),"
        " current_setting('server_version_num')::int, version()"
    )
    version, version_num, full = cur.fetchone()
    return CheckOutcome(
        facts={
            "server_version": short_version(version),
            "server_version_num": version_num,
            "server_version_full": full,
        }
    )


CONNECTIONS_SQL = """
SELECT
  count(*) FILTER (WHERE backend_type = 'client backend') AS client,
  count(*) FILTER (WHERE backend_type IS NULL AND datid IS NOT NULL) AS hidden,
  current_setting('max_connections')::int AS max_connections,
  current_setting('superuser_reserved_connections')::int AS superuser_reserved,
  current_setting('reserved_connections', true) AS reserved
FROM pg_stat_activity
"""


def check_connections(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    cur.execute(CONNECTIONS_SQL)
    client, hidden, max_conn, su_reserved, reserved = cur.fetchone()
    return connections_outcome(
        int(client),
        int(hidden),
        int(max_conn),
        int(su_reserved),
        int(reserved) if reserved not in (None, "") else None,
        params["connections_warn_percent"],
    )


def check_size(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    cur.execute(
        "SELECT current_database(), pg_database_size(current_database()),"
        " pg_size_pretty(pg_database_size(current_database()))"
    )
    name, size, pretty = cur.fetchone()
    return CheckOutcome(
        facts={
            "database_name": name,
            "database_size_bytes": int(size),
            "database_size_pretty": pretty,
        }
    )


CHECKS: dict[str, Callable[[Any, dict[str, Any]], CheckOutcome]] = {
    "version": check_version,
    "connections": check_connections,
    "size": check_size,
}


def argument_spec() -> dict[str, dict[str, Any]]:
    spec = pg_connection_argument_spec()
    spec.update(
        checks={
            "type": "list",
            "elements": "str",
            "choices": list(CHECKS),
            "default": list(DEFAULT_CHECKS),
        },
        connections_warn_percent={"type": "float", "default": 80.0},
        retries={"type": "int", "default": 0},
        retry_delay_s={"type": "float", "default": 1.0},
        fail_on_problem={"type": "bool", "default": False},
    )
    return spec


def run_checks(conn: Any, params: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Run each requested check in its own read-only transaction, rolled back after."""
    facts: dict[str, Any] = {}
    failures: list[str] = []
    warnings: list[str] = []
    for name in params["checks"]:
        try:
            with conn.cursor() as cur:
                outcome = CHECKS[name](cur, params)
        except Exception as exc:
            outcome = CheckOutcome(
                failures=[f"check {name} failed: {safe_error(exc, params['dsn'])}"]
            )
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
        facts.update(outcome.facts)
        failures.extend(outcome.failures)
        warnings.extend(outcome.warnings)
    return facts, failures, warnings


def build_result(
    connected: bool,
    attempts: int,
    checks: list[str],
    facts: dict[str, Any],
    failures: list[str],
    warnings: list[str],
    error: str | None = None,
) -> dict[str, Any]:
    verdict = verdict_of(failures, warnings)
    result: dict[str, Any] = {
        "changed": False,
        "connected": connected,
        "error": error,
        "attempts": attempts,
        "checks": list(checks),
        **facts,
        "verdict": verdict,
        "ok": verdict != "fail",
        "problems": [*failures, *warnings],
    }
    result["msg"] = summarize(result)
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    require_psycopg(module)
    params = module.params
    errors = validate_params(params)
    if errors:
        module.fail_json(msg="pg_health: invalid input: " + "; ".join(errors))
    checks = list(dict.fromkeys(params["checks"]))  # keep order, drop repeats
    params = {**params, "checks": checks}
    try:
        with pg_session(
            module, read_only=True, retries=params["retries"], retry_delay_s=params["retry_delay_s"]
        ) as (conn, attempts):
            facts, failures, warnings = run_checks(conn, params)
        result = build_result(True, attempts, checks, facts, failures, warnings)
    except PgConnectError as exc:
        error = str(exc)
        result = build_result(
            False, params["retries"] + 1, checks, {}, [connect_problem(error)], [], error=error
        )
    if params["fail_on_problem"] and result["verdict"] == "fail":
        result["msg"] = "pg_health: " + result["msg"] + " (nothing was changed)"
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
