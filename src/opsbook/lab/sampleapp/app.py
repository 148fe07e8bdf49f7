#!/usr/bin/env python3
"""opsbook sample app: the small web service the deploy runbooks ship and check.

Standard library only (it runs on the app hosts' /usr/bin/python3).

    GET /health       200 {"status": "ok", "version": V, "release": R}
    GET /api/version  200 {"version": V, "release": R, "pid": P, "started_at": T}

V is read from the VERSION file next to this file when the process starts;
R is the name of the release directory it runs from (releases/<R>/app.py,
also when started through the `current` symlink).

Control files in --state-dir (default <deploy_root>/shared), read per request:
    health_mode   "ok" | "fail" (/health answers 500) | "slow <ms>" (/health
                  sleeps <ms> then answers 200); missing or empty means ok
    maintenance   present: every endpoint answers 503 (JSON)
    app.json      optional {"host": ..., "port": ...}: defaults for --host/--port,
                  so a restart needs no arguments

--detach forks into the background and returns once the port is bound (exit 0)
or binding failed (exit 1), which is how a deploy restarts the app over SSH.
SIGTERM/SIGINT stop it cleanly and remove its pid file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent


def read_version(app_dir: Path = APP_DIR) -> str:
    try:
        return (app_dir / "VERSION").read_text().strip() or "unknown"
    except FileNotFoundError:
        return "unknown"


def default_state_dir(app_dir: Path = APP_DIR) -> Path:
    """<deploy_root>/shared for an app in <deploy_root>/releases/<release>/."""
    return app_dir.parent.parent / "shared"


class AppState:
    """What the handlers need: identity fixed at start, control files read per request."""

    def __init__(self, state_dir: Path, app_dir: Path = APP_DIR) -> None:
        self.state_dir = state_dir
        self.version = read_version(app_dir)
        self.release = app_dir.name
        self.pid = os.getpid()
        # timezone.utc, not datetime.UTC: the hosts' python3 may predate 3.11.
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017

    def in_maintenance(self) -> bool:
        return (self.state_dir / "maintenance").exists()

    def health_mode(self) -> tuple[str, int]:
        """("ok" | "fail" | "slow", delay in ms)."""
        try:
            words = (self.state_dir / "health_mode").read_text().split()
        except (FileNotFoundError, IsADirectoryError):
            return "ok", 0
        if not words:
            return "ok", 0
        mode = words[0].lower()
        if mode == "slow":
            delay = int(words[1]) if len(words) > 1 and words[1].isdigit() else 1000
            return "slow", delay
        return ("fail", 0) if mode == "fail" else ("ok", 0)


class Handler(BaseHTTPRequestHandler):
    server_version = "opsbook-sampleapp"
    state: AppState  # set on the subclass made by make_server

    def do_GET(self) -> None:
        if self.state.in_maintenance():
            self._send(503, {"status": "maintenance", "version": self.state.version})
            return
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/health":
            self._health()
        elif path == "/api/version":
            self._send(
                200,
                {
                    "version": self.state.version,
                    "release": self.state.release,
                    "pid": self.state.pid,
                    "started_at": self.state.started_at,
                },
            )
        elif path == "/":
            self._send(200, {"app": "opsbook-sampleapp", "version": self.state.version})
        else:
            self._send(404, {"error": "not found", "path": path})

    def _health(self) -> None:
        mode, delay_ms = self.state.health_mode()
        body = {"status": "ok", "version": self.state.version, "release": self.state.release}
        if mode == "fail":
            self._send(500, {**body, "status": "fail"})
            return
        if mode == "slow":
            time.sleep(delay_ms / 1000)
        self._send(200, body)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {self.address_string()} {format % args}\n")


def make_server(host: str, port: int, state: AppState) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def write_pidfile(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: Path) -> None:
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except FileNotFoundError:
        pass


def detach(log_file: Path) -> int:
    """Double-fork into a new session; the original process waits for the verdict.

    Returns (in the daemon) the write end of a pipe on which to report "ok" or an
    error; the original process never returns: it exits 0 on "ok", else 1.
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        os.wait()
        message = b"".join(chunks).decode(errors="replace").strip()
        if message.startswith("ok"):
            print(message)
            sys.exit(0)
        print(
            f"sampleapp failed to start: {message or 'exited early'} (log: {log_file})",
            file=sys.stderr,
        )
        sys.exit(1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    return write_end


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="opsbook sample app")
    parser.add_argument("--host", help="address to bind (default: app.json, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: app.json, else 8000)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="control files directory (default: <deploy_root>/shared)",
    )
    parser.add_argument("--pidfile", type=Path, help="pid file (default: <state-dir>/app.pid)")
    parser.add_argument(
        "--detach", action="store_true", help="run in the background; return once listening"
    )
    parser.add_argument(
        "--log-file", type=Path, help="log for --detach (default: <state-dir>/app.log)"
    )
    return parser.parse_args(argv)


def load_defaults(state_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state_dir / "app.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dir = args.state_dir.absolute()
    defaults = load_defaults(state_dir)
    host = args.host or defaults.get("host") or "127.0.0.1"
    port = args.port or int(defaults.get("port") or 8000)
    pidfile = (args.pidfile or state_dir / "app.pid").absolute()
    report = detach((args.log_file or state_dir / "app.log").absolute()) if args.detach else None

    state = AppState(state_dir)
    try:
        server = make_server(host, port, state)
    except OSError as exc:
        if report is not None:
            os.write(report, f"cannot listen on {host}:{port}: {exc}".encode())
        print(f"sampleapp: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1

    def shutdown(signum: int, _frame: object) -> None:
        print(f"sampleapp: signal {signum}, shutting down", file=sys.stderr)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    write_pidfile(pidfile)
    identity = f"sampleapp {state.version} ({state.release}) pid {os.getpid()}"
    print(f"{identity} listening on http://{host}:{port}", file=sys.stderr)
    if report is not None:
        os.write(report, f"ok pid {os.getpid()} http://{host}:{port}".encode())
        os.close(report)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        remove_pidfile(pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
