"""awx/credential_types/*.yml: AWX custom credential types, in AWX's own format, that give the
runbooks only variables they read, with every secret field marked secret (docs/awx.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.harness import PROJECT_ROOT
from tests.loaders import load_path

TYPES_DIR = PROJECT_ROOT / "awx" / "credential_types"
TYPE_FILES = sorted(TYPES_DIR.glob("*.yml"))
NAMES = load_path(
    "opsbook_test_secret_names", PROJECT_ROOT / "module_utils" / "opsbook_secret_names.py"
)

# AWX's schema (awx/main/fields.py: CredentialTypeInputField, CredentialTypeInjectorField) and
# the awx.awx.credential_type module's options.
TYPE_KEYS = {"name", "description", "kind", "inputs", "injectors"}
FIELD_KEYS = {"id", "label", "type", "help_text", "secret", "multiline", "choices", "format",
              "default", "ask_at_runtime"}  # fmt: skip
INJECTOR_KEYS = {"env", "extra_vars", "file"}
NAME_RE = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")
# environment variables AWX refuses in a credential type (ENV_BLOCKLIST; and ANSIBLE_*)
ENV_BLOCKLIST = {"VIRTUAL_ENV", "PATH", "PYTHONPATH", "JOB_ID", "INVENTORY_ID",
                 "INVENTORY_SOURCE_ID", "INVENTORY_UPDATE_ID", "AD_HOC_COMMAND_ID", "REST_API_URL",
                 "REST_API_TOKEN", "MAX_EVENT_RES", "CALLBACK_QUEUE", "CALLBACK_CONNECTION",
                 "CACHE", "JOB_CALLBACK_DEBUG", "INVENTORY_HOSTVARS", "AWX_HOST",
                 "PROJECT_REVISION", "SUPERVISOR_CONFIG_PATH"}  # fmt: skip
# variables read through a setting that names them, not by their own name
NAMED_BY_SETTING = {"admin_database_url": "admin_url_var"}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def runbook_variables() -> set[str]:
    """Every variable the runbooks read: declared inputs (playbooks/vars/inputs), role inputs
    (argument_specs, defaults), and every name used in a template of the playbooks, roles and
    inventories."""
    names: set[str] = set()
    for path in (PROJECT_ROOT / "playbooks" / "vars" / "inputs").glob("*.yml"):
        declared = yaml.safe_load(path.read_text())["opsbook_inputs"]
        names |= set(declared.get("options") or {})
        names |= set((declared.get("inventory") or {}).get("vars") or [])
    for path in (PROJECT_ROOT / "roles").glob("*/meta/argument_specs.yml"):
        for entry in (yaml.safe_load(path.read_text())["argument_specs"] or {}).values():
            names |= set((entry or {}).get("options") or {})
    texts = [
        p.read_text()
        for folder in ("playbooks", "roles", "inventories")
        for p in (PROJECT_ROOT / folder).rglob("*.yml")
        if "collections" not in p.parts
    ]
    for text in texts:
        for expression in re.findall(r"{{(.*?)}}", text, re.S):
            names |= set(re.findall(r"\b[a-z_][a-z0-9_]*\b", expression))
    return names


def render(template: str, values: dict[str, str]) -> str:
    """An injector's template, rendered as AWX renders it (sandboxed Jinja2, the inputs and
    the ``tower`` namespace)."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    tower = {"filename": {"known_hosts": "/runner/env/tmpabc"}}
    return env.from_string(template).render(**values, tower=tower)


@pytest.fixture(scope="module")
def read_by_runbooks() -> set[str]:
    return runbook_variables()


def test_there_is_a_type_per_kind_of_secret() -> None:
    injected = {
        var for path in TYPE_FILES for var in (load(path)["injectors"].get("extra_vars") or {})
    }
    assert {"database_url", "admin_database_url", "opsbook_notify_webhook_url", "vercel_token",
            "render_api_key", "fly_api_token", "supabase_access_token",
            "opsbook_ssh_known_hosts_file"} <= injected  # fmt: skip
    names = [load(path)["name"] for path in TYPE_FILES]
    assert len(names) == len(set(names)) == len(TYPE_FILES)


