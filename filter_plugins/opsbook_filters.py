# Copyright: opsbook contributors
# Apache-2.0
"""opsbook filters: pure functions for templates (no I/O, no Ansible state).

- ``dsn_redact``: a Postgres DSN with its password replaced by ``********``.
- ``dsn_database``: the database a DSN names, as libpq reads it.
- ``dsn_with_credentials``: the same DSN (URI or key=value) with another password (and user).
- ``opsbook_bytes``: a byte count in IEC units (``43.9 MiB``), as the modules print it.
- ``opsbook_confirmation``: why a typed confirmation does not allow an operation ("" if it does).
- ``health_check_app_summary``: one app host's /health and /api/version results -> summary.
- ``health_check_database_summary``: a ``pg_health`` result -> summary.
- ``health_check_report``: every summary -> verdict (ok / warn / fail), problems and the
  readable lines the ``health_check`` role prints.

The DSN, byte and confirmation filters are the modules' own code: the project's
``module_utils`` (ansible.cfg's ``module_utils`` setting, as the controller modules'
action plugin finds it; else the ``module_utils`` directory beside this one) is put on
``ansible.module_utils``' search path, and the filters call ``opsbook_pg`` and
``opsbook_text`` as the modules do.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from ansible_collections.opsbook.runbooks.plugins.module_utils import opsbook_text

VERDICTS = ("ok", "warn", "fail")


def opsbook_pg() -> ModuleType:
    """module_utils/opsbook_pg.py, imported by the DSN filters only (it loads psycopg: 0.1 s
    that a worker templating no DSN does not pay)."""
    from ansible_collections.opsbook.runbooks.plugins.module_utils import opsbook_pg as module

    return module


def dsn_redact(dsn: Any) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:********@h/db`` (also key=value DSNs)."""
    return "" if dsn is None else opsbook_pg().redact_dsn(str(dsn))


def dsn_database(dsn: Any) -> str:
    """The database a DSN names, as libpq reads it ("" when it names none): see
    ``opsbook_pg.dsn_database``."""
    return opsbook_pg().dsn_database(str(dsn or ""))


def dsn_with_credentials(dsn: Any, password: Any, user: Any = None) -> str:
    """The same DSN, in the form it was written, with ``password`` (and ``user``, when given)
    in place of its own: see ``opsbook_pg.dsn_with_credentials``. The result holds a secret:
    use it in ``no_log`` tasks only."""
    from ansible.errors import AnsibleFilterError

    try:
        return opsbook_pg().dsn_with_credentials(
            str(dsn or ""), str(password or ""), None if user is None else str(user)
        )
    except ValueError as exc:  # says which input, never its value
        raise AnsibleFilterError(f"dsn_with_credentials: {exc}") from None


def opsbook_bytes(count: Any) -> str:
    """``48234496`` -> ``46.0 MiB``: ``opsbook_text.human_bytes``, as the modules print sizes."""
    return opsbook_text.human_bytes(float(count or 0))


def opsbook_confirmation(
    confirm: Any,
    target: Any,
    needed: Any = "",
    what: str = "the database",
) -> str:
    """Why ``confirm`` does not allow the operation on database ``target`` ("" when it does):
    ``opsbook_text.typed_confirmation_problem``, the rule every module and preflight applies.

    ``needed``: the operation's reason for needing the confirmation, empty when it needs
    none (``"opsbook_env is production: VACUUM FULL of t locks it ... needs the typed
    confirmation"``). The answer ends ``: re-run with -e confirm=<target> to go ahead``.
    """
    problem = opsbook_text.typed_confirmation_problem(
        str(target or ""), str(confirm or ""), str(needed or ""), what=what
    )
    return problem or ""


def worst_verdict(*verdicts: str) -> str:
    """The worst of the given verdicts (``fail`` > ``warn`` > ``ok``); ``ok`` when none."""
    rank = max((VERDICTS.index(v) for v in verdicts if v in VERDICTS), default=0)
    return VERDICTS[rank]


def _endpoint(result: Mapping[str, Any] | None, default: str) -> str:
    url = (result or {}).get("url") or ""
    path = urlsplit(str(url)).path
    return path or default


def _result_state(result: Any) -> str:
    """``missing`` (never ran), ``skipped``, ``failed`` (task failed) or ``done``."""
    if not isinstance(result, Mapping) or not result:
        return "missing"
    if result.get("skipped"):
        return "skipped"
    if result.get("failed") and "ok" not in result:
        return "failed"
    return "done"


