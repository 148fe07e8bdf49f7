"""pg_backup and pg_backup_info run for real by ansible-playbook: the lab's PostgreSQL,
the S3 server (moto), file:// storage in tmp_path.

Each test writes a small ad hoc playbook into its tmp dir (the modules' tasks, each
registered with ignore_errors, then one task saving every result as JSON) and runs
``.venv/bin/ansible-playbook -i localhost, -c local`` from the project root with the
project's ansible.cfg.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsbook.lab import PostgresCluster
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env, wait_for
from tests.integration.stats_helper import STATS_FILE_ENV, read_results, results_task, stats_env
from tests.lab import DEFAULT_PG_SETTINGS, S3_CREDENTIALS, MotoS3Server
from tests.loaders import load_module_utils
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BUCKET = "opsbook-test"


ob = load_module_utils("opsbook_backup")
storage_utils = load_module_utils("opsbook_storage")


# ----------------------------------------------------------------- running modules


@dataclass
class PlayRun:
    rc: int
    stdout: str
    stderr: str
    results: list[dict[str, Any]]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class ModuleRunner:
    """Run module tasks in an ad hoc playbook; every task's registered result comes back."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.count = 0

    def write(self, tasks: list[dict[str, Any]]) -> tuple[Path, Path]:
        self.count += 1
        results = self.tmp_path / f"results-{self.count}.json"
        play_tasks = []
        for i, task in enumerate(tasks):
            play_tasks.append(
                {"name": f"step {i}", **task, "register": f"r{i}", "ignore_errors": True}
            )
        names = ", ".join(f"r{i}" for i in range(len(tasks)))
        play_tasks.append(results_task(f"[{names}]"))
        playbook = self.tmp_path / f"play-{self.count}.yml"
        plays = [
            {
                "name": "pg_backup test",
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": play_tasks,
            }
        ]
        playbook.write_text(json.dumps(plays, indent=1))
        return playbook, results

    def argv(self, playbook: Path, check: bool) -> list[str]:
        argv = [
            str(VENV_BIN / "ansible-playbook"),
            str(playbook),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={VENV_BIN / 'python'}",
        ]
        return [*argv, "--check"] if check else argv

    def env(self, results: Path) -> dict[str, str]:
        """The project's environment, with the stats callback writing results."""
        stats, _ = stats_env(self.tmp_path)  # the callback; its file: results
        return ansible_env(self.tmp_path / "oplog.jsonl", {**stats, STATS_FILE_ENV: str(results)})

    def start(self, tasks: list[dict[str, Any]]) -> tuple[subprocess.Popen[str], Path]:
        playbook, results = self.write(tasks)
        proc = subprocess.Popen(
            self.argv(playbook, False),
            cwd=PROJECT_ROOT,
            env=self.env(results),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return proc, results

    def collect(self, proc: subprocess.Popen[str], results: Path, timeout: float) -> PlayRun:
        stdout, stderr = proc.communicate(timeout=timeout)
        data = read_results(results) if results.exists() else []
        return PlayRun(proc.returncode, stdout, stderr, data)

    def __call__(
        self, tasks: list[dict[str, Any]], check: bool = False, timeout: float = 300
    ) -> PlayRun:
        playbook, results = self.write(tasks)
        proc = subprocess.run(
            self.argv(playbook, check),
            cwd=PROJECT_ROOT,
            env=self.env(results),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert results.exists(), f"playbook did not finish:\n{proc.stdout}\n{proc.stderr}"
        return PlayRun(proc.returncode, proc.stdout, proc.stderr, read_results(results))


@pytest.fixture
def run_tasks(tmp_path: Path) -> ModuleRunner:
    return ModuleRunner(tmp_path)


def backup_task(dsn: str, storage_url: str, **options: Any) -> dict[str, Any]:
    """A pg_backup task; unverified unless verify=True is given (the tests of pg_backup_info's
    verify and retention start from unverified backups)."""
    args = {"dsn": dsn, "storage_url": storage_url, "verify": False, **options}
    return {"opsbook.runbooks.pg_backup": args}


def info_task(storage_url: str, **options: Any) -> dict[str, Any]:
    return {"opsbook.runbooks.pg_backup_info": {"storage_url": storage_url, **options}}


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert not result.get("failed"), result.get("msg")
    return result


def failed(result: dict[str, Any]) -> dict[str, Any]:
    assert result.get("failed"), result
    return result


# ----------------------------------------------------------------- helpers


def live_counts(dsn: str, keys: list[str]) -> dict[str, int]:
    from psycopg import sql

    counts = {}
    with psycopg.connect(dsn) as conn:
        for key in keys:
            schema, name = ob.split_table_key(key)
            query = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, name))
            counts[key] = conn.execute(query).fetchone()[0]
    return counts


