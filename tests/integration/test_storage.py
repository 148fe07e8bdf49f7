"""module_utils/opsbook_storage.py against the lab's real S3 server (moto in its own process).

Round trips (multipart and single PutObject), server-side encryption headers, the writer's
memory bound and throughput, failures mid-upload (an exception in the block, a part or
CompleteMultipartUpload refused, the server killed) leaving no object and no multipart
upload, the unfinished uploads a killed writer leaves (found and aborted, never anyone
else's), listing/deletion, resumed reads, write probes, an endpoint that goes silent or
slow (through tests/tcp_proxy.py), and the module imported the way an Ansible module
imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3.exceptions
from botocore.awsrequest import AWSResponse

from tests.harness import VENV_BIN, ansible_env, run_ansible, wait_for
from tests.lab import S3_CREDENTIALS, MotoS3Server
from tests.loaders import COLLECTIONS_DIR, load_module_utils
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "opsbook-test"
MiB = 1024 * 1024
# moto accepts any key; a recognisable one proves no message ever carries it.
SECRET = "opsbook-SECRET-never-in-messages-0123456789"


st = load_module_utils("opsbook_storage")


# =================================================================== fixtures


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment only (boto3's usual chain), nothing else configured."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def prefix() -> str:
    """A prefix of the shared bucket that belongs to this test alone."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def open_s3(s3: MotoS3Server, prefix: str) -> Callable[..., Any]:
    """open_s3(path="", **kwargs): open_storage on s3://opsbook-test/<prefix>[/<path>]."""

    def make(path: str = "", **kwargs: Any) -> Any:
        kwargs.setdefault("endpoint_url", s3.endpoint_url)
        kwargs.setdefault("region", "us-east-1")
        url = f"s3://{BUCKET}/{prefix}" + (f"/{path}" if path else "")
        return st.open_storage(url, **kwargs)

    return make


def leftover_uploads(client: Any, prefix: str) -> list[dict[str, Any]]:
    return client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])


def assert_nothing_left(s3: MotoS3Server, prefix: str) -> None:
    """No object and no multipart upload under prefix, on the server itself."""
    client = s3.client()
    assert object_keys(client, prefix) == []
    assert leftover_uploads(client, prefix) == []


def object_keys(client: Any, prefix: str) -> list[str]:
    resp = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in resp.get("Contents", [])]


def random_chunks(total: int, seed_chunk: int = 700 * 1024 + 13) -> Iterator[bytes]:
    """total random bytes in uneven chunks (they straddle part boundaries)."""
    sent = 0
    while sent < total:
        n = min(seed_chunk, total - sent)
        yield os.urandom(n)
        sent += n


def sha256_of(reader: Any, chunk: int = MiB) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while data := reader.read(chunk):
        digest.update(data)
        size += len(data)
    return digest.hexdigest(), size


class _RawBody:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs: Any) -> Iterator[bytes]:
        yield self._body


def inject_error(
    storage: Any, operation: str, code: str, status: int, when: Callable[[Any], bool]
) -> None:
    """Make the S3 server's answer to operation an error (as the server would send it)."""

    def handler(request: Any, **_kwargs: Any) -> AWSResponse | None:
        if not when(request):
            return None
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            "<Message>injected fault</Message></Error>"
        ).encode()
        headers = {"Content-Type": "application/xml"}
        return AWSResponse(request.url, status, headers, _RawBody(body))

    storage.client.meta.events.register(f"before-send.s3.{operation}", handler)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ================================================================ round trips


def test_multipart_round_trip_40mib(s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str):
    storage = open_s3(part_size=5 * MiB, concurrency=4)
    digest = hashlib.sha256()
    with storage.open_writer("db-1/data.pgdump.zst") as writer:
        for chunk in random_chunks(40 * MiB):
            writer.write(chunk)
            digest.update(chunk)
        result = writer.commit()
    assert result["bytes"] == 40 * MiB and result["parts"] == 8
    assert result["etag"].endswith("-8")
    client = s3.client()
    head = client.head_object(Bucket=BUCKET, Key=f"{prefix}/db-1/data.pgdump.zst")
    assert head["ContentLength"] == 40 * MiB
    with storage.open_reader("db-1/data.pgdump.zst") as reader:
        assert sha256_of(reader) == (digest.hexdigest(), 40 * MiB)
    assert leftover_uploads(client, prefix) == []


