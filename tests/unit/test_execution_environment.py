"""The execution environment and ansible-navigator settings (issue 16, item 3).

`ansible-builder create` (no container engine needed: it only writes the build context) is run on
execution-environment.yml, and what it wrote is checked: the pinned base image, PGDG's repository
and PostgreSQL client on EL, the Debian client, zstd, and the Python requirements, which must be
the ones pyproject.toml declares (both read requirements.txt). ansible-navigator.yml is run for
real with `--ee false`, and the files it leaves must be ones git ignores.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from bindep.depends import Depends
from packaging.requirements import Requirement
from packaging.version import Version

from tests.harness import _tool
from tests.loaders import PROJECT_ROOT

EE_FILE = PROJECT_ROOT / "execution-environment.yml"
PGDG_EL9_REPO_RPM = (
    "https://download.postgresql.org/pub/repos/yum/reporpms/"
    "EL-9-$(uname -m)/pgdg-redhat-repo-latest.noarch.rpm"
)
RPM = ["platform:rpm", "platform:redhat", "platform:centos", "platform:centos-9"]
DPKG = ["platform:dpkg", "platform:debian", "platform:debian-12", "platform:debian-bookworm"]


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file, as setuptools' `file:` directive reads it."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def normalized(requirements: list[str]) -> list[str]:
    return [str(Requirement(line)) for line in requirements]


def pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def stages(containerfile: str) -> dict[str, str]:
    """The Containerfile's text per build stage (base, galaxy, builder, final)."""
    parts = re.split(r"^FROM \S+ AS (\w+)$", containerfile, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def supported_pg_major() -> int:
    """The PostgreSQL major the project runs its tests against (scripts/setup.sh installs it)."""
    setup = (PROJECT_ROOT / "scripts" / "setup.sh").read_text()
    majors = set(re.findall(r"/usr/lib/postgresql/(\d+)/bin/", setup))
    assert len(majors) == 1, majors
    return int(majors.pop())


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ee") / "context"
    subprocess.run(
        [_tool("ansible-builder"), "create", "--file", str(EE_FILE), "--context", str(out),
         "--output-filename", "Containerfile"],
        cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out


def test_pyproject_reads_its_dependencies_from_requirements_txt() -> None:
    project = pyproject()
    assert "dependencies" not in project["project"]
    assert "dependencies" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {
        "file": ["requirements.txt"]
    }
    lines = requirement_lines(PROJECT_ROOT / "requirements.txt")
    # setuptools reads requirement lines only: a pip option (-r, -c, --index-url) breaks the build.
    assert lines and not [line for line in lines if line.startswith("-")]
    # What setuptools made of it for the installed opsbook (scripts/setup.sh reinstalls when
    # requirements.txt changes).
    installed = [
        req for req in importlib.metadata.requires("opsbook") or [] if "extra ==" not in req
    ]
    assert sorted(normalized(installed)) == sorted(normalized(lines))


def test_the_build_context_has_the_pinned_base_image_and_python_3_11(context: Path) -> None:
    containerfile = (context / "Containerfile").read_text()
    base = re.search(r'^ARG EE_BASE_IMAGE="([^"]+)"$', containerfile, re.M)
    assert base, containerfile
    name, _, tag = base.group(1).rpartition(":")
    assert name == "quay.io/ansible/awx-ee"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"base image not pinned to a version: {tag}"
    # ansible-core 2.19 needs Python >= 3.11 on the controller; the base image's own is 3.9.
    assert re.search(r'^ARG PYCMD="/usr/bin/python3\.11"$', containerfile, re.M)
    assert re.search(r'^ARG PYPKG="python3\.11"$', containerfile, re.M)


def test_el_gets_the_postgresql_client_from_pgdg_before_bindep_installs(context: Path) -> None:
    major = supported_pg_major()
    containerfile = (context / "Containerfile").read_text()
    by_stage = stages(containerfile)
    assert list(by_stage) == ["base", "galaxy", "builder", "final"]
    # In the base stage, which the builder (bindep's compile packages) and final (run packages)
    # stages start from, and before any package is installed.
    base = by_stage["base"]
    assert f"RUN dnf install -y {PGDG_EL9_REPO_RPM}" in base
    assert base.index(PGDG_EL9_REPO_RPM) < base.index("$PKGMGR install $PYPKG")
    assert "/output/scripts/assemble" in by_stage["builder"]
    assert "/output/scripts/install-from-bindep" in by_stage["final"]
    # The final image proves it has the tools (pg_backup looks in /usr/pgsql-<major>/bin on EL).
    assert f"RUN /usr/pgsql-{major}/bin/pg_dump --version && zstd --version" in by_stage["final"]

    bindep = Depends((context / "_build" / "bindep.txt").read_text())
    assert {rule[0] for rule in bindep.active_rules(RPM)} == {f"postgresql{major}", "zstd"}
    assert {rule[0] for rule in bindep.active_rules(DPKG)} == {
        f"postgresql-client-{major}",
        "zstd",
    }


def test_the_ee_installs_the_requirements_pyproject_declares(context: Path) -> None:
    declared = requirement_lines(PROJECT_ROOT / "requirements.txt")
    in_context = requirement_lines(context / "_build" / "requirements.txt")
    assert normalized(in_context) == normalized(declared)
    assert {Requirement(line).name for line in declared} >= {
        "ansible-core", "ansible-runner", "psycopg", "boto3",
    }  # fmt: skip

    # ansible-core and ansible-runner go in first, in the base stage: the same ranges.
    containerfile = (context / "Containerfile").read_text()
    refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="([^"]+)"$', containerfile, re.M)
    assert refs
    by_name = {Requirement(line).name: str(Requirement(line)) for line in declared}
    for ref in refs.group(1).split():
        assert str(Requirement(ref)) == by_name[Requirement(ref).name]

    # Every pip install in the build is held to constraints.txt, the versions the suite passed
    # with: each pin must satisfy the ranges, or pip could not resolve them.
    assert (context / "_build" / "configs" / "constraints.txt").read_text() == (
        PROJECT_ROOT / "constraints.txt"
    ).read_text()
    assert "ENV PIP_CONSTRAINT=/output/opsbook-constraints.txt" in stages(containerfile)["base"]
    pins = {
        Requirement(line).name.lower(): Version(line.split("==", 1)[1])
        for line in requirement_lines(PROJECT_ROOT / "constraints.txt")
    }
    for line in declared + refs.group(1).split():
        req = Requirement(line)
        assert req.specifier.contains(pins[req.name.lower()]), (line, pins[req.name.lower()])


