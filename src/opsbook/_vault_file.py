"""The vault file an inventory names with ``opsbook_vault_file``, as ``playbooks/_vault.yml``
will read it at job time: the runner must know its values to scrub them (docs/awx.md).

The variable is read from the environment's inventory directory the way Ansible layers it for
the ``all`` group: ``all: vars:`` of its hosts files (YAML/JSON, or ``[all:vars]`` of an INI
file), overridden by ``group_vars/all`` (``all.yml`` / ``all.yaml`` / ``all.json`` / ``all``, or
the files of ``group_vars/all/``, in order). ``{{ inventory_dir }}`` and ``{{ playbook_dir }}``
are rendered as the run will render them (the inventory directory, the project's
``playbooks/``); a relative path is relative to ``playbooks/`` (as _vault.yml makes it). A
value holding any other template cannot be resolved here: the caller falls back to
``vault/<env>.yml``. Nothing is executed, nothing decrypted (vault-encrypted files are skipped:
an inventory keeps no secret there since the vault file moved out).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["VAR", "named_vault_file"]

VAR = "opsbook_vault_file"

_MAX_FILE = 1024 * 1024
# Ansible's default inventory_ignore_extensions
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig",
                     ".cfg", ".retry")  # fmt: skip
_VARS_SUFFIXES = {"", ".yml", ".yaml", ".json"}
_MAGIC = re.compile(r"\{\{\s*(inventory_dir|playbook_dir)\s*\}\}")
_INI_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")
_INI_VALUE = re.compile(rf"^\s*{VAR}\s*=\s*(.*?)\s*$")


class _Loader(yaml.SafeLoader):
    """Safe YAML that accepts Ansible's tags (``!vault`` and others: kept as an opaque marker)."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    return _Unresolvable()


class _Unresolvable:
    """A value this module cannot read (``!vault`` ...)."""


_Loader.add_multi_constructor("!", _tagged)


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > _MAX_FILE or os.access(path, os.X_OK):
            return None  # too big to be vars, or a dynamic inventory script: never run
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return None if text.lstrip().startswith("$ANSIBLE_VAULT;") else text


def _yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError:
        return None


def _from_hosts_file(path: Path) -> tuple[bool, Any]:
    """(found, value) of ``all: vars:`` (YAML/JSON) or ``[all:vars]`` (INI) of a hosts file."""
    text = _read(path)
    if text is None:
        return False, None
    data = _yaml(text) if path.suffix in {".yml", ".yaml", ".json"} else None
    if isinstance(data, dict):
        group = data.get("all")
        variables = group.get("vars") if isinstance(group, dict) else None
        if isinstance(variables, dict) and VAR in variables:
            return True, variables[VAR]
        return False, None
    found, value, section = False, None, None
    for line in text.splitlines():
        header = _INI_SECTION.match(line)
        if header:
            section = header.group(1).strip()
            continue
        match = _INI_VALUE.match(line) if section == "all:vars" else None
        if match:
            raw = match.group(1)
            if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
                raw = raw[1:-1]
            found, value = True, raw
    return found, value


def _from_vars_file(path: Path) -> tuple[bool, Any]:
    text = _read(path)
    data = _yaml(text) if text is not None else None
    if isinstance(data, dict) and VAR in data:
        return True, data[VAR]
    return False, None


def _hosts_files(inventory: Path) -> list[Path]:
    if inventory.is_file():
        return [inventory]
    if not inventory.is_dir():
        return []
    return sorted(
        path
        for path in inventory.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and not path.name.endswith(_IGNORED_SUFFIXES)
    )


def _group_vars_files(inventory: Path) -> list[Path]:
    base = (inventory.parent if inventory.is_file() else inventory) / "group_vars"
    files = [base / f"all{suffix}" for suffix in ("", ".yml", ".yaml", ".json")]
    found = [path for path in files if path.is_file()]
    folder = base / "all"
    if folder.is_dir():
        found += sorted(
            path
            for path in folder.rglob("*")
            if path.is_file()
            and path.suffix in _VARS_SUFFIXES
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
    return found


def named_vault_file(project: Path, inventory: Path) -> tuple[bool, Path | None]:
    """``(named, path)``: whether the inventory sets ``opsbook_vault_file`` (to a non-empty
    value), and the file it names - None when the value cannot be resolved here (a template
    of other variables, a vaulted value)."""
    found, value = False, None
    for path in _hosts_files(inventory):
        here, this = _from_hosts_file(path)
        if here:
            found, value = True, this
    for path in _group_vars_files(inventory):  # group_vars/all wins over the hosts files
        here, this = _from_vars_file(path)
        if here:
            found, value = True, this
    if not found or value is None or value == "":
        return False, None
    if not isinstance(value, str):
        return True, None
    inventory_dir = inventory.parent if inventory.is_file() else inventory
    playbook_dir = project / "playbooks"
    dirs = {"inventory_dir": str(inventory_dir), "playbook_dir": str(playbook_dir)}
    rendered = _MAGIC.sub(lambda match: dirs[match.group(1)], value)
    if "{{" in rendered or "{%" in rendered:
        return True, None
    path = Path(rendered)
    return True, Path(os.path.normpath(path if path.is_absolute() else playbook_dir / path))
