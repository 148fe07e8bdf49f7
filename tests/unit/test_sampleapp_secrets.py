"""The sample app's secrets (in-process, no lab): .env parsing, HS256 tokens and sessions
verified with the current or the previous secret, the notes' keyring and the reencrypt
command; the lab host's seeded .env; jwt_probe's token against the app."""

from __future__ import annotations

import ast
import base64
import json
import os
import secrets
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab.hosts import HOST_PYTHON, AppHost, render_env, seed_env_values
from opsbook.lab.sampleapp import APP_SOURCE
from opsbook.lab.sampleapp import app as sampleapp
from opsbook.lab.sshd import SshKeyPair
from tests.loaders import load_library

fingerprint = sampleapp.fingerprint


def new_key() -> str:
    """An ENCRYPTION_KEY value: base64 of 32 random bytes."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def new_secret() -> str:
    return secrets.token_urlsafe(48)


# ------------------------------------------------------------------ .env parsing


def test_parse_env_reads_quotes_comments_and_export() -> None:
    text = (
        "# a comment\n"
        "\n"
        "PLAIN=abc123+/=\n"
        "export EXPORTED=yes\n"
        "exported_not=kept\n"
        '  DOUBLE="a \\"quoted\\" \\\\ value # not a comment"\n'
        'OTHER_BACKSLASH="C:\\temp\\n"\n'
        "SINGLE='it is \"as is\" \\\\'\n"
        "INLINE=value # a comment\n"
        "HASH=abc#def\n"
        "EMPTY=\n"
        "NOTE_ONLY= # a note\n"
        "HASH_FIRST=#value\n"
        'UNCLOSED="never closed\n'
        "SPACED = padded  \n"
        "TWICE=first\n"
        "TWICE=last\n"
        "not a line\n"
        "9BAD=x\n"
        "WINDOWS=crlf\r\n"
    )
    assert sampleapp.parse_env(text) == {
        "PLAIN": "abc123+/=",
        "EXPORTED": "yes",
        "exported_not": "kept",
        "DOUBLE": 'a "quoted" \\ value # not a comment',
        "OTHER_BACKSLASH": "C:\\temp\\n",
        "SINGLE": 'it is "as is" \\\\',
        "INLINE": "value",
        "HASH": "abc#def",
        "EMPTY": "",
        "NOTE_ONLY": "",
        "HASH_FIRST": "#value",
        "SPACED": "padded",
        "TWICE": "last",
        "WINDOWS": "crlf",
    }


@pytest.mark.parametrize(
    "value",
    ["", "plain_./:@+=,-", "with space", 'quote " and \\ backslash', "#hash", "'single'",
     "trailing\\", "ünïcode", "a=b c", "\\\"", "x" * 300],
)  # fmt: skip
def test_render_env_round_trips_through_the_apps_parser(value: str) -> None:
    values = {"KEY": value, "OTHER": "after"}
    text = render_env(values)
    assert sampleapp.parse_env(text) == values
    unquoted = all(c.isalnum() or c in "_./:@+=,-" for c in value) and value.isascii()
    assert (f"KEY={value}\n" in text) is unquoted  # the design's quoting rule


@pytest.mark.parametrize(
    ("values", "error"),
    [({"BAD KEY": "x"}, "invalid env key 'BAD KEY'"),
     ({"K": "two\nlines-canary"}, "the value of K holds a newline or NUL")],
)  # fmt: skip
def test_render_env_refuses_what_the_file_cannot_hold(values: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        render_env(values)
    assert "canary" not in str(caught.value)


ENV_CORPUS = [
    "A=1\nB=two words # note\nC= # only a note\nD=#not-a-note\n",
    'export E="x \\" y \\\\ z \\q" # after\r\nF = \'lit \\" \'\n',
    "  G=\tpadded\t \nH=a#b c\nH=last\n# I=commented\n\nJ=\n",
    render_env({"K": 'all "of" \\ it # here', "L": "plain+/=", "M": "tab\there"}),
]


@pytest.mark.parametrize("text", ENV_CORPUS)
def test_the_app_and_app_env_read_a_file_alike(text: str) -> None:
    """The design's promise: the app and the app_env module parse .env the same way."""
    if not (Path(__file__).parents[2] / "library" / "app_env.py").exists():
        pytest.skip("library/app_env.py is not there")
    app_env = load_library("app_env")
    lines = app_env.parse_env(text)
    module_reads = {line.key: line.value for line in lines if line.key is not None}
    assert sampleapp.parse_env(text) == module_reads


