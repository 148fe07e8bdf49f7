"""``opsbook schedule``: the runbooks' schedule (``schedules.yml``) in a crontab.

    opsbook schedule install --env ENV [--user USER] [--dry-run] [--file FILE]
                             [--log-dir DIR] [--vault-password-file FILE]
    opsbook schedule list    --env ENV [--user USER] [--file FILE] [--log-dir DIR]
    opsbook schedule remove  --env ENV [--user USER] [--dry-run]

``install`` writes one block of crontab lines per environment (and project), between
``# BEGIN opsbook schedule env=ENV project=DIR`` and its ``# END`` line: for each entry of the
file that applies to ENV, a comment naming the entry and the line that runs
``<project>/.venv/bin/opsbook run RUNBOOK --env ENV --reason ... --timeout ...`` from the
project, its output appended to ``<log-dir>/schedule-ENV.log``. Every other line of the crontab
is left as it is; the block is replaced where it stands. Installing twice leaves the crontab as
the first install made it (nothing is written when nothing changes). ``list`` compares the
block with the file (``in sync``, ``missing``, ``changed``, ``stale``; exit 1 when they differ);
``remove`` takes the block out, and only it.

The file is checked first, by the rules ``playbooks/awx_setup.yml`` uses too
(``module_utils/opsbook_schedules.py``, here ``opsbook._schedules``): a file with any problem
(unknown runbook, bad cron expression, duplicate name, unknown key...) is refused with every
problem named, exit 2, and the crontab is not touched.

The crontab is read and written with the system's ``crontab`` program (Debian's ``cron``):
``--user`` is ``crontab -u`` (root managing the crontab of the account that runs opsbook).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsbook import project as _project
from opsbook._schedules import (
    ENV_RE,
    MAX_CRON_COMMAND,
    SCHEDULES_FILE,
    Schedule,
    ScheduleError,
    parse_cron,
    read_schedules,
)
from opsbook.exitcodes import ExitCode, OpsbookInputError

MARK = "opsbook schedule"
ENTRY_COMMENT = "# schedule: "
CRONTAB = "crontab"

# --------------------------------------------------------------------------- the block


def markers(env: str, project: Path) -> tuple[str, str]:
    """The first and last line of the block of ``env`` of this project."""
    where = f"{MARK} env={env} project={project}"
    return f"# BEGIN {where}", f"# END {where}"


def _cron_escape(command: str) -> str:
    """cron reads an unescaped ``%`` as a newline: each becomes ``\\%`` (cron passes ``%``)."""
    return command.replace("%", "\\%")


def cron_line(
    entry: Schedule,
    env: str,
    project: Path,
    executable: Path,
    log_file: Path,
    vault_password_file: Path | None = None,
) -> str:
    """The crontab line of one entry: ``<cron> cd <project> && <opsbook> run ... >><log> 2>&1``.

    ValueError when the command is longer than cron reads (a very long reason or extra vars).
    """
    argv = [str(executable), "run", entry.runbook, "--env", env]
    argv += ["--reason", entry.reason, "--timeout", str(entry.timeout)]
    if vault_password_file is not None:
        argv += ["--vault-password-file", str(vault_password_file)]
    if entry.extra_vars:
        argv += ["-e", json.dumps(entry.extra_vars, sort_keys=True, separators=(",", ":"))]
    command = (
        f"cd {shlex.quote(str(project))} && {shlex.join(argv)} >>{shlex.quote(str(log_file))} 2>&1"
    )
    command = _cron_escape(command)
    if len(command) > MAX_CRON_COMMAND:
        raise ValueError(
            f"{entry.name}: its crontab command is {len(command)} characters, cron reads "
            f"{MAX_CRON_COMMAND}: shorten its reason or extra_vars"
        )
    return f"{parse_cron(entry.cron).text} {command}"


def render_block(
    entries: Iterable[Schedule],
    env: str,
    project: Path,
    executable: Path,
    log_file: Path,
    source: Path,
    vault_password_file: Path | None = None,
) -> list[str]:
    """The lines of the block of ``env``: markers, a note, and per entry a comment naming it
    and its cron line."""
    begin, end = markers(env, project)
    lines = [
        begin,
        f"# written by `opsbook schedule install --env {env}` from {source}: edit that file "
        "and install again, not these lines",
    ]
    for entry in entries:
        lines.append(f"{ENTRY_COMMENT}{entry.name} ({entry.runbook})")
        lines.append(cron_line(entry, env, project, executable, log_file, vault_password_file))
    lines.append(end)
    return lines


@dataclass
class Split:
    """A crontab cut around the block of one environment."""

    before: list[str]
    block: list[str] | None  # None: no block
    after: list[str]


def split_crontab(text: str, env: str, project: Path) -> Split:
    """The crontab's lines before, in and after the block of ``env`` (ValueError when a
    BEGIN line has no END: the crontab is then left alone)."""
    begin, end = markers(env, project)
    lines = text.splitlines()
    if begin not in lines:
        return Split(lines, None, [])
    start = lines.index(begin)
    try:
        stop = lines.index(end, start)
    except ValueError:
        raise ValueError(
            f"the crontab has the line {begin!r} but not its end {end!r}: fix it by hand "
            "(crontab -e); nothing was changed"
        ) from None
    return Split(lines[:start], lines[start : stop + 1], lines[stop + 1 :])


def _join(lines: Sequence[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def with_block(text: str, block: list[str], env: str, project: Path) -> str:
    """The crontab with the block of ``env`` replaced where it stands (or added at the end)."""
    parts = split_crontab(text, env, project)
    if parts.block is None:
        before = list(parts.before)
        if before and before[-1].strip():
            before.append("")  # a blank line between what was there and opsbook's block
        return _join([*before, *block])
    return _join([*parts.before, *block, *parts.after])


def without_block(text: str, env: str, project: Path) -> str:
    """The crontab without the block of ``env``, every other line as it was."""
    parts = split_crontab(text, env, project)
    if parts.block is None:
        return _join(parts.before)
    before = list(parts.before)
    if before and not before[-1].strip():
        before.pop()  # the blank line install puts before the block
    return _join([*before, *parts.after])


def installed_lines(block: Sequence[str] | None) -> dict[str, str]:
    """{entry name: its cron line} of an installed block."""
    found: dict[str, str] = {}
    lines = list(block or [])
    for index, line in enumerate(lines):
        if line.startswith(ENTRY_COMMENT) and index + 1 < len(lines):
            name = line[len(ENTRY_COMMENT) :].split(" ", 1)[0]
            found[name] = lines[index + 1]
    return found


def drift(installed: dict[str, str], wanted: dict[str, str]) -> list[tuple[str, str]]:
    """(name, state) of every entry: ``in sync``, ``missing`` (in the file, not installed),
    ``changed`` (installed differently) or ``stale`` (installed, no longer in the file)."""
    states = []
    for name, line in wanted.items():
        if name not in installed:
            states.append((name, "missing"))
        else:
            states.append((name, "in sync" if installed[name] == line else "changed"))
    states += [(name, "stale") for name in installed if name not in wanted]
    return states


# --------------------------------------------------------------------------- the crontab


class CrontabError(RuntimeError):
    """The crontab program failed or is missing."""


class Crontab:
    """A user's crontab, through the ``crontab`` program (``-u USER`` when given)."""

    def __init__(self, user: str | None = None, program: str = CRONTAB) -> None:
        self.user = user
        found = shutil.which(program)
        if found is None:
            raise CrontabError(
                f"the {program} program is not installed (Debian: apt-get install cron)"
            )
        self.program = found

    @property
    def who(self) -> str:
        return self.user or _login_name()

    def _argv(self, *args: str) -> list[str]:
        return [self.program, *(["-u", self.user] if self.user else []), *args]

    def read(self) -> str:
        """The crontab's text ("" when the user has none)."""
        proc = subprocess.run(
            self._argv("-l"), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if proc.returncode == 0:
            return proc.stdout
        if "no crontab for" in proc.stderr:
            return ""
        raise CrontabError(f"crontab -l for {self.who} failed: {proc.stderr.strip()}")

    def write(self, text: str) -> None:
        proc = subprocess.run(
            self._argv("-"), input=text, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise CrontabError(
                f"crontab refused the new crontab of {self.who} (it is unchanged): "
                f"{proc.stderr.strip()}"
            )


def _login_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# --------------------------------------------------------------------------- commands


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``schedule`` to the ``opsbook`` command's subparsers."""
    parser = subparsers.add_parser(
        "schedule",
        help="install, list or remove the runbooks' schedule (schedules.yml) in a crontab",
        description=(
            "The entries of schedules.yml that apply to ENV, as crontab lines that call "
            "`opsbook run` (marked as opsbook's; the rest of the crontab is left as it is). "
            "AWX: playbooks/awx_setup.yml reads the same file."
        ),
        epilog=(
            "exit codes: 0 done (list: in sync); 1 the crontab program failed (list: the "
            "crontab differs from the file); 2 bad input: the file or an option is wrong, "
            "nothing was changed"
        ),
    )
    parser.add_argument("action", choices=("install", "list", "remove"))
    parser.add_argument("--env", required=True, metavar="ENV", help="the environment")
    parser.add_argument("--user", metavar="USER", help="the crontab of USER (crontab -u; as root)")
    parser.add_argument(
        "--file", metavar="FILE", help=f"the schedule file (default: <project>/{SCHEDULES_FILE})"
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        help="where the runs' output is appended (default: <project>/.opsbook/logs)",
    )
    parser.add_argument(
        "--vault-password-file",
        metavar="FILE",
        help="install: the lines pass it to opsbook run (or set OPSBOOK_VAULT_PASSWORD_FILE in "
        "the crontab)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would change, change nothing"
    )
    parser.set_defaults(handler=main)
    return parser


def _executable() -> Path:
    """The ``opsbook`` of this installation (beside this Python: the project's .venv)."""
    beside = Path(os.path.abspath(sys.executable)).parent / "opsbook"
    if beside.is_file():
        return beside
    found = shutil.which("opsbook")
    if found:
        return Path(os.path.abspath(found))
    raise OpsbookInputError("schedule", "cannot find the opsbook command beside this Python")


def _make_log_dir(log_dir: Path, user: str | None) -> None:
    """Create the log directory (and its parents) private; when root installs for another
    account, the directory (and the parents it made) belong to that account: cron runs the
    lines as it, and a line whose log cannot be opened runs nothing."""
    missing = [p for p in (log_dir, *log_dir.parents) if not p.exists()]
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        for path in {log_dir, *missing}:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _local_time_warning() -> str | None:
    if time.timezone == 0 and not time.daylight:
        return None
    zone = "/".join(dict.fromkeys(time.tzname))
    return (
        f"this machine's local time is {zone}, not UTC: cron runs the lines in local time, "
        "the times in the schedule file are UTC"
    )


def _say(text: str) -> None:
    print(f"opsbook: schedule: {text}", flush=True)


def main(args: argparse.Namespace) -> int:
    """``opsbook schedule ACTION --env ENV ...``; returns the exit code."""
    project = _project.find_project_root()
    env = args.env
    if args.action == "install":
        _project.resolve_env(_project.inventory_root(project), env)  # an unknown env: exit 2
    elif not ENV_RE.match(env or ""):
        raise OpsbookInputError("--env", f"{env!r} is not an environment name")
    source = Path(args.file).expanduser().resolve() if args.file else project / SCHEDULES_FILE
    log_dir = (
        Path(args.log_dir).expanduser().resolve()
        if args.log_dir
        else (project / ".opsbook" / "logs")
    )
    try:
        crontab = Crontab(args.user)
        if args.action == "remove":
            return _remove(crontab, env, project, dry_run=args.dry_run)
        entries = _read(source, project)
        vault = args.vault_password_file
        wanted = render_block(
            [e for e in entries if e.applies_to(env)],
            env,
            project,
            _executable(),
            log_dir / f"schedule-{env}.log",
            source,
            Path(vault).expanduser().resolve() if vault else None,
        )
        if args.action == "list":
            return _list(crontab, env, project, wanted, source)
        return _install(crontab, env, project, wanted, source, log_dir, args)
    except ScheduleError as exc:
        print(f"opsbook: error: {exc}\nnothing was changed in the crontab", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except ValueError as exc:  # a line too long for cron, a block without its end
        print(f"opsbook: error: schedule: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except CrontabError as exc:
        print(f"opsbook: error: schedule: {exc}", file=sys.stderr)
        return ExitCode.FAILED


def _read(source: Path, project: Path) -> list[Schedule]:
    runbooks = [r.name for r in _project.list_runbooks(project)]
    envs = _project.list_envs(_project.inventory_root(project))
    return read_schedules(str(source), runbooks=runbooks, envs=envs)


def _install(
    crontab: Crontab,
    env: str,
    project: Path,
    block: list[str],
    source: Path,
    log_dir: Path,
    args: argparse.Namespace,
) -> int:
    current = crontab.read()
    count = len(installed_lines(block))
    if count == 0:
        _say(f"no entry of {source} applies to {env}")
        return _remove(crontab, env, project, dry_run=args.dry_run)
    new = with_block(current, block, env, project)
    if args.dry_run:
        print(_join(block), end="")
        state = "unchanged" if new == current else "would change"
        _say(f"dry run: the crontab of {crontab.who} {state}; nothing was written")
        return ExitCode.SUCCESS
    warning = _local_time_warning()
    if warning:
        print(f"opsbook: warning: schedule: {warning}", file=sys.stderr)
    _make_log_dir(log_dir, args.user)
    if new == current:
        _say(
            f"{count} entries for {env} already installed in the crontab of {crontab.who}; "
            "unchanged"
        )
        return ExitCode.SUCCESS
    crontab.write(new)
    _say(
        f"installed {count} entries for {env} in the crontab of {crontab.who} (from {source}; "
        f"output appended to {log_dir}/schedule-{env}.log)"
    )
    return ExitCode.SUCCESS


def _list(crontab: Crontab, env: str, project: Path, block: list[str], source: Path) -> int:
    installed = installed_lines(split_crontab(crontab.read(), env, project).block)
    wanted = installed_lines(block)
    states = drift(installed, wanted)
    if not states:
        _say(f"nothing scheduled for {env}, nothing installed")
        return ExitCode.SUCCESS
    width = max(len(name) for name, _state in states)
    for name, state in states:
        line = wanted.get(name) or installed.get(name, "")
        print(f"{name.ljust(width)}  {state:<8}  {' '.join(line.split()[:5])}")
        if state == "changed":
            print(
                f"{'':{width}}    installed: {installed[name]}\n{'':{width}}    file:      {line}"
            )
    differ = [name for name, state in states if state != "in sync"]
    if differ:
        _say(
            f"the crontab of {crontab.who} differs from {source} for {env} "
            f"({len(differ)} of {len(states)}): run `opsbook schedule install --env {env}`"
        )
        return ExitCode.FAILED
    _say(f"{len(states)} entries for {env} installed, in sync with {source}")
    return ExitCode.SUCCESS


def _remove(crontab: Crontab, env: str, project: Path, *, dry_run: bool) -> int:
    current = crontab.read()
    parts = split_crontab(current, env, project)
    if parts.block is None:
        _say(f"no opsbook entries for {env} in the crontab of {crontab.who}; nothing to remove")
        return ExitCode.SUCCESS
    if dry_run:
        print(_join(parts.block), end="")
        _say(f"dry run: would remove these lines from the crontab of {crontab.who}")
        return ExitCode.SUCCESS
    crontab.write(without_block(current, env, project))
    count = len(installed_lines(parts.block))
    _say(f"removed {count} entries for {env} from the crontab of {crontab.who}")
    return ExitCode.SUCCESS
