#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_migrate: apply, check, revert and report schema migrations (numbered files or Prisma)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_migrate
short_description: Apply PostgreSQL schema migrations (numbered SQL files or Prisma folders)
description:
  - Reads the migrations in O(migrations_dir), compares them with what the database records,
    and reports (O(action=status)), applies the pending ones in order (O(action=apply)),
    reverts the numbered layout down to a version (O(action=down)), or records a manual
    decision about a failed migration (O(action=resolve), like C(prisma migrate resolve)).
  - "Two layouts, detected from the directory unless O(layout) says which:
    B(numbered) - files C(migration-NNN-description.sql) (the runbooks' naming), each with an
    optional C(migration-NNN-description.down.sql), ordered by the number NNN and recorded in
    the table C(opsbook.schema_migrations);
    B(prisma) - Prisma Migrate's C(<timestamp>_<name>/migration.sql) folders (O(migrations_dir)
    is C(prisma/migrations)), ordered by folder name and recorded in C(_prisma_migrations)
    exactly as C(prisma migrate deploy) records them (same table, same columns and types,
    checksum = sha256 hex of C(migration.sql), the same rows for applied, failed, resolved
    and rolled back migrations), so a team can switch between C(prisma migrate deploy) and
    opsbook in either direction without drift."
  - "B(Transactions.) Each migration runs in its own transaction together with the row that
    records it: it is applied and recorded, or neither. A migration is run outside a
    transaction, statement by statement, when its header (the comment lines before its first
    statement) holds the marker C(-- opsbook: no-transaction), when it contains a statement
    PostgreSQL refuses inside a transaction block (C(CREATE INDEX CONCURRENTLY), C(DROP INDEX
    CONCURRENTLY), C(REINDEX ... CONCURRENTLY), C(ALTER TYPE ... ADD VALUE), C(VACUUM),
    C(CREATE/DROP DATABASE), C(ALTER SYSTEM), ...) - detected, no marker needed - or when it
    manages its own transactions (C(BEGIN)/C(COMMIT) in the file). RV(migrations) says which
    and why. Such a migration is recorded as running before its first statement, so a crash
    half-way leaves a failed record, never a silent gap."
  - B(Lock.) apply, down, resolve and check mode take the session advisory lock
    (C(pg_advisory_lock) on O(lock_key)) before reading the history, so two runs never
    interleave; the second waits up to O(lock_timeout_s) seconds, then fails naming the
    session that holds it. The default key, 72707369, is the one C(prisma migrate) takes, so
    opsbook and Prisma exclude each other too.
  - B(Drift) - an applied migration whose file changed since (checksum mismatch) - is an
    error that stops apply and down before anything runs; a changed migration is never run
    again. (C(prisma migrate deploy) itself does not check this; opsbook does, for both
    layouts, with Prisma's line-ending tolerant comparison for the prisma layout.) An applied
    migration missing from disk is reported (RV(missing)) and warned about, and does not block.
  - B(Failures.) A failed migration leaves a record (numbered - status C(failed) with the
    error; prisma - C(finished_at) NULL and C(logs) holding the error, as Prisma writes it)
    and blocks every later apply or down until it is resolved with O(action=resolve) -
    O(resolve_as=rolled_back) after the database was put back as before the migration (it
    will run again), O(resolve_as=applied) after it was completed by hand. A transactional
    migration's changes are rolled back by PostgreSQL; a non-transactional one may be half
    applied (RV(failed_migrations) says how many statements ran).
  - B(Check mode) (apply and down) runs the pending migrations, in order, inside one
    transaction that is rolled back, and reports the first error apply would hit
    (RV(checked)). Nothing is recorded. Migrations that cannot run in a transaction are
    reported as not checkable and skipped. Check mode takes the same table locks as a real
    run for as long as it runs. O(action=status) never changes anything and takes no lock.
  - Every migration starts from the same session state (C(RESET ALL), then the module's own
    settings), so a migration behaves the same whether it runs alone or after others.
version_added: "0.2.0"
author:
  - opsbook maintainers (@opsbook)
# psycopg and the connection options
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
options:
  action:
    description:
      - C(status) reports applied, pending, drift, missing and failed migrations; read-only,
        no lock.
      - C(apply) applies the pending migrations in order (up to O(target) when given).
      - C(down) reverts the applied migrations above O(target), newest first, each with its
        C(.down.sql) (numbered layout only). Every needed down file must exist, else nothing
        is reverted.
      - C(resolve) records O(resolve_as) for O(migration) without running any SQL.
    type: str
    choices: [status, apply, down, resolve]
    default: status
  migrations_dir:
    description:
      - The directory holding the migrations, on the host that runs the module. For Prisma,
        the C(prisma/migrations) directory.
    type: path
    required: true
  layout:
    description:
      - C(numbered) (C(migration-NNN-description.sql) files), C(prisma)
        (C(<timestamp>_<name>/migration.sql) folders) or C(auto) (detected from the
        directory; a directory with both, or neither, is an error).
    type: str
    choices: [auto, numbered, prisma]
    default: auto
  target:
    description:
      - With O(action=apply), apply pending migrations up to and including this one (a
        version number for the numbered layout, a folder name for prisma); all when omitted.
      - With O(action=down), the version to go back to (it stays applied; C(0) reverts every
        migration). Required for down.
    type: str
  migration:
    description:
      - With O(action=resolve), the migration to resolve - the numbered layout accepts its
        version (C(3), C(003)) or its file name; prisma, its folder name. Required for resolve.
    type: str
  resolve_as:
    description:
      - With O(action=resolve) - C(rolled_back) marks a failed migration as rolled back (it is
        pending again and runs on the next apply; like C(prisma migrate resolve
        --rolled-back)); C(applied) records a failed or not yet applied migration as applied
        without running it (after finishing it by hand, or to baseline an existing database;
        like C(prisma migrate resolve --applied)). Required for resolve.
    type: str
    choices: [applied, rolled_back]
  lock_timeout_s:
    description:
      - Seconds to wait for the advisory lock held by another run; C(0) fails at once when
        it is held.
    type: int
    default: 60
  lock_key:
    description:
      - The advisory lock key (bigint). The default is Prisma Migrate's, so opsbook and
        C(prisma migrate) never run at the same time on a database.
    type: int
    default: 72707369
  statement_lock_timeout_s:
    description:
      - PostgreSQL C(lock_timeout) for the migrations' statements, in seconds; C(0) means no
        limit. A limit (e.g. 5) makes an C(ALTER TABLE) stuck behind a long transaction fail
        instead of queueing every query of the application behind it.
    type: int
    default: 0
  statement_timeout_s:
    description:
      - PostgreSQL C(statement_timeout) for the migrations' statements, in seconds; C(0)
        means no limit.
    type: int
    default: 0
  allow_out_of_order:
    description:
      - Numbered layout - apply a pending migration whose version is lower than the highest
        applied one (e.g. merged late from a branch). Refused by default, before anything
        runs. The prisma layout always applies such migrations, as Prisma does.
    type: bool
    default: false
  prisma_schema:
    description:
      - The schema holding C(_prisma_migrations) and the C(search_path) the Prisma migrations
        run with (Prisma's C(?schema=)). Default - the DSN's C(?schema=) parameter, else
        C(public).
    type: str
  applied_by:
    description:
      - Who applies, recorded in C(opsbook.schema_migrations.applied_by) (numbered layout);
        the database user (C(current_user)) when omitted.
    type: str
attributes:
  check_mode:
    support: full
    description:
      - apply and down run the migrations inside one transaction that is rolled back and
        report the first error (RV(checked)); non-transactional migrations are reported as
        not checkable. resolve reports what it would record. Nothing is recorded.
  diff_mode:
    support: none
    description: The result lists what was applied or reverted; there is no diff.
  platform:
    support: full
    platforms: posix
    description: Runs where the migrations directory is and the database is reachable (group
      C(dbadmin) in opsbook).
notes:
  - Prisma-only URI parameters of O(dsn) (C(schema), C(connection_limit), C(pool_timeout),
    C(pgbouncer), ...) are removed before connecting; C(?schema=) sets the default of
    O(prisma_schema).
  - The O(application_name) of the session is what RV(lock) reports as the holder of the lock
    to a run that waits.
  - Session advisory locks do not work through a PgBouncer in transaction pooling mode;
    connect directly (or through session pooling) to migrate.
  - "Prisma layout: on a database whose schema already holds tables but has no
    C(_prisma_migrations) table, apply refuses (Prisma's P3005) - baseline it first with
    O(action=resolve) O(resolve_as=applied) for the migrations already reflected in it."
  - "The numbered layout's table: C(opsbook.schema_migrations) (version, name, checksum,
    status running|applied|failed|rolled_back|reverted, transactional, started_at, applied_at,
    execution_ms, applied_by, error, resolved_at, reverted_at, down_checksum), created on
    first apply."
seealso:
  - name: Prisma Migrate - resolving migration issues in production
    description: What C(prisma migrate resolve) does, mirrored by O(action=resolve).
    link: https://www.prisma.io/docs/orm/prisma-migrate/workflows/patching-and-hotfixing
  - name: Explicit locking - advisory locks
    description: PostgreSQL documentation of advisory locks.
    link: https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS
"""

EXAMPLES = r"""
- name: Show applied, pending and drifted migrations (read-only)
  pg_migrate:
    dsn: "{{ database_url }}"
    migrations_dir: /srv/app/current/db/migrations
  register: migrations

- name: Apply the pending migrations (each in its own transaction, under the advisory lock)
  pg_migrate:
    dsn: "{{ database_url }}"
    migrations_dir: /srv/app/current/db/migrations
    action: apply
    statement_lock_timeout_s: 5
    applied_by: "{{ lookup('ansible.builtin.env', 'OPSBOOK_OPERATOR') }}"
  no_log: true
  register: migrated

- name: Dry run - apply inside a transaction and roll back, report the first error
  pg_migrate:
    dsn: "{{ database_url }}"
    migrations_dir: /srv/app/current/prisma/migrations
    action: apply
  check_mode: true

- name: Revert the numbered migrations above version 3
  pg_migrate:
    dsn: "{{ database_url }}"
    migrations_dir: /srv/app/current/db/migrations
    action: down
    target: "3"

- name: A failed Prisma migration was undone by hand - let it run again on the next apply
  pg_migrate:
    dsn: "{{ database_url }}"
    migrations_dir: /srv/app/current/prisma/migrations
    action: resolve
    migration: 20240601120000_add_user_role
    resolve_as: rolled_back
"""

RETURN = r"""
layout:
  description: The layout used (detected or given).
  returned: always
  type: str
  sample: numbered
migrations_dir:
  description: The migrations directory, absolute.
  returned: always
  type: str
  sample: /srv/app/current/db/migrations
database:
  description: The database (C(current_database())).
  returned: when connected
  type: str
  sample: app
action:
  description: The action run.
  returned: always
  type: str
  sample: apply
current_version:
  description: The newest applied migration after the run (numbered - its version number;
    prisma - its folder name); null when none is applied. In check mode, the version before.
  returned: when connected
  type: raw
  sample: 4
previous_version:
  description: The newest applied migration before the run.
  returned: when connected
  type: raw
  sample: 2
applied:
  description: The migrations applied by this run, in order, with their timings (empty in
    check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 3, name: migration-003-add-task-labels, execution_ms: 41, transactional: true}
reverted:
  description: The migrations reverted by O(action=down), newest first, with their timings.
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 4, name: migration-004-index-tasks-title, execution_ms: 12, transactional: false}
checked:
  description: Check mode - each migration that apply (or down) would run, in order, with
    C(result) C(ok), C(error) (with C(error)), C(not_checkable) (outside a transaction) or
    C(not_checked) (after an error).
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 5, name: migration-005-bad, result: error, transactional: true,
       error: 'relation "nope" does not exist (42P01) at line 2', execution_ms: 3}