def test_read_env_without_a_file_is_empty(tmp_path: Path) -> None:
    assert sampleapp.read_env(tmp_path) == {}


def test_fingerprint_is_the_design_rule() -> None:
    assert fingerprint("test") == "sha256:9f86d081884c"


def test_app_source_keeps_python_3_9_syntax() -> None:
    """The hosts' /usr/bin/python3 may be 3.9: no match statements, parenthesised context
    managers or other newer syntax (annotations are strings: `from __future__`)."""
    ast.parse(APP_SOURCE.read_text(), feature_version=(3, 9))


# ------------------------------------------------------------------ the app, in a thread


class App:
    """The sample app served in a thread from state_dir, restartable with another .env."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self, **env: str) -> App:
        """(Re)start with exactly these .env values (none given: the file as it is)."""
        self.stop()
        if env:
            (self.state_dir / ".env").write_text(render_env(env))
        state = sampleapp.AppState(self.state_dir, app_dir=APP_SOURCE.parent)
        self.server = sampleapp.make_server("127.0.0.1", 0, state)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            assert self.thread is not None
            self.thread.join()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        """(status, JSON body, response headers)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers or {}
        )
        try:
            # an opener of its own: ansible.module_utils.urls installs a global one holding a
            # cookie jar, which would send the session cookie of an earlier answer (a module
            # run in this process by another test leaves it)
            with urllib.request.build_opener().open(request, timeout=5) as response:
                status, raw, got = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, raw, got = error.code, error.read(), error.headers
        return status, json.loads(raw), got

    def me(self, token: str) -> tuple[int, Any]:
        return self.call("GET", "/api/me", headers={"Authorization": f"Bearer {token}"})[:2]

    def session(self, cookie: str) -> tuple[int, Any]:
        return self.call("GET", "/api/session", headers={"Cookie": cookie})[:2]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    state_dir = tmp_path / "shared"
    state_dir.mkdir()
    served = App(state_dir)
    try:
        yield served
    finally:
        served.stop()


def login(app: App, user: str = "ada") -> str:
    status, body, _ = app.call("POST", "/api/login", {"user": user})
    assert status == 200, body
    return str(body["token"])


def test_login_tokens_verify_with_current_then_previous_during_the_grace_period(
    app: App,
) -> None:
    old, new = new_secret(), new_secret()
    token = login(app.start(JWT_SECRET=old), "ada")
    assert app.me(token) == (200, {"sub": "ada", "key": "current"})

    app.start(JWT_SECRET=new, JWT_SECRET_PREVIOUS=old)  # rotated: old kept for the grace period
    assert app.me(token) == (200, {"sub": "ada", "key": "previous"})
    fresh = login(app, "bob")
    assert app.me(fresh) == (200, {"sub": "bob", "key": "current"})
    claims, key = sampleapp.verify_token(fresh, [("new", new)])  # never signed with _PREVIOUS
    assert key == "new" and claims["exp"] - claims["iat"] == 3600

    app.start(JWT_SECRET=new)  # revoked
    assert app.me(token) == (401, {"error": "bad signature"})
    assert app.me(fresh)[0] == 200


def test_refused_tokens(app: App) -> None:
    secret = new_secret()
    app.start(JWT_SECRET=secret)
    good = login(app)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))

    def b64(value: Any) -> str:
        return sampleapp.b64url(json.dumps(value).encode())

    expired = sampleapp.new_token("ada", secret, now=time.time() - 7200)
    tampered = f"{header}.{b64({**claims, 'sub': 'root'})}.{signature}"
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    none_signed = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"
    other_key = sampleapp.new_token("ada", new_secret())
    no_exp = sampleapp.sign_token({"sub": "ada"}, secret)
    cases = {
        expired: "token expired",
        tampered: "bad signature",
        unsigned: "unsupported token algorithm (HS256 only)",
        none_signed: "unsupported token algorithm (HS256 only)",
        other_key: "bad signature",
        no_exp: "token has no expiry",
        "not.a-token": "malformed token",
        "a.b.c!": "malformed token",
        good + "x": "bad signature",
        good + "xy" + "==": "malformed token",
    }
    for token, error in cases.items():
        assert app.me(token) == (401, {"error": error}), token
    status, body, _ = app.call("GET", "/api/me")
    assert (status, body) == (401, {"error": "no token"})
    status, body, _ = app.call("GET", "/api/me", headers={"Authorization": f"Basic {good}"})
    assert status == 401
    assert app.me(good)[0] == 200


