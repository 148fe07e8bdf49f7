#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_datafix: run a data-fix SQL file in one verified transaction (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_datafix
short_description: Run a data-fix SQL file in ONE transaction, verified before it commits
description:
  - Runs the statements of a data-fix file (the runbooks name them
    C(data-fix-YYYY-MM-DD-description.sql)) against the database the DSN in O(dsn) names, all
    in B(one) transaction, then runs a verify query in the same transaction. The transaction
    commits only when every check passes; any miss rolls it back and the task fails with a
    report saying which check failed - B(nothing was changed).
  - "Checks, in order: every statement succeeds; the rows each statement affected are within
    O(min_rows_per_statement) / O(max_rows_per_statement); the running total stays at or
    below O(max_rows) (the fix stops at the first statement that crosses it); deferred
    constraints hold (C(SET CONSTRAINTS ALL IMMEDIATE)); the total is at least O(min_rows);
    the verify query returns B(zero rows). The first offending verify rows (up to
    O(verify_show_rows)) are in the report."
  - "Rows affected are the counts PostgreSQL reports in the command tag of C(INSERT),
    C(UPDATE), C(DELETE), C(MERGE) and C(COPY) statements. Rows changed by triggers,
    cascades, functions or C(DO) blocks are not in those counts; they are reported per table
    in RV(tables_changed) (from C(pg_stat_xact_user_tables), the transaction's own counters)."
  - The verify query runs in the transaction after C(SET LOCAL transaction_read_only = on), so
    it can read the fixed data but cannot change anything.
  - "The file may keep the runbooks' own C(BEGIN;) first and C(COMMIT;) last: they are
    replaced by the module's transaction (transaction modes of the C(BEGIN), such as
    C(ISOLATION LEVEL SERIALIZABLE), are kept). Any other transaction control (C(COMMIT),
    C(ROLLBACK), C(BEGIN) in the middle, C(PREPARE TRANSACTION)), statements that cannot run
    in a transaction (C(VACUUM), C(CREATE INDEX CONCURRENTLY), C(CREATE DATABASE), ...) and
    psql meta-commands (lines starting with a backslash) are refused before anything runs."
  - The file is split into statements as psql splits it (quotes, C(E'') strings, dollar
    quotes, nested comments and the C(BEGIN ATOMIC ... END) body of a SQL-standard function),
    by the splitter M(opsbook.runbooks.pg_migrate) uses too (C(module_utils/opsbook_sql.py)).
  - The verify query is O(verify), or the single statement that follows a line
    C(-- opsbook:verify) in the file (a fix file can carry its own verification). With
    O(require_verify=true) a fix without a verify query is refused before anything runs.
  - In check mode the whole fix, the checks and the verify query run as usual and the
    transaction is B(always rolled back); the report says what would have been committed.
  - O(statement_timeout) and O(lock_timeout) apply to this transaction only (C(SET LOCAL)).
  - The file name is checked against the runbooks' convention
    C(data-fix-YYYY-MM-DD-description.sql); a name that does not match only warns.
  - With O(parse_only=true) the module only reads and checks the file (statements, refusals,
    verify query, name) and does not connect.
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
# psycopg and the connection options
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
options:
  path:
    description:
      - The data-fix file, on the host the module runs on. Exactly one of O(path) and
        O(content) is required.
    type: path
  content:
    description:
      - The data-fix SQL itself (the opsbook role reads the file on the controller and passes
        it here). Exactly one of O(path) and O(content) is required.
    type: str
  name:
    description:
      - The file name reported and checked against the naming convention when O(content) is
        given (default C(<content>)). With O(path), the file's own name is used.
    type: str
  verify:
    description:
      - The verify query. It must return zero rows for the fix to commit.
      - Mutually exclusive with a C(-- opsbook:verify) section in the file.
    type: str
  require_verify:
    description:
      - Refuse a fix that has no verify query (neither O(verify) nor a C(-- opsbook:verify)
        section), before anything runs.
    type: bool
    default: false
  verify_show_rows:
    description:
      - How many offending verify rows to put in the report (values truncated to 200
        characters). 0 shows none, only the count.
    type: int
    default: 5
  min_rows:
    description:
      - The fix must affect at least this many rows in total (sum over the counted statements).
    type: int
  max_rows:
    description:
      - The fix must affect at most this many rows in total. Checked after every statement;
        the fix stops at the first statement that crosses it.
    type: int
  min_rows_per_statement:
    description:
      - Each counted statement (C(INSERT), C(UPDATE), C(DELETE), C(MERGE), C(COPY)) must affect
        at least this many rows (catches a statement whose C(WHERE) matches nothing).
    type: int
  max_rows_per_statement:
    description:
      - Each counted statement must affect at most this many rows.
    type: int
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) for this transaction (C(SET LOCAL)), e.g. C(5min),
        C(30s), C(0) for none. The server's setting when omitted.
    type: str
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) for this transaction (C(SET LOCAL)), e.g. C(5s). A
        statement that waits longer for a lock fails (and the fix rolls back) instead of
        queueing other sessions behind it.
    type: str
  parse_only:
    description:
      - Only read and check the file; do not connect.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Runs the fix, the checks and the verify query, then always rolls back; the
      report says what would have been committed.
  diff_mode:
    support: none
    description: The report lists the rows affected per statement and per table instead.
  platform:
    support: full
    platforms: posix
    description: Runs on the host that can reach the database (group C(dbadmin) in opsbook).
