# Copyright: opsbook contributors
# Apache-2.0
"""Filters of the secret rotation runbook (roles/rotation): what the plays read from
registered results and facts, and how the run is summed up. Pure functions, unit tested; the
decisions themselves are made by the secret_rotation module (module_utils/opsbook_rotation.py).

Secret values pass through some of these (``rotation_store_secrets``, ``_env_reads``,
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
        read = _get(hostvars[host], "rotation_env_secret_read", {})
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


def platform_env(change: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """A resolved env change ({set: {VAR: value}, remove: [VAR]}) as the platform roles' env
    entry point takes it: [{name, value, state}] (values inside: no_log)."""
    out = [
        {"name": str(key), "value": str(value), "state": "present"}
        for key, value in (_get(change, "set", {}) or {}).items()
    ]
    out += [{"name": str(key), "state": "absent"} for key in _get(change, "remove", []) or []]
    return out


def unread(hosts: Iterable[str], hostvars: Mapping[str, Any], keys: list[str]) -> list[str]:
    """The hosts whose env file should have been read and was not (failed or unreachable)."""
    if not keys:
        return []
    missing = []
    for host in hosts:
        read = _get(hostvars[host], "rotation_env_secret_read", {})
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
    that recorded a failure (``rotation_host_error``)."""
    out = []
    for host in hosts:
        facts = hostvars[host]
        error = _get(facts, "rotation_host_error")
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
    problems = failed_hosts(batch, hostvars, ["rotation_apply_result"])
    by_host = _get(gate, "by_host", {}) or {}
    gate_error = None if _get(gate, "by_host") is not None else _get(gate, "msg")
    for host in batch:
        if not _get(hostvars[host], "rotation_restarted"):
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
    failed_at: str = "",
) -> dict[str, Any]:
    """The run's report: status, per secret what happened (fingerprints only), per host what
    changed, and the lines shown and published. ``failed_at`` is ``finish`` when only the last
    phase failed (the new values installed and proven: the next run finishes them)."""
    items = list(items or [])
    hosts = list(hosts)
    changed = [h for h in hosts if _get(hostvars[h], "rotation_changed")]
    undone = [h for h in hosts if _get(hostvars[h], "rotation_undone")]
    undo_errors = {}
    for host in hosts:
        facts = hostvars[host]
        why = _get(facts, "rotation_undo_error")
        if not why and failed and _get(_get(facts, "rotation_undo_result", {}), "unreachable"):
            why = "unreachable"
        if why:
            undo_errors[host] = why
    worked = [i for i in items if i.get("action") != "none"]
    if failed and failed_at == "finish":
        status = "unfinished"
    elif failed:
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
        if failed and action == "rotate" and failed_at == "finish":
            result = (
                f"{fps.get('pending')} installed and proven, but finishing failed: the next run "
                "finishes it"
            )
        elif failed and action == "rotate":
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


# ---- the kinds that live outside the env files (roles/rotation/tasks/kinds_*.yml)

DB_KIND = "db_password"
TWILIO_KIND = "twilio_auth_token"
STRIPE_KINDS = ("stripe_secret_key", "stripe_webhook_secret")
TWILIO_API = "https://accounts.twilio.com"
STRIPE_API = "https://api.stripe.com"
#: In check mode Twilio is not asked for a secondary token: the decisions are made with this
#: stand-in (32 hex digits, as a token), which nothing stores or installs.
TWILIO_CHECK_MODE_TOKEN = "0" * 32


#: The task files of the kinds (roles/rotation/tasks/kinds_<file>.yml), in the order they
#: run at a phase (Stripe's before Twilio's: a refused key stops the run before Twilio makes a
#: token), with the kinds they serve and the phases at which they have work.
KIND_FILES = (
    ("db", (DB_KIND,), ("create", "set", "test", "undo")),
    ("stripe", STRIPE_KINDS, ("create", "finish")),
    ("twilio", (TWILIO_KIND,), ("create", "finish", "undo")),
)


def kind_files(plan_secrets: Iterable[Mapping[str, Any]] | None, phase: str) -> list[str]:
    """Which kinds_<file>.yml the run includes at ``phase``: those of its secrets' kinds that
    have work then (none for a run of env-file secrets only)."""
    present = {_get(item.get("spec"), "kind") for item in plan_secrets or []}
    return [name for name, kinds, phases in KIND_FILES if phase in phases and present & set(kinds)]


def _rotating(
    plan_secrets: Iterable[Mapping[str, Any]] | None, names: Iterable[str], step: str, *kinds: str
) -> list[Mapping[str, Any]]:
    """The plan's secrets of ``kinds`` this run rotates: asked for (by name or ``all``), with
    rotation_step rotate, and not a killed run's tested rotation (finished, not rotated anew)."""
    names = list(names or [])
    if step != "rotate":
        return []
    return [
        item
        for item in _of_kind(plan_secrets, *kinds)
        if ("all" in names or item["name"] in names)
        and _get(item.get("journal"), "step") != "tested"
    ]


