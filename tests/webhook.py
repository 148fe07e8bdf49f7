"""A Slack-compatible incoming webhook on loopback, for the tests of the notify role.

It records every POST (path, JSON body, content type) and answers ``status`` to a POST on
its own path, 404 to any other path - so a notification sent to the wrong URL fails the
way it would at Slack. Its path looks like a real webhook's, secret token included, so
that the tests can look for the URL in what Ansible printed and wrote.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

DEFAULT_PATH = "/hooks/T000/B000/secret-token"


class Post(NamedTuple):
    path: str
    payload: Any
    content_type: str


class Webhook:
    """The webhook server, serving from construction until close()."""

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        self.posts: list[Post] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                hook.posts.append(Post(self.path, body, self.headers.get_content_type()))
                status = hook.status if self.path == hook.path else 404
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"error")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def payloads(self) -> list[Any]:
        """The JSON bodies received, in order."""
        return [post.payload for post in self.posts]

    def texts(self) -> list[str]:
        """Each body as JSON text, to search for words."""
        return [json.dumps(payload) for payload in self.payloads]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Webhook:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
