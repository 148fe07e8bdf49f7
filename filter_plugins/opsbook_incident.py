# Copyright: opsbook contributors
# Apache-2.0
"""Filters of the incident runbook (playbooks/incident.yml, roles/incident): what the triage
found, how severe it is, whether to roll back, and the markdown report. Pure functions, unit
tested (tests/unit/test_incident.py); the checks themselves are the project's modules
(http_check through roles/health_check, pg_health through roles/db_health, deploy_ledger, the
platform modules) and one read-only command per host.

- ``incident_probe``: one host's probe command (disk, memory, the tail of the app's log) ->
  ``{reachable, error, disks, memory, log}``, the log lines redacted.
- ``incident_redact``: text lines with secrets masked (``name=value`` of secret names - the
  rules of module_utils/opsbook_secret_names.py -, URL credentials, bearer tokens, JWTs).
- ``incident_collect``: ``{host: hostvars[host][fact]}`` for the hosts of the run.
- ``incident_assess``: every result -> severity (P0 / P1 / P2 / none) and why, findings,
  the last deploys, the health gate, the mitigation decision, next steps, summary lines.
- ``incident_outcome``: the assessment with what the rollback did.
- ``incident_markdown``: the incident report (the runbooks' incident steps and communication
  template, filled in).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

LEVELS = ("P0", "P1", "P2")
NONE = "none"
MASK = "********"

SEVERITY_TEXT = {
    "P0": "Critical: complete service outage, data loss or a security breach",
    "P1": "High: partial outage, a major feature broken",
    "P2": "Degraded: slow answers, resources running low, long-running queries - no outage yet",
    NONE: "No incident found by the checks",
}
# The runbooks' response to each level (Incident Response: P0 and P1 steps).
RESPONSE = {
    "P0": "Immediate (0-5 minutes): acknowledge the incident, post in #incidents, page the "
    "on-call engineer, start the incident log; post updates every 30 minutes",
    "P1": "Immediate (0-15 minutes): acknowledge the incident, post in #incidents, notify the "
    "on-call engineer; investigate within the hour",
    "P2": "Post in #incidents and fix within working hours; watch that it does not grow",
    NONE: "Nothing to page for. If users still report a problem, look at what these checks "
    "cannot see: the client side, DNS, a third-party API",
}
UPDATE_EVERY_MIN = {"P0": 30, "P1": 30, "P2": 60}
MARKER = "##opsbook-incident "
LOG_ERROR_RE = re.compile(
    r"\b(error|exception|traceback|fatal|critical|panic)\b|\" 5\d\d ", re.IGNORECASE
)
_URL_USERINFO_RE = re.compile(
    r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@", re.I
)
_BEARER_RE = re.compile(r"\b(?P<kind>bearer|basic|token)(?P<sep>\s+)[A-Za-z0-9._~+/=-]{8,}", re.I)
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
MAX_LINE_CHARS = 300
REPORT_MAX_CHARS = 8000


def _load_secret_names() -> Any:
    """module_utils/opsbook_secret_names.py (standard library only), by its path beside this
    plugin's directory: the same rules the operation log and `opsbook run` redact with."""
    path = Path(__file__).resolve().parent.parent / "module_utils" / "opsbook_secret_names.py"
    name = "_opsbook_incident_secret_names"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover - the project is broken
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


_NAMES = _load_secret_names()


def _get(data: Any, key: str, default: Any = None) -> Any:
    return data.get(key, default) if isinstance(data, Mapping) else default


def _one_line(text: Any, limit: int = 240) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ----------------------------------------------------------------------- redaction


def incident_redact(lines: Iterable[Any]) -> list[str]:
    """Each line with what looks secret masked: the value of ``name=value`` / ``name: value``
    whose name is secret (``password=``, ``"api_key": ...``, ``DATABASE_URL=``), the password
    of ``scheme://user:password@``, ``Bearer <token>``, and JWTs. Lines longer than
    MAX_LINE_CHARS are cut."""
    redacted = []
    for raw in lines or []:
        line = str(raw).rstrip("\r\n")
        line = _URL_USERINFO_RE.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", line)
        line = _BEARER_RE.sub(lambda m: f"{m['kind']}{m['sep']}{MASK}", line)
        line = _JWT_RE.sub(MASK, line)
        line = _NAMES.redact_assignments(line, MASK)
        if len(line) > MAX_LINE_CHARS:
            line = line[: MAX_LINE_CHARS - 3] + "..."
        redacted.append(line)
    return redacted


# ----------------------------------------------------------------------- the host probe