@pytest.mark.parametrize("path", TYPE_FILES, ids=lambda p: p.stem)
def test_the_type_is_in_awx_format(path: Path) -> None:
    spec = load(path)
    assert set(spec) == TYPE_KEYS, path
    assert spec["kind"] == "cloud"  # custom types: cloud or net only; cloud - one per template
    assert set(spec["inputs"]) <= {"fields", "required"}
    fields = spec["inputs"]["fields"]
    ids = [field["id"] for field in fields]
    assert len(ids) == len(set(ids))
    for field in fields:
        assert set(field) <= FIELD_KEYS and {"id", "label"} <= set(field), field
        assert NAME_RE.match(field["id"]) and not field["id"].lower().startswith("ansible_")
        assert field.get("type", "string") in ("string", "boolean")
    assert set(spec["inputs"].get("required") or []) <= set(ids)
    injectors = spec["injectors"]
    assert injectors and set(injectors) <= INJECTOR_KEYS
    for name in injectors.get("env") or {}:
        assert NAME_RE.match(name) and not name.startswith("ANSIBLE_") and name not in ENV_BLOCKLIST
    for name, template in (injectors.get("extra_vars") or {}).items():
        assert NAME_RE.match(name) and not name.lower().startswith("ansible_"), name
        assert isinstance(template, str)  # AWX's schema: a string template per variable
    for key in injectors.get("file") or {}:
        assert key == "template" or key.startswith("template."), key


@pytest.mark.parametrize("path", TYPE_FILES, ids=lambda p: p.stem)
def test_every_input_reaches_a_variable_the_runbooks_read(
    path: Path, read_by_runbooks: set[str]
) -> None:
    spec = load(path)
    fields = {field["id"]: field for field in spec["inputs"]["fields"]}
    values = {name: f"value-of-{name}" for name in fields}
    injectors = spec["injectors"]
    extra_vars = {
        name: render(template, values)
        for name, template in (injectors.get("extra_vars") or {}).items()
    }
    files = {key: render(t, values) for key, t in (injectors.get("file") or {}).items()}
    # every input is injected somewhere, and every template renders from the inputs alone
    rendered = " ".join([*extra_vars.values(), *files.values()])
    for name in fields:
        assert f"value-of-{name}" in rendered, f"{path.name}: input {name} is injected nowhere"
    for name in extra_vars:
        if name in NAMED_BY_SETTING:  # the rotation reads the variable its setting names
            setting = NAMED_BY_SETTING[name]
            rotation = (PROJECT_ROOT / "module_utils" / "opsbook_rotation.py").read_text()
            assert f'"{setting}"' in rotation
            assert f"{setting}: {name}" in (PROJECT_ROOT / "docs" / "awx.md").read_text()
        else:
            assert name in read_by_runbooks, f"{path.name}: no runbook reads {name}"


@pytest.mark.parametrize("path", TYPE_FILES, ids=lambda p: p.stem)
def test_every_injected_input_is_required(path: Path) -> None:
    """AWX renders an input left empty as "" (a boolean as false) and injects that: an optional
    field's variable would override the inventory's value (admin_database_url: "")."""
    spec = load(path)
    ids = {field["id"] for field in spec["inputs"]["fields"]}
    required = set(spec["inputs"].get("required") or [])
    injectors = spec["injectors"]
    templates = [
        *(injectors.get("extra_vars") or {}).values(),
        *(injectors.get("env") or {}).values(),
    ]
    for fid in ids:
        if any(re.search(rf"\b{fid}\b", template) for template in templates):
            assert fid in required, f"{path.name}: {fid} is injected but optional"


@pytest.mark.parametrize("path", TYPE_FILES, ids=lambda p: p.stem)
def test_secrets_are_secret_fields_and_secret_variables(path: Path) -> None:
    """A field whose value is a secret is marked secret (AWX encrypts it, never shows it), and
    the variable it becomes is one the scrubbers mask (the shared secret-name rules)."""
    spec = load(path)
    fields = {field["id"]: field for field in spec["inputs"]["fields"]}
    for name, template in (spec["injectors"].get("extra_vars") or {}).items():
        sources = [fid for fid in fields if re.search(rf"\b{fid}\b", template)]
        secret = any(fields[fid].get("secret") for fid in sources)
        assert secret == bool(NAMES.is_secret_name(name)), f"{path.name}: {name}"
    for fid, field in fields.items():
        if NAMES.is_secret_name(fid) or fid in ("token", "api_key", "api_token", "webhook_url"):
            assert field.get("secret") is True, f"{path.name}: {fid} is not secret"


def test_the_known_hosts_file_reaches_ssh_in_the_inventories() -> None:
    for env in ("staging", "production"):
        hosts = yaml.safe_load((PROJECT_ROOT / "inventories" / env / "hosts.yml").read_text())
        app = hosts["all"]["children"]["app"]["vars"]
        template = jinja2.Environment().from_string(app["ansible_ssh_common_args"])
        both = template.render(
            opsbook_ssh_extra_args="-o ProxyJump=bastion", opsbook_ssh_known_hosts_file="/runner/kh"
        ).split()
        assert both == ["-o", "ProxyJump=bastion", "-o", "UserKnownHostsFile=/runner/kh"], env
        assert template.render().split() == [], env  # neither: ssh's own defaults
        assert template.render(opsbook_ssh_known_hosts_file="/k").split() == [
            "-o", "UserKnownHostsFile=/k"
        ], env  # fmt: skip
