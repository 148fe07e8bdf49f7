"""The collection opsbook.runbooks and the project are one set of files that cannot drift.

The project's files (library/, module_utils/, ...) are the only copy; the collection
(collections/ansible_collections/opsbook/runbooks) links to them, and scripts/build_collection.py
copies them, links followed, into the tarball. Checked here: every link is there and points where
it should, nothing else lives in the collection but its metadata, the built copy is the project's
files byte for byte (and all of them), the metadata agrees with the code and pyproject.toml, and
the playbooks and roles call every module, role and filter of the collection by its FQCN.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.loaders import PROJECT_ROOT, VENV_BIN

VIEW = PROJECT_ROOT / "collections" / "ansible_collections" / "opsbook" / "runbooks"
FQ = "opsbook.runbooks"
#: the collection's path -> the project's directory it is
LINKS = {
    "plugins/modules": "library",
    "plugins/module_utils": "module_utils",
    "plugins/action": "action_plugins",
    "plugins/plugin_utils": "plugin_utils",
    "plugins/filter": "filter_plugins",
    "plugins/callback": "callback_plugins",
    "plugins/doc_fragments": "doc_fragments",
    "roles": "roles",
}
#: the collection's own files (everything else is a link)
OWN_FILES = {"galaxy.yml", "README.md", "meta/runtime.yml"}
#: plugin directories Ansible reads from a playbook project; one at the top of the project that
#: the collection does not link would be code the collection lacks
PLUGIN_DIR_NAMES = re.compile(
    r"^(library|module_utils|plugin_utils|doc_fragments|[a-z]+_plugins|roles)$"
)
MODULES = sorted(p.stem for p in (PROJECT_ROOT / "library").glob("*.py"))
ROLES = sorted(p.name for p in (PROJECT_ROOT / "roles").iterdir() if p.is_dir())


def filters() -> list[str]:
    names = []
    for path in (PROJECT_ROOT / "filter_plugins").glob("*.py"):
        text = path.read_text()
        names += re.findall(r'^\s+"([a-z_]+)":', text[text.index("def filters") :], re.M)
    return sorted(names)


def project_files(directory: str) -> dict[str, Path]:
    """Files of a project directory, relative to it (byte-code left out)."""
    root = PROJECT_ROOT / directory
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


# ------------------------------------------------------------------------- the view


@pytest.mark.parametrize("inside,directory", sorted(LINKS.items()))
def test_each_part_of_the_collection_is_a_link_to_the_projects_directory(
    inside: str, directory: str
) -> None:
    link = VIEW / inside
    assert link.is_symlink(), f"{inside} must link to {directory}/ (one copy of each file)"
    assert link.resolve() == (PROJECT_ROOT / directory).resolve()
    assert not Path(link.readlink()).is_absolute(), "a relative link survives a clone elsewhere"


def test_the_collection_holds_nothing_but_links_and_its_metadata() -> None:
    own = set()
    for path in VIEW.rglob("*"):
        rel = path.relative_to(VIEW).as_posix()
        if any(rel == link or rel.startswith(link + "/") for link in LINKS):
            continue
        if path.is_file():
            own.add(rel)
    sanity = {p for p in own if re.fullmatch(r"tests/sanity/ignore-2\.\d+\.txt", p)}
    assert own - sanity == OWN_FILES


def test_every_plugin_directory_of_the_project_is_in_the_collection() -> None:
    top = {p.name for p in PROJECT_ROOT.iterdir() if p.is_dir() and PLUGIN_DIR_NAMES.match(p.name)}
    assert top == set(LINKS.values())
    assert (PROJECT_ROOT / "playbooks" / "collections").resolve() == (
        PROJECT_ROOT / "collections"
    ).resolve(), "playbooks/collections links to collections/ (AWX, runner, navigator find it)"


# ------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the copied tree, the tarball) as scripts/build_collection.py makes them."""
    out = tmp_path_factory.mktemp("collection")
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "build_collection.py"), "--output-dir",
         str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    tarball = Path(done.stdout.strip().splitlines()[-1])
    return out / "collection" / "ansible_collections" / "opsbook" / "runbooks", tarball


def test_the_built_collection_is_the_projects_files_byte_for_byte(
    built: tuple[Path, Path],
) -> None:
    tree, tarball = built
    assert not [p for p in tree.rglob("*") if p.is_symlink()], "the build follows every link"
    for inside, directory in LINKS.items():
        source = project_files(directory)
        copied = {
            str(p.relative_to(tree / inside)): p for p in (tree / inside).rglob("*") if p.is_file()
        }
        assert sorted(copied) == sorted(source), inside
        for rel, path in source.items():
            assert copied[rel].read_bytes() == path.read_bytes(), f"{inside}/{rel}"
    with tarfile.open(tarball) as tar:
        files = json.load(tar.extractfile("FILES.json"))["files"]  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    checksums = {f["name"]: f["chksum_sha256"] for f in files if f["ftype"] == "file"}
    for inside, directory in LINKS.items():
        for rel, path in project_files(directory).items():
            name = f"{inside}/{rel}"
            assert checksums.get(name) == hashlib.sha256(path.read_bytes()).hexdigest(), name
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"]) == ("opsbook", "runbooks")


