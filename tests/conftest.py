"""pytest fixtures: the real servers of the opsbook test lab (see tests/harness.py).

Session-scoped servers, started on first use and torn down at the end:
    pg         PostgresCluster (max_connections=20), database `app` with the sample schema
    s3         MotoS3Server with the bucket "opsbook-test"
    app_hosts  3 AppHost on 127.0.10.1..3 (sshd + deploy_root + sample app 1.0.0)
Per test:
    make_inventory(env="test", app_hosts=None, database_url=None,
                   backup_storage_url=None, extra_vars=None) -> <tmp>/inventories/<env>/
    run_playbook(name, inventory, extravars=None, check=False, env=None)
        -> subprocess.CompletedProcess of .venv/bin/ansible-playbook playbooks/<name>.yml
After every test the app hosts are put back to a healthy, serving state.
Set OPSBOOK_KEEP_LAB=1 to keep the session's lab directory for inspection.

Scheduling (pytest-xdist, --dist loadfile: one file runs on one worker): the unit test files
run first, then the integration files, the longest first (FILE_SECONDS), so that the files
left at the end of the run are short ones and the workers finish together.
"""

from __future__ import annotations

import compileall
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import (
    AppHost,
    PostgresCluster,
    SshKeyPair,
    load_app_schema,
    start_app_hosts,
    stop_all,
)
from opsbook.lab._proc import make_lab_dir, sweep
from tests.harness import PROJECT_ROOT, ansible_env, run_ansible
from tests.lab import DEFAULT_PG_SETTINGS, MotoS3Server, write_inventory

APP_DB = "app"
S3_BUCKET = "opsbook-test"
APP_HOST_COUNT = 3
APP_VERSION = "1.0.0"

# Seconds each test file keeps a worker busy, run alone (`pytest -n0`): the longer of its CPU
# seconds (every process it starts counted: the suite is CPU-bound, 2 workers on 2 cores) and
# its wall time (test_deploy's and test_storage's waits); only their order matters. Files not
# listed weigh DEFAULT_FILE_SECONDS (integration) or nothing (unit files, which run first anyway).
FILE_SECONDS = {
    "tests/integration/test_deploy.py": 171,
    "tests/integration/test_deploy_state.py": 74,
    "tests/integration/test_backup_runbooks.py": 73,
    "tests/integration/test_pg_restore.py": 49,
    "tests/integration/test_release_role.py": 46,
    "tests/integration/test_pg_backup.py": 45,
    "tests/integration/test_pg_migrate.py": 43,
    "tests/integration/test_interrupts.py": 39,
    "tests/integration/test_storage.py": 38,
    "tests/integration/test_render_platform.py": 35,
    "tests/integration/test_secrets_everywhere.py": 35,
    "tests/integration/test_pg_datafix.py": 34,
    "tests/integration/test_sandbox.py": 34,
    "tests/integration/test_health_check.py": 33,
    "tests/integration/test_rotate_secrets.py": 32,
    "tests/integration/test_vercel_platform.py": 31,
    "tests/integration/test_rotate_faults.py": 29,
    "tests/integration/test_fly_platform.py": 28,
    "tests/integration/test_runner.py": 27,
    "tests/integration/test_platform_runbooks.py": 26,
    "tests/integration/test_deploy_hooks.py": 26,
    "tests/integration/test_routine_checks.py": 21,
    "tests/integration/test_oplog.py": 21,
    "tests/integration/test_molecule_release.py": 20,
    "tests/integration/test_incident.py": 19,
    "tests/integration/test_pg_maintenance.py": 19,
    "tests/integration/test_rotate_vendor_keys.py": 19,
    "tests/integration/test_rotate_stores.py": 19,
    "tests/integration/test_rotate_db_password.py": 18,
    "tests/integration/test_faults_pg.py": 17,
    "tests/integration/test_schedule_awx.py": 15,
    "tests/integration/test_faults_hosts.py": 14,
    "tests/integration/test_host_module_actions.py": 11,
    "tests/integration/test_secret_store.py": 11,
    "tests/integration/test_harness.py": 10,
    "tests/integration/test_db_health.py": 9,
    "tests/integration/test_faults_storage.py": 9,
    "tests/integration/test_jwt_probe.py": 8,
    "tests/integration/test_supabase_platform.py": 8,
    "tests/integration/test_notifications.py": 7,
    "tests/integration/test_app_env.py": 6,
    "tests/integration/test_pg_role_password.py": 6,
    "tests/integration/test_failure_lines.py": 4,
    "tests/integration/test_runbook_inputs.py": 4,
    "tests/integration/test_vendor_key_modules.py": 4,
    "tests/integration/test_history.py": 4,
    "tests/integration/test_run_handle.py": 12,
    "tests/integration/test_awx.py": 25,
    "tests/integration/test_collection_install.py": 15,
    "tests/integration/test_vault_file.py": 8,
    "tests/integration/test_runner_vault.py": 3,
    "tests/integration/test_maintenance_nginx.py": 2,
    "tests/integration/test_schedule_cron.py": 1,
}
# A new integration file (not measured yet) is assumed to be long rather than short: run early.
DEFAULT_FILE_SECONDS = 60

