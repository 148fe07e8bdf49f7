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
  - opsbook maintainers (@opsbook)
# the action, diff_mode, platform attributes
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
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
  - Every runbook already announces its start (when asked), success and failure through the
    operation log (C(ansible-doc -t callback opsbook.runbooks.opsbook_oplog), variable
    C(opsbook_notify_webhook_url)), with the same payload and POST
    (C(module_utils/opsbook_notify.py)). This module is for a message of a playbook's own,
    mid-run.
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

import os
from collections.abc import Callable
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_notify import (
    EVENTS,
    build_payload,
    check_url,
    default_post,
    outcome_message,
    scrub,
    send,
    webhook_label,
)


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
    errors = check_url(params.get("url") or "")  # never echoes the URL: it is the secret
    if (params.get("timeout_s") or 0) <= 0:
        errors.append("timeout_s must be > 0")
    if (params.get("retries") or 0) < 0:
        errors.append("retries must be >= 0")
    if (params.get("retry_delay_s") or 0) < 0:
        errors.append("retry_delay_s must be >= 0")
    return errors


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
    result["msg"] = outcome_message(event, outcome)
    del outcome["problem"]
    result.update(outcome)
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