def test_login_needs_jwt_secret_and_a_user(app: App) -> None:
    previous_only = new_secret()
    app.start(JWT_SECRET_PREVIOUS=previous_only, NEXTAUTH_SECRET=new_secret())
    assert app.call("POST", "/api/login", {"user": "ada"})[:2] == (
        503,
        {"error": "JWT_SECRET is not set"},
    )  # never signed with _PREVIOUS
    app.start(JWT_SECRET=new_secret())
    assert app.call("POST", "/api/login", {"user": ""})[0] == 400
    assert app.call("POST", "/api/login", ["ada"])[0] == 400
    assert app.call("POST", "/api/nowhere", {})[0] == 404


def test_sessions_are_cookies_verified_with_nextauth_current_or_previous(app: App) -> None:
    old, new, jwt_secret = new_secret(), new_secret(), new_secret()
    app.start(NEXTAUTH_SECRET=old, JWT_SECRET=jwt_secret)
    status, body, headers = app.call("POST", "/api/session", {"user": "ada"})
    assert status == 200 and body["sub"] == "ada"
    set_cookie = headers["Set-Cookie"]
    name_value, *attributes = set_cookie.split("; ")
    assert name_value.startswith("session=") and attributes == ["HttpOnly", "Path=/"]
    cookie = name_value
    assert sampleapp.verify_token(cookie.removeprefix("session="), [("old", old)])[1] == "old"
    assert app.session(cookie) == (200, {"sub": "ada", "key": "current"})
    assert app.session(f"theme=dark; {cookie}")[0] == 200

    app.start(NEXTAUTH_SECRET=new, NEXTAUTH_SECRET_PREVIOUS=old, JWT_SECRET=jwt_secret)
    assert app.session(cookie) == (200, {"sub": "ada", "key": "previous"})

    app.start(NEXTAUTH_SECRET=new, JWT_SECRET=jwt_secret)
    assert app.session(cookie) == (401, {"error": "bad signature"})
    jwt_token = login(app)  # a JWT_SECRET token is no session
    assert app.session(f"session={jwt_token}")[0] == 401
    assert app.call("GET", "/api/session")[:2] == (401, {"error": "no token"})
    assert (
        app.call("GET", "/api/session", headers={"Authorization": f"Bearer {jwt_token}"})[0] == 401
    )

    app.start(JWT_SECRET=jwt_secret)
    assert app.call("POST", "/api/session", {"user": "ada"})[:2] == (
        503,
        {"error": "NEXTAUTH_SECRET is not set"},
    )


# ------------------------------------------------------------------ notes and the keyring


def write_note(app: App, text: str) -> str:
    status, body, _ = app.call("POST", "/api/notes", {"text": text})
    assert status == 201, body
    return str(body["id"])


def read_note(app: App, note_id: str) -> tuple[int, Any]:
    return app.call("GET", f"/api/notes/{note_id}")[:2]


