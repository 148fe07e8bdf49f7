"""bench/platform_deploy.py, the pure parts: the rounds' order and versions, reads vs writes,
the shortest poll gap, the raw script's judgement of a platform's answers and its poll loop
(fake clock), the ratios, the verdict and the table."""

from __future__ import annotations

import pytest

from bench.deploy_rollback import BenchError
from bench.platform_deploy import (
    Request,
    Run,
    api_span,
    commit_of,
    fly_started,
    mean_operations,
    poll_until,
    render,
    render_live,
    round_order,
    shortest_poll,
    summarize,
    tally,
    vercel_ready,
    versions_of,
    with_image,
)


def test_rounds_alternate_who_goes_first_and_every_deploy_is_a_new_version() -> None:
    assert round_order(0) == ["opsbook", "raw"]
    assert round_order(1) == ["raw", "opsbook"]
    assert round_order(2) == round_order(0)
    seen = [v for i in range(3) for v in versions_of(i).values()]
    assert len(set(seen)) == len(seen) and "1.0.0" not in seen
    assert len(commit_of("1.2.0")) == 40 and commit_of("1.2.0") != commit_of("1.2.1")
    int(commit_of("1.2.0"), 16)


def test_reads_are_gets_and_every_operation_is_counted() -> None:
    calls = [("GET", "getDeployment"), ("POST", "createDeployment"), ("get", "getDeployment"),
             ("DELETE", "Machines_release_lease"), ("PATCH", "editProjectEnv")]  # fmt: skip
    reads, writes, by = tally(calls)
    assert (reads, writes) == (2, 3)
    assert by == {"getDeployment": 2, "createDeployment": 1, "Machines_release_lease": 1,
                  "editProjectEnv": 1}  # fmt: skip
    assert list(by) == ["getDeployment", "createDeployment", "Machines_release_lease",
                        "editProjectEnv"]  # fmt: skip
    assert mean_operations([{"a": 2, "b": 1}, {"a": 4}]) == {"a": 3.0, "b": 0.5}


def test_the_shortest_poll_is_two_reads_of_one_resource_with_no_write_between() -> None:
    requests = [
        Request(0.0, "GET", "/d/1"),
        Request(0.2, "GET", "/other"),
        Request(1.5, "GET", "/d/1"),  # 1.5 s after the first read of /d/1
        Request(1.6, "POST", "/d/1"),  # a write: the next read checks it, it is no poll
        Request(1.7, "GET", "/d/1"),
        Request(2.9, "GET", "/d/1"),  # 1.2 s
        Request(3.0, "GET", "/other"),  # 2.8 s after /other, a write between: no poll
    ]
    assert shortest_poll(requests) == (pytest.approx(1.2), "/d/1")
    # in any order; the query does not make another resource
    shuffled = [requests[5], requests[0], requests[2], requests[4], requests[3]]
    assert shortest_poll(shuffled)[0] == pytest.approx(1.2)
    assert shortest_poll([Request(0, "GET", "/w?state=started"), Request(0.4, "GET", "/w")]) == (
        pytest.approx(0.4), "/w",
    )  # fmt: skip
    assert shortest_poll([Request(0, "GET", "/a"), Request(1, "GET", "/b")]) == (None, "")
    assert shortest_poll([]) == (None, "")


def test_the_api_span_runs_from_the_first_request_to_the_last_answer() -> None:
    assert api_span([]) == 0.0
    waits = [Request(1.0, "POST", "/m", 1.1), Request(1.2, "GET", "/m/wait", 4.2),
             Request(4.3, "DELETE", "/m/lease")]  # fmt: skip
    assert api_span(waits) == pytest.approx(3.3)
    assert api_span([Request(2.0, "GET", "/a", 2.5), Request(2.1, "GET", "/w", 9.0)]) == 7.0