pending:
  description: The migrations not applied after the run (in check mode, those apply would
    run), in order, with whether each runs in a transaction and why not.
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 5, name: migration-005-index-users-email, transactional: false,
       transaction_note: "CREATE INDEX CONCURRENTLY (line 2) cannot run inside a transaction block"}
drift:
  description: Applied migrations whose file changed since (an error for apply and down;
    nothing runs).
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 2, name: migration-002-create-comments, recorded_checksum: 3a7b...,
       file_checksum: 9c1d...}
missing:
  description: Applied migrations with no file in O(migrations_dir) (reported, not blocking).
  returned: always
  type: list
  elements: dict
  sample: [{version: 7, name: migration-007-hotfix, applied_at: "2024-05-01T12:00:00+00:00"}]
failed_migrations:
  description: Failed (or interrupted) migrations blocking apply and down until resolved.
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 5, name: migration-005-bad, started_at: "2024-05-01T12:00:00+00:00",
       error: 'relation "nope" does not exist (42P01) at line 2', transactional: true}
out_of_order:
  description: Numbered layout - pending migrations whose version is below the newest applied
    one (refused unless O(allow_out_of_order)).
  returned: always
  type: list
  elements: dict
  sample: []
migrations:
  description: Every migration on disk or recorded, in order, with its state (C(applied),
    C(pending), C(failed), C(running) - a non-transactional migration in progress or
    interrupted, C(drift), C(missing), C(rolled_back) - pending again, C(reverted) - pending
    again), checksum, recorded timings and transaction mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {version: 1, name: migration-001-add-user-roles, state: applied, checksum: 5e88...,
       applied_at: "2024-05-01T12:00:00+00:00", execution_ms: 12, applied_by: alice,
       transactional: true, has_down: true}
resolved:
  description: With O(action=resolve), what was recorded.
  returned: with action=resolve
  type: dict
  sample: {migration: 20240601120000_add_user_role, as: rolled_back, rows: 1}
lock:
  description: The advisory lock - key, milliseconds waited for it, and (status, or a lock
    timeout) the session holding it.
  returned: always
  type: dict
  sample: {key: 72707369, waited_ms: 0, holder: null}
problems:
  description: What blocks apply and down (failed migrations, drift, out-of-order versions),
    one line each.
  returned: always
  type: list
  elements: str
  sample: []
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: "applied 2 migrations to app (numbered): 3, 4 in 0.1 s; current version 4"
"""

import hashlib
import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    PgConnectError,
    close_quietly,
    connect_params,
    pg_connection_argument_spec,
    pg_module,
    safe_error,
    validate_connection_params,
    watch_the_client,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_proc import (
    Interrupted,
    signals_held,
    stop_signals,
    watch_ansible,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_sql import (
    SqlParseError,
    Statement,
    line_at,
    split_sql,
)

PRISMA_LOCK_KEY = 72707369
NUMBERED = "numbered"
PRISMA = "prisma"
TRACKING_SCHEMA = "opsbook"
TRACKING_TABLE = "schema_migrations"
PRISMA_TABLE = "_prisma_migrations"
PRISMA_SCRIPT = "migration.sql"
NO_TRANSACTION_MARKER = "-- opsbook: no-transaction"
MAX_ERROR_CHARS = 4000

NUMBERED_RE = re.compile(
    r"^migration-(?P<version>\d+)-(?P<description>[A-Za-z0-9][A-Za-z0-9_.\-]*?)(?P<down>\.down)?\.sql$"
)
_MARKER_RE = re.compile(r"^--\s*opsbook\s*:\s*no-transaction\s*$", re.IGNORECASE)

# Prisma URI parameters that libpq rejects ("invalid URI query parameter").
PRISMA_ONLY_PARAMS = frozenset(
    {
        "schema",
        "connection_limit",
        "pool_timeout",
        "pgbouncer",
        "statement_cache_size",
        "socket_timeout",
        "sslaccept",
        "sslidentity",
        "max_connection_lifetime",
        "max_idle_connection_lifetime",
    }
)
# Tables Prisma ignores when it decides whether a schema is empty (P3005).
PRISMA_IGNORED_TABLES = frozenset({"spatial_ref_sys"})

# Statements PostgreSQL refuses (or, for ADD VALUE, restricts) inside a transaction block.
# Matched against a statement's skeleton (comments removed, whitespace collapsed, the contents
# of literals and quoted identifiers removed).
_NON_TRANSACTIONAL = [
    (re.compile(r"^CREATE (UNIQUE )?INDEX CONCURRENTLY\b", re.I), "CREATE INDEX CONCURRENTLY"),
    (re.compile(r"^DROP INDEX CONCURRENTLY\b", re.I), "DROP INDEX CONCURRENTLY"),
    (re.compile(r"^REINDEX\b.*\bCONCURRENTLY\b", re.I), "REINDEX CONCURRENTLY"),
    (re.compile(r"^REINDEX (\(.*\) )?(DATABASE|SYSTEM)\b", re.I), "REINDEX DATABASE/SYSTEM"),
    (
        re.compile(r"^ALTER TABLE\b.*\bDETACH PARTITION\b.*\bCONCURRENTLY\b", re.I),
        "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY",
    ),
    (re.compile(r"^ALTER TYPE\b.*\bADD VALUE\b", re.I), "ALTER TYPE ... ADD VALUE"),
    (re.compile(r"^VACUUM\b", re.I), "VACUUM"),
    (re.compile(r"^(CREATE|DROP) DATABASE\b", re.I), "CREATE/DROP DATABASE"),
    (
        re.compile(r"^ALTER DATABASE\b.*\bSET TABLESPACE\b", re.I),
        "ALTER DATABASE ... SET TABLESPACE",
    ),
    (re.compile(r"^(CREATE|DROP) TABLESPACE\b", re.I), "CREATE/DROP TABLESPACE"),
    (re.compile(r"^ALTER SYSTEM\b", re.I), "ALTER SYSTEM"),
    (re.compile(r"^(CREATE|DROP) SUBSCRIPTION\b", re.I), "CREATE/DROP SUBSCRIPTION"),
]
_TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|START TRANSACTION|COMMIT|END|ABORT|ROLLBACK(?! TO\b)|PREPARE TRANSACTION)\b", re.I
)


class MigrateError(Exception):
    """A failure with a message ready for the user (no secrets); extra goes into the result."""

    def __init__(self, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.extra = extra


# ------------------------------------------------------------------ SQL scripts


def header_lines(sql: str) -> list[str]:
    """The comment lines before the first statement (stripped)."""
    lines = []
    for raw in sql.splitlines():
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


def has_no_transaction_marker(sql: str) -> bool:
    """True when the header holds ``-- opsbook: no-transaction``."""
    return any(_MARKER_RE.match(line) for line in header_lines(sql))


def transaction_mode(sql: str, statements: list[Statement]) -> tuple[bool, str | None]:
    """(transactional, why not): the marker, a statement that needs it, or BEGIN/COMMIT."""
    if has_no_transaction_marker(sql):
        return False, f"marked `{NO_TRANSACTION_MARKER}`"
    for stmt in statements:
        for regex, what in _NON_TRANSACTIONAL:
            if regex.match(stmt.skeleton):
                return False, (
                    f"{what} (line {stmt.line}) cannot run inside a transaction block"
                    if what != "ALTER TYPE ... ADD VALUE"
                    else f"{what} (line {stmt.line}): the new value is unusable until committed"
                )
    for stmt in statements:
        match = _TRANSACTION_CONTROL.match(stmt.skeleton)
        if match:
            return False, (
                f"the file manages its own transactions ({match.group(1).upper()} at line "
                f"{stmt.line})"
            )
    return True, None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _old_prisma_hex(digest: bytes) -> str:
    """Prisma's checksums before prisma-engines#1887: bytes formatted without zero padding."""
    return "".join(f"{byte:x}" for byte in digest)


