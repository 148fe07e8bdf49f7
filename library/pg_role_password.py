#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""pg_role_password: rotate a PostgreSQL login's password - set it (SCRAM), prove a login,
keep an alternating twin role, retire the old login (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_role_password
short_description: Rotate a PostgreSQL login's password - set (SCRAM), prove, alternate, retire
description:
  - The database half of a password rotation (the C(secret_rotation) role drives it); one
    O(action) a task.
  - O(action=set) gives role O(role) the password O(password). The SCRAM-SHA-256 verifier is
    computed here, on the host running the module (libpq's C(PQencryptPasswordConn), through
    psycopg), and sent as C(ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'), so the plaintext never
    reaches the server - not its log (C(log_statement)), not C(pg_stat_activity). A SCRAM
    verifier is sent even when the server's C(password_encryption) is C(md5) - PostgreSQL
    stores a verifier as it is given, and a C(md5) line of C(pg_hba.conf) then authenticates
    that role with SCRAM. The O(dsn) may be the role itself (a role may change its own
    password) or an admin (C(CREATEROLE), or superuser for a superuser's password).
    Idempotent - first a login as O(role) with O(password) is tried (on O(dsn)'s hosts, port and
    database); when it works nothing is changed.
  - O(action=login) proves a login with O(login_dsn) (default O(dsn)) and returns RV(ok),
    RV(current_user) and the server's RV(sqlstate). With O(expect=failure) the task succeeds
    only when the server refused the password (SQLSTATE C(28P01)) - a failure of another kind
    (the host down, a timeout, a missing database, a role that may not log in) fails the task
    with its reason - it is never counted as proof that a password is dead.
  - O(action=ensure_role) is the alternating-users strategy (as AWS Secrets Manager's
    alternating-users rotation) - O(role) must exist as a C(LOGIN) role with the memberships of
    O(like) (the other login role; C(GRANT like_group TO role)) and, when given, the password
    O(password). A missing role is created (C(CREATE ROLE ... LOGIN)), a missing C(LOGIN)
    attribute or membership added, the password set as by O(action=set); nothing is ever
    revoked or dropped. Needs an admin O(dsn) - C(CREATEROLE) or superuser; without it the
    task fails naming the privilege, and nothing is changed. Every change is made in one
    transaction - all of it or nothing.
  - O(action=retire) removes the old login's password (C(ALTER ROLE ... PASSWORD NULL)) so that
    it cannot log in with a password any more; with O(nologin=true) also C(ALTER ROLE ...
    NOLOGIN). Idempotent - when the O(dsn)'s role may read C(pg_authid) (a superuser), the
    stored password is checked (C(rolpassword IS NULL)); otherwise a login with O(password)
    (the retired password) must be refused (C(28P01)). Without either, the password is removed
    again and C(changed) is true, with a warning. Refused for the role the O(dsn) logs in as -
    it would lock this runbook out.
  - Nothing this module returns or says contains a password or a SCRAM verifier. The
    passwords of O(dsn) and O(login_dsn) are masked wherever Ansible prints.
version_added: "0.3.0"
author:
  - opsbook maintainers (@opsbook)
# connections, action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_pg
  - opsbook.runbooks.opsbook_controller
options:
  action:
    description:
      - C(set) the password, prove a C(login), C(ensure_role) (the alternating twin), or
        C(retire) the old login.
    type: str
    required: true
    choices: [set, login, ensure_role, retire]
  role:
    description:
      - The role whose password is set, the twin role to ensure, or the role to retire.
      - For O(action=set), default - the user of O(dsn). Required for O(action=ensure_role) and
        O(action=retire).
    type: str
  password:
    description:
      - The password to set (O(action=set), required; O(action=ensure_role), optional).
      - For O(action=retire), the password being retired - the proof that it is refused, when
        the O(dsn)'s role may not read C(pg_authid).
      - Secret (C(no_log)).
    type: str
  login_dsn:
    description:
      - O(action=login) - the DSN to log in with (user, password, hosts, database, C(sslmode),
        ...); default O(dsn). The C(dsn_with_credentials) filter makes one from another DSN and
        a password.
      - Secret (C(no_log)).
    type: str
  expect:
    description:
      - O(action=login) - C(success) fails the task unless the login works; C(failure) fails it
        unless the server refused the password (SQLSTATE C(28P01)).
    type: str
    choices: [success, failure]
    default: success
  like:
    description:
      - O(action=ensure_role) - the other login role, whose memberships O(role) gets.
    type: str
  nologin:
    description:
      - O(action=retire) - also take the C(LOGIN) attribute away (C(ALTER ROLE ... NOLOGIN)), so
        that no other way of authenticating (a C(trust) or certificate line of C(pg_hba.conf))
        logs it in either.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Connects, reads the roles, tries the logins and runs the statements in a
      transaction that is rolled back (so that a missing privilege shows), and reports what it
      would change (C(changed)); changes nothing.
  diff_mode:
    support: full
    description: The role before and after - existence, C(LOGIN), memberships, and whether a
      password is set or is the one given (never a value).
  platform:
    support: full
    platforms: posix
    description: Runs where the database is reachable (group C(dbadmin) in opsbook, by default
      the controller's local connection, where it runs in the task's worker process).
notes:
  - A login is proven with its own connection (application name O(application_name)), one at a
    time, each given O(connect_timeout) seconds per host of the DSN.
  - The server's SQLSTATE of a refused login is read from libpq's verbose error message
    (psycopg does not expose it for connection failures). Where libpq's verbosity cannot be
    set (no single libpq mapped in the process, outside Linux), the server's English message
    C(password authentication failed) is recognised instead; a server answering in another
    language (C(lc_messages)) then gives no SQLSTATE and O(expect=failure) fails, never
    succeeds wrongly.
  - A role without C(LOGIN) cannot prove a password by logging in - O(action=set) on one sets
    the password every time (C(changed=true)).
  - O(action=ensure_role) copies memberships only - not C(ADMIN OPTION), not the privileges
    granted to O(like) directly, not the objects it owns, not its settings (C(ALTER ROLE ...
    SET)). Grant the application's privileges to a group role both logins are members of. On
    PostgreSQL 16 and later, a C(CREATEROLE) admin that is not a superuser needs C(ADMIN OPTION)
    on each group role to grant it.
  - Sessions already open under a retired role stay open - PostgreSQL checks a password at
    login only. End them with C(pg_terminate_backend) when they must go.
  - Rotating the password of the role that O(dsn) itself uses changes nothing for the open
    session; use the new password (C(dsn_with_credentials)) for the next connection.
seealso:
  - name: ALTER ROLE
    description: PostgreSQL documentation - passwords, and the pre-encrypted verifiers sent here.
    link: https://www.postgresql.org/docs/current/sql-alterrole.html
  - name: Password authentication
    description: SCRAM-SHA-256, C(password_encryption), and how C(md5) lines use SCRAM.
    link: https://www.postgresql.org/docs/current/auth-password.html
  - name: Alternating users rotation
    description: AWS Secrets Manager's alternating-users strategy, which O(action=ensure_role)
      follows.
    link: https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotating-secrets_strategies.html
"""

EXAMPLES = r"""
# Single user: the app's role gets a new password, proven, the old one proven dead.
- name: Set the new password of the app's role (it may change its own)
  pg_role_password:
    action: set
    dsn: "{{ database_url }}"
    password: "{{ pending_db_password }}"
  no_log: true

- name: Prove the new password logs in
  pg_role_password:
    action: login
    login_dsn: "{{ database_url | dsn_with_credentials(pending_db_password) }}"
  no_log: true
  register: new_login  # new_login.current_user

- name: Prove the old password is refused (the server says 28P01, not just "unreachable")
  pg_role_password:
    action: login
    login_dsn: "{{ database_url }}"
    expect: failure
  no_log: true

# Alternating users: app_a is current; app_b gets app_a's memberships and the new password.
- name: Ensure the twin login role with the new password
  pg_role_password:
    action: ensure_role
    dsn: "{{ admin_database_url }}"
    role: app_b
    like: app_a
    password: "{{ pending_db_password }}"
  no_log: true

- name: After the grace period, retire the old login
  pg_role_password:
    action: retire
    dsn: "{{ admin_database_url }}"
    role: app_a
    password: "{{ previous_db_password }}"  # proof it is refused, without superuser
    nologin: true
  no_log: true
"""

RETURN = r"""
action:
  description: The action.
  returned: always
  type: str
  sample: set
role:
  description: The role set, ensured or retired; for O(action=login), the user the login used.
  returned: always
  type: str
  sample: app
msg:
  description: One line - what was (or would be) done, or what failed and that nothing was
    changed. Never a password or a verifier.
  returned: always
  type: str
  sample: set the password of role 'app' (a SCRAM-SHA-256 verifier computed on this host)
ok:
  description: O(action=login) - whether the login worked.
  returned: action is login
  type: bool
  sample: false
current_user:
  description: O(action=login) - C(current_user) of the session, when the login worked.
  returned: action is login
  type: str
  sample: app
sqlstate:
  description: O(action=login) - the server's SQLSTATE of a refused login (C(28P01) - the
    password was refused); null when the login worked or no server answered.
  returned: action is login
  type: str
  sample: 28P01
password_changed:
  description: Whether the password was set (would be, in check mode).
  returned: action is set or ensure_role
  type: bool
  sample: true
created:
  description: O(action=ensure_role) - whether the role was created (would be).
  returned: action is ensure_role
  type: bool
  sample: true
login_enabled:
  description: O(action=ensure_role) - whether an existing role was given C(LOGIN) (would be).
  returned: action is ensure_role
  type: bool
  sample: false
granted:
  description: O(action=ensure_role) - the roles O(role) was made a member of (would be).
  returned: action is ensure_role
  type: list
  elements: str
  sample: [app_rw]
password_removed:
  description: O(action=retire) - whether the password was removed (would be).
  returned: action is retire
  type: bool
  sample: true
login_disabled:
  description: O(action=retire) - whether C(NOLOGIN) was set (would be).
  returned: action is retire
  type: bool
  sample: false
"""

import ctypes
import re
import selectors
import time
from dataclasses import dataclass
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import finish_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    HAS_PSYCOPG,
    PgConnectError,
    close_quietly,
    connect_params,
    dsn_passwords,
    dsn_settings,
    make_conninfo,
    pg_connection_argument_spec,
    pg_module,
    register_dsn_secrets,
    safe_error,
    scrub_data,
    scrub_secrets,
    sql,
    validate_connection_params,
)

if HAS_PSYCOPG:
    from psycopg import pq

AUTH_FAILED = "28P01"  # invalid_password: the server refused the password
MAX_IDENTIFIER_BYTES = 63
NOTHING_CHANGED = "nothing was changed"

# What each action needs, and the options it takes (any other one given is an input error).
# (dsn, the session that changes roles - or logs in -, is required by the shared spec)
REQUIRED = {
    "set": ("password",),
    "login": (),
    "ensure_role": ("role", "like"),
    "retire": ("role",),
}
TAKES = {
    "set": {"role", "password"},
    "login": {"login_dsn", "expect"},
    "ensure_role": {"role", "like", "password"},
    "retire": {"role", "password", "nologin"},
}
OPTIONAL = ("role", "password", "login_dsn", "like")


def argument_spec() -> dict[str, dict[str, Any]]:
    return pg_connection_argument_spec(
        action={"type": "str", "required": True, "choices": list(REQUIRED)},
        role={"type": "str"},
        password={"type": "str", "no_log": True},
        login_dsn={"type": "str", "no_log": True},
        expect={"type": "str", "choices": ["success", "failure"], "default": "success"},
        like={"type": "str"},
        nologin={"type": "bool", "default": False},
    )


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors (empty when valid); no I/O, no value in any message."""
    action = params["action"]
    errors = [f"action={action} needs {name}" for name in REQUIRED[action] if not params.get(name)]
    unused = [name for name in OPTIONAL if params.get(name) is not None]
    unused += ["nologin"] if params.get("nologin") else []
    unused += ["expect"] if params.get("expect", "success") != "success" else []
    errors += [
        f"{name} is not used by action={action}" for name in unused if name not in TAKES[action]
    ]
    errors += validate_connection_params(params)
    for name in ("role", "like"):
        value = params.get(name)
        if value is not None and (not value.strip() or "\x00" in value):
            errors.append(f"{name} must be a role name (not empty, no NUL character)")
        elif value is not None and len(value.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
            errors.append(f"{name} {value!r} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    if params.get("role") and params.get("role") == params.get("like"):
        errors.append("role and like name the same role: like is the other login role")
    password = params.get("password")
    if password is not None and (password == "" or "\x00" in password):
        errors.append("password must not be empty or contain a NUL character")
    return errors


class Refused(Exception):
    """A failure whose message is free of secrets and says what was left unchanged."""


# ------------------------------------------------------------------------------ logins


@dataclass
class Login:
    """One login attempt: it worked (``ok``), or the server's SQLSTATE and a password-free
    reason (``sqlstate`` None when no server refused it: unreachable, timed out, ...)."""

    ok: bool
    user: str
    current_user: str | None = None
    sqlstate: str | None = None
    reason: str = ""

    @property
    def refused_password(self) -> bool:
        return self.sqlstate == AUTH_FAILED

    def why(self) -> str:
        """The reason, with the SQLSTATE when the message does not already show it."""
        if self.sqlstate and self.sqlstate not in self.reason:
            return f"{self.reason} (SQLSTATE {self.sqlstate})"
        return self.reason


_SQLSTATE_RE = re.compile(r"(?:FATAL|ERROR|PANIC):\s+([0-9A-Z]{5}):\s")
_ENGLISH_AUTH_FAILED_RE = re.compile(r"password authentication failed for user")
_LIBPQ: list[Any] = []  # [PQsetErrorVerbosity or None], looked up once


def _set_error_verbosity() -> Any:
    """libpq's ``PQsetErrorVerbosity`` of the libpq psycopg uses, else None.

    psycopg has no binding for it, and a connection failure has no SQLSTATE in psycopg (no
    result to read it from); with verbose errors, libpq writes it into the error message. The
    function is taken from the one libpq mapped in this process (psycopg's own, bundled or
    system), never from a second one.
    """
    if _LIBPQ:
        return _LIBPQ[0]
    function = None
    try:
        if pq.__impl__ == "python":
            from psycopg.pq import _pq_ctypes

            library = _pq_ctypes.pq
        else:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                paths = {
                    fields[5].strip()
                    for fields in (line.split(None, 5) for line in maps)
                    if len(fields) == 6 and fields[5].strip().rsplit("/", 1)[-1].startswith("libpq")
                }
            library = ctypes.CDLL(paths.pop()) if len(paths) == 1 else None
        if library is not None:
            function = library.PQsetErrorVerbosity
            function.argtypes = [ctypes.c_void_p, ctypes.c_int]
            function.restype = ctypes.c_int
    except (OSError, AttributeError, ImportError):
        function = None
    _LIBPQ.append(function)
    return function


PQERRORS_VERBOSE = 2


def _reason(message: str) -> str:
    """libpq's error message in one line, without its LOCATION lines."""
    lines = [" ".join(line.split()) for line in message.splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith("LOCATION:"))


def try_login(dsn: str, connect_timeout: int, application_name: str) -> Login:
    """Log in with ``dsn`` once (libpq's asynchronous connection, so that a refusal's SQLSTATE
    can be read); ``SELECT current_user`` when it works. Never raises for a failed login."""
    user = dsn_settings(dsn).get("user", "")
    try:
        conninfo = make_conninfo(dsn, application_name=application_name)
        hosts = len(dsn_settings(conninfo).get("host", "").split(","))
    except Exception as exc:
        return Login(False, user, reason=f"the DSN is not valid: {safe_error(exc, dsn)}")
    pgconn = pq.PGconn.connect_start(conninfo.encode("utf-8"))
    try:
        verbosity = _set_error_verbosity()
        if verbosity is not None:
            verbosity(pgconn.pgconn_ptr, PQERRORS_VERBOSE)
        failed = _connect_poll(pgconn, time.monotonic() + connect_timeout * max(hosts, 1))
        user = (pgconn.user or b"").decode("utf-8", "replace") or user
        if failed is None:
            result = pgconn.exec_(b"SELECT current_user")
            if result.status != pq.ExecStatus.TUPLES_OK:
                return Login(False, user, reason="logged in, but SELECT current_user failed")
            current = (result.get_value(0, 0) or b"").decode("utf-8", "replace")
            return Login(True, user, current_user=current)
    finally:
        pgconn.finish()
    reason = safe_error(Exception(_reason(failed)), dsn)
    return Login(False, user, sqlstate=sqlstate_of(failed), reason=reason)


def sqlstate_of(message: str) -> str | None:
    """The SQLSTATE of the last server error in libpq's (verbose) connection error message;
    without one, 28P01 when the server's English message says the password was refused."""
    states = _SQLSTATE_RE.findall(message)
    if states:
        return states[-1]
    return AUTH_FAILED if _ENGLISH_AUTH_FAILED_RE.search(message) else None


def _connect_poll(pgconn: Any, deadline: float) -> str | None:
    """Drive ``PQconnectPoll`` to the end; None when connected, else libpq's message."""
    while True:
        if pgconn.status == pq.ConnStatus.BAD:
            return pgconn.error_message.decode("utf-8", "replace") or "connection failed"
        status = pgconn.connect_poll()
        if status == pq.PollingStatus.OK:
            return None
        if status == pq.PollingStatus.FAILED:
            return pgconn.error_message.decode("utf-8", "replace") or "connection failed"
        left = deadline - time.monotonic()
        reading = status == pq.PollingStatus.READING
        with selectors.DefaultSelector() as selector:
            selector.register(
                pgconn.socket, selectors.EVENT_READ if reading else selectors.EVENT_WRITE
            )
            if left <= 0 or not selector.select(left):
                return "timed out connecting (connect_timeout)"


# ------------------------------------------------------------------------ the database


class Run:
    """One run of an action that changes roles: the admin connection, the parameters, and
    the secrets its results must never show (the verifiers it computes included)."""

    def __init__(self, conn: Any, params: dict[str, Any], check_mode: bool) -> None:
        self.conn = conn
        self.params = params
        self.check_mode = check_mode
        self.secrets: list[str] = []
        self.warnings: list[str] = []

    def rows(self, query: Any, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall()

    def role(self, name: str) -> dict[str, Any] | None:
        """The role's LOGIN and superuser attributes (None when it does not exist)."""
        found = self.rows("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s", (name,))
        return {"login": found[0][0], "superuser": found[0][1]} if found else None

    def memberships(self, name: str) -> list[str]:
        """The roles ``name`` is a member of (GRANT ... TO name)."""
        found = self.rows(
            "SELECT DISTINCT g.rolname FROM pg_auth_members m "
            "JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member "
            "WHERE r.rolname = %s ORDER BY 1",
            (name,),
        )
        return [row[0] for row in found]

    def login(self, role: str, password: str) -> Login:
        """A login as ``role`` with ``password`` on the DSN's hosts, port and database."""
        dsn = make_conninfo(self.params["dsn"], user=role, password=password)
        return try_login(dsn, self.params["connect_timeout"], self.params["application_name"])

    def change(self, what: str, query: Any) -> None:
        """Run one statement of the change (in the run's transaction); a refusal says what."""
        try:
            self.conn.execute(query)
        except Exception as exc:
            reason = scrub_secrets(safe_error(exc, self.params["dsn"]), self.secrets)
            raise Refused(f"{what} failed: {reason}; {NOTHING_CHANGED}") from None

    def password_clause(self, role: str, password: str) -> Any:
        """``PASSWORD '<SCRAM-SHA-256 verifier>'``, computed here: no plaintext to the server."""
        verifier = self.conn.pgconn.encrypt_password(
            password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256"
        ).decode("ascii")
        self.secrets.append(verifier)
        return sql.SQL("PASSWORD {}").format(sql.Literal(verifier))

    def alter(self, role: str, clause: Any) -> Any:
        return sql.SQL("ALTER ROLE {} ").format(sql.Identifier(role)) + clause

    def commit(self) -> None:
        if self.check_mode:
            self.conn.rollback()
            return
        try:
            self.conn.commit()
        except Exception as exc:
            reason = scrub_secrets(safe_error(exc, self.params["dsn"]), self.secrets)
            raise Refused(f"committing failed: {reason}; {NOTHING_CHANGED}") from None


def _diff(role: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A role's state before and after, for --diff: never a value, only what it is."""
    return {"before": {"role": role, **before}, "after": {"role": role, **after}}


def _said(run: Run, doing: str, done: str) -> str:
    """The result's message: what would be done (check mode) or what was done."""
    return f"would {doing}" if run.check_mode else done


def run_set(run: Run) -> dict[str, Any]:
    params = run.params
    role = params["role"] or run.conn.info.user
    if run.role(role) is None:
        raise Refused(
            f"role {role!r} does not exist (action=ensure_role creates one); {NOTHING_CHANGED}"
        )
    result = {"changed": False, "action": "set", "role": role, "password_changed": False}
    login = run.login(role, params["password"])
    if login.ok:
        result["msg"] = f"role {role!r} already has this password (a login with it works)"
        return result
    clause = run.password_clause(role, params["password"])
    run.change(f"ALTER ROLE {role} PASSWORD", run.alter(role, clause))
    run.commit()
    result.update(changed=True, password_changed=True)
    result["diff"] = _diff(role, {"password": "another value"}, {"password": "the given value"})
    how = "SCRAM-SHA-256 verifier computed on this host; a login with the password first: "
    how += "refused" if login.refused_password else login.why()
    message = f"set the password of role {role!r} ({how})"
    result["msg"] = _said(run, message, message)
    return result


def run_ensure_role(run: Run) -> dict[str, Any]:
    params = run.params
    role, like, password = params["role"], params["like"], params["password"]
    admin = run.conn.info.user
    rights = run.rows("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    if not (rights and rights[0][0]):
        raise Refused(
            f"the dsn's role {admin!r} lacks CREATEROLE (or superuser), which ensure_role needs "
            f"to create role {role!r} and grant it the memberships of {like!r}; "
            f"{NOTHING_CHANGED}"
        )
    if run.role(like) is None:
        raise Refused(f"role {like!r} (like) does not exist; {NOTHING_CHANGED}")
    wanted = run.memberships(like)
    found = run.role(role)
    have = run.memberships(role) if found else []
    result: dict[str, Any] = {
        "changed": False, "action": "ensure_role", "role": role, "created": False,
        "login_enabled": False, "granted": [], "password_changed": False,
    }  # fmt: skip
    done: list[str] = []
    if found is None:
        clause = sql.SQL("LOGIN")
        if password is not None:
            clause = clause + sql.SQL(" ") + run.password_clause(role, password)
        run.change(
            f"CREATE ROLE {role}", sql.SQL("CREATE ROLE {} ").format(sql.Identifier(role)) + clause
        )
        result.update(created=True, password_changed=password is not None)
        done.append("created it with LOGIN" + (" and the password" if password is not None else ""))
    else:
        if not found["login"]:
            run.change(f"ALTER ROLE {role} LOGIN", run.alter(role, sql.SQL("LOGIN")))
            result["login_enabled"] = True
            done.append("gave it LOGIN")
        if password is not None and not run.login(role, password).ok:
            clause = run.password_clause(role, password)
            run.change(f"ALTER ROLE {role} PASSWORD", run.alter(role, clause))
            result["password_changed"] = True
            done.append("set its password")
    missing = [group for group in wanted if group not in have]
    for group in missing:
        run.change(
            f"GRANT {group} TO {role}",
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role)),
        )
    if missing:
        done.append("granted it " + ", ".join(missing))
    result["granted"] = missing
    if not done:
        result["msg"] = f"role {role!r} is a LOGIN role with the memberships of {like!r}" + (
            " and the given password" if password is not None else ""
        )
        return result
    run.commit()
    result["changed"] = True
    password_after = "the given value" if result["password_changed"] else "unchanged"
    result["diff"] = _diff(
        role,
        {"exists": found is not None, "login": bool(found and found["login"]), "member_of": have},
        {"exists": True, "login": True, "member_of": sorted({*have, *missing}),
         "password": password_after},
    )  # fmt: skip
    steps = "; ".join(done)
    result["msg"] = _said(
        run,
        f"ensure role {role!r} like {like!r}: {steps}",
        f"ensured role {role!r} like {like!r}: {steps}",
    )
    return result


def run_retire(run: Run) -> dict[str, Any]:
    params = run.params
    role = params["role"]
    own = {run.conn.info.user, dsn_settings(params["dsn"]).get("user")}
    own |= {row[0] for row in run.rows("SELECT current_user")}
    if role in own:
        raise Refused(
            f"refused: role {role!r} is the role the dsn logs in as; retiring it would lock this "
            f"runbook out (retire the other login, with an admin dsn); {NOTHING_CHANGED}"
        )
    found = run.role(role)
    if found is None:
        raise Refused(f"role {role!r} does not exist; {NOTHING_CHANGED}")
    has_password = _has_password(run, role)
    result: dict[str, Any] = {
        "changed": False, "action": "retire", "role": role,
        "password_removed": False, "login_disabled": False,
    }  # fmt: skip
    done = []
    if has_password is not False:
        run.change(f"ALTER ROLE {role} PASSWORD NULL", run.alter(role, sql.SQL("PASSWORD NULL")))
        result["password_removed"] = True
        done.append("removed its password")
    if params["nologin"] and found["login"]:
        run.change(f"ALTER ROLE {role} NOLOGIN", run.alter(role, sql.SQL("NOLOGIN")))
        result["login_disabled"] = True
        done.append("set NOLOGIN")
    if not done:
        result["msg"] = f"role {role!r} is retired (no password" + (
            ", NOLOGIN)" if params["nologin"] else ")"
        )
        return result
    run.commit()
    result["changed"] = True
    before = {True: "set", False: "none", None: "unknown"}[has_password]
    result["diff"] = _diff(
        role,
        {"password": before, "login": found["login"]},
        {"password": "none", "login": found["login"] and not result["login_disabled"]},
    )
    steps = "; ".join(done)
    result["msg"] = _said(run, f"retire role {role!r}: {steps}", f"retired role {role!r}: {steps}")
    return result


def _has_password(run: Run, role: str) -> bool | None:
    """Whether ``role`` has a password: from pg_authid when readable (superuser), else the
    retired password must be refused by a login; None when neither can tell."""
    if run.rows("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')")[0][0]:
        stored = "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s"
        return bool(run.rows(stored, (role,))[0][0])
    password = run.params["password"]
    login = run.login(role, password) if password is not None else None
    if login is not None and login.refused_password:
        return False  # the retired password is refused (or no password is set at all)
    if login is not None and (login.ok or login.sqlstate):
        return True  # it logs in, or the server refused it after the password (NOLOGIN, ...)
    proof = (
        f"a login with the given password failed: {login.why()}" if login else "no password given"
    )
    run.warnings.append(
        f"pg_role_password: the dsn's role may not read pg_authid and {proof}: whether role "
        f"{role!r} still had a password is unknown, so it is removed again"
    )
    return None


# ------------------------------------------------------------------------- the action


def run_login(params: dict[str, Any]) -> dict[str, Any]:
    dsn = params["login_dsn"] or params["dsn"]
    login = try_login(dsn, params["connect_timeout"], params["application_name"])
    result: dict[str, Any] = {
        "changed": False, "action": "login", "role": login.user, "ok": login.ok,
        "current_user": login.current_user, "sqlstate": login.sqlstate,
    }  # fmt: skip
    who = f"login as {login.user!r}"
    if params["expect"] == "success":
        if login.ok:
            result["msg"] = f"{who} works (current_user {login.current_user!r})"
        else:
            result.update(failed=True, msg=f"pg_role_password: {who} failed: {login.why()}")
    elif login.refused_password:
        result["msg"] = f"{who} refused: the server rejected the password (SQLSTATE {AUTH_FAILED})"
    elif login.ok:
        result.update(
            failed=True, msg=f"pg_role_password: {who} works; expected the password to be refused"
        )
    else:
        result.update(
            failed=True,
            msg=f"pg_role_password: {who} failed, but not because the server refused the "
            f"password: {login.why()}; this is no proof that the password is dead",
        )
    return result


RUNNERS = {"set": run_set, "ensure_role": run_ensure_role, "retire": run_retire}


def secrets_of(params: dict[str, Any]) -> list[str]:
    """Every secret value of the parameters, as given and as the DSNs carry them."""
    found = [params.get("password") or ""]
    for name in ("dsn", "login_dsn"):
        if params.get(name):
            found += [params[name], *dsn_passwords(params[name])]
    return [value for value in found if value]


def failure(params: dict[str, Any], message: str) -> dict[str, Any]:
    return {
        "failed": True,
        "changed": False,
        "action": params["action"],
        "role": params.get("role") or "",
        "msg": f"pg_role_password: {message}",
    }


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, ``failed`` on a failure, its
    ``warnings``. main() runs it in a module process; on the controller's local connection
    the action plugin (action_plugins/pg_role_password.py) runs it in the task's worker."""
    secrets = secrets_of(params)
    if not HAS_PSYCOPG:
        return failure(params, "psycopg (psycopg 3) is not installed for this Python")
    errors = validate_params(params)
    if errors:
        problems = "; ".join(errors)
        return scrub_data(failure(params, f"invalid input: {problems}; {NOTHING_CHANGED}"), secrets)
    run = None
    try:
        if params["action"] == "login":
            result = run_login(params)
        else:
            run = Run(connect_params(params), params, check_mode)
            result = RUNNERS[params["action"]](run)
            result["warnings"] = run.warnings
    except PgConnectError as exc:
        result = failure(params, f"cannot connect with dsn: {exc}; {NOTHING_CHANGED}")
    except Refused as exc:
        result = failure(params, str(exc))
    except Exception as exc:  # no traceback: it could quote a DSN
        reason = scrub_secrets(" ".join(str(exc).split()) or type(exc).__name__, secrets)
        result = failure(params, f"unexpected error: {reason}; {NOTHING_CHANGED}")
    finally:
        if run is not None:
            close_quietly(run.conn)
    return scrub_data(result, secrets + (run.secrets if run else []))


def main() -> None:
    module = pg_module("pg_role_password", argument_spec())
    register_dsn_secrets(module, module.params["login_dsn"] or "")
    finish_module(module, execute(module.params, module.check_mode))


if __name__ == "__main__":
    main()
