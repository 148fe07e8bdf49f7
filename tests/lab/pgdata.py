"""Test data beyond the sample app schema: pgbench tables, and checksums to compare a
database's rows before and after an operation (backup, restore, a data fix)."""

from __future__ import annotations

import subprocess

import psycopg
from psycopg import sql

from opsbook.lab._proc import LabError
from opsbook.lab.postgres import PostgresCluster

__all__ = ["app_table_checksums", "load_pgbench"]


def app_table_checksums(dsn: str, tables: tuple[str, ...] = ("users", "tasks")) -> dict[str, str]:
    """'<rows>:<md5 of every row's text, in order>' per table, to compare data across operations.

    Rows are ordered by their text, so any table works (pgbench_history has no key).
    """
    result = {}
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        for table in tables:
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                "FROM {} AS t"
            ).format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
            assert row is not None
            result[table] = f"{row[0]}:{row[1]}"
    return result


def load_pgbench(cluster: PostgresCluster, dbname: str = "pgbench", scale: int = 1) -> str:
    """Create dbname if needed and initialise pgbench data at scale; return its DSN.

    Runs ``pgbench -i -s scale`` with the password in PGPASSWORD, never on argv.
    """
    cluster.create_database(dbname)
    args = [
        str(cluster.bindir / "pgbench"),
        "-i", "-q", "-s", str(scale), "-I", "dtGvp",
        "-h", cluster.host, "-p", str(cluster.port), "-U", cluster.superuser,
        dbname,
    ]  # fmt: skip
    result = subprocess.run(
        args, env=cluster.client_env(dbname), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise LabError(
            f"pgbench -i -s {scale} on {cluster.label}/{dbname} failed "
            f"(exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return cluster.dsn_for(dbname)
