#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""supabase_db_password: reset a Supabase project's database password through the
Management API, and optionally prove the new one by connecting with it (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: supabase_db_password
short_description: Reset a Supabase project's database password
description:
  - Sets the password of the project's database (its C(postgres) role) with the Management
    API's C(PATCH /v1/projects/{ref}/database/password) - what the dashboard's "Reset database
    password" does. Everything that connects with the old password (the app's
    C(DATABASE_URL), poolers' clients, scripts) stops authenticating once Supabase has applied
    it; the rotation installs the new one everywhere right after.
  - B(Not idempotent, by necessity.) Nothing in the API reads the password or a digest of
    it, so a reset cannot be compared with what is set - every run sends it and reports
    C(changed=true). Running it twice with the same O(password) is harmless (the same value
    is set again); a rerun after a failure is how an unknown outcome is settled.
  - The password must have at least 16 characters (and 4 distinct ones, no leading or
    trailing space). Supabase's document accepts 4 characters; opsbook refuses anything
    weaker than 16 - the database is reachable from the internet. The rotation's generated
    passwords (24+ letters and digits) pass.
  - With O(verify_dsn), the module then connects with the new password (psycopg, C(SELECT 1))
    to the database that DSN names - its own password, if any, is replaced by the new one -
    retrying with backoff (1 s, doubling) for up to O(verify_timeout_s) while Supabase applies
    the change. Without it, nothing is verified (RV(verified) is null).
  - 429 and 5xx answers, timeouts and refused connections are retried with backoff
    (C(Retry-After) honoured) until O(deadline_s); the C(PATCH) too, since sending the same
    password again sets the same password.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  project_ref:
    description:
      - The project's ref (20 lowercase letters - the inventory's C(supabase_project_ref)).
    type: str
    required: true
  token:
    description:
      - A Supabase personal access token or OAuth token allowed to write the database
        settings; sent as C(Authorization Bearer) only. When not given, the controller's
        environment variable C(SUPABASE_ACCESS_TOKEN) is used - not a task's
        C(environment), which C(-vvvv) prints.
    type: str
    required: true
  password:
    description:
      - The new database password (at least 16 characters). Never returned; its fingerprint
        is (RV(password_fingerprint)).
    type: str
    required: true
  verify_dsn:
    description:
      - A libpq DSN or URI of the project's database to prove the new password with, e.g.
        C(postgresql://postgres@db.<ref>.supabase.co:5432/postgres?sslmode=require) (or the
        pooler's). Its password, if it has one, is replaced by O(password). Unset - no proof.
    type: str
  verify_timeout_s:
    description:
      - Seconds to keep trying to connect with the new password (O(verify_dsn)).
    type: float
    default: 60
  base_url:
    description:
      - The Management API (a stand-in's URL in tests; the inventory's C(supabase_api_url)).
    type: str
    default: https://api.supabase.com
attributes:
  check_mode:
    support: full
    description: Nothing is sent (the API has no read of the password to check against);
      C(changed) is true - a real run always resets - and RV(msg) says what would be sent.
  diff_mode:
    support: partial
    description: The password before and after, both shown as C(********).
  platform:
    support: full
    platforms: posix
    description: Runs on the controller (C(delegate_to) C(localhost)).
notes:
  - The password, the token and the DSN's password never appear in a message or a result.
  - Requires psycopg 3 on the controller only with O(verify_dsn).
seealso:
  - name: Supabase Management API - update the database password
    description: The call the module makes.
    link: https://supabase.com/docs/reference/api/v1-update-database-password
  - name: Supabase - database passwords
    description: What a reset affects.
    link: https://supabase.com/docs/guides/database/managing-passwords
"""

EXAMPLES = r"""
- name: Reset the database password to the rotation's new value, and prove it
  supabase_db_password:
    project_ref: "{{ supabase_project_ref }}"
    token: "{{ supabase_access_token }}"
    password: "{{ new_db_password }}"
    verify_dsn: "{{ supabase_direct_url }}"  # postgresql://postgres@db.<ref>.supabase.co/...
  delegate_to: localhost
  no_log: true
"""

RETURN = r"""
changed:
  description: True when the password was reset (or would be, in check mode).
  returned: always
  type: bool
message:
  description: Supabase's answer to the reset (its C(message)).
  returned: when reset
  type: str
  sample: Password updated
password_fingerprint:
  description: The new password's fingerprint (C(sha256:) and 12 hex digits) - to match it
    with the one a secret store holds, never the password.
  returned: always
  type: str
  sample: sha256:9e4c1d2f7a30
verified:
  description: Whether connecting with the new password worked (null - not tried, no
    O(verify_dsn) or check mode).
  returned: always
  type: bool
verify_attempts:
  description: Connection attempts made to verify.
  returned: always
  type: int
api_calls:
  description: Every attempt sent, as C(METHOD /path STATUS) (null - no answer).
  returned: always
  type: list
  elements: str
  sample: [PATCH /v1/projects/abcdefghijklmnopqrst/database/password 200]
diff:
  description: The password before and after, masked.
  returned: when changed
  type: dict
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

import time
from collections.abc import Callable
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
    HAS_PSYCOPG,
    PgConnectError,
    close_quietly,
    connect,
    dsn_passwords,
    dsn_with_credentials,
    redact_dsn,
    safe_error,
    scrub_secrets,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    open_client,
    refused_before_acting,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import MASK, RestError
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_supabase import (
    db_password_problem,
    password_path,
    refused_hint,
    reset_db_password,
    supabase_argument_spec,
    supabase_option_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import fingerprint

NAME = "supabase_db_password"
MAX_VERIFY_WAIT_S = 10.0


def argument_spec() -> dict[str, dict[str, Any]]:
    return supabase_argument_spec(
        password={"type": "str", "required": True, "no_log": True},
        verify_dsn={"type": "str", "no_log": True},
        verify_timeout_s={"type": "float", "default": 60.0},
    )


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = supabase_option_errors(params)
    problem = db_password_problem(params.get("password"))
    if problem:
        errors.append(f"password refused: {problem}")
    if params.get("verify_dsn"):
        if not HAS_PSYCOPG:
            errors.append("verify_dsn needs psycopg 3 on the controller (not installed)")
        if (params.get("verify_timeout_s") or 0) <= 0:
            errors.append(f"verify_timeout_s must be > 0, got {params.get('verify_timeout_s')}")
    return errors


def verify_password(
    dsn: str,
    password: str,
    timeout_s: float,
    *,
    connect_fn: Callable[..., Any] = connect,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[bool, int, str]:
    """Connect with ``password`` to ``dsn`` and run ``SELECT 1``, retrying with backoff (1 s,
    doubling, at most 10 s) for ``timeout_s``: (worked, attempts, last error - secret-free)."""
    target = dsn_with_credentials(dsn, password)
    secrets = [password, dsn, target, *dsn_passwords(dsn)]
    connect_timeout = int(max(2, min(10, timeout_s)))
    started, attempt, wait = clock(), 0, 1.0
    while True:
        attempt += 1
        conn = None
        try:
            conn = connect_fn(target, connect_timeout=connect_timeout)
            conn.execute("SELECT 1")
            return True, attempt, ""
        except PgConnectError as exc:
            error = scrub_secrets(str(exc), secrets)
        except Exception as exc:  # the query failed: the server's own words, scrubbed
            error = scrub_secrets(safe_error(exc, target), secrets)
        finally:
            close_quietly(conn)
        if clock() - started + wait > timeout_s:
            return False, attempt, error
        sleep(wait)
        wait = min(wait * 2, MAX_VERIFY_WAIT_S)


def execute(
    params: dict[str, Any],
    check_mode: bool,
    *,
    connect_fn: Callable[..., Any] = connect,
    **client_kw: Any,
) -> dict[str, Any]:
    """The module's work on validated parameters (main() runs it). Tests pass the client's
    ``clock``/``sleep`` and a ``connect_fn`` for the verification."""
    password = params.get("password") or ""
    result: dict[str, Any] = {
        "changed": False,
        "verified": None,
        "verify_attempts": 0,
        "password_fingerprint": fingerprint(password),
        "api_calls": [],
    }
    errors = validate_params(params)
    if errors:
        result.update(
            failed=True,
            msg=f"{NAME}: invalid input: " + "; ".join(errors) + "; nothing was sent",
        )
        return result
    ref = params["project_ref"]
    call = f"PATCH {password_path(ref)}"
    diff = {"before": {"password": MASK}, "after": {"password": f"{MASK} (reset)"}}
    if check_mode:
        result.update(
            changed=True,
            diff=diff,
            msg=f"check mode: would send {call} (a reset cannot be compared with the current "
            "password: a real run always resets it)",
        )
        return result
    client = open_client(params, **client_kw)
    try:
        message = reset_db_password(client, ref, password)
    except RestError as exc:
        refused = refused_before_acting(exc)
        outcome = (
            "nothing was changed: the old password still works"
            if refused
            else "whether Supabase reset the password is unknown - rerun with the same "
            "password (it sets the same value) before anything uses it"
        )
        result.update(
            failed=True,
            changed=not refused,
            api_calls=list(client.history),
            msg=f"{NAME}: {client.scrub(str(exc))}{refused_hint(exc)}; {outcome}",
        )
        return result
    result.update(changed=True, message=message, diff=diff, api_calls=list(client.history))
    done = f"database password of {ref} reset ({fingerprint(password)})"
    dsn = params.get("verify_dsn") or ""
    if not dsn:
        result["msg"] = f"{done}; not verified (no verify_dsn)"
        return result
    worked, attempts, error = verify_password(
        dsn,
        password,
        params["verify_timeout_s"],
        connect_fn=connect_fn,
        sleep=client_kw.get("sleep", time.sleep),
        clock=client_kw.get("clock", time.monotonic),
    )
    where = scrub_secrets(redact_dsn(dsn), [password])
    result.update(verified=worked, verify_attempts=attempts)
    if worked:
        result["msg"] = f"{done}; connecting with it to {where} works"
    else:
        result.update(
            failed=True,
            msg=f"{NAME}: {done} (Supabase answered 200), but connecting with it to {where} "
            f"failed for {params['verify_timeout_s']:g} s ({attempts} attempts): {error}; "
            "the password IS changed at Supabase - install it where it is used, or reset "
            "again",
        )
    return result


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
