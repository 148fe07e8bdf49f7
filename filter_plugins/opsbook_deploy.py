# Copyright: opsbook contributors
# Apache-2.0
"""opsbook deploy filters: the bookkeeping of playbooks/deploy.yml and rollback.yml.

- ``deploy_in_window``: is ``HH:MM`` inside a ``HH:MM-HH:MM`` window (which may wrap midnight)?
- ``deploy_host_states``: every app host's deploy facts -> one state per host.
- ``deploy_install_problems``: the hosts a deploy cannot go ahead on, with the reason.
- ``deploy_batch_failed``: did a batch fail more hosts than max_fail_percentage allows?
- ``deploy_summary``: the run's status, hosts by outcome and readable lines.
- ``deploy_gate_targets``: the http_gate targets (name, base_url, version) of some hosts.
- ``rollback_target_missing``: the hosts whose releases hold no ``rollback_to`` (read-only).
- ``rollback_gate_targets``, ``rollback_host_states``, ``rollback_summary``: a rollback's gate
  targets, each host's outcome (from what it registered) and the summary.

Outcomes of one host: ``unchanged`` (already ran this version and artifact), ``deployed``,
``failed`` (switched, failed its gate and rolled back, or failed before switching),
``rolled_back`` (healthy, rolled back because another host's batch failed),
``rollback_failed`` (the rollback itself failed: look at the host), ``untouched`` (the
rollout stopped or was aborted before this host's batch), ``unreachable``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

_WINDOW_RE = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
_HHMM_RE = re.compile(r"^(\d\d):(\d\d)$")

# What the release role's rollback entry point registers (roles/release/tasks/rollback.yml).
ROLLBACK_SWITCH = "release_rollback_result"

OUTCOMES = (
    "deployed",
    "unchanged",
    "rolled_back",
    "failed",
    "rollback_failed",
    "untouched",
    "unreachable",
)


def _minutes(hours: str, minutes: str, what: str) -> int:
    value = int(hours) * 60 + int(minutes)
    if int(hours) > 23 or int(minutes) > 59:
        raise AnsibleFilterError(f"{what}: {hours}:{minutes} is not a time of day")
    return value


def deploy_in_window(now_hhmm: str, window: str) -> bool:
    """True when now_hhmm (UTC) is inside window; an empty window means always.

    ``22:00-02:00`` wraps midnight; the end minute is excluded.
    """
    if not window:
        return True
    match = _WINDOW_RE.match(str(window).strip())
    if not match:
        raise AnsibleFilterError(f"deploy window must be HH:MM-HH:MM, got {window!r}")
    now = _HHMM_RE.match(str(now_hhmm).strip())
    if not now:
        raise AnsibleFilterError(f"time must be HH:MM, got {now_hhmm!r}")
    start = _minutes(match.group(1), match.group(2), "window start")
    end = _minutes(match.group(3), match.group(4), "window end")
    minute = _minutes(now.group(1), now.group(2), "time")
    if start == end:
        return True
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def _get(facts: Any, key: str, default: Any = None) -> Any:
    try:
        value = facts[key]
    except (KeyError, TypeError):
        return default
    return default if value is None else value


def deploy_host_states(hostvars: Mapping[str, Any], hosts: Iterable[str]) -> dict[str, dict]:
    """{host: {outcome, error, needed, before, before_version}} from the deploy facts."""
    states: dict[str, dict[str, Any]] = {}
    for host in hosts:
        facts = hostvars[host]
        reachable = _get(facts, "deploy_reachable")
        outcome = str(_get(facts, "deploy_outcome", "") or "")
        error = str(_get(facts, "deploy_error", "") or "").strip()
        needed = bool(_get(facts, "deploy_needed", True))
        if reachable is None or (reachable is False and error.startswith("unreachable")):
            outcome = "unreachable"
            error = error or "unreachable: the host was not reached"
        elif reachable is False:
            outcome = "failed"
        elif outcome in ("", "pending"):
            outcome = "untouched" if needed else "unchanged"
        states[host] = {
            "outcome": outcome,
            "error": error,
            "needed": needed,
            "before": _get(facts, "deploy_before"),
            "before_version": _get(facts, "deploy_before_version"),
            "rolled_back_to": _get(facts, "deploy_rolled_back_to"),
        }
    return states


def deploy_install_problems(states: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``host: reason`` for every host the deploy cannot go ahead on."""
    return [
        f"{host}: {state.get('error') or state.get('outcome')}"
        for host, state in states.items()
        if state.get("outcome") in ("unreachable", "failed") or state.get("error")
    ]


