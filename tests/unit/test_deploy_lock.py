"""The deploy lock without servers: the conditional storage operations (file:// for real,
S3 against a fake client), the decisions, DeployLock on file:// (re-entry, expiry, break,
release, check mode, concurrent processes), the intent protocol (threads on an in-memory
store whose conditional requests are ignored), and library/deploy_lock.py's pure parts."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.loaders import load_library, load_module_utils

st = load_module_utils("opsbook_storage")
ds = load_module_utils("opsbook_deploy_state")
dl = load_library("deploy_lock")

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def storage(tmp_path: Path) -> Any:
    return st.open_storage(f"file://{tmp_path / 'state'}")


def make_lock(storage: Any, clock: Clock | None = None, env: str = "production", **kw: Any) -> Any:
    return ds.DeployLock(
        storage, env, clock=clock or Clock(), break_hint="-e deploy_lock_break=true", **kw
    )


def acquire(lock: Any, run_id: str, owner: str = "alice", **kw: Any) -> dict[str, Any]:
    kw.setdefault("reason", f"deploy by {owner}")
    kw.setdefault("ttl_s", 600)
    return lock.acquire(owner=owner, run_id=run_id, host="ops-1", playbook="deploy", **kw)


# ============================================================ file:// conditional ops


def test_file_create_bytes_is_exclusive_and_leaves_no_temp(storage: Any, tmp_path: Path) -> None:
    info = storage.create_bytes("locks/x.json", b"one")
    assert info["etag"] == st.content_etag(b"one") and info["bytes"] == 3
    with pytest.raises(st.PreconditionFailedError, match="already exists"):
        storage.create_bytes("locks/x.json", b"two")
    assert storage.get_bytes("locks/x.json") == b"one"
    leftovers = [p.name for p in (tmp_path / "state" / "locks").iterdir()]
    assert leftovers == ["x.json"]


def test_file_replace_and_delete_only_the_version_read(storage: Any) -> None:
    storage.create_bytes("k", b"v1")
    v1 = storage.read_versioned("k")
    assert v1.data == b"v1" and v1.etag == st.content_etag(b"v1")
    with pytest.raises(st.PreconditionFailedError, match="changed"):
        storage.replace_bytes("k", b"x", st.content_etag(b"other"))
    v2 = storage.replace_bytes("k", b"v2", v1.etag)
    assert storage.get_bytes("k") == b"v2"
    with pytest.raises(st.PreconditionFailedError):
        storage.delete_if_match("k", v1.etag)  # stale version
    storage.delete_if_match("k", f'"{v2["etag"]}"')  # quoted tokens are accepted
    assert storage.read_versioned("k") is None
    with pytest.raises(st.PreconditionFailedError, match="does not exist"):
        storage.delete_if_match("k", v2["etag"])
    with pytest.raises(st.PreconditionFailedError, match="does not exist"):
        storage.replace_bytes("k", b"x", v2["etag"])


def _race_create(url: str, name: str, start: Any, results: Any) -> None:
    storage = st.open_storage(url)
    start.wait()
    try:
        storage.create_bytes("race.json", name.encode())
        results.put((name, True))
    except st.PreconditionFailedError:
        results.put((name, False))


def test_file_create_bytes_one_winner_among_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    url = f"file://{tmp_path / 'state'}"
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_race_create, args=(url, f"p{i}", start, results)) for i in range(6)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(30)
    outcomes = dict(results.get(timeout=5) for _ in procs)
    winners = [name for name, won in outcomes.items() if won]
    assert len(winners) == 1
    assert st.open_storage(url).get_bytes("race.json") == winners[0].encode()


def test_file_replace_waits_for_the_lock_and_sees_the_new_inode(storage: Any) -> None:
    """Concurrent compare-and-swap on one version: exactly one replace wins."""
    storage.create_bytes("k", b"v1")
    etag = storage.read_versioned("k").etag
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def contender(i: int) -> None:
        barrier.wait()
        try:
            storage.replace_bytes("k", f"v2-{i}".encode(), etag)
            wins.append(i)
        except st.PreconditionFailedError:
            pass

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert storage.get_bytes("k") == f"v2-{wins[0]}".encode()


# ============================================================ S3 conditional ops (fake client)


def client_error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutObject",
    )


class FakeBody:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int | None = None) -> bytes:
        return self.data


class FakeS3:
    """A bucket in a dict. honour=False ignores the conditional headers (like some servers);
    fail_with raises that error on every conditional request."""

    def __init__(self, honour: bool = True, fail_with: ClientError | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.honour = honour
        self.fail_with = fail_with
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.meta = type("Meta", (), {"endpoint_url": "http://fake-s3", "config": None})()

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + st.content_etag(data)[:32] + '"'

    def _check(self, key: str, kw: dict[str, Any]) -> None:
        conditional = "IfNoneMatch" in kw or "IfMatch" in kw
        if conditional and self.fail_with is not None:
            raise self.fail_with
        if not self.honour:
            return
        if kw.get("IfNoneMatch") == "*" and key in self.objects:
            raise client_error("PreconditionFailed", 412)
        if "IfMatch" in kw:
            if key not in self.objects:
                raise client_error("NoSuchKey", 404)
            if kw["IfMatch"].strip('"') != self.etag(self.objects[key]).strip('"'):
                raise client_error("PreconditionFailed", 412)

    def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("put", {"Key": Key, **kw}))
            self._check(Key, kw)
            self.objects[Key] = bytes(Body)
            return {"ETag": self.etag(self.objects[Key])}

    def get_object(self, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        with self.lock:
            if Key not in self.objects:
                raise client_error("NoSuchKey", 404)
            data = self.objects[Key]
            return {"Body": FakeBody(data), "ETag": self.etag(data), "ContentLength": len(data)}

    def delete_object(self, Bucket: str, Key: str, **kw: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("delete", {"Key": Key, **kw}))
            self._check(Key, kw)
            self.objects.pop(Key, None)
            return {}

    def list_keys(self) -> list[str]:
        return sorted(self.objects)


def s3_storage(client: FakeS3, prefix: str = "state") -> Any:
    return st.S3Storage(st.parse_storage_url(f"s3://bucket/{prefix}"), client)


def test_s3_conditional_requests_and_their_errors() -> None:
    client = FakeS3()
    storage = s3_storage(client)
    info = storage.create_bytes("k", b"v1")
    assert client.calls[-1][1]["IfNoneMatch"] == "*" and client.calls[-1][1]["Key"] == "state/k"
    with pytest.raises(st.PreconditionFailedError, match="already exists"):
        storage.create_bytes("k", b"v2")
    found = storage.read_versioned("k")
    assert found.data == b"v1" and found.etag == info["etag"]
    with pytest.raises(st.PreconditionFailedError, match="changed"):
        storage.replace_bytes("k", b"x", "0" * 32)
    storage.replace_bytes("k", b"v2", found.etag)
    assert client.calls[-1][1]["IfMatch"] == f'"{found.etag}"'  # quoted, as S3 expects
    with pytest.raises(st.PreconditionFailedError, match="changed"):
        storage.delete_if_match("k", found.etag)
    storage.delete_if_match("k", storage.read_versioned("k").etag)
    assert storage.read_versioned("k") is None
    with pytest.raises(st.PreconditionFailedError, match="does not exist"):
        storage.delete_if_match("k", found.etag)


def test_s3_conflict_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    client = FakeS3(fail_with=client_error("ConditionalRequestConflict", 409))
    storage = s3_storage(client)
    with pytest.raises(st.PreconditionFailedError, match="kept conflicting"):
        storage.create_bytes("k", b"v1")
    assert len(client.calls) == storage.conditional_conflict_retries + 1


@pytest.mark.parametrize(
    "error",
    [
        client_error("NotImplemented", 501, "A header you provided implies functionality"),
        client_error("InvalidArgument", 400, "If-None-Match is not supported"),
    ],
)
def test_s3_unsupported_conditions_raise_their_own_error(error: ClientError) -> None:
    storage = s3_storage(FakeS3(fail_with=error))
    with pytest.raises(st.ConditionalWriteUnsupportedError, match="does not support conditional"):
        storage.create_bytes("k", b"v1")


def test_s3_other_errors_stay_storage_errors() -> None:
    storage = s3_storage(FakeS3(fail_with=client_error("AccessDenied", 403)))
    with pytest.raises(st.StorageError) as info:
        storage.create_bytes("k", b"v1")
    assert not isinstance(info.value, st.PreconditionFailedError)
    assert info.value.kind == "access_denied"


def test_probe_tells_honouring_from_ignoring_servers() -> None:
    honest = s3_storage(FakeS3())
    assert honest.probe_conditional_writes("locks/.probe") == {
        "if_none_match": True,
        "if_match": True,
        "delete_if_match": True,
    }
    # the probe object is left in place: the next probe costs one refused request per check
    assert honest.read_versioned("locks/.probe") is not None
    liar = s3_storage(FakeS3(honour=False))
    assert liar.probe_conditional_writes("locks/.probe") == {
        "if_none_match": False,
        "if_match": False,
        "delete_if_match": False,
    }
    refusing = s3_storage(FakeS3(fail_with=client_error("NotImplemented", 501)))
    assert not any(refusing.probe_conditional_writes("locks/.probe").values())


# ============================================================ decisions and the record


def record(run_id: str = "A", expires: datetime = T0 + timedelta(minutes=10)) -> Any:
    return ds.LockRecord(owner="alice", run_id=run_id, expires_at=ds.iso(expires))


@pytest.mark.parametrize(
    ("current", "run_id", "break_lock", "refresh", "action"),
    [
        (None, "A", False, False, "create"),
        ("live-A", "A", False, False, "reenter"),
        ("live-A", "A", False, True, "refresh"),
        ("expired-A", "A", False, False, "refresh"),
        ("live-A", "B", False, False, "refuse"),
        ("live-A", "B", True, False, "break"),
        ("expired-A", "B", False, False, "take_over"),
        ("corrupt", "B", False, False, "refuse"),
        ("corrupt", "A", False, False, "refuse"),
        ("corrupt", "B", True, False, "break"),
    ],
)
def test_decide_acquire(
    current: str | None, run_id: str, break_lock: bool, refresh: bool, action: str
) -> None:
    locks = {
        None: None,
        "live-A": record("A"),
        "expired-A": record("A", T0 - timedelta(seconds=1)),
        "corrupt": ds.LockRecord.parse(b"{not json"),
    }
    assert ds.decide_acquire(locks[current], run_id, T0, break_lock, refresh) == action


@pytest.mark.parametrize(
    ("current", "run_id", "break_lock", "action"),
    [
        (None, "A", False, "none"),
        ("A", "A", False, "release"),
        ("A", "B", False, "leave"),
        ("A", None, False, "leave"),
        ("A", "B", True, "break"),
        ("A", None, True, "break"),
    ],
)
def test_decide_release(current: str | None, run_id: str | None, break_lock: bool, action: str):
    lock = record(current) if current else None
    assert ds.decide_release(lock, run_id, break_lock) == action


def test_lock_record_round_trip_and_corrupt_objects() -> None:
    rec = ds.LockRecord(
        owner="alice",
        run_id="A",
        reason="x",
        acquired_at=ds.iso(T0),
        expires_at=ds.iso(T0 + timedelta(hours=1)),
        ttl_s=3600,
        nonce="n1",
    )
    back = ds.LockRecord.parse(rec.to_bytes(), "etag1")
    assert back == rec and back.etag == "etag1" and back.corrupt is None
    assert "nonce" not in back.public() and back.public()["run_id"] == "A"
    assert not back.is_expired(T0) and back.is_expired(T0 + timedelta(hours=1))
    assert "in 60 min" in back.describe(T0)
    for raw, why in [
        (b"\xff", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"run_id": "A", "expires_at": "soon"}', "is not a time"),
        (b'{"expires_at": "2024-05-01T12:00:00Z"}', "no run_id"),
    ]:
        bad = ds.LockRecord.parse(raw)
        assert why in bad.corrupt
        assert not bad.is_expired(T0 + timedelta(days=999))  # never expires by itself
        assert "unreadable" in bad.describe(T0)


def test_format_duration() -> None:
    assert ds.format_duration(30) == "30 s"
    assert ds.format_duration(47 * 60) == "47 min"
    assert ds.format_duration(3 * 3600 + 5 * 60) == "3 h 5 min"


# ============================================================ DeployLock on file://


def test_acquire_reenter_refuse_with_a_clear_message(storage: Any) -> None:
    clock = Clock()
    lock = make_lock(storage, clock)
    first = acquire(lock, "run-A", reason="release 2.1.0")
    assert first["changed"] and first["action"] == "create" and first["acquired"]
    assert first["lock"]["expires_at"] == "2024-05-01T12:10:00Z"
    assert first["atomicity"].startswith("file:")
    stored = json.loads(storage.get_bytes("locks/production/deploy.json"))
    assert stored["owner"] == "alice" and stored["nonce"] and stored["playbook"] == "deploy"

    again = acquire(lock, "run-A")
    assert not again["changed"] and again["action"] == "reenter" and again["acquired"]

    clock.advance(60)
    with pytest.raises(ds.LockHeldError) as info:
        acquire(lock, "run-B", owner="bob")
    message = str(info.value)
    for text in (
        "production is locked",
        "run run-A of alice",
        'reason "release 2.1.0"',
        "expires 2024-05-01T12:10:00Z (in 9 min)",
        "nothing was changed",
        "-e deploy_lock_break=true",
        "locks/production/deploy.json",
    ):
        assert text in message
    assert info.value.details["lock"]["run_id"] == "run-A"
    assert info.value.details["acquirable"] is False
    assert json.loads(storage.get_bytes("locks/production/deploy.json")) == stored


def test_process_identity_tells_a_live_process_from_a_gone_one() -> None:
    mine = ds.process_identity(os.getpid())
    assert re.fullmatch(r"[0-9a-f-]{36}:[0-9]+", mine)
    assert ds.process_identity(os.getpid()) == mine  # stable while it lives
    child = subprocess.Popen(["true"])  # a process that exits at once
    child.wait()
    assert ds.process_identity(child.pid) == ""
    assert ds.process_identity(os.getpid(), proc="/nonexistent") == ""


def test_a_lock_whose_process_is_gone_is_reported_as_a_crashed_runs(storage: Any) -> None:
    here = socket.gethostname()
    child = subprocess.Popen(["sleep", "30"])  # stands for an ansible-playbook
    try:
        lock = make_lock(storage, Clock())
        lock.acquire(owner="alice", run_id="run-A", host=here, pid=child.pid, reason="r 1")
        held = ds.LockRecord.parse(storage.get_bytes("locks/production/deploy.json"))
        assert held.pid == child.pid and held.pid_start == ds.process_identity(child.pid)
        assert held.holder_alive() is True
        with pytest.raises(ds.LockHeldError) as live:
            acquire(lock, "run-B")
        assert f"(pid {child.pid} on {here}) still runs" in str(live.value)
        assert "Wait for that run to finish" in str(live.value)
        assert live.value.details["holder_alive"] is True
    finally:
        child.kill()
        child.wait()
    assert held.holder_alive() is False
    assert held.holder_alive(hostname="another-controller") is None  # cannot tell from here
    with pytest.raises(ds.LockHeldError) as dead:
        acquire(lock, "run-B")
    message = str(dead.value)
    assert f"(pid {child.pid} on {here}) is no longer running: that run crashed" in message
    assert "Break its lock: -e deploy_lock_break=true" in message
    assert "Wait for" not in message
    # a lock without a recorded process (an older one) is judged as before
    assert ds.LockRecord(run_id="x", host=here).holder_alive() is None


def test_expired_lock_is_taken_over_and_reported(storage: Any) -> None:
    clock = Clock()
    lock = make_lock(storage, clock)
    acquire(lock, "run-A", ttl_s=60)
    clock.advance(61)
    taken = acquire(lock, "run-B", owner="bob")
    assert taken["changed"] and taken["action"] == "take_over"
    assert taken["previous"]["run_id"] == "run-A"
    assert "took over the expired lock of run run-A of alice" in taken["warnings_"][0]
    assert lock.read().run_id == "run-B"


def test_own_expired_lock_is_refreshed_and_refresh_extends(storage: Any) -> None:
    clock = Clock()
    lock = make_lock(storage, clock)
    acquire(lock, "run-A", ttl_s=60)
    clock.advance(30)
    refreshed = acquire(lock, "run-A", ttl_s=60, refresh=True)
    assert refreshed["action"] == "refresh" and refreshed["changed"]
    assert refreshed["lock"]["acquired_at"] == "2024-05-01T12:00:00Z"
    assert refreshed["lock"]["expires_at"] == "2024-05-01T12:01:30Z"
    clock.advance(120)
    assert acquire(lock, "run-A", ttl_s=60)["action"] == "refresh"


def test_break_replaces_a_live_lock_with_a_warning(storage: Any) -> None:
    lock = make_lock(storage)
    acquire(lock, "run-A")
    broken = acquire(lock, "run-B", owner="bob", break_lock=True)
    assert broken["action"] == "break" and broken["previous"]["run_id"] == "run-A"
    assert "broke the lock of run run-A" in broken["warnings_"][0]
    assert lock.read().run_id == "run-B"


def test_corrupt_lock_is_refused_then_broken(storage: Any) -> None:
    storage.put_bytes("locks/production/deploy.json", b"garbage")
    lock = make_lock(storage)
    with pytest.raises(ds.LockHeldError, match="unreadable lock object"):
        acquire(lock, "run-A")
    assert acquire(lock, "run-A", break_lock=True)["action"] == "break"


def test_release_only_our_own_lock(storage: Any) -> None:
    lock = make_lock(storage)
    acquire(lock, "run-A")
    other = lock.release(run_id="run-B")
    assert not other["changed"] and other["action"] == "leave" and not other["released"]
    assert "not by run run-B: left in place" in other["warnings_"][0]
    assert lock.read().run_id == "run-A"
    mine = lock.release(run_id="run-A")
    assert mine["changed"] and mine["released"] and lock.read() is None
    nothing = lock.release(run_id="run-A")
    assert nothing["action"] == "none" and not nothing["changed"]
    with pytest.raises(ds.DeployStateError, match="needs the run_id"):
        lock.release(run_id=None)


def test_release_with_break_removes_any_lock(storage: Any) -> None:
    lock = make_lock(storage)
    acquire(lock, "run-A")
    removed = lock.release(run_id=None, break_lock=True)
    assert removed["action"] == "break" and removed["released"]
    assert "broke the deploy lock of production" in removed["warnings_"][0]
    assert lock.read() is None


def test_check_mode_writes_nothing(storage: Any, tmp_path: Path) -> None:
    lock = make_lock(storage)
    would = acquire(lock, "run-A", check_mode=True)
    assert would["changed"] and would["action"] == "create" and not would["acquired"]
    assert would["acquirable"] and would["check_mode"]
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("*.json"))
    acquire(lock, "run-A")
    assert acquire(lock, "run-A", check_mode=True)["acquired"]  # re-entry: held already
    with pytest.raises(ds.LockHeldError):
        acquire(lock, "run-B", check_mode=True)  # a real run would be refused too
    would_release = lock.release(run_id="run-A", check_mode=True)
    assert would_release["changed"] and not would_release["released"]
    assert lock.read().run_id == "run-A"


def test_locks_are_per_environment(storage: Any) -> None:
    acquire(make_lock(storage, env="staging"), "run-A")
    assert acquire(make_lock(storage, env="production"), "run-B")["action"] == "create"


def test_bad_inputs() -> None:
    storage = st.open_storage("file:///tmp/unused-opsbook-state")
    with pytest.raises(ds.DeployStateError, match="env must be"):
        ds.DeployLock(storage, "../etc")
    lock = make_lock(storage)
    with pytest.raises(ds.DeployStateError, match="ttl_s must be"):
        lock.acquire(owner="a", run_id="A", ttl_s=0)
    with pytest.raises(ds.DeployStateError, match="run_id must not be empty"):
        lock.acquire(owner="a", run_id="")


def _race_acquire(url: str, run_id: str, start: Any, results: Any) -> None:
    lock = ds.DeployLock(st.open_storage(url), "production")
    start.wait()
    try:
        result = lock.acquire(owner=run_id, run_id=run_id, reason="race", ttl_s=60)
        results.put((run_id, result["action"]))
    except ds.LockHeldError:
        results.put((run_id, "refused"))


def test_concurrent_processes_exactly_one_acquires(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    url = f"file://{tmp_path / 'state'}"
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_race_acquire, args=(url, f"run-{i}", start, results)) for i in range(6)
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(30)
    outcomes = dict(results.get(timeout=5) for _ in procs)
    winners = [run for run, action in outcomes.items() if action == "create"]
    assert len(winners) == 1, outcomes
    assert sorted(set(outcomes.values())) == ["create", "refused"]
    assert ds.DeployLock(st.open_storage(url), "production").read().run_id == winners[0]


# ============================================================ intent protocol


class MemoryStore(st.Storage):
    """A strongly consistent store with a server clock and NO working conditional writes:
    what the intent protocol must make safe."""

    def __init__(self) -> None:
        self.url = "s3://memory/state"
        self.objects: dict[str, tuple[bytes, datetime]] = {}
        self.lock = threading.Lock()
        self.writes = 0

    def describe(self) -> str:
        return self.url

    def put_bytes(self, key: str, data: bytes) -> dict[str, Any]:
        with self.lock:
            self.writes += 1
            self.objects[key] = (bytes(data), datetime.now(UTC))
        return {"key": key, "bytes": len(data)}

    def get_bytes(self, key: str) -> bytes:
        with self.lock:
            if key not in self.objects:
                raise st.NotFoundError(key)
            return self.objects[key][0]

    def read_versioned(self, key: str) -> Any:
        with self.lock:
            if key not in self.objects:
                return None
            data = self.objects[key][0]
        return st.Versioned(key, data, st.content_etag(data))

    def list(self, prefix: str = "") -> list[Any]:
        with self.lock:
            return [
                st.ObjectInfo(k, len(v[0]), v[1])
                for k, v in sorted(self.objects.items())
                if k.startswith(prefix)
            ]

    def delete(self, key: str) -> None:
        with self.lock:
            self.objects.pop(key, None)

    def probe_conditional_writes(self, key: str) -> dict[str, bool]:
        return {"if_none_match": False, "if_match": False, "delete_if_match": False}


def test_auto_mode_falls_back_to_the_intent_protocol_when_the_probe_fails() -> None:
    store = MemoryStore()
    lock = ds.DeployLock(store, "production")
    result = acquire(lock, "run-A")
    assert result["action"] == "create"
    assert result["atomicity"].startswith("s3: intent protocol")
    assert lock.probe == {"if_none_match": False, "if_match": False, "delete_if_match": False}
    assert store.list("locks/production/intents/") == []  # intents are cleaned up
    assert lock.release(run_id="run-A")["released"]


def test_intent_protocol_one_winner_among_threads() -> None:
    store = MemoryStore()
    barrier = threading.Barrier(6)
    outcomes: dict[str, str] = {}

    def contender(i: int) -> None:
        lock = ds.DeployLock(store, "production", conditional_writes="never")
        barrier.wait()
        try:
            outcomes[f"run-{i}"] = acquire(lock, f"run-{i}")["action"]
        except ds.LockHeldError:
            outcomes[f"run-{i}"] = "refused"

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [run for run, action in outcomes.items() if action == "create"]
    assert len(winners) == 1, outcomes
    assert set(outcomes.values()) == {"create", "refused"}
    assert ds.DeployLock(store, "production").read().run_id == winners[0]
    assert store.list("locks/production/intents/") == []


def test_intent_protocol_gives_up_on_contention_and_ignores_stale_intents() -> None:
    store = MemoryStore()
    # a live intent of another run that never goes away
    store.put_bytes("locks/production/intents/other-1.json", b"{}")
    sleeps: list[float] = []
    ticks = iter(range(0, 10_000, 5))
    lock = ds.DeployLock(
        store,
        "production",
        conditional_writes="never",
        contention_timeout_s=20,
        sleep=sleeps.append,
        monotonic=lambda: float(next(ticks)),
    )
    with pytest.raises(ds.DeployStateError, match="being taken by another run at the same time"):
        acquire(lock, "run-A")
    assert sleeps and lock.read() is None
    # the same intent, written long ago (server clock), belongs to a dead run
    data, _when = store.objects["locks/production/intents/other-1.json"]
    store.objects["locks/production/intents/other-1.json"] = (
        data,
        datetime.now(UTC) - timedelta(seconds=ds.INTENT_STALE_S + 10),
    )
    fresh = ds.DeployLock(store, "production", conditional_writes="never")
    assert acquire(fresh, "run-A")["action"] == "create"
    assert store.list("locks/production/intents/") == []  # the stale one is swept


def test_intent_protocol_writes_nothing_when_too_slow() -> None:
    store = MemoryStore()
    calls: list[int] = []

    def monotonic() -> float:  # the deadline and the intent's start, then a long pause
        calls.append(1)
        return 0.0 if len(calls) <= 2 else ds.INTENT_MAX_HOLD_S + 1

    lock = ds.DeployLock(store, "production", conditional_writes="never", monotonic=monotonic)
    with pytest.raises(ds.DeployStateError, match="was not written"):
        acquire(lock, "run-A")
    assert lock.read() is None and store.list("locks/") == []


def test_conditional_mode_switches_to_intent_when_the_server_answers_501() -> None:
    client = FakeS3(fail_with=client_error("NotImplemented", 501))
    lock = ds.DeployLock(s3_storage(client), "production", conditional_writes="always")
    with pytest.raises(st.ConditionalWriteUnsupportedError):
        acquire(lock, "run-A")

    class Refusing(MemoryStore):
        """Passes the probe, then answers 501 to the real conditional request."""

        def probe_conditional_writes(self, key: str) -> dict[str, bool]:
            return {"if_none_match": True, "if_match": True, "delete_if_match": True}

        def create_bytes(self, key: str, data: bytes) -> dict[str, Any]:
            raise st.ConditionalWriteUnsupportedError("501 NotImplemented")

    store = Refusing()
    auto = ds.DeployLock(store, "production")
    result = acquire(auto, "run-A")
    assert result["action"] == "create" and result["atomicity"].startswith("s3: intent")
    assert auto.read().run_id == "run-A"


# ============================================================ the module's pure parts


def test_fill_defaults_from_the_opsbook_environment() -> None:
    params = {k: v.get("default") for k, v in dl.argument_spec().items()}
    filled = dl.fill_defaults(params, {"OPSBOOK_RUN_ID": "r-1", "OPSBOOK_OPERATOR": "carol"})
    assert filled["run_id"] == "r-1" and filled["owner"] == "carol"
    given = dl.fill_defaults({**params, "run_id": "mine", "owner": "me"}, {"OPSBOOK_RUN_ID": "x"})
    assert given["run_id"] == "mine" and given["owner"] == "me"
    assert dl.fill_defaults(params, {})["owner"]  # the login name


def test_validate_params() -> None:
    base = {k: v.get("default") for k, v in dl.argument_spec().items()}
    base.update(url="file:///srv/state", env="production", run_id="r1")
    assert dl.validate_params(base) == []
    assert any(
        "run_id is required to take" in e for e in dl.validate_params({**base, "run_id": ""})
    )
    absent = {**base, "state": "absent", "run_id": ""}
    assert any("run_id is required to release" in e for e in dl.validate_params(absent))
    assert dl.validate_params({**absent, "break_lock": True}) == []
    assert dl.validate_params({**base, "state": "info", "run_id": ""}) == []
    assert any("ttl_s" in e for e in dl.validate_params({**base, "ttl_s": 0}))
    assert any("env must be" in e for e in dl.validate_params({**base, "env": "a/b"}))
    assert any(
        "refresh is only" in e
        for e in dl.validate_params({**base, "state": "info", "refresh": True})
    )


def test_module_run_on_file_storage(tmp_path: Path) -> None:
    params = {k: v.get("default") for k, v in dl.argument_spec().items()}
    params.update(url=f"file://{tmp_path}", env="staging", run_id="r1", owner="alice")
    result = dl.run(params, check_mode=False)
    assert result["action"] == "create" and result["probe"] is None
    info = dl.run({**params, "state": "info", "run_id": "r1"}, check_mode=False)
    assert info["held"] and info["held_by_us"] and not info["expired"]
    assert "staging: locked: run r1 of alice" in info["msg"]
    assert os.path.exists(tmp_path / "locks" / "staging" / "deploy.json")


def test_storage_failure_message_says_a_write_may_have_landed() -> None:
    params = {"state": "present", "env": "production", "run_id": "r9"}
    message = dl.storage_failure(params, st.StorageError("s3://b/k: PutObject failed: timeout"))
    assert "may still have landed" in message and "run r9" in message
    assert dl.storage_failure({**params, "state": "info"}, st.StorageError("x")).startswith(
        "reading the deploy lock failed"
    )
