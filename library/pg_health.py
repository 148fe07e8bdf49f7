#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_health: read-only PostgreSQL health probes (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_health
short_description: PostgreSQL health and triage checks (connections, slow and blocked queries, ...)
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
  - "C(long_queries) lists the client sessions, in every database, whose query has been
    running (C(state = active)) or whose transaction has been idle (C(idle in transaction))
    for at least O(long_query_threshold_s) seconds (RV(long_queries), query text collapsed and
    truncated to O(query_max_chars)). Any such session is a warning. With O(long_query_action)
    C(cancel) (C(pg_cancel_backend)) or C(terminate) (C(pg_terminate_backend)), the ones in
    B(this) database running for at least O(long_query_action_after_s) seconds are acted on,
    and only when the same query (or idle transaction) is still the one found; in check mode
    they are reported as C(would cancel) / C(would terminate). The opsbook role asks for a
    typed confirmation in production."
  - "C(locks) finds the sessions waiting for a lock and who blocks them
    (C(pg_blocking_pids)), and groups them into chains from the root blocker
    (RV(lock_chains)), with each session's state, how long it has waited
    (C(pg_locks.waitstart)) and its query, truncated. A blocked session waiting for at least
    O(lock_wait_warn_s) seconds is a warning."
  - "C(statements) reads the O(statements_limit) statements of this database with the
    highest mean execution time from C(pg_stat_statements) (columns of extension 1.8+ and
    older). When the extension is not installed in the database, or installed but not loaded
    (C(shared_preload_libraries)), the check is skipped with a note in RV(notes), not a
    problem. With O(statements_since), the statements are ranked by their mean time B(since)
    that snapshot instead (see there), and the snapshot of now is returned
    (RV(statements_snapshot))."
  - "C(cache_hit) computes this database's buffer cache hit ratio from C(pg_stat_database)
    (C(blks_hit / (blks_hit + blks_read))), a warning below O(cache_hit_warn_percent) once at
    least O(cache_hit_min_blocks) blocks were read."
  - "C(replication) lists the replicas of a primary (C(pg_stat_replication), lag in seconds
    and bytes) and its inactive replication slots (the WAL they hold back), or, on a standby,
    its replay lag. No replica is reported as C(no replicas) (RV(replication_note)). A lag of
    at least O(replication_lag_warn_s) seconds or O(replication_lag_warn_mb) MiB, or an
    inactive slot, is a warning."
  - Every check runs in a C(READ ONLY) transaction that is rolled back; the connection is
    always closed. Cancelling or terminating a backend (O(long_query_action)) is not a write
    and runs in that transaction too.
  - "Verdict: a connection failure, or a check that cannot run, is a failure; crossing
    O(connections_warn_percent) is a warning. RV(verdict) is C(ok), C(warn) or C(fail),
    RV(problems) lists every warning and failure in words, and RV(ok) is false only on a
    failure."
  - "A connection failure is a normal result, not a task failure: RV(connected=false) with the
    reason in RV(error) (never containing the password) and RV(verdict=fail). This keeps the
    verdict logic of a caller in one place. Set O(fail_on_problem=true) to fail the task
    instead when the verdict is C(fail). Invalid input, or psycopg missing on the host, always
    fails the task."
  - RV(report_lines) is a readable summary of every check that ran (the opsbook
    C(db_health) role prints it).
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
# psycopg and the connection options
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
options:
  checks:
    description:
      - The checks to run, in this order. The connection itself is always checked.
    type: list
    elements: str
    choices: [version, connections, size, long_queries, locks, statements, cache_hit, replication]
    default: [connections, version, size]
  connections_warn_percent:
    description:
      - Warn when RV(connections_percent) is at or above this percentage of C(max_connections).
    type: float
    default: 80
  long_query_threshold_s:
    description:
      - C(long_queries) lists queries running, and transactions idle, for at least this many
        seconds.
    type: float
    default: 60
  long_query_action:
    description:
      - What C(long_queries) does with the long ones in this database - C(report) only,
        C(cancel) the query (C(pg_cancel_backend); no effect on an idle transaction) or
        C(terminate) the session (C(pg_terminate_backend)).
    type: str
    choices: [report, cancel, terminate]
    default: report
  long_query_action_after_s:
    description:
      - Act only on sessions long for at least this many seconds (default -
        O(long_query_threshold_s)).
    type: float
  query_max_chars:
    description:
      - Query texts in the results are collapsed to one line and truncated to this many
        characters.
    type: int
    default: 200
  lock_wait_warn_s:
    description:
      - Warn when a session has waited for a lock for at least this many seconds.
    type: float
    default: 5
  statements_limit:
    description:
      - How many of the slowest statements (highest mean time) C(statements) returns.
    type: int
    default: 5
  statements_since:
    description:
      - A snapshot an earlier run returned (RV(statements_snapshot) - the cumulative calls,
        total time and rows of each statement then, by C(queryid)). C(statements) then ranks
        this database's statements by their mean time since that snapshot - the calls and the
        time they took since then - and returns the snapshot of now. A statement the snapshot
        does not hold (new, or the statistics were reset since) counts from zero; one not
        called since is left out. An empty mapping - no earlier snapshot - ranks them by their
        mean time overall, as without this option. C(routine_checks.yml) keeps the snapshot
        under C(opsbook_state_url) between its runs.
    type: dict
  cache_hit_warn_percent:
    description:
      - Warn when the cache hit ratio is below this percentage.
    type: float
    default: 95
  cache_hit_min_blocks:
    description:
      - Judge the cache hit ratio only once at least this many blocks were read (hit or not).
    type: int
    default: 10000
  replication_lag_warn_s:
    description:
      - Warn when a replica's replay lag (or this standby's) is at least this many seconds.
    type: float
    default: 30
  replication_lag_warn_mb:
    description:
      - Warn when a replica is at least this many MiB of WAL behind.
    type: float
    default: 64
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
      runs and reports the same in check mode, except that O(long_query_action) only says
      which sessions it would cancel or terminate.
  diff_mode:
    support: none
    description: No data is changed, so there is nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the host that can reach the database (group C(dbadmin) in opsbook).
