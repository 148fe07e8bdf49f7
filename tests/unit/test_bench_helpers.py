"""bench/backup_restore.py: its pure helpers (/proc parsing, process trees, the memory
sampler, formatting, target verdicts) - not the benchmark itself, which is a script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.backup_restore import (
    CONTROLLER_COMM,
    FIRST_BATCH_ROWS,
    MAX_BATCH_BYTES,
    MB,
    CpuSnapshot,
    Figures,
    MemorySampler,
    ProcStat,
    Step,
    TreeUsage,
    Window,
    breakdown,
    compare_counts,
    cpu_by_comm,
    cpu_columns,
    cpu_floor,
    cpu_split,
    evaluate_targets,
    fmt_num,
    fmt_ratio,
    format_seconds_by,
    next_batch_rows,
    parse_args,
    parse_busy_seconds,
    parse_proc_stat,
    parse_slow_statements,
    ratio,
    read_processes,
    read_tree_result,
    render_markdown,
    render_table,
    restore_critical_path,
    subtree_ticks,
    take_cpu_snapshot,
    throughput,
    tree_pids,
    tree_usage,
    write_playbook,
)

PAGE = 4096


def stat_line(
    pid: int, comm: str, ppid: int, rss_pages: int, cpu: tuple[int, int, int, int] = (0, 0, 0, 0)
) -> str:
    """A /proc/<pid>/stat line with the fields the sampler reads (others zero)."""
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(t) for t in cpu] + ["0"] * 6
    fields += [str(rss_pages)] + ["0"] * 28
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


# ------------------------------------------------------------------------- /proc


def test_parse_proc_stat_reads_ppid_name_and_rss() -> None:
    stat = parse_proc_stat(stat_line(42, "pg_dump", 7, 100), PAGE)
    assert stat == ProcStat(42, 7, "pg_dump", 100 * PAGE)


def test_parse_proc_stat_reads_cpu_ticks_own_and_reaped_children() -> None:
    stat = parse_proc_stat(stat_line(9, "gzip", 2, 1, cpu=(100, 20, 7, 3)), PAGE)
    assert (stat.cpu_ticks, stat.child_ticks) == (120, 10)


def test_parse_proc_stat_survives_spaces_and_parentheses_in_the_name() -> None:
    stat = parse_proc_stat(stat_line(5, "my (odd) name", 1, 3), PAGE)
    assert (stat.comm, stat.ppid, stat.rss_bytes) == ("my (odd) name", 1, 3 * PAGE)


def test_parse_proc_stat_of_this_process() -> None:
    text = Path("/proc/self/stat").read_text()
    stat = parse_proc_stat(text, PAGE)
    assert stat.ppid > 0
    assert stat.rss_bytes > 0


def test_read_processes_sees_this_process_and_its_parent() -> None:
    import os

    procs = read_processes()
    me = procs[os.getpid()]
    assert me.ppid == os.getppid()
    assert me.rss_bytes > 1 * MB


# ------------------------------------------------------------------ process trees

PARENTS = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20, 30: 13}


def test_tree_pids_is_every_descendant_without_the_root() -> None:
    assert tree_pids(PARENTS, 10) == {11, 12, 13, 30}
    assert tree_pids(PARENTS, 20) == {21}
    assert tree_pids(PARENTS, 99) == set()


def test_tree_pids_exclusion_hides_a_whole_subtree() -> None:
    assert tree_pids(PARENTS, 10, exclude={13}) == {11, 12}
    assert tree_pids(PARENTS, 1, exclude={10, 20}) == set()


def test_tree_pids_stops_on_a_cycle() -> None:
    assert tree_pids({2: 3, 3: 2}, 2) == {2, 3}


def proc(pid: int, ppid: int, comm: str, rss_mb: int) -> ProcStat:
    return ProcStat(pid, ppid, comm, rss_mb * MB)


def test_tree_usage_sums_the_tree_and_separates_the_ansible_controller() -> None:
    procs = {
        p.pid: p
        for p in (
            proc(100, 1, "python", 500),  # the benchmark itself: the root, not counted
            proc(101, 100, CONTROLLER_COMM, 70),  # ansible-playbook
            proc(102, 101, CONTROLLER_COMM, 60),  # its worker fork
            proc(103, 102, "sh", 1),
            proc(104, 103, "python", 50),  # the module
            proc(105, 104, "pg_dump", 10),
            proc(106, 104, "zstd", 20),
            proc(200, 100, "python", 90),  # the S3 server: excluded
            proc(300, 1, "postgres", 400),  # not ours
        )
    }
    usage = tree_usage(procs, 100, exclude={200})
    assert usage.processes == 6
    assert usage.total == 211 * MB
    assert usage.module == 81 * MB
    assert usage.by_comm == {
        CONTROLLER_COMM: 130 * MB,
        "sh": 1 * MB,
        "python": 50 * MB,
        "pg_dump": 10 * MB,
        "zstd": 20 * MB,
    }


def test_breakdown_lists_largest_first_and_can_skip_the_controller() -> None:
    by_comm = {"zstd": 20 * MB, CONTROLLER_COMM: 130 * MB, "pg_dump": 9_600_000}
    assert breakdown(by_comm) == f"{CONTROLLER_COMM} 130, zstd 20, pg_dump 10"
    assert breakdown(by_comm, skip_controller=True) == "zstd 20, pg_dump 10"
    assert breakdown({}) == ""


# ---------------------------------------------------------------------- sampler


def usage(total: int, module: int) -> TreeUsage:
    return TreeUsage(total, module, 1, {"x": total}, {7: ("zstd", total)})


def test_window_keeps_peaks_and_the_module_lifetime() -> None:
    window = Window()
    window.add(usage(100, 0), 1.0)
    window.add(usage(300, 200), 1.5)
    window.add(usage(250, 220), 2.0)
    window.add(usage(90, 0), 2.5)
    assert (window.peak_total, window.peak_module, window.samples) == (300, 220, 4)
    assert window.module_alive_s == pytest.approx(0.5)
    assert window.at_peak_total == {"x": 300}
    assert window.cpu_seen == {7: ("zstd", 90)}  # the last ticks seen of each pid
    assert Window().module_alive_s is None


ALLOCATE = (
    "import sys; block = b'x' * (80 * 1024 * 1024); "
    "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
)


def hold_memory() -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", ALLOCATE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    return child


def release(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(10)


def test_sampler_thread_sees_a_child_that_holds_memory() -> None:
    sampler = MemorySampler(interval=0.01).start()
    try:
        with sampler.window() as window:
            child = hold_memory()
            time.sleep(0.2)
            release(child)
    finally:
        sampler.stop()
    assert window.samples >= 5
    assert window.peak_total >= 80 * MB
    assert window.peak_module >= 80 * MB  # not an ansible-playbook process


def _lab_children() -> list[int]:
    """Children this test process already had (in a full run: the session's lab servers)."""
    return [proc.pid for proc in read_processes().values() if proc.ppid == os.getpid()]


def test_sampler_leaves_out_excluded_processes() -> None:
    sampler = MemorySampler()
    sampler.exclude(*_lab_children())
    child = hold_memory()
    try:
        sampler.exclude(child.pid, None)
        with sampler.window() as window:
            sampler.sample()
    finally:
        release(child)
    assert window.samples == 1
    assert window.peak_total < 80 * MB


def test_sampler_does_not_count_its_own_process() -> None:
    sampler = MemorySampler()
    sampler.exclude(*_lab_children())
    with sampler.window() as window:
        sampler.sample()
    assert window.peak_total < 50 * MB  # this test process alone is well above that


# -------------------------------------------------------------------------- CPU


def test_subtree_ticks_counts_live_descendants_and_reaped_children() -> None:
    procs = {
        1: ProcStat(1, 0, "init", 0, 1000, 1000),
        50: ProcStat(50, 1, "postgres", 0, 10, 400),  # the postmaster, backends reaped: 400
        51: ProcStat(51, 50, "postgres", 0, 30, 0),  # a live backend
        52: ProcStat(52, 51, "postgres", 0, 5, 0),
    }
    assert subtree_ticks(procs, 50) == 445
    assert subtree_ticks(procs, 51) == 35
    assert subtree_ticks(procs, 99) == 0
    assert subtree_ticks(procs, None) == 0


def test_parse_busy_seconds_leaves_out_idle_and_iowait() -> None:
    line = "cpu  100 10 50 9000 300 5 5 30 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    assert parse_busy_seconds(line, 100) == pytest.approx((100 + 10 + 50 + 5 + 5 + 30) / 100)
    assert parse_busy_seconds(Path("/proc/stat").read_text(), 100) > 0


def test_take_cpu_snapshot_splits_commands_bench_and_servers() -> None:
    procs = {
        10: ProcStat(10, 1, "python", 0, 200, 300),  # the benchmark, 300 ticks of reaped steps
        11: ProcStat(11, 10, "bash", 0, 5, 40),  # a step still running
        20: ProcStat(20, 10, "python", 0, 70, 0),  # the S3 server, a child of the benchmark
        30: ProcStat(30, 1, "postgres", 0, 10, 90),
    }
    snap = take_cpu_snapshot(procs, 12.0, 10, 30, 20, 100)
    assert snap == CpuSnapshot(busy=12.0, steps=3.45, bench=2.0, postgres=1.0, s3=0.7)


def test_cpu_split_gives_the_rest_of_the_machine_as_other() -> None:
    start = CpuSnapshot(busy=100.0, steps=1.0, bench=1.0, postgres=5.0, s3=2.0)
    end = CpuSnapshot(busy=110.0, steps=4.0, bench=1.5, postgres=8.0, s3=3.0)
    assert cpu_split(start, end) == pytest.approx(
        {"steps": 3.0, "bench": 0.5, "postgres": 3.0, "s3": 1.0, "other": 2.5}
    )
    # Counters read a moment apart can disagree a little: never negative.
    assert cpu_split(end, start)["other"] == 0.0


def test_cpu_by_comm_and_its_formatting() -> None:
    seen = {1: ("zstd", 310), 2: ("pg_dump", 50), 3: ("zstd", 0), 4: ("sh", 1)}
    by_comm = cpu_by_comm(seen, 100)
    assert by_comm == {"zstd": 3.1, "pg_dump": 0.5, "sh": 0.01}
    assert format_seconds_by(by_comm) == "zstd 3.1, pg_dump 0.5"


def test_cpu_columns() -> None:
    step = Step("b", "x", 4.0)
    assert cpu_columns(step) == ["-", "-", "-"]
    step.data["cpu"] = {"steps": 4.0, "bench": 0.2, "postgres": 2.0, "s3": 1.0, "other": 0.4}
    assert cpu_columns(step) == ["7.0", "1.75", "0.4"]


LOG = """\
2024-05-01 10:00:00.001 UTC [42] LOG:  checkpoint starting: immediate force wait
2024-05-01 10:00:05.000 UTC [43] LOG:  duration: 5519.791 ms  statement: COPY public.events (id) FROM stdin;
2024-05-01 10:00:16.000 UTC [44] LOG:  duration: 10925.396 ms  statement: CREATE INDEX events_payload_idx ON public.events USING gin (payload jsonb_path_ops);
2024-05-01 10:00:17.000 UTC [45] LOG:  duration: 1368.495 ms  statement: ALTER TABLE ONLY public.events
\t    ADD CONSTRAINT events_account_id_fkey FOREIGN KEY (account_id) REFERENCES public.accounts(id);
2024-05-01 10:00:18.000 UTC [46] LOG:  duration: 1200.5 ms  execute <unnamed>: SELECT count(*) FROM ONLY public.events   
2024-05-01 10:00:19.000 UTC [47] LOG:  automatic analyze of table "bench.public.events"
\tavg read rate: 0.000 MB/s, avg write rate: 0.000 MB/s
"""  # noqa: E501, W291


def test_parse_slow_statements_slowest_first_with_continuations() -> None:
    found = parse_slow_statements(LOG)
    assert [round(seconds, 2) for seconds, _ in found] == [10.93, 5.52, 1.37, 1.2]
    assert found[0][1].startswith("CREATE INDEX events_payload_idx")
    assert found[2][1] == (
        "ALTER TABLE ONLY public.events ADD CONSTRAINT events_account_id_fkey "
        "FOREIGN KEY (account_id) REFERENCES public.accounts(id);"
    )
    assert found[3][1] == "SELECT count(*) FROM ONLY public.events"
    assert parse_slow_statements("") == []


RESTORE = [
    (10.3, "CREATE INDEX events_payload_idx ON public.events USING gin (payload jsonb_path_ops);"),
    (3.5, "COPY public.events (id, account_id, payload) FROM stdin;"),
    (2.5, "COPY public.documents (id, body) FROM stdin;"),
    (9.0, "ALTER TABLE ONLY public.documents ADD CONSTRAINT documents_pkey PRIMARY KEY (id);"),
    (1.1, "CREATE UNIQUE INDEX accounts_email_key ON ONLY public.accounts USING btree (email);"),
    (4.0, "SELECT count(*) FROM ONLY public.events"),  # not part of a restore's chain
]


def test_restore_critical_path_is_copy_plus_slowest_build_of_one_table() -> None:
    seconds, parts = restore_critical_path(RESTORE)
    assert seconds == pytest.approx(13.8)
    assert parts[0] == "COPY public.events 3.5 s"
    assert parts[1].startswith("CREATE INDEX events_payload_idx") and parts[1].endswith("10.3 s")


def test_restore_critical_path_without_statements() -> None:
    assert restore_critical_path([]) == (0.0, [])
    only_build = restore_critical_path(RESTORE[4:5])
    assert only_build[0] == pytest.approx(1.1)


def test_cpu_floor_spreads_the_work_over_the_cores() -> None:
    assert cpu_floor([6.9, 1.9], 2) == pytest.approx(4.4)
    assert cpu_floor([3.0], 0) == 3.0


# ------------------------------------------------------------------- formatting


def test_throughput_is_mb_per_second_and_none_without_time() -> None:
    assert throughput(500 * MB, 10.0) == pytest.approx(50.0)
    assert throughput(500 * MB, 0.0) is None
    assert throughput(500 * MB, None) is None


def test_number_and_ratio_formatting() -> None:
    assert fmt_num(1234.56) == "1,234.6"
    assert fmt_num(3.14159, 2) == "3.14"
    assert fmt_num(None) == "-"
    assert fmt_ratio(4.256) == "4.26x"
    assert fmt_ratio(None) == "-"
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(10.0, 0.0) is None
    assert ratio(None, 4.0) is None


def test_render_table_aligns_columns() -> None:
    text = render_table(["step", "s"], [["a.dump", "12.5"], ["b", "3.0"]], right={1})
    assert text.splitlines() == [
        "step       s",
        "------  ----",
        "a.dump  12.5",
        "b        3.0",
    ]


def test_render_markdown_escapes_pipes() -> None:
    text = render_markdown(["step", "what"], [["a", "pg_dump | gzip"]])
    assert text.splitlines() == ["| step | what |", "|---|---|", "| a | pg_dump \\| gzip |"]


# ---------------------------------------------------------------------- targets


def figures(**overrides: object) -> Figures:
    values: dict[str, object] = {
        "runbook_backup_s": 100.0,
        "backup_playbook_s": 20.0,
        "backup_module_s": 18.0,
        "physical_dump_s": 16.0,
        "physical_upload_s": 10.0,
        "backup_peak_module": 150 * MB,
        "backup_peak_tree": 280 * MB,
        "runbook_restore_s": 120.0,
        "restore_playbook_s": 50.0,
        "restore_module_s": 48.0,
        "counts_ok": True,
    }
    values.update(overrides)
    return Figures(**values)  # type: ignore[arg-type]


def verdicts(f: Figures) -> list[str]:
    return [check.verdict for check in evaluate_targets(f)]


def test_all_targets_met() -> None:
    checks = evaluate_targets(figures())
    assert [c.verdict for c in checks] == ["PASS"] * 5
    assert checks[0].measured == "5.00x"
    assert checks[1].measured == "1.25x"  # 20 s against the slower limit, 16 s
    assert "module only: 1.12x" in checks[1].detail


def test_each_target_can_miss() -> None:
    assert verdicts(figures(backup_playbook_s=26.0)) == ["MISS", "MISS", "PASS", "PASS", "PASS"]
    assert verdicts(figures(physical_dump_s=10.0, physical_upload_s=12.0))[1] == "MISS"
    assert verdicts(figures(backup_peak_module=200 * MB))[2] == "MISS"
    assert verdicts(figures(restore_playbook_s=61.0))[3] == "MISS"
    assert verdicts(figures(counts_ok=False))[4] == "MISS"


def test_memory_is_judged_on_the_module_processes_and_shows_the_tree() -> None:
    check = evaluate_targets(figures(backup_peak_tree=400 * MB))[2]
    assert check.passed
    assert check.detail == "with ansible-playbook: 400 MB"


def test_compare_counts_names_every_difference() -> None:
    source = {"public.a": 3, "public.b": 5}
    assert compare_counts(source, dict(source)) == []
    assert compare_counts(source, {"public.a": 3, "public.b": 4, "public.c": 1}) == [
        "public.b: source 5, restored 4",
        "public.c: source None, restored 1",
    ]
    assert compare_counts(source, {"public.a": 3}) == ["public.b: source 5, restored None"]


# ---------------------------------------------------------------------- dataset


def test_next_batch_rows_aims_at_the_target_size() -> None:
    assert next_batch_rows(100 * MB, 0, 0) == FIRST_BATCH_ROWS
    # 1000 bytes per row so far, 10 MB missing: about 10,000 rows.
    assert next_batch_rows(100 * MB, 90 * MB, 90_000) == 10_001
    # Far from the target: capped to MAX_BATCH_BYTES worth of rows.
    assert next_batch_rows(10_000 * MB, 1 * MB, 1_000) == MAX_BATCH_BYTES // 1000 + 1
    assert next_batch_rows(100 * MB, 100 * MB - 5, 100_000) == 100


# ------------------------------------------------------------- CLI and Ansible


def test_parse_args_defaults_and_module_options() -> None:
    opts = parse_args([])
    assert (opts.size_mb, opts.keep, opts.jobs, opts.also_jobs1) == (500, False, 2, True)
    assert opts.module_backup == {}
    assert opts.gin
    opts = parse_args(
        ["--size-mb", "50", "--compression-level", "1", "--part-size-mb", "32", "--no-gin"]
    )
    assert opts.size_mb == 50
    assert opts.module_backup == {"compression_level": 1, "part_size_mb": 32}
    assert not opts.gin


def test_write_playbook_is_one_local_task(tmp_path: Path) -> None:
    playbook, inventory = write_playbook(tmp_path / "b", "pg_backup", {"dsn": "postgresql://x"})
    play = json.loads(playbook.read_text())
    assert play[0]["hosts"] == "localhost"
    assert play[0]["tasks"][0]["pg_backup"] == {"dsn": "postgresql://x"}
    assert playbook.stat().st_mode & 0o077 == 0
    host = json.loads(inventory.read_text())["all"]["hosts"]["localhost"]
    assert host["ansible_connection"] == "local"
    assert host["ansible_python_interpreter"].endswith(".venv/bin/python")


def test_read_tree_result(tmp_path: Path) -> None:
    (tmp_path / "localhost").write_text('{"changed": true, "duration_s": 1.5}')
    assert read_tree_result(tmp_path / "localhost") == {"changed": True, "duration_s": 1.5}
    assert read_tree_result(tmp_path / "missing") == {}


def test_the_work_directory_is_made_only_by_start_and_never_a_used_one(tmp_path: Path) -> None:
    from bench.backup_restore import BenchError, Benchmark

    bench = Benchmark(parse_args(["--workdir", str(tmp_path / "new")]))
    assert not (tmp_path / "new").exists()  # constructing has no side effect
    with pytest.raises(BenchError):
        _ = bench.workdir
    assert bench.make_workdir() == tmp_path / "new"
    assert (tmp_path / "new").is_dir()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "precious").write_text("x")
    with pytest.raises(BenchError, match="not empty"):
        Benchmark(parse_args(["--workdir", str(tmp_path / "used")])).make_workdir()
    bench.stop()  # nothing started: removes nothing it did not make
    assert (tmp_path / "used" / "precious").exists()