def deploy_batch_failed(
    states: Mapping[str, Mapping[str, Any]],
    batch: Iterable[str],
    active: Iterable[str],
    max_fail_percentage: Any,
) -> list[str]:
    """The hosts of ``batch`` that failed, when they exceed max_fail_percentage; else [].

    A host of the batch no longer active (unreachable, removed by Ansible) counts as failed.
    """
    batch = list(batch)
    active = set(active)
    bad = ("failed", "rolled_back", "rollback_failed", "unreachable")
    failed = [
        host
        for host in batch
        if host not in active or (states.get(host) or {}).get("outcome") in bad
    ]
    if batch and len(failed) * 100 > int(max_fail_percentage) * len(batch):
        return failed
    return []


def deploy_summary(
    states: Mapping[str, Mapping[str, Any]],
    abort_reason: str = "",
    rollout_failed: bool = False,
    version: str = "",
    release_id: str = "",
) -> dict[str, Any]:
    """The run's status (succeeded | unchanged | failed | rolled_back | aborted), the hosts
    by outcome and readable lines saying what happened to each host."""
    by: dict[str, list[str]] = {name: [] for name in OUTCOMES}
    for host, state in states.items():
        by.setdefault(str(state.get("outcome")), []).append(host)
    if abort_reason:
        status = "aborted"
    elif rollout_failed:
        status = "rolled_back"
    elif by["failed"] or by["rollback_failed"] or by["unreachable"]:
        status = "failed"
    elif by["deployed"]:
        status = "succeeded"
    else:
        status = "unchanged"
    lines = []
    for host, state in states.items():
        outcome = state.get("outcome")
        line = f"{host}: {outcome}"
        if outcome in ("failed", "rolled_back") and state.get("rolled_back_to"):
            line += f", back on release {state['rolled_back_to']}"
        elif outcome == "deployed":
            line += f", serving {version} (release {release_id})"
        elif outcome == "unchanged":
            line += f", already serving {version}"
        elif outcome == "untouched" and state.get("before"):
            line += f", still on release {state['before']}"
        if state.get("error"):
            line += f" - {state['error']}"
        lines.append(line)
    return {
        "status": status,
        "ok": status in ("succeeded", "unchanged"),
        "hosts": {host: dict(state) for host, state in states.items()},
        **by,
        "lines": lines,
    }


def deploy_gate_targets(
    hosts: Iterable[str],
    hostvars: Mapping[str, Any],
    version: str | None = None,
    version_var: str | None = None,
    only_if: str | None = None,
    unless: str | None = None,
) -> list[dict[str, str]]:
    """``[{name, base_url, version}]`` for http_gate: the version given, or each host's
    own (the fact ``version_var``, dotted for a key of a dict fact). Hosts whose fact
    ``only_if`` is not true, or whose fact ``unless`` is true, are left out."""
    targets = []
    for host in hosts:
        facts = hostvars[host]
        if only_if and not _get(facts, only_if, False):
            continue
        if unless and _get(facts, unless, False):
            continue
        wanted: Any = version
        if version is None and version_var:
            head, *rest = version_var.split(".")
            wanted = _get(facts, head, "")
            for key in rest:
                wanted = _get(wanted, key, "")
        targets.append(
            {
                "name": host,
                "base_url": str(_get(facts, "app_base_url", "")),
                "version": str(wanted or ""),
            }
        )
    return targets


def rollback_target_missing(
    hostvars: Mapping[str, Any],
    hosts: Iterable[str],
    to: Any,
    info_var: str = "deploy_rollback_info",
) -> list[str]:
    """``host, host (releases there: ...)`` for the hosts whose releases (app_release info, the
    fact ``info_var``) hold no release id and no version ``to`` - hosts with the same releases
    on one line. Hosts not read (unreachable) are left out: the rollback reports them."""
    wanted = str(to)
    by_listing: dict[str, list[str]] = {}
    for host in hosts:
        info = _get(hostvars[host], info_var)
        if not isinstance(info, Mapping) or info.get("unreachable") or info.get("failed"):
            continue
        releases = list(info.get("releases") or [])
        if any(wanted in (str(r.get("release_id")), str(r.get("version"))) for r in releases):
            continue
        there = ", ".join(
            f"{r.get('release_id')} ({r.get('version')}, {r.get('status')}"
            + (", current)" if r.get("current") else ")")
            for r in releases
        )
        by_listing.setdefault(there or "none", []).append(host)
    return [f"{', '.join(names)} (releases there: {there})" for there, names in by_listing.items()]