def test_the_raw_script_judges_each_platforms_answer() -> None:
    assert vercel_ready({"readyState": "READY"})
    assert not vercel_ready({"readyState": "BUILDING"})
    assert not vercel_ready({"status": "QUEUED"})
    with pytest.raises(BenchError, match="ended ERROR"):
        vercel_ready({"id": "dpl_1", "readyState": "ERROR"})
    assert render_live({"status": "live"})
    assert not render_live({"status": "update_in_progress"})
    with pytest.raises(BenchError, match="build_failed"):
        render_live({"id": "dep-1", "status": "build_failed"})
    assert fly_started({"state": "started", "instance_id": "I2"}, "I2")
    assert not fly_started({"state": "started", "instance_id": "I1"}, "I2")  # the old version
    assert not fly_started({"state": "replacing", "instance_id": "I2"}, "I2")
    with pytest.raises(BenchError, match="destroyed"):
        fly_started({"id": "m1", "state": "destroyed"}, "I2")
    config = {"image": "registry.fly.io/app:1.0.0", "env": {"PORT": "8080"}}
    assert with_image(config, "registry.fly.io/app:2.0.0") == {
        "image": "registry.fly.io/app:2.0.0", "env": {"PORT": "8080"},
    }  # fmt: skip
    assert config["image"].endswith("1.0.0")  # not changed in place


def test_the_raw_poll_sleeps_a_second_before_every_read_and_gives_up() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    answers = iter(["BUILDING", "BUILDING", "READY"])
    last = poll_until(lambda: next(answers), lambda a: a == "READY", sleep=sleep,
                      clock=lambda: now[0])  # fmt: skip
    assert last == "READY" and slept == [1.0, 1.0, 1.0]
    with pytest.raises(BenchError, match="gave up"):
        poll_until(lambda: "BUILDING", lambda a: False, timeout_s=5, sleep=sleep,
                   clock=lambda: now[0])  # fmt: skip


def _run(target: str, kind: str, step: str, index: int, wall: float, calls: int,
         poll: float | None = None, reads: int = 0) -> Run:  # fmt: skip
    return Run(target, kind, step, index, wall, calls, reads, calls - reads, {"op": calls}, poll,
               "/d/1" if poll else "", calls if kind == "opsbook" else None)  # fmt: skip


def test_ratios_are_taken_within_rounds_and_the_verdict_on_opsbooks_polls() -> None:
    runs = [
        _run("render", "opsbook", "deploy", 0, 20.0, 8, 1.5, reads=7),
        _run("render", "raw", "deploy", 0, 10.0, 11, 1.0, reads=10),
        _run("render", "raw", "deploy", 1, 12.0, 13, 1.0, reads=12),
        _run("render", "opsbook", "deploy", 1, 18.0, 9, 1.1, reads=8),
        _run("render", "opsbook", "deploy", 2, 30.0, 8, 1.5, reads=7),
        _run("render", "raw", "deploy", 2, 10.0, 11, 1.0, reads=10),
        _run("render", "opsbook", "rollback", 0, 5.0, 3),
        _run("render", "raw", "rollback", 0, 0.0, 1),  # instant: no time ratio
    ]
    summary = summarize(runs)
    deploy, rollback = summary["rows"]
    assert (deploy["target"], deploy["step"]) == ("render", "deploy")
    assert deploy["ratios"]["wall_s"]["rounds"] == [2.0, 1.5, 3.0]
    assert deploy["ratios"]["wall_s"]["median"] == 2.0
    assert deploy["ratios"]["calls"]["median"] == pytest.approx(8 / 11)
    assert deploy["opsbook"]["wall_s_median"] == 20.0 and deploy["raw"]["calls_median"] == 11
    assert deploy["opsbook"]["reads_median"] == 7 and deploy["opsbook"]["writes_median"] == 1
    assert deploy["opsbook"]["shortest_poll_s"] == 1.1
    assert deploy["opsbook"]["reported_calls"] == [8, 9, 8]
    assert "wall_s" not in rollback["ratios"] and rollback["ratios"]["calls"]["median"] == 3.0
    assert summary["shortest_poll_s"] == 1.1 and summary["pass"] is True

    table = render(summary)
    assert "| render | deploy | 20.00 | 10.00 | 2.00x | 8 (7+1) | 11 (10+1) | 0.73x |" in table
    assert "| render | rollback | 5.00 | 0.00 | - | 3 (0+3) | 1 (0+1) | 3.00x | - / - |" in table
    assert "pass: no resource read again sooner than 1 s with nothing written between" in table
    assert "opsbook's shortest: 1.10 s (render deploy, GET /d/1)" in table

    fast = summarize([*runs, _run("fly", "opsbook", "deploy", 0, 9.0, 20, 0.4, reads=8)])
    assert fast["pass"] is False and "miss:" in render(fast)
    assert summarize([_run("fly", "raw", "deploy", 0, 9.0, 9, 1.0)])["pass"] is None
