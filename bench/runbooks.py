"""The database runbooks end to end, side by side with what a team would do instead.

What users run - ``ansible-playbook playbooks/backup.yml`` and ``playbooks/restore.yml`` with an
inventory of 4 app hosts (real sshd hosts), a PostgreSQL 15 database and moto's S3 server on
loopback - against, in the same run, on the same database and server:

  backup   pg_dump -Fc -Z0 | zstd -1 | boto3 upload_fileobj   (a plain stream, no checks)
  restore  download (boto3) + gunzip -c | psql + vacuumdb --analyze-only -j 2
           (the runbooks' manual restore, brought to the same end state: a restored database
           without statistics is not ready)

on two datasets: ``orders`` (1 M orders, 3 M order items: uuid, md5, jsonb, timestamps; a GIN
index on orders.attrs) and ``orders_nogin`` (the same without the GIN index). Every timed step
starts from a quiet server (CHECKPOINT, sync); each round runs the pair in alternating order,
and ratios are taken within a round (this machine is shared and noisy), then the median.

    .venv/bin/python bench/runbooks.py [--rounds 3] [--json out.json]

Targets (issue 10), each printed pass/miss with both numbers:
  restore.yml wall                     <= 1.1 x the manual restore (each dataset)
  backup.yml wall                      <= 1.5 x the plain stream
  pg_backup's own time (total_s)       <= 1.15 x the plain stream
  fixed cost (wall - the module's own) <= 1.5 s for backup.yml and restore.yml
The restored databases' row counts are compared with the source every time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
sys.path.insert(0, str(PROJECT_ROOT))

from bench.backup_restore import PG_SETTINGS, BenchError, bash, run

BUCKET = "opsbook-bench"
FIRST_ADDRESS = 81  # 127.0.10.81-84 (the deploy benchmark uses .61-.79)
APP_HOSTS = 4
DATASETS = ("orders", "orders_nogin")
PG_BIN = Path("/usr/lib/postgresql/15/bin")

TARGET_RESTORE_RATIO = 1.1
TARGET_BACKUP_RATIO = 1.5
TARGET_MODULE_RATIO = 1.15
TARGET_FIXED_S = 1.5

ORDERS_SQL = """
CREATE TABLE orders (
  id bigint PRIMARY KEY, uid uuid NOT NULL, customer text NOT NULL, status text NOT NULL,
  total_cents bigint NOT NULL, attrs jsonb NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE order_items (
  id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders(id), sku text NOT NULL,
  qty int NOT NULL, price_cents bigint NOT NULL, meta jsonb NOT NULL);
INSERT INTO orders
SELECT g, md5(g::text || 'u')::uuid, md5(g::text),
       (ARRAY['new','paid','shipped','done'])[1 + g % 4], (g::bigint * 7919) % 100000,
       jsonb_build_object('channel', (ARRAY['web','app','store'])[1 + g % 3],
                          'coupon', md5(g::text || 'c'), 'tags', jsonb_build_array(g % 17, g % 31)),
       timestamptz '2024-01-01' + (g || ' seconds')::interval
FROM generate_series(1, 1000000) g;
INSERT INTO order_items
SELECT g, 1 + (g - 1) / 3, 'SKU-' || substr(md5(g::text), 1, 8), 1 + g % 5,
       (g::bigint * 31) % 10000,
       jsonb_build_object('color', (ARRAY['red','green','blue'])[1 + g % 3], 'batch', g % 1000)
FROM generate_series(1, 3000000) g;
CREATE INDEX order_items_order_id ON order_items (order_id);
CREATE INDEX orders_created_at ON orders (created_at);
CREATE INDEX orders_attrs_gin ON orders USING gin (attrs);
VACUUM ANALYZE;
"""

STREAM_CHILD = r"""
import os, subprocess, sys, time
import boto3
endpoint, bucket, key, dsn, pg_dump = sys.argv[1:]
start = time.monotonic()
dump = subprocess.Popen([pg_dump, "-Fc", "-Z0", "-d", dsn], stdout=subprocess.PIPE)
zstd = subprocess.Popen(["zstd", "-1", "-q", "-c"], stdin=dump.stdout, stdout=subprocess.PIPE)
dump.stdout.close()
boto3.client("s3", endpoint_url=endpoint).upload_fileobj(zstd.stdout, bucket, key)
if zstd.wait() or dump.wait():
    sys.exit("the stream failed")
print(time.monotonic() - start)
"""

DOWNLOAD_CHILD = r"""
import sys
import boto3
endpoint, bucket, key, path = sys.argv[1:]
boto3.client("s3", endpoint_url=endpoint).download_file(bucket, key, path)
"""


@dataclass
class Round:
    """One dataset's figures of one round (seconds)."""

    dataset: str
    stream: float = 0.0
    backup_wall: float = 0.0
    backup_module: float = 0.0
    manual_restore: float = 0.0
    restore_wall: float = 0.0
    restore_module: float = 0.0
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        return {
            "restore/manual": self.restore_wall / self.manual_restore,
            "backup/stream": self.backup_wall / self.stream,
            "module/stream": self.backup_module / self.stream,
            "backup fixed s": self.backup_wall - self.backup_module,
            "restore fixed s": self.restore_wall - self.restore_module,
        }


class Bench:
    def __init__(self, base: Path, rounds: int) -> None:
        self.base = base
        self.rounds = rounds
        self.lab: Any = None
        self.env: dict[str, str] = {}
        self.oplog = base / "oplog.jsonl"
        self.results: list[Round] = []
        self.source_counts: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        from tests.lab import S3_CREDENTIALS, Lab

        self.log(f"starting the lab (PostgreSQL 15, moto S3, {APP_HOSTS} sshd app hosts)")
        self.lab = Lab(
            self.base / "lab",
            hosts=APP_HOSTS,
            first_address=FIRST_ADDRESS,
            pg_settings=PG_SETTINGS,
            bucket=BUCKET,
        )
        self.lab.start()
        self.env = {
            **os.environ,
            **S3_CREDENTIALS,
            "ANSIBLE_CONFIG": str(PROJECT_ROOT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "OPSBOOK_OPLOG": str(self.oplog),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        pg = self.lab.postgres
        self.log("loading the orders dataset (1 M orders, 3 M order items)")
        started = time.monotonic()
        pg.create_database("orders")
        with pg.connect("orders", autocommit=True) as conn:
            for statement in ORDERS_SQL.split(";"):
                if statement.strip():
                    conn.execute(statement)
        pg.execute("CREATE DATABASE orders_nogin TEMPLATE orders")
        pg.execute("DROP INDEX orders_attrs_gin", dbname="orders_nogin")
        for dataset in DATASETS:
            self.source_counts[dataset] = self.counts(dataset)
            size = pg.execute(f"SELECT pg_size_pretty(pg_database_size('{dataset}'))")[0][0]
            self.log(f"  {dataset}: {size}, rows {self.source_counts[dataset]}")
        self.log(f"  loaded in {time.monotonic() - started:.0f} s")
        for dataset in DATASETS:
            self.inventory(dataset)
            self.prepare_manual(dataset)

    def inventory(self, dataset: str) -> Path:
        from tests.lab import write_inventory

        directory = self.base / "inventories" / dataset
        if not directory.exists():
            write_inventory(
                directory,
                self.lab.app_hosts,
                None,
                database_url=self.lab.postgres.dsn_for(dataset),
                backup_storage_url=f"s3://{BUCKET}/{dataset}",
                s3_endpoint_url=self.lab.s3.endpoint_url,
                env="local",
            )
        return directory

    def prepare_manual(self, dataset: str) -> None:
        """The runbooks' backup artifact (pg_dump | gzip, uploaded): the manual restore's input."""
        path = self.base / f"{dataset}.sql.gz"
        dsn = self.lab.postgres.dsn_for(dataset)
        bash(f"{PG_BIN}/pg_dump '{dsn}' | gzip -1 > {path}", self.env, "pg_dump | gzip")
        upload = (
            "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1])"
            ".upload_file(sys.argv[2], sys.argv[3], sys.argv[4])"
        )
        run(
            [sys.executable, "-c", upload, self.lab.s3.endpoint_url, path, BUCKET,
             f"manual/{dataset}.sql.gz"],
            self.env,
        )  # fmt: skip
        path.unlink()

    # ------------------------------------------------------------------ steps

    def quiet(self) -> None:
        self.lab.postgres.execute("CHECKPOINT")
        os.sync()
        time.sleep(1.0)

    def stream(self, dataset: str) -> float:
        self.quiet()
        started = time.monotonic()
        run(
            [sys.executable, "-c", STREAM_CHILD, self.lab.s3.endpoint_url, BUCKET,
             f"stream/{dataset}.pgdump.zst", self.lab.postgres.dsn_for(dataset),
             PG_BIN / "pg_dump"],
            self.env,
            what="plain stream",
        )  # fmt: skip
        return time.monotonic() - started

    def playbook(self, name: str, dataset: str, extra: Mapping[str, Any]) -> tuple[float, dict]:
        """ansible-playbook playbooks/<name>.yml; (wall, the outputs it published)."""
        self.quiet()
        extra_file = self.base / "extra.json"
        extra_file.write_text(json.dumps(dict(extra)))
        before = self.oplog.read_text().count("\n") if self.oplog.exists() else 0
        started = time.monotonic()
        run(
            [VENV_BIN / "ansible-playbook", f"playbooks/{name}.yml", "-i",
             self.inventory(dataset), "-e", f"@{extra_file}"],
            self.env,
            cwd=PROJECT_ROOT,
            what=f"{name}.yml",
        )  # fmt: skip
        wall = time.monotonic() - started
        lines = self.oplog.read_text().splitlines()
        assert len(lines) > before, "the operation log has no line for the run"
        return wall, json.loads(lines[-1]).get("outputs") or {}

    def backup(self, dataset: str) -> tuple[float, float]:
        wall, outputs = self.playbook("backup", dataset, {"pg_backup_retention_enabled": False})
        backup = outputs["backup"]
        if backup.get("verified") is not True:
            raise BenchError(f"backup.yml did not verify its backup: {backup}")
        return wall, float(backup["total_s"])

    def manual_restore(self, dataset: str, target: str) -> float:
        pg = self.lab.postgres
        pg.drop_database(target)
        path = self.base / "download.sql.gz"
        self.quiet()
        started = time.monotonic()
        run([sys.executable, "-c", DOWNLOAD_CHILD, self.lab.s3.endpoint_url, BUCKET,
             f"manual/{dataset}.sql.gz", path], self.env, what="download")  # fmt: skip
        pg.execute(f'CREATE DATABASE "{target}"')
        dsn = pg.dsn_for(target)
        bash(f"gunzip -c {path} | psql -q -v ON_ERROR_STOP=1 -d '{dsn}' > /dev/null",
             self.env, "gunzip | psql")  # fmt: skip
        bash(f"{PG_BIN}/vacuumdb --analyze-only -j 2 -q -d '{dsn}'", self.env, "vacuumdb")
        wall = time.monotonic() - started
        path.unlink()
        self.check_counts(dataset, target, "manual restore")
        pg.drop_database(target)
        return wall

    def restore(self, dataset: str, target: str) -> tuple[float, float]:
        self.lab.postgres.drop_database(target)
        extra = {"restore_target_database": target, "restore_source_database": dataset}
        wall, outputs = self.playbook("restore", dataset, extra)
        restore = outputs["restore"]
        if not restore.get("restored"):
            raise BenchError(f"restore.yml did not restore: {restore.get('msg')}")
        self.check_counts(dataset, target, "restore.yml")
        self.lab.postgres.drop_database(target)
        return wall, float(restore["duration_s"])

    # ------------------------------------------------------------------ checks

    def counts(self, dbname: str) -> dict[str, int]:
        rows = self.lab.postgres.execute(
            "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM order_items)",
            dbname=dbname,
        )
        return {"orders": rows[0][0], "order_items": rows[0][1]}

    def check_counts(self, dataset: str, target: str, what: str) -> None:
        got, want = self.counts(target), self.source_counts[dataset]
        if got != want:
            raise BenchError(f"{what} of {dataset}: rows {got}, the source has {want}")

    # ------------------------------------------------------------------ the run

    def measure(self) -> None:
        for number in range(self.rounds):
            for dataset in DATASETS:
                r = Round(dataset)
                playbook_first = number % 2 == 1
                target = f"{dataset}_restored"
                if playbook_first:
                    r.backup_wall, r.backup_module = self.backup(dataset)
                    r.stream = self.stream(dataset)
                    r.restore_wall, r.restore_module = self.restore(dataset, target)
                    r.manual_restore = self.manual_restore(dataset, target)
                else:
                    r.stream = self.stream(dataset)
                    r.backup_wall, r.backup_module = self.backup(dataset)
                    r.manual_restore = self.manual_restore(dataset, target)
                    r.restore_wall, r.restore_module = self.restore(dataset, target)
                self.results.append(r)
                self.log(
                    f"round {number + 1} {dataset}: stream {r.stream:.2f} s, backup.yml "
                    f"{r.backup_wall:.2f} s (module {r.backup_module:.2f} s); manual restore "
                    f"{r.manual_restore:.2f} s, restore.yml {r.restore_wall:.2f} s (module "
                    f"{r.restore_module:.2f} s)"
                )

    def stop(self) -> None:
        if self.lab is not None:
            self.lab.stop()

    @staticmethod
    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ---------------------------------------------------------------------- report


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(results: Sequence[Round]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = [
        "| dataset | step | median wall s | all rounds s |",
        "|---|---|---:|---|",
    ]
    fields = [
        ("plain stream (pg_dump -Fc -Z0 | zstd -1 | upload_fileobj)", "stream"),
        ("backup.yml through ansible-playbook", "backup_wall"),
        ("  pg_backup's own time (total_s)", "backup_module"),
        ("manual restore (download + gunzip | psql + vacuumdb -j 2)", "manual_restore"),
        ("restore.yml through ansible-playbook (4 app hosts)", "restore_wall"),
        ("  pg_restore's own time (duration_s)", "restore_module"),
    ]
    for dataset in DATASETS:
        rows = [r for r in results if r.dataset == dataset]
        for label, name in fields:
            values = [getattr(r, name) for r in rows]
            lines.append(
                f"| {dataset} | {label} | {median(values):.2f} | "
                + " ".join(f"{v:.2f}" for v in values)
                + " |"
            )
    checks = []
    for dataset in DATASETS:
        rows = [r for r in results if r.dataset == dataset]

        def med(key: str, rows: list[Round] = rows) -> float:
            return median([r.ratios()[key] for r in rows])

        def pair(a: str, b: str, rows: list[Round] = rows) -> str:
            first = median([getattr(r, a) for r in rows])
            second = median([getattr(r, b) for r in rows])
            return f"{first:.2f} s vs {second:.2f} s"

        checks += [
            _check(f"restore.yml <= {TARGET_RESTORE_RATIO}x manual ({dataset})",
                   med("restore/manual"), TARGET_RESTORE_RATIO,
                   pair("restore_wall", "manual_restore")),
            _check(f"restore.yml fixed cost <= {TARGET_FIXED_S} s ({dataset})",
                   med("restore fixed s"), TARGET_FIXED_S,
                   "wall - pg_restore's own time", ratio=False),
            _check(f"backup.yml <= {TARGET_BACKUP_RATIO}x plain stream ({dataset})",
                   med("backup/stream"), TARGET_BACKUP_RATIO, pair("backup_wall", "stream")),
            _check(f"pg_backup's own time <= {TARGET_MODULE_RATIO}x plain stream ({dataset})",
                   med("module/stream"), TARGET_MODULE_RATIO, pair("backup_module", "stream")),
            _check(f"backup.yml fixed cost <= {TARGET_FIXED_S} s ({dataset})",
                   med("backup fixed s"), TARGET_FIXED_S,
                   "wall - pg_backup's own time", ratio=False),
        ]  # fmt: skip
    lines += ["", "| target | measured (median over rounds) | both numbers | verdict |",
              "|---|---:|---|---|"]  # fmt: skip
    for check in checks:
        measured = f"{check['measured']:.2f}{'x' if check['ratio'] else ' s'}"
        lines.append(
            f"| {check['target']} | {measured} | {check['detail']} | "
            f"{'pass' if check['pass'] else 'MISS'} |"
        )
    return lines, checks


def _check(target: str, measured: float, limit: float, detail: str, ratio: bool = True) -> dict:
    return {"target": target, "measured": measured, "limit": limit, "detail": detail,
            "ratio": ratio, "pass": measured <= limit}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the lab directory")
    args = parser.parse_args(argv)
    if shutil.which("zstd") is None or not (PG_BIN / "pg_dump").exists():
        parser.error("needs zstd and the PostgreSQL 15 client tools (bash scripts/setup.sh)")
    from opsbook.lab import make_lab_dir

    base = make_lab_dir(Path(tempfile.mkdtemp(prefix="opsbook-bench-runbooks-")))
    bench = Bench(base, args.rounds)
    try:
        bench.start()
        bench.measure()
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    lines, checks = report(bench.results)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(
            {"rounds": [r.__dict__ for r in bench.results], "targets": checks}, indent=2
        ))  # fmt: skip
    return 0 if all(c["pass"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
