# Copyright: opsbook contributors
# Apache-2.0
"""Shared PostgreSQL connection handling for opsbook modules.

Every opsbook module that talks to Postgres uses the same three connection
options (see ``pg_connection_argument_spec``) and the same ``connect`` helper,
so that:

* the DSN is a ``no_log`` parameter everywhere, and the password it carries is
  registered with ``AnsibleModule.no_log_values`` so Ansible masks it in any
  output, even in an error message psycopg builds;
* every error message we build ourselves goes through ``scrub_secrets`` and
  never contains the password;
* connections identify themselves (``application_name``, default ``opsbook``)
  in ``pg_stat_activity``;
* connections are always closed, including on error (``pg_session``).

Modules import it as ``ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg``
(the collection opsbook.runbooks).
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

try:
    import psycopg

    # sql and make_conninfo: re-exported, the Postgres modules import them from here
    from psycopg import sql  # pylint: disable=unused-import
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # pylint: disable=unused-import

    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR: str | None = None
except ImportError:  # pragma: no cover - exercised only where psycopg is missing
    psycopg = None  # type: ignore[assignment]
    sql = None  # type: ignore[assignment]
    conninfo_to_dict = None  # type: ignore[assignment]
    make_conninfo = None  # type: ignore[assignment]
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()

REDACTED = "********"
DEFAULT_APPLICATION_NAME = "opsbook"
DEFAULT_CONNECT_TIMEOUT = 10
CLIENT_CHECK_INTERVAL = "2s"

# postgresql://user:password@host/db  (also postgres://)
_URI_USERINFO_RE = re.compile(r"(?P<prefix>postgres(?:ql)?://[^:/?#@\s]*:)(?P<pw>[^@\s/?#]*)(?=@)")
# ...?password=secret&...  in a URI query string
_URI_QUERY_RE = re.compile(r"(?P<prefix>[?&]password=)(?P<pw>[^&#\s]*)", re.IGNORECASE)
# password=secret, password='se cret' or password=se\ cret  in a key/value conninfo string
_KV_RE = re.compile(
    r"(?P<prefix>(?:^|\s)password\s*=\s*)"
    r"(?P<pw>'(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)(?:[^\s\\]|\\.)*)",
    re.IGNORECASE,
)


def require_psycopg(module: Any) -> None:
    """Fail the module run, saying what to install, when psycopg 3 is missing."""
    if not HAS_PSYCOPG:
        from ansible.module_utils.basic import missing_required_lib

        module.fail_json(
            msg=missing_required_lib("psycopg (psycopg 3)"), exception=PSYCOPG_IMPORT_ERROR
        )


def pg_connection_argument_spec(**options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Argument spec of the connection options shared by every opsbook Postgres module,
    followed by the module's own ``options``."""
    return {
        "dsn": {"type": "str", "required": True, "no_log": True},
        "connect_timeout": {"type": "int", "default": DEFAULT_CONNECT_TIMEOUT},
        "application_name": {"type": "str", "default": DEFAULT_APPLICATION_NAME},
        **options,
    }


def pg_module(
    name: str,
    argument_spec: dict[str, dict[str, Any]],
    validate: Callable[[dict[str, Any]], list[str]] | None = None,
    unchanged: str = "",
    fail_fields: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    **rules: Any,
) -> Any:
    """The opening every opsbook Postgres module's ``main()`` shares; returns the AnsibleModule.

    Builds it (check mode supported; ``rules`` are AnsibleModule's own ``required_if``,
    ``mutually_exclusive``, ``required_together``, ``required_one_of``, ``required_by``),
    fails when psycopg 3 is missing, registers the DSN's password so that Ansible masks it
    in all output, then fails on the input errors ``validate(params)`` finds (the rules the
    argument spec cannot say) as ``<name>: invalid input: <errors>[; <unchanged>]``, with
    ``fail_fields(params)`` in the result.
    """
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **rules)
    require_psycopg(module)
    register_dsn_secrets(module, module.params["dsn"])
    errors = validate(module.params) if validate else []
    if errors:
        what = [f"{name}: invalid input: " + "; ".join(errors)] + ([unchanged] if unchanged else [])
        module.fail_json(msg="; ".join(what), **(fail_fields(module.params) if fail_fields else {}))
    return module


