#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_maintenance: VACUUM / ANALYZE / REINDEX only where the statistics say it is needed."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_maintenance
short_description: VACUUM, ANALYZE and REINDEX CONCURRENTLY only the objects that need it
description:
  - Replaces the runbooks' weekly C(VACUUM VERBOSE; ANALYZE; REINDEX DATABASE) with work on
    the objects that need it, in the database the DSN in O(dsn) names, and reports per object
    what was done and why (the threshold crossed), with sizes before and after.
  - "B(VACUUM) a table when its dead tuples cross both thresholds of C(pg_stat_user_tables):
    C(n_dead_tup >= vacuum_min_dead_tuples) and C(n_dead_tup / n_live_tup >= vacuum_dead_ratio)
    (the shape of autovacuum's own threshold + scale factor)."
  - "B(ANALYZE) a table when its statistics are stale: C(n_mod_since_analyze >=
    analyze_min_mods) and C(n_mod_since_analyze / n_live_tup >= analyze_mod_ratio); or it was
    never analyzed (neither C(last_analyze) nor C(last_autoanalyze)) and holds rows; or its
    last (auto)analyze is older than O(analyze_max_age_h) hours and rows changed since. A
    table that needs both gets one C(VACUUM (ANALYZE))."
  - "B(REINDEX INDEX CONCURRENTLY) a B-tree index when its estimated bloat is at least
    O(reindex_bloat_percent) percent and the index is at least O(reindex_min_index_mb) MiB.
    The estimate (O(bloat_method=estimate), the default, reads only the catalog and
    C(pg_stats)) is the well-known one of ioguix/pgsql-bloat-estimation (C(btree_bloat.sql)):
    the pages the index would need for C(reltuples) tuples of the average width its columns
    have in C(pg_stats), with the page, tuple header and alignment overheads and the index's
    fillfactor, compared with its C(relpages). Indexes whose statistics are missing or
    unreliable (a column of type C(name)) are not estimated and are listed in RV(not_estimated).
    O(bloat_method=pgstattuple) measures instead with C(pgstatindex()) (extension
    C(pgstattuple); reads the whole index)."
  - "B(DROP INDEX CONCURRENTLY) the invalid leftovers of a failed C(REINDEX CONCURRENTLY):
    indexes named C(*_ccnew), C(*_ccnewN), C(*_ccold), C(*_ccoldN) with C(indisvalid = false),
    unless an index build is in progress on their table (C(pg_stat_progress_create_index)).
    Other invalid indexes are reported as warnings and left alone."
  - "B(VACUUM FULL) (an C(ACCESS EXCLUSIVE) lock for the whole rewrite) only for the tables
    listed in O(vacuum_full_tables); the opsbook role asks for a typed confirmation in
    production."
  - Order - leftovers dropped, requested C(VACUUM FULL), threshold C(VACUUM)/C(ANALYZE), then
    the index bloat is estimated again (with the fresh statistics) and indexes rebuilt.
  - "Check mode reports the plan only: what would be done and why, from the statistics as
    they are (a real run re-estimates index bloat after its own C(ANALYZE))."
  - Idempotent - right after a run the thresholds are no longer crossed and a second run
    finds nothing to do (except O(vacuum_full_tables), which runs whenever it is asked).
  - A statement that cannot get its lock within O(lock_timeout) is reported as skipped (a
    warning); any other error is reported on its object, the other objects are still done,
    and the task fails at the end. A failed C(REINDEX CONCURRENTLY) has its own invalid
    C(_ccnew) leftover dropped right away.
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
requirements:
  - PostgreSQL 12 or later (C(REINDEX CONCURRENTLY))
# psycopg and the connection options
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
options:
  schemas:
    description:
      - Only tables and indexes in these schemas. Empty - every schema but the system ones.
    type: list
    elements: str
    default: []
  exclude_tables:
    description:
      - Leave these tables (and their indexes) alone; shell patterns on C(schema.table), e.g.
        C(public.audit_*).
    type: list
    elements: str
    default: []
  vacuum:
    description:
      - Consider C(VACUUM) for tables over the dead-tuple thresholds.
    type: bool
    default: true
  analyze:
    description:
      - Consider C(ANALYZE) for tables with stale statistics.
    type: bool
    default: true
  reindex:
    description:
      - Consider C(REINDEX INDEX CONCURRENTLY) for bloated B-tree indexes.
    type: bool
    default: true
  drop_invalid_leftovers:
    description:
      - Drop the invalid C(*_ccnew) / C(*_ccold) leftovers of failed concurrent reindexes.
    type: bool
    default: true
  vacuum_min_dead_tuples:
    description:
      - C(VACUUM) needs at least this many dead tuples (C(n_dead_tup)).
    type: int
    default: 1000
  vacuum_dead_ratio:
    description:
      - C(VACUUM) needs C(n_dead_tup / n_live_tup) at least this (0.2 = dead tuples are 20% of
        the live ones).
    type: float
    default: 0.2
  analyze_min_mods:
    description:
      - C(ANALYZE) on modifications needs at least this many C(n_mod_since_analyze).
    type: int
    default: 1000
  analyze_mod_ratio:
    description:
      - C(ANALYZE) on modifications needs C(n_mod_since_analyze / n_live_tup) at least this.
    type: float
    default: 0.1
  analyze_max_age_h:
    description:
      - C(ANALYZE) a table whose last (auto)analyze is older than this many hours and that
        changed since (C(n_mod_since_analyze > 0)). 0 turns this rule off.
    type: float
    default: 168
  reindex_bloat_percent:
    description:
      - Rebuild an index whose bloat is at least this percentage of its size.
    type: float
    default: 30
  reindex_min_index_mb:
    description:
      - Never rebuild an index smaller than this many MiB (small indexes are cheap to scan and
        their estimates are coarse).
    type: float
    default: 10
  bloat_method:
    description:
      - C(estimate) - the catalog estimate (no extension, no index read).
      - C(pgstattuple) - C(pgstatindex()) of the C(pgstattuple) extension, which must be
        installed in the database; reads every index considered.
    type: str
    choices: [estimate, pgstattuple]
    default: estimate
  vacuum_full_tables:
    description:
      - Tables to C(VACUUM (FULL, ANALYZE)), as C(schema.table) or C(table) (resolved by the
        search path). Each must exist; the module fails before doing anything otherwise.
    type: list
    elements: str
    default: []
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) for the session, e.g. C(10s). A statement that cannot get
        its lock in time is skipped (reported), rather than queueing the application's
        queries behind it.
    type: str
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) for the session (C(0) - none).
    type: str
