#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""stripe_key_check: prove a Stripe secret or restricted key with GET /v1/balance, or check a
webhook signing secret's format (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: stripe_key_check
short_description: Prove a Stripe API key (GET /v1/balance) or check a webhook secret's format
description:
  - Stripe has no API to roll a secret key - a new key is made in the dashboard and given to
    the rotation. This module proves it B(before) it is installed anywhere; it reads only and
    runs in check mode too.
  - The format is checked first, without a call - C(sk_live_) / C(sk_test_) for
    O(kind=secret_key), C(rk_live_) / C(rk_test_) for O(kind=restricted_key), C(whsec_) for
    O(kind=webhook_secret), then at least 16 letters or digits. A publishable key
    (C(pk_)) is refused. The prefix says the mode - C(live) or C(test); with
    O(expect_livemode) a key of the other mode is refused before anything is sent (a test
    key where a live one is expected, say).
  - O(kind=secret_key) and O(kind=restricted_key) - C(GET /v1/balance) with the key (HTTP
    Bearer) proves it - Stripe answers with the account's balance, its mode (RV(livemode))
    and currencies (RV(currencies)). A restricted key without the balance read permission is
    answered 403 - the key authenticates (Stripe names its missing permission), so it is
    reported proven with RV(balance_readable=false). A 401 (unknown, expired or rolled key)
    fails the task.
  - O(kind=webhook_secret) - Stripe's API cannot check a webhook signing secret (it only
    signs events). Its format is checked and RV(proven_by) says C(format); prove it with a
    signed event (a test event sent from Stripe's dashboard or CLI) once the app holds it.
  - 429 and 5xx answers, timeouts and refused connections are retried with backoff
    (C(Retry-After) honoured) until O(deadline_s).
version_added: "0.3.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  api_key:
    description:
      - The key or webhook secret to check.
    type: str
    required: true
  kind:
    description:
      - What O(api_key) must be.
    type: str
    choices: [secret_key, restricted_key, webhook_secret]
    default: secret_key
  expect_livemode:
    description:
      - C(true) - a live key is expected (a test key is refused); C(false) - a test key.
        Unset - either. Judged by the prefix before any call, and by the balance's
        C(livemode) after it. Not used with O(kind=webhook_secret), whose secret does not say
        its mode.
    type: bool
  base_url:
    description:
      - Stripe's API (a stand-in's URL in tests).
    type: str
    default: https://api.stripe.com
attributes:
  check_mode:
    support: full
    description: The check only reads (C(GET /v1/balance)), so it runs in check mode as in a
      real run.
notes:
  - The key never appears in a message or a result - only its fingerprint (RV(fingerprint))
    and its prefix. Stripe's own error text (which shows a key's first and last characters,
    as Stripe masks it) is quoted with the key masked.
  - The old key's expiry is left to the dashboard (Developers - API keys - Roll key sets it);
    the rotation prints the instruction.
seealso:
  - name: Stripe API - retrieve balance
    description: The call that proves a key.
    link: https://docs.stripe.com/api/balance/balance_retrieve
  - name: Stripe API keys
    description: Secret, restricted and publishable keys; rolling a key.
    link: https://docs.stripe.com/keys
"""

EXAMPLES = r"""
- name: Prove the new Stripe secret key before it is installed
  stripe_key_check:
    api_key: "{{ stripe_new_secret_key }}"
    kind: secret_key
    expect_livemode: "{{ opsbook_env == 'production' }}"
  delegate_to: localhost

- name: Check the new webhook signing secret's format
  stripe_key_check:
    api_key: "{{ stripe_new_webhook_secret }}"
    kind: webhook_secret
  delegate_to: localhost
"""

RETURN = r"""
kind:
  description: The O(kind) checked.
  returned: always
  type: str
  sample: secret_key
fingerprint:
  description: The key's fingerprint (C(sha256:) and 12 hex digits).
  returned: always
  type: str
  sample: sha256:51c0a9e2d4f8
livemode:
  description: Whether the key is a live key (from the balance when Stripe answered, else
    from the prefix; null for a webhook secret).
  returned: always
  type: bool
  sample: false
proven:
  description: Whether Stripe accepted the key (false for a webhook secret - format only).
  returned: always
  type: bool
  sample: true
proven_by:
  description: C(GET /v1/balance) or C(format).
  returned: always
  type: str
  sample: GET /v1/balance
balance_readable:
  description: Whether the key may read the balance (false - a restricted key without the
    permission; null - not asked).
  returned: always
  type: bool
currencies:
  description: The currencies of the balance's available funds.
  returned: always
  type: list
  elements: str
  sample: [eur, usd]
calls:
  description: Every attempt sent, with its status.
  returned: always
  type: list
  elements: str
  sample: [GET /v1/balance 200]
msg:
  description: What was proven, or what was wrong and that nothing was changed.
  returned: always
  type: str
