# Copyright: opsbook contributors
# Apache-2.0
"""Writing S3 objects: :class:`S3Writer`, a streaming multipart upload, and its part buffers.

Data is cut into parts of ``part_size`` bytes that a small thread pool uploads concurrently
(multipart upload, no local temporary file); at most ``concurrency`` parts are in flight
and one is being filled, so a writer holds at most ``part_size * (concurrency + 1)`` bytes
whatever the object's size (``write()`` blocks while every upload slot is busy). Those
bytes are a fixed pool of ``concurrency + 1`` part buffers (anonymous mmaps), allocated on
first use, reused for every part and unmapped when the writer ends; parts are sent from
them without being copied (measured: RSS +40.4 MiB streaming 150 MiB at 8 MiB x (4 + 1),
back to +0.3 MiB after). An object smaller than one part goes up with a single PutObject.
On any failure the multipart upload is aborted and :class:`StorageError` raised.

Like boto3's own transfers, multipart uploads carry CRC32 part checksums when botocore
computes request checksums (its default); set ``AWS_REQUEST_CHECKSUM_CALCULATION=
when_required`` for an S3-compatible server that rejects them.

A writer whose upload stalled aborts it with one attempt, so a stalled upload fails within
about ``2 * stall_timeout + 1`` seconds (15 s by default; 18 s when refused connections
came first) and its message says whether the upload was aborted or which one is left.
Measured through a proxy that goes silent mid-transfer (tests/integration/test_storage.py):
a multipart upload failed 14.0 s later, PutObject 8.0 s. A slow endpoint that still moves
bytes is never failed, however long a transfer takes; but the client's own send buffer
(Linux grows it up to 4 MiB) drains while it waits for the answer, so an upload must move
at least about 4 MiB per ``stall_timeout`` (0.6 MiB/s at 7 s): raise it for a slower link.

Each multipart upload is recorded in a marker object under ``<prefix>/.opsbook-uploads/``
while it runs, so that an upload a killed writer left is found by ``incomplete_uploads()``
(see opsbook_storage_s3).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import mmap
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3 import (
    MAX_PARTS,
    BotoCoreError,
    ClientError,
    is_stall_error,
    single_attempt,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_common import (
    StorageError,
    Writer,
    human_size,
)

if TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_s3 import (
        S3Storage,
    )


def _allocate_part(size: int) -> mmap.mmap | bytearray:
    """A part buffer: an anonymous private mapping (its pages become resident only once
    written, and close() gives them back to the OS at once), else a bytearray."""
    if hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    return bytearray(size)  # pragma: no cover - platforms without mmap flags


class Part:
    """One reusable part buffer: ``size`` bytes of ``view`` are filled."""

    __slots__ = ("_buffer", "size", "view")

    def __init__(self, capacity: int) -> None:
        self._buffer = _allocate_part(capacity)
        self.view = memoryview(self._buffer)
        self.size = 0

    @property
    def capacity(self) -> int:
        return self.view.nbytes

    def append(self, data: memoryview) -> int:
        """Copy as much of data (a byte-format view) as fits; return the bytes taken."""
        n = min(self.view.nbytes - self.size, data.nbytes)
        self.view[self.size : self.size + n] = data[:n]
        self.size += n
        return n

    def body(self) -> PartBody:
        """A seekable file object over the filled bytes (no copy of the part)."""
        return PartBody(self.view[: self.size])

    def getvalue(self) -> bytes:
        """A copy of the filled bytes."""
        return self.view[: self.size].tobytes()

    def crc32(self) -> int:
        """CRC32 of the filled bytes, computed here (not taken from the server's answer)."""
        return zlib.crc32(self.view[: self.size])

    def close(self) -> None:
        """Give the memory back (at once when no view of it is left, else when the last goes)."""
        self.view.release()
        if isinstance(self._buffer, mmap.mmap):
            with contextlib.suppress(BufferError):
                self._buffer.close()


class PartBody(io.RawIOBase):
    """A read-only, seekable file object over a part's bytes, the body of one request.

    botocore reads a file-like body in chunks - 1 MiB for the CRC32 checksum and the
    SigV4 payload hash, 16 KiB to send it (urllib3, http.client) - and seeks back between
    passes and before a retry. ``read(n)`` returns a memoryview of the part, not a copy:
    every consumer of those chunks takes any bytes-like object (hash updates, ``%b``
    formatting, ``socket.sendall``), and copying them costs a CPU pass per reader plus
    about 3 MiB of malloc arena per upload thread that glibc keeps (measured: 12 MiB at
    4 threads). ``read()`` without a size returns bytes. close() releases the view.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """The next size bytes as a memoryview (zero copy); all the rest, as bytes, without a
        size. Empty at the end."""
        self._check_closed()
        whole = size is None or size < 0
        end = self._view.nbytes if whole else min(self._pos + size, self._view.nbytes)
        start, self._pos = self._pos, max(self._pos, end)
        chunk = self._view[start:end]
        return chunk.tobytes() if whole else chunk  # type: ignore[return-value]

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        self._check_closed()
        target = memoryview(buffer).cast("B")
        n = max(0, min(target.nbytes, self._view.nbytes - self._pos))
        target[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_closed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._view.nbytes}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        self._check_closed()
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._view.release()
        super().close()

    def _check_closed(self) -> None:
        # io.IOBase.closed is a property, not the method pylint takes it for
        if self.closed:  # pylint: disable=using-constant-test
            raise ValueError("I/O operation on a closed part body")


class PartPool:
    """At most ``count`` part buffers of ``part_size`` bytes, allocated on first use and reused.

    The S3 writer needs ``concurrency + 1`` (one per upload in flight, one being filled),
    so its memory is that, whatever the object's size: freed and reallocated buffers would
    instead be left to malloc, which keeps multi-MiB blocks on the heap. acquire() blocks
    while every buffer is in use; close() unmaps them all.
    """

    def __init__(self, part_size: int, count: int) -> None:
        if part_size < 1 or count < 1:
            raise ValueError("part_size and count must be >= 1")
        self.part_size = part_size
        self.count = count
        self._free: list[Part] = []
        self._allocated = 0
        self._cond = threading.Condition()
        self._closed = False

    @property
    def allocated(self) -> int:
        """Buffers allocated so far (never more than count)."""
        return self._allocated

    def acquire(self) -> Part:
        """An empty part buffer."""
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("part pool is closed")
                if self._free:
                    return self._free.pop()
                if self._allocated < self.count:
                    self._allocated += 1
                    return Part(self.part_size)
                self._cond.wait()

    def release(self, part: Part) -> None:
        """Give a part buffer back (emptied) for reuse."""
        with self._cond:
            part.size = 0
            if self._closed:
                part.close()
                return
            self._free.append(part)
            self._cond.notify()

    def close(self) -> None:
        """Free every buffer (those still in use are freed when released)."""
        with self._cond:
            self._closed = True
            free, self._free = self._free, []
            self._cond.notify_all()
        for part in free:
            part.close()


class PartBuffer:
    """Cuts a stream of writes into parts of exactly part_size bytes (the last may be shorter),
    copying them into buffers of a :class:`PartPool`.

    A full part is handed over (``flush`` callback, which must take() it) only when more
    data arrives, so the final part is never empty and an object of exactly part_size
    bytes stays a single part. The taken :class:`Part` belongs to the caller, who gives it
    back with ``pool.release(part)``.
    """

    def __init__(self, pool: PartPool) -> None:
        self.pool = pool
        self.part_size = pool.part_size
        self._part: Part | None = None

    @property
    def size(self) -> int:
        """Bytes buffered."""
        return self._part.size if self._part is not None else 0

    @property
    def full(self) -> bool:
        """True when a whole part is buffered."""
        return self.size >= self.part_size

    def feed(self, data: bytes | bytearray | memoryview, flush: Callable[[], None]) -> int:
        """Buffer data, calling flush() (which must take()) each time a full part must move on."""
        view = memoryview(data).cast("B")
        total = view.nbytes
        while view.nbytes:
            if self.full:
                flush()
                if self.full:
                    raise RuntimeError("PartBuffer flush callback did not take() the part")
            if self._part is None:
                self._part = self.pool.acquire()
            view = view[self._part.append(view) :]
        return total

    def take(self) -> Part | None:
        """The buffered part (None when nothing is buffered); the buffer is empty afterwards."""
        part, self._part = self._part, None
        return part

    def clear(self) -> None:
        """Drop whatever is buffered."""
        if self._part is not None:
            self.pool.release(self._part)
            self._part = None


def crc32_b64(value: int) -> str:
    """A CRC32 as S3 spells it (base64 of its 4 big-endian bytes)."""
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def composite_crc32(part_crcs: list[int]) -> str:
    """S3's checksum of a multipart object uploaded with CRC32 part checksums: the CRC32 of
    the parts' CRC32s (4 big-endian bytes each, in part order), base64; S3 shows it with
    ``-<parts>`` appended."""
    return crc32_b64(zlib.crc32(b"".join(c.to_bytes(4, "big") for c in part_crcs)))


def put_outcome(exc: BaseException) -> str:
    """What a failed PutObject left: an error answer means nothing was stored; without an
    answer the server may have stored the object before the answer was lost."""
    if isinstance(exc, ClientError):
        return " (nothing was stored)"
    return " (no answer came: the object may or may not have been stored)"


def put_result(key: str, size: int, resp: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": key,
        "bytes": size,
        "etag": str(resp.get("ETag", "")).strip('"'),
        "parts": 0,
        "sse": resp.get("ServerSideEncryption"),
    }


class S3Writer(Writer):
    """A streaming multipart upload; see the module docstring for the memory bound."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.key = key
        self.bytes_written = 0
        self.result = None
        self._s3 = storage
        self._client = storage.client
        self._bucket = storage.bucket
        self._full_key = storage.full_key(key)
        self._where = f"s3://{self._bucket}/{self._full_key}"
        self._checksum = storage.checksum_algorithm()
        # concurrency parts in flight + the one being filled: the writer's whole memory
        self._pool = PartPool(storage.part_size, storage.concurrency + 1)
        self._buffer = PartBuffer(self._pool)
        self._slots = threading.Semaphore(storage.concurrency)
        self._concurrency = storage.concurrency
        self._executor: ThreadPoolExecutor | None = None
        self._upload_id: str | None = None
        self._next_part = 1
        self._parts: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._failure: tuple[int, BaseException] | None = None
        self._state = "open"
        self._marker: str | None = None  # the marker object of our multipart upload
        self._completing = False
        self._crcs: dict[int, int] = {}  # part number -> CRC32 computed here

    @property
    def closed(self) -> bool:
        return self._state != "open"

    @property
    def upload_id(self) -> str | None:
        """The multipart upload id once the first part is sent (None for a single PutObject)."""
        return self._upload_id

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_open()
        n = self._buffer.feed(data, self._send_part)
        self.bytes_written += n
        return n

    def commit(self) -> dict[str, Any]:
        self._check_open()
        self._raise_if_part_failed()
        if self._upload_id is None:
            result = self._put_single()
        else:
            if self._buffer.size:  # the last part (never empty: see PartBuffer)
                self._send_part()
            self._wait_for_parts()
            self._raise_if_part_failed()
            result = self._complete()
        self._pool.close()
        return result

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        nothing_left, note = self._cleanup()
        if not nothing_left:
            raise StorageError(f"{self._where}: upload aborted{note}")

    # ------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"{self._where}: writer is already {self._state}")

    def _send_part(self) -> None:
        """Hand the buffered part to an upload thread once a slot is free (blocks until then)."""
        self._raise_if_part_failed()
        if self._next_part > MAX_PARTS:
            self._fail(
                f"the object exceeds {MAX_PARTS} parts of {human_size(self._buffer.part_size)}; "
                "use a larger part size",
                None,
            )
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            self._raise_if_part_failed()
        try:
            if self._upload_id is None:
                self._start_upload()
        except BaseException:
            self._slots.release()
            raise
        number, self._next_part = self._next_part, self._next_part + 1
        part = self._buffer.take()
        if self._executor is None or part is None:
            raise AssertionError("self._executor is not None and part is not None")
        try:
            self._executor.submit(self._upload_part, number, part)
        except BaseException:
            self._pool.release(part)
            self._slots.release()
            raise

    def _start_upload(self) -> None:
        args = self._s3.sse_args()
        if self._checksum:
            args["ChecksumAlgorithm"] = self._checksum
        try:
            resp = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._full_key, **args
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            self._fail("CreateMultipartUpload failed", exc, "CreateMultipartUpload")
        self._upload_id = resp["UploadId"]
        self._write_marker()
        self._executor = ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix="opsbook-s3-part"
        )

    def _write_marker(self) -> None:
        """Record the upload as opsbook's (see S3Storage.incomplete_uploads)."""
        if self._upload_id is None:
            raise AssertionError("self._upload_id is not None")
        marker = self._s3.upload_marker_key(self._full_key, self._upload_id)
        body = json.dumps(
            {
                "key": self.key,
                "bucket_key": self._full_key,
                "upload_id": self._upload_id,
                "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "writer": "opsbook_storage.S3Writer",
            }
        ).encode()
        # known before it is written: a signal that interrupts the PutObject after the server
        # stored it must not leave the marker behind (deleting an absent key is a no-op)
        self._marker = marker
        try:
            self._client.put_object(
                Bucket=self._bucket, Key=marker, Body=body, **self._s3.sse_args()
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            if isinstance(exc, ClientError):
                self._marker = None  # refused: nothing was stored
            self._fail(
                "recording the multipart upload in its marker object failed", exc, "PutObject"
            )

    def _drop_marker(self) -> None:
        """Delete the marker once the upload has ended (a marker left is pruned later)."""
        marker, self._marker = self._marker, None
        if marker is not None:
            with contextlib.suppress(ClientError, BotoCoreError, OSError):
                self._client.delete_object(Bucket=self._bucket, Key=marker)

    def _upload_part(self, number: int, part: Part) -> None:
        """Upload thread: one part. Its buffer goes back to the pool before the slot is freed
        (so a free slot always finds a free buffer)."""
        body: PartBody | None = None
        try:
            if self._failure is not None:
                return
            body = part.body()
            args: dict[str, Any] = {"ChecksumAlgorithm": self._checksum} if self._checksum else {}
            crc = part.crc32() if self._checksum else None
            resp = self._client.upload_part(
                Bucket=self._bucket,
                Key=self._full_key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,  # read in chunks straight from the part buffer, never copied whole
                **args,
            )
            entry = {"PartNumber": number, "ETag": resp["ETag"]}
            if self._checksum and f"Checksum{self._checksum}" in resp:
                entry[f"Checksum{self._checksum}"] = resp[f"Checksum{self._checksum}"]
            with self._lock:
                self._parts[number] = entry
                if crc is not None:
                    self._crcs[number] = crc
        except BaseException as exc:
            with self._lock:
                if self._failure is None:
                    self._failure = (number, exc)
        finally:
            try:
                if body is not None:
                    body.close()
                self._pool.release(part)
            finally:
                self._slots.release()

    def _wait_for_parts(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _raise_if_part_failed(self) -> None:
        if self._failure is not None:
            number, exc = self._failure
            self._fail(f"upload of part {number} failed", exc, "UploadPart")

    def _put_single(self) -> dict[str, Any]:
        part = self._buffer.take()
        body = part.body() if part is not None else io.BytesIO(b"")
        crc = (part.crc32() if part is not None else zlib.crc32(b"")) if self._checksum else None
        try:
            resp = self._client.put_object(
                Bucket=self._bucket,
                Key=self._full_key,
                Body=body,
                **self._s3.sse_args(),
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            self._fail(f"PutObject failed{put_outcome(exc)}", exc, "PutObject")
        finally:
            body.close()
            if part is not None:
                self._pool.release(part)
        self._state = "committed"
        self.result = put_result(self.key, self.bytes_written, resp)
        if crc is not None:
            self.result["checksum"] = {"algorithm": "CRC32", "value": crc32_b64(crc), "parts": None}
        return self.result

    def _complete(self) -> dict[str, Any]:
        parts = [self._parts[n] for n in sorted(self._parts)]
        if len(parts) != self._next_part - 1:
            self._fail(f"only {len(parts)} of {self._next_part - 1} parts were uploaded", None)
        self._completing = True
        try:
            resp = self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._full_key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            self._fail("CompleteMultipartUpload failed", exc, "CompleteMultipartUpload")
        self._state = "committed"
        self._drop_marker()
        self.result = put_result(self.key, self.bytes_written, resp)
        self.result["parts"] = len(parts)
        if self._checksum and len(self._crcs) == len(parts):
            crcs = [self._crcs[n] for n in sorted(self._crcs)]
            self.result["checksum"] = {
                "algorithm": "CRC32",
                "value": composite_crc32(crcs),
                "parts": len(parts),
            }
        return self.result

    def _fail(self, what: str, exc: BaseException | None, operation: str | None = None) -> NoReturn:
        """Abort the upload (after in-flight parts end) and raise a StorageError saying what
        failed, why, and what is left."""
        self._state = "failed"
        _nothing_left, note = self._cleanup(stalled=is_stall_error(exc))
        if exc is None:
            reason, kind = "", None
        else:
            reason, kind = self._s3.describe_error(exc, operation)
            reason = f": {reason}"
        written = f" after {self.bytes_written} bytes written" if self.bytes_written else ""
        message = f"{self._where}: {what}{written}{reason}{note}"
        raise StorageError(message, kind) from exc

    def _cleanup(self, stalled: bool = False) -> tuple[bool, str]:
        """Drop buffered data, wait for in-flight parts, abort the multipart upload.

        After a stall (of this request or of a part) the abort gets a single attempt, so
        that a silent endpoint costs one more stall_timeout, not one per retry. Returns
        (True, note) when nothing is left behind, else (False, note saying what is left).
        """
        self._buffer.clear()
        self._wait_for_parts()
        self._pool.close()
        if self._upload_id is None:
            return True, ""
        failure = self._failure
        stalled = stalled or (failure is not None and is_stall_error(failure[1]))
        try:
            with single_attempt() if stalled else contextlib.nullcontext():
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._full_key, UploadId=self._upload_id
                )
        except (ClientError, BotoCoreError, OSError) as exc:
            reason, kind = self._s3.describe_error(exc, "AbortMultipartUpload")
            if kind == "not_found" and self._completing:
                return False, (
                    f"; the multipart upload {self._upload_id} is gone from the server: "
                    "CompleteMultipartUpload may have stored the object after all"
                )
            if kind != "not_found":  # NoSuchUpload: aborted already
                return False, (
                    f"; AbortMultipartUpload failed too ({reason}): the incomplete upload "
                    f"{self._upload_id} is left until removed (incomplete_uploads() and "
                    "abort_incomplete() on a later run, or a bucket lifecycle rule "
                    "AbortIncompleteMultipartUpload)"
                )
        if not stalled:
            self._drop_marker()
        return True, f"; the multipart upload {self._upload_id} was aborted"