def test_small_object_is_a_single_put(s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str):
    storage = open_s3(part_size=5 * MiB)
    calls: list[str] = []
    storage.client.meta.events.register(
        "before-call.s3.*", lambda model, **_kw: calls.append(model.name)
    )
    data = os.urandom(5 * MiB)  # exactly one part: still a single PutObject
    with storage.open_writer("manifest.json") as writer:
        writer.write(data)
    assert calls == ["PutObject"]
    assert writer.result["parts"] == 0 and "-" not in writer.result["etag"]
    assert storage.get_bytes("manifest.json") == data
    assert storage.head("manifest.json")["bytes"] == 5 * MiB


def test_put_and_get_bytes(open_s3: Callable[..., Any]) -> None:
    storage = open_s3()
    info = storage.put_bytes("b1/manifest.json", b'{"format_version": 1}')
    assert info["key"] == "b1/manifest.json" and info["bytes"] == 21
    assert storage.get_bytes("b1/manifest.json") == b'{"format_version": 1}'


@pytest.mark.parametrize("size", [1024, 12 * MiB], ids=["put", "multipart"])
@pytest.mark.parametrize(
    ("sse", "kms_key_id"),
    [(None, None), ("AES256", None), ("aws:kms", "alias/opsbook-backups")],
    ids=["none", "AES256", "aws-kms"],
)
def test_server_side_encryption_header(
    s3: MotoS3Server,
    open_s3: Callable[..., Any],
    prefix: str,
    sse: str | None,
    kms_key_id: str | None,
    size: int,
) -> None:
    storage = open_s3(sse=sse, kms_key_id=kms_key_id, part_size=5 * MiB)
    with storage.open_writer("data") as writer:
        for chunk in random_chunks(size):
            writer.write(chunk)
    head = s3.client().head_object(Bucket=BUCKET, Key=f"{prefix}/data")
    assert head.get("ServerSideEncryption") == sse
    assert head.get("SSEKMSKeyId") == kms_key_id
    assert storage.head("data")["sse"] == sse
    storage.put_bytes("manifest.json", b"{}")
    assert storage.head("manifest.json")["sse"] == sse


# ============================================================ memory and speed


def test_writer_memory_is_bounded_streaming_100mib(
    s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str
) -> None:
    part_size, concurrency, total = 5 * MiB, 4, 100 * MiB
    storage = open_s3(part_size=part_size, concurrency=concurrency)
    chunk = os.urandom(MiB)  # reused: only the writer's own buffers are measured
    # Python allocations only (the part buffers are mmaps, which tracemalloc does not see):
    # the RSS test below measures those.
    tracemalloc.start()
    try:
        started = time.monotonic()
        with storage.open_writer("big") as writer:
            for _ in range(total // MiB):
                writer.write(chunk)
            result = writer.commit()
        elapsed = time.monotonic() - started
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"\nS3 upload of {total // MiB} MiB (part {part_size // MiB} MiB, concurrency "
        f"{concurrency}): {elapsed:.2f} s, {total / elapsed / 1e6:.1f} MB/s, "
        f"peak traced memory {peak / MiB:.1f} MiB "
        f"(bound {st.max_buffered_bytes(part_size, concurrency) // MiB} MiB)"
    )
    assert result["parts"] == 20
    assert peak < part_size * (concurrency + 2)
    assert s3.client().head_object(Bucket=BUCKET, Key=f"{prefix}/big")["ContentLength"] == total


# Streams ``total`` bytes through an S3 writer in a fresh interpreter (so the heap the test
# session has built up hides nothing) and prints its RSS: before (after warming botocore up
# without any large buffer), the peak while streaming (sampled every 2 ms, and the kernel's
# VmHWM reset through /proc/self/clear_refs where that is allowed), and after commit().
RSS_SCRIPT = r"""
import json, os, sys, threading, time

collections_dir, url, endpoint, part_size, concurrency, total = sys.argv[1:7]
part_size, concurrency, total = int(part_size), int(concurrency), int(total)
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([collections_dir])  # the project's collections/
from ansible_collections.opsbook.runbooks.plugins.module_utils import opsbook_storage as st
MiB = 1024 * 1024

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

storage = st.open_storage(url, endpoint_url=endpoint, region="us-east-1",
                          part_size=part_size, concurrency=concurrency)
# Warm up every call the writer makes, with tiny bodies.
storage.put_bytes("warm-up", b"x" * 1024)
client, bucket, key = storage.client, storage.bucket, storage.full_key("warm-up-multi")
checksum = storage.checksum_algorithm()
extra = {"ChecksumAlgorithm": checksum} if checksum else {}
upload = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024,
                   **extra)
client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
source = os.urandom(16 * MiB + 4096)

baseline = peak = rss()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    hwm_reset = True
except OSError:
    hwm_reset = False
done = threading.Event()

def sample():
    global peak
    while not done.wait(0.002):
        peak = max(peak, rss())

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
started = time.monotonic()
with storage.open_writer("big") as writer:
    for n in range(total // MiB):
        offset = (n * 4099) % (16 * MiB)
        writer.write(source[offset : offset + MiB])  # a new bytes object, as os.read() gives
    result = writer.commit()
elapsed = time.monotonic() - started
done.set()
sampler.join()
peak = max(peak, rss())
if hwm_reset:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
print(json.dumps({"baseline": baseline, "peak": peak, "after": rss(), "seconds": elapsed,
                  "parts": result["parts"], "hwm_reset": hwm_reset}))
"""


