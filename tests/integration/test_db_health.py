"""pg_health's triage checks and playbooks/db_health.yml against real PostgreSQL sessions.

Every test works in a fresh database of its own, never in database ``app``. The problems are
real: a second connection running pg_sleep (a long-running query), and two sessions where one
holds a row lock in an open transaction and the other waits for it (a lock chain).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsbook.lab import PostgresCluster
from tests.integration.stats_helper import run_with_stats
from tests.lab import DEFAULT_PG_SETTINGS
from tests.loaders import load_library

pytestmark = pytest.mark.integration

pgh = load_library("pg_health")


@pytest.fixture
def db(pg: PostgresCluster) -> Iterator[tuple[str, str]]:
    """(name, dsn) of a fresh database with a one-row table ``accounts``; dropped afterwards."""
    name = f"hlt_{uuid.uuid4().hex[:10]}"
    dsn = pg.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute("INSERT INTO accounts VALUES (1, 100)")
    yield name, dsn
    pg.drop_database(name)


class Session(threading.Thread):
    """One statement on its own connection, in a thread; remembers how it ended."""

    def __init__(self, dsn: str, statement: str, name: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True, application_name=name)
        self.pid = self.conn.info.backend_pid
        self.statement = statement
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        try:
            self.conn.execute(self.statement)  # type: ignore[arg-type]
        except BaseException as exc:  # AdminShutdown when terminated, QueryCanceled when cancelled
            self.error = exc
        finally:
            self.finished = True

    def stop(self, admin_dsn: str) -> None:
        if self.is_alive():
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_cancel_backend(%s)", (self.pid,))
        self.join(timeout=10)
        self.conn.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def activity(dsn: str, pid: int) -> tuple[Any, ...] | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT state, wait_event_type, query FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()


@pytest.fixture
def sessions(pg: PostgresCluster) -> Iterator[list[Session]]:
    started: list[Session] = []
    yield started
    for session in started:
        session.stop(pg.dsn)


def start_sleeper(dsn: str, started: list[Session], seconds: int = 120) -> Session:
    sleeper = Session(dsn, f"SELECT pg_sleep({seconds})", "opsbook-test-sleeper")
    started.append(sleeper)
    sleeper.start()
    wait_until(lambda: (activity(dsn, sleeper.pid) or ("",))[0] == "active")
    return sleeper


def start_lock_chain(dsn: str, started: list[Session]) -> tuple[psycopg.Connection[Any], Session]:
    holder = psycopg.connect(dsn, application_name="opsbook-test-holder")
    holder.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")  # open transaction
    waiter = Session(dsn, "UPDATE accounts SET balance = balance + 10 WHERE id = 1", "waiter")
    started.append(waiter)
    waiter.start()
    wait_until(lambda: (activity(dsn, waiter.pid) or ("", ""))[1] == "Lock")
    return holder, waiter


# ----------------------------------------------------------------- through the playbook


def test_detects_a_long_query_and_a_lock_chain(
    db: tuple[str, str],
    sessions: list[Session],
    make_inventory: Callable[..., Path],
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    name, dsn = db
    sleeper = start_sleeper(dsn, sessions)
    holder, waiter = start_lock_chain(dsn, sessions)
    try:
        time.sleep(1.2)
        run = run_with_stats(
            run_playbook,
            tmp_path,
            "db_health",
            make_inventory(app_hosts=[], database_url=dsn),
            extravars={"long_query_threshold_s": 1, "db_health_lock_wait_warn_s": 1},
        )
        holder_pid = holder.info.backend_pid
    finally:
        holder.rollback()
        holder.close()
    assert run.rc == 0, run.output  # warnings never fail the run
    health = run.stats["db_health"]
    assert health["verdict"] == "warn" and health["ok"] is True
    assert health["database_name"] == name

    long = {q["pid"]: q for q in health["long_queries"]}
    assert long[sleeper.pid]["query"] == "SELECT pg_sleep(120)"
    assert long[sleeper.pid]["state"] == "active" and long[sleeper.pid]["this_database"] is True
    assert long[sleeper.pid]["duration_s"] >= 1 and long[sleeper.pid]["action"] is None
    assert long[holder_pid]["state"] == "idle in transaction"

    assert health["lock_waits"] == 1
    (chain,) = health["lock_chains"]
    assert chain["root"]["pid"] == holder_pid
    assert chain["root"]["state"] == "idle in transaction"
    assert chain["root"]["query"] == "UPDATE accounts SET balance = balance - 10 WHERE id = 1"
    (blocked,) = chain["blocked"]
    assert blocked["pid"] == waiter.pid and blocked["blocked_by"] == [holder_pid]
    assert blocked["depth"] == 1 and blocked["wait_s"] >= 1
    assert blocked["wait_event"].startswith("Lock/")
    assert any(
        p.startswith(f"lock chain: pid {holder_pid} (idle in transaction) blocks 1")
        for p in health["problems"]
    )

    assert health["replication_note"] == "no replicas" and health["replicas"] == []
    assert health["connections_used"] >= 4 and health["max_connections"] == 20
    assert health["database_size_bytes"] > 0
    assert "cache_hit_percent" in health
    assert health["statements_available"] is False
    assert any("pg_stat_statements is not installed" in n for n in health["notes"])
    assert f"pid {holder_pid} (idle in transaction" in run.stdout
    assert f"pid {waiter.pid} waits" in run.stdout
    assert "Database health: WARN" in run.stdout

    # reported, never acted on: both are still there
    assert not sleeper.finished and activity(dsn, sleeper.pid) is not None
    assert run.hosts["localhost"]["changed"] == 0


def test_terminates_long_queries_only_when_asked_and_confirmed(
    db: tuple[str, str],
    pg: PostgresCluster,
    sessions: list[Session],
    make_inventory: Callable[..., Path],
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    name, dsn = db
    sleeper = start_sleeper(dsn, sessions)
    elsewhere = start_sleeper(pg.dsn, sessions)  # database postgres: never ours to end
    time.sleep(1.2)
    ask = {"long_query_threshold_s": 1, "long_query_action": "terminate"}

    plan = run_with_stats(
        run_playbook,
        tmp_path,
        "db_health",
        make_inventory(app_hosts=[], database_url=dsn),
        extravars=ask,
        check=True,
    )
    assert plan.rc == 0, plan.output
    planned = {q["pid"]: q for q in plan.stats["db_health"]["long_queries"]}
    assert planned[sleeper.pid]["action"] == "would terminate"
    assert (
        planned[elsewhere.pid]["action"] is None
        and planned[elsewhere.pid]["this_database"] is False
    )
    assert plan.stats["db_health"]["long_queries_acted"] == [sleeper.pid]
    assert not sleeper.finished

    production = make_inventory(env="production", app_hosts=[], database_url=dsn)
    refused = run_playbook("db_health", production, extravars=ask)
    assert refused.returncode != 0
    assert "long_query_action=terminate ends sessions on database" in refused.stdout
    assert f"re-run with -e confirm={name}" in refused.stdout
    assert not sleeper.finished

    run = run_with_stats(
        run_playbook, tmp_path, "db_health", production, extravars={**ask, "confirm": name}
    )
    assert run.rc == 0, run.output
    done = {q["pid"]: q for q in run.stats["db_health"]["long_queries"]}
    assert done[sleeper.pid]["action"] == "terminated"
    assert run.hosts["localhost"]["changed"] == 1
    sleeper.join(timeout=10)
    assert sleeper.finished and isinstance(sleeper.error, psycopg.errors.AdminShutdown)
    assert not elsewhere.finished  # another database's session is left alone
    assert f"pid {sleeper.pid} active" in run.stdout and "[terminated]" in run.stdout


# ----------------------------------------------------------------- pg_stat_statements


def run_checks(dsn: str, **overrides: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    params = {k: v.get("default") for k, v in pgh.argument_spec().items()}
    params.update(dsn=dsn, _check_mode=False, **overrides)
    conn = psycopg.connect(dsn)
    conn.read_only = True  # as the module connects
    try:
        return pgh.run_checks(conn, params)
    finally:
        conn.close()


def preloaded(cluster: PostgresCluster) -> bool:
    rows = cluster.execute("SHOW shared_preload_libraries")
    return "pg_stat_statements" in rows[0][0]


def test_statements_not_installed_then_installed_in_the_database(
    db: tuple[str, str], pg: PostgresCluster
) -> None:
    name, dsn = db
    facts, failures, warnings = run_checks(dsn, checks=["statements"])
    assert failures == [] and warnings == []
    assert facts["statements_available"] is False and facts["slowest_statements"] == []
    assert facts["notes"] == [
        f"statements: pg_stat_statements is not installed in database {name} (skipped; it "
        "needs shared_preload_libraries and CREATE EXTENSION pg_stat_statements)"
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    facts, failures, _ = run_checks(dsn, checks=["statements", "size"])
    assert failures == []
    assert facts["database_name"] == name  # the check after it still ran (savepoint)
    if preloaded(pg):
        assert facts["statements_available"] is True
    else:
        assert facts["statements_available"] is False
        assert facts["notes"] == [
            f"statements: pg_stat_statements is installed in database {name} but not loaded "
            "(add it to shared_preload_libraries and restart; skipped)"
        ]


@pytest.fixture(scope="module")
def statements_cluster(pg: PostgresCluster, lab_dir: Path) -> Iterator[PostgresCluster]:
    """A cluster with pg_stat_statements preloaded: the lab's own when it has it, else one
    started for this module (the lab's cluster does not preload it)."""
    if preloaded(pg):
        yield pg
        return
    cluster = PostgresCluster(
        lab_dir / f"pg-statements-{uuid.uuid4().hex[:6]}",
        settings={**DEFAULT_PG_SETTINGS, "shared_preload_libraries": "pg_stat_statements"},
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def test_the_slowest_statements_when_the_extension_is_loaded(
    statements_cluster: PostgresCluster,
) -> None:
    name = f"hlt_{uuid.uuid4().hex[:10]}"
    dsn = statements_cluster.create_database(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            conn.execute("SELECT pg_sleep(0.3)")
            for i in range(3):
                conn.execute("SELECT %s::int + 1", (i,))
        facts, failures, _ = run_checks(dsn, checks=["statements"], statements_limit=2)
        assert failures == []
        assert facts["statements_available"] is True and "notes" not in facts
        slowest = facts["slowest_statements"]
        assert len(slowest) == 2
        assert slowest[0]["query"] == "SELECT pg_sleep($1)"
        assert slowest[0]["calls"] == 1 and slowest[0]["mean_ms"] >= 300
        assert slowest[0]["mean_ms"] >= slowest[1]["mean_ms"]
        # since a snapshot (routine_checks.yml): only what ran after it, counted from it
        facts, _, _ = run_checks(dsn, checks=["statements"], statements_since={})
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(2):
                conn.execute("SELECT %s::int + 1", (i,))
        since = facts["statements_snapshot"]
        facts, failures, _ = run_checks(
            dsn, checks=["statements"], statements_since=since, statements_limit=50
        )
        assert failures == [] and set(since) <= set(facts["statements_snapshot"])
        ran = {s["query"]: s["calls"] for s in facts["slowest_statements"]}
        assert "SELECT pg_sleep($1)" not in ran and ran["SELECT $1::int + $2"] == 2
    finally:
        statements_cluster.drop_database(name)
