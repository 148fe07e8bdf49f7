"""library/stripe_key_check.py: the format policy (no call), and GET /v1/balance against
StripeStandin (tests/standins.py), judged by Stripe's own document: test and live keys,
expect_livemode, a restricted key without the balance permission, a revoked key, retries;
the key never in a result or a message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.loaders import load_library
from tests.standins import StripeStandin

stripe = load_library("stripe_key_check")


@pytest.fixture
def api() -> Iterator[StripeStandin]:
    standin = StripeStandin()
    yield standin
    standin.close()
    assert standin.mismatches == []


def check(api: StripeStandin | None, key: str, check_mode: bool = False, **kw: Any) -> dict:
    params = {k: v.get("default") for k, v in stripe.argument_spec().items()}
    params.update(api_key=key, base_url=api.url if api else "http://127.0.0.1:9", **kw)
    result = stripe.execute(params, check_mode, sleep=lambda s: None)
    assert key not in json.dumps(result), result  # never the key
    return result


def test_a_test_key_is_proven_by_the_balance(api: StripeStandin) -> None:
    key = api.add_key()
    result = check(api, key, check_mode=True)  # read-only: the same in check mode
    assert result["proven"] and result["proven_by"] == "GET /v1/balance"
    assert (result["livemode"], result["currencies"]) == (False, ["eur", "usd"])
    assert result["balance_readable"] and result["changed"] is False
    assert result["fingerprint"] == stripe.fingerprint(key)
    assert result["calls"] == ["GET /v1/balance 200"] and api.calls == ["GetBalance"]
    assert result["msg"] == (
        f"test secret key {result['fingerprint']} accepted by Stripe (GET /v1/balance: "
        "currencies eur, usd)"
    )


def test_expect_livemode_refuses_the_other_mode_before_any_call(api: StripeStandin) -> None:
    test_key, live_key = api.add_key(), api.add_key(live=True)
    refused = check(api, test_key, expect_livemode=True)
    assert refused["failed"] and api.calls == []
    assert refused["msg"] == (
        "stripe_key_check: api_key is a test key where a live key is expected "
        "(expect_livemode=true); nothing was sent to Stripe; nothing was changed"
    )
    live = check(api, live_key, expect_livemode=True)
    assert live["proven"] and live["livemode"] is True and "failed" not in live


def test_a_revoked_key_fails_naming_the_call(api: StripeStandin) -> None:
    key = api.add_key()
    api.revoke(key)
    result = check(api, key)
    assert result["failed"] and not result["proven"]
    assert result["msg"].startswith(
        "stripe_key_check: api_key does not authenticate: GET /v1/balance: HTTP 401 "
        "Unauthorized: Invalid API Key provided: sk_test_"
    )
    assert "(code invalid_request_error); 1 attempt in" in result["msg"]


def test_a_restricted_key_without_the_balance_permission_still_authenticates(
    api: StripeStandin,
) -> None:
    key = api.add_key(restricted=True, balance_read=False)
    result = check(api, key, kind="restricted_key")
    assert result["proven"] and result["balance_readable"] is False and "failed" not in result
    assert result["calls"] == ["GET /v1/balance 403"]
    secret = api.add_key(balance_read=False)
    refused = check(api, secret)  # a secret key is never short of a permission: a failure
    assert refused["failed"] and "HTTP 403 Forbidden" in refused["msg"]


def test_5xx_is_retried(api: StripeStandin) -> None:
    key = api.add_key()
    api.fail_next(503)
    result = check(api, key)
    assert result["proven"] and result["calls"] == ["GET /v1/balance 503", "GET /v1/balance 200"]


@pytest.mark.parametrize(
    ("kind", "value", "problem"),
    [
        ("secret_key", "pk_test_" + "a" * 24, "it is a publishable key (not a secret"),
        ("secret_key", "rk_live_" + "a" * 24, "it is a restricted key (rk_...), not a secret key"),
        ("secret_key", "sk_test_short", "5 characters after the prefix, at least 16 expected"),
        ("secret_key", "sk_prod_" + "a" * 24, "it does not start with sk_live_/sk_test_"),
        ("restricted_key", "sk_test_" + "a" * 24, "it is a secret key (sk_...), not a restricted"),
        ("webhook_secret", "sk_test_" + "a" * 24, "it is a secret key (sk_...), not a webhook"),
        ("webhook_secret", "whsec_abc+/", "it does not start with whsec_ followed by letters"),
    ],
)
def test_the_format_policy_comes_first(kind: str, value: str, problem: str) -> None:
    result = check(None, value, kind=kind)  # no server: nothing may be sent
    assert result["failed"] and result["calls"] == []
    assert problem in result["msg"] and result["msg"].endswith("nothing was changed")


def test_a_webhook_secret_is_checked_by_format_only() -> None:
    result = check(None, "whsec_" + "Z9" * 16, kind="webhook_secret")
    assert "failed" not in result and result["proven"] is False
    assert result["proven_by"] == "format" and result["livemode"] is None
    assert "cannot check a webhook signing secret" in result["msg"]
    refused = check(None, "whsec_" + "Z9" * 16, kind="webhook_secret", expect_livemode=True)
    assert refused["failed"] and "expect_livemode is not used" in refused["msg"]


def test_the_key_is_a_no_log_option() -> None:
    assert stripe.argument_spec()["api_key"]["no_log"] is True