notes:
  - C(changed) is true only when O(long_query_action) cancelled or terminated a session.
  - For an exact connection count, and to see other roles' queries and waits, grant a role
    that is not a superuser C(pg_read_all_stats); to cancel or terminate their sessions,
    C(pg_signal_backend).
seealso:
  - name: pg_stat_activity
    description: PostgreSQL documentation of the view the connection count reads.
    link: https://www.postgresql.org/docs/current/monitoring-stats.html#MONITORING-PG-STAT-ACTIVITY-VIEW
  - name: pg_stat_statements
    description: The extension the C(statements) check reads.
    link: https://www.postgresql.org/docs/current/pgstatstatements.html
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

- name: The "database is slow" checklist - long queries, lock chains, slowest statements
  pg_health:
    dsn: "{{ database_url }}"
    checks: [connections, size, long_queries, locks, statements, cache_hit, replication]
    long_query_threshold_s: 30
    lock_wait_warn_s: 5
  no_log: true
  register: triage

- name: Terminate the sessions of this database busy for more than 10 minutes
  pg_health:
    dsn: "{{ database_url }}"
    checks: [long_queries]
    long_query_threshold_s: 600
    long_query_action: terminate
  no_log: true

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
long_queries:
  description: Sessions running a query, or idle in a transaction, for at least
    O(long_query_threshold_s) - C(pid), C(user), C(database), C(application), C(client),
    C(state), C(duration_s) (of the query, or of the idle state), C(xact_s), C(wait_event),
    C(query) (truncated), C(this_database), C(action) (null, C(cancelled), C(terminated),
    C(would cancel), C(would terminate), or why nothing was done).
  returned: when connected and C(long_queries) is in O(checks)
  type: list
  elements: dict
  sample:
    - {pid: 4242, user: app, database: app, application: psql, client: 10.0.0.5,
       state: active, duration_s: 73.2, xact_s: 73.2, wait_event: null,
       query: "SELECT pg_sleep(600)", this_database: true, action: null}
long_queries_acted:
  description: The pids cancelled or terminated (in check mode - that would be).
  returned: when connected and C(long_queries) is in O(checks)
  type: list
  elements: int
  sample: [4242]
lock_waits:
  description: How many sessions wait for a lock held by another.
  returned: when connected and C(locks) is in O(checks)
  type: int
  sample: 1
lock_chains:
  description: One entry per root blocker - C(root) (the session holding the lock - pid,
    state, user, application, C(xact_s), query), C(blocked) (the sessions waiting behind it,
    directly or not - pid, C(depth), C(blocked_by), C(wait_s), wait event, query) and
    C(max_wait_s).
  returned: when connected and C(locks) is in O(checks)
  type: list
  elements: dict
  sample:
    - root: {pid: 100, state: idle in transaction, xact_s: 35.0, query: "UPDATE t SET v = 1"}
      blocked: [{pid: 101, depth: 1, blocked_by: [100], wait_s: 30.2, query: "UPDATE t SET v = 2"}]
      max_wait_s: 30.2
statements_available:
  description: Whether C(pg_stat_statements) could be read in this database.
  returned: when connected and C(statements) is in O(checks)
  type: bool
  sample: true
slowest_statements:
  description: The slowest statements by mean time - C(queryid), C(calls), C(total_ms),
    C(mean_ms), C(max_ms), C(rows), C(query) (truncated). Empty when the extension is not
    available.
  returned: when connected and C(statements) is in O(checks)
  type: list
  elements: dict
  sample: [{queryid: 42, calls: 10, total_ms: 5200.0, mean_ms: 520.0, max_ms: 900.1, rows: 10,
            query: "SELECT * FROM tasks WHERE payload->>$1 = $2"}]
