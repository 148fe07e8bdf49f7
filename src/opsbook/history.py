"""``opsbook history``: the operation log read back, so that the team's operational memory is
generated, not typed.

    opsbook history [--env ENV] [--runbook NAME] [--status STATUS] [--operator NAME]
                    [--since WHEN] [--until WHEN] [--last N] [--json | --markdown]
                    [--oplog PATH]

The operation log is the one ``callback_plugins/opsbook_oplog.py`` appends a record to for
every run, whoever starts it: ``--oplog PATH``, else ``$OPSBOOK_OPLOG``, else the ``path`` of
``[callback_opsbook_oplog]`` in the project's ansible.cfg, else
``<project>/.opsbook/oplog.jsonl`` - where the callback writes it.

Output: a table (default); ``--json``, the matching records exactly as the log holds them, one
a line; ``--markdown``, the runbooks' Operation Logs Template filled in for each record
(Date/Time, Operation, Reason, Impact, Duration, Issues, Follow-up - the callback's
documentation maps the record's fields to them). A line that is not a record (a run killed
while writing, a hand edit) is skipped with one warning on stderr.

From Python: :func:`query` returns the matching records.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from opsbook import _notify
from opsbook import project as _project
from opsbook.exitcodes import ExitCode, OpsbookInputError

OPLOG_ENV = "OPSBOOK_OPLOG"
INI_SECTION = "callback_opsbook_oplog"
STATUSES = ("successful", "failed", "unreachable", "canceled", "timeout")
_RELATIVE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIME_FORMAT = "an ISO date or time (2025-11-19, 2025-11-19T14:30Z) or an age (30m, 24h, 7d)"
REASON_WIDTH = 32
FAILURE_WIDTH = 60


@dataclass(frozen=True)
class Entry:
    """One record of the log and its line as the log holds it."""

    record: dict[str, Any]
    line: str
    started: datetime


@dataclass
class Query:
    """What to select; every filter given must match (several values of one filter: any)."""

    env: list[str] = field(default_factory=list)
    runbook: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    operator: list[str] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    last: int | None = None

    def matches(self, entry: Entry) -> bool:
        record = entry.record
        return (
            _among(record.get("env"), self.env)
            and _among(record.get("playbook"), self.runbook)
            and _among(record.get("status"), self.status)
            and _among(record.get("operator"), self.operator)
            and (self.since is None or entry.started >= self.since)
            and (self.until is None or entry.started < self.until)
        )


def _among(value: Any, wanted: Sequence[str]) -> bool:
    return not wanted or str(value) in wanted


# --- the input ------------------------------------------------------------------------
def parse_time(text: str, option: str, now: datetime, end: bool = False) -> datetime:
    """``--since`` / ``--until``: an age (``30m``, ``24h``, ``7d``, ``2w``: that long before
    now), an ISO date (``2025-11-19``: its start in UTC - or, with ``end``, the start of the
    next day, so that ``--until`` a date includes it) or an ISO date and time (UTC when it
    names no offset)."""
    relative = _RELATIVE_RE.match(text)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise OpsbookInputError(option, f"expected {TIME_FORMAT}, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and _DATE_RE.match(value):
        moment += timedelta(days=1)
    return moment


def _values(items: Iterable[str] | str | None) -> list[str]:
    """Filter values: repeated options, or names separated by commas."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def build_query(
    env: Iterable[str] | str | None = None,
    runbook: Iterable[str] | str | None = None,
    status: Iterable[str] | str | None = None,
    operator: Iterable[str] | str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    last: int | str | None = None,
    now: datetime | None = None,
) -> Query:
    """A Query from the options' values; OpsbookInputError names the option that is wrong."""
    now = now or datetime.now(UTC)
    statuses = _values(status)
    unknown = [name for name in statuses if name not in STATUSES]
    if unknown:
        raise OpsbookInputError(
            "--status", f"unknown status {', '.join(unknown)} (one of: {', '.join(STATUSES)})"
        )
    found = Query(
        env=_values(env), runbook=_values(runbook), status=statuses, operator=_values(operator)
    )
    for option, value, end in (("--since", since, False), ("--until", until, True)):
        if isinstance(value, datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        elif value:
            moment = parse_time(str(value), option, now, end)
        else:
            continue
        setattr(found, option[2:], moment)
    if found.since and found.until and found.since >= found.until:
        raise OpsbookInputError(
            "--since", f"{since} is not before --until {until}: no run can match"
        )
    if last is not None:
        try:
            found.last = int(last)
        except (TypeError, ValueError):
            found.last = 0
        if found.last < 1:
            raise OpsbookInputError("--last", f"expected a number of runs >= 1, got {last!r}")
    return found


# --- the log --------------------------------------------------------------------------
def oplog_path(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    project: Path | None = None,
) -> Path:
    """Where the callback writes the operation log (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if environ.get(OPLOG_ENV):
        return Path(environ[OPLOG_ENV]).expanduser()
    root = project or _project.find_project_root(environ=environ)
    configured = _ini_path(Path(environ.get("ANSIBLE_CONFIG") or root / "ansible.cfg"))
    return configured or root / ".opsbook" / "oplog.jsonl"


def _ini_path(cfg: Path) -> Path | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(cfg, encoding="utf-8")
        value = parser.get(INI_SECTION, "path", fallback="").strip()
    except (OSError, configparser.Error):
        return None
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else cfg.parent / path


def _started(record: Mapping[str, Any]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(record["started"]))
    except (KeyError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_log(path: Path, warn: TextIO | None = None) -> list[Entry]:
    """The records of the log in the order of their start; a line that is not a record is
    skipped, and said once on ``warn`` (stderr)."""
    entries: list[Entry] = []
    skipped: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            started = _started(record) if isinstance(record, dict) else None
            if started is None:
                skipped.append(number)
                continue
            entries.append(Entry(record, text, started))
    if skipped and warn is not None:
        lines = ", ".join(str(n) for n in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        print(
            f"opsbook history: warning: skipped {len(skipped)} line(s) of {path} that are not"
            f" operation-log records (line {lines})",
            file=warn,
        )
    return sorted(entries, key=lambda entry: entry.started)


def select(entries: Iterable[Entry], query: Query) -> list[Entry]:
    """The entries the query matches, oldest first (``last``: only the newest ones)."""
    found = [entry for entry in entries if query.matches(entry)]
    return found[-query.last :] if query.last else found


def query(oplog: str | os.PathLike[str] | None = None, **filters: Any) -> list[dict[str, Any]]:
    """The operation log's records that match, oldest first - for Python callers::

        from opsbook import history
        history.query(env="production", runbook="deploy", since="7d")

    ``filters`` are :func:`build_query`'s (env, runbook, status, operator: a name or a list;
    since, until: as the options take them, or datetimes; last). Raises OpsbookInputError for
    a bad filter; a missing log is no record.
    """
    wanted = build_query(**filters)
    path = oplog_path(oplog)
    if not path.exists():
        return []
    return [entry.record for entry in select(read_log(path), wanted)]


# --- rendering ------------------------------------------------------------------------
def _when(moment: datetime, seconds: bool = False) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _cut(text: str, width: int) -> str:
    return _notify.one_line(text, width) if text else ""


def short_failure(record: Mapping[str, Any]) -> str:
    """The run's first failure (host: task: message), or the signal that stopped it."""
    failures = record.get("failures") or []
    if failures:
        first = failures[0]
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        return f"{first.get('host')}: {first.get('task')}: {first.get('msg')}{more}"
    if record.get("interrupted"):
        return f"stopped by {record['interrupted']}"
    return ""


