#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_restore: restore an opsbook backup into PostgreSQL, verified before and after (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_restore
short_description: Restore an opsbook backup into a new database or in place of an existing one
description:
  - Restores a backup taken by M(opsbook.runbooks.pg_backup) (a C(pg_dump) custom-format archive
    compressed by
    zstd, described by its C(manifest.json)) from O(storage_url) into the PostgreSQL server
    that O(dsn) reaches.
  - "Safe by default, in this order: (1) select the backup by its manifest (O(backup),
    O(before)); (2) read-only preflight on the server: the target exists or not as O(mode)
    wants, the role may create (and for C(replace), rename) databases, open sessions on the
    target, the client tools, free space in O(work_dir); (3) fetch the data object to a local
    file while computing its sha256 and size (with O(jobs) > 1, decompressing it in the same
    pass), compare both with the manifest and read the archive's table of contents with
    C(pg_restore --list) - a corrupted, undecompressable or unreadable backup is refused
    B(before anything on the server is touched); (4) restore into a new scratch
    database C(<target>__opsbook_restore_<id>) with C(pg_restore --exit-on-error);
    (5) compare the exact row count of every table in the manifest's C(table_counts) with the
    restored copy, and C(ANALYZE) it (both over O(jobs) connections); (6) put it in place."
  - "O(mode=new): the target must not exist; the verified scratch database is renamed to it,
    so the target only ever appears complete and verified."
  - "O(mode=replace): the target must exist. Only once the restored copy is verified, in one
    transaction, the target is renamed to C(<target>__opsbook_old_<UTC time>) and the scratch
    database to the target: the switch is atomic and takes milliseconds. The previous database
    is kept as a safety net (RV(previous_database)) unless O(keep_previous=false)."
  - "A failure at any step leaves the previous good state in place and says so in C(msg): the
    scratch database is dropped (kept with O(keep_failed=true)), a replaced target is
    untouched, a new target is never created."
  - "Typed confirmation: O(mode=replace) needs O(confirm) equal to the target database's name;
    when O(env) is C(production), every restore needs it, O(mode=new) included. A O(confirm)
    naming another database is always refused."
  - "Open sessions on a target that is replaced are a clear error naming how many sessions,
    from which applications and users; with O(terminate_connections=true) new connections are
    blocked at the switch and the sessions are ended with C(pg_terminate_backend)
    (RV(terminated_sessions))."
  - With O(jobs=1) the fetched (verified) object streams C(zstd -dc | pg_restore); with more
    jobs it is decompressed to a file in O(work_dir) while it is fetched and hashed (parallel
    C(pg_restore) needs a seekable file), and no compressed copy is kept.
  - The password reaches C(pg_restore) and C(psql) in their own environment (C(PGPASSWORD) of
    that child only), never a file nor their command line, and never appears in any message.
  - "Interrupted is not broken: SIGTERM, SIGINT or SIGHUP trigger the same cleanup as a failure
    (pg_restore stopped, the scratch database dropped, the target untouched) and the task fails
    saying so. Child processes die with the module even when it is SIGKILLed (Linux
    C(PR_SET_PDEATHSIG)); a scratch database a SIGKILL leaves is marked as opsbook's and dropped
    by a later restore (O(stale_after_minutes)). Temporary files are always removed."
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
requirements:
  - psycopg >= 3.1 (psycopg 3) for the Python interpreter that runs the module
  - the PostgreSQL client tools (C(pg_restore); C(psql) for O(globals)), preferably of the
    server's major version, and C(zstd), on the host that runs the module
# connections, action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
  - opsbook.runbooks.opsbook_s3
  - opsbook.runbooks.opsbook_controller
