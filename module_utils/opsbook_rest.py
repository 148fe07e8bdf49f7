# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_rest: the one REST client of the vendor modules (Twilio and Stripe for the secret
rotation; Vercel, Render, Fly.io and Supabase for the platform targets).

    client = RestClient("https://accounts.twilio.com", basic=(account_sid, auth_token))
    response = client.request("POST", "/v1/AuthTokens/Secondary")
    response.json()["secondary_auth_token"]

- Credentials: HTTP Basic (user, password) or a Bearer token, sent in the Authorization header
  only - never in a URL, a message or a result. A redirect is never followed (it would carry
  the header elsewhere), nor is a next-page URL on another host.
- Bodies: JSON (``json=``) or form-encoded (``form=``); query parameters (``query=``), with
  the names in ``secret_query`` masked wherever the call is named.
- Retries with exponential backoff on 429 and 5xx, honouring ``Retry-After`` (seconds or an
  HTTP date) and ``X-RateLimit-Reset`` (epoch seconds), within a total deadline: a wait that
  would end past the deadline is not begun; the error says so. A 429 is always retried (the
  vendor refused before doing anything); a 5xx, a timeout or a broken connection is retried
  for idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS), and for POST and PATCH only when
  the caller says the call is safe to repeat (``retry_unsafe=True``). A refused connection is
  always retried (nothing was sent).
- Errors (``RestError``) name the call (``POST /v1/AuthTokens/Secondary``), the status, the
  vendor's own message from the body when there is one, the attempts made and the time they
  took; every known secret (password, token, secret query values, ``secrets=``) is masked in
  them, and in the vendor's message too.
