"""ansible-doc documents every filter the filter plugins register and every role's entry points.

Filters: each name ``filter_plugins/*.py`` registers has ``filter_plugins/<name>.yml`` (the
format ansible-core documents its own filters in), which ansible-doc renders; its positional
arguments and options are the function's signature; each example marked ``# => value`` gives
that value when Ansible runs it. Roles: every entry point of every role has a description and
so has each of its options (``meta/argument_specs.yml``, which also validates the inputs).

One ansible-doc run for all the filters, one for all the roles, one ansible-playbook run for
every example.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ansible_env, run_ansible
from tests.loaders import PROJECT_ROOT, load_plugin


def doc_name(name: str) -> str:
    """The name ansible-doc and playbooks know a filter or a role by: its FQCN in the
    collection opsbook.runbooks."""
    return f"opsbook.runbooks.{name}"


FILTER_DIR = PROJECT_ROOT / "filter_plugins"
ROLES = sorted(p.parent.parent.name for p in PROJECT_ROOT.glob("roles/*/meta/argument_specs.yml"))
# The option types ansible-doc knows (ansible.module_utils.common.parameters).
TYPES = {
    "str", "string", "int", "integer", "float", "bool", "boolean", "list", "dict",
    "dictionary", "raw", "any", "path", "bytes", "bits", "jsonarg", "json",
}  # fmt: skip
# Ansible's own complaints about a plugin's documentation, never a third party's warning.
ANSIBLE_COMPLAINT = re.compile(r"^\s*\[(WARNING|DEPRECATION WARNING|ERROR)\]", re.MULTILINE)


def registered_filters() -> dict[str, Callable[..., Any]]:
    """Every filter the project's filter plugins register, by name."""
    found: dict[str, Callable[..., Any]] = {}
    for path in sorted(FILTER_DIR.glob("*.py")):
        for name, function in (
            load_plugin("filter_plugins", path.stem).FilterModule().filters().items()
        ):
            assert name not in found, f"filter {name} registered twice"
            found[name] = function
    return found


FILTERS = registered_filters()


def doc_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((FILTER_DIR / f"{name}.yml").read_text())


@pytest.fixture(scope="module")
def filter_docs() -> dict[str, Any]:
    """``ansible-doc -t filter --json`` for every filter, in one run."""
    rendered = run_ansible(
        ["-t", "filter", "--json", *(doc_name(n) for n in sorted(FILTERS))],
        env=ansible_env(oplog=Path(os.devnull)),
        timeout=120,
        tool="ansible-doc",
    )
    assert "Missing documentation" not in rendered.stderr, rendered.stderr
    assert rendered.returncode == 0, rendered.stderr
    assert not ANSIBLE_COMPLAINT.findall(rendered.stderr), rendered.stderr
    return json.loads(rendered.stdout)


@pytest.fixture(scope="module")
def role_docs() -> dict[str, Any]:
    """``ansible-doc -t role --json`` for every role, in one run."""
    rendered = run_ansible(
        ["-t", "role", "--json", *(doc_name(r) for r in ROLES)],
        env=ansible_env(oplog=Path(os.devnull)),
        timeout=120,
        tool="ansible-doc",
    )
    assert rendered.returncode == 0, rendered.stderr
    assert not ANSIBLE_COMPLAINT.findall(rendered.stderr), rendered.stderr
    return json.loads(rendered.stdout)


# ------------------------------------------------------------------------------ filters


def test_every_filter_has_its_doc_file_and_no_doc_file_is_left_over() -> None:
    assert len(FILTERS) >= 60
    documented = {p.stem for p in FILTER_DIR.glob("*.yml")}
    assert sorted(set(FILTERS) - documented) == [], "filters without filter_plugins/<name>.yml"
    assert sorted(documented - set(FILTERS)) == [], "doc files of no registered filter"
    for name in FILTERS:
        assert doc_file(name)["DOCUMENTATION"]["name"] == name


def test_ansible_doc_renders_every_filter(filter_docs: dict[str, Any]) -> None:
    assert sorted(filter_docs) == sorted(doc_name(n) for n in FILTERS)
    for name in FILTERS:
        page = filter_docs[doc_name(name)]
        doc = page["doc"]
        # the project's file (the collection holds it through a symlink)
        assert Path(doc["filename"]).resolve() == (FILTER_DIR / f"{name}.yml").resolve(), name
        assert doc["short_description"].strip(), name
        assert doc["description"] and all(str(d).strip() for d in doc["description"]), name
        assert "_input" in doc["options"], name
        assert page["examples"] and f"{doc_name(name)}" in page["examples"], name
        value = page["return"]["_value"]
        assert value["description"] and value["type"] in TYPES, name


