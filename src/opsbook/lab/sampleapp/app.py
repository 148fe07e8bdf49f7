#!/usr/bin/env python3
"""opsbook sample app: the small web service the deploy runbooks ship and check.

Standard library only (it runs on the app hosts' /usr/bin/python3, which may be
as old as 3.9).

    GET  /health          200 {"status": "ok", "version": V, "release": R}
    GET  /api/version     200 {"version": V, "release": R, "pid": P, "started_at": T}
    POST /api/login       {"user": U} -> 200 {"token": JWT} (HS256, signed with
                          JWT_SECRET; sub U, iat, exp +3600 s); 503 without JWT_SECRET
    GET  /api/me          Authorization: Bearer JWT -> 200 {"sub": U, "key": K}; else 401
    POST /api/session     {"user": U} -> 200 {"sub": U, "exp": E} and
                          Set-Cookie: session=JWT; HttpOnly; Path=/ (signed with
                          NEXTAUTH_SECRET); 503 without NEXTAUTH_SECRET
    GET  /api/session     Cookie: session=JWT -> 200 {"sub": U, "key": K}; else 401
    POST /api/notes       {"text": S} -> 201 {"id": I}: S encrypted with ENCRYPTION_KEY
                          into <state-dir>/notes/<I>.json; 503 without a usable key
    GET  /api/notes/<I>   200 {"text": S, "key": K}; 404 unknown; 500 {"error": "no key
                          for this note"} when no key of the keyring opens it

V is read from the VERSION file next to this file when the process starts;
R is the name of the release directory it runs from (releases/<R>/app.py,
also when started through the `current` symlink). K says which key verified or
opened: "current", "previous" (or, for notes only, "pending"). No answer holds a
secret or a fingerprint of one.

Secrets: <state-dir>/.env, read once when the process starts (a restart picks up a
change; a missing file means no secrets). `KEY=value` lines; blank lines and lines
starting with `#` are ignored, and so are lines that are not KEY=value; `export KEY=value`
and blanks around `=` are accepted; in a value in double quotes only a backslash before a
backslash or a double quote escapes it (any other backslash is kept), one in single
quotes is taken as is (an unclosed quote: the key is skipped), an unquoted one ends at a
`#` that follows a blank and loses its trailing blanks; the last line of a key wins.
    JWT_SECRET, JWT_SECRET_PREVIOUS            HS256 tokens (sign with the first only;
    NEXTAUTH_SECRET, NEXTAUTH_SECRET_PREVIOUS  verify with both, constant-time)
    ENCRYPTION_KEY, ENCRYPTION_KEY_PREVIOUS, ENCRYPTION_KEY_PENDING
        the notes' keyring: base64 (standard) of 32 random bytes; notes are encrypted
        with ENCRYPTION_KEY only, opened with any of the three. A note is a keystream
        of HMAC-SHA256(enc_key, nonce || counter) XORed in and an HMAC-SHA256 tag
        (mac_key) over id, nonce and ciphertext; both subkeys are HMACs of the key.
        The file records the key's fingerprint ("sha256:" + 12 hex digits of the
        sha256 of the key's text), so it is known which key encrypted it.

Control files in --state-dir (default <deploy_root>/shared), read per request:
    health_mode   "ok" | "fail" (/health answers 500) | "slow <ms>" (/health
                  sleeps <ms> then answers 200); missing or empty means ok
    maintenance   present: every endpoint answers 503 (JSON)
    app.json      optional {"host": ..., "port": ...}: defaults for --host/--port,
                  so a restart needs no arguments

--detach forks into the background and returns once the port is bound (exit 0)
or binding failed (exit 1), which is how a deploy restarts the app over SSH.
SIGTERM/SIGINT stop it cleanly and remove its pid file.

`app.py reencrypt [--state-dir D]` re-encrypts under ENCRYPTION_KEY (read from
D/.env) every note another key of the keyring encrypted, each file replaced
atomically, and prints one JSON line {"reencrypted": n, "current": m, "failed": k,
"key": <fingerprint of ENCRYPTION_KEY>, "failed_ids": [...]}; exit 1 when a note
could not be opened (k > 0; it is left as it was) or ENCRYPTION_KEY is not usable.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
ENV_FILE = ".env"
NOTES_DIR = "notes"
TOKEN_TTL_S = 3600
MAX_BODY_BYTES = 65536
KEY_BYTES = 32  # ENCRYPTION_KEY: base64 of 32 random bytes
# [blanks][export blanks]KEY[blanks]=[blanks]: group 1 the key, group 2 the blanks after =
ENV_HEAD = re.compile(r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=([ \t]*)")
B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
NOTE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def read_version(app_dir: Path = APP_DIR) -> str:
    try:
        return (app_dir / "VERSION").read_text().strip() or "unknown"
    except FileNotFoundError:
        return "unknown"


def default_state_dir(app_dir: Path = APP_DIR) -> Path:
    """<deploy_root>/shared for an app in <deploy_root>/releases/<release>/."""
    return app_dir.parent.parent / "shared"


# ------------------------------------------------------------------ secrets (.env)


def parse_env(text: str) -> dict[str, str]:
    """KEY -> value of an env file's text (the format is in the module's docstring; the
    app_env module reads it the same way). A line that is not KEY=value is skipped."""
    values: dict[str, str] = {}
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.strip(" \t").startswith("#"):
            continue
        head = ENV_HEAD.match(line)
        if head is None:
            continue
        value = _env_value(line[head.end() :], blank_before=bool(head.group(2)))
        if value is not None:
            values[head.group(1)] = value
    return values


def _env_value(rest: str, blank_before: bool) -> str | None:
    """The value that starts rest (None for an unclosed quote)."""
    if rest.startswith('"'):
        chars: list[str] = []
        i = 1
        while i < len(rest) and rest[i] != '"':
            if rest[i] == "\\" and rest[i + 1 : i + 2] in ('"', "\\"):
                i += 1
            chars.append(rest[i])
            i += 1
        return "".join(chars) if i < len(rest) else None
    if rest.startswith("'"):
        end = rest.find("'", 1)
        return rest[1:end] if end > 0 else None
    if rest.startswith("#") and blank_before:  # `KEY= # note`: empty
        return ""
    comment = re.search(r"[ \t]+#", rest)
    return (rest[: comment.start()] if comment else rest).rstrip(" \t")


def read_env(state_dir: Path) -> dict[str, str]:
    """The secrets in <state_dir>/.env ({} when there is no such file)."""
    try:
        text = (state_dir / ENV_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return parse_env(text)


def fingerprint(value: str) -> str:
    """What may be shown of a secret: "sha256:" + the first 12 hex digits of its sha256."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def keyring(env: dict[str, str], name: str, labels: tuple[str, ...]) -> list[tuple[str, str]]:
    """[(label, value)] of the keys set (non-empty): name, name_PREVIOUS, name_PENDING."""
    suffixes = {"current": "", "previous": "_PREVIOUS", "pending": "_PENDING"}
    found = [(label, env.get(name + suffixes[label]) or "") for label in labels]
    return [(label, value) for label, value in found if value]