def test_notes_are_encrypted_with_the_current_key_and_opened_with_the_keyring(app: App) -> None:
    old, new, pending = new_key(), new_key(), new_key()
    app.start(ENCRYPTION_KEY=old)
    text = "the canary note: " + "ü" * 40  # more than one keystream block
    note = write_note(app, text)
    path = app.state_dir / "notes" / f"{note}.json"
    record = json.loads(path.read_text())
    assert record["key"] == fingerprint(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "canary" not in path.read_text() and old not in path.read_text()
    assert read_note(app, note) == (200, {"text": text, "key": "current"})

    app.start(ENCRYPTION_KEY=new, ENCRYPTION_KEY_PREVIOUS=old)
    assert read_note(app, note) == (200, {"text": text, "key": "previous"})
    second = write_note(app, "under the new key")
    assert json.loads((app.state_dir / "notes" / f"{second}.json").read_text())["key"] == (
        fingerprint(new)
    )

    app.start(ENCRYPTION_KEY=pending, ENCRYPTION_KEY_PENDING=new)
    assert read_note(app, second) == (200, {"text": "under the new key", "key": "pending"})
    assert read_note(app, note) == (500, {"error": "no key for this note"})
    assert read_note(app, "0123456789abcdef")[0] == 404
    assert read_note(app, "..%2F.env")[0] == 404

    record = json.loads((app.state_dir / "notes" / f"{second}.json").read_text())
    flipped = base64.b64decode(record["ciphertext"])
    record["ciphertext"] = base64.b64encode(bytes([flipped[0] ^ 1]) + flipped[1:]).decode()
    (app.state_dir / "notes" / f"{second}.json").write_text(json.dumps(record))
    assert read_note(app, second) == (500, {"error": "no key for this note"})


def test_notes_need_a_usable_key(app: App) -> None:
    app.start(JWT_SECRET=new_secret())
    assert app.call("POST", "/api/notes", {"text": "x"})[:2] == (
        503,
        {"error": "ENCRYPTION_KEY is not set"},
    )
    app.start(ENCRYPTION_KEY=base64.b64encode(b"short").decode())
    status, body, _ = app.call("POST", "/api/notes", {"text": "x"})
    assert (status, body) == (
        503,
        {"error": "ENCRYPTION_KEY is not usable: the key is 5 bytes, not 32"},
    )
    app.start(ENCRYPTION_KEY=new_key())
    assert app.call("POST", "/api/notes", {"text": 42})[0] == 400


def reencrypt(state_dir: Path) -> tuple[int, dict[str, Any]]:
    """The CLI, run as the hosts run it (their /usr/bin/python3 and app.py)."""
    proc = subprocess.run(
        [HOST_PYTHON, str(APP_SOURCE), "reencrypt", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    return proc.returncode, json.loads(lines[0])


def test_reencrypt_moves_every_note_to_the_current_key(app: App) -> None:
    old, new = new_key(), new_key()
    app.start(ENCRYPTION_KEY=old)
    notes = {write_note(app, f"note {i}"): f"note {i}" for i in range(3)}
    app.start(ENCRYPTION_KEY=new, ENCRYPTION_KEY_PREVIOUS=old)
    notes[write_note(app, "already new")] = "already new"

    code, report = reencrypt(app.state_dir)
    assert code == 0
    assert report == {
        "reencrypted": 3, "current": 1, "failed": 0, "key": fingerprint(new), "failed_ids": [],
    }  # fmt: skip
    for note in notes:
        path = app.state_dir / "notes" / f"{note}.json"
        assert json.loads(path.read_text())["key"] == fingerprint(new)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in (app.state_dir / "notes").iterdir() if p.name.startswith(".")]

    app.start(ENCRYPTION_KEY=new)  # the old key retired: every note still opens
    assert {n: read_note(app, n) for n in notes} == {
        n: (200, {"text": text, "key": "current"}) for n, text in notes.items()
    }
    assert reencrypt(app.state_dir) == (0, {**report, "reencrypted": 0, "current": 4})


def test_reencrypt_reports_notes_no_key_opens_and_leaves_them(app: App) -> None:
    lost, old, new = new_key(), new_key(), new_key()
    app.start(ENCRYPTION_KEY=lost)
    orphan = write_note(app, "under a lost key")
    app.start(ENCRYPTION_KEY=old)
    kept = write_note(app, "under the old key")
    (app.state_dir / "notes" / "garbled.json").write_text("{not json")
    orphan_path = app.state_dir / "notes" / f"{orphan}.json"
    before = orphan_path.read_bytes()
    app.stop()
    (app.state_dir / ".env").write_text(
        render_env({"ENCRYPTION_KEY": new, "ENCRYPTION_KEY_PREVIOUS": old})
    )

    code, report = reencrypt(app.state_dir)
    assert code == 1
    assert report == {
        "reencrypted": 1, "current": 0, "failed": 2, "key": fingerprint(new),
        "failed_ids": sorted(["garbled", orphan]),
    }  # fmt: skip
    assert orphan_path.read_bytes() == before
    record = json.loads((app.state_dir / "notes" / f"{kept}.json").read_text())
    assert record["key"] == fingerprint(new)
    for secret in (lost, old, new):
        assert secret not in json.dumps(report)


@pytest.mark.parametrize(
    ("env", "error"),
    [({}, "ENCRYPTION_KEY is not set in "),
     ({"ENCRYPTION_KEY": "bm90IDMyIGJ5dGVz"}, "is not usable: the key is 12 bytes, not 32")],
)  # fmt: skip
def test_reencrypt_without_a_usable_key_fails(
    tmp_path: Path, env: dict[str, str], error: str
) -> None:
    (tmp_path / ".env").write_text(render_env(env))
    code, report = reencrypt(tmp_path)
    assert code == 1
    assert report["key"] is None and error in report["error"]


def test_no_answer_holds_a_secret_or_a_fingerprint(app: App) -> None:
    env = {"JWT_SECRET": new_secret(), "NEXTAUTH_SECRET": new_secret(), "ENCRYPTION_KEY": new_key()}
    env["JWT_SECRET_PREVIOUS"] = new_secret()
    app.start(**env)
    token = login(app)
    note = write_note(app, "n")
    answers = [
        app.call("GET", "/health"),
        app.call("GET", "/api/version"),
        app.call("GET", "/"),
        app.call("POST", "/api/login", {"user": "x"}),
        app.call("GET", "/api/me", headers={"Authorization": f"Bearer {token}"}),
        app.call("GET", "/api/me", headers={"Authorization": "Bearer x.y.z"}),
        app.call("POST", "/api/session", {"user": "x"}),
        app.call("GET", f"/api/notes/{note}"),
    ]
    text = json.dumps([body for _, body, _ in answers])
    for value in env.values():
        assert value not in text and fingerprint(value) not in text
    assert "sha256:" not in text
    assert answers[0][:2] == (200, {"status": "ok", "version": "unknown", "release": "sampleapp"})


def test_maintenance_answers_503_to_posts_too(app: App) -> None:
    app.start(JWT_SECRET=new_secret())
    (app.state_dir / "maintenance").touch()
    assert app.call("POST", "/api/login", {"user": "ada"})[0] == 503


def test_an_unreadable_env_file_stops_the_app_from_starting(tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()  # reading it fails (IsADirectoryError)
    proc = subprocess.run(
        [HOST_PYTHON, str(APP_SOURCE), "--state-dir", str(tmp_path), "--port", "1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and f"cannot read {tmp_path / '.env'}" in proc.stderr


# ------------------------------------------------------------------ the lab host's .env


@pytest.fixture
def lab_host(tmp_path: Path) -> AppHost:
    """An AppHost that is never started: only its files are used."""
    return AppHost("app9", "127.0.10.250", tmp_path / "app9", SshKeyPair(tmp_path / "ssh"))


def test_a_host_is_seeded_once_and_reset_restores_the_seed(lab_host: AppHost) -> None:
    assert lab_host.seed_env() is True
    env_file = lab_host.shared_dir / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    seeded = lab_host.read_env()
    assert sorted(seeded) == ["ENCRYPTION_KEY", "JWT_SECRET", "NEXTAUTH_SECRET"]
    assert len(base64.b64decode(seeded["ENCRYPTION_KEY"], validate=True)) == 32
    assert len(seeded["JWT_SECRET"]) == len(seeded["NEXTAUTH_SECRET"]) == 64
    assert seeded["JWT_SECRET"] != seeded["NEXTAUTH_SECRET"]
    assert sampleapp.read_env(lab_host.shared_dir) == seeded  # what the app reads

    assert lab_host.seed_env() is False and lab_host.read_env() == seeded  # never overwritten
    rotated = {**seeded, "JWT_SECRET": new_secret(), "JWT_SECRET_PREVIOUS": seeded["JWT_SECRET"]}
    lab_host.write_env(rotated)
    assert lab_host.read_env() == rotated
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert [p.name for p in lab_host.shared_dir.iterdir() if p.name.startswith(".env")] == [".env"]

    assert lab_host.restore_env() is True and lab_host.read_env() == seeded
    assert lab_host.restore_env() is False
    env_file.unlink()
    assert lab_host.restore_env() is True and lab_host.read_env() == seeded


def test_a_host_keeps_the_env_it_finds(lab_host: AppHost, tmp_path: Path) -> None:
    """The sandbox's data survives down/up: an existing .env is what the host keeps."""
    lab_host.shared_dir.mkdir(parents=True)
    kept = {"JWT_SECRET": new_secret()}
    (lab_host.shared_dir / ".env").write_text(render_env(kept))
    again = AppHost("app9", "127.0.10.250", tmp_path / "app9", SshKeyPair(tmp_path / "ssh"))
    assert again.seed_env() is False and again.read_env() == kept
    again.write_env({"JWT_SECRET": new_secret()})
    assert again.restore_env() is True and again.read_env() == kept


def test_seed_values_are_fresh_each_time() -> None:
    first, second = seed_env_values(), seed_env_values()
    assert all(first[k] != second[k] for k in first)


def test_reset_restarts_an_app_that_may_hold_other_secrets(
    lab_host: AppHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judged without processes: the app "runs" as the pid in its pid file."""
    lab_host.seed_env()
    lab_host.app_pidfile.write_text("4242\n")
    monkeypatch.setattr(AppHost, "app_pid", property(lambda self: 4242))
    holds: Callable[[], bool] = lab_host._app_holds_seeded_env
    older = lab_host.app_pidfile.stat().st_mtime_ns - 10**9
    os.utime(lab_host.env_file, ns=(older, older))
    assert holds()  # started after .env was written
    lab_host.write_env({"JWT_SECRET": new_secret()})
    assert not holds()  # .env changed after it started
    lab_host._seeded_env_pid = 4242
    assert holds()  # the process the last reset left, with the seeded values


# ------------------------------------------------------------------ jwt_probe against the app


@pytest.fixture(scope="module")
def jwt_probe() -> Any:
    return load_library("jwt_probe")


def probe_params(url: str, /, **extra: Any) -> dict[str, Any]:
    params = {
        "url": url, "secret": None, "token": None, "sub": "opsbook-probe", "ttl_s": 300,
        "cookie": None, "expect_status": [200], "timeout_s": 5.0, "validate_certs": True,
        "fail_on_mismatch": True,
    }  # fmt: skip
    params.update(extra)
    return params


def test_probe_tokens_are_the_ones_the_app_accepts(app: App, jwt_probe: Any) -> None:
    jwt_secret, nextauth, old = new_secret(), new_secret(), new_secret()
    app.start(JWT_SECRET=jwt_secret, JWT_SECRET_PREVIOUS=old, NEXTAUTH_SECRET=nextauth)
    result = jwt_probe.execute(probe_params(f"{app.url}/api/me", secret=jwt_secret), False)
    assert result["ok"] and result["status"] == 200 and "failed" not in result
    assert result["json"] == {"sub": "opsbook-probe", "key": "current"}
    assert result["sent_as"] == "bearer" and result["minted"] is True
    assert result["secret_fingerprint"] == fingerprint(jwt_secret)
    assert result["token_fingerprint"].startswith("sha256:") and result["elapsed_ms"] >= 0

    previous = jwt_probe.execute(probe_params(f"{app.url}/api/me", secret=old, sub="u"), True)
    assert previous["json"] == {"sub": "u", "key": "previous"}  # check mode sends too

    session = probe_params(f"{app.url}/api/session", secret=nextauth, cookie="session")
    assert jwt_probe.execute(session, False)["json"]["key"] == "current"

    token = login(app)
    given = jwt_probe.execute(probe_params(f"{app.url}/api/me", token=token), False)
    assert given["ok"] and given["minted"] is False and given["secret_fingerprint"] is None
    assert given["token_fingerprint"] == fingerprint(token)
    assert (
        jwt_probe.execute(probe_params(f"{app.url}/api/me", token=token), False)[
            "token_fingerprint"
        ]
        == given["token_fingerprint"]
    )

    refused = jwt_probe.execute(probe_params(f"{app.url}/api/me", secret=nextauth), False)
    assert refused["failed"] and not refused["ok"] and refused["status"] == 401
    assert refused["msg"] == (
        f"GET {app.url}/api/me (bearer token {refused['token_fingerprint']}): status 401, "
        "expected 200"
    )
    expected_401 = probe_params(f"{app.url}/api/me", secret=nextauth, expect_status=[401])
    assert jwt_probe.execute(expected_401, False)["ok"]
    lenient = probe_params(f"{app.url}/api/me", secret=nextauth, fail_on_mismatch=False)
    assert "failed" not in jwt_probe.execute(lenient, False)
    for outcome in (result, previous, given, refused):
        shown = json.dumps(outcome)
        assert jwt_secret not in shown and old not in shown and token not in shown
        assert nextauth not in shown


def test_probe_tokens_expire_after_ttl(jwt_probe: Any) -> None:
    secret = new_secret()
    token = jwt_probe.mint(secret, "who", 60, now=1000)
    claims, _ = sampleapp.verify_token(token, [("current", secret)], now=1059)
    assert claims == {"sub": "who", "iat": 1000, "exp": 1060}
    with pytest.raises(sampleapp.TokenError, match="expired"):
        sampleapp.verify_token(token, [("current", secret)], now=1060)


@pytest.mark.parametrize(
    ("extra", "error"),
    [({"secret": "x" * 31}, "secret is 31 characters; an HS256 secret needs at least 32"),
     ({}, "give exactly one of secret (to mint a token) and token (to send one)"),
     ({"secret": "s" * 40, "token": "a.b.c"}, "give exactly one of secret"),
     ({"token": "not a token"}, "token is not a compact JWT"),
     ({"secret": "s" * 40, "ttl_s": 0}, "ttl_s must be 1 to 86400, got 0"),
     ({"secret": "s" * 40, "sub": ""}, "sub must not be empty"),
     ({"secret": "s" * 40, "cookie": "a b"}, "cookie must be a cookie name"),
     ({"secret": "s" * 40, "url": "ftp://user:pw@x/"}, "url must be an http:// or https:// URL"),
     ({"secret": "s" * 40, "expect_status": []}, "expect_status must list at least one"),
     ({"secret": "s" * 40, "timeout_s": 0}, "timeout_s must be > 0")],
)  # fmt: skip
def test_probe_refuses_bad_input_sending_nothing(
    jwt_probe: Any, extra: dict[str, Any], error: str
) -> None:
    result = jwt_probe.execute(probe_params("http://127.0.0.1:9/x", **extra), False)
    assert sorted(result) == ["changed", "failed", "msg"]  # no request was made
    assert result["failed"] and result["msg"].startswith("jwt_probe: invalid input: ")
    assert error in result["msg"] and result["msg"].endswith("; nothing was sent")
    assert "pw@" not in result["msg"] and "x" * 31 not in result["msg"]


def test_probe_without_an_answer_says_why(jwt_probe: Any) -> None:
    result = jwt_probe.execute(probe_params("http://127.0.0.1:9/api/me", secret="s" * 40), False)
    assert result["failed"] and result["status"] is None and result["elapsed_ms"] is None
    assert "no answer (connection refused), expected status 200" in result["msg"]


def test_probe_does_not_follow_redirects_and_scrubs_an_echoed_token(jwt_probe: Any) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    def get(url: str, headers: dict[str, str], timeout_s: float, verify: bool) -> tuple[int, bytes]:
        seen.append((url, headers))
        token = headers["Cookie"].split("=", 1)[1]
        return 302, json.dumps({"echo": f"got {token}"}).encode()

    params = probe_params("http://u:pw@app.example/api/session", secret="s" * 40, cookie="sid")
    result = jwt_probe.probe(params, get=get)
    assert result["status"] == 302 and result["failed"]
    assert result["json"] == {"echo": "got <token>"}
    assert result["url"] == "http://app.example/api/session" and "pw" not in result["msg"]
    assert result["sent_as"] == "cookie:sid" and "Authorization" not in seen[0][1]
