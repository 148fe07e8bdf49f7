"""The runbooks' schedule (schedules.yml): its rules (module_utils/opsbook_schedules.py), cron
to AWX rrule, the crontab block `opsbook schedule` writes (src/opsbook/schedule.py) and the plan
playbooks/awx_setup.yml makes (library/schedule_plan.py). Pure functions; the crontab program
and the AWX stand-in are in tests/integration/test_schedule_*.py."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsbook import _schedules as sched
from opsbook import project as proj
from opsbook import schedule as cli_schedule
from tests.awx_standin import occurrences, rrule_problems
from tests.loaders import PROJECT_ROOT, load_library

RUNBOOKS = [r.name for r in proj.list_runbooks(PROJECT_ROOT)]
ENVS = proj.list_envs(PROJECT_ROOT / "inventories")


def entry(**fields: Any) -> dict[str, Any]:
    base = {
        "name": "nightly-backup",
        "runbook": "backup",
        "cron": "0 2 * * *",
        "envs": ["production"],
        "reason": "nightly backup",
        "timeout": 3600,
    }
    return {**base, **fields}


def problems_of(data: Any) -> list[str]:
    with pytest.raises(sched.ScheduleError) as caught:
        sched.check_schedules(data, runbooks=RUNBOOKS, envs=ENVS)
    return caught.value.problems


# ------------------------------------------------------------------------------- cron


@pytest.mark.parametrize(
    ("text", "field", "values"),
    [
        ("*/15 * * * *", "minutes", {0, 15, 30, 45}),
        ("0 9-17/4 * * *", "hours", {9, 13, 17}),
        ("0 0 1,15 * *", "days", {1, 15}),
        ("0 0 * jan-mar,DEC *", "months", {1, 2, 3, 12}),
        ("0 0 * * mon-fri", "weekdays", {1, 2, 3, 4, 5}),
        ("0 0 * * 7", "weekdays", {0}),  # 7 and 0 are both Sunday
        ("@weekly", "weekdays", {0}),
        ("@hourly", "minutes", {0}),
    ],
)
def test_cron_fields_read_as_cron_reads_them(text: str, field: str, values: set[int]) -> None:
    assert getattr(sched.parse_cron(text), field) == values


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0 2 * *", "has 4 fields, cron needs 5"),
        ("0 2 * * * *", "has 6 fields"),
        ("60 2 * * *", "minute: 60 is out of range 0-59"),
        ("0 24 * * *", "hour: 24 is out of range 0-23"),
        ("0 0 0 * *", "day of month: 0 is out of range 1-31"),
        ("0 0 * 13 *", "month: 13 is out of range 1-12"),
        ("0 0 * * 8", "day of week: 8 is out of range 0-7"),
        ("0 0 * * moon", "day of week: 'moon' is not a number 0-7 or a name (sun, mon"),
        ("0 0 * smarch *", "month: 'smarch' is not a number 1-12 or a name (jan"),
        ("*/0 * * * *", "minute: step '0' in '*/0' is not a whole number >= 1"),
        ("*/61 * * * *", "minute: step 61 in '*/61' is larger than 0-59"),
        ("5/10 * * * *", "minute: '5/10': a step needs * or a range before it"),
        ("0 20-4 * * *", "hour: range '20-4' runs backwards (20 > 4)"),
        ("0 1,,2 * * *", "hour: '' is not a value"),
        ("@reboot", "'@reboot' is not one of @yearly"),
        ("", "is not a cron expression"),
    ],
)
def test_bad_cron_expressions_are_refused_naming_the_field(text: str, problem: str) -> None:
    with pytest.raises(sched.ScheduleError) as caught:
        sched.parse_cron(text)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(sched.ScheduleError) as caught:
        sched.parse_cron("99 99 99 99 99")
    fields = [p.split(":")[0] for p in caught.value.problems]
    assert fields == ["minute", "hour", "day of month", "month", "day of week"]


# ------------------------------------------------------------------------------- rrule

# Each fires exactly when cron would: compared minute by minute over the window below.
EXPRESSIONS = [
    "0 2 * * *",
    "30 6 * * *",
    "0 3 * * sun",
    "0 7 * * mon",
    "0 4 1 1,4,7,10 *",
    "*/20 * * * *",
    "15 */6 * * *",
    "0 0 * jan-mar mon-fri",
    "0 12 */10 * *",
    "0 0 1-7 * */7",  # a day field starting with *: cron ANDs the day fields
    "@monthly",
]


def cron_fires(expr: sched.CronExpr, start: datetime, end: datetime) -> list[datetime]:
    """Every minute in [start, end) at which cron starts the job: each day cron's own rule
    (``CronExpr.matches``) accepts, at each of its hours and minutes."""
    found, day = [], start
    first = (min(expr.hours), min(expr.minutes))
    while day < end:
        if expr.matches(day.replace(hour=first[0], minute=first[1])):
            found += [
                day.replace(hour=h, minute=m)
                for h in sorted(expr.hours)
                for m in sorted(expr.minutes)
            ]
        day += timedelta(days=1)
    return [t for t in found if t < end]


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_the_rrule_fires_exactly_when_cron_does(text: str) -> None:
    expr = sched.parse_cron(text)
    rrule = sched.to_rrule(expr)
    assert rrule.startswith("DTSTART;TZID=UTC:20250101T000000 RRULE:FREQ=")
    assert rrule_problems(rrule) == []  # what AWX's serializer checks, and dateutil parses it
    start = datetime(2025, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=400)
    wanted = cron_fires(expr, start, end)
    got = [t for t in occurrences(rrule, len(wanted) + 1) if t < end]
    assert [t.astimezone(UTC) for t in got] == wanted
    assert wanted  # the window saw it fire


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("0 2 * * *", "FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=0"),
        ("0 3 * * sun", "FREQ=WEEKLY;INTERVAL=1;BYDAY=SU;BYHOUR=3;BYMINUTE=0"),
        (
            "0 4 1 1,4,7,10 *",
            "FREQ=MONTHLY;INTERVAL=1;BYMONTH=1,4,7,10;BYMONTHDAY=1;BYHOUR=4;BYMINUTE=0",
        ),
        ("*/15 * * * *", "FREQ=HOURLY;INTERVAL=1;BYMINUTE=0,15,30,45"),
        ("* * * * *", "FREQ=MINUTELY;INTERVAL=1"),
    ],
)
def test_rrules_read_like_awx_s_own(text: str, rule: str) -> None:
    assert (
        sched.to_rrule(sched.parse_cron(text)) == f"DTSTART;TZID=UTC:20250101T000000 RRULE:{rule}"
    )


def test_an_or_of_the_day_fields_is_refused_naming_the_expression() -> None:
    with pytest.raises(sched.ScheduleError) as caught:
        sched.to_rrule(sched.parse_cron("0 4 1 * mon"))
    assert "'0 4 1 * mon'" in caught.value.problems[0]
    assert "OR" in caught.value.problems[0] and "two entries" in caught.value.problems[0]


# ------------------------------------------------------------------------------- the file


def test_the_project_schedule_is_the_runbooks_one() -> None:
    """schedules.yml: nightly backup at 02:00, daily routine checks, weekly db_maintenance and
    secrets_report, quarterly restore_drill - every entry valid and expressible in AWX."""
    entries = sched.read_schedules(
        str(PROJECT_ROOT / "schedules.yml"), runbooks=RUNBOOKS, envs=ENVS
    )
    by_runbook = {e.runbook: e for e in entries}
    assert set(by_runbook) == {
        "backup",
        "routine_checks",
        "db_maintenance",
        "secrets_report",
        "restore_drill",
    }
    assert by_runbook["backup"].cron == "0 2 * * *"
    assert sched.parse_cron(by_runbook["routine_checks"].cron).days_either is False
    for weekly in ("db_maintenance", "secrets_report"):
        assert len(sched.parse_cron(by_runbook[weekly].cron).weekdays) == 1, weekly
    assert sched.parse_cron(by_runbook["restore_drill"].cron).months == {1, 4, 7, 10}
    for env in ("staging", "production"):
        plan = sched.awx_plan(entries, env)
        assert all(rrule_problems(s["rrule"]) == [] for s in plan["schedules"]), env


def test_a_bad_file_is_refused_with_every_problem_named() -> None:
    data = {
        "schedules": [
            entry(
                runbook="backupp",
                cron="0 25 * * *",
                envs=["production", "prod"],
                timeout=0,
                colour="blue",
                extra_vars={"db_password": "x", "9x": 1},
            ),
            entry(cron="0 2 * *", reason="two\nlines"),
            entry(name="Bad Name", runbook="no_such_runbook"),
            "not a mapping",
            {"name": "bare"},
        ],
        "timezone": "UTC",
    }
    problems = problems_of(data)
    expected = [
        "unknown key 'timezone' at the top",
        "schedules[0] (nightly-backup): unknown key 'colour'",
        "schedules[0] (nightly-backup): runbook: unknown runbook 'backupp', not a playbook in "
        "playbooks/; did you mean 'backup'?",
        "schedules[0] (nightly-backup): cron: hour: 25 is out of range 0-23",
        "schedules[0] (nightly-backup): envs: unknown environment 'prod' (known: local, "
        "production, staging)",
        "schedules[0] (nightly-backup): timeout: 0 is not a number of seconds",
        "schedules[0] (nightly-backup): extra_vars: db_password holds a secret",
        "schedules[0] (nightly-backup): extra_vars: '9x' is not a variable name",
        "schedules[1] (nightly-backup): cron: '0 2 * *' has 4 fields",
        "schedules[1] (nightly-backup): reason: one line",
        "schedules[1] (nightly-backup): name: duplicate, schedules[0] has it too",
        "schedules[2] (Bad Name): name: 'Bad Name' is not a name",
        "schedules[2] (Bad Name): runbook: unknown runbook 'no_such_runbook'",
        "schedules[3]: must be a mapping",
        "schedules[4] (bare): runbook: missing",
        "schedules[4] (bare): timeout: missing",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    error = sched.ScheduleError(problems, "schedules.yml")
    assert str(error).startswith(f"schedules.yml: {len(problems)} problems\n  - ")


def test_a_good_file_reads_as_entries() -> None:
    found = sched.check_schedules(
        {"schedules": [entry(cron="0  2 * * *", envs="staging", extra_vars={"a": [1]})]},
        runbooks=RUNBOOKS,
        envs=ENVS,
    )
    assert found == [
        sched.Schedule(
            "nightly-backup",
            "backup",
            "0 2 * * *",
            ("staging",),
            "nightly backup",
            3600,
            {"a": [1]},
        )
    ]
    assert sched.check_schedules(None) == []


def test_runbooks_are_what_opsbook_list_lists() -> None:
    names = sched.runbook_names(p.name for p in (PROJECT_ROOT / "playbooks").iterdir())
    assert names == sorted(RUNBOOKS)
    assert sched.runbook_names(["site.yml", "_x.yml", "a.yml", "vars"]) == ["a"]


# ------------------------------------------------------------------------------- crontab

PROJECT = Path("/srv/ops book")
EXE = Path("/srv/ops book/.venv/bin/opsbook")
LOG = Path("/var/log/opsbook/schedule-production.log")


def block(entries: list[sched.Schedule], env: str = "production") -> list[str]:
    return cli_schedule.render_block(entries, env, PROJECT, EXE, LOG, PROJECT / "schedules.yml")


def test_a_cron_line_runs_opsbook_run_with_the_entry_s_reason_timeout_and_vars() -> None:
    one = sched.Schedule(
        "weekly",
        "db_maintenance",
        "0 3 * * sun",
        ("production",),
        "50% of Bob's weekly",
        7200,
        {"db_maintenance_reindex_bloat_percent": 40},
    )
    line = cli_schedule.cron_line(one, "production", PROJECT, EXE, LOG)
    timing, command = line[: len("0 3 * * sun")], line[len("0 3 * * sun ") :]
    assert timing == "0 3 * * sun"
    assert "%" not in command.replace("\\%", "")  # cron would read a bare % as a newline
    argv = shlex.split(command.replace("\\%", "%"))
    assert argv[:3] == ["cd", str(PROJECT), "&&"]
    assert argv[3:13] == [
        str(EXE),
        "run",
        "db_maintenance",
        "--env",
        "production",
        "--reason",
        "50% of Bob's weekly",
        "--timeout",
        "7200",
        "-e",
    ]
    assert yaml.safe_load(argv[13]) == {"db_maintenance_reindex_bloat_percent": 40}
    assert argv[14:] == [f">>{LOG}", "2>&1"]
    too_long = sched.Schedule("x", "backup", "@daily", ("production",), "r", 1, {"v": "y" * 999})
    with pytest.raises(ValueError, match="cron reads 999"):
        cli_schedule.cron_line(too_long, "production", PROJECT, EXE, LOG)


def test_the_block_replaces_itself_in_place_and_leaves_the_rest() -> None:
    first = sched.Schedule("nightly-backup", "backup", "0 2 * * *", ("production",), "n", 60)
    second = sched.Schedule("weekly", "secrets_report", "@weekly", ("production",), "w", 60)
    foreign = "MAILTO=ops@example.com\n17 3 * * * /usr/bin/true\n"
    staging = block([first], env="staging")
    text = cli_schedule.with_block(foreign, staging, "staging", PROJECT)
    installed = cli_schedule.with_block(text, block([first]), "production", PROJECT)
    assert installed.startswith(foreign + "\n# BEGIN opsbook schedule env=staging")
    assert cli_schedule.with_block(installed, block([first]), "production", PROJECT) == installed
    changed = cli_schedule.with_block(
        installed + "@daily /bin/late\n", block([first, second]), "production", PROJECT
    )
    assert changed.endswith(
        "# END opsbook schedule env=production project=/srv/ops book\n@daily /bin/late\n"
    )
    split = cli_schedule.split_crontab(changed, "production", PROJECT)
    assert list(cli_schedule.installed_lines(split.block)) == ["nightly-backup", "weekly"]
    removed = cli_schedule.without_block(changed, "production", PROJECT)
    assert removed == text + "@daily /bin/late\n"
    assert cli_schedule.without_block(text, "staging", PROJECT) == foreign


def test_a_block_without_its_end_is_left_alone() -> None:
    begin, _end = cli_schedule.markers("production", PROJECT)
    with pytest.raises(ValueError, match="fix it by hand"):
        cli_schedule.split_crontab(f"{begin}\n0 2 * * * x\n", "production", PROJECT)


def test_drift_names_each_entry_s_state() -> None:
    states = cli_schedule.drift({"a": "1", "b": "2", "old": "3"}, {"a": "1", "b": "2b", "new": "4"})
    assert states == [("a", "in sync"), ("b", "changed"), ("new", "missing"), ("old", "stale")]


# ------------------------------------------------------------------------------- AWX plan


def test_the_awx_plan_names_templates_and_schedules_and_finds_the_stale_ones() -> None:
    entries = sched.check_schedules(
        {
            "schedules": [
                entry(),
                entry(
                    name="weekly-backup", cron="0 5 * * sat", extra_vars={"pg_backup_keep_last": 3}
                ),
                entry(name="drill", runbook="restore_drill", cron="0 4 1 1,4,7,10 *"),
                entry(name="staging-only", envs=["staging"]),
            ]
        },
        runbooks=RUNBOOKS,
    )
    mark = sched.owner_mark("production")
    existing = {
        "projects": [{"name": "opsbook"}],
        "inventories": [],
        "job_templates": [{"name": "opsbook-production-backup"}],
        "schedules": [
            {"name": "opsbook-production-nightly-backup", "description": f"x {mark}"},
            {"name": "opsbook-production-gone", "description": f"old {mark}"},
            {"name": "opsbook-production-by-hand", "description": "made by a person"},
            {
                "name": "opsbook-production-eu-gone",
                "description": sched.owner_mark("production-eu"),
            },
        ],
    }
    plan = sched.awx_plan(entries, "production", existing=existing)
    assert [t["name"] for t in plan["job_templates"]] == [
        "opsbook-production-backup",
        "opsbook-production-restore_drill",
    ]
    assert [t["exists"] for t in plan["job_templates"]] == [True, False]
    assert plan["job_templates"][1]["playbook"] == "playbooks/restore_drill.yml"
    assert (plan["project_exists"], plan["inventory_exists"]) == (True, False)
    schedules = {s["name"]: s for s in plan["schedules"]}
    assert list(schedules) == [
        "opsbook-production-nightly-backup",
        "opsbook-production-weekly-backup",
        "opsbook-production-drill",
    ]
    weekly = schedules["opsbook-production-weekly-backup"]
    assert weekly["job_template"] == "opsbook-production-backup"
    assert weekly["extra_data"] == {"opsbook_reason": "nightly backup", "pg_backup_keep_last": 3}
    assert weekly["description"].endswith(mark) and weekly["timeout"] == 3600
    assert schedules["opsbook-production-nightly-backup"]["exists"] is True
    assert plan["stale"] == ["opsbook-production-gone"]  # not a person's, not another env's
    assert plan["lines"][0] == (
        "opsbook-production-nightly-backup: 0 2 * * * UTC -> opsbook-production-backup"
    )


def test_the_plan_module_refuses_a_bad_file_naming_every_problem(tmp_path: Path) -> None:
    module = load_library("schedule_plan")
    bad = tmp_path / "schedules.yml"
    bad.write_text(yaml.safe_dump({"schedules": [entry(runbook="nope", cron="0 4 1 * 1")]}))
    params = {
        "path": str(bad),
        "env": "production",
        "playbooks_dir": str(PROJECT_ROOT / "playbooks"),
        "inventories_dir": str(PROJECT_ROOT / "inventories"),
        "prefix": "opsbook",
        "existing": {},
    }
    result = module.execute(params, check_mode=True)
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"].startswith(f"{bad}: schedules[0] (nightly-backup): runbook: unknown")
    assert result["msg"].endswith("Nothing was changed in AWX.")
    # a valid entry AWX cannot express (cron's OR of the day fields) is refused too, named
    bad.write_text(yaml.safe_dump({"schedules": [entry(cron="0 4 1 * 1")]}))
    result = module.execute(params, check_mode=False)
    assert result["failed"] is True
    assert (
        "nightly-backup: cron: '0 4 1 * 1': cron runs it on the days of the month OR"
        in (result["msg"])
    )
