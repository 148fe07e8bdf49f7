"""Twilio and Stripe played by local servers (tests/vendor_server.py) that keep state the tests
can inspect, every exchange judged by the vendor's own document (tests/platform_api/).

    with TwilioStandin() as twilio:
        ... the code under test calls twilio.url with (twilio.account_sid, twilio.primary) ...
        assert twilio.secondary is None and twilio.mismatches == []

    with StripeStandin() as stripe:
        key = stripe.add_key(live=False)  # an sk_test_ key that authenticates
        ... GET stripe.url + "/v1/balance" ...

Twilio: the primary and the secondary auth token, as the Accounts v1 document and Twilio's
pages describe them - one secondary at a time (a new POST replaces it), promotion retires the
old primary at once, DELETE or promotion without a secondary answers 404 (Twilio error 20404),
Basic auth (account SID, primary or secondary token) checked on every call, else 401 (20003).
Twilio's document declares only the success answers; Twilio documents its error body
separately (https://www.twilio.com/docs/usage/twilios-response: ``code``, ``message``,
``more_info``, ``status``), so error answers are held to that shape instead (``_TwilioApi``).

Stripe: the API keys the test adds (``sk_``/``rk_``, test or live), GET /v1/balance answered
with the key's mode; an unknown or revoked key gets 401, a restricted key without the balance
permission 403, in Stripe's documented ``error`` shape.

``fail_next(status, ...)`` makes the next calls fail (429, 503, ...) before anything is done.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from openapi_schema_validator import OAS30ReadValidator

from tests.vendor_api import ApiMismatch, Operation, VendorApi
from tests.vendor_server import Call, VendorServer

TWILIO_API = "https://accounts.twilio.com"
TWILIO_SID = "AC" + "5e" * 16
TWILIO_ERROR = {  # https://www.twilio.com/docs/usage/twilios-response
    "type": "object",
    "required": ["code", "message", "more_info", "status"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "more_info": {"type": "string", "pattern": "^https://www.twilio.com/docs/errors/"},
        "status": {"type": "integer"},
    },
}


def new_twilio_token() -> str:
    return secrets.token_hex(16)  # 32 lowercase hex digits, as Twilio's


def basic_credentials(call: Call) -> tuple[str, str] | None:
    auth = call.headers.get("Authorization") or call.headers.get("authorization") or ""
    if not auth.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, password


def stop_server(httpd: Any) -> None:
    """Shut a socketserver down without waiting out its half-second poll: the serving loop is
    woken by connections until it has seen the shutdown."""
    stopper = threading.Thread(target=httpd.shutdown)
    stopper.start()
    while stopper.is_alive():
        with contextlib.suppress(OSError):
            socket.create_connection(httpd.server_address, timeout=1).close()
        stopper.join(0.02)
    httpd.server_close()


class _Standin:
    """A VendorServer with failures on demand; a context manager."""

    server: VendorServer

    def __init__(self) -> None:
        self.failures: list[tuple[int, Any]] = []

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def mismatches(self) -> list[str]:
        return self.server.api.mismatches

    @property
    def calls(self) -> list[str]:
        """The operation ids of the calls that reached a handler, in order."""
        return [call.operation_id for call in self.server.calls]

    def close(self) -> None:
        """VendorServer.close(), without waiting out the server's half-second poll."""
        stop_server(self.server._httpd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _played(self, handler: Callable[[Call], tuple[int, Any]]) -> Callable[..., Any]:
        def play(call: Call) -> tuple[int, Any]:
            if self.failures:
                return self.failures.pop(0)
            return handler(call)

        return play


class _TwilioApi(VendorApi):
    """Twilio's document, with error answers held to Twilio's documented error body."""

    def _check_response(
        self, operation: Operation, status: int, body: bytes, content_type: str
    ) -> None:
        if status < 400:
            super()._check_response(operation, status, body, content_type)
            return
        where = f"{self.name}: {operation.method.upper()} {operation.template}"
        if not content_type.startswith("application/json"):
            raise ApiMismatch(f"{where}: error {status} answered {content_type!r}, not JSON")
        value = json.loads(body)
        error = next(iter(OAS30ReadValidator(TWILIO_ERROR).iter_errors(value)), None)
        if error is not None:
            raise ApiMismatch(f"{where}: error {status} body: {error.message}")
        if value["status"] != status:
            raise ApiMismatch(f"{where}: error body says status {value['status']}, sent {status}")


class TwilioStandin(_Standin):
    """accounts.twilio.com's auth tokens: ``primary``, ``secondary`` (None when there is
    none) and ``retired`` (tokens that stopped authenticating) are the account's state."""

    def __init__(self, account_sid: str = TWILIO_SID, primary: str | None = None) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.primary = primary or new_twilio_token()
        self.secondary: str | None = None
        self.retired: list[str] = []
        self.server = VendorServer(
            "twilio",
            {
                "CreateSecondaryAuthToken": self._played(self._authenticated(self._create)),
                "UpdateAuthTokenPromotion": self._played(self._authenticated(self._promote)),
                "DeleteSecondaryAuthToken": self._played(self._authenticated(self._delete)),
            },
        )
        self.server.api = _TwilioApi(self.server.api.name, self.server.api.doc)

    def authenticates(self, token: str | None) -> bool:
        return bool(token) and token in (self.primary, self.secondary)

    def fail_next(self, status: int, times: int = 1, code: int = 20500) -> None:
        message = "Too Many Requests" if status == 429 else "Service unavailable"
        self.failures += [(status, twilio_error(status, code, message))] * times

    # ------------------------------------------------------------------ handlers

    def _authenticated(self, handler: Callable[[Call], tuple[int, Any]]) -> Callable[..., Any]:
        def check(call: Call) -> tuple[int, Any]:
            given = basic_credentials(call)
            if given is None or given[0] != self.account_sid or not self.authenticates(given[1]):
                return 401, twilio_error(401, 20003, "Authenticate")
            return handler(call)

        return check

    def _create(self, call: Call) -> tuple[int, Any]:
        if self.secondary:
            self.retired.append(self.secondary)  # one secondary at a time: replaced
        self.secondary = new_twilio_token()
        return 201, self._token("Secondary", secondary_auth_token=self.secondary)

    def _promote(self, call: Call) -> tuple[int, Any]:
        if self.secondary is None:
            return _not_found("/AuthTokens/Promote")
        self.retired.append(self.primary)
        self.primary, self.secondary = self.secondary, None
        return 200, self._token("Promote", auth_token=self.primary)

    def _delete(self, call: Call) -> tuple[int, Any]:
        if self.secondary is None:
            return _not_found("/AuthTokens/Secondary")
        self.retired.append(self.secondary)
        self.secondary = None
        return 204, None

    def _token(self, path: str, **value: str) -> dict[str, Any]:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "account_sid": self.account_sid,
            "date_created": now,
            "date_updated": now,
            "url": f"{TWILIO_API}/v1/AuthTokens/{path}",
            **value,
        }


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _not_found(path: str) -> tuple[int, dict[str, Any]]:
    """Twilio's answer where there is no secondary token to promote or delete."""
    return 404, twilio_error(404, 20404, f"The requested resource {path} was not found")