def _sections(stdout: str) -> dict[str, list[str]]:
    """The probe's output split at its markers; everything after the log marker is the log."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        if current is not None and current is sections.get("log"):
            current.append(line)
        elif line.startswith(MARKER):
            name = line[len(MARKER) :].strip()
            key, _unused, rest = name.partition(" ")
            current = sections.setdefault(key, [])
            if rest:
                current.append(rest)
        elif current is not None:
            current.append(line)
    return sections


def _parse_df(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    disks: dict[str, dict[str, Any]] = {}
    errors = []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[4].endswith("%") and parts[1].isdigit():
            try:
                size_kb, used_kb, avail_kb = int(parts[1]), int(parts[2]), int(parts[3])
            except ValueError:
                continue
            total = used_kb + avail_kb
            disks.setdefault(
                parts[5],
                {
                    "mount": parts[5],
                    "filesystem": parts[0],
                    "size_kb": size_kb,
                    "avail_kb": avail_kb,
                    # as df computes "Capacity": used / (used + available), rounded up
                    "used_percent": round(100.0 * used_kb / total, 1) if total else 0.0,
                },
            )
        elif line.startswith("df:"):
            errors.append(_one_line(line))
    return list(disks.values()), errors


def _parse_meminfo(lines: list[str]) -> dict[str, Any] | None:
    values = {}
    for line in lines:
        name, _unused, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            values[name.strip()] = int(words[0])
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if not total or available is None:
        return None
    return {
        "total_kb": total,
        "available_kb": available,
        "used_percent": round(100.0 * (total - available) / total, 1),
        "swap_total_kb": values.get("SwapTotal"),
        "swap_free_kb": values.get("SwapFree"),
    }


def incident_probe(result: Any, log_path: str = "") -> dict[str, Any]:
    """One host's probe (roles/incident/tasks/probe.yml) -> ``{state, reachable, error,
    disks: [{mount, used_percent, size_kb, avail_kb}], memory: {used_percent, ...} | None,
    log: {path, lines (redacted), error, error_lines}}``. ``state``: ``checked``,
    ``unreachable``, ``skipped`` or ``missing`` (the probe never ran)."""
    probe: dict[str, Any] = {
        "state": "checked",
        "reachable": True,
        "error": None,
        "disks": [],
        "disk_errors": [],
        "memory": None,
        "log": {"path": log_path or None, "lines": [], "error": None, "error_lines": 0},
    }
    if not isinstance(result, Mapping) or not result:
        probe.update(state="missing", reachable=None, error="the probe did not run")
        return probe
    if result.get("skipped"):
        probe.update(state="skipped", reachable=None, error=None)
        return probe
    if result.get("unreachable"):
        message = str(result.get("msg") or "unreachable")
        # "Task failed: Data could not be sent ... Make sure ...: ssh: connect to host ...: refused"
        reason = message.rsplit("ssh: ", 1)[-1] if "ssh: " in message else message
        probe.update(state="unreachable", reachable=False, error=_one_line(reason))
        return probe
    stdout = str(result.get("stdout") or "")
    if MARKER not in stdout:
        error = result.get("stderr") or result.get("msg") or "the probe printed nothing"
        probe.update(state="failed", error=_one_line(error))
        return probe
    sections = _sections(stdout)
    probe["disks"], probe["disk_errors"] = _parse_df(sections.get("df", []))
    probe["memory"] = _parse_meminfo(sections.get("meminfo", []))
    log_error = sections.get("log-error")
    if log_error:
        probe["log"]["error"] = _one_line(" ".join(log_error))
    lines = incident_redact(sections.get("log", []))
    probe["log"]["lines"] = lines
    probe["log"]["error_lines"] = sum(1 for line in lines if LOG_ERROR_RE.search(line))
    return probe


def incident_collect(hostvars: Any, hosts: Iterable[str], fact: str) -> dict[str, Any]:
    """``{host: hostvars[host][fact]}`` (None where the fact is not set)."""
    return {host: _get(hostvars[host], fact) for host in hosts}


def _epoch_ms(value: Any) -> str:
    try:
        return datetime.fromtimestamp(float(value) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value or "?")


# What serves, by target: (label, result key) of the deployment serving and of the one a
# rollback would go to, and how one is described.
_SERVING = {
    "vercel": (("production", "current"), ("rollback would go to", "previous")),
    "render": (("live", "live"), ("rollback would go to", "previous_good")),
}


def _describe_deployment(target: str, dep: Mapping[str, Any]) -> str:
    if target == "vercel":
        return (
            f"{dep.get('id')} (version {dep.get('version') or '?'}, {dep.get('state')}, "
            f"created {_epoch_ms(dep.get('created'))}, {dep.get('url')})"
        )
    status, source = dep.get("status"), dep.get("source") or "?"
    return f"{dep.get('id')} ({status}, {source}, created {dep.get('created')})"


def incident_platform_serving(result: Any, target: str) -> dict[str, Any]:
    """What a platform's read-only call says serves -> ``{lines, error}``: Vercel's production
    deployment (vercel_deployment action=current), Render's live deploy (render_service
    action=list_deploys), Fly's machines (fly_machines action=list)."""
    if not isinstance(result, Mapping) or not result or result.get("skipped"):
        return {"lines": [], "error": f"{target} was not asked"}
    if result.get("failed"):
        return {"lines": [], "error": _one_line(result.get("msg") or "the call failed", 300)}
    lines: list[str] = []
    for index, (label, key) in enumerate(_SERVING.get(target, ())):
        dep = result.get(key)
        if isinstance(dep, Mapping):
            lines.append(f"{label}: {_describe_deployment(target, dep)}")
        elif index == 0:
            lines.append(f"{label}: nothing serves")
    if target == "fly":
        machines = list(result.get("machines") or [])
        states: dict[str, int] = {}
        for machine in machines:
            states[str(machine.get("state"))] = states.get(str(machine.get("state")), 0) + 1
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        lines.append(f"{len(machines)} machine(s): {counts or 'none'}")
        lines += [
            f"{m.get('id')} {m.get('state')} in {m.get('region')}: version "
            f"{m.get('version') or '?'} ({m.get('image')})"
            for m in machines[:10]
        ]
    return {"lines": lines, "error": None}


# ----------------------------------------------------------------------- assessment


def _health_state(summary: Any, expect_status: Iterable[int]) -> str:
    """``healthy``, ``slow`` (answers and serves a version, but too slowly) or ``down``."""
    if not isinstance(summary, Mapping):
        return "down"
    if summary.get("ok"):
        return "healthy"
    if summary.get("status") in set(expect_status) and summary.get("version") is not None:
        return "slow"
    return "down"


