"""The test lab is real and leaves nothing behind.

Postgres, S3, sshd and the sample app are real processes on loopback; Ansible
reaches the app hosts over SSH with strict host-key checking; teardown leaves
no process running and no port bound.
"""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest
import yaml

from opsbook.lab import AppHost, LabError, PostgresCluster, SshHost, load_app_schema, pid_alive
from opsbook.lab._proc import processes_referencing
from tests.conftest import reset_lab
from tests.harness import run_ansible
from tests.lab import Lab, MotoS3Server, app_table_checksums, load_pgbench

pytestmark = pytest.mark.integration


def _refused(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


# ------------------------------------------------------------------ Postgres


def test_postgres_serves_the_sample_schema_with_foreign_keys(pg: PostgresCluster) -> None:
    assert pg.execute("SELECT count(*) FROM users", dbname="app") == [(200,)]
    assert pg.execute("SELECT count(*) FROM tasks", dbname="app") == [(1000,)]
    fks = pg.execute(
        "SELECT conrelid::regclass::text, confrelid::regclass::text, confdeltype "
        "FROM pg_constraint WHERE contype = 'f'",
        dbname="app",
    )
    assert fks == [("tasks", "users", "c")]  # ON DELETE CASCADE
    indexes = {row[0] for row in pg.execute("SELECT indexname FROM pg_indexes", dbname="app")}
    assert {"tasks_user_id_idx", "tasks_status_due_at_idx", "users_email_key"} <= indexes
    assert pg.execute("SHOW max_connections") == [("20",)]


def test_postgres_requires_the_password_and_runs_unprivileged(pg: PostgresCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn.replace(pg.password, "wrong-password"), connect_timeout=5)
    pid = pg.postmaster_pid
    assert pid is not None
    owner = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
    assert owner == ("postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)


def test_sample_data_is_deterministic(pg: PostgresCluster) -> None:
    dsn = pg.create_database("app_copy")
    try:
        assert load_app_schema(dsn) == {"users": 200, "tasks": 1000}
        assert app_table_checksums(dsn) == app_table_checksums(pg.dsn_for("app"))
    finally:
        pg.drop_database("app_copy")


def test_pgbench_loader(pg: PostgresCluster) -> None:
    dsn = load_pgbench(pg, "bench", scale=1)
    try:
        with psycopg.connect(dsn) as conn:
            accounts = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
            branches = conn.execute("SELECT count(*) FROM pgbench_branches").fetchone()
        assert (accounts, branches) == ((100_000,), (1,))
    finally:
        pg.drop_database("bench")


# ------------------------------------------------------------------------ S3


def test_s3_put_and_get_through_boto3(s3: MotoS3Server) -> None:
    client = s3.client()
    client.put_object(Bucket="opsbook-test", Key="harness/hello.txt", Body=b"hello lab")

    body = client.get_object(Bucket="opsbook-test", Key="harness/hello.txt")["Body"].read()
    assert body == b"hello lab"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="opsbook-test")["Contents"]]
    assert "harness/hello.txt" in keys


# ----------------------------------------------------------- SSH + Ansible


def test_ansible_pings_every_app_host_over_ssh(
    app_hosts: list[AppHost], make_inventory, tmp_path: Path
) -> None:
    inventory = make_inventory()

    result = run_ansible(["app", "-i", str(inventory), "-m", "ansible.builtin.ping"])

    assert result.returncode == 0, result.stdout + result.stderr
    for host in app_hosts:
        assert f"{host.name} | SUCCESS" in result.stdout
    assert result.stdout.count('"ping": "pong"') == len(app_hosts)


