# Copyright: opsbook contributors
# Apache-2.0
"""The runbooks' schedule (``schedules.yml``): read, checked, and said as cron and as AWX.

One file in the repository says when each runbook runs, in which environments, why, for how
long at most and with which extra variables. Two installers read it:

* ``opsbook schedule install|list|remove --env ENV`` (``src/opsbook/schedule.py``, in the
  ``opsbook`` process, where this file is ``opsbook._schedules``: a symlink, so that a built
  wheel carries a copy) writes the crontab lines that call ``opsbook run``;
* ``playbooks/awx_setup.yml`` (the ``schedule_plan`` module, where this file is
  ``opsbook_schedules`` of the collection's module_utils) creates the AWX job templates and
  schedules, each cron expression turned into the rrule AWX takes.

The rules live here only: what an entry may hold, what a cron expression may say (Debian's
cron, ``man 5 crontab``: five fields, ranges, steps, lists, month and day names, the ``@daily``
family), and how one becomes an rrule. Every problem of a file is listed at once, naming the
entry, the field and what is wrong; nothing is installed from a file with a problem.

Standard library only (PyYAML for reading the file, imported when a file is read), no Ansible.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

try:  # in a module: Ansible ships the project's module_utils beside this file
    from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_secret_names import (
        is_secret_name,
    )
except ImportError:  # in the opsbook package (opsbook._schedules)
    from opsbook._secret_names import is_secret_name

#: where the schedule lives, relative to the project root
SCHEDULES_FILE = "schedules.yml"

#: the keys of the file, of an entry, and the ones an entry must have
FILE_KEYS = ("schedules",)
ENTRY_KEYS = ("name", "runbook", "cron", "envs", "reason", "timeout", "extra_vars")
REQUIRED_KEYS = ("name", "runbook", "cron", "envs", "reason", "timeout")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: a runbook's longest run (a week): a timeout is a bound, not a way of saying "never"
MAX_TIMEOUT = 7 * 24 * 3600
MAX_REASON = 200
#: Debian's cron reads at most this many characters of a command (MAX_COMMAND)
MAX_CRON_COMMAND = 999
#: not runbooks even though they are playbooks (as ``opsbook list`` reads playbooks/)
NOT_RUNBOOKS = frozenset({"site"})

# --------------------------------------------------------------------------- cron

#: (name, lowest, highest) of the five fields, in order
CRON_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH_NAMES = {month: number for number, month in enumerate(_MONTHS, start=1)}
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
DAY_NAMES = {day: number for number, day in enumerate(_DAYS)}
_NAMES: tuple[dict[str, int], ...] = ({}, {}, {}, MONTH_NAMES, DAY_NAMES)
#: the @-forms cron knows that are schedules (``@reboot`` is not one)
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_ITEM_RE = re.compile(r"^(?P<range>\*|[^-/]+(?:-[^-/]+)?)(?:/(?P<step>[^/]*))?$")


class ScheduleError(ValueError):
    """A schedule file, entry or cron expression that cannot be used; ``problems`` lists
    every reason, each naming what it is about."""

    def __init__(self, problems: Iterable[str], source: str = SCHEDULES_FILE) -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        head = f"{source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


@dataclass(frozen=True)
class CronExpr:
    """A checked cron expression: the set of values each field allows.

    ``dom_star`` / ``dow_star``: the day-of-month / day-of-week field starts with ``*``. cron
    runs a job on a day when both day fields match if either starts with ``*``, and when
    either matches otherwise (``0 4 1 * 1``: the 1st of the month, and every Monday).
    """

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 is read as 0)
    dom_star: bool
    dow_star: bool

    @property
    def days_either(self) -> bool:
        """True when cron reads the two day fields with OR (neither starts with ``*``)."""
        return not (self.dom_star or self.dow_star)

    def matches(self, when: datetime) -> bool:
        """Whether cron starts the job at minute ``when`` (cron's own rule, for the tests)."""
        if when.minute not in self.minutes or when.hour not in self.hours:
            return False
        if when.month not in self.months:
            return False
        in_dom = when.day in self.days
        in_dow = (when.isoweekday() % 7) in self.weekdays
        return (in_dom or in_dow) if self.days_either else (in_dom and in_dow)


def _value(text: str, index: int) -> int:
    _name, low, high = CRON_FIELDS[index]
    lowered = text.lower()
    if lowered in _NAMES[index]:
        return _NAMES[index][lowered]
    if not text.isdigit():
        names = ", ".join(_NAMES[index]) if _NAMES[index] else ""
        known = f"a number {low}-{high}" + (f" or a name ({names})" if names else "")
        raise ValueError(f"{text!r} is not {known}")
    number = int(text)
    if not low <= number <= high:
        raise ValueError(f"{number} is out of range {low}-{high}")
    return number


def _field_values(text: str, index: int) -> set[int]:
    """The values one field allows; ValueError naming what is wrong."""
    _name, low, high = CRON_FIELDS[index]
    values: set[int] = set()
    if not text:
        raise ValueError("is empty")
    for item in text.split(","):
        match = _ITEM_RE.match(item)
        if not match:
            raise ValueError(f"{item!r} is not a value, a range a-b, * or a step (*/n, a-b/n)")
        span, step_text = match.group("range"), match.group("step")
        if span == "*":
            first, last = low, high if index != 4 else 6
        elif "-" in span:
            first_text, last_text = span.split("-", 1)
            first, last = _value(first_text, index), _value(last_text, index)
            if first > last:
                raise ValueError(f"range {span!r} runs backwards ({first} > {last})")
        else:
            if step_text is not None:
                raise ValueError(f"{item!r}: a step needs * or a range before it (*/n, a-b/n)")
            first = last = _value(span, index)
        step = 1
        if step_text is not None:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"step {step_text!r} in {item!r} is not a whole number >= 1")
            step = int(step_text)
            if step > high - low + 1:
                raise ValueError(f"step {step} in {item!r} is larger than {low}-{high}")
        values.update(range(first, last + 1, step))
    if index == 4 and 7 in values:  # 7 and 0 are both Sunday
        values.discard(7)
        values.add(0)
    return values