attributes:
  check_mode:
    support: full
    description: Reads the statistics and reports the plan (what would be done and why);
      runs nothing.
  diff_mode:
    support: none
    description: The report lists sizes before and after instead.
  platform:
    support: full
    platforms: posix
    description: Runs on the host that can reach the database (group C(dbadmin) in opsbook).
notes:
  - C(REINDEX CONCURRENTLY) and C(VACUUM FULL) need free disk space for a new copy of the
    index or table; the module does not check it.
  - Statistics are read from C(pg_stat_user_tables); after a statistics reset (or a crash)
    they start from zero and the module may find nothing to do.
  - The connecting role must own the tables (or be a superuser) to vacuum, analyze and
    reindex them.
seealso:
  - name: Routine vacuuming
    description: PostgreSQL documentation of VACUUM, ANALYZE and autovacuum's thresholds.
    link: https://www.postgresql.org/docs/current/routine-vacuuming.html
  - name: pgsql-bloat-estimation
    description: The B-tree bloat estimate this module implements.
    link: https://github.com/ioguix/pgsql-bloat-estimation
"""

EXAMPLES = r"""
- name: Weekly maintenance - only what the statistics call for
  pg_maintenance:
    dsn: "{{ database_url }}"
    lock_timeout: 10s
  no_log: true
  register: maintenance

- name: The plan only
  pg_maintenance:
    dsn: "{{ database_url }}"
  check_mode: true
  no_log: true
  register: plan

- name: Rewrite one table (ACCESS EXCLUSIVE lock) and rebuild indexes over 20% bloat
  pg_maintenance:
    dsn: "{{ database_url }}"
    vacuum_full_tables: [public.events]
    reindex_bloat_percent: 20
    reindex_min_index_mb: 1
  no_log: true
"""

RETURN = r"""
database:
  description: The database maintained.
  returned: always
  type: str
  sample: app
check_mode:
  description: Whether the module ran in check mode (plan only).
  returned: always
  type: bool
  sample: false
actions:
  description: One entry per object acted on (in check mode - planned) - C(object), C(kind)
    (table or index), C(table) (indexes), C(action) (C(VACUUM), C(ANALYZE),
    C(VACUUM (ANALYZE)), C(VACUUM (FULL, ANALYZE)), C(REINDEX INDEX CONCURRENTLY),
    C(DROP INDEX CONCURRENTLY)), C(sql), C(reasons) (the thresholds crossed, in words),
    C(status) (planned, done, skipped, failed), C(error), C(size_before) and C(size_after)
    in bytes (C(_pretty) variants), C(dead_tuples_before) / C(dead_tuples_after) (tables),
    C(bloat_percent) (indexes), C(duration_s).
  returned: always
  type: list
  elements: dict
  sample:
    - object: public.events
      kind: table
      action: VACUUM (ANALYZE)
      sql: VACUUM (ANALYZE) "public"."events"
      reasons: ["n_dead_tup 90000 >= 1000 and 900.0% of n_live_tup 10000 >= 20%"]
      status: done
      size_before: 4513792
      size_after: 4513792
      dead_tuples_before: 90000
      dead_tuples_after: 0
checked:
  description: How many tables and indexes were considered.
  returned: always
  type: dict
  sample: {tables: 12, indexes: 30}
clean_tables:
  description: The tables considered that crossed no threshold.
  returned: always
  type: list
  elements: str
  sample: [public.users]
not_estimated:
  description: B-tree indexes whose bloat could not be estimated, and why.
  returned: always
  type: list
  elements: dict
  sample:
    - {object: public.tasks_title_idx, reason: "no statistics for its columns (ANALYZE ...)"}
invalid_indexes:
  description: Invalid indexes that are not leftovers of a concurrent reindex (left alone).
  returned: always
  type: list
  elements: str
  sample: [public.orders_email_idx]
thresholds:
  description: The thresholds that applied.
  returned: always
  type: dict
  sample: {vacuum_min_dead_tuples: 1000, vacuum_dead_ratio: 0.2, analyze_min_mods: 1000,
           analyze_mod_ratio: 0.1, analyze_max_age_h: 168, reindex_bloat_percent: 30,
           reindex_min_index_mb: 10, bloat_method: estimate}