def prisma_checksum_matches(script: bytes, checksum: str) -> bool:
    """Prisma's script_matches_checksum: as is, CRLF -> LF, LF -> CRLF; old unpadded format."""
    variants = (script, script.replace(b"\r\n", b"\n"), script.replace(b"\n", b"\r\n"))
    for variant in variants:
        digest = hashlib.sha256(variant).digest()
        rendered = digest.hex() if not checksum or len(checksum) == 64 else _old_prisma_hex(digest)
        if rendered == checksum:
            return True
    return False


# ------------------------------------------------------------------ migrations on disk


@dataclass
class Script:
    """One SQL file: bytes (for the checksum), text, statements and transaction mode."""

    path: Path
    data: bytes
    text: str
    statements: list[Statement]
    transactional: bool
    transaction_note: str | None

    @property
    def checksum(self) -> str:
        return sha256_hex(self.data)

    @property
    def label(self) -> str:
        """The file name; for Prisma's migration.sql, <folder>/migration.sql."""
        if self.path.name == PRISMA_SCRIPT:
            return f"{self.path.parent.name}/{self.path.name}"
        return self.path.name


def load_script(path: Path) -> Script:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MigrateError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrateError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    text = text.lstrip("\ufeff")
    try:
        statements = split_sql(text)
    except SqlParseError as exc:
        raise MigrateError(f"{path}: {exc}") from None
    transactional, note = transaction_mode(text, statements)
    return Script(path, data, text, statements, transactional, note)


@dataclass
class Migration:
    """A migration on disk: key (numbered - int version; prisma - folder name), up and down."""

    key: int | str
    name: str
    up: Script
    down: Script | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.key,
            "name": self.name,
            "transactional": self.up.transactional,
            "transaction_note": self.up.transaction_note,
        }


def scan_numbered(directory: Path) -> tuple[list[Migration], list[str]]:
    """migration-NNN-description.sql (+ .down.sql), ordered by NNN; (migrations, warnings)."""
    ups: dict[int, Path] = {}
    downs: dict[int, Path] = {}
    warnings: list[str] = []
    errors: list[str] = []
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        match = NUMBERED_RE.match(path.name)
        if not match:
            if path.name.lower().startswith("migration") and path.suffix == ".sql":
                warnings.append(
                    f"{path.name} is ignored: a migration is named migration-NNN-description.sql"
                )
            continue
        version = int(match.group("version"))
        bucket = downs if match.group("down") else ups
        if version in bucket:
            errors.append(
                f"version {version} is used twice: {bucket[version].name} and {path.name}"
            )
            continue
        bucket[version] = path
    for version, path in downs.items():
        up = ups.get(version)
        if up is None:
            errors.append(f"{path.name} has no up migration (migration-NNN-....sql)")
        elif path.name != up.name[: -len(".sql")] + ".down.sql":
            errors.append(f"{path.name} does not match its up migration {up.name}")
    if errors:
        raise MigrateError(f"invalid migrations in {directory}: " + "; ".join(errors))
    migrations = []
    for version in sorted(ups):
        path = ups[version]
        down = load_script(downs[version]) if version in downs else None
        migrations.append(Migration(version, path.name[: -len(".sql")], load_script(path), down))
    return migrations, warnings


def scan_prisma(directory: Path) -> tuple[list[Migration], list[str]]:
    """<name>/migration.sql folders, ordered by folder name as Prisma orders them."""
    migrations = []
    errors = []
    for path in sorted((p for p in directory.iterdir() if p.is_dir()), key=lambda p: p.name):
        script = path / PRISMA_SCRIPT
        if not script.is_file():
            errors.append(f"{path.name}/ has no {PRISMA_SCRIPT}")
            continue
        if len(path.name.encode()) > 255:
            errors.append(f"{path.name}: a migration name is at most 255 bytes")
            continue
        migrations.append(Migration(path.name, path.name, load_script(script)))
    if errors:
        raise MigrateError(f"invalid Prisma migrations in {directory}: " + "; ".join(errors))
    return migrations, []


def detect_layout(directory: Path) -> str:
    """numbered or prisma from the directory's content; MigrateError when unclear."""
    numbered = any(NUMBERED_RE.match(p.name) for p in directory.iterdir() if p.is_file())
    prisma = (directory / "migration_lock.toml").is_file() or any(
        (p / PRISMA_SCRIPT).is_file() for p in directory.iterdir() if p.is_dir()
    )
    if numbered and prisma:
        raise MigrateError(
            f"{directory} holds both migration-NNN-*.sql files and Prisma migration folders: "
            "set layout to numbered or prisma"
        )
    if not (numbered or prisma):
        raise MigrateError(
            f"no migrations found in {directory}: expected migration-NNN-description.sql files "
            "or Prisma <timestamp>_<name>/migration.sql folders (set layout when the directory "
            "is empty on purpose)"
        )
    return NUMBERED if numbered else PRISMA


def load_migrations(directory: Path, layout: str) -> tuple[str, list[Migration], list[str]]:
    if not directory.is_dir():
        raise MigrateError(f"migrations_dir {directory} is not a directory")
    if layout == "auto":
        layout = detect_layout(directory)
    scan = scan_numbered if layout == NUMBERED else scan_prisma
    migrations, warnings = scan(directory)
    return layout, migrations, warnings


# ------------------------------------------------------------------ history in the database


@dataclass
class Record:
    """What the database records about one migration (the effective row for Prisma)."""

    key: int | str
    name: str
    checksum: str
    status: str  # applied | failed | running | rolled_back | reverted
    started_at: datetime | None = None
    applied_at: datetime | None = None
    execution_ms: int | None = None
    applied_by: str | None = None
    error: str | None = None
    transactional: bool | None = None
    ids: list[str] = field(default_factory=list)  # prisma: the failed rows' ids

    @property
    def active(self) -> bool:
        return self.status in ("applied", "failed", "running")

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.key,
            "name": self.name,
            "status": self.status,
            "checksum": self.checksum,
            "started_at": iso(self.started_at),
            "applied_at": iso(self.applied_at),
            "execution_ms": self.execution_ms,
            "applied_by": self.applied_by,
            "error": self.error,
        }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def prisma_records(rows: Iterable[dict[str, Any]]) -> dict[str, Record]:
    """The effective record per migration name from _prisma_migrations rows.

    Rows with rolled_back_at set are ignored for everything but the audit trail, as Prisma
    does; a name whose every row is rolled back is reported rolled_back (pending again).
    """
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["migration_name"], []).append(row)
    records = {}
    for name, named in by_name.items():
        named.sort(key=lambda r: r["started_at"] or _EPOCH)
        active = [r for r in named if r["rolled_back_at"] is None]
        failed = [r for r in active if r["finished_at"] is None]
        if failed:
            row = failed[-1]
            status = "failed"
        elif active:
            row = active[-1]
            status = "applied"
        else:
            row = named[-1]
            status = "rolled_back"
        execution_ms = None
        if row["finished_at"] is not None and row["started_at"] is not None:
            execution_ms = int((row["finished_at"] - row["started_at"]).total_seconds() * 1000)
        records[name] = Record(
            key=name,
            name=name,
            checksum=row["checksum"],
            status=status,
            started_at=row["started_at"],
            applied_at=row["finished_at"] if status == "applied" else None,
            execution_ms=execution_ms if status == "applied" else None,
            error=row["logs"] if status == "failed" else None,
            ids=[r["id"] for r in failed],
        )
    return records


# ------------------------------------------------------------------ analysis (pure)


@dataclass
class Analysis:
    """Disk against database: what is applied, pending, drifted, missing, failed."""

    layout: str
    migrations: list[Migration]
    records: dict[Any, Record]
    applied: list[Migration] = field(default_factory=list)
    pending: list[Migration] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    missing: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    out_of_order: list[Migration] = field(default_factory=list)

    @property
    def current(self) -> int | str | None:
        keys = [r.key for r in self.records.values() if r.status == "applied"]
        return max(keys) if keys else None  # type: ignore[type-var]

    def problems(self, allow_out_of_order: bool = False) -> list[str]:
        lines = []
        for record in self.failed:
            what = "was interrupted" if record.status == "running" else "failed"
            error = f": {first_line(record.error)}" if record.error else ""
            lines.append(
                f"migration {record.name} {what} (started {iso(record.started_at)}){error}; "
                "resolve it (action=resolve, resolve_as=rolled_back or applied) before "
                "anything else runs"
            )
        for item in self.drift:
            lines.append(
                f"migration {item['name']} changed after it was applied (recorded checksum "
                f"{item['recorded_checksum'][:12]}..., file {item['file_checksum'][:12]}...): "
                "an applied migration is never run again - restore the file as applied and add "
                "a new migration for the change"
            )
        if self.out_of_order and not allow_out_of_order:
            names = ", ".join(m.name for m in self.out_of_order)
            lines.append(
                f"pending migrations older than the current version {fmt_version(self.current)}: "
                f"{names} "
                "(set allow_out_of_order to apply them)"
            )
        return lines


