"""A throwaway PostgreSQL cluster for tests and the sandbox, plus the sample app schema
(load_app_schema); the tests' other data loaders are in tests/lab/pgdata.py.

The cluster lives entirely in ``base_dir``::

    base_dir/
      data/            the cluster (initdb), owned by the server's user
      run/             the unix socket directory
      postgres.log     the server log
      cluster.json     port, host, superuser, password (0600) so another
                       process can stop the cluster or reconnect to it

initdb refuses to run as root: when we are root the server runs as the
``postgres`` system user (``run_as``), otherwise as ourselves.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from opsbook.lab._proc import (
    LabError,
    RunAs,
    component_error,
    descendants,
    free_port,
    kill_hard,
    pid_alive,
    port_is_open,
    read_pidfile,
    wait_until,
)

__all__ = [
    "PostgresCluster",
    "load_app_schema",
    "pg_bindir",
]

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
SettingValue = str | int | float | bool
_INCLUDE_FILE = "opsbook_lab.conf"


def pg_bindir() -> Path:
    """Where the PostgreSQL server binaries are: $OPSBOOK_PG_BINDIR, PG 15, or pg_config."""
    override = os.environ.get("OPSBOOK_PG_BINDIR")
    if override:
        return Path(override)
    if (DEFAULT_BINDIR / "initdb").exists():
        return DEFAULT_BINDIR
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    raise LabError(
        "PostgreSQL server binaries not found: install postgresql-15 "
        "or set OPSBOOK_PG_BINDIR to the directory holding initdb"
    )


def _conf_value(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class PostgresCluster:
    """A PostgreSQL cluster made with initdb in base_dir, listening on host:port."""

    def __init__(
        self,
        base_dir: Path | str,
        port: int | None = None,
        host: str = "127.0.0.1",
        superuser: str = "opsbook",
        password: str | None = None,
        settings: Mapping[str, SettingValue] | None = None,
        run_as: str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "run"
        self.log_file = self.base_dir / "postgres.log"
        self.state_file = self.base_dir / "cluster.json"
        self.host = host
        self.superuser = superuser
        self.settings: dict[str, SettingValue] = dict(settings or {})
        self.start_timeout = start_timeout
        self.user = self._resolve_user(run_as)
        self.bindir = pg_bindir()
        state = self._load_state()
        self.port: int = port or int(state.get("port") or 0) or free_port(host)
        self.password: str = (
            password or str(state.get("password") or "") or secrets.token_urlsafe(18)
        )

    # ------------------------------------------------------------ identity

    def __repr__(self) -> str:
        return f"PostgresCluster({self.host}:{self.port}, {self.base_dir})"

    @property
    def label(self) -> str:
        return f"PostgreSQL on {self.host}:{self.port}"

    @property
    def dsn(self) -> str:
        """DSN of the `postgres` database as the superuser."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """DSN of dbname as the superuser (postgresql:// URL)."""
        user = quote(self.superuser, safe="")
        password = quote(self.password, safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def client_env(self, dbname: str = "postgres") -> dict[str, str]:
        """Environment for libpq client tools (psql, pg_dump, pgbench): password never on argv."""
        env = dict(os.environ)
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.superuser,
            PGPASSWORD=self.password,
            PGDATABASE=dbname,
        )
        return env

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    @property
    def postmaster_pid(self) -> int | None:
        return read_pidfile(self.data_dir / "postmaster.pid")

    def is_running(self) -> bool:
        return pid_alive(self.postmaster_pid)

    # ----------------------------------------------------------- lifecycle

    def start(self) -> PostgresCluster:
        """initdb (first time), write the settings, start, wait until it accepts connections."""
        if self.is_running():
            return self
        if not self.initialized:
            self._initdb()
        self._clear_stale_locks()
        self._write_settings()
        result = self._pg_ctl(
            "start", "-w", "-t", str(int(self.start_timeout)), "-l", str(self.log_file)
        )
        if result.returncode != 0 or not self._accepts_connections():
            raise component_error(
                self.label,
                f"did not start (pg_ctl exit {result.returncode}: {result.stdout.strip()})",
                self.log_file,
            )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (pg_ctl stop -m fast); SIGKILL if it does not stop in time."""
        if not self.is_running():
            return
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(timeout)))
        if self.is_running():
            self.kill()

    def kill(self) -> None:
        """SIGKILL the postmaster and its children: a crash, for fault tests."""
        pid = self.postmaster_pid
        if not pid_alive(pid):
            return
        assert pid is not None
        kill_hard([pid, *descendants(pid)])

    def destroy(self) -> None:
        """Stop and remove the whole base_dir."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- queries

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection (autocommit by default)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn_for(dbname), **kwargs)

    def execute(
        self, query: str, dbname: str = "postgres", params: Any = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit; return its rows ([] when it returns none)."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def database_exists(self, name: str) -> bool:
        return bool(self.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=(name,)))

    def create_database(self, name: str) -> str:
        """Create database name unless it exists; return its DSN."""
        if not self.database_exists(name):
            with self.connect() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database name if it exists, disconnecting its sessions."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # ------------------------------------------------------------ internals

    @staticmethod
    def _resolve_user(run_as: str | None) -> RunAs:
        if run_as:
            return RunAs.named(run_as)
        return RunAs.named("postgres") if os.geteuid() == 0 else RunAs.current()

    def _load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self) -> None:
        state = {
            "host": self.host,
            "port": self.port,
            "superuser": self.superuser,
            "password": self.password,
        }
        self.state_file.touch(mode=0o600)
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=self.base_dir,
            env=self.user.env(),
            capture_output=True,
            text=True,
            check=False,
            **self.user.popen_kwargs(),
            **kwargs,
        )

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), *args])

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.user.chown(self.base_dir, self.data_dir, self.socket_dir)
        try:
            writable = self._run(["test", "-w", str(self.data_dir)]).returncode == 0
        except OSError:
            writable = False
        if not writable:
            raise LabError(
                f"{self.label}: user {self.user.name!r} cannot write {self.data_dir}; "
                "a parent directory is probably not searchable by it "
                "(use a base directory such as one made by tempfile.mkdtemp())"
            )

    def _initdb(self) -> None:
        self._prepare_dirs()
        pwfile = self.base_dir / ".initdb-pwfile"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password + "\n")
        self.user.chown(pwfile)
        try:
            result = self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise LabError(f"{self.label}: initdb failed:\n{result.stdout}{result.stderr}")
        self._write_hba()
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# opsbook lab settings\ninclude_if_exists = '{_INCLUDE_FILE}'\n")
        self._save_state()

    def _clear_stale_locks(self) -> None:
        """Drop the lock files of a dead postmaster (called only when none is running).

        A killed postmaster may linger as a zombie until init reaps it, and
        postgres refuses to start while that pid still "exists".
        """
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)

    def _write_hba(self) -> None:
        lines = [
            "# opsbook lab: password (SCRAM) authentication everywhere",
            "local all all scram-sha-256",
            "host  all all 127.0.0.0/8 scram-sha-256",
            "host  all all ::1/128 scram-sha-256",
        ]
        if not self.host.startswith("127.") and self.host not in ("localhost", "::1"):
            lines.append("host  all all 0.0.0.0/0 scram-sha-256")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        self.user.chown(hba)

    def _write_settings(self) -> None:
        settings: dict[str, SettingValue] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            **self.settings,
        }
        text = "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
        path = self.data_dir / _INCLUDE_FILE
        path.write_text("# written by opsbook.lab.postgres on every start\n" + text)
        self.user.chown(path)

    def _accepts_connections(self) -> bool:
        isready = [
            str(self.bindir / "pg_isready"),
            "-q", "-h", self.host, "-p", str(self.port), "-t", "2",
        ]  # fmt: skip

        def ready() -> bool:
            if not self.is_running() or not port_is_open(self.host, self.port):
                return False
            return subprocess.run(isready, check=False).returncode == 0

        return wait_until(ready, timeout=self.start_timeout, interval=0.1)


