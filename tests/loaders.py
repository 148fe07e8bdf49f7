"""Import the project's Ansible code in tests: modules, module_utils and plugins, by path.

The project's code is the collection ``opsbook.runbooks`` (``collections/ansible_collections/
opsbook/runbooks`` links to ``module_utils/``, ``library/``, ...): modules and plugins import
``ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_*``. Ansible's collection
loader is installed here on the project's ``collections/`` directory, as ansible-playbook installs
it, so a module loaded with :func:`load_library` and a test that calls :func:`load_module_utils`
import the very same objects (one ``StorageError`` class for every test file).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from ansible.plugins.loader import init_plugin_loader

from tests.harness import PROJECT_ROOT, VENV_BIN

__all__ = [
    "COLLECTIONS_DIR",
    "PROJECT_ROOT",
    "PY_PREFIX",
    "VENV_BIN",
    "load_library",
    "load_module_utils",
    "load_path",
    "load_plugin",
]

#: the directory Ansible finds the collection in (ansible.cfg's collections_path)
COLLECTIONS_DIR = PROJECT_ROOT / "collections"
#: the Python package of the collection's plugins
PY_PREFIX = "ansible_collections.opsbook.runbooks.plugins"

if not any(type(f).__name__ == "_AnsibleCollectionFinder" for f in sys.meta_path):
    init_plugin_loader([str(COLLECTIONS_DIR)])

# Every module_util, imported by load_library before the module (any may be imported by it).
MODULE_UTILS = tuple(sorted(p.stem for p in (PROJECT_ROOT / "module_utils").glob("opsbook_*.py")))


def load_path(name: str, path: Path) -> ModuleType:
    """Import the file at path as module name; a module already loaded from it is reused."""
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "") == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_module_utils(name: str) -> ModuleType:
    """module_utils/<name>.py, as the collection's modules import it."""
    return importlib.import_module(f"{PY_PREFIX}.module_utils.{name}")


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
        name = name.rpartition(".")[2]  # opsbook.runbooks.opsbook_pg
        fragment = load_path(
            f"opsbook_doc_fragment_{name}", PROJECT_ROOT / "doc_fragments" / f"{name}.py"
        )
        options = yaml.safe_load(fragment.ModuleDocFragment.DOCUMENTATION).get("options", {})
        doc["options"] = {**options, **(doc.get("options") or {})}
    return doc