def connect_params(params: dict[str, Any], dsn: str | None = None, **options: Any) -> Any:
    """``connect`` with a module's shared connection options (``params``: its dsn - or
    ``dsn`` instead -, connect_timeout, application_name) and ``options`` (autocommit, ...)."""
    return connect(
        params["dsn"] if dsn is None else dsn,
        connect_timeout=params["connect_timeout"],
        application_name=params["application_name"],
        **options,
    )


def validate_connection_params(params: dict[str, Any]) -> list[str]:
    """Return input errors of the shared connection options (empty list when valid)."""
    errors = []
    if not (params.get("dsn") or "").strip():
        errors.append("dsn must not be empty")
    timeout = params.get("connect_timeout")
    if timeout is not None and timeout < 1:
        errors.append(f"connect_timeout must be >= 1 second, got {timeout}")
    return errors


def redact_dsn(dsn: str) -> str:
    """Return the DSN with its password replaced by ``********``.

    Handles URIs (``postgresql://user:pw@host/db``, ``?password=pw``) and key/value
    conninfo strings (``host=h password=pw`` and ``password='p w'``).
    """
    if not dsn:
        return dsn
    out = _URI_USERINFO_RE.sub(lambda m: m.group("prefix") + REDACTED, dsn)
    out = _URI_QUERY_RE.sub(lambda m: m.group("prefix") + REDACTED, out)
    return _KV_RE.sub(lambda m: m.group("prefix") + REDACTED, out)


def dsn_passwords(dsn: str) -> list[str]:
    """Every password-looking value in the DSN, as written and as libpq decodes it."""
    found: list[str] = []
    for regex in (_URI_USERINFO_RE, _URI_QUERY_RE, _KV_RE):
        for match in regex.finditer(dsn or ""):
            value = match.group("pw")
            if value:
                found.append(value)
                if len(value) > 1 and value[0] == value[-1] == "'":
                    found.append(value[1:-1].replace("\\'", "'").replace("\\\\", "\\"))
    if HAS_PSYCOPG and dsn:
        try:
            decoded = conninfo_to_dict(dsn).get("password")
        except Exception:  # malformed DSN: the regexes above are all we have
            decoded = None
        if decoded:
            found.append(str(decoded))
    # longest first, so that scrubbing never leaves the tail of a longer secret
    return sorted({v for v in found if v}, key=len, reverse=True)


def dsn_settings(dsn: str) -> dict[str, str]:
    """The connection settings a DSN gives, as libpq reads them (no defaults filled in).

    libpq's own parser (``psycopg.conninfo.conninfo_to_dict``) where psycopg is installed,
    as on the controller; without psycopg, or for a DSN libpq refuses (the connection will
    say why), ``_parse_dsn`` below reads URIs and key/value strings the same way.
    """
    if HAS_PSYCOPG and dsn:
        with suppress(Exception):
            parsed = conninfo_to_dict(dsn)
            return {key: str(value) for key, value in parsed.items() if value is not None}
    return _parse_dsn(dsn)


def dsn_database(dsn: str) -> str:
    """The database a DSN names ("" when none): ``dbname`` (in a URI, ``?dbname=`` wins over
    the path), else - as libpq connects - the database named like the user."""
    settings = dsn_settings(dsn)
    return settings.get("dbname") or settings.get("user") or ""


# key=value or key='quoted \' value' (backslash escapes in both)
_KV_PAIR_RE = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)(?:[^\s\\]|\\.)*)")


def _parse_dsn(dsn: str) -> dict[str, str]:
    """``dsn_settings`` without libpq: URIs (percent-decoded; query parameters win over the
    path, as in libpq) and key/value strings (quotes and backslash escapes undone)."""
    from urllib.parse import parse_qs, unquote, urlsplit  # needed only without libpq

    text = (dsn or "").strip()
    if re.match(r"postgres(?:ql)?://", text):
        parts = urlsplit(text)
        settings = {
            "user": unquote(parts.username or ""),
            "password": unquote(parts.password or ""),
            "dbname": unquote(parts.path.lstrip("/")),
        }
        settings.update((key, values[-1]) for key, values in parse_qs(parts.query).items())
        return {key: value for key, value in settings.items() if value}
    return {
        key: re.sub(r"\\(.)", r"\1", value[1:-1] if value.startswith("'") else value)
        for key, value in _KV_PAIR_RE.findall(text)
    }


