# Copyright: opsbook contributors
# Apache-2.0
"""Reading S3 objects: :class:`S3Reader`, a streaming reader that resumes a dropped stream."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3 import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    is_stall_error,
    stream_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_common import MiB

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_s3 import (
        S3Storage,
    )

_READ_RESUMES = 3


class S3Reader:
    """A streaming reader of one S3 object (get_object Body) that resumes a dropped stream.

    A broken connection mid-object is resumed (up to 3 times) with a Range
    request pinned to the object's ETag, so a restore of a large backup
    survives a transient network error without re-reading from the start. A
    stalled stream (no bytes for the stall timeout) is not resumed: the read
    raises StorageError (kind ``stalled``) naming the endpoint, GetObject, the
    key and where in the object it stopped.
    """

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._s3 = storage
        self.key = key
        self._full_key = storage.full_key(key)
        self._pos = 0
        self._closed = False
        resp = self._get({})
        self.size: int = resp["ContentLength"]
        self._etag: str = resp.get("ETag", "")
        self._body: Any = resp["Body"]

    def read(self, n: int | None = -1) -> bytes:
        """Up to n bytes (all the rest when n is None or negative); b"" at the end."""
        if self._closed:
            raise ValueError("read of a closed S3 reader")
        amount = None if n is None or n < 0 else n
        for attempt in range(_READ_RESUMES + 1):
            try:
                data = self._body.read(amount)
                break
            except FlexibleChecksumError as exc:
                raise self._s3.error(self.key, "checksum mismatch while reading", exc) from exc
            except stream_errors() as exc:
                if attempt == _READ_RESUMES or is_stall_error(exc):
                    what = f"reading failed at byte {self._pos} of {self.size}"
                    raise self._s3.error(self.key, what, exc, "GetObject") from exc
                self._resume()
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Release the HTTP connection."""
        if not self._closed:
            self._closed = True
            self._body.close()

    def __enter__(self) -> S3Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(MiB):
            yield chunk

    def _get(self, extra: dict[str, str]) -> dict[str, Any]:
        try:
            return self._s3.client.get_object(Bucket=self._s3.bucket, Key=self._full_key, **extra)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._s3.error(self.key, "GetObject failed", exc) from exc

    def _resume(self) -> None:
        with contextlib.suppress(*stream_errors()):
            self._body.close()
        if self._pos >= self.size:
            self._body = io.BytesIO(b"")
            return
        extra = {"Range": f"bytes={self._pos}-"}
        if self._etag:
            extra["IfMatch"] = self._etag
        self._body = self._get(extra)["Body"]