notes:
  - O(dsn) is not used with O(parse_only=true), but is still required.
  - C(changed) is true when the transaction committed (in check mode - would commit) and a
    counted statement affected rows or a statement other than a query or C(SET) ran. A
    re-run of a fix written with precise C(WHERE) clauses affects no rows and reports no
    change; O(min_rows) makes such a re-run fail instead.
  - The statements are split on semicolons outside quotes, quoted identifiers,
    dollar-quoted bodies and comments, as psql does.
seealso:
  - name: SET CONSTRAINTS
    description: How deferred constraints are checked before the verify query.
    link: https://www.postgresql.org/docs/current/sql-set-constraints.html
"""

EXAMPLES = r"""
- name: Remove duplicate user emails (at most 50 rows), verified before it commits
  pg_datafix:
    dsn: "{{ database_url }}"
    path: /srv/ops/data-fix-2025-10-01-user-emails.sql
    verify: >-
      SELECT email, count(*) FROM users GROUP BY email HAVING count(*) > 1
    max_rows: 50
    min_rows_per_statement: 1
    lock_timeout: 5s
    statement_timeout: 5min
  no_log: true
  register: fix

- name: What the fix would do (runs it, always rolls back)
  pg_datafix:
    dsn: "{{ database_url }}"
    content: "{{ lookup('ansible.builtin.file', fix_file, rstrip=false) }}"
    name: "{{ fix_file | basename }}"
    require_verify: true
  check_mode: true
  no_log: true
  register: plan
"""

RETURN = r"""
file:
  description: The fix file - name, sha256 of its content, size, whether the name follows the
    convention.
  returned: always
  type: dict
  sample: {name: data-fix-2025-10-01-user-emails.sql, sha256: 5d41402abc4b2a76b9719d911017c592,
           bytes: 412, name_ok: true}
database:
  description: The database the fix ran against (C(current_database())); null when it did not
    connect.
  returned: always
  type: str
  sample: app
outcome:
  description: C(committed), C(rolled_back) (a check failed, or check mode), C(refused) (the
    file was refused before anything ran), C(not_run) (the database could not be reached) or
    C(parsed) (O(parse_only)).
  returned: always
  type: str
  sample: committed
committed:
  description: Whether the transaction committed.
  returned: always
  type: bool
  sample: true
would_commit:
  description: Whether every check passed (in check mode - the fix would have committed).
  returned: always
  type: bool
  sample: true
check_mode:
  description: Whether the module ran in check mode.
  returned: always
  type: bool
  sample: false
failed_check:
  description: The first check that failed - C(refused), C(statement_error), C(max_rows),
    C(min_rows), C(max_rows_per_statement), C(min_rows_per_statement), C(constraints),
    C(verify), C(verify_error), C(commit), C(connect), C(settings); null when all passed.
  returned: always
  type: str
  sample: verify
failed_checks:
  description: Every check that failed, in order.
  returned: always
  type: list
  elements: str
  sample: [verify]
reason:
  description: Why the fix did not commit, in words (null when it committed or would commit).
  returned: always
  type: str
  sample: "verify query returned 2 rows, it must return none"
statements:
  description: One entry per statement that ran (or would run with O(parse_only)) - its
    1-based C(index), C(line) in the file, C(sql) (one line, truncated), C(command) tag,
    C(rows) (affected rows for counted commands, rows returned for queries), C(counted),
    C(duration_ms), and C(error) when it failed.
  returned: always
  type: list
  elements: dict
  sample:
    - {index: 1, line: 4, sql: "DELETE FROM users WHERE id NOT IN (SELECT min(id) FROM users ...",
       command: DELETE, rows: 12, counted: true, duration_ms: 3.1, error: null}
rows_affected:
  description: Sum of the rows affected by the counted statements.
  returned: always
  type: int
  sample: 12
tables_changed:
  description: Rows inserted, updated and deleted per table in the transaction
    (C(pg_stat_xact_user_tables)), triggers and cascades included.
  returned: when every statement ran
  type: list
  elements: dict
  sample: [{table: public.users, inserted: 0, updated: 0, deleted: 12}]
