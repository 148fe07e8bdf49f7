"""Import the project's Ansible code in tests: modules, module_utils and plugins, by path.

Ansible ships ``module_utils/opsbook_*.py`` with a module as
``ansible.module_utils.opsbook_*``; :func:`load_module_utils` registers each
file under that name so that a module loaded with :func:`load_library` imports
the very same objects (one ``StorageError`` class for every test file).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.harness import PROJECT_ROOT, VENV_BIN

__all__ = [
    "PROJECT_ROOT",
    "VENV_BIN",
    "load_library",
    "load_module_utils",
    "load_path",
    "load_plugin",
]

# In dependency order: each may import the ones before it.
MODULE_UTILS = (
    "opsbook_text",
    "opsbook_module",
    "opsbook_proc",
    "opsbook_pg",
    "opsbook_restore_names",
    "opsbook_sql",
    "opsbook_storage_common",
    "opsbook_storage_file",
    "opsbook_s3",
    "opsbook_s3_upload",
    "opsbook_s3_download",
    "opsbook_storage_s3",
    "opsbook_storage",
    "opsbook_secret_store",
    "opsbook_secret_store_vault",
    "opsbook_secret_store_aws",
    "opsbook_deploy_state",
    "opsbook_backup",
    "opsbook_http",
    "opsbook_notify",
    "opsbook_rotation",
    "opsbook_rest",
    "opsbook_platform",
    "opsbook_supabase",
    "opsbook_vercel",
    "opsbook_render",
    "opsbook_fly",
    "opsbook_schedules",
)


def load_path(name: str, path: Path) -> ModuleType:
    """Import the file at path as module name; a module already loaded from it is reused.
    A module_util (``ansible.module_utils.<name>``) gets the module_utils before it first."""
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "") == path:
        return loaded
    util = name.removeprefix("ansible.module_utils.")
    if util != name and util in MODULE_UTILS:
        for dependency in MODULE_UTILS[: MODULE_UTILS.index(util)]:
            load_path(f"ansible.module_utils.{dependency}", _module_utils_path(dependency))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_module_utils(name: str) -> ModuleType:
    """module_utils/<name>.py as ansible.module_utils.<name> (its dependencies first)."""
    return load_path(f"ansible.module_utils.{name}", _module_utils_path(name))


def load_library(name: str) -> ModuleType:
    """library/<name>.py (a custom module), with every module_util it may import."""
    for util in MODULE_UTILS:
        load_module_utils(util)
    return load_path(f"opsbook_test_{name}", PROJECT_ROOT / "library" / f"{name}.py")


def load_plugin(directory: str, name: str) -> ModuleType:
    """A controller plugin, e.g. load_plugin("filter_plugins", "opsbook_filters")."""
    return load_path(f"opsbook_test_{name}", PROJECT_ROOT / directory / f"{name}.py")


def module_documentation(module: ModuleType) -> dict[str, Any]:
    """A module's DOCUMENTATION with its doc fragments (doc_fragments/) merged in, as
    ansible-doc shows it: the module's own options win over a fragment's."""
    doc = yaml.safe_load(module.DOCUMENTATION)
    for name in doc.get("extends_documentation_fragment") or []:
        fragment = load_path(
            f"opsbook_doc_fragment_{name}", PROJECT_ROOT / "doc_fragments" / f"{name}.py"
        )
        options = yaml.safe_load(fragment.ModuleDocFragment.DOCUMENTATION).get("options", {})
        doc["options"] = {**options, **(doc.get("options") or {})}
    return doc


def _module_utils_path(name: str) -> Path:
    return PROJECT_ROOT / "module_utils" / f"{name}.py"
