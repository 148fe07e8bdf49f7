# Copyright: opsbook contributors
# Apache-2.0
"""What every opsbook storage backend shares: the errors, storage URLs and keys, the
records a storage returns, and the :class:`Storage` and :class:`Writer` interfaces.

``opsbook_storage`` (``open_storage``) is what modules import; the backends are
``opsbook_storage_file`` (``file://``) and ``opsbook_storage_s3`` (``s3://``). Standard
library only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

MiB = 1024 * 1024
GiB = 1024 * MiB
PROBE_PREFIX = ".opsbook-probe-"
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


# ===================================================================== errors


class StorageError(Exception):
    """A storage operation failed. The message names the object and the cause, never secrets.

    ``kind`` classifies the cause when known: ``not_found``, ``bucket_missing``,
    ``access_denied``, ``credentials``, ``unreachable``, ``stalled`` (the S3 endpoint
    moved no bytes for the stall timeout), ``invalid``.
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class NotFoundError(StorageError):
    """The object does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="not_found")


class StorageURLError(StorageError, ValueError):
    """A storage URL (or key) is malformed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="invalid")


class PreconditionFailedError(StorageError):
    """A conditional write or delete was refused: the object exists (create) or is missing or
    not the version given (replace, delete). Nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="precondition_failed")


class ConditionalWriteUnsupportedError(StorageError):
    """The storage refused a conditional request as not implemented. Nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="unsupported")


# ================================================================ records


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL: ``s3://bucket/prefix`` or ``file:///abs/path``."""

    scheme: str  # "s3" | "file"
    bucket: str = ""  # s3 only
    prefix: str = ""  # s3 only: no leading or trailing "/"
    path: str = ""  # file only: absolute, normalised

    @property
    def url(self) -> str:
        """The canonical form of the URL."""
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the storage prefix), size and mtime (UTC)."""

    key: str
    bytes: int
    modified: datetime


@dataclass(frozen=True)
class Versioned:
    """A small object read whole with its version token (``etag``): the S3 ETag, or the
    sha256 of a file's content. Conditional replace and delete take that token."""

    key: str
    data: bytes
    etag: str


@dataclass(frozen=True)
class IncompleteUpload:
    """An unfinished write that opsbook's own writer started and never ended (a SIGKILL, a
    power loss, an endpoint that died before the abort): see Storage.incomplete_uploads.

    ``key`` is the object it was to become (relative to the storage, like every key);
    ``started`` when it started (UTC; S3: the later of the upload's Initiated time and
    its marker's, since some S3-compatible servers report a made-up Initiated; a file:
    its last write, since a killed writer's file stops changing); ``id`` the multipart
    upload id (S3) or the temporary file's absolute path (file://); ``kind``
    ``multipart_upload`` or ``temp_file``.
    """

    key: str
    started: datetime
    id: str
    kind: str

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds since it started."""
        return ((now or datetime.now(UTC)) - self.started).total_seconds()

    def describe(self) -> str:
        """One line for a report: what, where, since when (no secrets: none are in it)."""
        what = "multipart upload" if self.kind == "multipart_upload" else "temporary file"
        started = self.started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.key} ({what} {self.id}, started {started})"


# ========================================================== URLs and keys


def parse_storage_url(url: str) -> StorageURL:
    """Parse ``s3://bucket/prefix`` or ``file:///abs/path``; raise StorageURLError when bad."""
    if not isinstance(url, str) or not url.strip():
        raise StorageURLError("storage URL is empty (expected s3://bucket/prefix or file:///path)")
    url = url.strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise StorageURLError(f"storage URL {url!r} must not have a query string or fragment")
    if scheme == "s3":
        return _parse_s3_url(url, parts.netloc, parts.path)
    if scheme == "file":
        return _parse_file_url(url, parts.netloc, parts.path)
    shown = f"{scheme}://" if scheme else "no scheme"
    raise StorageURLError(
        f"unsupported storage URL {url!r} ({shown}): use s3://bucket/prefix or file:///abs/path"
    )


