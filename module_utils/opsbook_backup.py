# Copyright: opsbook contributors
# Apache-2.0
"""Backups in storage: ids, manifests, the catalog, verification and retention.

Shared by ``pg_backup``, ``pg_backup_info`` and ``pg_restore``. The storage itself
(``s3://`` and ``file://``) is ``module_utils/opsbook_storage.py``; everything here
takes a ``Storage`` object and only uses its documented API.

Layout of one backup, keys relative to the storage URL's prefix::

    <backup_id>/data.pgdump.zst   pg_dump --format=custom --compress=0, compressed by zstd
    <backup_id>/globals.sql.zst   optional: pg_dumpall --globals-only, compressed by zstd
    <backup_id>/manifest.json     written LAST: a backup without one does not exist
    <backup_id>/verified.json     the latest verification (the manifest is never rewritten)

``backup_id`` is ``<dbname>-<YYYYmmddTHHMMSSZ>-<4 hex>``.

Sections:

* ids and keys: ``make_backup_id``, ``parse_backup_id``, ``backup_id_errors``, ``object_key``;
* times: ``utc_now``, ``format_time``, ``parse_time`` (ISO 8601, UTC, ``Z``);
* table keys: ``table_key`` / ``split_table_key`` (``schema.table``, quoted like
  ``quote_ident`` when needed, e.g. ``"My Schema".users``);
* manifest (format_version 1): ``build_manifest``, ``serialize_manifest``,
  ``parse_manifest``, ``validate_manifest``;
* hashing: ``HashingReader``, ``hash_stream``; fetching: ``fetch_object`` (to a file, hashed
  on the way) and ``fetch_decompress`` (fetch, hash and decompress in one pass);
* catalog: ``list_catalog`` -> ``Catalog`` of ``BackupEntry`` (newest first), orphans and
  invalid manifests; ``load_backup`` (one id); ``select_backup`` (latest / id / before);
* verification: ``verify_backup`` (streams each object, recomputes sha256 and size,
  writes ``<id>/verified.json``) and ``verify_written`` (right after a backup: by the
  store's own checksums where it keeps them, else by reading back);
* retention: ``plan_retention`` (a pure function) and ``delete_backup``;
* what interrupted backups left: ``remove_stale_uploads`` (unfinished uploads, idle long enough);
* PostgreSQL client tools: ``client_conninfo``, ``find_pg_tool``, ``tool_version`` (the
  password reaches pg_dump/pg_restore in their own environment, ``opsbook_proc.tool_env``:
  never a file, never argv). Child processes are started and stopped by ``opsbook_proc``.

Modules import it as
``ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_backup``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_proc import (
    signals_held,
    spawn,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_proc import (
    stop as stop_children,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_common import (
    StorageError,
)

FORMAT_VERSION = 1
DATA_OBJECT = "data.pgdump.zst"
GLOBALS_OBJECT = "globals.sql.zst"
MANIFEST_OBJECT = "manifest.json"
VERIFIED_OBJECT = "verified.json"
KNOWN_OBJECTS = (DATA_OBJECT, GLOBALS_OBJECT, MANIFEST_OBJECT, VERIFIED_OBJECT)
CHUNK_SIZE = 1024 * 1024
ENCRYPTIONS = (None, "AES256", "aws:kms")
MAX_BACKUP_ID_LENGTH = 200

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_ID_RE = re.compile(r"^(?P<db>.+)-(?P<ts>\d{8}T\d{6}Z)-(?P<token>[0-9a-f]{4})$")
_ID_SAFE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DBNAME_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


class BackupError(Exception):
    """A backup cannot be used (missing, invalid, not selectable). Messages hold no secrets."""


class ManifestError(BackupError):
    """A manifest failed to parse or validate; ``errors`` lists every problem."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [message])


class SelectionError(BackupError):
    """No backup matches the selection."""