report_lines:
  description: A readable report, one line per object.
  returned: always
  type: list
  elements: str
  sample: ["VACUUM (ANALYZE) public.events: done in 0.21 s - n_dead_tup 90000 >= 1000 ..."]
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: >-
    maintenance of app: 2 done (VACUUM (ANALYZE) 1, REINDEX INDEX CONCURRENTLY 1), 10 tables clean
"""

import fnmatch
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    PgConnectError,
    close_quietly,
    connect_params,
    pg_connection_argument_spec,
    pg_module,
    safe_error,
    validate_connection_params,
)

MiB = 1024 * 1024
PAGE_HEADER = 24  # SizeOfPageHeaderData
BTREE_OPAQUE = 16  # sizeof(BTPageOpaqueData)
ITEM_ID = 4  # sizeof(ItemIdData)
LEFTOVER_RE = re.compile(r"_cc(new|old)\d*$")
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"

THRESHOLD_KEYS = (
    "vacuum_min_dead_tuples",
    "vacuum_dead_ratio",
    "analyze_min_mods",
    "analyze_mod_ratio",
    "analyze_max_age_h",
    "reindex_bloat_percent",
    "reindex_min_index_mb",
    "bloat_method",
)


# ---------------------------------------------------------------------------
# pure helpers: sizes, decisions, the bloat estimate


def pretty_bytes(value: int | None) -> str | None:
    """Bytes in the style of PostgreSQL's pg_size_pretty (bytes up to 10 kB, then kB, MB...)."""
    if value is None:
        return None
    units = ("bytes", "kB", "MB", "GB", "TB", "PB")
    size = float(value)
    unit = 0
    while abs(size) >= 10 * 1024 and unit < len(units) - 1:
        size /= 1024
        unit += 1
    return f"{round(size)} {units[unit]}"


def ratio_words(part: float, whole: float) -> str:
    if whole <= 0:
        return "n_live_tup 0"
    return f"{100.0 * part / whole:.1f}% of n_live_tup {int(whole)}"


@dataclass
class TableStats:
    schema: str
    name: str
    live: int
    dead: int
    mods: int
    analyzed: bool  # last_analyze or last_autoanalyze is set
    analyze_age_h: float | None
    size: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def table_decision(stats: TableStats, thresholds: dict[str, Any]) -> tuple[bool, bool, list[str]]:
    """(vacuum?, analyze?, reasons) for one table against the thresholds."""
    reasons: list[str] = []
    vacuum = False
    analyze = False
    if thresholds.get("vacuum", True):
        min_dead = thresholds["vacuum_min_dead_tuples"]
        ratio = thresholds["vacuum_dead_ratio"]
        live = max(stats.live, 0)
        if stats.dead >= min_dead and (live == 0 or stats.dead / live >= ratio):
            vacuum = True
            reasons.append(
                f"n_dead_tup {stats.dead} >= {min_dead} and "
                f"{ratio_words(stats.dead, live)} >= {ratio * 100:g}%"
            )
    if thresholds.get("analyze", True):
        min_mods = thresholds["analyze_min_mods"]
        ratio = thresholds["analyze_mod_ratio"]
        live = max(stats.live, 0)
        max_age = thresholds["analyze_max_age_h"]
        if not stats.analyzed and (stats.live > 0 or stats.mods > 0):
            analyze = True
            reasons.append(f"never analyzed ({stats.live} live rows)")
        elif stats.mods >= min_mods and (live == 0 or stats.mods / live >= ratio):
            analyze = True
            reasons.append(
                f"n_mod_since_analyze {stats.mods} >= {min_mods} and "
                f"{ratio_words(stats.mods, live)} >= {ratio * 100:g}%"
            )
        elif (
            max_age
            and stats.analyze_age_h is not None
            and stats.analyze_age_h >= max_age
            and stats.mods > 0
        ):
            analyze = True
            reasons.append(
                f"last analyzed {stats.analyze_age_h:.0f} h ago (>= {max_age:g} h) and "
                f"{stats.mods} rows modified since"
            )
    return vacuum, analyze, reasons


def table_action(vacuum: bool, analyze: bool) -> str | None:
    if vacuum and analyze:
        return "VACUUM (ANALYZE)"
    if vacuum:
        return "VACUUM"
    if analyze:
        return "ANALYZE"
    return None


def maxalign_of(version: str) -> int:
    """MAXALIGN as the estimate guesses it from version(): 8 on 64-bit builds, else 4."""
    return 8 if re.search(r"mingw32|64-bit|x86_64|ppc64|ia64|amd64|aarch64|arm64", version) else 4


def _pg_int(value: float) -> int:
    """numeric::integer as PostgreSQL casts it (rounds half away from zero)."""
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


@dataclass
class BloatEstimate:
    real_pages: int
    est_pages: int
    est_pages_ff: int
    bloat_pages: int
    bloat_bytes: int
    bloat_percent: float


