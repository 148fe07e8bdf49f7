# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_notify: Slack-compatible notifications - the payload and the POST, in one place.

Shared by the notify_webhook module (a notification a playbook sends itself) and the
operation-log callback (``callback_plugins/opsbook_oplog.py``: the start, success and failure
notification of every runbook, rendered from the run's operation-log record). The callback
loads this file by path, like ``opsbook_secret_names.py``; ``opsbook history`` reads the
runbooks' summary lines with :func:`summary_lines` (``src/opsbook/_notify.py`` is a symlink to
this file). Python standard library only at import time (``open_url`` is imported when a POST
is made), so each side can load it.

The webhook URL is a secret (whoever has it can post to the channel): nothing here puts it in
a message, a result or a warning - only its scheme and host (:func:`webhook_label`).
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

#: event -> (emoji, colour of the attachment, word of the generated text)
EVENTS: dict[str, tuple[str, str, str]] = {
    "start": (":rocket:", "#439FE0", "started"),
    "success": (":white_check_mark:", "good", "succeeded"),
    "failure": (":x:", "danger", "FAILED"),
    "info": (":information_source:", "#9E9E9E", ""),
}
WARN_COLOR = "warning"
WARN_EMOJI = ":warning:"
MAX_RETRY_AFTER_S = 10.0
BAD_URL = "url must be an http:// or https:// URL (value not shown: secret)"

#: a run's record status -> what the notification's title says
STATUS_WORDS: dict[str, str] = {
    "started": "started",
    "successful": "succeeded",
    "failed": "FAILED",
    "unreachable": "FAILED (hosts unreachable)",
    "canceled": "CANCELED",
    "timeout": "TIMED OUT",
}
#: scalar fields of a runbook's output that make its line when it publishes no summary
SUMMARY_FIELDS = (
    "verdict", "status", "ok", "version", "release_id", "backup_id", "target", "requested",
    "before", "after", "report_path",
)  # fmt: skip
MAX_LINES = 12
MAX_FAILURES = 3
LINE_LIMIT = 300
MASK = "***"


# ---------------------------------------------------------------------------
# The Slack-compatible payload
# ---------------------------------------------------------------------------


def check_url(url: str) -> list[str]:
    """Problems of a webhook URL (empty: fine, or empty URL) - never echoing it."""
    url = (url or "").strip()
    if not url:
        return []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [BAD_URL]
    return []


def webhook_label(url: str) -> str:
    """scheme://host[:port] of the webhook: what may be shown."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    with contextlib.suppress(ValueError):
        if parts.port:
            host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}"


def field_value(value: Any) -> str:
    """A field's value as text (lists joined with commas)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if value is None:
        return "-"
    return str(value)


def build_payload(params: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """The Slack-compatible payload: ``text``, then one attachment with the event's colour,
    ``title``, the ``fields`` as short fields, the ``lines`` as its text and a footer naming
    the opsbook run. ``params["payload"]``, when given, is sent as it is."""
    if params.get("payload"):
        return dict(params["payload"])
    emoji, color, word = EVENTS[params.get("event") or "info"]
    title = params.get("title") or "opsbook"
    text = params.get("text") or " ".join(part for part in (emoji, title, word) if part)
    run_id = params.get("run_id") or ""
    attachment: dict[str, Any] = {
        "fallback": text,
        "color": params.get("color") or color,
        "title": title,
        "fields": [
            {"title": str(name), "value": field_value(value), "short": len(field_value(value)) < 40}
            for name, value in (params.get("fields") or {}).items()
            if value not in ("", None)
        ],
        "footer": f"opsbook run {run_id}" if run_id else "opsbook",
        "ts": int(time.time() if now is None else now),
    }
    if params.get("lines"):
        attachment["text"] = "\n".join(str(line) for line in params["lines"])
    payload: dict[str, Any] = {"text": text, "attachments": [attachment]}
    for key in ("username", "icon_emoji", "channel"):
        if params.get(key):
            payload[key] = params[key]
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


# ---------------------------------------------------------------------------
# The POST
# ---------------------------------------------------------------------------


def default_post(url: str, body: bytes, params: Mapping[str, Any]) -> tuple[int, dict[str, str]]:
    """POST body; (status, headers). HTTP errors come back as statuses; others raise."""
    from ansible.module_utils.urls import open_url

    try:
        response = open_url(
            url,
            data=body,
            headers={"Content-Type": "application/json", "Accept": "*/*"},
            method="POST",
            timeout=params["timeout_s"],
            validate_certs=params.get("validate_certs", True),
            use_proxy=params.get("use_proxy", True),
            http_agent="opsbook-notify",
            follow_redirects="none",
        )
        with response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers or {})


