"""The base of the platform stand-ins (Vercel, Render, Fly.io, Supabase): a VendorServer that
checks the Bearer token on every call, fails, rate-limits or answers late on demand, and runs
the "deployed" app the health gate reaches (``AppFront``).

    class VercelStandin(PlatformStandin):
        def __init__(self):
            super().__init__("vercel", {"getDeployment": self._get, ...},
                             auth_status=403, error_body=vercel_error)

    with VercelStandin() as vercel:
        vercel.fail_next(429, retry_after=1)      # the next call is refused, Retry-After: 1
        vercel.fail_on("createDeployment", 500)   # the next call of that operation fails
        vercel.expire_token()                     # every later call answers auth_status
        ... the code under test calls vercel.url with vercel.token ...
        assert vercel.mismatches == []

Faults are played before the handler, so a refused call changes nothing. A fault (or a refused
token) the vendor's document does not declare for that operation (Fly declares 200/400 only; a
real API gateway answers 429 and 5xx on any path) is allowed only because it was injected, and
is listed in
``server.api.undocumented_faults``; everything else is judged as usual and a disagreement lands
in ``mismatches``.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opsbook.lab.sampleapp import app as sampleapp
from tests.standins import _Standin, stop_server
from tests.vendor_api import Operation, VendorApi
from tests.vendor_server import Call, Handler, VendorServer

#: Fly.io's documented header that sends a request to one machine of an app
#: (https://fly.io/docs/networking/dynamic-request-routing/).
INSTANCE_HEADER = "fly-force-instance-id"


@dataclass
class _Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class PlatformApi(VendorApi):
    """A vendor's document that lets injected faults through (and lists the undocumented ones)."""

    undocumented_faults: list[str] = field(default_factory=list)
    #: the status of the fault injected into the call this thread serves, if any
    injected: threading.local = field(default_factory=threading.local)

    def _check_response(
        self, operation: Operation, status: int, body: bytes, content_type: str
    ) -> None:
        if getattr(self.injected, "status", None) == status:
            responses = operation.spec.get("responses", {})
            if not any(k in responses for k in (str(status), f"{str(status)[0]}XX", "default")):
                self.undocumented_faults.append(
                    f"{operation.method.upper()} {operation.template} {status}"
                )
                return
        super()._check_response(operation, status, body, content_type)


class PlatformStandin(_Standin):
    """A platform's API with a token, faults on demand and the app it runs (``app``)."""

    def __init__(
        self,
        vendor: str,
        handlers: Mapping[str, Handler],
        *,
        auth_status: int = 401,
        error_body: Callable[[int, str], Any] = lambda status, message: {"message": message},
    ) -> None:
        super().__init__()
        self.token = "tok_" + secrets.token_urlsafe(24)
        self.token_expired = False
        self.auth_status = auth_status
        self.error_body = error_body
        self.versions_broken: set[str] = set()
        self.api_calls = 0
        #: (operation id, the status of the fault played or None, monotonic time) of every
        #: call the document allowed, faults included - what a test measures a client's waits by
        self.timeline: list[tuple[str, int | None, float]] = []
        self._faults: list[_Fault] = []
        self._faults_on: dict[str, list[_Fault]] = {}
        self._slow: list[float] = []
        self._lock = threading.Lock()
        self.app = AppFront()
        self.server = VendorServer(
            vendor, {op: self._guarded(handler) for op, handler in handlers.items()}
        )
        self.server.api = PlatformApi(self.server.api.name, self.server.api.doc)
        self._count_calls()

    # ----------------------------------------------------------------- on demand

    def expire_token(self) -> None:
        """From now on the token is refused with ``auth_status`` (an expired or revoked token)."""
        self.token_expired = True

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        rate_limit_reset_in: float | None = None,
    ) -> None:
        """The next ``times`` calls answer ``status`` before anything is done; 429s may carry
        ``Retry-After`` (seconds) and/or ``X-RateLimit-Reset`` (epoch seconds, Vercel's)."""
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if rate_limit_reset_in is not None:
            headers["X-RateLimit-Reset"] = str(int(time.time() + rate_limit_reset_in + 0.999))
        with self._lock:
            self._faults += [_Fault(status, headers) for _ in range(times)]

    def fail_on(
        self, operation_id: str, status: int, times: int = 1, *, retry_after: float | None = None
    ) -> None:
        """The next ``times`` calls of one operation (``create-deploy``, ``Secret_create``)
        answer ``status`` before anything is done - a fault placed at one step of a run, where
        ``fail_next`` hits whatever call comes next."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        with self._lock:
            queued = self._faults_on.setdefault(operation_id, [])
            queued += [_Fault(status, dict(headers)) for _ in range(times)]

    def slow_next(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` calls answer after ``seconds`` (the handler still runs)."""
        with self._lock:
            self._slow += [seconds] * times

    def close(self) -> None:
        super().close()
        self.app.close()

    # ------------------------------------------------------------------ plumbing

    def authorized(self, call: Call) -> bool:
        auth = call.headers.get("Authorization") or call.headers.get("authorization") or ""
        return not self.token_expired and auth == f"Bearer {self.token}"

    def _guarded(self, handler: Handler) -> Handler:
        def play(call: Call) -> tuple[Any, ...]:
            with self._lock:
                fault = self._faults.pop(0) if self._faults else None
                queued = self._faults_on.get(call.operation_id)
                if fault is None and queued:
                    fault = queued.pop(0)
                delay = self._slow.pop(0) if self._slow else 0.0
                self.timeline.append(
                    (call.operation_id, fault.status if fault else None, time.monotonic())
                )
            if delay:
                time.sleep(delay)
            if fault is not None:
                message = "rate limited" if fault.status == 429 else "internal error (injected)"
                self.server.api.injected.status = fault.status
                return fault.status, self.error_body(fault.status, message), fault.headers
            if not self.authorized(call):
                # refused at the door, like a fault: Fly's document declares no 401 at all
                self.server.api.injected.status = self.auth_status
                return self.auth_status, self.error_body(self.auth_status, "invalid token")
            self.server.api.injected.status = None
            return handler(call)

        return play

    def _count_calls(self) -> None:
        serve = self.server._serve

        def counted(request: http.server.BaseHTTPRequestHandler) -> None:
            with self._lock:
                self.api_calls += 1
            serve(request)

        self.server._serve = counted  # type: ignore[method-assign]