class StripeStandin(_Standin):
    """api.stripe.com's GET /v1/balance for the keys in ``keys`` ({key: {"livemode",
    "balance_read"}}); ``currencies`` are the balance's available currencies."""

    def __init__(self, currencies: tuple[str, ...] = ("eur", "usd")) -> None:
        super().__init__()
        self.keys: dict[str, dict[str, bool]] = {}
        self.currencies = currencies
        self.server = VendorServer("stripe", {"GetBalance": self._played(self._balance)})

    def add_key(
        self, *, live: bool = False, restricted: bool = False, balance_read: bool = True
    ) -> str:
        """A new key that authenticates (``sk_test_...`` unless live/restricted)."""
        prefix = ("rk" if restricted else "sk") + ("_live_" if live else "_test_")
        key = prefix + secrets.token_hex(16)
        self.keys[key] = {"livemode": live, "balance_read": balance_read}
        return key

    def revoke(self, key: str) -> None:
        self.keys.pop(key, None)

    def fail_next(self, status: int, times: int = 1) -> None:
        kind = "api_error" if status >= 500 else "invalid_request_error"
        message = "Too many requests" if status == 429 else "An error occurred with our API"
        self.failures += [(status, stripe_error(kind, message))] * times

    def _balance(self, call: Call) -> tuple[int, Any]:
        key = _stripe_key(call)
        if key not in self.keys:
            shown = f"{key[:8]}{'*' * max(0, len(key) - 12)}{key[-4:]}" if key else ""
            return 401, stripe_error("invalid_request_error", f"Invalid API Key provided: {shown}")
        about = self.keys[key]
        if not about["balance_read"]:
            return 403, stripe_error(
                "invalid_request_error",
                f"The provided key '{key[:8]}***{key[-4:]}' does not have the required "
                "permissions for this endpoint. Having the 'rak_balance_read' permission "
                "would allow this request to continue.",
            )
        funds = [{"amount": 0, "currency": c, "source_types": {"card": 0}} for c in self.currencies]
        return 200, {
            "object": "balance",
            "livemode": about["livemode"],
            "available": funds,
            "pending": funds,
        }


def stripe_error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _stripe_key(call: Call) -> str:
    """The key of a call: ``Bearer <key>`` or Basic ``<key>:``."""
    auth = call.headers.get("Authorization") or call.headers.get("authorization") or ""
    if auth.startswith("Bearer "):
        return auth[7:]
    given = basic_credentials(call)
    return given[0] if given else ""
