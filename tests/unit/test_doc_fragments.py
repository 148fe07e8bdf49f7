"""doc_fragments/: the connection options every Postgres module documents through
extends_documentation_fragment match what module_utils/opsbook_pg.py takes; the S3 options
(opsbook_s3) match what every module with s3_endpoint_url in its argument spec takes; the
controller modules' attributes (opsbook_controller) are documented once."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.loaders import PROJECT_ROOT, load_library, load_module_utils, load_plugin

PG_MODULES = sorted(
    p.stem
    for p in (PROJECT_ROOT / "library").glob("pg_*.py")
    if "pg_connection_argument_spec" in p.read_text()
)

# Every module whose argument spec takes the S3 connection options (found in the spec itself).
S3_MODULES = sorted(
    p.stem
    for p in (PROJECT_ROOT / "library").glob("*.py")
    if hasattr(load_library(p.stem), "argument_spec")
    and "s3_endpoint_url" in load_library(p.stem).argument_spec()
)

# The modules an action plugin of the same name runs in the task's worker on the controller.
CONTROLLER_MODULES = sorted(
    p.stem
    for p in (PROJECT_ROOT / "action_plugins").glob("*.py")
    if "(ControllerModuleAction)" in p.read_text()
)


def fragment_documentation(name: str) -> dict[str, Any]:
    return yaml.safe_load(load_plugin("doc_fragments", name).ModuleDocFragment.DOCUMENTATION)


def test_the_fragment_documents_the_shared_spec() -> None:
    spec = load_module_utils("opsbook_pg").pg_connection_argument_spec()
    fragment = load_plugin("doc_fragments", "opsbook_pg").ModuleDocFragment
    options = yaml.safe_load(fragment.DOCUMENTATION)["options"]
    assert set(options) == set(spec)
    for name, option in spec.items():
        assert options[name]["type"] == option["type"], name
        assert options[name].get("default") == option.get("default"), name
        assert bool(options[name].get("required")) == bool(option.get("required")), name


@pytest.mark.parametrize("name", PG_MODULES)
def test_every_postgres_module_uses_the_fragment(name: str) -> None:
    assert len(PG_MODULES) >= 7
    doc = yaml.safe_load(load_library(name).DOCUMENTATION)
    assert "opsbook.runbooks.opsbook_pg" in doc["extends_documentation_fragment"]
    assert not {"dsn", "connect_timeout", "application_name"} & set(doc["options"])


@pytest.mark.parametrize("name", S3_MODULES)
def test_every_s3_module_uses_the_s3_fragment_and_it_documents_the_spec(name: str) -> None:
    assert len(S3_MODULES) >= 6
    module = load_library(name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert "opsbook.runbooks.opsbook_s3" in doc["extends_documentation_fragment"]
    spec = module.argument_spec()
    fragment_options = fragment_documentation("opsbook_s3")["options"]
    assert set(fragment_options) <= set(spec)
    for option, documented in fragment_options.items():
        own = doc["options"].get(option) or {}
        # described once, in the fragment: a module may repeat an option's type, not describe it
        assert "description" not in own, (name, option)
        merged = {**documented, **own}  # ansible-doc merges a module's entry key by key
        assert merged["type"] == documented["type"] == spec[option]["type"], (name, option)
        assert merged.get("default") == spec[option].get("default"), (name, option)
        assert bool(merged.get("required")) == bool(spec[option].get("required")), option


@pytest.mark.parametrize("name", CONTROLLER_MODULES)
def test_every_module_run_in_the_worker_documents_it_through_the_fragment(name: str) -> None:
    assert len(CONTROLLER_MODULES) >= 6
    doc = yaml.safe_load(load_library(name).DOCUMENTATION)
    assert "opsbook.runbooks.opsbook_controller" in doc["extends_documentation_fragment"]
    assert "action" not in doc["attributes"]
    assert fragment_documentation("opsbook_controller")["attributes"]["action"]["support"] == "full"
