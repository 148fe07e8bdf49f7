"""pg_maintenance and playbooks/db_maintenance.yml against the lab's PostgreSQL.

Every test works in a fresh database of its own, never in database ``app``. The "dirty" states
are made for real: rows deleted with autovacuum off for that table (dead tuples), an index left
mostly empty (bloat), a REINDEX CONCURRENTLY that timed out (an invalid *_ccnew leftover), a
CREATE UNIQUE INDEX CONCURRENTLY that failed (an invalid index that is not a leftover).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsbook.lab import PostgresCluster
from tests.integration.stats_helper import run_with_stats
from tests.loaders import load_library

pytestmark = pytest.mark.integration

pm = load_library("pg_maintenance")


@pytest.fixture
def db(pg: PostgresCluster) -> Iterator[tuple[str, str]]:
    """(name, dsn) of a fresh, empty database; dropped afterwards."""
    name = f"mnt_{uuid.uuid4().hex[:10]}"
    dsn = pg.create_database(name)
    yield name, dsn
    pg.drop_database(name)


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def query(dsn: str, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


def wait_for_stats(dsn: str, table: str, timeout: float = 15.0, **at_least: int) -> None:
    """Wait until the cumulative statistics show the table's counters (pg_stat_user_tables).

    A backend flushes its counters shortly after its transactions, not at once: a VACUUM or
    ANALYZE that runs before the flush would see its counts arrive afterwards (the table
    would look dirty again). The setups wait for the flush before they clean up.
    """
    columns = ", ".join(at_least)
    deadline = time.monotonic() + timeout
    while True:
        rows = query(dsn, f"SELECT {columns} FROM pg_stat_user_tables WHERE relname = %s", (table,))
        if rows and all(
            value >= want for value, want in zip(rows[0], at_least.values(), strict=True)
        ):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{table}: statistics {rows} never reached {at_least}")
        time.sleep(0.1)


def make_dead_and_clean(dsn: str) -> None:
    execute(
        dsn,
        "CREATE TABLE events (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false)",
        "INSERT INTO events SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
        "CREATE TABLE settings (id int PRIMARY KEY, value text)",
        "INSERT INTO settings SELECT g, 'x' FROM generate_series(1, 2000) g",
    )
    wait_for_stats(dsn, "events", n_tup_ins=20_000)
    wait_for_stats(dsn, "settings", n_tup_ins=2_000)
    execute(dsn, "VACUUM ANALYZE events", "VACUUM ANALYZE settings")
    execute(dsn, "DELETE FROM events WHERE id % 10 <> 0")  # 18000 dead tuples, 2000 live
    wait_for_stats(dsn, "events", n_tup_del=18_000, n_dead_tup=18_000)


def make_bloated_index_and_leftovers(dsn: str) -> None:
    execute(
        dsn,
        "CREATE TABLE metrics (id int PRIMARY KEY, v int, tag text)"
        " WITH (autovacuum_enabled = false)",
        "INSERT INTO metrics SELECT g, g, 't' || (g % 7) FROM generate_series(1, 100000) g",
        "CREATE INDEX metrics_v_idx ON metrics (v)",
        "DELETE FROM metrics WHERE id % 10 <> 0",
    )
    wait_for_stats(dsn, "metrics", n_tup_ins=100_000, n_tup_del=90_000)
    execute(dsn, "VACUUM ANALYZE metrics")  # the table is clean now; its indexes keep their pages
    # A REINDEX CONCURRENTLY that fails - here on statement_timeout while it waits for a
    # writer's open transaction - leaves an invalid metrics_v_idx_ccnew behind.
    holder = psycopg.connect(dsn)
    try:
        holder.execute("UPDATE metrics SET v = v WHERE id = 10")
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            pytest.raises(psycopg.errors.QueryCanceled),
        ):
            conn.execute("SET statement_timeout = '1s'")
            conn.execute("REINDEX INDEX CONCURRENTLY metrics_v_idx")
    finally:
        holder.rollback()
        holder.close()
    # An invalid index that is no reindex leftover: a unique index over duplicate tags.
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation),
    ):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY metrics_tag_key ON metrics (tag)")
    assert invalid_indexes(dsn) == ["metrics_tag_key", "metrics_v_idx_ccnew"]


def invalid_indexes(dsn: str) -> list[str]:
    return [
        row[0]
        for row in query(
            dsn,
            "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " WHERE NOT x.indisvalid ORDER BY 1",
        )
    ]


SETTINGS_TIMES = (
    "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = 'settings'"
)


def actions_by_object(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["object"]: a for a in report["actions"]}


# ----------------------------------------------------------------- through the playbook


def test_vacuums_the_table_with_dead_tuples_skips_the_clean_one_and_is_idempotent(
    db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    name, dsn = db
    make_dead_and_clean(dsn)
    settings_times = query(dsn, SETTINGS_TIMES)
    inventory = make_inventory(app_hosts=[], database_url=dsn)

    plan = run_with_stats(run_playbook, tmp_path, "db_maintenance", inventory, check=True)
    assert plan.rc == 0, plan.output
    planned = actions_by_object(plan.stats["db_maintenance"])
    assert set(planned) == {"public.events"}
    assert planned["public.events"]["status"] == "planned"
    assert planned["public.events"]["action"] == "VACUUM (ANALYZE)"
    dead = query(dsn, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'events'")
    assert dead[0][0] >= 18_000  # check mode ran nothing

    run = run_with_stats(run_playbook, tmp_path, "db_maintenance", inventory)
    assert run.rc == 0, run.output
    report = run.stats["db_maintenance"]
    assert report["database"] == name and report["ok"] is True
    done = actions_by_object(report)
    assert set(done) == {"public.events"}  # the clean table, and the small indexes, untouched
    events = done["public.events"]
    assert events["status"] == "done" and events["action"] == "VACUUM (ANALYZE)"
    assert events["dead_tuples_before"] >= 18_000 and events["dead_tuples_after"] == 0
    assert events["reasons"][0].startswith("n_dead_tup 18000 >= 1000 and 900.0% of n_live_tup 2000")
    assert events["reasons"][1].startswith("n_mod_since_analyze 18000 >= 1000")
    assert events["size_before"] > 0 and events["size_after"] is not None
    assert "public.settings" in report["clean_tables"]
    assert "VACUUM (ANALYZE) public.events: done in" in report["summary"]
    assert run.hosts["localhost"]["changed"] == 1
    stats = query(
        dsn,
        "SELECT n_dead_tup, n_mod_since_analyze, last_vacuum IS NOT NULL"
        " FROM pg_stat_user_tables WHERE relname = 'events'",
    )
    assert stats[0] == (0, 0, True)
    assert query(dsn, SETTINGS_TIMES) == settings_times  # the clean table was not touched


def test_second_run_right_after_finds_nothing_to_do(
    db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    _name, dsn = db
    make_dead_and_clean(dsn)
    inventory = make_inventory(app_hosts=[], database_url=dsn)
    first = run_with_stats(run_playbook, tmp_path, "db_maintenance", inventory)
    assert first.rc == 0 and first.stats["db_maintenance"]["actions"], first.output
    second = run_with_stats(run_playbook, tmp_path, "db_maintenance", inventory)
    assert second.rc == 0, second.output
    report = second.stats["db_maintenance"]
    assert report["actions"] == []
    assert "nothing to do" in report["summary"]
    assert second.hosts["localhost"]["changed"] == 0


def test_reindexes_the_bloated_index_and_drops_the_ccnew_leftover(
    db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    _name, dsn = db
    make_bloated_index_and_leftovers(dsn)
    inventory = make_inventory(app_hosts=[], database_url=dsn)
    inputs = {"db_maintenance_reindex_min_index_mb": 0.5}
    run = run_with_stats(run_playbook, tmp_path, "db_maintenance", inventory, extravars=inputs)
    assert run.rc == 0, run.output
    report = run.stats["db_maintenance"]
    done = actions_by_object(report)
    leftover = done["public.metrics_v_idx_ccnew"]
    assert leftover["action"] == "DROP INDEX CONCURRENTLY" and leftover["status"] == "done"
    assert "failed REINDEX CONCURRENTLY" in leftover["reasons"][0]
    for index in ("public.metrics_v_idx", "public.metrics_pkey"):
        entry = done[index]
        assert entry["action"] == "REINDEX INDEX CONCURRENTLY" and entry["status"] == "done"
        assert entry["bloat_percent"] >= 80
        assert entry["size_after"] < entry["size_before"] / 4
        assert entry["reasons"][0].startswith("estimated bloat")
    assert "public.metrics" not in done  # vacuumed and analyzed by the setup: clean
    # the failed CREATE UNIQUE INDEX CONCURRENTLY is reported, not dropped
    assert report["invalid_indexes"] == ["public.metrics_tag_key"]
    assert [w for w in report["warnings"] if "metrics_tag_key" in w] == [
        "index public.metrics_tag_key on public.metrics is invalid (a failed CREATE INDEX "
        "CONCURRENTLY?); it is not a reindex leftover and was left alone"
    ]
    assert invalid_indexes(dsn) == ["metrics_tag_key"]
    # right after: nothing left to do
    again = run_with_stats(run_playbook, tmp_path, "db_maintenance", inventory, extravars=inputs)
    assert again.rc == 0 and again.stats["db_maintenance"]["actions"] == [], again.output


def test_vacuum_full_only_on_request_and_confirmed_in_production(
    db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    name, dsn = db
    make_dead_and_clean(dsn)
    execute(dsn, "VACUUM events")  # dead tuples gone, the pages stay: only VACUUM FULL shrinks
    size_before = query(dsn, "SELECT pg_total_relation_size('events')")[0][0]
    inventory = make_inventory(env="production", app_hosts=[], database_url=dsn)
    inputs: dict[str, Any] = {"vacuum_full": ["public.events"]}
    refused = run_playbook("db_maintenance", inventory, extravars=inputs)
    assert refused.returncode != 0
    assert "VACUUM FULL of public.events locks each table" in refused.stdout
    assert f"re-run with -e confirm={name}" in refused.stdout
    assert query(dsn, "SELECT pg_total_relation_size('events')")[0][0] == size_before

    run = run_with_stats(
        run_playbook, tmp_path, "db_maintenance", inventory, extravars={**inputs, "confirm": name}
    )
    assert run.rc == 0, run.output
    entry = actions_by_object(run.stats["db_maintenance"])["public.events"]
    assert entry["action"] == "VACUUM (FULL, ANALYZE)" and entry["status"] == "done"
    assert entry["size_after"] < entry["size_before"] / 3
    assert query(dsn, "SELECT pg_total_relation_size('events')")[0][0] == entry["size_after"]
    # without the explicit request, a VACUUM FULL never happens
    plain = run_with_stats(run_playbook, tmp_path, "db_maintenance", inventory)
    assert plain.rc == 0 and plain.stats["db_maintenance"]["actions"] == [], plain.output


# ----------------------------------------------------------------- the module's code, directly


def params(dsn: str, **overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in pm.argument_spec().items()}
    values.update(dsn=dsn, **overrides)
    return values


def maintain(dsn: str, check_mode: bool = False, **overrides: Any) -> Any:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        run = pm.Maintenance(conn, params(dsn, **overrides), check_mode)
        return run, run.run()
    finally:
        conn.close()


def test_a_table_locked_by_someone_else_is_skipped_with_a_warning(db: tuple[str, str]) -> None:
    _name, dsn = db
    make_dead_and_clean(dsn)
    holder = psycopg.connect(dsn)
    try:
        holder.execute("LOCK TABLE events IN SHARE UPDATE EXCLUSIVE MODE")
        run, result = maintain(dsn, lock_timeout="300ms")
    finally:
        holder.rollback()
        holder.close()
    entry = actions_by_object(result)["public.events"]
    assert entry["status"] == "skipped" and "lock timeout" in entry["error"]
    assert any("within lock_timeout" in w for w in run.warnings)
    assert result["changed"] is False


def test_pgstattuple_measures_bloat_when_asked(db: tuple[str, str]) -> None:
    _name, dsn = db
    make_bloated_index_and_leftovers(dsn)
    with pytest.raises(pm.MaintenanceRefused, match="needs the pgstattuple extension"):
        maintain(dsn, check_mode=True, bloat_method="pgstattuple")
    execute(dsn, "CREATE EXTENSION pgstattuple")
    _run, result = maintain(
        dsn, check_mode=True, bloat_method="pgstattuple", reindex_min_index_mb=0.5
    )
    planned = actions_by_object(result)
    assert planned["public.metrics_v_idx"]["status"] == "planned"
    assert planned["public.metrics_v_idx"]["bloat_percent"] >= 80
    assert invalid_indexes(dsn) == ["metrics_tag_key", "metrics_v_idx_ccnew"]  # plan only


def test_vacuum_full_of_a_missing_table_is_refused_before_anything(db: tuple[str, str]) -> None:
    _name, dsn = db
    make_dead_and_clean(dsn)
    with pytest.raises(pm.MaintenanceRefused, match=r"'public\.nope' is not a table"):
        maintain(dsn, vacuum_full_tables=["public.nope"])
    dead = query(dsn, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'events'")
    assert dead[0][0] >= 18_000
