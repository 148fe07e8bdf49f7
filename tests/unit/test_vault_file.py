"""opsbook._vault_file and runner.job_time_vault_files: the vault file an inventory names with
opsbook_vault_file, found the way Ansible layers the ``all`` group's variables, so that
`opsbook run` scrubs the values playbooks/_vault.yml will load."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsbook import runner as rn
from opsbook._vault_file import named_vault_file
from tests.harness import PROJECT_ROOT


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "project"
    (project / "playbooks").mkdir(parents=True)
    (project / "vault").mkdir()
    inventory = tmp_path / "inventories" / "ext"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    return project, inventory


def test_the_projects_inventories_name_their_vault_file() -> None:
    for env in ("staging", "production"):
        inventory = PROJECT_ROOT / "inventories" / env
        assert named_vault_file(PROJECT_ROOT, inventory) == (
            True, PROJECT_ROOT / "vault" / f"{env}.yml",
        )  # fmt: skip
        assert rn.job_time_vault_files(PROJECT_ROOT, env, inventory) == [
            PROJECT_ROOT / "vault" / f"{env}.yml"
        ]
    assert named_vault_file(PROJECT_ROOT, PROJECT_ROOT / "inventories" / "local") == (False, None)


def test_hosts_file_vars_then_group_vars_all_win(layout: tuple[Path, Path]) -> None:
    project, inventory = layout
    (inventory / "hosts.yml").write_text(
        "all:\n  vars:\n    opsbook_vault_file: '{{ inventory_dir }}/from-hosts.yml'\n"
        "  hosts: {app1: {}}\n"
    )
    assert named_vault_file(project, inventory) == (True, inventory / "from-hosts.yml")
    (inventory / "group_vars" / "all" / "a.yml").write_text(
        "opsbook_vault_file: '{{playbook_dir}}/../vault/ext.yml'\n"
    )
    (inventory / "group_vars" / "all" / "b.yml").write_text("other: 1\n")
    assert named_vault_file(project, inventory) == (True, project / "vault" / "ext.yml")


def test_ini_hosts_file_and_relative_paths(layout: tuple[Path, Path]) -> None:
    project, inventory = layout
    (inventory / "hosts").write_text(
        "[app]\napp1\n\n[app:vars]\nopsbook_vault_file=/not/this\n\n"
        "[all:vars]\nopsbook_vault_file='../secrets/ext.yml'\n"
    )
    # relative: to playbooks/ (as _vault.yml reads it)
    assert named_vault_file(project, inventory) == (True, project / "secrets" / "ext.yml")


def test_what_cannot_be_resolved_falls_back_and_says_so(layout: tuple[Path, Path]) -> None:
    project, inventory = layout
    (project / "vault" / "ext.yml").write_text("vault_x: y\n")
    (inventory / "group_vars" / "all" / "vars.yml").write_text(
        "opsbook_vault_file: '{{ secrets_dir }}/ext.yml'\n"
    )
    assert named_vault_file(project, inventory) == (True, None)
    problems: list[str] = []
    found = rn.job_time_vault_files(project, "ext", inventory, problems)
    assert found == [project / "vault" / "ext.yml"]
    assert problems and "opsbook_vault_file is a template opsbook cannot resolve" in problems[0]


def test_no_vault_file_named_or_missing(layout: tuple[Path, Path]) -> None:
    project, inventory = layout
    (inventory / "hosts.yml").write_text("all:\n  hosts: {app1: {}}\n")
    assert named_vault_file(project, inventory) == (False, None)
    assert rn.job_time_vault_files(project, "ext", inventory) == []  # no vault/ext.yml
    (inventory / "group_vars" / "all" / "vars.yml").write_text(
        "opsbook_vault_file: /nowhere/ext.yml\n"
    )
    assert rn.job_time_vault_files(project, "ext", inventory) == []


def test_the_vault_files_hold_only_vault_names() -> None:
    """playbooks/_vault.yml refuses other names (include_vars would override host_vars and
    the runbooks' variables): the example vault files comply."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import VaultSecret

    loader = DataLoader()
    loader.set_vault_secrets([("default", VaultSecret(b"opsbook-example-only"))])
    for env in ("staging", "production"):
        data = loader.load_from_file(str(PROJECT_ROOT / "vault" / f"{env}.yml"))
        assert data and all(str(key).startswith("vault_") for key in data), env
