"""A local HTTP server that plays a vendor's REST API, every exchange judged by the vendor's
own document (tests/vendor_api.py).

    server = VendorServer("twilio", {"CreateSecondaryAuthToken": create_token})
    ... the code under test calls server.url ...
    server.close()
    assert server.api.mismatches == []

A handler gets a ``Call`` (method, path parameters, query, headers, decoded body) and returns
``(status, body)`` - a dict or list is sent as JSON - or ``(status, body, headers)`` (e.g.
``Retry-After``). A request the document does not allow is answered 400 with the reason and
never reaches a handler; an answer the document does not allow is sent as 500 instead. Both are
recorded in ``api.mismatches``, so a stand-in cannot drift into agreeing with our own client, nor
a test with a stand-in that is wrong.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.vendor_api import ApiMismatch, VendorApi


@dataclass
class Call:
    operation_id: str
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


#: A handler answers ``(status, body)`` or ``(status, body, headers)`` - headers such as
#: ``Retry-After`` or ``X-RateLimit-Reset`` that a client must honour.
Handler = Callable[[Call], tuple[Any, ...]]


class VendorServer:
    def __init__(self, vendor: str, handlers: Mapping[str, Handler]) -> None:
        self.api = VendorApi.load(vendor)
        self.handlers = dict(handlers)
        self.calls: list[Call] = []
        server = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                server._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _serve(self, request: http.server.BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        headers = {k: v for k, v in request.headers.items()}
        try:
            operation, params = self.api.check_request(
                request.command, parts.path, query=parts.query, headers=headers, body=raw
            )
        except ApiMismatch as exc:
            self._send(request, 400, {"message": str(exc)})
            return
        operation_id = operation.spec.get("operationId", "")
        handler = self.handlers.get(operation_id)
        if handler is None:
            self.api.mismatches.append(f"{operation_id}: no handler in this stand-in")
            self._send(request, 501, {"message": f"{operation_id} is not played here"})
            return
        content_type = headers.get("Content-Type", "")
        call = Call(
            operation_id,
            request.command,
            parts.path,
            params,
            parse_qs(parts.query),
            headers,
            _decode(content_type, raw),
        )
        self.calls.append(call)
        status, answer, *extra = handler(call)
        data = json.dumps(answer).encode() if answer is not None else b""
        try:
            self.api.check_response(operation, status, data, "application/json" if data else "")
        except ApiMismatch as exc:
            self._send(request, 500, {"message": f"the stand-in answered wrong: {exc}"})
            return
        self._send(request, status, answer, extra[0] if extra else None)

    @staticmethod
    def _send(
        request: http.server.BaseHTTPRequestHandler,
        status: int,
        answer: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(answer).encode() if answer is not None else b""
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        if data:
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def _decode(content_type: str, raw: bytes) -> Any:
    if not raw:
        return None
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    if "json" in content_type:
        return json.loads(raw)
    return raw
