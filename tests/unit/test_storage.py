"""module_utils/opsbook_storage.py without a server: URL parsing, part splitting, the S3
writer's memory bound and failure handling (against an in-process fake client), stall
classification and the retry veto, and the file backend (atomic writes, crash safety,
unfinished writes, listing, deletion, write probe)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3.exceptions
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from tests.loaders import COLLECTIONS_DIR, load_module_utils

st = load_module_utils("opsbook_storage")
# The parts of it some tests reach into (the facade above re-exports only public names).
s3_client = load_module_utils("opsbook_s3")
s3_upload = load_module_utils("opsbook_s3_upload")
file_storage = load_module_utils("opsbook_storage_file")
MiB = st.MiB
SECRET = "wJalrXUtnFEMI-K7MDENG-not-a-real-secret"


# ======================================================================= URLs


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "canonical"),
    [
        ("s3://backups", "backups", "", "s3://backups"),
        ("s3://backups/", "backups", "", "s3://backups"),
        ("s3://backups/prod/db", "backups", "prod/db", "s3://backups/prod/db"),
        ("s3://backups//prod///db/", "backups", "prod/db", "s3://backups/prod/db"),
        ("  s3://my.bucket-1/x  ", "my.bucket-1", "x", "s3://my.bucket-1/x"),
        ("S3://backups/a%20b", "backups", "a b", "s3://backups/a b"),
    ],
)
def test_parse_s3_urls(url: str, bucket: str, prefix: str, canonical: str) -> None:
    parsed = st.parse_storage_url(url)
    assert (parsed.scheme, parsed.bucket, parsed.prefix) == ("s3", bucket, prefix)
    assert parsed.url == canonical


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///var/backups", "/var/backups"),
        ("file:///var/backups/", "/var/backups"),
        ("file://localhost/var/backups", "/var/backups"),
        ("file:///var//backups/./db", "/var/backups/db"),
        ("file:///srv/my%20backups", "/srv/my backups"),
    ],
)
def test_parse_file_urls(url: str, path: str) -> None:
    parsed = st.parse_storage_url(url)
    assert (parsed.scheme, parsed.path) == ("file", path)
    assert parsed.url == f"file://{path}"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("http://example.com/backups", "unsupported"),
        ("gs://bucket/x", "unsupported"),
        ("/var/backups", "unsupported"),
        ("backups", "unsupported"),
        ("s3://", "no bucket"),
        ("s3:///prefix/only", "no bucket"),
        ("s3://bad bucket/x", "not a valid bucket"),
        ("s3://bkt/../etc", "'..'"),
        ("s3://bucket/x?versionId=1", "query string"),
        ("file://var/backups", "host name"),
        ("file:relative/path", "relative path"),
        ("file:", "relative path"),
    ],
)
def test_parse_rejects_bad_urls(url: str, words: str) -> None:
    with pytest.raises(st.StorageURLError) as info:
        st.parse_storage_url(url)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, st.StorageError)
    assert info.value.kind == "invalid"


def test_parse_refuses_credentials_in_s3_url_without_echoing_them() -> None:
    with pytest.raises(st.StorageURLError) as info:
        st.parse_storage_url(f"s3://AKIAEXAMPLE:{SECRET}@bucket/x")
    assert SECRET not in str(info.value)
    assert "credentials" in str(info.value)


@pytest.mark.parametrize("key", ["a", "a/b", "db-20240101T000000Z-ab12/data.pgdump.zst", ".probe"])
def test_normalize_key_accepts_relative_keys(key: str) -> None:
    assert st.normalize_key(key) == key


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "..", "./a", "a/", "a\0b"])
def test_normalize_key_rejects_escapes_and_empty_segments(key: str) -> None:
    with pytest.raises(st.StorageURLError):
        st.normalize_key(key)


def test_prefix_may_be_empty_or_end_with_slash() -> None:
    assert st.normalize_key("", allow_empty=True) == ""
    assert st.normalize_key("db-1/", allow_empty=True) == "db-1/"
    with pytest.raises(st.StorageURLError):
        st.normalize_key("../", allow_empty=True)


def test_join_key() -> None:
    assert st.join_key("", "a/b") == "a/b"
    assert st.join_key("prod/db", "a/b") == "prod/db/a/b"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"sse": "aes256"}, "sse must be"),
        ({"sse": "AES256", "kms_key_id": "k"}, "kms_key_id"),
        ({"part_size": 5 * MiB - 1}, "part_size"),
        ({"part_size": 6 * 1024 * MiB}, "part_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 65}, "concurrency"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"stall_timeout": 0}, "stall_timeout"),
        ({"stall_timeout": 601}, "stall_timeout"),
    ],
)
def test_open_storage_validates_settings(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(st.StorageURLError) as info:
        st.open_storage("s3://bucket/x", **kwargs)
    assert words in str(info.value)


def test_open_storage_refuses_encryption_on_files(tmp_path: Path) -> None:
    with pytest.raises(st.StorageURLError, match="only available for s3"):
        st.open_storage(f"file://{tmp_path}", sse="AES256")


def test_describe_never_shows_endpoint_credentials() -> None:
    storage = st.open_storage(
        "s3://bucket/prefix",
        endpoint_url=f"http://user:{SECRET}@127.0.0.1:9000",
        region="us-east-1",
        sse="aws:kms",
        kms_key_id="alias/backups",
    )
    text = storage.describe()
    assert SECRET not in text and SECRET not in repr(storage)
    assert "s3://bucket/prefix" in text and "127.0.0.1:9000" in text
    assert "aws:kms" in text and "alias/backups" not in text


def test_client_uses_standard_retries_and_the_stall_timeout() -> None:
    storage = st.open_storage(
        "s3://bucket", endpoint_url="http://127.0.0.1:9", region="us-east-1", concurrency=12
    )
    config = storage.client.meta.config
    # retries.max_attempts=2 (botocore counts retries): 3 attempts in all
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    # No bytes for the stall timeout while connecting, sending or waiting: stalled.
    assert config.connect_timeout == config.read_timeout == st.DEFAULT_STALL_TIMEOUT
    assert storage.stall_timeout == st.DEFAULT_STALL_TIMEOUT
    # The worst case of a stalled upload, abort included (module docstring): the part
    # (two fast failures with standard backoff up to 1 s and 2 s, then the stall, plus 1 s
    # of Expect: 100-continue) and one attempt at the abort.
    worst = (1 + 2 + st.DEFAULT_STALL_TIMEOUT + 1) + st.DEFAULT_STALL_TIMEOUT
    assert worst < 20
    assert config.max_pool_connections >= 14
    assert config.s3 == {"addressing_style": "path"}
    assert st.open_storage("s3://bucket", stall_timeout=2.5).client.meta.config.read_timeout == 2.5


def _needs_retry(client: Any, exc: BaseException) -> Any:
    """What botocore's endpoint would decide after a failed UploadPart attempt: the first
    answer of the needs-retry handlers that is not None (None: no retry, a number: retry
    after that delay)."""
    from botocore.hooks import first_non_none_response

    operation = client.meta.service_model.operation_model("UploadPart")
    responses = client.meta.events.emit(
        "needs-retry.s3.UploadPart",
        response=None,
        endpoint=None,
        operation=operation,
        attempts=1,
        caught_exception=exc,
        request_dict={"context": {"retries": {"attempt": 1}}},
    )
    return first_non_none_response(responses)


def _send_timeout() -> ConnectionClosedError:
    """What botocore raises when sending a request times out (the socket's send blocked)."""
    protocol = urllib3.exceptions.ProtocolError("Connection aborted.", TimeoutError("timed out"))
    return ConnectionClosedError(endpoint_url="http://h:1/b/k", error=protocol)


def _read_timeout() -> ReadTimeoutError:
    inner = urllib3.exceptions.ReadTimeoutError(None, "/b/k", "Read timed out.")
    return ReadTimeoutError(endpoint_url="http://h:1/b/k", error=inner)


def _refused() -> EndpointConnectionError:
    inner = urllib3.exceptions.NewConnectionError(None, "Connection refused")
    return EndpointConnectionError(endpoint_url="http://h:1/b/k", error=inner)


def test_a_stalled_request_is_never_retried_other_failures_are() -> None:
    client = st.open_storage("s3://bucket", endpoint_url="http://127.0.0.1:9").client
    for stall in (_read_timeout(), _send_timeout(), ConnectTimeoutError(endpoint_url="x")):
        assert _needs_retry(client, stall) is False, stall
    for transient in (_refused(), ConnectionClosedError(endpoint_url="http://h:1/b/k")):
        delay = _needs_retry(client, transient)
        assert isinstance(delay, (int, float)) and delay >= 0, transient
    with st.single_attempt():  # clean-up after a stall: one attempt, whatever the error
        assert _needs_retry(client, _refused()) is False
    assert isinstance(_needs_retry(client, _refused()), (int, float))  # and only inside


@pytest.mark.parametrize(
    ("exc", "stalled"),
    [
        (_read_timeout(), True),
        (_send_timeout(), True),
        (ConnectTimeoutError(endpoint_url="http://h:1"), True),
        (urllib3.exceptions.ReadTimeoutError(None, "/k", "Read timed out."), True),
        (TimeoutError("timed out"), True),
        (st.StorageError("s3://b/k: GetObject failed: ... stalled", kind="stalled"), True),
        (_refused(), False),  # urllib3 derives NewConnectionError from its timeout class
        (ConnectionClosedError(endpoint_url="http://h:1/b/k"), False),
        (ConnectionResetError(104, "Connection reset by peer"), False),
        (ClientError({"Error": {"Code": "SlowDown"}}, "UploadPart"), False),
        (st.StorageError("s3://b/k: refused", kind="unreachable"), False),
    ],
)
def test_is_stall_error(exc: BaseException, stalled: bool) -> None:
    assert st.is_stall_error(exc) is stalled


# ============================================================= part splitting


def split(writes: list[bytes], part_size: int) -> tuple[list[bytes], bytes]:
    """Feed writes through a PartBuffer like the S3 writer does: (full parts, remainder)."""
    pool = st.PartPool(part_size, 2)
    buffer = st.PartBuffer(pool)
    parts: list[bytes] = []

    def flush() -> None:
        part = buffer.take()
        parts.append(part.getvalue())
        pool.release(part)

    for data in writes:
        buffer.feed(data, flush)
    last = buffer.take()
    rest = last.getvalue() if last is not None else b""
    assert pool.allocated <= 2
    pool.close()
    return parts, rest


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [0],
        [1],
        [10],
        [11],
        [30],
        [7, 3],
        [3, 3, 3, 3, 3, 3, 3],
        [25, 1, 1, 9],
        [1] * 35,
        [100, 0, 5],
    ],
)
def test_part_buffer_cuts_exact_parts(sizes: list[int]) -> None:
    writes = [os.urandom(n) for n in sizes]
    parts, rest = split(writes, 10)
    assert all(len(p) == 10 for p in parts)
    assert b"".join(parts) + rest == b"".join(writes)
    total = sum(sizes)
    # A full part moves on only when more data follows: the remainder is never
    # empty (unless nothing was written) and never more than one part.
    assert 0 < len(rest) <= 10 if total else rest == b""
    assert len(parts) == max(0, -(-total // 10) - 1)


def test_part_buffer_copies_every_kind_of_buffer_into_the_pool() -> None:
    pool = st.PartPool(100, 1)
    buffer = st.PartBuffer(pool)
    mutable = bytearray(b"y" * 10)
    buffer.feed(b"x" * 40, lambda: None)
    buffer.feed(mutable, lambda: None)
    buffer.feed(memoryview(b"z" * 5), lambda: None)
    buffer.feed(memoryview(bytearray(b"\x01\x00\x02\x00")).cast("H"), lambda: None)
    mutable[:] = b"!" * 10  # the caller reuses its buffer
    assert buffer.size == 59
    part = buffer.take()
    assert part.getvalue() == b"x" * 40 + b"y" * 10 + b"z" * 5 + b"\x01\x00\x02\x00"
    assert buffer.take() is None and buffer.size == 0


def test_part_buffer_flush_must_take() -> None:
    buffer = st.PartBuffer(st.PartPool(4, 1))
    with pytest.raises(RuntimeError):
        buffer.feed(b"123456789", lambda: None)


def test_part_pool_reuses_a_fixed_set_of_buffers() -> None:
    pool = st.PartPool(8, 2)
    first, second = pool.acquire(), pool.acquire()
    assert pool.allocated == 2 and first is not second
    first.append(memoryview(b"abc"))
    pool.release(first)
    again = pool.acquire()
    assert again is first and again.size == 0  # recycled, emptied
    # every buffer in use: acquire() waits for a release
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    time.sleep(0.1)
    assert not got and pool.allocated == 2
    pool.release(second)
    waiter.join(5)
    assert got == [second]
    pool.release(again)
    pool.release(second)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.acquire()


def test_part_body_reads_chunks_seeks_and_never_copies_the_part() -> None:
    part = st.Part(st.MiB)
    data = os.urandom(100_000)
    part.append(memoryview(data))
    body = part.body()
    # what botocore does: content length from seek/tell, a checksum pass, rewind, send
    assert body.seekable() and body.readable()
    assert body.seek(0, io.SEEK_END) == len(data) and body.seek(0) == 0
    assert b"".join(iter(lambda: body.read(16384), b"")) == data
    assert body.read(10) == b"" and body.tell() == len(data)
    body.seek(-10, io.SEEK_END)
    assert body.read() == data[-10:]
    body.seek(5)
    target = bytearray(7)
    assert body.readinto(target) == 7 and bytes(target) == data[5:12]
    body.seek(0)
    assert body.read() == data
    with pytest.raises(ValueError):
        body.seek(-1)
    body.close()
    with pytest.raises(ValueError):
        body.read(1)
    # the body was a view of the buffer: once closed, the buffer can be unmapped
    part.close()


def test_part_body_reads_as_botocore_urllib3_and_http_client_read_it() -> None:
    """read(n) hands out memoryviews of the part: every reader of a request body in the
    upload path must see exactly the bytes an io.BytesIO body gives it."""
    import http.client
    import socket

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
    from botocore.utils import determine_content_length
    from urllib3.util.request import body_to_chunks

    data = os.urandom(3 * MiB + 12345)
    part = st.Part(4 * MiB)
    part.append(memoryview(data))
    body = part.body()
    assert determine_content_length(body) == len(data)
    # request checksum (header): reads 1 MiB chunks, then seeks back
    assert Crc32Checksum().handle(body) == Crc32Checksum().handle(io.BytesIO(data))
    assert body.tell() == 0
    # SigV4 payload hash over http: the same
    request = AWSRequest(method="PUT", url="http://s3.test/b/k", data=body)
    auth = SigV4Auth(Credentials("AKID", "secret"), "s3", "us-east-1")
    assert auth.payload(request) == hashlib.sha256(data).hexdigest()
    assert body.tell() == 0
    # aws-chunked body with a trailing checksum (https)
    wrapped = AwsChunkedWrapper(body, Crc32Checksum, "x-amz-checksum-crc32")
    expected = AwsChunkedWrapper(io.BytesIO(data), Crc32Checksum, "x-amz-checksum-crc32")
    assert b"".join(iter(lambda: wrapped.read(65536), b"")) == expected.read()
    # urllib3 and http.client send it in blocks
    body.seek(0)
    chunks = body_to_chunks(body, method="PUT", blocksize=16384).chunks
    assert b"".join(bytes(c) for c in chunks) == data
    body.seek(0)
    left, right = socket.socketpair()
    received = bytearray()

    def receive() -> None:
        while chunk := right.recv(1 << 20):
            received.extend(chunk)

    reader = threading.Thread(target=receive)
    reader.start()
    conn = http.client.HTTPConnection("s3.test")
    conn.sock = left
    conn.send(body)
    left.shutdown(socket.SHUT_WR)
    reader.join(10)
    left.close()
    right.close()
    assert bytes(received) == data
    body.close()
    part.close()


def test_memory_bound_and_part_size_planning() -> None:
    assert st.max_buffered_bytes(16 * MiB, 4) == 80 * MiB
    assert st.part_size_for(0) == st.DEFAULT_PART_SIZE
    assert st.part_size_for(100 * st.GiB) == st.DEFAULT_PART_SIZE  # 16 MiB * 10,000 = 156 GiB
    big = st.part_size_for(1024 * st.GiB)
    assert big % MiB == 0 and big * st.MAX_PARTS >= 1024 * st.GiB * 1.1
    assert st.part_size_for(10**15) == st.MAX_PART_SIZE
    assert st.part_size_for(1, part_size=1) == st.MIN_PART_SIZE


# ==================================================== S3 writer (fake client)


def client_error(code: str, status: int, op: str, message: str = "injected") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )


class FakeS3:
    """A thread-safe in-memory stand-in for the boto3 S3 calls the writer makes."""

    def __init__(self, checksum: str = "when_supported", part_delay: float = 0.0) -> None:
        self.meta = SimpleNamespace(
            endpoint_url="http://fake-s3:9000",
            config=SimpleNamespace(request_checksum_calculation=checksum),
        )
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.part_delay = part_delay
        self.gate = threading.Event()
        self.gate.set()
        self.fail: dict[str, Callable[[dict[str, Any]], BaseException | None]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.abort_single_attempt: list[bool] = []  # per abort: inside single_attempt()?
        self._lock = threading.Lock()

    def _record(self, op: str, kwargs: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append((op, {k: v for k, v in kwargs.items() if k != "Body"}))
        error = self.fail.get(op, lambda _kw: None)(kwargs)
        if error is not None:
            raise error

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def put_object(self, **kw: Any) -> dict[str, Any]:
        self._record("PutObject", kw)
        body = kw["Body"].read() if hasattr(kw["Body"], "read") else kw["Body"]
        self.objects[kw["Key"]] = body
        return {"ETag": f'"{hashlib.md5(body).hexdigest()}"', **_sse_echo(kw)}

    def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self._record("CreateMultipartUpload", kw)
        upload_id = f"upload-{len(self.uploads) + 1}"
        self.uploads[upload_id] = {}
        return {"UploadId": upload_id, **_sse_echo(kw)}

    def upload_part(self, **kw: Any) -> dict[str, Any]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.gate.wait(10)
            time.sleep(self.part_delay)
            self._record("UploadPart", kw)
            body = kw["Body"].read()
            self.uploads[kw["UploadId"]][kw["PartNumber"]] = body
            return {"ETag": f'"etag-{kw["PartNumber"]}"', "ChecksumCRC32": "crc=="}
        finally:
            with self._lock:
                self.in_flight -= 1

    def complete_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self._record("CompleteMultipartUpload", kw)
        parts = self.uploads.pop(kw["UploadId"])
        numbers = [p["PartNumber"] for p in kw["MultipartUpload"]["Parts"]]
        self.objects[kw["Key"]] = b"".join(parts[n] for n in numbers)
        return {"ETag": f'"multi-{len(numbers)}"'}

    def abort_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self.abort_single_attempt.append(getattr(s3_client._SINGLE_ATTEMPT, "active", False))
        self._record("AbortMultipartUpload", kw)
        self.uploads.pop(kw["UploadId"], None)
        return {}

    def delete_object(self, **kw: Any) -> dict[str, Any]:
        self._record("DeleteObject", kw)
        self.objects.pop(kw["Key"], None)
        return {}

    def markers(self) -> list[str]:
        return [key for key in self.objects if f"/{st.UPLOAD_MARKER_DIR}/" in f"/{key}"]


def _sse_echo(kw: dict[str, Any]) -> dict[str, Any]:
    return (
        {"ServerSideEncryption": kw["ServerSideEncryption"]} if "ServerSideEncryption" in kw else {}
    )


PART = 5 * MiB


def fake_storage(
    fake: FakeS3, concurrency: int = 2, url: str = "s3://bucket/prod", **kwargs: Any
) -> Any:
    return st.S3Storage(
        st.parse_storage_url(url), fake, part_size=PART, concurrency=concurrency, **kwargs
    )


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART])
def test_object_up_to_one_part_is_a_single_put(size: int) -> None:
    fake = FakeS3()
    storage = fake_storage(fake, sse="AES256")
    data = os.urandom(size)
    with storage.open_writer("db/data") as writer:
        writer.write(data)
        result = writer.commit()
    assert fake.ops() == ["PutObject"]
    assert fake.objects["prod/db/data"] == data
    assert fake.calls[0][1]["ServerSideEncryption"] == "AES256"
    assert result["key"] == "db/data" and result["bytes"] == size and result["parts"] == 0


def test_multipart_upload_parts_in_order_with_sse_and_checksums() -> None:
    fake = FakeS3()
    storage = fake_storage(fake, sse="aws:kms", kms_key_id="alias/backups", url="s3://bucket")
    data = os.urandom(3 * PART + 123)
    with storage.open_writer("big") as writer:
        for offset in range(0, len(data), 1_000_003):
            writer.write(data[offset : offset + 1_000_003])
        result = writer.commit()
    assert fake.objects["big"] == data
    crcs = [zlib.crc32(data[i : i + PART]) for i in range(0, len(data), PART)]
    checksum = {"algorithm": "CRC32", "value": st.composite_crc32(crcs), "parts": 4}
    assert result == {"key": "big", "bytes": len(data), "etag": "multi-4", "parts": 4,
                      "sse": None, "checksum": checksum}  # fmt: skip
    create = dict(fake.calls)["CreateMultipartUpload"]
    assert create["ServerSideEncryption"] == "aws:kms"
    assert create["SSEKMSKeyId"] == "alias/backups"
    assert create["ChecksumAlgorithm"] == "CRC32"
    complete = dict(fake.calls)["CompleteMultipartUpload"]["MultipartUpload"]["Parts"]
    assert [p["PartNumber"] for p in complete] == [1, 2, 3, 4]
    assert all(p["ChecksumCRC32"] == "crc==" for p in complete)
    assert fake.uploads == {}
    # The upload was recorded as opsbook's right after it started, the record deleted at
    # the end (with the same encryption as the data: a bucket policy may demand it).
    ops = fake.ops()
    assert ops[:2] == ["CreateMultipartUpload", "PutObject"] and ops[-1] == "DeleteObject"
    marker = fake.calls[1][1]
    assert marker["Key"].startswith(f"{st.UPLOAD_MARKER_DIR}/")
    assert marker["ServerSideEncryption"] == "aws:kms"
    assert fake.calls[-1][1]["Key"] == marker["Key"] and fake.markers() == []


def test_no_checksum_arguments_when_botocore_checksums_are_off() -> None:
    fake = FakeS3(checksum="when_required")
    storage = fake_storage(fake)
    with storage.open_writer("big") as writer:
        writer.write(os.urandom(2 * PART))
    assert all("ChecksumAlgorithm" not in kw for _op, kw in fake.calls)
    parts = dict(fake.calls)["CompleteMultipartUpload"]["MultipartUpload"]["Parts"]
    assert all(set(p) == {"PartNumber", "ETag"} for p in parts)


def test_writes_block_while_every_upload_slot_is_busy() -> None:
    """At most `concurrency` parts in flight plus one filling: the memory bound."""
    fake = FakeS3()
    fake.gate.clear()  # uploads hang until released
    concurrency = 3
    writer = fake_storage(fake, concurrency=concurrency).open_writer("big")
    chunk = os.urandom(MiB)
    progress: list[int] = []

    def produce() -> None:
        for _ in range(10 * PART // MiB):
            writer.write(chunk)
            progress.append(writer.bytes_written)

    thread = threading.Thread(target=produce)
    thread.start()
    time.sleep(0.5)
    # concurrency parts handed to the uploaders + one full part buffered, then blocked
    # on the next write (which needs a slot to move the full part on).
    assert thread.is_alive()
    assert progress[-1] == (concurrency + 1) * PART
    assert fake.in_flight == concurrency
    assert progress[-1] <= st.max_buffered_bytes(PART, concurrency)
    fake.gate.set()
    thread.join(10)
    assert not thread.is_alive()
    writer.commit()
    assert fake.max_in_flight == concurrency
    # 10 parts went through the same concurrency + 1 buffers
    assert writer._pool.allocated == concurrency + 1
    assert fake.objects["prod/big"] == chunk * (10 * PART // MiB)


def test_part_failure_aborts_and_raises_naming_the_object() -> None:
    fake = FakeS3()
    fake.fail["UploadPart"] = lambda kw: (
        client_error("AccessDenied", 403, "UploadPart") if kw["PartNumber"] == 2 else None
    )
    writer = fake_storage(fake).open_writer("db/data")
    with pytest.raises(st.StorageError) as info, writer:
        for _ in range(6 * PART // MiB):
            writer.write(os.urandom(MiB))
    message = str(info.value)
    assert "s3://bucket/prod/db/data" in message
    assert "part 2" in message and "access denied" in message
    assert info.value.kind == "access_denied"
    assert fake.ops()[-2:] == ["AbortMultipartUpload", "DeleteObject"]  # upload, then marker
    assert "multipart upload upload-1 was aborted" in message
    assert fake.abort_single_attempt == [False]  # not a stall: the abort may be retried
    assert fake.uploads == {} and "prod/db/data" not in fake.objects and fake.markers() == []
    assert writer.closed
    with pytest.raises(st.StorageError, match="already failed"):
        writer.write(b"more")


def test_exception_in_with_block_aborts_and_propagates() -> None:
    fake = FakeS3()
    with pytest.raises(ZeroDivisionError), fake_storage(fake).open_writer("x") as writer:
        writer.write(os.urandom(3 * PART))
        1 / 0  # noqa: B018 - the failure inside the block
    assert fake.ops().count("AbortMultipartUpload") == 1
    assert "CompleteMultipartUpload" not in fake.ops()
    assert fake.uploads == {} and not fake.objects


def test_explicit_abort_discards_and_is_idempotent() -> None:
    fake = FakeS3()
    writer = fake_storage(fake).open_writer("x")
    writer.write(os.urandom(2 * PART))
    writer.abort()
    writer.abort()
    assert fake.ops().count("AbortMultipartUpload") == 1
    assert fake.uploads == {} and not fake.objects
    with pytest.raises(st.StorageError, match="already aborted"):
        writer.commit()


def test_failed_complete_aborts() -> None:
    fake = FakeS3()
    fake.fail["CompleteMultipartUpload"] = lambda _kw: client_error("InvalidPart", 400, "Complete")
    writer = fake_storage(fake).open_writer("x")
    writer.write(os.urandom(2 * PART))
    with pytest.raises(st.StorageError, match=r"CompleteMultipartUpload failed.*InvalidPart"):
        writer.commit()
    assert fake.ops()[-2:] == ["AbortMultipartUpload", "DeleteObject"]
    assert fake.uploads == {} and fake.markers() == []


def test_failed_abort_is_reported_with_the_leftover_upload() -> None:
    fake = FakeS3()
    endpoint_down = EndpointConnectionError(endpoint_url="http://fake-s3:9000/bucket")
    fake.fail["UploadPart"] = lambda _kw: endpoint_down
    fake.fail["AbortMultipartUpload"] = lambda _kw: endpoint_down
    writer = fake_storage(fake).open_writer("x")
    with pytest.raises(st.StorageError) as info:
        writer.write(os.urandom(4 * PART))
    message = str(info.value)
    assert "unreachable" in message and info.value.kind == "unreachable"
    assert "AbortMultipartUpload failed too" in message and "upload-1" in message
    assert "lifecycle" in message and "incomplete_uploads()" in message
    assert len(fake.markers()) == 1  # kept: the next run finds the upload by it


def test_failed_single_put_raises() -> None:
    fake = FakeS3()
    fake.fail["PutObject"] = lambda _kw: client_error("NoSuchBucket", 404, "PutObject")
    writer = fake_storage(fake).open_writer("manifest.json")
    writer.write(b"{}")
    with pytest.raises(st.StorageError, match="bucket 'bucket' does not exist") as info:
        writer.commit()
    assert info.value.kind == "bucket_missing"
    assert "PutObject failed (nothing was stored)" in str(info.value)


def test_stalled_part_aborts_once_and_says_so() -> None:
    fake = FakeS3()
    fake.fail["UploadPart"] = lambda kw: _read_timeout() if kw["PartNumber"] == 2 else None
    storage = st.S3Storage(
        st.parse_storage_url("s3://bucket/prod"), fake, part_size=PART, stall_timeout=7
    )
    writer = storage.open_writer("db/data")
    with pytest.raises(st.StorageError) as info:
        # the upload threads may report part 2's stall before the last write or only at commit
        writer.write(os.urandom(6 * PART))
        writer.commit()
    message = str(info.value)
    assert info.value.kind == "stalled" and st.is_stall_error(info.value)
    assert message.startswith("s3://bucket/prod/db/data: upload of part 2 failed")
    assert "the S3 endpoint http://fake-s3:9000 stalled (no bytes for 7 s) during UploadPart" in (
        message
    )
    assert "the multipart upload upload-1 was aborted" in message
    assert fake.abort_single_attempt == [True]  # one attempt: a silent endpoint costs 7 s once
    assert fake.uploads == {}
    # After a stall the marker is not deleted (one request fewer on a silent endpoint);
    # the upload being gone, incomplete_uploads() never lists it (cleanup_incomplete prunes it).
    assert len(fake.markers()) == 1


def test_stalled_single_put_says_the_object_may_exist() -> None:
    fake = FakeS3()
    fake.fail["PutObject"] = lambda _kw: _send_timeout()
    storage = st.S3Storage(st.parse_storage_url("s3://bucket"), fake, stall_timeout=3)
    with pytest.raises(st.StorageError) as info:
        storage.put_bytes("manifest.json", b"{}")
    message = str(info.value)
    assert message.startswith("s3://bucket/manifest.json: PutObject failed (no answer came")
    assert "stalled (no bytes for 3 s) during PutObject" in message
    assert info.value.kind == "stalled"


def test_a_lost_complete_answer_is_not_reported_as_nothing_left() -> None:
    fake = FakeS3()

    def complete_then_lose_the_answer(kw: dict[str, Any]) -> BaseException:
        fake.uploads.pop(kw["UploadId"])  # the server completed it...
        return _read_timeout()  # ...but its answer never came

    fake.fail["CompleteMultipartUpload"] = complete_then_lose_the_answer
    fake.fail["AbortMultipartUpload"] = lambda _kw: client_error(
        "NoSuchUpload", 404, "AbortMultipartUpload"
    )
    writer = fake_storage(fake).open_writer("x")
    writer.write(os.urandom(2 * PART))
    with pytest.raises(st.StorageError) as info:
        writer.commit()
    message = str(info.value)
    assert "CompleteMultipartUpload failed" in message and "stalled" in message
    assert "may have stored the object after all" in message
    assert "was aborted" not in message


def test_marker_failure_aborts_the_upload() -> None:
    fake = FakeS3()
    fake.fail["PutObject"] = lambda _kw: client_error("AccessDenied", 403, "PutObject")
    writer = fake_storage(fake).open_writer("x")
    with pytest.raises(st.StorageError) as info:
        writer.write(os.urandom(2 * PART))
    assert "recording the multipart upload in its marker object failed" in str(info.value)
    assert fake.ops() == ["CreateMultipartUpload", "PutObject", "AbortMultipartUpload"]
    assert fake.uploads == {}


def test_too_many_parts_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_upload, "MAX_PARTS", 2)
    fake = FakeS3()
    writer = fake_storage(fake).open_writer("x")
    with pytest.raises(st.StorageError, match="exceeds 2 parts of 5 MiB"):
        writer.write(os.urandom(4 * PART))
    assert fake.ops()[-2:] == ["AbortMultipartUpload", "DeleteObject"]


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (client_error("NoSuchBucket", 404, "PutObject"), "bucket_missing", "does not exist"),
        (client_error("AccessDenied", 403, "PutObject"), "access_denied", "access denied"),
        (client_error("InvalidAccessKeyId", 403, "PutObject"), "credentials", "rejected"),
        (client_error("NoSuchKey", 404, "GetObject"), "not_found", "not found"),
        (client_error("SlowDown", 503, "PutObject"), None, "SlowDown: injected, HTTP 503"),
        (EndpointConnectionError(endpoint_url="http://h:1/b"), "unreachable", "unreachable"),
    ],
)
def test_describe_s3_error(error: BaseException, kind: str | None, words: str) -> None:
    reason, got_kind = st.describe_s3_error(error, "http://h:1", "bucket")
    assert got_kind == kind
    assert words in reason


# ============================================================== file backend


@pytest.fixture
def files(tmp_path: Path) -> Any:
    return st.open_storage(f"file://{tmp_path}/backups")


def test_file_round_trip_and_modes(files: Any, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 7)
    with files.open_writer("db-1/data.pgdump.zst") as writer:
        for offset in range(0, len(data), 65536):
            writer.write(data[offset : offset + 65536])
        result = writer.commit()
    assert result == {"key": "db-1/data.pgdump.zst", "bytes": len(data)}
    target = tmp_path / "backups" / "db-1" / "data.pgdump.zst"
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    for new_dir in (tmp_path / "backups", tmp_path / "backups" / "db-1"):
        assert stat.S_IMODE(new_dir.stat().st_mode) == 0o700
    with files.open_reader("db-1/data.pgdump.zst") as reader:
        assert reader.read(10) == data[:10]
        assert reader.read() == data[10:]
    head = files.head("db-1/data.pgdump.zst")
    assert head["bytes"] == len(data) and head["sse"] is None
    assert head["modified"].tzinfo is not None


def test_file_writer_fsyncs_file_then_renames_then_fsyncs_dir(
    files: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync-{kind}")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        assert ".tmp-" in os.fspath(src) and ".tmp-" not in os.fspath(dst)
        events.append("rename")
        real_replace(src, dst)

    files.put_bytes("warmup", b"creates the root")  # directory creation fsyncs are not the point
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    files.put_bytes("manifest.json", b"{}")
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_file_nothing_visible_before_commit(files: Any, tmp_path: Path) -> None:
    writer = files.open_writer("db-1/data")
    writer.write(b"partial")
    directory = tmp_path / "backups" / "db-1"
    assert not (directory / "data").exists()
    [temp] = list(directory.iterdir())
    assert file_storage._TEMP_RE.search(temp.name) and temp.name.startswith("data.opsbook.tmp-")
    assert files.list() == [] and files.head("db-1/data") is None
    writer.commit()
    assert [p.name for p in directory.iterdir()] == ["data"]


def test_file_overwrite_is_atomic(files: Any) -> None:
    files.put_bytes("manifest.json", b"old")
    writer = files.open_writer("manifest.json")
    writer.write(b"new and longer")
    assert files.get_bytes("manifest.json") == b"old"
    writer.commit()
    assert files.get_bytes("manifest.json") == b"new and longer"


def test_file_exception_or_abort_removes_the_temp_file(files: Any, tmp_path: Path) -> None:
    with pytest.raises(KeyError), files.open_writer("db-1/data") as writer:
        writer.write(b"x" * 1000)
        raise KeyError("boom")
    writer2 = files.open_writer("db-1/globals")
    writer2.write(b"y")
    writer2.abort()
    writer2.abort()
    assert not (tmp_path / "backups" / "db-1").exists()  # nor the directory the writers made
    assert (tmp_path / "backups").is_dir()  # never the root
    assert files.list() == []


CRASH_SCRIPT = """
import os, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([sys.argv[1]])  # the project's collections/
from ansible_collections.opsbook.runbooks.plugins.module_utils import opsbook_storage as st
storage = st.open_storage(sys.argv[2])
writer = storage.open_writer("db-1/data.pgdump.zst")
writer.write(os.urandom(1 << 20))
os._exit(9)  # the process dies before commit (kill -9, OOM, power loss)
"""


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_file_crash_before_commit_leaves_no_final_file(files: Any, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(COLLECTIONS_DIR), files.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 9, proc.stderr
    directory = tmp_path / "backups" / "db-1"
    assert not (directory / "data.pgdump.zst").exists()
    assert files.head("db-1/data.pgdump.zst") is None
    assert files.list() == []  # the leftover temp file is never listed
    [leftover] = list(directory.iterdir())
    assert files.cleanup_incomplete(older_than=3600) == []  # too recent
    _age(leftover, 7200)
    [removed] = files.cleanup_incomplete(older_than=3600)
    assert removed.key == "db-1/data.pgdump.zst" and removed.id == str(leftover)
    assert not leftover.exists() and not directory.exists()  # emptied directory pruned


def test_file_incomplete_uploads_finds_only_what_opsbook_writers_left(
    files: Any, tmp_path: Path
) -> None:
    root = tmp_path / "backups"
    files.put_bytes("db-1/manifest.json", b"{}")  # a completed object
    _age(root / "db-1" / "manifest.json", 7200)
    left_open = files.open_writer("db-1/data.pgdump.zst")  # as a SIGKILL leaves it
    left_open.write(b"x" * 1000)
    temp = left_open.temp_path
    assert temp.name.startswith("data.pgdump.zst.opsbook.tmp-")
    # Not opsbook's: another tool's temporary files (also the older "<key>.tmp-<hex>"
    # form, which list() keeps hiding), and a file outside the storage.
    foreign = [root / "db-1" / "data.tmp-0123456789abcdef", root / "db-1" / "x.part"]
    outside = tmp_path / "elsewhere.opsbook.tmp-0123456789abcdef"
    for path in [*foreign, outside]:
        path.write_bytes(b"not mine")
        _age(path, 7200)

    assert files.incomplete_uploads(older_than_s=3600) == []  # written just now
    _age(temp, 7200)
    assert files.incomplete_uploads(older_than_s=7300) == []  # not that old
    [item] = files.incomplete_uploads(older_than_s=3600)
    assert (item.key, item.id, item.kind) == ("db-1/data.pgdump.zst", str(temp), "temp_file")
    assert 7100 < item.age_s() < 7300 and item.started.tzinfo is not None
    assert "db-1/data.pgdump.zst (temporary file" in item.describe()

    files.abort_incomplete(item)
    assert not temp.exists()
    files.abort_incomplete(item)  # already gone: no error
    assert files.incomplete_uploads(older_than_s=0) == []
    assert all(path.exists() for path in [*foreign, outside])
    assert files.get_bytes("db-1/manifest.json") == b"{}"
    # An item naming anything but an opsbook temporary file of this storage is refused.
    for bad in (
        st.IncompleteUpload("elsewhere", item.started, str(outside), "temp_file"),
        st.IncompleteUpload("db-1/x.part", item.started, str(foreign[1]), "temp_file"),
        st.IncompleteUpload("db-1/manifest.json", item.started, str(root / "db-1"), "temp_file"),
    ):
        with pytest.raises(st.StorageError, match="not"):
            files.abort_incomplete(bad)
    assert outside.exists() and foreign[1].exists()


def test_file_list_delete_and_delete_prefix(files: Any, tmp_path: Path) -> None:
    for key in ("db-1/manifest.json", "db-1/data", "db-2/data", "db-10/data", "other"):
        files.put_bytes(key, key.encode())
    assert [o.key for o in files.list()] == [
        "db-1/data",
        "db-1/manifest.json",
        "db-10/data",
        "db-2/data",
        "other",
    ]
    assert [o.key for o in files.list("db-1/")] == ["db-1/data", "db-1/manifest.json"]
    assert [o.key for o in files.list("db-1")] == ["db-1/data", "db-1/manifest.json", "db-10/data"]
    assert files.list("db-1/man")[0].bytes == len(b"db-1/manifest.json")
    assert files.list("missing/") == []
    files.delete("other")
    files.delete("other")  # no error when missing
    assert files.delete_prefix("db-1/") == 2
    assert not (tmp_path / "backups" / "db-1").exists()  # emptied directories are pruned
    assert [o.key for o in files.list()] == ["db-10/data", "db-2/data"]
    with pytest.raises(st.StorageURLError, match="refusing"):
        files.delete_prefix("")
    with pytest.raises(st.StorageURLError):
        files.list("../")


def test_file_missing_objects(files: Any) -> None:
    assert files.head("nope") is None
    with pytest.raises(st.NotFoundError, match="does not exist"):
        files.open_reader("nope")
    with pytest.raises(st.NotFoundError):
        files.get_bytes("db/nope")


def test_file_check_writable(files: Any, tmp_path: Path) -> None:
    info = files.check_writable()
    assert info["url"] == files.url
    assert files.list() == []
    assert (tmp_path / "backups").is_dir()


def test_file_check_writable_says_why_not(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    storage = st.open_storage(f"file://{blocker}/backups")
    with pytest.raises(st.StorageError) as info:
        storage.check_writable()
    assert f"file://{blocker}/backups is not writable" in str(info.value)
    assert "Not a directory" in str(info.value)
    with pytest.raises(st.StorageError, match="cannot create"):
        storage.open_writer("x")


def test_file_writer_after_commit_refuses(files: Any) -> None:
    writer = files.open_writer("x")
    writer.write(b"1")
    writer.commit()
    writer.abort()  # no-op once committed
    with pytest.raises(st.StorageError, match="already committed"):
        writer.write(b"2")
    assert files.get_bytes("x") == b"1"


def test_clean_exit_without_commit_commits(files: Any) -> None:
    with files.open_writer("x") as writer:
        writer.write(b"data")
    assert writer.result == {"key": "x", "bytes": 4}
    assert files.get_bytes("x") == b"data"


def test_reader_is_streaming_file_like(files: Any) -> None:
    files.put_bytes("x", b"abcdef")
    reader = files.open_reader("x")
    assert isinstance(reader, io.BufferedIOBase)
    assert [reader.read(4), reader.read(4), reader.read(4)] == [b"abcd", b"ef", b""]
    reader.close()
