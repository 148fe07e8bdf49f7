#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_backup: stream a verified PostgreSQL backup (pg_dump | zstd) into backup storage."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Stream a PostgreSQL backup (pg_dump custom format, zstd) to S3 or disk
description:
  - Takes a backup of the database the DSN in O(dsn) names. C(pg_dump --format=custom
    --compress=0) is streamed through C(zstd) (level O(compression_level)) straight into
    the backup storage O(storage_url) (C(s3://bucket/prefix) or C(file:///path)); the
    sha256 and size of the stored bytes are computed on the way, in one pass and in
    bounded memory (1 MiB chunks; an S3 upload holds at most
    O(part_size_mb) x (O(upload_concurrency) + 1) MiB, 40 MiB at the defaults, in a fixed
    pool of reused part buffers). No local temporary file is written.
  - "zstd runs with its default single compression thread (no C(-T0)): pg_dump, the
    server and the upload already keep the cores busy, and multi-threaded zstd only
    added memory (measured on 2 cores - level 3 56-60 MB with C(-T0), 46 MB without;
    level 1 18 MB and 15 MB) for no gain in speed. C(--single-thread) would save
    another 10 MB but serializes reading, compressing and writing: 15% slower at level 3."
  - "Layout, keys relative to the storage prefix: C(<backup_id>/data.pgdump.zst) (the
    dump), C(<backup_id>/globals.sql.zst) (with O(globals)), C(<backup_id>/manifest.json)
    (written B(last): a backup without a manifest does not exist - it is never listed
    nor restored)."
  - The manifest (format_version 1) holds the backup id, database, server and pg_dump
    versions, format, compression, started/finished, size and sha256 of every object,
    the environment, reason and labels, and the B(exact row count of every table whose
    data is dumped), taken in the same snapshot as the dump. The module opens a
    C(REPEATABLE READ READ ONLY) transaction, exports its snapshot with
    C(pg_export_snapshot), hands it to C(pg_dump --snapshot), counts the rows of each
    dumped table (SELECT count(*) FROM ONLY the table) in that transaction while
    pg_dump runs, and keeps the transaction open until pg_dump ends.
  - The manifest's C(started) is taken right after the snapshot is exported, so
    everything in the backup was committed before C(started).
  - "pg_dump's exit status B(and) its stderr are checked (it can fail after writing
    output): a line C(pg_dump: error:) fails the backup even with exit status 0; its
    warnings are returned as task warnings. zstd is checked the same way. On any failure
    the upload is aborted (S3 C(AbortMultipartUpload); a file is never renamed into
    place), objects already stored by this run are deleted, pg_dump and zstd are killed
    and reaped, and the task fails saying what failed and that no backup was written."
  - The password never reaches a command line, a message or the disk. pg_dump and
    pg_dumpall get the DSN without its password as their C(--dbname) connection string
    (pointed at the exact server the module connected to, so the snapshot can be imported)
    and the password in their own environment (C(PGPASSWORD) of that child only); no file
    ever holds it.
  - "Interrupted is not broken: SIGTERM, SIGINT or SIGHUP (an AWX cancel, Ctrl-C,
    C(opsbook run --timeout), ansible-playbook forwarding its own signal) abort the upload,
    delete what this run stored, stop pg_dump and zstd (SIGTERM, then SIGKILL) and fail
    saying so. pg_dump and zstd die with the module even when it is SIGKILLed
    (C(PR_SET_PDEATHSIG)), and the module stops itself when the ansible-playbook that
    started it is gone. What a SIGKILL can still leave - an unfinished S3 multipart upload
    or a partial file - is found and removed by the next backup to the same storage once it
    is older than O(stale_after_minutes) (RV(cleaned_up))."
  - "Preflight, before anything is written: the storage is writable (a probe object is
    written and deleted), pg_dump's major version is at least the server's (an older
    pg_dump cannot dump a newer server; a different minor version only warns), and no
    backup O(backup_id) exists yet."
  - In check mode the module connects, resolves pg_dump, and reports what it would back
    up (database, size estimate, the tables whose data would be dumped, target keys)
    without writing anything to storage.
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
requirements:
  - pg_dump (and pg_dumpall with O(globals)) of the server's major version or newer
  - the C(zstd) command line tool (package C(zstd))
# connections, action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
  - opsbook.runbooks.opsbook_s3
  - opsbook.runbooks.opsbook_controller