def _parse_time(text: Any) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ago(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h``, ``2 d`` (ago)."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{round(seconds / 86400)} d"


def _percent(value: Any) -> str:
    return f"{float(value):g}%"


class _Findings:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, level: str, area: str, text: str) -> None:
        self.items.append({"level": level, "area": area, "text": text})

    def at(self, level: str) -> list[str]:
        return [f["text"] for f in self.items if f["level"] == level]

    @property
    def severity(self) -> str:
        return next((lv for lv in LEVELS if self.at(lv)), NONE)


def _apps(apps: Mapping[str, Any], settings: Mapping[str, Any], found: _Findings) -> dict:
    expect = settings.get("expect_status") or [200]
    out: dict[str, dict[str, Any]] = {}
    for host in sorted(apps or {}):
        raw = apps[host] or {}
        summary = _get(raw, "summary") or {}
        probe = _get(raw, "probe") or incident_probe(None)
        state = _health_state(summary, expect)
        ssh = {True: "ok", False: "unreachable"}.get(probe.get("reachable"), "not checked")
        out[host] = {
            "health": state,
            "ssh": ssh,
            "status": summary.get("status"),
            "latency_ms": summary.get("latency_ms"),
            "version": summary.get("version"),
            "problems": list(summary.get("problems") or []),
            "url": summary.get("url"),
            "probe": probe,
        }
    checked = len(out)
    down = [h for h, a in out.items() if a["health"] == "down"]
    for host in down:
        why = "; ".join(out[host]["problems"]) or "no healthy answer"
        if checked > 1 and len(down) < checked:
            found.add("P1", "app", f"{host} is down ({len(down)} of {checked} app hosts): {why}")
    if checked and len(down) == checked:
        detail = "; ".join(f"{h}: {'; '.join(out[h]['problems']) or 'down'}" for h in down)
        found.add("P0", "app", f"no app host answers healthily ({checked} checked) - {detail}")
    for host, app in out.items():
        if app["health"] == "slow":
            found.add("P2", "app", f"{host} answers slowly: {'; '.join(app['problems'])}")
        if app["ssh"] == "unreachable":
            found.add(
                "P1",
                "host",
                f"{host} cannot be reached over SSH ({app['probe']['error']}): its disk, memory "
                "and log are unknown, and no deploy or rollback can reach it",
            )
        elif app["probe"]["state"] == "failed":
            found.add("unknown", "host", f"{host}: the probe failed: {app['probe']['error']}")
    return out


def _platform(platform: Any, settings: Mapping[str, Any], found: _Findings) -> dict | None:
    if not isinstance(platform, Mapping) or not platform.get("target"):
        return None
    summary = platform.get("summary") or {}
    state = _health_state(summary, settings.get("expect_status") or [200])
    target = platform["target"]
    serving = platform.get("serving") or {}
    out = {
        "target": target,
        "unit": platform.get("unit") or target,
        "url": summary.get("url") or platform.get("base_url"),
        "health": state,
        "status": summary.get("status"),
        "latency_ms": summary.get("latency_ms"),
        "version": summary.get("version"),
        "problems": list(summary.get("problems") or []),
        "serving": serving.get("lines") or [],
        "serving_error": serving.get("error"),
    }
    why = "; ".join(out["problems"]) or "no healthy answer"
    if state == "down":
        found.add("P0", "platform", f"the app on {target} ({out['url']}) is down: {why}")
    elif state == "slow":
        found.add("P2", "platform", f"the app on {target} answers slowly: {why}")
    if out["serving_error"]:
        found.add(
            "unknown", "platform", f"{target} could not say what serves: {out['serving_error']}"
        )
    return out


def _database(database: Any, settings: Mapping[str, Any], found: _Findings) -> dict[str, Any]:
    db: dict[str, Any] = {"checked": False, "connected": None, "error": None}
    if not settings.get("database_configured", True):
        db["note"] = "database_url is not set: the database was not checked"
        found.add("unknown", "database", db["note"])
        return db
    if not isinstance(database, Mapping) or not database or database.get("skipped"):
        db["note"] = "the database check did not run"
        found.add("unknown", "database", db["note"])
        return db
    if database.get("unreachable"):
        db["note"] = f"the dbadmin host could not be reached: {_one_line(database.get('msg'))}"
        found.add("unknown", "database", db["note"])
        return db
    if "connected" not in database:
        db["note"] = f"the database check failed: {_one_line(database.get('msg'))}"
        found.add("unknown", "database", db["note"])
        return db
    chains = list(database.get("lock_chains") or [])
    long_queries = list(database.get("long_queries") or [])
    db.update(
        checked=True,
        connected=bool(database.get("connected")),
        error=database.get("error"),
        server_version=database.get("server_version"),
        connections_used=database.get("connections_used"),
        max_connections=database.get("max_connections"),
        connections_available=database.get("connections_available"),
        connections_percent=database.get("connections_percent"),
        lock_waits=database.get("lock_waits") or 0,
        lock_chains=chains,
        long_queries=long_queries,
    )
    if not db["connected"]:
        found.add("P0", "database", f"the database is unreachable: {_one_line(db['error'])}")
        return db
    lock_wait_s = float(settings.get("lock_wait_s", 5))
    for chain in chains:
        root = chain.get("root") or {}
        blocked = chain.get("blocked") or []
        wait = float(chain.get("max_wait_s") or 0)
        text = (
            f"blocking lock chain: pid {root.get('pid')} ({root.get('state')}) blocks "
            f"{len(blocked)} session(s), longest wait {wait:g} s: "
            f"{_one_line(root.get('query'), 120)}"
        )
        found.add("P1" if wait >= lock_wait_s else "info", "database", text)
    if db["connections_available"] == 0 and db["max_connections"]:
        found.add(
            "P1",
            "database",
            f"no connection slot left: {db['connections_used']} of {db['max_connections']} used",
        )
    elif database.get("connections_warn"):
        found.add(
            "P2",
            "database",
            f"connections at {_percent(db['connections_percent'])} of max_connections "
            f"({db['connections_used']} of {db['max_connections']})",
        )
    if long_queries:
        longest = max(long_queries, key=lambda q: float(q.get("duration_s") or 0))
        found.add(
            "P2",
            "database",
            f"{len(long_queries)} long-running session(s), the longest pid {longest.get('pid')} "
            f"{longest.get('state')} {float(longest.get('duration_s') or 0):g} s: "
            f"{_one_line(longest.get('query'), 120)}",
        )
    return db


