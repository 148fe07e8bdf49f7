"""library/notify_webhook.py without a server: the Slack-compatible payload, retries (5xx,
429 with Retry-After, no retry on 4xx), errors that never carry the webhook URL, check mode,
and the argument spec against the documentation."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.loaders import load_library, load_module_utils

nw = load_library("notify_webhook")
notify = load_module_utils("opsbook_notify")  # the payload and the POST, shared with the oplog

URL = "https://hooks.example.com/services/T000/B000/SECRETtoken123"


def params(**kw: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in nw.argument_spec().items()}
    values["url"] = URL
    values["retry_delay_s"] = 0
    values.update(kw)
    return values


class FakePost:
    """Answers in turn: an int status, or an exception to raise."""

    def __init__(self, *answers: Any, headers: dict[str, str] | None = None) -> None:
        self.answers = list(answers)
        self.headers = headers or {}
        self.bodies: list[bytes] = []

    def __call__(self, url: str, body: bytes, _params: dict[str, Any]) -> tuple[int, dict]:
        assert url == URL
        self.bodies.append(body)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer, self.headers


def test_argument_spec_marks_the_url_secret_and_matches_documentation() -> None:
    spec = nw.argument_spec()
    assert spec["url"]["no_log"] is True
    documented = yaml.safe_load(nw.DOCUMENTATION)["options"]
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option["type"], name
        assert documented[name].get("default") == option.get("default"), name
    yaml.safe_load(nw.EXAMPLES)
    yaml.safe_load(nw.RETURN)


def test_payload_is_slack_compatible() -> None:
    payload = nw.build_payload(
        params(
            event="success",
            title="deploy 2.1.0 to production",
            fields={"environment": "production", "hosts": ["app1", "app2"], "empty": ""},
            run_id="run-9",
            channel="#deploys",
        ),
        now=1714564800,
    )
    assert payload["text"] == ":white_check_mark: deploy 2.1.0 to production succeeded"
    assert payload["username"] == "opsbook" and payload["channel"] == "#deploys"
    [attachment] = payload["attachments"]
    assert attachment["color"] == "good" and attachment["ts"] == 1714564800
    assert attachment["footer"] == "opsbook run run-9"
    assert attachment["fields"] == [
        {"title": "environment", "value": "production", "short": True},
        {"title": "hosts", "value": "app1, app2", "short": True},
    ]
    failure = nw.build_payload(params(event="failure", title="deploy"))
    assert failure["text"] == ":x: deploy FAILED"
    assert failure["attachments"][0]["color"] == "danger"
    assert nw.build_payload(params(event="start", text="custom"))["text"] == "custom"
    assert nw.build_payload(params(payload={"text": "raw"})) == {"text": "raw"}


def test_delivered_on_first_2xx() -> None:
    post = FakePost(200)
    result = nw.run(params(event="start"), check_mode=False, post=post)
    assert result["delivered"] and result["status"] == 200 and result["attempts"] == 1
    assert result["webhook"] == "https://hooks.example.com"
    assert result["msg"] == "notification (start) delivered to https://hooks.example.com (HTTP 200)"
    assert b'"text": ":rocket: opsbook started"' in post.bodies[0]
    assert not result["changed"]


def test_retries_5xx_and_connection_errors_then_gives_up_without_the_url() -> None:
    sleeps: list[float] = []
    post = FakePost(500, ConnectionRefusedError(f"cannot reach {URL}"), 503)
    outcome = nw.send(params(retries=2, retry_delay_s=0.5), {"text": "x"}, post, sleeps.append)
    assert not outcome["delivered"] and outcome["attempts"] == 3 and outcome["status"] == 503
    assert sleeps == [0.5, 0.5]
    flaky = FakePost(ConnectionRefusedError(f"cannot reach {URL}"))
    problem = nw.send(params(retries=0), {"text": "x"}, flaky, sleeps.append)["problem"]
    assert "SECRETtoken123" not in problem and "<webhook>" in problem


def test_honours_retry_after_up_to_a_limit() -> None:
    sleeps: list[float] = []
    post = FakePost(429, 200, headers={"Retry-After": "60"})
    outcome = nw.send(params(retries=2), {"text": "x"}, post, sleeps.append)
    assert outcome["delivered"] and outcome["attempts"] == 2
    assert sleeps == [notify.MAX_RETRY_AFTER_S]


def test_4xx_is_not_retried() -> None:
    post = FakePost(404, 200)
    result = nw.run(params(retries=3), check_mode=False, post=post)
    assert not result["delivered"] and result["attempts"] == 1 and result["status"] == 404
    assert (
        "NOT delivered to https://hooks.example.com after 1 attempt(s): HTTP 404" in result["msg"]
    )
    assert "SECRET" not in result["msg"]


def test_check_mode_and_empty_url_send_nothing() -> None:
    post = FakePost()
    checked = nw.run(params(event="failure"), check_mode=True, post=post)
    assert not checked["delivered"] and checked["attempts"] == 0 and post.bodies == []
    assert checked["payload"]["text"].startswith(":x:")
    assert "check mode" in checked["msg"]
    empty = nw.run(params(url=""), check_mode=False, post=post)
    assert empty["msg"] == "no webhook URL: nothing sent" and post.bodies == []


@pytest.mark.parametrize(
    "url", ["ftp://hooks.example.com/x", "hooks.example.com/SECRET", "http://"]
)
def test_bad_urls_are_refused_without_echoing_them(url: str) -> None:
    errors = nw.validate_params(params(url=url))
    assert errors == ["url must be an http:// or https:// URL (value not shown: secret)"]
    assert nw.validate_params(params()) == []
    assert nw.validate_params(params(url="")) == []
    assert any("timeout_s" in e for e in nw.validate_params(params(timeout_s=0)))


def test_scrub_removes_the_url_and_its_path() -> None:
    text = f"error for {URL} at /services/T000/B000/SECRETtoken123 ({URL}/)"
    scrubbed = nw.scrub(text, URL)
    assert "SECRET" not in scrubbed and scrubbed.count("<webhook>") == 3