def test_writer_rss_stays_within_its_bound_streaming_150mib(
    s3: MotoS3Server, prefix: str, aws_env: None
) -> None:
    """Real RSS growth, not only Python allocations: the part buffers are a fixed pool of
    concurrency + 1, reused, and unmapped when the writer ends (nothing left to malloc)."""
    part_size, concurrency, total = 8 * MiB, 4, 150 * MiB
    proc = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            RSS_SCRIPT,
            str(PROJECT_ROOT / "collections"),
            f"s3://{BUCKET}/{prefix}",
            s3.endpoint_url,
            str(part_size),
            str(concurrency),
            str(total),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = got["peak"] - got["baseline"]
    bound = st.max_buffered_bytes(part_size, concurrency)
    print(
        f"\nS3 upload of {total // MiB} MiB (part {part_size // MiB} MiB, concurrency "
        f"{concurrency}): {got['seconds']:.2f} s, {total / got['seconds'] / 1e6:.1f} MB/s; RSS "
        f"{got['baseline'] / MiB:.1f} MiB before, peak +{growth / MiB:.1f} MiB (bound "
        f"{bound // MiB} MiB), after commit +{(got['after'] - got['baseline']) / MiB:.1f} MiB"
    )
    assert got["parts"] == -(-total // part_size)
    assert growth < part_size * (concurrency + 2) + 2 * MiB
    # the buffers are unmapped at the end, not kept on the heap for the rest of the process
    assert got["after"] - got["baseline"] < 8 * MiB


# =================================================================== failures


def test_exception_inside_the_block_leaves_nothing(
    s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str
) -> None:
    storage = open_s3(part_size=5 * MiB, concurrency=2)
    with pytest.raises(RuntimeError, match="pg_dump exited 1"), storage.open_writer("d") as writer:
        for chunk in random_chunks(17 * MiB):
            writer.write(chunk)
        assert writer.upload_id is not None  # parts are on the server already
        raise RuntimeError("pg_dump exited 1")
    assert_nothing_left(s3, prefix)


def test_refused_part_aborts_the_upload(
    s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str
) -> None:
    storage = open_s3(part_size=5 * MiB, concurrency=2)
    inject_error(storage, "UploadPart", "AccessDenied", 403, lambda r: "partNumber=3" in r.url)
    with pytest.raises(st.StorageError) as info, storage.open_writer("db-1/data") as writer:
        for chunk in random_chunks(40 * MiB):
            writer.write(chunk)
    message = str(info.value)
    assert f"s3://{BUCKET}/{prefix}/db-1/data" in message
    assert "upload of part 3 failed" in message and "access denied" in message
    assert SECRET not in message
    assert_nothing_left(s3, prefix)


def test_failed_complete_aborts_the_upload(
    s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str
) -> None:
    storage = open_s3(part_size=5 * MiB, concurrency=2)
    inject_error(storage, "CompleteMultipartUpload", "InvalidPart", 400, lambda _r: True)
    writer = storage.open_writer("d")
    for chunk in random_chunks(12 * MiB):
        writer.write(chunk)
    with pytest.raises(st.StorageError, match="CompleteMultipartUpload failed"):
        writer.commit()
    assert_nothing_left(s3, prefix)


def test_server_killed_mid_upload_fails_fast_and_clearly(tmp_path: Path) -> None:
    """A separate S3 server (the session's one stays up) is SIGKILLed while parts fly."""
    server = MotoS3Server(log_file=tmp_path / "moto.log").start()
    try:
        server.create_bucket("opsbook-kill")
        storage = st.open_storage(
            "s3://opsbook-kill/backups",
            endpoint_url=server.endpoint_url,
            region="us-east-1",
            part_size=5 * MiB,
            concurrency=2,
        )
        aborts: list[str] = []
        storage.client.meta.events.register(
            "before-call.s3.AbortMultipartUpload", lambda **_kw: aborts.append("abort")
        )
        chunk = os.urandom(MiB)
        killed_at = None
        with pytest.raises(st.StorageError) as info, storage.open_writer("db-1/data") as writer:
            for _ in range(2000):
                writer.write(chunk)
                if killed_at is None and writer.bytes_written >= 16 * MiB:
                    server.kill()
                    killed_at = time.monotonic()
        elapsed = time.monotonic() - killed_at
    finally:
        server.stop()
    print(f"\nS3 server killed mid-upload: StorageError after {elapsed:.1f} s: {info.value}")
    message = str(info.value)
    assert elapsed < 15, f"the writer took {elapsed:.1f} s to fail"
    assert writer.bytes_written < 100 * MiB  # it stopped early, not after the whole loop
    assert "s3://opsbook-kill/backups/db-1/data" in message
    assert "upload of part" in message
    # refused (a new connection) or closed before answering (one in flight), as the kill found
    # each connection: both are the one kind of cause
    assert info.value.kind == "unreachable"
    assert f"the S3 endpoint {server.endpoint_url} " in message
    # The abort was attempted; the server being gone, the message says what may remain.
    assert aborts and "AbortMultipartUpload failed too" in message
    assert SECRET not in message and SECRET not in repr(info.value.__cause__)


# ========================================================== listing, deletion


def test_list_delete_and_delete_prefix(
    s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str
) -> None:
    storage = open_s3("backups")
    storage.list_page_size = 3  # force several ListObjectsV2 pages
    keys = [f"db-{n}/{name}" for n in (1, 2, 10) for name in ("data", "manifest.json")]
    for key in [*keys, "db-1/extra/globals.sql.zst"]:
        storage.put_bytes(key, key.encode())
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/backups2/not-mine", Body=b"x")
    listed = storage.list()
    assert [o.key for o in listed] == sorted([*keys, "db-1/extra/globals.sql.zst"])
    assert all(o.modified.tzinfo is not None for o in listed)
    assert {o.key: o.bytes for o in listed}["db-1/data"] == len(b"db-1/data")
    assert [o.key for o in storage.list("db-1/")] == [
        "db-1/data",
        "db-1/extra/globals.sql.zst",
        "db-1/manifest.json",
    ]
    assert [o.key for o in storage.list("db-1")][-2:] == ["db-10/data", "db-10/manifest.json"]
    storage.delete("db-2/data")
    storage.delete("db-2/data")  # idempotent
    assert storage.head("db-2/data") is None
    assert storage.delete_prefix("db-1/") == 3
    assert [o.key for o in storage.list()] == [
        "db-10/data",
        "db-10/manifest.json",
        "db-2/manifest.json",
    ]
    with pytest.raises(st.StorageURLError, match="refusing"):
        storage.delete_prefix("")
    assert object_keys(client, f"{prefix}/backups2/") == [f"{prefix}/backups2/not-mine"]


def test_missing_objects(open_s3: Callable[..., Any]) -> None:
    storage = open_s3()
    assert storage.head("nope") is None
    with pytest.raises(st.NotFoundError, match="not found"):
        storage.get_bytes("nope")
    with pytest.raises(st.NotFoundError, match="GetObject failed"):
        storage.open_reader("nope/data")


KILLED_WRITER = """
import os, signal, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([sys.argv[1]])  # the project's collections/
from ansible_collections.opsbook.runbooks.plugins.module_utils import opsbook_storage as st
storage = st.open_storage(sys.argv[2], endpoint_url=sys.argv[3], region="us-east-1",
                          part_size=5 << 20, concurrency=1)
writer = storage.open_writer("db-1/data.pgdump.zst")
writer.write(os.urandom(6 << 20))  # part 1 goes up, 1 MiB stays buffered
writer._wait_for_parts()
print(writer.upload_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # neither committed nor aborted: the upload stays
"""




def test_incomplete_uploads_lists_only_what_opsbook_writers_left(
    s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str
) -> None:
    storage = open_s3("backups", part_size=5 * MiB)
    client = s3.client()
    # Never listed: completed objects (one multipart), other people's uploads inside the
    # prefix, beside it (a sibling prefix sharing its first characters) and outside it.
    storage.put_bytes("db-0/manifest.json", b"{}")
    with storage.open_writer("db-0/data") as writer:
        writer.write(os.urandom(6 * MiB))
    assert writer.result["parts"] == 2
    foreign = [
        client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        for key in (f"{prefix}/backups/db-9/data", f"{prefix}/backups2/x", f"{prefix}-other/x")
    ]
    killed = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            KILLED_WRITER,
            str(COLLECTIONS_DIR),
            storage.url,
            s3.endpoint_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert killed.returncode == -9, killed.stderr
    upload_id = killed.stdout.strip()
    assert upload_id in [u["UploadId"] for u in leftover_uploads(client, f"{prefix}/backups/")]
    assert storage.list() == [o for o in storage.list() if o.key.startswith("db-0/")]

    assert storage.incomplete_uploads(older_than_s=60) == []  # not that old yet
    [item] = wait_for(lambda: storage.incomplete_uploads(older_than_s=1), 10, "the upload to age")
    assert (item.key, item.id, item.kind) == ("db-1/data.pgdump.zst", upload_id, "multipart_upload")
    assert 0 < item.age_s() < 60  # the marker's time, not moto's made-up Initiated (2010)

    storage.abort_incomplete(item)
    remaining = [u["UploadId"] for u in leftover_uploads(client, prefix)]
    assert upload_id not in remaining and sorted(remaining) == sorted(foreign)
    assert object_keys(client, f"{prefix}/backups/{st.UPLOAD_MARKER_DIR}/") == []
    storage.abort_incomplete(item)  # gone already: no error, nothing else touched
    assert storage.cleanup_incomplete(older_than=0) == []
    assert sorted(u["UploadId"] for u in leftover_uploads(client, prefix)) == sorted(foreign)
    assert [o.key for o in storage.list()] == ["db-0/data", "db-0/manifest.json"]
    assert storage.get_bytes("db-0/manifest.json") == b"{}"
    keys = (f"{prefix}/backups/db-9/data", f"{prefix}/backups2/x", f"{prefix}-other/x")
    for upload, key in zip(foreign, keys, strict=True):
        client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)