def btree_bloat_estimate(
    relpages: int,
    reltuples: float,
    block_size: int,
    fillfactor: int,
    maxalign: int,
    nullable: bool,
    nulldatawidth: float,
) -> BloatEstimate:
    """The B-tree bloat estimate of ioguix/pgsql-bloat-estimation (btree/btree_bloat.sql).

    ``nulldatawidth`` is the sum over the index columns of ``(1 - null_frac) * avg_width``
    from pg_stats; ``nullable`` is whether any column has nulls (``max(null_frac) > 0``),
    which adds the null bitmap to the tuple header.
    """
    index_tuple_hdr = 2 if not nullable else 2 + (32 + 8 - 1) // 8
    hdr_pad = maxalign if index_tuple_hdr % maxalign == 0 else index_tuple_hdr % maxalign
    if nulldatawidth == 0:
        data_pad = 0
    else:
        rem = _pg_int(nulldatawidth) % maxalign
        data_pad = maxalign if rem == 0 else rem
    tuple_width = index_tuple_hdr + maxalign - hdr_pad + nulldatawidth + maxalign - data_pad
    usable = block_size - BTREE_OPAQUE - PAGE_HEADER
    per_page = math.floor(usable / (ITEM_ID + tuple_width))
    per_page_ff = math.floor(usable * fillfactor / (100 * (ITEM_ID + tuple_width)))
    est_pages = 1 + math.ceil(reltuples / per_page) if per_page > 0 else relpages
    est_pages_ff = 1 + math.ceil(reltuples / per_page_ff) if per_page_ff > 0 else relpages
    bloat_pages = max(0, relpages - est_pages_ff)
    percent = round(100.0 * bloat_pages / relpages, 1) if relpages > 0 else 0.0
    return BloatEstimate(
        relpages, est_pages, est_pages_ff, bloat_pages, bloat_pages * block_size, percent
    )


def pgstattuple_bloat_percent(avg_leaf_density: float | None, fillfactor: int) -> float | None:
    """Bloat from pgstatindex: the share of the leaf pages not used beyond the fillfactor."""
    if avg_leaf_density is None or math.isnan(avg_leaf_density):
        return None
    return round(max(0.0, 100.0 - 100.0 * avg_leaf_density / fillfactor), 1)


def index_decision(bloat_percent: float, size: int, thresholds: dict[str, Any]) -> tuple[bool, str]:
    """(reindex?, words) for an index's bloat against the thresholds."""
    min_bytes = thresholds["reindex_min_index_mb"] * MiB
    limit = thresholds["reindex_bloat_percent"]
    if bloat_percent < limit:
        return False, f"estimated bloat {bloat_percent:g}% < {limit:g}%"
    if size < min_bytes:
        return False, (
            f"estimated bloat {bloat_percent:g}% >= {limit:g}% but size {pretty_bytes(size)} "
            f"< {thresholds['reindex_min_index_mb']:g} MiB"
        )
    return True, (
        f"estimated bloat {bloat_percent:g}% >= {limit:g}% "
        f"(size {pretty_bytes(size)}, >= {thresholds['reindex_min_index_mb']:g} MiB)"
    )


def is_reindex_leftover(name: str, valid: bool) -> bool:
    """An invalid index named like REINDEX CONCURRENTLY's transient ones (_ccnew, _ccold)."""
    return not valid and bool(LEFTOVER_RE.search(name))


def excluded(qualified: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(qualified, pattern) for pattern in patterns)


# ---------------------------------------------------------------------------
# the report


def action_line(entry: dict[str, Any]) -> str:
    """``VACUUM (ANALYZE) public.t: done in 0.2 s - reasons; size 4 MB -> 4 MB, ...``."""
    status = entry["status"]
    head = f"{entry['action']} {entry['object']}: {status}"
    if status == "done" and entry.get("duration_s") is not None:
        head += f" in {entry['duration_s']:.2f} s"
    if entry.get("error"):
        head += f" ({entry['error']})"
    parts = ["; ".join(entry.get("reasons") or [])]
    size_before, size_after = entry.get("size_before_pretty"), entry.get("size_after_pretty")
    if size_before is not None:
        parts.append(
            f"size {size_before} -> {size_after}"
            if size_after is not None
            else f"size {size_before}"
        )
    if entry.get("dead_tuples_before") is not None and "VACUUM" in entry["action"]:
        after = entry.get("dead_tuples_after")
        parts.append(
            f"dead tuples {entry['dead_tuples_before']}"
            + (f" -> {after}" if after is not None else "")
        )
    return head + " - " + ", ".join(p for p in parts if p)


def summarize(result: dict[str, Any]) -> str:
    actions = result["actions"]
    db = result.get("database") or "?"
    verb = "planned" if result["check_mode"] else "done"
    counted: dict[str, int] = {}
    for entry in actions:
        if entry["status"] in ("done", "planned"):
            counted[entry["action"]] = counted.get(entry["action"], 0) + 1
    failed = sum(1 for e in actions if e["status"] == "failed")
    skipped = sum(1 for e in actions if e["status"] == "skipped")
    clean = len(result["clean_tables"])
    if not actions:
        return (
            f"maintenance of {db}: nothing to do ({result['checked']['tables']} tables and "
            f"{result['checked']['indexes']} indexes below the thresholds)"
        )
    what = ", ".join(f"{action} {count}" for action, count in counted.items())
    text = f"maintenance of {db}: {sum(counted.values())} {verb}"
    if what:
        text += f" ({what})"
    if skipped:
        text += f", {skipped} skipped"
    if failed:
        text += f", {failed} FAILED"
    return text + f", {clean} tables clean"


