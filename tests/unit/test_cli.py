"""Unit tests of the `opsbook` command line: parsing, -e values, exit codes,
`list`, the sandbox hook, and the progress/summary rendering."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import pytest

from opsbook import cli
from opsbook.exitcodes import EPILOG, ExitCode, OpsbookInputError, exit_code_for, worst_verdict
from opsbook.progress import Progress, render_summary, render_table
from opsbook.runner import RunResult


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A minimal project: ansible.cfg, a few playbooks, envs `dev` and `prod`."""
    root = tmp_path / "proj"
    (root / "playbooks").mkdir(parents=True)
    (root / "ansible.cfg").write_text("[defaults]\n")
    (root / "playbooks" / "deploy.yml").write_text("# Deploy a release\n- hosts: app\n")
    (root / "playbooks" / "backup.yml").write_text("# Back up the database\n---\n")
    (root / "playbooks" / "nodesc.yml").write_text("- hosts: all\n")
    (root / "playbooks" / "site.yml").write_text("# Everything\n")
    (root / "playbooks" / "_common.yml").write_text("# Shared\n")
    for env in ("dev", "prod"):
        (root / "inventories" / env).mkdir(parents=True)
    for var in ("OPSBOOK_INVENTORY_ROOT", "OPSBOOK_RUNS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPSBOOK_PROJECT_DIR", str(root))
    return root


# --- -e values -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-3", -3),
        ("0", 0),
        ("007", "007"),
        ("1.10", "1.10"),
        ("0.8", "0.8"),
        ("true", True),
        ("False", False),
        ("yes", "yes"),
        ("NO", "NO"),
        ("null", None),
        ("~", None),
        ("", ""),
        ("2024-01-01", "2024-01-01"),
        ("[1, 2, x]", [1, 2, "x"]),
        ("{a: 1, b: [true]}", {"a": 1, "b": [True]}),
        ('"3"', "3"),
        ("'007'", "007"),
        ("hello: world", "hello: world"),
        ("fix #123", "fix #123"),
        ("[unclosed", "[unclosed"),
    ],
)
def test_parse_value_types(text: str, expected: object) -> None:
    assert cli.parse_value(text) == expected


def test_parse_extra_var_forms(tmp_path: Path) -> None:
    assert cli.parse_extra_var("count=3") == {"count": 3}
    assert cli.parse_extra_var("dsn=postgresql://u:p@h/db?a=b") == {
        "dsn": "postgresql://u:p@h/db?a=b"
    }
    assert cli.parse_extra_var(" name =x") == {"name": "x"}
    assert cli.parse_extra_var('{"a": 1, "b": "two"}') == {"a": 1, "b": "two"}
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("release: '1.10'\nhosts: [a, b]\n")
    assert cli.parse_extra_var(f"@{vars_file}") == {"release": "1.10", "hosts": ["a", "b"]}
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert cli.parse_extra_var(f"@{empty}") == {}


def test_parse_extra_vars_later_wins(tmp_path: Path) -> None:
    vars_file = tmp_path / "v.yml"
    vars_file.write_text("a: 1\nb: 1\n")
    assert cli.parse_extra_vars(["a=0", f"@{vars_file}", "b=2"]) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("novalue", "expected key=value"),
        ("=3", "empty variable name"),
        ("  =3", "empty variable name"),
        ("@", "needs a file name"),
        ("@/nonexistent/vars.yml", "cannot read"),
        ("{a: [", "not a valid mapping"),
    ],
)
def test_parse_extra_var_errors(item: str, problem: str) -> None:
    with pytest.raises(OpsbookInputError) as info:
        cli.parse_extra_var(item)
    assert info.value.input_name == "-e"
    assert problem in info.value.problem


def test_parse_extra_var_file_errors(tmp_path: Path) -> None:
    listing = tmp_path / "list.yml"
    listing.write_text("- a\n- b\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [\n")
    for path, problem in (
        (listing, "must hold a mapping"),
        (bad, "not valid YAML"),
        (tmp_path, "cannot read"),
    ):
        with pytest.raises(OpsbookInputError, match=problem):
            cli.parse_extra_var(f"@{path}")