def _option_problems(name: str, options: dict[str, Any], path: str = "") -> Iterator[str]:
    for option, spec in options.items():
        if not spec.get("description"):
            yield f"{name}: {path}{option} has no description"
        if spec.get("type", "str") not in TYPES:
            yield f"{name}: {path}{option} has the unknown type {spec.get('type')}"
        yield from _option_problems(name, spec.get("options") or {}, f"{path}{option}.")


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_documented_arguments_are_the_signature(name: str) -> None:
    """``_input`` is the first parameter; every other parameter is an option of the same name,
    required exactly when it has no default, with that default; ``positional`` lists the
    parameters that can be passed by position, in order."""
    doc = doc_file(name)["DOCUMENTATION"]
    options = doc["options"]
    assert list(_option_problems(name, options)) == []
    parameters = list(inspect.signature(FILTERS[name]).parameters.values())
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters), name
    names = ["_input", *(p.name for p in parameters[1:])]
    assert sorted(options) == sorted(names), name
    positional = [n for n, p in zip(names, parameters, strict=True) if p.kind != p.KEYWORD_ONLY]
    assert [n.strip() for n in str(doc["positional"]).split(",")] == positional, name
    for option, parameter in zip(names, parameters, strict=True):
        spec = options[option]
        has_default = parameter.default is not parameter.empty
        assert bool(spec.get("required")) is not has_default, f"{name}: {option} required"
        default = parameter.default if has_default else None
        if isinstance(default, tuple):
            default = list(default)
        assert spec.get("default") == default, f"{name}: {option} default"


# One example: ``# => <value>`` then ``key: <template>`` (its value may go on over more
# indented lines). The value is YAML (``[...]``, ``{...}``, ``true``, ``''``) or, for a string,
# the text itself.
_EXPECTED = re.compile(r"^(?P<indent>\s*)# => (?P<value>.*)$")


def checked_examples() -> list[tuple[str, str, str]]:
    """``(filter, expected, template)`` for every ``# =>`` example of every doc file."""
    found = []
    for name in sorted(FILTERS):
        lines = str(doc_file(name)["EXAMPLES"]).splitlines()
        for number, line in enumerate(lines):
            match = _EXPECTED.match(line)
            if not match:
                continue
            start = number + 1
            indent = len(match["indent"])
            end = start + 1
            while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > indent:
                end += 1
            snippet = yaml.safe_load("\n".join(line[indent:] for line in lines[start:end]))
            assert isinstance(snippet, dict) and len(snippet) == 1, f"{name}: {lines[start]}"
            template = next(iter(snippet.values()))
            found.append((name, match["value"].strip(), template))
    return found


def _same(expected: str, value: Any) -> bool:
    try:
        parsed = yaml.safe_load(expected)
    except yaml.YAMLError:
        parsed = expected
    return parsed == value or (isinstance(value, str) and expected == value)


def test_examples_give_the_values_they_show(tmp_path: Path) -> None:
    """Every ``# =>`` example, run by Ansible (one playbook), gives the value it shows."""
    examples = checked_examples()
    assert len(examples) >= 50
    assert {name for name, _, _ in examples} >= {
        "dsn_redact",
        "deploy_in_window",
        "routine_checks_fails",
    }
    out = tmp_path / "values.json"
    playbook = tmp_path / "examples.yml"
    keys = [f"example_{i}" for i in range(len(examples))]
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "The filters' documented examples",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "vars": {
                        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                        **{
                            key: template
                            for key, (_, _, template) in zip(keys, examples, strict=True)
                        },
                    },
                    "tasks": [
                        {
                            "name": "Write every value",
                            "ansible.builtin.copy": {
                                "content": "{{ {"
                                + ", ".join(f"'{key}': {key}" for key in keys)
                                + "} | to_json }}",
                                "dest": str(out),
                                "mode": "0600",
                            },
                        }
                    ],
                }
            ]
        )
    )
    ran = run_ansible(
        ["-i", "localhost,", str(playbook)],
        env=ansible_env(oplog=Path(os.devnull)),
        timeout=120,
        tool="ansible-playbook",
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    values = json.loads(out.read_text())
    wrong = [
        f"{name}: {template} gave {values[key]!r}, the example shows {expected!r}"
        for key, (name, expected, template) in zip(keys, examples, strict=True)
        if not _same(expected, values[key])
    ]
    assert wrong == []


def test_example_values_are_compared_as_yaml_or_as_text() -> None:
    assert _same("[1, 2]", [1, 2]) and _same("true", True) and _same("''", "")
    assert _same("a: b (not a mapping)", "a: b (not a mapping)")
    assert not _same("[1, 2]", [2, 1]) and not _same("false", True) and not _same("ok", "warn")


# -------------------------------------------------------------------------------- roles


def test_ansible_doc_renders_every_role_with_every_option_described(
    role_docs: dict[str, Any],
) -> None:
    assert len(ROLES) >= 20
    assert sorted(role_docs) == sorted(doc_name(r) for r in ROLES)
    problems = []
    for role in ROLES:
        entry_points = role_docs[doc_name(role)]["entry_points"]
        specs = yaml.safe_load(
            (PROJECT_ROOT / "roles" / role / "meta/argument_specs.yml").read_text()
        )
        assert sorted(entry_points) == sorted(specs["argument_specs"]), role
        for name, entry in entry_points.items():
            where = f"{role}:{name}"
            if not str(entry.get("short_description") or "").strip():
                problems.append(f"{where} has no short_description")
            description = entry.get("description") or []
            if not description or not all(str(d).strip() for d in description):
                problems.append(f"{where} has no description")
            problems.extend(_option_problems(where, entry.get("options") or {}))
    assert problems == []


def test_role_option_problems_are_found() -> None:
    options = {
        "a": {"type": "str", "description": "A."},
        "b": {"type": "dict", "options": {"c": {"type": "nope"}}},
    }
    assert list(_option_problems("r:main", options)) == [
        "r:main: b has no description",
        "r:main: b.c has no description",
        "r:main: b.c has the unknown type nope",
    ]