# ------------------------------------------------------------------ HS256 tokens


class TokenError(ValueError):
    """A token that is refused (the message says why, never with a key)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hs256(secret: str, signing_input: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()


def sign_token(claims: dict[str, Any], secret: str) -> str:
    """A compact HS256 JWT of claims."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = b64url(_hs256(secret, f"{header}.{payload}".encode("ascii")))
    return f"{header}.{payload}.{signature}"


def new_token(sub: str, secret: str, now: float | None = None, ttl_s: int = TOKEN_TTL_S) -> str:
    issued = int(time.time() if now is None else now)
    return sign_token({"sub": sub, "iat": issued, "exp": issued + ttl_s}, secret)


def verify_token(
    token: str, keys: list[tuple[str, str]], now: float | None = None
) -> tuple[dict[str, Any], str]:
    """(claims, label of the key whose signature matches); TokenError when refused.

    Only alg HS256 is accepted (never "none"); every key is compared in constant time;
    the token must carry an exp in the future.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    try:
        header = json.loads(b64url_decode(parts[0]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("unsupported token algorithm (HS256 only)")
    if not keys:
        raise TokenError("no key to verify tokens with")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    matched = None
    for label, secret in keys:
        if hmac.compare_digest(_hs256(secret, signing_input), signature) and matched is None:
            matched = label
    if matched is None:
        raise TokenError("bad signature")
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except (ValueError, binascii.Error) as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(claims, dict):
        raise TokenError("malformed token")
    expires = claims.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)):
        raise TokenError("token has no expiry")
    if expires <= (time.time() if now is None else now):
        raise TokenError("token expired")
    return claims, matched


# ------------------------------------------------------------------ encrypted notes


class NoteError(Exception):
    """A note that cannot be written or opened (the message names no key)."""


def decode_key(value: str) -> bytes:
    """The 32 bytes of an ENCRYPTION_KEY value (base64, standard alphabet)."""
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise NoteError("the key is not base64") from exc
    if len(key) != KEY_BYTES:
        raise NoteError(f"the key is {len(key)} bytes, not {KEY_BYTES}")
    return key


def _subkey(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"opsbook-sampleapp notes v1 " + purpose, hashlib.sha256).digest()


def _xor_keystream(enc_key: bytes, nonce: bytes, data: bytes) -> bytes:
    out = bytearray()
    for counter, start in enumerate(range(0, len(data), 32)):
        chunk = data[start : start + 32]
        block = hmac.new(enc_key, nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest()
        mixed = int.from_bytes(chunk, "big") ^ int.from_bytes(block[: len(chunk)], "big")
        out += mixed.to_bytes(len(chunk), "big")
    return bytes(out)


def _tag(mac_key: bytes, note_id: str, nonce: bytes, ciphertext: bytes) -> bytes:
    message = b"v1\0" + note_id.encode("utf-8") + b"\0" + nonce + ciphertext
    return hmac.new(mac_key, message, hashlib.sha256).digest()


def seal_note(note_id: str, text: str, key_value: str) -> dict[str, Any]:
    """The JSON record of note_id holding text encrypted with key_value."""
    key = decode_key(key_value)
    nonce = secrets.token_bytes(16)
    ciphertext = _xor_keystream(_subkey(key, b"encryption"), nonce, text.encode("utf-8"))
    tag = _tag(_subkey(key, b"authentication"), note_id, nonce, ciphertext)
    return {
        "v": 1,
        "id": note_id,
        "key": fingerprint(key_value),
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        "tag": base64.b64encode(tag).decode("ascii"),
    }


def open_note(record: dict[str, Any], keys: list[tuple[str, str]]) -> tuple[str, str]:
    """(text, label of the key that opened it); the key the record names is tried first."""
    try:
        note_id = str(record["id"])
        nonce, ciphertext, tag = (
            base64.b64decode(record[field], validate=True)
            for field in ("nonce", "ciphertext", "tag")
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise NoteError("the note is unreadable") from exc
    named = record.get("key")
    for label, value in sorted(keys, key=lambda k: fingerprint(k[1]) != named):
        try:
            key = decode_key(value)
        except NoteError:
            continue
        expected = _tag(_subkey(key, b"authentication"), note_id, nonce, ciphertext)
        if hmac.compare_digest(expected, tag):
            plain = _xor_keystream(_subkey(key, b"encryption"), nonce, ciphertext)
            try:
                return plain.decode("utf-8"), label
            except UnicodeDecodeError as exc:
                raise NoteError("the note is unreadable") from exc
    raise NoteError("no key for this note")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """path replaced at once by data (a 0600 temporary file in its directory, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def note_files(notes_dir: Path) -> list[Path]:
    """The notes (not the temporary files of a write in progress), by name."""
    if not notes_dir.is_dir():
        return []
    return sorted(p for p in notes_dir.glob("*.json") if not p.name.startswith("."))


def reencrypt(state_dir: Path) -> tuple[dict[str, Any], int]:
    """Every note not under ENCRYPTION_KEY re-encrypted under it: (report, exit code)."""
    env = read_env(state_dir)
    report: dict[str, Any] = {"reencrypted": 0, "current": 0, "failed": 0, "key": None}
    current = env.get("ENCRYPTION_KEY") or ""
    if not current:
        report["error"] = f"ENCRYPTION_KEY is not set in {state_dir / ENV_FILE}"
        return report, 1
    try:
        decode_key(current)
    except NoteError as exc:
        report["error"] = f"ENCRYPTION_KEY in {state_dir / ENV_FILE} is not usable: {exc}"
        return report, 1
    report["key"] = current_fp = fingerprint(current)
    keys = keyring(env, "ENCRYPTION_KEY", ("current", "previous", "pending"))
    notes_dir = state_dir / NOTES_DIR
    failed: list[str] = []
    for path in note_files(notes_dir):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise NoteError("the note is unreadable")
            text, label = open_note(record, keys)
        except (OSError, ValueError, NoteError):
            failed.append(path.stem)
            continue
        if label == "current" and record.get("key") == current_fp:
            report["current"] += 1
            continue
        write_json_atomic(path, seal_note(str(record["id"]), text, current))
        report["reencrypted"] += 1
    if report["reencrypted"]:
        _fsync_dir(notes_dir)
    report["failed"] = len(failed)
    report["failed_ids"] = failed
    return report, 1 if failed else 0


# ------------------------------------------------------------------ the service


class AppState:
    """What the handlers need: identity and secrets fixed at start, control files read per
    request."""

    def __init__(self, state_dir: Path, app_dir: Path = APP_DIR) -> None:
        self.state_dir = state_dir
        self.version = read_version(app_dir)
        self.release = app_dir.name
        self.pid = os.getpid()
        # timezone.utc, not datetime.UTC: the hosts' python3 may predate 3.11.
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017
        self.env = read_env(state_dir)
        self.notes_dir = state_dir / NOTES_DIR

    def secret(self, name: str) -> str:
        """The value of name in .env ("" when unset)."""
        return self.env.get(name) or ""

    def verify_keys(self, name: str) -> list[tuple[str, str]]:
        """The keys that verify tokens signed with secret `name`: current, then previous."""
        return keyring(self.env, name, ("current", "previous"))

    def note_keys(self) -> list[tuple[str, str]]:
        return keyring(self.env, "ENCRYPTION_KEY", ("current", "previous", "pending"))

    def in_maintenance(self) -> bool:
        return (self.state_dir / "maintenance").exists()

    def health_mode(self) -> tuple[str, int]:
        """("ok" | "fail" | "slow", delay in ms)."""
        try:
            words = (self.state_dir / "health_mode").read_text().split()
        except (FileNotFoundError, IsADirectoryError):
            return "ok", 0
        if not words:
            return "ok", 0
        mode = words[0].lower()
        if mode == "slow":
            delay = int(words[1]) if len(words) > 1 and words[1].isdigit() else 1000
            return "slow", delay
        return ("fail", 0) if mode == "fail" else ("ok", 0)


class Handler(BaseHTTPRequestHandler):
    server_version = "opsbook-sampleapp"
    state: AppState  # set on the subclass made by make_server

    def do_GET(self) -> None:
        if self.state.in_maintenance():
            self._send(503, {"status": "maintenance", "version": self.state.version})
            return
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/health":
            self._health()
        elif path == "/api/me":
            self._verify("JWT_SECRET", self._bearer())
        elif path == "/api/session":
            self._verify("NEXTAUTH_SECRET", self._cookie("session"))
        elif path.startswith("/api/notes/"):
            self._read_note(path[len("/api/notes/") :])
        elif path == "/api/version":
            self._send(
                200,
                {
                    "version": self.state.version,
                    "release": self.state.release,
                    "pid": self.state.pid,
                    "started_at": self.state.started_at,
                },
            )
        elif path == "/":
            self._send(200, {"app": "opsbook-sampleapp", "version": self.state.version})
        else:
            self._send(404, {"error": "not found", "path": path})

    def do_POST(self) -> None:
        if self.state.in_maintenance():
            self._send(503, {"status": "maintenance", "version": self.state.version})
            return
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        routes = {
            "/api/login": self._login,
            "/api/session": self._new_session,
            "/api/notes": self._write_note,
        }
        if path not in routes:
            self._send(404, {"error": "not found", "path": path})
            return
        body = self._json_body()
        if body is not None:
            routes[path](body)

    # ---------------------------------------------------------- tokens and sessions

    def _login(self, body: dict[str, Any]) -> None:
        signer = self._signer(body, "JWT_SECRET")
        if signer is not None:
            self._send(200, {"token": new_token(*signer)})

    def _new_session(self, body: dict[str, Any]) -> None:
        signer = self._signer(body, "NEXTAUTH_SECRET")
        if signer is None:
            return
        now = int(time.time())
        cookie = f"session={new_token(*signer, now=now)}; HttpOnly; Path=/"
        self._send(200, {"sub": signer[0], "exp": now + TOKEN_TTL_S}, {"Set-Cookie": cookie})

    def _signer(self, body: dict[str, Any], name: str) -> tuple[str, str] | None:
        """(user, secret `name`) to issue a token with; None once an error answer is sent
        (400 without a user, 503 without the secret - never its _PREVIOUS)."""
        user = self._user(body)
        if user is None:
            return None
        secret = self.state.secret(name)
        if not secret:
            self._send(503, {"error": f"{name} is not set"})
            return None
        return user, secret

    def _verify(self, name: str, token: str | None) -> None:
        if not token:
            self._send(401, {"error": "no token"})
            return
        try:
            claims, label = verify_token(token, self.state.verify_keys(name))
        except TokenError as exc:
            self._send(401, {"error": str(exc)})
            return
        self._send(200, {"sub": claims.get("sub"), "key": label})

    def _bearer(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _cookie(self, name: str) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie") or "")
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None

    # ---------------------------------------------------------- notes

    def _write_note(self, body: dict[str, Any]) -> None:
        text = body.get("text")
        if not isinstance(text, str):
            self._send(400, {"error": "text must be a string"})
            return
        key = self.state.secret("ENCRYPTION_KEY")
        if not key:
            self._send(503, {"error": "ENCRYPTION_KEY is not set"})
            return
        note_id = secrets.token_hex(8)
        try:
            record = seal_note(note_id, text, key)
        except NoteError as exc:
            self._send(503, {"error": f"ENCRYPTION_KEY is not usable: {exc}"})
            return
        self.state.notes_dir.mkdir(mode=0o700, exist_ok=True)
        write_json_atomic(self.state.notes_dir / f"{note_id}.json", record)
        self._send(201, {"id": note_id})

    def _read_note(self, note_id: str) -> None:
        path = self.state.notes_dir / f"{note_id}.json"
        if not NOTE_ID.match(note_id) or not path.is_file():
            self._send(404, {"error": "no such note"})
            return
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise NoteError("the note is unreadable")
            text, label = open_note(record, self.state.note_keys())
        except (OSError, ValueError, NoteError) as exc:
            self._send(500, {"error": str(exc) if isinstance(exc, NoteError) else "unreadable"})
            return
        self._send(200, {"text": text, "key": label})

    # ---------------------------------------------------------- helpers

    def _json_body(self) -> dict[str, Any] | None:
        """The request's JSON object (None once an error answer has been sent)."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._send(413 if length > 0 else 400, {"error": "bad Content-Length"})
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._send(400, {"error": "the body must be a JSON object"})
            return None
        return body

    def _user(self, body: dict[str, Any]) -> str | None:
        user = body.get("user")
        if not isinstance(user, str) or not user:
            self._send(400, {"error": "user must be a non-empty string"})
            return None
        return user

    def _health(self) -> None:
        mode, delay_ms = self.state.health_mode()
        body = {"status": "ok", "version": self.state.version, "release": self.state.release}
        if mode == "fail":
            self._send(500, {**body, "status": "fail"})
            return
        if mode == "slow":
            time.sleep(delay_ms / 1000)
        self._send(200, body)

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {self.address_string()} {format % args}\n")


def make_server(host: str, port: int, state: AppState) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def write_pidfile(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: Path) -> None:
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except FileNotFoundError:
        pass


def detach(log_file: Path) -> int:
    """Double-fork into a new session; the original process waits for the verdict.

    Returns (in the daemon) the write end of a pipe on which to report "ok" or an
    error; the original process never returns: it exits 0 on "ok", else 1.
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        os.wait()
        message = b"".join(chunks).decode(errors="replace").strip()
        if message.startswith("ok"):
            print(message)
            sys.exit(0)
        print(
            f"sampleapp failed to start: {message or 'exited early'} (log: {log_file})",
            file=sys.stderr,
        )
        sys.exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    return write_end


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="opsbook sample app")
    parser.add_argument("--host", help="address to bind (default: app.json, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: app.json, else 8000)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="control files directory (default: <deploy_root>/shared)",
    )
    parser.add_argument("--pidfile", type=Path, help="pid file (default: <state-dir>/app.pid)")
    parser.add_argument(
        "--detach", action="store_true", help="run in the background; return once listening"
    )
    parser.add_argument(
        "--log-file", type=Path, help="log for --detach (default: <state-dir>/app.log)"
    )
    return parser.parse_args(argv)


def load_defaults(state_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state_dir / "app.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def reencrypt_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="app.py reencrypt",
        description="re-encrypt every note under ENCRYPTION_KEY (from <state-dir>/.env)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where .env and notes/ are (default: <deploy_root>/shared)",
    )
    args = parser.parse_args(argv)
    try:
        report, code = reencrypt(args.state_dir.absolute())
    except (OSError, ValueError) as exc:
        report, code = {"reencrypted": 0, "current": 0, "failed": 0, "key": None}, 1
        report["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reencrypt"]:
        return reencrypt_main(argv[1:])
    args = parse_args(argv)
    state_dir = args.state_dir.absolute()
    defaults = load_defaults(state_dir)
    host = args.host or defaults.get("host") or "127.0.0.1"
    port = args.port or int(defaults.get("port") or 8000)
    pidfile = (args.pidfile or state_dir / "app.pid").absolute()
    report = detach((args.log_file or state_dir / "app.log").absolute()) if args.detach else None

    try:
        state = AppState(state_dir)
    except (OSError, ValueError) as exc:  # .env unreadable: refuse to start without it
        if report is not None:
            os.write(report, f"cannot read {state_dir / ENV_FILE}: {exc}".encode())
        print(f"sampleapp: cannot read {state_dir / ENV_FILE}: {exc}", file=sys.stderr)
        return 1
    try:
        server = make_server(host, port, state)
    except OSError as exc:
        if report is not None:
            os.write(report, f"cannot listen on {host}:{port}: {exc}".encode())
        print(f"sampleapp: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1

    def shutdown(signum: int, _frame: object) -> None:
        print(f"sampleapp: signal {signum}, shutting down", file=sys.stderr)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    write_pidfile(pidfile)
    identity = f"sampleapp {state.version} ({state.release}) pid {os.getpid()}"
    print(f"{identity} listening on http://{host}:{port}", file=sys.stderr)
    if report is not None:
        os.write(report, f"ok pid {os.getpid()} http://{host}:{port}".encode())
        os.close(report)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        remove_pidfile(pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
