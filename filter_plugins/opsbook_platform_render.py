# Copyright: opsbook contributors
# Apache-2.0
"""The platform_render role's filters: the output facts of its entry points (platform_deploy,
platform_rollback), built from the registered results of its steps - one place for the
outcome rules instead of a chain of conditional set_facts. Pure functions of their inputs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    count_calls,
    deploy_fact,
    missing_inventory,
    rollback_outcome,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import msg as _msg
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import ok as _ok
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import ran as _ran

COMMIT_RE = re.compile(r"^[0-9a-fA-F]{7,40}$")


INVENTORY_VARS = {
    "render_service_id": "the Render service, srv-...",
    "render_api_key": "a Render API key, from the vault or an AWX credential",
    "app_base_url": "the app's public URL, for the health gate",
}


def platform_render_missing(values: Mapping[str, Any]) -> str:
    """'' when every inventory variable given has a value; else the sentence naming the
    missing ones (never a value)."""
    return missing_inventory(values, INVENTORY_VARS, "Render")


def _first_problem(*checks: tuple[bool, str]) -> str:
    """The message of the first check that failed ('' when none did)."""
    return next((message for failed, message in checks if failed), "")


def platform_render_source_kind(source: str) -> str:
    """``commit_id`` for a Git commit id (7 to 40 hex digits), else ``image_url``."""
    return "commit_id" if COMMIT_RE.match(source or "") else "image_url"


def platform_render_runs(live: Any, wanted: str) -> bool:
    """Whether the live deploy (render_service's summary) runs ``wanted`` - '' means whatever
    runs; a short commit id matches its full one."""
    if not wanted:
        return True
    have = str((live or {}).get("source") or "") if isinstance(live, Mapping) else ""
    if not have:
        return False
    if COMMIT_RE.match(wanted) and COMMIT_RE.match(have):
        return have.lower().startswith(wanted.lower()) or wanted.lower().startswith(have.lower())
    return have == wanted


def platform_render_calls(results: Iterable[Any]) -> int:
    """API calls made by the render_service / render_env results given (every attempt)."""
    return count_calls(results)


def platform_render_served_version(gate: Any, unit: str) -> str | None:
    """The version http_gate saw the app report for ``unit`` (None when it did not answer)."""
    if not _ran(gate):
        return None
    version = ((gate.get("by_host") or {}).get(unit) or {}).get("version")
    return None if version in (None, "") else str(version)


def platform_render_deploy_fact(steps: Mapping[str, Any], unit: str, check_mode: bool) -> dict:
    """platform_deploy from the deploy entry point's steps: ``listed`` (list_deploys),
    ``probe`` (one gate try before), ``needed`` (bool), ``deployed``, ``gate``, ``rolled``
    (rollback), ``regate``."""
    listed, probe = steps.get("listed"), steps.get("probe")
    deployed, gate = steps.get("deployed"), steps.get("gate")
    rolled, regate = steps.get("rolled"), steps.get("regate")
    live = (listed or {}).get("live") if _ok(listed) else None
    before = (live or {}).get("id") or ""
    state: dict[str, Any] = {
        "outcome": "untouched",
        "error": "",
        "needed": bool(steps.get("needed", True)),
        "before": before or None,
        "before_version": platform_render_served_version(probe, unit),
        "rolled_back_to": None,
    }
    deployment = ""
    problem = str(steps.get("problem") or "")
    if problem:
        state.update(outcome="failed", needed=True, error=problem)
    elif not _ok(listed):
        state.update(
            outcome="failed", needed=True, error=_msg(listed) or "the deploys were not read"
        )
    elif not state["needed"]:
        state["outcome"] = "unchanged"
    elif check_mode:
        state["outcome"] = "untouched"
    elif not _ok(deployed):
        new = (deployed or {}).get("deploy") or {}
        deployment = str(new.get("id") or "")
        kept = f"; {before} still serves" if before else ""
        state.update(outcome="failed", error=(_msg(deployed) or "the deploy did not run") + kept)
    else:
        deployment = str(((deployed or {}).get("deploy") or {}).get("id") or "")
        if _ok(gate) and gate.get("ok"):
            state["outcome"] = "deployed"
        else:
            problem = f"health gate failed: {_msg(gate)}"
            none = f"no earlier deploy to roll back to ({deployment} serves)"
            state.update(rollback_outcome(problem, rolled, regate, before, none))
    calls = platform_render_calls([listed, deployed, rolled])
    return deploy_fact("render", deployment, before, unit, state, calls)


def platform_render_rollback_fact(steps: Mapping[str, Any], unit: str, check_mode: bool) -> dict:
    """platform_rollback from the rollback entry point's steps: ``rolled`` (render_service
    action=rollback), ``gate`` (health), ``version`` (http_check of the version path)."""
    rolled, gate, version = steps.get("rolled"), steps.get("gate"), steps.get("version")
    result = rolled if isinstance(rolled, Mapping) else {}
    previous = result.get("previous") or {}
    target = result.get("rolled_back_to") or result.get("deploy") or {}
    served = None
    if _ran(version) and isinstance(version.get("json"), Mapping):
        served = version["json"].get("version")
    state: dict[str, Any] = {
        "outcome": "failed",
        "from": previous.get("id") or "",
        "to": target.get("id") or "",
        "to_version": "" if served is None else str(served),
        "deployment": ((result.get("deploy") or {}).get("id") or "")
        if result.get("changed")
        else "",
        "error": "",
    }
    problem = str(steps.get("problem") or "")
    if problem:
        state.update(to="", error=problem)
    elif not _ok(rolled):
        state.update(to="", error=_msg(rolled) or "the rollback did not run")
    elif check_mode:
        state["outcome"] = "rolled_back" if result.get("changed") else "unchanged"  # as hosts
    elif _ok(gate) and gate.get("ok"):
        state["outcome"] = "rolled_back" if result.get("changed") else "unchanged"
    else:
        state["error"] = f"{_msg(rolled)}; health gate failed: {_msg(gate)}"
    return {
        "target": "render",
        "api_calls": platform_render_calls([rolled]),
        "units": {unit: state},
    }


def platform_render_maintenance_fact(
    steps: Mapping[str, Any], unit: str, on: bool, check_mode: bool
) -> dict:
    """platform_maintenance from the maintenance entry point's steps: ``env`` (render_env),
    ``before`` (http_check before), ``listed``, ``redeployed``, ``after`` (http_check after)."""
    env, before, listed = steps.get("env"), steps.get("before"), steps.get("listed")
    redeployed, after = steps.get("redeployed"), steps.get("after")
    last = after if _ran(after) else before
    active = _ran(last) and last.get("status") == 503
    changed = bool(_ran(env) and env.get("changed")) or bool(_ok(redeployed))
    redeploy = "MAINTENANCE_MODE is set; the redeploy that makes the app read it"
    error = _first_problem(
        (bool(steps.get("problem")), str(steps.get("problem") or "")),
        (not _ok(env), _msg(env) or "MAINTENANCE_MODE was not set"),
        (_ran(listed) and not _ok(listed), f"{redeploy}: {_msg(listed)}"),
        (_ok(listed) and not _ran(redeployed),
         "MAINTENANCE_MODE is set, but no deploy is live to redeploy: the next deploy reads it"),
        (_ran(redeployed) and not _ok(redeployed), f"{redeploy}: {_msg(redeployed)}"),
        (_ran(after) and not after.get("ok"),
         f"the app does not answer as asked after the redeploy: {_msg(after)}"),
        (not check_mode and active != on,
         f"the app {'does not answer' if on else 'still answers'} 503 on /health"),
    )  # fmt: skip
    return {
        "target": "render",
        "state": "on" if on else "off",
        "changed": changed,
        "active": active,
        "error": error,
        "api_calls": platform_render_calls([env, listed, redeployed]),
        "units": {unit: {"active": active, "changed": changed, "error": error}},
    }


def platform_render_env_vars(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """platform_env's items ({name, value, state}) as render_env's env_vars ({key, value,
    state}); state defaults to present, value to None (absent needs none)."""
    return [
        {
            "key": str(item.get("name") or item.get("key") or ""),
            "value": None if item.get("value") is None else str(item["value"]),
            "state": str(item.get("state") or "present"),
        }
        for item in items
    ]


def platform_render_env_fact(
    steps: Mapping[str, Any], items: Iterable[Mapping[str, Any]], apply: bool
) -> dict:
    """platform_env_result from the env entry point's steps: ``env`` (render_env), ``listed``,
    ``redeployed``. Names only - never a value."""
    env, listed, redeployed = steps.get("env"), steps.get("listed"), steps.get("redeployed")
    names = [str(i.get("name") or i.get("key") or "") for i in items]
    changed_names = list((env or {}).get("changed_keys") or []) if _ran(env) else []
    redeploy = "the variables are set; the redeploy that makes the app read them"
    error = _first_problem(
        (bool(steps.get("problem")), str(steps.get("problem") or "")),
        (_ran(env) and bool(env.get("failed")), _msg(env)),
        (_ran(listed) and not _ok(listed), f"{redeploy}: {_msg(listed)}"),
        (apply and bool(changed_names) and _ok(listed) and not _ran(redeployed),
         "the variables are set, but no deploy is live to redeploy: the next deploy reads them"),
        (_ran(redeployed) and not _ok(redeployed), f"{redeploy}: {_msg(redeployed)}"),
    )  # fmt: skip
    return {
        "target": "render",
        "changed": bool(_ran(env) and env.get("changed")),
        "names": names,
        "changed_names": changed_names,
        "applied": _ok(redeployed),
        "api_calls": platform_render_calls([env, listed, redeployed]),
        "error": error,
    }


def platform_render_scale_fact(steps: Mapping[str, Any], count: int) -> dict:
    """platform_scale from the scale entry point's ``scaled`` (render_service action=scale):
    ``before`` is always None - Render's document has no read of the instance count."""
    scaled = steps.get("scaled")
    error = str(steps.get("problem") or "") or (_msg(scaled) if not _ok(scaled) else "")
    return {
        "target": "render",
        "before": None,
        "after": None if error else count,
        "changed": bool(_ok(scaled) and scaled.get("changed")),
        "api_calls": platform_render_calls([scaled]),
        "error": error,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "platform_render_missing": platform_render_missing,
            "platform_render_source_kind": platform_render_source_kind,
            "platform_render_runs": platform_render_runs,
            "platform_render_calls": platform_render_calls,
            "platform_render_served_version": platform_render_served_version,
            "platform_render_deploy_fact": platform_render_deploy_fact,
            "platform_render_rollback_fact": platform_render_rollback_fact,
            "platform_render_maintenance_fact": platform_render_maintenance_fact,
            "platform_render_env_vars": platform_render_env_vars,
            "platform_render_scale_fact": platform_render_scale_fact,
            "platform_render_env_fact": platform_render_env_fact,
        }