class AppFront:
    """The app a platform runs, as the health gate sees it: instances (a Vercel or Render
    deployment, a Fly machine) serving a version, healthy or not, in maintenance or not, each
    with the environment it was built or booted with. Requests go to the routed instance, or
    to the one named by ``fly-force-instance-id``.

    ``GET /api/me`` (``Authorization: Bearer <HS256 JWT>``, keys JWT_SECRET and
    JWT_SECRET_PREVIOUS) and ``GET /api/session`` (cookie ``session``, keys NEXTAUTH_SECRET and
    NEXTAUTH_SECRET_PREVIOUS) answer as the sample app does - its own functions verify
    (src/opsbook/lab/sampleapp/app.py): 200 ``{"sub", "key": "current"|"previous"}``, else 401
    ``{"error"}`` (no token, a bad signature, an expired one, no key set at all)."""

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Any]] = {}
        self.routed: str | None = None
        self.hits: list[tuple[str, str]] = []  # (instance, path)
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                front._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def serve(
        self,
        instance: str,
        version: str,
        *,
        healthy: bool = True,
        maintenance: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``instance`` serves ``version``; ``env``: the environment it was built or booted
        with (a copy is kept: a later change of the platform's env store does not reach it)."""
        self.instances[instance] = {
            "version": version,
            "healthy": healthy,
            "maintenance": maintenance,
            "env": dict(env or {}),
        }

    def env(self, instance: str) -> dict[str, str]:
        """The environment ``instance`` runs with."""
        return dict(self.instances[instance]["env"])

    def drop(self, instance: str) -> None:
        self.instances.pop(instance, None)
        if self.routed == instance:
            self.routed = None

    def route(self, instance: str | None) -> None:
        self.routed = instance

    def close(self) -> None:
        stop_server(self._httpd)

    def _answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        wanted = request.headers.get(INSTANCE_HEADER)
        name = wanted or self.routed
        if name is None and self.instances:
            name = next(iter(self.instances))
        instance = self.instances.get(name or "")
        path = request.path.split("?")[0]
        self.hits.append((name or "", path))
        if instance is None:
            status, body = (404 if wanted else 502), {"error": "no instance serves this"}
        elif instance["maintenance"]:
            status, body = 503, {"status": "maintenance"}
        elif path == "/health":
            status, body = (
                (200, {"status": "ok"}) if instance["healthy"] else (500, {"status": "error"})
            )
        elif path == "/api/version":
            status, body = 200, {"version": instance["version"]}
        elif path == "/api/me":
            status, body = _verify(instance["env"], "JWT_SECRET", _bearer(request))
        elif path == "/api/session":
            status, body = _verify(instance["env"], "NEXTAUTH_SECRET", _cookie(request, "session"))
        else:
            status, body = 404, {"error": "not found"}
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


# The sample app's own code for its token endpoints, on an instance's env: its Handler reads
# only ``self.headers`` to find a token and AppState.verify_keys only ``self.env``, so both are
# called on this request / env as they are (a change to the app changes the stand-in too).


class _Keys:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)


def _bearer(request: http.server.BaseHTTPRequestHandler) -> str | None:
    return sampleapp.Handler._bearer(request)


def _cookie(request: http.server.BaseHTTPRequestHandler, name: str) -> str | None:
    return sampleapp.Handler._cookie(request, name)


def _verify(env: Mapping[str, str], name: str, token: str | None) -> tuple[int, dict[str, Any]]:
    """(status, body) of the sample app's ``_verify``: secret ``name`` (and its _PREVIOUS)."""
    if not token:
        return 401, {"error": "no token"}
    keys = sampleapp.AppState.verify_keys(_Keys(env), name)
    try:
        claims, label = sampleapp.verify_token(token, keys)
    except sampleapp.TokenError as exc:
        return 401, {"error": str(exc)}
    return 200, {"sub": claims.get("sub"), "key": label}