def _value(values: Mapping[str, str], fp: Any, what: str) -> str:
    if not fp or fp not in values:
        raise AnsibleFilterError(f"the {what} ({fp}) is not among the values of the run")
    return values[fp]


def _of_kind(items: Iterable[Mapping[str, Any]] | None, *kinds: str) -> list[Mapping[str, Any]]:
    return [i for i in items or [] if (i.get("kind") or _get(i.get("spec"), "kind")) in kinds]


def kind_records(
    store_records: Mapping[str, Any] | None,
    plan_secrets: Iterable[Mapping[str, Any]] | None,
    host_values: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any]]:
    """The stores' records, with - for each database password the app hosts' env files hold -
    what every host holds under its ``direct_env_var`` (``direct_by_host``; DIRECT_URL follows
    DATABASE_URL's credentials). Values inside: no_log."""
    out = {name: dict(record or {}) for name, record in (store_records or {}).items()}
    for item in _of_kind(plan_secrets, DB_KIND):
        if not item.get("app_env"):
            continue
        var = _get(item.get("spec"), "direct_env_var") or "DIRECT_URL"
        out.setdefault(item["name"], {})["direct_by_host"] = {
            host: _get(values, var) for host, values in (host_values or {}).items()
        }
    return out


def derived(prepared: Mapping[str, Any] | None) -> dict[str, str]:
    """{fingerprint: value} of the values the decisions derived (a DIRECT_URL with the new
    credentials), to add to the run's values (no_log)."""
    out: dict[str, str] = {}
    for decision in _get(prepared, "decisions", []) or []:
        out.update(decision.get("derived") or {})
    return out


def db_admin_vars(decisions: Iterable[Mapping[str, Any]] | None, phase: str) -> list[str]:
    """The inventory variables (``admin_url_var``) whose admin DSN the calls of ``phase`` need."""
    names: list[str] = []
    for decision in _of_kind(decisions, DB_KIND):
        work = decision.get("db") or {}
        if any(step.get("admin") for step in work.get(phase) or []):
            var = work.get("admin_url_var") or ""
            if var not in names:
                names.append(var)
    return names