def test_cleanup_incomplete_prunes_markers_of_uploads_already_gone(
    s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str
) -> None:
    storage = open_s3(part_size=5 * MiB)
    client = s3.client()
    writer = storage.open_writer("db-1/data")
    writer.write(os.urandom(6 * MiB))
    writer._wait_for_parts()
    # The upload vanishes behind opsbook's back (a lifecycle rule): its marker is stale.
    client.abort_multipart_upload(
        Bucket=BUCKET, Key=f"{prefix}/db-1/data", UploadId=writer.upload_id
    )
    markers = object_keys(client, f"{prefix}/{st.UPLOAD_MARKER_DIR}/")
    assert len(markers) == 1 and storage.list() == []  # a marker is never listed
    assert storage.incomplete_uploads(older_than_s=0) == []
    assert storage.cleanup_incomplete(older_than=3600) == []  # too young to prune
    assert object_keys(client, f"{prefix}/{st.UPLOAD_MARKER_DIR}/") == markers
    wait_for(
        lambda: (
            storage.cleanup_incomplete(older_than=1) == []
            and not object_keys(client, f"{prefix}/{st.UPLOAD_MARKER_DIR}/")
        ),
        10,
        "the stale marker to be pruned",
    )


# ===================================================================== reads


class _FlakyBody:
    """A response body whose connection drops once after `after` bytes."""

    def __init__(self, body: Any, after: int) -> None:
        self._body, self._left = body, after

    def read(self, amount: int | None = None) -> bytes:
        if self._left is not None and self._left <= 0:
            self._left = None
            raise urllib3.exceptions.ProtocolError("Connection broken: injected")
        data = self._body.read(amount)
        if self._left is not None:
            self._left -= len(data)
        return data

    def close(self) -> None:
        self._body.close()