# Where the controller imports the project's plugins from source (ansible-playbook loads them in
# every run, in every forked worker): compiled once per session, see pytest_configure.
PLUGIN_DIRS = (
    "action_plugins",
    "filter_plugins",
    "callback_plugins",
    "library",
    "module_utils",
    "plugin_utils",
)


def pytest_configure(config: pytest.Config) -> None:
    # xdist's default orders the files by their number of tests; the order of the collection
    # (pytest_collection_modifyitems below) is the one wanted.
    if getattr(config.option, "loadscopereorder", None) is not None:
        config.option.loadscopereorder = False
    # Byte-code for the plugins Ansible loads from the project: with PYTHONDONTWRITEBYTECODE set
    # (as in CI) and a fresh clone, every ansible run would compile them again. Once, from the
    # controller (not from each xdist worker).
    if not hasattr(config, "workerinput"):
        for name in PLUGIN_DIRS:
            compileall.compile_dir(PROJECT_ROOT / name, maxlevels=0, quiet=2)


def _file_seconds(nodeid: str) -> float:
    path = nodeid.split("::", 1)[0]
    if not path.startswith("tests/integration/"):
        return float("inf")  # unit files first
    return float(FILE_SECONDS.get(path, DEFAULT_FILE_SECONDS))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit files first, then the integration files, longest first (each file's tests keep
    their order; so do files of equal weight)."""
    items.sort(key=lambda item: -_file_seconds(item.nodeid))


# Servers started this session; the autouse reset revives them after each test
# (a fault test may kill one) and puts the app hosts back to a healthy state.
_ACTIVE_APP_HOSTS: list[AppHost] = []
_ACTIVE_PG: list[PostgresCluster] = []
_ACTIVE_S3: list[MotoS3Server] = []


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def lab_dir() -> Iterator[Path]:
    """The session lab's directory (searchable by the `postgres` user)."""
    base = make_lab_dir(Path(tempfile.mkdtemp(prefix="opsbook-test-lab-")))
    yield base
    sweep(base)
    if not os.environ.get("OPSBOOK_KEEP_LAB"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(lab_dir: Path) -> Iterator[PostgresCluster]:
    """A running PostgreSQL 15 cluster with database `app` holding the sample schema."""
    cluster = PostgresCluster(lab_dir / "postgres", settings=DEFAULT_PG_SETTINGS)
    try:
        cluster.start()
        load_app_schema(cluster.create_database(APP_DB))
        _ACTIVE_PG.append(cluster)
        yield cluster
    finally:
        _ACTIVE_PG.clear()
        cluster.stop()


@pytest.fixture(scope="session")
def s3(lab_dir: Path) -> Iterator[MotoS3Server]:
    """A running S3-compatible server with the bucket "opsbook-test"."""
    server = MotoS3Server(log_file=lab_dir / "moto.log")
    try:
        server.start()
        server.create_bucket(S3_BUCKET)
        _ACTIVE_S3.append(server)
        yield server
    finally:
        _ACTIVE_S3.clear()
        server.stop()


@pytest.fixture(scope="session")
def ssh_key(lab_dir: Path) -> SshKeyPair:
    """The key pair every app host accepts."""
    return SshKeyPair(lab_dir / "ssh")


@pytest.fixture(scope="session")
def app_hosts(lab_dir: Path, ssh_key: SshKeyPair) -> Iterator[list[AppHost]]:
    """Three app hosts on 127.0.10.1..3, sample app 1.0.0 serving on each."""
    hosts = start_app_hosts(APP_HOST_COUNT, lab_dir / "hosts", ssh_key, version=APP_VERSION)
    _ACTIVE_APP_HOSTS.extend(hosts)
    try:
        yield hosts
    finally:
        _ACTIVE_APP_HOSTS.clear()
        stop_all(hosts)


def reset_lab() -> None:
    """The session's servers run again; app hosts healthy and serving (after every test).

    Only servers some test already started are touched (nothing starts here).
    Postgres comes back from a kill by crash recovery; a killed S3 server
    restarts empty, with its bucket.
    """
    for cluster in _ACTIVE_PG:
        cluster.start()
    for server in _ACTIVE_S3:
        if not server.is_running():
            server.start()
            server.create_bucket(S3_BUCKET)
    for host in _ACTIVE_APP_HOSTS:
        host.reset()


@pytest.fixture(autouse=True)
def _reset_lab() -> Iterator[None]:
    """After each test: reset_lab() (tests/integration/test_harness.py checks that it works)."""
    yield
    reset_lab()


@pytest.fixture
def make_inventory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Path]:
    """Factory writing <tmp>/inventories/<env>/ for the session lab (or the hosts given)."""

    def make(
        env: str = "test",
        app_hosts: Sequence[AppHost] | None = None,
        database_url: str | None = None,
        backup_storage_url: str | None = None,
        extra_vars: Mapping[str, Any] | None = None,
    ) -> Path:
        hosts = request.getfixturevalue("app_hosts") if app_hosts is None else app_hosts
        if database_url is None:
            database_url = request.getfixturevalue("pg").dsn_for(APP_DB)
        if backup_storage_url is None:
            backups = tmp_path / "backups"
            backups.mkdir(exist_ok=True)
            backup_storage_url = f"file://{backups}"
        s3_endpoint = None
        if backup_storage_url.startswith("s3://") and "s3_endpoint_url" not in (extra_vars or {}):
            s3_endpoint = request.getfixturevalue("s3").endpoint_url
        directory = tmp_path / "inventories" / env
        return write_inventory(
            directory,
            list(hosts),
            None,  # each host's own key
            known_hosts_file=directory / "known_hosts",
            database_url=database_url,
            backup_storage_url=backup_storage_url,
            extra_vars=extra_vars,
            env=env,
            s3_endpoint_url=s3_endpoint,
        )

    return make