# ---------------------------------------------------------------------------
# times


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """``2024-05-01T12:00:00.123Z`` (UTC, milliseconds). A naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time or date into an aware UTC datetime.

    ``2024-05-01T12:00:00Z``, ``2024-05-01T14:00:00+02:00``, ``2024-05-01 12:00`` and
    ``2024-05-01`` (midnight) are accepted; a time without an offset is UTC.
    Raises ``ValueError`` with a readable message otherwise.
    """
    raw = (text or "").strip()
    if not raw:
        raise ValueError("empty time")
    try:
        moment = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1] in "zZ" else raw)
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 time: {raw!r} (expected e.g. 2024-05-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# ---------------------------------------------------------------------------
# backup ids and keys


def make_backup_id(database: str, now: datetime | None = None, token: str | None = None) -> str:
    """``<dbname>-<YYYYmmddTHHMMSSZ>-<4 hex>``; ids of one database sort by time.

    Characters of the database name that are not safe in a storage key
    (anything but letters, digits, ``_ . -``) become ``_``; the manifest keeps
    the real name.
    """
    moment = (now or utc_now()).astimezone(UTC)
    name = _DBNAME_UNSAFE_RE.sub("_", database or "").strip(".-_") or "db"
    name = name[: MAX_BACKUP_ID_LENGTH - 25]
    token = token if token is not None else secrets.token_hex(2)
    return f"{name}-{moment.strftime(_ID_TIME_FORMAT)}-{token}"


def parse_backup_id(backup_id: str) -> tuple[str, datetime] | None:
    """``(dbname part, time)`` of a generated id; None for any other id."""
    match = _ID_RE.match(backup_id or "")
    if not match:
        return None
    try:
        moment = datetime.strptime(match.group("ts"), _ID_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return match.group("db"), moment


def backup_id_errors(backup_id: str) -> list[str]:
    """Why ``backup_id`` cannot name a backup directory in storage (empty when it can).

    An id is one path segment: letters, digits, ``_ . -``, starting with a letter or
    digit, at most 200 characters, never ``..``.
    """
    if not backup_id:
        return ["backup_id must not be empty"]
    errors = []
    if len(backup_id) > MAX_BACKUP_ID_LENGTH:
        errors.append(f"backup_id is longer than {MAX_BACKUP_ID_LENGTH} characters")
    if not _ID_SAFE_RE.match(backup_id) or ".." in backup_id:
        errors.append(
            f"backup_id {backup_id!r} may only hold letters, digits, '_', '.', '-' "
            "(starting with a letter or digit, no '..')"
        )
    return errors


def object_key(backup_id: str, name: str) -> str:
    """``<backup_id>/<name>``, e.g. ``object_key(bid, DATA_OBJECT)``."""
    return f"{backup_id}/{name}"


# ---------------------------------------------------------------------------
# table keys: schema.table, each part quoted like quote_ident() when needed


_UNQUOTED_PART = r"[^.\"]+"
_QUOTED_PART = r"\"(?:[^\"]|\"\")*\""
_TABLE_KEY_RE = re.compile(
    rf"^(?P<schema>{_QUOTED_PART}|{_UNQUOTED_PART})\.(?P<name>{_QUOTED_PART}|{_UNQUOTED_PART})$"
)
_PLAIN_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_$]*$")


def _quote_part(part: str) -> str:
    if _PLAIN_IDENT_RE.match(part):
        return part
    return '"' + part.replace('"', '""') + '"'


def _unquote_part(part: str) -> str:
    if part.startswith('"'):
        return part[1:-1].replace('""', '"')
    return part


def table_key(schema: str, name: str) -> str:
    """The manifest key of a table, ``schema.table``.

    Parts that are not plain lower-case identifiers are double-quoted (as
    ``quote_ident``/``format('%I')`` does; ``pg_backup`` builds keys with
    ``format('%I.%I')``, which also quotes reserved words such as ``"user"``).
    """
    return f"{_quote_part(schema)}.{_quote_part(name)}"


def split_table_key(key: str) -> tuple[str, str]:
    """``(schema, table)`` of a manifest table key; raises ``ValueError`` when malformed.

    Use the parts with ``psycopg.sql.Identifier(schema, table)``, never by pasting the key
    into SQL.
    """
    match = _TABLE_KEY_RE.match(key or "")
    if not match:
        raise ValueError(f"not a schema.table key: {key!r}")
    return _unquote_part(match.group("schema")), _unquote_part(match.group("name"))


# ---------------------------------------------------------------------------
# manifest


MANIFEST_FIELDS = (
    "format_version",
    "backup_id",
    "database",
    "env",
    "reason",
    "labels",
    "server_version",
    "server_version_num",
    "pg_dump_version",
    "format",
    "compression",
    "started",
    "finished",
    "duration_s",
    "bytes",
    "sha256",
    "uncompressed_bytes",
    "objects",
    "table_counts",
    "options",
    "encryption",
    "verified_at",
)
OPTION_FIELDS = ("schemas", "exclude_schemas", "tables", "exclude_tables", "schema_only", "globals")


def object_entry(key: str, size: int, sha256: str) -> dict[str, Any]:
    """One entry of ``manifest["objects"]``."""
    return {"key": key, "bytes": int(size), "sha256": sha256}


def build_manifest(
    *,
    backup_id: str,
    database: str,
    server_version: str,
    server_version_num: int,
    pg_dump_version: str,
    compression_level: int,
    started: datetime,
    finished: datetime,
    data: dict[str, Any],
    uncompressed_bytes: int,
    table_counts: dict[str, int],
    options: dict[str, Any],
    globals_object: dict[str, Any] | None = None,
    env: str | None = None,
    reason: str | None = None,
    labels: dict[str, str] | None = None,
    encryption: str | None = None,
) -> dict[str, Any]:
    """The manifest of a finished backup, exactly the format_version 1 fields, in order.

    ``data`` and ``globals_object`` are ``object_entry(...)`` dicts; ``bytes`` and
    ``sha256`` at the top level repeat the data object's. ``verified_at`` is always
    null here: verification is recorded in ``verified.json``, never in the manifest.
    """
    opts = {name: options.get(name) for name in OPTION_FIELDS}
    for name in ("schemas", "exclude_schemas", "tables", "exclude_tables"):
        opts[name] = list(opts[name] or [])
    for name in ("schema_only", "globals"):
        opts[name] = bool(opts[name])
    return {
        "format_version": FORMAT_VERSION,
        "backup_id": backup_id,
        "database": database,
        "env": env,
        "reason": reason,
        "labels": dict(labels or {}),
        "server_version": server_version,
        "server_version_num": int(server_version_num),
        "pg_dump_version": pg_dump_version,
        "format": "custom",
        "compression": {"algorithm": "zstd", "level": int(compression_level)},
        "started": format_time(started),
        "finished": format_time(finished),
        "duration_s": round(max(0.0, (finished - started).total_seconds()), 3),
        "bytes": int(data["bytes"]),
        "sha256": data["sha256"],
        "uncompressed_bytes": int(uncompressed_bytes),
        "objects": {
            "data": dict(data),
            "globals": dict(globals_object) if globals_object else None,
        },
        "table_counts": dict(sorted(table_counts.items())),
        "options": opts,
        "encryption": encryption,
        "verified_at": None,
    }


def serialize_manifest(manifest: dict[str, Any]) -> bytes:
    """UTF-8 JSON, two-space indented, one trailing newline (fields in their order)."""
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _time_errors(manifest: dict[str, Any], name: str, nullable: bool = False) -> list[str]:
    value = manifest.get(name)
    if value is None and nullable:
        return []
    if not isinstance(value, str):
        return [f"{name} must be an ISO 8601 time string"]
    try:
        parse_time(value)
    except ValueError as exc:
        return [f"{name}: {exc}"]
    return []


def _object_errors(name: str, entry: Any, backup_id: str, filename: str) -> list[str]:
    if not isinstance(entry, dict) or set(entry) != {"key", "bytes", "sha256"}:
        return [f"objects.{name} must be an object with exactly key, bytes, sha256"]
    errors = []
    if entry["key"] != object_key(str(backup_id), filename):
        errors.append(f"objects.{name}.key must be {object_key(str(backup_id), filename)!r}")
    if not _is_int(entry["bytes"]) or entry["bytes"] < 0:
        errors.append(f"objects.{name}.bytes must be an integer >= 0")
    if not isinstance(entry["sha256"], str) or not _SHA256_RE.match(entry["sha256"]):
        errors.append(f"objects.{name}.sha256 must be 64 lower-case hex digits")
    return errors


def _identity_errors(m: dict[str, Any]) -> list[str]:
    errors = []
    if m.get("format_version") != FORMAT_VERSION:
        errors.append(f"format_version must be {FORMAT_VERSION}, got {m.get('format_version')!r}")
    bid = m.get("backup_id")
    errors += [f"backup_id: {e}" for e in backup_id_errors(bid if isinstance(bid, str) else "")]
    if not isinstance(m.get("database"), str) or not m.get("database"):
        errors.append("database must be a non-empty string")
    for name in ("env", "reason"):
        if m.get(name) is not None and not isinstance(m.get(name), str):
            errors.append(f"{name} must be a string or null")
    labels = m.get("labels")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        errors.append("labels must be an object of strings")
    return errors


def _dump_errors(m: dict[str, Any]) -> list[str]:
    errors = []
    for name in ("server_version", "pg_dump_version"):
        if not isinstance(m.get(name), str) or not m.get(name):
            errors.append(f"{name} must be a non-empty string")
    if not _is_int(m.get("server_version_num")) or m["server_version_num"] <= 0:
        errors.append("server_version_num must be a positive integer")
    if m.get("format") != "custom":
        errors.append("format must be 'custom'")
    comp = m.get("compression")
    if (
        not isinstance(comp, dict)
        or set(comp) != {"algorithm", "level"}
        or comp.get("algorithm") != "zstd"
        or not _is_int(comp.get("level"))
    ):
        errors.append("compression must be {'algorithm': 'zstd', 'level': <int>}")
    errors += _time_errors(m, "started") + _time_errors(m, "finished")
    errors += _time_errors(m, "verified_at", nullable=True)
    if not _is_number(m.get("duration_s")) or m["duration_s"] < 0:
        errors.append("duration_s must be a number >= 0")
    if m.get("encryption") not in ENCRYPTIONS:
        errors.append("encryption must be null, 'AES256' or 'aws:kms'")
    return errors


def _content_errors(m: dict[str, Any]) -> list[str]:
    errors = []
    for name in ("bytes", "uncompressed_bytes"):
        if not _is_int(m.get(name)) or m[name] < 0:
            errors.append(f"{name} must be an integer >= 0")
    if not isinstance(m.get("sha256"), str) or not _SHA256_RE.match(m["sha256"]):
        errors.append("sha256 must be 64 lower-case hex digits")
    objects = m.get("objects")
    if not isinstance(objects, dict) or set(objects) != {"data", "globals"}:
        errors.append("objects must be an object with exactly data and globals")
    else:
        bid = m.get("backup_id")
        data_errors = _object_errors("data", objects["data"], bid, DATA_OBJECT)
        errors += data_errors
        if not data_errors and (
            objects["data"]["bytes"] != m.get("bytes")
            or objects["data"]["sha256"] != m.get("sha256")
        ):
            errors.append("bytes and sha256 must equal objects.data.bytes and objects.data.sha256")
        if objects["globals"] is not None:
            errors += _object_errors("globals", objects["globals"], bid, GLOBALS_OBJECT)
    counts = m.get("table_counts")
    if not isinstance(counts, dict):
        errors.append("table_counts must be an object")
    else:
        for key, count in counts.items():
            try:
                split_table_key(key)
            except ValueError as exc:
                errors.append(f"table_counts: {exc}")
            if not _is_int(count) or count < 0:
                errors.append(f"table_counts[{key!r}] must be an integer >= 0")
    return errors


def _options_errors(m: dict[str, Any]) -> list[str]:
    opts = m.get("options")
    if not isinstance(opts, dict) or set(opts) != set(OPTION_FIELDS):
        return [f"options must be an object with exactly {', '.join(OPTION_FIELDS)}"]
    errors = []
    for name in ("schemas", "exclude_schemas", "tables", "exclude_tables"):
        if not isinstance(opts[name], list) or not all(isinstance(p, str) for p in opts[name]):
            errors.append(f"options.{name} must be a list of strings")
    for name in ("schema_only", "globals"):
        if not isinstance(opts[name], bool):
            errors.append(f"options.{name} must be true or false")
    objects = m.get("objects")
    if (
        isinstance(objects, dict)
        and isinstance(opts.get("globals"), bool)
        and opts["globals"] != (objects.get("globals") is not None)
    ):
        errors.append("options.globals must be true exactly when objects.globals is set")
    return errors


def validate_manifest(manifest: Any) -> list[str]:
    """Every problem of a format_version 1 manifest (an empty list when it is valid).

    Exactly the documented fields must be present (none missing, none unknown), each
    with its type; the data object's key must be ``<backup_id>/data.pgdump.zst`` and its
    size and sha256 must repeat the top-level ``bytes`` and ``sha256``.
    """
    if not isinstance(manifest, dict):
        return ["manifest must be a JSON object"]
    missing = [name for name in MANIFEST_FIELDS if name not in manifest]
    unknown = sorted(set(manifest) - set(MANIFEST_FIELDS))
    errors = []
    if missing:
        errors.append("missing fields: " + ", ".join(missing))
    if unknown:
        errors.append("unknown fields: " + ", ".join(unknown))
    if manifest.get("format_version") != FORMAT_VERSION:
        # another format: its other fields mean something else, stop here
        return [*errors, f"format_version must be {FORMAT_VERSION}, "
                f"got {manifest.get('format_version')!r}"]  # fmt: skip
    return [
        *errors,
        *_identity_errors(manifest),
        *_dump_errors(manifest),
        *_content_errors(manifest),
        *_options_errors(manifest),
    ]


def parse_manifest(data: bytes | str, expected_backup_id: str | None = None) -> dict[str, Any]:
    """Parse and validate manifest.json; raises ``ManifestError`` listing every problem.

    With ``expected_backup_id`` (the directory the manifest was read from), its
    ``backup_id`` must match it.
    """
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    errors = validate_manifest(manifest)
    if (
        not errors
        and expected_backup_id is not None
        and manifest.get("backup_id") != expected_backup_id
    ):
        errors.append(
            f"backup_id {manifest.get('backup_id')!r} does not match its directory "
            f"{expected_backup_id!r}"
        )
    if errors:
        raise ManifestError("invalid manifest: " + "; ".join(errors), errors)
    return manifest


def manifest_objects(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stored objects a manifest lists, by name (``data``, and ``globals`` when taken)."""
    return {name: entry for name, entry in manifest["objects"].items() if entry is not None}


# ---------------------------------------------------------------------------
# hashing


class HashingReader:
    """Wrap a binary reader: every byte read goes through sha256 and is counted.

    ``read(n)`` returns what the wrapped reader returns; ``hexdigest()`` and
    ``bytes_read`` describe everything read so far.
    """

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._reader.read(size)
        if chunk:
            self._hash.update(chunk)
            self.bytes_read += len(chunk)
        return chunk

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        close = getattr(self._reader, "close", None)
        if close is not None:
            close()


def hash_stream(reader: Any, chunk_size: int = CHUNK_SIZE) -> tuple[str, int]:
    """``(sha256 hex, bytes)`` of everything ``reader.read`` yields, in bounded memory."""
    hashing = HashingReader(reader)
    while hashing.read(chunk_size):
        pass
    return hashing.hexdigest(), hashing.bytes_read


# ---------------------------------------------------------------------------
# fetching: objects to local files, hashed on the way


def fetch_object(
    storage: Any, key: str, dest: Any, chunk_size: int = CHUNK_SIZE
) -> tuple[int, str]:
    """Stream ``key`` into the file ``dest`` (created 0600); return ``(bytes, sha256 hex)``."""
    reader = HashingReader(storage.open_reader(key))
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := reader.read(chunk_size):
                out.write(chunk)
    finally:
        with contextlib.suppress(Exception):
            reader.close()
    return reader.bytes_read, reader.hexdigest()


@dataclass
class DecompressedFetch:
    """What ``fetch_decompress`` saw: the stored (compressed) object's size and sha256,
    and how the decompressor ended. Check ``bytes``/``sha256`` against the manifest
    FIRST (a corrupted object usually also breaks the decompressor), then ``ok``."""

    bytes: int
    sha256: str
    returncode: int
    stderr: str
    fetch_s: float  # until the last stored byte was read and handed to the decompressor
    drain_s: float  # then until the decompressor exited

    @property
    def ok(self) -> bool:
        return self.returncode == 0


_END = object()


def fetch_decompress(
    storage: Any,
    key: str,
    dest: Any,
    decompress_argv: list[str],
    chunk_size: int = CHUNK_SIZE,
    queue_chunks: int = 4,
    env: dict[str, str] | None = None,
) -> DecompressedFetch:
    """Fetch ``key``, hash it and decompress it into the file ``dest`` in ONE pass.

    A reader thread reads the object (at most ``queue_chunks`` chunks ahead) and hashes
    every byte; the calling thread feeds them to ``decompress_argv`` (e.g. ``zstd -dcq``,
    reading stdin, writing stdout), whose output goes to ``dest`` (created 0600). Reading,
    hashing and decompressing overlap. When the decompressor stops early (a corrupt
    frame), the rest of the object is still read and hashed, so that the caller can tell
    a corrupted object (sha256 differs from the manifest) from a bad backup (sha256
    matches, the decompressor failed). ``dest`` is removed when the decompressor failed.

    On an exception (storage error, a signal turned into an exception) the decompressor
    is killed and reaped, ``dest`` is removed and the exception propagates. Memory stays
    bounded: about ``chunk_size * (queue_chunks + 2)``.
    """
    started = time.monotonic()
    reader = HashingReader(storage.open_reader(key))
    chunks: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_chunks))
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            while not stop.is_set():
                chunk = reader.read(chunk_size)
                if not hand_over(chunk if chunk else _END) or not chunk:
                    return
        except BaseException as exc:  # handed to the calling thread, raised there
            hand_over(exc)

    proc: subprocess.Popen[bytes] | None = None
    thread = threading.Thread(target=produce, name="opsbook-fetch", daemon=True)
    done = False
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as err:
            proc = spawn(decompress_argv, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env)
            if proc.stdin is None:
                raise AssertionError("proc.stdin is not None")
            thread.start()
            feeding = True
            while True:
                item = chunks.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if feeding:
                    try:
                        proc.stdin.write(item)
                    except BrokenPipeError:  # it stopped reading: keep hashing the rest
                        feeding = False
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            fetched = time.monotonic()
            returncode = proc.wait()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        done = True
    finally:
        stop.set()
        if proc is not None:
            with signals_held():
                stop_children([proc], grace_s=1.0)
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if thread.is_alive():
            thread.join(timeout=5)
        with contextlib.suppress(Exception):
            reader.close()
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(dest)
    if returncode != 0:
        with contextlib.suppress(OSError):
            os.unlink(dest)
    finished = time.monotonic()
    return DecompressedFetch(
        bytes=reader.bytes_read,
        sha256=reader.hexdigest(),
        returncode=returncode,
        stderr=stderr,
        fetch_s=round(fetched - started, 3),
        drain_s=round(finished - fetched, 3),
    )


# ---------------------------------------------------------------------------
# catalog


@dataclass(frozen=True)
class BackupEntry:
    """A listed backup: a valid manifest, its stored objects and its latest verification."""

    backup_id: str
    manifest: dict[str, Any]
    verification: dict[str, Any] | None = None
    objects: dict[str, int] = field(default_factory=dict)  # key -> bytes, as listed

    @property
    def database(self) -> str:
        return str(self.manifest["database"])

    @property
    def started(self) -> datetime:
        return parse_time(self.manifest["started"])

    @property
    def verified(self) -> bool:
        """True when the latest verification succeeded on the bytes this manifest describes."""
        rec = self.verification
        if not isinstance(rec, dict) or rec.get("ok") is not True:
            return False
        data = (rec.get("objects") or {}).get("data") or {}
        return (
            data.get("sha256") == self.manifest["sha256"]
            and data.get("bytes") == self.manifest["bytes"]
        )

    @property
    def verification_failed(self) -> bool:
        """True when the latest verification found a missing or different object."""
        rec = self.verification
        return isinstance(rec, dict) and rec.get("ok") is False

    @property
    def verified_at(self) -> str | None:
        rec = self.verification
        if isinstance(rec, dict) and rec.get("ok") is not None:
            return rec.get("verified_at")
        return None

    def summary(self, with_manifest: bool = True) -> dict[str, Any]:
        """A JSON-ready description (what the catalog modules return per backup)."""
        m = self.manifest
        out: dict[str, Any] = {
            "backup_id": self.backup_id,
            "database": m["database"],
            "env": m["env"],
            "reason": m["reason"],
            "labels": m["labels"],
            "started": m["started"],
            "finished": m["finished"],
            "bytes": m["bytes"],
            "sha256": m["sha256"],
            "globals": m["objects"]["globals"] is not None,
            "verified": self.verified,
            "verification_failed": self.verification_failed,
            "verified_at": self.verified_at,
        }
        if with_manifest:
            out["manifest"] = m
        return out


@dataclass
class Catalog:
    """What a storage location holds.

    ``backups``: valid backups, newest first. ``invalid``: directories whose manifest
    cannot be used ({backup_id, errors}); never listed as backups, never restored.
    ``orphans``: objects that belong to no listed backup, grouped by directory
    ({prefix, objects, bytes}) - typically an interrupted or running backup, or the
    remains of a half-deleted one. Nothing here deletes them: a running backup looks
    the same.
    """

    backups: list[BackupEntry] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)

    @property
    def orphan_objects(self) -> int:
        return sum(o["objects"] for o in self.orphans)


def _group_by_directory(objects: Iterable[Any]) -> dict[str, dict[str, int]]:
    """``{first path segment: {key: bytes}}``; top-level keys go under ``""``."""
    groups: dict[str, dict[str, int]] = {}
    for info in objects:
        key = str(info.key)
        directory = key.split("/", 1)[0] if "/" in key else ""
        groups.setdefault(directory, {})[key] = int(info.bytes or 0)
    return groups


def _read_verification(storage: Any, backup_id: str) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.get_bytes(object_key(backup_id, VERIFIED_OBJECT)))
    except Exception:  # unreadable record: the backup simply counts as not verified
        return None
    return data if isinstance(data, dict) else None


def _load_entry(
    storage: Any, backup_id: str, objects: dict[str, int]
) -> tuple[BackupEntry | None, list[str]]:
    """Read and check one backup directory; ``(entry, [])`` or ``(None, errors)``."""
    try:
        manifest = parse_manifest(
            storage.get_bytes(object_key(backup_id, MANIFEST_OBJECT)), backup_id
        )
    except ManifestError as exc:
        return None, exc.errors
    except Exception as exc:  # StorageError and friends; messages carry no secrets
        return None, [f"manifest cannot be read: {exc}"]
    errors = []
    for name, entry in manifest_objects(manifest).items():
        size = objects.get(entry["key"])
        if size is None:
            errors.append(f"{name} object {entry['key']} is missing")
        elif size != entry["bytes"]:
            errors.append(
                f"{name} object {entry['key']} is {size} bytes, the manifest says {entry['bytes']}"
            )
    if errors:
        return None, errors
    verification = None
    if object_key(backup_id, VERIFIED_OBJECT) in objects:
        verification = _read_verification(storage, backup_id)
    return BackupEntry(backup_id, manifest, verification, dict(objects)), []


def sort_newest_first(entries: Iterable[BackupEntry]) -> list[BackupEntry]:
    """By ``started`` then ``backup_id``, newest first."""
    return sorted(entries, key=lambda e: (e.started, e.backup_id), reverse=True)


def list_catalog(storage: Any, database: str | None = None) -> Catalog:
    """List the backups in ``storage`` (only those with a valid manifest), newest first.

    With ``database``, only that database's backups are listed (orphans and invalid
    manifests are reported whatever their database). Storage errors propagate.
    """
    catalog = Catalog()
    entries = []
    for directory, objects in sorted(_group_by_directory(storage.list("")).items()):
        manifest_key = object_key(directory, MANIFEST_OBJECT)
        if not directory or manifest_key not in objects:
            catalog.orphans.append(_orphan(directory, objects))
            continue
        entry, errors = _load_entry(storage, directory, objects)
        if entry is None:
            catalog.invalid.append({"backup_id": directory, "errors": errors})
            continue
        stray = {k: v for k, v in objects.items() if k.split("/", 1)[1] not in KNOWN_OBJECTS}
        if stray:
            catalog.orphans.append(_orphan(directory, stray))
        if database is None or entry.database == database:
            entries.append(entry)
    catalog.backups = sort_newest_first(entries)
    return catalog


def _orphan(directory: str, objects: dict[str, int]) -> dict[str, Any]:
    return {
        "prefix": f"{directory}/" if directory else "",
        "objects": len(objects),
        "bytes": sum(objects.values()),
    }


def load_backup(storage: Any, backup_id: str) -> BackupEntry:
    """One backup by id, without listing the whole storage.

    Raises ``SelectionError`` when it has no manifest, ``ManifestError`` when the
    manifest is invalid or an object it lists is missing or of another size.
    """
    errors = backup_id_errors(backup_id)
    if errors:
        raise SelectionError("; ".join(errors))
    objects = {str(o.key): int(o.bytes or 0) for o in storage.list(f"{backup_id}/")}
    if object_key(backup_id, MANIFEST_OBJECT) not in objects:
        raise SelectionError(f"no backup {backup_id!r}: it has no manifest.json")
    entry, errors = _load_entry(storage, backup_id, objects)
    if entry is None:
        raise ManifestError(f"backup {backup_id!r} is unusable: " + "; ".join(errors), errors)
    return entry


def select_backup(
    backups: list[BackupEntry],
    backup_id: str | None = None,
    before: datetime | str | None = None,
    database: str | None = None,
    skip_failed: bool = True,
) -> BackupEntry:
    """Pick one backup from a catalog listing (newest first).

    * ``backup_id``: exactly that backup;
    * ``before``: the newest backup whose ``started`` is at or before that time. A
      backup's ``started`` is taken right after the snapshot it dumps was exported, so
      everything in it was committed before ``started``: "before T" never returns data
      written after T;
    * neither: the newest backup.

    ``database`` restricts the choice to one database's backups. Backups whose latest
    verification failed are skipped for "latest" and "before" (``skip_failed``); by
    id they are returned (the caller sees ``verification_failed``).
    Raises ``SelectionError`` when nothing matches.
    """
    pool = [b for b in backups if database is None or b.database == database]
    scope = f" of database {database!r}" if database else ""
    if backup_id:
        for entry in pool:
            if entry.backup_id == backup_id:
                return entry
        raise SelectionError(f"no backup {backup_id!r}{scope} (with a valid manifest)")
    usable = [b for b in pool if not (skip_failed and b.verification_failed)]
    if before is not None:
        limit = parse_time(before) if isinstance(before, str) else before.astimezone(UTC)
        for entry in sort_newest_first(usable):
            if entry.started <= limit:
                return entry
        raise SelectionError(f"no backup{scope} started at or before {format_time(limit)}")
    if not usable:
        raise SelectionError(f"no backup{scope} (with a valid manifest) in this storage")
    return sort_newest_first(usable)[0]


# ---------------------------------------------------------------------------
# verification


def _check_object(storage: Any, entry: dict[str, Any], chunk_size: int) -> dict[str, Any]:
    """Stream one object and compare it with its manifest entry.

    ``ok`` is True (identical), False (missing, or another size or sha256: a definitive
    failure) or None (it could not be read: storage error, nothing concluded).
    """
    result: dict[str, Any] = {
        "key": entry["key"],
        "expected_bytes": entry["bytes"],
        "expected_sha256": entry["sha256"],
        "bytes": None,
        "sha256": None,
        "ok": None,
        "error": None,
    }
    try:
        if storage.head(entry["key"]) is None:
            result.update(ok=False, error=f"{entry['key']} is missing")
            return result
        reader = storage.open_reader(entry["key"])
        try:
            digest, size = hash_stream(reader, chunk_size)
        finally:
            with contextlib.suppress(Exception):
                reader.close()
    except Exception as exc:  # StorageError: messages carry no credentials
        result["error"] = f"{entry['key']} could not be read: {exc}"
        return result
    result.update(
        bytes=size, sha256=digest, ok=size == entry["bytes"] and digest == entry["sha256"]
    )
    if not result["ok"]:
        result["error"] = (
            f"{entry['key']}: {size} bytes with sha256 {digest}, the manifest says "
            f"{entry['bytes']} bytes with sha256 {entry['sha256']}"
        )
    return result


def verify_backup(
    storage: Any,
    entry: BackupEntry,
    record: bool = True,
    chunk_size: int = CHUNK_SIZE,
    clock: Callable[[], datetime] = utc_now,
) -> dict[str, Any]:
    """Re-read every object of a backup and compare size and sha256 with its manifest.

    Returns ``{backup_id, verified_at, ok, duration_s, objects: {name: {...}}, errors,
    recorded}``. ``ok`` is True (every object identical), False (one is missing or
    differs) or None (an object could not be read; nothing is concluded and nothing is
    recorded). With ``record``, a conclusive result is written to
    ``<id>/verified.json`` (replacing the previous one: a backup that no longer
    verifies stops counting as verified). The manifest is never rewritten.
    Raises only when writing the record fails.
    """
    started = time.monotonic()
    objects = {
        name: _check_object(storage, obj, chunk_size)
        for name, obj in manifest_objects(entry.manifest).items()
    }
    states = [o["ok"] for o in objects.values()]
    ok: bool | None = False if False in states else (None if None in states else True)
    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backup_id": entry.backup_id,
        "verified_at": format_time(clock()),
        "ok": ok,
        "duration_s": round(time.monotonic() - started, 3),
        "objects": objects,
        "errors": [o["error"] for o in objects.values() if o["error"]],
        "recorded": False,
    }
    if record and ok is not None:
        payload = {k: v for k, v in result.items() if k != "recorded"}
        storage.put_bytes(
            object_key(entry.backup_id, VERIFIED_OBJECT),
            (json.dumps(payload, indent=2) + "\n").encode("utf-8"),
        )
        result["recorded"] = True
    return result


def _proven_by_checksum(
    storage: Any, entry: dict[str, Any], sent: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Compare the store's own checksum of a freshly written object with the one its writer
    computed from the bytes it sent (``commit()["checksum"]``). Returns the object's result,
    or None when the store keeps no comparable checksum (re-read it instead)."""
    if not sent:
        return None
    stored = storage.stored_checksum(entry["key"])
    if stored is None or stored["algorithm"] != sent["algorithm"]:
        return None
    same = stored["value"] == sent["value"] and stored.get("bytes") == entry["bytes"]
    result = {
        "key": entry["key"],
        "expected_bytes": entry["bytes"],
        "expected_sha256": entry["sha256"],
        "bytes": stored.get("bytes"),
        # the sha256 the writer computed over the very bytes the checksums prove stored
        "sha256": entry["sha256"] if same else None,
        "checksum": {
            "algorithm": stored["algorithm"],
            "stored": stored["value"],
            "sent": sent["value"],
            "parts": stored.get("parts"),
        },
        "ok": same,
        "error": None,
    }
    if not same:
        result["error"] = (
            f"{entry['key']}: the store's {stored['algorithm']} checksum {stored['value']} "
            f"({stored.get('bytes')} bytes) differs from the one of the bytes sent "
            f"{sent['value']} ({entry['bytes']} bytes)"
        )
    return result


def verify_written(
    storage: Any,
    backup_id: str,
    manifest: dict[str, Any],
    sent: dict[str, dict[str, Any] | None],
    chunk_size: int = CHUNK_SIZE,
    clock: Callable[[], datetime] = utc_now,
) -> dict[str, Any]:
    """Prove a backup just written is intact in storage, and record it in verified.json.

    For each object, by the store's own checksum when it keeps one (S3 additional checksums:
    S3 checked every part's CRC32 on receipt, and the object's composite checksum equals the
    one computed here over the bytes sent - ``sent[name]`` is the writer's ``commit()``
    checksum), else by reading it back and recomputing its sha256 (file://, or a store
    without checksums). Returns the record (as ``verify_backup``) with ``method`` saying
    which: ``checksum``, ``reread`` or ``mixed``.
    """
    started = time.monotonic()
    objects, methods = {}, set()
    for name, obj in manifest_objects(manifest).items():
        try:
            checked = _proven_by_checksum(storage, obj, sent.get(name))
        except Exception as exc:  # StorageError: the head failed; re-read instead
            checked = None
            reason = str(exc)
        else:
            reason = None
        if checked is None:
            checked = _check_object(storage, obj, chunk_size)
            if reason and checked["ok"] is None:
                checked["error"] = f"{checked['error']} (the checksum probe failed too: {reason})"
            methods.add("reread")
        else:
            methods.add("checksum")
        objects[name] = checked
    states = [o["ok"] for o in objects.values()]
    ok: bool | None = False if False in states else (None if None in states else True)
    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backup_id": backup_id,
        "verified_at": format_time(clock()),
        "ok": ok,
        "method": methods.pop() if len(methods) == 1 else "mixed",
        "duration_s": round(time.monotonic() - started, 3),
        "objects": objects,
        "errors": [o["error"] for o in objects.values() if o["error"]],
        "recorded": False,
    }
    if ok is not None:
        payload = {k: v for k, v in result.items() if k != "recorded"}
        storage.put_bytes(
            object_key(backup_id, VERIFIED_OBJECT),
            (json.dumps(payload, indent=2) + "\n").encode("utf-8"),
        )
        result["recorded"] = True
    return result


