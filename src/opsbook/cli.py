"""The ``opsbook`` command: run and list runbooks, manage the local sandbox.

    opsbook run RUNBOOK --env ENV [-e key=value ...] [-e @file.yml] [--check]
                [--limit PATTERN] [--reason TEXT] [--timeout SECONDS] [--json]
    opsbook list
    opsbook sandbox up|down|status
    opsbook schedule install|list|remove --env ENV
    opsbook history [--env ENV] [--runbook NAME] [--status STATUS] [--since WHEN] [--last N]
                    [--json | --markdown]

Exit codes: see :mod:`opsbook.exitcodes` (also in ``opsbook --help``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from opsbook import __version__
from opsbook import history as _history
from opsbook import project as _project
from opsbook import schedule as _schedule
from opsbook.exitcodes import EPILOG, ExitCode, OpsbookInputError
from opsbook.secrets import is_vaulted

_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL)$")


class _ExtraVarLoader(yaml.SafeLoader):
    """YAML for -e values: only int, true/false and null are typed.

    Everything else stays a string: ``1.10`` (a version, not 1.1), ``0755``,
    ``2024-01-01``, ``yes``/``no``, ``NO`` (a country).
    """


_ExtraVarLoader.yaml_implicit_resolvers = {}
_ExtraVarLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))
_ExtraVarLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_ExtraVarLoader.add_implicit_resolver("tag:yaml.org,2002:null", _NULL_RE, list("~nN"))


# --- -e parsing ----------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A -e value: ``3`` -> 3, ``true`` -> True, ``null`` -> None, ``[1, 2]`` and
    ``{a: 1}`` -> collections, ``"quoted"`` -> string, anything else as written."""
    if text[:1] in ("[", "{", '"', "'"):
        try:
            return yaml.load(text, Loader=_ExtraVarLoader)
        except yaml.YAMLError:
            return text
    if _INT_RE.match(text):
        return int(text)
    if _BOOL_RE.match(text):
        return text.lower() == "true"
    if _NULL_RE.match(text):
        return None
    return text


