# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_http: one HTTP GET timed in milliseconds and judged (status, latency, JSON body).

Shared by the http_check module (one URL) and the http_gate module (the hosts of a deploy
batch, checked concurrently). Standard library plus ansible.module_utils.urls only.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from ansible.module_utils.urls import open_url

BODY_EXCERPT_CHARS = 1024


@dataclass
class Response:
    """What one GET produced. ``status`` is None when no HTTP answer arrived."""

    url: str
    status: int | None = None
    latency_ms: float | None = None
    body: bytes = b""
    content_type: str = ""
    error: str | None = None


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each naming the option (empty when the input is valid)."""
    errors = []
    url = params.get("url") or ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        errors.append(f"url must be an http:// or https:// URL with a host, got {url!r}")
    if params.get("timeout_s") is not None and params["timeout_s"] <= 0:
        errors.append(f"timeout_s must be > 0, got {params['timeout_s']}")
    threshold = params.get("latency_threshold_ms")
    if threshold is not None and threshold <= 0:
        errors.append(f"latency_threshold_ms must be > 0, got {threshold}")
    statuses = params.get("expect_status") or []
    if not statuses:
        errors.append("expect_status must list at least one status code")
    bad = [s for s in statuses if not 100 <= s <= 599]
    if bad:
        errors.append(f"expect_status holds codes outside 100-599: {bad}")
    if params.get("retries", 0) < 0:
        errors.append(f"retries must be >= 0, got {params['retries']}")
    if params.get("retry_delay_s", 0) < 0:
        errors.append(f"retry_delay_s must be >= 0, got {params['retry_delay_s']}")
    if params.get("max_body_bytes", 1) < 1:
        errors.append(f"max_body_bytes must be >= 1, got {params['max_body_bytes']}")
    return errors


def parse_json_body(body: bytes) -> tuple[Any, str | None]:
    """(parsed value, None) or (None, reason) when the body is not JSON."""
    if not body.strip():
        return None, "empty body"
    try:
        return json.loads(body.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not JSON ({exc.__class__.__name__})"


def format_ms(value: float) -> str:
    return f"{value:.0f} ms"


def evaluate(
    response: Response,
    parsed: Any,
    expect_status: list[int],
    latency_threshold_ms: float | None = None,
    expect_json_keys: list[str] | None = None,
    expect_json: dict[str, Any] | None = None,
) -> list[str]:
    """Every problem of one answer, as readable sentences (empty list: healthy)."""
    if response.status is None:
        return [f"no HTTP answer: {response.error or 'unknown error'}"]
    problems = []
    if response.status not in expect_status:
        wanted = " or ".join(str(s) for s in expect_status)
        problems.append(f"status {response.status}, expected {wanted}")
    if (
        latency_threshold_ms is not None
        and response.latency_ms is not None
        and response.latency_ms > latency_threshold_ms
    ):
        problems.append(
            f"latency {format_ms(response.latency_ms)} over threshold "
            f"{format_ms(latency_threshold_ms)}"
        )
    if expect_json_keys:
        if not isinstance(parsed, dict):
            problems.append(
                "body is not a JSON object (expected keys: " + ", ".join(expect_json_keys) + ")"
            )
        else:
            missing = [k for k in expect_json_keys if k not in parsed]
            if missing:
                problems.append("JSON body lacks key(s): " + ", ".join(missing))
    if expect_json:
        if not isinstance(parsed, dict):
            wanted = ", ".join(f"{k}={v}" for k, v in expect_json.items())
            problems.append(f"body is not a JSON object (expected {wanted})")
        else:
            for key, value in expect_json.items():
                if key not in parsed:
                    problems.append(f"JSON body lacks key {key} (expected {key}={value})")
                elif str(parsed[key]) != str(value):
                    problems.append(f"{key} is {parsed[key]}, expected {value}")
    return problems


def describe_error(exc: BaseException) -> str:
    """A short, readable reason for a failed request."""
    if isinstance(exc, URLError) and not isinstance(exc, HTTPError):
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        return str(reason) or exc.__class__.__name__
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{exc.__class__.__name__}: {exc}".rstrip(": ")


def fetch(
    url: str,
    timeout_s: float = 10.0,
    headers: dict[str, str] | None = None,
    validate_certs: bool = True,
    use_proxy: bool = True,
    max_body_bytes: int = 1048576,
    clock: Callable[[], float] = time.monotonic,
) -> Response:
    """GET ``url`` once and time it to the last byte of the body. Never raises for I/O."""
    started = clock()
    try:
        handle = open_url(
            url,
            method="GET",
            headers=headers or None,
            timeout=timeout_s,
            validate_certs=validate_certs,
            use_proxy=use_proxy,
            follow_redirects="safe",
        )
    except HTTPError as exc:  # a real HTTP answer with a non-2xx status
        handle = exc
    except Exception as exc:
        return Response(url=url, error=describe_error(exc))
    try:
        body = handle.read(max_body_bytes) or b""
    except Exception as exc:
        return Response(url=url, error=f"reading the body failed: {describe_error(exc)}")
    finally:
        with contextlib.suppress(Exception):
            handle.close()
    elapsed_ms = round((clock() - started) * 1000.0, 1)
    status = getattr(handle, "status", None) or getattr(handle, "code", None)
    final_url = handle.geturl() if hasattr(handle, "geturl") else url
    return Response(
        url=final_url or url,
        status=int(status) if status is not None else None,
        latency_ms=elapsed_ms,
        body=body,
        content_type=(handle.headers.get("Content-Type", "") if handle.headers else ""),
    )


def summarize(url: str, response: Response, problems: list[str]) -> str:
    """``GET <url>: 200 in 23 ms, ok`` or ``GET <url>: <problems>``."""
    if response.status is None:
        return f"GET {url}: " + "; ".join(problems)
    head = f"GET {url}: {response.status} in {format_ms(response.latency_ms or 0)}"
    return head + (", ok" if not problems else ": " + "; ".join(problems))


def run_check(
    params: dict[str, Any],
    fetcher: Callable[..., Response] = fetch,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Attempt the check (with retries) and build the module result (without ``failed``)."""
    attempts = 0
    while True:
        attempts += 1
        response = fetcher(
            params["url"],
            timeout_s=params["timeout_s"],
            headers=params.get("headers") or {},
            validate_certs=params["validate_certs"],
            use_proxy=params["use_proxy"],
            max_body_bytes=params["max_body_bytes"],
        )
        parsed = None
        if params["parse_json"] or params["expect_json_keys"] or params["expect_json"]:
            parsed, _unused = parse_json_body(response.body)
        problems = evaluate(
            response,
            parsed,
            params["expect_status"],
            params.get("latency_threshold_ms"),
            params["expect_json_keys"],
            params.get("expect_json") or {},
        )
        if not problems or attempts > params["retries"]:
            break
        sleep(params["retry_delay_s"])
    return {
        "changed": False,
        "url": response.url,
        "status": response.status,
        "latency_ms": response.latency_ms,
        "json": parsed if (params["parse_json"] or params.get("expect_json")) else None,
        "content_type": response.content_type,
        "body": response.body[: BODY_EXCERPT_CHARS * 4].decode("utf-8", "replace")[
            :BODY_EXCERPT_CHARS
        ],
        "error": response.error,
        "ok": not problems,
        "problems": problems,
        "attempts": attempts,
        "msg": summarize(params["url"], response, problems),
    }