def fmt_version(value: int | str | None) -> str:
    return "none" if value is None else str(value)


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def checksum_matches(layout: str, script: Script, recorded: str) -> bool:
    if layout == PRISMA:
        return prisma_checksum_matches(script.data, recorded)
    return script.checksum == recorded


def analyze(layout: str, migrations: list[Migration], records: dict[Any, Record]) -> Analysis:
    result = Analysis(layout, migrations, records)
    on_disk = {m.key for m in migrations}
    for migration in migrations:
        record = records.get(migration.key)
        if record is None or record.status in ("rolled_back", "reverted"):
            result.pending.append(migration)
            continue
        if record.status == "applied":
            result.applied.append(migration)
            if not checksum_matches(layout, migration.up, record.checksum):
                result.drift.append(
                    {
                        "version": migration.key,
                        "name": migration.name,
                        "recorded_checksum": record.checksum,
                        "file_checksum": migration.up.checksum,
                        "applied_at": iso(record.applied_at),
                    }
                )
    for key, record in records.items():
        if record.status in ("failed", "running"):
            result.failed.append(record)
        elif record.status == "applied" and key not in on_disk:
            result.missing.append(record)
    result.failed.sort(key=lambda r: r.key)
    result.missing.sort(key=lambda r: r.key)
    current = result.current
    if layout == NUMBERED and current is not None:
        result.out_of_order = [m for m in result.pending if m.key < current]  # type: ignore[operator]
    return result


def state_of(analysis: Analysis, migration: Migration | None, record: Record | None) -> str:
    if migration is None:
        return (
            "missing"
            if record and record.status == "applied"
            else (record.status if record else "")
        )
    if record is None:
        return "pending"
    if record.status == "running":
        return "running"
    if record.status == "applied" and any(d["version"] == migration.key for d in analysis.drift):
        return "drift"
    return record.status


def migration_table(analysis: Analysis) -> list[dict[str, Any]]:
    """Every migration on disk or recorded, in order, with its state."""
    by_key: dict[Any, Migration] = {m.key: m for m in analysis.migrations}
    keys = sorted(set(by_key) | set(analysis.records))
    rows = []
    for key in keys:
        migration = by_key.get(key)
        record = analysis.records.get(key)
        row: dict[str, Any] = {
            "version": key,
            "name": migration.name if migration else record.name if record else str(key),
            "state": state_of(analysis, migration, record),
            "checksum": migration.up.checksum if migration else None,
            "transactional": migration.up.transactional if migration else None,
            "transaction_note": migration.up.transaction_note if migration else None,
            "has_down": bool(migration and migration.down),
            "recorded_checksum": record.checksum if record else None,
            "started_at": iso(record.started_at) if record else None,
            "applied_at": iso(record.applied_at) if record else None,
            "execution_ms": record.execution_ms if record else None,
            "applied_by": record.applied_by if record else None,
            "error": record.error if record and record.status in ("failed", "running") else None,
        }
        rows.append(row)
    return rows


def select_pending(
    analysis: Analysis, target: int | str | None, allow_out_of_order: bool
) -> list[Migration]:
    pending = list(analysis.pending)
    if analysis.layout == NUMBERED and not allow_out_of_order:
        pending = [m for m in pending if m not in analysis.out_of_order]
    if target is not None:
        pending = [m for m in pending if m.key <= target]  # type: ignore[operator]
    return pending


def select_down(analysis: Analysis, target: int) -> list[tuple[Migration | None, Record]]:
    """Applied migrations above target, newest first (the record is what is applied)."""
    by_key = {m.key: m for m in analysis.migrations}
    applied = [r for r in analysis.records.values() if r.status == "applied" and r.key > target]  # type: ignore[operator]
    applied.sort(key=lambda r: r.key, reverse=True)
    return [(by_key.get(r.key), r) for r in applied]


def parse_target(layout: str, raw: str | None, what: str) -> int | str | None:
    if raw is None or str(raw).strip() == "":
        return None
    value = str(raw).strip()
    if layout == PRISMA:
        return value
    match = NUMBERED_RE.match(value if value.endswith(".sql") else value + ".sql")
    if match:
        return int(match.group("version"))
    if value.isdigit():
        return int(value)
    raise MigrateError(
        f"{what} {value!r} is not a version: give the number (3 or 003) or the migration's name"
    )


def strip_prisma_params(dsn: str) -> tuple[str, str | None]:
    """Remove Prisma-only URI parameters libpq rejects; return (dsn, ?schema= value)."""
    if not dsn.startswith(("postgres://", "postgresql://")) or "?" not in dsn:
        return dsn, None
    head, _unused, rest = dsn.partition("?")
    query, hash_sign, fragment = rest.partition("#")
    kept = []
    schema = None
    for item in query.split("&"):
        key, _unused, value = item.partition("=")
        name = unquote(key)
        if name in PRISMA_ONLY_PARAMS:
            if name == "schema":
                schema = unquote(value)
            continue
        if item:
            kept.append(item)
    out = head + ("?" + "&".join(kept) if kept else "")
    return out + (hash_sign + fragment if hash_sign else ""), schema


# ------------------------------------------------------------------ database side


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


NUMBERED_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {TRACKING_SCHEMA};
CREATE TABLE IF NOT EXISTS {TRACKING_SCHEMA}.{TRACKING_TABLE} (
    version        integer      PRIMARY KEY,
    name           text         NOT NULL,
    checksum       varchar(64)  NOT NULL,
    status         text         NOT NULL
                   CHECK (status IN ('running', 'applied', 'failed', 'rolled_back', 'reverted')),
    transactional  boolean      NOT NULL DEFAULT true,
    started_at     timestamptz  NOT NULL DEFAULT now(),
    applied_at     timestamptz,
    execution_ms   integer,
    applied_by     text         NOT NULL DEFAULT current_user,
    error          text,
    resolved_at    timestamptz,
    reverted_at    timestamptz,
    down_checksum  varchar(64)
);
COMMENT ON TABLE {TRACKING_SCHEMA}.{TRACKING_TABLE} IS
    'Schema migrations applied by opsbook pg_migrate (numbered layout): one row per version';