def rollback_gate_targets(
    hostvars: Mapping[str, Any], hosts: Iterable[str], check_mode: bool = False
) -> list[dict[str, str]]:
    """http_gate targets of a rollback: each host whose switch and restart went through, on
    the version it serves now. None in check mode: nothing moved, and the app's health as it is
    now (broken, most often, when one rolls back) is not the rollback's result."""
    if check_mode:
        return []
    targets = []
    for host in hosts:
        facts = hostvars[host]
        switch = _get(facts, ROLLBACK_SWITCH)
        restart = _get(facts, "app_service_result", {})
        if not isinstance(switch, Mapping) or _get(facts, "deploy_rollback_error"):
            continue
        if switch.get("unreachable") or switch.get("failed") or _get(restart, "unreachable"):
            continue
        targets.append(
            {
                "name": host,
                "base_url": str(_get(facts, "app_base_url", "")),
                "version": str(switch.get("current_version") or ""),
            }
        )
    return targets


def rollback_host_states(hostvars: Mapping[str, Any], hosts: Iterable[str]) -> dict[str, dict]:
    """{host: {outcome, from, to, to_version, error}} of a rollback, from what each host
    registered (ROLLBACK_SWITCH, app_service_result, deploy_rollback_gate) and the errors its
    rescue recorded: rolled_back | unchanged | failed | unreachable."""
    states: dict[str, dict[str, Any]] = {}
    for host in hosts:
        facts = hostvars[host]
        switch = _get(facts, ROLLBACK_SWITCH)
        switch = switch if isinstance(switch, Mapping) else {}
        restart = _get(facts, "app_service_result", {})
        gate = _get(facts, "deploy_rollback_gate", {})
        by_host = _get(gate, "by_host", {}) if isinstance(gate, Mapping) else {}
        state = {
            "outcome": "rolled_back" if switch.get("changed") else "unchanged",
            "from": str(switch.get("from") or ""),
            "to": str(switch.get("to") or ""),
            "to_version": str(switch.get("current_version") or ""),
            "error": "",
        }
        error = str(_get(facts, "deploy_rollback_error", "") or "")
        gate_error = str(_get(facts, "deploy_rollback_gate_error", "") or "")
        if not switch:
            state.update(outcome="unreachable", error="the host was not reached")
        elif switch.get("unreachable") or _get(restart, "unreachable"):
            message = switch.get("msg") if switch.get("unreachable") else _get(restart, "msg")
            # lost mid-run: whether it was switched back (and restarted) cannot be known here
            state.update(
                outcome="unreachable",
                error="state unknown (it may or may not have been rolled back; look at it once "
                f"it answers) - unreachable: {' '.join(str(message).split())}",
            )
        elif error or switch.get("failed"):
            state.update(outcome="failed", error=error or str(switch.get("msg") or ""))
        elif gate_error:
            state.update(outcome="failed", error=f"health gate: {gate_error}")
        elif host in by_host and not by_host[host].get("ok"):
            problems = "; ".join(by_host[host].get("problems") or [])
            state.update(outcome="failed", error=f"health gate: {problems}")
        if state["outcome"] in ("failed", "unreachable"):
            state["to_version"] = state["to_version"] if switch.get("changed") else ""
        states[host] = state
    return states


def rollback_summary(states: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """ok (every host rolled back or already there), the versions served, one line a host."""
    lines = []
    for host, state in states.items():
        line = f"{host}: {state.get('outcome')}"
        if state.get("to"):
            line += f" from {state.get('from')} to {state.get('to')} ({state.get('to_version')})"
        if state.get("error"):
            line += f" - {state['error']}"
        lines.append(line)
    return {
        "ok": all(s.get("outcome") in ("rolled_back", "unchanged") for s in states.values()),
        "versions": sorted(
            {str(s.get("to_version")) for s in states.values() if s.get("to_version")}
        ),
        "releases": sorted({str(s.get("to")) for s in states.values() if s.get("to")}),
        "lines": lines,
    }


class FilterModule:
    """opsbook deploy bookkeeping filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "deploy_batch_failed": deploy_batch_failed,
            "deploy_gate_targets": deploy_gate_targets,
            "deploy_host_states": deploy_host_states,
            "deploy_in_window": deploy_in_window,
            "deploy_install_problems": deploy_install_problems,
            "deploy_summary": deploy_summary,
            "rollback_gate_targets": rollback_gate_targets,
            "rollback_host_states": rollback_host_states,
            "rollback_summary": rollback_summary,
            "rollback_target_missing": rollback_target_missing,
        }