def test_reader_resumes_a_dropped_stream(open_s3: Callable[..., Any]) -> None:
    storage = open_s3(part_size=5 * MiB)
    data = os.urandom(12 * MiB + 5)
    storage.put_bytes("big", data)
    with storage.open_reader("big") as reader:
        assert reader.size == len(data)
        first = reader.read(3 * MiB)
        reader._body = _FlakyBody(reader._body, after=2 * MiB)
        rest = b"".join(iter(lambda: reader.read(MiB), b""))
    assert first + rest == data


def test_reader_never_mixes_two_versions(open_s3: Callable[..., Any]) -> None:
    storage = open_s3()
    storage.put_bytes("obj", os.urandom(4 * MiB))
    reader = storage.open_reader("obj")
    reader.read(MiB)
    storage.put_bytes("obj", os.urandom(4 * MiB))  # replaced while being read
    reader._body = _FlakyBody(reader._body, after=0)
    with pytest.raises(st.StorageError, match="PreconditionFailed"):
        reader.read(MiB)
    reader.close()


# ====================================== a silent or slow endpoint (tests/tcp_proxy.py)


@pytest.fixture
def proxy(s3: MotoS3Server) -> Iterator[TcpProxy]:
    """A proxy in front of the session's S3 server that a test can stall or throttle."""
    with TcpProxy(s3.host, s3.port) as tcp_proxy:
        yield tcp_proxy