# ------------------------------------------------------------------------- the metadata


def runtime() -> dict[str, Any]:
    return yaml.safe_load((VIEW / "meta" / "runtime.yml").read_text())


def fragment_users(fragment: str) -> list[str]:
    return sorted(
        name
        for name in MODULES
        if f"- {FQ}.{fragment}\n" in (PROJECT_ROOT / "library" / f"{name}.py").read_text()
    )


def test_action_groups_are_the_modules_that_share_the_options() -> None:
    groups = runtime()["action_groups"]
    assert sorted(groups["postgres"]) == fragment_users("opsbook_pg")
    assert sorted(groups["storage"]) == fragment_users("opsbook_s3")
    assert len(groups["postgres"]) >= 9


def test_version_and_ansible_core_range_follow_pyproject() -> None:
    galaxy = yaml.safe_load((VIEW / "galaxy.yml").read_text())
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert galaxy["version"] == pyproject["project"]["version"]
    requirements = (PROJECT_ROOT / "requirements.txt").read_text()
    core = re.search(r"^ansible-core>=([\d.]+),<([\d.]+)", requirements, re.M)
    assert core, "requirements.txt pins an ansible-core range"
    low, high = core.groups()
    assert runtime()["requires_ansible"] == f">={low}.0,<{high}.0"


# ------------------------------------------------------------------------- FQCNs everywhere


def content_files() -> list[Path]:
    found = []
    for directory in ("playbooks", "roles", "molecule"):
        for path in sorted((PROJECT_ROOT / directory).rglob("*")):
            if "collections" in path.relative_to(PROJECT_ROOT).parts:
                continue
            if path.is_file() and path.suffix in (".yml", ".yaml", ".j2"):
                found.append(path)
    return found


def test_playbooks_and_roles_call_the_collections_content_by_fqcn() -> None:
    short_module = re.compile(r"^\s*(?:- )?(" + "|".join(MODULES) + r"):(\s|$)", re.M)
    short_filter = re.compile(r"\|\s*(" + "|".join(filters()) + r")\b")
    short_role = re.compile(
        r"(?:import_role|include_role):\s*\n\s+name:\s*['\"]?(" + "|".join(ROLES) + r"|platform_)"
    )
    problems = []
    for path in content_files():
        text = path.read_text()
        rel = path.relative_to(PROJECT_ROOT)
        in_vars = rel.parts[-2] in ("vars", "defaults", "inputs") or "vars" in rel.parts
        for match in short_module.finditer(text):
            if not (in_vars and not match.group(0).startswith((" ", "-"))):
                problems.append(f"{rel}: module {match.group(1)}")
        problems += [f"{rel}: filter {m.group(1)}" for m in short_filter.finditer(text)]
        problems += [f"{rel}: role {m.group(1)}" for m in short_role.finditer(text)]
    assert not problems, "\n".join(problems)
    assert len(content_files()) > 100


def test_ansible_cfg_reaches_the_code_only_through_the_collection() -> None:
    cfg = (PROJECT_ROOT / "ansible.cfg").read_text()
    for legacy in ("library", "module_utils", "action_plugins", "filter_plugins",
                   "callback_plugins", "doc_fragment_plugins", "roles_path"):  # fmt: skip
        assert not re.search(rf"(?m)^{legacy}\s*=", cfg), legacy
    assert re.search(r"(?m)^collections_path = collections:", cfg)
    assert re.search(r"(?m)^callbacks_enabled = opsbook\.runbooks\.opsbook_oplog$", cfg)


def test_ansible_doc_lists_the_collections_modules_filters_and_roles() -> None:
    """What a user of the collection reads first: one ansible-doc -l per plugin type."""
    listed = {}
    for kind in ("module", "filter", "role"):
        done = subprocess.run(
            [str(VENV_BIN / "ansible-doc"), "-t", kind, "-l", FQ, "--json"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        listed[kind] = set(json.loads(done.stdout))
    assert listed["module"] == {f"{FQ}.{m}" for m in MODULES}
    assert listed["filter"] == {f"{FQ}.{f}" for f in filters()}
    assert listed["role"] == {f"{FQ}.{r}" for r in ROLES}


def test_the_sanity_ignore_file_is_for_the_pinned_ansible_core() -> None:
    """ansible-test reads tests/sanity/ignore-<major.minor>.txt of the ansible-core that runs it
    (constraints.txt's pin, scripts/sanity.sh): a bump of the pin needs the file of its version."""
    constraints = (PROJECT_ROOT / "constraints.txt").read_text()
    pinned = re.search(r"(?m)^ansible-core==(\d+\.\d+)\.", constraints)
    assert pinned
    ignore = VIEW / "tests" / "sanity" / f"ignore-{pinned.group(1)}.txt"
    assert ignore.is_file(), f"{ignore.name} is missing for the pinned ansible-core"
    for line in ignore.read_text().splitlines():
        assert re.match(r"^plugins/\S+ \S+ # \S", line), f"every entry says why: {line}"