def test_inventory_follows_the_contract(app_hosts: list[AppHost], make_inventory) -> None:
    inventory = make_inventory(extra_vars={"opsbook_reason": "harness"})

    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["children"]
    app1 = hosts["app"]["hosts"]["app1"]
    assert app1["ansible_host"] == "127.0.10.1"
    assert app1["app_base_url"] == app_hosts[0].base_url
    assert app1["deploy_root"] == str(app_hosts[0].deploy_root)
    assert app1["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "StrictHostKeyChecking=yes" in app1["ansible_ssh_common_args"]
    assert hosts["dbadmin"]["hosts"]["localhost"]["ansible_connection"] == "local"
    group_vars = yaml.safe_load((inventory / "group_vars" / "all" / "vars.yml").read_text())
    assert group_vars["opsbook_env"] == "local"
    assert group_vars["database_url"].startswith("postgresql://")
    assert group_vars["backup_storage_url"].startswith("file:///")
    assert group_vars["opsbook_reason"] == "harness"


def test_ssh_checks_host_keys_strictly(app_hosts: list[AppHost], tmp_path: Path) -> None:
    host = app_hosts[0]
    assert host.run("echo ok").stdout.strip() == "ok"

    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    argv = host.ssh_command("echo ok")
    argv[argv.index(f"UserKnownHostsFile={host.known_hosts_file}")] = f"UserKnownHostsFile={empty}"
    result = host.run_argv(argv)
    assert result.returncode != 0
    assert "Host key verification failed" in result.stderr


# -------------------------------------------------------------- sample app


def test_every_app_answers_health_and_version(app_hosts: list[AppHost]) -> None:
    for host in app_hosts:
        health = host.health()
        assert (health.status, health.body["status"], health.body["version"]) == (
            200,
            "ok",
            "1.0.0",
        )
        answer = host.get("/api/version")
        assert (answer.body["version"], answer.body["release"]) == ("1.0.0", "1.0.0")


def test_fail_slow_and_maintenance_modes(app_hosts: list[AppHost]) -> None:
    host = app_hosts[1]

    host.set_health("fail")
    assert host.health().status == 500

    host.set_health("slow", delay_ms=300)
    slow = host.health()
    assert slow.status == 200
    assert slow.elapsed_ms >= 300

    host.set_maintenance(True)
    assert host.health().status == 503
    assert host.get("/api/version").status == 503


def test_reset_between_tests_restored_health(app_hosts: list[AppHost]) -> None:
    # Self-contained (any order, any xdist worker): break every host, then run the reset the
    # autouse fixture runs after each test, and see it undone.
    app_hosts[0].set_maintenance(True)
    app_hosts[1].set_health("fail")
    app_hosts[2].set_maintenance(True)
    app_hosts[2].set_health("slow", delay_ms=2000)
    assert [host.get("/api/version").status for host in app_hosts] == [503, 200, 503]
    assert app_hosts[1].health().status == 500

    reset_lab()

    answers = [host.health() for host in app_hosts]
    assert [(a.status, a.body["status"]) for a in answers] == [(200, "ok")] * 3
    assert max(a.elapsed_ms for a in answers) < 1000  # not slow any more
    assert [host.get("/api/version").status for host in app_hosts] == [200, 200, 200]
    assert [(host.shared_dir / "maintenance").exists() for host in app_hosts] == [False] * 3


# ------------------------------------------------------------------ faults


def test_reset_between_tests_revived_killed_servers(
    pg: PostgresCluster, s3: MotoS3Server, app_hosts: list[AppHost]
) -> None:
    # Self-contained: kill each kind of server (and see it really gone), then run the reset the
    # autouse fixture runs after each test, and see each one serving again.
    host = app_hosts[2]
    s3.client().put_object(Bucket="opsbook-test", Key="harness/before-kill", Body=b"x")

    pg.kill()
    s3.kill()
    host.kill()

    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn, connect_timeout=2)
    assert _refused(s3.host, s3.port)
    assert _refused(host.address, host.port)
    assert _refused(host.address, host.app_port)

    reset_lab()

    assert pg.execute("SELECT count(*) FROM users", dbname="app") == [(200,)]  # crash recovery
    client = s3.client()
    assert client.head_bucket(Bucket="opsbook-test")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client.list_objects_v2(Bucket="opsbook-test")["KeyCount"] == 0  # restarted empty
    assert host.run("echo back").stdout.strip() == "back"
    assert (host.health().status, host.get("/api/version").status) == (200, 200)


# --------------------------------------------------------- errors, teardown


def test_a_component_that_cannot_start_says_why(app_hosts: list[AppHost], tmp_path: Path) -> None:
    taken = app_hosts[0]
    clash = SshHost("clash", taken.address, tmp_path / "clash", taken.key, port=taken.port)

    with pytest.raises(LabError) as failure:
        clash.start()

    message = str(failure.value)
    assert f"sshd for clash on {taken.address}:{taken.port}" in message
    assert "Bind to port" in message  # the tail of sshd's own log
    assert not clash.is_running()


def test_a_separate_lab_tears_down_completely() -> None:
    base = Path(tempfile.mkdtemp(prefix="opsbook-teardown-"))
    lab = Lab(base, hosts=2, first_address=200, users=10, tasks_per_user=2, remove_on_stop=True)
    try:
        lab.start()
        host = lab.app_hosts[0]
        # A release switch and restart, as a deploy does.
        host.install_release("1.1.0")
        host.restart_app()
        assert host.version() == "1.1.0"
        # Something a session leaves behind (a detached job) must not survive either.
        leftover = host.run("setsid sleep 600 >/dev/null 2>&1 < /dev/null & echo $!")
        assert leftover.returncode == 0, leftover.stderr
        stray = int(leftover.stdout.strip())
        assert pid_alive(stray)
        pids = lab.pids()
        endpoints = lab.endpoints()
        assert len(pids) == 1 + 1 + 2 * 2  # postmaster, moto, sshd + app per host
        assert len(endpoints) == 1 + 1 + 2 * 2
    finally:
        lab.stop()

    assert [pid for pid in [*pids, stray] if pid_alive(pid)] == []
    assert [e for e in endpoints if not _refused(*e)] == []
    assert processes_referencing(base) == []
    assert not base.exists()
