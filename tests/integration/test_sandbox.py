"""`opsbook sandbox up | status | down` and a runbook run against it, end to end.

The test builds its own copy of the project's `inventories/local` on other
loopback addresses (so a developer's running sandbox is never touched), with
the project's playbooks, roles and plugins linked in, and drives the real
`opsbook` command.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import opsbook
from opsbook.lab._proc import port_is_open

pytestmark = pytest.mark.integration

LINKED = (
    "playbooks",
    "roles",
    "library",
    "action_plugins",
    "module_utils",
    "filter_plugins",
    "callback_plugins",
    "doc_fragments",
)
PG_ADDRESS = "127.0.10.200"
HOST_ADDRESSES = {"app1": "127.0.10.201", "app2": "127.0.10.202"}


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def sandbox_project(project_root: Path) -> Iterator[Path]:
    """A project whose inventories/local points at addresses and ports of its own."""
    tmp = Path(tempfile.mkdtemp(prefix="opsbook-sandbox-test-"))
    tmp.chmod(0o711)  # Postgres runs as another user when we are root
    shutil.copy(project_root / "ansible.cfg", tmp / "ansible.cfg")
    for name in LINKED:
        (tmp / name).symlink_to(project_root / name)
    local = tmp / "inventories" / "local"
    shutil.copytree(project_root / "inventories" / "local", local)

    hosts_file = local / "hosts.yml"
    inventory = yaml.safe_load(hosts_file.read_text())
    app = inventory["all"]["children"]["app"]
    ssh_port = _free_port(HOST_ADDRESSES["app1"])
    app["vars"]["ansible_port"] = ssh_port
    for name, address in HOST_ADDRESSES.items():
        app["hosts"][name]["ansible_host"] = address
        app["hosts"][name]["app_base_url"] = f"http://{address}:{_free_port(address)}"
    hosts_file.write_text(yaml.safe_dump(inventory, sort_keys=False))

    vault_file = local / "group_vars" / "all" / "vault.yml"
    pg_port = _free_port(PG_ADDRESS)
    vault_file.write_text(
        yaml.safe_dump(
            {
                "vault_database_url": f"postgresql://opsbook:test-pw-{pg_port}@{PG_ADDRESS}:{pg_port}/app"
            }
        )
    )
    yield tmp
    _opsbook(tmp, "sandbox", "down")
    shutil.rmtree(tmp, ignore_errors=True)


def _opsbook(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPSBOOK_PROJECT_DIR": str(project),
        "OPSBOOK_OPLOG": str(project / "oplog.jsonl"),
    }
    return subprocess.run(
        [sys.executable, "-m", "opsbook.cli", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _endpoints(project: Path) -> list[tuple[str, int]]:
    inventory = yaml.safe_load((project / "inventories/local/hosts.yml").read_text())
    app = inventory["all"]["children"]["app"]
    points = []
    for host in app["hosts"].values():
        address = host["ansible_host"]
        points.append((address, int(app["vars"]["ansible_port"])))
        points.append((address, int(host["app_base_url"].rsplit(":", 1)[1])))
    vault = yaml.safe_load((project / "inventories/local/group_vars/all/vault.yml").read_text())
    hostport = vault["vault_database_url"].rsplit("@", 1)[1].split("/", 1)[0]
    points.append((hostport.split(":")[0], int(hostport.split(":")[1])))
    return points


def test_up_is_idempotent_and_runbooks_run_against_it(sandbox_project: Path) -> None:
    first = _opsbook(sandbox_project, "sandbox", "up")
    assert first.returncode == 0, first.stderr
    assert "started" in first.stdout

    again = _opsbook(sandbox_project, "sandbox", "up")
    assert again.returncode == 0, again.stderr
    assert "started" not in again.stdout
    assert again.stdout.count("already running") == 3

    status = _opsbook(sandbox_project, "sandbox", "status")
    assert status.returncode == 0, status.stdout
    assert "down" not in status.stdout.replace("(up)", "")

    # The README's main job.
    tour = _opsbook(
        sandbox_project, "run", "tour", "--env", "local", "--reason", "test",
        "-e", f"opsbook_report_dir={sandbox_project / 'reports'}",
    )  # fmt: skip
    assert tour.returncode == 0, tour.stdout + tour.stderr
    assert "Health check verdict: OK" in tour.stdout
    assert "Restore drill: PASSED" in tour.stdout
    # the rotation: every host on a new JWT_SECRET, the session opened before still accepted
    assert "Secrets rotate in local: succeeded" in tour.stdout
    assert "is still accepted on app1, app2" in tour.stdout
    envs = [
        (sandbox_project / ".sandbox/hosts" / name / "deploy_root/shared/.env").read_text()
        for name in ("app1", "app2")
    ]
    assert envs[0] == envs[1] and "JWT_SECRET_PREVIOUS=" in envs[0]
    # every secret rotated; the old encryption key retired after the re-encryption
    assert "NEXTAUTH_SECRET_PREVIOUS=" in envs[0] and "ENCRYPTION_KEY_PREVIOUS" not in envs[0]
    backups = list((sandbox_project / ".sandbox" / "backups").glob("app-*/manifest.json"))
    assert len(backups) == 1
    # it ends with the routine checks and an incident report, and says where the reports are
    assert "Routine checks of local: OK" in tour.stdout
    assert "Incident triage on local: severity none" in tour.stdout
    reports = dict(
        re.findall(r"^\s*(Routine checks|Incident) report: (/\S+\.md)$", tour.stdout, re.M)
    )
    assert set(reports) == {"Routine checks", "Incident"}, tour.stdout[-3000:]
    assert {Path(path).parent for path in reports.values()} == {sandbox_project / "reports"}
    assert "## Why this severity" in Path(reports["Incident"]).read_text()
    assert "disk" in Path(reports["Routine checks"]).read_text()

    os.environ["OPSBOOK_PROJECT_DIR"] = str(sandbox_project)
    os.environ["OPSBOOK_OPLOG"] = str(sandbox_project / "oplog.jsonl")
    try:
        result = opsbook.run("health_check", "local", reason="python twin")
    finally:
        del os.environ["OPSBOOK_PROJECT_DIR"], os.environ["OPSBOOK_OPLOG"]
    assert result.rc == 0
    assert result.outputs["health_check"]["verdict"] == "ok"
    assert "backup" not in result.outputs
    assert set(result.outputs["health_check"]["apps"]) == {"app1", "app2"}


def test_down_stops_everything_and_up_brings_it_back(sandbox_project: Path) -> None:
    assert _opsbook(sandbox_project, "sandbox", "up").returncode == 0
    down = _opsbook(sandbox_project, "sandbox", "down")
    assert down.returncode == 0, down.stderr
    for address, port in _endpoints(sandbox_project):
        assert not port_is_open(address, port), f"{address}:{port} still answers after down"
    status = _opsbook(sandbox_project, "sandbox", "status")
    assert status.returncode == 1

    back = _opsbook(sandbox_project, "sandbox", "up")
    assert back.returncode == 0, back.stderr
    # Data and releases survive a down/up cycle: the database is not recreated.
    assert "created" not in back.stdout
    for address, port in _endpoints(sandbox_project):
        assert port_is_open(address, port), f"{address}:{port} does not answer after up"


def test_a_taken_port_is_a_clear_error(sandbox_project: Path) -> None:
    assert _opsbook(sandbox_project, "sandbox", "down").returncode == 0
    address, port = _endpoints(sandbox_project)[0]
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((address, port))
        squatter.listen()
        up = _opsbook(sandbox_project, "sandbox", "up")
    assert up.returncode == 1
    assert f"{address}:{port}" in up.stderr and "taken by another program" in up.stderr