options:
  maintenance_db:
    description:
      - The database the module connects to for C(CREATE), C(ALTER ... RENAME) and C(DROP
        DATABASE) and for the session checks. Must not be O(target_database).
    type: str
    default: postgres
  storage_url:
    description: Where the backups are, C(s3://bucket/prefix) or C(file:///abs/path).
    type: str
    required: true
  backup:
    description:
      - C(latest) (the newest backup, or with O(before) the newest started at or before that
        time), or a backup id (C(<db>-<YYYYmmddTHHMMSSZ>-<hex>)).
      - Backups whose latest verification failed are skipped by C(latest); by id they are used
        (the sha256 check still applies).
    type: str
    default: latest
  before:
    description:
      - An ISO 8601 time (C(2024-05-01T12:00:00Z); no offset means UTC); with O(backup=latest)
        selects the newest backup started at or before it.
    type: str
  source_database:
    description:
      - Select only backups of this database (the C(database) of their manifest). Needed with
        O(backup=latest) when the storage holds backups of several databases.
    type: str
  target_database:
    description: The database to restore into (created by O(mode=new), replaced by O(mode=replace)).
    type: str
    required: true
  mode:
    description:
      - C(new) - the target must not exist; it is created, restored and verified.
      - C(replace) - the target must exist; it is replaced by a verified restored copy. Needs
        O(confirm).
    type: str
    choices: [new, replace]
    default: new
  confirm:
    description:
      - The typed confirmation. Must equal O(target_database) for O(mode=replace), and for every
        mode when O(env=production).
    type: str
  env:
    description:
      - The environment (pass C(opsbook_env)). C(production) makes O(confirm) mandatory even
        for O(mode=new).
    type: str
    aliases: [opsbook_env]
  jobs:
    description:
      - Parallel C(pg_restore) jobs. Above 1 the archive is decompressed into O(work_dir) while
        it is fetched (one pass), which then needs room for the uncompressed archive instead
        of the compressed one.
      - Also the number of connections that count the rows (sharing one snapshot) and run
        C(ANALYZE) (one table per statement, the largest first) after the restore.
    type: int
    default: 1
  terminate_connections:
    description:
      - For O(mode=replace) - when the target has open sessions, end them at the switch (new
        connections are blocked first, then C(pg_terminate_backend)). When false, open sessions
        are an error and nothing is replaced.
    type: bool
    default: false
  terminate_timeout_s:
    description: Seconds to wait for terminated sessions to go away before giving up.
    type: float
    default: 10
  verify_counts:
    description:
      - Compare the exact row count of every table in the manifest's C(table_counts) with the
        restored copy (C(count(*) FROM ONLY), as M(opsbook.runbooks.pg_backup) counts); any
        difference fails
        the restore.
    type: bool
    default: true
  analyze:
    description:
      - Run C(ANALYZE) on the restored copy before it is put in place (plans need statistics).
    type: bool
    default: true
  globals:
    description:
      - Before the data, apply the backup's globals object (C(pg_dumpall --globals-only) -
        roles and tablespaces) to the server with C(psql). Statements that fail (typically a
        role that exists) are reported as warnings; statements about the connecting role itself
        are skipped. Existing roles get the attributes of the backup. This changes the server
        and is not undone by a later failure. Fails when the backup holds no globals.
    type: bool
    default: false
  no_owner:
    description:
      - C(pg_restore --no-owner) - restored objects belong to the connecting role (or O(role)),
        not to the roles of the source server, which may not exist here.
    type: bool
    default: true
  no_privileges:
    description:
      - C(pg_restore --no-privileges) - GRANTs of the source are not restored (their roles may
        not exist here). Set O(no_owner=false) and O(no_privileges=false) to restore owners and
        grants onto a server that has the same roles.
    type: bool
    default: true
  no_tablespaces:
    description: C(pg_restore --no-tablespaces) - everything goes to the default tablespace.
    type: bool
    default: true
  role:
    description: C(pg_restore --role) - run the restore as this role (it then owns what is created).
    type: str
  owner:
    description:
      - Owner of the restored database. Default - the connecting role for O(mode=new), the
        replaced database's owner for O(mode=replace).
    type: str
  keep_previous:
    description:
      - For O(mode=replace) - keep the replaced database, renamed
        C(<target>__opsbook_old_<UTC time>), as a safety net (drop it by hand, or let a later
        run drop it with this option false). When false it is dropped right after the switch.
    type: bool
    default: true
  keep_failed:
    description:
      - Keep the half-restored scratch database of a failed restore for inspection instead of
        dropping it (it is then marked as kept, and never dropped by O(stale_after_minutes)).
    type: bool
    default: false
  stale_after_minutes:
    description:
      - "Scratch databases that an interrupted restore left (SIGKILLed: no cleanup could run)
        are dropped by the next restore on the same server - only databases opsbook marked
        as its scratch work (C(COMMENT ON DATABASE) C(opsbook:restore-scratch created=...))
        that no session uses and that were created more than this many minutes ago
        (RV(cleaned_up)). A running restore's scratch database always has sessions, and is
        younger than that when it has none for a moment. 0 drops every unused one (tests).
        The local work directories such restores left in O(work_dir) are removed too (a live
        run holds a lock on its own; RV(removed_work_dirs))."
    type: int
    default: 60
  drop_previous_after_days:
    description:
      - "Drop the previous databases that earlier O(mode=replace) runs kept for
        O(target_database) (C(<target>__opsbook_old_<UTC time>), by that exact name pattern
        only - never another database) once they are more than this many days old and no
        session uses them (RV(previous_dropped_by_age)). The one this run keeps is never
        dropped. Default - never; the result lists the ones kept (RV(previous_databases))."
    type: int
  preflight_only:
    description:
      - Select the backup and run the read-only preflight on the server (target existence for
        O(mode), privileges, open sessions, tools, free space, the typed confirmation), then
        stop - nothing is fetched, created or touched (C(changed) false). C(restore.yml) runs
        it before maintenance mode goes on, so that a restore it would refuse never takes the
        app down.
    type: bool
    default: false
  scratch_target:
    description:
      - The target is itself a scratch database (C(restore_drill.yml)'s). It keeps opsbook's
        scratch marker after the restore, so that when the run dies before dropping it, a later
        restore drops it once it is stale (see O(stale_after_minutes)).
    type: bool
    default: false
  work_dir:
    description:
      - Local directory for the fetched archive (a private temporary directory is made inside
        and always removed). Default - the system temporary directory.
      - Needs room for the stored backup, or with O(jobs) > 1 for the uncompressed archive
        (and the globals object) instead (checked before fetching).
    type: path
  pg_restore_path:
    description:
      - The C(pg_restore) to use. Default - the one of the server's major version
        (C(/usr/lib/postgresql/<major>/bin), C(/usr/pgsql-<major>/bin)), else C(PATH).
    type: path
  psql_path:
    description: The C(psql) to use for O(globals); found like O(pg_restore_path) by default.
    type: path
  zstd_path:
    description: The C(zstd) to use. Default - C(zstd) on C(PATH).
    type: path
attributes:
  check_mode:
    support: full
    description:
      - Check mode does every read - selects the backup, runs the preflight (target existence,
        privileges, open sessions, tools, free space), B(fetches the data object to O(work_dir)
        and checks its size and sha256 against the manifest) (with O(jobs) > 1 decompressing it
        on the way, as a real run does) and reads its table of contents -
        then reports what it would do (RV(actions)). It creates, drops and renames nothing and
        terminates no session; the fetched file is removed.
  diff_mode:
    support: none
    description: Databases are not diffed.
  platform:
    support: full
    platforms: posix
    description: Runs on the host that has the PostgreSQL client tools (group C(dbadmin), by
      default the controller's local connection).
notes:
  - O(dsn) names the server to restore B(into). The module connects to O(maintenance_db) on
    that server, not to the database the DSN names, so the DSN of the application database
    itself can be used.
  - The role of O(dsn) needs C(CREATEDB) (or superuser); for O(mode=replace) it must own the
    target database (or be a superuser) to rename it.
  - The restore works in a scratch database, so the server needs room for a second copy of the
    database while it runs (and keeps one with O(keep_previous=true)).
  - Database-level settings (C(ALTER DATABASE ... SET)), database GRANTs and connection limits
    are not part of a C(pg_dump) archive; a replaced database's are not carried over (a warning
    says so when it had any).
  - Writes made to the target while O(mode=replace) restores are not in the restored copy; they
    stay in the kept previous database. C(restore.yml) puts the app in maintenance first.
seealso:
  - module: opsbook.runbooks.pg_backup
  - module: opsbook.runbooks.pg_backup_info
"""

EXAMPLES = r"""
- name: Restore the latest backup of app into a new database (a drill, or a copy for analysis)
  pg_restore:
    dsn: "{{ database_url }}"
    storage_url: "{{ backup_storage_url }}"
    s3_endpoint_url: "{{ s3_endpoint_url | default(omit) }}"
    source_database: app
    target_database: app_restore_check
    env: "{{ opsbook_env }}"
    jobs: 2
  register: restore

- name: Replace the production database by the last backup before the incident
  pg_restore:
    dsn: "{{ database_url }}"
    storage_url: "{{ backup_storage_url }}"
    backup: latest
    before: "2024-05-01T09:55:00Z"
    source_database: app
    target_database: app
    mode: replace
    confirm: "{{ restore_confirm }}"  # the operator types: app
    env: "{{ opsbook_env }}"
    terminate_connections: true
    keep_previous: true
  register: restore

- name: Dry run - select, preflight and verify the backup's sha256, change nothing
  pg_restore:
    dsn: "{{ database_url }}"
    storage_url: "{{ backup_storage_url }}"
    backup: app-20240501T020000Z-1a2b
    target_database: app
    mode: replace
    confirm: app
  check_mode: true
"""

RETURN = r"""
restored:
  description: Whether the restore was made and put in place (false in check mode).
  returned: always
  type: bool
  sample: true
backup_id:
  description: The backup restored (or that would be restored).
  returned: always, except on invalid input
  type: str
  sample: app-20240501T020000Z-1a2b
backup:
  description: From its manifest - database, env, started, finished, server_version,
    pg_dump_version, bytes, sha256, uncompressed_bytes, reason, table_counts (the exact row
    count of every table, taken in the backup's snapshot).
  returned: success
  type: dict
  sample: {"database": "app", "finished": "2024-05-01T02:00:41.120Z", "bytes": 10485760}
backup_age_s:
  description: Seconds between the backup's C(finished) and now (the RPO of this restore).
  returned: success
  type: float
  sample: 3600.5
target_database:
  description: The target database.
  returned: always, except on invalid input
  type: str
  sample: app
mode:
  description: C(new) or C(replace).
  returned: always, except on invalid input
  type: str
  sample: replace
scratch_database:
  description: The name the restore was made under before it was put in place.
  returned: always, except on invalid input
  type: str
  sample: app__opsbook_restore_4f2a9c
previous_database:
  description: For O(mode=replace), the name the replaced database was given (kept unless
    RV(previous_dropped)); null otherwise.
  returned: always, except on invalid input
  type: str
  sample: app__opsbook_old_20240501T101500Z
previous_dropped:
  description: Whether the replaced database was dropped (O(keep_previous=false)).
  returned: always, except on invalid input
  type: bool
  sample: false
removed_work_dirs:
  description: Local work directories (with their fetched archive) that interrupted restores
    left in O(work_dir) and this run removed (in check mode - would remove). A live restore's
    is never taken - its run holds a lock on it.
  returned: always, except on invalid input
  type: list
  elements: str
  sample: [/tmp/opsbook-restore-k2v9x1qa]
cleaned_up:
  description: Scratch databases of interrupted restores dropped by this run (in check mode -
    that it would drop) - database, created (UTC), backup (the backup that restore was
    restoring).
  returned: always, except on invalid input
  type: list
  elements: dict
  sample: [{"database": "app__opsbook_restore_4f2a9c", "created": "2024-05-01T10:00:00Z",
            "backup": "app-20240501T020000Z-1a2b"}]
previous_databases:
  description: The previous databases of O(target_database) that replaces kept and that are
    still there after this run (each - database, replaced_at (UTC)), the newest first; drop one
    with C(DROP DATABASE) or let O(drop_previous_after_days) drop them.
  returned: always, except on invalid input
  type: list
  elements: dict
  sample: [{"database": "app__opsbook_old_20240501T101500Z", "replaced_at": "2024-05-01T10:15:00Z"}]
previous_dropped_by_age:
  description: Previous databases dropped by O(drop_previous_after_days) (in check mode - that
    it would drop).
  returned: always, except on invalid input
  type: list
  elements: str
  sample: [app__opsbook_old_20240301T101500Z]
open_sessions:
  description: Client sessions on the target at the preflight.
  returned: success
  type: int
  sample: 0
terminated_sessions:
  description: Sessions ended with C(pg_terminate_backend) at the switch - pid, usename,
    application_name, client_addr, state, terminated.
  returned: always, except on invalid input
  type: list
  elements: dict
  sample: [{"pid": 4242, "usename": "app", "application_name": "web", "terminated": true}]
table_counts_checked:
  description: How many tables' row counts were compared with the manifest (0 when
    O(verify_counts=false)).
  returned: always, except on invalid input
  type: int
  sample: 2
table_count_mismatches:
  description: Tables whose restored row count differs from the manifest - table, expected,
    restored (null when the table is missing).
  returned: always, except on invalid input
  type: list
  elements: dict
  sample: []
globals_restored:
  description: Whether the globals were applied.
  returned: success
  type: bool
  sample: false
jobs:
  description: Parallel pg_restore jobs used.
  returned: success
  type: int
  sample: 2
pg_restore_path:
  description: The pg_restore used.
  returned: success
  type: str
  sample: /usr/lib/postgresql/15/bin/pg_restore
pg_restore_version:
  description: Its version.
  returned: success
  type: str
  sample: "15.8"
server_version:
  description: The server's version.
  returned: success
  type: str
  sample: "15.8"
bytes_fetched:
  description: Bytes read from storage.
  returned: always, except on invalid input
  type: int
  sample: 10485760
duration_s:
  description: Seconds for the whole module run (the RTO of this restore, switch included).
  returned: always, except on invalid input
  type: float
  sample: 42.1
fetch_s:
  description: Seconds fetching the objects (sha256 computed on the way). With O(jobs) > 1 the
    data object is decompressed in the same pass, so this includes the decompression that
    overlapped the fetch.
  returned: always, except on invalid input
  type: float
  sample: 3.2
verify_s:
  description: Seconds comparing with the manifest and reading the archive's table of contents.
  returned: always, except on invalid input
  type: float
  sample: 0.1
decompress_s:
  description: O(jobs) > 1 only (null otherwise) - seconds waiting for C(zstd) to finish after
    the last byte was fetched (the part of the decompression that did not overlap the
    fetch; RV(fetch_s) + RV(decompress_s) is the whole one-pass fetch).
  returned: always, except on invalid input
  type: float
  sample: 1.5
restore_s:
  description: Seconds creating the scratch database and running pg_restore (globals included).
  returned: always, except on invalid input
  type: float
  sample: 30.4
counts_s:
  description: Seconds counting rows (over O(jobs) connections).
  returned: always, except on invalid input
  type: float
  sample: 1.2
analyze_s:
  description: Seconds of C(ANALYZE) (over O(jobs) connections).
  returned: always, except on invalid input
  type: float
  sample: 2.0
swap_s:
  description: Seconds putting the restored copy in place (rename, or terminate + switch).
  returned: always, except on invalid input
  type: float
  sample: 0.05
restore_mb_s:
  description: Uncompressed archive megabytes (10^6) per second of restore (decompression
    included).
  returned: success
  type: float
  sample: 48.3
actions:
  description: What the restore does, in order (in check mode - what it would do).
  returned: success
  type: list
  elements: str
  sample:
    - "create database 'app__opsbook_restore_4f2a9c' (a scratch name until the restore is
      verified)"
msg:
  description: One line - what was done; on failure, what failed and what was left as it was.
  returned: always
  type: str
  sample: "restored backup app-20240501T020000Z-1a2b into 'app' in 42.1s (2 table row counts
    match the manifest); previous database kept as 'app__opsbook_old_20240501T101500Z'"