def report_lines(result: dict[str, Any]) -> list[str]:
    t = result["thresholds"]
    lines = [
        ("Plan (check mode, nothing was run): " if result["check_mode"] else "")
        + result["msg"][0].upper()
        + result["msg"][1:],
        (
            f"Thresholds: VACUUM at n_dead_tup >= {t['vacuum_min_dead_tuples']} and "
            f">= {t['vacuum_dead_ratio'] * 100:g}% of n_live_tup; ANALYZE at "
            f"n_mod_since_analyze >= {t['analyze_min_mods']} and >= "
            f"{t['analyze_mod_ratio'] * 100:g}% of n_live_tup"
            + (f" or {t['analyze_max_age_h']:g} h old" if t["analyze_max_age_h"] else "")
            + f"; REINDEX at {t['reindex_bloat_percent']:g}% {t['bloat_method']} bloat "
            f"(indexes >= {t['reindex_min_index_mb']:g} MiB)"
        ),
    ]
    lines.extend(action_line(entry) for entry in result["actions"])
    if result["invalid_indexes"]:
        lines.append(
            "Invalid indexes left alone (not reindex leftovers; drop or rebuild them by hand): "
            + ", ".join(result["invalid_indexes"])
        )
    if result["not_estimated"]:
        lines.append(
            "Not estimated: "
            + "; ".join(f"{e['object']} ({e['reason']})" for e in result["not_estimated"])
        )
    return lines


# ---------------------------------------------------------------------------
# reading the database


TABLES_SQL = """
SELECT s.schemaname, s.relname, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       (s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL) AS analyzed,
       EXTRACT(EPOCH FROM now() - greatest(s.last_analyze, s.last_autoanalyze)) / 3600.0,
       pg_table_size(s.relid)
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE c.relkind IN ('r', 'm')
  AND (cardinality(%(schemas)s::text[]) = 0 OR s.schemaname = ANY(%(schemas)s::text[]))
ORDER BY s.schemaname, s.relname
"""

TABLE_NOW_SQL = """
SELECT s.n_dead_tup, pg_table_size(s.relid)
FROM pg_stat_user_tables s WHERE s.schemaname = %s AND s.relname = %s
"""

# Inputs of the B-tree estimate, per valid index (the joins of ioguix's btree_bloat.sql;
# the arithmetic is btree_bloat_estimate(), so that it is unit-tested).
BTREE_INPUTS_SQL = """
SELECT n.nspname, t.relname, i.relname, i.relpages, i.reltuples,
       coalesce(substring(array_to_string(i.reloptions, ' ') from 'fillfactor=([0-9]+)')::int, 90),
       x.indnatts, count(s.attname), max(coalesce(s.null_frac, 0)),
       coalesce(sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024)), 0),
       bool_or(a.atttypid = 'pg_catalog.name'::regtype),
       pg_relation_size(i.oid),
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.oid AND k.contype = 'x')
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
JOIN pg_am am ON am.oid = i.relam AND am.amname = 'btree'
JOIN pg_attribute a ON a.attrelid = i.oid AND a.attnum > 0
LEFT JOIN pg_stats s ON s.schemaname = n.nspname
  AND ((s.tablename = t.relname AND s.attname = pg_get_indexdef(a.attrelid, a.attnum, true))
       OR (s.tablename = i.relname AND s.attname = a.attname))
WHERE x.indisvalid AND i.relkind = 'i' AND t.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
GROUP BY n.nspname, t.relname, i.relname, i.oid, i.relpages, i.reltuples, i.reloptions, x.indnatts
ORDER BY n.nspname, t.relname, i.relname
"""

INVALID_SQL = """
SELECT n.nspname, t.relname, i.relname, pg_relation_size(i.oid),
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.relid = t.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
WHERE NOT x.indisvalid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
ORDER BY 1, 2, 3
"""