def parse_cron(text: Any) -> CronExpr:
    """A cron expression (five fields, or an @-form such as ``@daily``), checked.

    Raises ScheduleError listing each field that is wrong, named (``hour: 25 is out of range
    0-23``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError([f"{text!r} is not a cron expression (m h dom mon dow)"])
    expression = " ".join(text.split())
    if expression.startswith("@"):
        if expression.lower() not in CRON_MACROS:
            known = ", ".join(CRON_MACROS)
            raise ScheduleError([f"{expression!r} is not one of {known}"])
        fields = CRON_MACROS[expression.lower()].split()
    else:
        fields = expression.split()
        if len(fields) != 5:
            raise ScheduleError(
                [f"{expression!r} has {len(fields)} fields, cron needs 5 (m h dom mon dow)"]
            )
    problems: list[str] = []
    sets: list[frozenset[int]] = []
    for index, part in enumerate(fields):
        try:
            sets.append(frozenset(_field_values(part, index)))
        except ValueError as exc:
            problems.append(f"{CRON_FIELDS[index][0]}: {exc}")
    if problems:
        raise ScheduleError(problems)
    return CronExpr(
        expression, *sets, dom_star=fields[2].startswith("*"), dow_star=fields[4].startswith("*")
    )


# --------------------------------------------------------------------------- rrule

#: the DTSTART of every rrule: fixed, so that a second run sends the very same rule
RRULE_START = "20250101T000000"
_RRULE_DAYS = ("SU", "MO", "TU", "WE", "TH", "FR", "SA")


def _numbers(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def to_rrule(expr: CronExpr, tzid: str = "UTC", start: str = RRULE_START) -> str:
    """The rrule (RFC 5545, as AWX schedules take it) that fires exactly when cron would.

    ``DTSTART;TZID=UTC:20250101T000000 RRULE:FREQ=WEEKLY;INTERVAL=1;BYDAY=SU;BYHOUR=3;
    BYMINUTE=0`` for ``0 3 * * 0``. The frequency is the coarsest the expression allows
    (minutely, hourly, daily, weekly on days of the week, monthly on days of the month); each
    restricted field becomes its BY part, steps and ranges written out. One rrule cannot say
    cron's OR of the two day fields (``0 4 1 * 1``: the 1st, and every Monday): that is refused
    (ScheduleError), naming the expression - write it as two entries.
    """
    full = {name: set(range(low, high + 1)) for name, low, high in CRON_FIELDS}
    full["day of week"] = set(range(7))
    restricted_days = expr.days != full["day of month"]
    restricted_weekdays = expr.weekdays != full["day of week"]
    if expr.days_either and restricted_days and restricted_weekdays:
        raise ScheduleError(
            [
                f"{expr.text!r}: cron runs it on the days of the month OR the days of the week; "
                "one AWX rrule cannot say OR - write it as two entries"
            ]
        )
    if expr.minutes == full["minute"] and expr.hours == full["hour"]:
        freq = "MINUTELY"
    elif expr.hours == full["hour"]:
        freq = "HOURLY"
    elif restricted_days:
        freq = "MONTHLY"
    elif restricted_weekdays:
        freq = "WEEKLY"
    else:
        freq = "DAILY"
    parts = [f"FREQ={freq}", "INTERVAL=1"]
    if expr.months != full["month"]:
        parts.append(f"BYMONTH={_numbers(expr.months)}")
    if restricted_days:
        parts.append(f"BYMONTHDAY={_numbers(expr.days)}")
    if restricted_weekdays:
        parts.append("BYDAY=" + ",".join(_RRULE_DAYS[d] for d in sorted(expr.weekdays)))
    if expr.hours != full["hour"]:
        parts.append(f"BYHOUR={_numbers(expr.hours)}")
    if freq != "MINUTELY" or expr.minutes != full["minute"]:
        parts.append(f"BYMINUTE={_numbers(expr.minutes)}")
    return f"DTSTART;TZID={tzid}:{start} RRULE:" + ";".join(parts)


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Schedule:
    """One checked entry of the file."""

    name: str
    runbook: str
    cron: str
    envs: tuple[str, ...]
    reason: str
    timeout: int
    extra_vars: dict[str, Any] = field(default_factory=dict)

    def applies_to(self, env: str) -> bool:
        return env in self.envs

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runbook": self.runbook,
            "cron": self.cron,
            "envs": list(self.envs),
            "reason": self.reason,
            "timeout": self.timeout,
            "extra_vars": dict(self.extra_vars),
        }


def runbook_names(playbook_files: Iterable[str]) -> list[str]:
    """The runbooks among the file names of ``playbooks/`` (as ``opsbook list`` counts them:
    ``*.yml``, not ``site.yml``, not starting with ``_``)."""
    names = []
    for file_name in playbook_files:
        if file_name.endswith(".yml") and not file_name.startswith("_"):
            stem = file_name[: -len(".yml")]
            if stem not in NOT_RUNBOOKS:
                names.append(stem)
    return sorted(names)


def _entry_label(index: int, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, Mapping) else None
    if isinstance(name, str) and name:
        return f"schedules[{index}] ({name})"
    return f"schedules[{index}]"


def _json_value_problem(value: Any, path: str) -> str | None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"{path}: {exc}"
    return None


def _extra_vars_problems(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [f"extra_vars: must be a mapping of variable: value, got {type(value).__name__}"]
    problems = []
    for key, item in value.items():
        if not isinstance(key, str) or not VAR_RE.match(key):
            problems.append(f"extra_vars: {key!r} is not a variable name")
        elif key == "opsbook_reason":
            problems.append("extra_vars: opsbook_reason is the entry's reason, set reason instead")
        elif is_secret_name(key):
            problems.append(
                f"extra_vars: {key} holds a secret; schedules.yml, the crontab and AWX's "
                "job templates are no place for one (keep it in the inventory's vault)"
            )
        else:
            problem = _json_value_problem(item, f"extra_vars.{key}")
            if problem:
                problems.append(problem)
    return problems


def _entry_problems(
    entry: Mapping[str, Any],
    runbooks: set[str] | None,
    envs: set[str] | None,
) -> list[str]:
    problems = [
        f"unknown key {key!r} (known: {', '.join(ENTRY_KEYS)})"
        for key in entry
        if key not in ENTRY_KEYS
    ]
    problems += [f"{key}: missing" for key in REQUIRED_KEYS if key not in entry]
    name = entry.get("name")
    if "name" in entry and not (isinstance(name, str) and NAME_RE.match(name)):
        problems.append(f"name: {name!r} is not a name (a-z, 0-9, - and _, up to 63)")
    runbook = entry.get("runbook")
    if "runbook" in entry:
        if not isinstance(runbook, str) or not runbook:
            problems.append(f"runbook: {runbook!r} is not a runbook name")
        elif runbooks is not None and runbook not in runbooks:
            close = difflib.get_close_matches(runbook, sorted(runbooks), n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else ("known: " + (", ".join(sorted(runbooks)) or "(none)"))
            )
            problems.append(
                f"runbook: unknown runbook {runbook!r}, not a playbook in playbooks/; {hint}"
            )
    if "cron" in entry:
        try:
            parse_cron(entry["cron"])
        except ScheduleError as exc:
            problems += [f"cron: {p}" for p in exc.problems]
    entry_envs = entry.get("envs")
    if "envs" in entry:
        if isinstance(entry_envs, str):
            entry_envs = [entry_envs]
        if not isinstance(entry_envs, list) or not entry_envs:
            problems.append(f"envs: must be a list of environments, got {entry_envs!r}")
        else:
            for env in entry_envs:
                if not isinstance(env, str) or not ENV_RE.match(env):
                    problems.append(f"envs: {env!r} is not an environment name")
                elif envs is not None and env not in envs:
                    known = ", ".join(sorted(envs)) or "(none)"
                    problems.append(f"envs: unknown environment {env!r} (known: {known})")
            if len(set(map(str, entry_envs))) != len(entry_envs):
                problems.append(f"envs: {entry_envs!r} names an environment twice")
    reason = entry.get("reason")
    if "reason" in entry:
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"reason: {reason!r} is not a reason (one line of text)")
        elif "\n" in reason.strip() or len(reason) > MAX_REASON:
            problems.append(f"reason: one line of at most {MAX_REASON} characters")
    timeout = entry.get("timeout")
    if "timeout" in entry and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT
    ):
        problems.append(
            f"timeout: {timeout!r} is not a number of seconds between 1 and {MAX_TIMEOUT}"
        )
    return problems + _extra_vars_problems(entry.get("extra_vars"))


def check_schedules(
    data: Any,
    runbooks: Iterable[str] | None = None,
    envs: Iterable[str] | None = None,
    source: str = SCHEDULES_FILE,
) -> list[Schedule]:
    """The entries of a parsed schedule file, checked; ScheduleError listing every problem.

    ``runbooks``: the runbooks an entry may name (``runbook_names(os.listdir(playbooks))``);
    ``envs``: the environments it may name (the inventories); None checks only the form.
    """
    known_runbooks = None if runbooks is None else set(runbooks)
    known_envs = None if envs is None else set(envs)
    if data is None:
        data = {"schedules": []}
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise ScheduleError([f"must hold a mapping with the key 'schedules', got {kind}"], source)
    problems = [
        f"unknown key {key!r} at the top (known: {', '.join(FILE_KEYS)})"
        for key in data
        if key not in FILE_KEYS
    ]
    entries = data.get("schedules")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise ScheduleError([*problems, "schedules: must be a list of entries"], source)
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = _entry_label(index, entry)
        if not isinstance(entry, Mapping):
            problems.append(f"{label}: must be a mapping (name, runbook, cron, ...)")
            continue
        problems += [f"{label}: {p}" for p in _entry_problems(entry, known_runbooks, known_envs)]
        name = entry.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(f"{label}: name: duplicate, schedules[{seen[name]}] has it too")
            else:
                seen[name] = index
    if problems:
        raise ScheduleError(problems, source)
    return [
        Schedule(
            name=entry["name"],
            runbook=entry["runbook"],
            cron=" ".join(entry["cron"].split()),
            envs=tuple([entry["envs"]] if isinstance(entry["envs"], str) else entry["envs"]),
            reason=entry["reason"].strip(),
            timeout=entry["timeout"],
            extra_vars=dict(entry.get("extra_vars") or {}),
        )
        for entry in entries
    ]


def read_schedules(
    path: str,
    runbooks: Iterable[str] | None = None,
    envs: Iterable[str] | None = None,
) -> list[Schedule]:
    """The checked entries of the schedule file at ``path``; ScheduleError when it cannot be
    read or has problems (all of them listed)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ScheduleError([f"cannot read it: {exc.strerror or exc}"], path) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ScheduleError([f"not valid YAML: {' '.join(str(exc).split())}"], path) from exc
    return check_schedules(data, runbooks, envs, source=path)


