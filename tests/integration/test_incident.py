"""incident.yml against the real lab: this file's own two app hosts (127.0.10.121-122, sample
app 1.0.0, then 1.1.0 deployed once by deploy.yml for the whole module), the lab's PostgreSQL,
a deploy ledger under a directory of the module, and Render played by its stand-in.

One incident run per scenario, each asserting all it shows:
- healthy, in --check, with -e mitigate=rollback: no incident, the report's sections filled, the
  deploy shown from the ledger, no rollback (the health gate passes), nothing changed;
- one host's app failing /health and the other's SSH port closed, the deploy older than the
  window (0 minutes): P1, the host reported unreachable, triage finished, no rollback and why;
- an app on Render with the ledger's S3 store down: the platform's app and live deploy
  reported, the ledger reported unreadable, triage finished, no rollback and why, Render only
  read;
- a recent deploy whose app fails /health now, -e mitigate=rollback: rolled back through
  rollback.yml (every host on 1.0.0 again, the rollback in the ledger and in the report).
"""

from __future__ import annotations

import json
import socket
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost, PostgresCluster, SshKeyPair, start_app_hosts, stop_all
from opsbook.lab.hosts import http_get
from opsbook.lab.sampleapp import APP_SOURCE
from opsbook.lab.sshd import SshHost
from tests.conftest import APP_DB, PlaybookRunner
from tests.integration.platform_flow import platform_inventory
from tests.integration.stats_helper import StatsRun, run_with_stats
from tests.lab import write_inventory
from tests.standins_render import RenderStandin

pytestmark = pytest.mark.integration

FIRST_ADDRESS = 121
NEW = "1.1.0"
# A release whose /health fails once a file BROKEN is put beside its app.py: it passes the
# deploy's gate, then "breaks" while it serves - what an incident after a deploy looks like.
BOMB = '        if (APP_DIR / "BROKEN").exists():\n            return "fail", 0\n'
QUICK = {"incident_health_retries": 0, "deploy_health_retries": 10, "deploy_health_delay_s": 0.3}


def release_that_breaks(version: str, out: Path) -> Path:
    source = APP_SOURCE.read_text()
    marker = "    def health_mode(self) -> tuple[str, int]:\n"
    assert marker in source
    work = out / f"bomb-{version}"
    work.mkdir()
    (work / "app.py").write_text(source.replace(marker, marker + BOMB, 1))
    (work / "VERSION").write_text(f"{version}\n")
    target = out / f"sampleapp-{version}.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(work / "app.py", arcname="app.py")
        tar.add(work / "VERSION", arcname="VERSION")
    return target


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, ssh_key: SshKeyPair) -> Iterator[list[AppHost]]:
    started = start_app_hosts(
        2, tmp_path_factory.mktemp("incident-hosts"), ssh_key, first_address=FIRST_ADDRESS,
        name_prefix="inc",
    )  # fmt: skip
    try:
        yield started
    finally:
        stop_all(started)


@pytest.fixture(autouse=True)
def _hosts_back(hosts: list[AppHost]) -> Iterator[None]:
    """After each test every host answers SSH and serves, and no release is broken."""
    yield
    for host in hosts:
        for marker in host.releases_dir.glob("*/BROKEN"):
            marker.unlink()
        SshHost.start(host)
        if not host.app_running():
            host.start_app()


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, hosts: list[AppHost], pg: PostgresCluster
) -> dict[str, Any]:
    """The module's inventory, state and reports, and release 1.1.0 deployed by deploy.yml
    (a ledger entry, 1.0.0 the previous good release on every host)."""
    base = tmp_path_factory.mktemp("incident")
    state, reports = base / "state", base / "reports"
    inventory = write_inventory(
        base / "inventories" / "test",
        hosts,
        None,
        database_url=pg.dsn_for(APP_DB),
        backup_storage_url=f"file://{base}",
        extra_vars={"opsbook_state_url": f"file://{state}", "opsbook_report_dir": str(reports)},
    )
    artifact = release_that_breaks(NEW, base)
    runner = PlaybookRunner(base)
    deployed = run_with_stats(
        runner, base, "deploy", inventory,
        {"app_version": NEW, "app_artifact": str(artifact), "deploy_canary": 2, **QUICK},
    )  # fmt: skip
    assert deployed.rc == 0, deployed.output[-3000:]
    assert all(h.current_release.startswith(NEW) for h in hosts)
    return {"inventory": inventory, "state": state, "reports": reports, "runner": runner}