statements_snapshot:
  description: With O(statements_since) - per C(queryid) (a string) the cumulative calls, total
    time (ms) and rows of this database's statements now, C([calls, total_ms, rows]); give it
    back as O(statements_since) next time. C(max_ms) of RV(slowest_statements) stays the
    maximum since the statistics were reset (the extension keeps no other).
  returned: when connected, C(statements) is in O(checks), the extension can be read and
    O(statements_since) is given
  type: dict
  sample: {"42": [10, 5200.0, 10]}
cache_hit_percent:
  description: The buffer cache hit ratio of this database, one decimal (null before any read).
  returned: when connected and C(cache_hit) is in O(checks)
  type: float
  sample: 99.7
cache_blocks_read:
  description: Blocks read from outside the buffer cache (C(blks_read)); C(cache_blocks_hit)
    those found in it.
  returned: when connected and C(cache_hit) is in O(checks)
  type: int
  sample: 1024
replication_role:
  description: C(primary) or C(standby).
  returned: when connected and C(replication) is in O(checks)
  type: str
  sample: primary
replicas:
  description: The replicas of a primary - C(name), C(client), C(state), C(sync_state),
    C(write_lag_s), C(flush_lag_s), C(replay_lag_s), C(lag_bytes).
  returned: when connected and C(replication) is in O(checks)
  type: list
  elements: dict
  sample: []
replication_slots:
  description: The inactive replication slots of a primary and the WAL they retain
    (C(slot), C(type), C(retained_bytes)).
  returned: when connected and C(replication) is in O(checks)
  type: list
  elements: dict
  sample: []
replication_note:
  description: C(no replicas), or what was found, in words.
  returned: when connected and C(replication) is in O(checks)
  type: str
  sample: no replicas
notes:
  description: Checks skipped or not judged, and why (not problems).
  returned: always
  type: list
  elements: str
  sample: ["statements: pg_stat_statements is not installed in database app"]
report_lines:
  description: A readable summary, one line per finding.
  returned: always
  type: list
  elements: str
  sample: ["Database health: WARN", "connections 3/20 (15.0%), warn at 80%"]
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

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    PgConnectError,
    pg_connection_argument_spec,
    pg_module,
    pg_session,
    safe_error,
    validate_connection_params,
)

DEFAULT_CHECKS = ["connections", "version", "size"]


@dataclass
class CheckOutcome:
    """What one check adds to the result: facts, failures, warnings and notes."""

    facts: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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
    if "long_queries" in result:
        parts.append(f"long queries {len(result['long_queries'])}")
    if "lock_waits" in result:
        parts.append(f"lock waits {result['lock_waits']}")
    if result.get("cache_hit_percent") is not None:
        parts.append(f"cache hit {result['cache_hit_percent']}%")
    if "replication_note" in result:
        parts.append(result["replication_note"])
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
    for key in (
        "long_query_threshold_s",
        "long_query_action_after_s",
        "lock_wait_warn_s",
        "replication_lag_warn_s",
        "replication_lag_warn_mb",
        "cache_hit_min_blocks",
    ):
        if (params.get(key) or 0) < 0:
            errors.append(f"{key} must be >= 0, got {params[key]}")
    for key in ("query_max_chars", "statements_limit"):
        if params.get(key) is not None and params[key] < 1:
            errors.append(f"{key} must be >= 1, got {params[key]}")
    hit = params.get("cache_hit_warn_percent")
    if hit is not None and not 0 <= hit <= 100:
        errors.append(f"cache_hit_warn_percent must be between 0 and 100, got {hit}")
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


# --- long-running queries -------------------------------------------------


def one_line(text: str | None, max_chars: int) -> str | None:
    """A query as one line (whitespace collapsed), truncated to ``max_chars`` with an ellipsis."""
    if text is None:
        return None
    flat = " ".join(str(text).split())
    return flat if len(flat) <= max_chars else flat[: max(1, max_chars - 1)] + "\u2026"


def seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


LONG_QUERIES_SQL = """
SELECT pid, usename, datname, application_name, client_addr::text, state,
       EXTRACT(EPOCH FROM now() - CASE WHEN state = 'active' THEN query_start
                                       ELSE state_change END) AS duration_s,
       EXTRACT(EPOCH FROM now() - xact_start) AS xact_s,
       CASE WHEN wait_event IS NULL THEN NULL ELSE wait_event_type || '/' || wait_event END,
       query, datname = current_database(), query_start, xact_start
FROM pg_stat_activity
WHERE pid <> pg_backend_pid()
  AND backend_type = 'client backend'
  AND ((state = 'active' AND now() - query_start >= make_interval(secs => %(threshold)s))
    OR (state LIKE 'idle in transaction%%'
        AND now() - state_change >= make_interval(secs => %(threshold)s)))
ORDER BY duration_s DESC
"""