# --- argument parsing ----------------------------------------------------------------
def test_run_arguments() -> None:
    argv = "run deploy --env prod -e a=1 -e @f.yml --check --limit web* --reason hotfix"
    args = cli.build_parser().parse_args([*argv.split(), "--timeout", "2.5", "-vv"])
    assert (args.command, args.runbook, args.env) == ("run", "deploy", "prod")
    assert args.extra_vars == ["a=1", "@f.yml"]
    assert (args.check, args.limit, args.reason, args.timeout, args.verbose) == (
        True,
        "web*",
        "hotfix",
        2.5,
        2,
    )
    defaults = cli.build_parser().parse_args(["run", "deploy", "--env", "prod"])
    assert (defaults.check, defaults.limit, defaults.timeout, defaults.extra_vars) == (
        False,
        None,
        None,
        [],
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "deploy"], "--env"),
        (["run", "deploy", "--env", "x", "--timeout", "soon"], "--timeout"),
        (["run", "deploy", "--env", "x", "--timeout", "0"], "--timeout"),
        (["run", "deploy", "--env", "x", "--timeout", "nan"], "--timeout"),
        (["run", "deploy", "--env", "x", "--bogus"], "--bogus"),
        (["frobnicate"], "frobnicate"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and needle in err


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = capsys.readouterr().out
        for code in ExitCode:
            assert f"  {int(code)}  " in out
    assert "timeout or canceled" in EPILOG


def test_exit_code_mapping() -> None:
    assert [
        exit_code_for(s) for s in ("successful", "failed", "unreachable", "timeout", "canceled")
    ] == [
        0,
        1,
        3,
        4,
        4,
    ]
    assert exit_code_for("something-new") == ExitCode.FAILED
    assert int(ExitCode.BAD_INPUT) == 2


def test_a_published_warn_verdict_exits_5_only_when_the_run_succeeded() -> None:
    warn = {"health_check": {"verdict": "ok"}, "routine_checks": {"verdict": "warn"}}
    assert exit_code_for("successful", warn) == ExitCode.WARN == 5
    assert exit_code_for("successful", {"health_check": {"verdict": "ok"}}) == 0
    assert exit_code_for("successful", {"deploy": {"status": "succeeded"}, "x": "warn"}) == 0
    # a failure or an interruption wins over any verdict
    assert exit_code_for("failed", warn) == ExitCode.FAILED
    assert exit_code_for("timeout", warn) == ExitCode.TIMEOUT_OR_CANCELED
    assert worst_verdict({"a": {"verdict": "warn"}, "b": {"verdict": "fail"}}) == "fail"
    assert worst_verdict({"a": {"verdict": "maybe"}}) is None


# --- commands ------------------------------------------------------------------------
def test_bad_input_one_line_exit_2_nothing_created(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (
            ["run", "deploi", "--env", "dev"],
            "runbook: unknown runbook 'deploi'; did you mean 'deploy'?",
        ),
        (["run", "deploy", "--env", "stage"], "--env: unknown environment 'stage'"),
        (["run", "deploy", "--env", "dev", "-e", "x"], "-e: expected key=value"),
        (  # the operation log's operator under AWX: not anyone's to give
            ["run", "deploy", "--env", "dev", "-e", "awx_job_id=1", "-e", "awx_user_name=mallory"],
            "-e: 'awx_job_id' is reserved for AWX",
        ),
        (
            ["run", "deploy", "--env", "dev", "-e", '{"tower_user_name": "mallory"}'],
            "-e: 'tower_user_name' is reserved for AWX",
        ),
        (["run", "site", "--env", "dev"], "runbook: unknown runbook 'site'"),
        (
            ["run", "../etc/passwd", "--env", "dev"],
            "runbook: '../etc/passwd' is not a runbook name",
        ),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"opsbook: error: {message}")
        assert len(err.splitlines()) == 1
    assert cli.main(["run", "deploy", "--env", "x"]) == 2
    assert (
        capsys.readouterr()
        .err.rstrip()
        .endswith(f"known environments in {project / 'inventories'}: dev, prod")
    )
    assert not (project / ".opsbook").exists()


def test_list_prints_runbooks_with_descriptions(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "backup  Back up the database",
        "deploy  Deploy a release",
        "nodesc",
    ]


def test_sandbox_hook_missing_module(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opsbook.sandbox", None)  # import raises ModuleNotFoundError
    assert cli.main(["sandbox", "status"]) == 1
    assert "opsbook.sandbox is missing" in capsys.readouterr().err


def test_sandbox_hook_calls_module(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_main(action: str, project_dir: Path, purge: bool = False) -> int:
        calls.append((action, project_dir, purge))
        return 0

    fake = types.ModuleType("opsbook.sandbox")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "opsbook.sandbox", fake)
    assert cli.main(["sandbox", "up"]) == 0
    assert cli.main(["sandbox", "down", "--purge"]) == 0
    assert calls == [("up", project.resolve(), False), ("down", project.resolve(), True)]


# --- progress ------------------------------------------------------------------------
def _events() -> list[dict]:
    def host(event: str, host: str, **data: object) -> dict:
        return {"event": event, "event_data": {"host": host, "task": "Check", **data}}

    return [
        {"event": "playbook_on_play_start", "event_data": {"name": "Health"}},
        {
            "event": "playbook_on_task_start",
            "event_data": {"task": "Check", "is_conditional": False},
        },
        host("runner_on_start", "web1"),
        host("runner_on_start", "web2"),
        host("runner_on_start", "web3"),
        host("runner_on_start", "web4"),
        host("runner_on_start", "web5"),
        host("runner_on_ok", "web1", res={"changed": False}),
        host("runner_on_ok", "web2", res={"changed": True}),
        host("runner_on_failed", "web3", res={"msg": "boom\nsecond line with s3cr3t-value"}),
        host("runner_on_failed", "web4", res={"msg": "meh"}, ignore_errors=True),
        host("runner_on_unreachable", "web5", res={"msg": "no route"}),
        {"event": "verbose", "stdout": "\x1b[0;31m[ERROR]: something broke\x1b[0m"},
        {"event": "verbose", "stdout": "plain noise"},
    ]


def test_progress_plain_lines() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False, redact=lambda t: t.replace("s3cr3t-value", "********"))
    for event in _events():
        progress(event)
    assert progress.tick() is False
    progress.finish()
    assert out.getvalue().splitlines() == [
        "",
        "PLAY Health",
        "TASK Check",
        "  ok          web1",
        "  changed     web2",
        "  failed      web3: boom second line with ********",
        "  ignored     web4: meh",
        "  unreachable web5: no route",
        "[ERROR]: something broke",
    ]


def test_progress_tty_bar_and_colors() -> None:
    out = io.StringIO()
    now = [100.0]
    progress = Progress(out, tty=True, color=True, clock=lambda: now[0])
    for event in _events()[:8]:
        progress(event)
    now[0] = 112.0
    progress.tick()
    assert progress.bar_text() == "  [####----------------] 1/5 hosts done  12s  Check"
    text = out.getvalue()
    assert "\x1b[32mok         \x1b[0m web1" in text
    assert text.endswith("\r\x1b[K" + progress.bar_text())
    progress.finish()
    assert out.getvalue().endswith("\r\x1b[K")


def test_progress_plain_still_running_notice() -> None:
    out = io.StringIO()
    now = [0.0]
    progress = Progress(out, tty=False, clock=lambda: now[0])
    for event in _events()[:4]:
        progress(event)
    now[0] = 30.0
    progress.tick()
    assert "still running" not in out.getvalue()
    now[0] = 61.0
    progress.tick()
    assert "  ... still running: Check (61s, 0/2 hosts done)" in out.getvalue()


def _result(**overrides: object) -> RunResult:
    base = {
        "runbook": "health_check",
        "env": "local",
        "ident": "20250101T000000Z-abcdef",
        "status": "failed",
        "rc": 1,
        "stats": {
            "db": {"ok": 3, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 2},
            "web-long-name": {"ok": 1, "changed": 0, "failed": 1, "unreachable": 0, "skipped": 0},
        },
        "duration_s": 3.21,
        "outputs": {"verdict": "fail", "dsn": "postgresql://u:pw-1234@h/db"},
        "artifacts_dir": Path("/runs/x/artifacts/x"),
        "failures": [{"host": "web-long-name", "task": "Check", "msg": "HTTP 500"}],
    }
    return RunResult(**{**base, **overrides})  # type: ignore[arg-type]


def test_render_table() -> None:
    assert render_table(_result().stats).splitlines() == [
        "host          | ok | changed | failed | unreachable | skipped",
        "--------------+----+---------+--------+-------------+--------",
        "db            |  3 |       1 |      0 |           0 |       2",
        "web-long-name |  1 |       0 |      1 |           0 |       0",
    ]


def test_render_summary() -> None:
    from opsbook.secrets import Scrubber

    text = render_summary(_result(), redact=Scrubber().redact)
    assert "Outputs:\n  verdict: fail\n  dsn: postgresql://u:********@h/db" in text
    assert "Failures:\n  web-long-name | Check | HTTP 500" in text
    assert text.endswith(
        "Result: failed (exit 1) in 3.2s - run 20250101T000000Z-abcdef,"
        " artifacts in /runs/x/artifacts/x"
    )
    stopped = render_summary(
        _result(stats={}, status="timeout", rc=4, outputs={}, failures=[], check=True)
    )
    assert "(no host result)" in stopped and "Result: timeout (check mode) (exit 4)" in stopped


def test_render_summary_cuts_a_long_published_text_on_the_terminal_only() -> None:
    report = "\n".join(f"line {n}" for n in range(1, 41))
    result = _result(outputs={"incident": {"report": report, "severity": "P1"}})
    text = render_summary(result)
    assert "line 12\n" in text and "line 13" not in text
    assert "[... 28 more lines, not shown here]" in text and "severity: P1" in text
    assert result.outputs["incident"]["report"] == report  # the API keeps the whole text
    short = render_summary(_result(outputs={"x": {"report": "a\nb"}}))
    assert "report: |-\n      a\n      b" in short and "more lines" not in short


def test_progress_shows_what_a_debug_task_reports_redacted() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False, redact=lambda t: t.replace("s3cr3t-value", "********"))
    progress({"event": "playbook_on_task_start", "event_data": {"task": "Show the verdict"}})
    progress(
        {
            "event": "runner_on_ok",
            "event_data": {
                "host": "localhost",
                "task_action": "ansible.builtin.debug",
                "res": {"msg": ["Verdict: OK", "db postgresql://u:s3cr3t-value@h/db"]},
            },
        }
    )
    progress(
        {
            "event": "runner_on_ok",
            "event_data": {"host": "web1", "task_action": "ansible.builtin.command",
                           "res": {"msg": "not shown"}},
        }
    )
    assert out.getvalue().splitlines() == [
        "TASK Show the verdict",
        "  ok          localhost",
        "      Verdict: OK",
        "      db postgresql://u:********@h/db",
        "  ok          web1",
    ]


