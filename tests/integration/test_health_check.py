"""playbooks/health_check.yml against the real lab: 3 app hosts, PostgreSQL (max_connections=20).

Each run's set_stats data and per-host stats are read through a small test-only callback
(written into the test's tmp dir) that dumps them as JSON at the end of the run.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from opsbook.lab import AppHost, PostgresCluster

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]

STATS_CALLBACK = '''
import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Test only: dump the run's custom stats (set_stats) and per-host stats as JSON."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "health_stats_dump"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_stats(self, stats):
        hosts = {host: stats.summarize(host) for host in sorted(stats.processed)}
        with open(os.environ["HEALTH_STATS_FILE"], "w") as handle:
            json.dump({"custom": stats.custom, "hosts": hosts}, handle, default=str)
'''

# Fast retries for the runs that are expected to fail (the defaults wait 2 s between tries).
QUICK_RETRY = {"health_check_retry_delay_s": 0.2}


@dataclass
class HealthRun:
    rc: int
    stdout: str
    stderr: str
    data: dict[str, Any]

    @property
    def health(self) -> dict[str, Any]:
        return self.data["custom"]["_run"]["health_check"]

    @property
    def hosts(self) -> dict[str, dict[str, int]]:
        return self.data["hosts"]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def failed_hosts(self) -> set[str]:
        return {h for h, s in self.hosts.items() if s["failures"] or s["unreachable"]}


@pytest.fixture
def run_health(run_playbook: Any, tmp_path: Path) -> Any:
    cb_dir = tmp_path / "callbacks"
    cb_dir.mkdir()
    (cb_dir / "health_stats_dump.py").write_text(STATS_CALLBACK)
    counter = iter(range(1, 1000))

    def run(
        inventory: Path,
        extravars: dict[str, Any] | None = None,
        check: bool = False,
        args: tuple[str, ...] = (),
    ) -> HealthRun:
        stats_file = tmp_path / f"stats-{next(counter)}.json"
        env = {
            "ANSIBLE_CALLBACK_PLUGINS": f"{PROJECT_ROOT / 'callback_plugins'}:{cb_dir}",
            "ANSIBLE_CALLBACKS_ENABLED": "opsbook.runbooks.opsbook_oplog,health_stats_dump",
            "HEALTH_STATS_FILE": str(stats_file),
        }
        proc = run_playbook(
            "health_check", inventory, extravars=extravars, check=check, env=env, args=args
        )
        assert stats_file.exists(), proc.stdout + proc.stderr
        result = HealthRun(
            proc.returncode, proc.stdout, proc.stderr, json.loads(stats_file.read_text())
        )
        # Read-only: nothing ever changes, whatever the verdict.
        assert all(s["changed"] == 0 for s in result.hosts.values()), result.hosts
        return result

    return run


def app_line(host: AppHost, tail: str) -> str:
    return rf"(?m)^\s*\"?{re.escape(host.name)}\s+/health\s+{tail}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- healthy


def test_all_healthy_is_ok_and_a_rerun_changes_nothing(
    run_health: Any, make_inventory: Any, app_hosts: list[AppHost], pg: PostgresCluster
) -> None:
    inventory = make_inventory()
    first = run_health(inventory)
    assert first.rc == 0, first.output
    assert "Health check verdict: OK" in first.stdout
    for host in app_hosts:
        assert re.search(app_line(host, r"200\s+\d+ ms\s+version 1\.0\.0\s+OK"), first.stdout)

    health = first.health
    assert health["verdict"] == "ok"
    assert health["problems"] == [] and health["skipped"] == []
    assert set(health["apps"]) == {h.name for h in app_hosts}
    for host in app_hosts:
        app = health["apps"][host.name]
        assert app["status"] == 200 and app["ok"] is True and app["problems"] == []
        assert app["version"] == "1.0.0"
        assert 0 < app["latency_ms"] < 500
    db = health["database"]
    assert db["connected"] is True and db["ok"] is True and db["verdict"] == "ok"
    assert db["server_version"].startswith("15.")
    assert db["max_connections"] == 20
    assert 1 <= db["connections_used"] < 16
    assert db["connections_percent"] == round(db["connections_used"] * 100 / 20, 1)
    assert db["target"] == pg.dsn_for("app").replace(pg.password, "********")
    assert first.failed_hosts() == set()

    second = run_health(inventory)
    assert second.rc == 0 and second.health["verdict"] == "ok"


# ---------------------------------------------------------------------------- app failures


def test_failing_health_fails_that_host_and_the_run(
    run_health: Any, make_inventory: Any, app_hosts: list[AppHost]
) -> None:
    bad = app_hosts[1]
    bad.set_health("fail")
    run = run_health(make_inventory(), extravars=QUICK_RETRY)
    assert run.rc != 0
    assert "Health check verdict: FAIL" in run.stdout
    assert re.search(app_line(bad, r"500\s+\d+ ms\s+version 1\.0\.0\s+FAIL"), run.stdout)
    health = run.health
    assert health["verdict"] == "fail"
    assert health["apps"][bad.name]["status"] == 500
    assert health["apps"][bad.name]["ok"] is False
    assert f"{bad.name}: /health status 500, expected 200" in health["problems"]
    for other in (app_hosts[0], app_hosts[2]):
        assert health["apps"][other.name]["ok"] is True
    assert run.failed_hosts() == {bad.name, "localhost"}
    assert health["database"]["verdict"] == "ok"


def test_slow_health_fails_on_latency_with_the_default_threshold(
    run_health: Any, make_inventory: Any, app_hosts: list[AppHost]
) -> None:
    slow = app_hosts[2]
    slow.set_health("slow", 800)
    # the default 500 ms threshold and number of retries (quick ones: the run fails)
    run = run_health(make_inventory(), extravars=QUICK_RETRY)
    assert run.rc != 0
    health = run.health
    assert health["verdict"] == "fail"
    app = health["apps"][slow.name]
    assert app["status"] == 200 and app["latency_ms"] >= 800
    assert any(
        p.startswith(f"{slow.name}: /health latency ") and p.endswith("over threshold 500 ms")
        for p in health["problems"]
    ), health["problems"]
    assert "over threshold 500 ms" in run.stdout
    assert run.failed_hosts() == {slow.name, "localhost"}


def test_slow_health_passes_with_a_higher_threshold(
    run_health: Any, make_inventory: Any, app_hosts: list[AppHost]
) -> None:
    app_hosts[2].set_health("slow", 800)
    run = run_health(make_inventory(), extravars={"health_check_latency_threshold_ms": 2000})
    assert run.rc == 0, run.output
    assert run.health["verdict"] == "ok"
    assert run.health["thresholds"]["latency_ms"] == 2000
    assert run.health["apps"][app_hosts[2].name]["latency_ms"] >= 800


def test_check_mode_gives_the_same_verdict(
    run_health: Any, make_inventory: Any, app_hosts: list[AppHost]
) -> None:
    inventory = make_inventory()
    healthy = run_health(inventory, check=True)
    assert healthy.rc == 0 and healthy.health["verdict"] == "ok"
    assert healthy.health["database"]["connected"] is True
    app_hosts[0].set_health("fail")
    failing = run_health(inventory, extravars=QUICK_RETRY, check=True)
    assert failing.rc != 0 and failing.health["verdict"] == "fail"
    assert failing.failed_hosts() == {app_hosts[0].name, "localhost"}


def test_limit_reports_only_the_hosts_in_the_run(
    run_health: Any, make_inventory: Any, app_hosts: list[AppHost]
) -> None:
    app_hosts[1].set_health("fail")  # outside the limit: not checked, not reported
    run = run_health(make_inventory(), args=("--limit", f"{app_hosts[0].name},localhost"))
    assert run.rc == 0, run.output
    assert set(run.health["apps"]) == {app_hosts[0].name}
    assert run.health["verdict"] == "ok"


def test_limit_without_localhost_still_reports_and_fails(
    run_health: Any, make_inventory: Any, app_hosts: list[AppHost]
) -> None:
    app_hosts[0].set_health("fail")
    run = run_health(make_inventory(), extravars=QUICK_RETRY, args=("--limit", app_hosts[0].name))
    assert run.rc != 0, run.output
    assert set(run.health["apps"]) == {app_hosts[0].name}
    assert run.health["verdict"] == "fail"
    assert run.failed_hosts() == {app_hosts[0].name}


# ---------------------------------------------------------------------------- database


def test_connections_over_the_warn_percent_warn_but_pass(
    run_health: Any, make_inventory: Any, pg: PostgresCluster
) -> None:
    dsn = pg.dsn_for("app")
    (used,) = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    )[0]
    # The check's own connection makes it 17 of 20 = 85 %.
    extra = [psycopg.connect(dsn, autocommit=True) for _ in range(16 - int(used))]
    try:
        run = run_health(make_inventory())
    finally:
        for conn in extra:
            conn.close()
    assert run.rc == 0, run.output
    db = run.health["database"]
    assert run.health["verdict"] == "warn"
    assert db["verdict"] == "warn" and db["ok"] is True
    assert db["connections_used"] >= 16 and db["connections_percent"] >= 80
    assert any(p.startswith("database: connections at ") for p in run.health["problems"])
    assert "Health check verdict: WARN" in run.stdout
    assert run.failed_hosts() == set()


def test_unreachable_database_fails_without_showing_the_password(
    run_health: Any, make_inventory: Any, pg: PostgresCluster
) -> None:
    wrong = pg.dsn_for("app").replace(f":{pg.port}/", f":{closed_port()}/")
    assert pg.password in wrong
    run = run_health(make_inventory(database_url=wrong), extravars=QUICK_RETRY, args=("-vvv",))
    assert run.rc != 0
    db = run.health["database"]
    assert run.health["verdict"] == "fail"
    assert db["connected"] is False and db["ok"] is False
    assert "Connection refused" in db["error"]
    assert any(p.startswith("database: cannot connect") for p in run.health["problems"])
    assert "database  NOT connected  FAIL" in run.stdout
    assert "localhost" in run.failed_hosts()
    assert pg.password not in run.output
    assert pg.password not in json.dumps(run.data)


def test_password_never_in_verbose_output(
    run_health: Any, make_inventory: Any, pg: PostgresCluster
) -> None:
    run = run_health(make_inventory(), args=("-vvv",))
    assert run.rc == 0, run.output
    assert pg.password not in run.output
    assert pg.password not in json.dumps(run.data)
    assert "postgresql://opsbook:********@" in run.stdout


def test_no_app_hosts_and_no_database_url_are_skipped(run_health: Any, make_inventory: Any) -> None:
    inventory = make_inventory(app_hosts=[])
    vars_file = inventory / "group_vars" / "all" / "vars.yml"
    data = yaml.safe_load(vars_file.read_text())
    data.pop("database_url")
    vars_file.write_text(yaml.safe_dump(data))
    run = run_health(inventory)
    assert run.rc == 0, run.output
    health = run.health
    assert health["verdict"] == "ok"
    assert health["apps"] == {}
    assert health["database"]["skipped"] is True
    assert health["skipped"] == ["apps: group app has no host", "database: database_url is not set"]
    assert "database  SKIPPED: database_url is not set" in run.stdout