"""


def prisma_ddl(schema: str) -> str:
    """Prisma Migrate's CREATE TABLE _prisma_migrations (PostgreSQL flavour), schema-qualified."""
    return f"""CREATE TABLE {quote_ident(schema)}._prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def describe_db_error(
    exc: BaseException, script: str | None = None, first_line: int = 1, line: int | None = None
) -> str:
    """'message (SQLSTATE) at line N; detail; hint' for a psycopg error.

    The line comes from the error's position in ``script`` (which starts at line
    ``first_line`` of the file), else ``line`` when given.
    """
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag else None
    if not primary:
        return " ".join(str(exc).split()) or exc.__class__.__name__
    parts = [primary]
    sqlstate = getattr(diag, "sqlstate", None)
    if sqlstate:
        parts[0] += f" ({sqlstate})"
    position = getattr(diag, "statement_position", None)
    if script is not None and position and str(position).isdigit():
        parts[0] += f" at line {first_line - 1 + line_at(script, int(position) - 1)}"
    elif line:
        parts[0] += f" at line {line}"
    for extra in (getattr(diag, "message_detail", None), getattr(diag, "message_hint", None)):
        if extra:
            parts.append(" ".join(extra.split()))
    return "; ".join(parts)


class MigrationFailed(Exception):
    """Running one script failed; ``error`` is the user-facing description."""

    def __init__(self, error: str, statements_done: int, statements_total: int) -> None:
        super().__init__(error)
        self.error = error
        self.statements_done = statements_done
        self.statements_total = statements_total


class Migrator:
    """One run of the module against one database."""

    def __init__(
        self, module: Any, dsn: str, sleep: Callable[[float], None] = time.sleep
    ):
        self.module = module
        self.params = module.params
        self.dsn = dsn
        self.conn: Any = None
        self.sleep = sleep
        self.layout = ""
        self.schema = "public"
        self.lock = {"key": self.params["lock_key"], "waited_ms": 0, "holder": None}
        self.locked = False
        self.committing = False  # at a migration's COMMIT: a lost connection leaves it unknown
        self.warnings: list[str] = []
        self.database: str | None = None
        self.user = ""
        self.applied_by = ""

    # -------------------------------------------------------------- plumbing

    def safe(self, exc: BaseException) -> str:
        return safe_error(exc, self.params["dsn"])

    def connect(self) -> None:
        p = self.params
        try:
            self.conn = connect_params(p, self.dsn, autocommit=True)
        except PgConnectError as exc:
            raise MigrateError(f"cannot connect to the database: {exc}") from None
        row = self.query_one("SELECT current_database(), current_user")
        self.database = row[0]
        self.user = row[1]
        self.applied_by = p["applied_by"] or row[1]

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def query_one(self, sql: str, params: Any = None) -> tuple[Any, ...]:
        rows = self.query(sql, params)
        return rows[0] if rows else ()

    def query_dicts(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            names = [c.name for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def reset_session(self) -> None:
        """Every migration starts from the same session state (a script may SET things)."""
        p = self.params
        self.conn.execute("RESET ALL")
        watch_the_client(self.conn)  # RESET ALL reset it: a killed run must not hold locks
        self.conn.execute(f"SET lock_timeout = '{int(p['statement_lock_timeout_s'])}s'")
        self.conn.execute(f"SET statement_timeout = '{int(p['statement_timeout_s'])}s'")
        if self.layout == PRISMA:
            self.conn.execute(f"SET search_path = {quote_ident(self.schema)}")
        elif self.user == TRACKING_SCHEMA:
            # "$user" in the search_path would resolve to the tracking schema: drop it, so
            # that migrations create their objects where they would without opsbook.
            path = self.query_one("SELECT current_setting('search_path')")[0]
            kept = [e.strip() for e in path.split(",") if e.strip() not in ('"$user"', "$user")]
            self.conn.execute(f"SET search_path = {', '.join(kept) or 'public'}")

    # -------------------------------------------------------------- lock

    def lock_holder(self) -> dict[str, Any] | None:
        key = int(self.params["lock_key"])
        classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
        rows = self.query_dicts(
            """
            SELECT a.pid, a.application_name, a.usename AS user, a.client_addr::text AS client,
                   a.backend_start, a.state, a.query_start
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                      SELECT oid FROM pg_database WHERE datname = current_database())
              AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
              AND l.pid <> pg_backend_pid()
            """,
            (classid, objid),
        )
        if not rows:
            return None
        row = rows[0]
        for name in ("backend_start", "query_start"):
            row[name] = iso(row[name])
        return row

    def acquire_lock(self) -> None:
        key = int(self.params["lock_key"])
        timeout = int(self.params["lock_timeout_s"])
        started = time.monotonic()
        try:
            if timeout <= 0:
                got = self.query_one("SELECT pg_try_advisory_lock(%s)", (key,))[0]
                if not got:
                    raise _LockBusy()
            else:
                self.conn.execute(f"SET lock_timeout = '{timeout}s'")
                self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                self.conn.execute("RESET lock_timeout")
        except Exception as exc:
            busy = isinstance(exc, _LockBusy) or getattr(exc, "sqlstate", None) == "55P03"
            if not busy:
                raise
            self.lock["waited_ms"] = int((time.monotonic() - started) * 1000)
            holder = self.lock_holder()
            self.lock["holder"] = holder
            who = (
                f"session pid {holder['pid']} "
                f"({holder['application_name'] or 'no application_name'}, "
                f"user {holder['user']}, connected {holder['backend_start']})"
                if holder
                else "another session"
            )
            raise MigrateError(
                f"another migration run holds the advisory lock {key} on database "
                f"{self.database}: {who}; waited {timeout} s (lock_timeout_s). Nothing was run "
                "or recorded; retry when it has finished",
                lock=self.lock,
            ) from None
        self.lock["waited_ms"] = int((time.monotonic() - started) * 1000)
        self.locked = True

    def release_lock(self) -> None:
        if self.locked and self.conn is not None and not self.conn.closed:
            try:
                if self.conn.info.transaction_status != 0:  # not IDLE
                    self.conn.execute("ROLLBACK")
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (int(self.params["lock_key"]),))
            except Exception:
                pass  # closing the session releases it anyway
        self.locked = False

    # -------------------------------------------------------------- history

    def table_exists(self, schema: str, table: str) -> bool:
        row = self.query_one(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{quote_ident(schema)}.{table}",)
        )
        return bool(row and row[0])

    def ensure_table(self) -> None:
        if self.layout == NUMBERED:
            if not self.table_exists(TRACKING_SCHEMA, TRACKING_TABLE):
                self.conn.execute(NUMBERED_DDL)
        elif not self.table_exists(self.schema, PRISMA_TABLE):
            self.conn.execute(prisma_ddl(self.schema))

    def schema_tables(self) -> list[str]:
        rows = self.query(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'r' AND n.nspname = %s ORDER BY 1""",
            (self.schema,),
        )
        return [r[0] for r in rows if r[0] not in PRISMA_IGNORED_TABLES]

    def load_records(self) -> dict[Any, Record]:
        if self.layout == NUMBERED:
            if not self.table_exists(TRACKING_SCHEMA, TRACKING_TABLE):
                return {}
            rows = self.query_dicts(
                f"SELECT * FROM {TRACKING_SCHEMA}.{TRACKING_TABLE} ORDER BY version"
            )
            return {
                r["version"]: Record(
                    key=r["version"],
                    name=r["name"],
                    checksum=r["checksum"],
                    status=r["status"],
                    started_at=r["started_at"],
                    applied_at=r["applied_at"],
                    execution_ms=r["execution_ms"],
                    applied_by=r["applied_by"],
                    error=r["error"],
                    transactional=r["transactional"],
                )
                for r in rows
            }
        if not self.table_exists(self.schema, PRISMA_TABLE):
            return {}
        rows = self.query_dicts(
            "SELECT id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at,"
            f" applied_steps_count FROM {quote_ident(self.schema)}.{PRISMA_TABLE}"
            " ORDER BY started_at ASC"
        )
        return prisma_records(rows)

    @property
    def prisma_table(self) -> str:
        return f"{quote_ident(self.schema)}.{PRISMA_TABLE}"

    # -------------------------------------------------------------- running scripts

    def run_transactional(self, script: Script) -> None:
        """Run the whole script in the current transaction (one simple-protocol query)."""
        if not script.statements:
            return
        try:
            self.conn.execute(script.text)
        except Exception as exc:
            if not _is_db_error(exc):
                raise
            raise MigrationFailed(
                describe_db_error(exc, script.text), 0, len(script.statements)
            ) from None

    def run_statements(self, script: Script) -> None:
        """Run the script statement by statement in autocommit (non-transactional)."""
        total = len(script.statements)
        for done, stmt in enumerate(script.statements):
            try:
                self.conn.execute(stmt.text)
            except Exception as exc:
                if not _is_db_error(exc):
                    raise
                error = describe_db_error(exc, stmt.text, stmt.text_line, stmt.line)
                if self.conn.info.transaction_status != 0:
                    self.conn.execute("ROLLBACK")  # a BEGIN of the file's own is left aborted
                raise MigrationFailed(error, done, total) from None
        if self.conn.info.transaction_status != 0:
            self.conn.execute("ROLLBACK")
            raise MigrationFailed(
                "the file leaves a transaction open (BEGIN without COMMIT); it was rolled back",
                total,
                total,
            )

    # -------------------------------------------------------------- numbered records

    def numbered_upsert(self, migration: Migration, status: str, **values: Any) -> None:
        row = {
            "version": migration.key,
            "name": migration.name,
            "checksum": migration.up.checksum,
            "status": status,
            "transactional": migration.up.transactional,
            "started_at": values.get("started_at"),
            "applied_at": values.get("applied_at"),
            "execution_ms": values.get("execution_ms"),
            "applied_by": self.applied_by,
            "error": values.get("error"),
            "resolved_at": values.get("resolved_at"),
        }
        self.conn.execute(
            f"""
            INSERT INTO {TRACKING_SCHEMA}.{TRACKING_TABLE} AS t
                (version, name, checksum, status, transactional, started_at, applied_at,
                 execution_ms, applied_by, error, resolved_at, reverted_at, down_checksum)
            VALUES (%(version)s, %(name)s, %(checksum)s, %(status)s, %(transactional)s,
                    coalesce(%(started_at)s, now()), %(applied_at)s, %(execution_ms)s,
                    %(applied_by)s, %(error)s, %(resolved_at)s, NULL, NULL)
            ON CONFLICT (version) DO UPDATE SET
                name = EXCLUDED.name, checksum = EXCLUDED.checksum, status = EXCLUDED.status,
                transactional = EXCLUDED.transactional, started_at = EXCLUDED.started_at,
                applied_at = EXCLUDED.applied_at, execution_ms = EXCLUDED.execution_ms,
                applied_by = EXCLUDED.applied_by, error = EXCLUDED.error,
                resolved_at = EXCLUDED.resolved_at, reverted_at = NULL, down_checksum = NULL
            """,
            row,
        )

    # -------------------------------------------------------------- apply

    def apply_one(self, migration: Migration) -> dict[str, Any]:
        script = migration.up
        self.reset_session()
        started_at = utc_now()
        started = time.monotonic()
        prisma_id = str(uuid.uuid4())
        if script.transactional:
            self.conn.execute("BEGIN")
            try:
                self.run_transactional(script)
                ms = int((time.monotonic() - started) * 1000)
                self.record_success(migration, prisma_id, started_at, ms)
                self.committing = True
                self.conn.execute("COMMIT")
                self.committing = False
            except MigrationFailed as failure:
                self.conn.execute("ROLLBACK")
                self.record_failure(migration, prisma_id, started_at, failure, insert=True)
                raise
            except Exception as exc:  # COMMIT itself (deferred constraints) or the record
                if self.conn.info.transaction_status != 0:
                    self.conn.execute("ROLLBACK")
                if not _is_db_error(exc):
                    raise
                failure = MigrationFailed(describe_db_error(exc), 0, len(script.statements))
                self.record_failure(migration, prisma_id, started_at, failure, insert=True)
                raise failure from None
        else:
            self.record_running(migration, prisma_id, started_at)
            try:
                self.run_statements(script)
            except MigrationFailed as failure:
                self.record_failure(migration, prisma_id, started_at, failure, insert=False)
                raise
            ms = int((time.monotonic() - started) * 1000)
            self.record_success(migration, prisma_id, started_at, ms, insert=False)
        return {
            "version": migration.key,
            "name": migration.name,
            "execution_ms": int((time.monotonic() - started) * 1000),
            "transactional": script.transactional,
            "statements": len(script.statements),
        }

    def record_running(self, migration: Migration, prisma_id: str, started_at: datetime) -> None:
        if self.layout == NUMBERED:
            self.numbered_upsert(migration, "running", started_at=started_at)
        else:
            self.conn.execute(
                f"INSERT INTO {self.prisma_table} (id, checksum, started_at, migration_name)"
                " VALUES (%s, %s, %s, %s)",
                (prisma_id, migration.up.checksum, started_at, migration.name),
            )

    def record_success(
        self,
        migration: Migration,
        prisma_id: str,
        started_at: datetime,
        ms: int,
        insert: bool = True,
    ) -> None:
        finished = utc_now()
        if self.layout == NUMBERED:
            self.numbered_upsert(
                migration, "applied", started_at=started_at, applied_at=finished, execution_ms=ms
            )
            return
        if insert:  # the same row Prisma ends with: started, one step, finished
            self.conn.execute(
                f"INSERT INTO {self.prisma_table} (id, checksum, started_at, migration_name,"
                " applied_steps_count, finished_at) VALUES (%s, %s, %s, %s, 1, %s)",
                (prisma_id, migration.up.checksum, started_at, migration.name, finished),
            )
        else:
            self.conn.execute(
                f"UPDATE {self.prisma_table} SET applied_steps_count = applied_steps_count + 1,"
                " finished_at = %s WHERE id = %s",
                (finished, prisma_id),
            )

    def record_failure(
        self,
        migration: Migration,
        prisma_id: str,
        started_at: datetime,
        failure: MigrationFailed,
        insert: bool,
    ) -> None:
        error = failure.error
        if not migration.up.transactional:
            error += (
                f" [non-transactional: {failure.statements_done} of {failure.statements_total} "
                "statements ran and stay applied]"
            )
        error = error[:MAX_ERROR_CHARS]
        if self.layout == NUMBERED:
            self.numbered_upsert(migration, "failed", started_at=started_at, error=error)
            return
        logs = prisma_logs(migration.name, error)
        if insert:
            self.conn.execute(
                f"INSERT INTO {self.prisma_table} (id, checksum, started_at, migration_name, logs)"
                " VALUES (%s, %s, %s, %s, %s)",
                (prisma_id, migration.up.checksum, started_at, migration.name, logs),
            )
        else:
            self.conn.execute(
                f"UPDATE {self.prisma_table} SET logs = %s WHERE id = %s", (logs, prisma_id)
            )

    # -------------------------------------------------------------- down

    def down_one(self, migration: Migration, record: Record) -> dict[str, Any]:
        script = migration.down
        if script is None:
            raise AssertionError("script is not None")
        self.reset_session()
        started = time.monotonic()
        if script.transactional:
            self.conn.execute("BEGIN")
            try:
                self.run_transactional(script)
                self.mark_reverted(migration)
                self.committing = True
                self.conn.execute("COMMIT")
                self.committing = False
            except MigrationFailed:
                self.conn.execute("ROLLBACK")
                raise
            except Exception as exc:
                if self.conn.info.transaction_status != 0:
                    self.conn.execute("ROLLBACK")
                if not _is_db_error(exc):
                    raise
                raise MigrationFailed(describe_db_error(exc), 0, len(script.statements)) from None
        else:
            try:
                self.run_statements(script)
            except MigrationFailed as failure:
                error = (
                    f"down migration {script.label} failed: {failure.error} "
                    f"[non-transactional: {failure.statements_done} of "
                    f"{failure.statements_total} statements ran and stay applied]"
                )[:MAX_ERROR_CHARS]
                self.conn.execute(
                    f"UPDATE {TRACKING_SCHEMA}.{TRACKING_TABLE} SET status = 'failed', error = %s"
                    " WHERE version = %s",
                    (error, migration.key),
                )
                raise
            self.mark_reverted(migration)
        return {
            "version": migration.key,
            "name": migration.name,
            "execution_ms": int((time.monotonic() - started) * 1000),
            "transactional": script.transactional,
            "statements": len(script.statements),
        }

    def mark_reverted(self, migration: Migration) -> None:
        if migration.down is None:
            raise AssertionError("migration.down is not None")
        self.conn.execute(
            f"UPDATE {TRACKING_SCHEMA}.{TRACKING_TABLE} SET status = 'reverted',"
            " reverted_at = now(), down_checksum = %s, applied_by = %s WHERE version = %s",
            (migration.down.checksum, self.applied_by, migration.key),
        )

    # -------------------------------------------------------------- check mode

    def check(self, scripts: list[tuple[Migration, Script]]) -> list[dict[str, Any]]:
        """Run the scripts in one transaction, rolled back; stop at the first error."""
        results: list[dict[str, Any]] = []
        self.reset_session()
        self.conn.execute("BEGIN")
        failed = False
        try:
            for migration, script in scripts:
                item: dict[str, Any] = {
                    "version": migration.key,
                    "name": migration.name,
                    "file": script.label,
                    "transactional": script.transactional,
                }
                if failed:
                    item["result"] = "not_checked"
                    item["note"] = "an earlier migration would fail"
                elif not script.transactional:
                    item["result"] = "not_checkable"
                    item["note"] = (
                        f"runs outside a transaction ({script.transaction_note}); not run in check "
                        "mode, later migrations are checked without its effects"
                    )
                else:
                    started = time.monotonic()
                    self.reset_session()
                    self.conn.execute("SAVEPOINT opsbook_check")
                    try:
                        self.run_transactional(script)
                        item["result"] = "ok"
                    except MigrationFailed as failure:
                        self.conn.execute("ROLLBACK TO SAVEPOINT opsbook_check")
                        item["result"] = "error"
                        item["error"] = failure.error
                        failed = True
                    item["execution_ms"] = int((time.monotonic() - started) * 1000)
                results.append(item)
        finally:
            if self.conn.info.transaction_status != 0:
                self.conn.execute("ROLLBACK")
        return results