def test_proxy_kill_reaches_a_client_waiting_for_an_answer() -> None:
    """The cause of the "S3 killed mid-upload" test's 1-in-4 60 s runs, kept fixed: a
    client that sent its request and waits for the answer sees the proxy's kill at once
    (it used to see nothing and wait out its own read timeout)."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    with TcpProxy("127.0.0.1", silent.getsockname()[1]) as tcp_proxy:
        client = socket.create_connection(("127.0.0.1", tcp_proxy.port))
        client.sendall(b"PUT /b/k?partNumber=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        client.settimeout(10)
        wait_for(lambda: tcp_proxy.forwarded > 0, 5, "the request to reach the server")
        started = time.monotonic()
        tcp_proxy.kill()
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(100) == b""  # the end of the stream (or a reset)
        assert time.monotonic() - started < 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", tcp_proxy.port), timeout=2)
    client.close()
    silent.close()


class Requests:
    """Every request the storage's client sends (each attempt), with the time it went."""

    def __init__(self, storage: Any) -> None:
        self.sent: list[tuple[float, str, str]] = []
        storage.client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, **_kwargs: Any) -> None:
        self.sent.append((time.monotonic(), request.method, request.url.split("?", 1)[-1]))

    def assert_none_sent_twice(self) -> None:
        """No request was retried: a stalled one is not (each part, each abort sent once)."""
        seen = [(method, query) for _t, method, query in self.sent if method != "GET"]
        assert len(seen) == len(set(seen)), seen


@pytest.fixture
def open_proxied(open_s3: Callable[..., Any], proxy: TcpProxy) -> Callable[..., Any]:
    """open_proxied(**kwargs): open_s3 through the proxy (5 MiB parts, 2 at a time unless
    told otherwise)."""

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("part_size", 5 * MiB)
        kwargs.setdefault("concurrency", 2)
        return open_s3(endpoint_url=proxy.url, **kwargs)

    return make


