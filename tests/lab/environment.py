"""Lab: one object that starts (and tears down) a whole test environment.

Postgres with the sample app schema (and optionally pgbench data), the S3
server with a bucket, N app hosts with the sample app, an SSH key pair and a
known_hosts file, all under one base_dir. Used by the pytest fixtures, by
``tests/harness.py up`` and by benchmarks (the sandbox builds its own from
``opsbook.lab``'s parts)::

    with Lab(tempfile.mkdtemp(), hosts=2) as lab:
        inventory = lab.write_inventory(lab.base_dir / "inventory")
        ...

stop() stops everything in reverse order, then kills any process still
referring to base_dir, so nothing outlives the lab.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opsbook.lab._proc import LabError, make_lab_dir, pid_alive, sweep
from opsbook.lab.hosts import AppHost, start_app_hosts, stop_all
from opsbook.lab.postgres import PostgresCluster, SettingValue, load_app_schema
from opsbook.lab.sshd import SshKeyPair, write_known_hosts
from tests.lab.inventory import write_inventory
from tests.lab.pgdata import load_pgbench
from tests.lab.s3 import MotoS3Server

__all__ = ["DEFAULT_PG_SETTINGS", "Lab"]

# Throwaway clusters: durability off, small and fast.
DEFAULT_PG_SETTINGS: dict[str, SettingValue] = {
    "max_connections": 20,
    "fsync": False,
    "synchronous_commit": False,
    "full_page_writes": False,
    "shared_buffers": "32MB",
    # db_health reports the slowest statements from pg_stat_statements when it is loaded.
    "shared_preload_libraries": "pg_stat_statements",
}


class Lab:
    """A complete lab under base_dir; start() brings it up, stop() leaves nothing behind."""

    def __init__(
        self,
        base_dir: Path | str,
        hosts: int = 3,
        first_address: int = 1,
        version: str = "1.0.0",
        with_postgres: bool = True,
        with_s3: bool = True,
        pg_settings: Mapping[str, SettingValue] | None = None,
        app_db: str = "app",
        users: int = 200,
        tasks_per_user: int = 5,
        pgbench_scale: int = 0,
        bucket: str = "opsbook-test",
        remove_on_stop: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.n_hosts = hosts
        self.first_address = first_address
        self.version = version
        self.with_postgres = with_postgres
        self.with_s3 = with_s3
        self.pg_settings = dict(DEFAULT_PG_SETTINGS if pg_settings is None else pg_settings)
        self.app_db = app_db
        self.users = users
        self.tasks_per_user = tasks_per_user
        self.pgbench_scale = pgbench_scale
        self.bucket = bucket
        self.remove_on_stop = remove_on_stop
        self.key: SshKeyPair | None = None
        self.postgres: PostgresCluster | None = None
        self.s3: MotoS3Server | None = None
        self.app_hosts: list[AppHost] = []
        self.known_hosts_file = self.base_dir / "ssh" / "known_hosts"
        self.backup_dir = self.base_dir / "backups"

    # ----------------------------------------------------------- lifecycle

    def start(self) -> Lab:
        """Start every component; on failure, tear down what started and re-raise."""
        make_lab_dir(self.base_dir)
        self.backup_dir.mkdir(exist_ok=True)
        try:
            if self.with_postgres:
                self._start_postgres()
            if self.with_s3:
                self._start_s3()
            self._start_hosts()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop hosts, S3 and Postgres; then sweep stray processes under base_dir."""
        errors: list[Exception] = []
        steps = [lambda: stop_all(self.app_hosts)]
        if self.s3 is not None:
            steps.append(self.s3.stop)
        if self.postgres is not None:
            steps.append(self.postgres.stop)
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down the rest
                errors.append(exc)
        sweep(self.base_dir)
        if self.remove_on_stop:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if errors:
            raise LabError(f"lab teardown had {len(errors)} error(s); first: {errors[0]}")

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------- components

    def _start_postgres(self) -> None:
        self.postgres = PostgresCluster(self.base_dir / "postgres", settings=self.pg_settings)
        self.postgres.start()
        load_app_schema(
            self.postgres.create_database(self.app_db),
            users=self.users,
            tasks_per_user=self.tasks_per_user,
        )
        if self.pgbench_scale > 0:
            load_pgbench(self.postgres, "pgbench", self.pgbench_scale)

    def _start_s3(self) -> None:
        self.s3 = MotoS3Server(log_file=self.base_dir / "moto.log")
        self.s3.start()
        self.s3.create_bucket(self.bucket)

    def _start_hosts(self) -> None:
        self.key = SshKeyPair(self.base_dir / "ssh")
        self.app_hosts = start_app_hosts(
            self.n_hosts,
            self.base_dir / "hosts",
            self.key,
            first_address=self.first_address,
            version=self.version,
        )
        write_known_hosts(self.known_hosts_file, list(self.app_hosts))

    # ------------------------------------------------------------- facts

    @property
    def database_url(self) -> str | None:
        """DSN of the sample app database (None without Postgres)."""
        return self.postgres.dsn_for(self.app_db) if self.postgres else None

    @property
    def file_backup_url(self) -> str:
        return f"file://{self.backup_dir}"

    def pids(self) -> list[int]:
        """Every live process the lab runs (servers, apps, sshd sessions)."""
        pids: list[int | None] = []
        if self.postgres is not None:
            pids.append(self.postgres.postmaster_pid)
        if self.s3 is not None:
            pids.append(self.s3.pid)
        for host in self.app_hosts:
            pids.extend([host.pid, host.app_pid])
        return [pid for pid in pids if pid is not None and pid_alive(pid)]

    def endpoints(self) -> list[tuple[str, int]]:
        """Every (address, port) the lab listens on."""
        endpoints: list[tuple[str, int]] = []
        if self.postgres is not None:
            endpoints.append((self.postgres.host, self.postgres.port))
        if self.s3 is not None:
            endpoints.append((self.s3.host, self.s3.port))
        for host in self.app_hosts:
            endpoints.extend([(host.address, host.port), (host.address, host.app_port)])
        return endpoints

    def write_inventory(
        self,
        path_dir: Path | str,
        env: str = "test",
        backup_storage_url: str | None = None,
        extra_vars: Mapping[str, Any] | None = None,
        app_hosts: list[AppHost] | None = None,
    ) -> Path:
        """Inventory for this lab; backups go to the lab's file:// store unless told otherwise."""
        if self.key is None:
            raise LabError("the lab is not started: no SSH key or hosts yet")
        backup_url = backup_storage_url or self.file_backup_url
        s3_endpoint = self.s3.endpoint_url if self.s3 and backup_url.startswith("s3://") else None
        return write_inventory(
            path_dir,
            self.app_hosts if app_hosts is None else app_hosts,
            self.key,
            known_hosts_file=self.known_hosts_file,
            database_url=self.database_url,
            backup_storage_url=backup_url,
            extra_vars=extra_vars,
            env=env,
            s3_endpoint_url=s3_endpoint,
        )

    def describe(self) -> dict[str, Any]:
        """What a person needs to use the lab by hand."""
        return {
            "base_dir": str(self.base_dir),
            "database_url": self.database_url,
            "s3_endpoint_url": self.s3.endpoint_url if self.s3 else None,
            "s3_bucket": self.bucket if self.s3 else None,
            "ssh_key": str(self.key.private_key) if self.key else None,
            "known_hosts": str(self.known_hosts_file),
            "app_hosts": [
                {
                    "name": h.name,
                    "ssh": f"{h.user}@{h.address} -p {h.port}",
                    "app_base_url": h.base_url,
                    "deploy_root": str(h.deploy_root),
                }
                for h in self.app_hosts
            ],
        }