def _parse_s3_url(url: str, netloc: str, path: str) -> StorageURL:
    if "@" in netloc:
        raise StorageURLError(
            "s3:// URLs must not carry credentials; use the usual AWS credential sources"
        )
    if not netloc:
        raise StorageURLError(f"storage URL {url!r} has no bucket (expected s3://bucket/prefix)")
    if not _BUCKET_RE.match(netloc):
        raise StorageURLError(f"storage URL {url!r}: {netloc!r} is not a valid bucket name")
    segments = [s for s in unquote(path).split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise StorageURLError(f"storage URL {url!r}: '.' and '..' are not allowed in the prefix")
    return StorageURL("s3", bucket=netloc, prefix="/".join(segments))


def _parse_file_url(url: str, netloc: str, path: str) -> StorageURL:
    if netloc not in ("", "localhost"):
        raise StorageURLError(
            f"storage URL {url!r} is not an absolute file URL: {netloc!r} would be a host name; "
            "write file:///abs/path (three slashes)"
        )
    decoded = unquote(path)
    if not decoded.startswith("/"):
        raise StorageURLError(
            f"storage URL {url!r} has a relative path; write file:///abs/path (an absolute path)"
        )
    if "\0" in decoded:
        raise StorageURLError(f"storage URL {url!r} contains a NUL byte")
    return StorageURL("file", path=os.path.normpath(decoded))


def normalize_key(key: str, allow_empty: bool = False, what: str = "key") -> str:
    """Check a relative '/'-separated key and return it (a prefix may end with '/')."""
    if not isinstance(key, str):
        raise StorageURLError(f"storage {what} must be a string, got {type(key).__name__}")
    if not key:
        if allow_empty:
            return ""
        raise StorageURLError(f"storage {what} must not be empty")
    if key.startswith("/") or "\0" in key:
        raise StorageURLError(f"storage {what} {key!r} must be relative ('a/b', no leading '/')")
    segments = key.split("/")
    if allow_empty and segments[-1] == "":
        segments = segments[:-1]  # "dir/" as a prefix
    if any(s in ("", ".", "..") for s in segments):
        raise StorageURLError(f"storage {what} {key!r} has an empty, '.' or '..' segment")
    return key


def join_key(prefix: str, key: str) -> str:
    """The full object key of key under prefix (either may be empty)."""
    if not prefix:
        return key
    return f"{prefix}/{key}"


def human_size(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    return f"{n} bytes"


def os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason


def unquote_etag(etag: str) -> str:
    return str(etag).strip().strip('"')


def refuse_empty_prefix(prefix: str, url: str) -> None:
    if not prefix or prefix == "/":
        raise StorageURLError(f"refusing to delete everything under {url}: give a non-empty prefix")


# ================================================================ interfaces


class Writer:
    """Streams one object into storage; nothing is visible under the key before commit().

    ``write(b)`` appends; ``commit()`` publishes the object and returns
    ``{"key", "bytes", ...}``; ``abort()`` discards everything written (it is a
    no-op after commit() or a failure). As a context manager it aborts when the
    block raises and commits when it ends normally without commit().
    """

    key: str
    bytes_written: int = 0
    result: dict[str, Any] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data; return the number of bytes taken."""
        raise NotImplementedError

    def commit(self) -> dict[str, Any]:
        """Publish the object under its key."""
        raise NotImplementedError

    def abort(self) -> None:
        """Discard the upload; raise StorageError only when the discard itself failed."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """True once committed, aborted or failed."""
        raise NotImplementedError

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            if not self.closed:
                self.commit()
            return
        try:
            self.abort()
        except StorageError as cleanup:
            if not isinstance(exc, Exception):
                return  # KeyboardInterrupt and friends go on unchanged
            raise StorageError(f"{cleanup} (after: {type(exc).__name__}: {exc})") from exc


class Storage:
    """Objects under one storage URL; see opsbook_storage's docstring."""

    url: str

    def describe(self) -> str:
        """A one-line description (no secrets)."""
        raise NotImplementedError

    def open_writer(self, key: str) -> Writer:
        """A Writer that streams a new object to key."""
        raise NotImplementedError

    def open_reader(self, key: str) -> BinaryIO:
        """A streaming file-like object (read(n), close()); NotFoundError when missing."""
        raise NotImplementedError

    def head(self, key: str) -> dict[str, Any] | None:
        """{"key", "bytes", "sse", "modified", ...} of key, or None when it does not exist."""
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> dict[str, Any]:
        """Store a small object atomically."""
        writer = self.open_writer(key)
        with writer:
            writer.write(data)
            return writer.commit()

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole; NotFoundError when missing."""
        with self.open_reader(key) as reader:
            return reader.read()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects whose key starts with prefix, sorted by key."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Delete key (no error when it does not exist)."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with prefix (not empty); return the count."""
        raise NotImplementedError

    def check_writable(self) -> dict[str, Any]:
        """Write and delete a probe object; raise StorageError saying why that failed."""
        raise NotImplementedError

    def stored_checksum(self, key: str) -> dict[str, Any] | None:
        """The checksum the store itself keeps for an object - S3's additional checksum:
        ``{"algorithm", "value", "parts", "bytes"}`` (``value`` without S3's ``-<parts>``
        suffix) - or None where it keeps none (file://, an S3-compatible server without
        additional checksums, an object uploaded without them). Equal to the ``checksum`` a
        writer's ``commit()`` returned, it proves that the stored object is made of exactly
        the bytes this writer sent (S3 checked each part against its CRC32 on receipt)
        without reading the object back."""
        return None

    def incomplete_uploads(self, older_than_s: float) -> list[IncompleteUpload]:
        """The unfinished writes under this storage that opsbook's own writer started more
        than older_than_s seconds ago and never committed nor aborted, oldest first.

        A writer killed outright (SIGKILL) cannot abort its upload; the next run finds it
        here and removes it with abort_incomplete(). S3: the multipart uploads under the
        prefix (ListMultipartUploads) that an opsbook writer recorded in its marker object
        (one ListObjectsV2 when there is none, else both); file://: the writers'
        ``<key>.opsbook.tmp-<random>`` files (their last write older than older_than_s).
        Never a committed object, never an upload or file that opsbook's writer did not
        start, never anything outside the storage. older_than_s protects writers still
        running: an upload is taken only once it has not moved for that long (S3: its newest
        part, else its start - a live writer sends a part every few seconds, so a long backup
        still going on is never taken; file://: the temp file's last write). S3 times have
        whole seconds and the server's clock. 0 takes every one found (the caller knows that no
        writer runs: a test, an operator cleaning up by hand).
        Raises StorageError when the storage cannot be listed.
        """
        raise NotImplementedError

    def abort_incomplete(self, item: IncompleteUpload) -> None:
        """Remove one unfinished write that incomplete_uploads() returned: S3 aborts the
        multipart upload (its parts are deleted) and deletes its marker; file:// removes
        the temporary file (and directories it leaves empty). Already gone is no error.
        Raises StorageError saying what is left when that fails."""
        raise NotImplementedError

    def cleanup_incomplete(self, older_than: float = 86400.0) -> list[IncompleteUpload]:
        """abort_incomplete() every item of incomplete_uploads(older_than); returns them.

        On S3 it also deletes markers older than that whose upload has gone (aborted by a
        lifecycle rule, or the writer died between completing an upload and deleting it).
        """
        raise NotImplementedError

    # Conditional operations on small objects (locks, ledgers). Each either does what it
    # says atomically or changes nothing and raises PreconditionFailedError (the condition
    # does not hold) or ConditionalWriteUnsupportedError (the server refused the condition
    # as not implemented; see S3Storage.probe_conditional_writes for servers that ignore it).

    def read_versioned(self, key: str) -> Versioned | None:
        """A small object and its version token, or None when it does not exist."""
        raise NotImplementedError

    def create_bytes(self, key: str, data: bytes) -> dict[str, Any]:
        """Store a small object only if key does not exist (atomic create-if-absent).

        Returns {"key", "bytes", "etag"}; PreconditionFailedError when key exists.
        """
        raise NotImplementedError

    def replace_bytes(self, key: str, data: bytes, if_match: str) -> dict[str, Any]:
        """Replace key only while its version token is if_match (compare-and-swap).

        Returns {"key", "bytes", "etag"}; PreconditionFailedError when key is missing or
        has another version.
        """
        raise NotImplementedError

    def delete_if_match(self, key: str, if_match: str) -> None:
        """Delete key only while its version token is if_match; PreconditionFailedError when
        it is missing or has another version."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