def incident(lab: dict[str, Any], check: bool = False, **extravars: Any) -> StatsRun:
    runner: PlaybookRunner = lab["runner"]
    return run_with_stats(
        runner, runner.tmp_path, "incident", lab["inventory"], {**QUICK, **extravars}, check=check
    )


def ledger(state: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "ledger" / "local").glob("*.json"))]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- healthy


def test_healthy_no_incident_the_report_filled_and_nothing_changed(
    lab: dict[str, Any], hosts: list[AppHost]
) -> None:
    run = incident(lab, check=True, mitigate="rollback")
    assert run.rc == 0, run.output[-3000:]
    assert all(s["changed"] == 0 for s in run.hosts.values()), run.hosts
    found = run.stats["incident"]
    assert found["severity"] == "none" and found["verdict"] == "ok", found["findings"]
    assert found["status"] == "Monitoring" and found["check_mode"] is True
    assert {h: a["health"] for h, a in found["apps"].items()} == {
        "inc1": "healthy",
        "inc2": "healthy",
    }
    assert {a["version"] for a in found["apps"].values()} == {NEW}
    assert found["database"]["connected"] is True and found["database"]["max_connections"] == 20
    last = found["deploys"]["last_deploy"]
    assert (last["playbook"], last["version"], last["status"]) == ("deploy", NEW, "succeeded")
    assert last["recent"] is True and last["operator"]
    assert found["mitigation"]["rollback"] is False
    assert "the health gate passes now" in found["mitigation"]["reason"]
    assert "rollback" not in run.stats  # rollback.yml's tasks were all skipped

    path = Path(found["report_path"])
    assert path.parent == lab["reports"] and path.name.startswith("incident-local-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert text == found["report"]  # small enough to be published whole
    for part in ("## Why this severity", "## Timeline", "## Communication update", "## Logs"):
        assert part in text
    assert f"| deploy | {NEW} | succeeded |" in text
    assert "**Status:** Monitoring" in text and "| inc1 | healthy | 200 |" in text
    assert f"sampleapp {NEW}" in text  # the log's tail: the app's start line
    assert found["summary"][0] == "Incident triage on local: severity none (no problem found)"


# ----------------------------------------------------------------------------- faults


def test_a_host_down_and_one_unreachable_is_p1_and_an_old_deploy_is_not_rolled_back(
    lab: dict[str, Any], hosts: list[AppHost]
) -> None:
    inc1, inc2 = hosts
    before = [h.current_release for h in hosts]
    (inc2.releases_dir / inc2.current_release / "BROKEN").touch()
    SshHost.stop(inc1)  # sshd and its sessions (the app a deploy started over SSH too) ...
    inc1.start_app()  # ... then the app alone again: SSH is refused, the app serves
    run = incident(lab, mitigate="rollback", incident_recent_deploy_minutes=0)
    assert run.rc == 0, run.output[-3000:]  # triage finished: the report is the product
    found = run.stats["incident"]
    assert found["severity"] == "P1", found["findings"]
    assert found["apps"]["inc1"]["ssh"] == "unreachable"
    assert found["apps"]["inc1"]["health"] == "healthy"
    assert found["apps"]["inc2"]["health"] == "down" and found["apps"]["inc2"]["status"] == 500
    reasons = " | ".join(found["reasons"])
    assert "inc2 is down (1 of 2 app hosts): /health status 500" in reasons
    assert "inc1 cannot be reached over SSH (connect to host 127.0.10.121" in reasons
    assert found["impact"] == "Partial outage: 1 of 2 app hosts down (inc2)"
    assert found["mitigation"]["rollback"] is False
    assert f"the last deploy ({NEW}, " in found["mitigation"]["reason"]
    assert "is older than the 0-minute window" in found["mitigation"]["reason"]
    assert "rollback" not in run.stats
    assert [h.current_release for h in hosts] == before
    assert [e["playbook"] for e in ledger(lab["state"])] == ["deploy"]
    text = Path(found["report_path"]).read_text()
    assert "| inc1 | healthy | 200 |" in text and "unreachable" in text
    assert '"GET /health HTTP/1.1" 500' in text  # inc2's log shows the failing answers


def test_an_app_on_render_with_the_ledger_store_down_is_reported_and_triage_goes_on(
    tmp_path: Path, run_playbook: Any
) -> None:
    with RenderStandin() as render:
        render.add_commit("a1" * 20, NEW)
        live = render.seed_live("a1" * 20)
        inventory = platform_inventory(
            tmp_path, "render", render.app.url,
            {"render_api_url": render.url + "/v1", "render_api_key": render.token,
             "render_service_id": render.service_id},
            opsbook_state_url="s3://opsbook-test/state",
            s3_endpoint_url=f"http://127.0.0.1:{closed_port()}",
            opsbook_report_dir=str(tmp_path / "reports"),
        )  # fmt: skip
        run = run_with_stats(
            run_playbook, tmp_path, "incident", inventory, {"mitigate": "rollback", **QUICK}
        )
        operations = {op for op, _status, _at in render.timeline}
    assert run.rc == 0, run.output[-3000:]
    found = run.stats["incident"]
    platform = found["platform"]
    assert (platform["target"], platform["health"], platform["version"]) == (
        "render",
        "healthy",
        NEW,
    )
    assert platform["serving"][0].startswith(f"live: {live} (live, ")
    assert found["apps"] == {}
    assert "127.0.0.1" in found["deploys"]["error"] and "unreachable" in found["deploys"]["error"]
    assert any(u.startswith("the deploy ledger could not be read") for u in found["unknowns"])
    assert found["severity"] == "none"  # what could not be checked is listed, not guessed
    assert found["mitigation"]["rollback"] is False
    assert "the deploy ledger could not be read" in found["mitigation"]["reason"]
    assert operations == {"list-deploys"}, operations  # Render was only read
    assert render.mismatches == []
    assert "could not be read" in Path(found["report_path"]).read_text()


# ----------------------------------------------------------------------------- mitigation


def test_a_recent_deploy_that_breaks_is_rolled_back_through_rollback_yml(
    lab: dict[str, Any], hosts: list[AppHost]
) -> None:
    inc1, _inc2 = hosts
    (inc1.releases_dir / inc1.current_release / "BROKEN").touch()
    run = incident(lab, mitigate="rollback")
    assert run.rc == 0, run.output[-3000:]
    found = run.stats["incident"]
    assert found["severity"] == "P1" and found["apps"]["inc1"]["health"] == "down"
    mitigation = found["mitigation"]
    assert mitigation["rollback"] is True and mitigation["outcome"]["ok"] is True
    assert mitigation["reason"] == "rolled back through rollback.yml to 1.0.0"
    assert found["status"] == "Monitoring"
    assert run.stats["rollback"]["ok"] is True  # rollback.yml's own report
    assert [h.current_release for h in hosts] == ["1.0.0", "1.0.0"]
    assert http_get(inc1.base_url + "/health").status == 200
    entries = ledger(lab["state"])
    assert [(e["playbook"], e["status"]) for e in entries] == [
        ("deploy", "succeeded"),
        ("rollback", "rolled_back"),
    ]
    text = Path(found["report_path"]).read_text()
    assert "rolled back through rollback.yml to 1.0.0" in text
    assert "inc1: rolled_back from" in text
    # the triage's own report, written before rollback.yml ran, says what was decided and why
    earlier = text.split("- **Written before the rollback**: ", 1)[1].split("\n", 1)[0]
    assert earlier != found["report_path"]
    assert "rolling back through rollback.yml: the last deploy" in Path(earlier).read_text()