# ---------------------------------------------------------------------------
# retention (pure)


@dataclass(frozen=True)
class RetentionCandidate:
    """What retention needs to know of one backup."""

    backup_id: str
    database: str
    started: datetime
    verified: bool = False
    failed: bool = False  # its latest verification failed: known bad

    @classmethod
    def from_entry(cls, entry: BackupEntry) -> RetentionCandidate:
        return cls(
            entry.backup_id,
            entry.database,
            entry.started,
            verified=entry.verified,
            failed=entry.verification_failed,
        )


@dataclass
class RetentionPlan:
    """``keep``: [{backup_id, database, started, reasons}], ``delete``: [{..., reason}],
    both newest first; ``newest_verified``: {database: backup_id or None}."""

    keep: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)
    newest_verified: dict[str, str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "delete": self.delete,
            "newest_verified": self.newest_verified,
            "warnings": self.warnings,
        }


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def _iso_week(moment: datetime) -> str:
    year, week, _unused = moment.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def _month(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def retention_errors(
    keep_last: int, keep_daily: int, keep_weekly: int, keep_monthly: int
) -> list[str]:
    """Input errors of a retention policy (empty when valid)."""
    counts = {
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
    }
    errors = [f"{name} must be >= 0, got {value}" for name, value in counts.items() if value < 0]
    if not errors and not any(counts.values()):
        errors.append(
            "a retention policy needs at least one of keep_last, keep_daily, keep_weekly, "
            "keep_monthly >= 1 (otherwise it would keep nothing)"
        )
    return errors


def _plan_series(
    series: list[RetentionCandidate], policy: dict[str, int]
) -> tuple[dict[str, list[str]], str | None]:
    """Reasons to keep each backup of one database (newest first); and its newest verified."""
    reasons: dict[str, list[str]] = {c.backup_id: [] for c in series}
    usable = [c for c in series if not c.failed]  # a known-bad backup fills no slot
    for rank, cand in enumerate(usable[: policy["keep_last"]], start=1):
        reasons[cand.backup_id].append(f"last {rank} of {policy['keep_last']}")
    periods: tuple[tuple[str, Callable[[datetime], str]], ...] = (
        ("daily", _day),
        ("weekly", _iso_week),
        ("monthly", _month),
    )
    for name, period_of in periods:
        wanted = policy[f"keep_{name}"]
        seen: list[str] = []
        for cand in usable:  # newest first: the first one met in a period is its newest
            period = period_of(cand.started)
            if period in seen:
                continue
            if len(seen) >= wanted:
                break
            seen.append(period)
            reasons[cand.backup_id].append(f"{name} {period}")
    newest_verified = next((c for c in series if c.verified), None)
    if newest_verified is not None:
        reasons[newest_verified.backup_id].append("newest verified backup")
    for cand in series:
        if newest_verified is not None and cand is newest_verified:
            break  # everything older than the newest verified backup follows the policy
        if not reasons[cand.backup_id]:
            reasons[cand.backup_id].append(
                "newer than the newest verified backup"
                if newest_verified is not None
                else "no verified backup of this database yet"
            )
    return reasons, newest_verified.backup_id if newest_verified else None


def plan_retention(
    candidates: Iterable[RetentionCandidate],
    keep_last: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
) -> RetentionPlan:
    """Decide which backups to keep and which to delete. Pure: no storage, no clock.

    Each database is planned on its own. A backup is kept when any rule keeps it:

    * ``keep_last``: the N newest backups;
    * ``keep_daily`` / ``keep_weekly`` / ``keep_monthly``: the newest backup of each of
      the last D days / W ISO weeks / M months (UTC) *that have a backup* - periods
      without a backup are not counted, so a pause in backups never makes retention
      eat the history (restic and borg count the same way);
    * the newest verified backup is always kept;
    * nothing newer than the newest verified backup is ever deleted.

    Why the last rule, and why it holds whatever the number of verified backups:
    the newest verified backup is the most recent restore point known to be intact;
    every backup newer than it is unverified, a candidate for a *better* restore
    point that nobody has checked yet. Deleting one could leave, if the newest
    backup later proves corrupt, nothing between it and an older verified one.
    Limiting the rule to "when only one backup is verified" would not help: retention
    itself routinely thins the verified backups down to one, so the rule would switch on
    and off between runs. The same reasoning with *no* verified backup means nothing is
    deleted at all (with a warning): verify a backup (``pg_backup_info state=verify``,
    which ``backup.yml`` does right after each backup) and retention resumes. Growth is
    therefore bounded by how often backups are verified.

    Backups whose latest verification failed (known bad) fill no keep_* slot, so they
    never displace a good backup; like any other they are deleted only when older than
    the newest verified backup.

    Raises ``ValueError`` for an invalid policy (negative counts, or all zero).
    """
    errors = retention_errors(keep_last, keep_daily, keep_weekly, keep_monthly)
    if errors:
        raise ValueError("; ".join(errors))
    policy = {
        "keep_last": keep_last,
        "keep_daily": keep_daily,
        "keep_weekly": keep_weekly,
        "keep_monthly": keep_monthly,
    }
    by_db: dict[str, list[RetentionCandidate]] = {}
    for cand in candidates:
        by_db.setdefault(cand.database, []).append(cand)
    plan = RetentionPlan()
    for database in sorted(by_db):
        series = sorted(by_db[database], key=lambda c: (c.started, c.backup_id), reverse=True)
        reasons, newest_verified = _plan_series(series, policy)
        plan.newest_verified[database] = newest_verified
        if newest_verified is None:
            plan.warnings.append(
                f"database {database!r}: no verified backup, so nothing is deleted; "
                "verify a backup (pg_backup_info state=verify) to let retention prune"
            )
        for cand in series:
            row = {
                "backup_id": cand.backup_id,
                "database": database,
                "started": format_time(cand.started),
            }
            if reasons[cand.backup_id]:
                plan.keep.append({**row, "reasons": reasons[cand.backup_id]})
            else:
                why = "verification failed; " if cand.failed else "not kept by the policy; "
                plan.delete.append(
                    {
                        **row,
                        "reason": why + f"older than the newest verified backup {newest_verified}",
                    }
                )
    return plan


def delete_backup(storage: Any, backup_id: str) -> None:
    """Delete one backup: its manifest FIRST, then everything else under ``<id>/``.

    Once the manifest is gone the backup no longer exists for any reader, so an
    interruption half-way leaves orphan objects (listed as such, never restorable),
    never a backup that looks complete but is not.
    """
    errors = backup_id_errors(backup_id)
    if errors:
        raise BackupError("; ".join(errors))
    storage.delete(object_key(backup_id, MANIFEST_OBJECT))
    storage.delete_prefix(f"{backup_id}/")


def remove_stale_uploads(
    storage: Any, stale_after_minutes: float, check_mode: bool = False
) -> tuple[list[str], list[str]]:
    """The unfinished uploads interrupted backups left in ``storage`` (a SIGKILLed writer
    cannot abort its own: an S3 multipart upload, a partial file), idle for
    ``stale_after_minutes``: removed (in check mode only listed). Only what opsbook's own
    writer started (``Storage.incomplete_uploads``), never anyone else's upload or object.

    Returns ``(removed, warnings)``: one line per upload removed (would be, in check mode),
    and what to tell the operator - each removal, and each upload that could not be removed.
    Raises the storage's StorageError when the uploads cannot be listed.
    """
    removed: list[str] = []
    warnings: list[str] = []
    for item in storage.incomplete_uploads(60.0 * stale_after_minutes):
        if not check_mode:
            try:
                storage.abort_incomplete(item)
            except StorageError as exc:  # saying what is left
                warnings.append(f"could not remove {item.describe()}: {exc}")
                continue
            warnings.append(
                f"removed what an interrupted backup left: {item.describe()} (idle for over "
                f"{stale_after_minutes:g} min)"
            )
        removed.append(item.describe())
    return removed, warnings


# ---------------------------------------------------------------------------
# PostgreSQL client tools (pg_dump, pg_dumpall, pg_restore)


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(?P<v>\d+(?:\.\d+)*)")


def client_conninfo(dsn: str, application_name: str | None = None) -> tuple[str, str | None]:
    """``(conninfo without the password, password or None)`` for a libpq client tool.

    Pass the conninfo as ``--dbname=<conninfo>`` (it holds no secret) and the password
    in the tool's environment (``opsbook_proc.tool_env``). Raises ``ValueError``
    (password-free) for a malformed DSN.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise ValueError("the DSN is not a valid libpq connection string") from None
    password = params.pop("password", None)
    if password is not None:
        params.pop("passfile", None)  # the password is handed over in the environment
    if application_name:
        params["application_name"] = application_name
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None}), (
        str(password) if password is not None else None
    )


def tool_version(path: str) -> str:
    """``15.8`` from ``<tool> --version``; raises ``OSError``/``ValueError`` when it cannot tell."""
    out = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    match = _VERSION_RE.search(out.stdout or "")
    if out.returncode != 0 or not match:
        raise ValueError(f"{path} --version did not report a PostgreSQL version")
    return match.group("v")


def version_major(version: str) -> int:
    """The major version: ``15.8`` -> 15, ``9.6.24`` -> 9.6 is reported as 9."""
    return int(version.split(".", 1)[0])


def find_pg_tool(
    name: str,
    server_major: int,
    explicit: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
) -> str:
    """Path of a PostgreSQL client tool.

    ``explicit`` wins when given. Otherwise the tool of the server's major version,
    ``/usr/lib/postgresql/<major>/bin/<name>`` (Debian/Ubuntu) or
    ``/usr/pgsql-<major>/bin/<name>`` (RHEL), else the one on ``PATH``. Raises
    ``FileNotFoundError`` naming where it looked.
    """
    if explicit:
        if not exists(explicit):
            raise FileNotFoundError(f"{name} not found at {explicit}")
        return explicit
    candidates = [
        f"/usr/lib/postgresql/{server_major}/bin/{name}",
        f"/usr/pgsql-{server_major}/bin/{name}",
    ]
    for candidate in candidates:
        if exists(candidate):
            return candidate
    found = which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name} not found in {', '.join(candidates)} nor on PATH; "
        f"install the PostgreSQL {server_major} client tools or set {name}_path"
    )