def decompress(data: bytes) -> bytes:
    return subprocess.run(
        ["/usr/bin/zstd", "-dc"], input=data, capture_output=True, check=True
    ).stdout


def dumped_table_data(dump: bytes) -> set[str]:
    """``"schema name"`` of every TABLE DATA entry of a custom-format dump (pg_restore -l)."""
    listing = subprocess.run(
        [str(PG_BIN / "pg_restore"), "--list"], input=dump, capture_output=True, check=True
    ).stdout.decode()
    entries = set()
    for line in listing.splitlines():
        if " TABLE DATA " in line:
            rest = line.split(" TABLE DATA ", 1)[1]
            entries.add(rest.rsplit(" ", 1)[0])  # drop the owner
    return entries


def as_listing(keys: list[str]) -> set[str]:
    return {" ".join(ob.split_table_key(key)) for key in keys}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_objects(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def s3_keys(s3: MotoS3Server, prefix: str) -> list[str]:
    resp = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def multipart_uploads(s3: MotoS3Server, prefix: str) -> list[dict[str, Any]]:
    return s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])


def assert_no_secret(run: PlayRun, password: str) -> None:
    assert password not in run.output
    assert password not in json.dumps(run.results)


# ----------------------------------------------------------------- round trips


def test_backup_to_file_matches_the_database(
    pg: PostgresCluster, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    url = f"file://{store}"
    dsn = pg.dsn_for("app")
    run = run_tasks(
        [
            backup_task(
                dsn,
                url,
                globals=True,
                env="test",
                reason="integration",
                labels={"ticket": "OPS-1", "n": 7},
            ),
            info_task(url),
            info_task(url, state="select"),
        ]
    )
    backup, listing, selected = (ok(r) for r in run.results)
    assert backup["changed"] is True
    manifest = backup["manifest"]
    assert ob.validate_manifest(manifest) == []
    bid = backup["backup_id"]
    assert ob.parse_backup_id(bid)[0] == "app"
    assert manifest["env"] == "test" and manifest["reason"] == "integration"
    assert manifest["labels"] == {"ticket": "OPS-1", "n": "7"}
    assert manifest["server_version_num"] // 10000 == 15

    # exact counts of every dumped table, and exactly the tables pg_dump dumped
    assert manifest["table_counts"] == live_counts(dsn, ["public.tasks", "public.users"])
    assert manifest["table_counts"]["public.users"] == 200
    data = (store / bid / ob.DATA_OBJECT).read_bytes()
    assert len(data) == manifest["bytes"] == backup["bytes"]
    assert sha(data) == manifest["sha256"] == backup["sha256"]
    dump = decompress(data)
    assert len(dump) == manifest["uncompressed_bytes"]
    assert dumped_table_data(dump) == as_listing(list(manifest["table_counts"]))
    roles = decompress((store / bid / ob.GLOBALS_OBJECT).read_bytes())
    assert b"CREATE ROLE opsbook" in roles
    assert (
        sha((store / bid / ob.GLOBALS_OBJECT).read_bytes())
        == (manifest["objects"]["globals"]["sha256"])
    )
    # the manifest is the last object, and what the module returned
    stored = json.loads((store / bid / ob.MANIFEST_OBJECT).read_text())
    assert stored == manifest
    times = {p.name: p.stat().st_mtime_ns for p in (store / bid).iterdir()}
    assert times[ob.MANIFEST_OBJECT] >= max(times.values())
    assert file_objects(store) == sorted(
        f"{bid}/{name}" for name in (ob.DATA_OBJECT, ob.GLOBALS_OBJECT, ob.MANIFEST_OBJECT)
    )

    assert listing["count"] == 1 and listing["orphans_count"] == 0
    assert listing["backups"][0]["backup_id"] == bid
    assert listing["backups"][0]["verified"] is False
    assert selected["backup"]["backup_id"] == bid
    assert backup["throughput_mb_s"] >= 0 and backup["duration_s"] > 0
    assert_no_secret(run, pg.password)


def test_backup_to_s3_with_server_side_encryption(
    pg: PostgresCluster, s3: MotoS3Server, run_tasks: ModuleRunner
) -> None:
    prefix = f"sse-{time.time_ns()}"
    url = f"s3://{BUCKET}/{prefix}"
    kms_key = "arn:aws:kms:us-east-1:123456789012:key/0f2a-test"
    common = {"s3_endpoint_url": s3.endpoint_url}
    run = run_tasks(
        [
            backup_task(pg.dsn_for("app"), url, sse="AES256", **common),
            backup_task(pg.dsn_for("app"), url, sse="aws:kms", kms_key_id=kms_key, **common),
            backup_task(pg.dsn_for("app"), url, **common),
            info_task(url, **common),
        ]
    )
    aes, kms, plain, listing = (ok(r) for r in run.results)
    client = s3.client()
    expected = {
        aes["backup_id"]: ("AES256", None),
        kms["backup_id"]: ("aws:kms", kms_key),
        plain["backup_id"]: (None, None),
    }
    for result in (aes, kms, plain):
        bid = result["backup_id"]
        sse, key_id = expected[bid]
        assert result["manifest"]["encryption"] == sse
        for name in (ob.DATA_OBJECT, ob.MANIFEST_OBJECT):
            head = client.head_object(Bucket=BUCKET, Key=f"{prefix}/{bid}/{name}")
            assert head.get("ServerSideEncryption") == sse, (bid, name)
            assert head.get("SSEKMSKeyId") == key_id
        body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{bid}/{ob.DATA_OBJECT}")
        data = body["Body"].read()
        assert sha(data) == result["sha256"] and len(data) == result["bytes"]
        assert dumped_table_data(decompress(data)) == {"public users", "public tasks"}
    # newest first: by start time (three quick backups can share an id's second)
    newest_first = [plain["backup_id"], kms["backup_id"], aes["backup_id"]]
    assert [b["backup_id"] for b in listing["backups"]] == newest_first
    assert multipart_uploads(s3, prefix) == []
    assert_no_secret(run, pg.password)


def test_large_backup_to_s3_uses_multipart_and_verifies(
    big_cluster: PostgresCluster, s3: MotoS3Server, run_tasks: ModuleRunner
) -> None:
    prefix = f"multipart-{time.time_ns()}"
    url = f"s3://{BUCKET}/{prefix}"
    common = {"s3_endpoint_url": s3.endpoint_url}
    run = run_tasks(
        [
            backup_task(
                big_cluster.dsn_for("big"),
                url,
                part_size_mb=5,
                upload_concurrency=2,
                compression_level=1,
                sse="AES256",
                **common,
            ),
            info_task(url, state="verify", **common),
        ]
    )
    backup, verify = (ok(r) for r in run.results)
    assert backup["bytes"] > 10 * 1024 * 1024  # several parts
    assert backup["manifest"]["table_counts"] == {"public.noise": BIG_ROWS}
    assert verify["verification"]["ok"] is True
    head = s3.client().head_object(
        Bucket=BUCKET, Key=f"{prefix}/{backup['backup_id']}/{ob.DATA_OBJECT}"
    )
    assert head["ServerSideEncryption"] == "AES256"
    assert "-" in head["ETag"]  # a multipart object
    assert multipart_uploads(s3, prefix) == []


def test_check_mode_writes_nothing(
    pg: PostgresCluster, s3: MotoS3Server, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    store = tmp_path / "never"
    prefix = f"check-{time.time_ns()}"
    run = run_tasks(
        [
            backup_task(pg.dsn_for("app"), f"file://{store}", globals=True),
            backup_task(
                pg.dsn_for("app"),
                f"s3://{BUCKET}/{prefix}",
                s3_endpoint_url=s3.endpoint_url,
                sse="AES256",
            ),
        ],
        check=True,
    )
    for result in run.results:
        ok(result)
        assert result["changed"] is True  # it would take a backup
        assert "manifest" not in result
        assert result["tables"] == ["public.tasks", "public.users"]
        assert result["estimated_bytes"] > 0 and result["database_size_bytes"] > 0
        bid = result["backup_id"]
        assert result["keys"]["manifest"] == f"{bid}/manifest.json"
        assert result["msg"].startswith("would back up app")
    assert run.results[0]["keys"]["globals"] == f"{run.results[0]['backup_id']}/globals.sql.zst"
    assert file_objects(store) == []
    assert s3_keys(s3, prefix) == [] and multipart_uploads(s3, prefix) == []


FILTER_SCHEMA = """
CREATE TABLE public.a (id int);
CREATE TABLE public.b (id int);
CREATE SCHEMA audit;
CREATE TABLE audit.log (id int);
CREATE SCHEMA "Mixed Case";
CREATE TABLE "Mixed Case"."T.x" (id int);
CREATE TABLE public.parent (id int);
CREATE TABLE public.child () INHERITS (public.parent);
CREATE TABLE public.measures (at date, v int) PARTITION BY RANGE (at);
CREATE TABLE public.measures_2024 PARTITION OF public.measures
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE VIEW public.v AS SELECT * FROM public.a;
CREATE MATERIALIZED VIEW public.mv AS SELECT * FROM public.a;
INSERT INTO public.a SELECT generate_series(1, 11);
INSERT INTO public.b SELECT generate_series(1, 7);
INSERT INTO audit.log SELECT generate_series(1, 5);
INSERT INTO "Mixed Case"."T.x" SELECT generate_series(1, 3);
INSERT INTO public.parent SELECT generate_series(1, 4);
INSERT INTO public.child SELECT generate_series(1, 6);
INSERT INTO public.measures SELECT '2024-03-01', generate_series(1, 9);
"""


# plain tables whose data pg_dump dumps by default (not the view, matview, partitioned parent)
ALL_FILTER_TABLES = {
    "public.a",
    "public.b",
    "audit.log",
    '"Mixed Case"."T.x"',
    "public.parent",
    "public.child",
    "public.measures_2024",
}
INFO_TABLES = {
    f"information_schema.{name}"
    for name in ("sql_features", "sql_implementation_info", "sql_parts", "sql_sizing")
}


@pytest.fixture(scope="module")
def filter_db(pg: PostgresCluster) -> Iterator[str]:
    """A database with schemas, odd names, inheritance, partitions, views."""
    name = "backup_filters"
    pg.drop_database(name)
    dsn = pg.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FILTER_SCHEMA)
    yield dsn
    pg.drop_database(name)


def test_filters_count_exactly_the_tables_pg_dump_dumps(
    filter_db: str, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    url = f"file://{store}"
    variants: list[tuple[dict[str, Any], set[str]]] = [
        ({}, ALL_FILTER_TABLES),
        ({"schemas": ["audit"]}, {"audit.log"}),
        ({"schemas": ['"Mixed Case"', "AUDIT"]}, {'"Mixed Case"."T.x"', "audit.log"}),
        (
            {"exclude_schemas": ["audit", "?ixed*"], "exclude_tables": ["b", "public.measures*"]},
            {"public.a", "public.parent", "public.child"},
        ),
        (
            {"tables": ["a", '"Mixed Case".*'], "schemas": ["audit"]},
            {"public.a", '"Mixed Case"."T.x"'},
        ),
        (
            {"tables": ["public.*"], "exclude_tables": ["?", "*child"]},
            {"public.parent", "public.measures_2024"},
        ),
        # unquoted letters are lower-cased, as pg_dump does: "Mixed*" excludes nothing; a
        # schema pattern may pull in information_schema, and pg_dump then dumps its tables
        ({"schemas": ["*i*"], "exclude_schemas": ["Mixed*"]}, ALL_FILTER_TABLES | INFO_TABLES),
        ({"schema_only": True}, set()),
    ]
    run = run_tasks([backup_task(filter_db, url, **options) for options, _ in variants])
    for (options, expected), result in zip(variants, run.results, strict=True):
        ok(result)
        counts = result["manifest"]["table_counts"]
        assert set(counts) == expected, options
        assert counts == live_counts(filter_db, list(counts)), options
        dump = decompress((store / result["keys"]["data"]).read_bytes())
        assert dumped_table_data(dump) == as_listing(list(counts)), options
    assert run.results[0]["manifest"]["table_counts"]["public.parent"] == 4  # ONLY the parent


def test_pg_dump_error_fails_clearly_and_leaves_nothing(
    pg: PostgresCluster, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    url = f"file://{store}"
    run = run_tasks(
        [
            # globals are stored first: the failed dump must take them away again
            backup_task(pg.dsn_for("app"), url, schemas=["no_such_schema"], globals=True),
            info_task(url),
        ]
    )
    result = failed(run.results[0])
    assert "pg_dump failed (exit status 1)" in result["msg"]
    assert "no matching schemas were found" in result["msg"]
    assert "no backup was written" in result["msg"]
    assert file_objects(store) == []
    assert ok(run.results[1])["count"] == 0
    assert_no_secret(run, pg.password)


def test_existing_backup_id_is_never_overwritten(
    pg: PostgresCluster, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'backups'}"
    run = run_tasks(
        [
            backup_task(pg.dsn_for("app"), url, backup_id="fixed-id-1"),
            backup_task(pg.dsn_for("app"), url, backup_id="fixed-id-1"),
        ]
    )
    first = ok(run.results[0])
    assert first["backup_id"] == "fixed-id-1"
    assert "already exists" in failed(run.results[1])["msg"]
    stored = json.loads((tmp_path / "backups" / "fixed-id-1" / "manifest.json").read_text())
    assert stored == first["manifest"]


def test_unreachable_database_and_bad_storage_fail_before_writing(
    pg: PostgresCluster, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    bad_dsn = pg.dsn_for("app").replace(f":{pg.port}/", ":1/")
    run = run_tasks(
        [
            backup_task(bad_dsn, f"file://{tmp_path / 'backups'}"),
            backup_task(pg.dsn_for("app"), f"file://{blocker}/sub"),
        ]
    )
    assert "cannot connect" in failed(run.results[0])["msg"]
    assert "storage" in failed(run.results[1])["msg"]
    assert file_objects(tmp_path / "backups") == []
    assert_no_secret(run, pg.password)


# ----------------------------------------------------------------- Postgres dies mid-dump

BIG_ROWS = 2_000_000


@pytest.fixture(scope="module")
def big_cluster(lab_dir: Path) -> Iterator[PostgresCluster]:
    """A SEPARATE cluster (the fault test kills it) with ~220 MB of dump, half incompressible.

    pgbench's rows are blank-padded and compress ~100x, so even a large pgbench dump
    stays smaller than one S3 part; md5 text keeps the compressed stream large enough
    for a multipart upload to be in flight when the server dies.
    """
    cluster = PostgresCluster(lab_dir / "pg-backup-fault", settings=DEFAULT_PG_SETTINGS)
    try:
        cluster.start()
        cluster.create_database("big")
        cluster.execute(
            "CREATE TABLE noise AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b,"
            f" md5((g * 13)::text) AS c FROM generate_series(1, {BIG_ROWS}) g",
            dbname="big",
        )
        yield cluster
    finally:
        cluster.destroy()




def _processes() -> dict[str, str]:
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def leftover_children(port: int, before: dict[str, str]) -> list[str]:
    """pg_dump of this cluster, or a backup's zstd started since ``before``, still alive."""
    return [
        f"{pid}: {cmd}"
        for pid, cmd in _processes().items()
        if ("pg_dump" in cmd and f"port={port}" in cmd)
        or (pid not in before and cmd.startswith("/usr/bin/zstd -q -c -1"))
    ]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_postgres_killed_mid_dump_leaves_no_backup(
    backend: str,
    big_cluster: PostgresCluster,
    s3: MotoS3Server,
    run_tasks: ModuleRunner,
    tmp_path: Path,
) -> None:
    big_cluster.start()  # the previous parameter killed it
    store = tmp_path / "backups"
    prefix = f"killed-{time.time_ns()}"
    if backend == "file":
        url, extra = f"file://{store}", {}

        def dumping() -> bool:  # the data object is being written
            return any(p.stat().st_size > 4 * 1024 * 1024 for p in store.rglob("*.tmp-*"))
    else:
        url = f"s3://{BUCKET}/{prefix}"
        extra = {"s3_endpoint_url": s3.endpoint_url, "part_size_mb": 5, "upload_concurrency": 1}

        def dumping() -> bool:  # a multipart upload is in flight
            return bool(multipart_uploads(s3, prefix))

    before = _processes()
    proc, results = run_tasks.start(
        [
            backup_task(big_cluster.dsn_for("big"), url, compression_level=1, **extra),
            info_task(url, **({"s3_endpoint_url": s3.endpoint_url} if backend == "s3" else {})),
        ]
    )
    try:
        wait_for(dumping, 60, "the dump to be under way")
        big_cluster.kill()
        run = run_tasks.collect(proc, results, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = failed(run.results[0])
    assert "pg_dump failed" in result["msg"], result["msg"]
    assert "no backup was written" in result["msg"]
    listing = ok(run.results[1])
    assert listing["count"] == 0 and listing["orphans_count"] == 0
    if backend == "file":
        assert file_objects(store) == []  # no object, no temporary file
    else:
        assert s3_keys(s3, prefix) == []
        assert multipart_uploads(s3, prefix) == []
    assert leftover_children(big_cluster.port, before) == []
    assert_no_secret(run, big_cluster.password)


# ----------------------------------------------------------------- retention and verify


def test_retention_keeps_what_it_must_in_a_real_catalog(
    pg: PostgresCluster, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    store = tmp_path / "backups"
    url = f"file://{store}"
    run = run_tasks(
        [
            {**backup_task(pg.dsn_for("app"), url), "loop": [1, 2, 3, 4]},
            info_task(url, state="retention", keep_last=1),  # nothing verified yet
            info_task(url, state="verify", backup_id="{{ r0.results[1].backup_id }}"),
            {**info_task(url, state="retention", keep_last=1), "check_mode": True},
            info_task(url, state="retention", keep_last=1),
            info_task(url),
        ]
    )
    backups = [ok(r)["backup_id"] for r in ok(run.results[0])["results"]]
    b1, b2, b3, b4 = backups
    unverified = ok(run.results[1])
    assert unverified["deleted"] == [] and unverified["changed"] is False
    assert "no verified backup" in " ".join(unverified["plan"]["warnings"])
    assert "no verified backup" in run.output  # issued as a task warning too
    assert ok(run.results[2])["verification"]["ok"] is True
    dry = ok(run.results[3])
    assert dry["would_delete"] == [b1] and dry["deleted"] == []
    keep = {row["backup_id"]: row["reasons"] for row in dry["plan"]["keep"]}
    assert keep == {
        b4: ["last 1 of 1"],
        b3: ["newer than the newest verified backup"],
        b2: ["newest verified backup"],
    }
    real = ok(run.results[4])
    assert real["deleted"] == [b1] and real["changed"] is True
    assert [b["backup_id"] for b in ok(run.results[5])["backups"]] == [b4, b3, b2]
    assert not (store / b1).exists()

    run = run_tasks(
        [
            info_task(url, state="verify"),  # the newest: b4
            info_task(url, state="retention", keep_last=1),
            info_task(url),
        ]
    )
    assert ok(run.results[0])["backup"]["backup_id"] == b4
    assert ok(run.results[1])["deleted"] == [b2, b3]  # oldest first
    final = ok(run.results[2])
    assert [b["backup_id"] for b in final["backups"]] == [b4]
    assert final["backups"][0]["verified"] is True
    assert sorted(p.name for p in store.iterdir()) == [b4]


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_verify_detects_a_corrupted_object(
    backend: str, pg: PostgresCluster, s3: MotoS3Server, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    prefix = f"corrupt-{time.time_ns()}"
    url = f"file://{tmp_path / 'backups'}" if backend == "file" else f"s3://{BUCKET}/{prefix}"
    extra = {"s3_endpoint_url": s3.endpoint_url} if backend == "s3" else {}
    backup = ok(run_tasks([backup_task(pg.dsn_for("app"), url, **extra)]).results[0])
    key = backup["keys"]["data"]

    # flip one byte in the middle: same size, other content
    if backend == "file":
        path = tmp_path / "backups" / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        client = s3.client()
        data = bytearray(client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{key}", Body=bytes(data))

    run = run_tasks(
        [
            info_task(url, state="verify", backup_id=backup["backup_id"], **extra),
            info_task(url, **extra),
            info_task(url, state="select", **extra),
        ]
    )
    verify = failed(run.results[0])
    assert "FAILED" in verify["msg"] and "sha256" in verify["msg"]
    assert verify["verification"]["ok"] is False and verify["verification"]["recorded"] is True
    assert verify["verification"]["objects"]["data"]["sha256"] != backup["sha256"]
    listed = ok(run.results[1])["backups"][0]
    assert listed["verification_failed"] is True and listed["verified"] is False
    assert "no backup" in failed(run.results[2])["msg"]  # a known-bad backup is never picked


def _parent_of_pg_dump(port: int) -> int | None:
    for pid, cmd in _processes().items():
        if cmd.startswith("/usr/lib/postgresql") and "pg_dump" in cmd and f"port={port}" in cmd:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return int(stat.rsplit(")", 1)[1].split()[1])
    return None


def test_sigterm_mid_upload_aborts_it_and_reaps_the_children(
    big_cluster: PostgresCluster, s3: MotoS3Server, run_tasks: ModuleRunner
) -> None:
    big_cluster.start()
    prefix = f"sigterm-{time.time_ns()}"
    url = f"s3://{BUCKET}/{prefix}"
    extra = {"s3_endpoint_url": s3.endpoint_url, "part_size_mb": 5, "upload_concurrency": 1}
    before = _processes()
    proc, results = run_tasks.start(
        [
            backup_task(big_cluster.dsn_for("big"), url, compression_level=1, **extra),
            info_task(url, s3_endpoint_url=s3.endpoint_url),
        ]
    )
    try:
        wait_for(lambda: bool(multipart_uploads(s3, prefix)), 60, "a multipart upload")
        module_pid = _parent_of_pg_dump(big_cluster.port)
        assert module_pid is not None
        os.kill(module_pid, signal.SIGTERM)  # e.g. a job timeout stopping the module
        run = run_tasks.collect(proc, results, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = failed(run.results[0])
    assert "interrupted by SIGTERM" in result["msg"]
    assert "no backup was written" in result["msg"]
    assert ok(run.results[1])["count"] == 0
    assert s3_keys(s3, prefix) == [] and multipart_uploads(s3, prefix) == []
    assert leftover_children(big_cluster.port, before) == []
    assert big_cluster.is_running()


def test_s3_killed_mid_upload_leaves_no_backup(
    big_cluster: PostgresCluster,
    s3: MotoS3Server,
    run_tasks: ModuleRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The S3 endpoint dies mid-upload: clear error, no manifest, nothing listed.

    It used to take 64 s one run in 4: the test proxy's kill() closed sockets its pump
    threads were blocked reading, which Linux keeps open until the read returns, so a
    module waiting for S3's answer to a part saw nothing and waited out boto3's 60 s read
    timeout. The proxy now shuts the sockets down first (tests/tcp_proxy.py).
    """
    big_cluster.start()
    prefix = f"s3-killed-{time.time_ns()}"
    url = f"s3://{BUCKET}/{prefix}"
    with TcpProxy(s3.host, s3.port) as proxy:
        proc, results = run_tasks.start(
            [
                backup_task(
                    big_cluster.dsn_for("big"), url, compression_level=1,
                    s3_endpoint_url=proxy.url, part_size_mb=5, upload_concurrency=1,
                ),
                info_task(url, s3_endpoint_url=s3.endpoint_url),  # straight to the server
            ]
        )  # fmt: skip
        try:
            # the upload is under way: started, and recorded as opsbook's (its marker)
            wait_for(
                lambda: bool(multipart_uploads(s3, prefix) and s3_keys(s3, prefix)),
                60,
                "the upload to be under way",
            )
            killed_at = time.monotonic()
            proxy.kill()
            run = run_tasks.collect(proc, results, timeout=120)
            failed_after = time.monotonic() - killed_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"\nS3 endpoint killed mid-upload: the module failed {failed_after:.1f} s later")
    result = failed(run.results[0])
    assert "no backup was written" in result["msg"], result["msg"]
    assert f"s3://{BUCKET}/{prefix}" in result["msg"], result["msg"]
    # A dead endpoint refuses connections: the part and the abort each fail after
    # botocore's 3 attempts (backoff up to 1 s, then 2 s), never after a read timeout.
    assert failed_after < 15, f"the module took {failed_after:.1f} s to give up"
    # Seen through the real server: no backup can be listed...
    listing = ok(run.results[1])
    assert listing["count"] == 0 and listing["orphans_count"] == 0
    # ...and the abort could not reach the dead endpoint either: the message says which
    # upload is left, and no object is there but that upload's marker (the record that
    # lets the next run find it).
    uploads = multipart_uploads(s3, prefix)
    assert uploads, "the dead endpoint cannot have aborted the upload"
    for upload in uploads:
        assert upload["UploadId"] in result["msg"], result["msg"]
    markers = s3_keys(s3, prefix)
    assert len(markers) == len(uploads)
    assert all(key.startswith(f"{prefix}/.opsbook-uploads/") for key in markers), markers
    # The next run (the storage API pg_backup uses) finds it and removes it, and nothing else.
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    storage = storage_utils.open_storage(url, endpoint_url=s3.endpoint_url)
    removed = storage.cleanup_incomplete(older_than=0)
    assert sorted(item.id for item in removed) == sorted(u["UploadId"] for u in uploads)
    assert multipart_uploads(s3, prefix) == [] and s3_keys(s3, prefix) == []
    assert_no_secret(run, big_cluster.password)


def test_the_module_process_path_backs_up_the_same_way(
    pg: PostgresCluster, run_tasks: ModuleRunner, tmp_path: Path
) -> None:
    """On the controller's local connection the action plugin runs pg_backup's code in the
    task's worker; a task with `environment` (or on another connection) gets an ordinary
    pipelined module process (AnsiballZ, main()). Both back up the same way. Which path ran
    shows with an interpreter that has no psycopg (the system's): only a module process
    uses it, and fails saying what is missing."""
    url = f"file://{tmp_path / 'backups'}"
    task = backup_task(pg.dsn_for("app"), url, verify=True, retention=True, keep_last=5)
    process = {**task, "environment": {"OPSBOOK_TEST": "module process"}}
    system_python = {"vars": {"ansible_python_interpreter": "/usr/bin/python3"}}
    playbook, results = run_tasks.write(
        [process, {**process, **system_python}, {**task, **system_python}, info_task(url)]
    )
    plays = json.loads(playbook.read_text())
    plays[0]["vars"] = {"ansible_python_interpreter": str(VENV_BIN / "python")}
    playbook.write_text(json.dumps(plays))
    argv = [a for a in run_tasks.argv(playbook, False) if "ansible_python_interpreter" not in a]
    proc = subprocess.run(argv[:-1], cwd=PROJECT_ROOT, env=run_tasks.env(results),
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert results.exists(), proc.stdout + proc.stderr
    module_process, refused, in_worker, listing = read_results(results)
    assert "psycopg" in failed(refused)["msg"]  # a module process, on the system's python
    for result in (ok(module_process), ok(in_worker)):  # the worker: the system's python unused
        assert result["verification"]["ok"] is True and result["verification"]["method"] == "reread"
        assert result["retention"]["deleted"] == [] and result["cleaned_up"] == []
        assert result["manifest"]["table_counts"] == module_process["manifest"]["table_counts"]
    assert ok(listing)["count"] == 2
    assert pg.password not in proc.stdout + proc.stderr