def _deploys(ledger: Any, now: datetime, settings: Mapping[str, Any], found: _Findings) -> dict:
    window = int(settings.get("window_minutes", 120))
    deploys: dict[str, Any] = {"error": None, "entries": [], "last_deploy": None, "after": []}
    if not isinstance(ledger, Mapping) or not ledger or ledger.get("skipped"):
        deploys["error"] = "the ledger was not read"
    elif ledger.get("failed") or "entries" not in ledger:
        deploys["error"] = _one_line(ledger.get("msg") or "the ledger could not be read", 300)
    if deploys["error"]:
        found.add("unknown", "deploys", f"the deploy ledger could not be read: {deploys['error']}")
        return deploys
    entries = []
    for raw in ledger.get("entries") or []:
        when = _parse_time(_get(raw, "recorded_at"))
        age = (now - when).total_seconds() if when else None
        entries.append(
            {
                "when": _get(raw, "recorded_at"),
                "ago": _ago(age) if age is not None else "?",
                "age_s": age,
                "playbook": _get(raw, "playbook") or "?",
                "version": _get(raw, "version"),
                "status": _get(raw, "status"),
                "operator": _get(raw, "operator"),
                "reason": _one_line(_get(raw, "reason"), 120),
                "release_id": _get(raw, "release_id"),
                "hotfix": bool(_get(raw, "hotfix")),
                "recent": age is not None and age <= window * 60,
            }
        )
    entries.sort(key=lambda e: str(e["when"] or ""))
    deploys["entries"] = entries
    last = next((e for e in reversed(entries) if e["playbook"] == "deploy"), None)
    deploys["last_deploy"] = last
    if last is not None:
        deploys["after"] = [e for e in entries if str(e["when"]) > str(last["when"])]
    if not entries:
        found.add("info", "deploys", f"the ledger holds no entry for {settings.get('env') or '?'}")
    elif last is None:
        found.add("info", "deploys", f"no deploy among the last {len(entries)} ledger entries")
    elif last["recent"] and last["status"] != "succeeded":
        found.add(
            "P1",
            "deploys",
            f"a recent deploy failed: {last['version']} {last['ago']} ago by "
            f"{last['operator']} (status {last['status']})",
        )
    return deploys


def _describe_deploy(last: Mapping[str, Any]) -> str:
    by = f", by {last['operator']}" if last.get("operator") else ""
    return f"the last deploy ({last.get('version')}, {last.get('ago')} ago{by})"