# key=value values written without quotes (anything else is quoted, as libpq reads it)
_KV_PLAIN_VALUE_RE = re.compile(r"[A-Za-z0-9_.:/@+,%~-]+")


def dsn_with_credentials(dsn: str, password: str, user: str | None = None) -> str:
    """The same DSN with its password (and, when ``user`` is given, its user) replaced, in
    the form it was written: a URI stays a URI (percent-encoded; hosts, port, database and
    query parameters such as ``sslmode`` kept as written), a key/value string stays one (libpq
    quoting; every other pair kept as written). A password or user the DSN carries is
    replaced where it is (a URI's user info and its ``?password=``/``?user=`` parameter, which
    libpq prefers); one it does not carry is added (to a URI's user info).

    Raises ``ValueError`` for an empty password or user, or one holding a NUL character (libpq
    cannot carry either). The result holds a secret: never log it.
    """
    wanted = {"user": user, "password": password} if user is not None else {"password": password}
    for key, value in wanted.items():
        if not isinstance(value, str) or value == "" or "\x00" in value:
            raise ValueError(f"{key} must be a non-empty string without NUL characters")
    text = dsn or ""
    scheme = re.match(r"\s*postgres(?:ql)?://", text)
    if scheme:
        return _uri_with_credentials(text[: scheme.end()], text[scheme.end() :], wanted)
    return _kv_with_credentials(text, wanted)


def _uri_with_credentials(scheme: str, rest: str, wanted: dict[str, str]) -> str:
    """``dsn_with_credentials`` for ``scheme`` + ``rest`` (a URI), split as libpq splits it:
    the user info ends at the first ``@`` before any ``/``; query parameters are ``&``-separated
    ``key=value`` pairs (percent-encoded)."""
    from urllib.parse import quote, unquote  # needed only for URIs

    userinfo: str | None = None
    if "@" in rest.split("/", 1)[0]:
        userinfo, rest = rest.split("@", 1)
    base, mark, query = rest.partition("?")
    in_query: set[str] = set()
    params = []
    for param in query.split("&") if mark else []:
        key, equals, _unused = param.partition("=")
        name = unquote(key)
        if equals and name in wanted:
            param = f"{key}={quote(wanted[name], safe='')}"
            in_query.add(name)
        params.append(param)
    old_user, colon, _unused = (userinfo or "").partition(":")
    user_part = old_user
    if "user" in wanted and (old_user or "user" not in in_query):
        user_part = quote(wanted["user"], safe="")
    password_part = ""
    if colon or "password" not in in_query:
        password_part = ":" + quote(wanted["password"], safe="")
    if userinfo is not None or user_part or password_part:
        scheme += f"{user_part}{password_part}@"
    return scheme + base + ("?" + "&".join(params) if mark else "")