def _task_error(result: Mapping[str, Any]) -> str:
    msg = result.get("msg") or "the task failed"
    return " ".join(str(msg).split())


def health_check_app_summary(
    health: Any,
    version: Any = None,
    health_path: str = "/health",
    version_path: str = "/api/version",
) -> dict[str, Any]:
    """Summarize one app host from its ``http_check`` results for /health and /api/version.

    Returns ``{status, latency_ms, version, ok, problems, url}``: ``ok`` is true only when
    both checks ran and found no problem; each problem names its endpoint.
    """
    problems: list[str] = []
    status = latency = app_version = url = None
    for label, result, default_path in (
        ("health", health, health_path),
        ("version", version, version_path),
    ):
        state = _result_state(result)
        path = _endpoint(result if state != "missing" else None, default_path)
        if state == "missing":
            problems.append(f"{default_path} was not checked (the check did not run)")
            continue
        if state == "skipped":
            problems.append(f"{default_path} was not checked (skipped)")
            continue
        if state == "failed":
            problems.append(f"{path} check failed: {_task_error(result)}")
            continue
        if label == "health":
            status = result.get("status")
            latency = result.get("latency_ms")
            url = result.get("url")
        else:
            body = result.get("json")
            if result.get("ok") and isinstance(body, Mapping) and body.get("version") is not None:
                app_version = str(body["version"])
        problems.extend(f"{path} {p}" for p in result.get("problems") or [])
        if not result.get("ok") and not result.get("problems"):
            problems.append(f"{path} check reported a problem")
    return {
        "status": status,
        "latency_ms": latency,
        "version": app_version,
        "ok": not problems,
        "problems": problems,
        "url": url,
    }


DATABASE_KEYS = (
    "connected",
    "server_version",
    "connections_used",
    "max_connections",
    "connections_percent",
    "database_name",
    "database_size_pretty",
    "error",
)


def health_check_database_summary(result: Any, skip_reason: str | None = None) -> dict[str, Any]:
    """Summarize a ``pg_health`` result.

    Returns ``{skipped, connected, server_version, connections_used, max_connections,
    connections_percent, database_name, database_size_pretty, error, verdict, ok, problems}``.
    A skipped task (no database_url) or ``skip_reason`` gives ``skipped: true`` and verdict
    ``ok``; a result that is missing or a failed task gives verdict ``fail``.
    """
    summary: dict[str, Any] = {"skipped": False, **dict.fromkeys(DATABASE_KEYS)}
    state = _result_state(result)
    if skip_reason or state == "skipped":
        summary.update(
            skipped=True,
            reason=skip_reason or "database_url is not set",
            verdict="ok",
            ok=True,
            problems=[],
        )
        return summary
    if state == "missing":
        summary.update(
            connected=False, verdict="fail", ok=False, problems=["the database check did not run"]
        )
        return summary
    if state == "failed":
        summary.update(
            connected=False,
            verdict="fail",
            ok=False,
            problems=[f"check failed: {_task_error(result)}"],
        )
        return summary
    for key in DATABASE_KEYS:
        summary[key] = result.get(key)
    verdict = (
        result.get("verdict")
        if result.get("verdict") in VERDICTS
        else ("ok" if result.get("ok") else "fail")
    )
    summary.update(
        verdict=verdict, ok=verdict != "fail", problems=list(result.get("problems") or [])
    )
    return summary


def _fmt_latency(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f} ms"


def _app_line(host: str, app: Mapping[str, Any], health_path: str) -> list[str]:
    verdict = "OK" if app["ok"] else "FAIL"
    if app["ok"] or not app["problems"]:
        tail = verdict
    else:
        tail = f"{verdict}: " + "; ".join(app["problems"])
    return [
        host,
        health_path,
        "-" if app["status"] is None else str(app["status"]),
        _fmt_latency(app["latency_ms"]),
        f"version {app['version'] or '-'}",
        tail,
    ]