def test_stalled_endpoint_fails_uploads_and_downloads_within_20_s(
    s3: MotoS3Server,
    proxy: TcpProxy,
    prefix: str,
    open_s3: Callable[..., Any],
    open_proxied: Callable[..., Any],
) -> None:
    """With the default settings, everything in flight when the endpoint goes silent fails
    within 20 s, saying which endpoint, operation and key stalled and what was left."""
    storage = open_proxied()
    limit = st.DEFAULT_STALL_TIMEOUT
    storage.put_bytes("db-0/data", os.urandom(8 * MiB))
    requests = Requests(storage)
    outcome: dict[str, tuple[float, BaseException | None]] = {}
    stalled_at: list[float] = []
    go = threading.Event()

    def record(name: str, work: Callable[[], Any]) -> None:
        try:
            work()
            error = None
        except st.StorageError as exc:
            error = exc
        outcome[name] = (time.monotonic() - stalled_at[0] if stalled_at else -1, error)

    writer = storage.open_writer("db-1/data")

    def upload() -> None:
        for chunk in random_chunks(400 * MiB):  # far more than gets through
            writer.write(chunk)
        writer.commit()

    reader = storage.open_reader("db-0/data")

    def download() -> None:
        go.wait(30)
        while reader.read(MiB):
            pass

    threads = [
        threading.Thread(target=record, args=("upload", upload)),
        threading.Thread(target=record, args=("download", download)),
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: writer.upload_id and writer.bytes_written > 12 * MiB, 30, "parts to go up")
    assert reader.read(MiB)  # the download is under way too
    proxy.stall()
    stalled_at.append(time.monotonic())
    go.set()
    put = threading.Thread(
        target=record, args=("put_bytes", lambda: storage.put_bytes("db-1/manifest", b"{}"))
    )
    put.start()
    for thread in [*threads, put]:
        thread.join(40)
    assert not any(thread.is_alive() for thread in [*threads, put]), outcome
    uploads_left = leftover_uploads(s3.client(), prefix)  # on the server, not via the proxy
    proxy.kill()  # whatever the proxy still holds never reaches the server
    for name, (elapsed, error) in outcome.items():
        print(f"\n{name}: failed {elapsed:.1f} s after the stall: {error}")

    stalled = f"the S3 endpoint {proxy.url} stalled (no bytes for {limit:g} s) during"
    elapsed, error = outcome["upload"]
    assert error is not None and elapsed < 20, outcome["upload"]
    message = str(error)
    assert message.startswith(f"s3://{BUCKET}/{prefix}/db-1/data: upload of part ")
    assert f"{stalled} UploadPart" in message and error.kind == "stalled"
    # The abort got one attempt on the silent endpoint, and the message says what is left.
    assert f"AbortMultipartUpload failed too ({stalled} AbortMultipartUpload)" in message
    assert [u["UploadId"] for u in uploads_left] == [writer.upload_id]
    assert f"the incomplete upload {writer.upload_id} is left" in message

    elapsed, error = outcome["download"]
    assert error is not None and elapsed < 20, outcome["download"]
    assert str(error).startswith(f"s3://{BUCKET}/{prefix}/db-0/data: reading failed at byte ")
    assert f"{stalled} GetObject" in str(error) and error.kind == "stalled"

    elapsed, error = outcome["put_bytes"]
    assert error is not None and elapsed < 20, outcome["put_bytes"]
    assert str(error).startswith(f"s3://{BUCKET}/{prefix}/db-1/manifest: PutObject failed")
    assert "may or may not have been stored" in str(error)
    assert f"{stalled} PutObject" in str(error) and error.kind == "stalled"

    # Nothing was retried; the reader did not resume its stalled stream (no second GET).
    requests.assert_none_sent_twice()
    assert [method for _t, method, _q in requests.sent].count("GET") == 1
    assert SECRET not in repr(outcome)
    # What the dead writer left is found and removed by the next run.
    [item] = open_s3().cleanup_incomplete(older_than=0)  # straight to the server
    assert item.id == writer.upload_id and item.key == "db-1/data"
    assert leftover_uploads(s3.client(), prefix) == []


def test_upload_that_stalls_then_resumes_within_the_limit_succeeds(
    s3: MotoS3Server,
    proxy: TcpProxy,
    prefix: str,
    open_s3: Callable[..., Any],
    open_proxied: Callable[..., Any],
) -> None:
    storage = open_proxied()
    requests = Requests(storage)
    data = os.urandom(18 * MiB)
    pause = st.DEFAULT_STALL_TIMEOUT - 3  # silent for 4 s, under the 7 s limit
    with storage.open_writer("db-1/data") as writer:
        writer.write(data[: 11 * MiB])  # parts 1 and 2 go up
        proxy.stall()
        timer = threading.Timer(pause, proxy.resume)
        timer.start()
        started = time.monotonic()
        writer.write(data[11 * MiB :])  # blocks: both upload slots are held by the stall
        result = writer.commit()
        took = time.monotonic() - started
    timer.join()
    assert took >= pause - 0.5  # it did wait out the silence
    assert result["parts"] == 4 and result["bytes"] == len(data)
    assert open_s3().get_bytes("db-1/data") == data  # straight to the server
    requests.assert_none_sent_twice()
    assert leftover_uploads(s3.client(), prefix) == []
    assert object_keys(s3.client(), prefix) == [f"{prefix}/db-1/data"]  # the marker is gone


