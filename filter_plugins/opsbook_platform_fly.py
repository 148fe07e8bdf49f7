# Copyright: opsbook contributors
# Apache-2.0
"""The platform_fly role's filters: the bookkeeping of a rollout machine by machine (units
``fly:<machine id>``) and the output facts of its entry points (platform_deploy,
platform_rollback, platform_maintenance), built from the registered results of fly_machines,
fly_secrets and http_gate - one place for the outcome rules instead of a chain of conditional
set_facts. Pure functions of their inputs (tests/unit/test_opsbook_fly.py).

Unit outcomes of a deploy, as on hosts (filter_plugins/opsbook_deploy.py): ``unchanged``
(already on the image), ``deployed``, ``failed`` (its update or its gate failed; rolled back
when it was changed), ``rolled_back`` (healthy, rolled back because another batch failed),
``rollback_failed`` (the rollback itself failed: look at the machine), ``untouched`` (the
rollout stopped before its batch).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    count_calls,
    missing_inventory,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import msg as _msg
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import ran as _ran

TARGET = "fly"
INVENTORY_VARS = {
    "fly_app": "the Fly app",
    "fly_api_token": "a Fly.io API token, from the vault or an AWX credential",
    "app_base_url": "the app's public URL, for the health gate",
}


def platform_fly_missing(values: Mapping[str, Any]) -> str:
    """'' when every inventory variable given has a value; else the sentence naming the
    missing ones (never a value)."""
    return missing_inventory(values, INVENTORY_VARS, "Fly.io")


def _unit(machine_id: str) -> str:
    return f"{TARGET}:{machine_id}"


def _gate_of(gate: Any, unit: str) -> tuple[bool | None, str]:
    """(passed, problems) of ``unit`` in an http_gate result (None: not gated)."""
    if not _ran(gate):
        return None, ""
    entry = (gate.get("by_host") or {}).get(unit)
    if not isinstance(entry, Mapping):
        return None, ""
    return bool(entry.get("ok")), "; ".join(str(p) for p in entry.get("problems") or [])


def platform_fly_calls(results: Iterable[Any]) -> int:
    """Machines API calls made by the fly_machines / fly_secrets results given."""
    return count_calls(results)


def platform_fly_changed_ids(update: Any) -> list[str]:
    """The machines an update (or rollback) result changed for certain."""
    if not _ran(update):
        return []
    return [str(r["id"]) for r in update.get("results") or [] if r.get("changed") is True]


def platform_fly_only(batches: Iterable[Iterable[str]], ids: Iterable[str]) -> list[list[str]]:
    """``batches`` keeping only ``ids`` (in their batch order), empty batches dropped."""
    wanted = set(ids)
    kept = [[i for i in batch if i in wanted] for batch in batches]
    return [batch for batch in kept if batch]


def platform_fly_after_batch(
    units: Mapping[str, Any], batch: Iterable[str], update: Any, gate: Any
) -> dict[str, Any]:
    """The units after one batch: updated and gated -> deployed, a failed update or gate ->
    failed; a machine not attempted -> untouched; a task that failed as a whole -> every
    machine of the batch failed with its message."""
    new = {k: dict(v) for k, v in units.items()}
    results = {str(r["id"]): r for r in (update.get("results") or [])} if _ran(update) else {}
    for machine_id in batch:
        key = _unit(machine_id)
        entry = new.setdefault(key, {"needed": True, "before": "", "before_version": ""})
        entry.setdefault("rolled_back_to", "")
        result = results.get(machine_id)
        if result is None:
            entry.update(outcome="failed", error=_msg(update) or "the update did not run")
            continue
        if result["outcome"] == "skipped":
            entry.update(outcome="untouched", error=result.get("error") or "")
            continue
        if result["outcome"] == "failed":
            error = result.get("error") or "failed"
            if result.get("changed") is None:
                error += " - look at the machine before deploying again"
            entry.update(outcome="failed", error=error)
            continue
        passed, problems = _gate_of(gate, key)
        if passed is False:
            entry.update(outcome="failed", error=f"health gate: {problems}")
        elif result["outcome"] == "unchanged":
            entry.update(outcome="unchanged", error="")
        else:
            entry.update(outcome="deployed", error="")
    return new


def platform_fly_batch_failed(units: Mapping[str, Any], batch: Iterable[str]) -> bool:
    """Did any machine of the batch fail (or go unattempted)?"""
    return any((units.get(_unit(i)) or {}).get("outcome") in ("failed", "untouched") for i in batch)


def platform_fly_after_rollback(
    units: Mapping[str, Any], batch: Iterable[str], rollback: Any, gate: Any
) -> dict[str, Any]:
    """The units after the automatic rollback of one batch: back and healthy -> a failed unit
    stays failed (rolled_back_to set), a deployed one becomes rolled_back; else
    rollback_failed with the reason added."""
    new = {k: dict(v) for k, v in units.items()}
    results = {str(r["id"]): r for r in (rollback.get("results") or [])} if _ran(rollback) else {}
    for machine_id in batch:
        key = _unit(machine_id)
        entry = new.setdefault(key, {"needed": True, "before": "", "before_version": ""})
        result = results.get(machine_id)
        problem = ""
        if result is None:
            problem = _msg(rollback) or "the rollback did not run"
        elif result["outcome"] not in ("updated", "unchanged"):
            problem = result.get("error") or result["outcome"]
        else:
            passed, problems = _gate_of(gate, key)
            if passed is False:
                problem = f"health gate after the rollback: {problems}"
        if result is not None and result["outcome"] in ("updated", "unchanged"):
            entry["rolled_back_to"] = result.get("after_image") or ""
        if problem:
            earlier = entry.get("error") or ""
            entry.update(
                outcome="rollback_failed",
                error=(earlier + "; " if earlier else "") + f"rollback: {problem}",
            )
        elif entry.get("outcome") != "failed":
            entry.update(outcome="rolled_back")
    return new


def platform_fly_deploy_fact(
    units: Mapping[str, Any],
    plan: Any,
    *,
    app: str,
    image: str,
    stopped_at: Iterable[str] = (),
    calls: int = 0,
    check_mode: bool = False,
    problem: str = "",
) -> dict[str, Any]:
    """platform_deploy: ``{target, deployment, previous, rollout_failed, stopped_at,
    api_calls, units}`` (+ ``plan``: the batches, ``check_mode``). ``problem``: why nothing
    could be called (a missing inventory variable)."""
    if problem or not _ran(plan) or plan.get("failed") or "plan" not in plan:
        return {
            "target": TARGET,
            "deployment": "",
            "previous": "",
            "rollout_failed": False,
            "stopped_at": [],
            "api_calls": calls,
            "plan": [],
            "check_mode": check_mode,
            "units": {
                _unit(app or "?"): {
                    "outcome": "failed",
                    "needed": True,
                    "before": None,
                    "before_version": None,
                    "rolled_back_to": None,
                    "error": problem
                    or (_msg(plan) or "the machines could not be read") + " - nothing was changed",
                }
            },
        }
    befores = Counter(
        str(u.get("before") or "") for u in units.values() if u.get("needed") and u.get("before")
    )
    touched = any(
        u.get("outcome") in ("deployed", "failed", "rolled_back", "rollback_failed")
        and u.get("needed")
        for u in units.values()
    )
    stopped = [_unit(i) for i in stopped_at]
    return {
        "target": TARGET,
        "deployment": image if touched and not check_mode else "",
        "previous": befores.most_common(1)[0][0] if befores else "",
        "rollout_failed": bool(stopped),
        "stopped_at": stopped,
        "api_calls": calls,
        "plan": plan["plan"].get("batches") or [],
        "check_mode": check_mode,
        "units": {k: dict(v) for k, v in units.items()},
    }


def platform_fly_rollback_fact(
    check: Any,
    batches: Iterable[Iterable[str]],
    results: Iterable[Any],
    gates: Iterable[Any],
    *,
    app: str,
    calls: int = 0,
    check_mode: bool = False,
    problem: str = "",
) -> dict[str, Any]:
    """platform_rollback: ``{target, api_calls, units: {fly:<id>: {outcome rolled_back |
    unchanged | failed, from, to, to_version, error}}}``. ``check`` is the dry run over every
    machine (fly_machines action=rollback in check mode: a refused target fails every unit,
    nothing changed); ``results`` and ``gates`` are the registered results of the batches
    that ran, in order. In check mode a machine to roll back is ``would_roll_back``."""
    machines = (check.get("machines") or []) if _ran(check) and not problem else []
    if not machines:
        error = (
            problem or (_msg(check) or "the machines could not be read") + " - nothing was changed"
        )
        return _rollback_fact({_unit(app or "?"): _rollback_unit("failed", error=error)}, calls)
    units: dict[str, Any] = {
        _unit(str(m["id"])): _rollback_unit("failed", frm=m.get("image") or "") for m in machines
    }
    if check.get("failed"):
        for entry in units.values():
            entry["error"] = _msg(check) or "the rollback could not be planned"
        return _rollback_fact(units, calls)
    for planned in check.get("results") or []:
        key = _unit(str(planned["id"]))
        to = planned.get("after_image") or ""
        outcome = "unchanged" if planned["outcome"] == "unchanged" else "would_roll_back"
        if outcome == "would_roll_back" and not check_mode:
            outcome, error = "failed", "not rolled back: an earlier batch failed"
        else:
            error = ""
        units[key] = _rollback_unit(
            outcome,
            frm=planned.get("before_image") or "",
            to=to,
            to_version=planned.get("after_version") or "",
            error=error,
        )
    if check_mode:
        return _rollback_fact(units, calls)
    ran: dict[str, tuple[Any, Any, Any]] = {}
    for batch_result, gate in zip(results, gates, strict=False):
        if _ran(batch_result):
            for result in batch_result.get("results") or []:
                ran[str(result["id"])] = (result, gate, batch_result)
    for machine_id in [i for batch in batches for i in batch]:
        if machine_id not in ran:
            continue
        result, gate, whole = ran[machine_id]
        key = _unit(machine_id)
        entry = _rollback_unit(
            "failed",
            frm=result.get("before_image") or "",
            to=result.get("after_image") or "",
            to_version=result.get("after_version") or "",
        )
        if result["outcome"] not in ("updated", "unchanged"):
            entry.update(
                error=result.get("error") or _msg(whole) or result["outcome"],
                to=units[key]["to"],
                to_version=units[key]["to_version"],
            )
        else:
            passed, problems = _gate_of(gate, key)
            if passed is False:
                entry["error"] = f"health gate: {problems}"
            else:
                entry["outcome"] = "rolled_back" if result["outcome"] == "updated" else "unchanged"
        units[key] = entry
    return _rollback_fact(units, calls)


def _rollback_unit(
    outcome: str, *, frm: str = "", to: str = "", to_version: str = "", error: str = ""
) -> dict[str, Any]:
    return {"outcome": outcome, "from": frm, "to": to, "to_version": to_version, "error": error}


def _rollback_fact(units: dict[str, Any], calls: int) -> dict[str, Any]:
    return {"target": TARGET, "api_calls": calls, "units": units}


def platform_fly_probe(gate: Any) -> dict[str, bool]:
    """Machine id -> whether it answered 503 (maintenance) in an http_gate result."""
    if not _ran(gate):
        return {}
    return {
        str(name).split(":", 1)[1]: (entry or {}).get("status") == 503
        for name, entry in (gate.get("by_host") or {}).items()
        if str(name).startswith(f"{TARGET}:")
    }


def platform_fly_maintenance_fact(
    machines: Any,
    on: bool,
    before: Mapping[str, bool],
    after: Mapping[str, bool],
    changed_ids: Iterable[str],
    *,
    secret_changed: bool = False,
    calls: int = 0,
    error: str = "",
) -> dict[str, Any]:
    """platform_maintenance: ``{target, state, changed, active, api_calls, error, units:
    {fly:<id>: {active, changed, error}}}`` - ``active``: every machine answers 503 (on), any
    does (off)."""
    ids = [str(m["id"]) for m in (machines or {}).get("machines") or []] if _ran(machines) else []
    changed = set(changed_ids)
    seen = {i: after.get(i, before.get(i, False)) for i in ids}
    units = {
        _unit(i): {
            "active": seen[i],
            "changed": i in changed,
            "error": error
            if error or seen[i] == on
            else f"/health does not answer as asked ({'not ' if on else ''}503)",
        }
        for i in ids
    }
    active = (bool(ids) and all(seen.values())) if on else any(seen.values())
    return {
        "target": TARGET,
        "state": "on" if on else "off",
        "changed": bool(changed) or secret_changed,
        "active": active,
        "api_calls": calls,
        "error": error,
        "units": units,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "platform_fly_missing": platform_fly_missing,
            "platform_fly_calls": platform_fly_calls,
            "platform_fly_changed_ids": platform_fly_changed_ids,
            "platform_fly_only": platform_fly_only,
            "platform_fly_after_batch": platform_fly_after_batch,
            "platform_fly_batch_failed": platform_fly_batch_failed,
            "platform_fly_after_rollback": platform_fly_after_rollback,
            "platform_fly_deploy_fact": platform_fly_deploy_fact,
            "platform_fly_rollback_fact": platform_fly_rollback_fact,
            "platform_fly_probe": platform_fly_probe,
            "platform_fly_maintenance_fact": platform_fly_maintenance_fact,
        }