# --------------------------------------------------------------------------- AWX


def _name_of(item: Any) -> str:
    return item if isinstance(item, str) else str((item or {}).get("name", ""))


def owner_mark(env: str) -> str:
    """The end of the description of every schedule made for ``env``: what marks it as
    opsbook's, so that a later run may remove it once the file no longer holds it."""
    return f"[opsbook schedule env={env}]"


def awx_plan(
    schedules: Iterable[Schedule],
    env: str,
    prefix: str = "opsbook",
    existing: Mapping[str, Any] | None = None,
    tzid: str = "UTC",
) -> dict[str, Any]:
    """What AWX holds for ``env``: one job template per runbook scheduled there, one schedule
    per entry, each with its rrule (ScheduleError naming every expression one rrule cannot
    say), and the schedules opsbook made before that the file no longer holds (``stale``).

    Names: project ``<prefix>``, inventory ``<prefix>-<env>``, job template
    ``<prefix>-<env>-<runbook>``, schedule ``<prefix>-<env>-<entry>``. A schedule passes the
    entry's reason as ``opsbook_reason`` with its extra vars, and its timeout (the job
    template prompts for both on launch); its description ends with ``owner_mark(env)``.

    ``existing``: what AWX holds already - ``projects``, ``inventories`` and ``job_templates``
    (names), ``schedules`` (objects with ``name`` and ``description``) - to say what exists
    (a dry run cannot make a job template of a project that does not exist yet) and what is
    stale: a schedule named ``<prefix>-<env>-...`` whose description ends with the mark.
    """
    existing = existing or {}
    have = {
        kind: {_name_of(item) for item in existing.get(kind) or []}
        for kind in ("projects", "inventories", "job_templates", "schedules")
    }
    mark = owner_mark(env)
    templates: dict[str, dict[str, Any]] = {}
    planned: list[dict[str, Any]] = []
    problems: list[str] = []
    for entry in schedules:
        if not entry.applies_to(env):
            continue
        try:
            rrule = to_rrule(parse_cron(entry.cron), tzid=tzid)
        except ScheduleError as exc:
            problems += [f"{entry.name}: cron: {p}" for p in exc.problems]
            continue
        template = f"{prefix}-{env}-{entry.runbook}"
        templates.setdefault(
            template,
            {
                "name": template,
                "runbook": entry.runbook,
                "playbook": f"playbooks/{entry.runbook}.yml",
                "description": f"opsbook runbook {entry.runbook} on {env} "
                "(made by playbooks/awx_setup.yml from schedules.yml)",
                "exists": template in have["job_templates"],
            },
        )
        name = f"{prefix}-{env}-{entry.name}"
        planned.append(
            {
                "name": name,
                "entry": entry.name,
                "job_template": template,
                "cron": entry.cron,
                "rrule": rrule,
                "timeout": entry.timeout,
                "extra_data": {"opsbook_reason": entry.reason, **entry.extra_vars},
                "description": f"{entry.reason}; cron {entry.cron} {tzid}, from schedules.yml "
                f"{mark}",
                "exists": name in have["schedules"],
                "job_template_exists": template in have["job_templates"],
            }
        )
    if problems:
        raise ScheduleError(problems)
    wanted = {s["name"] for s in planned}
    stale = sorted(
        item["name"]
        for item in existing.get("schedules") or []
        if isinstance(item, Mapping)
        and str(item.get("name", "")).startswith(f"{prefix}-{env}-")
        and str(item.get("description", "")).endswith(mark)
        and item["name"] not in wanted
    )
    return {
        "env": env,
        "project": prefix,
        "project_exists": prefix in have["projects"],
        "inventory": f"{prefix}-{env}",
        "inventory_exists": f"{prefix}-{env}" in have["inventories"],
        "job_templates": sorted(templates.values(), key=lambda t: t["name"]),
        "schedules": planned,
        "stale": stale,
        "lines": [f"{s['name']}: {s['cron']} {tzid} -> {s['job_template']}" for s in planned],
    }
