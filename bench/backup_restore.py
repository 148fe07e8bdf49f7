"""Backup/restore benchmark: the runbooks' pipeline against opsbook's pg_backup and pg_restore.

One run, one database, one storage (moto's S3 server on loopback), every step measured the
same way: wall time, throughput (MB/s of the source database's pg_database_size, MB = 10^6
bytes) and peak memory (RSS summed over the step's whole process tree, sampled every 50 ms
from /proc by a thread; the database and S3 servers are not part of it).

    .venv/bin/python bench/backup_restore.py [--size-mb 500] [--keep] [--json out.json]

Steps, in this order, repeated --repeat times (the fastest repetition is reported):
  phys.dump       pg_dump -Fc -Z0 > /dev/null                  (physical limit: reading)
  a               pg_dump | gzip > file; boto3 upload_file     (the runbooks' backup)
  b               pg_backup through ansible-playbook           (opsbook's backup)
  diag.dump_zstd  pg_dump -Fc -Z0 | zstd > /dev/null           (diagnostic: b without storage)
  phys.upload     boto3 multipart upload of (b)'s object       (physical limit: storing)
  c               boto3 download_file; gunzip -c | psql        (the runbooks' restore)
  d               pg_restore through ansible-playbook, jobs=2 (and jobs=1)
Row counts, indexes and constraints are compared with the source after every restore.
Then: CPU by process, the server's slow statements, the limits of this machine, and the
targets of issue 3 (PASS/MISS). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
VENV_PYTHON = VENV_BIN / "python"
MB = 1_000_000
BUCKET = "opsbook-bench"
SOURCE_DB = "bench_source"
SAMPLE_INTERVAL_S = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
# /proc/<pid>/stat cuts the command name to 15 characters; Ansible's forks keep the name.
CONTROLLER_COMM = "ansible-playboo"
# pg_backup's documented defaults, used for the raw upload when no option is given.
MODULE_PART_SIZE_MB = 8
MODULE_UPLOAD_CONCURRENCY = 4

# Same server settings for every step. Durability stays on (fsync, synchronous_commit,
# full_page_writes: the defaults) - a restore is measured as it would run in production.
PG_SETTINGS: dict[str, str | int | bool] = {
    "max_connections": 20,
    "shared_buffers": "256MB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    "fsync": True,
    "synchronous_commit": True,
    "full_page_writes": True,
    # Statements of 1 s or more are logged with their duration: the report lists them.
    "log_min_duration_statement": 1000,
}

# Share of --size-mb each table gets (pg_table_size: heap + TOAST).
TABLE_SHARES = {"accounts": 0.04, "events": 0.60, "documents": 0.36}

TARGET_BACKUP_SPEEDUP = 4.0
TARGET_PHYSICAL_RATIO = 1.3
TARGET_PEAK_BYTES = 200 * MB
TARGET_RESTORE_SPEEDUP = 2.0


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


# ============================================================== pure helpers: /proc


@dataclass(frozen=True)
class ProcStat:
    """What the sampler needs of one process: its parent, name and resident memory."""

    pid: int
    ppid: int
    comm: str
    rss_bytes: int
    cpu_ticks: int = 0  # utime + stime of the process itself
    child_ticks: int = 0  # cutime + cstime: its children that it has waited for


def parse_proc_stat(text: str, page_size: int) -> ProcStat:
    """Parse /proc/<pid>/stat (the command name may hold spaces and parentheses)."""
    head, _, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    f = tail.split()
    # f[0] is field 3 (state): ppid is field 4, utime..cstime 14-17, rss (pages) 24.
    return ProcStat(
        int(pid_text),
        int(f[1]),
        comm,
        int(f[21]) * page_size,
        int(f[11]) + int(f[12]),
        int(f[13]) + int(f[14]),
    )


def tree_pids(parents: Mapping[int, int], root: int, exclude: Collection[int] = ()) -> set[int]:
    """Descendants of root (root itself not included); an excluded pid hides its subtree."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid in exclude or pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    return found


@dataclass(frozen=True)
class TreeUsage:
    """RSS summed over a process tree; `module` leaves out the Ansible controller's processes.

    by_comm: RSS per process name (all processes of the tree), to explain a peak;
    cpu: {pid: (name, CPU ticks so far)} of the tree's processes.
    """

    total: int
    module: int
    processes: int
    by_comm: Mapping[str, int] = field(default_factory=dict)
    cpu: Mapping[int, tuple[str, int]] = field(default_factory=dict)


def tree_usage(
    procs: Mapping[int, ProcStat], root: int, exclude: Collection[int] = ()
) -> TreeUsage:
    """RSS of root's descendants, all of them and those that are not ansible-playbook."""
    pids = tree_pids({p.pid: p.ppid for p in procs.values()}, root, exclude)
    by_comm: dict[str, int] = {}
    for pid in pids:
        by_comm[procs[pid].comm] = by_comm.get(procs[pid].comm, 0) + procs[pid].rss_bytes
    total = sum(by_comm.values())
    module = sum(rss for comm, rss in by_comm.items() if not comm.startswith(CONTROLLER_COMM))
    cpu = {pid: (procs[pid].comm, procs[pid].cpu_ticks) for pid in pids}
    return TreeUsage(total, module, len(pids), by_comm, cpu)


def breakdown(by_comm: Mapping[str, int], skip_controller: bool = False) -> str:
    """'python 61, zstd 30, pg_dump 9' (MB, largest first)."""
    items = sorted(by_comm.items(), key=lambda item: -item[1])
    return ", ".join(
        f"{comm} {rss / MB:.0f}"
        for comm, rss in items
        if not (skip_controller and comm.startswith(CONTROLLER_COMM))
    )


def subtree_ticks(procs: Mapping[int, ProcStat], root: int | None) -> int:
    """CPU ticks of root and its live descendants, with the children they have reaped."""
    if root is None or root not in procs:
        return 0
    pids = tree_pids({p.pid: p.ppid for p in procs.values()}, root) | {root}
    return sum(procs[pid].cpu_ticks + procs[pid].child_ticks for pid in pids)


