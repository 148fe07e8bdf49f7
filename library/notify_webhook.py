#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""notify_webhook: post a Slack-compatible message to an incoming webhook (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: notify_webhook
short_description: Post a Slack-compatible message to an incoming webhook; warn, never fail
description:
  - POSTs a JSON payload to O(url), an incoming webhook of Slack or of a service that accepts
    Slack's payload (Mattermost, Rocket.Chat, Discord's C(/slack) endpoint, Microsoft Teams
    workflows that parse it, ...).
  - The payload is C({"text", "username", "attachments"}) - the text, then one attachment with
    a colour for O(event) (C(start) blue, C(success) green, C(failure) red), O(title), the
    O(fields) as short fields and a footer naming the opsbook run. O(payload) replaces it
    entirely.
  - The webhook URL is a secret (whoever has it can post to the channel) - it is a C(no_log)
    option and never appears in a message, a warning or a result; only its scheme and host do
    (RV(webhook)).
  - A notification that cannot be delivered (connection refused, timeout, an HTTP error after
    O(retries), a malformed O(url)) does B(not) fail the task unless O(fail_on_error=true) - it
    returns RV(delivered=false) with a warning. An empty O(url) sends nothing.
version_added: "0.2.0"
author:
  - opsbook maintainers
extends_documentation_fragment: [opsbook_controller]  # the action, diff_mode, platform attributes
options:
  url:
    description:
      - The webhook URL (C(https://hooks.slack.com/services/...)). Empty sends nothing.
    type: str
    required: true
  event:
    description:
      - What happened; sets the emoji of the generated text and the attachment's colour.
    type: str
    choices: [start, success, failure, info]
    default: info
  title:
    description:
      - What the message is about (C(deploy 2.1.0 to production)); the generated text is
        C(<emoji> <title> <started|succeeded|FAILED>).
    type: str
    default: opsbook
  text:
    description:
      - The message text; replaces the generated one.
    type: str
    default: ""
  fields:
    description:
      - Name -> value pairs shown in the attachment (values are shown as text; lists joined
        with commas). No secrets.
    type: dict
    default: {}
  username:
    description:
      - Name shown as the sender (honoured by webhooks that allow it).
    type: str
    default: opsbook
  icon_emoji:
    description:
      - Emoji shown as the sender's icon (C(:robot_face:)); empty leaves the webhook's own.
    type: str
    default: ""
  channel:
    description:
      - Channel override (Mattermost and legacy Slack webhooks); empty leaves the webhook's own.
    type: str
    default: ""
  run_id:
    description:
      - The run named in the footer. Default - C(OPSBOOK_RUN_ID) from the environment.
    type: str
  payload:
    description:
      - A complete payload to send instead of the generated one.
    type: dict
  timeout_s:
    description:
      - Seconds to wait for the webhook to answer (per attempt).
    type: float
    default: 10
  retries:
    description:
      - Extra attempts after a connection error, a timeout, HTTP 429 or 5xx.
    type: int
    default: 2
  retry_delay_s:
    description:
      - Seconds between attempts (a C(Retry-After) answer is honoured up to 10 s).
    type: float
    default: 1
  validate_certs:
    description:
      - Validate the webhook's TLS certificate.
    type: bool
    default: true
  use_proxy:
    description:
      - Use the proxy from the environment (C(https_proxy)).
    type: bool
    default: true
  fail_on_error:
    description:
      - Fail the task when the notification is not delivered (default - a warning only).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Nothing is sent in check mode; RV(payload) shows what would be.
notes:
  - The task reports C(changed=false) - a notification changes nothing on the managed systems.
"""

EXAMPLES = r"""
- name: Tell the channel the deploy started
  notify_webhook:
    url: "{{ notify_webhook_url }}"
    event: start
    title: "deploy {{ app_version }} to {{ opsbook_env }}"
    fields:
      environment: "{{ opsbook_env }}"
      version: "{{ app_version }}"
      reason: "{{ opsbook_reason | default('') }}"
  delegate_to: localhost
  run_once: true
  no_log: true  # the URL is secret; warnings still show
"""

RETURN = r"""
delivered:
  description: Whether the webhook accepted the message (a 2xx answer).
  returned: always
  type: bool
  sample: true
status:
  description: The HTTP status of the last attempt (null when no answer).
  returned: always
  type: int
  sample: 200
attempts:
  description: How many POSTs were made.
  returned: always
  type: int
  sample: 1
webhook:
  description: The webhook's scheme and host (never its path, which holds the secret).
  returned: always
  type: str
  sample: https://hooks.slack.com
payload:
  description: The payload sent (or that would be sent).
  returned: always
  type: dict
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: notification (success) delivered to https://hooks.slack.com (HTTP 200)
"""

import contextlib
import json
import os
import time
import urllib.error
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ansible.module_utils.opsbook_module import run_module
from ansible.module_utils.urls import open_url

EVENTS = {
    "start": (":rocket:", "#439FE0", "started"),
    "success": (":white_check_mark:", "good", "succeeded"),
    "failure": (":x:", "danger", "FAILED"),
    "info": (":information_source:", "#9E9E9E", ""),
}
MAX_RETRY_AFTER_S = 10.0


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "url": {"type": "str", "required": True, "no_log": True},
        "event": {"type": "str", "choices": list(EVENTS), "default": "info"},
        "title": {"type": "str", "default": "opsbook"},
        "text": {"type": "str", "default": ""},
        "fields": {"type": "dict", "default": {}},
        "username": {"type": "str", "default": "opsbook"},
        "icon_emoji": {"type": "str", "default": ""},
        "channel": {"type": "str", "default": ""},
        "run_id": {"type": "str"},
        "payload": {"type": "dict"},
        "timeout_s": {"type": "float", "default": 10.0},
        "retries": {"type": "int", "default": 2},
        "retry_delay_s": {"type": "float", "default": 1.0},
        "validate_certs": {"type": "bool", "default": True},
        "use_proxy": {"type": "bool", "default": True},
        "fail_on_error": {"type": "bool", "default": False},
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = []
    url = (params.get("url") or "").strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # never echo the URL: it is the secret
            errors.append("url must be an http:// or https:// URL (value not shown: secret)")
    if (params.get("timeout_s") or 0) <= 0:
        errors.append("timeout_s must be > 0")
    if (params.get("retries") or 0) < 0:
        errors.append("retries must be >= 0")
    if (params.get("retry_delay_s") or 0) < 0:
        errors.append("retry_delay_s must be >= 0")
    return errors


def webhook_label(url: str) -> str:
    """scheme://host[:port] of the webhook: what may be shown."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def field_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if value is None:
        return "-"
    return str(value)


def build_payload(params: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The Slack-compatible payload for params (O(payload) when given)."""
    if params.get("payload"):
        return dict(params["payload"])
    emoji, color, word = EVENTS[params.get("event") or "info"]
    title = params.get("title") or "opsbook"
    text = params.get("text") or " ".join(part for part in (emoji, title, word) if part)
    run_id = params.get("run_id") or ""
    attachment: dict[str, Any] = {
        "fallback": text,
        "color": color,
        "title": title,
        "fields": [
            {"title": str(name), "value": field_value(value), "short": len(field_value(value)) < 40}
            for name, value in (params.get("fields") or {}).items()
            if value not in ("", None)
        ],
        "footer": f"opsbook run {run_id}" if run_id else "opsbook",
        "ts": int(time.time() if now is None else now),
    }
    payload: dict[str, Any] = {"text": text, "attachments": [attachment]}
    if params.get("username"):
        payload["username"] = params["username"]
    if params.get("icon_emoji"):
        payload["icon_emoji"] = params["icon_emoji"]
    if params.get("channel"):
        payload["channel"] = params["channel"]
    return payload


def scrub(text: str, url: str) -> str:
    """text without the webhook URL, or its path (the secret part)."""
    if not url:
        return text
    path = urlsplit(url).path
    for secret in (url, url.rstrip("/"), path if len(path) > 1 else ""):
        if secret:
            text = text.replace(secret, "<webhook>")
    return text


def default_post(url: str, body: bytes, params: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """POST body; (status, headers). HTTP errors come back as statuses; others raise."""
    try:
        response = open_url(
            url,
            data=body,
            headers={"Content-Type": "application/json", "Accept": "*/*"},
            method="POST",
            timeout=params["timeout_s"],
            validate_certs=params["validate_certs"],
            use_proxy=params["use_proxy"],
            http_agent="opsbook-notify",
            follow_redirects="none",
        )
        with response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers or {})


def send(
    params: dict[str, Any],
    payload: dict[str, Any],
    post: Callable[[str, bytes, dict[str, Any]], tuple[int, dict[str, str]]] = default_post,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST payload with retries; never raises. The result and its messages hold no URL."""
    url = params["url"].strip()
    label = webhook_label(url)
    body = json.dumps(payload).encode()
    attempts, status, problem = 0, None, ""
    for attempt in range(int(params.get("retries") or 0) + 1):
        attempts += 1
        delay = float(params.get("retry_delay_s") or 0)
        try:
            status, headers = post(url, body, params)
        except Exception as exc:  # connection refused, timeout, TLS: all mean "not delivered"
            status = None
            problem = scrub(f"{type(exc).__name__}: {exc}", url)
        else:
            if 200 <= status < 300:
                return {
                    "delivered": True,
                    "status": status,
                    "attempts": attempts,
                    "webhook": label,
                    "problem": "",
                }
            problem = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # a 4xx will not get better: wrong URL, revoked webhook, bad payload
            retry_after = headers.get("Retry-After") or headers.get("retry-after")
            if retry_after:
                with contextlib.suppress(ValueError):
                    delay = min(max(float(retry_after), delay), MAX_RETRY_AFTER_S)
        if attempt < int(params.get("retries") or 0):
            sleep(delay)
    return {
        "delivered": False,
        "status": status,
        "attempts": attempts,
        "webhook": label,
        "problem": problem,
    }


def run(params: dict[str, Any], check_mode: bool, post: Callable = default_post) -> dict[str, Any]:
    params = dict(params)
    params["run_id"] = params.get("run_id") or os.environ.get("OPSBOOK_RUN_ID", "")
    payload = build_payload(params)
    event = params.get("event") or "info"
    url = (params.get("url") or "").strip()
    result: dict[str, Any] = {"changed": False, "payload": payload, "delivered": False}
    if not url:
        result.update(status=None, attempts=0, webhook="", msg="no webhook URL: nothing sent")
        return result
    if check_mode:
        result.update(
            status=None,
            attempts=0,
            webhook=webhook_label(url),
            msg=f"check mode: notification ({event}) not sent to {webhook_label(url)}",
        )
        return result
    outcome = send(params, payload, post=post)
    problem = outcome.pop("problem")
    result.update(outcome)
    if outcome["delivered"]:
        result["msg"] = (
            f"notification ({event}) delivered to {outcome['webhook']} (HTTP {outcome['status']})"
        )
    else:
        result["msg"] = (
            f"notification ({event}) NOT delivered to {outcome['webhook']} after "
            f"{outcome['attempts']} attempt(s): {problem}"
        )
    return result


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, with ``failed`` (only with
    fail_on_error) and ``warnings``; never the URL. main() runs it in a module process; on the
    controller the action plugin (action_plugins/notify_webhook.py) runs it in the task's
    worker."""
    errors = validate_params(params)
    if errors:
        msg = "notify_webhook: invalid input: " + "; ".join(errors) + "; nothing sent"
        if params["fail_on_error"]:
            return {"failed": True, "changed": False, "msg": msg}
        return {
            "changed": False,
            "delivered": False,
            "status": None,
            "attempts": 0,
            "webhook": "",
            "payload": {},
            "msg": msg,
            "warnings": [msg + " (the run goes on)"],
        }
    result = run(params, check_mode)
    result["msg"] = scrub(result["msg"], params.get("url") or "")
    if not result["delivered"] and result["attempts"]:
        if params["fail_on_error"]:
            return {**result, "failed": True}
        result["warnings"] = [result["msg"] + " (the run goes on)"]
    return result


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