"""

import re
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestError,
    client_from_params,
    rest_argument_spec,
    rest_option_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import fingerprint

NAME = "stripe_key_check"
BALANCE = "/v1/balance"
PREFIXES = {"secret_key": "sk", "restricted_key": "rk", "webhook_secret": "whsec"}
KEY_RE = re.compile(r"^(sk|rk|pk)_(live|test)_([A-Za-z0-9]*)$")
WEBHOOK_RE = re.compile(r"^whsec_([A-Za-z0-9]*)$")
MIN_BODY = 16
WHAT = {
    "sk": "a secret key",
    "rk": "a restricted key",
    "pk": "a publishable key (not a secret: it cannot use the API's secret calls)",
    "whsec": "a webhook signing secret",
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "api_key": {"type": "str", "required": True, "no_log": True},
        "kind": {
            "type": "str",
            "choices": ["secret_key", "restricted_key", "webhook_secret"],
            "default": "secret_key",
        },
        "expect_livemode": {"type": "bool"},
        "base_url": {"type": "str", "default": "https://api.stripe.com"},
        **rest_argument_spec(),
    }


def key_format(value: str, kind: str) -> tuple[str | None, bool | None]:
    """(problem, livemode): the format policy, told without the value (its prefix at most)."""
    match = KEY_RE.match(value)
    if match:
        prefix, mode, body = match.groups()
        found: str | None = prefix
    else:
        webhook = WEBHOOK_RE.match(value)
        prefix, mode, body = ("whsec", None, webhook.group(1)) if webhook else ("", None, "")
        found = "whsec" if webhook else None
    wanted = PREFIXES[kind]
    if found is None:
        starts = "sk_live_/sk_test_" if wanted == "sk" else f"{wanted}_live_/{wanted}_test_"
        starts = "whsec_" if wanted == "whsec" else starts
        return f"it does not start with {starts} followed by letters and digits", None
    if found != wanted:
        return f"it is {WHAT[found]} ({found}_...), not {WHAT[wanted]}", None
    if len(body) < MIN_BODY:
        return f"{len(body)} characters after the prefix, at least {MIN_BODY} expected", None
    return None, (mode == "live") if mode else None


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = rest_option_errors(params)
    if params.get("kind") == "webhook_secret" and params.get("expect_livemode") is not None:
        errors.append("expect_livemode is not used with kind=webhook_secret (it has no mode)")
    return errors


def mode_word(livemode: bool | None) -> str:
    return "live" if livemode else "test"


def failure(result: dict[str, Any], text: str) -> dict[str, Any]:
    return {**result, "failed": True, "msg": f"{NAME}: {text}; nothing was changed"}


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (read-only: the same in check mode). main()
    runs it in a module process; on the controller the action plugin
    (action_plugins/stripe_key_check.py) runs it in the task's worker."""
    del check_mode  # reads only
    kind, key = params.get("kind") or "secret_key", params.get("api_key") or ""
    result: dict[str, Any] = {
        "changed": False,
        "kind": kind,
        "fingerprint": fingerprint(key),
        "livemode": None,
        "proven": False,
        "proven_by": "format",
        "balance_readable": None,
        "currencies": [],
        "calls": [],
    }
    errors = validate_params(params)
    if errors:
        return failure(result, "invalid input: " + "; ".join(errors))
    problem, livemode = key_format(key, kind)
    if problem:
        return failure(result, f"api_key is not {WHAT[PREFIXES[kind]]}: {problem}")
    result["livemode"] = livemode
    expected = params.get("expect_livemode")
    if expected is not None and livemode != expected:
        return failure(
            result,
            f"api_key is a {mode_word(livemode)} key where a {mode_word(expected)} key is "
            f"expected (expect_livemode={str(expected).lower()}); nothing was sent to Stripe",
        )
    if kind == "webhook_secret":
        result["msg"] = (
            f"webhook secret {result['fingerprint']}: format ok (whsec_); Stripe's API cannot "
            "check a webhook signing secret - prove it with a signed event (a test event sent "
            "from Stripe's dashboard or CLI) once the app holds it"
        )
        return result
    client = client_from_params(params, token=key, **client_kw)
    result["proven_by"] = f"GET {BALANCE}"
    try:
        response = client.get(BALANCE, accept=(403,) if kind == "restricted_key" else ())
    except RestError as exc:
        result["calls"] = list(client.history)
        meaning = "api_key does not authenticate" if exc.status == 401 else "the check failed"
        return failure(result, f"{meaning}: {client.scrub(str(exc))}")
    result["calls"] = list(client.history)
    result["proven"] = True
    if response.status == 403:
        result["balance_readable"] = False
        result["msg"] = (
            f"restricted {mode_word(livemode)} key {result['fingerprint']} authenticates "
            "(Stripe answered 403: it may not read the balance, which proves nothing else)"
        )
        return result
    balance = response.json() or {}
    result["balance_readable"] = True
    result["livemode"] = bool(balance.get("livemode"))
    result["currencies"] = sorted(
        {f.get("currency") for f in balance.get("available") or [] if f.get("currency")}
    )
    if result["livemode"] != livemode:
        return failure(
            result,
            f"Stripe says the key is a {mode_word(result['livemode'])} key, its prefix says "
            f"{mode_word(livemode)}",
        )
    result["msg"] = (
        f"{mode_word(livemode)} {kind.replace('_', ' ')} {result['fingerprint']} accepted by "
        f"Stripe (GET {BALANCE}: currencies {', '.join(result['currencies']) or 'none'})"
    )
    return result


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
