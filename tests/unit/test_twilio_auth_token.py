"""library/twilio_auth_token.py against TwilioStandin (tests/standins.py), a stand-in that keeps
the account's primary and secondary tokens, checks Basic auth against them and is judged by
Twilio's own document: a whole rotation, reruns of each step, a wrong token, retries, check
mode, and a canary token that never reaches a result or a message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.loaders import load_library
from tests.standins import TwilioStandin

twilio = load_library("twilio_auth_token")
fingerprint = twilio.fingerprint

CANARY = "cafe" * 8  # the primary token: 32 hex digits, never to be seen


@pytest.fixture
def account() -> Iterator[TwilioStandin]:
    standin = TwilioStandin(primary=CANARY)
    yield standin
    standin.close()
    assert standin.mismatches == []  # every request and answer as Twilio's document allows


class Sleeps(list[float]):
    """The sleeps asked for; the clock moves only by them."""

    t = 0.0

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.t += seconds

    def clock(self) -> float:
        return self.t


def run(account: TwilioStandin, state: str, check_mode: bool = False, **kw: Any) -> dict[str, Any]:
    params = {k: v.get("default") for k, v in twilio.argument_spec().items()}
    params.update(
        account_sid=account.account_sid, auth_token=CANARY, state=state, base_url=account.url
    )
    params.update({k: v for k, v in kw.items() if k != "sleep"})
    sleep = kw["sleep"] if "sleep" in kw else Sleeps()
    result = twilio.execute(params, check_mode, sleep=sleep, clock=sleep.clock)
    text = json.dumps(result)
    assert CANARY not in text, result  # the primary token is never returned nor told
    return result


def test_a_rotation_secondary_then_promoted_then_checked(account: TwilioStandin) -> None:
    created = run(account, "secondary")
    new = account.secondary
    assert created["changed"] and created["created"]
    assert created["secondary_auth_token"] == new  # the one value that travels (no_log task)
    assert created["secondary_fingerprint"] == fingerprint(new)
    assert created["auth_token_fingerprint"] == fingerprint(CANARY)
    assert created["calls"] == ["POST /v1/AuthTokens/Secondary 201"]
    assert created["diff"]["after"] == {
        "primary": fingerprint(CANARY),
        "secondary": fingerprint(new),
    }
    assert new not in created["msg"] and account.primary == CANARY

    promoted = run(account, "promoted", secondary_token=new)
    assert promoted["changed"] and promoted["promoted"]
    assert (account.primary, account.secondary, account.retired) == (new, None, [CANARY])
    assert promoted["auth_token_fingerprint"] == fingerprint(new)
    assert promoted["previous_fingerprint"] == fingerprint(CANARY)
    assert "no longer authenticates" in promoted["msg"] and new not in json.dumps(promoted)
    assert account.calls == ["CreateSecondaryAuthToken", "UpdateAuthTokenPromotion"]

    checked = run(account, "check", auth_token=new)
    assert checked["authenticated"] is True and checked["changed"] is False
    assert checked["calls"] == ["DELETE /v1/AuthTokens/Secondary 404"]  # nothing to delete
    assert "warnings" not in checked


def test_reruns_change_nothing_twice(account: TwilioStandin) -> None:
    new = run(account, "secondary")["secondary_auth_token"]
    kept = run(account, "secondary", secondary_token=new)  # a rerun that stored it: kept
    assert (kept["changed"], kept["created"], kept["calls"]) == (False, False, [])
    assert kept["secondary_fingerprint"] == fingerprint(new) and "secondary_auth_token" not in kept
    assert account.secondary == new
    run(account, "promoted", secondary_token=new)
    again = run(account, "promoted", secondary_token=new)  # killed after the promotion: rerun
    assert (again["changed"], again["promoted"]) == (False, False)
    assert "is the primary already" in again["msg"]
    assert again["auth_token_fingerprint"] == fingerprint(new)
    assert (account.primary, account.retired) == (new, [CANARY])


def test_a_second_post_replaces_the_secondary(account: TwilioStandin) -> None:
    """Why a run passes back the secondary it stored: Twilio keeps one, a new POST replaces
    it and the first stops working."""
    first = run(account, "secondary")["secondary_auth_token"]
    second = run(account, "secondary")["secondary_auth_token"]
    assert first != second and account.secondary == second
    assert not account.authenticates(first)
    failed = run(account, "promoted", secondary_token=first)
    assert failed["failed"] and not failed["changed"]
    assert failed["msg"] == (
        "twilio_auth_token: POST /v1/AuthTokens/Promote: HTTP 401 Unauthorized: Authenticate "
        f"(code 20003); 1 attempt in 0.0 s (secondary_token {fingerprint(first)} does not "
        f"authenticate {account.account_sid}); nothing was changed"
    )
    assert first not in failed["msg"] and account.primary == CANARY


def test_secondary_absent_deletes_once(account: TwilioStandin) -> None:
    run(account, "secondary")
    deleted = run(account, "secondary_absent")
    assert deleted["changed"] and deleted["deleted"] and account.secondary is None
    again = run(account, "secondary_absent")
    assert (again["changed"], again["deleted"]) == (False, False)
    assert again["msg"] == "no secondary token: nothing changed"
    assert account.primary == CANARY


def test_check_proves_a_token_and_refuses_a_wrong_one(account: TwilioStandin) -> None:
    wrong = "0" * 32
    refused = run(account, "check", auth_token=wrong)
    assert refused["failed"] and refused["authenticated"] is False and not refused["changed"]
    assert f"auth_token {fingerprint(wrong)} does not authenticate account" in refused["msg"]
    assert "HTTP 401 Unauthorized: Authenticate (code 20003)" in refused["msg"]
    assert refused["msg"].endswith("nothing was changed") and wrong not in refused["msg"]
    run(account, "secondary")
    deleting = run(account, "check")  # the one proof Twilio offers deletes a secondary
    assert deleting["authenticated"] and deleting["deleted"] and deleting["changed"]
    assert "state=check deleted the account's secondary token" in deleting["warnings"][0]
    assert account.secondary is None


def test_check_mode_sends_nothing(account: TwilioStandin) -> None:
    secondary = run(account, "secondary", check_mode=True)
    assert secondary["changed"] and not secondary["created"] and secondary["calls"] == []
    promote = run(account, "promoted", check_mode=True, secondary_token="1" * 32)
    assert promote["changed"] and promote["msg"].startswith("check mode: would POST")
    absent = run(account, "secondary_absent", check_mode=True)
    assert absent["changed"] and "cannot be read" in absent["msg"]
    check = run(account, "check", check_mode=True)
    assert check["authenticated"] is None and not check["changed"]
    assert account.calls == [] and account.server.calls == []


def test_retries_then_success_and_giving_up_at_the_deadline(account: TwilioStandin) -> None:
    new = run(account, "secondary")["secondary_auth_token"]
    account.fail_next(503, times=2)
    sleeps = Sleeps()
    promoted = run(account, "promoted", secondary_token=new, sleep=sleeps)
    assert promoted["promoted"] and sleeps == [1.0, 2.0]
    assert promoted["calls"] == [
        "POST /v1/AuthTokens/Promote 503",
        "POST /v1/AuthTokens/Promote 503",
        "POST /v1/AuthTokens/Promote 200",
    ]
    account.fail_next(429, times=9, code=20429)
    gave_up = run(account, "check", auth_token=new, deadline_s=0.5)
    assert gave_up["failed"] and not gave_up["changed"]
    assert (
        "DELETE /v1/AuthTokens/Secondary: HTTP 429 Too Many Requests: Too Many Requests "
        in (gave_up["msg"])
    )
    assert gave_up["msg"].endswith(
        "(code 20429); 1 attempt in 0.0 s; gave up: the next wait is 1.0 s, past the deadline "
        "of 0.5 s (0.0 s spent); nothing was changed"  # a 429: Twilio did nothing
    )
    assert new not in gave_up["msg"]
    account.failures.clear()
    account.fail_next(503, times=9)
    unknown = run(account, "secondary_absent", auth_token=new, deadline_s=2.5)
    assert unknown["calls"] == ["DELETE /v1/AuthTokens/Secondary 503"] * 2
    assert unknown["msg"].endswith(
        "HTTP 503 Service Unavailable: Service unavailable (code 20500); 2 attempts in 1.0 s; "
        "gave up: the next wait is 2.0 s, past the deadline of 2.5 s (1.0 s spent); whether the "
        "secondary token was deleted is unknown (a rerun finds out)"
    )


def test_invalid_input_sends_nothing(account: TwilioStandin) -> None:
    bad = run(account, "promoted", account_sid="AC123", timeout_s=0)
    assert bad["failed"] and bad["calls"] == [] and account.server.calls == []
    assert bad["msg"] == (
        "twilio_auth_token: invalid input: account_sid must be AC followed by 32 hexadecimal "
        "digits; state=promoted needs secondary_token (the token to promote); timeout_s must "
        "be > 0, got 0; nothing was sent"
    )
    check = run(account, "check", secondary_token="1" * 32)
    assert check["failed"] and "state=check takes no secondary_token" in check["msg"]


def test_tokens_are_no_log_options() -> None:
    spec = twilio.argument_spec()
    assert spec["auth_token"]["no_log"] and spec["secondary_token"]["no_log"]
    assert "no_log" not in spec["account_sid"]
