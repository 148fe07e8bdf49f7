"""Finding the opsbook project, its runbooks and its inventories.

Project root: ``$OPSBOOK_PROJECT_DIR``, else the nearest directory at or above
the current one holding both ``ansible.cfg`` and ``playbooks/``, else the
source checkout this package lives in.

Runbooks: ``playbooks/<name>.yml`` except ``site.yml`` and files starting with
``_``; a runbook's one-line description is its first line, ``# <description>``.

Inventories: ``<$OPSBOOK_INVENTORY_ROOT or <project>/inventories>/<env>/``.

Inputs: each runbook declares its inputs in ``playbooks/vars/inputs/<runbook>.yml`` (its
preflight checks them: action_plugins/opsbook_inputs.py); :func:`unknown_input_warnings` reads
the same declarations to warn about ``-e`` names a runbook does not know, before it runs.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from opsbook.exitcodes import OpsbookInputError

PROJECT_ENV = "OPSBOOK_PROJECT_DIR"
INVENTORY_ROOT_ENV = "OPSBOOK_INVENTORY_ROOT"
RUNS_DIR_ENV = "OPSBOOK_RUNS_DIR"

# Where the runbooks declare their inputs, the top-level key of a declaration, the
# declaration every runbook includes, extra-var prefixes never warned about (Ansible's own,
# AWX's job variables) - as action_plugins/opsbook_inputs.py reads them.
INPUTS_DIR = ("playbooks", "vars", "inputs")
INPUTS_KEY = "opsbook_inputs"
INPUTS_COMMON = "common"
IGNORED_INPUT_PREFIXES = ("ansible_", "awx_", "tower_")
#: set for the playbook once opsbook has warned, so that its preflight does not warn again
INPUT_WARNINGS_SHOWN_ENV = "OPSBOOK_INPUT_WARNINGS_SHOWN"

# Runbook and environment names: no path separators, no leading dot or dash.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A site.yml imports every playbook (the kubespray convention): running it is never one runbook.
_NOT_RUNBOOKS = {"site"}


@dataclass(frozen=True)
class Runbook:
    """A runnable playbook of the project."""

    name: str
    path: Path
    description: str


def is_project_root(path: Path) -> bool:
    """True when ``path`` holds ``ansible.cfg`` and a ``playbooks/`` directory."""
    return (path / "ansible.cfg").is_file() and (path / "playbooks").is_dir()


def _source_checkout() -> Path | None:
    """The checkout this package was installed from (editable installs), if any."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if is_project_root(candidate) else None