"""

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_backup import (
    BackupError,
    client_conninfo,
    fetch_decompress,
    fetch_object,
    find_pg_tool,
    list_catalog,
    load_backup,
    parse_time,
    select_backup,
    split_table_key,
    tool_version,
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
    make_conninfo,
    pg_connection_argument_spec,
    pg_module,
    safe_error,
    scrub_data,
    scrub_secrets,
    sql,
    validate_connection_params,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_proc import (
    Interrupted,
    StageResult,
    run_pipeline,
    signals_held,
    spawn,
    stop_signals,
    tool_env,
    watch_ansible,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_restore_names import (  # pylint: disable=unused-import
    MAX_IDENTIFIER_BYTES,
    PREVIOUS_INFIX,
    leftover_databases,
    previous_database_name,
    previous_databases,
    previous_older_than,
    scratch_database_name,
    truncate_utf8,  # noqa: F401 - the restore's names, as tests/unit/test_restore_unit.py reads them
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    StorageError,
    open_storage,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import (
    human_bytes,
    typed_confirmation_problem,
)

WORK_PREFIX = "opsbook-restore-"  # the local work directory of a run
WORK_LOCK = ".opsbook-lock"
# COMMENT ON DATABASE of a scratch database while opsbook works in it (and of a drill's target
# until it is dropped): what a later restore needs to know it may drop it once unused.
SCRATCH_MARK = "opsbook:restore-scratch"
KEPT_MARK = "opsbook:kept-failed-restore"
_SCRATCH_MARK_RE = re.compile(
    r"^" + re.escape(SCRATCH_MARK) + r" created=(?P<created>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
    r"(?: backup=(?P<backup>\S+))?$"
)
TEMPLATE_DATABASES = ("template0", "template1")
CHUNK_BYTES = 1024 * 1024
STDERR_TAIL_CHARS = 1500
SIGPIPE_EXIT = -signal.SIGPIPE
TIMINGS = ("fetch_s", "verify_s", "decompress_s", "restore_s", "counts_s", "analyze_s", "swap_s")


class RestoreError(Exception):
    """A failure whose message is fit for the operator (never holds a secret)."""


# ---------------------------------------------------------------------------
# pure helpers: names, rules, arguments


def is_production(env: str | None) -> bool:
    return (env or "").strip().lower() == "production"


def confirmation_problem(
    mode: str, env: str | None, target: str, confirm: str | None
) -> str | None:
    """Why the typed confirmation does not allow this restore (None when it does).

    ``confirm`` must equal the target database's name for ``mode=replace`` and, in
    production, for every mode; the rule itself (a ``confirm`` naming another database is
    always refused) is ``opsbook_text.typed_confirmation_problem``, as in every preflight.
    """
    needed = None
    if mode == "replace":
        needed = "mode=replace replaces an existing database"
    elif is_production(env):
        needed = "env is production"
    return typed_confirmation_problem(
        target,
        confirm,
        needed,
        what="the target database",
        go_ahead=f"set confirm to the target database's name ({target!r}) to go ahead",
        quote=True,
    )


def database_name_problem(name: str | None, what: str) -> str | None:
    if not name:
        return f"{what} must not be empty"
    if "\x00" in name:
        return f"{what} must not contain a NUL character"
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        return f"{what} {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes"
    return None


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors (empty when valid); no I/O."""
    errors = validate_connection_params(params)
    target = params.get("target_database")
    maintenance = params.get("maintenance_db")
    for name, what in ((target, "target_database"), (maintenance, "maintenance_db")):
        problem = database_name_problem(name, what)
        if problem:
            errors.append(problem)
    if target in TEMPLATE_DATABASES:
        errors.append(f"target_database must not be a template database ({target})")
    if target and target == maintenance:
        errors.append(
            f"target_database and maintenance_db are both {target!r}: the module connects to "
            "maintenance_db to create, rename and drop databases; pick another maintenance_db"
        )
    if not (params.get("storage_url") or "").strip():
        errors.append("storage_url must not be empty")
    backup = (params.get("backup") or "").strip()
    if not backup:
        errors.append("backup must be 'latest' or a backup id")
    if params.get("before"):
        if backup != "latest":
            errors.append(
                "before selects the newest backup before a time: use it with backup=latest"
            )
        try:
            parse_time(params["before"])
        except ValueError as exc:
            errors.append(f"before: {exc}")
    if params.get("jobs", 1) < 1:
        errors.append(f"jobs must be >= 1, got {params['jobs']}")
    if params.get("terminate_timeout_s", 1) <= 0:
        errors.append(f"terminate_timeout_s must be > 0, got {params['terminate_timeout_s']}")
    if (params.get("stale_after_minutes") or 0) < 0:
        errors.append(f"stale_after_minutes must be >= 0, got {params['stale_after_minutes']}")
    days = params.get("drop_previous_after_days")
    if days is not None and days < 1:
        errors.append(f"drop_previous_after_days must be >= 1 (days), got {days}")
    return errors


def count_mismatches(
    expected: dict[str, int], restored: dict[str, int | None]
) -> list[dict[str, Any]]:
    """Tables whose restored row count differs from the manifest (a missing table is None)."""
    out = []
    for table in sorted(expected):
        got = restored.get(table)
        if got != expected[table]:
            out.append({"table": table, "expected": expected[table], "restored": got})
    return out


def describe_mismatches(mismatches: list[dict[str, Any]], limit: int = 5) -> str:
    parts = [
        f"{m['table']}: {'missing' if m['restored'] is None else m['restored']} rows restored, "
        f"manifest {m['expected']}"
        for m in mismatches[:limit]
    ]
    more = len(mismatches) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def describe_sessions(database: str, sessions: list[dict[str, Any]]) -> str:
    """'2 open sessions on database 'app': 2 from application 'web' as user 'app'' and so on."""
    groups: dict[tuple[str, str], int] = {}
    for session in sessions:
        key = (session.get("application_name") or "(none)", session.get("usename") or "(hidden)")
        groups[key] = groups.get(key, 0) + 1
    detail = ", ".join(
        f"{count} from application {app!r} as user {user!r}"
        for (app, user), count in sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    )
    noun = "session" if len(sessions) == 1 else "sessions"
    return f"{len(sessions)} open {noun} on database {database!r}: {detail}"


def tool_conninfo(dsn: str, dbname: str) -> tuple[str, str | None]:
    """(conninfo for ``dbname`` without the password, the password) for a client tool.

    The conninfo goes on the tool's argv (visible in ``ps``); the password goes
    into the tool's own environment (``opsbook_proc.tool_env``), never into a file.
    """
    conninfo, password = client_conninfo(dsn)
    return make_conninfo(conninfo, dbname=dbname), password


def dsn_for_database(dsn: str, dbname: str) -> str:
    """The DSN (password included) pointing at ``dbname``; for psycopg only, never argv."""
    return make_conninfo(dsn, dbname=dbname)


def pg_restore_argv(
    tool: str,
    conninfo: str,
    jobs: int,
    archive: str | None,
    no_owner: bool = True,
    no_privileges: bool = True,
    no_tablespaces: bool = True,
    role: str | None = None,
) -> list[str]:
    """pg_restore's argv: into ``conninfo``, stopping at the first error, never prompting.

    ``archive`` None reads the archive from stdin (one job only: a parallel restore
    needs a seekable file).
    """
    argv = [tool, "--dbname", conninfo, "--exit-on-error", "--no-password"]
    if no_owner:
        argv.append("--no-owner")
    if no_privileges:
        argv.append("--no-privileges")
    if no_tablespaces:
        argv.append("--no-tablespaces")
    if role:
        argv += ["--role", role]
    if jobs > 1:
        if archive is None:
            raise ValueError("a parallel restore (jobs > 1) needs an archive file")
        argv += ["--jobs", str(jobs)]
    if archive is not None:
        argv.append(archive)
    return argv


def major_of(version_num: int) -> int:
    """server_version_num to major: 150008 -> 15 (90624 -> 9: 9.6 is not told apart)."""
    return version_num // 10000


def stderr_tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    """A tool's stderr on one line (' | ' between lines), the end kept when too long."""
    lines = [" ".join(line.split()) for line in (text or "").strip().splitlines() if line.strip()]
    joined = " | ".join(lines)
    return joined if len(joined) <= limit else "..." + joined[-limit:]


_ROLE_LINE_RE = re.compile(r'^(?:CREATE|ALTER)\s+ROLE\s+("(?:[^"]|"")+"|[^\s;]+)[\s;]')


def filter_globals(text: str, keep_out_role: str) -> tuple[str, int]:
    """The globals script without its CREATE/ALTER ROLE lines for ``keep_out_role``.

    Applying the source server's ``ALTER ROLE <us> ... PASSWORD ...`` would change
    the password of the role this module connects as, half-way through a restore.
    Returns the script and how many lines were dropped.
    """
    kept, dropped = [], 0
    for line in text.splitlines(keepends=True):
        match = _ROLE_LINE_RE.match(line)
        if match:
            ident = match.group(1)
            name = ident[1:-1].replace('""', '"') if ident.startswith('"') else ident
            if name == keep_out_role:
                dropped += 1
                continue
        kept.append(line)
    return "".join(kept), dropped


def disk_space_needed(manifest: dict[str, Any], jobs: int) -> int:
    """Bytes of work_dir a restore needs, plus 5% headroom: the stored objects (jobs=1
    streams the data object from its local copy), or for jobs > 1 the decompressed archive
    instead of the data object (it is decompressed while it is fetched: no local copy of
    the compressed data object) and the other objects."""
    objects = {name: obj for name, obj in (manifest.get("objects") or {}).items() if obj}
    if jobs > 1:
        objects.pop("data", None)
    need = sum(int(obj.get("bytes") or 0) for obj in objects.values())
    if jobs > 1:
        need += int(manifest.get("uncompressed_bytes") or 0)
    return int(need * 1.05)