def test_navigator_settings_point_at_the_ee_and_leave_only_ignored_files(tmp_path: Path) -> None:
    settings = yaml.safe_load((PROJECT_ROOT / "ansible-navigator.yml").read_text())
    navigator = settings["ansible-navigator"]
    definition = yaml.safe_load(EE_FILE.read_text())
    image = navigator["execution-environment"]["image"]
    assert image == definition["options"]["tags"][0]
    assert image == f"opsbook-ee:{pyproject()['project']['version']}"
    assert navigator["execution-environment"]["enabled"] is True
    assert navigator["mode"] == "stdout"
    # playbook artifacts hold the extra vars in clear text: off unless asked for (--pae true)
    assert navigator["playbook-artifact"]["enable"] is False

    # A real run with the project's settings and --ee false (this virtualenv's Ansible).
    shutil.copy(PROJECT_ROOT / "ansible-navigator.yml", tmp_path)
    (tmp_path / "hello.yml").write_text(
        "- name: Hello\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Say hello\n      ansible.builtin.debug:\n        msg: hello from navigator\n"
    )
    env = {
        "PATH": f"{Path(_tool('ansible-playbook')).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    canary = "Canary-Navigator-Pw-5d2e"
    run = subprocess.run(
        [_tool("ansible-navigator"), "run", "hello.yml", "--ee", "false",
         "-e", f"database_url=postgresql://u:{canary}@db.example.com/app"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "hello from navigator" in run.stdout
    left = sorted(
        str(path.relative_to(tmp_path))
        for path in tmp_path.rglob("*")
        if path.is_file() and path.relative_to(tmp_path).parts[0] != ".cache"
    )
    log = navigator["logging"]["file"]
    # no playbook artifact by default: the -e password is in no file navigator left
    assert set(left) == {"ansible-navigator.yml", "hello.yml", log}, left
    assert not [path for path in left if canary in (tmp_path / path).read_text()]

    # Where an artifact goes when one is asked for (--pae true), and navigator's log: paths
    # that, in the project, git ignores (where there is a git checkout).
    artifact = navigator["playbook-artifact"]["save-as"].format(
        playbook_name="hello", time_stamp="2026-12-07T08:50:00.000000+00:00"
    )
    assert artifact.startswith(".opsbook/navigator/"), artifact
    has_git = shutil.which("git") is not None and (PROJECT_ROOT / ".git").exists()
    for path in (log, artifact) if has_git else ():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", path], cwd=PROJECT_ROOT, check=False
        )
        assert ignored.returncode == 0, f"{path} is not git-ignored"