def test_slow_but_live_endpoint_is_never_failed(
    proxy: TcpProxy, open_proxied: Callable[..., Any]
) -> None:
    """Requests far longer than the stall timeout succeed while bytes keep moving."""
    limit = 1.5
    storage = open_proxied(part_size=12 * MiB, concurrency=1, stall_timeout=limit)
    requests = Requests(storage)
    ended: list[float] = []
    storage.client.meta.events.register(
        "after-call.s3.UploadPart", lambda **_kw: ended.append(time.monotonic())
    )
    data = os.urandom(13 * MiB)
    # 4 MiB/s: the 12 MiB part takes about 3 s, twice the stall timeout. (The client's own
    # send buffer, a few MiB on loopback, drains in well under the limit at this rate.)
    proxy.throttle(4 * MiB)
    with storage.open_writer("db-1/data") as writer:
        writer.write(data)
    part_1 = next(t for t, method, query in requests.sent if "partNumber=1&" in f"{query}&")
    assert ended[0] - part_1 > 2 * limit, "the part was not slow: the test proves nothing"
    proxy.throttle(6 * MiB)  # a download has no send buffer to drain: about 2.2 s
    started = time.monotonic()
    with storage.open_reader("db-1/data") as reader:
        assert sha256_of(reader) == (hashlib.sha256(data).hexdigest(), len(data))
    assert time.monotonic() - started > limit
    requests.assert_none_sent_twice()


# ============================================================== write probes


def test_check_writable(s3: MotoS3Server, open_s3: Callable[..., Any], prefix: str) -> None:
    info = open_s3("backups", sse="AES256").check_writable()
    assert info["url"] == f"s3://{BUCKET}/{prefix}/backups"
    assert object_keys(s3.client(), prefix) == []  # the probe is gone


def test_check_writable_missing_bucket(s3: MotoS3Server) -> None:
    bucket = f"opsbook-missing-{uuid.uuid4().hex[:8]}"
    storage = st.open_storage(f"s3://{bucket}/x", endpoint_url=s3.endpoint_url, region="us-east-1")
    started = time.monotonic()
    with pytest.raises(st.StorageError) as info:
        storage.check_writable()
    assert time.monotonic() - started < 10
    assert str(info.value).startswith(f"s3://{bucket}/x is not writable: bucket {bucket!r}")
    assert "does not exist" in str(info.value) and info.value.kind == "bucket_missing"
    assert SECRET not in str(info.value)


def test_check_writable_unreachable_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    storage = st.open_storage("s3://opsbook-test/x", endpoint_url=endpoint, region="us-east-1")
    started = time.monotonic()
    with pytest.raises(st.StorageError) as info:
        storage.check_writable()
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f} s"
    message = str(info.value)
    assert message.startswith("s3://opsbook-test/x is not writable: the S3 endpoint")
    assert endpoint in message and "unreachable" in message
    assert info.value.kind == "unreachable"
    assert SECRET not in message


# ================================================== used from an Ansible module

PROBE_MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    HAS_BOTO3,
    StorageError,
    open_storage,
)


def main():
    module = AnsibleModule(argument_spec={"url": {"type": "str", "required": True},
                                          "endpoint_url": {"type": "str"}})
    try:
        storage = open_storage(module.params["url"], endpoint_url=module.params["endpoint_url"],
                               region="us-east-1", part_size=5 * 1024 * 1024)
        with storage.open_writer("probe/data") as writer:
            for _ in range(3):
                writer.write(b"x" * (4 * 1024 * 1024))
        data = storage.get_bytes("probe/data")
        listed = [o.key for o in storage.list("probe/")]
        storage.delete_prefix("probe/")
    except StorageError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=True, has_boto3=HAS_BOTO3, size=len(data), listed=listed,
                     parts=writer.result.get("parts"), describe=storage.describe())


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_usable_from_an_ansible_module(
    s3: MotoS3Server, prefix: str, tmp_path: Path, scheme: str
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "storage_probe.py").write_text(PROBE_MODULE)
    args: dict[str, Any] = {"url": f"file://{tmp_path}/backups"}
    if scheme == "s3":
        args = {"url": f"s3://{BUCKET}/{prefix}", "endpoint_url": s3.endpoint_url}
    proc = run_ansible(
        [
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-M",
            str(library),
            "-m",
            "storage_probe",
            "-a",
            json.dumps(args),
            "-e",
            f"ansible_python_interpreter={VENV_BIN / 'python'}",
            "-o",
        ],
        env=ansible_env(extra={"AWS_SECRET_ACCESS_KEY": SECRET}),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"size": 12582912' in proc.stdout and '"listed": ["probe/data"]' in proc.stdout
    assert '"has_boto3": true' in proc.stdout
    assert ('"parts": 3' if scheme == "s3" else '"parts": null') in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
