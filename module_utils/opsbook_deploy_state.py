# Copyright: opsbook contributors
# Apache-2.0
"""Deploy state for opsbook modules: the per-environment deploy lock and the deploy ledger.

Both live under ``opsbook_state_url`` (``s3://bucket/prefix`` or ``file:///path``, opened
with :mod:`opsbook_storage`), the same URL for every environment of one app, so a production
deploy can read what succeeded in staging::

    <prefix>/locks/<env>/deploy.json                     the lock (while held)
    <prefix>/locks/<env>/intents/<run>-<nonce>.json      intent protocol only (see below)
    <prefix>/locks/.conditional-writes-probe             S3 only: capability probe (tiny)
    <prefix>/ledger/<env>/<ts>-<release_id>.json         one ledger entry (append-only)
    <prefix>/ledger-index/<env>/<version>/<ts>-<release_id>.json   the same entry, by version

The lock
--------
One JSON object ``{format_version, owner, run_id, reason, playbook, host, pid, pid_start,
acquired_at, expires_at, ttl_s, nonce}`` (``pid``: the run's ansible-playbook process on the
controller ``host``, with its start - boot id and start time - so that a later run on the same
controller can tell a crashed run's lock from a live one). Taking it is atomic:

* ``file://``: the object is created by hard-linking a complete temporary file (``link(2)``
  fails when the lock exists), and replaced or deleted under ``flock(2)`` after checking its
  content (sha256) is still the version read.
* ``s3://`` with conditional writes (AWS S3, and servers that implement them): PutObject
  ``If-None-Match: *`` creates it, PutObject / DeleteObject ``If-Match: <etag>`` replace or
  delete only the version read. Whether the endpoint honours them is probed first (some
  S3-compatible servers ignore the headers and would overwrite silently).
* ``s3://`` without conditional writes: an *intent protocol*. Each contender writes
  ``intents/<run>-<nonce>.json``, then lists ``intents/``: with another live intent there, it
  deletes its own, backs off a random time and tries again; alone, it reads, decides and
  writes the lock with plain requests, then deletes its intent. S3 reads and lists are
  strongly consistent, so of two contenders whose intents overlap, the one that lists last
  sees the other's intent: at most one proceeds. Intents older than INTENT_STALE_S (by the
  server's clock, LastModified) are those of dead runs and ignored; a contender that is still
  inside the protocol after INTENT_MAX_HOLD_S gives up without writing.

A lock is re-entrant for the same ``run_id``; an expired lock (controller clocks, UTC) is
taken over and reported; another run's live lock is only replaced or removed with an
explicit ``break_lock``. Every write is conditional on the version read, so two runs can
never both believe they hold the lock.

The ledger
----------
One object per event (a deploy that succeeded, failed or was rolled back) per environment,
written once with create-if-absent and never rewritten; a copy under ``ledger-index/`` by
version answers "did version V (artifact sha256 S) ever succeed in env E" without reading
the whole ledger.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import random
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    ConditionalWriteUnsupportedError,
    FileStorage,
    PreconditionFailedError,
    Storage,
    StorageError,
)

FORMAT_VERSION = 1
DEFAULT_TTL_S = 3600
MAX_TTL_S = 7 * 86400
# Intent protocol (S3 without conditional writes): an intent older than this (server clock)
# belongs to a dead run; a contender must have written the lock within INTENT_MAX_HOLD_S of
# writing its intent, else it writes nothing and fails.
INTENT_STALE_S = 120.0
INTENT_MAX_HOLD_S = 40.0
DEFAULT_CONTENTION_TIMEOUT_S = 30.0
# Conditional mode: how many times a lost race (the lock changed between read and write) is
# re-evaluated before giving up.
MAX_RACE_ROUNDS = 8

LEDGER_STATUSES = ("succeeded", "failed", "rolled_back")
CONDITIONAL_MODES = ("auto", "always", "never")

_ENV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SAFE_RUN_RE = re.compile(r"[^A-Za-z0-9._-]+")
_TS_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_ENTRY_KEY_RE = re.compile(r"^(?P<ts>\d{8}T\d{6}\.\d{6}Z)-(?P<release_id>.+)\.json$")
_FETCH_THREADS = 8

__all__ = [
    "CONDITIONAL_MODES",
    "DEFAULT_TTL_S",
    "FORMAT_VERSION",
    "LEDGER_STATUSES",
    "DeployLock",
    "DeployStateError",
    "Ledger",
    "LockHeldError",
    "LockRecord",
    "decide_acquire",
    "decide_release",
    "env_errors",
    "format_duration",
    "iso",
    "ledger_entry_errors",
    "parse_iso",
    "process_identity",
    "utcnow",
]


# ===================================================================== basics


class DeployStateError(Exception):
    """The operation cannot be done; ``details`` are extra result fields (no secrets)."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class LockHeldError(DeployStateError):
    """Another run holds the lock (or it is unreadable) and break_lock was not given."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """2024-05-01T12:00:00Z (UTC, whole seconds)."""
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time; no offset means UTC. ValueError when it is not one."""
    value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """'47 min', '2 h 5 min', '30 s' (rounded; for messages)."""
    seconds = abs(seconds)
    if seconds < 90:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def login_name() -> str:
    """The operator when OPSBOOK_OPERATOR is not set: the login name, or "unknown"."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def state_errors(params: dict[str, Any]) -> list[str]:
    """Input errors shared by deploy_lock and deploy_ledger: the state URL and the env."""
    errors = []
    if not (params.get("url") or "").strip():
        errors.append("url (opsbook_state_url) must not be empty")
    return errors + env_errors(params.get("env"))


def env_errors(env: Any) -> list[str]:
    if not isinstance(env, str) or not _ENV_RE.match(env):
        return [
            f"env must be an environment name (letters, digits, '.', '_', '-'; up to 63), "
            f"got {env!r}"
        ]
    return []


def _safe_segment(text: str) -> str:
    return _SAFE_RUN_RE.sub("_", text)[:64] or "run"


# ====================================================================== lock


@dataclass
class LockRecord:
    """The lock object as read (or about to be written)."""

    owner: str = ""
    run_id: str = ""
    reason: str = ""
    playbook: str = ""
    host: str = ""
    pid: int = 0
    pid_start: str = ""
    acquired_at: str = ""
    expires_at: str = ""
    ttl_s: int = 0
    nonce: str = ""
    format_version: int = FORMAT_VERSION
    etag: str = field(default="", compare=False)
    corrupt: str | None = field(default=None, compare=False)

    FIELDS = (
        "format_version",
        "owner",
        "run_id",
        "reason",
        "playbook",
        "host",
        "pid",
        "pid_start",
        "acquired_at",
        "expires_at",
        "ttl_s",
        "nonce",
    )

    @classmethod
    def parse(cls, data: bytes, etag: str = "") -> LockRecord:
        """A lock from its object; an unusable one comes back with ``corrupt`` set."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return cls(etag=etag, corrupt=f"not JSON: {exc}")
        if not isinstance(raw, dict):
            return cls(etag=etag, corrupt="not a JSON object")
        record = cls(etag=etag)
        for name in cls.FIELDS:
            if name in raw:
                setattr(record, name, raw[name])
        problems = []
        if not isinstance(record.run_id, str) or not record.run_id:
            problems.append("no run_id")
        try:
            parse_iso(record.expires_at)
        except (TypeError, ValueError):
            problems.append(f"expires_at {record.expires_at!r} is not a time")
        if problems:
            record.corrupt = ", ".join(problems)
        return record

    def to_bytes(self) -> bytes:
        return (json.dumps(self.public(nonce=True), indent=2, sort_keys=False) + "\n").encode()

    def public(self, nonce: bool = False) -> dict[str, Any]:
        """The lock as returned to the caller (and, with the nonce, as stored)."""
        data = {name: getattr(self, name) for name in self.FIELDS if nonce or name != "nonce"}
        if self.corrupt:
            data["corrupt"] = self.corrupt
        return data

    def expires(self) -> datetime | None:
        try:
            return parse_iso(self.expires_at)
        except (TypeError, ValueError):
            return None

    def is_expired(self, now: datetime) -> bool:
        """True when its expiry has passed. An unreadable lock never expires by itself."""
        expires = self.expires()
        return self.corrupt is None and expires is not None and expires <= now

    def holder_alive(self, hostname: str | None = None, proc: str = "/proc") -> bool | None:
        """Whether the process that took the lock still runs: None when this controller cannot
        tell (another host, no pid recorded), else True or False."""
        here = socket.gethostname() if hostname is None else hostname
        if not isinstance(self.pid, int) or not self.pid or not self.pid_start:
            return None
        if self.host != here:
            return None
        return process_identity(int(self.pid), proc) == self.pid_start

    def holder_state(self, hostname: str | None = None, proc: str = "/proc") -> str:
        """'its process ... is no longer running ...' / '... still runs' / '' (cannot tell)."""
        alive = self.holder_alive(hostname, proc)
        if alive is None:
            return ""
        if alive:
            return f"the Ansible process that took it (pid {self.pid} on {self.host}) still runs"
        return (
            f"the Ansible process that took it (pid {self.pid} on {self.host}) is no longer "
            "running: that run crashed or was killed, and nothing released its lock"
        )

    def describe(self, now: datetime) -> str:
        """'run R of alice (playbook deploy, reason "x"), acquired T, expires T2 (in 47 min)'."""
        if self.corrupt:
            return f"an unreadable lock object ({self.corrupt})"
        bits = [f"playbook {self.playbook}"] if self.playbook else []
        bits.append(
            f"reason {json.dumps(self.reason, ensure_ascii=False)}"
            if self.reason
            else "no reason given"
        )
        if self.host:
            bits.append(f"from {self.host}")
        expires = self.expires()
        when = ""
        if expires is not None:
            delta = (expires - now).total_seconds()
            when = (
                f" ({format_duration(delta)} ago)"
                if delta <= 0
                else f" (in {format_duration(delta)})"
            )
        return (
            f"run {self.run_id} of {self.owner or 'an unknown operator'} ({', '.join(bits)}), "
            f"acquired {self.acquired_at or '?'}, expires {self.expires_at}{when}"
        )