class PlaybookRunner:
    """run_playbook(name, inventory, ...): ansible-playbook from the project root.

    The operation log goes to ``.oplog`` (in the test's tmp_path), never to the project.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.oplog = tmp_path / "oplog.jsonl"
        self._counter = itertools.count(1)

    def __call__(
        self,
        name: str,
        inventory: Path | str,
        extravars: Mapping[str, Any] | None = None,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        timeout: float = 600.0,
    ) -> subprocess.CompletedProcess[str]:
        playbook = name if name.endswith((".yml", ".yaml")) else f"{name}.yml"
        argv = [f"playbooks/{playbook}", "-i", str(inventory)]
        if extravars:
            # In a file, not on argv: extra vars may hold secrets.
            vars_file = self.tmp_path / f"extravars-{next(self._counter)}.json"
            vars_file.write_text(json.dumps(dict(extravars)))
            argv += ["-e", f"@{vars_file}"]
        if check:
            argv.append("--check")
        argv += list(args)
        return run_ansible(
            argv, env=ansible_env(self.oplog, env), timeout=timeout, tool="ansible-playbook"
        )


@pytest.fixture
def run_playbook(tmp_path: Path) -> PlaybookRunner:
    """Run a playbook against an inventory; returns subprocess.CompletedProcess."""
    return PlaybookRunner(tmp_path)