def _mitigation(
    requested: str, gate: Mapping[str, Any], deploys: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Roll back only when asked, the last deploy is recent (and went live, and was not rolled
    back since) and the health gate fails now; otherwise say every reason why not."""
    window = int(settings.get("window_minutes", 120))
    decision: dict[str, Any] = {"requested": requested, "rollback": False, "decision": "none"}
    if requested != "rollback":
        decision["reason"] = (
            "no mitigation asked (-e mitigate=rollback rolls back when the last deploy is "
            f"within {window} minutes and the health gate fails)"
        )
        return decision
    blockers: list[str] = []
    last = deploys.get("last_deploy")
    if deploys.get("error"):
        blockers.append(
            "the deploy ledger could not be read, so whether the last deploy is recent is unknown"
        )
    elif last is None:
        blockers.append("the ledger shows no deploy to roll back")
    else:
        after = [e for e in deploys.get("after") or [] if e.get("playbook") == "rollback"]
        if after:
            blockers.append(
                f"{_describe_deploy(last)} was rolled back already ({after[-1]['ago']} ago)"
            )
        elif last.get("status") != "succeeded":
            blockers.append(
                f"{_describe_deploy(last)} did not go live (status {last.get('status')}): "
                "it left the previous release serving"
            )
        if not last.get("recent"):
            blockers.append(f"{_describe_deploy(last)} is older than the {window}-minute window")
    if not gate.get("checked"):
        blockers.append("there is no app host or app_base_url to gate on")
    elif gate.get("ok"):
        blockers.append("the health gate passes now (every app answers /health and /api/version)")
    if blockers:
        decision["reason"] = "not rolled back: " + "; ".join(blockers)
        return decision
    failing = "; ".join(gate.get("failing") or [])
    why = (
        f"{_describe_deploy(last)} is within the {window}-minute window and the health gate "
        f"fails now ({failing})"
    )
    if settings.get("check_mode"):
        # in --check the triage stays a report: the decision is reported, rollback.yml is not
        # run (on its own, rollback.yml --check says what it would switch).
        decision.update(
            decision="rollback",
            reason=f"would roll back through rollback.yml (--check: not run): {why}",
        )
        return decision
    decision.update(
        rollback=True, decision="rollback", reason=f"rolling back through rollback.yml: {why}"
    )
    return decision


def _resources(
    apps: Mapping[str, Any], dbadmin: Any, settings: Mapping[str, Any], found: _Findings
) -> dict[str, Any] | None:
    warn = float(settings.get("disk_warn_percent", 80))
    critical = float(settings.get("disk_critical_percent", 90))
    memory_warn = float(settings.get("memory_warn_percent", 90))
    probes = {host: app["probe"] for host, app in apps.items()}
    dbadmin_out = None
    if isinstance(dbadmin, Mapping) and dbadmin.get("host"):
        probe = dbadmin.get("probe") or incident_probe(None)
        dbadmin_out = {"host": dbadmin["host"], "probe": probe}
        if probe.get("reachable") is False:
            found.add(
                "unknown", "host", f"{dbadmin['host']} (dbadmin) cannot be reached over SSH: "
                f"{probe.get('error')}",
            )  # fmt: skip
        probes[f"{dbadmin['host']} (dbadmin)"] = probe
    for host, probe in probes.items():
        for disk in probe.get("disks") or []:
            used = float(disk["used_percent"])
            text = f"{host}: disk {disk['mount']} {_percent(used)} full"
            if used >= critical:
                found.add("P1", "disk", f"{text} (critical at {_percent(critical)})")
            elif used >= warn:
                found.add("P2", "disk", f"{text} (warn at {_percent(warn)})")
        memory = probe.get("memory")
        if memory and float(memory["used_percent"]) >= memory_warn:
            found.add(
                "P2",
                "memory",
                f"{host}: memory {_percent(memory['used_percent'])} used "
                f"(warn at {_percent(memory_warn)})",
            )
        log = probe.get("log") or {}
        if log.get("error_lines"):
            found.add(
                "info",
                "log",
                f"{host}: {log['error_lines']} error line(s) in the last {len(log['lines'])} "
                f"of {log.get('path')}",
            )
        elif log.get("error"):
            found.add("info", "log", f"{host}: {log['error']}")
    return dbadmin_out


def _status(severity: str, found: _Findings, mitigation: Mapping[str, Any]) -> str:
    if severity == NONE:
        return "Monitoring"
    identified = mitigation.get("rollback") or any(
        f["text"].startswith(("the database is unreachable", "blocking lock chain"))
        or f["area"] == "disk"
        for f in found.items
        if f["level"] == severity
    )
    return "Identified" if identified else "Investigating"


def _next_steps(
    severity: str,
    found: _Findings,
    gate: Mapping[str, Any],
    deploys: Mapping[str, Any],
    mitigation: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> list[str]:
    env = settings.get("env") or "<env>"
    steps: list[str] = []
    areas = {f["area"] for f in found.items if f["level"] in LEVELS}
    last = deploys.get("last_deploy")
    if not gate.get("ok") and gate.get("checked") and not mitigation.get("rollback"):
        if last and last.get("recent") and last.get("status") == "succeeded":
            steps.append(
                f"{_describe_deploy(last)} is recent and the health gate fails: roll it back - "
                f"opsbook run incident --env {env} -e mitigate=rollback (or opsbook run "
                f"rollback --env {env})."
            )
        else:
            steps.append(
                "The health gate fails with no recent deploy to blame: restart the app on the "
                "hosts that are down (runbooks: restart web servers if no obvious cause), then "
                "check with engineering if it is still down."
            )
    if "host" in areas:
        steps.append(
            "A host cannot be reached over SSH: check it from the provider's console; decide "
            "whether to restart it or let the load balancer route around it."
        )
    if "database" in areas:
        steps.append(
            "Database: opsbook run db_health --env "
            f"{env} for the whole picture; end blocking or runaway sessions with "
            "-e long_query_action=cancel|terminate (production: -e confirm=<database>)."
        )
    if "disk" in areas:
        steps.append(
            "Disk: clear old logs and releases (routine checks' cleanup) or grow the volume."
        )
    if "memory" in areas:
        steps.append("Memory: a leak shows as slow, then crashed, processes - restart the app.")
    if deploys.get("error"):
        steps.append("Fix access to opsbook_state_url (the deploy ledger) to see recent deploys.")
    if severity != NONE:
        steps.append("Post the communication update below in #incidents; write the post-mortem.")
    return steps


def _headline(text: str) -> str:
    """A finding's first words: up to its first " (" or ": " (a short title)."""
    cuts = [i for i in (text.find(" ("), text.find(": ")) if i >= 12]
    return text[: min(cuts)] if cuts else _one_line(text, 80)


def _impact(units: Mapping[str, Any], db: Mapping[str, Any], severity: str, headline: str) -> str:
    """What users see, from the apps' health and the database - not from the finding that set
    the severity (an SSH-unreachable host may still serve every user)."""
    down = [name for name, unit in units.items() if unit["health"] == "down"]
    slow = [name for name, unit in units.items() if unit["health"] == "slow"]
    if db.get("checked") and not db.get("connected"):
        return "Complete outage: the database cannot be reached"
    if units and len(down) == len(units):
        return f"Complete outage: no app answers ({', '.join(down)})"
    if down:
        return f"Partial outage: {len(down)} of {len(units)} app hosts down ({', '.join(down)})"
    if slow:
        return f"Degraded: slow answers from {', '.join(slow)}"
    if severity != NONE:
        return f"No failing request seen by the checks yet; at risk: {headline}"
    return "No user impact found by the checks"


def incident_assess(
    apps: Mapping[str, Any] | None,
    database: Any = None,
    ledger: Any = None,
    platform: Any = None,
    dbadmin: Any = None,
    settings: Mapping[str, Any] | None = None,
    now: Any = None,
) -> dict[str, Any]:
    """Everything the triage found -> the incident's assessment.

    ``apps``: ``{host: {summary: <health_check_app_summary>, probe: <incident_probe>}}``;
    ``platform``: ``{target, unit, base_url, summary, serving: {lines, error}}`` on a platform
    target; ``database``: the raw pg_health result (db_health's check); ``ledger``: the raw
    deploy_ledger query; ``dbadmin``: ``{host, probe}`` when the dbadmin host is not the
    controller. ``settings``: env, mitigate, window_minutes, check_mode, expect_status,
    disk_warn_percent, disk_critical_percent, memory_warn_percent, lock_wait_s,
    database_configured, started, operator, reason, run_id.

    Severity: P0 when no app (host or platform) answers healthily or the database is
    unreachable; P1 when some app hosts are down or unreachable over SSH, a lock chain blocks
    sessions, no connection slot is left, a recent deploy failed or a disk is critically full;
    P2 when an app is slow, connections are high, sessions run long, a disk or the memory
    is filling up; else none. What could not be checked is listed, never guessed.
    """
    settings = dict(settings or {})
    moment = _parse_time(now) if now else None
    moment = moment or datetime.now(UTC)
    found = _Findings()
    app_out = _apps(apps or {}, settings, found)
    platform_out = _platform(platform, settings, found)
    db = _database(database, settings, found)
    deploys = _deploys(ledger, moment, settings, found)
    dbadmin_out = _resources(app_out, dbadmin, settings, found)
    if not app_out and platform_out is None:
        found.add("unknown", "app", "no app host to check (group app is empty or outside --limit)")

    units = dict(app_out)
    if platform_out is not None:
        units[platform_out["unit"]] = platform_out
    failing = [
        f"{name}: {'; '.join(unit['problems']) or 'down'}"
        for name, unit in units.items()
        if unit["health"] == "down"
    ]
    gate = {"checked": bool(units), "ok": bool(units) and not failing, "failing": failing}
    last = deploys.get("last_deploy")
    if last and last.get("recent") and last.get("status") == "succeeded" and failing:
        found.add(
            "info",
            "deploys",
            f"{_describe_deploy(last)} is within the {settings.get('window_minutes', 120)}-minute "
            "window and the health gate fails now: the likely cause",
        )
    mitigation = _mitigation(str(settings.get("mitigate") or "none"), gate, deploys, settings)
    severity = found.severity
    reasons = found.at(severity) if severity != NONE else []
    status = _status(severity, found, mitigation)
    headline = (
        _headline(reasons[0]) + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
        if reasons
        else "no problem found"
    )
    impact = _impact(units, db, severity, headline)
    unknowns = found.at("unknown")
    summary = [
        f"Incident triage on {settings.get('env') or '?'}: severity {severity}"
        + (f" - {SEVERITY_TEXT[severity]}" if severity != NONE else " (no problem found)"),
        *(f"why: {r}" for r in reasons),
        *(f"not checked: {u}" for u in unknowns),
        f"mitigation: {mitigation['reason']}",
    ]
    return {
        "severity": severity,
        "severity_text": SEVERITY_TEXT[severity],
        "response": RESPONSE[severity],
        "verdict": "ok" if severity == NONE else "warn",
        "reasons": reasons,
        "findings": found.items,
        "unknowns": unknowns,
        "status": status,
        "headline": headline,
        "impact": impact,
        "apps": app_out,
        "platform": platform_out,
        "dbadmin": dbadmin_out,
        "database": db,
        "deploys": deploys,
        "gate": gate,
        "mitigation": mitigation,
        "next_steps": _next_steps(severity, found, gate, deploys, mitigation, settings),
        "summary": summary,
        "now": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "settings": settings,
    }


def incident_outcome(report: Mapping[str, Any], rollback: Any) -> dict[str, Any]:
    """The assessment with the rollback's outcome (rollback.yml's ``deploy_rollback_report``):
    ``mitigation.outcome`` ``{ok, lines, versions}``; the status becomes Monitoring when every
    host was rolled back."""
    updated = dict(report)
    mitigation = dict(updated.get("mitigation") or {})
    if not isinstance(rollback, Mapping) or not rollback:
        mitigation["outcome"] = {"ok": False, "lines": ["rollback.yml reported nothing"]}
    else:
        ok = bool(rollback.get("ok"))
        checked = bool(rollback.get("check_mode"))
        mitigation["outcome"] = {
            "ok": ok,
            "check_mode": checked,
            "versions": list(rollback.get("versions") or []),
            "lines": list(rollback.get("lines") or []),
        }
        verb = "would be rolled back (--check)" if checked else "rolled back"
        mitigation["reason"] = (
            f"{verb} through rollback.yml to {', '.join(rollback.get('versions') or []) or '?'}"
            if ok
            else "the rollback through rollback.yml failed: "
            + "; ".join(rollback.get("lines") or [])
        )
        if ok and not checked:
            updated["status"] = "Monitoring"
    updated["mitigation"] = mitigation
    updated["summary"] = [
        *[s for s in updated.get("summary") or [] if not s.startswith("mitigation: ")],
        f"mitigation: {mitigation['reason']}",
    ]
    return updated


# ----------------------------------------------------------------------- the report


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def _cell(text: Any) -> str:
    return str("-" if text in (None, "") else text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _kb(value: Any) -> str:
    size = float(value or 0) * 1024
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size:.0f} B"
        size /= 1024
    return "-"  # pragma: no cover


def _resources_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    probes = [(h, a["probe"]) for h, a in (report.get("apps") or {}).items()]
    dbadmin = report.get("dbadmin")
    if dbadmin:
        probes.append((f"{dbadmin['host']} (dbadmin)", dbadmin["probe"]))
    for host, probe in probes:
        memory = probe.get("memory")
        mem = (
            f"{_percent(memory['used_percent'])} used of {_kb(memory['total_kb'])}"
            if memory
            else "-"
        )
        disks = ", ".join(
            f"{d['mount']} {_percent(d['used_percent'])} ({_kb(d['avail_kb'])} free)"
            for d in probe.get("disks") or []
        )
        state = probe.get("state")
        rows.append([host, disks or (probe.get("error") or state), mem])
    return rows


def _section_apps(report: Mapping[str, Any]) -> list[str]:
    apps = report.get("apps") or {}
    platform = report.get("platform")
    lines: list[str] = []
    if apps:
        rows = [
            [
                host,
                a["health"],
                a["status"],
                _ms(a["latency_ms"]),
                a["version"],
                a["ssh"],
                "; ".join(a["problems"]),
            ]
            for host, a in apps.items()
        ]
        lines += _table(
            ["host", "health", "/health", "latency", "version", "SSH", "problems"], rows
        )
    if platform:
        lines += [
            f"**{platform['target']}** - `{platform['url']}`: {platform['health']}, /health "
            f"{platform['status'] if platform['status'] is not None else '-'} in "
            f"{_ms(platform['latency_ms'])}, version {platform['version'] or '-'}"
            + (f" ({'; '.join(platform['problems'])})" if platform["problems"] else ""),
            "",
            f"What {platform['target']} says serves:",
            *(f"- {line}" for line in platform["serving"] or []),
            *(
                [f"- could not be read: {platform['serving_error']}"]
                if platform["serving_error"]
                else []
            ),
        ]
    return lines or ["No app host and no platform were checked."]


def _section_database(db: Mapping[str, Any]) -> list[str]:
    if not db.get("checked"):
        return [f"Not checked: {db.get('note') or 'the check did not run'}."]
    if not db.get("connected"):
        return [f"**Unreachable**: {db.get('error')}"]
    lines = [
        f"Connected (PostgreSQL {db.get('server_version') or '?'}); connections "
        f"{db.get('connections_used')}/{db.get('max_connections')} "
        f"({_percent(db.get('connections_percent') or 0)}), "
        f"{db.get('connections_available')} slot(s) left.",
        f"Lock waits: {db.get('lock_waits') or 0}.",
    ]
    for chain in db.get("lock_chains") or []:
        root = chain.get("root") or {}
        lines.append(
            f"- pid {root.get('pid')} ({root.get('state')}) blocks "
            f"{len(chain.get('blocked') or [])}, longest wait {chain.get('max_wait_s')} s: "
            f"`{_one_line(root.get('query'), 120)}`"
        )
    queries = db.get("long_queries") or []
    lines.append(f"Long-running sessions: {len(queries)}.")
    for query in queries[:5]:
        lines.append(
            f"- pid {query.get('pid')} {query.get('state')} {query.get('duration_s')} s "
            f"({query.get('user')}@{query.get('database')}): `{_one_line(query.get('query'), 120)}`"
        )
    return lines


def _short_time(text: Any) -> str:
    moment = _parse_time(text)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else str(text or "?")


def _section_deploys(deploys: Mapping[str, Any]) -> list[str]:
    if deploys.get("error"):
        return [f"The deploy ledger could not be read: {deploys['error']}"]
    entries = deploys.get("entries") or []
    if not entries:
        return ["The ledger holds no entry for this environment."]
    rows = [
        [
            _short_time(e["when"]),
            f"{e['ago']} ago",
            e["playbook"],
            e["version"],
            e["status"],
            e["operator"],
            e["reason"],
        ]
        for e in reversed(entries)
    ]
    return _table(["when (UTC)", "age", "what", "version", "status", "who", "reason"], rows)


def _section_logs(report: Mapping[str, Any], lines_per_host: int | None) -> list[str]:
    out: list[str] = []
    for host, app in (report.get("apps") or {}).items():
        log = app["probe"].get("log") or {}
        if app["probe"].get("state") != "checked":
            out.append(
                f"**{host}**: not read ({app['probe'].get('error') or app['probe']['state']})."
            )
            continue
        if log.get("error"):
            out.append(f"**{host}**: {log['error']}.")
            continue
        lines = log.get("lines") or []
        shown = (
            lines if lines_per_host is None else lines[-lines_per_host:] if lines_per_host else []
        )
        out.append(
            f"**{host}** - `{log.get('path')}`, last {len(shown)} of {len(lines)} line(s) read, "
            f"{log.get('error_lines', 0)} with an error:"
        )
        if shown:
            out += ["```", *(line.replace("```", "'''") for line in shown), "```"]
    return out or ["No log was read (no app host, or a platform: see its dashboard)."]


def _current_status(report: Mapping[str, Any]) -> str:
    """The communication template's "Current status" - what we are doing now."""
    mitigation = report.get("mitigation") or {}
    if mitigation.get("requested") == "rollback":
        return str(mitigation.get("reason"))
    if report["severity"] == NONE:
        return "Monitoring: the automated checks found no fault."
    steps = report.get("next_steps") or []
    return "Triage done (this report). Next: " + (steps[0] if steps else "investigating.")


def incident_markdown(
    report: Mapping[str, Any], log_lines: int | None = None, max_chars: int = 0
) -> str:
    """The incident report as markdown. ``log_lines``: the log lines shown per host (None: all
    that were read); ``max_chars``: when > 0, the report is made to fit (fewer log lines, then
    none, then cut with a note) - what set_stats publishes."""
    if max_chars > 0:
        for lines in (log_lines, 10, 3, 0):
            text = incident_markdown(report, lines)
            if len(text) <= max_chars:
                return text
        note = "\n\n_(cut to fit; the whole report is in the file)_\n"
        return text[: max_chars - len(note)] + note
    s = dict(report.get("settings") or {})
    severity = report["severity"]
    mitigation = report.get("mitigation") or {}
    started = s.get("started") or report.get("now")
    next_update = ""
    if severity in UPDATE_EVERY_MIN:
        moment = _parse_time(report.get("now")) or datetime.now(UTC)
        later = moment + timedelta(minutes=UPDATE_EVERY_MIN[severity])
        next_update = f"in {UPDATE_EVERY_MIN[severity]} minutes ({later:%H:%M} UTC)"
    else:
        next_update = "when the situation changes"
    title = f"{severity}: {report['headline']}" if severity != NONE else report["headline"]
    lines = [
        f"# Incident report: {s.get('env') or '?'} - {title}",
        "",
        f"- **Severity**: {severity} ({report['severity_text']})",
        f"- **Status**: {report['status']}",
        f"- **Triage started**: {started} (UTC) by {s.get('operator') or '?'}"
        + (f", reason: {s['reason']}" if s.get("reason") else ""),
        f"- **Run**: {s.get('run_id') or '-'}"
        + (" (--check: nothing was changed)" if s.get("check_mode") else ""),
        f"- **Deploy target**: {s.get('deploy_target') or 'hosts'}",
        *(
            [f"- **Written before the rollback**: {', '.join(report['earlier_reports'])}"]
            if report.get("earlier_reports")
            else []
        ),
        "",
        "## Why this severity",
        "",
        *([f"- {r}" for r in report.get("reasons") or []] or ["- Every check passed."]),
        "",
        f"Response: {report['response']}.",
        "",
        "## Impact",
        "",
        report["impact"],
        "",
        "## Findings",
        "",
        *(
            [f"- **{f['level']}** ({f['area']}): {f['text']}" for f in report.get("findings") or []]
            or ["- Nothing to report."]
        ),
        "",
        "### App health",
        "",
        *_section_apps(report),
        "",
        "### Database",
        "",
        *_section_database(report.get("database") or {}),
        "",
        "### Disk and memory",
        "",
        *(
            _table(["host", "disk", "memory"], _resources_rows(report))
            if _resources_rows(report)
            else ["Not checked (no host was probed)."]
        ),
        "",
        "## Timeline",
        "",
        "The last entries of the deploy ledger (newest first):",
        "",
        *_section_deploys(report.get("deploys") or {}),
        "",
        f"- {started}: triage started",
        *(
            [f"- {report['now']}: {mitigation['reason']}"]
            if mitigation.get("requested") == "rollback"
            else []
        ),
        "",
        "## Mitigation",
        "",
        mitigation.get("reason") or "-",
        *[f"- {line}" for line in (mitigation.get("outcome") or {}).get("lines") or []],
        "",
        "## Next steps",
        "",
        *([f"- [ ] {report['response']}."] if severity in ("P0", "P1") else []),
        *(f"- [ ] {step}" for step in report.get("next_steps") or []),
        *(["- Nothing to do."] if severity == NONE and not report.get("next_steps") else []),
        "",
        'Checklist (the runbooks\' "Service is down"):',
        "",
        "- [x] Verify all servers are running (app health above)",
        "- [x] Check database is up",
        "- [x] Look at recent logs for errors (below)",
        "- [x] Is it a recent deployment? Rollback if needed (timeline, mitigation)",
        "- [ ] Restart web servers if no obvious cause",
        "- [ ] Check with engineering if still down",
        "",
        "## Communication update",
        "",
        "**Incident Update**",
        "",
        f"**Status:** {report['status']}",
        f"**Impact:** {report['impact']}",
        f"**Started:** {started} UTC",
        f"**Last Update:** {report.get('now')} UTC",
        "",
        "**What happened:**",
        "; ".join(report.get("reasons") or []) or "The automated checks found no fault.",
        "",
        "**Current status:**",
        _current_status(report),
        "",
        "**Next update:**",
        next_update,
        "",
        "## Logs",
        "",
        *_section_logs(report, log_lines),
        "",
    ]
    return "\n".join(str(line) for line in lines)


def incident_stats(report: Mapping[str, Any], report_path: str = "") -> dict[str, Any]:
    """What set_stats publishes under ``incident``: the assessment without the raw log lines
    and probes, the report's path, and the markdown cut to about 8 KB."""
    apps = {
        host: {k: v for k, v in app.items() if k != "probe"}
        | {"log_error_lines": (app["probe"].get("log") or {}).get("error_lines", 0)}
        for host, app in (report.get("apps") or {}).items()
    }
    deploys = dict(report.get("deploys") or {})
    database = {
        k: v for k, v in (report.get("database") or {}).items() if k not in ("long_queries",)
    }
    return {
        "severity": report["severity"],
        "severity_text": report["severity_text"],
        "verdict": report["verdict"],
        "status": report["status"],
        "headline": report["headline"],
        "impact": report["impact"],
        "reasons": report["reasons"],
        "findings": report["findings"],
        "unknowns": report["unknowns"],
        "apps": apps,
        "platform": report.get("platform"),
        "database": database,
        "deploys": {
            "error": deploys.get("error"),
            "last_deploy": deploys.get("last_deploy"),
            "entries": deploys.get("entries") or [],
        },
        "gate": report["gate"],
        "mitigation": report["mitigation"],
        "next_steps": report["next_steps"],
        "check_mode": bool((report.get("settings") or {}).get("check_mode")),
        "env": (report.get("settings") or {}).get("env"),
        "report_path": report_path,
        "report": incident_markdown(report, max_chars=REPORT_MAX_CHARS),
        "summary": [*report["summary"], *([f"report: {report_path}"] if report_path else [])],
    }


class FilterModule:
    """opsbook incident filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "incident_assess": incident_assess,
            "incident_collect": incident_collect,
            "incident_markdown": incident_markdown,
            "incident_outcome": incident_outcome,
            "incident_platform_serving": incident_platform_serving,
            "incident_probe": incident_probe,
            "incident_redact": incident_redact,
            "incident_stats": incident_stats,
        }