def integrity_problem(
    backup_id: str, what: str, expected: dict[str, Any], got_bytes: int, got_sha256: str
) -> str | None:
    """The 'corrupted' sentence when a fetched object differs from the manifest (else None)."""
    want_sha = str(expected.get("sha256") or "").lower()
    want_bytes = expected.get("bytes")
    if got_sha256 != want_sha:
        return (
            f"backup {backup_id} is corrupted ({what} object sha256 {got_sha256} != manifest "
            f"{want_sha}; {got_bytes} bytes, manifest {want_bytes})"
        )
    if want_bytes is not None and int(want_bytes) != got_bytes:
        return (
            f"backup {backup_id} is corrupted ({what} object is {got_bytes} bytes, manifest "
            f"{want_bytes})"
        )
    return None


def scratch_mark(created: datetime, backup_id: str) -> str:
    """The COMMENT that marks a database as opsbook's scratch work."""
    stamp = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{SCRATCH_MARK} created={stamp}" + (f" backup={backup_id}" if backup_id else "")


def stale_scratch(
    rows: list[tuple[str, str | None, int]], now: datetime, older_than_s: float
) -> list[dict[str, Any]]:
    """Of ``(name, comment, sessions)`` rows: opsbook's scratch databases that no session
    uses and that were created ``older_than_s`` or more ago, oldest first."""
    found = []
    for name, comment, sessions in rows:
        match = _SCRATCH_MARK_RE.match(comment or "")
        if not match or sessions:
            continue
        created = datetime.strptime(match["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if (now - created).total_seconds() >= older_than_s:
            found.append({"database": name, "created": match["created"], "backup": match["backup"]})
    return sorted(found, key=lambda item: (item["created"], item["database"]))


def make_work_dir(parent: str | None) -> tuple[Path, int]:
    """A private work directory (``opsbook-restore-*``) and the descriptor of the flock its run
    holds on it until it ends - a SIGKILL included: a later restore tells a dead run's
    directory from a live one by that lock."""
    path = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent))
    fd = os.open(path / WORK_LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def stale_work_dirs(parent: str, older_than_s: float) -> list[Path]:
    """Work directories of restores that died: their lock file is held by no process (an
    older opsbook's, without a lock file: unchanged for ``older_than_s``). Never another
    directory: the name and the lock file are opsbook's own."""
    found = []
    cutoff = time.time() - older_than_s
    for path in sorted(Path(parent).glob(WORK_PREFIX + "*")):
        if path.is_symlink() or not path.is_dir():
            continue
        lock = path / WORK_LOCK
        if not lock.exists():
            if path.stat().st_mtime < cutoff:
                found.append(path)
            continue
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live restore holds it
        finally:
            os.close(fd)  # releases the lock just taken
        found.append(path)
    return found


def databases_in(backups: list[Any]) -> list[str]:
    return sorted({entry.database for entry in backups})


def plan_actions(
    mode: str,
    target: str,
    scratch: str,
    backup_id: str,
    params: dict[str, Any],
) -> list[str]:
    """What a restore does, in order, as sentences (the check-mode report)."""
    steps = [f"fetch backup {backup_id}, check its size and sha256, read its table of contents"]
    if params.get("globals"):
        steps.append("apply the backup's globals (roles, tablespaces) to the server")
    steps.append(f"create database {scratch!r} (a scratch name until the restore is verified)")
    steps.append(f"restore the backup into it with pg_restore ({params.get('jobs', 1)} job(s))")
    if params.get("verify_counts", True):
        steps.append("compare every table's exact row count with the manifest")
    if params.get("analyze", True):
        steps.append("ANALYZE it")
    if mode == "new":
        steps.append(f"rename it to {target!r}")
        return steps
    if params.get("terminate_connections"):
        steps.append(f"block new connections to {target!r} and terminate its open sessions")
    steps.append(
        f"in one transaction: rename {target!r} to {target}{PREVIOUS_INFIX}<UTC time> and "
        f"{scratch!r} to {target!r}"
    )
    steps.append(
        "keep the previous database (reported)"
        if params.get("keep_previous", True)
        else "drop the previous database"
    )
    return steps


# ---------------------------------------------------------------------------
# child processes (run by opsbook_proc.run_pipeline): why a pipeline failed


def pipeline_failure(results: list[StageResult]) -> str | None:
    """Why a pipeline failed, naming the stage that broke it (None when every stage succeeded).

    An upstream stage killed by SIGPIPE only failed because a later one stopped
    reading: it is not reported when another stage failed.
    """
    failed = [r for r in results if r.returncode != 0]
    if not failed:
        return None
    other_failed = any(r.returncode != SIGPIPE_EXIT for r in failed)
    parts = []
    for result in failed:
        if result.returncode == SIGPIPE_EXIT and other_failed:
            continue
        how = (
            f"was killed by signal {-result.returncode}"
            if result.returncode < 0
            else f"exited {result.returncode}"
        )
        tail = stderr_tail(result.stderr)
        parts.append(f"{result.name} {how}" + (f": {tail}" if tail else ""))
    return "; ".join(parts)


# ---------------------------------------------------------------------------
# the archive's table of contents
# (fetching: ``fetch_object`` and ``fetch_decompress`` in ``opsbook_backup``)


@dataclass
class ArchiveInfo:
    """What ``pg_restore --list`` says about an archive."""

    format: str | None = None
    dumped_by: str | None = None
    dumped_from: str | None = None
    entries: int | None = None
    table_data: int = 0


def parse_toc(text: str) -> ArchiveInfo:
    """The header fields and the number of TABLE DATA entries of ``pg_restore --list``."""
    info = ArchiveInfo()
    for line in text.splitlines():
        if not line.startswith(";"):
            if " TABLE DATA " in line:
                info.table_data += 1
            continue
        key, _unused, value = line.lstrip(";").strip().partition(":")
        key, value = key.strip(), value.strip()
        if key == "Format":
            info.format = value
        elif key == "Dumped by pg_dump version":
            info.dumped_by = value
        elif key == "Dumped from database version":
            info.dumped_from = value
        elif key == "TOC Entries" and value.isdigit():
            info.entries = int(value)
    return info


# ---------------------------------------------------------------------------
# SQL


DATABASE_SQL = """
SELECT d.datname, pg_get_userbyid(d.datdba) AS owner, d.datallowconn, d.datconnlimit,
       d.datacl IS NOT NULL AS has_acl,
       (SELECT count(*) FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) AS settings,
       pg_has_role(current_user, d.datdba, 'MEMBER') AS can_own
FROM pg_database d
WHERE d.datname = %s
"""

ROLE_SQL = """
SELECT current_user, r.rolsuper, r.rolcreatedb,
       current_setting('server_version_num')::int, current_setting('server_version')
FROM pg_roles r
WHERE r.rolname = current_user
"""

SESSIONS_SQL = """
SELECT pid, usename, application_name, client_addr::text AS client_addr, state
FROM pg_stat_activity
WHERE datname = %s
  AND pid <> pg_backend_pid()
  AND (backend_type = 'client backend' OR backend_type IS NULL)
ORDER BY pid
"""

TABLE_EXISTS_SQL = """
SELECT 1
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r'
"""


def _ident(*names: str) -> Any:
    return sql.Identifier(*names)


def fetch_dicts(cur: Any, query: str, args: Any = None) -> list[dict[str, Any]]:
    cur.execute(query, args)
    names = [col.name for col in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def database_info(cur: Any, name: str) -> dict[str, Any] | None:
    rows = fetch_dicts(cur, DATABASE_SQL, (name,))
    return rows[0] if rows else None


def open_sessions(cur: Any, name: str) -> list[dict[str, Any]]:
    return fetch_dicts(cur, SESSIONS_SQL, (name,))


def terminate_sessions(cur: Any, sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pg_terminate_backend on each session; returns them with ``terminated`` set."""
    done = []
    for session in sessions:
        cur.execute("SELECT pg_terminate_backend(%s)", (session["pid"],))
        row = cur.fetchone()
        done.append({**session, "terminated": bool(row and row[0])})
    return done


def wait_sessions_gone(cur: Any, name: str, timeout_s: float) -> list[dict[str, Any]]:
    """Poll until ``name`` has no client session or ``timeout_s`` passed; return those left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = open_sessions(cur, name)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def create_database(cur: Any, name: str, owner: str | None) -> None:
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(_ident(name))
    if owner:
        query = sql.SQL("{} OWNER {}").format(query, _ident(owner))
    cur.execute(query)


def comment_database(cur: Any, name: str, comment: str | None) -> None:
    cur.execute(
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            _ident(name), sql.Literal(comment) if comment is not None else sql.SQL("NULL")
        )
    )


def database_comment(cur: Any, name: str) -> str | None:
    cur.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        (name,),
    )
    row = cur.fetchone()
    return row[0] if row else None


MARKED_DATABASES_SQL = """
SELECT d.datname, shobj_description(d.oid, 'pg_database'),
       (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid)::int
FROM pg_database d
WHERE shobj_description(d.oid, 'pg_database') LIKE %s
ORDER BY d.datname
"""


def drop_database(cur: Any, name: str, server_major: int) -> None:
    force = sql.SQL(" WITH (FORCE)") if server_major >= 13 else sql.SQL("")
    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(_ident(name), force))


def rename_database(cur: Any, old: str, new: str) -> None:
    cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(_ident(old), _ident(new)))


def allow_connections(cur: Any, name: str, allow: bool) -> None:
    cur.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            _ident(name), sql.SQL("true" if allow else "false")
        )
    )


def table_counts(cur: Any, tables: list[str]) -> dict[str, int | None]:
    """Exact row count of each manifest table key (None when the table does not exist),
    in one read-only snapshot; ``cur`` is an autocommit cursor.

    Counted as pg_backup counts them: ``count(*) FROM ONLY`` each plain table, with
    ``row_security = off`` (a policy that would hide rows makes the count fail).
    """
    counts: dict[str, int | None] = {}
    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        cur.execute("SET LOCAL row_security = off")
        for key in tables:
            schema, table = split_table_key(key)
            cur.execute(TABLE_EXISTS_SQL, (schema, table))
            if cur.fetchone() is None:
                counts[key] = None
                continue
            counts[key] = count_rows(cur, schema, table)
    finally:
        cur.execute("ROLLBACK")
    return counts