def parse_busy_seconds(proc_stat: str, hz: int) -> float:
    """Busy CPU seconds of the whole machine, all CPUs, from /proc/stat's first line."""
    fields = [int(v) for v in proc_stat.split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / hz


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds at one instant, split by who used them."""

    busy: float  # the whole machine
    steps: float  # the benchmark's children (the measured commands), once reaped
    bench: float  # the benchmark process itself (sampler thread, its own queries)
    postgres: float  # the postmaster and every backend
    s3: float  # the moto server


def cpu_split(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """CPU seconds used between two snapshots; `other` is what the rest of the machine used."""
    used = {
        name: max(0.0, getattr(end, name) - getattr(start, name))
        for name in ("steps", "bench", "postgres", "s3")
    }
    used["other"] = max(0.0, end.busy - start.busy - sum(used.values()))
    return used


def take_cpu_snapshot(
    procs: Mapping[int, ProcStat],
    busy: float,
    bench_pid: int,
    postmaster: int | None,
    s3_pid: int | None,
    hz: int,
) -> CpuSnapshot:
    """Split the CPU used so far between the benchmark's commands, itself and the servers."""
    me = procs.get(bench_pid)
    parents = {p.pid: p.ppid for p in procs.values()}
    live = tree_pids(parents, bench_pid, exclude={s3_pid} if s3_pid else ())
    steps = sum(procs[pid].cpu_ticks + procs[pid].child_ticks for pid in live)
    return CpuSnapshot(
        busy=busy,
        steps=((me.child_ticks if me else 0) + steps) / hz,
        bench=(me.cpu_ticks if me else 0) / hz,
        postgres=subtree_ticks(procs, postmaster) / hz,
        s3=subtree_ticks(procs, s3_pid) / hz,
    )


def cpu_by_comm(cpu: Mapping[int, tuple[str, int]], hz: int) -> dict[str, float]:
    """{name: CPU seconds} summed over the processes seen ({pid: (name, ticks)})."""
    out: dict[str, float] = {}
    for comm, ticks in cpu.values():
        out[comm] = out.get(comm, 0.0) + ticks / hz
    return out


def format_seconds_by(values: Mapping[str, float], minimum: float = 0.05) -> str:
    """'zstd 3.1, pg_dump 2.0' (largest first, tiny ones left out)."""
    items = sorted(values.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {value:.1f}" for name, value in items if value >= minimum)


_DURATION_RE = re.compile(r"duration: ([0-9.]+) ms\s+(?:statement|execute [^:]*): (.*)")


def parse_slow_statements(log_text: str) -> list[tuple[float, str]]:
    """(seconds, statement) of the server log's `duration:` lines, slowest first.

    A statement logged on several lines (continuation lines start with a tab) is joined;
    whitespace is collapsed.
    """
    found: list[tuple[float, str]] = []
    continues = False  # is the previous line part of a duration entry?
    for line in log_text.splitlines():
        if line.startswith("\t"):
            if continues:
                seconds, text = found[-1]
                found[-1] = (seconds, f"{text} {line}")
            continue
        match = _DURATION_RE.search(line)
        continues = match is not None
        if match:
            found.append((float(match.group(1)) / 1000, match.group(2)))
    cleaned = [(seconds, " ".join(text.split())) for seconds, text in found]
    return sorted(cleaned, key=lambda item: -item[0])


def read_processes(proc_dir: str = "/proc") -> dict[int, ProcStat]:
    """A snapshot of every process's stat line (processes that vanish meanwhile are skipped)."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    procs: dict[int, ProcStat] = {}
    for name in os.listdir(proc_dir):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc_dir}/{name}/stat") as handle:
                procs[int(name)] = parse_proc_stat(handle.read(), page_size)
        except (OSError, ValueError, IndexError):
            continue
    return procs


# ====================================================================== the sampler


@dataclass
class Window:
    """Peaks seen while a step ran, and when module-side processes were first/last seen."""

    peak_total: int = 0
    peak_module: int = 0
    samples: int = 0
    module_first: float | None = None
    module_last: float | None = None
    at_peak_total: Mapping[str, int] = field(default_factory=dict)
    at_peak_module: Mapping[str, int] = field(default_factory=dict)
    cpu_seen: dict[int, tuple[str, int]] = field(default_factory=dict)

    def add(self, usage: TreeUsage, now: float) -> None:
        self.samples += 1
        self.cpu_seen.update(usage.cpu)
        if usage.total > self.peak_total:
            self.peak_total, self.at_peak_total = usage.total, usage.by_comm
        if usage.module > self.peak_module:
            self.peak_module, self.at_peak_module = usage.module, usage.by_comm
        if usage.module > 0:
            if self.module_first is None:
                self.module_first = now
            self.module_last = now

    @property
    def module_alive_s(self) -> float | None:
        """Seconds between the first and last sample that saw a module-side process."""
        if self.module_first is None or self.module_last is None:
            return None
        return self.module_last - self.module_first


class MemorySampler:
    """A thread summing the RSS of root's process tree every `interval` seconds.

    root itself (the benchmark) is not counted: every measured step runs in child
    processes. Pids given to exclude() (the servers) are left out with their subtrees.
    """

    def __init__(self, root: int | None = None, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.root = os.getpid() if root is None else root
        self.interval = interval
        self._exclude: set[int] = set()
        self._windows: list[Window] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def exclude(self, *pids: int | None) -> None:
        with self._lock:
            self._exclude.update(pid for pid in pids if pid)

    def sample(self) -> TreeUsage:
        """Take one sample and feed it to every open window."""
        with self._lock:
            exclude = set(self._exclude)
        usage = tree_usage(read_processes(), self.root, exclude)
        now = time.monotonic()
        with self._lock:
            for window in self._windows:
                window.add(usage, now)
        return usage

    def start(self) -> MemorySampler:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    @contextlib.contextmanager
    def window(self, *also: Window) -> Iterator[Window]:
        """Collect the samples taken while the block runs into a new Window (and into `also`:
        windows that accumulate over several blocks)."""
        window = Window()
        windows = [window, *also]
        with self._lock:
            self._windows.extend(windows)
        try:
            yield window
        finally:
            with self._lock:
                for item in windows:
                    self._windows.remove(item)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.sample()


# ========================================================== pure helpers: reporting


def mb(nbytes: float | None) -> float | None:
    return None if nbytes is None else nbytes / MB


def throughput(nbytes: int, seconds: float | None) -> float | None:
    """MB (10^6 bytes) per second, None when the time is unknown or zero."""
    if not seconds or seconds <= 0:
        return None
    return nbytes / MB / seconds


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int]
) -> str:
    """A plain-text table; columns whose index is in right are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table in Markdown (for the README)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class TargetCheck:
    """One target of issue 3 and whether this run met it."""

    name: str
    target: str
    measured: str
    passed: bool
    detail: str = ""

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"


@dataclass(frozen=True)
class Figures:
    """The numbers the targets are judged on (seconds, bytes)."""

    runbook_backup_s: float
    backup_playbook_s: float
    backup_module_s: float | None
    physical_dump_s: float
    physical_upload_s: float
    backup_peak_module: int
    backup_peak_tree: int
    runbook_restore_s: float
    restore_playbook_s: float
    restore_module_s: float | None
    counts_ok: bool


def evaluate_targets(f: Figures) -> list[TargetCheck]:
    """Judge the targets. Times are judged end to end (ansible-playbook wall time);
    the module-only figure is shown beside it. Memory is judged on the module's
    processes (module, pg_dump, zstd); the whole tree with Ansible is shown beside it."""
    speedup = ratio(f.runbook_backup_s, f.backup_playbook_s)
    speedup_module = ratio(f.runbook_backup_s, f.backup_module_s)
    limit = max(f.physical_dump_s, f.physical_upload_s)
    physical = ratio(f.backup_playbook_s, limit)
    physical_module = ratio(f.backup_module_s, limit)
    restore = ratio(f.runbook_restore_s, f.restore_playbook_s)
    restore_module = ratio(f.runbook_restore_s, f.restore_module_s)
    return [
        TargetCheck(
            "backup speed-up: (a) / (b)",
            f">= {TARGET_BACKUP_SPEEDUP:g}x",
            fmt_ratio(speedup),
            speedup is not None and speedup >= TARGET_BACKUP_SPEEDUP,
            f"module only: {fmt_ratio(speedup_module)}",
        ),
        TargetCheck(
            "backup vs physical limit: (b) / max(raw dump, raw upload)",
            f"<= {TARGET_PHYSICAL_RATIO:g}x",
            fmt_ratio(physical),
            physical is not None and physical <= TARGET_PHYSICAL_RATIO,
            f"module only: {fmt_ratio(physical_module)}; limit {limit:.1f} s",
        ),
        TargetCheck(
            "backup peak memory (module, pg_dump, zstd)",
            f"< {TARGET_PEAK_BYTES // MB} MB",
            f"{fmt_num(mb(f.backup_peak_module), 0)} MB",
            f.backup_peak_module < TARGET_PEAK_BYTES,
            f"with ansible-playbook: {fmt_num(mb(f.backup_peak_tree), 0)} MB",
        ),
        TargetCheck(
            "restore speed-up: (c) / (d, jobs=2)",
            f">= {TARGET_RESTORE_SPEEDUP:g}x",
            fmt_ratio(restore),
            restore is not None and restore >= TARGET_RESTORE_SPEEDUP,
            f"module only: {fmt_ratio(restore_module)}",
        ),
        TargetCheck(
            "restored row counts equal the source (every table)",
            "equal",
            "equal" if f.counts_ok else "DIFFERENT",
            f.counts_ok,
        ),
    ]


_COPY_IN_RE = re.compile(r"^COPY (\S+) .*FROM stdin")
_POST_DATA_RE = re.compile(
    r"^(?:CREATE (?:UNIQUE )?INDEX \S+ ON (?:ONLY )?(\S+)|ALTER TABLE (?:ONLY )?(\S+))"
)


def restore_critical_path(statements: Sequence[tuple[float, str]]) -> tuple[float, list[str]]:
    """The longest chain a restore cannot parallelize: COPY of one table, then the slowest
    index or constraint built on that table (built after its data, one statement each).

    From the (seconds, statement) of a restore; statements not logged (under 1 s) are
    left out, so the result is a lower bound for any number of pg_restore jobs.
    """
    copies: dict[str, float] = {}
    builds: dict[str, tuple[float, str]] = {}
    for seconds, text in statements:
        if match := _COPY_IN_RE.match(text):
            copies[match.group(1)] = copies.get(match.group(1), 0.0) + seconds
        elif match := _POST_DATA_RE.match(text):
            table = match.group(1) or match.group(2)
            if seconds > builds.get(table, (0.0, ""))[0]:
                builds[table] = (seconds, text)
    best: tuple[float, list[str]] = (0.0, [])
    for table in set(copies) | set(builds):
        copy_s = copies.get(table, 0.0)
        build_s, build = builds.get(table, (0.0, ""))
        parts = [f"COPY {table} {copy_s:.1f} s"] if copy_s else []
        parts += [f"{build[:60]} {build_s:.1f} s"] if build else []
        if copy_s + build_s > best[0]:
            best = (copy_s + build_s, parts)
    return best


def cpu_floor(cpu_seconds: Sequence[float], cores: int) -> float:
    """Wall time no schedule can beat: the CPU seconds of the work over the cores."""
    return sum(cpu_seconds) / max(1, cores)


def compare_counts(source: Mapping[str, int], restored: Mapping[str, int]) -> list[str]:
    """Differences between two {table: rows} maps, as readable lines (empty: identical)."""
    problems = []
    for table in sorted(set(source) | set(restored)):
        want, got = source.get(table), restored.get(table)
        if want != got:
            problems.append(f"{table}: source {want}, restored {got}")
    return problems


# ====================================================================== processes


@dataclass
class Ran:
    """A finished child process."""

    returncode: int
    stdout: str
    stderr: str


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def run(
    args: Sequence[str | Path],
    env: Mapping[str, str],
    cwd: Path | None = None,
    what: str | None = None,
    check: bool = True,
) -> Ran:
    """Run a command in its own session (so it and all its children can be killed at once),
    outputs captured through files (no pipe deadlocks); raise BenchError on failure."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [str(a) for a in args],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            returncode = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        out.seek(0)
        err.seek(0)
        ran = Ran(
            returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )
    if check and ran.returncode != 0:
        tail = "\n".join((ran.stderr or ran.stdout).strip().splitlines()[-20:])
        raise BenchError(f"{what or args[0]} failed (exit {ran.returncode}):\n{tail}")
    return ran


def bash(script: str, env: Mapping[str, str], what: str) -> Ran:
    """A shell pipeline with pipefail (a failing pg_dump fails the step)."""
    return run(["bash", "-o", "pipefail", "-c", script], env, what=what)


# Runs in a child process: a boto3 transfer, timed inside the child as well.
TRANSFER_CHILD = r"""
import json, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
op, endpoint, bucket, key, path, part_mib, concurrency = sys.argv[1:]
if part_mib == "default":
    config = TransferConfig()
else:
    size = int(part_mib) * 1024 * 1024
    config = TransferConfig(multipart_threshold=size, multipart_chunksize=size,
                            max_concurrency=int(concurrency))
client = boto3.client("s3", endpoint_url=endpoint)
start = time.monotonic()
if op == "upload":
    client.upload_file(path, bucket, key, Config=config)
else:
    client.download_file(bucket, key, path, Config=config)
print(json.dumps({"seconds": round(time.monotonic() - start, 3)}))
"""


# ======================================================================== dataset

_COMMON_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an had they you were their one all we can her has there been if more "
    "when will would who so no server backup database restore deploy release health check "
    "latency error request user account event payload region cluster replica primary index "
    "table query storage bucket object version config network disk memory cpu load queue "
    "worker job task schedule retry timeout alert incident runbook operator window "
    "maintenance rollback canary traffic metric log"
)
_COMMON_WORDS = _COMMON_TEXT.split()
_SYLLABLES = (
    "kariontesalomuvepidagunobertilasomekatirupenolivadosumerakitobalenuvisoparemituladoke"
    "narivosupetalimodenarukosivatemobunelira"
)
# One word: a frequent word 45% of the time, else two random syllable runs (2-4 letters
# each) - text that compresses like prose (about 2.5x with gzip), not constant padding.
_WORD_SQL = (
    "CASE WHEN random() < 0.45 THEN (ARRAY["
    + ",".join(f"'{w}'" for w in _COMMON_WORDS)
    + f"])[1 + floor(random() * {len(_COMMON_WORDS)})::int] "
    + f"ELSE substr('{_SYLLABLES}', 1 + floor(random() * {len(_SYLLABLES) - 4})::int, "
    + "2 + floor(random() * 2)::int) "
    + f"|| substr('{_SYLLABLES}', 1 + floor(random() * {len(_SYLLABLES) - 4})::int, "
    + "2 + floor(random() * 3)::int) END"
)

SQL_TABLES = [
    """CREATE TABLE accounts (
        id uuid NOT NULL DEFAULT gen_random_uuid(),
        email text NOT NULL,
        name text NOT NULL,
        plan text NOT NULL,
        created_at timestamptz NOT NULL)""",
    """CREATE TABLE events (
        id bigserial NOT NULL,
        account_id uuid NOT NULL,
        kind text NOT NULL,
        digest text NOT NULL,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL)""",
    """CREATE TABLE documents (
        id bigserial NOT NULL,
        account_id uuid NOT NULL,
        title text NOT NULL,
        body text NOT NULL,
        created_at timestamptz NOT NULL)""",
    "CREATE UNLOGGED TABLE bench_account_ids (n integer NOT NULL, id uuid NOT NULL)",
]

SQL_ACCOUNTS = """
INSERT INTO accounts (email, name, plan, created_at)
SELECT substr(md5(random()::text), 1, 6 + mod(g, 8)) || '.' || g || '@'
         || (ARRAY['example.com', 'mail.test', 'corp.example', 'shop.test'])[1 + mod(g, 4)],
       initcap(substr(md5(random()::text), 1, 4 + mod(g, 6))) || ' '
         || initcap(substr(md5(random()::text), 1, 5 + mod(g, 7))),
       (ARRAY['free', 'free', 'free', 'pro', 'pro', 'team', 'enterprise'])
         [1 + floor(random() * 7)::int],
       timestamptz '2019-01-01' + random() * interval '1800 days'
FROM generate_series(1, %(rows)s::int) AS g
"""

SQL_ACCOUNT_IDS = [
    "INSERT INTO bench_account_ids SELECT row_number() OVER (), id FROM accounts",
    "CREATE UNIQUE INDEX ON bench_account_ids (n)",
    "ANALYZE bench_account_ids",
]

# r: one row per new row, with a random account (k) and random sizes; the correlated
# subqueries (they reference r) are evaluated again for every row.
_RANDOM_ROWS = """
FROM (SELECT g, 1 + floor(random() * %(accounts)s::int)::int AS k,
             floor(random() * 4)::int AS ntags, floor(random() * 3)::int AS nitems,
             50 + floor(random() * 250)::int AS nwords, 3 + floor(random() * 6)::int AS ntitle
      FROM generate_series(1, %(rows)s::int) AS g) AS r
JOIN bench_account_ids AS a ON a.n = r.k
"""

SQL_EVENTS = (
    """
INSERT INTO events (account_id, kind, digest, payload, created_at)
SELECT a.id,
  (ARRAY['login', 'login', 'page_view', 'page_view', 'page_view', 'purchase', 'refund',
         'api_call', 'api_call', 'logout'])[1 + floor(random() * 10)::int],
  encode(sha256(decode(md5(random()::text), 'hex')), 'hex'),
  jsonb_build_object(
    'ip', concat_ws('.', floor(random() * 256)::int, floor(random() * 256)::int,
                    floor(random() * 256)::int, floor(random() * 256)::int),
    'user_agent', (ARRAY['Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0',
                         'Mozilla/5.0 (Macintosh; Intel Mac OS X 13_4) AppleWebKit/605.1.15',
                         'curl/8.4.0', 'okhttp/4.11.0', 'python-requests/2.31.0'])
                  [1 + floor(random() * 5)::int],
    'session', gen_random_uuid(),
    'amount', round((random() * 5000)::numeric, 2),
    'currency', (ARRAY['USD', 'EUR', 'GBP', 'JPY'])[1 + floor(random() * 4)::int],
    'latency_ms', floor(random() * 2000)::int,
    'geo', jsonb_build_object('lat', round((random() * 180 - 90)::numeric, 5),
                              'lon', round((random() * 360 - 180)::numeric, 5)),
    'tags', (SELECT jsonb_agg((ARRAY['mobile', 'web', 'beta', 'eu', 'us', 'apac', 'vip',
                                     'trial', 'bot', 'internal'])[1 + floor(random() * 10)::int])
             FROM generate_series(0, r.ntags)),
    'items', (SELECT jsonb_agg(jsonb_build_object(
                       'sku', substr(md5(random()::text), 1, 10),
                       'qty', 1 + floor(random() * 5)::int,
                       'price', round((random() * 200)::numeric, 2)))
              FROM generate_series(0, r.nitems))),
  timestamptz '2022-01-01' + random() * interval '1000 days'
"""
    + _RANDOM_ROWS
)

SQL_DOCUMENTS = (
    f"""
INSERT INTO documents (account_id, title, body, created_at)
SELECT a.id,
  initcap((SELECT string_agg({_WORD_SQL}, ' ') FROM generate_series(1, r.ntitle))),
  (SELECT string_agg({_WORD_SQL}, ' ') FROM generate_series(1, r.nwords)),
  timestamptz '2020-01-01' + random() * interval '1500 days'
"""
    + _RANDOM_ROWS
)

# Keys, foreign keys and indexes after the load (as a restore builds them).
SQL_CONSTRAINTS = [
    "DROP TABLE bench_account_ids",
    "ALTER TABLE accounts ADD PRIMARY KEY (id)",
    "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email)",
    "ALTER TABLE events ADD PRIMARY KEY (id)",
    "ALTER TABLE documents ADD PRIMARY KEY (id)",
    "ALTER TABLE events ADD CONSTRAINT events_account_id_fkey"
    " FOREIGN KEY (account_id) REFERENCES accounts (id)",
    "ALTER TABLE documents ADD CONSTRAINT documents_account_id_fkey"
    " FOREIGN KEY (account_id) REFERENCES accounts (id)",
    "CREATE INDEX accounts_created_at_idx ON accounts (created_at)",
    "CREATE INDEX events_account_id_idx ON events (account_id)",
    "CREATE INDEX events_created_at_idx ON events (created_at)",
    "CREATE INDEX events_payload_idx ON events USING gin (payload jsonb_path_ops)",
    "CREATE INDEX documents_account_id_idx ON documents (account_id)",
    "CREATE INDEX documents_created_at_idx ON documents (created_at)",
    "VACUUM (FREEZE, ANALYZE)",
    "CHECKPOINT",
]

ACCOUNT_ROW_BYTES = 120  # heap bytes per accounts row, to size the table up front
FIRST_BATCH_ROWS = 5_000
MAX_BATCH_BYTES = 40 * MB


def next_batch_rows(target_bytes: int, current_bytes: int, rows: int) -> int:
    """Rows for the next batch: from the bytes per row so far, capped to MAX_BATCH_BYTES."""
    if rows == 0 or current_bytes == 0:
        return FIRST_BATCH_ROWS
    per_row = current_bytes / rows
    missing = min(target_bytes - current_bytes, MAX_BATCH_BYTES)
    return max(100, int(missing / per_row) + 1)


# ============================================================= the benchmark itself


@dataclass
class Step:
    """One measured step."""

    key: str
    label: str
    seconds: float
    peak_tree: int | None = None
    peak_module: int | None = None
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Options:
    size_mb: int
    keep: bool
    json_path: Path | None
    jobs: int
    also_jobs1: bool
    module_backup: dict[str, int]
    workdir: Path | None
    gin: bool = True
    repeat: int = 3


def _lab() -> Any:
    """The lab's parts (opsbook.lab's Postgres, tests.lab's S3 server), imported late so that
    the pure helpers above import without them."""
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))  # run as `python bench/backup_restore.py`
    import opsbook.lab
    import tests.lab

    return types.SimpleNamespace(
        **{name: getattr(lab, name) for lab in (opsbook.lab, tests.lab) for name in lab.__all__}
    )


class Benchmark:
    """One run: a Postgres cluster, a moto server, the dataset, the steps, the report."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self._workdir: Path | None = None  # made by start(), removed by stop()
        self.sampler = MemorySampler()
        self.cluster: Any = None
        self.s3: Any = None
        self.steps: dict[str, Step] = {}  # the fastest repetition of each step
        self.runs: dict[str, list[float]] = {}  # seconds of every repetition
        self.memory: dict[str, Window] = {}  # memory over every repetition
        self.info: dict[str, Any] = {}
        self.verification: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self.succeeded = False
        self.cancel = threading.Event()  # stops the dataset's loader threads

    # ------------------------------------------------------------------ lifecycle

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise BenchError("the work directory is made by start()")
        return self._workdir

    def make_workdir(self) -> Path:
        """A new temporary directory, or --workdir when it is absent or empty."""
        wanted = self.opts.workdir
        if wanted is None:
            return Path(tempfile.mkdtemp(prefix="opsbook-bench-")).absolute()
        wanted = wanted.absolute()
        if wanted.exists() and any(wanted.iterdir()):
            raise BenchError(f"--workdir {wanted} is not empty (it is removed at the end)")
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted

    def start(self) -> None:
        lab = _lab()
        self._workdir = self.make_workdir()
        lab.make_lab_dir(self.workdir)
        self.log(f"work directory {self.workdir}")
        self.cluster = lab.PostgresCluster(self.workdir / "pg", settings=PG_SETTINGS)
        self.cluster.start()
        self.s3 = lab.MotoS3Server(log_file=self.workdir / "moto.log").start()
        self.s3.create_bucket(BUCKET)
        self.sampler.exclude(self.s3.pid, self.cluster.postmaster_pid)
        self.sampler.start()
        self.log(f"{self.cluster.label} and {self.s3.label} started")

    def stop(self) -> None:
        self.sampler.stop()
        if self.opts.keep and self.succeeded:
            self.log_kept()
            return
        for server in (self.s3, self.cluster):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self._workdir is None:
            return
        if self.opts.keep:
            self.log(f"kept {self._workdir} (servers stopped: the run did not complete)")
        else:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def log_kept(self) -> None:
        self.log(f"--keep: kept {self.workdir} and the servers:")
        self.log(f"  Postgres {self.cluster.dsn_for(SOURCE_DB)}")
        self.log(
            f"    stop: {self.cluster.bindir}/pg_ctl -D {self.cluster.data_dir} stop "
            f"(as user {self.cluster.user.name})"
        )
        self.log(f"  S3 {self.s3.endpoint_url} bucket {BUCKET}; stop: kill {self.s3.pid}")

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", flush=True)

    # ------------------------------------------------------------- environments

    def s3_env(self) -> dict[str, str]:
        lab = _lab()
        return {**os.environ, **lab.S3_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}

    def pg_env(self, dbname: str = SOURCE_DB) -> dict[str, str]:
        env = self.s3_env()
        env.update(self.cluster.client_env(dbname))
        return env

    def tool(self, name: str) -> str:
        return str(self.cluster.bindir / name)

    # ------------------------------------------------------------------ measuring

    def settle(self) -> None:
        """Before every timed step: flush Postgres (CHECKPOINT) and the page cache's dirty pages."""
        self.cluster.execute("CHECKPOINT")
        os.sync()

    def cpu_snapshot(self) -> CpuSnapshot:
        with open("/proc/stat") as handle:
            busy = parse_busy_seconds(handle.read(), CLK_TCK)
        return take_cpu_snapshot(
            read_processes(),
            busy,
            os.getpid(),
            self.cluster.postmaster_pid,
            self.s3.pid,
            CLK_TCK,
        )

    def server_log_size(self) -> int:
        try:
            return int(self.cluster.log_file.stat().st_size)
        except OSError:
            return 0

    def server_log_since(self, offset: int) -> str:
        try:
            with open(self.cluster.log_file, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    @contextlib.contextmanager
    def measure(self, key: str, label: str) -> Iterator[Step]:
        """Time the block; collect its memory peaks, CPU split and slow statements into a Step."""
        self.settle()
        self.log(f"{key}: {label} ...")
        step = Step(key, label, 0.0)
        log_offset = self.server_log_size()
        cpu_start = self.cpu_snapshot()
        memory = self.memory.setdefault(key, Window())
        with self.sampler.window(memory) as window:
            start = time.monotonic()
            yield step
            step.seconds = time.monotonic() - start
        step.data["cpu"] = cpu_split(cpu_start, self.cpu_snapshot())
        step.data["cpu_by_process"] = cpu_by_comm(window.cpu_seen, CLK_TCK)
        step.data["slow_statements"] = parse_slow_statements(self.server_log_since(log_offset))
        step.data["samples"] = window.samples
        step.data["module_alive_s"] = window.module_alive_s
        self.keep_fastest(step, memory)
        self.log(
            f"{key}: {step.seconds:.2f} s, peak {fmt_num(mb(window.peak_total), 0)} MB, "
            f"other CPU {step.data['cpu']['other']:.1f} s"
        )

    def keep_fastest(self, step: Step, memory: Window) -> None:
        """Report the fastest repetition of a step, with the highest memory of them all."""
        self.runs.setdefault(step.key, []).append(step.seconds)
        best = self.steps.get(step.key)
        if best is None or step.seconds < best.seconds:
            self.steps[step.key] = best = step
        best.peak_tree = memory.peak_total
        best.data["peak_module"] = memory.peak_module
        best.data["at_peak"] = breakdown(memory.at_peak_total)
        best.data["at_peak_module"] = breakdown(memory.at_peak_module, skip_controller=True)

    def add_derived(self, key: str, label: str, parts: Sequence[str], note: str = "") -> Step:
        """A step made of others: times summed, the highest peak."""
        steps = [self.steps[p] for p in parts]
        cpu: dict[str, float] = {}
        for part in steps:
            for name, value in part.data.get("cpu", {}).items():
                cpu[name] = cpu.get(name, 0.0) + value
        step = Step(
            key,
            label,
            sum(s.seconds for s in steps),
            max((s.peak_tree or 0) for s in steps),
            note=note,
            data={"cpu": cpu},
        )
        self.steps[key] = step
        return step

    # -------------------------------------------------------------------- dataset

    def generate_dataset(self) -> None:
        self.log(f"generating about {self.opts.size_mb} MB of table data ...")
        start = time.monotonic()
        accounts = self.create_accounts()
        self.load_in_parallel(accounts)
        self.build_constraints()
        self.info["dataset_seconds"] = round(time.monotonic() - start, 1)
        self.describe_dataset()

    def create_accounts(self) -> int:
        """The database, its tables and the accounts (the other tables refer to them)."""
        rows = max(1000, int(self.opts.size_mb * MB * TABLE_SHARES["accounts"] / ACCOUNT_ROW_BYTES))
        self.cluster.create_database(SOURCE_DB)
        with self.cluster.connect(SOURCE_DB) as conn:
            for statement in SQL_TABLES:
                conn.execute(statement)
            conn.execute("SELECT setseed(0.11)")
            conn.execute(SQL_ACCOUNTS, {"rows": rows})
            for statement in SQL_ACCOUNT_IDS:
                conn.execute(statement)
        return rows

    def load_in_parallel(self, accounts: int) -> None:
        """events and documents, one loader thread (and connection) each."""
        jobs = [("events", SQL_EVENTS, 0.22), ("documents", SQL_DOCUMENTS, 0.33)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = [
                pool.submit(self.fill_table, table, query, seed, accounts)
                for table, query, seed in jobs
            ]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                self.cancel.set()  # the other loader stops after its current batch
                raise

    def fill_table(self, table: str, query: str, seed: float, accounts: int) -> None:
        target = int(self.opts.size_mb * MB * TABLE_SHARES[table])
        rows = 0
        with self.cluster.connect(SOURCE_DB) as conn:
            conn.execute("SELECT setseed(%s)", (seed,))
            while (size := table_bytes(conn, table)) < target and not self.cancel.is_set():
                batch = next_batch_rows(target, size, rows)
                conn.execute(query, {"rows": batch, "accounts": accounts})
                rows += batch

    def build_constraints(self) -> None:
        self.log("adding keys, foreign keys and indexes; VACUUM (FREEZE, ANALYZE) ...")
        statements = [s for s in SQL_CONSTRAINTS if self.opts.gin or "USING gin" not in s]
        with self.cluster.connect(SOURCE_DB) as conn:
            conn.execute("SET maintenance_work_mem = '256MB'")
            for statement in statements:
                conn.execute(statement)

    def describe_dataset(self) -> None:
        with self.cluster.connect(SOURCE_DB) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            rows = conn.execute(
                "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1"
            ).fetchall()
            version = conn.execute("SHOW server_version").fetchone()[0]
        counts = table_counts(self.cluster, SOURCE_DB)
        self.info["database_bytes"] = int(size)
        self.info["server_version"] = version
        self.info["tables"] = {
            name: {"rows": counts[f"public.{name}"], "table_bytes": int(tb), "index_bytes": int(ib)}
            for name, tb, ib in rows
        }
        self.info["source_counts"] = counts
        self.info["source_objects"] = sorted(schema_objects(self.cluster, SOURCE_DB))
        self.log(
            f"dataset ready in {self.info['dataset_seconds']} s: pg_database_size "
            f"{size / MB:.0f} MB, table data {sum(int(r[1]) for r in rows) / MB:.0f} MB, "
            f"indexes {sum(int(r[2]) for r in rows) / MB:.0f} MB"
        )

    @property
    def db_bytes(self) -> int:
        return int(self.info["database_bytes"])

    # ------------------------------------------------------------- backup steps

    def physical_dump(self) -> None:
        with self.measure("phys.dump", "raw pg_dump -Fc -Z0 > /dev/null"):
            bash(
                f'{self.tool("pg_dump")} -Fc -Z0 "$PGDATABASE" > /dev/null',
                self.pg_env(),
                "pg_dump -Fc -Z0",
            )

    def runbook_backup(self) -> None:
        dump = self.workdir / "runbook" / f"{SOURCE_DB}.sql.gz"
        dump.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.pg_env(), "OUT": str(dump)}
        with self.measure("a.dump", "pg_dump | gzip > file (plain, gzip -6)"):
            bash(f'{self.tool("pg_dump")} "$PGDATABASE" | gzip > "$OUT"', env, "pg_dump | gzip")
        key = f"runbook/{dump.name}"
        with self.measure("a.upload", "boto3 upload_file (default TransferConfig)") as step:
            inner = self.transfer("upload", key, dump)
        step.note = f"in-process {inner:.1f} s"
        self.add_derived("a.total", "(a) runbook backup, end to end", ["a.dump", "a.upload"])
        self.info["runbook_backup"] = {"file": str(dump), "key": key, "bytes": dump.stat().st_size}

    def transfer(
        self,
        op: str,
        key: str,
        path: Path,
        part_mib: int | None = None,
        concurrency: int | None = None,
    ) -> float:
        """A boto3 upload/download in a child process; returns the child's own timing."""
        ran = run(
            [
                VENV_PYTHON,
                "-c",
                TRANSFER_CHILD,
                op,
                self.s3.endpoint_url,
                BUCKET,
                key,
                path,
                str(part_mib) if part_mib else "default",
                str(concurrency or 0),
            ],
            self.s3_env(),
            what=f"boto3 {op} {key}",
        )
        return float(json.loads(ran.stdout.strip().splitlines()[-1])["seconds"])

    def module_backup(self) -> None:
        args: dict[str, Any] = {
            "dsn": self.cluster.dsn_for(SOURCE_DB),
            "storage_url": f"s3://{BUCKET}/opsbook",
            "s3_endpoint_url": self.s3.endpoint_url,
            "env": "bench",
            "reason": "backup/restore benchmark",
            **self.opts.module_backup,
        }
        result = self.run_module("b", "pg_backup", args, "ansible-playbook pg_backup")
        if not result["_fastest"] and "module_backup" in self.info:
            self.info["module_backup"]["backup_id"] = result.get("backup_id")
            return
        self.info["module_backup"] = {
            k: result.get(k)
            for k in (
                "backup_id",
                "bytes",
                "uncompressed_bytes",
                "duration_s",
                "throughput_mb_s",
                "storage",
                "keys",
                "msg",
            )
        }
        manifest = result.get("manifest") or {}
        self.info["module_backup"]["compression"] = manifest.get("compression")
        self.info["module_backup"]["table_counts"] = manifest.get("table_counts")

    def diagnose_dump_compress(self) -> None:
        """Diagnostic: the module's pipeline without the storage (pg_dump | zstd > /dev/null)."""
        level = (self.info["module_backup"].get("compression") or {}).get("level") or 3
        label = f"diagnostic: pg_dump -Fc -Z0 | zstd -{level} > /dev/null"
        with self.measure("diag.dump_zstd", label):
            script = f'{self.tool("pg_dump")} -Fc -Z0 "$PGDATABASE" | zstd -q -{level} > /dev/null'
            bash(script, self.pg_env(), "pg_dump | zstd")

    def physical_upload(self) -> None:
        backup = self.info["module_backup"]
        local = self.workdir / "physical" / "data.pgdump.zst"
        local.parent.mkdir(parents=True, exist_ok=True)
        if not local.exists():
            self.log("downloading (b)'s object for the raw upload (not timed) ...")
            self.transfer("download", f"opsbook/{backup['keys']['data']}", local)
        part = self.opts.module_backup.get("part_size_mb", MODULE_PART_SIZE_MB)
        conc = self.opts.module_backup.get("upload_concurrency", MODULE_UPLOAD_CONCURRENCY)
        label = f"raw boto3 multipart upload of (b)'s bytes ({part} MiB parts x {conc})"
        with self.measure("phys.upload", label) as step:
            inner = self.transfer("upload", "physical/data.pgdump.zst", local, part, conc)
        step.note = f"in-process {inner:.1f} s; {local.stat().st_size / MB:.0f} MB object"

    # ------------------------------------------------------------ restore steps

    def runbook_restore(self) -> None:
        backup = self.info["runbook_backup"]
        local = self.workdir / "runbook-restore" / "dump.sql.gz"
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.measure("c.download", "boto3 download_file of (a)'s object") as step:
            inner = self.transfer("download", backup["key"], local)
        step.note = f"in-process {inner:.1f} s"
        env = {**self.pg_env("postgres"), "IN": str(local), "DB": "bench_restore_runbook"}
        psql = self.tool("psql")
        script = (
            f'{psql} -X -q -c "CREATE DATABASE $DB" && '
            f'gunzip -c "$IN" | {psql} -X -q -v ON_ERROR_STOP=1 -d "$DB" > /dev/null'
        )
        with self.measure("c.restore", "CREATE DATABASE; gunzip -c file | psql -v ON_ERROR_STOP=1"):
            bash(script, env, "gunzip | psql")
        self.add_derived("c.total", "(c) runbook restore, end to end", ["c.download", "c.restore"])
        self.verify("c", "bench_restore_runbook")

    def module_restore(self, jobs: int) -> None:
        target = f"bench_restore_j{jobs}"
        work = self.workdir / f"restore-work-j{jobs}"
        work.mkdir(parents=True, exist_ok=True)
        args = {
            "dsn": self.cluster.dsn,
            "storage_url": f"s3://{BUCKET}/opsbook",
            "s3_endpoint_url": self.s3.endpoint_url,
            "backup": self.info["module_backup"]["backup_id"],
            "target_database": target,
            "mode": "new",
            "env": "bench",
            "jobs": jobs,
            "work_dir": str(work),
        }
        key = f"d{jobs}"
        result = self.run_module(
            key, "pg_restore", args, f"ansible-playbook pg_restore jobs={jobs}"
        )
        timings = (
            "fetch_s",
            "verify_s",
            "decompress_s",
            "restore_s",
            "counts_s",
            "analyze_s",
            "swap_s",
        )
        if result["_fastest"]:
            self.info[f"module_restore_j{jobs}"] = {
                k: result.get(k) for k in ("duration_s", "table_counts_checked", "jobs", *timings)
            }
            self.steps[f"{key}.module"].note = ", ".join(
                f"{t[:-2]} {result[t]:.1f}" for t in timings if result.get(t) is not None
            )
        self.verify(key, target)

    # ----------------------------------------------------------- Ansible runs

    def ansible_env(self, run_dir: Path) -> dict[str, str]:
        env = self.s3_env()
        env.update(
            ANSIBLE_CONFIG=str(PROJECT_ROOT / "ansible.cfg"),
            OPSBOOK_OPLOG=str(self.workdir / "oplog.jsonl"),
            ANSIBLE_CALLBACKS_ENABLED="opsbook_oplog,ansible.builtin.tree",
            ANSIBLE_CALLBACK_TREE_DIR=str(run_dir / "tree"),
            ANSIBLE_DEPRECATION_WARNINGS="false",
            ANSIBLE_LOCAL_TEMP=str(run_dir / "tmp-local"),
            ANSIBLE_REMOTE_TMP=str(run_dir / "tmp-remote"),
            ANSIBLE_NOCOLOR="1",
        )
        return env

    def run_module(self, key: str, module: str, args: dict[str, Any], label: str) -> dict[str, Any]:
        """Run one module task through ansible-playbook; steps <key>.playbook and <key>.module."""
        run_dir = self.workdir / "ansible" / key
        playbook, inventory = write_playbook(run_dir, module, args)
        command = [VENV_BIN / "ansible-playbook", "-i", inventory, playbook]
        with self.measure(f"{key}.playbook", label) as step:
            ran = run(command, self.ansible_env(run_dir), cwd=PROJECT_ROOT, check=False)
        result = read_tree_result(run_dir / "tree" / "localhost")
        if ran.returncode != 0 or result.get("failed"):
            msg = result.get("msg") or ran.stdout[-3000:] or ran.stderr[-3000:]
            raise BenchError(f"{module} failed (ansible-playbook exit {ran.returncode}): {msg}")
        alive = step.data.get("module_alive_s")
        step.note = f"module process alive ~{fmt_num(alive)} s" if alive is not None else ""
        result["_fastest"] = self.steps[f"{key}.playbook"] is step
        if result["_fastest"]:  # the .module row belongs to the reported repetition
            self.steps[f"{key}.module"] = Step(
                f"{key}.module",
                f"  {module}'s own duration_s",
                float(result["duration_s"]),
                step.data.get("peak_module"),
            )
        fastest, module_step = self.steps[f"{key}.playbook"], self.steps[f"{key}.module"]
        module_step.peak_tree = fastest.data.get("peak_module")  # highest of all repetitions
        module_step.data["at_peak"] = fastest.data.get("at_peak_module")
        return result

    # --------------------------------------------------------------- verifying

    def verify(self, key: str, dbname: str) -> None:
        """Row counts of every table and the set of indexes and constraints vs the source."""
        counts = table_counts(self.cluster, dbname)
        problems = compare_counts(self.info["source_counts"], counts)
        objects = schema_objects(self.cluster, dbname)
        missing = sorted(set(self.info["source_objects"]) - objects)
        if missing:
            problems.append(f"missing indexes/constraints: {', '.join(missing)}")
        earlier = self.verification.get(key, {"ok": True, "problems": [], "runs": 0})
        self.verification[key] = {
            "database": dbname,
            "ok": earlier["ok"] and not problems,
            "problems": earlier["problems"] + problems,
            "tables": len(counts),
            "rows": sum(counts.values()),
            "runs": earlier["runs"] + 1,
        }
        state = "OK" if not problems else "MISMATCH: " + "; ".join(problems)
        self.log(f"verify {dbname}: {len(counts)} tables, {sum(counts.values())} rows - {state}")
        self.cluster.drop_database(dbname)

    # ------------------------------------------------------------------ extras

    def compression_figures(self) -> None:
        """Sizes of both backups and what they compress (plain SQL for gzip, custom for zstd)."""
        gz = Path(self.info["runbook_backup"]["file"])
        ran = bash(f'gzip -dc "{gz}" | wc -c', self.s3_env(), "gzip -dc | wc -c")
        plain = int(ran.stdout.strip())
        module = self.info["module_backup"]
        self.info["compression"] = {
            "gzip": {"input_bytes": plain, "stored_bytes": gz.stat().st_size},
            "zstd": {
                "input_bytes": module["uncompressed_bytes"],
                "stored_bytes": module["bytes"],
                "level": (module.get("compression") or {}).get("level"),
            },
        }

    def machine(self) -> None:
        self.info["machine"] = machine_info()
        self.info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
        self.info["pg_settings"] = PG_SETTINGS
        self.info["module_backup_options"] = self.opts.module_backup
        self.info["gin_index"] = self.opts.gin
        self.info["repeat"] = self.opts.repeat
        self.info["command"] = " ".join(
            [".venv/bin/python", "bench/backup_restore.py", *sys.argv[1:]]
        )

    # --------------------------------------------------------------------- run

    def run_all(self) -> None:
        self.machine()
        self.generate_dataset()
        for repetition in range(1, self.opts.repeat + 1):
            self.log(f"--- repetition {repetition} of {self.opts.repeat}")
            self.run_steps()
        self.compression_figures()
        self.succeeded = True

    def run_steps(self) -> None:
        self.physical_dump()
        self.runbook_backup()
        self.module_backup()
        self.diagnose_dump_compress()
        self.physical_upload()
        self.runbook_restore()
        self.module_restore(self.opts.jobs)
        if self.opts.also_jobs1 and self.opts.jobs != 1:
            self.module_restore(1)


# ================================================================ database queries


def table_bytes(conn: Any, table: str) -> int:
    return int(conn.execute("SELECT pg_table_size(%s::regclass)", (table,)).fetchone()[0])


def table_counts(cluster: Any, dbname: str) -> dict[str, int]:
    """Exact row count of every ordinary table outside the system schemas."""
    with cluster.connect(dbname) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        return {
            name: int(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0])
            for (name,) in tables
        }


def schema_objects(cluster: Any, dbname: str) -> set[str]:
    """Names of the indexes and constraints of the public schema."""
    with cluster.connect(dbname) as conn:
        rows = conn.execute(
            "SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = 'public'"
            " UNION SELECT 'constraint ' || conname FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public'"
        ).fetchall()
    return {name for (name,) in rows}


# ================================================================ Ansible plumbing


def write_playbook(run_dir: Path, module: str, args: Mapping[str, Any]) -> tuple[Path, Path]:
    """A one-task playbook on localhost (connection local, the venv's Python), 0600."""
    run_dir.mkdir(parents=True, exist_ok=True)
    inventory = run_dir / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": str(VENV_PYTHON),
                        }
                    }
                }
            },
            indent=2,
        )
    )
    play = [
        {
            "name": f"Benchmark {module}",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [{"name": f"Run {module}", module: dict(args)}],
        }
    ]
    playbook = run_dir / f"bench_{module}.yml"
    playbook.touch(mode=0o600)
    playbook.write_text(json.dumps(play, indent=2))  # JSON is YAML
    return playbook, inventory


