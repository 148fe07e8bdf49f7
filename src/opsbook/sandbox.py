"""The local sandbox: the environment that ``inventories/local`` points at.

``opsbook sandbox up`` builds it on this machine, under the project's
git-ignored ``.sandbox/`` directory, from the same lab parts the tests use:

- a PostgreSQL 15 cluster at the address, port, user, password and database
  of ``database_url`` in ``inventories/local/group_vars/all/vault.yml``,
  holding the sample app schema;
- one SSH "host" per host of the ``app`` group in
  ``inventories/local/hosts.yml`` (an sshd on its ``ansible_host`` and
  ``ansible_port``), each with a deploy root and the sample app serving
  ``app_base_url``;
- a ``backups/`` directory for ``backup_storage_url`` (``file://``).

The inventory is the single source of truth: change an address or a port
there and the next ``up`` follows it. ``up`` is idempotent (what runs is left
running, what is missing is started), ``down`` stops every process (``purge``
also removes the state), ``status`` says what runs.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import yaml

from opsbook.lab import (
    AppHost,
    LabError,
    PostgresCluster,
    SshKeyPair,
    load_app_schema,
    make_lab_dir,
    port_is_open,
    sweep,
    write_known_hosts,
)
from opsbook.lab.hosts import seed_env_values
from opsbook.lab.sampleapp import build_release

__all__ = ["Sandbox", "SandboxConfig", "main"]

SANDBOX_DIR = ".sandbox"
INITIAL_VERSION = "1.0.0"
# Release artifacts `sandbox up` builds into .sandbox/artifacts/ for the tour's deploy (and
# for trying deploy.yml by hand): the version the hosts start with and the next one.
ARTIFACT_VERSIONS = (INITIAL_VERSION, "1.1.0")
PG_SETTINGS = {"max_connections": 50, "shared_buffers": "64MB"}

Say = Callable[[str], None]


@dataclass(frozen=True)
class AppHostSpec:
    """One app host of inventories/local: where its sshd and its app listen."""

    name: str
    address: str
    ssh_port: int
    app_port: int


@dataclass(frozen=True)
class DatabaseSpec:
    """The sandbox database, read from the local database_url."""

    host: str
    port: int
    user: str
    password: str
    dbname: str


@dataclass(frozen=True)
class SandboxConfig:
    """What inventories/local asks for."""

    state_dir: Path
    database: DatabaseSpec
    app_hosts: tuple[AppHostSpec, ...]

    @classmethod
    def from_project(cls, project_dir: Path) -> SandboxConfig:
        inventory = project_dir / "inventories" / "local"
        hosts_file = inventory / "hosts.yml"
        vault_file = inventory / "group_vars" / "all" / "vault.yml"
        return cls(
            state_dir=project_dir / SANDBOX_DIR,
            database=_database_spec(_load_yaml(vault_file), vault_file),
            app_hosts=tuple(_app_host_specs(_load_yaml(hosts_file), hosts_file)),
        )


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise LabError(f"sandbox: {path} is missing") from exc
    if not isinstance(data, dict):
        raise LabError(f"sandbox: {path} is not a YAML mapping")
    return data


def _database_spec(vault: dict[str, Any], source: Path) -> DatabaseSpec:
    url = str(vault.get("vault_database_url") or "")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise LabError(f"sandbox: vault_database_url in {source} is not a postgresql:// URL")
    if not (parts.username and parts.password and parts.path.strip("/")):
        raise LabError(
            f"sandbox: vault_database_url in {source} needs a user, a password and a database"
        )
    return DatabaseSpec(
        host=parts.hostname,
        port=parts.port or 5432,
        user=unquote(parts.username),
        password=unquote(parts.password),
        dbname=unquote(parts.path.strip("/")),
    )


def _app_host_specs(inventory: dict[str, Any], source: Path) -> list[AppHostSpec]:
    group = inventory.get("all", {}).get("children", {}).get("app", {}) or {}
    group_vars = group.get("vars", {}) or {}
    specs = []
    for name, hostvars in (group.get("hosts") or {}).items():
        merged = {**group_vars, **(hostvars or {})}
        base_url = urlsplit(str(merged.get("app_base_url", "")))
        if not merged.get("ansible_host") or not base_url.port:
            raise LabError(
                f"sandbox: app host {name} in {source} needs ansible_host and an "
                "app_base_url with an explicit port"
            )
        specs.append(
            AppHostSpec(
                name=str(name),
                address=str(merged["ansible_host"]),
                ssh_port=int(merged.get("ansible_port", 22)),
                app_port=int(base_url.port),
            )
        )
    return specs


class Sandbox:
    """The sandbox of one project; every method is safe to repeat."""

    def __init__(self, config: SandboxConfig, say: Say = print) -> None:
        self.config = config
        self.say = say
        self.dir = config.state_dir
        self.backups_dir = self.dir / "backups"
        self.artifacts_dir = self.dir / "artifacts"
        self.state_store_dir = self.dir / "state"
        self.known_hosts = self.dir / "ssh" / "known_hosts"

    # ------------------------------------------------------------- parts

    def cluster(self) -> PostgresCluster:
        db = self.config.database
        return PostgresCluster(
            self.dir / "pg",
            port=db.port,
            host=db.host,
            superuser=db.user,
            password=db.password,
            settings=PG_SETTINGS,
        )

    def key(self) -> SshKeyPair:
        return SshKeyPair(self.dir / "ssh", comment="opsbook-sandbox")

    def hosts(self) -> list[AppHost]:
        key = self.key()
        shared = seed_env_values()  # used only by a host whose shared/.env does not exist yet
        return [
            AppHost(
                spec.name,
                spec.address,
                self.dir / "hosts" / spec.name,
                key,
                port=spec.ssh_port,
                app_port=spec.app_port,
                env_seed=shared,
            )
            for spec in self.config.app_hosts
        ]

    # ------------------------------------------------------------- actions

    def up(self) -> int:
        """Start whatever is not running; leave the rest as it is."""
        make_lab_dir(self.dir)
        self.backups_dir.mkdir(exist_ok=True)
        self.state_store_dir.mkdir(exist_ok=True)
        self._up_database()
        hosts = self.hosts()
        for host in hosts:
            self._up_host(host)
        write_known_hosts(self.known_hosts, hosts)
        self.say(f"backups   {self.backups_dir}  ready")
        for version in ARTIFACT_VERSIONS:
            build_release(version, self.artifacts_dir)  # deterministic: same bytes every time
        self.say(f"artifacts {self.artifacts_dir}  {', '.join(ARTIFACT_VERSIONS)}")
        self.say("sandbox is up: try `opsbook run health_check --env local`")
        return 0

    def down(self, purge: bool = False) -> int:
        """Stop every sandbox process; with purge, also remove .sandbox/."""
        if not self.dir.exists():
            self.say("sandbox is not set up: nothing to stop")
            return 0
        for host in self.hosts():
            was_running = host.is_running() or host.app_running()
            host.stop()
            self.say(f"{host.name:<9} {'stopped' if was_running else 'not running'}")
        cluster = self.cluster()
        was_running = cluster.is_running()
        cluster.stop()
        self.say(f"postgres  {'stopped' if was_running else 'not running'}")
        stray = sweep(self.dir)
        if stray:
            self.say(f"stopped {len(stray)} stray process(es) under {self.dir}")
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.say(f"removed {self.dir}")
        return 0

    def status(self) -> int:
        """Print what runs; 0 when everything does, 1 otherwise."""
        rows = self.status_rows()
        for name, state, detail in rows:
            self.say(f"{name:<9} {state:<8} {detail}")
        return 0 if all(state == "up" for _, state, _ in rows) else 1

    def status_rows(self) -> list[tuple[str, str, str]]:
        db = self.config.database
        cluster = self.cluster()
        rows = [
            (
                "postgres",
                "up" if cluster.is_running() and port_is_open(db.host, db.port) else "down",
                f"{db.host}:{db.port}/{db.dbname}",
            )
        ]
        for host in self.hosts():
            ssh_up = host.is_running() and port_is_open(host.address, host.port)
            app_up = host.app_running() and port_is_open(host.address, host.app_port)
            state = "up" if ssh_up and app_up else "down"
            release = host.current_release or "-"
            detail = (
                f"ssh {host.address}:{host.port} ({'up' if ssh_up else 'down'}), "
                f"app {host.base_url} ({'up' if app_up else 'down'}), release {release}"
            )
            rows.append((host.name, state, detail))
        return rows

    # ------------------------------------------------------------- internals

    def _up_database(self) -> None:
        db = self.config.database
        cluster = self.cluster()
        if cluster.is_running():
            state = "already running"
        else:
            if port_is_open(db.host, db.port):
                raise LabError(
                    f"sandbox: {db.host}:{db.port} is taken by another program; "
                    "change database_url in inventories/local/group_vars/all/vault.yml"
                )
            cluster.start()
            state = "started"
        # The inventory is the source of truth for the password.
        with cluster.connect() as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    psycopg.sql.Identifier(db.user), psycopg.sql.Literal(db.password)
                )
            )
        if not cluster.database_exists(db.dbname):
            load_app_schema(cluster.create_database(db.dbname))
            state += f", database {db.dbname} created with the sample schema"
        self.say(f"postgres  {db.host}:{db.port}/{db.dbname}  {state}")

    def _up_host(self, host: AppHost) -> None:
        running = host.is_running() and host.app_running()
        if not running:
            for port in (host.port, host.app_port):
                owned = host.is_running() if port == host.port else host.app_running()
                if not owned and port_is_open(host.address, port):
                    raise LabError(
                        f"sandbox: {host.address}:{port} ({host.name}) is taken by another "
                        "program; change it in inventories/local/hosts.yml"
                    )
            host.start(INITIAL_VERSION)
        state = "already running" if running else "started"
        self.say(
            f"{host.name:<9} ssh {host.address}:{host.port}, app {host.base_url} "
            f"(release {host.current_release})  {state}"
        )


def main(action: str, project_dir: Path, purge: bool = False, say: Say = print) -> int:
    """Entry point of ``opsbook sandbox up|down|status``; returns the exit code."""
    try:
        sandbox = Sandbox(SandboxConfig.from_project(project_dir), say=say)
        if action == "up":
            return sandbox.up()
        if action == "down":
            return sandbox.down(purge=purge)
        if action == "status":
            return sandbox.status()
    except LabError as exc:
        print(f"opsbook: error: {exc}", file=sys.stderr)
        if action == "up":
            print(
                "opsbook: what did start keeps running; `opsbook sandbox status` shows it",
                file=sys.stderr,
            )
        return 1
    raise ValueError(f"unknown sandbox action {action!r}")