# ------------------------------------------------------------------ loaders

APP_SCHEMA = """
DROP TABLE IF EXISTS tasks;
DROP TABLE IF EXISTS users;

CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    email       text        NOT NULL UNIQUE,
    name        text        NOT NULL,
    plan        text        NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'team')),
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    id          bigserial PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title       text        NOT NULL,
    status      text        NOT NULL DEFAULT 'todo'
                            CHECK (status IN ('todo', 'doing', 'done', 'archived')),
    priority    smallint    NOT NULL DEFAULT 2 CHECK (priority BETWEEN 1 AND 4),
    due_at      timestamptz,
    payload     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tasks_user_id_idx ON tasks (user_id);
CREATE INDEX tasks_status_due_at_idx ON tasks (status, due_at);
CREATE INDEX tasks_open_due_idx ON tasks (due_at) WHERE status IN ('todo', 'doing');
CREATE INDEX users_created_at_idx ON users (created_at);
"""

_FIRST = ["ada", "alan", "grace", "linus", "margaret", "ken", "barbara", "dennis", "guido"]
_LAST = ["lovelace", "turing", "hopper", "torvalds", "hamilton", "thompson", "liskov", "ritchie"]
_VERBS = ["Review", "Ship", "Fix", "Write", "Plan", "Refactor", "Test", "Document"]
_NOUNS = ["invoice export", "login page", "billing job", "release notes", "API docs"]
_TAGS = ["backend", "frontend", "ops", "billing", "urgent", "customer"]
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def _user_rows(rng: random.Random, users: int) -> list[tuple[Any, ...]]:
    rows = []
    for uid in range(1, users + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        created = _EPOCH + timedelta(minutes=rng.randrange(0, 60 * 24 * 180))
        plan = rng.choices(["free", "pro", "team"], weights=[6, 3, 1])[0]
        rows.append(
            (
                uid,
                f"{first}.{last}.{uid}@example.com",
                f"{first.title()} {last.title()}",
                plan,
                rng.random() > 0.05,
                created,
                created,
            )
        )
    return rows


def _task_rows(
    rng: random.Random, user_rows: list[tuple[Any, ...]], per_user: int
) -> list[tuple[Any, ...]]:
    rows = []
    tid = 0
    for user in user_rows:
        uid, created = user[0], user[5]
        for _ in range(per_user):
            tid += 1
            made = created + timedelta(hours=rng.randrange(1, 24 * 30))
            due = made + timedelta(days=rng.randrange(1, 60)) if rng.random() < 0.7 else None
            payload = {
                "tags": sorted(rng.sample(_TAGS, rng.randrange(0, 3))),
                "estimate_h": rng.randrange(1, 17),
            }
            rows.append(
                (
                    tid,
                    uid,
                    f"{rng.choice(_VERBS)} {rng.choice(_NOUNS)}",
                    rng.choices(["todo", "doing", "done", "archived"], weights=[4, 2, 3, 1])[0],
                    rng.randrange(1, 5),
                    due,
                    json.dumps(payload, sort_keys=True),
                    made,
                    made,
                )
            )
    return rows


def _copy(
    cur: psycopg.Cursor[Any], table: str, columns: list[str], rows: list[tuple[Any, ...]]
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def load_app_schema(
    dsn: str, users: int = 200, tasks_per_user: int = 5, seed: int = 2024
) -> dict[str, int]:
    """(Re)create the sample SaaS schema (users, tasks) in dsn and fill it deterministically.

    Existing ``users``/``tasks`` tables are dropped first. The same arguments
    always produce the same rows (ids, emails, timestamps, payloads), so tests
    can compare data before and after an operation (see app_table_checksums).
    Returns the row counts per table.
    """
    rng = random.Random(seed)
    user_rows = _user_rows(rng, users)
    task_rows = _task_rows(rng, user_rows, tasks_per_user)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn, conn.cursor() as cur:
            cur.execute(APP_SCHEMA)
            _copy(
                cur,
                "users",
                ["id", "email", "name", "plan", "is_active", "created_at", "updated_at"],
                user_rows,
            )
            _copy(
                cur,
                "tasks",
                ["id", "user_id", "title", "status", "priority", "due_at", "payload",
                 "created_at", "updated_at"],
                task_rows,
            )  # fmt: skip
            cur.execute("SELECT setval('users_id_seq', greatest((SELECT max(id) FROM users), 1))")
            cur.execute("SELECT setval('tasks_id_seq', greatest((SELECT max(id) FROM tasks), 1))")
            cur.execute("ANALYZE users; ANALYZE tasks")
    except psycopg.Error as exc:
        raise LabError(f"loading the sample app schema failed: {exc}") from exc
    return {"users": len(user_rows), "tasks": len(task_rows)}