def render_table(records: Sequence[Mapping[str, Any]]) -> str:
    """One line a run: started, runbook, env, status, duration, operator, reason, failure."""
    rows: list[tuple[str, ...]] = [
        ("STARTED (UTC)", "RUNBOOK", "ENV", "STATUS", "DURATION", "OPERATOR", "REASON", "FAILURE")
    ]
    for record in records:
        started = _started(record)
        status = str(record.get("status") or "?") + (" (check)" if record.get("check_mode") else "")
        rows.append(
            (
                _when(started) if started else "?",
                str(record.get("playbook") or "?"),
                str(record.get("env") or "-"),
                status,
                _notify.format_duration(record.get("duration_s")),
                str(record.get("operator") or "?"),
                _cut(str(record.get("reason") or ""), REASON_WIDTH),
                _cut(short_failure(record), FAILURE_WIDTH),
            )
        )
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def impact(record: Mapping[str, Any]) -> str:
    """What the run did to its hosts (Impact), from the per-host counts."""
    hosts: Mapping[str, Mapping[str, int]] = record.get("hosts") or {}
    if not hosts:
        if record.get("interrupted"):
            return f"not counted: stopped by {record['interrupted']} (see Issues)"
        return "no host"
    changed = "would change" if record.get("check_mode") else "changed"
    groups: dict[str, list[str]] = {"failed": [], "unreachable": [], changed: [], "unchanged": []}
    for host, counts in hosts.items():
        if counts.get("failed"):
            groups["failed"].append(host)
        elif counts.get("unreachable"):
            groups["unreachable"].append(host)
        elif counts.get("changed"):
            groups[changed].append(host)
        else:
            groups["unchanged"].append(host)
    parts = [f"{name} {', '.join(names)}" for name, names in groups.items() if names]
    check = "check mode, nothing changed - " if record.get("check_mode") else ""
    return f"{check}{len(hosts)} host(s): " + "; ".join(parts)


