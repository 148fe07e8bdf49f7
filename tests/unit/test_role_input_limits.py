"""The ranges of role inputs (role_input_limits in playbooks/vars/inputs/common.yml), checked by
the runbooks' preflight (action_plugins/opsbook_inputs.py): a role input out of range is refused
naming it, and each declared range is the one the module behind the role enforces (a rule
written twice must not diverge)."""

from __future__ import annotations

from typing import Any

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.loaders import PROJECT_ROOT, load_library, load_plugin

oi = load_plugin("action_plugins", "opsbook_inputs")

INPUTS = PROJECT_ROOT / "playbooks" / "vars" / "inputs"
LIMITS: dict[str, dict[str, Any]] = oi.load_declaration(str(INPUTS), oi.COMMON)["role_input_limits"]


def role_specs(role: str) -> dict[str, dict[str, Any]]:
    return oi.role_options(str(PROJECT_ROOT / "roles"), role)


def test_out_of_range_is_refused_naming_the_input_and_what_it_takes() -> None:
    specs = role_specs("pg_backup")
    given = {"pg_backup_keep_last": "-1", "pg_backup_part_size_mb": 6000,
             "pg_backup_keep_daily": "0", "pg_backup_compression_level": 19}  # fmt: skip
    assert oi.check_role_inputs(specs, given, LIMITS) == [
        "pg_backup_keep_last='-1' is out of range: the role input pg_backup_keep_last takes a "
        "whole number of at least 0",
        "pg_backup_part_size_mb=6000 is out of range: the role input pg_backup_part_size_mb "
        "takes a whole number from 5 to 5120",
    ]
    # a wrong type says the range too; without limits, the type alone
    assert oi.check_role_inputs(specs, {"pg_backup_keep_last": "abc"}, LIMITS) == [
        "pg_backup_keep_last='abc' is not valid: the role input pg_backup_keep_last takes a "
        "whole number of at least 0"
    ]
    assert oi.check_role_inputs(specs, {"pg_backup_keep_last": "-1"}) == []


def test_a_malformed_limit_is_a_declaration_error() -> None:
    assert oi.declaration_problems({"role_input_limits": {"x": {"min": 0}}}) == []
    for bad in ({"x": {"least": 0}}, {"x": {}}, ["x"], {"x": 0}):
        assert oi.declaration_problems({"role_input_limits": bad}) == [
            "role_input_limits must map role input names to {min, max}"
        ]


# Each limited input, the module option its role passes it to, and the module.
ROLE_MODULES = {"pg_backup": "pg_backup", "pg_restore": "pg_restore"}
REQUIRED = {"dsn": "postgresql://u@h/db", "storage_url": "file:///backups",
            "target_database": "restored"}  # fmt: skip


def module_errors(module: Any, option: str, value: int) -> list[str]:
    spec = module.argument_spec()
    params = {k: v for k, v in REQUIRED.items() if k in spec}
    checked = ArgumentSpecValidator(spec).validate({**params, option: value})
    assert not checked.error_messages, checked.error_messages
    return [e for e in module.validate_params(checked.validated_parameters) if option in e]


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_limit_is_the_range_its_module_enforces(name: str) -> None:
    role = next(r for r in ROLE_MODULES if name.startswith(r + "_"))
    assert name in role_specs(role), f"{name} is not an input of role {role}"
    assert role_specs(role)[name]["type"] == "int"
    module = load_library(ROLE_MODULES[role])
    option = name.removeprefix(role + "_")
    low, high = LIMITS[name].get("min"), LIMITS[name].get("max")
    if name == "pg_restore_drop_previous_after_days":
        low = 1  # the role's 0 means "off": the playbook omits the option then
    if low is not None:
        assert module_errors(module, option, low) == []
        assert module_errors(module, option, low - 1), f"the module takes {option}={low - 1}"
    if high is not None:
        assert module_errors(module, option, high) == []
        assert module_errors(module, option, high + 1), f"the module takes {option}={high + 1}"
