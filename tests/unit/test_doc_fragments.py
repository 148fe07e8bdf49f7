"""doc_fragments/opsbook_pg.py: the connection options every Postgres module documents through
extends_documentation_fragment match what module_utils/opsbook_pg.py takes."""

from __future__ import annotations

import pytest
import yaml

from tests.loaders import PROJECT_ROOT, load_library, load_module_utils, load_plugin

PG_MODULES = sorted(
    p.stem
    for p in (PROJECT_ROOT / "library").glob("pg_*.py")
    if "pg_connection_argument_spec" in p.read_text()
)


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
    assert doc["extends_documentation_fragment"] == ["opsbook_pg"]
    assert not {"dsn", "connect_timeout", "application_name"} & set(doc["options"])
