"""The runbooks' input declarations (playbooks/vars/inputs/) and the check that reads them
(action_plugins/opsbook_inputs.py): its pure parts, every declaration, and that `opsbook run`
(src/opsbook/project.py) knows exactly the names the preflight knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opsbook import project as proj
from tests.loaders import PROJECT_ROOT, load_plugin

oi = load_plugin("action_plugins", "opsbook_inputs")

INPUTS = PROJECT_ROOT / "playbooks" / "vars" / "inputs"
ROLES = PROJECT_ROOT / "roles"
RUNBOOKS = sorted(r.name for r in proj.list_runbooks(PROJECT_ROOT))


def declaration(runbook: str) -> dict[str, Any]:
    return oi.load_declaration(str(INPUTS), runbook)


def roles(role: str) -> dict[str, dict[str, Any]]:
    return oi.role_options(str(ROLES), role)


def known(runbook: str) -> set[str]:
    return oi.known_names(declaration(runbook), declaration, roles)


# ------------------------------------------------------------------------ the declarations


def test_every_runbook_declares_its_inputs_and_nothing_else_is_declared() -> None:
    assert len(RUNBOOKS) >= 12
    declared = sorted(p.stem for p in INPUTS.glob("*.yml") if p.stem != oi.COMMON)
    assert declared == RUNBOOKS
    for runbook in [*RUNBOOKS, oi.COMMON]:
        found = declaration(runbook)  # raises DeclarationError when malformed
        for name, spec in (found.get("options") or {}).items():
            assert spec.get("description"), f"{runbook}: {name} has no description"
        for role in found.get("role_inputs") or []:
            assert roles(role), f"{runbook}: role {role} has no inputs"


def test_opsbook_run_knows_the_names_the_preflight_knows() -> None:
    for runbook in RUNBOOKS:
        assert proj.known_inputs(PROJECT_ROOT, runbook) == known(runbook), runbook
    assert proj.known_inputs(PROJECT_ROOT, "no_such_runbook") is None


def test_the_deploy_hooks_are_known_inputs() -> None:
    """roles/deploy's inputs (its argument specs) are known: -e deploy_hook_... is no typo."""
    hooks = {f"deploy_hook_{p}" for p in ("after_unpack", "before_switch", "after_switch")}
    assert hooks | {"deploy_hook_after_rollback"} <= known("deploy")
    assert "deploy_hook_after_rollback" in known("rollback")


def test_tour_knows_what_the_runbooks_it_imports_know() -> None:
    tour = known("tour")
    assert {"tour_app_version", "deploy_batch", "rollback_to", "pg_backup_keep_last"} <= tour
    assert "opsbook_reason" in tour
    assert "maintenance" not in tour  # maintenance_mode is not part of the tour


def _role_defaults(path: Path) -> dict[str, Any]:
    """The deploy role's defaults (the inputs of deploy.yml and rollback.yml under the names
    users set), leaving out those derived from another variable (a template)."""
    found = yaml.safe_load(path.read_text())
    return {name: value for name, value in found.items() if "{{" not in str(value)}


def test_declared_defaults_are_the_ones_the_playbooks_apply() -> None:
    applied = _role_defaults(PROJECT_ROOT / "roles" / "deploy" / "defaults" / "main.yml")
    assert {"deploy_batch", "deploy_keep_releases", "deploy_health_retries"} <= set(applied)
    for runbook in ("deploy", "rollback"):
        for name, spec in declaration(runbook)["options"].items():
            if name in applied and "default" in spec:
                assert str(spec["default"]) == str(applied[name]), f"{runbook}: {name}"


# ------------------------------------------------------------------------ values


DEPLOY = declaration("deploy")["options"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2, 2), ("2", 2), ("50%", "50%"), ("100%", "100%"), (" 3 ", 3)],
)
def test_deploy_batch_accepts_a_count_or_a_percentage(value: Any, expected: Any) -> None:
    assert oi.check_value("deploy_batch", DEPLOY["deploy_batch"], value) == (expected, None)