def test_summary_renders_multiline_outputs_as_blocks() -> None:
    result = RunResult(
        runbook="health_check", env="local", ident="x", status="successful", rc=0,
        stats={"h": {"ok": 1}}, duration_s=1.0, outputs={"r": {"summary": "line 1\nline 2"}},
        artifacts_dir=Path("/tmp"),
    )
    text = render_summary(result)
    assert "summary: |-\n      line 1\n      line 2" in text


def test_run_warns_about_undeclared_extra_vars_before_running(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opsbook import runner as rn

    inputs = project / "playbooks" / "vars" / "inputs"
    inputs.mkdir(parents=True)
    (inputs / "deploy.yml").write_text(
        "opsbook_inputs:\n  runbook: deploy\n  options:\n"
        "    deploy_batch: {type: count_or_percent, description: batch size}\n"
    )
    seen: list[rn.RunPlan] = []

    def execute(self: rn.RunbookRunner, plan: rn.RunPlan, **_kw: object) -> RunResult:
        seen.append(plan)
        return _result(status="successful", rc=0, failures=[])

    monkeypatch.setattr(rn.RunbookRunner, "execute", execute)
    assert cli.main(["run", "deploy", "--env", "dev", "-e", "deploy_btach=2"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "opsbook: warning: -e deploy_btach: deploy has no input of that name; "
        "did you mean deploy_batch?"
    )
    assert seen and seen[0].extravars == {"deploy_btach": 2}  # a warning, not a refusal
