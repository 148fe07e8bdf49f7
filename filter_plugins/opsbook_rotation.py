# Copyright: opsbook contributors
# Apache-2.0
"""Filters of the secret rotation runbook (roles/secret_rotation): what the plays read from
registered results and facts, and how the run is summed up. Pure functions, unit tested; the
decisions themselves are made by the secret_rotation module (module_utils/opsbook_rotation.py).

Secret values pass through some of these (``secret_rotation_records``, ``_env_reads``,
``_probes``): the tasks that use them are ``no_log``. The summary holds fingerprints only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # the unit tests load this file without Ansible's error classes in the way
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]

PENDING_SUFFIX = "_PENDING"
AWS_STORES = ("aws_secretsmanager", "aws_ssm")


def _get(data: Any, key: str, default: Any = None) -> Any:
    if isinstance(data, Mapping):
        return data.get(key, default)
    return default


def store_settings(store: Mapping[str, Any], s3_endpoint_url: str = "") -> dict[str, Any]:
    """The store spec a secret_store task takes: the inventory's, with the environment's S3
    endpoint (the same AWS-compatible endpoint serves Secrets Manager and SSM) when an AWS store
    names none."""
    spec = dict(store or {})
    if spec.get("type") in AWS_STORES and s3_endpoint_url and not spec.get("endpoint_url"):
        spec["endpoint_url"] = s3_endpoint_url
    return spec


def records(store_reads: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{name: {current, pending, previous}} from the registered loop of secret_store reads."""
    out: dict[str, dict[str, Any]] = {}
    for result in _get(store_reads, "results", []) or []:
        name = _get(_get(result, "item", {}), "name")
        if name and not _get(result, "skipped") and _get(result, "values") is not None:
            out[name] = dict(result["values"])
    return out


