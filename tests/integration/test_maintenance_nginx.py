"""docs/maintenance-mode.md's nginx recipe, run for real: the ```nginx block of the document
(with its deploy root, listen address and upstream port replaced) in front of a local HTTP
app, with the flag file switched on and off. Skipped when nginx is not installed
(apt-get install nginx)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.loaders import PROJECT_ROOT

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _nginx_installed() -> None:
    """nginx is part of the test environment (scripts/setup.sh installs it): missing, these
    tests fail - a broken install is not skipped."""
    assert NGINX is not None, "nginx is not installed: run scripts/setup.sh (apt-get install nginx)"


DOC = PROJECT_ROOT / "docs" / "maintenance-mode.md"


def doc_block(language: str, index: int = 0) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    return blocks[index]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class App:
    """The app behind nginx: 200 {"status": "ok"} on every path."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"status": "ok", "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Nginx:
    """nginx in the foreground with the document's server block, on a free port."""

    def __init__(self, base: Path, deploy_root: Path, app_port: int, edit: Any = None) -> None:
        self.base = base
        self.port = free_port()
        snippet = doc_block("nginx")
        snippet = snippet.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        snippet = snippet.replace("set $deploy_root /srv/app;", f"set $deploy_root {deploy_root};")
        snippet = snippet.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{app_port}")
        assert str(deploy_root) in snippet and str(self.port) in snippet
        if edit is not None:
            snippet = edit(snippet)
        (base / "app.conf").write_text(snippet)
        temp = {name: base / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        (base / "nginx.conf").write_text(
            f"""
user root;
daemon off;
worker_processes 1;
pid {base / "nginx.pid"};
error_log {base / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {base / "app.conf"};
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *extra: str) -> list[str]:
        assert NGINX is not None
        return [NGINX, "-p", str(self.base), "-c", str(self.base / "nginx.conf"), *extra]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv("-t"), capture_output=True, text=True, check=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv(), stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode()) from None
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, accept: str = "text/html") -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Accept": accept}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def deploy_root(tmp_path: Path) -> Path:
    root = tmp_path / "srv-app"
    pages = root / "shared" / "maintenance-page"
    pages.mkdir(parents=True)
    (pages / "maintenance.json").write_text(doc_block("json"))
    (pages / "maintenance.html").write_text(doc_block("html"))
    return root


@pytest.fixture
def app() -> Iterator[App]:
    server = App()
    yield server
    server.close()


def running(tmp_path: Path, deploy_root: Path, app: App, edit: Any = None) -> Nginx:
    base = tmp_path / f"nginx-{free_port()}"
    base.mkdir()
    nginx = Nginx(base, deploy_root, app.port, edit)
    checked = nginx.test_config()
    assert checked.returncode == 0, checked.stderr
    nginx.start()
    return nginx


def test_the_documented_recipe_serves_503_pages_while_the_flag_is_there(
    tmp_path: Path, deploy_root: Path, app: App
) -> None:
    nginx = running(tmp_path, deploy_root, app)
    try:
        status, _headers, body = nginx.get("/")
        assert status == 200 and json.loads(body)["status"] == "ok"

        flag = deploy_root / "shared" / "maintenance"
        flag.write_text("maintenance mode on since ...\n")
        status, headers, body = nginx.get("/")
        assert status == 503 and b"Down for maintenance" in body
        assert headers["Retry-After"] == "300" and headers["Cache-Control"] == "no-store"
        assert headers["Content-Type"].startswith("text/html")
        status, headers, body = nginx.get("/api/tasks", accept="application/json")
        assert status == 503 and headers["Content-Type"] == "application/json"
        assert json.loads(body)["status"] == "maintenance"
        assert nginx.get("/health")[0] == 503  # the default choice

        flag.unlink()  # no reload needed either way
        assert nginx.get("/health")[0] == 200 and nginx.get("/")[0] == 200
    finally:
        nginx.stop()


def test_the_health_and_bypass_variants(tmp_path: Path, deploy_root: Path, app: App) -> None:
    (deploy_root / "shared" / "maintenance").touch()

    def let_health_through(snippet: str) -> str:
        lines = [
            "    # if ($uri = /health) {",
            '    #     set $opsbook_maintenance "";',
            "    # }",
        ]
        for line in lines:
            assert line in snippet
            snippet = snippet.replace(line, line.replace("# ", "", 1))
        return snippet

    nginx = running(tmp_path, deploy_root, app, let_health_through)
    try:
        assert nginx.get("/health")[0] == 200
        assert nginx.get("/")[0] == 503
    finally:
        nginx.stop()

    def bypass_localhost(snippet: str) -> str:
        assert "10.20.0.0/16 1;" in snippet
        return snippet.replace("10.20.0.0/16 1;", "127.0.0.0/8 1;")

    nginx = running(tmp_path, deploy_root, app, bypass_localhost)
    try:
        assert nginx.get("/")[0] == 200 and nginx.get("/health")[0] == 200
    finally:
        nginx.stop()
