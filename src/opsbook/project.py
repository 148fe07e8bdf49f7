"""Finding the opsbook project, its runbooks and its inventories.

Project root: ``$OPSBOOK_PROJECT_DIR``, else the nearest directory at or above
the current one holding both ``ansible.cfg`` and ``playbooks/``, else the
source checkout this package lives in.

Runbooks: ``playbooks/<name>.yml`` except ``site.yml`` and files starting with
``_``; a runbook's one-line description is its first line, ``# <description>``.

Inventories: ``<$OPSBOOK_INVENTORY_ROOT or <project>/inventories>/<env>/``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from opsbook.exitcodes import OpsbookInputError

PROJECT_ENV = "OPSBOOK_PROJECT_DIR"
INVENTORY_ROOT_ENV = "OPSBOOK_INVENTORY_ROOT"
RUNS_DIR_ENV = "OPSBOOK_RUNS_DIR"

# Runbook and environment names: no path separators, no leading dot or dash.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