def _kv_with_credentials(text: str, wanted: dict[str, str]) -> str:
    """``dsn_with_credentials`` for a key/value DSN."""

    def quoted(value: str) -> str:
        if _KV_PLAIN_VALUE_RE.fullmatch(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    placed: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in wanted:
            return match.group(0)
        placed.add(key)
        return f"{key}={quoted(wanted[key])}"

    out = _KV_PAIR_RE.sub(replace, text)
    added = [f"{key}={quoted(value)}" for key, value in wanted.items() if key not in placed]
    return " ".join(part for part in (out.strip(), *added) if part) if added else out


def scrub_secrets(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """Replace every occurrence of each secret in ``text`` by ``********``."""
    out = str(text)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        out = out.replace(secret, REDACTED)
    return out


def scrub_data(value: Any, secrets: list[str] | tuple[str, ...]) -> Any:
    """``value`` (a module result: dicts, lists, strings) with every secret replaced, as
    AnsibleModule's no_log values are - for results built outside a module process."""
    if isinstance(value, str):
        return scrub_secrets(value, secrets)
    if isinstance(value, dict):
        return {key: scrub_data(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(item, secrets) for item in value]
    return value


def safe_error(exc: BaseException, dsn: str) -> str:
    """A one-line description of ``exc`` that never contains the DSN or its password."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    text = "; ".join(line for line in lines if line) or exc.__class__.__name__
    secrets = [dsn, *dsn_passwords(dsn)] if dsn else []
    return redact_dsn(scrub_secrets(text, secrets))


class PgConnectError(Exception):
    """Connecting failed; ``str()`` is already free of the password."""


def connect(
    dsn: str,
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
    application_name: str = DEFAULT_APPLICATION_NAME,
    read_only: bool = False,
    autocommit: bool = False,
) -> Any:
    """Open a psycopg 3 connection, raising ``PgConnectError`` with a password-free message.

    ``read_only`` makes every transaction psycopg starts ``READ ONLY`` (works on
    managed databases and behind PgBouncer: no startup options are sent).
    """
    if not HAS_PSYCOPG:
        raise PgConnectError("psycopg (psycopg 3) is not installed for this Python interpreter")
    try:
        conn = psycopg.connect(
            dsn,
            connect_timeout=connect_timeout,
            application_name=application_name,
            autocommit=autocommit,
        )
    except Exception as exc:  # psycopg.Error, and ProgrammingError for a malformed DSN
        raise PgConnectError(safe_error(exc, dsn)) from None
    watch_the_client(conn)
    if read_only:
        conn.read_only = True
    return conn


def watch_the_client(conn: Any, interval: str = CLIENT_CHECK_INTERVAL) -> None:
    """Ask the server (PostgreSQL 14+) to check every ``interval`` during a long statement
    that this client is still there, and to cancel the statement when it is not: a module
    SIGKILLed mid-statement (a migration, a count, an ANALYZE) then releases its locks,
    advisory lock included, within seconds instead of when the statement would have ended.
    Best effort: an older server, or a pooler that refuses it, is left as it is."""
    try:
        if conn.info.server_version < 140000:
            return
        conn.execute(f"SET client_connection_check_interval = '{interval}'")
        if not conn.autocommit:
            conn.commit()
    except Exception:
        with suppress(Exception):
            if not conn.autocommit:
                conn.rollback()


def connect_with_retries(
    dsn: str,
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
    application_name: str = DEFAULT_APPLICATION_NAME,
    read_only: bool = False,
    retries: int = 0,
    retry_delay_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Any, int]:
    """``connect`` with up to ``retries`` more attempts; returns (connection, attempts)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return connect(dsn, connect_timeout, application_name, read_only=read_only), attempt
        except PgConnectError:
            if attempt > retries:
                raise
            sleep(retry_delay_s)


def close_quietly(conn: Any) -> None:
    """Roll back whatever is open and close the connection; never raises."""
    if conn is None:
        return
    try:
        if not conn.closed and not conn.autocommit:
            conn.rollback()
    except Exception:
        pass
    with suppress(Exception):
        conn.close()


def register_dsn_secrets(module: Any, dsn: str) -> None:
    """Tell Ansible to mask the DSN's password anywhere in this module's output."""
    for secret in dsn_passwords(dsn):
        module.no_log_values.add(secret)


@contextmanager
def pg_session(
    module: Any, read_only: bool = True, retries: int = 0, retry_delay_s: float = 1.0
) -> Iterator[tuple[Any, int]]:
    """Connect with the module's shared connection options; always close.

    Yields ``(connection, attempts)``. Raises ``PgConnectError`` (password-free)
    when the connection cannot be made.
    """
    params = module.params
    register_dsn_secrets(module, params["dsn"])
    conn, attempts = connect_with_retries(
        params["dsn"],
        connect_timeout=params["connect_timeout"],
        application_name=params["application_name"],
        read_only=read_only,
        retries=retries,
        retry_delay_s=retry_delay_s,
    )
    try:
        yield conn, attempts
    finally:
        close_quietly(conn)