options:
  storage_url:
    description:
      - Where backups go, C(s3://bucket/prefix) or C(file:///absolute/path).
    type: str
    required: true
  sse:
    description:
      - Server-side encryption of the stored objects (C(s3://) only).
    type: str
    choices: [none, AES256, "aws:kms"]
    default: none
  kms_key_id:
    description:
      - KMS key id or ARN for O(sse=aws:kms); the bucket's default KMS key when omitted.
    type: str
  part_size_mb:
    description:
      - Size of one part of the S3 multipart upload, in MiB (5 to 5120).
      - An S3 object has at most 10,000 parts (8 MiB parts reach 78 GiB). When the
        database's size (C(pg_database_size), plus 10%) would need more, the part size is
        raised to the smallest whole MiB that fits, and the upload's memory with it
        (RV(storage) shows the part size used).
      - 8 MiB halves the memory of 16 MiB parts and uploaded as fast (measured against an
        S3-compatible server).
    type: int
    default: 8
  upload_concurrency:
    description:
      - Parts uploaded at the same time.
    type: int
    default: 4
  compression_level:
    description:
      - zstd compression level, 1 (fastest) to 19 (smallest).
      - The default, 1, is zstd's fastest regular level. On a 2-core machine (500 MB
        database) it made the backup 10% faster than level 3 (zstd used 1.9 instead of
        3.4 CPU seconds) for a 2.8% bigger object (172.3 vs 167.6 MB). Where cores are
        plentiful, 3 costs little more time for a slightly smaller backup.
    type: int
    default: 1
  schemas:
    description:
      - Dump only the schemas matching these patterns (C(pg_dump --schema)).
      - Patterns follow pg_dump (C(*) and C(?) wildcards, double quotes for exact names).
    type: list
    elements: str
    default: []
  exclude_schemas:
    description:
      - Do not dump the schemas matching these patterns (C(pg_dump --exclude-schema)).
    type: list
    elements: str
    default: []
  tables:
    description:
      - Dump only the tables matching these patterns (C(pg_dump --table); C(schema.table)
        or C(table)). As with pg_dump, O(schemas) and O(exclude_schemas) have no effect
        then, and objects that are not tables are not dumped.
    type: list
    elements: str
    default: []
  exclude_tables:
    description:
      - Do not dump the tables matching these patterns (C(pg_dump --exclude-table)).
    type: list
    elements: str
    default: []
  schema_only:
    description:
      - Dump the schema only, no data (C(pg_dump --schema-only)); the manifest's
        C(table_counts) is then empty.
    type: bool
    default: false
  globals:
    description:
      - Also dump the roles and tablespaces (C(pg_dumpall --globals-only)) as a second
        object, C(<backup_id>/globals.sql.zst). pg_dumpall connects to the database of
        the DSN on the same host, port and user.
    type: bool
    default: false
  labels:
    description:
      - Free-form labels recorded in the manifest (string values).
    type: dict
    default: {}
  env:
    description:
      - The environment recorded in the manifest (opsbook passes C(opsbook_env)).
    type: str
  reason:
    description:
      - Why the backup is taken, recorded in the manifest (opsbook passes C(opsbook_reason)).
    type: str
  backup_id:
    description:
      - The backup id; generated as C(<dbname>-<YYYYmmddTHHMMSSZ>-<4 hex>) when omitted.
      - Letters, digits, C(_ . -) only. The module refuses to overwrite an existing backup.
    type: str
  pg_dump_path:
    description:
      - The pg_dump to run. By default the one of the server's major version,
        C(/usr/lib/postgresql/<major>/bin/pg_dump) (or C(/usr/pgsql-<major>/bin/pg_dump)),
        else the first C(pg_dump) on C(PATH). pg_dumpall is taken from the same directory.
    type: path
  verify:
    description:
      - "Once the manifest is written, prove the backup intact in storage and record it in
        C(<backup_id>/verified.json) (a backup counts as verified, for retention and for
        restores choosing the latest, only then): on S3, by S3's own checksums - every part
        was uploaded with its CRC32, which S3 checks on receipt, and the object's composite
        checksum (C(HeadObject) with C(ChecksumMode)) must equal the one computed here over
        the bytes sent; where the store keeps no checksum (C(file://), an S3-compatible
        server without additional checksums), by reading every object back and comparing
        its size and sha256 with the manifest. RV(verification) says which (C(method))."
      - A failed verification fails the task; the backup is kept for inspection (never
        selected as latest) and retention does not run.
      - M(opsbook.runbooks.pg_backup_info) O(opsbook.runbooks.pg_backup_info#module:state=verify)
        re-reads a backup in full at any time (a routine check).
    type: bool
    default: true
  retention:
    description:
      - After a verified backup, keep per database the O(keep_last) newest backups plus the
        newest of each of the last O(keep_daily) days, O(keep_weekly) ISO weeks and
        O(keep_monthly) months, and delete the database's other backups (manifest first). The
        newest verified backup and anything newer are never deleted. The catalog is read
        while the dump runs.
    type: bool
    default: false
  keep_last:
    description: With O(retention), how many of the newest backups to keep.
    type: int
    default: 0
  keep_daily:
    description: With O(retention), keep the newest backup of each of this many last days.
    type: int
    default: 0
  keep_weekly:
    description: With O(retention), keep the newest backup of each of this many last ISO weeks.
    type: int
    default: 0
  keep_monthly:
    description: With O(retention), keep the newest backup of each of this many last months.
    type: int
    default: 0
  stale_after_minutes:
    description:
      - "Before anything else, the unfinished uploads that interrupted backups left in the
        storage (a SIGKILLed run cannot abort its own: an S3 multipart upload, a partial
        file) are removed once they have not moved for this many minutes (an S3 upload's
        newest part, a file's last write): only what opsbook's own writer started, never an
        upload or object of anyone else (RV(cleaned_up)). A running backup sends a part every
        few seconds, so it is never taken for one left behind. 0 removes every one found."
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    description: Connects and reads the catalog (a read-only transaction, rolled back),
      lists the target keys, and writes nothing to storage (not even the write probe).
  diff_mode:
    support: none
    description: A backup adds objects; there is nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Runs where the client tools are and the database is reachable (group
      C(dbadmin) in opsbook, by default the controller's local connection).
notes:
  - The password of O(dsn) never appears on a command line either; pg_dump's session is named
    C(<application_name>-pg_dump).
  - The connecting role needs to read every dumped table; row level security is not
    bypassed (C(row_security=off) makes both pg_dump and the row counts fail rather than
    silently skip rows).
  - "Row counts cover the plain tables (C(relkind r), partitions included) whose data
    pg_dump dumps; extension member tables, views, materialized views and foreign tables
    are not counted. Each count is SELECT count(*) FROM ONLY the table."
  - A backup's objects appear in storage before its manifest; the catalog
    (M(opsbook.runbooks.pg_backup_info)) reports such objects as orphans and never lists them as
    backups.
seealso:
  - module: opsbook.runbooks.pg_backup_info
    description: List, select, verify backups and apply retention.
  - name: pg_dump
    description: PostgreSQL documentation of pg_dump.
    link: https://www.postgresql.org/docs/current/app-pgdump.html
"""

EXAMPLES = r"""
- name: Back up the app database to S3, encrypted with the bucket's KMS key
  pg_backup:
    dsn: "{{ database_url }}"
    storage_url: s3://acme-backups/app/production
    sse: aws:kms
    compression_level: 3
    env: "{{ opsbook_env }}"
    reason: "{{ opsbook_reason | default('scheduled') }}"
    labels:
      trigger: cron
  no_log: true
  register: backup

- name: Only the billing schema, with roles and tablespaces, to local disk
  pg_backup:
    dsn: "{{ database_url }}"
    storage_url: file:///var/backups/opsbook
    schemas: [billing]
    exclude_tables: ["billing.*_tmp"]
    globals: true

- name: What would be backed up (check mode writes nothing)
  pg_backup:
    dsn: "{{ database_url }}"
    storage_url: "{{ backup_storage_url }}"
  check_mode: true
  register: plan
"""

RETURN = r"""
backup_id:
  description: The backup's id (in check mode, the id it would get).
  returned: always
  type: str
  sample: app-20240501T120000Z-3fa2
manifest:
  description: The manifest written to C(<backup_id>/manifest.json) (format_version 1).
  returned: success, not in check mode
  type: dict
  sample:
    format_version: 1
    backup_id: app-20240501T120000Z-3fa2
    database: app
    env: production
    reason: scheduled
    labels: {}
    server_version: "15.8"
    server_version_num: 150008
    pg_dump_version: "15.8"
    format: custom
    compression: {algorithm: zstd, level: 1}
    started: "2024-05-01T12:00:00.120Z"
    finished: "2024-05-01T12:00:09.870Z"
    duration_s: 9.75
    bytes: 48213312
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    uncompressed_bytes: 203996536
    objects:
      data: {key: app-20240501T120000Z-3fa2/data.pgdump.zst, bytes: 48213312,
             sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
      globals: null
    table_counts: {public.tasks: 1000, public.users: 200}
    options: {schemas: [], exclude_schemas: [], tables: [], exclude_tables: [],
              schema_only: false, globals: false}
    encryption: null
    verified_at: null
bytes:
  description: Size of the stored data object (compressed), in bytes.
  returned: success, not in check mode
  type: int
  sample: 48213312
sha256:
  description: sha256 of the stored data object, hex.
  returned: success, not in check mode
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
uncompressed_bytes:
  description: Bytes pg_dump wrote (before compression).
  returned: success, not in check mode
  type: int
  sample: 203996536
duration_s:
  description: Seconds from the snapshot to the stored data object (the manifest's duration_s).
  returned: success, not in check mode
  type: float
  sample: 9.75
throughput_mb_s:
  description: RV(uncompressed_bytes) / RV(duration_s), in MB (10^6 bytes) of pg_dump output
    per second.
  returned: success, not in check mode
  type: float
  sample: 20.9
keys:
  description: The storage keys of the backup's objects (C(globals) null without O(globals)).
  returned: always
  type: dict
  sample: {data: app-20240501T120000Z-3fa2/data.pgdump.zst, globals: null,
           manifest: app-20240501T120000Z-3fa2/manifest.json}
storage:
  description: The storage, described without secrets.
  returned: always
  type: str
  sample: s3://acme-backups/app at https://s3.amazonaws.com (sse aws:kms, part size 8 MiB, ...)
database:
  description: The database backed up.
  returned: always
  type: str
  sample: app
server_version:
  description: The server's version.
  returned: always
  type: str
  sample: "15.8"
pg_dump_path:
  description: The pg_dump that ran (or would run).
  returned: always
  type: str
  sample: /usr/lib/postgresql/15/bin/pg_dump
pg_dump_version:
  description: Its version.
  returned: always
  type: str
  sample: "15.8"
tables:
  description: The tables whose data is (or would be) dumped, as manifest keys.
  returned: always
  type: list
  elements: str
  sample: [public.tasks, public.users]
database_size_bytes:
  description: C(pg_database_size) of the database.
  returned: in check mode
  type: int
  sample: 8385059
estimated_bytes:
  description: Sum of C(pg_table_size) of RV(tables), a rough size of the uncompressed dump.
  returned: in check mode
  type: int
  sample: 7012352
verification:
  description: With O(verify), how the new backup was proven intact (also written to
    C(<backup_id>/verified.json)) - ok, method (C(checksum), C(reread) or C(mixed)),
    verified_at, duration_s, objects (per object - bytes, sha256, the checksums compared),
    errors. Null in check mode and without O(verify).
  returned: success
  type: dict
  sample: {"ok": true, "method": "checksum", "verified_at": "2024-05-01T12:00:10.020Z",
           "duration_s": 0.01, "errors": []}
retention:
  description: With O(retention) - deleted (backup ids, oldest first), would_delete (in check
    mode, what it would delete now), kept (the backup ids kept, newest first) and plan (why
    each is kept or deleted). Null without O(retention).
  returned: success
  type: dict
  sample: {"deleted": ["app-20240401T020000Z-91ab"], "would_delete": ["app-20240401T020000Z-91ab"],
           "kept": ["app-20240501T120000Z-3fa2"]}
cleaned_up:
  description: What interrupted backups had left and this run removed (in check mode - would
    remove), described (key, upload id, when it started).
  returned: success
  type: list
  elements: str
  sample: ["app-20240430T020000Z-77aa/data.pgdump.zst (multipart upload 2~x, started
    2024-04-30T02:00:01Z)"]
total_s:
  description: Seconds of the whole module run - preflight, dump, verification, retention.
  returned: success, not in check mode
  type: float
  sample: 10.2
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: "backup app-20240501T120000Z-3fa2 of app: 185.5 MiB -> 43.9 MiB in 9.8 s (20.9 MB/s)"
"""

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_backup import (
    CHUNK_SIZE,
    DATA_OBJECT,
    GLOBALS_OBJECT,
    MANIFEST_OBJECT,
    BackupEntry,
    BackupError,
    Catalog,
    RetentionCandidate,
    backup_id_errors,
    build_manifest,
    client_conninfo,
    delete_backup,
    find_pg_tool,
    list_catalog,
    make_backup_id,
    manifest_objects,
    object_entry,
    object_key,
    plan_retention,
    remove_stale_uploads,
    serialize_manifest,
    tool_version,
    utc_now,
    verify_written,
    version_major,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import (
    RunContext,
    finish_module,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    HAS_PSYCOPG,
    PgConnectError,
    close_quietly,
    connect,
    dsn_passwords,
    pg_connection_argument_spec,
    pg_module,
    safe_error,
    scrub_data,
    validate_connection_params,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_proc import (
    Interrupted,
    signals_held,
    spawn,
    stop,
    stop_signals,
    tool_env,
    watch_ansible,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    StorageError,
    open_storage,
    part_size_for,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import human_bytes

MiB = 1024 * 1024
PIPE_SIZE = MiB  # F_SETPIPE_SZ: fewer, larger reads (Linux; best effort)
STDERR_LIMIT = 64 * 1024
STOP_GRACE_S = 2.0  # pg_dump and zstd stop at once on SIGTERM; SIGKILL after this
ZSTD_CANDIDATES = ("/usr/bin/zstd", "/usr/local/bin/zstd", "/bin/zstd")
PG_DUMP_MAGIC = b"PGDMP"
SSE_CHOICES = ["none", "AES256", "aws:kms"]
KEEP_OPTIONS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")
_ERROR_LINE_RE = re.compile(r"^(?:[\w.-]+: )?(?:error|fatal|ERROR|FATAL|PANIC):")
_CONT_LINE_RE = re.compile(r"^(?:[\w.-]+: )?(?:detail|hint|DETAIL|HINT|CONTEXT):")


class BackupFailed(Exception):
    """The backup cannot be taken; ``str()`` is a password-free message."""


class AfterBackupFailed(Exception):
    """The backup was stored (its manifest is written) but a later step failed: its
    verification or retention. ``result`` is what the run did; the backup is kept."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------
# pure helpers


def pattern_to_regex(pattern: str, qualified: bool) -> tuple[str | None, str, int]:
    """pg_dump's name pattern -> ``(schema regex or None, name regex, dot count)``.

    The same conversion as PostgreSQL's ``patternToSQLRegex`` (fe_utils/string_utils.c)
    for pg_dump (no forced escaping): unquoted ASCII letters are lower-cased, ``*`` ->
    ``.*``, ``?`` -> ``.``, ``"..."`` quotes (``""`` is a quote), regex characters
    inside quotes are escaped, ``$`` always is, and an unquoted ``.`` separates the
    schema from the name when ``qualified`` (otherwise it is kept, but counted).
    """
    parts: list[list[str]] = [["^("]]
    dots = 0
    inquotes = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        cur = parts[-1]
        if ch == '"':
            if inquotes and pattern[i + 1 : i + 2] == '"':
                cur.append('"')
                i += 1
            else:
                inquotes = not inquotes
        elif not inquotes and "A" <= ch <= "Z":
            cur.append(ch.lower())
        elif not inquotes and ch == "*":
            cur.append(".*")
        elif not inquotes and ch == "?":
            cur.append(".")
        elif not inquotes and ch == ".":
            dots += 1
            if qualified and len(parts) == 1:
                cur.append(")$")
                parts.append(["^("])
            else:
                cur.append(ch)
        elif ch == "$":
            cur.append("\\$")
        else:
            quoted_special = inquotes and ch in "|*+?()[]{}.^$\\"
            if quoted_special or (ch == "[" and pattern[i + 1 : i + 2] == "]"):
                cur.append("\\")
            cur.append(ch)
        i += 1
    parts[-1].append(")$")
    regexes = ["".join(p) for p in parts]
    if len(regexes) == 2:
        return regexes[0], regexes[1], dots
    return None, regexes[0], dots


def pattern_errors(params: dict[str, Any]) -> list[str]:
    """Patterns pg_dump would reject, or that name another database (not supported)."""
    errors = []
    for option in ("schemas", "exclude_schemas"):
        for pattern in params.get(option) or []:
            if not pattern.strip():
                errors.append(f"{option}: empty pattern")
            elif pattern_to_regex(pattern, qualified=False)[2]:
                errors.append(f"{option}: {pattern!r} must not be qualified (no unquoted '.')")
    for option in ("tables", "exclude_tables"):
        for pattern in params.get(option) or []:
            if not pattern.strip():
                errors.append(f"{option}: empty pattern")
            elif pattern_to_regex(pattern, qualified=True)[2] > 1:
                errors.append(f"{option}: {pattern!r} has too many dotted names (use schema.table)")
    return errors


def pg_dump_argv(
    pg_dump: str, conninfo: str, snapshot: str | None, params: dict[str, Any]
) -> list[str]:
    """The pg_dump command line: custom format, uncompressed, no password prompt."""
    argv = [pg_dump, "--format=custom", "--compress=0", "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if params.get("schema_only"):
        argv.append("--schema-only")
    for option, flag in (
        ("schemas", "--schema"),
        ("exclude_schemas", "--exclude-schema"),
        ("tables", "--table"),
        ("exclude_tables", "--exclude-table"),
    ):
        argv += [f"{flag}={pattern}" for pattern in params.get(option) or []]
    argv.append(f"--dbname={conninfo}")
    return argv


def pg_dumpall_argv(pg_dumpall: str, conninfo: str, database: str) -> list[str]:
    """pg_dumpall --globals-only, first connecting to ``database`` (the DSN's)."""
    return [
        pg_dumpall,
        "--globals-only",
        "--no-password",
        f"--dbname={conninfo}",
        f"--database={database}",
    ]


def zstd_argv(zstd: str, level: int) -> list[str]:
    """zstd compressing stdin to stdout with one compression thread (zstd's default; no
    -T0: pg_dump, the server and the upload already use the other cores)."""
    return [zstd, "-q", "-c", f"-{int(level)}"]


def classify_stderr(text: str) -> tuple[list[str], list[str]]:
    """Split a client tool's stderr into (errors, other lines).

    ``pg_dump: error: ...`` / ``fatal:`` / ``ERROR:`` lines are errors; a following
    ``detail:``/``hint:`` line belongs to the line before it. Everything else
    (``pg_dump: warning: ...``) is returned as the second list.
    """
    errors: list[str] = []
    others: list[str] = []
    last: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if _ERROR_LINE_RE.match(line):
            errors.append(line)
            last = errors
        elif _CONT_LINE_RE.match(line) and last:
            last[-1] = f"{last[-1]} {line}"
        else:
            others.append(line)
            last = others
    return errors, others


def throughput_mb_s(size: int, seconds: float) -> float:
    """MB (10^6 bytes) per second, one decimal; 0.0 for a zero duration."""
    return round(size / seconds / 1e6, 1) if seconds > 0 else 0.0


def labels_of(raw: dict[str, Any] | None) -> tuple[dict[str, str], list[str]]:
    """String labels, and errors for values that are not scalars."""
    labels: dict[str, str] = {}
    errors = []
    for key, value in (raw or {}).items():
        if isinstance(value, dict | list | tuple | set) or value is None:
            errors.append(f"labels.{key} must be a string, number or boolean")
        else:
            labels[str(key)] = str(value)
    return labels, errors


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        storage_url={"type": "str", "required": True},
        s3_endpoint_url={"type": "str"},
        s3_region={"type": "str"},
        sse={"type": "str", "choices": SSE_CHOICES, "default": "none"},
        kms_key_id={"type": "str", "no_log": False},
        part_size_mb={"type": "int", "default": 8},
        upload_concurrency={"type": "int", "default": 4},
        compression_level={"type": "int", "default": 1},
        schemas={"type": "list", "elements": "str", "default": []},
        exclude_schemas={"type": "list", "elements": "str", "default": []},
        tables={"type": "list", "elements": "str", "default": []},
        exclude_tables={"type": "list", "elements": "str", "default": []},
        schema_only={"type": "bool", "default": False},
        globals={"type": "bool", "default": False},
        labels={"type": "dict", "default": {}},
        env={"type": "str"},
        reason={"type": "str"},
        backup_id={"type": "str"},
        pg_dump_path={"type": "path"},
        verify={"type": "bool", "default": True},
        retention={"type": "bool", "default": False},
        keep_last={"type": "int", "default": 0},
        keep_daily={"type": "int", "default": 0},
        keep_weekly={"type": "int", "default": 0},
        keep_monthly={"type": "int", "default": 0},
        stale_after_minutes={"type": "int", "default": 60},
    )


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = validate_connection_params(params)
    if not (params.get("storage_url") or "").strip():
        errors.append("storage_url must not be empty")
    level = params.get("compression_level")
    if level is not None and not 1 <= level <= 19:
        errors.append(f"compression_level must be between 1 and 19, got {level}")
    if params.get("part_size_mb") is not None and not 5 <= params["part_size_mb"] <= 5120:
        errors.append(f"part_size_mb must be between 5 and 5120, got {params['part_size_mb']}")
    if params.get("upload_concurrency") is not None and params["upload_concurrency"] < 1:
        errors.append(f"upload_concurrency must be >= 1, got {params['upload_concurrency']}")
    if params.get("kms_key_id") and params.get("sse") != "aws:kms":
        errors.append("kms_key_id needs sse=aws:kms")
    if params.get("backup_id") is not None:
        errors += backup_id_errors(params["backup_id"])
    keeps = {name: params.get(name) or 0 for name in KEEP_OPTIONS}
    errors += [f"{name} must be >= 0, got {value}" for name, value in keeps.items() if value < 0]
    if params.get("retention") and not any(keeps.values()):
        errors.append(
            "retention needs at least one of keep_last, keep_daily, keep_weekly, keep_monthly "
            "above 0 (with all 0 it would keep nothing)"
        )
    if (params.get("stale_after_minutes") or 0) < 0:
        errors.append(f"stale_after_minutes must be >= 0, got {params['stale_after_minutes']}")
    errors += labels_of(params.get("labels"))[1]
    errors += pattern_errors(params)
    return errors


def sse_of(params: dict[str, Any]) -> str | None:
    return None if params.get("sse") in (None, "none") else params["sse"]


# ---------------------------------------------------------------------------
# the database side: server facts, the dumped table set, the snapshot, row counts


SERVER_SQL = (
    "SELECT current_database(), current_setting('server_version'),"
    " current_setting('server_version_num')::int, pg_database_size(current_database())"
)

SCHEMA_MATCH_SQL = (
    "SELECT n.oid FROM pg_catalog.pg_namespace n"
    " WHERE n.nspname OPERATOR(pg_catalog.~) %s COLLATE pg_catalog.default"
)

TABLE_MATCH_SQL = (
    "SELECT c.oid FROM pg_catalog.pg_class c"
    " LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
    " WHERE c.relkind OPERATOR(pg_catalog.=) ANY (array['r', 'S', 'v', 'm', 'f', 'p'])"
    " AND c.relname OPERATOR(pg_catalog.~) %s COLLATE pg_catalog.default"
)

# Plain tables (partitions included) that are not members of an extension.
CANDIDATE_TABLES_SQL = """
SELECT c.oid, c.relnamespace, n.nspname, c.relname,
       format('%I.%I', n.nspname, c.relname), pg_catalog.pg_table_size(c.oid)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""


@dataclass(frozen=True)
class TableInfo:
    key: str  # schema.table, quoted as format('%I.%I') does
    schema: str
    name: str
    size: int


def _match_oids(cur: Any, patterns: list[str], tables: bool) -> set[int]:
    """OIDs of the schemas (or relations) matching any pattern, as pg_dump expands them."""
    oids: set[int] = set()
    for pattern in patterns:
        schema_re, name_re, _dots = pattern_to_regex(pattern, qualified=tables)
        if not tables:
            cur.execute(SCHEMA_MATCH_SQL, (name_re,))
        elif schema_re is not None:
            cur.execute(
                TABLE_MATCH_SQL
                + " AND n.nspname OPERATOR(pg_catalog.~) %s COLLATE pg_catalog.default",
                (name_re, schema_re),
            )
        else:
            cur.execute(TABLE_MATCH_SQL + " AND pg_catalog.pg_table_is_visible(c.oid)", (name_re,))
        oids.update(row[0] for row in cur.fetchall())
    return oids


def _system_schema(name: str) -> bool:
    return name.startswith("pg_") or name == "information_schema"


def dumped_tables(cur: Any, params: dict[str, Any]) -> list[TableInfo]:
    """The plain tables whose data pg_dump dumps with these options (pg_dump's rules).

    ``tables`` given: the matching tables, minus ``exclude_tables`` (schema options
    have no effect). Otherwise the tables of the ``schemas`` matched (all but the
    system schemas when none is given), minus ``exclude_schemas`` and
    ``exclude_tables``. Empty with ``schema_only``.
    """
    if params.get("schema_only"):
        return []
    include_tables = _match_oids(cur, params.get("tables") or [], tables=True)
    exclude_tables = _match_oids(cur, params.get("exclude_tables") or [], tables=True)
    include_schemas = _match_oids(cur, params.get("schemas") or [], tables=False)
    exclude_schemas = _match_oids(cur, params.get("exclude_schemas") or [], tables=False)
    cur.execute(CANDIDATE_TABLES_SQL)
    selected = []
    for oid, nsp_oid, nsp_name, rel_name, key, size in cur.fetchall():
        if params.get("tables"):
            wanted = oid in include_tables
        elif params.get("schemas"):
            wanted = nsp_oid in include_schemas and nsp_oid not in exclude_schemas
        else:
            wanted = not _system_schema(nsp_name) and nsp_oid not in exclude_schemas
        if wanted and oid not in exclude_tables:
            selected.append(TableInfo(key, nsp_name, rel_name, int(size or 0)))
    return selected


def count_rows(cur: Any, tables: list[TableInfo]) -> dict[str, int]:
    """Exact ``count(*) FROM ONLY`` of each table, in the cursor's transaction."""
    counts = {}
    for table in tables:
        # the key comes from format('%I.%I'): a correctly quoted qualified name
        cur.execute(f"SELECT count(*) FROM ONLY {table.key}")
        counts[table.key] = int(cur.fetchone()[0])
    return counts


def server_facts(conn: Any) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute(SERVER_SQL)
        database, version, version_num, size = cur.fetchone()
    conn.rollback()
    return {
        "database": database,
        "server_version": str(version).split(" ", 1)[0],
        "server_version_num": int(version_num),
        "database_size_bytes": int(size),
    }


def begin_snapshot(conn: Any) -> str:
    """Start the REPEATABLE READ READ ONLY transaction and export its snapshot."""
    import psycopg

    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.cursor() as cur:
        # the transaction idles while pg_dump runs; never let a server default end it
        cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
        cur.execute("SET LOCAL statement_timeout = 0")
        # as pg_dump does: fail rather than count rows a policy hides
        cur.execute("SET LOCAL row_security = off")
        cur.execute("SELECT pg_catalog.pg_export_snapshot()")
        return str(cur.fetchone()[0])


def dump_conninfo(dsn: str, conn: Any, params: dict[str, Any]) -> tuple[str, str | None]:
    """pg_dump's ``--dbname`` (no password), aimed at the server ``conn`` reached.

    With several hosts in the DSN pg_dump could otherwise land on another server,
    where the exported snapshot does not exist.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    conninfo, password = client_conninfo(dsn, f"{params['application_name']}-pg_dump")
    parts = conninfo_to_dict(conninfo)
    info = conn.info
    parts["host"] = info.host
    parts["port"] = str(info.port)
    if parts.get("hostaddr") and getattr(info, "hostaddr", None):
        parts["hostaddr"] = info.hostaddr
    parts.setdefault("connect_timeout", str(params["connect_timeout"]))
    return make_conninfo("", **parts), password


# ---------------------------------------------------------------------------
# streaming: producer | zstd -> sha256 + size -> storage writer


@dataclass
class StreamStats:
    bytes: int = 0
    sha256: str = ""
    uncompressed_bytes: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class _StderrCollector(threading.Thread):
    """Drain a child's stderr (so it never blocks), keeping the first 64 KiB."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._chunks: list[bytes] = []
        self._kept = 0

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self._stream.read(65536):
                if self._kept < STDERR_LIMIT:
                    self._chunks.append(chunk[: STDERR_LIMIT - self._kept])
                    self._kept += len(self._chunks[-1])

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")


def _enlarge_pipe(stream: Any) -> None:
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Feeder(threading.Thread):
    """Move the producer's stdout into zstd's stdin, counting bytes; close stdin at the end.

    The first bytes are read to check ``magic``; the rest moves pipe to pipe with
    ``splice(2)`` (no copy through Python) where the kernel supports it, else with
    read/write in 1 MiB chunks.
    """

    def __init__(self, source: Any, sink: Any, magic: bytes | None) -> None:
        super().__init__(daemon=True)
        self._source = source
        self._sink = sink
        self._magic = magic or b""
        self.bytes = 0
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        src, dst = self._source.fileno(), self._sink.fileno()
        try:
            if self._check_head(src, dst):
                self._move(src, dst)
        except OSError as exc:
            self.error = f"passing the dump to zstd failed: {exc.strerror or exc}"
        finally:
            with contextlib.suppress(OSError):
                self._sink.close()

    def _check_head(self, src: int, dst: int) -> bool:
        """Read until ``magic`` is complete (or EOF) and pass it on; False when it differs."""
        head = b""
        while len(head) < len(self._magic):
            chunk = os.read(src, len(self._magic) - len(head))
            if not chunk:
                break
            head += chunk
        if head and not self._magic.startswith(head):
            self.error = "the dump does not start like a pg_dump custom archive"
            return False
        self.bytes += len(head)
        _write_all(dst, head)
        return True

    def _move(self, src: int, dst: int) -> None:
        splice = getattr(os, "splice", None)
        while not self.stop.is_set():
            if splice is not None:
                try:
                    moved = splice(src, dst, CHUNK_SIZE)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    splice = None  # not supported here: copy instead
                    continue
            else:
                chunk = os.read(src, CHUNK_SIZE)
                _write_all(dst, chunk)
                moved = len(chunk)
            if not moved:
                return
            self.bytes += moved


@contextlib.contextmanager
def _children(
    producer_argv: list[str], zstd_argv_: list[str], env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """Start ``producer | zstd`` (children that die with the module); on any exception
    stop and reap both."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        producer = spawn(
            producer_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0
        )
        procs.append(producer)
        compressor = spawn(
            zstd_argv_,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=tool_env(None),
            bufsize=0,
        )
        procs.append(compressor)
        yield producer, compressor
    except BaseException:
        with signals_held():
            stop(procs, STOP_GRACE_S)
        raise
    finally:
        for proc in procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()


def stream_compressed(
    producer_argv: list[str],
    zstd_argv_: list[str],
    env: dict[str, str],
    writer: Any,
    tool: str,
    magic: bytes | None = None,
    while_running: Callable[[], None] | None = None,
) -> StreamStats:
    """Run ``producer | zstd`` into ``writer`` (not committed), hashing what is stored.

    ``while_running`` is called once both children run (pg_backup counts rows
    then). Raises ``BackupFailed`` when the producer or zstd exits non-zero or reports
    an error on stderr, or when the stream is not what it should be; the children are
    always reaped. Storage errors from ``writer.write`` propagate (as StorageError).
    """
    started = time.monotonic()
    digest = hashlib.sha256()
    stats = StreamStats()
    with _children(producer_argv, zstd_argv_, env) as (producer, compressor):
        _enlarge_pipe(producer.stdout)
        _enlarge_pipe(compressor.stdout)
        errs = [_StderrCollector(producer.stderr), _StderrCollector(compressor.stderr)]
        feeder = _Feeder(producer.stdout, compressor.stdin, magic)
        for thread in (*errs, feeder):
            thread.start()
        try:
            if while_running is not None:
                while_running()
            out = compressor.stdout.fileno()
            while chunk := os.read(out, CHUNK_SIZE):
                digest.update(chunk)
                writer.write(chunk)
                stats.bytes += len(chunk)
        except BaseException:
            feeder.stop.set()
            with signals_held():
                stop([producer, compressor], STOP_GRACE_S)
            raise
        finally:
            feeder.join()
        producer_rc, zstd_rc = producer.wait(), compressor.wait()
        for thread in errs:
            thread.join()
    stats.uncompressed_bytes = feeder.bytes
    stats.sha256 = digest.hexdigest()
    stats.seconds = time.monotonic() - started
    _check_children(tool, producer_rc, errs[0].text, zstd_rc, errs[1].text, feeder.error, stats)
    return stats


def _check_children(
    tool: str,
    producer_rc: int,
    producer_err: str,
    zstd_rc: int,
    zstd_err: str,
    feeder_error: str | None,
    stats: StreamStats,
) -> None:
    errors, others = classify_stderr(producer_err)
    problems = []
    if producer_rc != 0:
        detail = "; ".join(errors) or "; ".join(others[-3:]) or "no message"
        problems.append(f"{tool} failed (exit status {producer_rc}): {detail}")
    elif errors:
        problems.append(f"{tool} reported an error (exit status 0): " + "; ".join(errors))
    if zstd_rc != 0 or zstd_err.strip():
        problems.append(f"zstd failed (exit status {zstd_rc}): {zstd_err.strip() or 'no message'}")
    if feeder_error and not problems:
        problems.append(feeder_error)
    if not problems and stats.uncompressed_bytes == 0:
        problems.append(f"{tool} wrote nothing")
    if problems:
        raise BackupFailed("; ".join(problems))
    stats.warnings = [f"{tool}: {line}" if not line.startswith(tool) else line for line in others]


# ---------------------------------------------------------------------------
# the run


def find_zstd() -> str:
    found = shutil.which("zstd") or next((p for p in ZSTD_CANDIDATES if os.path.exists(p)), None)
    if not found:
        raise BackupFailed("zstd not found on PATH: install the zstd package")
    return found


class BackupRun:
    """One pg_backup invocation; remembers what it stored so a failure can remove it."""

    def __init__(self, module: RunContext) -> None:
        self.module = module
        self.params = module.params
        self.storage: Any = None
        self.conn: Any = None
        self.stored: list[str] = []  # committed keys, deleted again if the run fails
        self.sent: dict[str, dict[str, Any] | None] = {}  # object name -> writer's checksum
        self.warnings: list[str] = []
        self.tools: dict[str, str] = {}
        self.started = time.monotonic()
        self.cleaned_up: list[str] = []
        self.catalog: dict[str, Any] = {}  # {"catalog": Catalog} or {"error": str}
        self.written: dict[str, Any] | None = None  # the result, once the manifest is stored

    # -------------------------------------------------------------- preflight

    def open_storage(self) -> None:
        p = self.params
        try:
            self.storage = open_storage(
                p["storage_url"],
                endpoint_url=p["s3_endpoint_url"],
                region=p["s3_region"],
                sse=sse_of(p),
                kms_key_id=p["kms_key_id"],
                part_size=p["part_size_mb"] * MiB,
                concurrency=p["upload_concurrency"],
            )
        except StorageError as exc:
            raise BackupFailed(f"storage: {exc}") from None

    def fit_part_size(self, estimated_bytes: int) -> int | None:
        """Raise the S3 part size when estimated_bytes would need more than 10,000 parts.

        Returns the part size the upload will use (None for storage without parts).
        """
        configured = getattr(self.storage, "part_size", None)
        if configured is None:
            return None
        needed = part_size_for(estimated_bytes, self.params["part_size_mb"] * MiB)
        if needed > configured:
            self.storage.part_size = needed
        return self.storage.part_size

    def connect(self) -> dict[str, Any]:
        p = self.params
        try:
            self.conn = connect(p["dsn"], p["connect_timeout"], p["application_name"])
            return server_facts(self.conn)
        except PgConnectError as exc:
            raise BackupFailed(f"cannot connect: {exc}") from None
        except Exception as exc:
            raise BackupFailed(f"reading the server's version failed: {self.safe(exc)}") from None

    def resolve_tools(self, facts: dict[str, Any]) -> dict[str, str]:
        major = facts["server_version_num"] // 10000
        try:
            pg_dump = find_pg_tool("pg_dump", major, self.params["pg_dump_path"])
            version = tool_version(pg_dump)
        except (OSError, ValueError) as exc:
            raise BackupFailed(str(exc)) from None
        if version_major(version) < major:
            raise BackupFailed(
                f"pg_dump {version} ({pg_dump}) is older than the server "
                f"({facts['server_version']}): it cannot dump a newer server; install the "
                f"PostgreSQL {major} client tools or set pg_dump_path"
            )
        if version_major(version) == major and _minor(version) < _minor(facts["server_version"]):
            self.warnings.append(
                f"pg_dump {version} is an older minor release than the server "
                f"{facts['server_version']} (works; consider upgrading the client tools)"
            )
        tools = {"pg_dump": pg_dump, "pg_dump_version": version, "zstd": find_zstd()}
        if self.params["globals"]:
            sibling = os.path.join(os.path.dirname(pg_dump), "pg_dumpall")
            try:
                tools["pg_dumpall"] = (
                    sibling if os.path.exists(sibling) else find_pg_tool("pg_dumpall", major)
                )
            except FileNotFoundError as exc:
                raise BackupFailed(str(exc)) from None
        return tools

    def check_new(self, backup_id: str) -> None:
        try:
            existing = self.storage.list(f"{backup_id}/")
        except StorageError as exc:
            raise BackupFailed(f"storage: {exc}") from None
        if existing:
            raise BackupFailed(
                f"backup {backup_id} already exists in {self.storage.describe()} "
                f"({len(existing)} objects); refusing to overwrite it"
            )

    # ------------------------------------------------------------------ steps

    def plan(self, facts: dict[str, Any], tools: dict[str, str], backup_id: str) -> dict[str, Any]:
        """What would be backed up (check mode): read-only, rolled back."""
        self.conn.read_only = True
        try:
            with self.conn.cursor() as cur:
                tables = dumped_tables(cur, self.params)
        except Exception as exc:
            raise BackupFailed(f"listing the tables failed: {self.safe(exc)}") from None
        finally:
            with contextlib.suppress(Exception):
                self.conn.rollback()
        result = self.base_result(facts, tools, backup_id, tables)
        result.update(
            changed=True,
            database_size_bytes=facts["database_size_bytes"],
            estimated_bytes=sum(t.size for t in tables),
            cleaned_up=self.cleaned_up,
            verification=None,
            retention=self.retention_preview(facts["database"]),
        )
        result["msg"] = (
            f"would back up {facts['database']} ({len(tables)} tables, about "
            f"{human_bytes(result['estimated_bytes'])} of table data) to "
            f"{self.storage.describe()} as {backup_id}"
        )
        if result["retention"] is not None:
            doomed = result["retention"]["would_delete"]
            result["msg"] += f"; retention would delete {len(doomed)}"
        if self.cleaned_up:
            result["msg"] += f"; would remove {len(self.cleaned_up)} unfinished upload(s)"
        return result

    def base_result(
        self, facts: dict[str, Any], tools: dict[str, str], backup_id: str, tables: list[TableInfo]
    ) -> dict[str, Any]:
        return {
            "backup_id": backup_id,
            "database": facts["database"],
            "server_version": facts["server_version"],
            "pg_dump_path": tools["pg_dump"],
            "pg_dump_version": tools["pg_dump_version"],
            "storage": self.storage.describe(),
            "keys": self.keys(backup_id),
            "tables": [t.key for t in tables],
        }

    def keys(self, backup_id: str) -> dict[str, str | None]:
        return {
            "data": object_key(backup_id, DATA_OBJECT),
            "globals": object_key(backup_id, GLOBALS_OBJECT) if self.params["globals"] else None,
            "manifest": object_key(backup_id, MANIFEST_OBJECT),
        }

    def store_stream(
        self,
        key: str,
        argv: list[str],
        env: dict[str, str],
        tool: str,
        magic: bytes | None = None,
        while_running: Callable[[], None] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> StreamStats:
        """Stream ``argv | zstd`` into ``key``; commit only when everything checked out."""
        writer = self.storage.open_writer(key)
        try:
            zstd = zstd_argv(self.tools["zstd"], self.params["compression_level"])
            stats = stream_compressed(argv, zstd, env, writer, tool, magic, while_running)
            if before_commit is not None:
                before_commit()
            info = writer.commit()
        except BaseException:
            with contextlib.suppress(StorageError):
                writer.abort()
            raise
        self.stored.append(key)
        self.sent[key] = info.get("checksum")
        self.warnings += stats.warnings
        return stats

    def take_globals(
        self, backup_id: str, conninfo: str, env: dict[str, str], database: str
    ) -> dict[str, Any]:
        key = object_key(backup_id, GLOBALS_OBJECT)
        argv = pg_dumpall_argv(self.tools["pg_dumpall"], conninfo, database)
        stats = self.store_stream(key, argv, env, "pg_dumpall")
        return object_entry(key, stats.bytes, stats.sha256)

    def take_data(
        self,
        backup_id: str,
        conninfo: str,
        env: dict[str, str],
        snapshot: str,
        tables: list[TableInfo],
    ) -> tuple[StreamStats, dict[str, int]]:
        """pg_dump in the exported snapshot; row counts in that snapshot meanwhile."""
        counted: dict[str, Any] = {}

        def count_meanwhile() -> None:
            thread = threading.Thread(target=self._count_into, args=(tables, counted), daemon=True)
            counted["thread"] = thread
            thread.start()

        def counts_done() -> None:
            counted["thread"].join()
            if "error" in counted:
                raise BackupFailed(f"counting the rows failed: {counted['error']}")

        argv = pg_dump_argv(self.tools["pg_dump"], conninfo, snapshot, self.params)
        try:
            stats = self.store_stream(
                object_key(backup_id, DATA_OBJECT),
                argv,
                env,
                "pg_dump",
                magic=PG_DUMP_MAGIC,
                while_running=count_meanwhile,
                before_commit=counts_done,
            )
        except BaseException:
            if "thread" in counted and counted["thread"].is_alive():
                self._cancel_query()
            raise
        finally:
            if "thread" in counted:
                counted["thread"].join()
        return stats, counted["counts"]

    def _cancel_query(self) -> None:
        """Cancel the row count running on the module's connection (best effort)."""
        cancel = getattr(self.conn, "cancel_safe", None) or getattr(self.conn, "cancel", None)
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()

    def _count_into(self, tables: list[TableInfo], out: dict[str, Any]) -> None:
        try:
            with self.conn.cursor() as cur:
                out["counts"] = count_rows(cur, tables)
        except Exception as exc:
            out["error"] = self.safe(exc)

    def run(self) -> dict[str, Any]:
        self.open_storage()
        facts = self.connect()
        self.fit_part_size(facts["database_size_bytes"])
        self.tools = self.resolve_tools(facts)
        backup_id = self.params["backup_id"] or make_backup_id(facts["database"])
        self.check_new(backup_id)
        self.clean_stale()
        if self.module.check_mode:
            return self.plan(facts, self.tools, backup_id)
        try:
            self.storage.check_writable()
        except StorageError as exc:
            raise BackupFailed(f"storage: {exc}") from None
        try:
            conninfo, password = dump_conninfo(self.params["dsn"], self.conn, self.params)
        except ValueError as exc:
            raise BackupFailed(str(exc)) from None
        listing = self.list_meanwhile(facts["database"])
        env = tool_env(password)
        globals_entry = None
        if self.params["globals"]:
            globals_entry = self.take_globals(backup_id, conninfo, env, facts["database"])
        result = self.take_backup(facts, backup_id, conninfo, env, globals_entry)
        self.stored = []  # the manifest is written: the backup exists and is kept from here on
        self.written = result
        if listing is not None:
            listing.join()
        self.after_backup(result)
        result["total_s"] = round(time.monotonic() - self.started, 3)
        return result

    def take_backup(
        self,
        facts: dict[str, Any],
        backup_id: str,
        conninfo: str,
        env: dict[str, str],
        globals_entry: dict[str, Any] | None,
    ) -> dict[str, Any]:
        try:
            snapshot = begin_snapshot(self.conn)
            started = utc_now()
            with self.conn.cursor() as cur:
                tables = dumped_tables(cur, self.params)
        except Exception as exc:
            raise BackupFailed(f"preparing the snapshot failed: {self.safe(exc)}") from None
        stats, counts = self.take_data(backup_id, conninfo, env, snapshot, tables)
        close_quietly(self.conn)  # ends the snapshot transaction
        self.conn = None
        finished = utc_now()
        manifest = self.manifest(facts, backup_id, started, finished, stats, counts, globals_entry)
        self.write_manifest(backup_id, manifest)
        return self.success(facts, backup_id, tables, manifest, stats, started, finished)

    # ---------------------------------------------------- what earlier runs left; the catalog

    def clean_stale(self) -> None:
        """Unfinished uploads an interrupted backup left (SIGKILL: no cleanup ran), idle for
        stale_after_minutes: aborted (in check mode only listed), and said so."""
        try:
            removed, warnings = remove_stale_uploads(
                self.storage, self.params["stale_after_minutes"], self.module.check_mode
            )
        except StorageError as exc:
            self.warnings.append(f"could not look for unfinished uploads of earlier runs: {exc}")
            return
        self.cleaned_up.extend(removed)
        self.warnings.extend(warnings)

    def list_meanwhile(self, database: str) -> threading.Thread | None:
        """List the catalog (retention's input) while the dump runs; None without retention."""
        if not self.params["retention"]:
            return None

        def work() -> None:
            try:
                self.catalog["catalog"] = list_catalog(self.storage, database=database)
            except Exception as exc:  # StorageError, BackupError: messages hold no secret
                self.catalog["error"] = str(exc)

        thread = threading.Thread(target=work, name="opsbook-catalog", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------- verification and retention

    def after_backup(self, result: dict[str, Any]) -> None:
        """Prove the new backup intact in storage (recorded in verified.json), then apply
        retention. A failure here keeps the backup and says so (AfterBackupFailed)."""
        backup_id, manifest = result["backup_id"], result["manifest"]
        result["cleaned_up"] = self.cleaned_up
        result["verification"] = None
        result["retention"] = None
        if self.params["verify"]:
            sent = {
                name: self.sent.get(entry["key"])
                for name, entry in manifest_objects(manifest).items()
            }
            try:
                verification = verify_written(self.storage, backup_id, manifest, sent)
            except StorageError as exc:
                raise AfterBackupFailed(
                    f"backup {backup_id} was written but recording its verification failed: "
                    f"{exc}; it is kept, retention did not run",
                    result,
                ) from None
            result["verification"] = verification
            if verification["ok"] is not True:
                verdict = "FAILED" if verification["ok"] is False else "could not be completed"
                raise AfterBackupFailed(
                    f"backup {backup_id} was written but its verification {verdict}: "
                    + "; ".join(verification["errors"])
                    + ". A backup whose verification failed is never selected as latest; it "
                    "is kept for inspection, the database and the other backups are unchanged, "
                    "and retention did not run",
                    result,
                )
        if self.params["retention"]:
            result["retention"] = self.apply_retention(result)
        result["msg"] += self.after_note(result)

    def apply_retention(self, result: dict[str, Any]) -> dict[str, Any]:
        backup_id = result["backup_id"]
        if "error" in self.catalog:
            raise AfterBackupFailed(
                f"backup {backup_id} was stored; retention could not list the backups: "
                f"{self.catalog['error']}. Nothing was deleted; re-run to apply it",
                result,
            )
        catalog: Catalog = self.catalog["catalog"]
        verification = result["verification"]
        new = BackupEntry(backup_id, result["manifest"], verification)
        entries = [e for e in catalog.backups if e.backup_id != backup_id] + [new]
        keeps = {name: self.params[name] or 0 for name in KEEP_OPTIONS}
        plan = plan_retention([RetentionCandidate.from_entry(e) for e in entries], **keeps)
        doomed = [row["backup_id"] for row in plan.delete if row["backup_id"] != backup_id]
        deleted: list[str] = []
        for old in reversed(doomed):  # oldest first
            try:
                delete_backup(self.storage, old)
            except (StorageError, BackupError) as exc:
                result["retention"] = {"deleted": deleted, "would_delete": doomed}
                raise AfterBackupFailed(
                    f"backup {backup_id} was stored; retention failed deleting {old}: {exc}; "
                    f"deleted before it: {', '.join(deleted) or 'none'} (a backup is deleted "
                    "manifest first: it is either intact or no longer listed). Re-run to finish",
                    result,
                ) from None
            deleted.append(old)
        self.warnings += plan.warnings
        return {
            "deleted": deleted,
            "would_delete": doomed,
            "kept": [row["backup_id"] for row in plan.keep],
            "plan": plan.as_dict(),
        }

    def retention_preview(self, database: str) -> dict[str, Any] | None:
        """Check mode: what retention would delete now (the new backup not counted)."""
        if not self.params["retention"]:
            return None
        try:
            catalog = list_catalog(self.storage, database=database)
        except (StorageError, BackupError) as exc:
            raise BackupFailed(f"storage: listing the backups failed: {exc}") from None
        keeps = {name: self.params[name] or 0 for name in KEEP_OPTIONS}
        plan = plan_retention([RetentionCandidate.from_entry(e) for e in catalog.backups], **keeps)
        doomed = [row["backup_id"] for row in plan.delete]
        return {
            "deleted": [],
            "would_delete": doomed,
            "kept": [row["backup_id"] for row in plan.keep],
            "plan": plan.as_dict(),
        }

    @staticmethod
    def after_note(result: dict[str, Any]) -> str:
        note = ""
        verification = result.get("verification")
        if verification:
            how = {
                "checksum": "by the storage's own checksums",
                "reread": "by reading it back",
            }.get(verification["method"], "by checksums and by reading back")
            note += f"; verified {how}"
        retention = result.get("retention")
        if retention is not None:
            note += f"; retention deleted {len(retention['deleted'])}"
        return note

    def manifest(
        self,
        facts: dict[str, Any],
        backup_id: str,
        started: datetime,
        finished: datetime,
        stats: StreamStats,
        counts: dict[str, int],
        globals_entry: dict[str, Any] | None,
    ) -> dict[str, Any]:
        p = self.params
        return build_manifest(
            backup_id=backup_id,
            database=facts["database"],
            server_version=facts["server_version"],
            server_version_num=facts["server_version_num"],
            pg_dump_version=self.tools["pg_dump_version"],
            compression_level=p["compression_level"],
            started=started,
            finished=finished,
            data=object_entry(object_key(backup_id, DATA_OBJECT), stats.bytes, stats.sha256),
            uncompressed_bytes=stats.uncompressed_bytes,
            table_counts=counts,
            options={
                name: p[name]
                for name in (
                    "schemas",
                    "exclude_schemas",
                    "tables",
                    "exclude_tables",
                    "schema_only",
                    "globals",
                )
            },
            globals_object=globals_entry,
            env=p["env"],
            reason=p["reason"],
            labels=labels_of(p["labels"])[0],
            encryption=sse_of(p),
        )

    def write_manifest(self, backup_id: str, manifest: dict[str, Any]) -> None:
        key = object_key(backup_id, MANIFEST_OBJECT)
        try:
            self.storage.put_bytes(key, serialize_manifest(manifest))
        except StorageError as exc:
            self.stored.insert(0, key)  # it may have landed: remove it first
            raise BackupFailed(f"writing the manifest failed: {exc}") from None

    def success(
        self,
        facts: dict[str, Any],
        backup_id: str,
        tables: list[TableInfo],
        manifest: dict[str, Any],
        stats: StreamStats,
        started: datetime,
        finished: datetime,
    ) -> dict[str, Any]:
        result = self.base_result(facts, self.tools, backup_id, tables)
        duration = manifest["duration_s"]
        result.update(
            changed=True,
            manifest=manifest,
            bytes=stats.bytes,
            sha256=stats.sha256,
            uncompressed_bytes=stats.uncompressed_bytes,
            duration_s=duration,
            throughput_mb_s=throughput_mb_s(stats.uncompressed_bytes, duration),
        )
        result["msg"] = (
            f"backup {backup_id} of {facts['database']}: "
            f"{human_bytes(stats.uncompressed_bytes)} -> {human_bytes(stats.bytes)} in "
            f"{duration:.1f} s ({result['throughput_mb_s']} MB/s), {len(tables)} tables counted"
        )
        return result

    # ---------------------------------------------------------------- cleanup

    def cleanup(self) -> str:
        """Close the connection, delete what this run stored; a note on what remains."""
        close_quietly(self.conn)
        self.conn = None
        left = []
        for key in list(self.stored):
            try:
                self.storage.delete(key)
            except Exception:
                left.append(key)
        self.stored = []
        if left:
            return (
                f"; could not delete {', '.join(left)} (without a manifest they are never "
                "listed nor restored)"
            )
        return ""

    def safe(self, exc: BaseException) -> str:
        return safe_error(exc, self.params["dsn"])


def _minor(version: str) -> int:
    parts = version.split(".")
    try:
        return int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0


# What a backup that failed before its manifest leaves as it was (its failure message says so).
UNCHANGED = "the database and the existing backups are unchanged; retention did not run"


def failure(message: str) -> dict[str, Any]:
    """A failed result that changed nothing."""
    return {"failed": True, "changed": False, "msg": f"pg_backup: {message}"}


def after_backup_failure(run: BackupRun, message: str, result: dict[str, Any]) -> dict[str, Any]:
    """The result of a run whose backup was stored (it is kept): what failed, what it did."""
    close_quietly(run.conn)
    details = {k: v for k, v in result.items() if k not in ("msg", "changed", "failed")}
    return {**details, "failed": True, "changed": True, "msg": f"pg_backup: {message}"}


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, ``failed`` on a failure, its
    ``warnings``. main() runs it in a module process; on the controller's local connection
    the action plugin (action_plugins/pg_backup.py) runs it in the task's worker."""
    if not HAS_PSYCOPG:
        return failure("psycopg (psycopg 3) is not installed for this Python")
    errors = validate_params(params)
    if errors:
        return failure("invalid input: " + "; ".join(errors))
    run = BackupRun(RunContext(params, check_mode))
    result = run_backup(run)
    result["warnings"] = [*run.warnings, *(result.get("warnings") or [])]
    return scrub_data(result, [params["dsn"], *dsn_passwords(params["dsn"])])


def run_backup(run: BackupRun) -> dict[str, Any]:
    """run.run(), every failure turned into a result saying what was left."""
    with stop_signals():
        watch_ansible()
        try:
            result = run.run()
        except AfterBackupFailed as exc:
            return after_backup_failure(run, str(exc), exc.result)
        except (BackupFailed, StorageError, Interrupted, KeyboardInterrupt) as exc:
            what = str(exc)
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted):
                what = "interrupted by SIGINT"
            elif isinstance(exc, StorageError):
                what = f"storage: {exc}"
            if run.written is not None:  # the manifest is stored: the backup exists
                return after_backup_failure(
                    run,
                    f"{what} after backup {run.written['backup_id']} was stored, before its "
                    "verification and retention finished; the backup is kept",
                    run.written,
                )
            with signals_held():
                note = run.cleanup()
            return failure(f"{what}; no backup was written (no manifest){note}; {UNCHANGED}")
        except Exception as exc:
            if run.written is not None:
                return after_backup_failure(
                    run,
                    f"unexpected error after backup {run.written['backup_id']} was stored: "
                    f"{run.safe(exc)}; the backup is kept",
                    run.written,
                )
            with signals_held():
                note = run.cleanup()
            return failure(
                f"unexpected error: {run.safe(exc)}; no backup was written (no manifest){note}; "
                + UNCHANGED
            )
    close_quietly(run.conn)
    return result


def main() -> None:
    module = pg_module("pg_backup", argument_spec())
    finish_module(module, execute(module.params, module.check_mode))


if __name__ == "__main__":
    main()