def env_reads(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """{host: {VAR: value}} of the hosts whose env file was read."""
    out: dict[str, dict[str, str]] = {}
    for host in hosts:
        read = _get(hostvars[host], "secret_rotation_env_read", {})
        if read and not _get(read, "skipped") and not _get(read, "failed"):
            values = _get(read, "values")
            if isinstance(values, Mapping):
                out[host] = {key: value for key, value in values.items() if value is not None}
    return out


def _fingerprint(value: str) -> str:
    # The one rule (module_utils/opsbook_rotation.fingerprint; tests hold them equal).
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def pool(
    prepared: Mapping[str, Any] | None,
    store_records: Mapping[str, Any] | None,
    host_reads: Mapping[str, Any] | None,
    given: Mapping[str, Any] | None,
) -> dict[str, str]:
    """{fingerprint: value} of every value the run holds: the stores' records, the hosts' env
    files, the values given, and the pending values the secret_rotation module generated. The
    module returns fingerprints; this finds the values again (no_log tasks only)."""
    found: dict[str, str] = {}

    def add(value: Any) -> None:
        if isinstance(value, str) and value:
            found[_fingerprint(value)] = value

    for record in (store_records or {}).values():
        for value in (record or {}).values():
            add(value)
    for values in (host_reads or {}).values():
        for value in (values or {}).values():
            add(value)
    for value in (given or {}).values():
        add(value)
    for decision in _get(prepared, "decisions", []) or []:
        add((decision.get("generated") or {}).get("pending"))
    return found


def resolve(change: Mapping[str, Any] | None, values: Mapping[str, str]) -> dict[str, Any]:
    """An env change with fingerprints (as the module returns it) back to values."""
    out: dict[str, Any] = {"set": {}, "remove": list(_get(change, "remove", []) or [])}
    for key, fp in (_get(change, "set", {}) or {}).items():
        if fp not in values:
            raise AnsibleFilterError(
                f"secret_rotation_resolve: no value of the run has the fingerprint {fp} "
                f"({key}); nothing was changed"
            )
        out["set"][key] = values[fp]
    return out


def unread(hosts: Iterable[str], hostvars: Mapping[str, Any], keys: list[str]) -> list[str]:
    """The hosts whose env file should have been read and was not (failed or unreachable)."""
    if not keys:
        return []
    missing = []
    for host in hosts:
        read = _get(hostvars[host], "secret_rotation_env_read", {})
        if (
            not read
            or _get(read, "failed")
            or _get(read, "unreachable")
            or _get(read, "skipped")
            or not isinstance(_get(read, "values"), Mapping)
        ):
            missing.append(host)
    return missing


def lines(summary: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per secret: what the run does with it and why."""
    out = []
    for item in summary or []:
        fps = item.get("fingerprints") or {}
        head = f"{item['name']} ({item.get('spec', {}).get('env_var', '?')}): {item['action']}"
        if item["action"] == "rotate":
            head += f" {fps.get('current')} -> {fps.get('pending')}"
        notes = "; ".join(item.get("notes") or [])
        out.append(head + (f" - {notes}" if notes else ""))
    return out


def journal_entries(summary: Iterable[Mapping[str, Any]], phase: str) -> list[dict[str, Any]]:
    """The journal steps to write at ``phase``: ``setting`` / ``tested`` (the rotations of the
    run), or the outcome - ``succeeded`` (finished, undone, revoked) or ``failed`` (the
    rotations undone; a finish or a revoke that failed stays as it was, for the next run)."""
    entries: list[dict[str, Any]] = []
    for item in summary or []:
        fps = item.get("fingerprints") or {}
        action = item.get("action")
        base = {"name": item["name"]}
        if phase in ("setting", "tested"):
            if action == "rotate":
                entries.append(
                    base
                    | {
                        "step": phase,
                        "current_fp": fps.get("current"),
                        "pending_fp": fps.get("pending"),
                        "previous_fp": fps.get("previous"),
                    }
                )
        elif phase == "succeeded":
            if action == "rotate":
                entries.append(
                    base
                    | {
                        "step": "finished",
                        "current_fp": fps.get("pending"),
                        "previous_fp": fps.get("current"),
                        "note": "pending promoted to current; current kept as previous",
                    }
                )
            elif action == "finish":
                entries.append(
                    base
                    | {
                        "step": "finished",
                        "current_fp": fps.get("current"),
                        "previous_fp": fps.get("previous"),
                        "note": "finished the rotation an interrupted run left tested",
                    }
                )
            elif action == "undo":
                entries.append(
                    base | {"step": "undone", "note": "undid the rotation an interrupted run left"}
                )
            elif action == "revoke":
                entries.append(
                    base
                    | {
                        "step": "revoked",
                        "reencrypted": bool(item.get("reencrypt")),
                        "note": f"previous value {item.get('revoked_fp')} retired",
                    }
                )
        elif phase == "failed" and action == "rotate":
            entries.append(
                base
                | {"step": "undone", "note": "the run failed; the current values were put back"}
            )
    return entries


def failed_hosts(
    hosts: Iterable[str], hostvars: Mapping[str, Any], result_vars: list[str]
) -> list[str]:
    """``host: why`` for each host whose registered results failed or were unreachable, or
    that recorded a failure (``secret_rotation_host_error``)."""
    out = []
    for host in hosts:
        facts = hostvars[host]
        error = _get(facts, "secret_rotation_host_error")
        for name in result_vars:
            result = _get(facts, name, {}) or {}
            for part in _get(result, "results", None) or [result]:
                if _get(part, "unreachable"):
                    error = error or "unreachable"
                elif _get(part, "failed"):
                    error = error or str(_get(part, "msg", "failed"))
        if error:
            out.append(f"{host}: {error}")
    return out


def restart_needed(changed_keys: Iterable[str] | None) -> bool:
    """Whether a variable the app reads changed (a <VAR>_PENDING is opsbook's, not the app's)."""
    return any(not str(key).endswith(PENDING_SUFFIX) for key in changed_keys or [])


def batch_problems(
    batch: Iterable[str], hostvars: Mapping[str, Any], gate: Mapping[str, Any] | None
) -> list[str]:
    """``host: why`` for every host of the batch that failed its change or the health gate."""
    problems = failed_hosts(batch, hostvars, ["secret_rotation_apply_result"])
    by_host = _get(gate, "by_host", {}) or {}
    gate_error = None if _get(gate, "by_host") is not None else _get(gate, "msg")
    for host in batch:
        if not _get(hostvars[host], "secret_rotation_restarted"):
            continue
        if any(p.startswith(f"{host}:") for p in problems):
            continue
        verdict = by_host.get(host)
        if verdict is None:
            if gate_error or _get(gate, "failed"):
                problems.append(f"{host}: health gate did not run ({gate_error or 'failed'})")
        elif not verdict.get("ok"):
            why = "; ".join(verdict.get("problems") or []) or "health gate failed"
            problems.append(f"{host}: {why}")
    return problems


def probes(
    decisions: Iterable[Mapping[str, Any]], hosts: Iterable[str], values: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The token probes that prove the run's values on every host (values inside: no_log)."""
    out: list[dict[str, Any]] = []
    hosts = list(hosts)
    for decision in decisions or []:
        spec = decision.get("spec") or {}
        path = spec.get("test_path")
        if decision.get("kind") != "hmac" or not path or not decision.get("app_env"):
            continue
        fps = decision.get("fingerprints") or {}
        checks: list[tuple[str, str | None, list[int]]] = []
        action = decision.get("action")
        if action == "rotate":
            checks.append(("new value", fps.get("pending"), [200]))
            if float(spec.get("grace_hours") or 0) > 0:
                checks.append(("replaced value, in its grace period", fps.get("current"), [200]))
        elif action in ("finish", "undo"):
            checks.append(("current value", fps.get("current"), [200]))
        elif action == "revoke":
            checks.append(("current value", fps.get("current"), [200]))
            checks.append(("revoked value", fps.get("revoked"), [401, 403]))
        for host in hosts:
            for what, fp, expect in checks:
                if not fp:
                    continue
                if fp not in values:
                    raise AnsibleFilterError(
                        f"secret_rotation_probes: the {what} of {decision['name']} ({fp}) is not "
                        "among the values of the run"
                    )
                out.append(
                    {
                        "host": host,
                        "path": path,
                        "secret": values[fp],
                        "cookie": spec.get("test_cookie") or "",
                        "expect": expect,
                        "label": f"{decision['name']}: {what} on {host}",
                    }
                )
    return out


def probe_failures(results: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """What the failed probes said (their messages name the URL and statuses, never a token)."""
    out = []
    for result in results or []:
        if _get(result, "failed"):
            label = _get(_get(result, "item", {}), "label", "probe")
            out.append(f"{label}: {_get(result, 'msg', 'failed')}")
    return out


def store_actions(summary: Iterable[Mapping[str, Any]], failed: bool) -> list[dict[str, Any]]:
    """What each store of record (not env_file) does at the end: promote, drop_previous or
    discard_pending."""
    out = []
    for item in summary or []:
        if item.get("store_type") in (None, "env_file"):
            continue
        action = item.get("action")
        if failed:
            wanted = "discard_pending" if action == "rotate" else None
        else:
            wanted = {"rotate": "promote", "finish": "promote", "revoke": "drop_previous"}.get(
                action
            )
        if wanted:
            out.append({"name": item["name"], "spec": item.get("spec"), "store_action": wanted})
    return out


def summary(
    items: Iterable[Mapping[str, Any]],
    hostvars: Mapping[str, Any],
    hosts: Iterable[str],
    failed: bool,
    error: str,
    step: str,
    env: str,
    check_mode: bool = False,
) -> dict[str, Any]:
    """The run's report: status, per secret what happened (fingerprints only), per host what
    changed, and the lines shown and published."""
    items = list(items or [])
    hosts = list(hosts)
    changed = [h for h in hosts if _get(hostvars[h], "secret_rotation_changed")]
    undone = [h for h in hosts if _get(hostvars[h], "secret_rotation_undone")]
    undo_errors = {
        h: _get(hostvars[h], "secret_rotation_undo_error")
        for h in hosts
        if _get(hostvars[h], "secret_rotation_undo_error")
    }
    worked = [i for i in items if i.get("action") != "none"]
    if failed:
        status = "failed" if not undone and not changed else "undone"
    elif not worked:
        status = "unchanged"
    else:
        status = "succeeded"
    if check_mode:
        status = "check" if not failed else status
    out_lines = [
        f"Secrets {step} in {env or '?'}: {status}" + (" (check mode)" if check_mode else "")
    ]
    secrets_out = []
    for item in items:
        fps = item.get("fingerprints") or {}
        spec = item.get("spec") or {}
        action = item.get("action")
        if failed and action == "rotate":
            result = "undone (the current value is back)"
        elif action == "rotate":
            grace = float(spec.get("grace_hours") or 0)
            result = f"rotated {fps.get('current')} -> {fps.get('pending')}" + (
                f"; the replaced value stays accepted for {grace:g} h (then rotation_step=revoke)"
                if grace > 0
                else "; retire the replaced value with rotation_step=revoke"
            )
        elif action == "revoke" and not failed:
            result = f"previous value {item.get('revoked_fp')} revoked"
        elif action == "finish" and not failed:
            result = "finished the rotation an interrupted run left tested"
        elif action == "undo" and not failed:
            result = "undid the rotation an interrupted run left"
        else:
            result = "; ".join(item.get("notes") or []) or "nothing to do"
        secrets_out.append(
            {
                "name": item["name"],
                "env_var": spec.get("env_var"),
                "action": action,
                "result": result,
                "fingerprints": fps,
            }
        )
        out_lines.append(f"{item['name']} ({spec.get('env_var', '?')}): {result}")
    if error:
        out_lines.append(f"why: {error}")
    if changed:
        out_lines.append(f"hosts changed: {', '.join(changed)}")
    if undone:
        out_lines.append(f"hosts put back: {', '.join(undone)}")
    for host, why in undo_errors.items():
        out_lines.append(
            f"{host} could not be put back ({why}): it may hold the new values; the next run "
            "finds and fixes it"
        )
    return {
        "ok": not failed,
        "status": status,
        "env": env,
        "step": step,
        "check_mode": check_mode,
        "secrets": secrets_out,
        "hosts_changed": changed,
        "hosts_undone": undone,
        "undo_errors": undo_errors,
        "error": error,
        "lines": out_lines,
    }


def schedule(items: Iterable[Mapping[str, Any]], env: str, now: str) -> dict[str, Any]:
    """secrets_report.yml's report: per configured secret its age against its schedule, what is
    due (within a week, or a tenth of its period) and overdue, previous values still accepted,
    rotations a run left open; a markdown table in ``lines``."""
    rows = []
    for item in items or []:
        if not item.get("configured"):
            continue
        status = item.get("status") or {}
        journal = item.get("journal") or {}
        spec = item.get("spec") or {}
        if status.get("overdue"):
            state = "overdue"
        elif status.get("due"):
            state = "due"
        else:
            state = "ok"
        open_step = (
            journal.get("step") if journal.get("step") in ("created", "setting", "tested") else ""
        )
        rows.append(
            {
                "name": item["name"],
                "env_var": spec.get("env_var"),
                "store": (spec.get("store") or {}).get("type"),
                "state": state,
                "age_days": status.get("age_days"),
                "rotate_every_days": status.get("rotate_every_days"),
                "due_in_days": status.get("due_in_days"),
                "last_rotated": status.get("last_rotated"),
                "previous_accepted_until": status.get("grace_until")
                if status.get("previous_held")
                else None,
                "revoke_due": bool(status.get("previous_held") and status.get("grace_over")),
                "interrupted": open_step,
            }
        )
    out_lines = [
        f"Secrets of {env} at {now}",
        "| secret | variable | store | age (days) | every (days) | state | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        notes = []
        if row["last_rotated"] is None:
            notes.append("never rotated by opsbook")
        elif row["state"] != "overdue":
            notes.append(f"due in {row['due_in_days']:g} days")
        if row["previous_accepted_until"]:
            notes.append(
                "previous value revoke due"
                if row["revoke_due"]
                else f"previous value accepted until {row['previous_accepted_until']}"
            )
        if row["interrupted"]:
            notes.append(f"a run stopped at step {row['interrupted']}: the next run settles it")
        age = "?" if row["age_days"] is None else f"{row['age_days']:g}"
        out_lines.append(
            f"| {row['name']} | {row['env_var']} | {row['store']} | {age} | "
            f"{row['rotate_every_days']} | {row['state']} | {'; '.join(notes)} |"
        )
    return {
        "env": env,
        "at": now,
        "secrets": rows,
        "overdue": [r["name"] for r in rows if r["state"] == "overdue"],
        "due": [r["name"] for r in rows if r["state"] in ("due", "overdue")],
        "revoke_due": [r["name"] for r in rows if r["revoke_due"]],
        "lines": out_lines,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "secret_rotation_store_settings": store_settings,
            "secret_rotation_records": records,
            "secret_rotation_env_reads": env_reads,
            "secret_rotation_pool": pool,
            "secret_rotation_resolve": resolve,
            "secret_rotation_unread": unread,
            "secret_rotation_lines": lines,
            "secret_rotation_journal_entries": journal_entries,
            "secret_rotation_failed_hosts": failed_hosts,
            "secret_rotation_restart_needed": restart_needed,
            "secret_rotation_batch_problems": batch_problems,
            "secret_rotation_probes": probes,
            "secret_rotation_probe_failures": probe_failures,
            "secret_rotation_store_actions": store_actions,
            "secret_rotation_summary": summary,
            "secret_rotation_schedule": schedule,
        }
