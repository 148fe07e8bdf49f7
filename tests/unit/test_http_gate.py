"""library/http_gate.py: the batch health gate (fake HTTP for the logic, a real server once)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.loaders import load_library

hg = load_library("http_gate")


def params(**kw: Any) -> dict[str, Any]:
    base = {k: v.get("default") for k, v in hg.argument_spec().items()}
    base.update(retries=0, retry_delay_s=0.0)
    base.update(kw)
    return base


class Fake:
    """run_check stand-in: answers per URL, recording the calls."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    def __call__(self, check: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(check)
        answer = self.answers[check["url"]]
        return {"status": 200, "latency_ms": 1.0, "attempts": 1, "json": None, **answer}


def test_a_host_passes_when_both_checks_pass() -> None:
    fake = Fake(
        {
            "http://a/health": {"problems": []},
            "http://a/api/version": {"problems": [], "json": {"version": "2.0"}},
        }
    )
    out = hg.gate_one(params(), {"name": "a", "base_url": "http://a/", "version": "2.0"}, fake)
    assert out["ok"] is True and out["version"] == "2.0" and out["attempts"] == 2
    assert fake.calls[1]["expect_json"] == {"version": "2.0"}


def test_the_version_is_not_asked_when_health_fails_and_problems_name_the_path() -> None:
    fake = Fake({"http://a/health": {"problems": ["status 500, expected 200"], "status": 500}})
    out = hg.gate_one(params(), {"name": "a", "base_url": "http://a", "version": "2.0"}, fake)
    assert out["ok"] is False
    assert out["problems"] == ["/health: status 500, expected 200"]
    assert len(fake.calls) == 1


def test_empty_version_judges_health_only() -> None:
    fake = Fake({"http://a/health": {"problems": []}})
    out = hg.gate_one(params(), {"name": "a", "base_url": "http://a", "version": ""}, fake)
    assert out["ok"] is True and len(fake.calls) == 1


def test_input_errors() -> None:
    same = [{"name": "a", "base_url": "http://a", "version": ""}] * 2
    assert hg.input_errors(params(targets=same)) == ["targets name these hosts twice: a"]
    bad = [{"name": "a", "base_url": "ftp://a", "version": ""}]
    assert "a: url must be an http:// or https:// URL" in hg.input_errors(params(targets=bad))[0]
    assert hg.input_errors(params(targets=[])) == ["targets must name at least one host"]


@pytest.fixture
def apps() -> Iterator[tuple[list[str], list[list[float]]]]:
    """Two real HTTP apps: one on 2.0 after a short delay, one stuck on 1.0; with the times
    (monotonic) each one was asked."""
    started = time.monotonic()
    servers = []
    asked: list[list[float]] = []

    def make(version_at: Any) -> str:
        times: list[float] = []
        asked.append(times)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                times.append(time.monotonic())
                body = {"status": "ok", "version": version_at(time.monotonic() - started)}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    urls = [make(lambda t: "2.0" if t > 0.3 else "1.0"), make(lambda _t: "1.0")]
    yield urls, asked
    for server in servers:
        server.shutdown()
        server.server_close()


def test_real_servers_checked_at_once(apps: tuple[list[str], list[list[float]]]) -> None:
    urls, asked = apps
    targets = [
        {"name": "good", "base_url": urls[0], "version": "2.0"},
        {"name": "stuck", "base_url": urls[1], "version": "2.0"},
    ]
    result = hg.run_gate(params(targets=targets, retries=10, retry_delay_s=0.1))
    assert result["failed_targets"] == ["stuck"]
    assert result["by_host"]["good"]["ok"] is True
    assert result["by_host"]["stuck"]["problems"] == ["/api/version: version is 1.0, expected 2.0"]
    # Both hosts were asked at the same time, not one after the other: each one's first request
    # came before the other's last (timing-free, so a loaded machine cannot fail it).
    good, stuck = asked
    assert len(stuck) >= 10
    assert good[0] < stuck[-1] and stuck[0] < good[-1]
