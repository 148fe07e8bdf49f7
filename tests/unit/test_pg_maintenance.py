"""library/pg_maintenance.py: threshold decisions, the B-tree bloat estimate, leftovers, the
report (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.loaders import load_library, module_documentation

pm = load_library("pg_maintenance")

THRESHOLDS = {
    "vacuum": True,
    "analyze": True,
    "vacuum_min_dead_tuples": 1000,
    "vacuum_dead_ratio": 0.2,
    "analyze_min_mods": 1000,
    "analyze_mod_ratio": 0.1,
    "analyze_max_age_h": 168.0,
    "reindex_bloat_percent": 30.0,
    "reindex_min_index_mb": 10.0,
    "bloat_method": "estimate",
}


def stats(**overrides: Any) -> Any:
    values = {
        "schema": "public",
        "name": "events",
        "live": 10_000,
        "dead": 0,
        "mods": 0,
        "analyzed": True,
        "analyze_age_h": 1.0,
        "size": 8192,
    }
    values.update(overrides)
    return pm.TableStats(**values)


# ----------------------------------------------------------------- tables


def test_a_clean_table_needs_nothing() -> None:
    assert pm.table_decision(stats(), THRESHOLDS) == (False, False, [])


def test_vacuum_needs_both_the_count_and_the_ratio() -> None:
    vacuum, analyze, reasons = pm.table_decision(stats(dead=90_000, live=10_000), THRESHOLDS)
    assert (vacuum, analyze) == (True, False)
    assert reasons == ["n_dead_tup 90000 >= 1000 and 900.0% of n_live_tup 10000 >= 20%"]
    # many dead tuples, but a small share of a big table: autovacuum's business, not ours
    assert pm.table_decision(stats(dead=5_000, live=1_000_000), THRESHOLDS)[0] is False
    # a big share, but too few to matter
    assert pm.table_decision(stats(dead=999, live=10), THRESHOLDS)[0] is False
    # exactly at both thresholds
    assert pm.table_decision(stats(dead=2_000, live=10_000), THRESHOLDS)[0] is True


def test_vacuum_of_a_table_with_no_live_rows() -> None:
    vacuum, _, reasons = pm.table_decision(stats(dead=5_000, live=0), THRESHOLDS)
    assert vacuum is True and reasons == ["n_dead_tup 5000 >= 1000 and n_live_tup 0 >= 20%"]


def test_analyze_on_modifications() -> None:
    _, analyze, reasons = pm.table_decision(stats(mods=2_000, live=10_000), THRESHOLDS)
    assert analyze is True
    assert reasons == ["n_mod_since_analyze 2000 >= 1000 and 20.0% of n_live_tup 10000 >= 10%"]
    assert pm.table_decision(stats(mods=999, live=100), THRESHOLDS)[1] is False
    assert pm.table_decision(stats(mods=5_000, live=1_000_000), THRESHOLDS)[1] is False


def test_analyze_when_never_analyzed_and_not_when_empty() -> None:
    _, analyze, reasons = pm.table_decision(
        stats(analyzed=False, analyze_age_h=None, live=5, mods=5), THRESHOLDS
    )
    assert analyze is True and reasons == ["never analyzed (5 live rows)"]
    assert pm.table_decision(
        stats(analyzed=False, analyze_age_h=None, live=0, mods=0), THRESHOLDS
    ) == (False, False, [])


def test_analyze_on_age_only_when_rows_changed_since() -> None:
    _, analyze, reasons = pm.table_decision(stats(analyze_age_h=200.0, mods=3), THRESHOLDS)
    assert analyze is True and reasons == [
        "last analyzed 200 h ago (>= 168 h) and 3 rows modified since"
    ]
    assert pm.table_decision(stats(analyze_age_h=200.0, mods=0), THRESHOLDS)[1] is False
    assert (
        pm.table_decision(
            stats(analyze_age_h=200.0, mods=3), {**THRESHOLDS, "analyze_max_age_h": 0}
        )[1]
        is False
    )


def test_switches_turn_decisions_off() -> None:
    off = {**THRESHOLDS, "vacuum": False, "analyze": False}
    assert pm.table_decision(stats(dead=90_000, mods=90_000), off) == (False, False, [])


@pytest.mark.parametrize(
    ("vacuum", "analyze", "action"),
    [
        (True, True, "VACUUM (ANALYZE)"),
        (True, False, "VACUUM"),
        (False, True, "ANALYZE"),
        (False, False, None),
    ],
)
def test_table_action(vacuum: bool, analyze: bool, action: str | None) -> None:
    assert pm.table_action(vacuum, analyze) == action


# ----------------------------------------------------------------- the bloat estimate


def test_estimate_of_a_bloated_int4_index() -> None:
    # int4, no nulls, 64-bit: tuple 8 (header) + 8 (4 bytes data aligned) = 16, +4 line pointer;
    # (8192 - 16 - 24) * 90% / 20 = 366 tuples a page at fillfactor 90
    est = pm.btree_bloat_estimate(
        relpages=276,
        reltuples=10_000,
        block_size=8192,
        fillfactor=90,
        maxalign=8,
        nullable=False,
        nulldatawidth=4,
    )
    assert est.est_pages == 1 + 25  # 407 a page at 100%
    assert est.est_pages_ff == 1 + 28
    assert est.bloat_pages == 276 - 29
    assert est.bloat_bytes == 247 * 8192
    assert est.bloat_percent == 89.5


def test_estimate_of_a_tight_index_is_no_bloat() -> None:
    est = pm.btree_bloat_estimate(29, 10_000, 8192, 90, 8, False, 4)
    assert est.bloat_pages == 0 and est.bloat_percent == 0.0


def test_estimate_alignment_nulls_and_fractional_widths() -> None:
    # text md5 (avg 33 bytes): data 33 -> 40 aligned; with nulls the header grows 2 -> 6 -> 8
    wide = pm.btree_bloat_estimate(1000, 50_000, 8192, 90, 8, False, 33)
    nullable = pm.btree_bloat_estimate(1000, 50_000, 8192, 90, 8, True, 33)
    # header 2 + pad 6 = 8 either way on 64-bit: nulls do not change the estimate there
    assert wide == nullable
    assert wide.est_pages_ff == 1 + -(-50_000 // int(8152 * 90 / (100 * (4 + 8 + 40))))
    # 4-byte alignment (32-bit builds): header 2 -> 4, data 33 -> 36
    small = pm.btree_bloat_estimate(1000, 50_000, 8192, 90, 4, False, 33)
    assert small.est_pages_ff == 1 + -(-50_000 // int(8152 * 90 / (100 * (4 + 4 + 36))))
    # a fractional width rounds like numeric::integer (12.5 -> 13: pad 3 -> 16 on 8)
    half = pm.btree_bloat_estimate(1000, 50_000, 8192, 100, 8, False, 12.5)
    assert half.est_pages == 1 + -(-50_000 // int(8152 / (4 + 8 + 12.5 + 8 - 5)))


def test_estimate_fillfactor_matters() -> None:
    ff90 = pm.btree_bloat_estimate(100, 10_000, 8192, 90, 8, False, 4)
    ff100 = pm.btree_bloat_estimate(100, 10_000, 8192, 100, 8, False, 4)
    assert ff100.est_pages_ff < ff90.est_pages_ff
    assert ff100.bloat_percent > ff90.bloat_percent


@pytest.mark.parametrize(
    ("version", "align"),
    [
        (
            "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc, "
            "64-bit",
            8,
        ),
        ("PostgreSQL 16.2 on aarch64-unknown-linux-gnu, compiled by gcc, 64-bit", 8),
        ("PostgreSQL 15.1 on i686-pc-linux-gnu, compiled by gcc, 32-bit", 4),
    ],
)
def test_maxalign_of(version: str, align: int) -> None:
    assert pm.maxalign_of(version) == align


def test_pgstattuple_bloat_percent() -> None:
    assert pm.pgstattuple_bloat_percent(90.0, 90) == 0.0
    assert pm.pgstattuple_bloat_percent(45.0, 90) == 50.0
    assert pm.pgstattuple_bloat_percent(95.0, 90) == 0.0
    assert pm.pgstattuple_bloat_percent(float("nan"), 90) is None
    assert pm.pgstattuple_bloat_percent(None, 90) is None


def test_index_decision() -> None:
    mib = 1024 * 1024
    assert pm.index_decision(29.9, 100 * mib, THRESHOLDS) == (False, "estimated bloat 29.9% < 30%")
    rebuild, words = pm.index_decision(50.0, 5 * mib, THRESHOLDS)
    assert rebuild is False and "but size 5120 kB < 10 MiB" in words
    rebuild, words = pm.index_decision(89.5, 20 * mib, THRESHOLDS)
    assert rebuild is True and words == "estimated bloat 89.5% >= 30% (size 20 MB, >= 10 MiB)"


@pytest.mark.parametrize(
    ("name", "valid", "leftover"),
    [
        ("events_v_idx_ccnew", False, True),
        ("events_v_idx_ccnew1", False, True),
        ("events_pkey_ccold", False, True),
        ("events_pkey_ccold12", False, True),
        ("events_v_idx_ccnew", True, False),
        ("events_v_idx", False, False),
        ("ccnew_events", False, False),
    ],
)
def test_is_reindex_leftover(name: str, valid: bool, leftover: bool) -> None:
    assert pm.is_reindex_leftover(name, valid) is leftover


def test_excluded_patterns() -> None:
    assert pm.excluded("public.audit_2024", ["public.audit_*"])
    assert not pm.excluded("public.events", ["public.audit_*", "billing.*"])
    assert pm.excluded("billing.invoices", ["billing.*"])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        (0, "0 bytes"),
        (8192, "8192 bytes"),
        (10240, "10 kB"),
        (2260992, "2208 kB"),
        (20 * 1024 * 1024, "20 MB"),
        (5 * 1024**4, "5120 GB"),
    ],
)
def test_pretty_bytes(value: int | None, text: str | None) -> None:
    assert pm.pretty_bytes(value) == text


# ----------------------------------------------------------------- the report


def entry(**overrides: Any) -> dict[str, Any]:
    values = {
        "object": "public.events",
        "kind": "table",
        "table": None,
        "action": "VACUUM (ANALYZE)",
        "sql": 'VACUUM (ANALYZE) "public"."events"',
        "reasons": ["n_dead_tup 90000 >= 1000 and 900.0% of n_live_tup 10000 >= 20%"],
        "status": "done",
        "error": None,
        "size_before": 4_513_792,
        "size_after": 4_513_792,
        "size_before_pretty": "4408 kB",
        "size_after_pretty": "4408 kB",
        "dead_tuples_before": 90_000,
        "dead_tuples_after": 0,
        "bloat_percent": None,
        "duration_s": 0.213,
    }
    values.update(overrides)
    return values


def test_action_line() -> None:
    assert pm.action_line(entry()) == (
        "VACUUM (ANALYZE) public.events: done in 0.21 s - n_dead_tup 90000 >= 1000 and 900.0% "
        "of n_live_tup 10000 >= 20%, size 4408 kB -> 4408 kB, dead tuples 90000 -> 0"
    )
    planned = entry(
        status="planned", size_after_pretty=None, dead_tuples_after=None, duration_s=None
    )
    assert pm.action_line(planned).endswith("size 4408 kB, dead tuples 90000")
    assert pm.action_line(entry(action="ANALYZE", reasons=["never analyzed (5 live rows)"])) == (
        "ANALYZE public.events: done in 0.21 s - never analyzed (5 live rows), "
        "size 4408 kB -> 4408 kB"
    )
    skipped = entry(
        status="skipped", error="lock not obtained: canceling statement due to lock timeout"
    )
    assert "skipped (lock not obtained: canceling statement due to lock timeout)" in pm.action_line(
        skipped
    )


def result(actions: list[dict[str, Any]], check_mode: bool = False) -> dict[str, Any]:
    out = {
        "database": "app",
        "check_mode": check_mode,
        "actions": actions,
        "checked": {"tables": 3, "indexes": 5},
        "clean_tables": ["public.users", "public.tasks"],
        "not_estimated": [{"object": "public.x_idx", "reason": "empty"}],
        "invalid_indexes": ["public.broken_idx"],
        "thresholds": {k: v for k, v in THRESHOLDS.items() if k in pm.THRESHOLD_KEYS},
    }
    out["msg"] = pm.summarize(out)
    return out


def test_summary_and_report_lines() -> None:
    reindex = entry(
        object="public.events_v_idx",
        kind="index",
        action="REINDEX INDEX CONCURRENTLY",
        reasons=["estimated bloat 89.5% >= 30%"],
        dead_tuples_before=None,
        dead_tuples_after=None,
    )
    done = result([entry(), reindex, entry(object="public.logs", status="failed", error="boom")])
    assert done["msg"] == (
        "maintenance of app: 2 done (VACUUM (ANALYZE) 1, REINDEX INDEX CONCURRENTLY 1), 1 FAILED, "
        "2 tables clean"
    )
    lines = pm.report_lines(done)
    assert lines[0] == "M" + done["msg"][1:]
    assert lines[1].startswith("Thresholds: VACUUM at n_dead_tup >= 1000 and >= 20% of n_live_tup")
    assert lines[2].startswith("VACUUM (ANALYZE) public.events: done")
    assert lines[-2].startswith("Invalid indexes left alone")
    assert lines[-1] == "Not estimated: public.x_idx (empty)"
    plan = result([dict(entry(), status="planned")], check_mode=True)
    assert plan["msg"] == "maintenance of app: 1 planned (VACUUM (ANALYZE) 1), 2 tables clean"
    assert pm.report_lines(plan)[0].startswith(
        "Plan (check mode, nothing was run): Maintenance of app"
    )
    nothing = result([])
    assert (
        nothing["msg"]
        == "maintenance of app: nothing to do (3 tables and 5 indexes below the thresholds)"
    )


# ----------------------------------------------------------------- inputs and docs


def params(**overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in pm.argument_spec().items()}
    values["dsn"] = "host=db"
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"vacuum_min_dead_tuples": -1}, "vacuum_min_dead_tuples must be >= 0"),
        ({"vacuum_dead_ratio": -0.1}, "vacuum_dead_ratio must be >= 0"),
        ({"reindex_bloat_percent": 0}, "reindex_bloat_percent must be > 0 and <= 100"),
        ({"reindex_bloat_percent": 101}, "reindex_bloat_percent must be > 0 and <= 100"),
        ({"lock_timeout": ""}, "lock_timeout must not be empty"),
        ({"vacuum_full_tables": [" "]}, "vacuum_full_tables: empty table name"),
    ],
)
def test_validate_params(overrides: dict[str, Any], fragment: str) -> None:
    assert any(fragment in e for e in pm.validate_params(params(**overrides)))
    assert pm.validate_params(params()) == []


def test_documentation_matches_the_argument_spec() -> None:
    doc = module_documentation(pm)
    assert set(doc["options"]) == set(pm.argument_spec())
    for name, spec in pm.argument_spec().items():
        assert doc["options"][name].get("default") == spec.get("default"), name
    assert doc["attributes"]["check_mode"]["support"] == "full"
    returned = yaml.safe_load(pm.RETURN)
    for key in (
        "actions",
        "checked",
        "clean_tables",
        "not_estimated",
        "invalid_indexes",
        "report_lines",
    ):
        assert key in returned, key
    yaml.safe_load(pm.EXAMPLES)