def read_tree_result(path: Path) -> dict[str, Any]:
    """The last task result the tree callback wrote for a host ({} when none)."""
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


# ======================================================================= machine


def _first_line(args: Sequence[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "?"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {}
    for dist in ("boto3", "moto", "psycopg", "ansible-core"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "zstd": _first_line(["zstd", "--version"]),
        "gzip": _first_line(["gzip", "--version"]),
    }


# ======================================================================== report

TABLE_HEADERS = [
    "step",
    "what",
    "wall s",
    "MB/s",
    "peak RSS MB",
    "CPU s",
    "cores",
    "other CPU s",
    "all runs s",
    "notes",
]
TABLE_RIGHT = {2, 3, 4, 5, 6, 7}


def cpu_columns(step: Step) -> list[str]:
    """CPU seconds of the step (commands + Postgres + S3 server), cores busy, others' CPU."""
    cpu = step.data.get("cpu")
    if not cpu:
        return ["-", "-", "-"]
    ours = cpu["steps"] + cpu["postgres"] + cpu["s3"]
    return [fmt_num(ours, 1), fmt_num(ratio(ours, step.seconds), 2), fmt_num(cpu["other"], 1)]


def step_rows(
    steps: Mapping[str, Step], db_bytes: int, runs: Mapping[str, Sequence[float]] | None = None
) -> list[list[str]]:
    """One table row per measured or derived step, in report order."""
    rows = []
    for step in steps.values():
        times = (runs or {}).get(step.key, [])
        rows.append(
            [
                step.key,
                step.label,
                fmt_num(step.seconds, 2),
                fmt_num(throughput(db_bytes, step.seconds), 1),
                fmt_num(mb(step.peak_tree), 0) if step.peak_tree is not None else "-",
                *cpu_columns(step),
                " ".join(f"{t:.1f}" for t in times) if len(times) > 1 else "-",
                step.note,
            ]
        )
    return rows


def figures_of(bench: Benchmark) -> Figures:
    s = bench.steps
    jobs = bench.opts.jobs
    return Figures(
        runbook_backup_s=s["a.total"].seconds,
        backup_playbook_s=s["b.playbook"].seconds,
        backup_module_s=s["b.module"].seconds,
        physical_dump_s=s["phys.dump"].seconds,
        physical_upload_s=s["phys.upload"].seconds,
        backup_peak_module=s["b.module"].peak_tree or 0,
        backup_peak_tree=s["b.playbook"].peak_tree or 0,
        runbook_restore_s=s["c.total"].seconds,
        restore_playbook_s=s[f"d{jobs}.playbook"].seconds,
        restore_module_s=s[f"d{jobs}.module"].seconds,
        counts_ok=bool(bench.verification) and all(v["ok"] for v in bench.verification.values()),
    )


def ordered_steps(steps: Mapping[str, Step]) -> dict[str, Step]:
    """Steps in report order: physical limits next to what they bound."""
    order = [
        "phys.dump",
        "a.dump",
        "a.upload",
        "a.total",
        "b.playbook",
        "b.module",
        "diag.dump_zstd",
        "phys.upload",
        "c.download",
        "c.restore",
        "c.total",
    ]
    rest = [k for k in steps if k not in order]
    return {k: steps[k] for k in [*order, *rest] if k in steps}


def compression_lines(info: Mapping[str, Any]) -> list[str]:
    comp = info.get("compression")
    if not comp:
        return []
    lines = []
    for name, what in (("gzip", "plain SQL dump, gzip -6"), ("zstd", "custom -Z0 dump, zstd")):
        c = comp[name]
        level = f" -{c['level']}" if c.get("level") else ""
        lines.append(
            f"  {name:4}{level:4} {what:26} {c['input_bytes'] / MB:8.1f} MB -> "
            f"{c['stored_bytes'] / MB:7.1f} MB  ratio {c['input_bytes'] / c['stored_bytes']:.2f}"
            f"  ({info['database_bytes'] / c['stored_bytes']:.2f} of pg_database_size)"
        )
    return lines


LEGEND = [
    "wall s: the fastest of the repetitions (all of them under `all runs s`); every other",
    "  column belongs to that repetition, except peak RSS: the highest of all repetitions.",
    "peak RSS: summed over the step's process tree, servers excluded; .module rows: the",
    "  module's processes only (module, pg_dump/pg_restore, zstd), without ansible-playbook.",
    "CPU s: the step's commands + the Postgres server + the S3 server; cores: CPU s / wall s;",
    "  other CPU s: used meanwhile by processes outside the benchmark (noise on a shared host).",
]


def print_report(bench: Benchmark) -> list[TargetCheck]:
    info = bench.info
    steps = ordered_steps(bench.steps)
    print()
    print(
        f"source database {SOURCE_DB}: pg_database_size {info['database_bytes'] / MB:.1f} MB; "
        "MB/s = that size / wall time (MB = 10^6 bytes)"
    )
    for name, t in info["tables"].items():
        print(
            f"  {name:10} {t['rows']:>10,} rows  table {t['table_bytes'] / MB:7.1f} MB  "
            f"indexes {t['index_bytes'] / MB:6.1f} MB"
        )
    print("compression:")
    for line in compression_lines(info):
        print(line)
    print(
        f"\n{info['repeat']} repetition(s); load average at start "
        f"{' '.join(info['loadavg_at_start'])}"
    )
    rows = step_rows(steps, bench.db_bytes, bench.runs)
    print(render_table(TABLE_HEADERS, rows, right=TABLE_RIGHT))
    for line in LEGEND:
        print(line)
    print_details(steps)
    bench.info["limits"] = machine_limits(bench)
    print_limits(bench.info["limits"])
    checks = evaluate_targets(figures_of(bench))
    print()
    print(
        render_table(
            ["target", "wanted", "measured", "verdict", "detail"],
            [[c.name, c.target, c.measured, c.verdict, c.detail] for c in checks],
            right={2},
        )
    )
    return checks


def print_details(steps: Mapping[str, Step]) -> None:
    """Memory at each peak, CPU by process, the slowest server statements."""
    print("\nprocesses at each step's peak (RSS MB by process name):")
    for step in steps.values():
        if step.data.get("at_peak"):
            print(f"  {step.key:14} {step.data['at_peak']}")
    print("\nCPU seconds by process (commands | postgres | s3 | other):")
    for step in steps.values():
        cpu = step.data.get("cpu")
        if cpu and "cpu_by_process" in step.data:
            commands = format_seconds_by(step.data["cpu_by_process"]) or "-"
            print(
                f"  {step.key:14} {commands} | postgres {cpu['postgres']:.1f} | "
                f"s3 {cpu['s3']:.1f} | other {cpu['other']:.1f}"
            )
    print("\nserver statements of 1 s or more (seconds):")
    for step in steps.values():
        for seconds, text in step.data.get("slow_statements", [])[:6]:
            print(f"  {step.key:14} {seconds:6.1f}  {text[:90]}")


def step_cpu(step: Step | None) -> float:
    """CPU seconds of a step's commands and both servers (0 when unknown)."""
    cpu = step.data.get("cpu") if step else None
    return cpu["steps"] + cpu["postgres"] + cpu["s3"] if cpu else 0.0


def machine_limits(bench: Benchmark) -> dict[str, Any]:
    """The limits of this machine that the targets run into (see bench/README.md)."""
    s = bench.steps
    cores = os.cpu_count() or 1
    floor = cpu_floor([step_cpu(s.get("diag.dump_zstd")), step_cpu(s.get("phys.upload"))], cores)
    chain_s, chain = restore_critical_path(s["c.restore"].data.get("slow_statements", []))
    return {
        "cores": cores,
        "backup_cpu_floor_s": floor,
        "backup_playbook_vs_floor": ratio(s["b.playbook"].seconds, floor),
        "backup_module_vs_floor": ratio(s["b.module"].seconds, floor),
        "restore_critical_path_s": chain_s,
        "restore_critical_path": chain,
        "best_restore_ratio": ratio(s["c.total"].seconds, chain_s),
    }


def print_limits(limits: Mapping[str, Any]) -> None:
    cores = limits["cores"]
    print(f"\nlimits of this machine ({cores} cores):")
    print(
        f"  backup CPU floor: CPU s of diag.dump_zstd + phys.upload over {cores} cores = "
        f"{limits['backup_cpu_floor_s']:.2f} s; (b) playbook "
        f"{fmt_ratio(limits['backup_playbook_vs_floor'])}, module "
        f"{fmt_ratio(limits['backup_module_vs_floor'])} of it"
    )
    if limits["restore_critical_path"]:
        print(
            "  restore critical path (server log of c.restore): "
            + " + ".join(limits["restore_critical_path"])
            + f" = {limits['restore_critical_path_s']:.1f} s: no jobs setting restores faster;"
            f" best possible (c)/(d) = {fmt_ratio(limits['best_restore_ratio'])}"
        )


def write_json(bench: Benchmark, checks: Sequence[TargetCheck], path: Path) -> None:
    steps = ordered_steps(bench.steps)
    document = {
        "info": bench.info,
        "steps": {k: asdict(s) for k, s in steps.items()},
        "targets": [{**asdict(c), "verdict": c.verdict} for c in checks],
        "verification": bench.verification,
        "runs": bench.runs,
        "markdown_table": render_markdown(
            TABLE_HEADERS, step_rows(steps, bench.db_bytes, bench.runs)
        ),
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


# ========================================================================== main


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mb", type=int, default=500, help="table data to generate, MB (default 500)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory and leave the servers running"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore jobs for (d) (default 2)")
    parser.add_argument("--no-jobs1", action="store_true", help="skip (d) with jobs=1")
    parser.add_argument(
        "--workdir", type=Path, help="work directory, absent or empty (default: a new temp dir)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run every timed step this many times, report the fastest (default 3)",
    )
    parser.add_argument(
        "--no-gin", action="store_true", help="no GIN index on events.payload (restore analysis)"
    )
    parser.add_argument("--compression-level", type=int, help="pg_backup compression_level")
    parser.add_argument("--part-size-mb", type=int, help="pg_backup part_size_mb")
    parser.add_argument("--upload-concurrency", type=int, help="pg_backup upload_concurrency")
    ns = parser.parse_args(argv)
    module_backup = {
        name: value
        for name, value in (
            ("compression_level", ns.compression_level),
            ("part_size_mb", ns.part_size_mb),
            ("upload_concurrency", ns.upload_concurrency),
        )
        if value is not None
    }
    return Options(
        ns.size_mb,
        ns.keep,
        ns.json,
        ns.jobs,
        not ns.no_jobs1,
        module_backup,
        ns.workdir,
        gin=not ns.no_gin,
        repeat=max(1, ns.repeat),
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    # Explicitly for SIGINT too: a background job of a non-interactive shell starts with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupt)
    bench = Benchmark(opts)
    try:
        bench.start()
        bench.run_all()
        checks = print_report(bench)
        if opts.json_path:
            write_json(bench, checks, opts.json_path)
            bench.log(f"figures written to {opts.json_path}")
    except KeyboardInterrupt:
        bench.log("interrupted: tearing down")
        return 130
    except BenchError as exc:
        bench.log(f"FAILED: {exc}")
        return 1
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