- Pagination: ``paginate()`` follows whatever a callable extracts from each page (a cursor as
  query parameters, or the next page's path or same-host URL).
- Injectable ``clock`` (monotonic), ``now`` (wall clock, for HTTP dates and reset epochs) and
  ``sleep``, so that a retry schedule is unit tested without waiting.

Standard library and ``ansible.module_utils.urls`` (urllib) only; no ``requests``.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http
import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlencode, urlsplit

from ansible.module_utils.urls import open_url
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_http import (
    describe_error,
    parse_json_body,
)

MASK = "********"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
MAX_BODY_BYTES = 10 * 1024 * 1024
MIN_SECRET_CHARS = 4  # shorter "secrets" would mask ordinary words in every message
EPOCH_THRESHOLD = 1_000_000_000  # an X-RateLimit-Reset above this is an epoch, else seconds


class RestError(Exception):
    """A call that failed: its name, status, the vendor's message, attempts. Never a secret."""

    def __init__(
        self,
        call: str,
        *,
        status: int | None = None,
        reason: str = "",
        vendor_message: str = "",
        vendor_code: Any = None,
        attempts: int = 1,
        elapsed_s: float = 0.0,
        gave_up: str = "",
        body: Any = None,
    ) -> None:
        self.call = call
        self.status = status
        self.reason = reason
        self.vendor_message = vendor_message
        self.vendor_code = vendor_code
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.gave_up = gave_up
        self.body = body
        super().__init__(call)

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """``POST /v1/AuthTokens/Secondary: HTTP 401 Unauthorized: Authenticate (code 20003);
        1 attempt in 0.2 s``"""
        if self.status is None:
            what = self.reason or "failed"
        else:
            what = f"HTTP {self.status} {_phrase(self.status)}".rstrip()
            if self.reason:
                what += f" ({self.reason})"
        text = f"{self.call}: {what}"
        if self.vendor_message:
            text += f": {self.vendor_message}"
            if self.vendor_code not in (None, ""):
                text += f" (code {self.vendor_code})"
        plural = "attempt" if self.attempts == 1 else "attempts"
        text += f"; {self.attempts} {plural} in {self.elapsed_s:.1f} s"
        if self.gave_up:
            text += f"; gave up: {self.gave_up}"
        return text


@dataclass
class Response:
    """One answer (2xx, or a status the call accepted)."""

    call: str
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    attempts: int = 1
    elapsed_s: float = 0.0
    _parsed: Any = field(default=None, repr=False)

    def json(self) -> Any:
        """The body as JSON (None when empty or not JSON)."""
        if self._parsed is None and self.body.strip():
            self._parsed, _unused = parse_json_body(self.body)
        return self._parsed


def vendor_message(parsed: Any) -> tuple[str, Any]:
    """(message, code) from the error bodies the vendors send: ``{"message", "code"}``
    (Twilio, Render, Supabase), ``{"error": {"message", "code" | "type"}}`` (Stripe, Vercel),
    ``{"error": "..."}`` (Fly), ``{"errors": [{"message"}]}``, ``{"detail"}``."""
    if not isinstance(parsed, dict):
        return "", None
    error = parsed.get("error")
    if isinstance(error, dict):
        message = error.get("message") or ""
        return str(message), error.get("code") or error.get("type")
    for key in ("message", "error_description", "detail", "msg"):
        if isinstance(parsed.get(key), str) and parsed[key]:
            return parsed[key], parsed.get("code")
    if isinstance(error, str) and error:
        return error, parsed.get("code") or parsed.get("status")
    errors = parsed.get("errors")
    if isinstance(errors, list):
        texts = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
        return "; ".join(texts), None
    return "", None


def retry_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the vendor asks to wait: ``Retry-After`` (seconds or an HTTP date), else
    ``X-RateLimit-Reset`` (epoch seconds; a small number is read as seconds). None: not said."""
    value = (headers.get("retry-after") or "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                moment = email.utils.parsedate_to_datetime(value)
                return max(0.0, moment.timestamp() - now)
    reset = (headers.get("x-ratelimit-reset") or "").strip()
    if reset:
        with contextlib.suppress(ValueError):
            seconds = float(reset)
            return max(0.0, seconds - now if seconds > EPOCH_THRESHOLD else seconds)
    return None


class RestClient:
    """A vendor's REST API at ``base_url`` (``https://api.render.com/v1``: paths are joined
    to it), with one kind of credentials. Keyword arguments of ``__init__`` are the defaults
    of every call; ``request()`` overrides the per-call ones."""

    def __init__(
        self,
        base_url: str,
        *,
        basic: tuple[str, str] | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Collection[str] = (),
        timeout_s: float = 30.0,
        deadline_s: float = 120.0,
        max_attempts: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        retry_statuses: Collection[int] = RETRY_STATUSES,
        validate_certs: bool = True,
        use_proxy: bool = True,
        user_agent: str = "opsbook",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if basic is not None and token is not None:
            raise ValueError("give basic=(user, password) or token=, not both")
        self.base_url = base_url.rstrip("/")
        self._origin = (parts.scheme, parts.netloc)
        self._base_path = parts.path.rstrip("/")
        self._headers = {"Accept": "application/json", **dict(headers or {})}
        self._secrets: set[str] = {s for s in secrets if s}
        if basic is not None:
            user, password = basic
            pair = f"{user}:{password}"
            encoded = base64.b64encode(pair.encode("utf-8")).decode("ascii")
            self._headers["Authorization"] = f"Basic {encoded}"
            self._secrets.update({password, encoded})
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
            self._secrets.add(token)
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retry_statuses = frozenset(retry_statuses)
        self.validate_certs = validate_certs
        self.use_proxy = use_proxy
        self.user_agent = user_agent
        self.clock, self.now, self.sleep = clock, now, sleep
        #: every attempt made, as ``"GET /v1/balance 200"`` (None when no answer): what a
        #: module reports and a benchmark counts
        self.history: list[str] = []

    # ------------------------------------------------------------------ secrets

    def add_secret(self, value: str | None) -> None:
        """Mask ``value`` in every message from now on (a token a call returned, say)."""
        if value:
            self._secrets.add(value)

    def scrub(self, text: str) -> str:
        """text with every known secret masked."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= MIN_SECRET_CHARS:
                text = text.replace(secret, MASK)
        return text

    # ------------------------------------------------------------------ calls

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Response:
        return self.request("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        json: Any = None,
        form: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: Collection[int] = (),
        secret_query: Collection[str] = (),
        retry_unsafe: bool | None = None,
        timeout_s: float | None = None,
        deadline_s: float | None = None,
    ) -> Response:
        """Send the call, retrying as the module docstring says. Returns a 2xx answer or one
        whose status is in ``accept``; raises RestError for anything else."""
        method = method.upper()
        url, path_only, query_items = self._url(method, path, query)
        for name, value in query_items:
            if name in secret_query:
                self.add_secret(str(value))
        call = self.scrub(f"{method} {path_only}")
        body, content_type = _encode(json, form)
        send_headers = {**self._headers, **dict(headers or {})}
        if content_type:
            send_headers["Content-Type"] = content_type
        safe = method in IDEMPOTENT_METHODS if retry_unsafe is None else retry_unsafe
        deadline = self.deadline_s if deadline_s is None else deadline_s
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - (self.clock() - started)
            timeout = min(self.timeout_s if timeout_s is None else timeout_s, max(remaining, 0.001))
            status, answer_headers, data, problem, refused = self._send(
                method, url, body, send_headers, timeout
            )
            self.history.append(f"{call} {status}")
            elapsed = self.clock() - started
            if status is not None and (200 <= status < 300 or status in accept):
                return Response(call, status, answer_headers, data, attempt, elapsed)
            error = self._error(call, status, problem, data, attempt, elapsed)
            retryable = (
                status == 429
                or (status is not None and status in self.retry_statuses and safe)
                or (status is None and (refused or safe))
            )
            if not retryable:
                raise error
            if attempt >= self.max_attempts:
                error.gave_up = f"{self.max_attempts} attempts made"
                raise self._final(error)
            asked = retry_wait(answer_headers, self.now()) if status is not None else None
            wait = asked if asked is not None else self._backoff(attempt)
            if elapsed + wait >= deadline:
                said = "the vendor asked to wait" if asked is not None else "the next wait is"
                error.gave_up = (
                    f"{said} {wait:.1f} s, past the deadline of {deadline:g} s "
                    f"({elapsed:.1f} s spent)"
                )
                raise self._final(error)
            self.sleep(wait)

    def paginate(
        self,
        path: str,
        *,
        next_page: Callable[[Response], str | Mapping[str, Any] | None],
        items: Callable[[Response], Any] | None = None,
        query: Mapping[str, Any] | None = None,
        max_pages: int = 1000,
        **kw: Any,
    ) -> Iterator[Any]:
        """GET ``path`` page after page: ``next_page(response)`` gives the next page's query
        parameters (a cursor: ``{"cursor": ...}``, merged over ``query``), its path or
        same-host URL, or None when this was the last. Yields ``items(response)``'s elements,
        or each Response when ``items`` is None. A page asked for twice (a vendor's cursor
        that does not move) raises RestError instead of looping."""
        base_query = dict(query or {})
        current_path, current_query = path, base_query
        seen: set[str] = set()
        for _unused in range(max_pages):
            key = json.dumps(
                [current_path, sorted((str(k), str(v)) for k, v in current_query.items())]
            )
            if key in seen:
                raise RestError(
                    f"GET {urlsplit(path).path}",
                    reason="pagination loop",
                    gave_up="the vendor returned the same next page twice",
                )
            seen.add(key)
            response = self.request("GET", current_path, query=current_query, **kw)
            if items is None:
                yield response
            else:
                yield from items(response)
            following = next_page(response)
            if not following:
                return
            if isinstance(following, str):
                current_path, current_query = following, {}
            else:
                current_query = {**base_query, **dict(following)}
        raise RestError(
            f"GET {urlsplit(path).path}",
            reason="too many pages",
            gave_up=f"more than {max_pages} pages",
        )

    # ------------------------------------------------------------------ helpers

    def _url(
        self, method: str, path: str, query: Mapping[str, Any] | None
    ) -> tuple[str, str, list[tuple[str, Any]]]:
        """(full URL, the path as the call is named, the query items)."""
        parts = urlsplit(path)
        if parts.scheme or parts.netloc:
            if (parts.scheme, parts.netloc) != self._origin:
                raise RestError(
                    f"{method} {parts.path}",
                    reason="refused",
                    gave_up=f"{parts.scheme}://{parts.hostname} is not {self.base_url}: "
                    "credentials are only sent to the configured API",
                )
            full_path = parts.path
        else:
            full_path = self._base_path + "/" + parts.path.lstrip("/")
        items = parse_qsl(parts.query, keep_blank_values=True)
        for name, value in (query or {}).items():
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            items.extend((name, _query_text(v)) for v in values)
        url = f"{self._origin[0]}://{self._origin[1]}{full_path}"
        if items:
            url += "?" + urlencode(items)
        return url, full_path, items

    def _send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int | None, dict[str, str], bytes, str, bool]:
        """One attempt: (status, headers, body, problem, refused). Never raises for I/O."""
        try:
            handle = open_url(
                url,
                data=body,
                headers=headers,
                method=method,
                timeout=timeout,
                validate_certs=self.validate_certs,
                use_proxy=self.use_proxy,
                http_agent=self.user_agent,
                follow_redirects="none",
                use_netrc=False,
            )
        except HTTPError as exc:  # an answer with a non-2xx status (or a redirect)
            handle = exc
        except URLError as exc:
            refused = isinstance(exc.reason, ConnectionRefusedError)
            return None, {}, b"", _timed_out(describe_error(exc), timeout), refused
        except Exception as exc:  # timeouts, resets, TLS
            refused = isinstance(exc, ConnectionRefusedError)
            return None, {}, b"", _timed_out(describe_error(exc), timeout), refused
        try:
            data = handle.read(MAX_BODY_BYTES) or b""
        except Exception as exc:
            data = b""
            status = getattr(handle, "status", None) or getattr(handle, "code", None)
            if not status or 200 <= int(status) < 300:  # the answer is unknown: no status
                return None, {}, b"", f"reading the answer failed: {describe_error(exc)}", False
        finally:
            with contextlib.suppress(Exception):
                handle.close()
        status = getattr(handle, "status", None) or getattr(handle, "code", None)
        answer_headers = {k.lower(): v for k, v in (handle.headers or {}).items()}
        return int(status) if status else None, answer_headers, data, "", False

    def _error(
        self,
        call: str,
        status: int | None,
        problem: str,
        data: bytes,
        attempts: int,
        elapsed: float,
    ) -> RestError:
        parsed, _unused = parse_json_body(data) if data else (None, None)
        message, code = vendor_message(parsed)
        if not message and data and not isinstance(parsed, (dict, list)):
            message = " ".join(data[:300].decode("utf-8", "replace").split())[:200]
        reason = problem
        if status is not None and 300 <= status < 400:
            reason = "a redirect, not followed (credentials go to the configured API only)"
        return RestError(
            call,
            status=status,
            reason=self.scrub(reason),
            vendor_message=self.scrub(message),
            vendor_code=code,
            attempts=attempts,
            elapsed_s=elapsed,
            body=parsed,
        )

    def _final(self, error: RestError) -> RestError:
        error.gave_up = self.scrub(error.gave_up)
        return error

    def _backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1))))