@pytest.mark.parametrize("value", ["abc", "0", 0, "-1", "0%", "150%", "2.5", True, "50 %"])
def test_deploy_batch_refuses_the_rest_naming_it_and_what_it_accepts(value: Any) -> None:
    converted, problem = oi.check_value("deploy_batch", DEPLOY["deploy_batch"], value)
    assert converted is None
    assert problem.startswith("deploy_batch=")
    assert "deploy_batch accepts a number of hosts (at least 1) or a percentage" in problem


def test_check_values_lists_every_problem_with_what_each_input_accepts() -> None:
    values, problems = oi.check_values(
        DEPLOY,
        {
            "app_artifact": "/tmp/a.tgz",
            "deploy_keep_releases": "0",
            "deploy_canary": "x",
            "deploy_window_utc": "25:00-01:00",
            "deploy_health_delay_s": "0.25",
            "hotfix": "yes",
            "deploy_shared_paths": ["logs"],
        },
    )
    assert values == {
        "app_artifact": "/tmp/a.tgz",
        "deploy_health_delay_s": 0.25,
        "hotfix": True,
        "deploy_shared_paths": ["logs"],
    }
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "app_version is required (the version to ship" in text
    assert "deploy_keep_releases='0' is out of range: deploy_keep_releases accepts a whole" in text
    assert "deploy_canary='x' is not valid" in text
    assert "deploy_window_utc='25:00-01:00' is not valid: deploy_window_utc accepts HH:MM" in text


def test_choices_without_case_and_secrets_never_shown() -> None:
    spec = declaration("maintenance_mode")["options"]["maintenance"]
    assert oi.check_value("maintenance", spec, True) == ("True", None)
    assert oi.check_value("maintenance", spec, "OFF") == ("OFF", None)
    assert "one of on, off, true, false" in oi.check_value("maintenance", spec, "maybe")[1]
    secret = {"type": "int", "no_log": True, "description": "x"}
    assert "s3cret" not in oi.check_value("api_pin", secret, "s3cret")[1]
    assert "s3cret" not in oi.check_value("db_password", {"type": "int"}, "s3cret")[1]


def test_rules_between_inputs() -> None:
    rules = declaration("rollback")["rules"]
    assert oi.check_rules(rules, {"rollback_database": "none"}) == []
    problems = oi.check_rules(rules, {"rollback_database": "down", "migrations_dir": ""})
    assert problems == [
        "rollback_database=down needs migrations_dir and migrate_target (-e migrations_dir=...)"
    ]
    fix_rules = declaration("data_fix")["rules"]
    assert oi.check_rules(fix_rules, {"data_fix_verify": "select 1", "data_fix_verify_file": "f"})
    assert not oi.check_rules(fix_rules, {"data_fix_verify": "select 1"})


def test_role_inputs_are_checked_against_the_role_spec() -> None:
    specs = roles("pg_backup")
    assert oi.check_role_inputs(specs, {"pg_backup_keep_last": "7", "unrelated": "x"}) == []
    problems = oi.check_role_inputs(specs, {"pg_backup_keep_last": "abc"})
    assert problems == [
        "pg_backup_keep_last='abc' is not valid: the role input pg_backup_keep_last takes a "
        "whole number"
    ]


def test_inventory_requirements() -> None:
    inventory = declaration("deploy")["inventory"]
    hosts = {"app1": {"deploy_root": "/srv", "app_base_url": "http://a"}, "app2": {}}
    on_hosts = {"deploy_target": "hosts"}  # the declared default when the inventory is silent
    problems = oi.check_inventory(
        inventory, {"opsbook_env": "test"}, {"app": ["app1", "app2"]}, hosts.__getitem__, on_hosts
    )
    assert problems == [
        "the inventory does not set opsbook_state_url (group_vars/all/vars.yml)",
        "host app2 (group app) has no deploy_root, app_base_url",
    ]
    state = {"opsbook_env": "t", "opsbook_state_url": "x"}
    empty = oi.check_inventory(inventory, state, {}, {}.get, on_hosts)
    assert empty == ["the inventory has no host in group app"]
    # on a platform the app hosts are not needed (when: {deploy_target: hosts})
    assert oi.check_inventory(inventory, state, {}, {}.get, {"deploy_target": "vercel"}) == []