def count_rows(cur: Any, schema: str, table: str) -> int | None:
    cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(_ident(schema, table)))
    row = cur.fetchone()
    return int(row[0]) if row else None


TABLE_SIZES_SQL = """
SELECT n.nspname, c.relname, pg_table_size(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
"""

# What a database-wide ANALYZE processes (every table, partitioned table and materialized
# view, catalogs included, other sessions' temporary tables excluded), one statement each.
# Partitions are left out: ANALYZE of their partitioned root covers them (before
# PostgreSQL 17 a partitioned table cannot be analyzed without its partitions), so every
# relation is analyzed exactly once, as by a plain ANALYZE. Largest first (PostgreSQL 12+).
ANALYZE_TARGETS_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND c.relpersistence <> 't' AND NOT c.relispartition
ORDER BY CASE WHEN c.relkind = 'p'
              THEN (SELECT coalesce(sum(pg_table_size(t.relid)), 0)
                    FROM pg_partition_tree(c.oid) t)
              ELSE pg_table_size(c.oid) END DESC, 1, 2
"""


def largest_first(keys: list[str], sizes: dict[tuple[str, str], int]) -> list[str]:
    """Manifest table keys, the largest existing table first, missing tables last."""
    return sorted(keys, key=lambda k: (-sizes.get(split_table_key(k), -1), k))


def run_on_connections(
    connect_one: Callable[[], Any],
    jobs: int,
    items: list[Any],
    action: Callable[[Any, Any], Any],
    setup: Callable[[Any], None] | None = None,
) -> dict[Any, Any]:
    """``action(cursor, item)`` for every item, over ``jobs`` connections in parallel.

    Items are taken in order (put the longest first) by whichever connection is free;
    each worker runs ``setup(cursor)`` once first. Returns ``{item: result}``. The first
    failure stops the others (their running statement is cancelled) and is raised; so is
    an exception in the calling thread (a signal): every connection is cancelled and
    closed before this returns or raises.
    """
    if not items:
        return {}
    jobs = max(1, min(jobs, len(items)))
    pending = deque(items)
    lock = threading.Lock()
    results: dict[Any, Any] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    conns: list[Any] = []

    def work(conn: Any) -> None:
        try:
            with conn.cursor() as cur:
                if setup is not None:
                    setup(cur)
                while not stop.is_set():
                    with lock:
                        if not pending:
                            return
                        item = pending.popleft()
                    results[item] = action(cur, item)
        except BaseException as exc:
            if not stop.is_set():
                errors.append(exc)
            stop.set()

    threads = []
    try:
        for _unused in range(jobs):
            conns.append(connect_one())
        threads = [threading.Thread(target=work, args=(conn,), daemon=True) for conn in conns]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # short joins: a signal reaches the calling thread
                thread.join(0.2)
        if errors:
            raise errors[0]
        return results
    finally:
        stop.set()
        if any(thread.is_alive() for thread in threads):  # stop their running statements
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.cancel()
        for thread in threads:
            thread.join(10)
        for conn in conns:
            close_quietly(conn)


# ---------------------------------------------------------------------------
# signals: SIGTERM/SIGINT/SIGHUP become an exception so that cleanup runs

# ---------------------------------------------------------------------------
# the restore


@dataclass
class RunState:
    """What the run did on the server so far: drives cleanup and the failure message."""

    globals_applied: bool = False
    scratch_created: bool = False
    scratch_marked: bool = False  # COMMENT opsbook:restore-scratch: a later restore drops it
    scratch_dropped: bool = False
    scratch_drop_error: str | None = None
    server_gone: str | None = None  # the cleanup could not connect: why (the server went away)
    target_blocked: bool = False  # ALLOW_CONNECTIONS false, set on the target by this run
    target_allowconn: bool = True
    swapped: bool = False

    @property
    def touched(self) -> bool:
        return self.globals_applied or self.scratch_created


@dataclass
class RunReport:
    """What the run found and did, reported on success and failure alike."""

    preflight_sessions: list[dict[str, Any]] = field(default_factory=list)
    terminated: list[dict[str, Any]] = field(default_factory=list)
    previous: str | None = None
    previous_dropped: bool = False
    counts_checked: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    bytes_fetched: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    cleaned_up: list[dict[str, Any]] = field(default_factory=list)
    removed_work_dirs: list[str] = field(default_factory=list)
    previous_kept: list[dict[str, str]] = field(default_factory=list)
    previous_dropped_by_age: list[str] = field(default_factory=list)


class RestoreRun:
    """One restore: choose, preflight, fetch and verify, restore, count, put in place."""

    def __init__(self, module: RunContext) -> None:
        self.module = module
        self.params: dict[str, Any] = module.params
        self.check_mode: bool = module.check_mode
        self.dsn: str = self.params["dsn"]
        self.target: str = self.params["target_database"]
        self.mode: str = self.params["mode"]
        self.jobs: int = self.params["jobs"]
        self.maintenance_db: str = self.params["maintenance_db"]
        self.scratch = scratch_database_name(self.target, secrets.token_hex(3))
        self.started = time.monotonic()
        self.secrets = [self.dsn, *dsn_passwords(self.dsn)]
        self.state = RunState()
        self.report = RunReport()
        self.manifest: dict[str, Any] = {}
        self.archive = ArchiveInfo()
        self.role: dict[str, Any] = {}
        self.tools: dict[str, str] = {}
        self.tmp: Path | None = None
        self.tmp_lock: int | None = None  # flock held on the work directory while the run lives
        self.storage: Any = None
        self.owner: str | None = self.params.get("owner")

    # ------------------------------------------------------------ plumbing

    def scrub(self, text: str) -> str:
        return scrub_secrets(text, self.secrets)

    def warn(self, text: str) -> None:
        self.module.warn(self.scrub(text))

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            spent = self.report.timings.get(name, 0.0) + time.monotonic() - start
            self.report.timings[name] = round(spent, 3)

    @contextlib.contextmanager
    def cursor(self, dbname: str | None = None) -> Iterator[Any]:
        """An autocommit cursor on ``dbname`` (default: the maintenance database); always closed."""
        conn = connect(
            dsn_for_database(self.dsn, dbname or self.maintenance_db),
            connect_timeout=self.params["connect_timeout"],
            application_name=self.params["application_name"],
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            close_quietly(conn)

    def client_env(self, dbname: str) -> tuple[dict[str, str], str]:
        """(environment, conninfo without the password) for a client tool on ``dbname``."""
        conninfo, password = tool_conninfo(self.dsn, dbname)
        return tool_env(password), conninfo

    @property
    def backup_id(self) -> str:
        return str(self.manifest.get("backup_id") or "")

    @property
    def server_major(self) -> int:
        return major_of(int(self.role.get("version_num") or 0))

    # ------------------------------------------------------------ phases

    def execute(self) -> dict[str, Any]:
        """Run every phase; on failure undo what was done and raise RestoreError saying so."""
        try:
            self.choose_backup()
            self.preflight()
            if self.params["preflight_only"]:
                return self.result(restored=False)
            self.remove_stale_work_dirs()
            self.tmp, self.tmp_lock = make_work_dir(self.params["work_dir"])
            self.fetch_and_verify()
            if self.check_mode:
                return self.result(restored=False)
            self.restore()
            self.verify_counts()
            self.analyze()
            self.put_in_place()
            return self.result(restored=True)
        except (Exception, Interrupted) as exc:
            reason = self.describe(exc)
            with signals_held():
                self.cleanup_failed()
            if self.state.server_gone:
                reason = (
                    "the database server went away during the restore (it no longer accepts "
                    f"connections: {self.state.server_gone}): {reason}"
                )
            raise RestoreError(f"{reason}; {self.left_as()}") from None
        finally:
            with signals_held():
                self.remove_tmp()

    def describe(self, exc: BaseException) -> str:
        if isinstance(exc, RestoreError | PgConnectError | BackupError | Interrupted):
            return self.scrub(str(exc))
        if isinstance(exc, StorageError):
            return self.scrub(f"storage: {exc}")
        return f"{exc.__class__.__name__}: {safe_error(exc, self.dsn)}"

    def choose_backup(self) -> None:
        """The backup's manifest, by id or the newest (before a time) of one database."""
        params = self.params
        self.storage = open_storage(
            params["storage_url"],
            endpoint_url=params["s3_endpoint_url"],
            region=params["s3_region"],
        )
        source = params["source_database"]
        wanted = params["backup"].strip()
        if wanted != "latest":
            entry = load_backup(self.storage, wanted)
            if source and entry.database != source:
                raise RestoreError(
                    f"backup {wanted} is a backup of database {entry.database!r}, "
                    f"not of source_database {source!r}"
                )
        else:
            catalog = list_catalog(self.storage, database=source)
            names = databases_in(catalog.backups)
            if not source and len(names) > 1:
                raise RestoreError(
                    f"{self.storage.describe()} holds backups of {len(names)} databases "
                    f"({', '.join(names)}): set source_database to choose"
                )
            entry = select_backup(catalog.backups, before=params["before"], database=source)
        if entry.verification_failed:
            self.warn(f"the latest verification of backup {entry.backup_id} failed")
        self.manifest = entry.manifest

    def preflight(self) -> None:
        """Read-only checks of the server, the tools and work_dir: fail before any change."""
        with self.cursor() as cur:
            cur.execute(ROLE_SQL)
            user, superuser, createdb, version_num, version = cur.fetchone()
            self.role = {
                "user": user,
                "superuser": bool(superuser),
                "version_num": int(version_num),
                "version": str(version).split(" ", maxsplit=1)[0],
            }
            if not (superuser or createdb):
                raise RestoreError(f"role {user!r} may not create databases (it needs CREATEDB)")
            self.check_target(cur, database_info(cur, self.target))
            if database_info(cur, self.scratch) is not None:
                raise RestoreError(f"scratch database {self.scratch!r} exists already")
            self.note_leftovers(cur)
        self.check_tools()
        self.check_work_dir()

    def note_leftovers(self, cur: Any) -> None:
        """What earlier runs left: opsbook's stale scratch databases (dropped by this run,
        before it creates its own), unmarked ones (older opsbook versions: reported), and the
        previous databases replaces kept (listed; dropped by age when asked)."""
        cur.execute(MARKED_DATABASES_SQL, (SCRATCH_MARK + " %",))
        self.report.cleaned_up = stale_scratch(
            cur.fetchall(), datetime.now(UTC), 60.0 * self.params["stale_after_minutes"]
        )
        stale = {item["database"] for item in self.report.cleaned_up}
        cur.execute("SELECT datname FROM pg_database")
        names = [row[0] for row in cur.fetchall()]
        kinds = leftover_databases(names, self.target)
        unmarked = [name for name in kinds["scratch"] if name not in stale]
        if unmarked:
            self.warn(
                f"scratch databases of earlier restores of {self.target!r} that did not finish: "
                f"{', '.join(unmarked)}; they carry no opsbook marker (an older opsbook, or "
                "still running): drop them when nothing runs"
            )
        self.report.previous_kept = previous_databases(names, self.target)
        days = self.params["drop_previous_after_days"]
        if days:
            self.report.previous_dropped_by_age = previous_older_than(
                self.report.previous_kept, datetime.now(UTC), days, keep=None
            )

    def drop_stale(self) -> None:
        """Drop the stale scratch databases found by the preflight (never one in use)."""
        dropped = []
        for item in self.report.cleaned_up:
            try:
                with self.cursor() as cur:
                    cur.execute(MARKED_DATABASES_SQL, (SCRATCH_MARK + " %",))
                    still = stale_scratch(cur.fetchall(), datetime.now(UTC), 0.0)
                    if item["database"] not in {x["database"] for x in still}:
                        continue  # in use again, or gone: leave it
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(
                        _ident(item["database"])))  # fmt: skip
                dropped.append(item)
                self.warn(
                    f"dropped scratch database {item['database']!r} that an interrupted "
                    f"restore left (created {item['created']}"
                    + (f", restoring backup {item['backup']}" if item["backup"] else "")
                    + ")"
                )
            except Exception as exc:
                self.warn(
                    f"could not drop the stale scratch database {item['database']!r}: "
                    f"{safe_error(exc, self.dsn)}"
                )
        self.report.cleaned_up = dropped

    def drop_old_previous(self) -> None:
        """drop_previous_after_days: drop the old previous databases of the target (never the
        one this run kept, never one in use); then list what is left."""
        days = self.params["drop_previous_after_days"]
        with self.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            kept = previous_databases([row[0] for row in cur.fetchall()], self.target)
            dropped = []
            old = (
                previous_older_than(kept, datetime.now(UTC), days, self.report.previous)
                if days
                else []
            )
            for name in old:
                try:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(_ident(name)))
                    dropped.append(name)
                except Exception as exc:
                    self.warn(
                        f"could not drop the previous database {name!r} (older than {days} "
                        f"days): {safe_error(exc, self.dsn)}"
                    )
        self.report.previous_dropped_by_age = dropped
        self.report.previous_kept = [k for k in kept if k["database"] not in dropped]

    def check_target(self, cur: Any, target: dict[str, Any] | None) -> None:
        if self.mode == "new":
            if target is not None:
                raise RestoreError(
                    f"target database {self.target!r} exists; mode=new never touches an existing "
                    f"database (mode=replace with confirm={self.target!r} replaces it)"
                )
            return
        if target is None:
            raise RestoreError(
                f"target database {self.target!r} does not exist: nothing to replace (use mode=new)"
            )
        if not (self.role["superuser"] or target["can_own"]):
            raise RestoreError(
                f"role {self.role['user']!r} neither owns database {self.target!r} nor is a "
                "superuser: it may not rename it"
            )
        self.state.target_allowconn = bool(target["datallowconn"])
        self.owner = self.owner or target["owner"]
        if target["settings"] or target["has_acl"] or target["datconnlimit"] != -1:
            self.warn(
                f"database {self.target!r} has database-level settings, grants or a connection "
                "limit; a dump does not hold them and the restored database will not have them"
            )
        sessions = open_sessions(cur, self.target)
        self.report.preflight_sessions = sessions
        if sessions and not self.params["terminate_connections"]:
            raise RestoreError(
                describe_sessions(self.target, sessions)
                + "; stop them (restore.yml puts the app in maintenance first) or set "
                "terminate_connections=true to terminate them at the switch"
            )

    def check_tools(self) -> None:
        params = self.params
        try:
            path = find_pg_tool("pg_restore", self.server_major, params["pg_restore_path"])
            version = tool_version(path)
            self.tools = {"pg_restore": path, "pg_restore_version": version}
            if params["globals"]:
                self.tools["psql"] = find_pg_tool("psql", self.server_major, params["psql_path"])
        except (OSError, ValueError) as exc:
            raise RestoreError(str(exc)) from None
        zstd = params["zstd_path"] or shutil.which("zstd")
        if not zstd or not os.access(zstd, os.X_OK):
            raise RestoreError("zstd not found: install zstd or set zstd_path")
        self.tools["zstd"] = zstd
        archive_major = version_major(str(self.manifest.get("pg_dump_version") or "0"))
        if version_major(version) < archive_major:
            self.warn(
                f"pg_restore {version} is older than the pg_dump "
                f"{self.manifest.get('pg_dump_version')} that made the backup; "
                "it may not read the archive"
            )
        if params["globals"] and not (self.manifest.get("objects") or {}).get("globals"):
            raise RestoreError(
                f"globals=true but backup {self.backup_id} has no globals object "
                "(pg_backup takes one with globals=true)"
            )

    def check_work_dir(self) -> None:
        work_dir = self.params["work_dir"] or tempfile.gettempdir()
        if not os.path.isdir(work_dir):
            raise RestoreError(f"work_dir {work_dir!r} is not a directory")
        need = disk_space_needed(self.manifest, self.jobs)
        free = shutil.disk_usage(work_dir).free
        if free < need:
            streamed = disk_space_needed(self.manifest, 1)
            hint = (
                f" (jobs > 1: the archive decompressed; jobs=1 streams it instead and needs "
                f"about {human_bytes(streamed)})"
                if self.jobs > 1
                else ""
            )
            raise RestoreError(
                f"work_dir {work_dir!r} has {human_bytes(free)} free, the restore needs about "
                f"{human_bytes(need)}{hint}"
            )

    def fetch_and_verify(self) -> None:
        """Fetch the objects, compare bytes and sha256 with the manifest, read the archive's
        table of contents: all before the server is touched.

        jobs=1 keeps the fetched (verified) compressed object and later streams it through
        ``zstd -dc`` into pg_restore. jobs > 1 needs a seekable archive: the data object is
        fetched, hashed and decompressed to a file in one pass (``fetch_decompress``)."""
        if self.tmp is None:
            raise AssertionError("self.tmp is not None")
        data = self.manifest["objects"]["data"]
        if self.jobs > 1:
            archive = self.tmp / "data.pgdump"
            self.fetch_decompressed(data, archive)
        else:
            archive = self.tmp / "data.pgdump.zst"
            self.fetch_checked("data", data, archive)
        with self.timed("verify_s"):
            self.read_toc(archive, compressed=self.jobs == 1)
        if self.params["globals"]:
            self.fetch_checked("globals", self.manifest["objects"]["globals"],
                               self.tmp / "globals.sql.zst")  # fmt: skip

    def add_timing(self, name: str, seconds: float) -> None:
        self.report.timings[name] = round(self.report.timings.get(name, 0.0) + seconds, 3)

    def fetch_checked(self, what: str, entry: dict[str, Any], dest: Path) -> None:
        with self.timed("fetch_s"):
            got_bytes, got_sha = fetch_object(self.storage, str(entry["key"]), dest)
        self.report.bytes_fetched += got_bytes
        with self.timed("verify_s"):
            problem = integrity_problem(self.backup_id, what, entry, got_bytes, got_sha)
        if problem:
            raise RestoreError(problem)

    def fetch_decompressed(self, entry: dict[str, Any], dest: Path) -> None:
        """The data object, fetched, hashed and decompressed to ``dest`` in one pass; its size
        and sha256 are compared with the manifest first (a corrupted object is reported as
        such), then the decompressor's status (the stored bytes are the backup's own: the
        backup itself is bad). ``dest`` is removed on any failure."""
        try:
            got = fetch_decompress(
                self.storage,
                str(entry["key"]),
                dest,
                [self.tools["zstd"], "-dcq"],
                chunk_size=CHUNK_BYTES,
                env=dict(os.environ),
            )
        except OSError as exc:  # the decompressor or dest; StorageError is not an OSError
            raise RestoreError(
                f"backup {self.backup_id}: fetching and decompressing failed: {exc}"
            ) from None
        self.add_timing("fetch_s", got.fetch_s)
        self.add_timing("decompress_s", got.drain_s)
        self.report.bytes_fetched += got.bytes
        with self.timed("verify_s"):
            problem = integrity_problem(self.backup_id, "data", entry, got.bytes, got.sha256)
        if problem is None and not got.ok:
            how = (
                f"was killed by signal {-got.returncode}"
                if got.returncode < 0
                else f"exited {got.returncode}"
            )
            tail = stderr_tail(got.stderr)
            problem = (
                f"backup {self.backup_id} cannot be decompressed (zstd {how}"
                + (f": {tail}" if tail else "")
                + "); the stored object matches the manifest's size and sha256, so the backup "
                "itself is bad"
            )
        if problem:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise RestoreError(problem)

    def read_toc(self, archive: Path, compressed: bool = True) -> None:
        """``[zstd -dc |] pg_restore --list``: the archive is readable by this pg_restore."""
        if self.tmp is None:
            raise AssertionError("self.tmp is not None")
        toc = self.tmp / "toc.txt"
        stages = [[self.tools["pg_restore"], "--list", "--", str(archive)]]
        if compressed:
            stages = [[self.tools["zstd"], "-dcq", "--", str(archive)],
                      [self.tools["pg_restore"], "--list"]]  # fmt: skip
        results = run_pipeline(stages, dict(os.environ), self.tmp, stdout_path=toc)
        # pg_restore --list stops reading after the table of contents: zstd may get SIGPIPE.
        failure = pipeline_failure([r for r in results if r.returncode != SIGPIPE_EXIT])
        if failure:
            raise RestoreError(
                f"backup {self.backup_id}: the archive cannot be read ({self.scrub(failure)})"
            )
        self.archive = parse_toc(toc.read_bytes().decode("utf-8", errors="replace"))
        if (self.archive.format or "").upper() != "CUSTOM":
            raise RestoreError(
                f"backup {self.backup_id}: not a custom-format archive "
                f"(pg_restore --list says format {self.archive.format!r})"
            )

    def restore(self) -> None:
        """(Globals,) CREATE DATABASE <scratch>, then pg_restore into it."""
        if self.tmp is None:
            raise AssertionError("self.tmp is not None")
        with self.timed("restore_s"):
            if self.params["globals"]:
                self.apply_globals()
            if self.report.cleaned_up:
                self.drop_stale()
            with self.cursor() as cur:
                create_database(cur, self.scratch, self.owner)
                self.state.scratch_created = True
                comment_database(cur, self.scratch, scratch_mark(datetime.now(UTC), self.backup_id))
                self.state.scratch_marked = True
            env, conninfo = self.client_env(self.scratch)
            params = self.params
            restore_argv = pg_restore_argv(
                self.tools["pg_restore"],
                conninfo,
                self.jobs,
                str(self.tmp / "data.pgdump") if self.jobs > 1 else None,
                no_owner=params["no_owner"],
                no_privileges=params["no_privileges"],
                no_tablespaces=params["no_tablespaces"],
                role=params["role"],
            )
            stages = [restore_argv]
            if self.jobs == 1:
                zst = str(self.tmp / "data.pgdump.zst")
                stages = [[self.tools["zstd"], "-dcq", "--", zst], restore_argv]
            failure = pipeline_failure(run_pipeline(stages, env, self.tmp))
            if failure:
                raise RestoreError(
                    f"pg_restore into {self.scratch!r} failed: {self.scrub(failure)}"
                )

    def apply_globals(self) -> None:
        """Apply the globals script with psql; failing statements (a role that exists) become
        warnings. Statements about the connecting role are left out."""
        if self.tmp is None:
            raise AssertionError("self.tmp is not None")
        zstd = spawn(
            [self.tools["zstd"], "-dcq", "--", str(self.tmp / "globals.sql.zst")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = zstd.communicate()
        if zstd.returncode != 0:
            detail = stderr_tail(stderr.decode("utf-8", "replace"))
            raise RestoreError(f"decompressing the globals failed: {detail}")
        script, dropped = filter_globals(stdout.decode("utf-8"), self.role["user"])
        path = self.tmp / "globals.sql"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(script)
        env, conninfo = self.client_env(self.maintenance_db)
        argv = [self.tools["psql"], "-X", "-q", "-w", "-v", "ON_ERROR_STOP=0",
                "-d", conninfo, "-f", str(path)]  # fmt: skip
        self.state.globals_applied = True
        result = run_pipeline([argv], env, self.tmp)[0]
        if result.returncode != 0:
            raise RestoreError(
                f"applying the globals failed: {self.scrub(stderr_tail(result.stderr))}"
            )
        errors = [line for line in result.stderr.splitlines() if "ERROR:" in line]
        if errors:
            self.warn(
                f"globals: {len(errors)} statement(s) failed and were skipped (a role that "
                f"exists already is normal): {stderr_tail(chr(10).join(errors[:5]), 600)}"
            )
        if dropped:
            self.warn(
                f"globals: left out {dropped} statement(s) about the connecting role "
                f"{self.role['user']!r}"
            )

    def verify_counts(self) -> None:
        """Exact row counts of the restored copy against the manifest; any difference fails."""
        if not self.params["verify_counts"]:
            return
        expected = {str(k): int(v) for k, v in (self.manifest.get("table_counts") or {}).items()}
        if not expected:
            if not (self.manifest.get("options") or {}).get("schema_only"):
                self.warn(f"backup {self.backup_id} has no table_counts: no row counts to compare")
            return
        with self.timed("counts_s"):
            restored = self.count_tables(sorted(expected))
        self.report.counts_checked = len(expected)
        self.report.mismatches = count_mismatches(expected, restored)
        if self.report.mismatches:
            raise RestoreError(
                f"verification failed: {len(self.report.mismatches)} of {len(expected)} tables "
                f"differ from the manifest ({describe_mismatches(self.report.mismatches)})"
            )

    def connect_scratch(self) -> Any:
        return connect(
            dsn_for_database(self.dsn, self.scratch),
            connect_timeout=self.params["connect_timeout"],
            application_name=self.params["application_name"],
            autocommit=True,
        )

    def count_tables(self, tables: list[str]) -> dict[str, int | None]:
        """``table_counts`` of the scratch database; with jobs > 1 over ``jobs`` connections
        that share one exported snapshot (the same single read-only snapshot), the largest
        tables first."""
        with self.cursor(self.scratch) as cur:
            if self.jobs == 1 or len(tables) < 2:
                return table_counts(cur, tables)
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                cur.execute("SELECT pg_export_snapshot()")
                snapshot = cur.fetchone()[0]
                cur.execute(TABLE_SIZES_SQL)
                sizes = {(row[0], row[1]): int(row[2] or 0) for row in cur.fetchall()}
                present = [key for key in tables if split_table_key(key) in sizes]

                def join_snapshot(worker: Any) -> None:
                    worker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    use = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                    worker.execute(use)
                    worker.execute("SET LOCAL row_security = off")

                def count(worker: Any, key: str) -> int | None:
                    return count_rows(worker, *split_table_key(key))

                counted = run_on_connections(
                    self.connect_scratch, self.jobs, largest_first(present, sizes), count,
                    setup=join_snapshot,
                )  # fmt: skip
            finally:
                cur.execute("ROLLBACK")
        return {key: counted.get(key) for key in tables}

    def analyze(self) -> None:
        """ANALYZE the scratch database: one statement with jobs=1 (or a server before 12),
        else every relation a database-wide ANALYZE processes, over ``jobs`` connections,
        the largest first."""
        if not self.params["analyze"]:
            return
        with self.timed("analyze_s"):
            with self.cursor(self.scratch) as cur:
                if self.jobs == 1 or self.server_major < 12:
                    cur.execute("ANALYZE")
                    return
                cur.execute(ANALYZE_TARGETS_SQL)
                targets = [(row[0], row[1]) for row in cur.fetchall()]

            def analyze_one(worker: Any, name: tuple[str, str]) -> None:
                worker.execute(sql.SQL("ANALYZE {}").format(_ident(*name)))

            run_on_connections(self.connect_scratch, self.jobs, targets, analyze_one)

    def put_in_place(self) -> None:
        with self.timed("swap_s"), self.cursor() as cur:
            if self.mode == "new":
                with cur.connection.transaction():
                    rename_database(cur, self.scratch, self.target)
                    if not self.params["scratch_target"]:
                        comment_database(cur, self.target, None)  # no longer scratch work
                self.state.swapped = True
            else:
                self.switch(cur)
        if self.mode == "replace":
            self.after_switch()
        if self.mode == "replace" or self.params["drop_previous_after_days"]:
            self.drop_old_previous()

    def switch(self, cur: Any) -> None:
        """Replace: (block and terminate sessions,) then swap the names in one transaction."""
        if database_info(cur, self.target) is None:
            raise RestoreError(f"target database {self.target!r} disappeared during the restore")
        previous = previous_database_name(self.target, datetime.now(UTC))
        if database_info(cur, previous) is not None:
            raise RestoreError(f"database {previous!r} exists already")
        if self.params["terminate_connections"]:
            allow_connections(cur, self.target, False)
            self.state.target_blocked = True
            self.report.terminated = terminate_sessions(cur, open_sessions(cur, self.target))
            timeout = self.params["terminate_timeout_s"]
            left = wait_sessions_gone(cur, self.target, timeout)
            if left:
                raise RestoreError(
                    describe_sessions(self.target, left)
                    + f" still open {timeout:g}s after pg_terminate_backend"
                )
        else:
            sessions = open_sessions(cur, self.target)
            if sessions:
                raise RestoreError(
                    describe_sessions(self.target, sessions) + " (opened during the restore); "
                    "set terminate_connections=true to terminate them"
                )
        comment = database_comment(cur, self.target)  # the operator's, carried over
        with cur.connection.transaction():
            rename_database(cur, self.target, previous)
            rename_database(cur, self.scratch, self.target)
            comment_database(cur, self.target, comment)
        self.state.swapped = True
        self.report.previous = previous

    def after_switch(self) -> None:
        """Keep the previous database (connections allowed again) or drop it; only warns."""
        previous = self.report.previous
        if previous is None:
            raise AssertionError("previous is not None")
        keep = self.params["keep_previous"]
        try:
            with self.cursor() as cur:
                if not keep:
                    drop_database(cur, previous, self.server_major)
                    self.report.previous_dropped = True
                elif self.state.target_blocked and self.state.target_allowconn:
                    allow_connections(cur, previous, True)
        except Exception as exc:
            what = "allow connections to" if keep else "drop"
            self.warn(
                f"restored, but could not {what} the previous database {previous!r}: "
                f"{safe_error(exc, self.dsn)}"
            )
        self.state.target_blocked = False

    # ------------------------------------------------------------ failure and cleanup

    def cleanup_failed(self) -> None:
        """Undo what this run did on the server: unblock the target, drop the scratch database."""
        state = self.state
        if state.target_blocked and not state.swapped:
            with contextlib.suppress(Exception), self.cursor() as cur:
                allow_connections(cur, self.target, state.target_allowconn)
                state.target_blocked = False
        if not state.scratch_created or state.swapped:
            return
        if self.params["keep_failed"]:
            with contextlib.suppress(Exception), self.cursor() as cur:
                comment_database(cur, self.scratch, f"{KEPT_MARK}: kept for inspection")
            return
        try:
            with self.cursor() as cur:
                drop_database(cur, self.scratch, self.server_major)
            state.scratch_dropped = True
        except PgConnectError as exc:  # it answered before: the server went away
            state.server_gone = str(exc).removeprefix("connection failed: ")
            state.scratch_drop_error = "the server is gone"
        except Exception as exc:
            state.scratch_drop_error = safe_error(exc, self.dsn)

    def left_as(self) -> str:
        """What a failed run left behind, in words."""
        state = self.state
        if not state.touched:
            if self.mode == "new":
                return f"the target database {self.target!r} was not touched (it was not created)"
            return f"the target database {self.target!r} was not touched"
        parts = []
        if state.scratch_created:
            if self.params["keep_failed"]:
                parts.append(f"the half-restored database {self.scratch!r} was kept (keep_failed)")
            elif state.scratch_dropped:
                parts.append(f"the half-restored database {self.scratch!r} was dropped")
            elif state.scratch_marked:
                parts.append(
                    f"the half-restored database {self.scratch!r} could not be dropped "
                    f"({state.scratch_drop_error}); it is marked as opsbook's scratch work: the "
                    "next restore drops it once no session uses it and it is "
                    f"{self.params['stale_after_minutes']} minutes old (stale_after_minutes), "
                    f'or drop it by hand (DROP DATABASE "{self.scratch}")'
                )
            else:
                parts.append(
                    f"the half-restored database {self.scratch!r} could not be dropped "
                    f"({state.scratch_drop_error}): drop it by hand "
                    f'(DROP DATABASE "{self.scratch}")'
                )
        if self.mode == "replace":
            parts.append(
                f"the target database {self.target!r} is unchanged (the previous good state is "
                "in place)"
            )
            if state.target_blocked:
                parts.append(
                    f"but connections to {self.target!r} could not be allowed again: "
                    f"ALTER DATABASE {self.target} WITH ALLOW_CONNECTIONS true"
                )
        else:
            parts.append(f"the target database {self.target!r} was not created")
        if state.globals_applied:
            parts.append("the globals applied to the server were not undone")
        return "; ".join(parts)

    def remove_tmp(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self.tmp_lock is not None:
            os.close(self.tmp_lock)
            self.tmp_lock = None

    def remove_stale_work_dirs(self) -> None:
        """The work directories of restores that died (SIGKILL: no cleanup ran; their fetched
        archive stays) - removed, and said so; in check mode only reported."""
        parent = self.params["work_dir"] or tempfile.gettempdir()
        for path in stale_work_dirs(parent, 60.0 * self.params["stale_after_minutes"]):
            if not self.check_mode:
                shutil.rmtree(path, ignore_errors=True)
                if path.exists():
                    continue
            self.report.removed_work_dirs.append(str(path))
            verb = "would remove" if self.check_mode else "removed"
            self.warn(f"{verb} the work directory {path} an interrupted restore left")

    # ------------------------------------------------------------ result

    def common(self) -> dict[str, Any]:
        """Fields reported on success and failure alike."""
        report = self.report
        return {
            "backup_id": self.backup_id or None,
            "target_database": self.target,
            "mode": self.mode,
            "scratch_database": self.scratch,
            "previous_database": report.previous,
            "previous_dropped": report.previous_dropped,
            "terminated_sessions": report.terminated,
            "table_counts_checked": report.counts_checked,
            "table_count_mismatches": report.mismatches,
            "bytes_fetched": report.bytes_fetched,
            "cleaned_up": report.cleaned_up,
            "removed_work_dirs": report.removed_work_dirs,
            "previous_databases": report.previous_kept,
            "previous_dropped_by_age": report.previous_dropped_by_age,
            "duration_s": round(time.monotonic() - self.started, 3),
            **{name: report.timings.get(name) for name in TIMINGS},
        }

    def backup_summary(self) -> dict[str, Any]:
        keys = ("database", "env", "reason", "started", "finished", "server_version",
                "pg_dump_version", "bytes", "sha256", "uncompressed_bytes",
                "table_counts")  # fmt: skip
        return {key: self.manifest.get(key) for key in keys}

    def backup_age_s(self) -> float | None:
        try:
            finished = parse_time(str(self.manifest["finished"]))
        except (KeyError, ValueError):
            return None
        return round((datetime.now(UTC) - finished).total_seconds(), 1)

    def throughput(self) -> float | None:
        """Uncompressed archive MB (10^6) per second of restore, decompression included."""
        size = self.manifest.get("uncompressed_bytes")
        timings = self.report.timings
        seconds = (timings.get("restore_s") or 0) + (timings.get("decompress_s") or 0)
        if not size or not seconds:
            return None
        return round(int(size) / 1e6 / seconds, 1)

    def result(self, restored: bool) -> dict[str, Any]:
        out = {
            "changed": not self.params["preflight_only"],
            "restored": restored,
            **self.common(),
            "backup": self.backup_summary(),
            "backup_age_s": self.backup_age_s(),
            "jobs": self.jobs,
            "globals_restored": restored and bool(self.params["globals"]),
            "open_sessions": len(self.report.preflight_sessions),
            "pg_restore_path": self.tools.get("pg_restore"),
            "pg_restore_version": self.tools.get("pg_restore_version"),
            "server_version": self.role.get("version"),
            "restore_mb_s": self.throughput(),
            "actions": plan_actions(
                self.mode, self.target, self.scratch, self.backup_id, self.params
            ),
        }
        out["msg"] = summarize(out, self.check_mode, self.params["preflight_only"])
        return out


def summarize(result: dict[str, Any], check_mode: bool, preflight_only: bool = False) -> str:
    backup, target = result["backup_id"], result["target_database"]
    if preflight_only:
        verb = "replace" if result["mode"] == "replace" else "restore it into new database"
        return (
            f"preflight: backup {backup} selected; the server allows to {verb} {target!r}; "
            "nothing was fetched or changed"
        )
    if check_mode:
        verb = "replace" if result["mode"] == "replace" else "restore it into new database"
        size = human_bytes(result["bytes_fetched"])
        return (
            f"check mode: backup {backup} fetched and verified ({size}, size and sha256 match "
            f"the manifest); would {verb} {target!r}; nothing was changed"
        )
    text = (
        f"restored backup {backup} into {target!r} in {result['duration_s']:.1f}s "
        f"({result['table_counts_checked']} table row counts match the manifest)"
    )
    if result["previous_database"]:
        fate = "dropped" if result["previous_dropped"] else "kept"
        text += f"; previous database {fate} as {result['previous_database']!r}"
    if result["terminated_sessions"]:
        text += f"; terminated {len(result['terminated_sessions'])} session(s)"
    if result.get("cleaned_up"):
        names = ", ".join(repr(c["database"]) for c in result["cleaned_up"])
        text += f"; dropped stale scratch database(s) of interrupted restores: {names}"
    return text


# ---------------------------------------------------------------------------
# module


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        maintenance_db={"type": "str", "default": "postgres"},
        storage_url={"type": "str", "required": True},
        s3_endpoint_url={"type": "str"},
        s3_region={"type": "str"},
        backup={"type": "str", "default": "latest"},
        before={"type": "str"},
        source_database={"type": "str"},
        target_database={"type": "str", "required": True},
        mode={"type": "str", "choices": ["new", "replace"], "default": "new"},
        confirm={"type": "str"},
        env={"type": "str", "aliases": ["opsbook_env"]},
        jobs={"type": "int", "default": 1},
        terminate_connections={"type": "bool", "default": False},
        terminate_timeout_s={"type": "float", "default": 10.0},
        verify_counts={"type": "bool", "default": True},
        analyze={"type": "bool", "default": True},
        globals={"type": "bool", "default": False},
        no_owner={"type": "bool", "default": True},
        no_privileges={"type": "bool", "default": True},
        no_tablespaces={"type": "bool", "default": True},
        role={"type": "str"},
        owner={"type": "str"},
        keep_previous={"type": "bool", "default": True},
        keep_failed={"type": "bool", "default": False},
        stale_after_minutes={"type": "int", "default": 60},
        drop_previous_after_days={"type": "int"},
        scratch_target={"type": "bool", "default": False},
        preflight_only={"type": "bool", "default": False},
        work_dir={"type": "path"},
        pg_restore_path={"type": "path"},
        psql_path={"type": "path"},
        zstd_path={"type": "path"},
    )


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, ``failed`` on a failure, its
    ``warnings``. main() runs it in a module process; on the controller's local connection
    the action plugin (action_plugins/pg_restore.py) runs it in the task's worker."""
    if not HAS_PSYCOPG:
        missing = "psycopg (psycopg 3) is not installed for this Python"
        return {"failed": True, "changed": False, "msg": f"pg_restore: {missing}"}
    errors = validate_params(params)
    if errors:
        problems = "; ".join(errors)
        return {"failed": True, "changed": False,
                "msg": f"pg_restore: invalid input: {problems}; nothing was touched"}  # fmt: skip
    context = RunContext(params, check_mode)
    run = RestoreRun(context)
    problem = confirmation_problem(
        params["mode"], params["env"], params["target_database"], params["confirm"]
    )
    if problem:
        result = {"failed": True, "changed": False, "restored": False, **run.common(),
                  "msg": f"pg_restore: refused: {problem}; nothing was touched"}  # fmt: skip
    else:
        try:
            with stop_signals():
                watch_ansible()
                result = run.execute()
        except RestoreError as exc:
            result = {"failed": True, "changed": run.state.touched, "restored": False,
                      **run.common(), "msg": f"pg_restore: {exc}"}  # fmt: skip
    result["warnings"] = context.warnings
    return scrub_data(result, run.secrets)


def main() -> None:
    module = pg_module("pg_restore", argument_spec())
    finish_module(module, execute(module.params, module.check_mode))


if __name__ == "__main__":
    main()