def rest_argument_spec() -> dict[str, dict[str, Any]]:
    """The options every REST module takes (documented in doc_fragments/opsbook_rest.py);
    each module adds its own ``base_url`` (the vendor's API, as default)."""
    return {
        "timeout_s": {"type": "float", "default": 30.0},
        "deadline_s": {"type": "float", "default": 120.0},
        "validate_certs": {"type": "bool", "default": True},
    }


def rest_option_errors(params: Mapping[str, Any]) -> list[str]:
    """Errors in ``base_url`` and the options of ``rest_argument_spec``, one sentence each."""
    errors = []
    base_url = params.get("base_url") or ""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        errors.append(f"base_url must be an http:// or https:// URL, got {base_url!r}")
    for option in ("timeout_s", "deadline_s"):
        if (params.get(option) or 0) <= 0:
            errors.append(f"{option} must be > 0, got {params.get(option)}")
    return errors


def client_from_params(params: Mapping[str, Any], **kw: Any) -> RestClient:
    """A RestClient on ``params["base_url"]`` with the module's REST options; ``kw`` are the
    credentials (``basic=``, ``token=``, ``secrets=``) and, in tests, ``clock``/``sleep``."""
    return RestClient(
        params["base_url"],
        timeout_s=params["timeout_s"],
        deadline_s=params["deadline_s"],
        validate_certs=params["validate_certs"],
        **kw,
    )


def json_cursor(*keys: str, param: str) -> Callable[[Response], dict[str, Any] | None]:
    """A ``next_page`` for ``paginate``: the value at ``keys`` in the JSON body, sent back as
    query parameter ``param`` (Vercel: ``json_cursor("pagination", "next", param="until")``)."""

    def next_page(response: Response) -> dict[str, Any] | None:
        node = response.json()
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return {param: node} if node not in (None, "") else None

    return next_page


def _encode(value: Any, form: Mapping[str, Any] | None) -> tuple[bytes | None, str]:
    if value is not None and form is not None:
        raise ValueError("give json= or form=, not both")
    if value is not None:
        return json.dumps(value).encode("utf-8"), "application/json"
    if form is not None:
        items = [(k, _query_text(v)) for k, v in form.items() if v is not None]
        return urlencode(items).encode("ascii"), "application/x-www-form-urlencoded"
    return None, ""


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _timed_out(problem: str, timeout: float) -> str:
    return f"timed out after {timeout:g} s" if problem == "timed out" else problem