def issues(record: Mapping[str, Any]) -> list[str]:
    """What went wrong (Issues): the status, the signal, the failures, a verdict not ok."""
    lines: list[str] = []
    status = record.get("status")
    if status != "successful":
        lines.append(
            f"run {status}" + (f" ({record['interrupted']})" if record.get("interrupted") else "")
        )
    verdict = _notify.worst_verdict(record.get("outputs"))
    if verdict and verdict != "ok":
        lines.append(f"verdict {verdict}")
    lines += _notify.failure_lines(record.get("failures") or [])
    return lines or ["none"]


def follow_up(record: Mapping[str, Any]) -> list[str]:
    """What the run published (Follow-up): its summary lines and the reports it wrote."""
    outputs = record.get("outputs") or {}
    lines = _notify.summary_lines(outputs)
    for key, value in outputs.items():
        if isinstance(value, Mapping) and value.get("report_path"):
            lines.append(f"{key} report: {value['report_path']}")
    return lines or ["none"]


def operation(record: Mapping[str, Any]) -> str:
    """What was run (Operation): the runbook, where, how, by whom, the run's id."""
    text = str(record.get("playbook") or "?")
    if record.get("env"):
        text += f" on {record['env']}"
    how = [f"limit {record['limit']}"] if record.get("limit") else []
    if record.get("check_mode"):
        how.append("check mode")
    if how:
        text += f" ({', '.join(how)})"
    return f"{text} by {record.get('operator') or '?'}, run {record.get('id') or '?'}"


def template(record: Mapping[str, Any]) -> str:
    """One record as the runbooks' Operation Logs Template (a fenced block, as they have it)."""
    started = _started(record)
    try:
        finished = datetime.fromisoformat(str(record.get("finished")))
        until = f" - {_when(finished, seconds=True)[11:]} UTC"
    except ValueError:
        until = ""
    fields = [
        ("Date/Time", [(f"{_when(started, seconds=True)} UTC" if started else "?") + until]),
        ("Operation", [operation(record)]),
        ("Reason", [str(record.get("reason") or "(none given)")]),
        ("Impact", [impact(record)]),
        ("Duration", [_notify.format_duration(record.get("duration_s"))]),
        ("Issues", issues(record)),
        ("Follow-up", follow_up(record)),
    ]
    body = []
    for name, lines in fields:
        body.append(f"{name}: {_notify.one_line(lines[0], 1000)}")
        body += [f"  {_notify.one_line(line, 1000)}" for line in lines[1:]]
    return "\n".join(["```", *body, "```"])


