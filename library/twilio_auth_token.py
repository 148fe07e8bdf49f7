#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""twilio_auth_token: a Twilio account's secondary auth token - create, promote, delete - and
the proof that a token authenticates (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: twilio_auth_token
short_description: Rotate a Twilio account's auth token through its secondary token
description:
  - Twilio's Accounts v1 API (C(https://accounts.twilio.com)) keeps two auth tokens per
    account, a primary and at most one B(secondary); both authenticate. A rotation creates a
    secondary (O(state=secondary)), installs it where the account's token is used, then
    promotes it (O(state=promoted)). Every call authenticates with HTTP Basic, the account
    SID and a token.
  - O(state=secondary) - C(POST /v1/AuthTokens/Secondary) creates a secondary token and
    returns it (RV(secondary_auth_token)) - B(the task must set no_log). Twilio's document
    does not say what a POST does when a secondary exists (it documents only C(201 Created));
    an account has one secondary, so the module assumes the worst - that a new POST
    B(replaces) it and the one an earlier run created stops working. That is why a run that
    has already stored its secondary passes it back as O(secondary_token) - nothing is sent,
    the stored token is kept (RV(created=false)). The API cannot read a secondary token (there
    is no GET), so the module cannot tell on its own whether one exists.
  - O(state=promoted) - C(POST /v1/AuthTokens/Promote) makes the secondary the primary.
    B(Twilio retires the old primary at once) - "all requests to Twilio using your old
    primary Auth Token will result in an error" (Twilio's document) - so there is no grace
    period; everything that uses the token must hold the secondary before the promotion. The
    call authenticates with O(secondary_token) - valid as the secondary before the promotion
    and as the primary after it - which makes a rerun safe - Twilio's 404 (no secondary to
    promote) to a token that authenticates means it is the primary already
    (RV(promoted=false), nothing changed); a 401 means O(secondary_token) is neither (nothing
    changed).
  - O(state=secondary_absent) - C(DELETE /v1/AuthTokens/Secondary); a 404 (no secondary) is
    reported unchanged. The rollback of a rotation whose secondary was never promoted.
  - O(state=check) - proves that O(auth_token) authenticates. B(Twilio's document offers no
    read-only call) (its three operations all change the account), so the proof is the least
    harmful of them, C(DELETE /v1/AuthTokens/Secondary) - it changes nothing when the
    account has no secondary (Twilio answers 404, which a wrong token never gets - that is a
    401), which is the case before a rotation starts and after it ends. A secondary that
    exists B(is deleted) (RV(deleted), a warning). So O(state=check) refuses to run with a
    O(secondary_token) - a pending secondary is proven by promoting it.
  - Retries - 429 and 5xx answers, timeouts and refused connections are retried with backoff
    (C(Retry-After) honoured) until O(deadline_s). Repeating these calls is safe - a second
    POST of a secondary replaces the first (the token returned is the one that works), a
    second promotion answers 404 (read as done, above), a second DELETE 404.
version_added: "0.3.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  account_sid:
    description:
      - The account's SID (C(AC) and 32 hexadecimal digits), the Basic auth user name.
    type: str
    required: true
  auth_token:
    description:
      - The account's primary (current) auth token, the Basic auth password of
        O(state=secondary), O(state=secondary_absent) and O(state=check). With
        O(state=promoted) it is the token being replaced (not sent; its fingerprint is
        returned as RV(previous_fingerprint)).
    type: str
    required: true
  secondary_token:
    description:
      - The secondary token an earlier task or run created and stored (the rotation's pending
        value). Required with O(state=promoted), which authenticates with it. With
        O(state=secondary) it is kept - nothing is sent, the module returns its fingerprint
        (RV(created=false)). Refused with O(state=check).
    type: str
  state:
    description:
      - C(secondary) - a secondary token exists (created unless O(secondary_token) is given).
      - C(promoted) - O(secondary_token) is the primary.
      - C(secondary_absent) - no secondary token.
      - C(check) - prove that O(auth_token) authenticates (deletes a secondary, see above).
    type: str
    required: true
    choices: [secondary, promoted, secondary_absent, check]
  base_url:
    description:
      - Twilio's Accounts API (a stand-in's URL in tests).
    type: str
    default: https://accounts.twilio.com
