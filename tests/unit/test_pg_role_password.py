"""pg_role_password's pure parts and dsn_with_credentials (module_utils/opsbook_pg.py and its
filter): every DSN shape, round trips through libpq's own parser, the module's input rules,
its reading of a refused login, and that no value reaches a message. The database half is
tests/integration/test_pg_role_password.py."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from psycopg.conninfo import conninfo_to_dict

from tests.loaders import load_library, load_module_utils, load_plugin

opsbook_pg = load_module_utils("opsbook_pg")
prp = load_library("pg_role_password")
flt = load_plugin("filter_plugins", "opsbook_filters")

CANARY = "canary-9f2c7e1d-S3cr#t"
# every character that needs percent-encoding in a URI or quoting in key=value, and more
AWKWARD = "p@ss:w/o?r#d&x=y% 'q' \"dq\" back\\slash ünï €"

DSNS = [
    "postgresql://app:old@db:5432/app?sslmode=require",
    "postgres://app@db/app",
    "postgresql://db/app",
    "postgresql:///app?host=/var/run/postgresql",
    "postgresql://app:old@h1:5432,h2:5433/app?sslmode=verify-full&target_session_attrs=read-write",
    "postgresql://app@[::1]:5432/app?password=old&application_name=web",
    "postgresql://:old@db/app?user=app",
    "postgresql://db/app?user=app&password=old",
    "postgresql://app:p%40ss@db/app?connect_timeout=5",
    "host=db port=5432 user=app password=old dbname=app sslmode=require",
    "host=db dbname=app",
    "host=db password='o ld' user = app dbname=app options='-c password=x'",
    "host=db password=it\\'s user=app",
    "",
]


def expected(dsn: str, password: str, user: str | None) -> dict[str, Any]:
    want = dict(conninfo_to_dict(dsn))
    want["password"] = password
    if user is not None:
        want["user"] = user
    return want


# ------------------------------------------------------------------- dsn_with_credentials


@pytest.mark.parametrize("dsn", DSNS)
@pytest.mark.parametrize("password", ["simple", AWKWARD])
@pytest.mark.parametrize("user", [None, "app_b", "tw in@user"])
def test_dsn_with_credentials_round_trips_through_libpq(
    dsn: str, password: str, user: str | None
) -> None:
    """libpq reads the result as the same DSN, with only the password (and user) changed."""
    out = opsbook_pg.dsn_with_credentials(dsn, password, user)
    assert conninfo_to_dict(out) == expected(dsn, password, user)
    assert out.lstrip().startswith("postgres") == dsn.lstrip().startswith("postgres")


@pytest.mark.parametrize(
    ("dsn", "user", "out"),
    [
        (
            "postgresql://app:old@db:5432/app?sslmode=require",
            None,
            "postgresql://app:N%40w%2F1@db:5432/app?sslmode=require",
        ),
        ("postgres://app@db/app", "app_b", "postgres://app_b:N%40w%2F1@db/app"),
        ("postgresql://db/app", None, "postgresql://:N%40w%2F1@db/app"),
        (
            "postgresql://app@db/app?password=old&sslmode=require",
            None,
            "postgresql://app@db/app?password=N%40w%2F1&sslmode=require",
        ),
        (
            "postgresql://db/app?user=app&password=old",
            "app_b",
            "postgresql://db/app?user=app_b&password=N%40w%2F1",
        ),
        (
            "host=db user=app password=old dbname=app sslmode=require",
            "app_b",
            "host=db user=app_b password=N@w/1 dbname=app sslmode=require",
        ),
        ("host=db dbname=app", None, "host=db dbname=app password=N@w/1"),
        ("host=db  dbname=app", "u b", "host=db  dbname=app user='u b' password=N@w/1"),
    ],
)
def test_dsn_with_credentials_keeps_the_form_as_written(
    dsn: str, user: str | None, out: str
) -> None:
    assert opsbook_pg.dsn_with_credentials(dsn, "N@w/1", user) == out


@pytest.mark.parametrize(
    ("password", "written"),
    [
        ("it's", r"'it\'s'"),
        ("back\\slash", r"'back\\slash'"),
        ("two words", "'two words'"),
        ("a=b", "'a=b'"),
        ("plain-1.2_x", "plain-1.2_x"),
    ],
)
def test_key_value_passwords_are_quoted_as_libpq_reads_them(password: str, written: str) -> None:
    out = opsbook_pg.dsn_with_credentials("host=db user=app password=old", password)
    assert out == f"host=db user=app password={written}"
    assert conninfo_to_dict(out)["password"] == password


@pytest.mark.parametrize(
    ("password", "user"), [("", None), ("pw", ""), ("p\x00w", None), ("pw", "u\x00")]
)
def test_dsn_with_credentials_refuses_what_libpq_cannot_carry(
    password: str, user: str | None
) -> None:
    with pytest.raises(ValueError, match="non-empty string without NUL") as caught:
        opsbook_pg.dsn_with_credentials("host=db", password, user)
    assert "p\x00w" not in str(caught.value)


def test_the_filter_is_the_module_utils_function() -> None:
    assert "dsn_with_credentials" in flt.FilterModule().filters()
    for dsn in DSNS:
        assert flt.dsn_with_credentials(dsn, AWKWARD, "app_b") == (
            opsbook_pg.dsn_with_credentials(dsn, AWKWARD, "app_b")
        )
    assert flt.dsn_with_credentials(None, "pw") == "password=pw"


def test_the_filter_says_which_input_is_wrong_never_its_value() -> None:
    with pytest.raises(
        AnsibleFilterError, match="dsn_with_credentials: password must be"
    ) as caught:
        flt.dsn_with_credentials(f"postgresql://app:{CANARY}@db/app", "")
    assert CANARY not in str(caught.value)


# ------------------------------------------------------------------------ the module's input


def params(**overrides: Any) -> dict[str, Any]:
    values = {name: spec.get("default") for name, spec in prp.argument_spec().items()}
    values.update(overrides)
    return values


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_secret_options_are_no_log() -> None:
    spec = prp.argument_spec()
    assert spec["dsn"]["required"] is True  # the shared connection options, as documented
    assert {name for name, option in spec.items() if option.get("no_log")} == {
        "dsn",
        "password",
        "login_dsn",
    }
    assert spec["action"]["choices"] == ["set", "login", "ensure_role", "retire"]


@pytest.mark.parametrize(
    ("given", "errors"),
    [
        ({"action": "set", "dsn": "host=db", "password": "pw"}, []),
        ({"action": "set", "dsn": "host=db"}, ["action=set needs password"]),
        ({"action": "login", "dsn": "host=db", "login_dsn": "host=db", "expect": "failure"}, []),
        ({"action": "login", "dsn": "host=db"}, []),  # the dsn logs in
        (
            {"action": "login", "dsn": "host=db", "role": "a", "password": "pw"},
            ["role is not used by action=login", "password is not used by action=login"],
        ),
        ({"action": "ensure_role", "dsn": "host=db", "role": "b", "like": "a"}, []),
        (
            {"action": "ensure_role", "dsn": "host=db", "role": "a", "like": "a"},
            ["role and like name the same role: like is the other login role"],
        ),
        (
            {"action": "ensure_role", "dsn": "host=db", "role": "b"},
            ["action=ensure_role needs like"],
        ),
        ({"action": "retire", "dsn": "host=db", "role": "a", "nologin": True}, []),
        (
            {"action": "retire", "dsn": "host=db", "role": "a", "like": "b", "expect": "failure"},
            ["like is not used by action=retire", "expect is not used by action=retire"],
        ),
        (
            {"action": "set", "dsn": "host=db", "password": "pw", "nologin": True},
            ["nologin is not used by action=set"],
        ),
        ({"action": "retire", "dsn": " ", "role": "a"}, ["dsn must not be empty"]),
        ({"action": "retire", "dsn": "host=db"}, ["action=retire needs role"]),
        (
            {"action": "set", "dsn": "host=db", "password": "pw", "role": "r" * 64},
            [f"role {'r' * 64!r} is longer than 63 bytes"],
        ),
        (
            {"action": "set", "dsn": "host=db", "password": "p\x00w", "connect_timeout": 0},
            [
                "connect_timeout must be >= 1 second, got 0",
                "password must not be empty or contain a NUL character",
            ],
        ),
    ],
)
def test_validate_params(given: dict[str, Any], errors: list[str]) -> None:
    assert prp.validate_params(params(**given)) == errors


def test_invalid_input_fails_without_a_value_and_changes_nothing() -> None:
    dsn = f"postgresql://app:{CANARY}@127.0.0.1:{closed_port()}/app"
    result = prp.execute(params(action="set", dsn=dsn, password=CANARY, like="x"), False)
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"] == (
        "pg_role_password: invalid input: like is not used by action=set; nothing was changed"
    )
    assert CANARY not in repr(result)


def test_an_unreachable_admin_dsn_fails_saying_nothing_changed() -> None:
    dsn = f"postgresql://app:{CANARY}@127.0.0.1:{closed_port()}/app"
    result = prp.execute(params(action="retire", dsn=dsn, role="old", password=CANARY), False)
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"].startswith("pg_role_password: cannot connect with dsn: ")
    assert result["msg"].endswith("; nothing was changed")
    assert "Connection refused" in result["msg"]
    assert CANARY not in repr(result)


# ------------------------------------------------------------------------ refused logins

VERBOSE_REFUSAL = (
    'connection to server at "127.0.0.1", port 5432 failed: FATAL:  28P01: password '
    'authentication failed for user "app"\nLOCATION:  auth_failed, auth.c:334\n'
)


@pytest.mark.parametrize(
    ("message", "sqlstate"),
    [
        (VERBOSE_REFUSAL, "28P01"),
        # the default verbosity (no SQLSTATE): the server's English message
        (VERBOSE_REFUSAL.replace("28P01: ", ""), "28P01"),
        ('... failed: FATAL:  28000: role "app" is not permitted to log in\n', "28000"),
        ('... failed: FATAL:  3D000: database "nodb" does not exist\n', "3D000"),
        # two hosts: the first refused the TCP connection, the second the password
        (
            'connection to server at "h1", port 1 failed: Connection refused\n' + VERBOSE_REFUSAL,
            "28P01",
        ),
        ('connection to server at "h1", port 1 failed: Connection refused\n', None),
        # a server answering in German, without verbose errors: no SQLSTATE, never a guess
        ('... failed: FATAL:  Passwort-Authentifizierung für Benutzer "app" fehlgeschlagen', None),
    ],
)
def test_sqlstate_of_a_refused_login(message: str, sqlstate: str | None) -> None:
    assert prp.sqlstate_of(message) == sqlstate


def test_libpq_verbose_errors_are_available_here() -> None:
    """The SQLSTATE of a refused login comes from libpq's verbose message: on Linux the one
    libpq psycopg uses is found (else only the English message would be recognised)."""
    assert prp._set_error_verbosity() is not None


def test_a_login_to_a_closed_port_is_no_refused_password() -> None:
    login = prp.try_login(
        f"postgresql://app:{CANARY}@127.0.0.1:{closed_port()}/app", 2, "opsbook-test"
    )
    assert (login.ok, login.sqlstate, login.refused_password) == (False, None, False)
    assert login.user == "app"
    assert "Connection refused" in login.why() and CANARY not in login.why()


@pytest.mark.parametrize("expect", ["success", "failure"])
def test_login_on_a_closed_port_fails_with_the_reason(expect: str) -> None:
    dsn = f"postgresql://app:{CANARY}@127.0.0.1:{closed_port()}/app"
    result = prp.execute(params(action="login", dsn=dsn, expect=expect), False)
    assert result["failed"] is True
    assert (result["ok"], result["sqlstate"], result["current_user"]) == (False, None, None)
    assert "Connection refused" in result["msg"]
    if expect == "failure":
        assert "not because the server refused the password" in result["msg"]
        assert "no proof that the password is dead" in result["msg"]
    assert CANARY not in repr(result)


def test_why_shows_the_sqlstate_once() -> None:
    refused = prp.Login(False, "app", sqlstate="28P01", reason="FATAL: 28P01: password ...")
    assert refused.why() == "FATAL: 28P01: password ..."
    english = prp.Login(False, "app", sqlstate="28P01", reason="FATAL: password ...")
    assert english.why() == "FATAL: password ... (SQLSTATE 28P01)"


def test_secrets_of_holds_every_form_of_every_secret() -> None:
    found = prp.secrets_of(
        params(
            password="new-pw",
            dsn="postgresql://admin:adm%40pw@db/app",
            login_dsn="host=db password='lo gin'",
        )
    )
    assert {"new-pw", "adm%40pw", "adm@pw", "lo gin"} <= set(found)