def test_a_required_if_condition_sees_the_declared_default() -> None:
    rules = declaration("deploy")["rules"]
    defaults = {"deploy_target": "hosts"}
    assert oi.check_rules(rules, {}, defaults) == [
        "deploy_target=hosts needs app_artifact (-e app_artifact=...)"
    ]
    assert oi.check_rules(rules, {"deploy_target": "render"}, defaults) == []
    assert oi.check_rules(rules, {"app_artifact": "a.tgz"}, defaults) == []


# ------------------------------------------------------------------------ names and commands


def test_unknown_names_are_warned_with_the_closest_known_one() -> None:
    warnings = oi.unknown_warnings(
        "data_fix",
        ["data_fix_verify_sql", "data_fix_file", "awx_job_id", "ansible_user", "zzz"],
        known("data_fix"),
    )
    assert warnings == [
        "-e data_fix_verify_sql: data_fix has no input of that name; did you mean data_fix_verify?",
        "-e zzz: data_fix has no input of that name; it is ignored",
    ]
    assert proj.unknown_input_warnings(PROJECT_ROOT, "data_fix", ["data_fix_verify_sql"]) == [
        warnings[0]
    ]


def test_rerun_commands_add_the_switch_and_hide_secrets() -> None:
    commands = oi.rerun_commands(
        "deploy",
        {
            "app_version": "2.0.0",
            "app_artifact": "https://bot:pw@artifacts.example/app.tgz?token=abc",
            "api_token": "tok",
            "opsbook_reason": "fix the login",
            "deploy_shared_paths": ["logs"],
            "break_lock": False,
        },
        {"break_lock": True},
        env="production",
        inventory=["inventories/production"],
        playbook="playbooks/deploy.yml",
        limit="app1",
        check=False,
        secret_names=set(),
    )
    assert commands["opsbook"] == (
        "opsbook run deploy --env production -e break_lock=true -e app_version=2.0.0 "
        "-e 'app_artifact=https://...@artifacts.example/app.tgz?...' -e api_token=... "
        """-e '{"deploy_shared_paths": ["logs"]}' --reason 'fix the login' --limit app1"""
    )
    assert commands["ansible_playbook"].startswith(
        "ansible-playbook -i inventories/production playbooks/deploy.yml -e break_lock=true "
    )
    assert "-e 'opsbook_reason=fix the login' --limit app1" in commands["ansible_playbook"]
    for text in commands.values():
        assert "pw@" not in text and "token=abc" not in text and "tok " not in text


def test_env_name_from_the_inventory(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "hosts.yml").write_text("all: {}\n")
    assert oi.env_name([str(tmp_path / "staging")], "x") == "staging"
    assert oi.env_name([str(tmp_path / "staging" / "hosts.yml")], "x") == "staging"
    assert oi.env_name(["/nonexistent"], "prod") == "prod"


def test_an_optional_group_may_be_empty_but_its_hosts_hold_the_names() -> None:
    inventory = declaration("health_check")["inventory"]
    assert oi.check_inventory(inventory, {}, {"dbadmin": ["localhost"]}, {}.get) == []
    hosts = {"app1": {}, "localhost": {}}
    groups = {"app": ["app1"], "dbadmin": ["localhost"]}
    assert oi.check_inventory(inventory, {}, groups, hosts.__getitem__) == [
        "host app1 (group app) has no app_base_url"
    ]