def _align(rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    """Columns separated by two spaces; the last column is left as is."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [
            (cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
            for i, cell in enumerate(row[:-1])
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def _database_lines(db: Mapping[str, Any], host: str | None, target: str | None) -> list[str]:
    """``database  connected  PostgreSQL 15.8  connections 3/20 (15.0%)  size 7 MB  OK`` + where."""
    if db.get("skipped"):
        return [f"database  SKIPPED: {db.get('reason')}"]
    parts = ["database"]
    if db.get("connected"):
        parts.append("connected")
        if db.get("server_version"):
            parts.append(f"PostgreSQL {db['server_version']}")
        if db.get("connections_used") is not None:
            parts.append(
                f"connections {db['connections_used']}/{db['max_connections']} "
                f"({db['connections_percent']}%)"
            )
        if db.get("database_size_pretty"):
            parts.append(f"size {db['database_size_pretty']}")
    else:
        parts.append("NOT connected")
    verdict = str(db["verdict"]).upper()
    parts.append(verdict if not db["problems"] else f"{verdict}: " + "; ".join(db["problems"]))
    lines = ["  ".join(parts)]
    where = [f"target {target}"] if target else []
    if host:
        where.append(f"checked from {host}")
    if where:
        lines.append("database  " + ", ".join(where))
    return lines


def health_check_report(
    apps: Mapping[str, Any] | None,
    database: Any = None,
    database_host: str | None = None,
    database_target: str | None = None,
    app_skip_reason: str | None = None,
    database_skip_reason: str | None = None,
    latency_threshold_ms: float | None = None,
    connections_warn_percent: float | None = None,
    health_path: str = "/health",
    version_path: str = "/api/version",
) -> dict[str, Any]:
    """Build the health_check report from the raw per-host results.

    ``apps`` maps each app host to ``{"health": <http_check result>, "version": <result>}``
    (a value of None: the checks never ran on it). ``database`` is the raw ``pg_health``
    result of ``database_host`` (None: it never ran). A skip reason marks a whole part as
    skipped (not an error).

    Verdict: ``fail`` when any app check is not ok (status, latency, /api/version, a check
    that did not run) or the database verdict is ``fail`` (not reachable, a check that could
    not run); ``warn`` when the database warns (connections at or above the warn percent);
    else ``ok``.
    """
    app_summaries: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    skipped: list[str] = []
    if app_skip_reason or not apps:
        skipped.append(f"apps: {app_skip_reason or 'no app host to check'}")
    for host in sorted(apps or {}):
        raw = (apps or {}).get(host) or {}
        summary = health_check_app_summary(
            raw.get("health") if isinstance(raw, Mapping) else None,
            raw.get("version") if isinstance(raw, Mapping) else None,
            health_path=health_path,
            version_path=version_path,
        )
        app_summaries[host] = summary
        problems.extend(f"{host}: {p}" for p in summary["problems"])

    db = health_check_database_summary(database, skip_reason=database_skip_reason)
    target = dsn_redact(database_target) if database_target else None
    db["host"] = database_host
    db["target"] = target
    if db["skipped"]:
        skipped.append(f"database: {db['reason']}")
    problems.extend(f"database: {p}" for p in db["problems"])

    app_verdict = "fail" if any(not a["ok"] for a in app_summaries.values()) else "ok"
    verdict = worst_verdict(app_verdict, db["verdict"])

    lines = [f"Health check verdict: {verdict.upper()}"]
    thresholds = []
    if latency_threshold_ms is not None:
        thresholds.append(f"{health_path} within {float(latency_threshold_ms):g} ms")
    if connections_warn_percent is not None:
        thresholds.append(
            f"database connections warn at {float(connections_warn_percent):g}% of max_connections"
        )
    if thresholds:
        lines.append("Thresholds: " + ", ".join(thresholds))
    if app_summaries:
        lines.extend(
            _align([_app_line(h, a, health_path) for h, a in app_summaries.items()], right=(2, 3))
        )
    else:
        lines.append(f"apps  SKIPPED: {app_skip_reason or 'no app host to check'}")
    lines.extend(_database_lines(db, database_host, target))

    return {
        "verdict": verdict,
        "apps": app_summaries,
        "database": db,
        "problems": problems,
        "skipped": skipped,
        "thresholds": {
            "latency_ms": latency_threshold_ms,
            "connections_warn_percent": connections_warn_percent,
        },
        "lines": lines,
    }


class FilterModule:
    """opsbook filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "dsn_database": dsn_database,
            "dsn_redact": dsn_redact,
            "dsn_with_credentials": dsn_with_credentials,
            "opsbook_bytes": opsbook_bytes,
            "opsbook_confirmation": opsbook_confirmation,
            "health_check_app_summary": health_check_app_summary,
            "health_check_database_summary": health_check_database_summary,
            "health_check_report": health_check_report,
        }