# Acts only when the session still runs the query (or idle transaction) that was found.
ACTION_SQL = """
SELECT {function}(pid) FROM pg_stat_activity
WHERE pid = %(pid)s
  AND query_start IS NOT DISTINCT FROM %(query_start)s
  AND xact_start IS NOT DISTINCT FROM %(xact_start)s
"""


def long_query_entry(row: tuple[Any, ...], max_chars: int) -> dict[str, Any]:
    pid, user, db, app, client, state, duration, xact, wait, query, same_db = row[:11]
    return {
        "pid": int(pid),
        "user": user,
        "database": db,
        "application": app,
        "client": client,
        "state": state,
        "duration_s": seconds(duration),
        "xact_s": seconds(xact),
        "wait_event": wait,
        "query": one_line(query, max_chars),
        "this_database": bool(same_db),
        "action": None,
    }


def action_candidates(
    entries: list[dict[str, Any]], action: str, after_s: float
) -> list[dict[str, Any]]:
    """The long sessions an action applies to: this database, long enough, still there.

    A cancel cannot end an idle transaction (there is no query to cancel): such sessions are
    marked and skipped.
    """
    if action == "report":
        return []
    chosen = []
    for entry in entries:
        if not entry["this_database"] or (entry["duration_s"] or 0) < after_s:
            continue
        if action == "cancel" and entry["state"] != "active":
            entry["action"] = "not cancelled: an idle transaction has no query to cancel"
            continue
        chosen.append(entry)
    return chosen


def long_queries_outcome(entries: list[dict[str, Any]], threshold: float) -> CheckOutcome:
    outcome = CheckOutcome(
        facts={
            "long_queries": entries,
            "long_queries_acted": [
                e["pid"]
                for e in entries
                if e["action"] in ("cancelled", "terminated", "would cancel", "would terminate")
            ],
        }
    )
    if entries:
        longest = entries[0]
        what = "query running" if longest["state"] == "active" else longest["state"]
        outcome.warnings.append(
            f"{len(entries)} sessions over {threshold:g} s (longest: pid {longest['pid']}, "
            f"{what} for {longest['duration_s']:g} s: {longest['query']})"
        )
    return outcome