def _load_vars_file(path_text: str) -> dict[str, Any]:
    if not path_text:
        raise OpsbookInputError("-e", "'@' needs a file name: -e @vars.yml")
    path = Path(path_text).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise OpsbookInputError("-e", f"cannot read {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise OpsbookInputError("-e", f"{path} is not valid YAML: {_first_line(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OpsbookInputError("-e", f"{path} must hold a mapping of variables")
    return data


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def parse_extra_var(item: str) -> dict[str, Any]:
    """One -e argument: ``key=value``, ``@file.yml`` or an inline ``{...}`` mapping."""
    if item.startswith("@"):
        return _load_vars_file(item[1:])
    if item.lstrip().startswith("{"):
        try:
            data = yaml.load(item, Loader=_ExtraVarLoader)
        except yaml.YAMLError as exc:
            raise OpsbookInputError(
                "-e", f"{item!r} is not a valid mapping: {_first_line(exc)}"
            ) from exc
        if not isinstance(data, dict):
            raise OpsbookInputError("-e", f"{item!r} is not a mapping")
        return data
    key, sep, value = item.partition("=")
    if not sep:
        raise OpsbookInputError("-e", f"expected key=value or @file.yml, got {item!r}")
    key = key.strip()
    if not key:
        raise OpsbookInputError("-e", f"empty variable name in {item!r}")
    return {key: parse_value(value)}


def split_extra_vars(items: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The -e arguments as (variables, vault files): an ``@file`` holding vault-encrypted
    data is passed to ansible-playbook as it is (Ansible decrypts it; opsbook reads it in
    memory only, to keep its secrets out of the artifacts); the variables of every other
    argument win over it."""
    variables: list[str] = []
    vaulted: list[str] = []
    for item in items:
        if item.startswith("@") and _holds_vault_data(item[1:]):
            vaulted.append(item[1:])
        else:
            variables.append(item)
    return parse_extra_vars(variables), vaulted


def _holds_vault_data(path_text: str) -> bool:
    try:
        text = Path(path_text).expanduser().read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False  # parse_extra_var says why
    return is_vaulted(text)


def parse_extra_vars(items: Sequence[str]) -> dict[str, Any]:
    """All -e arguments, later ones overriding earlier ones (as in Ansible)."""
    merged: dict[str, Any] = {}
    for item in items:
        merged.update(parse_extra_var(item))
    return merged


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


# --- parser --------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``opsbook`` argument parser."""
    parser = _Parser(
        prog="opsbook",
        description="Operations runbooks as Ansible playbooks: run and list them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"opsbook {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run a runbook against an environment",
        description="Run playbooks/RUNBOOK.yml against inventories/ENV.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("runbook", metavar="RUNBOOK", help="runbook name (see `opsbook list`)")
    run.add_argument(
        "--env", required=True, metavar="ENV", help="environment (inventory) to run against"
    )
    run.add_argument(
        "-e", "--extra-vars", dest="extra_vars", action="append", default=[], metavar="VARS",
        help="key=value (3 -> int, true/false, null; else a string), @file.yml "
        "(vault-encrypted too) or {yaml: mapping}; repeatable",
    )  # fmt: skip
    run.add_argument(
        "--check", action="store_true", help="dry run: Ansible check mode, nothing changed"
    )
    run.add_argument(
        "--limit", metavar="PATTERN", help="only the hosts matching this Ansible pattern"
    )
    run.add_argument(
        "--reason", metavar="TEXT", help="why this run (recorded in the operation log)"
    )
    run.add_argument(
        "--timeout", type=_timeout, metavar="SECONDS", help="stop the run after this long (exit 4)"
    )
    run.add_argument("--vault-password-file", metavar="FILE", help="Ansible vault password file")
    run.add_argument(
        "-v", "--verbose", action="count", default=0, help="more Ansible output in the artifacts"
    )
    run.add_argument(
        "--json", action="store_true",
        help="for machines: one JSON object a line on stdout, each event as it happens "
        '(type "event"), then the result (type "result": status, rc, verdict, stats, '
        "outputs); no progress text; same exit codes",
    )  # fmt: skip
    run.set_defaults(handler=_cmd_run)

    listing = commands.add_parser("list", help="list the runbooks with their descriptions")
    listing.set_defaults(handler=_cmd_list)

    sandbox = commands.add_parser(
        "sandbox", help="the local sandbox that inventories/local points at"
    )
    sandbox.add_argument("action", choices=("up", "down", "status"))
    sandbox.add_argument("--purge", action="store_true", help="with down: also remove its state")
    sandbox.set_defaults(handler=_cmd_sandbox)

    _history.add_parser(commands)
    _schedule.add_parser(commands)
    return parser


# --- commands ------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    from opsbook.progress import Progress, render_summary
    from opsbook.runner import RunbookRunner

    extravars, vault_files = split_extra_vars(args.extra_vars)
    runner = RunbookRunner()
    plan = runner.plan(
        args.runbook,
        args.env,
        extravars,
        check=args.check,
        limit=args.limit,
        timeout=args.timeout,
        reason=args.reason,
        vault_password_file=args.vault_password_file,
        verbosity=min(args.verbose, 6),
        extravars_files=vault_files,
    )
    redact = runner.scrubber(plan).redact
    for warning in plan.warnings:
        print(f"opsbook: warning: {redact(warning)}", file=sys.stderr, flush=True)
    if args.json:
        return _run_json(runner, plan)
    progress = Progress(sys.stdout, redact=redact)
    mode = " in check mode" if plan.check else ""
    print(f"opsbook: running {plan.runbook.name} on {plan.env}{mode}", flush=True)
    try:
        result = runner.execute(plan, event_handler=progress, cancel_callback=progress.tick)
    finally:
        progress.finish()
    print(render_summary(result, redact=redact), flush=True)
    return result.rc


def _run_json(runner: Any, plan: Any) -> int:
    """``opsbook run --json``: the run's events, then its result, one JSON object a line (the
    records of :mod:`opsbook.handle`, masked as the run's artifacts are)."""
    from opsbook.handle import event_record, result_record

    scrubber = runner.scrubber(plan)

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(scrubber.redact_data(record), default=str)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    result = runner.execute(plan, event_handler=lambda event: emit(event_record(event)))
    emit(result_record(result))
    return result.rc


def _cmd_list(_args: argparse.Namespace) -> int:
    root = _project.find_project_root()
    runbooks = _project.list_runbooks(root)
    if not runbooks:
        print(f"no runbooks in {root / 'playbooks'}")
        return ExitCode.SUCCESS
    width = max(len(r.name) for r in runbooks)
    for runbook in runbooks:
        print(f"{runbook.name.ljust(width)}  {runbook.description}".rstrip())
    return ExitCode.SUCCESS


def _cmd_sandbox(args: argparse.Namespace) -> int:
    """Hook for the sandbox: ``opsbook.sandbox.main(action, project_dir=, purge=) -> int``.

    Imported lazily so that ``run`` and ``list`` never depend on it.
    """
    try:
        sandbox = importlib.import_module("opsbook.sandbox")
    except ModuleNotFoundError as exc:
        if exc.name != "opsbook.sandbox":
            raise
        print(
            "opsbook: error: sandbox: not available (opsbook.sandbox is missing)", file=sys.stderr
        )
        return ExitCode.FAILED
    return int(
        sandbox.main(args.action, project_dir=_project.find_project_root(), purge=args.purge)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``opsbook`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and getattr(args, "command", None) == "run":
        # the command itself (not a caller passing arguments in-process): reap what the
        # modules of a killed run leave behind (see opsbook.runner.reap_orphans)
        from opsbook.runner import become_subreaper

        become_subreaper()
    try:
        return int(args.handler(args))
    except OpsbookInputError as exc:
        print(f"opsbook: error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        print("opsbook: canceled", file=sys.stderr)
        return ExitCode.TIMEOUT_OR_CANCELED


if __name__ == "__main__":
    sys.exit(main())