def db_calls(
    decisions: Iterable[Mapping[str, Any]] | None,
    phase: str,
    values: Mapping[str, str],
    admin_urls: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The pg_role_password calls of the database passwords at ``phase`` (``set`` or ``test``),
    with their DSNs and passwords (no_log; ``label`` names roles only)."""
    out = []
    for decision in _of_kind(decisions, DB_KIND):
        work = decision.get("db") or {}
        for step in work.get(phase) or []:
            call = {
                "label": step["label"],
                "action": step["action"],
                "role": step.get("role"),
                "like": step.get("like"),
                "password": step.get("password"),
                "expect": step.get("expect") or "success",
            }
            if step.get("admin"):
                var = work.get("admin_url_var") or ""
                call["dsn"] = _get(admin_urls, var)
                if not call["dsn"]:
                    raise AnsibleFilterError(
                        f"{decision['name']}: the admin DSN {var!r} (admin_url_var) is not set "
                        "in the inventory; it is needed to ensure and retire the login roles"
                    )
            if step.get("dsn_fp"):
                call["dsn"] = _value(values, step["dsn_fp"], f"DSN of {decision['name']}")
            if step.get("login_dsn_fp"):
                call["login_dsn"] = _value(values, step["login_dsn_fp"], step["label"])
                call["dsn"] = call["login_dsn"]
            out.append(call)
    return out


def db_restores(
    decisions: Iterable[Mapping[str, Any]] | None, phase: str, values: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The single-user passwords to put back at ``phase`` (``set``: a killed run's; ``undo``:
    this run's): ``login_dsn`` must log in, else the password is set back through ``via_dsn``
    (no_log)."""
    out = []
    for decision in _of_kind(decisions, DB_KIND):
        restore = ((decision.get("db") or {}).get("restore") or {}).get(phase)
        if restore:
            name = decision["name"]
            out.append(
                {
                    "label": f"{name}: the password of {restore['role']} as before this rotation",
                    "role": restore["role"],
                    "password": restore["password"],
                    "login_dsn": _value(values, restore["login_fp"], f"current DSN of {name}"),
                    "via_dsn": _value(values, restore["via_fp"], f"pending DSN of {name}"),
                }
            )
    return out


def twilio_creates(
    plan_secrets: Iterable[Mapping[str, Any]] | None,
    names: Iterable[str],
    step: str,
    store_records: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """The secondary tokens to obtain before the decisions: each Twilio secret the run rotates
    (asked for, not a killed run's tested rotation, which is finished instead). A rotation a
    killed run left before its test keeps that run's secondary (stored as pending, named by the
    journal): a new one would replace it, and some hosts may use it already. Values: no_log."""
    out = []
    for item in _rotating(plan_secrets, names, step, TWILIO_KIND):
        name, spec = item["name"], item.get("spec") or {}
        journal = item.get("journal") or {}
        record = _get(store_records, name, {}) or {}
        if not record.get("current"):
            continue  # the decision says the store holds no current value
        stored = record.get("pending")
        kept = (
            stored
            if stored
            and journal.get("step") in ("created", "setting")
            and _fingerprint(stored) == journal.get("pending_fp")
            else None
        )
        out.append(
            {
                "name": name,
                "label": f"{name}: keep the secondary token of run {journal.get('run_id')}"
                if kept
                else f"{name}: create a secondary token",
                "account_sid": spec.get("account_sid"),
                "base_url": spec.get("base_url") or TWILIO_API,
                "auth_token": record["current"],
                "secondary_token": kept,
            }
        )
    return out


def twilio_made(created: Mapping[str, Any] | None, check_mode: bool = False) -> dict[str, str]:
    """{name: secondary token} from the registered twilio_auth_token state=secondary loop (a
    stand-in in check mode, where nothing is created)."""
    out: dict[str, str] = {}
    for result in _get(created, "results", []) or []:
        if _get(result, "skipped") or _get(result, "failed"):
            continue
        item = _get(result, "item", {}) or {}
        token = _get(result, "secondary_auth_token") or item.get("secondary_token")
        if not token and check_mode:
            token = TWILIO_CHECK_MODE_TOKEN
        if token:
            out[item["name"]] = token
    return out


def twilio_calls(
    decisions: Iterable[Mapping[str, Any]] | None,
    phase: str,
    values: Mapping[str, str],
    plan_secrets: Iterable[Mapping[str, Any]] | None = None,
    made: Mapping[str, str] | None = None,
    store_records: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The twilio_auth_token calls at ``phase``: ``finish`` - the rotated token promoted
    (authenticated with it), a killed run's secondary deleted (its rotation undone); ``undo``
    (the run failed) - the secondary this run created or kept deleted, authenticated with the
    current token. Values: no_log."""
    out = []
    decided = {d["name"]: d for d in _of_kind(decisions, TWILIO_KIND)}

    def call(spec: Mapping[str, Any], name: str, state: str, auth: str, secondary: str | None):
        what = {"promoted": "promote the new token", "secondary_absent": "delete the secondary"}
        return {
            "name": name,
            "label": f"{name}: {what[state]}",
            "state": state,
            "account_sid": spec.get("account_sid"),
            "base_url": spec.get("base_url") or TWILIO_API,
            "auth_token": auth,
            "secondary_token": secondary,
        }

    for name, decision in decided.items():
        spec, fps = decision.get("spec") or {}, decision.get("fingerprints") or {}
        action = decision.get("action")
        current = fps.get("current")
        if phase == "finish" and action == "rotate":
            pending = _value(values, fps.get("pending"), f"new token of {name}")
            out.append(call(spec, name, "promoted", _value(values, current, name), pending))
        elif phase == "finish" and action == "finish":
            replaced = fps.get("previous") or current
            promoted = _value(values, current, f"tested token of {name}")
            out.append(call(spec, name, "promoted", _value(values, replaced, name), promoted))
        elif (phase == "finish" and action == "undo") or (phase == "undo" and action == "rotate"):
            out.append(call(spec, name, "secondary_absent", _value(values, current, name), None))
    if phase == "undo":  # made before the decisions, which failed: no decision names it
        for item in _of_kind(plan_secrets, TWILIO_KIND):
            name = item["name"]
            current = (_get(store_records, name, {}) or {}).get("current")
            if name in (made or {}) and name not in decided and current:
                out.append(call(item.get("spec") or {}, name, "secondary_absent", current, None))
    return out


def stripe_checks(
    plan_secrets: Iterable[Mapping[str, Any]] | None,
    names: Iterable[str],
    step: str,
    given: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """The stripe_key_check calls that prove each given Stripe key of the run before anything
    is stored (a secret or restricted key with GET /v1/balance, a webhook secret by format).
    Values: no_log."""
    out = []
    for item in _rotating(plan_secrets, names, step, *STRIPE_KINDS):
        name, spec = item["name"], item.get("spec") or {}
        value = _get(given, name)
        if not isinstance(value, str) or not value:
            continue  # no value given: the decision says to give one
        if spec.get("kind") == "stripe_webhook_secret":
            kind = "webhook_secret"
        else:
            kind = "restricted_key" if value.startswith("rk_") else "secret_key"
        out.append(
            {
                "name": name,
                "label": f"{name}: prove the new {kind.replace('_', ' ')}",
                "api_key": value,
                "kind": kind,
                "expect_livemode": None
                if kind == "webhook_secret"
                else spec.get("expect_livemode"),
                "base_url": spec.get("base_url") or STRIPE_API,
            }
        )
    return out


def _shown(value: str) -> str:
    """A Stripe key as Stripe's dashboard shows it: its prefix and last four characters."""
    prefix = value[: value.rfind("_") + 1] if "_" in value else ""
    return f"{prefix}...{value[-4:]}" if len(value) >= len(prefix) + 12 else f"{prefix}..."


def vendor_revoke_lines(
    decisions: Iterable[Mapping[str, Any]] | None, values: Mapping[str, str]
) -> list[str]:
    """What a revoke of a vendor's key leaves to a person: Stripe has no API to expire a key or
    a webhook signing secret (the exact dashboard step), Twilio retired the old token at the
    promotion. One line per secret."""
    out = []
    for decision in _of_kind(decisions, TWILIO_KIND, *STRIPE_KINDS):
        if decision.get("action") != "revoke":
            continue
        name, kind = decision["name"], decision.get("kind")
        head = f"{name} ({_get(decision.get('spec'), 'env_var', '?')}):"
        fp = decision.get("revoked_fp") or _get(decision.get("fingerprints"), "revoked")
        if kind == TWILIO_KIND:
            out.append(
                f"{head} the previous token {fp} stopped working when Twilio promoted the new one "
                "(Twilio retires the old primary at once) - nothing to do at Twilio; the revoke "
                "is recorded"
            )
            continue
        old = values.get(fp or "", "")
        shown = _shown(old) if old else fp
        if kind == "stripe_webhook_secret":
            out.append(
                f"{head} Stripe has no API to expire a webhook signing secret - in the Stripe "
                "Dashboard, Developers > Webhooks (https://dashboard.stripe.com/webhooks), open "
                f"the endpoint: its old signing secret {shown} ({fp}) expires at the time chosen "
                'when it was rolled ("Roll secret", at most 24 hours later); check that the '
                "endpoint lists no other secret. The revoke is recorded"
            )
            continue
        test = "_test_" in old
        page = "https://dashboard.stripe.com/" + ("test/apikeys" if test else "apikeys")
        out.append(
            f"{head} Stripe has no API to expire a key - in the Stripe Dashboard, Developers > "
            f"API keys ({page}{', test mode' if test else ''}), find the key {shown} ({fp}): "
            'open its "..." menu, choose "Delete key..." and confirm (a key rolled with an '
            "expiration date is listed with it and stops working at that date by itself). The "
            "revoke is recorded"
        )
    return out


def dated_stores(catalog: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The secrets of the inventory's ``opsbook_secrets`` whose store says when a value was set
    (the AWS stores): ``[{name, store}]`` for secrets_report.yml to read the dates of."""
    out = []
    for name, spec in (catalog or {}).items():
        store = _get(spec, "store")
        if isinstance(store, Mapping) and store.get("type") in AWS_STORES:
            out.append({"name": name, "store": dict(store)})
    return out


def store_dates(reads: Mapping[str, Any] | None) -> dict[str, str]:
    """{name: when the current value was set} from a registered loop of secret_store reads."""
    out: dict[str, str] = {}
    for result in _get(reads, "results", []) or []:
        name = _get(_get(result, "item", {}), "name")
        current = _get(_get(result, "meta", {}), "current", {}) or {}
        when = _get(current, "created") or _get(current, "updated")
        if name and when and not _get(result, "failed"):
            out[name] = when
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "secret_rotation_store_settings": store_settings,
            "secret_rotation_records": records,
            "secret_rotation_env_reads": env_reads,
            "secret_rotation_pool": pool,
            "secret_rotation_resolve": resolve,
            "secret_rotation_platform_env": platform_env,
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
            "secret_rotation_dated_stores": dated_stores,
            "secret_rotation_store_dates": store_dates,
            "secret_rotation_kind_files": kind_files,
            "secret_rotation_kind_records": kind_records,
            "secret_rotation_derived": derived,
            "secret_rotation_db_admin_vars": db_admin_vars,
            "secret_rotation_db_calls": db_calls,
            "secret_rotation_db_restores": db_restores,
            "secret_rotation_twilio_creates": twilio_creates,
            "secret_rotation_twilio_made": twilio_made,
            "secret_rotation_twilio_calls": twilio_calls,
            "secret_rotation_stripe_checks": stripe_checks,
            "secret_rotation_vendor_revoke_lines": vendor_revoke_lines,
        }