def check_long_queries(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    threshold = float(params["long_query_threshold_s"])
    cur.execute(LONG_QUERIES_SQL, {"threshold": threshold})
    rows = cur.fetchall()
    entries = [long_query_entry(row, params["query_max_chars"]) for row in rows]
    starts = {int(row[0]): (row[11], row[12]) for row in rows}
    action = params.get("long_query_action") or "report"
    after = params.get("long_query_action_after_s")
    after = threshold if after is None else float(after)
    verb = "cancelled" if action == "cancel" else "terminated"
    function = "pg_cancel_backend" if action == "cancel" else "pg_terminate_backend"
    for entry in action_candidates(entries, action, after):
        if params.get("_check_mode"):
            entry["action"] = f"would {action}"
            continue
        query_start, xact_start = starts[entry["pid"]]
        cur.execute(
            ACTION_SQL.format(function=function),
            {"pid": entry["pid"], "query_start": query_start, "xact_start": xact_start},
        )
        done = cur.fetchone()
        if done is None:
            entry["action"] = f"not {verb}: it had moved on (another query, or gone)"
        elif done[0]:
            entry["action"] = verb
        else:
            entry["action"] = f"not {verb}: {function} returned false (no permission?)"
    return long_queries_outcome(entries, threshold)


# --- lock chains ----------------------------------------------------------

LOCKS_SQL = """
WITH waiting AS (
  SELECT pid, pg_blocking_pids(pid) AS blockers
  FROM pg_stat_activity
  WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()
), involved AS (
  SELECT pid FROM waiting UNION SELECT unnest(blockers) FROM waiting
)
SELECT i.pid, w.blockers, a.usename, a.datname, a.application_name, a.state,
       CASE WHEN a.wait_event IS NULL THEN NULL ELSE a.wait_event_type || '/' || a.wait_event END,
       EXTRACT(EPOCH FROM now() - {wait_start}),
       EXTRACT(EPOCH FROM now() - a.xact_start),
       a.query
FROM involved i
LEFT JOIN waiting w ON w.pid = i.pid
LEFT JOIN pg_stat_activity a ON a.pid = i.pid
ORDER BY i.pid
"""
WAIT_START_14 = (
    "coalesce((SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted),"
    " a.query_start)"
)


def lock_session(row: tuple[Any, ...], max_chars: int) -> dict[str, Any]:
    pid, blockers, user, db, app, state, wait, wait_s, xact_s, query = row
    return {
        "pid": int(pid),
        "blocked_by": sorted(int(b) for b in blockers or []),
        "user": user,
        "database": db,
        "application": app,
        "state": state if pid else "prepared transaction",
        "wait_event": wait,
        "wait_s": seconds(wait_s) if blockers else None,
        "xact_s": seconds(xact_s),
        "query": one_line(query, max_chars),
    }


def lock_chains(sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group waiting sessions under their root blockers (sessions blocked by nobody).

    A session blocked by several roots appears under each. Sessions caught in a cycle
    (a deadlock the detector has not broken yet) form a chain rooted at their lowest pid.
    """
    by_pid = {s["pid"]: s for s in sessions}
    blocks: dict[int, list[int]] = {}
    for s in sessions:
        for blocker in s["blocked_by"]:
            blocks.setdefault(blocker, []).append(s["pid"])
    roots = [pid for pid in sorted(blocks) if not by_pid.get(pid, {}).get("blocked_by")]
    covered: set[int] = set()
    chains = []

    def walk(root: int) -> list[dict[str, Any]]:
        blocked, seen, frontier, depth = [], {root}, [root], 0
        while frontier:
            depth += 1
            nxt = []
            for pid in frontier:
                for child in sorted(blocks.get(pid, [])):
                    if child in seen:
                        continue
                    seen.add(child)
                    nxt.append(child)
                    blocked.append({**by_pid[child], "depth": depth})
            frontier = nxt
        covered.update(seen)
        return blocked

    def chain(root: int) -> dict[str, Any]:
        blocked = walk(root)
        root_info = by_pid.get(root) or {"pid": root, "blocked_by": [], "state": "unknown"}
        waits = [b["wait_s"] for b in blocked if b.get("wait_s") is not None]
        return {"root": root_info, "blocked": blocked, "max_wait_s": max(waits) if waits else None}

    for root in roots:
        chains.append(chain(root))
    for s in sessions:  # cycles: everything still uncovered that waits
        if s["blocked_by"] and s["pid"] not in covered:
            chains.append(chain(s["pid"]))
    return chains


def locks_outcome(sessions: list[dict[str, Any]], warn_s: float) -> CheckOutcome:
    chains = lock_chains(sessions)
    waiting = [s for s in sessions if s["blocked_by"]]
    outcome = CheckOutcome(facts={"lock_waits": len(waiting), "lock_chains": chains})
    for c in chains:
        if c["max_wait_s"] is not None and c["max_wait_s"] >= warn_s:
            root = c["root"]
            outcome.warnings.append(
                f"lock chain: pid {root['pid']} ({root.get('state')}) blocks "
                f"{len(c['blocked'])} sessions, longest wait {c['max_wait_s']:g} s "
                f"(warn at {warn_s:g} s): {root.get('query')}"
            )
    return outcome


def check_locks(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    cur.execute("SELECT current_setting('server_version_num')::int")
    wait_start = WAIT_START_14 if cur.fetchone()[0] >= 140000 else "a.query_start"
    cur.execute(LOCKS_SQL.format(wait_start=wait_start))
    sessions = [lock_session(row, params["query_max_chars"]) for row in cur.fetchall()]
    return locks_outcome(sessions, float(params["lock_wait_warn_s"]))


# --- pg_stat_statements ---------------------------------------------------

STATEMENT_COLUMNS = {
    # extension 1.8+ (PostgreSQL 13+) first, then the older names
    "total_ms": ("total_exec_time", "total_time"),
    "mean_ms": ("mean_exec_time", "mean_time"),
    "max_ms": ("max_exec_time", "max_time"),
}


# statements_since: every statement of this database, one row per queryid (the extension keeps
# one per user and top-level flag), its cumulative figures; ranked in Python against the snapshot.
STATEMENTS_SINCE_SQL = (
    "SELECT s.queryid, sum(s.calls), sum(s.{total}), max(s.{maximum}), sum(s.rows), "
    "min(s.query) FROM {view} s JOIN pg_database d ON d.oid = s.dbid "
    "WHERE d.datname = current_database() AND s.query IS NOT NULL AND s.queryid IS NOT NULL "
    "GROUP BY s.queryid"
)


def statement_columns(available: set[str] | list[str]) -> dict[str, str] | None:
    """The view's column for total / mean / max time, or None when it has neither naming."""
    chosen = {}
    for key, names in STATEMENT_COLUMNS.items():
        name = next((n for n in names if n in available), None)
        if name is None:
            return None
        chosen[key] = name
    return chosen


def parse_statement_rows(rows: list[tuple[Any, ...]], max_chars: int) -> list[dict[str, Any]]:
    """(queryid, calls, total, mean, max, rows, query) rows -> report entries."""
    return [
        {
            "queryid": int(queryid) if queryid is not None else None,
            "calls": int(calls),
            "total_ms": round(float(total), 1),
            "mean_ms": round(float(mean), 1),
            "max_ms": round(float(maximum), 1),
            "rows": int(nrows),
            "query": one_line(query, max_chars),
        }
        for queryid, calls, total, mean, maximum, nrows, query in rows
    ]


def statements_since(
    rows: list[tuple[Any, ...]], since: dict[str, Any], limit: int, max_chars: int
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """(queryid, calls, total, max, rows, query) rows, one per queryid, against an earlier
    snapshot -> (the ``limit`` statements with the highest mean time since the snapshot, the
    snapshot of now). A statement the snapshot lacks, or whose calls went down (statistics
    reset), counts from zero; one not called since is left out."""
    snapshot: dict[str, list[float]] = {}
    ranked = []
    for queryid, calls, total, maximum, nrows, query in rows:
        calls, total, nrows = int(calls), float(total), int(nrows)
        snapshot[str(queryid)] = [calls, round(total, 3), nrows]
        before = since.get(str(queryid))
        if isinstance(before, list | tuple) and len(before) >= 3 and calls >= int(before[0]):
            calls, total, nrows = (
                calls - int(before[0]),
                total - float(before[1]),
                nrows - int(before[2]),
            )
        if calls <= 0:
            continue
        ranked.append((queryid, calls, total, total / calls, maximum, nrows, query))
    ranked.sort(key=lambda row: (row[3], row[2]), reverse=True)
    return parse_statement_rows(ranked[:limit], max_chars), snapshot


def check_statements(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    from psycopg import errors, sql

    cur.execute(
        "SELECT n.nspname, current_database() FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'"
    )
    row = cur.fetchone()
    unavailable = {"statements_available": False, "slowest_statements": []}
    if row is None:
        cur.execute("SELECT current_database()")
        return CheckOutcome(
            facts=unavailable,
            notes=[
                f"statements: pg_stat_statements is not installed in database "
                f"{cur.fetchone()[0]} (skipped; it needs shared_preload_libraries and "
                "CREATE EXTENSION pg_stat_statements)"
            ],
        )
    schema, database = row
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
        (sql.Identifier(schema, "pg_stat_statements").as_string(cur),),
    )
    columns = statement_columns({r[0] for r in cur.fetchall()})
    if columns is None:
        return CheckOutcome(
            facts=unavailable,
            notes=["statements: this pg_stat_statements version has no timing columns (skipped)"],
        )
    since = params.get("statements_since")
    query = sql.SQL(
        STATEMENTS_SINCE_SQL
        if since is not None
        else "SELECT s.queryid, s.calls, s.{total}, s.{mean}, s.{maximum}, s.rows, s.query "
        "FROM {view} s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = current_database() AND s.query IS NOT NULL "
        "ORDER BY s.{mean} DESC LIMIT %s"
    ).format(
        total=sql.Identifier(columns["total_ms"]),
        mean=sql.Identifier(columns["mean_ms"]),
        maximum=sql.Identifier(columns["max_ms"]),
        view=sql.Identifier(schema, "pg_stat_statements"),
    )
    try:
        with cur.connection.transaction():  # a savepoint: the view may refuse to be read
            cur.execute(query, () if since is not None else (params["statements_limit"],))
            rows = cur.fetchall()
    except errors.ObjectNotInPrerequisiteState:
        return CheckOutcome(
            facts=unavailable,
            notes=[
                f"statements: pg_stat_statements is installed in database {database} but not "
                "loaded (add it to shared_preload_libraries and restart; skipped)"
            ],
        )
    if since is not None:
        slowest, snapshot = statements_since(
            rows, since, params["statements_limit"], params["query_max_chars"]
        )
        return CheckOutcome(
            facts={
                "statements_available": True,
                "slowest_statements": slowest,
                "statements_snapshot": snapshot,
            }
        )
    return CheckOutcome(
        facts={
            "statements_available": True,
            "slowest_statements": parse_statement_rows(rows, params["query_max_chars"]),
        }
    )


# --- cache hit ratio ------------------------------------------------------


def cache_hit_outcome(
    hit: int, read: int, warn_percent: float, min_blocks: int, database: str
) -> CheckOutcome:
    total = hit + read
    ratio = round(hit * 100.0 / total, 1) if total > 0 else None
    outcome = CheckOutcome(
        facts={"cache_hit_percent": ratio, "cache_blocks_hit": hit, "cache_blocks_read": read}
    )
    if total < min_blocks:
        outcome.notes.append(
            f"cache_hit: only {total} blocks read in database {database} since the statistics "
            f"were reset (< {min_blocks}); the ratio is not judged"
        )
    elif ratio is not None and ratio < warn_percent:
        outcome.warnings.append(
            f"cache hit ratio {ratio}% in database {database}, below {warn_percent:g}% "
            f"({read} of {total} blocks read from disk)"
        )
    return outcome


def check_cache_hit(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    cur.execute(
        "SELECT datname, coalesce(blks_hit, 0), coalesce(blks_read, 0) FROM pg_stat_database "
        "WHERE datname = current_database()"
    )
    name, hit, read = cur.fetchone()
    return cache_hit_outcome(
        int(hit),
        int(read),
        float(params["cache_hit_warn_percent"]),
        int(params["cache_hit_min_blocks"]),
        name,
    )


# --- replication ----------------------------------------------------------

REPLICAS_SQL = """
SELECT application_name, client_addr::text, state, sync_state,
       EXTRACT(EPOCH FROM write_lag), EXTRACT(EPOCH FROM flush_lag),
       EXTRACT(EPOCH FROM replay_lag),
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)
FROM pg_stat_replication
ORDER BY application_name, client_addr
"""

SLOTS_SQL = """
SELECT slot_name, slot_type, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)
FROM pg_replication_slots
WHERE NOT active
ORDER BY slot_name
"""

STANDBY_SQL = """
SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()),
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
"""


def replication_outcome(
    role: str,
    replicas: list[dict[str, Any]],
    slots: list[dict[str, Any]],
    standby_lag: tuple[float | None, float | None] | None,
    warn_s: float,
    warn_mb: float,
) -> CheckOutcome:
    warn_bytes = warn_mb * 1024 * 1024
    facts: dict[str, Any] = {
        "replication_role": role,
        "replicas": replicas,
        "replication_slots": slots,
    }
    outcome = CheckOutcome(facts=facts)
    if role == "standby":
        lag_s, behind = standby_lag or (None, None)
        facts["standby_replay_lag_s"] = seconds(lag_s)
        facts["standby_replay_behind_bytes"] = int(behind) if behind is not None else None
        facts["replication_note"] = "this server is a standby"
        if behind and lag_s is not None and lag_s >= warn_s:
            outcome.warnings.append(
                f"standby replay lag {lag_s:.0f} s ({int(behind)} bytes received, not replayed), "
                f"warn at {warn_s:g} s"
            )
        return outcome
    if not replicas:
        facts["replication_note"] = "no replicas"
    else:
        facts["replication_note"] = f"{len(replicas)} replicas"
    for rep in replicas:
        lag_s, lag_b = rep.get("replay_lag_s"), rep.get("lag_bytes")
        if (lag_s is not None and lag_s >= warn_s) or (lag_b is not None and lag_b >= warn_bytes):
            shown_s = "?" if lag_s is None else f"{lag_s:g}"
            shown_b = "?" if lag_b is None else str(lag_b)
            outcome.warnings.append(
                f"replica {rep['name'] or rep['client']} lags {shown_s} s, {shown_b} bytes "
                f"(warn at {warn_s:g} s or {warn_mb:g} MiB)"
            )
        if rep.get("state") not in (None, "streaming"):
            outcome.warnings.append(
                f"replica {rep['name'] or rep['client']} is {rep['state']}, not streaming"
            )
    for slot in slots:
        outcome.warnings.append(
            f"inactive replication slot {slot['slot']} ({slot['type']}) retains "
            f"{slot['retained_bytes'] if slot['retained_bytes'] is not None else '?'} bytes of WAL"
        )
    return outcome


def check_replication(cur: Any, params: dict[str, Any]) -> CheckOutcome:
    cur.execute("SELECT pg_is_in_recovery()")
    warn_s, warn_mb = (
        float(params["replication_lag_warn_s"]),
        float(params["replication_lag_warn_mb"]),
    )
    if cur.fetchone()[0]:
        cur.execute(STANDBY_SQL)
        lag_s, behind = cur.fetchone()
        return replication_outcome(
            "standby",
            [],
            [],
            (
                float(lag_s) if lag_s is not None else None,
                float(behind) if behind is not None else None,
            ),
            warn_s,
            warn_mb,
        )
    cur.execute(REPLICAS_SQL)
    replicas = [
        {
            "name": name,
            "client": client,
            "state": state,
            "sync_state": sync,
            "write_lag_s": seconds(write),
            "flush_lag_s": seconds(flush),
            "replay_lag_s": seconds(replay),
            "lag_bytes": int(lag) if lag is not None else None,
        }
        for name, client, state, sync, write, flush, replay, lag in cur.fetchall()
    ]
    cur.execute(SLOTS_SQL)
    slots = [
        {"slot": slot, "type": kind, "retained_bytes": int(kept) if kept is not None else None}
        for slot, kind, kept in cur.fetchall()
    ]
    return replication_outcome("primary", replicas, slots, None, warn_s, warn_mb)


# --- the readable report --------------------------------------------------


def _lock_line(session: dict[str, Any], indent: str) -> str:
    waits = f"waits {session['wait_s']:g} s" if session.get("wait_s") is not None else "waits"
    return (
        f"{indent}pid {session['pid']} {waits} ({session.get('wait_event') or 'lock'}) "
        f"behind {', '.join(str(p) for p in session['blocked_by'])}: {session.get('query')}"
    )


def report_lines(result: dict[str, Any]) -> list[str]:
    """The readable summary of a pg_health result, one line per finding."""
    lines = [f"Database health: {result['verdict'].upper()}"]
    if not result.get("connected"):
        lines.append(f"cannot connect: {result.get('error')}")
        return lines
    if "server_version" in result:
        lines.append(f"PostgreSQL {result['server_version']}")
    if "connections_used" in result:
        lines.append(
            f"connections {result['connections_used']}/{result['max_connections']} "
            f"({result['connections_percent']}%)"
        )
    if "database_size_pretty" in result:
        lines.append(
            f"database {result.get('database_name')} size {result['database_size_pretty']}"
        )
    if "long_queries" in result:
        queries = result["long_queries"]
        lines.append(f"long-running sessions: {len(queries)}")
        for q in queries:
            action = f" [{q['action']}]" if q.get("action") else ""
            lines.append(
                f"  pid {q['pid']} {q['state']} {q['duration_s']:g} s "
                f"({q.get('user')}@{q.get('database')}, {q.get('application') or '-'}){action}: "
                f"{q.get('query')}"
            )
    if "lock_chains" in result:
        chains = result["lock_chains"]
        lines.append(f"lock waits: {result.get('lock_waits', 0)} in {len(chains)} chains")
        for c in chains:
            root = c["root"]
            xact = f", transaction {root['xact_s']:g} s" if root.get("xact_s") is not None else ""
            lines.append(
                f"  pid {root['pid']} ({root.get('state')}{xact}) blocks {len(c['blocked'])}: "
                f"{root.get('query')}"
            )
            lines.extend(_lock_line(b, "    " + "  " * (b["depth"] - 1)) for b in c["blocked"])
    if "slowest_statements" in result:
        if result.get("statements_available"):
            lines.append(f"slowest statements (mean time): {len(result['slowest_statements'])}")
            lines.extend(
                f"  {s['mean_ms']:g} ms mean, {s['calls']} calls, {s['total_ms']:g} ms total: "
                f"{s['query']}"
                for s in result["slowest_statements"]
            )
        else:
            lines.append("slowest statements: pg_stat_statements not available (see notes)")
    if "cache_hit_percent" in result:
        ratio = result["cache_hit_percent"]
        lines.append(
            "cache hit ratio: "
            + (f"{ratio}%" if ratio is not None else "no block read yet")
            + f" ({result['cache_blocks_read']} blocks read from disk)"
        )
    if "replication_note" in result:
        lines.append(f"replication: {result['replication_note']}")
        for rep in result.get("replicas") or []:
            lines.append(
                f"  {rep['name'] or rep['client']} {rep['state']} {rep['sync_state']}: replay lag "
                f"{rep['replay_lag_s']} s, {rep['lag_bytes']} bytes"
            )
    lines.extend(f"note: {note}" for note in result.get("notes") or [])
    lines.extend(f"problem: {problem}" for problem in result.get("problems") or [])
    return lines


CHECKS: dict[str, Callable[[Any, dict[str, Any]], CheckOutcome]] = {
    "version": check_version,
    "connections": check_connections,
    "size": check_size,
    "long_queries": check_long_queries,
    "locks": check_locks,
    "statements": check_statements,
    "cache_hit": check_cache_hit,
    "replication": check_replication,
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        checks={
            "type": "list",
            "elements": "str",
            "choices": list(CHECKS),
            "default": list(DEFAULT_CHECKS),
        },
        connections_warn_percent={"type": "float", "default": 80.0},
        long_query_threshold_s={"type": "float", "default": 60.0},
        long_query_action={
            "type": "str",
            "choices": ["report", "cancel", "terminate"],
            "default": "report",
        },
        long_query_action_after_s={"type": "float"},
        query_max_chars={"type": "int", "default": 200},
        lock_wait_warn_s={"type": "float", "default": 5.0},
        statements_limit={"type": "int", "default": 5},
        statements_since={"type": "dict"},
        cache_hit_warn_percent={"type": "float", "default": 95.0},
        cache_hit_min_blocks={"type": "int", "default": 10000},
        replication_lag_warn_s={"type": "float", "default": 30.0},
        replication_lag_warn_mb={"type": "float", "default": 64.0},
        retries={"type": "int", "default": 0},
        retry_delay_s={"type": "float", "default": 1.0},
        fail_on_problem={"type": "bool", "default": False},
    )


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
        if outcome.notes:
            facts["notes"] = [*facts.get("notes", []), *outcome.notes]
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
        "notes": [],
        **facts,
        "verdict": verdict,
        "ok": verdict != "fail",
        "problems": [*failures, *warnings],
    }
    result["changed"] = any(
        q.get("action") in ("cancelled", "terminated") for q in result.get("long_queries") or []
    )
    result["msg"] = summarize(result)
    result["report_lines"] = report_lines(result)
    return result


def main() -> None:
    module = pg_module("pg_health", argument_spec(), validate_params)
    params = module.params
    checks = list(dict.fromkeys(params["checks"]))  # keep order, drop repeats
    params = {**params, "checks": checks, "_check_mode": module.check_mode}
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