def find_project_root(cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the project root (see the module docstring for the search order).

    Raises OpsbookInputError when ``$OPSBOOK_PROJECT_DIR`` is not a project, or
    when no project can be found at all.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get(PROJECT_ENV)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not is_project_root(path):
            raise OpsbookInputError(
                PROJECT_ENV, f"{path} is not an opsbook project (needs ansible.cfg and playbooks/)"
            )
        return path
    start = (cwd or Path.cwd()).resolve()
    for path in (start, *start.parents):
        if is_project_root(path):
            return path
    checkout = _source_checkout()
    if checkout is not None:
        return checkout
    raise OpsbookInputError("project", f"no opsbook project at or above {start}; set {PROJECT_ENV}")


def inventory_root(project: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Directory holding one inventory directory per environment."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(INVENTORY_ROOT_ENV)
    return Path(explicit).expanduser().resolve() if explicit else project / "inventories"


def runs_dir(project: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Directory holding one private data directory per run."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(RUNS_DIR_ENV)
    return Path(explicit).expanduser().resolve() if explicit else project / ".opsbook" / "runs"


def read_description(path: Path) -> str:
    """The one-line description of a runbook: its first line, ``# <description>``."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            first = handle.readline().strip()
    except OSError:
        return ""
    return first.lstrip("#").strip() if first.startswith("#") else ""


def _is_runbook_file(path: Path) -> bool:
    return (
        path.is_file()
        and path.suffix == ".yml"
        and not path.name.startswith("_")
        and path.stem not in _NOT_RUNBOOKS
    )


def list_runbooks(project: Path) -> list[Runbook]:
    """Every runbook of the project, sorted by name."""
    playbooks = project / "playbooks"
    paths = sorted(p for p in playbooks.glob("*.yml") if _is_runbook_file(p))
    return [Runbook(p.stem, p.resolve(), read_description(p)) for p in paths]


def list_envs(root: Path) -> list[str]:
    """Names of the environments (inventory directories) under ``root``."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "known: " + (", ".join(known) if known else "(none)")


def resolve_runbook(project: Path, name: str) -> Runbook:
    """Return the runbook called ``name``; OpsbookInputError if there is none."""
    runbooks = {r.name: r for r in list_runbooks(project)}
    if name.endswith(".yml"):
        name = name[: -len(".yml")]
    if not _NAME_RE.match(name or ""):
        raise OpsbookInputError("runbook", f"{name!r} is not a runbook name")
    if name not in runbooks:
        hint = _suggest(name, sorted(runbooks))
        raise OpsbookInputError("runbook", f"unknown runbook {name!r}; {hint}")
    return runbooks[name]


def resolve_env(root: Path, name: str) -> Path:
    """Return the inventory directory of environment ``name``."""
    known = list_envs(root)
    if not _NAME_RE.match(name or "") or name not in known:
        listing = ", ".join(known) if known else "(none)"
        raise OpsbookInputError(
            "--env", f"unknown environment {name!r}; known environments in {root}: {listing}"
        )
    return (root / name).resolve()


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def input_declaration(project: Path, runbook: str) -> dict[str, Any] | None:
    """The declaration of a runbook's inputs, or None when it has none (or it is unreadable:
    the runbook's preflight then says what is wrong)."""
    if not _NAME_RE.match(runbook or ""):
        return None
    data = _read_yaml(project.joinpath(*INPUTS_DIR, f"{runbook}.yml"))
    if not isinstance(data, dict) or not isinstance(data.get(INPUTS_KEY), dict):
        return None
    return data[INPUTS_KEY]


def _role_input_names(project: Path, role: str) -> set[str]:
    data = _read_yaml(project / "roles" / role / "meta" / "argument_specs.yml")
    specs = (data or {}).get("argument_specs") if isinstance(data, dict) else None
    names: set[str] = set()
    for entry in (specs or {}).values():
        names |= set(((entry or {}).get("options") or {}).keys())
    return names


def known_inputs(project: Path, runbook: str) -> set[str] | None:
    """Every input name a runbook accepts (its options, its roles' inputs, those of the
    runbooks it includes, the common ones), or None when it declares none."""
    declaration = input_declaration(project, runbook)
    if declaration is None:
        return None
    names: set[str] = set()
    seen: set[str] = set()
    pending: list[dict[str, Any]] = [declaration]
    common = input_declaration(project, INPUTS_COMMON)
    if common is not None:
        pending.append(common)
    while pending:
        current = pending.pop()
        name = str(current.get("runbook"))
        if name in seen:
            continue
        seen.add(name)
        names |= set((current.get("options") or {}).keys())
        for role in current.get("role_inputs") or []:
            names |= _role_input_names(project, str(role))
        for other in current.get("include") or []:
            included = input_declaration(project, str(other))
            if included is not None:
                pending.append(included)
    return names


def unknown_input_warnings(project: Path, runbook: str, names: Iterable[str]) -> list[str]:
    """One warning per ``-e`` name the runbook does not declare, with the closest declared
    name (difflib); none when the runbook declares no inputs."""
    known = known_inputs(project, runbook)
    if known is None:
        return []
    warnings = []
    for name in sorted(set(names)):
        if name in known or name.startswith(IGNORED_INPUT_PREFIXES):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "it is ignored"
        warnings.append(f"-e {name}: {runbook} has no input of that name; {hint}")
    return warnings