verify:
  description: The verify query (one line, truncated), whether it ran and passed, how many
    rows it returned, their columns and the first offending rows.
  returned: always
  type: dict
  sample: {query: "SELECT email, count(*) FROM users GROUP BY email HAVING count(*) > 1",
           source: option, ran: true, passed: false, row_count: 2, columns: [email, count],
           rows: [["a@example.com", "2"], ["b@example.com", "3"]]}
bounds:
  description: The row bounds that applied.
  returned: always
  type: dict
  sample: {min_rows: null, max_rows: 50, min_rows_per_statement: 1, max_rows_per_statement: null}
notes:
  description: What the module did with the file's own transaction control, and similar notes.
  returned: always
  type: list
  elements: str
  sample:
    - the file's own BEGIN (line 5) and COMMIT (line 20) were replaced by the module's transaction
report_lines:
  description: A readable report, one line per item.
  returned: always
  type: list
  elements: str
  sample:
    - "Data fix data-fix-2025-10-01-user-emails.sql (sha256 5d41402abc4b, 412 bytes) on database
      app: COMMITTED (12 rows affected)"
duration_s:
  description: Seconds from connecting to commit or rollback.
  returned: always
  type: float
  sample: 0.42
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: "data fix data-fix-2025-10-01-user-emails.sql committed: 12 rows affected, verify passed"
"""

import contextlib
import dataclasses
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from datetime import date
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
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_sql import (
    Comment,
    SqlParseError,
    Statement,
    parse_sql,
    split_sql,
)

NAME_RE = re.compile(r"^data-fix-(\d{4})-(\d{2})-(\d{2})-[A-Za-z0-9][A-Za-z0-9._-]*\.sql$")
VERIFY_MARKER_RE = re.compile(r"^--\s*opsbook:verify\s*$", re.IGNORECASE)
COUNTED_COMMANDS = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY")
NO_CHANGE_COMMANDS = ("SELECT", "SET", "SHOW", "RESET", "SAVEPOINT", "RELEASE", "ROLLBACK")
VALUE_CHARS = 200


class FixRefused(Exception):
    """The fix is refused before anything runs."""


# ---------------------------------------------------------------------------
# classifying statements


def transaction_control(words: list[str]) -> str | None:
    """The transaction-control command a statement is (``BEGIN``, ``COMMIT``...), else None."""
    if not words:
        return None
    first, second = words[0], (words[1] if len(words) > 1 else "")
    if first in ("BEGIN", "COMMIT", "END", "ABORT"):
        return f"{first} {second}".strip() if second == "PREPARED" else first
    if first == "START" and second == "TRANSACTION":
        return "START TRANSACTION"
    if first == "ROLLBACK":
        if second == "TO":
            return None  # ROLLBACK TO SAVEPOINT stays inside the transaction
        return "ROLLBACK PREPARED" if second == "PREPARED" else "ROLLBACK"
    if first == "PREPARE" and second == "TRANSACTION":
        return "PREPARE TRANSACTION"
    return None


def no_transaction_command(words: list[str]) -> str | None:
    """The command, when the statement cannot run inside a transaction block."""
    if not words:
        return None
    first = words[0]
    head = words[:6]
    if first == "VACUUM":
        return "VACUUM"
    if first in ("CREATE", "DROP") and "INDEX" in head and "CONCURRENTLY" in head:
        return f"{first} INDEX CONCURRENTLY"
    if first == "REINDEX" and (
        "CONCURRENTLY" in head or (len(words) > 1 and words[1] in ("DATABASE", "SYSTEM"))
    ):
        return "REINDEX CONCURRENTLY" if "CONCURRENTLY" in head else f"REINDEX {words[1]}"
    if (
        first in ("CREATE", "DROP")
        and len(words) > 1
        and words[1] in ("DATABASE", "TABLESPACE", "SUBSCRIPTION")
    ):
        return f"{first} {words[1]}"
    if first == "ALTER" and len(words) > 1 and words[1] == "SYSTEM":
        return "ALTER SYSTEM"
    if first == "DISCARD" and len(words) > 1 and words[1] == "ALL":
        return "DISCARD ALL"
    return None


_BEGIN_MODES_RE = re.compile(
    r"^\s*(?:BEGIN(?:\s+(?:WORK|TRANSACTION))?|START\s+TRANSACTION)\b\s*(?P<modes>.*?)\s*$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass
class FixPlan:
    """What will run: the fix statements, the verify query, and what was done to the file."""

    statements: list[Statement]
    verify: str | None
    verify_source: str | None  # option | file | None
    transaction_modes: str | None = None
    verify_preview: str | None = None
    notes: list[str] = field(default_factory=list)


def verify_marker(comments: list[Comment]) -> tuple[int | None, int | None]:
    """(how many statements come before the ``-- opsbook:verify`` marker, its line), or
    (None, None) when the file has none; FixRefused when one stands inside a statement or
    there are two."""
    found: Comment | None = None
    for comment in comments:
        if not VERIFY_MARKER_RE.match(comment.text):
            continue
        if comment.inside:
            problem = "the -- opsbook:verify marker must come between statements, not inside one"
        elif found is not None:
            problem = "a second -- opsbook:verify marker"
        else:
            found = comment
            continue
        raise FixRefused(f"the file cannot be read as SQL: line {comment.line}: {problem}")
    return (found.after, found.line) if found else (None, None)


def refusal(stmt: Statement) -> str | None:
    """Why the statement cannot run in the module's one transaction (None when it can)."""
    control = transaction_control(stmt.words)
    if control:
        return (
            f"statement {stmt.index} (line {stmt.line}) is {control}: a data fix runs in ONE "
            "transaction that the module begins and commits or rolls back; remove the "
            "file's own transaction control (a BEGIN; first and a COMMIT; last are accepted)"
        )
    command = no_transaction_command(stmt.words)
    if command:
        return (
            f"statement {stmt.index} (line {stmt.line}) is {command}, which cannot run "
            "inside a transaction; run it as a migration or maintenance instead"
        )
    return None


