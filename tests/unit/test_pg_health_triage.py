"""library/pg_health.py, the triage checks: long queries and the action rule, lock chains,
pg_stat_statements parsing, cache hit ratio, replication, the readable report (no server)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.loaders import load_library, module_documentation

pgh = load_library("pg_health")


def params(**overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in pgh.argument_spec().items()}
    values["dsn"] = "host=db"
    values.update(overrides)
    return values


# ----------------------------------------------------------------- long queries


def test_one_line() -> None:
    assert pgh.one_line("SELECT  *\n  FROM t\tWHERE a = 1", 200) == "SELECT * FROM t WHERE a = 1"
    assert pgh.one_line("x" * 50, 10) == "x" * 9 + "\u2026"
    assert pgh.one_line(None, 10) is None


def long_entry(
    pid: int, state: str = "active", duration: float = 90.0, same_db: bool = True
) -> dict[str, Any]:
    row = (
        pid,
        "app",
        "app" if same_db else "other",
        "psql",
        "10.0.0.5",
        state,
        duration,
        duration,
        None,
        "SELECT pg_sleep(600)",
        same_db,
    )
    return pgh.long_query_entry(row, 200)


def test_long_query_entry() -> None:
    assert long_entry(42) == {
        "pid": 42,
        "user": "app",
        "database": "app",
        "application": "psql",
        "client": "10.0.0.5",
        "state": "active",
        "duration_s": 90.0,
        "xact_s": 90.0,
        "wait_event": None,
        "query": "SELECT pg_sleep(600)",
        "this_database": True,
        "action": None,
    }


def test_action_candidates() -> None:
    entries = [
        long_entry(1),
        long_entry(2, same_db=False),
        long_entry(3, duration=10.0),
        long_entry(4, state="idle in transaction"),
    ]
    assert pgh.action_candidates(entries, "report", 0) == []
    assert [e["pid"] for e in pgh.action_candidates(entries, "terminate", 60)] == [1, 4]
    cancel = pgh.action_candidates(entries, "cancel", 0)
    assert [e["pid"] for e in cancel] == [1, 3]
    assert entries[3]["action"] == "not cancelled: an idle transaction has no query to cancel"
    assert entries[1]["action"] is None  # another database: never acted on


def test_long_queries_outcome_warns_and_lists_the_acted() -> None:
    entries = [long_entry(7), long_entry(8, duration=30.0)]
    entries[0]["action"] = "terminated"
    entries[1]["action"] = "not terminated: it had moved on (another query, or gone)"
    outcome = pgh.long_queries_outcome(entries, 5)
    assert outcome.facts["long_queries_acted"] == [7]
    assert outcome.warnings == [
        "2 sessions over 5 s (longest: pid 7, query running for 90 s: SELECT pg_sleep(600))"
    ]
    assert pgh.long_queries_outcome([], 5).warnings == []


def test_build_result_is_changed_only_when_a_session_was_ended() -> None:
    ended = [dict(long_entry(7), action="terminated")]
    assert pgh.build_result(True, 1, ["long_queries"], {"long_queries": ended}, [], ["w"])[
        "changed"
    ]
    planned = [dict(long_entry(7), action="would terminate")]
    assert not pgh.build_result(True, 1, ["long_queries"], {"long_queries": planned}, [], [])[
        "changed"
    ]


# ----------------------------------------------------------------- lock chains


def session(
    pid: int, blocked_by: list[int] | None = None, wait: float | None = 12.0, **kw: Any
) -> dict[str, Any]:
    row = (
        pid,
        blocked_by,
        "app",
        "app",
        "psql",
        kw.get("state", "active"),
        "Lock/transactionid",
        wait if blocked_by else None,
        30.0,
        kw.get("query", f"UPDATE t -- {pid}"),
    )
    return pgh.lock_session(row, 200)


def test_a_simple_chain() -> None:
    sessions = [session(100, None, state="idle in transaction"), session(101, [100])]
    chains = pgh.lock_chains(sessions)
    assert len(chains) == 1
    assert chains[0]["root"]["pid"] == 100 and chains[0]["root"]["state"] == "idle in transaction"
    assert [(b["pid"], b["depth"], b["blocked_by"]) for b in chains[0]["blocked"]] == [
        (101, 1, [100])
    ]
    assert chains[0]["max_wait_s"] == 12.0


def test_a_deep_chain_and_two_roots() -> None:
    sessions = [
        session(1, None),
        session(2, [1], wait=20.0),
        session(3, [2], wait=5.0),
        session(4, [2, 9], wait=7.0),
        session(9, None),
    ]
    chains = pgh.lock_chains(sessions)
    assert [c["root"]["pid"] for c in chains] == [1, 9]
    assert [(b["pid"], b["depth"]) for b in chains[0]["blocked"]] == [(2, 1), (3, 2), (4, 2)]
    assert [(b["pid"], b["depth"]) for b in chains[1]["blocked"]] == [(4, 1)]
    assert chains[0]["max_wait_s"] == 20.0


def test_a_cycle_and_a_prepared_transaction() -> None:
    cycle = pgh.lock_chains([session(5, [6]), session(6, [5])])
    assert len(cycle) == 1 and cycle[0]["root"]["pid"] == 5
    assert [b["pid"] for b in cycle[0]["blocked"]] == [6]
    prepared = pgh.lock_chains([session(0, None), session(8, [0])])
    assert prepared[0]["root"]["state"] == "prepared transaction"


def test_locks_outcome_warns_from_the_wait_threshold() -> None:
    sessions = [session(100, None, state="idle in transaction"), session(101, [100], wait=12.0)]
    outcome = pgh.locks_outcome(sessions, 5)
    assert outcome.facts["lock_waits"] == 1
    assert outcome.warnings == [
        "lock chain: pid 100 (idle in transaction) blocks 1 sessions, longest wait 12 s "
        "(warn at 5 s): UPDATE t -- 100"
    ]
    assert pgh.locks_outcome(sessions, 30).warnings == []


# ----------------------------------------------------------------- pg_stat_statements


def test_statement_columns_for_both_extension_versions() -> None:
    new = {
        "queryid",
        "calls",
        "total_exec_time",
        "mean_exec_time",
        "max_exec_time",
        "rows",
        "query",
    }
    old = {"queryid", "calls", "total_time", "mean_time", "max_time", "rows", "query"}
    assert pgh.statement_columns(new) == {
        "total_ms": "total_exec_time",
        "mean_ms": "mean_exec_time",
        "max_ms": "max_exec_time",
    }
    assert pgh.statement_columns(old) == {
        "total_ms": "total_time",
        "mean_ms": "mean_time",
        "max_ms": "max_time",
    }
    assert pgh.statement_columns({"queryid", "calls"}) is None


def test_parse_statement_rows() -> None:
    rows = [(-17, 10, 5200.04, 520.004, 900.06, 10, "SELECT *\n FROM tasks WHERE id = $1")]
    assert pgh.parse_statement_rows(rows, 20) == [
        {
            "queryid": -17,
            "calls": 10,
            "total_ms": 5200.0,
            "mean_ms": 520.0,
            "max_ms": 900.1,
            "rows": 10,
            "query": "SELECT * FROM tasks\u2026",
        }
    ]


# ----------------------------------------------------------------- cache hit, replication


def test_cache_hit_outcome() -> None:
    ok = pgh.cache_hit_outcome(99_000, 1_000, 95, 10_000, "app")
    assert ok.facts == {
        "cache_hit_percent": 99.0,
        "cache_blocks_hit": 99_000,
        "cache_blocks_read": 1_000,
    }
    assert ok.warnings == [] and ok.notes == []
    low = pgh.cache_hit_outcome(80_000, 20_000, 95, 10_000, "app")
    assert low.warnings == [
        "cache hit ratio 80.0% in database app, below 95% (20000 of 100000 blocks read from disk)"
    ]
    young = pgh.cache_hit_outcome(10, 90, 95, 10_000, "app")
    assert young.warnings == [] and "the ratio is not judged" in young.notes[0]
    assert pgh.cache_hit_outcome(0, 0, 95, 0, "app").facts["cache_hit_percent"] is None


def test_replication_outcome_without_replicas() -> None:
    outcome = pgh.replication_outcome("primary", [], [], None, 30, 64)
    assert outcome.facts["replication_note"] == "no replicas"
    assert outcome.facts["replicas"] == [] and outcome.warnings == []


def test_replication_outcome_lag_and_slots() -> None:
    replicas = [
        {
            "name": "r1",
            "client": "10.0.0.2",
            "state": "streaming",
            "sync_state": "async",
            "write_lag_s": 0.1,
            "flush_lag_s": 0.2,
            "replay_lag_s": 45.0,
            "lag_bytes": 1024,
        },
        {
            "name": "r2",
            "client": "10.0.0.3",
            "state": "catchup",
            "sync_state": "async",
            "write_lag_s": None,
            "flush_lag_s": None,
            "replay_lag_s": None,
            "lag_bytes": 100 * 1024 * 1024,
        },
    ]
    slots = [{"slot": "old", "type": "physical", "retained_bytes": 5_000_000}]
    outcome = pgh.replication_outcome("primary", replicas, slots, None, 30, 64)
    assert outcome.facts["replication_note"] == "2 replicas"
    assert outcome.warnings == [
        "replica r1 lags 45 s, 1024 bytes (warn at 30 s or 64 MiB)",
        "replica r2 lags ? s, 104857600 bytes (warn at 30 s or 64 MiB)",
        "replica r2 is catchup, not streaming",
        "inactive replication slot old (physical) retains 5000000 bytes of WAL",
    ]


def test_replication_outcome_on_a_standby() -> None:
    outcome = pgh.replication_outcome("standby", [], [], (120.0, 2048.0), 30, 64)
    assert outcome.facts["replication_note"] == "this server is a standby"
    assert outcome.facts["standby_replay_lag_s"] == 120.0
    assert outcome.warnings == [
        "standby replay lag 120 s (2048 bytes received, not replayed), warn at 30 s"
    ]
    idle = pgh.replication_outcome("standby", [], [], (120.0, 0.0), 30, 64)
    assert idle.warnings == []  # nothing waiting to be replayed: an idle primary, not a lag


# ----------------------------------------------------------------- the report and notes


def test_report_lines() -> None:
    facts = {
        "server_version": "15.8",
        "connections_used": 4,
        "max_connections": 20,
        "connections_percent": 20.0,
        "database_name": "app",
        "database_size_pretty": "8 MB",
        "long_queries": [dict(long_entry(7), action="terminated")],
        "lock_waits": 1,
        "lock_chains": pgh.lock_chains(
            [session(100, None, state="idle in transaction"), session(101, [100])]
        ),
        "statements_available": False,
        "slowest_statements": [],
        "cache_hit_percent": 99.5,
        "cache_blocks_read": 12,
        "replication_note": "no replicas",
        "replicas": [],
        "notes": ["statements: pg_stat_statements is not installed in database app"],
    }
    result = pgh.build_result(True, 1, ["connections"], facts, [], ["a warning"])
    assert result["report_lines"] == [
        "Database health: WARN",
        "PostgreSQL 15.8",
        "connections 4/20 (20.0%)",
        "database app size 8 MB",
        "long-running sessions: 1",
        "  pid 7 active 90 s (app@app, psql) [terminated]: SELECT pg_sleep(600)",
        "lock waits: 1 in 1 chains",
        "  pid 100 (idle in transaction, transaction 30 s) blocks 1: UPDATE t -- 100",
        "    pid 101 waits 12 s (Lock/transactionid) behind 100: UPDATE t -- 101",
        "slowest statements: pg_stat_statements not available (see notes)",
        "cache hit ratio: 99.5% (12 blocks read from disk)",
        "replication: no replicas",
        "note: statements: pg_stat_statements is not installed in database app",
        "problem: a warning",
    ]
    assert result["msg"] == (
        "connected to PostgreSQL 15.8, connections 4/20 (20.0%), size 8 MB, long queries 1, "
        "lock waits 1, cache hit 99.5%, no replicas: a warning"
    )


def test_report_lines_when_not_connected() -> None:
    result = pgh.build_result(
        False, 3, ["version"], {}, ["cannot connect: refused"], [], error="refused"
    )
    assert result["report_lines"] == ["Database health: FAIL", "cannot connect: refused"]
    assert result["notes"] == []


class Cursor:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, args: Any = None) -> None:
        pass

    def fetchone(self) -> Any:
        return self.rows.pop(0)


class Conn:
    def __init__(self, rows: list[Any]) -> None:
        self.c = Cursor(rows)

    def cursor(self) -> Cursor:
        return self.c

    def rollback(self) -> None:
        pass


def test_run_checks_collects_the_notes_of_every_check() -> None:
    # cache_hit: (database, hit, read); statements: no extension row, then current_database()
    conn = Conn([("app", 10, 0), None, ("app",)])
    facts, failures, warnings = pgh.run_checks(conn, params(checks=["cache_hit", "statements"]))
    assert failures == [] and warnings == []
    assert facts["statements_available"] is False
    assert len(facts["notes"]) == 2
    assert facts["notes"][0].startswith("cache_hit: only 10 blocks read in database app")
    assert facts["notes"][1].startswith(
        "statements: pg_stat_statements is not installed in database app"
    )


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"long_query_threshold_s": -1}, "long_query_threshold_s must be >= 0"),
        ({"lock_wait_warn_s": -1}, "lock_wait_warn_s must be >= 0"),
        ({"query_max_chars": 0}, "query_max_chars must be >= 1"),
        ({"statements_limit": 0}, "statements_limit must be >= 1"),
        ({"cache_hit_warn_percent": 101}, "cache_hit_warn_percent must be between 0 and 100"),
    ],
)
def test_validate_new_params(overrides: dict[str, Any], fragment: str) -> None:
    assert any(fragment in e for e in pgh.validate_params(params(**overrides)))


def test_new_options_are_documented_with_their_defaults() -> None:
    doc = module_documentation(pgh)
    for name, spec in pgh.argument_spec().items():
        assert doc["options"][name].get("default") == spec.get("default"), name
        assert doc["options"][name].get("choices") == spec.get("choices"), name
    returned = yaml.safe_load(pgh.RETURN)
    for key in (
        "long_queries",
        "lock_chains",
        "slowest_statements",
        "cache_hit_percent",
        "replicas",
        "replication_note",
        "notes",
        "report_lines",
    ):
        assert key in returned, key