attributes:
  check_mode:
    support: full
    description: Nothing is sent - no POST, no DELETE. C(changed) says what a run would do
      where it can be known; where it depends on whether a secondary token exists (promoted,
      secondary_absent), which no call can read, it is reported as a change. O(state=check)
      proves nothing in check mode (RV(authenticated) is null).
  diff_mode:
    support: partial
    description: RV(diff) shows the tokens before and after as fingerprints, never a value.
notes:
  - Tokens never appear in a message, a warning or a result other than
    RV(secondary_auth_token); Twilio's own error text is shown with any token masked.
  - Twilio asks to allow about a minute after a change of auth token for Twilio Functions and
    Services that embed the token to pick it up.
seealso:
  - name: Twilio Accounts API - secondary auth token
    description: Create and delete the secondary token.
    link: https://www.twilio.com/docs/iam/api/secondary_authtoken
  - name: Twilio Accounts API - auth token promotion
    description: Promote the secondary token to primary.
    link: https://www.twilio.com/docs/iam/api/authtoken
"""

EXAMPLES = r"""
- name: Create the secondary auth token (the rotation's pending value)
  twilio_auth_token:
    account_sid: "{{ twilio_account_sid }}"
    auth_token: "{{ twilio_auth_token }}"
    secondary_token: "{{ twilio_pending | default(omit) }}"  # stored by an earlier run
    state: secondary
  delegate_to: localhost
  no_log: true  # the result holds the new token
  register: twilio_secondary

- name: Promote it once every app host uses it (the old primary stops working at once)
  twilio_auth_token:
    account_sid: "{{ twilio_account_sid }}"
    auth_token: "{{ twilio_auth_token }}"
    secondary_token: "{{ twilio_pending }}"
    state: promoted
  delegate_to: localhost

- name: Roll back - delete a secondary token that will not be promoted
  twilio_auth_token:
    account_sid: "{{ twilio_account_sid }}"
    auth_token: "{{ twilio_auth_token }}"
    state: secondary_absent
  delegate_to: localhost
"""

RETURN = r"""
state:
  description: The O(state) asked for.
  returned: always
  type: str
  sample: secondary
created:
  description: O(state=secondary) - whether a new secondary token was created (false when
    O(secondary_token) was kept).
  returned: success
  type: bool
  sample: true
secondary_auth_token:
  description: O(state=secondary) - the new secondary token, when one was created (the task
    must be C(no_log)). When O(secondary_token) was kept it is not returned - the caller has it.
  returned: when created
  type: str
secondary_fingerprint:
  description: The secondary token's fingerprint (C(sha256:) and 12 hex digits).
  returned: state is secondary or promoted
  type: str
  sample: sha256:3f2a9c01be77
auth_token_fingerprint:
  description: The fingerprint of the primary token after the task (the promoted token after
    O(state=promoted)).
  returned: always
  type: str
  sample: sha256:9e4c1d2f7a30
previous_fingerprint:
  description: O(state=promoted) - the fingerprint of O(auth_token), the primary the promotion
    retired.
  returned: state is promoted
  type: str
promoted:
  description: O(state=promoted) - whether this task promoted (false - it was the primary
    already).
  returned: state is promoted
  type: bool
deleted:
  description: O(state=secondary_absent) or O(state=check) - whether a secondary token was
    deleted.
  returned: state is secondary_absent or check
  type: bool
authenticated:
  description: O(state=check) - whether O(auth_token) authenticates (null in check mode).
  returned: state is check
  type: bool
calls:
  description: Every attempt sent, with its status (null - no answer).
  returned: always
  type: list
  elements: str
  sample: [POST /v1/AuthTokens/Promote 503, POST /v1/AuthTokens/Promote 200]
diff:
  description: The tokens before and after, as fingerprints.
  returned: when changed
  type: dict
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

import re
from collections.abc import Callable
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
    client_from_params,
    rest_argument_spec,
    rest_option_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import fingerprint

NAME = "twilio_auth_token"
SECONDARY = "/v1/AuthTokens/Secondary"
PROMOTE = "/v1/AuthTokens/Promote"
SID_RE = re.compile(r"^AC[0-9a-fA-F]{32}$")
UNKNOWN = "unknown (Twilio's API cannot read a secondary token)"


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "account_sid": {"type": "str", "required": True},
        "auth_token": {"type": "str", "required": True, "no_log": True},
        "secondary_token": {"type": "str", "no_log": True},
        "state": {
            "type": "str",
            "required": True,
            "choices": ["secondary", "promoted", "secondary_absent", "check"],
        },
        "base_url": {"type": "str", "default": "https://accounts.twilio.com"},
        **rest_argument_spec(),
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each naming the option (never a token's value)."""
    errors = []
    if not SID_RE.match(params.get("account_sid") or ""):
        errors.append("account_sid must be AC followed by 32 hexadecimal digits")
    if not params.get("auth_token"):
        errors.append("auth_token is empty")
    state = params.get("state")
    if state == "promoted" and not params.get("secondary_token"):
        errors.append("state=promoted needs secondary_token (the token to promote)")
    if state == "check" and params.get("secondary_token"):
        errors.append(
            "state=check takes no secondary_token: its proof deletes a secondary token; "
            "a pending secondary is proven by promoting it"
        )
    errors += rest_option_errors(params)
    return errors


def open_client(params: dict[str, Any], token: str, **client_kw: Any) -> RestClient:
    """The Accounts API with Basic (account_sid, token); every token given is masked."""
    return client_from_params(
        params,
        basic=(params["account_sid"], token),
        secrets=[params["auth_token"], params.get("secondary_token") or ""],
        **client_kw,
    )


def create_secondary(
    params: dict[str, Any], check_mode: bool, client: RestClient
) -> dict[str, Any]:
    primary = fingerprint(params["auth_token"])
    kept = params.get("secondary_token")
    if kept:
        return {
            "changed": False,
            "created": False,
            "secondary_fingerprint": fingerprint(kept),
            "auth_token_fingerprint": primary,
            "msg": f"secondary token {fingerprint(kept)} kept (given as secondary_token), not "
            "created again: a new one would replace it",
        }
    if check_mode:
        return {
            "changed": True,
            "created": False,
            "auth_token_fingerprint": primary,
            "msg": f"check mode: would POST {SECONDARY} (a new secondary token; one that "
            "exists would be replaced)",
        }
    answer = client.post(SECONDARY, retry_unsafe=True).json() or {}
    token = answer.get("secondary_auth_token")
    if not isinstance(token, str) or not token:
        raise RestError(
            f"POST {SECONDARY}",
            status=201,
            reason="the answer holds no secondary_auth_token",
        )
    client.add_secret(token)
    return {
        "changed": True,
        "created": True,
        "secondary_auth_token": token,
        "secondary_fingerprint": fingerprint(token),
        "auth_token_fingerprint": primary,
        "diff": {
            "before": {"primary": primary, "secondary": UNKNOWN},
            "after": {"primary": primary, "secondary": fingerprint(token)},
        },
        "msg": f"secondary token {fingerprint(token)} created; the primary {primary} still "
        "authenticates until the secondary is promoted",
    }


def promote(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    old, new = fingerprint(params["auth_token"]), fingerprint(params["secondary_token"])
    result: dict[str, Any] = {"secondary_fingerprint": new, "previous_fingerprint": old}
    if check_mode:
        return {
            **result,
            "changed": True,
            "promoted": False,
            "auth_token_fingerprint": old,
            "msg": f"check mode: would POST {PROMOTE} with the secondary {new}; the primary "
            f"{old} would stop working at once (unless {new} is the primary already)",
        }
    response = client.post(PROMOTE, accept=(404,), retry_unsafe=True)
    if response.status == 404:
        return {
            **result,
            "changed": False,
            "promoted": False,
            "auth_token_fingerprint": new,
            "msg": f"{new} is the primary already (it authenticates and the account has no "
            "secondary to promote): nothing changed",
        }
    promoted = (response.json() or {}).get("auth_token")
    result.update(
        changed=True,
        promoted=True,
        auth_token_fingerprint=fingerprint(promoted) if promoted else new,
        diff={
            "before": {"primary": old, "secondary": new},
            "after": {"primary": new, "secondary": None},
        },
    )
    if promoted and promoted != params["secondary_token"]:
        client.add_secret(promoted)
        result.update(
            failed=True,
            msg=f"Twilio promoted a token ({fingerprint(promoted)}) that is not "
            f"secondary_token ({new}): the account's primary is {fingerprint(promoted)} now and "
            f"{old} no longer authenticates; set the token from Twilio's console",
        )
        return result
    result["msg"] = (
        f"secondary {new} promoted to primary; the previous primary {old} no longer "
        "authenticates (Twilio retires it at once)"
    )
    return result


def delete_secondary(
    params: dict[str, Any], check_mode: bool, client: RestClient
) -> dict[str, Any]:
    primary = fingerprint(params["auth_token"])
    if check_mode:
        return {
            "changed": True,
            "deleted": False,
            "auth_token_fingerprint": primary,
            "msg": f"check mode: would DELETE {SECONDARY} (whether a secondary exists cannot "
            "be read, so this is reported as a change)",
        }
    response = client.delete(SECONDARY, accept=(404,))
    deleted = response.status != 404
    result: dict[str, Any] = {
        "changed": deleted,
        "deleted": deleted,
        "auth_token_fingerprint": primary,
        "msg": "secondary token deleted" if deleted else "no secondary token: nothing changed",
    }
    if deleted:
        result["diff"] = {"before": {"secondary": "present"}, "after": {"secondary": None}}
    return result


def check(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    primary = fingerprint(params["auth_token"])
    if check_mode:
        return {
            "changed": False,
            "deleted": False,
            "authenticated": None,
            "auth_token_fingerprint": primary,
            "msg": f"check mode: {primary} not proven (the proof, DELETE {SECONDARY}, is not "
            "sent in check mode: Twilio's API has no read-only call)",
        }
    try:
        result = delete_secondary(params, False, client)
    except RestError as exc:
        if exc.status not in (401, 403):
            raise
        return {
            "failed": True,
            "changed": False,
            "deleted": False,
            "authenticated": False,
            "auth_token_fingerprint": primary,
            "msg": f"{NAME}: auth_token {primary} does not authenticate account "
            f"{params['account_sid']}: {exc}; nothing was changed",
        }
    result["authenticated"] = True
    result["msg"] = f"auth_token {primary} authenticates account {params['account_sid']}"
    if result["deleted"]:
        result["msg"] += " (a secondary token existed and was deleted)"
        result["warnings"] = [
            f"{NAME}: state=check deleted the account's secondary token (the only proof "
            "Twilio's API offers deletes it); a rotation in progress must create it again"
        ]
    return result


STATES: dict[str, Callable[[dict[str, Any], bool, RestClient], dict[str, Any]]] = {
    "secondary": create_secondary,
    "promoted": promote,
    "secondary_absent": delete_secondary,
    "check": check,
}
UNKNOWN_OUTCOME = {  # after a 5xx or a lost answer: Twilio may have acted
    "secondary": "whether Twilio created a secondary token is unknown (a rerun creates one, "
    "replacing it)",
    "promoted": "whether Twilio promoted the secondary is unknown (a rerun with the same "
    "secondary_token finds out)",
    "secondary_absent": "whether the secondary token was deleted is unknown (a rerun finds out)",
    "check": "whether a secondary token was deleted is unknown",
}


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters: the result, with ``failed`` on a failure.
    main() runs it in a module process; on the controller the action plugin
    (action_plugins/twilio_auth_token.py) runs it in the task's worker. ``client_kw`` go to
    the RestClient (tests pass a clock and a sleep)."""
    state = params.get("state") or ""
    errors = validate_params(params)
    if errors:
        return {
            "failed": True,
            "changed": False,
            "state": state,
            "calls": [],
            "msg": f"{NAME}: invalid input: " + "; ".join(errors) + "; nothing was sent",
        }
    token = params["secondary_token"] if state == "promoted" else params["auth_token"]
    client = open_client(params, token, **client_kw)
    try:
        result = STATES[state](params, check_mode, client)
    except RestError as exc:
        hint = ""
        if exc.status == 401:
            used = "secondary_token" if state == "promoted" else "auth_token"
            hint = f" ({used} {fingerprint(token)} does not authenticate {params['account_sid']})"
        refused = exc.status is not None and 400 <= exc.status < 500  # Twilio did nothing
        outcome = "nothing was changed" if refused else UNKNOWN_OUTCOME[state]
        result = {
            "failed": True,
            "changed": False,
            "msg": f"{NAME}: {client.scrub(str(exc))}{hint}; {outcome}",
        }
    result.update(state=state, calls=list(client.history))
    result.setdefault("auth_token_fingerprint", fingerprint(params["auth_token"]))
    return result


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