class _LockBusy(Exception):
    pass


def _is_db_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return (
        isinstance(exc, psycopg.Error)
        and getattr(exc, "diag", None) is not None
        and bool(getattr(exc.diag, "sqlstate", None))
    )


def prisma_logs(name: str, error: str) -> str:
    """The logs column of a failed migration, worded like Prisma's P3018 error."""
    return (
        "A migration failed to apply. New migrations cannot be applied before the error is "
        "recovered from. Read more about how to resolve migration issues in a production "
        "database: https://pris.ly/d/migrate-resolve\n\n"
        f"Migration name: {name}\n\nDatabase error:\n{error}\n\n(applied by opsbook pg_migrate)"
    )


# ------------------------------------------------------------------ the run


class Run:
    """What the module does for one action; builds the result."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.p = module.params
        dsn, dsn_schema = strip_prisma_params(self.p["dsn"])
        self.m = Migrator(module, dsn)
        self.m.schema = self.p["prisma_schema"] or dsn_schema or "public"
        self.directory = Path(self.p["migrations_dir"]).absolute()
        self.result: dict[str, Any] = {
            "changed": False,
            "action": self.p["action"],
            "layout": self.p["layout"],
            "migrations_dir": str(self.directory),
            "applied": [],
            "reverted": [],
            "checked": [],
            "pending": [],
            "drift": [],
            "missing": [],
            "failed_migrations": [],
            "out_of_order": [],
            "migrations": [],
            "problems": [],
            "lock": self.m.lock,
        }
        self.migrations: list[Migration] = []
        self.running: tuple[Migration, Script] | None = None  # what a signal interrupts

    @property
    def check_mode(self) -> bool:
        return bool(self.module.check_mode)

    def run(self) -> dict[str, Any]:
        layout, self.migrations, warnings = load_migrations(self.directory, self.p["layout"])
        self.m.layout = layout
        self.result["layout"] = layout
        self.m.warnings.extend(warnings)
        action = self.p["action"]
        if action == "down" and layout != NUMBERED:
            raise MigrateError(
                "action=down needs the numbered layout (Prisma migrations have no down scripts; "
                "write a new migration that reverts the change)"
            )
        self.m.connect()
        self.result["database"] = self.m.database
        if action == "status":
            analysis = self.analyze()
            self.result["lock"]["holder"] = self.m.lock_holder()
            self.finish(analysis)
            self.result["msg"] = self.status_msg(analysis)
            return self.result
        self.m.acquire_lock()
        try:
            return getattr(self, f"do_{action}")()
        finally:
            self.m.release_lock()

    def analyze(self) -> Analysis:
        analysis = analyze(self.m.layout, self.migrations, self.m.load_records())
        self.result["previous_version"] = analysis.current
        return analysis

    def finish(self, analysis: Analysis, pending: list[Migration] | None = None) -> None:
        self.result["current_version"] = analysis.current
        self.result["pending"] = [
            m.describe() for m in (analysis.pending if pending is None else pending)
        ]
        self.result["drift"] = analysis.drift
        self.result["missing"] = [
            {"version": r.key, "name": r.name, "applied_at": iso(r.applied_at)}
            for r in analysis.missing
        ]
        self.result["failed_migrations"] = [
            {
                "version": r.key,
                "name": r.name,
                "started_at": iso(r.started_at),
                "error": r.error,
                "interrupted": r.status == "running",
                "transactional": r.transactional,
            }
            for r in analysis.failed
        ]
        self.result["out_of_order"] = [m.describe() for m in analysis.out_of_order]
        self.result["migrations"] = migration_table(analysis)
        self.result["problems"] = analysis.problems(self.p["allow_out_of_order"])
        if analysis.missing:
            names = ", ".join(r.name for r in analysis.missing)
            self.m.warnings.append(
                f"applied migrations missing from {self.directory}: {names} (wrong directory, or "
                "files deleted after they were applied?)"
            )

    def blocked(self, analysis: Analysis, what: str) -> None:
        problems = analysis.problems(self.p["allow_out_of_order"])
        if problems:
            self.finish(analysis)
            raise MigrateError(
                f"{what} refused, nothing was run or recorded: " + " | ".join(problems),
                **self.snapshot(),
            )

    def snapshot(self) -> dict[str, Any]:
        return {k: v for k, v in self.result.items() if k not in ("changed", "msg")}

    def reanalyze(self) -> Analysis:
        analysis = analyze(self.m.layout, self.migrations, self.m.load_records())
        self.finish(analysis)
        return analysis

    # -------------------------------------------------------------- apply

    def check_prisma_baseline(self) -> None:
        if self.m.layout != PRISMA or self.m.table_exists(self.m.schema, PRISMA_TABLE):
            return
        tables = self.m.schema_tables()
        if tables:
            shown = ", ".join(tables[:5]) + (" ..." if len(tables) > 5 else "")
            raise MigrateError(
                f'the database schema "{self.m.schema}" is not empty ({shown}) and has no '
                f"{PRISMA_TABLE} table (Prisma's P3005): baseline it first - record the "
                "migrations already reflected in the database with action=resolve "
                "resolve_as=applied migration=<name> (like prisma migrate resolve --applied). "
                "Nothing was run or recorded"
            )

    def do_apply(self) -> dict[str, Any]:
        target = parse_target(self.m.layout, self.p["target"], "target")
        analysis = self.analyze()
        if target is not None and not any(m.key == target for m in self.migrations):
            raise MigrateError(f"target {target} is not a migration in {self.directory}")
        self.blocked(analysis, "apply")
        todo = select_pending(analysis, target, self.p["allow_out_of_order"])
        if not todo:
            self.finish(analysis)
            self.result["msg"] = (
                f"{self.m.database} is up to date ({self.m.layout}): current version "
                f"{fmt_version(analysis.current)}, nothing to apply"
            )
            return self.result
        self.check_prisma_baseline()
        if self.check_mode:
            self.finish(analysis, todo)
            self.result["checked"] = self.m.check([(m, m.up) for m in todo])
            return self.check_outcome("apply", todo)
        self.m.ensure_table()
        started = time.monotonic()
        for migration in todo:
            self.running = (migration, migration.up)
            try:
                self.result["applied"].append(self.m.apply_one(migration))
                self.result["changed"] = True
                self.running = None
            except MigrationFailed as failure:
                self.reanalyze()
                done = ", ".join(str(a["version"]) for a in self.result["applied"]) or "none"
                raise MigrateError(
                    self.failure_msg(migration, migration.up, failure, done), **self.snapshot()
                ) from None
        analysis = self.reanalyze()
        names = ", ".join(str(a["version"]) for a in self.result["applied"])
        self.result["msg"] = (
            f"applied {len(todo)} migration{'s' if len(todo) != 1 else ''} to {self.m.database} "
            f"({self.m.layout}): {names} in {time.monotonic() - started:.1f} s; current version "
            f"{fmt_version(analysis.current)}"
        )
        return self.result

    def interrupted_msg(self, exc: BaseException) -> str:
        """What a stop signal left: the run's own transaction rolled back, the lock released."""
        what = str(exc) if isinstance(exc, Interrupted) else "interrupted by SIGINT"
        applied = [str(a["version"]) for a in self.result["applied"] + self.result["reverted"]]
        done = f"done before it in this run: {', '.join(applied)}" if applied else "nothing "
        if not applied:
            done += "was done before it in this run"
        if self.running is None:
            return f"{what} ({done}); the advisory lock was released"
        migration, script = self.running
        kind = "down migration" if script is migration.down else "migration"
        if script.transactional:
            state = "its transaction was rolled back and nothing of it was recorded"
        else:
            state = (
                "it runs outside a transaction: its statements up to the interruption stay "
                "applied and it is recorded as running - look at the database, then "
                "action=resolve"
            )
        return (
            f"{what} during {kind} {script.label}: {state}; {done}; the advisory lock was "
            "released"
        )

    def lost_msg(self, exc: BaseException) -> str | None:
        """What a connection lost mid-run (the server went away) left, or None when the
        connection is fine. The server rolls back what was not committed; a transactional
        migration commits together with its record, so it is all or nothing."""
        if self.m.conn is None or not getattr(self.m.conn, "broken", False):
            return None
        first = exc
        while first.__context__ is not None:  # a ROLLBACK on the dead connection came after
            first = first.__context__
        what = f"the connection to the database server was lost ({self.m.safe(first)})"
        applied = [str(a["version"]) for a in self.result["applied"] + self.result["reverted"]]
        done = (
            f"done before it in this run (committed): {', '.join(applied)}"
            if applied
            else "nothing was done before it in this run"
        )
        if self.running is None:
            return f"{what}; {done}; the advisory lock went with the session"
        migration, script = self.running
        kind = "down migration" if script is migration.down else "migration"
        if not script.transactional:
            state = (
                "it runs outside a transaction: its statements up to the loss stay applied and "
                "it is recorded as running - look at the database, then action=resolve"
            )
        elif self.m.committing:
            state = (
                "the connection broke at its COMMIT: it is either applied and recorded or "
                "neither (one transaction) - action=status tells which"
            )
        else:
            state = (
                "it was never committed: nothing of it is applied or recorded (one "
                "transaction), and the next run runs it again"
            )
        return (
            f"{what} during {kind} {script.label}: {state}; {done}; the advisory lock went "
            "with the session"
        )

    def failure_msg(
        self, migration: Migration, script: Script, failure: MigrationFailed, done: str
    ) -> str:
        if script.transactional:
            state = "its changes were rolled back"
        else:
            state = (
                f"it ran outside a transaction: {failure.statements_done} of "
                f"{failure.statements_total} statements ran and stay applied"
            )
            concurrently = _NON_TRANSACTIONAL[0][0]
            if any(concurrently.match(s.skeleton) for s in script.statements):
                state += (
                    "; a failed CREATE INDEX CONCURRENTLY leaves an INVALID index - drop it "
                    "(DROP INDEX CONCURRENTLY) before retrying"
                )
        kind = "down migration" if script is migration.down else "migration"
        record = (
            "it is recorded as failed and blocks later runs until resolved (action=resolve "
            "resolve_as=rolled_back once the database is as before it, or applied once it is "
            "completed by hand)"
            if script is migration.up or not script.transactional
            else f"migration {migration.name} stays applied"
        )
        return (
            f"{kind} {script.label} failed: {failure.error}; {state}; {record}. Applied before "
            f"it in this run: {done}"
        )

    def check_outcome(self, action: str, todo: list[Migration]) -> dict[str, Any]:
        checked = self.result["checked"]
        errors = [c for c in checked if c["result"] == "error"]
        skipped = [c for c in checked if c["result"] == "not_checkable"]
        verb = "apply" if action == "apply" else "revert"
        note = (
            f"; not checkable (outside a transaction): {', '.join(c['name'] for c in skipped)}"
            if skipped
            else ""
        )
        if errors:
            bad = errors[0]
            raise MigrateError(
                f"check mode: {verb} would fail at {bad['file']}: {bad['error']}. Nothing was "
                f"changed (everything ran in a transaction that was rolled back){note}",
                **self.snapshot(),
            )
        self.result["changed"] = bool(todo)
        self.result["msg"] = (
            f"check mode: {verb} {len(todo)} migration{'s' if len(todo) != 1 else ''} on "
            f"{self.m.database} would succeed ({', '.join(str(m.key) for m in todo) or 'none'}); "
            f"rolled back, nothing changed{note}"
        )
        return self.result

    # -------------------------------------------------------------- down

    def do_down(self) -> dict[str, Any]:
        target = parse_target(NUMBERED, self.p["target"], "target")
        if target is None:
            raise MigrateError("action=down needs target: the version to go back to (0 for none)")
        analysis = self.analyze()
        self.blocked(analysis, "down")
        steps = select_down(analysis, int(target))
        missing_files = [r.name for m, r in steps if m is None]
        no_down = [m.name for m, r in steps if m is not None and m.down is None]
        if missing_files or no_down:
            parts = []
            if missing_files:
                parts.append(f"not on disk: {', '.join(missing_files)}")
            if no_down:
                parts.append(f"no .down.sql: {', '.join(no_down)}")
            self.finish(analysis)
            raise MigrateError(
                f"cannot go down to version {target}: {'; '.join(parts)}. Nothing was reverted",
                **self.snapshot(),
            )
        if self.check_mode:
            self.finish(analysis)
            self.result["checked"] = self.m.check([(m, m.down) for m, _unused in steps])  # type: ignore[misc]
            return self.check_outcome("down", [m for m, _unused in steps])  # type: ignore[misc]
        if not steps:
            self.finish(analysis)
            self.result["msg"] = (
                f"{self.m.database} is at version {fmt_version(analysis.current)}: nothing above "
                f"{target} to revert"
            )
            return self.result
        started = time.monotonic()
        for migration, record in steps:
            if migration is None or migration.down is None:
                raise AssertionError("migration is not None and migration.down is not None")
            self.running = (migration, migration.down)
            try:
                self.result["reverted"].append(self.m.down_one(migration, record))
                self.result["changed"] = True
                self.running = None
            except MigrationFailed as failure:
                self.reanalyze()
                done = ", ".join(str(a["version"]) for a in self.result["reverted"]) or "none"
                raise MigrateError(
                    self.failure_msg(migration, migration.down, failure, done).replace(
                        "Applied before it", "Reverted before it"
                    ),
                    **self.snapshot(),
                ) from None
        analysis = self.reanalyze()
        names = ", ".join(str(a["version"]) for a in self.result["reverted"])
        self.result["msg"] = (
            f"reverted {len(steps)} migration{'s' if len(steps) != 1 else ''} on "
            f"{self.m.database}: {names} in {time.monotonic() - started:.1f} s; current "
            f"version {fmt_version(analysis.current)}"
        )
        return self.result

    # -------------------------------------------------------------- resolve

    def do_resolve(self) -> dict[str, Any]:
        resolve_as = self.p["resolve_as"]
        key = parse_target(self.m.layout, self.p["migration"], "migration")
        if key is None or not resolve_as:
            raise MigrateError(
                "action=resolve needs migration and resolve_as (applied|rolled_back)"
            )
        migration = next((m for m in self.migrations if m.key == key), None)
        analysis = self.analyze()
        record = analysis.records.get(key)
        self.result["resolved"] = {
            "migration": migration.name if migration else key,
            "as": resolve_as,
        }
        if resolve_as == "applied":
            self.resolve_applied(key, migration, record)
        else:
            self.resolve_rolled_back(key, record)
        analysis = self.reanalyze()
        if self.check_mode:
            self.result["msg"] = (
                f"check mode: would record {self.result['resolved']['migration']} as {resolve_as}"
            )
        else:
            self.result["msg"] = (
                f"recorded {self.result['resolved']['migration']} as {resolve_as} on "
                f"{self.m.database} (no SQL of the migration ran); current version "
                f"{fmt_version(analysis.current)}"
            )
        return self.result

    def resolve_applied(self, key: Any, migration: Migration | None, record: Record | None) -> None:
        if migration is None:
            raise MigrateError(f"migration {key} is not in {self.directory}: nothing recorded")
        if self.m.layout == PRISMA:
            rows = []
            if self.m.table_exists(self.m.schema, PRISMA_TABLE):
                rows = self.m.query_dicts(
                    f"SELECT id, finished_at, rolled_back_at FROM {self.m.prisma_table}"
                    " WHERE migration_name = %s",
                    (migration.name,),
                )
            if any(r["finished_at"] is not None for r in rows):
                raise MigrateError(
                    f"migration {migration.name} is already recorded as applied in the database "
                    "(Prisma's P3008): nothing recorded"
                )
            to_roll_back = [r["id"] for r in rows if r["rolled_back_at"] is None]
            self.result["resolved"]["rows"] = len(to_roll_back) + 1
            self.result["changed"] = True
            if self.check_mode:
                return
            self.m.ensure_table()
            now = utc_now()
            self.m.conn.execute("BEGIN")
            for row_id in to_roll_back:
                self.m.conn.execute(
                    f"UPDATE {self.m.prisma_table} SET rolled_back_at = %s WHERE id = %s",
                    (now, row_id),
                )
            self.m.conn.execute(
                f"INSERT INTO {self.m.prisma_table} (id, checksum, logs, started_at, finished_at,"
                " migration_name) VALUES (%s, %s, '', %s, %s, %s)",
                (str(uuid.uuid4()), migration.up.checksum, now, now, migration.name),
            )
            self.m.conn.execute("COMMIT")
        else:
            if record is not None and record.status == "applied":
                raise MigrateError(
                    f"migration {migration.name} is already applied: nothing recorded"
                )
            self.result["resolved"]["rows"] = 1
            self.result["changed"] = True
            if self.check_mode:
                return
            self.m.ensure_table()
            now = utc_now()
            self.m.numbered_upsert(
                migration,
                "applied",
                started_at=record.started_at if record else now,
                applied_at=now,
                error=record.error if record else None,
                resolved_at=now,
            )
        self.result["changed"] = True

    def resolve_rolled_back(self, key: Any, record: Record | None) -> None:
        name = record.name if record else key
        if record is None:
            raise MigrateError(
                f"migration {name} cannot be rolled back because it was never applied to the "
                "database (Prisma's P3011): nothing recorded"
            )
        if record.status == "applied":
            raise MigrateError(
                f"migration {name} cannot be rolled back because it is not in a failed state "
                "(Prisma's P3012); to undo an applied migration use action=down (numbered) or a "
                "new migration: nothing recorded"
            )
        if record.status in ("rolled_back", "reverted"):
            self.result["resolved"]["rows"] = 0
            return  # already pending again: nothing to do
        self.result["resolved"]["rows"] = len(record.ids) if self.m.layout == PRISMA else 1
        self.result["changed"] = True
        if self.check_mode:
            return
        now = utc_now()
        if self.m.layout == PRISMA:
            self.m.conn.execute(
                f"UPDATE {self.m.prisma_table} SET rolled_back_at = %s"
                " WHERE migration_name = %s AND finished_at IS NULL AND rolled_back_at IS NULL",
                (now, name),
            )
        else:
            self.m.conn.execute(
                f"UPDATE {TRACKING_SCHEMA}.{TRACKING_TABLE} SET status = 'rolled_back',"
                " resolved_at = %s, applied_by = %s WHERE version = %s",
                (now, self.m.applied_by, key),
            )
        self.result["changed"] = True

    # -------------------------------------------------------------- status

    def status_msg(self, analysis: Analysis) -> str:
        parts = [
            f"{self.m.database} ({self.m.layout}): current version {fmt_version(analysis.current)}",
            f"{len(analysis.applied)} applied",
            f"{len(analysis.pending)} pending",
        ]
        for name, items in (
            ("drift", analysis.drift),
            ("failed", analysis.failed),
            ("missing", analysis.missing),
        ):
            if items:
                parts.append(f"{len(items)} {name}")
        return ", ".join(parts)


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        action={
            "type": "str",
            "default": "status",
            "choices": ["status", "apply", "down", "resolve"],
        },
        migrations_dir={"type": "path", "required": True},
        layout={"type": "str", "default": "auto", "choices": ["auto", NUMBERED, PRISMA]},
        target={"type": "str"},
        migration={"type": "str"},
        resolve_as={"type": "str", "choices": ["applied", "rolled_back"]},
        lock_timeout_s={"type": "int", "default": 60},
        lock_key={"type": "int", "default": PRISMA_LOCK_KEY, "no_log": False},
        statement_lock_timeout_s={"type": "int", "default": 0},
        statement_timeout_s={"type": "int", "default": 0},
        allow_out_of_order={"type": "bool", "default": False},
        prisma_schema={"type": "str"},
        applied_by={"type": "str"},
    )