def process_identity(pid: int, proc: str = "/proc") -> str:
    """'<boot id>:<start time>' of a live process, '' when there is none (or no /proc): the
    same pid after a reboot or a reuse is another process."""
    try:
        with open(f"{proc}/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        with open(f"{proc}/{int(pid)}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except (OSError, ValueError):
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    # after "pid (comm) ": state is field 3, starttime field 22 -> index 19 here
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return ""
    return f"{boot}:{fields[19]}"


def decide_acquire(
    current: LockRecord | None, run_id: str, now: datetime, break_lock: bool, refresh: bool
) -> str:
    """What acquiring means given the lock read: create, reenter, refresh, take_over, break or
    refuse."""
    if current is None:
        return "create"
    if current.corrupt:
        return "break" if break_lock else "refuse"
    if current.run_id == run_id:
        return "refresh" if refresh or current.is_expired(now) else "reenter"
    if current.is_expired(now):
        return "take_over"
    return "break" if break_lock else "refuse"


def decide_release(current: LockRecord | None, run_id: str | None, break_lock: bool) -> str:
    """What releasing means given the lock read: none, release, break or leave."""
    if current is None:
        return "none"
    if run_id and not current.corrupt and current.run_id == run_id:
        return "release"
    return "break" if break_lock else "leave"


class _Ops:
    """How the lock object is written: conditionally, or plainly inside the intent protocol."""

    def __init__(self, storage: Storage, key: str, conditional: bool, guard: Callable[[], None]):
        self.storage = storage
        self.key = key
        self.conditional = conditional
        self.guard = guard

    def create(self, data: bytes) -> None:
        self.guard()
        if self.conditional:
            self.storage.create_bytes(self.key, data)
        else:
            self.storage.put_bytes(self.key, data)

    def replace(self, data: bytes, etag: str) -> None:
        self.guard()
        if self.conditional:
            self.storage.replace_bytes(self.key, data, etag)
        else:
            self.storage.put_bytes(self.key, data)

    def delete(self, etag: str) -> None:
        self.guard()
        if self.conditional:
            self.storage.delete_if_match(self.key, etag)
        else:
            self.storage.delete(self.key)


class DeployLock:
    """The deploy lock of one environment under a storage URL (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        env: str,
        *,
        conditional_writes: str = "auto",
        contention_timeout_s: float = DEFAULT_CONTENTION_TIMEOUT_S,
        break_hint: str = "break_lock=true",
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        errors = env_errors(env)
        if errors:
            raise DeployStateError(errors[0])
        if conditional_writes not in CONDITIONAL_MODES:
            raise DeployStateError(f"conditional_writes must be one of {CONDITIONAL_MODES}")
        self.storage = storage
        self.env = env
        self.key = f"locks/{env}/deploy.json"
        self.intents = f"locks/{env}/intents/"
        self.probe_key = "locks/.conditional-writes-probe"
        self.where = f"{storage.url}/{self.key}"
        self.conditional_writes = conditional_writes
        self.contention_timeout_s = contention_timeout_s
        self.break_hint = break_hint
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self._mode: str | None = None
        self.probe: dict[str, bool] | None = None

    # ------------------------------------------------------------ mode

    @property
    def mode(self) -> str:
        """'conditional' (atomic conditional requests) or 'intent' (the intent protocol)."""
        if self._mode is None:
            self._mode = self._choose_mode()
        return self._mode

    def atomicity(self) -> str:
        """How acquisition is made atomic, in words (returned to the caller)."""
        if isinstance(self.storage, FileStorage):
            return "file: exclusive create (hard link) and flock(2)"
        if self._mode is None:
            return "s3: not determined (check mode writes nothing, not even the probe)"
        if self._mode == "conditional":
            return "s3: conditional writes (If-None-Match / If-Match)"
        return "s3: intent protocol (the endpoint lacks conditional writes)"

    def _choose_mode(self) -> str:
        if isinstance(self.storage, FileStorage) or self.conditional_writes == "always":
            return "conditional"
        if self.conditional_writes == "never":
            return "intent"
        probe = getattr(self.storage, "probe_conditional_writes", None)
        if probe is None:
            return "intent"
        self.probe = probe(self.probe_key)
        return "conditional" if all(self.probe.values()) else "intent"

    # ------------------------------------------------------------ reading

    def read(self) -> LockRecord | None:
        found = self.storage.read_versioned(self.key)
        if found is None:
            return None
        return LockRecord.parse(found.data, found.etag)

    def info(self, run_id: str | None = None) -> dict[str, Any]:
        now = self.clock()
        current = self.read()
        result: dict[str, Any] = {
            "changed": False,
            "env": self.env,
            "key": self.where,
            "lock": current.public() if current else None,
            "held": current is not None and not current.is_expired(now),
            "expired": bool(current and current.is_expired(now)),
            "held_by_us": bool(current and run_id and current.run_id == run_id),
        }
        if current is None:
            result["msg"] = f"{self.env} is not locked"
        else:
            state = "expired lock" if current.is_expired(now) else "locked"
            result["msg"] = f"{self.env}: {state}: {current.describe(now)}"
        return result

    # ------------------------------------------------------------ acquire

    def acquire(
        self,
        *,
        owner: str,
        run_id: str,
        reason: str = "",
        ttl_s: int = DEFAULT_TTL_S,
        playbook: str = "",
        host: str | None = None,
        pid: int | None = None,
        break_lock: bool = False,
        refresh: bool = False,
        check_mode: bool = False,
    ) -> dict[str, Any]:
        if not run_id:
            raise DeployStateError("run_id must not be empty")
        if not 1 <= int(ttl_s) <= MAX_TTL_S:
            raise DeployStateError(f"ttl_s must be between 1 and {MAX_TTL_S}, got {ttl_s}")
        host = socket.gethostname() if host is None else host

        def attempt(current: LockRecord | None, ops: _Ops | None) -> dict[str, Any]:
            now = self.clock()
            action = decide_acquire(current, run_id, now, break_lock, refresh)
            if action == "refuse":
                if current is None:
                    raise AssertionError("current is not None")
                raise self._held_error(current, now)
            if action == "reenter":
                if current is None:
                    raise AssertionError("current is not None")
                return self._acquired(action, current, None, changed=False)
            new = LockRecord(
                owner=owner,
                run_id=run_id,
                reason=reason,
                playbook=playbook,
                host=host,
                pid=int(pid or 0),
                pid_start=process_identity(pid) if pid else "",
                acquired_at=current.acquired_at if action == "refresh" and current else iso(now),
                expires_at=iso(now + timedelta(seconds=int(ttl_s))),
                ttl_s=int(ttl_s),
                nonce=secrets.token_hex(8),
            )
            previous = current if action in ("take_over", "break") else None
            if ops is not None:  # not check mode
                if current is None:
                    ops.create(new.to_bytes())
                else:
                    ops.replace(new.to_bytes(), current.etag)
            return self._acquired(action, new, previous, changed=True, now=now)

        result = self._transact(attempt, run_id, check_mode)
        result["acquired"] = not check_mode or result["action"] == "reenter"
        result["acquirable"] = True
        return result

    def _acquired(
        self,
        action: str,
        lock: LockRecord,
        previous: LockRecord | None,
        changed: bool,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        now = now or self.clock()
        words = {
            "create": "acquired",
            "reenter": "already held by this run",
            "refresh": "refreshed (this run's lock)",
            "take_over": "acquired by taking over an expired lock",
            "break": "acquired by BREAKING another run's lock",
        }
        result: dict[str, Any] = {
            "changed": changed,
            "action": action,
            "env": self.env,
            "key": self.where,
            "lock": lock.public(),
            "previous": previous.public() if previous else None,
            "warnings_": [],
        }
        msg = f"deploy lock of {self.env} {words[action]}: expires {lock.expires_at}"
        if previous is not None:
            note = (
                f"took over the expired lock of {previous.describe(now)}; lock object {self.where}"
            )
            if action == "break":
                note = f"broke the lock of {previous.describe(now)}; lock object {self.where}"
            result["warnings_"].append(note)
            msg += f"; {note}"
        result["msg"] = msg
        return result

    def _held_error(self, current: LockRecord, now: datetime) -> LockHeldError:
        if current.corrupt:
            message = (
                f"{self.env} is locked by an unreadable lock object {self.where} "
                f"({current.corrupt}); nothing was changed. Inspect it, then break the lock: "
                f"{self.break_hint}."
            )
        else:
            state = current.holder_state()
            alive = current.holder_alive()
            if alive is False:
                advice = f"Break its lock: {self.break_hint}"
            else:
                advice = (
                    "Wait for that run to finish or for the lock to expire; only if that run is "
                    f"dead (killed or crashed), break its lock: {self.break_hint}"
                )
            message = (
                f"{self.env} is locked: the deploy lock is held by {current.describe(now)}"
                + (f"; {state}" if state else "")
                + f"; nothing was changed. {advice}. Lock object: {self.where}"
            )
        return LockHeldError(
            message,
            lock=current.public(),
            key=self.where,
            env=self.env,
            acquired=False,
            acquirable=False,
            holder_alive=None if current.corrupt else current.holder_alive(),
        )

    # ------------------------------------------------------------ release

    def release(
        self, *, run_id: str | None, break_lock: bool = False, check_mode: bool = False
    ) -> dict[str, Any]:
        if not run_id and not break_lock:
            raise DeployStateError(
                "releasing needs the run_id that holds the lock (or break_lock=true to remove "
                "whatever lock is there)"
            )

        def attempt(current: LockRecord | None, ops: _Ops | None) -> dict[str, Any]:
            now = self.clock()
            action = decide_release(current, run_id, break_lock)
            result: dict[str, Any] = {
                "changed": action in ("release", "break"),
                "action": action,
                "env": self.env,
                "key": self.where,
                "lock": current.public() if current else None,
                "released": False,
                "warnings_": [],
            }
            if action == "none":
                result["msg"] = f"{self.env} was not locked; nothing to release"
                return result
            if current is None:
                raise AssertionError("current is not None")
            if action == "leave":
                note = (
                    f"the deploy lock of {self.env} is held by {current.describe(now)}, not by "
                    f"run {run_id}: left in place"
                )
                result["warnings_"].append(note)
                result["msg"] = note
                return result
            if ops is not None:
                ops.delete(current.etag)
            result["released"] = ops is not None
            if action == "break":
                note = f"broke the deploy lock of {self.env}: {current.describe(now)}"
                result["warnings_"].append(note)
                result["msg"] = note
            else:
                result["msg"] = f"deploy lock of {self.env} released (run {run_id})"
            return result

        return self._transact(attempt, run_id or "break", check_mode)

    # ------------------------------------------------------------ engine

    def _transact(
        self,
        attempt: Callable[[LockRecord | None, _Ops | None], dict[str, Any]],
        run_id: str,
        check_mode: bool,
    ) -> dict[str, Any]:
        """Read the lock, decide and write, atomically (see the module docstring)."""
        if check_mode:
            result = attempt(self.read(), None)
        elif self.mode == "intent":
            result = self._with_intent(attempt, run_id)
        else:
            result = self._conditional(attempt, run_id)
        result["atomicity"] = self.atomicity()
        result["check_mode"] = check_mode
        return result

    def _conditional(
        self,
        attempt: Callable[[LockRecord | None, _Ops | None], dict[str, Any]],
        run_id: str,
    ) -> dict[str, Any]:
        ops = _Ops(self.storage, self.key, conditional=True, guard=lambda: None)
        for _round in range(MAX_RACE_ROUNDS):
            try:
                return attempt(self.read(), ops)
            except PreconditionFailedError:
                continue  # it changed between our read and our write: read and decide again
            except ConditionalWriteUnsupportedError:
                if self.conditional_writes == "always":
                    raise
                self._mode = "intent"  # nothing was written: redo it the other way
                return self._with_intent(attempt, run_id)
        raise DeployStateError(
            f"the deploy lock of {self.env} kept changing while this run tried to take it "
            f"({MAX_RACE_ROUNDS} attempts); nothing was changed by this run",
            key=self.where,
        )

    def _with_intent(
        self,
        attempt: Callable[[LockRecord | None, _Ops | None], dict[str, Any]],
        run_id: str,
    ) -> dict[str, Any]:
        with self._intent(run_id) as started:

            def guard() -> None:
                held = self.monotonic() - started
                if held > INTENT_MAX_HOLD_S:
                    raise DeployStateError(
                        f"the deploy lock of {self.env} was not written: {held:.0f} s passed "
                        f"since this run announced its intent (limit {INTENT_MAX_HOLD_S:.0f} "
                        "s; the storage is too slow for the intent protocol); nothing was "
                        "changed, try again",
                        key=self.where,
                    )

            ops = _Ops(self.storage, self.key, conditional=False, guard=guard)
            return attempt(self.read(), ops)

    @contextlib.contextmanager
    def _intent(self, run_id: str) -> Iterator[float]:
        """Be the only run inside the lock's critical section (the intent protocol)."""
        key = f"{self.intents}{_safe_segment(run_id)}-{secrets.token_hex(6)}.json"
        body = json.dumps({"run_id": run_id, "written_at": iso(self.clock())}).encode()
        deadline = self.monotonic() + self.contention_timeout_s
        rounds = 0
        while True:
            started = self.monotonic()
            self.storage.put_bytes(key, body)
            listing = self.storage.list(self.intents)
            mine = next((item for item in listing if item.key == key), None)
            if mine is None:
                self._discard(key)
                raise DeployStateError(
                    f"{self.storage.url} did not list the object {key} right after it was "
                    "written: the storage is not strongly consistent and the intent protocol "
                    "cannot make the lock safe there; use an endpoint with conditional writes "
                    "or a file:// state URL"
                )
            live, stale = [], []
            for item in listing:
                if item.key == key:
                    continue
                age = (mine.modified - item.modified).total_seconds()
                (stale if age > INTENT_STALE_S else live).append(item)
            if not live:
                break
            self._discard(key)
            rounds += 1
            if self.monotonic() >= deadline:
                others = ", ".join(item.key.rsplit("/", 1)[-1] for item in live)
                raise DeployStateError(
                    f"the deploy lock of {self.env} is being taken by another run at the same "
                    f"time ({others}); this run gave up after {rounds} tries in "
                    f"{self.contention_timeout_s:.0f} s; nothing was changed",
                    key=self.where,
                )
            self.sleep(random.uniform(0.05, 0.4) * min(rounds, 6))
        try:
            yield started
        finally:
            self._discard(key)
            for item in stale:
                self._discard(item.key)

    def _discard(self, key: str) -> None:
        with contextlib.suppress(StorageError):
            self.storage.delete(key)


# ==================================================================== ledger


def ledger_entry_errors(fields: Mapping[str, Any]) -> list[str]:
    """What is wrong with the fields of an entry to record."""
    errors = []
    if not str(fields.get("version") or "").strip():
        errors.append("version must not be empty")
    release_id = fields.get("release_id")
    if not isinstance(release_id, str) or not _RELEASE_ID_RE.match(release_id):
        errors.append(
            "release_id must be letters, digits, '.', '_', '+', '-' (up to 128, starting with "
            f"a letter or digit), got {release_id!r}"
        )
    sha = fields.get("artifact_sha256")
    if sha and not _SHA256_RE.match(str(sha)):
        errors.append(f"artifact_sha256 must be 64 lowercase hex digits, got {sha!r}")
    if fields.get("status") not in LEDGER_STATUSES:
        errors.append(f"status must be one of {', '.join(LEDGER_STATUSES)}")
    return errors


class Ledger:
    """The deploy ledger of one environment (see the module docstring)."""

    def __init__(self, storage: Storage, env: str, clock: Callable[[], datetime] = utcnow) -> None:
        errors = env_errors(env)
        if errors:
            raise DeployStateError(errors[0])
        self.storage = storage
        self.env = env
        self.clock = clock
        self.prefix = f"ledger/{env}/"
        self.index_root = f"ledger-index/{env}/"

    def index_prefix(self, version: str) -> str:
        return f"{self.index_root}{quote(str(version), safe='')}/"

    # ------------------------------------------------------------ record

    def record(self, fields: Mapping[str, Any], check_mode: bool = False) -> dict[str, Any]:
        """Append one entry; the same run, release and status recorded again changes nothing."""
        errors = ledger_entry_errors(fields)
        if errors:
            raise DeployStateError("; ".join(errors))
        release_id = fields["release_id"]
        for existing_key, existing in self._entries_of_release(release_id):
            if (
                existing.get("run_id") == (fields.get("run_id") or "")
                and existing.get("status") == fields["status"]
                and str(existing.get("version")) == str(fields["version"])
            ):
                if not check_mode:
                    self._ensure_index(existing_key, existing)
                return {
                    "changed": False,
                    "entry": existing,
                    "key": f"{self.storage.url}/{existing_key}",
                    "msg": f"already recorded: {self._summary(existing)}",
                }
        now = self.clock()
        entry = {
            "format_version": FORMAT_VERSION,
            "env": self.env,
            "version": str(fields["version"]),
            "artifact_sha256": fields.get("artifact_sha256") or None,
            "release_id": release_id,
            "status": fields["status"],
            "hotfix": bool(fields.get("hotfix")),
            "run_id": fields.get("run_id") or "",
            "operator": fields.get("operator") or "",
            "reason": fields.get("reason") or "",
            "playbook": fields.get("playbook") or "",
            "hosts": sorted({str(h) for h in fields.get("hosts") or []}),
            "details": dict(fields.get("details") or {}),
            "recorded_at": now.astimezone(UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
        }
        key = ""
        for bump in range(100):
            stamp = (now + timedelta(microseconds=bump)).astimezone(UTC).strftime(_TS_FORMAT)
            key = f"{self.prefix}{stamp}-{release_id}.json"
            if check_mode:
                break
            try:
                self.storage.create_bytes(key, _entry_bytes(entry))
                break
            except PreconditionFailedError:
                continue  # the same microsecond and release id: never overwrite, next one
            except ConditionalWriteUnsupportedError:
                if self.storage.head(key) is not None:
                    continue
                self.storage.put_bytes(key, _entry_bytes(entry))
                break
        if not check_mode:
            self._ensure_index(key, entry)
        return {
            "changed": True,
            "entry": entry,
            "key": f"{self.storage.url}/{key}",
            "msg": ("would record: " if check_mode else "recorded: ") + self._summary(entry),
        }

    def _ensure_index(self, key: str, entry: Mapping[str, Any]) -> None:
        index_key = self.index_prefix(entry["version"]) + key.rsplit("/", 1)[-1]
        if self.storage.head(index_key) is None:
            self.storage.put_bytes(index_key, _entry_bytes(entry))

    def _summary(self, entry: Mapping[str, Any]) -> str:
        sha = entry.get("artifact_sha256") or ""
        hotfix = " (hotfix)" if entry.get("hotfix") else ""
        return (
            f"{self.env} {entry['version']}{hotfix} release {entry['release_id']} "
            f"{entry['status']}" + (f", artifact sha256 {sha[:12]}..." if sha else "")
        )

    # ------------------------------------------------------------ query

    def query(self, version: str | None, sha256: str | None = None, limit: int = 20) -> dict:
        """Entries of version (oldest first), and whether it succeeded here (with sha256: that
        very artifact); without a version, the newest ``limit`` entries of the environment."""
        if sha256 and not _SHA256_RE.match(sha256):
            raise DeployStateError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if version:
            keys = [info.key for info in self.storage.list(self.index_prefix(version))]
        else:
            keys = [
                info.key
                for info in self.storage.list(self.prefix)
                if _ENTRY_KEY_RE.match(info.key.rsplit("/", 1)[-1])
            ]
            keys = keys[-limit:] if limit > 0 else []
        entries = [entry for _key, entry in self._fetch(keys)]
        if version:
            entries = [e for e in entries if str(e.get("version")) == str(version)]
        succeeded = [e for e in entries if e.get("status") == "succeeded"]
        matching = [e for e in succeeded if not sha256 or e.get("artifact_sha256") == sha256]
        other_sha = sorted({str(e.get("artifact_sha256")) for e in succeeded if e not in matching})
        result: dict[str, Any] = {
            "changed": False,
            "env": self.env,
            "version": version,
            "artifact_sha256": sha256,
            "entries": entries,
            "count": len(entries),
            "succeeded": bool(matching) if version else None,
            "succeeded_count": len(matching),
            "succeeded_other_sha256": other_sha,
            "latest": entries[-1] if entries else None,
            "last_succeeded": matching[-1] if matching else None,
        }
        if version:
            what = f"{version}" + (f" (artifact sha256 {sha256[:12]}...)" if sha256 else "")
            if matching:
                last = matching[-1]
                times = "once" if len(matching) == 1 else f"{len(matching)} times"
                result["msg"] = (
                    f"{what} succeeded in {self.env} ({times}; last "
                    f"{last.get('recorded_at')}, release {last.get('release_id')})"
                )
            else:
                statuses = _count_statuses(entries, version, self.env)
                extra = (
                    f"; it succeeded with another artifact (sha256 "
                    f"{', '.join(s[:12] + '...' for s in other_sha)})"
                    if other_sha
                    else ""
                )
                result["msg"] = f"{what} never succeeded in {self.env} ({statuses}){extra}"
        else:
            result["msg"] = f"{len(entries)} newest ledger entries of {self.env}"
        return result

    def _entries_of_release(self, release_id: str) -> list[tuple[str, dict[str, Any]]]:
        suffix = f"-{release_id}.json"
        keys = []
        for info in self.storage.list(self.prefix):
            name = info.key.rsplit("/", 1)[-1]
            match = _ENTRY_KEY_RE.match(name)
            if match and name.endswith(suffix) and match.group("release_id") == release_id:
                keys.append(info.key)
        return self._fetch(keys)

    def _fetch(self, keys: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """(key, entry) of each key, in order; unreadable objects are skipped."""

        def one(key: str) -> tuple[str, dict[str, Any]] | None:
            try:
                entry = json.loads(self.storage.get_bytes(key))
            except (StorageError, ValueError, UnicodeDecodeError):
                return None
            return (key, entry) if isinstance(entry, dict) else None

        if len(keys) <= 1:
            found = [one(k) for k in keys]
        else:
            with ThreadPoolExecutor(max_workers=min(_FETCH_THREADS, len(keys))) as pool:
                found = list(pool.map(one, keys))
        return [item for item in found if item is not None]


def _count_statuses(entries: Sequence[Mapping[str, Any]], version: str, env: str) -> str:
    """'entries of 2.1.0 in staging: 1 failed, 1 rolled_back' or 'no entry of 2.1.0 in staging'."""
    if not entries:
        return f"no entry of {version} in {env}"
    counts: dict[str, int] = {}
    for entry in entries:
        status = str(entry.get("status"))
        counts[status] = counts.get(status, 0) + 1
    listed = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"entries of {version} in {env}: {listed}"


def _entry_bytes(entry: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(entry), indent=2, sort_keys=False) + "\n").encode()
