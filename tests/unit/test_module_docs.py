"""ansible-doc renders every module in library/ by its FQCN (opsbook.runbooks.<name>, the
collection's), in one run of ansible-doc for all of them.

What is judged is opsbook's documentation: every option (doc fragments merged) and every
return value is shown, the examples are YAML, and Ansible itself warns about nothing in it.
A third party's Python warning on stderr (a DeprecationWarning a new dependency release
prints) is not ours to judge here: constraints.txt pins what is installed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness import ansible_env, run_ansible
from tests.loaders import PROJECT_ROOT, load_library, module_documentation

MODULES = sorted(p.stem for p in (PROJECT_ROOT / "library").glob("*.py"))

# Texts a reader must find in a module's page beyond its options and return values: the
# notes and links that explain why.
EXTRA_TEXTS = {
    "pg_datafix": ["opsbook:verify"],
    "pg_maintenance": ["pgsql-bloat-estimation"],
    "pg_migrate": ["no-transaction"],
}

# Ansible's own complaints about a plugin's documentation, never a third party's warning.
ANSIBLE_COMPLAINT = re.compile(r"^\s*\[(WARNING|DEPRECATION WARNING|ERROR)\]", re.MULTILINE)


@pytest.fixture(scope="module")
def rendered() -> subprocess.CompletedProcess[str]:
    """One ansible-doc run for every module, the way a user reads them."""
    return run_ansible(
        [f"opsbook.runbooks.{name}" for name in MODULES],
        env=ansible_env(oplog=Path(os.devnull)),
        timeout=120,
        tool="ansible-doc",
    )


def pages(rendered: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The rendered text split into one page per module ("> MODULE name (path)" starts one)."""
    found: dict[str, str] = {}
    for page in re.split(r"(?m)^(?=> MODULE )", rendered.stdout):
        page = re.sub(r"\x1b\[[0-9;]*m", "", page)  # bold (required options) even with NOCOLOR
        match = re.match(r"> MODULE (\S+)", page)
        if match:
            found[match.group(1).removeprefix("opsbook.runbooks.")] = page
    return found


def test_ansible_doc_renders_every_module_without_complaint(
    rendered: subprocess.CompletedProcess[str],
) -> None:
    assert len(MODULES) >= 17
    assert rendered.returncode == 0, rendered.stderr
    complaints = ANSIBLE_COMPLAINT.findall(rendered.stderr)
    assert not complaints, rendered.stderr
    assert sorted(pages(rendered)) == MODULES


def test_ansible_complaints_are_told_from_third_party_warnings() -> None:
    third_party = (
        "/x/_ssh_agent.py:18: CryptographyDeprecationWarning: DSA is deprecated and support"
        " will be removed in a future release.\n  from cryptography import dsa\n"
    )
    ours = "[WARNING]: pg_backup: option 'keep_last' documented twice\n"
    assert not ANSIBLE_COMPLAINT.search(third_party)
    assert ANSIBLE_COMPLAINT.search(ours)
    assert ANSIBLE_COMPLAINT.search("[DEPRECATION WARNING]: x\n")


@pytest.mark.parametrize("name", MODULES)
def test_module_page_shows_its_options_returns_and_examples(
    rendered: subprocess.CompletedProcess[str], name: str
) -> None:
    page = pages(rendered).get(name)
    assert page is not None, f"ansible-doc rendered no page for {name}"
    module = load_library(name)
    doc = module_documentation(module)
    assert doc["module"] == name
    for option in doc.get("options") or {}:
        assert re.search(rf"(?m)^[-=] {re.escape(option)}(\s|$)", page), f"{name}: option {option}"
    returned = yaml.safe_load(module.RETURN) or {}
    assert returned, f"{name} documents no return values"
    assert "RETURN VALUES" in page
    for key in returned:
        assert re.search(rf"(?m)^[-=] {re.escape(key)}(\s|$)", page), f"{name}: return value {key}"
    assert "EXAMPLES" in page and yaml.safe_load(module.EXAMPLES), name
    for attribute in doc.get("attributes") or {}:
        assert f"{attribute}:" in page, f"{name}: attribute {attribute}"
    for text in EXTRA_TEXTS.get(name, []):
        assert text in page, f"{name}: {text}"
    if "opsbook.runbooks.opsbook_pg" in (doc.get("extends_documentation_fragment") or []):
        assert "Shared by every opsbook Postgres module" in page


# Options a module documents that its action plugin takes on the controller, not the module.
ACTION_ONLY_OPTIONS = {"app_release": {"src"}}


@pytest.mark.parametrize(
    "name", [n for n in MODULES if callable(getattr(load_library(n), "argument_spec", None))]
)
def test_documented_options_are_the_argument_spec(name: str) -> None:
    """What ansible-doc shows (doc fragments merged) is what the module takes: the same
    names, types, defaults and choices."""
    module = load_library(name)
    documented = module_documentation(module)["options"]
    spec = module.argument_spec()
    assert set(documented) - ACTION_ONLY_OPTIONS.get(name, set()) == set(spec)
    for option, declared in spec.items():
        shown = documented[option]
        assert shown.get("type", "str") == declared.get("type", "str"), option
        assert shown.get("default") == declared.get("default"), option
        assert shown.get("choices") == declared.get("choices"), option