def render_markdown(records: Sequence[Mapping[str, Any]], described: str = "") -> str:
    """The Operation Logs Template filled in for each record, oldest first."""
    out = ["# Operation log", ""]
    if not records:
        return "\n".join([*out, f"No runs recorded{described}.", ""])
    first, last = _started(records[0]), _started(records[-1])
    span = _when(first) if first else "?"
    if last and last != first:
        span += f" to {_when(last)}"
    runs = f"{len(records)} run" + ("s" if len(records) > 1 else "")
    out += [f"{runs}{described}, {span} UTC.", ""]
    for record in records:
        started = _started(record)
        heading = f"## {_when(started) + ' UTC' if started else '?'}: {record.get('playbook')}"
        if record.get("env"):
            heading += f" on {record['env']}"
        out += [f"{heading} ({record.get('status')})", "", template(record), ""]
    return "\n".join(out)


# --- the command ----------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``opsbook history``, on the subparsers of the ``opsbook`` command."""
    parser = subparsers.add_parser(
        "history",
        help="the operation log: the runs recorded, filtered; a table, JSON lines or markdown",
        description="Read the operation log (every run, whoever started it): filter the runs, "
        "print them as a table, as JSON lines (--json) or as the runbooks' Operation Logs "
        "Template (--markdown).",
    )
    filters = parser.add_argument_group("filters (repeat an option, or separate values by commas)")
    filters.add_argument("--env", action="append", metavar="ENV", help="environment")
    filters.add_argument("--runbook", action="append", metavar="NAME", help="runbook")
    filters.add_argument(
        "--status", "--result", dest="status", action="append", metavar="STATUS",
        help=f"how the run ended: {', '.join(STATUSES)}",
    )  # fmt: skip
    filters.add_argument("--operator", action="append", metavar="NAME", help="who ran it")
    filters.add_argument(
        "--since", metavar="WHEN", help=f"runs started at or after WHEN: {TIME_FORMAT}"
    )
    filters.add_argument(
        "--until", metavar="WHEN", help="runs started before WHEN (a date: that day included)"
    )
    filters.add_argument("--last", metavar="N", help="only the N most recent of the runs matched")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument(
        "--json", action="store_true", help="the records as the log holds them, one a line"
    )
    formats.add_argument(
        "--markdown", action="store_true", help="the runbooks' Operation Logs Template, filled in"
    )
    parser.add_argument(
        "--oplog",
        metavar="PATH",
        help=f"the log to read (default ${OPLOG_ENV}, else <project>/.opsbook/oplog.jsonl)",
    )
    parser.set_defaults(handler=main)
    return parser


def _described(args: argparse.Namespace) -> str:
    given = [
        f"{name}={','.join(_values(getattr(args, name)))}"
        for name in ("runbook", "env", "status", "operator")
        if getattr(args, name)
    ]
    given += [
        f"{name} {getattr(args, name)}"
        for name in ("since", "until", "last")
        if getattr(args, name)
    ]
    return f" ({'; '.join(given)})" if given else ""


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``opsbook history``; 0, or BAD_INPUT (an OpsbookInputError) for a bad option."""
    out = out or sys.stdout
    wanted = build_query(
        args.env, args.runbook, args.status, args.operator, args.since, args.until, args.last
    )
    path = oplog_path(args.oplog)
    if not path.exists():
        if args.oplog:
            raise OpsbookInputError("--oplog", f"{path} does not exist")
        print(f"opsbook history: no operation log at {path}: no run recorded yet", file=sys.stderr)
        return ExitCode.SUCCESS
    try:
        entries = select(read_log(path, warn=sys.stderr), wanted)
    except OSError as exc:
        raise OpsbookInputError("--oplog", f"cannot read {path}: {exc.strerror or exc}") from exc
    records = [entry.record for entry in entries]
    if args.json:
        for entry in entries:
            print(entry.line, file=out)
    elif args.markdown:
        print(render_markdown(records, _described(args)), file=out)
    elif records:
        print(render_table(records), file=out)
    else:
        print(f"no run in {path} matches", file=out)
    return ExitCode.SUCCESS
