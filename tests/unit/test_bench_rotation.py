"""bench/rotate_secrets.py, the pure parts: the rounds' order, the checks that a rotation was
real (env files, token signatures), the per-task times from stamped stdout, the ratios and the
verdict, and the manual rotation's shell loop (run here against stub ssh, curl and openssl that
execute the remote command on local deploy roots)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from bench.deploy_rollback import Measured
from bench.rotate_secrets import (
    END,
    START,
    HostRow,
    TaskTime,
    common_ssh_options,
    hs256_signed_by,
    manual_script,
    mean_task_times,
    play_totals,
    render,
    rotation_problems,
    round_order,
    summarize,
    task_times,
)
from opsbook.lab.sampleapp import app as sampleapp

OLD, PREVIOUS, NEW = "o" * 64, "p" * 64, "n" * 64


def test_each_round_starts_one_kind_later() -> None:
    orders = [round_order(i) for i in range(4)]
    assert orders[0] == ["deploy", "rotation", "manual"]
    assert orders[1] == ["rotation", "manual", "deploy"]
    assert orders[2] == ["manual", "deploy", "rotation"]
    assert orders[3] == orders[0]
    # every kind runs first, second and third once in three rounds
    assert all(sorted(o[i] for o in orders[:3]) == sorted(orders[0]) for i in range(3))


def test_a_token_is_signed_by_its_secret_only() -> None:
    token = sampleapp.new_token("ada", NEW)
    assert hs256_signed_by(token, NEW)
    assert not hs256_signed_by(token, OLD)
    header, payload, _sig = token.split(".")
    forged = sampleapp.sign_token({"sub": "eve"}, OLD).split(".")[2]
    assert not hs256_signed_by(f"{header}.{payload}.{forged}", NEW)
    assert not hs256_signed_by("not-a-token", NEW)
    assert not hs256_signed_by(f"{header}.{payload}.!!!", NEW)


def _envs(*values: str | None, pending: bool = False) -> dict[str, dict[str, str]]:
    envs: dict[str, dict[str, str]] = {}
    for i, value in enumerate(values):
        env = {"NEXTAUTH_SECRET": "x"}
        if value is not None:
            env["JWT_SECRET"] = value
        if pending:
            env["JWT_SECRET_PENDING"] = "q" * 64
        envs[f"app{i + 1}"] = env
    return envs


def test_a_real_rotation_has_no_problem() -> None:
    before = {h: {"JWT_SECRET": OLD, "JWT_SECRET_PREVIOUS": PREVIOUS} for h in ("app1", "app2")}
    after = {h: {"JWT_SECRET": NEW, "JWT_SECRET_PREVIOUS": OLD} for h in ("app1", "app2")}
    assert rotation_problems(before, after, "JWT_SECRET") == []


@pytest.mark.parametrize(
    ("after", "needle"),
    [
        (_envs(NEW, OLD), "JWT_SECRET not changed on app2"),
        (_envs(NEW, "m" * 64), "the hosts hold 2 different JWT_SECRET values"),
        (_envs(NEW, None), "JWT_SECRET missing on app2"),
        (_envs(NEW, NEW, pending=True), "JWT_SECRET_PENDING left on app1, app2"),
        # back to the value the hosts held as previous: not a new value
        (_envs(PREVIOUS, PREVIOUS), "JWT_SECRET not changed on app1, app2"),
    ],
)
def test_a_rotation_that_did_not_happen_is_named(after, needle) -> None:
    before = {h: {"JWT_SECRET": OLD, "JWT_SECRET_PREVIOUS": PREVIOUS} for h in ("app1", "app2")}
    problems = rotation_problems(before, after, "JWT_SECRET")
    assert needle in problems, problems
    text = " ".join(problems)
    assert all(v not in text for v in (OLD, PREVIOUS, NEW, "m" * 64))


STAMPED = [
    (10.5, "\n"),
    (10.6, "PLAY [Rotate | preflight] ******************\n"),
    (10.7, "TASK [rotation : preflight | Lock] ***\n"),
    (11.2, "ok: [localhost]\n"),
    (11.5, "PLAY [Rotate | apply] *****\n"),
    (11.6, "TASK [rotation : apply | Write] ****\n"),
    (12.0, "TASK [app_service : Restart] ***\n"),
    (13.0, "RUNNING HANDLER [reload] ***\n"),
    (13.1, "PLAY [Rotate | apply] *****\n"),  # the next serial batch
    (13.2, "TASK [rotation : apply | Write] ****\n"),
    (13.4, "TASK [app_service : Restart] ***\n"),
    (14.4, "PLAY RECAP *********\n"),
    (14.5, "app1 : ok=3\n"),
]


def test_task_times_from_the_banners_summed_over_the_batches() -> None:
    times = {(t.play, t.task): t for t in task_times(STAMPED, started=10.0, ended=15.0)}
    assert times[("", START)].seconds == pytest.approx(0.6)
    assert times[("Rotate | preflight", "(play start)")].seconds == pytest.approx(0.1)
    assert times[("Rotate | preflight", "rotation : preflight | Lock")].seconds == (
        pytest.approx(0.8)
    )
    write = times[("Rotate | apply", "rotation : apply | Write")]
    assert (write.seconds, write.count) == (pytest.approx(0.6), 2)
    restart = times[("Rotate | apply", "app_service : Restart")]
    assert (restart.seconds, restart.count) == (pytest.approx(2.0), 2)
    assert times[("Rotate | apply", "handler: reload")].seconds == pytest.approx(0.1)
    assert times[("Rotate | apply", "(play start)")].count == 2
    assert times[("", END)].seconds == pytest.approx(0.6)
    # the whole run is accounted for, once
    assert sum(t.seconds for t in times.values()) == pytest.approx(5.0)


def test_mean_over_runs_and_play_totals() -> None:
    first = task_times(STAMPED, 10.0, 15.0)
    second = [TaskTime(t.play, t.task, t.seconds * 2, t.count) for t in first]
    second.append(TaskTime("Rotate | apply", "only once", 3.0, 1))
    mean = {(t.play, t.task): t for t in mean_task_times([first, second])}
    assert mean[("", START)].seconds == pytest.approx(0.9)
    assert mean[("Rotate | apply", "only once")].seconds == pytest.approx(1.5)
    totals = {play: (seconds, tasks) for play, seconds, tasks in play_totals(first)}
    assert totals["Rotate | apply"] == (pytest.approx(2.9), 3)  # play starts are not tasks
    assert totals[""] == (pytest.approx(1.2), 0)


def _measured(rounds: list[dict[str, float]]) -> list[Measured]:
    return [Measured(4, k, wall, wall * 2, wall / 2) for r in rounds for k, wall in r.items()]


def test_ratios_are_taken_within_rounds_and_judged_on_the_median() -> None:
    # the second round is 50% slower for everything: no ratio moves
    rounds = [
        {"deploy": 8.0, "rotation": 6.0, "manual": 2.0},
        {"rotation": 9.0, "manual": 3.0, "deploy": 12.0},
        {"manual": 2.0, "deploy": 8.0, "rotation": 6.4},
    ]
    summary = summarize(_measured(rounds), rounds)
    assert summary["kinds"]["rotation"]["wall_s_median"] == 6.4
    assert summary["kinds"]["deploy"]["wall_s"] == [8.0, 12.0, 8.0]
    assert summary["ratios"]["rotation/deploy"]["median"] == pytest.approx(0.75)
    assert summary["ratios"]["rotation/manual"]["median"] == pytest.approx(3.0)
    assert summary["pass"] is True
    table = render(summary, 4)
    assert "| `rotate_secrets.yml -e secrets=jwt` | 3 | 6.40 | 6.00 9.00 6.40 |" in table
    assert "| rotation/deploy | 0.75x | 0.75 0.75 0.80 |" in table
    assert table.endswith("pass: rotation <= 1.0x deploy")


def test_a_rotation_slower_than_the_deploy_is_a_miss() -> None:
    rounds = [{"deploy": 8.0, "rotation": 8.4, "manual": 2.0}]
    summary = summarize(_measured(rounds), rounds)
    assert summary["pass"] is False
    assert render(summary, 4).endswith("miss: rotation <= 1.0x deploy")
    assert summarize([], [])["pass"] is None


def test_common_ssh_options_drop_what_differs_per_host() -> None:
    argv = ["ssh", "-i", "/k", "-p", "2201", "-o", "ControlMaster=no", "-o",
            "UserKnownHostsFile=/kh1", "-o", "BatchMode=yes", "me@127.0.10.1"]  # fmt: skip
    assert common_ssh_options(argv) == ["-o", "ControlMaster=no", "-o", "BatchMode=yes"]


# ------------------------------------------------------- the manual loop, against stubs

SECRET = "Zm9v/YmFy+YmF6cXV4cXV1eA0K+/8=9a"  # base64's / + = in the value
ENV_TEXT = "# app secrets\nJWT_SECRET=old-value\nJWT_SECRET_PREVIOUS=older\n\nNEXTAUTH_SECRET=na\n"


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def stubbed(tmp_path: Path) -> dict[str, object]:
    """Stub ssh (logs its argv, runs the remote command locally with its stdin), curl (logs)
    and openssl (a fixed value); three deploy roots whose app is a sleep process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    ssh = (
        f'printf "ssh %s\\n" "$*" >> {log}\n'
        'if [ "${@: -2:1}" = "$FAIL_LOGIN" ]; then exit 255; fi\n'
        'exec bash -c "${@: -1}"'
    )
    _stub(bin_dir, "ssh", ssh)
    _stub(bin_dir, "curl", f'printf "curl %s\\n" "$*" >> {log}')
    _stub(bin_dir, "openssl", f'printf "openssl %s\\n" "$*" >> {log}; echo "{SECRET}"')
    rows, apps = [], []
    for i in (1, 2, 3):
        root = tmp_path / f"app{i}"
        (root / "shared").mkdir(parents=True)
        (root / "current").mkdir()
        env = root / "shared" / ".env"
        env.write_text(ENV_TEXT)
        env.chmod(0o600)
        (root / "current" / "app.py").write_text(
            "import pathlib, sys\n"
            "pathlib.Path('shared/started').write_text(' '.join(sys.argv[1:]))\n"
        )
        app = subprocess.Popen(["sleep", "60"])
        threading.Thread(target=app.wait, daemon=True).start()  # reaped once killed
        (root / "shared" / "app.pid").write_text(f"{app.pid}\n")
        apps.append(app)
        rows.append(HostRow(f"me@127.0.10.{i}", 2200 + i, str(tmp_path / f"kh{i}"), str(root),
                            f"http://127.0.10.{i}:8080"))  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = manual_script(rows, "/keys/id", ["-o", "ControlMaster=no", "-o", "BatchMode=yes"])
    yield {"rows": rows, "apps": apps, "log": log, "env": env, "script": script}
    for app in apps:
        app.kill()