def plan_fix(text: str, verify_option: str | None, require_verify: bool) -> FixPlan:
    """Split and check the file; raise FixRefused (nothing runs) when it cannot run safely."""
    try:
        script = parse_sql(text)
    except SqlParseError as exc:
        raise FixRefused(f"the file cannot be read as SQL: {exc}") from None
    verify_boundary, marker_line = verify_marker(script.comments)
    statements = list(script.statements)
    notes: list[str] = []
    modes: str | None = None
    # The runbooks' own BEGIN; ... COMMIT; wrapper is replaced by the module's transaction.
    if (
        len(statements) >= 2
        and transaction_control(statements[0].words) in ("BEGIN", "START TRANSACTION")
        and transaction_control(statements[-1].words) in ("COMMIT", "END")
    ):
        first, last = statements[0], statements[-1]
        match = _BEGIN_MODES_RE.match(first.code)
        modes = (match.group("modes") if match else "") or None
        statements = statements[1:-1]
        if verify_boundary is not None:
            verify_boundary = max(0, verify_boundary - 1)
        notes.append(
            f"the file's own {first.words[0]} (line {first.line}) and {last.words[0]} "
            f"(line {last.line}) were replaced by the module's transaction"
            + (f"; its transaction modes ({modes}) are kept" if modes else "")
        )
    for stmt in statements:
        problem = refusal(stmt)
        if problem:
            raise FixRefused(problem)
    verify_text: str | None = None
    verify_source: str | None = None
    verify_preview: str | None = None
    if verify_boundary is not None:
        fix_part, verify_part = statements[:verify_boundary], statements[verify_boundary:]
        if len(verify_part) != 1:
            raise FixRefused(
                f"the -- opsbook:verify section (line {marker_line}) must hold "
                f"exactly one query, it holds {len(verify_part)} statements"
            )
        if verify_option:
            raise FixRefused(
                "the verify query is given twice: in the verify option and in the file's "
                f"-- opsbook:verify section (line {marker_line}); keep one"
            )
        statements = fix_part
        verify_text, verify_source = verify_part[0].text, "file"
        verify_preview = verify_part[0].preview
    elif verify_option and verify_option.strip():
        try:
            parts = split_sql(verify_option)
        except SqlParseError as exc:
            raise FixRefused(f"the verify query cannot be read as SQL: {exc}") from None
        if len(parts) != 1:
            raise FixRefused(f"verify must be exactly one query, it holds {len(parts)} statements")
        verify_text, verify_source = parts[0].text, "option"
        verify_preview = parts[0].preview
    if require_verify and not verify_text:
        raise FixRefused(
            "no verify query: give one (the verify option, or a -- opsbook:verify section at "
            "the end of the file); it must return zero rows for the fix to commit"
        )
    if not statements:
        raise FixRefused("the file holds no statement to run")
    # renumber what runs: statement numbers in the report are those of the fix itself
    renumbered = [
        dataclasses.replace(stmt, index=k) for k, stmt in enumerate(statements, 1)
    ]
    return FixPlan(
        statements=renumbered,
        verify=verify_text,
        verify_source=verify_source,
        transaction_modes=modes,
        verify_preview=verify_preview,
        notes=notes,
    )


def check_name(name: str) -> str | None:
    """A warning when ``name`` does not follow data-fix-YYYY-MM-DD-description.sql, else None."""
    match = NAME_RE.match(name or "")
    if not match:
        return (
            f"file name {name!r} does not follow the convention "
            "data-fix-YYYY-MM-DD-description.sql (e.g. data-fix-2025-10-01-user-emails.sql)"
        )
    try:
        date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return (
            f"file name {name!r}: {match.group(1)}-{match.group(2)}-{match.group(3)} is not a date"
        )
    return None


