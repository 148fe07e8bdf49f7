"""library/tls_cert.py's pure parts: what an https URL connects to, and how a certificate's
dates and the verifying handshake's answer are judged (the module against real TLS servers:
tests/integration/test_routine_checks.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.loaders import load_library

tls = load_library("tls_cert")

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PARAMS = {"warn_days": 21.0, "fail_days": 7.0}


def facts(days_left: float, self_signed: bool = False, started: float = -30) -> dict[str, Any]:
    return {
        "not_before": NOW + timedelta(days=started),
        "not_after": NOW + timedelta(days=days_left),
        "subject": "CN=app.example.com",
        "issuer": "CN=app.example.com" if self_signed else "CN=R3,O=Let's Encrypt,C=US",
        "names": ["app.example.com"],
        "self_signed": self_signed,
    }


def test_a_valid_trusted_certificate_is_ok() -> None:
    found = tls.judge(facts(60), None, PARAMS, NOW)
    assert found["status"] == "ok" and found["problems"] == [] and found["trusted"] is True
    assert found["days_left"] == 60 and found["not_after"] == "2024-06-30T12:00:00Z"
    assert found["summary"] == (
        "60 days left (until 2024-06-30T12:00:00Z); issued by CN=R3,O=Let's Encrypt,C=US"
    )


@pytest.mark.parametrize(
    ("days", "status", "problem"),
    [(20.9, "warn", "expires in under 21 days"), (21, "ok", None),
     (6.5, "fail", "expires in under 7 days"), (7, "warn", "expires in under 21 days")],
)  # fmt: skip
def test_days_to_expiry_against_the_thresholds(days: float, status: str, problem: str) -> None:
    found = tls.judge(facts(days), None, PARAMS, NOW)
    assert found["status"] == status
    assert found["problems"] == ([problem] if problem else [])


def test_expired_self_signed_and_not_yet_valid_fail_with_the_days_reported() -> None:
    expired = tls.judge(facts(-3), "certificate has expired", PARAMS, NOW)
    assert expired["status"] == "fail" and expired["days_left"] == -3
    assert expired["problems"] == ["expired 3 days ago (2024-04-28T12:00:00Z)"]  # said once
    selfs = tls.judge(facts(200, self_signed=True), "self-signed certificate", PARAMS, NOW)
    assert selfs["status"] == "fail" and selfs["trusted"] is False
    assert selfs["problems"] == ["not trusted: self-signed certificate"]
    assert "200 days left (until 2024-11-17T12:00:00Z)" in selfs["summary"]
    wrong_name = "Hostname mismatch, certificate is not valid for 'api.example.com'."
    assert tls.judge(facts(90), wrong_name, PARAMS, NOW)["problems"] == [
        f"not trusted: {wrong_name}"
    ]
    early = tls.judge(facts(90, started=2), None, PARAMS, NOW)
    assert early["status"] == "fail" and early["problems"] == [
        "not valid before 2024-05-03T12:00:00Z"
    ]


def test_urls_and_inputs() -> None:
    assert tls.endpoint("https://app.example.com/health") == ("app.example.com", 443)
    assert tls.endpoint("HTTPS://[::1]:8443") == ("::1", 8443)
    for bad, why in (("http://a", "not an https:// URL"), ("https://", "names no host"),
                     ("https://a:99999", "invalid port")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            tls.endpoint(bad)
    params = {"urls": [], "warn_days": 21, "fail_days": -1, "timeout_s": 0}
    assert tls.input_errors(params) == [
        "urls must name at least one https:// URL",
        "warn_days and fail_days must be >= 0",
        "timeout_s must be > 0, got 0",
    ]