def test_the_manual_loop_rotates_every_host_in_turn(stubbed) -> None:
    done = subprocess.run(["bash", "-c", stubbed["script"]], env=stubbed["env"],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = stubbed["log"].read_text().splitlines()
    assert calls[0] == "openssl rand -base64 32"  # one value for every host
    # host after host: ssh, then curl /health until it answers, then once more to check
    assert len(calls) == 1 + 3 * len(stubbed["rows"])
    for i, row in enumerate(stubbed["rows"]):
        ssh, wait, check = calls[1 + 3 * i : 4 + 3 * i]
        assert ssh.startswith(f"ssh -i /keys/id -p {row.port} -o ControlMaster=no -o BatchMode=yes")
        assert f"-o UserKnownHostsFile={row.known_hosts} {row.login} cd '{row.deploy_root}'" in ssh
        assert wait == check == f"curl -fsS {row.base_url}/health"
    assert SECRET not in stubbed["log"].read_text()  # on stdin, never on a command line
    for row, app in zip(stubbed["rows"], stubbed["apps"], strict=True):
        env = Path(row.deploy_root) / "shared" / ".env"
        assert env.read_text() == ENV_TEXT.replace("=old-value", f"={SECRET}")
        assert stat.S_IMODE(env.stat().st_mode) == 0o600
        assert app.wait(timeout=5) is not None  # the old app process was stopped
        assert (Path(row.deploy_root) / "shared" / "started").read_text() == "--detach"


def test_the_manual_loop_stops_at_the_first_host_that_fails(stubbed) -> None:
    env = {**stubbed["env"], "FAIL_LOGIN": stubbed["rows"][1].login}
    done = subprocess.run(["bash", "-c", stubbed["script"]], env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode != 0
    calls = stubbed["log"].read_text()
    assert stubbed["rows"][2].login not in calls
    third = Path(stubbed["rows"][2].deploy_root) / "shared" / ".env"
    assert third.read_text() == ENV_TEXT