RESOLVE_TABLE_SQL = """
SELECT n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""


def _ident(schema: str, name: str) -> Any:
    from psycopg import sql

    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def _sql_text(conn: Any, statement: Any) -> str:
    return statement.as_string(conn)


class Maintenance:
    """One run: read the statistics, plan, act (unless check mode), report."""

    def __init__(self, conn: Any, params: dict[str, Any], check_mode: bool) -> None:
        self.conn = conn
        self.params = params
        self.check_mode = check_mode
        self.thresholds = {key: params[key] for key in THRESHOLD_KEYS}
        self.thresholds.update(vacuum=params["vacuum"], analyze=params["analyze"])
        self.actions: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.clean_tables: list[str] = []
        self.not_estimated: list[dict[str, str]] = []
        self.invalid_indexes: list[str] = []
        self.checked = {"tables": 0, "indexes": 0}
        self.database: str | None = None
        self.maxalign = 8
        self.block_size = 8192

    # -------------------------------------------------------------- helpers

    def query(self, sql_text: Any, args: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql_text, args)
            return cur.fetchall() if cur.description else []

    def excluded(self, schema: str, table: str) -> bool:
        return excluded(f"{schema}.{table}", self.params["exclude_tables"])

    def run_action(self, entry: dict[str, Any], statement: Any) -> bool:
        """Run one maintenance statement; record done / skipped / failed on ``entry``."""
        started = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute(statement)
        except Exception as exc:
            entry["duration_s"] = round(time.monotonic() - started, 3)
            sqlstate = getattr(exc, "sqlstate", None)
            message = safe_error(exc, self.params["dsn"])
            if sqlstate == LOCK_NOT_AVAILABLE:
                entry.update(status="skipped", error=f"lock not obtained: {message}")
                self.warnings.append(
                    f"{entry['action']} {entry['object']} skipped: its lock was not obtained "
                    f"within lock_timeout ({message})"
                )
            else:
                entry.update(status="failed", error=message)
            return False
        entry.update(status="done", duration_s=round(time.monotonic() - started, 3))
        return True

    def new_entry(
        self, obj: str, kind: str, action: str, statement: Any, reasons: list[str]
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "object": obj,
            "kind": kind,
            "table": None,
            "action": action,
            "sql": _sql_text(self.conn, statement),
            "reasons": reasons,
            "status": "planned",
            "error": None,
            "size_before": None,
            "size_after": None,
            "size_before_pretty": None,
            "size_after_pretty": None,
            "dead_tuples_before": None,
            "dead_tuples_after": None,
            "bloat_percent": None,
            "duration_s": None,
        }
        self.actions.append(entry)
        return entry

    @staticmethod
    def set_sizes(
        entry: dict[str, Any], before: int | None = None, after: int | None = None
    ) -> None:
        if before is not None:
            entry.update(size_before=int(before), size_before_pretty=pretty_bytes(int(before)))
        if after is not None:
            entry.update(size_after=int(after), size_after_pretty=pretty_bytes(int(after)))

    # -------------------------------------------------------------- phases

    def prepare(self) -> None:
        from psycopg import sql

        for setting in ("lock_timeout", "statement_timeout"):
            if self.params.get(setting):
                with self.conn.cursor() as cur:
                    cur.execute(
                        sql.SQL("SET {} = {}").format(
                            sql.Identifier(setting), sql.Literal(self.params[setting])
                        )
                    )
        row = self.query(
            "SELECT current_database(), version(), current_setting('block_size')::int"
        )[0]
        self.database, version, self.block_size = row[0], row[1], int(row[2])
        self.maxalign = maxalign_of(version)
        if self.params["reindex"] and self.params["bloat_method"] == "pgstattuple":
            found = self.query(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'pgstattuple'"
            )
            if not found:
                raise MaintenanceRefused(
                    "bloat_method=pgstattuple needs the pgstattuple extension in database "
                    f"{self.database} (CREATE EXTENSION pgstattuple), or use bloat_method=estimate"
                )
            self.pgstattuple_schema = found[0][0]

    def resolve_vacuum_full(self) -> list[tuple[str, str]]:
        tables = []
        for name in self.params["vacuum_full_tables"]:
            rows = self.query(RESOLVE_TABLE_SQL, (name,))
            if not rows or rows[0][2] not in ("r", "m"):
                raise MaintenanceRefused(
                    f"vacuum_full_tables: {name!r} is not a table in database {self.database}"
                )
            tables.append((rows[0][0], rows[0][1]))
        return list(dict.fromkeys(tables))

    def drop_leftovers(self) -> None:
        for schema, table, index, size, building in self.query(
            INVALID_SQL, {"schemas": self.params["schemas"]}
        ):
            qualified = f"{schema}.{index}"
            if not is_reindex_leftover(index, valid=False):
                self.invalid_indexes.append(qualified)
                self.warnings.append(
                    f"index {qualified} on {schema}.{table} is invalid (a failed CREATE INDEX "
                    "CONCURRENTLY?); it is not a reindex leftover and was left alone"
                )
                continue
            if not self.params["drop_invalid_leftovers"] or self.excluded(schema, table):
                continue
            if building:
                self.warnings.append(
                    f"invalid index {qualified} left alone: an index build is in progress on "
                    f"{schema}.{table} (it may be that build's own)"
                )
                continue
            from psycopg import sql

            statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                _ident(schema, index)
            )
            entry = self.new_entry(
                qualified,
                "index",
                "DROP INDEX CONCURRENTLY",
                statement,
                ["invalid leftover (indisvalid false) of a failed REINDEX CONCURRENTLY"],
            )
            entry["table"] = f"{schema}.{table}"
            self.set_sizes(entry, before=size)
            if not self.check_mode and self.run_action(entry, statement):
                self.set_sizes(entry, after=0)

    def table_stats(self) -> list[TableStats]:
        rows = self.query(TABLES_SQL, {"schemas": self.params["schemas"]})
        stats = []
        for schema, name, live, dead, mods, analyzed, age_h, size in rows:
            if self.excluded(schema, name):
                continue
            stats.append(
                TableStats(
                    schema,
                    name,
                    int(live or 0),
                    int(dead or 0),
                    int(mods or 0),
                    bool(analyzed),
                    float(age_h) if age_h is not None else None,
                    int(size or 0),
                )
            )
        return stats

    def vacuum_full(self, tables: list[tuple[str, str]]) -> set[str]:
        from psycopg import sql

        done = set()
        for schema, name in tables:
            qualified = f"{schema}.{name}"
            statement = sql.SQL("VACUUM (FULL, ANALYZE) {}").format(_ident(schema, name))
            entry = self.new_entry(
                qualified,
                "table",
                "VACUUM (FULL, ANALYZE)",
                statement,
                ["requested in vacuum_full_tables (ACCESS EXCLUSIVE lock while it rewrites)"],
            )
            regclass = _sql_text(self.conn, _ident(schema, name))
            size_sql = "SELECT pg_total_relation_size(%s::regclass)"
            self.set_sizes(entry, before=self.query(size_sql, (regclass,))[0][0])
            done.add(qualified)
            if not self.check_mode and self.run_action(entry, statement):
                self.set_sizes(entry, after=self.query(size_sql, (regclass,))[0][0])
        return done

    def vacuum_analyze(self, stats: list[TableStats], skip: set[str]) -> None:
        from psycopg import sql

        for table in stats:
            self.checked["tables"] += 1
            if table.qualified in skip:
                continue
            vacuum, analyze, reasons = table_decision(table, self.thresholds)
            action = table_action(vacuum, analyze)
            if action is None:
                self.clean_tables.append(table.qualified)
                continue
            statement = sql.SQL(action + " {}").format(_ident(table.schema, table.name))
            entry = self.new_entry(table.qualified, "table", action, statement, reasons)
            self.set_sizes(entry, before=table.size)
            entry["dead_tuples_before"] = table.dead
            if self.check_mode or not self.run_action(entry, statement):
                continue
            now = self.query(TABLE_NOW_SQL, (table.schema, table.name))
            if now:
                dead_after, size_after = int(now[0][0] or 0), int(now[0][1] or 0)
                entry["dead_tuples_after"] = dead_after
                self.set_sizes(entry, after=size_after)
                if vacuum and dead_after >= self.params["vacuum_min_dead_tuples"]:
                    self.warnings.append(
                        f"VACUUM {table.qualified} left {dead_after} dead tuples: an old "
                        "transaction, prepared transaction or replication slot holds them back "
                        "(see pg_stat_activity.backend_xmin)"
                    )

    def index_bloat(self) -> list[dict[str, Any]]:
        """Every valid B-tree index with its bloat (or why it has none)."""
        rows = self.query(BTREE_INPUTS_SQL, {"schemas": self.params["schemas"]})
        out = []
        for (
            schema,
            table,
            index,
            relpages,
            reltuples,
            fillfactor,
            natts,
            stats_cols,
            max_null,
            width,
            has_name,
            size,
            exclusion,
        ) in rows:
            if self.excluded(schema, table):
                continue
            item: dict[str, Any] = {
                "schema": schema,
                "table": table,
                "index": index,
                "size": int(size),
                "fillfactor": int(fillfactor),
                "bloat_percent": None,
                "reason": None,
            }
            out.append(item)
            if exclusion:
                item["reason"] = "backs an exclusion constraint (no REINDEX CONCURRENTLY)"
            elif relpages <= 0:
                item["reason"] = "empty"
            elif self.params["bloat_method"] == "pgstattuple":
                continue  # measured below
            elif reltuples is None or reltuples < 0:
                item["reason"] = f"never vacuumed nor analyzed (ANALYZE {schema}.{table})"
            elif has_name:
                item["reason"] = "a column of type name: its statistics are unreliable"
            elif int(stats_cols) < int(natts):
                item["reason"] = f"no statistics for its columns (ANALYZE {schema}.{table})"
            else:
                estimate = btree_bloat_estimate(
                    int(relpages),
                    float(reltuples),
                    self.block_size,
                    int(fillfactor),
                    self.maxalign,
                    float(max_null or 0) > 0,
                    float(width),
                )
                item["bloat_percent"] = estimate.bloat_percent
                item["bloat_bytes"] = estimate.bloat_bytes
        if self.params["bloat_method"] == "pgstattuple":
            from psycopg import sql

            for item in out:
                if item["reason"]:
                    continue
                density = self.query(
                    sql.SQL("SELECT avg_leaf_density FROM {}.pgstatindex(%s::regclass)").format(
                        sql.Identifier(self.pgstattuple_schema)
                    ),
                    (_sql_text(self.conn, _ident(item["schema"], item["index"])),),
                )[0][0]
                item["bloat_percent"] = pgstattuple_bloat_percent(
                    float(density) if density is not None else None, item["fillfactor"]
                )
                if item["bloat_percent"] is None:
                    item["reason"] = "pgstatindex found no leaf pages"
        return out

    def reindex(self) -> None:
        from psycopg import sql

        for item in self.index_bloat():
            self.checked["indexes"] += 1
            qualified = f"{item['schema']}.{item['index']}"
            if item["reason"]:
                if item["reason"] != "empty":
                    self.not_estimated.append({"object": qualified, "reason": item["reason"]})
                continue
            rebuild, words = index_decision(item["bloat_percent"], item["size"], self.thresholds)
            if not rebuild:
                continue
            statement = sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(
                _ident(item["schema"], item["index"])
            )
            entry = self.new_entry(
                qualified, "index", "REINDEX INDEX CONCURRENTLY", statement, [words]
            )
            entry.update(
                table=f"{item['schema']}.{item['table']}", bloat_percent=item["bloat_percent"]
            )
            self.set_sizes(entry, before=item["size"])
            if self.check_mode:
                continue
            if self.run_action(entry, statement):
                after = self.query(
                    "SELECT pg_relation_size(%s::regclass)",
                    (_sql_text(self.conn, _ident(item["schema"], item["index"])),),
                )
                self.set_sizes(entry, after=after[0][0])
            else:
                self.drop_own_leftover(item["schema"], item["index"], entry)

    def drop_own_leftover(self, schema: str, index: str, entry: dict[str, Any]) -> None:
        """After a failed REINDEX CONCURRENTLY: drop the invalid _ccnew index it left."""
        from psycopg import sql

        rows = self.query(
            "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_namespace n ON n.oid = i.relnamespace "
            "WHERE NOT x.indisvalid AND n.nspname = %s AND i.relname ~ %s",
            (schema, "^" + re.escape(index) + r"_ccnew\d*$"),
        )
        for (leftover,) in rows:
            statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                _ident(schema, leftover)
            )
            try:
                with self.conn.cursor() as cur:
                    cur.execute(statement)
                entry["error"] = (
                    entry.get("error") or ""
                ) + f"; its leftover {leftover} was dropped"
            except Exception as exc:
                entry["error"] = (entry.get("error") or "") + (
                    f"; its leftover {schema}.{leftover} could not be dropped: "
                    f"{safe_error(exc, self.params['dsn'])} (a later run drops it)"
                )

    def run(self) -> dict[str, Any]:
        self.prepare()
        vacuum_full = self.resolve_vacuum_full()
        self.drop_leftovers()
        done_full = self.vacuum_full(vacuum_full)
        if self.params["vacuum"] or self.params["analyze"]:
            self.vacuum_analyze(self.table_stats(), done_full)
        else:
            self.checked["tables"] = len(self.table_stats())
        if self.params["reindex"]:
            self.reindex()
        return self.result()

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "changed": any(e["status"] == "done" for e in self.actions)
            or (self.check_mode and any(e["status"] == "planned" for e in self.actions)),
            "database": self.database,
            "check_mode": self.check_mode,
            "actions": self.actions,
            "checked": self.checked,
            "clean_tables": self.clean_tables,
            "not_estimated": self.not_estimated,
            "invalid_indexes": self.invalid_indexes,
            "thresholds": {key: self.params[key] for key in THRESHOLD_KEYS},
        }
        result["msg"] = summarize(result)
        result["report_lines"] = report_lines(result)
        return result


class MaintenanceRefused(Exception):
    """Refused before anything was done (bad table name, missing extension)."""


# ---------------------------------------------------------------------------
# module


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        schemas={"type": "list", "elements": "str", "default": []},
        exclude_tables={"type": "list", "elements": "str", "default": []},
        vacuum={"type": "bool", "default": True},
        analyze={"type": "bool", "default": True},
        reindex={"type": "bool", "default": True},
        drop_invalid_leftovers={"type": "bool", "default": True},
        vacuum_min_dead_tuples={"type": "int", "default": 1000},
        vacuum_dead_ratio={"type": "float", "default": 0.2},
        analyze_min_mods={"type": "int", "default": 1000},
        analyze_mod_ratio={"type": "float", "default": 0.1},
        analyze_max_age_h={"type": "float", "default": 168.0},
        reindex_bloat_percent={"type": "float", "default": 30.0},
        reindex_min_index_mb={"type": "float", "default": 10.0},
        bloat_method={"type": "str", "choices": ["estimate", "pgstattuple"], "default": "estimate"},
        vacuum_full_tables={"type": "list", "elements": "str", "default": []},
        lock_timeout={"type": "str"},
        statement_timeout={"type": "str"},
    )


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = validate_connection_params(params)
    for key in ("vacuum_min_dead_tuples", "analyze_min_mods"):
        if params.get(key) is not None and params[key] < 0:
            errors.append(f"{key} must be >= 0, got {params[key]}")
    for key in (
        "vacuum_dead_ratio",
        "analyze_mod_ratio",
        "analyze_max_age_h",
        "reindex_min_index_mb",
    ):
        if params.get(key) is not None and params[key] < 0:
            errors.append(f"{key} must be >= 0, got {params[key]}")
    pct = params.get("reindex_bloat_percent")
    if pct is not None and not 0 < pct <= 100:
        errors.append(f"reindex_bloat_percent must be > 0 and <= 100, got {pct}")
    for key in ("lock_timeout", "statement_timeout"):
        if params.get(key) is not None and not params[key].strip():
            errors.append(f"{key} must not be empty (omit it to keep the server's setting)")
    for name in params.get("vacuum_full_tables") or []:
        if not name.strip():
            errors.append("vacuum_full_tables: empty table name")
    return errors


def main() -> None:
    module = pg_module("pg_maintenance", argument_spec(), validate_params, "nothing was done")
    params = module.params
    conn = None
    try:
        conn = connect_params(params, autocommit=True)
        run = Maintenance(conn, params, module.check_mode)
        result = run.run()
    except PgConnectError as exc:
        module.fail_json(msg=f"pg_maintenance: cannot connect: {exc}; nothing was done")
    except MaintenanceRefused as exc:
        module.fail_json(msg=f"pg_maintenance: {exc}; nothing was done")
    except Exception as exc:
        done = [e for e in run.actions if e["status"] == "done"] if "run" in locals() else []
        module.fail_json(
            msg=f"pg_maintenance: unexpected error: {safe_error(exc, params['dsn'])}; "
            + (
                "done before it: " + ", ".join(f"{e['action']} {e['object']}" for e in done)
                if done
                else "nothing was done"
            )
        )
    finally:
        close_quietly(conn)
    for warning in run.warnings:
        module.warn(warning)
    failed = [e for e in result["actions"] if e["status"] == "failed"]
    if failed:
        result["msg"] = (
            "pg_maintenance: "
            + "; ".join(f"{e['action']} {e['object']} failed: {e['error']}" for e in failed)
            + f" (the other objects were maintained: {result['msg']})"
        )
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