# ---------------------------------------------------------------------------
# command tags and checks


def parse_command_tag(tag: str | None) -> tuple[str, int | None]:
    """``'INSERT 0 5'`` -> ``('INSERT', 5)``; ``'SET'`` -> ``('SET', None)``."""
    parts = (tag or "").split()
    if not parts:
        return "", None
    command = parts[0].upper()
    count = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else None
    if command in ("CREATE", "ALTER", "DROP") and len(parts) > 1:
        command = f"{command} {parts[1].upper()}"
    return command, count


def is_counted(command: str) -> bool:
    return command in COUNTED_COMMANDS


def statement_bound_problem(
    rows: int, min_rows: int | None, max_rows: int | None
) -> tuple[str, str] | None:
    """(check, words) when a counted statement's rows are outside the per-statement bounds."""
    if max_rows is not None and rows > max_rows:
        return (
            "max_rows_per_statement",
            f"affected {rows} rows, more than max_rows_per_statement {max_rows}",
        )
    if min_rows is not None and rows < min_rows:
        return (
            "min_rows_per_statement",
            f"affected {rows} rows, fewer than min_rows_per_statement {min_rows}",
        )
    return None


def jsonable(value: Any) -> Any:
    """A verify row value for the report: JSON types as they are, anything else as text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        text = "\\x" + bytes(value).hex()
    else:
        text = str(value)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "\u2026"


def format_row(columns: list[str], row: list[Any]) -> str:
    return "(" + ", ".join(f"{c}={v!s}" for c, v in zip(columns, row, strict=False)) + ")"


@dataclass
class FixRun:
    """The state of one run, turned into the module result by ``result()``."""

    name: str
    sha256: str
    size: int
    name_warning: str | None
    plan: FixPlan | None
    params: dict[str, Any]
    check_mode: bool
    database: str | None = None
    statements: list[dict[str, Any]] = field(default_factory=list)
    rows_affected: int = 0
    tables_changed: list[dict[str, Any]] | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    committed: bool = False
    outcome: str = "rolled_back"
    duration_s: float = 0.0
    other_commands: bool = False

    def __post_init__(self) -> None:
        if not self.verify:
            self.verify = verify_info(self.plan)

    def fail(self, check: str, words: str) -> None:
        self.failures.append((check, words))

    @property
    def would_commit(self) -> bool:
        return not self.failures and self.outcome in ("committed", "rolled_back")

    def bounds(self) -> dict[str, Any]:
        return {
            key: self.params.get(key)
            for key in ("min_rows", "max_rows", "min_rows_per_statement", "max_rows_per_statement")
        }

    def changed(self) -> bool:
        if self.failures or self.outcome not in ("committed", "rolled_back"):
            return False
        if not self.committed and not self.check_mode:
            return False
        return self.rows_affected > 0 or self.other_commands

    def result(self) -> dict[str, Any]:
        reason = "; ".join(words for _unused, words in self.failures) or None
        if self.check_mode and not self.failures and self.outcome == "rolled_back":
            reason = None
        result: dict[str, Any] = {
            "changed": self.changed(),
            "file": {
                "name": self.name,
                "sha256": self.sha256,
                "bytes": self.size,
                "name_ok": self.name_warning is None,
            },
            "database": self.database,
            "outcome": self.outcome,
            "committed": self.committed,
            "would_commit": self.would_commit,
            "check_mode": self.check_mode,
            "failed_check": self.failures[0][0] if self.failures else None,
            "failed_checks": [check for check, _unused in self.failures],
            "reason": reason,
            "statements": self.statements,
            "rows_affected": self.rows_affected,
            "verify": self.verify,
            "bounds": self.bounds(),
            "notes": list(self.plan.notes) if self.plan else [],
            "duration_s": round(self.duration_s, 3),
        }
        if self.tables_changed is not None:
            result["tables_changed"] = self.tables_changed
        result["report_lines"] = report_lines(result)
        result["msg"] = summary(result)
        return result


def verify_info(plan: FixPlan | None) -> dict[str, Any]:
    return {
        "query": plan.verify_preview if plan else None,
        "source": plan.verify_source if plan else None,
        "ran": False,
        "passed": None,
        "row_count": None,
        "columns": [],
        "rows": [],
    }


# ---------------------------------------------------------------------------
# the report


def _bounds_words(bounds: dict[str, Any]) -> str:
    parts = []
    for key, words in (
        ("min_rows", "min {} total"),
        ("max_rows", "max {} total"),
        ("min_rows_per_statement", "min {} per statement"),
        ("max_rows_per_statement", "max {} per statement"),
    ):
        if bounds.get(key) is not None:
            parts.append(words.format(bounds[key]))
    return ", ".join(parts) if parts else "none"


def summary(result: dict[str, Any]) -> str:
    name = result["file"]["name"]
    outcome = result["outcome"]
    if outcome == "parsed":
        return f"data fix {name}: {len(result['statements'])} statements parsed, nothing run"
    if outcome == "refused":
        return f"data fix {name} refused, nothing was run: {result['reason']}"
    if outcome == "not_run":
        return f"data fix {name} not run, nothing was changed: {result['reason']}"
    rows = f"{result['rows_affected']} rows affected"
    if result["failed_checks"]:
        return f"data fix {name} ROLLED BACK, nothing was changed: {result['reason']} ({rows})"
    verify = result["verify"]
    verify_words = "verify passed" if verify.get("passed") else "no verify query"
    if result["check_mode"]:
        return f"data fix {name} (check mode) would commit, rolled back: {rows}, {verify_words}"
    return f"data fix {name} committed: {rows}, {verify_words}"


def report_lines(result: dict[str, Any]) -> list[str]:
    """The readable report: header, one line per statement, tables, verify, outcome."""
    file = result["file"]
    name, outcome = file["name"], result["outcome"]
    db = result.get("database") or "?"
    if outcome == "committed":
        head = f"COMMITTED ({result['rows_affected']} rows affected)"
    elif outcome == "rolled_back" and result["failed_checks"]:
        head = f"ROLLED BACK - nothing was changed (failed: {', '.join(result['failed_checks'])})"
    elif outcome == "rolled_back":
        head = f"CHECK MODE - would commit ({result['rows_affected']} rows affected), rolled back"
    elif outcome == "parsed":
        head = f"PARSED - {len(result['statements'])} statements, nothing run"
    elif outcome == "not_run":
        head = "NOT RUN - nothing was changed"
    else:
        head = "REFUSED - nothing was run"
    lines = [
        f"Data fix {name} (sha256 {file['sha256'][:12]}, {file['bytes']} bytes) "
        f"on database {db}: {head}"
    ]
    if not file["name_ok"]:
        lines.append(f"Warning: {check_name(name)}")
    lines.extend(f"Note: {note}" for note in result.get("notes") or [])
    for st in result["statements"]:
        if outcome == "parsed":
            lines.append(f"  {st['index']:>3}  line {st['line']:<5} {st['sql']}")
            continue
        tag = st.get("command") or "-"
        count = "" if st.get("rows") is None else f" {st['rows']}"
        status = f"ERROR: {st['error']}" if st.get("error") else f"{tag}{count}"
        lines.append(f"  {st['index']:>3}  line {st['line']:<5} {status:<16} {st['sql']}")
    if outcome not in ("parsed", "refused", "not_run"):
        lines.append(
            f"Rows affected: {result['rows_affected']} (bounds: {_bounds_words(result['bounds'])})"
        )
    tables = result.get("tables_changed")
    if tables:
        lines.append(
            "Tables changed in the transaction: "
            + "; ".join(
                f"{t['table']} (inserted {t['inserted']}, updated {t['updated']}, "
                f"deleted {t['deleted']})"
                for t in tables
            )
        )
    verify = result["verify"]
    if verify.get("query"):
        if not verify.get("ran"):
            lines.append(f"Verify ({verify['source']}): not run - {verify['query']}")
        elif verify.get("passed"):
            lines.append(f"Verify ({verify['source']}): 0 rows - passed")
        elif verify.get("error"):
            lines.append(f"Verify ({verify['source']}): ERROR {verify['error']}")
        else:
            lines.append(
                f"Verify ({verify['source']}): {verify['row_count']} rows - FAILED "
                "(it must return none)"
            )
            for row in verify.get("rows") or []:
                lines.append("  " + format_row(verify.get("columns") or [], row))
    elif outcome not in ("refused",):
        lines.append("Verify: no verify query")
    if result.get("reason") and result["failed_checks"]:
        lines.append(f"Failed: {result['reason']}")
    return lines


# ---------------------------------------------------------------------------
# running the fix


def _set_local(cur: Any, name: str, value: str) -> None:
    from psycopg import sql

    cur.execute(sql.SQL("SET LOCAL {} = {}").format(sql.Identifier(name), sql.Literal(value)))


TABLES_CHANGED_SQL = """
SELECT schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del
FROM pg_stat_xact_user_tables
WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 AND schemaname NOT LIKE 'pg\\_temp%'
ORDER BY schemaname, relname
"""


def execute_fix(conn: Any, run: FixRun, dsn: str) -> None:
    """Run the plan in one transaction on ``conn`` (not autocommit); commit or roll back.

    Commits only when the body returned normally with no failed check and not in check
    mode; any exception rolls back before it propagates.
    """
    try:
        _execute_body(conn.cursor(), run, dsn)
    except BaseException:
        close_tx(conn, commit=False)
        run.outcome = "rolled_back"
        raise
    if run.failures or run.check_mode:
        close_tx(conn, commit=False)
        run.outcome = "rolled_back"
        return
    try:
        conn.commit()
    except Exception as exc:
        run.fail("commit", f"COMMIT failed: {safe_error(exc, dsn)}")
        close_tx(conn, commit=False)
        run.outcome = "rolled_back"
        return
    run.committed = True
    run.outcome = "committed"


def _execute_body(cur: Any, run: FixRun, dsn: str) -> None:
    """Settings, statements, deferred constraints, per-table counts, bounds, verify."""
    plan = run.plan
    if plan is None:
        raise AssertionError("plan is not None")
    params = run.params
    try:
        if plan.transaction_modes:
            cur.execute("SET TRANSACTION " + plan.transaction_modes)
        for setting in ("statement_timeout", "lock_timeout"):
            if params.get(setting):
                _set_local(cur, setting, params[setting])
        cur.execute("SELECT current_database()")
        run.database = cur.fetchone()[0]
    except Exception as exc:
        run.fail("settings", f"the transaction settings were refused: {safe_error(exc, dsn)}")
        return
    if not _run_statements(cur, run, dsn):
        return
    try:
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
    except Exception as exc:
        run.fail("constraints", f"a deferred constraint does not hold: {safe_error(exc, dsn)}")
        return
    cur.execute(TABLES_CHANGED_SQL)
    run.tables_changed = [
        {"table": f"{s}.{t}", "inserted": int(i), "updated": int(u), "deleted": int(d)}
        for s, t, i, u, d in cur.fetchall()
    ]
    if params.get("min_rows") is not None and run.rows_affected < params["min_rows"]:
        run.fail(
            "min_rows",
            f"the fix affected {run.rows_affected} rows, fewer than min_rows {params['min_rows']}",
        )
    _run_verify(cur, run, dsn)


def close_tx(conn: Any, commit: bool) -> None:
    with contextlib.suppress(Exception):
        conn.commit() if commit else conn.rollback()


def _run_statements(cur: Any, run: FixRun, dsn: str) -> bool:
    """Run every statement, checking bounds as it goes; False when it stopped early."""
    params = run.params
    if run.plan is None:
        raise AssertionError("run.plan is not None")
    for stmt in run.plan.statements:
        entry: dict[str, Any] = {
            "index": stmt.index,
            "line": stmt.line,
            "sql": stmt.preview,
            "command": None,
            "rows": None,
            "counted": False,
            "duration_ms": None,
            "error": None,
        }
        run.statements.append(entry)
        started = time.monotonic()
        try:
            cur.execute(stmt.text)
        except Exception as exc:
            entry["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            entry["error"] = safe_error(exc, dsn)
            run.fail(
                "statement_error",
                f"statement {stmt.index} (line {stmt.line}) failed: {entry['error']}",
            )
            return False
        entry["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        command, count = parse_command_tag(cur.statusmessage)
        entry["command"] = command or None
        entry["rows"] = (
            count if count is not None else (cur.rowcount if cur.rowcount >= 0 else None)
        )
        if is_counted(command):
            rows = count or 0
            entry["counted"] = True
            run.rows_affected += rows
            problem = statement_bound_problem(
                rows, params.get("min_rows_per_statement"), params.get("max_rows_per_statement")
            )
            if problem:
                run.fail(problem[0], f"statement {stmt.index} (line {stmt.line}) {problem[1]}")
                return False
            if params.get("max_rows") is not None and run.rows_affected > params["max_rows"]:
                run.fail(
                    "max_rows",
                    f"after statement {stmt.index} (line {stmt.line}) the fix had affected "
                    f"{run.rows_affected} rows, more than max_rows {params['max_rows']}",
                )
                return False
        elif command and command not in NO_CHANGE_COMMANDS:
            run.other_commands = True
    return True


def _run_verify(cur: Any, run: FixRun, dsn: str) -> None:
    if run.plan is None:
        raise AssertionError("run.plan is not None")
    if not run.plan.verify:
        return
    show = max(0, int(run.params.get("verify_show_rows") or 0))
    verify = run.verify
    try:
        cur.execute("SET LOCAL transaction_read_only = on")
        cur.execute(run.plan.verify)
    except Exception as exc:
        verify.update(ran=True, passed=False, error=safe_error(exc, dsn))
        run.fail("verify_error", f"the verify query failed: {verify['error']}")
        return
    verify["ran"] = True
    if cur.description is None:
        verify.update(passed=False, error="it returned no result set (it must be a query)")
        run.fail("verify_error", "the verify statement is not a query (it returned no rows at all)")
        return
    columns = [col.name for col in cur.description]
    rows = cur.fetchmany(show) if show else []
    count = cur.rowcount if cur.rowcount >= 0 else len(rows)
    verify.update(
        columns=columns,
        row_count=count,
        rows=[[jsonable(v) for v in row] for row in rows],
        passed=count == 0,
    )
    if count:
        first = (
            "; first: " + ", ".join(format_row(columns, r) for r in verify["rows"]) if rows else ""
        )
        run.fail("verify", f"the verify query returned {count} rows, it must return none{first}")


# ---------------------------------------------------------------------------
# module


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        path={"type": "path"},
        content={"type": "str"},
        name={"type": "str"},
        verify={"type": "str"},
        require_verify={"type": "bool", "default": False},
        verify_show_rows={"type": "int", "default": 5},
        min_rows={"type": "int"},
        max_rows={"type": "int"},
        min_rows_per_statement={"type": "int"},
        max_rows_per_statement={"type": "int"},
        statement_timeout={"type": "str"},
        lock_timeout={"type": "str"},
        parse_only={"type": "bool", "default": False},
    )


# path or content, not both (the rules in the argument spec; validate_params has the rest)
ARGUMENT_RULES: dict[str, Any] = {
    "mutually_exclusive": [("path", "content")],
    "required_one_of": [("path", "content")],
}


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = [] if params.get("parse_only") else validate_connection_params(params)
    for key in ("min_rows", "max_rows", "min_rows_per_statement", "max_rows_per_statement"):
        value = params.get(key)
        if value is not None and value < 0:
            errors.append(f"{key} must be >= 0, got {value}")
    for low, high in (
        ("min_rows", "max_rows"),
        ("min_rows_per_statement", "max_rows_per_statement"),
    ):
        if (
            params.get(low) is not None
            and params.get(high) is not None
            and params[low] > params[high]
        ):
            errors.append(f"{low} ({params[low]}) is greater than {high} ({params[high]})")
    if (params.get("verify_show_rows") or 0) < 0:
        errors.append(f"verify_show_rows must be >= 0, got {params['verify_show_rows']}")
    for key in ("statement_timeout", "lock_timeout"):
        value = params.get(key)
        if value is not None and not value.strip():
            errors.append(f"{key} must not be empty (omit it to keep the server's setting)")
    return errors


def read_source(params: dict[str, Any]) -> tuple[str, str, bytes]:
    """(name, text, raw bytes) of the fix, from path or content."""
    if params.get("path"):
        path = params["path"]
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise FixRefused(f"cannot read {path}: {exc.strerror or exc}") from None
        name = os.path.basename(path)
    else:
        raw = (params.get("content") or "").encode("utf-8")
        name = params.get("name") or "<content>"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FixRefused(f"{name} is not UTF-8 text (byte {exc.start})") from None
    return name, text, raw


def run_module(module: Any) -> tuple[dict[str, Any], list[str]]:
    """Everything but exit: the result and the warnings."""
    params = module.params
    warnings: list[str] = []
    name = params.get("name") or (
        os.path.basename(params["path"]) if params.get("path") else "<content>"
    )
    run = FixRun(name, "", 0, None, None, params, module.check_mode)
    started = time.monotonic()
    try:
        name, text, raw = read_source(params)
        run.name, run.sha256, run.size = name, hashlib.sha256(raw).hexdigest(), len(raw)
        run.name_warning = check_name(name)
        if run.name_warning:
            warnings.append(run.name_warning)
        run.plan = plan_fix(text, params.get("verify"), params["require_verify"])
    except FixRefused as exc:
        run.outcome = "refused"
        run.fail("refused", str(exc))
        run.verify = verify_info(run.plan)
        return run.result(), warnings
    run.verify = verify_info(run.plan)
    if params["parse_only"]:
        run.outcome = "parsed"
        run.statements = [
            {"index": s.index, "line": s.line, "sql": s.preview} for s in run.plan.statements
        ]
        return run.result(), warnings
    if not run.plan.verify:
        warnings.append("no verify query: nothing but the row bounds checked the fix")
    conn = None
    try:
        conn = connect_params(params)
        execute_fix(conn, run, params["dsn"])
    except PgConnectError as exc:
        run.outcome = "not_run"
        run.fail("connect", f"cannot connect: {exc}")
    except Exception as exc:  # anything unexpected: make sure the transaction is gone
        if conn is not None:
            close_tx(conn, commit=False)
        run.outcome = "rolled_back"
        run.committed = False
        run.fail("statement_error", f"unexpected error: {safe_error(exc, params['dsn'])}")
    finally:
        close_quietly(conn)
        run.duration_s = time.monotonic() - started
    return run.result(), warnings


def main() -> None:
    module = pg_module(
        "pg_datafix", argument_spec(), validate_params, "nothing was run", **ARGUMENT_RULES
    )
    result, warnings = run_module(module)
    for warning in warnings:
        module.warn(warning)
    if result["failed_checks"]:
        result["msg"] = "pg_datafix: " + result["msg"]
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
