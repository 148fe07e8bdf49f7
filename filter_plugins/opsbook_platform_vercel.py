# Copyright: opsbook contributors
# Apache-2.0
"""The platform_vercel role's filters: the output facts of its entry points (platform_deploy,
platform_rollback, platform_maintenance, platform_env_result), built from the registered
results of its steps - the outcome rules in one place instead of a chain of conditional
set_facts. Pure functions of their inputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    count_calls,
    deploy_fact,
    rollback_outcome,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import msg as _msg
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import ok as _ok
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import part as _get
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import ran as _ran

TARGET = "vercel"


def platform_vercel_calls(results: Iterable[Any]) -> int:
    """API calls made by the vercel_* results given (every attempt)."""
    return count_calls(results)


def platform_vercel_deploy_fact(steps: Mapping[str, Any], unit: str, check_mode: bool) -> dict:
    """platform_deploy from the deploy entry point's steps: ``redeploy`` (vercel_deployment
    action=redeploy), ``gate``, ``rolled`` (action=rollback), ``regate``."""
    redeploy, gate = steps.get("redeploy"), steps.get("gate")
    rolled, regate = steps.get("rolled"), steps.get("regate")
    before = _get(redeploy, "before")
    before_id = str(before.get("id") or "")
    state: dict[str, Any] = {
        "outcome": "untouched",
        "error": "",
        "needed": True,
        "before": before_id or None,
        "before_version": before.get("version") or None,
        "rolled_back_to": None,
    }
    deployment = ""
    if steps.get("problem"):
        state.update(outcome="failed", error=str(steps["problem"]))
    elif not _ok(redeploy):
        made = redeploy.get("changed") if isinstance(redeploy, Mapping) else False
        deployment = str(_get(redeploy, "deployment").get("id") or "") if made else ""
        state.update(outcome="failed", error=_msg(redeploy) or "the redeploy did not run")
    elif not redeploy.get("changed"):
        state.update(outcome="unchanged", needed=False)
    elif check_mode:
        state["outcome"] = "untouched"
    else:
        deployment = str(_get(redeploy, "deployment").get("id") or "")
        if _ok(gate) and gate.get("ok"):
            state["outcome"] = "deployed"
        else:
            problem = f"health gate failed: {_msg(gate) or 'it did not run'}"
            none = f"nothing served production before, nothing to roll back to ({deployment} "
            none += "serves)"
            state.update(rollback_outcome(problem, rolled, regate, before_id, none))
    calls = platform_vercel_calls([redeploy, rolled])
    return deploy_fact(TARGET, deployment, before_id, unit, state, calls)


def platform_vercel_rollback_fact(steps: Mapping[str, Any], unit: str, check_mode: bool) -> dict:
    """platform_rollback from the rollback entry point's steps: ``rolled`` (vercel_deployment
    action=rollback), ``gate`` (http_gate on the version rolled back to)."""
    rolled, gate = steps.get("rolled"), steps.get("gate")
    before, target = _get(rolled, "before"), _get(rolled, "deployment")
    state: dict[str, Any] = {
        "outcome": "failed",
        "from": str(before.get("id") or ""),
        "to": str(target.get("id") or ""),
        "to_version": str(target.get("version") or ""),
        "error": "",
    }
    changed = bool(isinstance(rolled, Mapping) and rolled.get("changed"))
    if steps.get("problem"):
        state.update(to="", to_version="", error=str(steps["problem"]))
    elif not _ok(rolled):
        state.update(to="", to_version="", error=_msg(rolled) or "the rollback did not run")
    elif check_mode or (_ok(gate) and gate.get("ok")):
        state["outcome"] = "rolled_back" if changed else "unchanged"
    else:
        state["error"] = f"{_msg(rolled)}; health gate failed: {_msg(gate) or 'it did not run'}"
    return {
        "target": TARGET,
        "api_calls": platform_vercel_calls([rolled]),
        "units": {unit: state},
    }


def platform_vercel_maintenance_fact(
    steps: Mapping[str, Any], unit: str, on: bool, check_mode: bool
) -> dict:
    """platform_maintenance from the maintenance entry point's steps: ``env`` (vercel_env),
    ``before`` (http_check before), ``redeployed`` (vercel_deployment action=redeploy of the
    current deployment), ``after`` (http_check after)."""
    env, before = steps.get("env"), steps.get("before")
    redeployed, after = steps.get("redeployed"), steps.get("after")
    last = after if _ran(after) else before
    active = _ran(last) and last.get("status") == 503
    changed = bool(_ran(env) and env.get("changed")) or bool(
        _ok(redeployed) and redeployed.get("changed")
    )
    error = ""
    if steps.get("problem"):
        error = str(steps["problem"])
    elif not _ok(env):
        error = _msg(env) or "MAINTENANCE_MODE was not set"
    elif _ran(redeployed) and not _ok(redeployed):
        error = (
            "MAINTENANCE_MODE is set as asked; the redeploy that makes the app read it: "
            f"{_msg(redeployed)}"
        )
    elif _ran(after) and not after.get("ok"):
        error = f"the app does not answer as asked after the redeploy: {_msg(after)}"
    elif not check_mode and active != on:
        error = f"the app {'does not answer' if on else 'still answers'} 503 on /health"
    return {
        "target": TARGET,
        "state": "on" if on else "off",
        "changed": changed,
        "active": active,
        "error": error,
        "api_calls": platform_vercel_calls([env, redeployed]),
        "units": {unit: {"active": active, "changed": changed}},
    }


def platform_vercel_env_fact(steps: Mapping[str, Any], apply: bool) -> dict:
    """platform_env_result from the env entry point's steps: ``env`` (vercel_env) and
    ``redeployed`` (the redeploy that applies them). Names only, never a value."""
    env, redeployed = steps.get("env"), steps.get("redeployed")
    names = sorted((env.get("keys") or {}) if isinstance(env, Mapping) else {})
    changed_names = list(env.get("changed_keys") or []) if isinstance(env, Mapping) else []
    error = ""
    if steps.get("problem"):
        error = str(steps["problem"])
    elif not _ok(env):
        error = _msg(env) or "the variables were not written"
    elif apply and changed_names and not _ok(redeployed):
        error = (
            "the variables are set; the redeploy that makes the app read them: "
            f"{_msg(redeployed) or 'it did not run'}"
        )
    applied = bool(_ok(redeployed) and redeployed.get("changed"))
    return {
        "target": TARGET,
        "changed": bool(changed_names),
        "names": names,
        "changed_names": changed_names,
        "applied": applied,
        "api_calls": platform_vercel_calls([env, redeployed]),
        "error": error,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "platform_vercel_calls": platform_vercel_calls,
            "platform_vercel_deploy_fact": platform_vercel_deploy_fact,
            "platform_vercel_rollback_fact": platform_vercel_rollback_fact,
            "platform_vercel_maintenance_fact": platform_vercel_maintenance_fact,
            "platform_vercel_env_fact": platform_vercel_env_fact,
        }