def send(
    params: Mapping[str, Any],
    payload: Mapping[str, Any],
    post: Callable[[str, bytes, Mapping[str, Any]], tuple[int, dict[str, str]]] = default_post,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST payload to ``params["url"]``, again after a connection error, a timeout, HTTP 429
    or 5xx, at most ``retries`` more times; never raises. ``delivered``, ``status`` (of the
    last attempt), ``attempts``, ``webhook`` (its label) and ``problem``: none holds the URL."""
    url = params["url"].strip()
    label = webhook_label(url)
    body = json.dumps(payload).encode()
    retries = int(params.get("retries") or 0)
    attempts, status, problem = 0, None, ""
    for attempt in range(retries + 1):
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
        if attempt < retries:
            sleep(delay)
    return {
        "delivered": False,
        "status": status,
        "attempts": attempts,
        "webhook": label,
        "problem": problem,
    }


def outcome_message(event: str, outcome: Mapping[str, Any]) -> str:
    """One line saying whether a notification arrived (the webhook's label, never its URL)."""
    if outcome["delivered"]:
        return (
            f"notification ({event}) delivered to {outcome['webhook']} (HTTP {outcome['status']})"
        )
    return (
        f"notification ({event}) NOT delivered to {outcome['webhook']} after "
        f"{outcome['attempts']} attempt(s): {outcome['problem']}"
    )


# ---------------------------------------------------------------------------
# A run's notification, rendered from its operation-log record (already redacted)
# ---------------------------------------------------------------------------


def one_line(text: str, limit: int = LINE_LIMIT) -> str:
    """text on one line (line breaks become blanks; the blanks of aligned columns are kept),
    cut to at most limit characters (the cut marked)."""
    text = " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def format_duration(seconds: Any) -> str:
    """56.9 s, 4 min 12 s, 1 h 02 min."""
    try:
        value = max(float(seconds), 0.0)
    except (TypeError, ValueError):
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and value != MASK and value != ""


def _text_lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip()]
    if isinstance(value, (list, tuple)):
        return [str(line) for line in value if str(line).strip()]
    return []


def output_lines(key: str, value: Any) -> list[str]:
    """What one output (a runbook's set_stats key) says: its ``summary`` (a list of lines, or
    text), else its ``lines``, else one line of its scalar fields (verdict, status, version,
    backup_id, ...). Values masked by the redaction are left out."""
    if not isinstance(value, Mapping):
        return [f"{key}: {value}"] if _scalar(value) else []
    for name in ("summary", "lines"):
        lines = _text_lines(value.get(name))
        if lines:
            return lines
    chosen = [name for name in SUMMARY_FIELDS if _scalar(value.get(name))]
    if not chosen:  # no field it is known by: its first short scalars
        short = [name for name, item in value.items() if _scalar(item) and len(str(item)) <= 80]
        chosen = short[:4]
    if not chosen:
        return []
    return [f"{key}: " + ", ".join(f"{name} {value[name]}" for name in chosen)]


def summary_lines(outputs: Mapping[str, Any] | None) -> list[str]:
    """The summary lines of every output a run published (``_hosts``, per-host data, skipped)."""
    lines: list[str] = []
    for key, value in (outputs or {}).items():
        if not str(key).startswith("_"):
            lines += output_lines(str(key), value)
    return lines


def worst_verdict(outputs: Mapping[str, Any] | None) -> str | None:
    """The worst ``verdict`` (ok < warn < fail) among the outputs; None when none has one."""
    order = ("ok", "warn", "fail")
    found = [
        value["verdict"]
        for value in (outputs or {}).values()
        if isinstance(value, Mapping) and value.get("verdict") in order
    ]
    return max(found, key=order.index) if found else None


def failure_lines(failures: Iterable[Mapping[str, Any]], limit: int = MAX_FAILURES) -> list[str]:
    """``failed: host | task: msg`` for the first failures and the last one (the run's own
    verdict, when a runbook fails after its report), saying how many are left out."""
    failures = list(failures or [])
    cut = len(failures) > limit
    shown = [*failures[: limit - 1], failures[-1]] if cut else failures
    lines = [
        f"failed: {item.get('host', '?')} | {item.get('task', '?')}: {item.get('msg', '')}"
        for item in shown
    ]
    if cut:
        lines.insert(limit - 1, f"... {len(failures) - limit} more failure(s)")
    return lines


def record_message(
    record: Mapping[str, Any],
    event: str,
    extra_fields: Mapping[str, Any] | None = None,
    max_lines: int = MAX_LINES,
) -> dict[str, Any]:
    """The notification of a run, from its operation-log record (or, for ``start``, the part
    known when it starts): ``event``, ``title``, ``text``, ``color``, ``fields`` (runbook,
    environment, operator, reason, duration, status, check mode, limit, then extra_fields),
    ``lines`` (the runbook's summary lines; on failure, the first failures) and ``run_id``.
    The record is already redacted (the operation log's rules); so must extra_fields be."""
    runbook = str(record.get("playbook") or "playbook")
    env = record.get("env")
    status = "started" if event == "start" else str(record.get("status") or "failed")
    outputs = record.get("outputs") or {}
    verdict = worst_verdict(outputs)
    emoji, color, _word = EVENTS.get(event, EVENTS["info"])
    title = f"{runbook} {STATUS_WORDS.get(status, status.upper())}"
    if env:
        title += f" on {env}"
    if record.get("check_mode"):
        title += " (check mode)"
    if event == "success" and verdict == "warn":
        title += " - verdict warn"
        emoji, color = WARN_EMOJI, WARN_COLOR
    fields: dict[str, Any] = {
        "runbook": runbook,
        "environment": env,
        "operator": record.get("operator"),
        "reason": one_line(record["reason"]) if record.get("reason") else None,
    }
    if event != "start":
        fields["duration"] = format_duration(record.get("duration_s"))
        fields["status"] = status + (f" (verdict {verdict})" if verdict else "")
    fields["check mode"] = "yes" if record.get("check_mode") else "no"
    fields["limit"] = record.get("limit")
    for name, value in (extra_fields or {}).items():
        fields[str(name)] = one_line(field_value(value)) if value not in ("", None) else None
    lines: list[str] = []
    if event != "start":
        if record.get("interrupted"):
            lines.append(f"interrupted by {record['interrupted']}")
        lines += summary_lines(outputs)
        if status != "successful":
            lines = failure_lines(record.get("failures") or []) + lines
    lines = [one_line(line) for line in lines]
    if len(lines) > max_lines:
        hidden = len(lines) - (max_lines - 1)
        lines = [*lines[: max_lines - 1], f"... {hidden} more line(s) in the operation log"]
    return {
        "event": event,
        "title": title,
        "text": f"{emoji} {title}",
        "color": color,
        "fields": {name: value for name, value in fields.items() if value not in ("", None)},
        "lines": lines,
        "run_id": record.get("id") or "",
    }
