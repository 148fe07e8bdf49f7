#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_backup_info: the backup catalog - list, select, verify, retention (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup_info
short_description: List, select and verify opsbook backups, and apply retention
description:
  - Works on the backups M(opsbook.runbooks.pg_backup) writes to O(storage_url)
    (C(s3://bucket/prefix) or
    C(file:///path)). A backup exists only when its C(<backup_id>/manifest.json) exists
    and is valid; objects without one are reported as orphans (an interrupted or
    running backup, or the remains of a half-deleted one) and never listed, selected
    nor deleted here.
  - O(state=list) lists the backups, newest first (by the manifest's C(started)), each
    with its manifest and verification state, plus the orphans and the directories
    whose manifest is invalid (RV(invalid)).
  - O(state=select) picks one backup - O(backup_id), else the newest one started at or
    before O(before), else the newest - and fails when none matches. Backups whose
    latest verification failed are skipped unless named by id.
  - O(state=verify) re-reads every object of a backup (O(backup_id), else the newest)
    from storage, recomputes its sha256 and size and compares them with the manifest,
    without restoring anything. The result is recorded in
    C(<backup_id>/verified.json) (the manifest is never rewritten); the task fails when
    an object is missing or differs, or cannot be read.
  - "O(state=retention) keeps, per database, the O(keep_last) newest backups plus the
    newest backup of each of the last O(keep_daily) days, O(keep_weekly) ISO weeks and
    O(keep_monthly) months (UTC; only periods that have a backup count), and deletes the
    rest - with two safety rules: the newest verified backup is never deleted, and
    neither is anything newer than it (until a newer backup is verified, those are the
    only candidates for a more recent restore point). With no verified backup of a
    database nothing of it is deleted, with a warning: verify backups (as C(backup.yml)
    does after each one) to let retention prune."
  - "O(state=stale_uploads) removes the unfinished uploads that interrupted backups left (a
    SIGKILLed M(opsbook.runbooks.pg_backup) cannot abort its own - an S3 multipart upload, whose
    parts are
    billed until it is aborted, or a partial file) once they have not moved for
    O(stale_after_minutes) - only what opsbook's own writer started, never an upload or object
    of anyone else. M(opsbook.runbooks.pg_backup) does the same before each backup;
    C(routine_checks.yml) does
    it daily, so that they go even when no backup runs."
  - A backup is deleted manifest B(first), then the rest of its C(<backup_id>/) prefix, so
    an interrupted deletion leaves orphans, never a backup that looks restorable.
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
# S3 options, action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_s3
  - opsbook.runbooks.opsbook_controller
options:
  storage_url:
    description:
      - Where the backups are, C(s3://bucket/prefix) or C(file:///absolute/path).
    type: str
    required: true
  sse:
    description:
      - Server-side encryption for the objects this module writes (C(verified.json)), for
        buckets whose policy demands it.
    type: str
    choices: [none, AES256, "aws:kms"]
    default: none
  kms_key_id:
    description:
      - KMS key id or ARN for O(sse=aws:kms).
    type: str
  state:
    description:
      - What to do; see the description.
    type: str
    choices: [list, select, verify, retention, stale_uploads]
    default: list
  database:
    description:
      - Only consider the backups of this database (the manifest's C(database)).
    type: str
  backup_id:
    description:
      - With O(state=select) or O(state=verify), that backup.
      - Mutually exclusive with O(before).
    type: str
  before:
    description:
      - With O(state=select), the newest backup whose C(started) is at or before this
        ISO 8601 time (C(2024-05-01T12:00:00Z); no offset means UTC; a date means its
        midnight). C(started) is taken right after the dump's snapshot, so the backup
        holds nothing committed after O(before).
    type: str
  keep_last:
    description:
      - With O(state=retention), keep this many newest backups (per database).
    type: int
    default: 0
  keep_daily:
    description:
      - Keep the newest backup of each of the last N days that have a backup (UTC).
    type: int
    default: 0
  keep_weekly:
    description:
      - Keep the newest backup of each of the last N ISO weeks that have a backup.
    type: int
    default: 0
  keep_monthly:
    description:
      - Keep the newest backup of each of the last N months that have a backup.
    type: int
    default: 0
  stale_after_minutes:
    description:
      - With O(state=stale_uploads), an unfinished upload is removed once it has not moved
        for this many minutes (an S3 upload's newest part, a file's last write). A running
        backup sends a part every few seconds, so it is never taken for one left behind.
        0 removes every one found.
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    description: C(list) and C(select) only read. C(verify) reads and compares but does not
      write C(verified.json). C(retention) reports what it would delete and deletes
      nothing; C(stale_uploads) what it would remove.
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: Runs where the storage is reachable (group C(dbadmin) in opsbook).
notes:
  - O(state=retention) needs at least one of O(keep_last), O(keep_daily), O(keep_weekly),
    O(keep_monthly) at 1 or more.
  - Orphans (stored objects without a manifest) are never deleted by this module (a running
    backup looks the same). A bucket lifecycle rule (expiry of old prefixes) or a manual
    cleanup removes them. Unfinished uploads are not objects - O(state=stale_uploads)
    removes opsbook's own.
seealso:
  - module: opsbook.runbooks.pg_backup
    description: Take a backup.
"""

EXAMPLES = r"""
- name: List the backups of the app database
  pg_backup_info:
    storage_url: "{{ backup_storage_url }}"
    s3_endpoint_url: "{{ s3_endpoint_url | default(omit) }}"
    database: app
  register: catalog

- name: Pick the backup to restore from before the incident
  pg_backup_info:
    storage_url: "{{ backup_storage_url }}"
    state: select
    before: "2024-05-01T09:30:00Z"
  register: chosen

- name: Verify the backup just taken
  pg_backup_info:
    storage_url: "{{ backup_storage_url }}"
    state: verify
    backup_id: "{{ backup.backup_id }}"

- name: Remove the uploads interrupted backups left, idle for an hour
  pg_backup_info:
    storage_url: "{{ backup_storage_url }}"
    state: stale_uploads
    stale_after_minutes: 60
  register: stale

- name: Apply retention (7 last, 14 daily, 8 weekly, 12 monthly)
  pg_backup_info:
    storage_url: "{{ backup_storage_url }}"
    state: retention
    keep_last: 7
    keep_daily: 14
    keep_weekly: 8
    keep_monthly: 12
  register: retention
"""

RETURN = r"""
backups:
  description: The backups (with a valid manifest), newest first. With O(state=retention),
    those that remain.
  returned: O(state=list) or O(state=retention)
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup id.
      type: str
      sample: app-20240501T120000Z-3fa2
    database:
      description: The database it holds.
      type: str
      sample: app
    started:
      description: When its snapshot was taken (ISO 8601, UTC).
      type: str
      sample: "2024-05-01T12:00:00.120Z"
    finished:
      description: When its data object was stored.
      type: str
      sample: "2024-05-01T12:00:09.870Z"
    bytes:
      description: Size of its data object.
      type: int
      sample: 48213312
    sha256:
      description: sha256 of its data object.
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    env:
      description: The environment recorded in the manifest.
      type: str
      sample: production
    reason:
      description: The reason recorded in the manifest.
      type: str
      sample: scheduled
    labels:
      description: The labels recorded in the manifest.
      type: dict
      sample: {}
    globals:
      description: Whether it holds the roles and tablespaces (C(globals.sql.zst)).
      type: bool
      sample: false
    verified:
      description: Whether its latest verification succeeded.
      type: bool
      sample: true
    verification_failed:
      description: Whether its latest verification found a missing or different object.
      type: bool
      sample: false
    verified_at:
      description: When it was last verified (null when never).
      type: str
      sample: "2024-05-01T12:01:02.000Z"
    manifest:
      description: Its manifest (format_version 1, see M(opsbook.runbooks.pg_backup)).
      type: dict
count:
  description: Number of RV(backups).
  returned: O(state=list) or O(state=retention)
  type: int
  sample: 7
orphans:
  description: Objects that belong to no listed backup, per directory.
  returned: O(state=list)
  type: list
  elements: dict
  sample: [{prefix: app-20240501T120000Z-3fa2/, objects: 1, bytes: 48213312}]
orphans_count:
  description: Number of orphan objects.
  returned: always
  type: int
  sample: 1
invalid:
  description: Directories with a manifest that cannot be used (never listed, selected,
    restored, nor deleted), with the reasons.
  returned: O(state=list)
  type: list
  elements: dict
  sample: [{backup_id: app-20240501T120000Z-3fa2, errors: ["data object ... is missing"]}]
backup:
  description: The selected (or verified) backup, as in RV(backups).
  returned: O(state=select) or O(state=verify)
  type: dict
verification:
  description: The verification result.
  returned: O(state=verify)
  type: dict
  contains:
    backup_id:
      description: The backup verified.
      type: str
    ok:
      description: True when every object matches the manifest; false when one is missing
        or differs; null when one could not be read (nothing concluded, nothing recorded).
      type: bool
    verified_at:
      description: When (ISO 8601, UTC).
      type: str
    duration_s:
      description: Seconds spent reading.
      type: float
    objects:
      description: Per object (C(data), C(globals)) the key, expected and actual bytes and
        sha256, ok and error.
      type: dict
    errors:
      description: What did not match, in words.
      type: list
      elements: str
    recorded:
      description: Whether the result was written to C(<backup_id>/verified.json) (never in
        check mode).
      type: bool
results:
  description: The verification result per backup verified (one entry today).
  returned: O(state=verify)
  type: list
  elements: dict
plan:
  description: The retention plan.
  returned: O(state=retention)
  type: dict
  contains:
    keep:
      description: Backups kept, newest first, each with the rules that keep it
        (C(last 1 of 7), C(daily 2024-05-01), C(weekly 2024-W18), C(monthly 2024-05),
        C(newest verified backup), C(newer than the newest verified backup), ...).
      type: list
      elements: dict
    delete:
      description: Backups to delete, newest first, with the reason.
      type: list
      elements: dict
    newest_verified:
      description: Per database, the newest verified backup id (null when none).
      type: dict
    warnings:
      description: Warnings of the plan (also issued as task warnings).
      type: list
      elements: str
deleted:
  description: Backup ids deleted (empty in check mode).
  returned: O(state=retention)
  type: list
  elements: str
  sample: [app-20240401T120000Z-9c1d]
would_delete:
  description: Backup ids the plan deletes (what check mode would have deleted).
  returned: O(state=retention)
  type: list
  elements: str
removed_uploads:
  description: The unfinished uploads removed (in check mode - that would be), each as key,
    kind (multipart upload or temporary file), upload id or path, and when it started.
  returned: O(state=stale_uploads)
  type: list
  elements: str
  sample: ["app-20240430T020000Z-77aa/data.pgdump.zst (multipart upload 2~x, started
    2024-04-30T02:00:01Z)"]
storage:
  description: The storage, described without secrets.
  returned: always
  type: str
  sample: file:///var/backups/opsbook
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: "7 backups of app in file:///var/backups/opsbook, newest app-20240501T120000Z-3fa2"
"""

from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_backup import (
    BackupError,
    Catalog,
    RetentionCandidate,
    backup_id_errors,
    delete_backup,
    list_catalog,
    parse_time,
    plan_retention,
    remove_stale_uploads,
    retention_errors,
    select_backup,
    verify_backup,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    StorageError,
    open_storage,
)

SSE_CHOICES = ["none", "AES256", "aws:kms"]
KEEP_OPTIONS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")


class InfoFailed(Exception):
    """The requested operation cannot be done; extra result fields in ``details``."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "storage_url": {"type": "str", "required": True},
        "s3_endpoint_url": {"type": "str"},
        "s3_region": {"type": "str"},
        "sse": {"type": "str", "choices": SSE_CHOICES, "default": "none"},
        "kms_key_id": {"type": "str", "no_log": False},
        "state": {
            "type": "str",
            "choices": ["list", "select", "verify", "retention", "stale_uploads"],
            "default": "list",
        },
        "database": {"type": "str"},
        "backup_id": {"type": "str"},
        "before": {"type": "str"},
        "keep_last": {"type": "int", "default": 0},
        "keep_daily": {"type": "int", "default": 0},
        "keep_weekly": {"type": "int", "default": 0},
        "keep_monthly": {"type": "int", "default": 0},
        "stale_after_minutes": {"type": "int", "default": 60},
    }


# One way to pick a backup: the rule AnsibleModule applies in a module process; validate_params
# applies the same in the task's worker (action_plugins/pg_backup_info.py), with the rest.
ARGUMENT_RULES: dict[str, Any] = {"mutually_exclusive": [("backup_id", "before")]}


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = []
    state = params.get("state") or "list"
    if not (params.get("storage_url") or "").strip():
        errors.append("storage_url must not be empty")
    if params.get("kms_key_id") and params.get("sse") != "aws:kms":
        errors.append("kms_key_id needs sse=aws:kms")
    if params.get("backup_id") and params.get("before"):
        errors.append("parameters are mutually exclusive: backup_id|before")
    if params.get("backup_id"):
        errors += backup_id_errors(params["backup_id"])
        if state not in ("select", "verify"):
            errors.append("backup_id is only used with state=select or state=verify")
    if params.get("before"):
        if state != "select":
            errors.append("before is only used with state=select")
        else:
            try:
                parse_time(params["before"])
            except ValueError as exc:
                errors.append(f"before: {exc}")
    if (params.get("stale_after_minutes") or 0) < 0:
        errors.append(f"stale_after_minutes must be >= 0, got {params['stale_after_minutes']}")
    keeps = {name: params.get(name) or 0 for name in KEEP_OPTIONS}
    if state == "retention":
        errors += retention_errors(**keeps)
    elif any(keeps.values()):
        errors.append(", ".join(KEEP_OPTIONS) + " are only used with state=retention")
    return errors


def storage_of(params: dict[str, Any]) -> Any:
    sse = None if params.get("sse") in (None, "none") else params["sse"]
    return open_storage(
        params["storage_url"],
        endpoint_url=params.get("s3_endpoint_url"),
        region=params.get("s3_region"),
        sse=sse,
        kms_key_id=params.get("kms_key_id"),
    )


def _scope(params: dict[str, Any]) -> str:
    return f" of {params['database']}" if params.get("database") else ""


# ---------------------------------------------------------------------------
# states: each takes (storage, catalog, params, check_mode) and returns result fields


def do_list(
    storage: Any, catalog: Catalog, params: dict[str, Any], check_mode: bool
) -> dict[str, Any]:
    backups = [b.summary() for b in catalog.backups]
    newest = f", newest {backups[0]['backup_id']}" if backups else ""
    extra = ""
    if catalog.orphans:
        extra += f", {catalog.orphan_objects} orphan objects"
    if catalog.invalid:
        extra += f", {len(catalog.invalid)} invalid manifests"
    return {
        "changed": False,
        "backups": backups,
        "count": len(backups),
        "orphans": catalog.orphans,
        "invalid": catalog.invalid,
        "msg": f"{len(backups)} backups{_scope(params)} in {storage.describe()}{newest}{extra}",
    }


def _select(catalog: Catalog, params: dict[str, Any], skip_failed: bool = True) -> Any:
    try:
        return select_backup(
            catalog.backups,
            backup_id=params.get("backup_id"),
            before=params.get("before"),
            database=params.get("database"),
            skip_failed=skip_failed,
        )
    except BackupError as exc:
        raise InfoFailed(str(exc), count=len(catalog.backups)) from None


def do_select(
    storage: Any, catalog: Catalog, params: dict[str, Any], check_mode: bool
) -> dict[str, Any]:
    entry = _select(catalog, params)
    how = (
        f"by id {params['backup_id']}"
        if params.get("backup_id")
        else f"newest started at or before {params['before']}"
        if params.get("before")
        else "newest"
    )
    return {
        "changed": False,
        "backup": entry.summary(),
        "msg": f"selected {entry.backup_id} ({how}{_scope(params)}, "
        f"started {entry.manifest['started']})",
    }


def do_verify(
    storage: Any, catalog: Catalog, params: dict[str, Any], check_mode: bool
) -> dict[str, Any]:
    # the newest backup, even one whose previous verification failed
    entry = _select(catalog, {**params, "before": None}, skip_failed=False)
    try:
        result = verify_backup(storage, entry, record=not check_mode)
    except StorageError as exc:
        raise InfoFailed(f"recording the verification of {entry.backup_id} failed: {exc}") from None
    fields = {
        # check mode: what a real run would record
        "changed": bool(result["recorded"]) or (check_mode and result["ok"] is not None),
        "backup": entry.summary(),
        "verification": result,
        "results": [result],
    }
    if result["ok"] is True:
        fields["msg"] = (
            f"backup {entry.backup_id} verified: every object matches its manifest "
            f"({entry.manifest['bytes']} bytes, sha256 {entry.manifest['sha256'][:12]}...)"
        )
        return fields
    verdict = "FAILED" if result["ok"] is False else "could not be completed"
    raise InfoFailed(
        f"verification of {entry.backup_id} {verdict}: " + "; ".join(result["errors"]), **fields
    )


def do_retention(
    storage: Any, catalog: Catalog, params: dict[str, Any], check_mode: bool
) -> dict[str, Any]:
    keeps = {name: params.get(name) or 0 for name in KEEP_OPTIONS}
    plan = plan_retention([RetentionCandidate.from_entry(b) for b in catalog.backups], **keeps)
    would = [row["backup_id"] for row in plan.delete]
    deleted: list[str] = []
    if not check_mode:
        for backup_id in reversed(would):  # oldest first
            try:
                delete_backup(storage, backup_id)
            except (StorageError, BackupError) as exc:
                raise InfoFailed(
                    f"deleting {backup_id} failed: {exc}; deleted before it: "
                    f"{', '.join(deleted) or 'none'}; its manifest goes first, so it is "
                    "either intact or no longer listed",
                    changed=bool(deleted),
                    deleted=deleted,
                    plan=plan.as_dict(),
                ) from None
            deleted.append(backup_id)
    remaining = [b.summary() for b in catalog.backups if b.backup_id not in set(deleted)]
    verb = "would delete" if check_mode else "deleted"
    return {
        "changed": bool(deleted) or (check_mode and bool(would)),
        "plan": plan.as_dict(),
        "deleted": deleted,
        "would_delete": would,
        "backups": remaining,
        "count": len(remaining),
        "warnings_": plan.warnings,
        "msg": f"retention{_scope(params)}: keep {len(plan.keep)}, {verb} {len(would)}"
        + (f" ({', '.join(would)})" if would else ""),
    }


def do_stale_uploads(
    storage: Any, catalog: Catalog, params: dict[str, Any], check_mode: bool
) -> dict[str, Any]:
    minutes = params["stale_after_minutes"]
    removed, warnings = remove_stale_uploads(storage, minutes, check_mode)
    verb = "would remove" if check_mode else "removed"
    return {
        "changed": bool(removed),
        "removed_uploads": removed,
        "warnings_": warnings,
        "msg": f"{verb} {len(removed)} unfinished upload(s) of interrupted backups in "
        f"{storage.describe()} (idle for over {minutes} min)",
    }


STATES = {
    "list": do_list,
    "select": do_select,
    "verify": do_verify,
    "retention": do_retention,
    "stale_uploads": do_stale_uploads,
}


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Open the storage, read the catalog and run the state; raises InfoFailed."""
    try:
        storage = storage_of(params)
    except StorageError as exc:
        raise InfoFailed(f"storage: {exc}") from None
    try:
        catalog = list_catalog(storage, database=params.get("database"))
        result = STATES[params["state"]](storage, catalog, params, check_mode)
    except StorageError as exc:
        raise InfoFailed(f"storage: {exc}", storage=storage.describe()) from None
    except InfoFailed as exc:
        exc.details.setdefault("storage", storage.describe())
        exc.details.setdefault("orphans_count", catalog.orphan_objects)
        raise
    result["storage"] = storage.describe()
    result["orphans_count"] = catalog.orphan_objects
    return result


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, ``failed`` on a failure, its
    ``warnings``. main() runs it in a module process; on the controller's local connection
    the action plugin (action_plugins/pg_backup_info.py) runs it in the task's worker."""
    errors = validate_params(params)
    if errors:
        msg = "pg_backup_info: invalid input: " + "; ".join(errors)
        return {"failed": True, "changed": False, "msg": msg}
    try:
        result = run(params, check_mode)
    except InfoFailed as exc:
        return {"changed": False, **exc.details, "failed": True, "msg": f"pg_backup_info: {exc}"}
    result["warnings"] = result.pop("warnings_", [])
    return result


def main() -> None:
    run_module(argument_spec(), execute, **ARGUMENT_RULES)


if __name__ == "__main__":
    main()