# What an action needs (the rules in the argument spec; validate_params has the rest).
ARGUMENT_RULES: dict[str, Any] = {
    "required_if": [
        ("action", "resolve", ("migration", "resolve_as")),
        ("action", "down", ("target",)),
    ],
}


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = validate_connection_params(params)
    for name in ("lock_timeout_s", "statement_lock_timeout_s", "statement_timeout_s"):
        if params[name] is not None and params[name] < 0:
            errors.append(f"{name} must be >= 0, got {params[name]}")
    key = params["lock_key"]
    if not -(2**63) <= key < 2**63:
        errors.append(f"lock_key must be a bigint, got {key}")
    if params["action"] == "resolve" and not (params["migration"] or "").strip():
        errors.append("action=resolve needs migration: the migration to resolve")
    if params["action"] == "down" and not (params["target"] or "").strip():
        errors.append("action=down needs target: the version to go back to (0 reverts all)")
    if params["prisma_schema"] is not None and not params["prisma_schema"].strip():
        errors.append("prisma_schema must not be empty")
    return errors


def main() -> None:
    module = pg_module(
        "pg_migrate", argument_spec(), validate_params, "nothing was run", **ARGUMENT_RULES
    )
    run = Run(module)
    try:
        with stop_signals():
            watch_ansible()
            result = run.run()
    except KeyboardInterrupt as exc:  # a stop signal (opsbook_proc.Interrupted) or Ctrl-C
        with signals_held():
            close_quietly(run.m.conn)
        module.fail_json(
            msg=f"pg_migrate: {run.interrupted_msg(exc)}",
            changed=bool(run.result.get("applied") or run.result.get("reverted")),
            **{k: v for k, v in run.snapshot().items() if k != "failed"},
        )
    except MigrateError as exc:
        close_quietly(run.m.conn)
        data = {**run.result, **exc.extra}
        for reserved in ("msg", "changed", "failed"):
            data.pop(reserved, None)
        changed = bool(run.result.get("applied") or run.result.get("reverted"))
        for warning in dict.fromkeys(run.m.warnings):
            module.warn(warning)
        module.fail_json(msg=f"pg_migrate: {exc}", changed=changed, **data)
    except Exception as exc:
        what = run.lost_msg(exc) or f"unexpected error: {run.m.safe(exc)}"
        close_quietly(run.m.conn)
        module.fail_json(
            msg=f"pg_migrate: {what}",
            changed=bool(run.result.get("applied") or run.result.get("reverted")),
            exception=run.m.safe(RuntimeError(traceback.format_exc())),
        )
    close_quietly(run.m.conn)
    for warning in dict.fromkeys(run.m.warnings):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
