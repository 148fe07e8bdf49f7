"""library/http_check.py: pure parts, a real local HTTP server and an ad hoc run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ansible_env, run_ansible
from tests.loaders import load_library

hc = load_library("http_check")


def params(**overrides: Any) -> dict[str, Any]:
    """Module params as AnsibleModule would fill them (defaults + overrides)."""
    values = {k: v.get("default") for k, v in hc.argument_spec().items()}
    values["url"] = "http://127.0.0.1:1/health"
    values.update(overrides)
    return values


# --------------------------------------------------------------------------- input


def test_argument_spec_marks_headers_secret_and_defaults_match_docs() -> None:
    spec = hc.argument_spec()
    assert spec["headers"]["no_log"] is True
    assert spec["expect_status"]["default"] == [200]
    assert spec["fail_on_problem"]["default"] is False
    import yaml

    documented = yaml.safe_load(hc.DOCUMENTATION)["options"]
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option["type"], name
        if "default" in option:
            assert documented[name].get("default") == option["default"], name


def test_validate_params_accepts_good_input() -> None:
    assert (
        hc.validate_params(params(url="https://example.com/health", latency_threshold_ms=500)) == []
    )


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"url": "example.com/health"}, "url must be an http:// or https:// URL"),
        ({"url": "ftp://example.com/x"}, "url must be"),
        ({"url": "http:///nohost"}, "url must be"),
        ({"timeout_s": 0}, "timeout_s must be > 0"),
        ({"latency_threshold_ms": -1}, "latency_threshold_ms must be > 0"),
        ({"expect_status": []}, "expect_status must list"),
        ({"expect_status": [200, 99]}, "outside 100-599: [99]"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"retry_delay_s": -0.5}, "retry_delay_s must be >= 0"),
        ({"max_body_bytes": 0}, "max_body_bytes must be >= 1"),
    ],
)
def test_validate_params_names_the_bad_option(overrides: dict[str, Any], fragment: str) -> None:
    errors = hc.validate_params(params(**overrides))
    assert any(fragment in e for e in errors), errors


# --------------------------------------------------------------------------- judging


def test_parse_json_body() -> None:
    assert hc.parse_json_body(b'{"version": "1.0.0"}') == ({"version": "1.0.0"}, None)
    value, error = hc.parse_json_body(b"<html>")
    assert value is None and error.startswith("not JSON")
    assert hc.parse_json_body(b"  ") == (None, "empty body")
    assert hc.parse_json_body(b"\xff\xfe")[0] is None


def resp(status: int | None = 200, latency: float | None = 20.0, error: str | None = None):
    return hc.Response(url="http://h/health", status=status, latency_ms=latency, error=error)


def test_evaluate_healthy_answer_has_no_problem() -> None:
    assert hc.evaluate(resp(), {"status": "ok"}, [200], 500) == []


def test_evaluate_no_answer() -> None:
    assert hc.evaluate(resp(None, None, "connection refused"), None, [200], 500) == [
        "no HTTP answer: connection refused"
    ]


def test_evaluate_status_and_latency() -> None:
    problems = hc.evaluate(resp(500, 812.4), None, [200, 204], 500)
    assert problems == [
        "status 500, expected 200 or 204",
        "latency 812 ms over threshold 500 ms",
    ]


def test_evaluate_latency_at_threshold_is_fine_and_no_threshold_means_no_judgement() -> None:
    assert hc.evaluate(resp(200, 500.0), None, [200], 500) == []
    assert hc.evaluate(resp(200, 99999.0), None, [200], None) == []


def test_evaluate_expected_json_keys() -> None:
    assert hc.evaluate(resp(), {"version": "1"}, [200], None, ["version"]) == []
    assert hc.evaluate(resp(), {"v": 1}, [200], None, ["version"]) == [
        "JSON body lacks key(s): version"
    ]
    assert hc.evaluate(resp(), ["version"], [200], None, ["version"]) == [
        "body is not a JSON object (expected keys: version)"
    ]


def test_evaluate_expected_json_values_compared_as_strings() -> None:
    assert hc.evaluate(resp(), {"version": "2.0.0"}, [200], None, [], {"version": "2.0.0"}) == []
    assert hc.evaluate(resp(), {"version": 2}, [200], None, [], {"version": "2"}) == []
    assert hc.evaluate(resp(), {"version": "1.0.0"}, [200], None, [], {"version": "2.0.0"}) == [
        "version is 1.0.0, expected 2.0.0"
    ]
    assert hc.evaluate(resp(), {"v": 1}, [200], None, [], {"version": "2.0.0"}) == [
        "JSON body lacks key version (expected version=2.0.0)"
    ]
    assert hc.evaluate(resp(), None, [200], None, [], {"version": "2.0.0"}) == [
        "body is not a JSON object (expected version=2.0.0)"
    ]


def test_run_check_waits_for_the_expected_version() -> None:
    def answer(version: str) -> hc.Response:
        body = json.dumps({"version": version}).encode()
        return hc.Response(url="http://h/api/version", status=200, latency_ms=3.0, body=body)

    fetcher = FakeFetcher([answer("1.0.0"), answer("1.0.0"), answer("2.0.0")])
    result = hc.run_check(
        params(retries=5, retry_delay_s=0, parse_json=False, expect_json={"version": "2.0.0"}),
        fetcher,
        lambda _s: None,
    )
    assert result["ok"] is True and result["attempts"] == 3
    assert result["json"] == {"version": "2.0.0"}


def test_describe_error() -> None:
    from urllib.error import URLError

    assert hc.describe_error(URLError(ConnectionRefusedError(111, "x"))) == "connection refused"
    assert hc.describe_error(URLError(TimeoutError())) == "timed out"
    assert hc.describe_error(TimeoutError()) == "timed out"
    assert hc.describe_error(URLError("Name or service not known")) == "Name or service not known"


def test_summarize() -> None:
    assert hc.summarize("http://h/health", resp(200, 23.2), []) == (
        "GET http://h/health: 200 in 23 ms, ok"
    )
    problems = ["no HTTP answer: timed out"]
    assert hc.summarize("http://h/health", resp(None, None, "timed out"), problems) == (
        "GET http://h/health: no HTTP answer: timed out"
    )


# --------------------------------------------------------------------------- retries


class FakeFetcher:
    def __init__(self, answers: list[hc.Response]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, url: str, **kwargs: Any) -> hc.Response:
        self.calls.append({"url": url, **kwargs})
        return self.answers.pop(0)


def test_run_check_retries_until_healthy() -> None:
    sleeps: list[float] = []
    fetcher = FakeFetcher(
        [
            resp(500),
            resp(None, None, "timed out"),
            hc.Response(
                url="http://h/health", status=200, latency_ms=5.0, body=b'{"version": "2.0"}'
            ),
        ]
    )
    result = hc.run_check(params(retries=3, retry_delay_s=0.25), fetcher, sleeps.append)
    assert result["ok"] is True and result["problems"] == []
    assert result["attempts"] == 3
    assert sleeps == [0.25, 0.25]
    assert result["json"] == {"version": "2.0"}
    assert result["changed"] is False


def test_run_check_reports_the_last_attempt_when_retries_run_out() -> None:
    sleeps: list[float] = []
    fetcher = FakeFetcher([resp(500), resp(503)])
    result = hc.run_check(params(retries=1, retry_delay_s=1), fetcher, sleeps.append)
    assert result["ok"] is False
    assert result["status"] == 503
    assert result["problems"] == ["status 503, expected 200"]
    assert result["attempts"] == 2 and sleeps == [1]
    assert result["msg"].endswith("status 503, expected 200")


def test_run_check_without_parse_json_returns_no_json() -> None:
    fetcher = FakeFetcher([hc.Response(url="u", status=200, latency_ms=1.0, body=b'{"a": 1}')])
    result = hc.run_check(params(parse_json=False), fetcher, lambda _s: None)
    assert result["json"] is None and result["ok"] is True


def test_run_check_passes_options_to_fetch() -> None:
    fetcher = FakeFetcher([resp()])
    hc.run_check(
        params(
            url="https://x/y",
            timeout_s=3.5,
            headers={"X-T": "1"},
            validate_certs=False,
            use_proxy=False,
            max_body_bytes=10,
        ),
        fetcher,
        lambda _s: None,
    )
    assert fetcher.calls == [
        {
            "url": "https://x/y",
            "timeout_s": 3.5,
            "headers": {"X-T": "1"},
            "validate_certs": False,
            "use_proxy": False,
            "max_body_bytes": 10,
        }
    ]


# --------------------------------------------------------------------------- real HTTP


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b'{"status": "ok", "version": "1.2.3"}')
        elif self.path == "/fail":
            self._send(500, b'{"status": "fail"}')
        elif self.path.startswith("/slow/"):
            time.sleep(int(self.path.rsplit("/", 1)[1]) / 1000.0)
            self._send(200, b'{"status": "ok"}')
        elif self.path == "/html":
            self._send(200, b"<html>hi</html>", "text/html")
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/health")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"{}")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_healthy(server: str) -> None:
    answer = hc.fetch(f"{server}/health", use_proxy=False)
    assert answer.status == 200 and answer.error is None
    assert 0 < answer.latency_ms < 2000
    assert json.loads(answer.body) == {"status": "ok", "version": "1.2.3"}
    assert answer.content_type == "application/json"


def test_fetch_error_status_is_an_answer(server: str) -> None:
    answer = hc.fetch(f"{server}/fail", use_proxy=False)
    assert answer.status == 500 and answer.error is None
    assert answer.body == b'{"status": "fail"}'


def test_fetch_measures_milliseconds(server: str) -> None:
    answer = hc.fetch(f"{server}/slow/300", use_proxy=False)
    assert answer.status == 200
    assert 300 <= answer.latency_ms < 1500


def test_fetch_follows_redirects(server: str) -> None:
    answer = hc.fetch(f"{server}/redirect", use_proxy=False)
    assert answer.status == 200 and answer.url.endswith("/health")


def test_fetch_connection_refused() -> None:
    answer = hc.fetch(f"http://127.0.0.1:{closed_port()}/health", use_proxy=False)
    assert answer.status is None and answer.latency_ms is None
    assert answer.error == "connection refused"


def test_fetch_timeout(server: str) -> None:
    started = time.monotonic()
    answer = hc.fetch(f"{server}/slow/3000", timeout_s=0.3, use_proxy=False)
    assert answer.status is None
    assert "timed out" in answer.error
    assert time.monotonic() - started < 2.5


def test_run_check_against_a_real_server(server: str) -> None:
    result = hc.run_check(
        params(url=f"{server}/slow/250", latency_threshold_ms=100, use_proxy=False)
    )
    assert result["ok"] is False
    assert result["problems"][0].startswith("latency ")
    assert result["problems"][0].endswith("over threshold 100 ms")
    html = hc.run_check(params(url=f"{server}/html", expect_json_keys=["version"], use_proxy=False))
    assert html["json"] is None
    assert html["problems"] == ["body is not a JSON object (expected keys: version)"]
    assert html["body"] == "<html>hi</html>"


# --------------------------------------------------------------------------- as a module


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run an Ansible tool (argv[0]) from the project root, the operation log discarded."""
    return run_ansible(argv[1:], env=ansible_env(oplog=Path(os.devnull)), timeout=120, tool=argv[0])


def test_module_runs_in_check_mode_and_reports(server: str) -> None:
    proc = run_tool(
        "ansible",
        "localhost",
        "-m",
        "opsbook.runbooks.http_check",
        "--check",
        "-a",
        f"url={server}/fail use_proxy=false",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"status": 500' in proc.stdout
    assert '"ok": false' in proc.stdout and '"changed": false' in proc.stdout


def test_module_fails_on_problem_when_asked_and_on_bad_input(server: str) -> None:
    proc = run_tool(
        "ansible",
        "localhost",
        "-m",
        "opsbook.runbooks.http_check",
        "-a",
        f"url={server}/fail use_proxy=false fail_on_problem=true",
    )
    assert proc.returncode != 0
    assert "status 500, expected 200" in proc.stdout
    bad = run_tool(
        "ansible", "localhost", "-m", "opsbook.runbooks.http_check", "-a", "url=notaurl timeout_s=0"
    )
    assert bad.returncode != 0
    assert "http_check: invalid input: url must be" in bad.stdout
    assert "timeout_s must be > 0" in bad.stdout
