# Copyright: opsbook contributors
# Apache-2.0
"""Filters of the routine checks runbook (roles/routine_checks): each check's raw results ->
checks, and the checks -> the verdict and the report. Pure functions, unit tested.

A check is ``{"name", "target", "status", "detail"}`` (``status``: ok, warn or fail), and for
the cleanups ``removed`` (what was removed - would be, in check mode or report-only). One
function per kind of check turns what its tasks registered (or the error a rescue recorded)
into a list of checks:

- ``routine_checks_disk``: a ``df -P -k`` result of one host against the thresholds;
- ``routine_checks_tls``: a ``tls_cert`` result (one check per https URL);
- ``routine_checks_backup``: the backup catalog (``pg_backup_info`` list) and the
  re-verification of the newest verified backup, against the RPO;
- ``routine_checks_secrets``: ``rotation_schedule`` (roles/rotation's schedule entry point);
- ``routine_checks_statements``: ``pg_health``'s slowest statements since the last snapshot;
- ``routine_checks_releases``, ``routine_checks_databases``, ``routine_checks_uploads``: the
  cleanups (``app_release`` prune, ``pg_restore_leftovers``, ``pg_backup_info`` stale_uploads);
- ``routine_checks_report``: every check -> verdict (fail if any fails, else warn if any
  warns), the printed lines, the summary a notification carries, the markdown report;
- ``routine_checks_fails``: does a verdict fail the run, given ``routine_checks_fail_on``?
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

STATUSES = ("ok", "warn", "fail")
#: the kinds of checks, in the order a report lists them
KINDS = (
    "disk",
    "tls",
    "backup",
    "secrets",
    "slow_statements",
    "cleanup_releases",
    "cleanup_databases",
    "cleanup_uploads",
)
#: cleanup modes: remove (a real run), check (--check), report (routine_checks_cleanup=false)
CLEANUP_VERBS = {
    "remove": "removed",
    "check": "would remove (check mode)",
    "report": "would remove (routine_checks_cleanup=false: report only)",
}
MAX_DETAIL_CHARS = 400
MAX_REPORT_BYTES = 8000


def _get(data: Any, key: str, default: Any = None) -> Any:
    return data.get(key, default) if isinstance(data, Mapping) else default


def _check(name: str, target: str, status: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "target": target or "", "status": status, "detail": detail, **extra}


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def _failure(result: Any) -> str | None:
    """Why a registered result did not run (unreachable, failed), or None when it ran."""
    if _get(result, "unreachable"):
        return "unreachable: " + _one_line(_get(result, "msg") or "the host cannot be reached")
    if _get(result, "failed"):
        return _one_line(_get(result, "msg") or "the task failed")
    return None


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def worst(statuses: Iterable[str]) -> str:
    """The worst of the statuses (fail > warn > ok); ok when there is none."""
    return STATUSES[max((STATUSES.index(s) for s in statuses if s in STATUSES), default=0)]


# ------------------------------------------------------------------------------------ disk


def parse_df(stdout: str) -> list[dict[str, Any]]:
    """``df -P -k`` output -> one entry per file system (the first line naming it wins)."""
    found: dict[str, dict[str, Any]] = {}
    for line in (stdout or "").splitlines()[1:]:
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[2].isdigit() or not fields[3].isdigit():
            continue
        used, avail = int(fields[2]), int(fields[3])
        mount = fields[5]
        percent = round(used * 100.0 / (used + avail), 1) if used + avail else 0.0
        found.setdefault(
            mount,
            {"mount": mount, "filesystem": fields[0], "used_kib": used, "avail_kib": avail,
             "used_percent": percent},
        )  # fmt: skip
    return list(found.values())


def routine_checks_disk(
    result: Any, host: str, warn_percent: float = 80, fail_percent: float = 90
) -> list[dict[str, Any]]:
    """One host's disk usage: ``fail`` at or above ``fail_percent`` used, ``warn`` at or above
    ``warn_percent``; the host unreachable or ``df`` failing is ``fail`` (not checked)."""
    why = _failure(result)
    if why is None and _get(result, "rc", 0) != 0:
        why = "df failed: " + _one_line(_get(result, "stderr") or _get(result, "msg"))
    if why is None and not isinstance(result, Mapping):
        why = "the disk check did not run"
    if why:
        return [_check("disk", host, "fail", f"not checked - {why}")]
    systems = parse_df(_get(result, "stdout", ""))
    if not systems:
        why = _one_line(_get(result, "msg")) or "df printed no file system"
        return [_check("disk", host, "fail", f"not checked - {why}")]
    parts, statuses = [], []
    for fs in systems:
        percent = fs["used_percent"]
        status = (
            "fail" if percent >= fail_percent else "warn" if percent >= warn_percent else "ok"
        )
        statuses.append(status)
        free = fs["avail_kib"] / 1048576
        parts.append(f"{fs['mount']} {percent:g}% used, {free:.1f} GiB free")
    limits = f"(warn at {float(warn_percent):g}%, fail at {float(fail_percent):g}%)"
    return [
        _check("disk", host, worst(statuses), "; ".join(parts) + f" {limits}", filesystems=systems)
    ]


# ------------------------------------------------------------------------------------- tls


def routine_checks_tls(
    result: Any, urls: Iterable[str] = (), error: str | None = None
) -> list[dict[str, Any]]:
    """One check per https URL from a ``tls_cert`` result; none to check is ``ok``."""
    urls = list(urls or [])
    if not urls:
        return [_check("tls", "", "ok", "no https app_base_url to check")]
    why = error or _failure(result)
    certificates = _get(result, "certificates") or {}
    checks = []
    for url in urls:
        cert = certificates.get(url)
        if why or not isinstance(cert, Mapping):
            checks.append(_check("tls", url, "fail", f"not checked - {why or 'no result'}"))
            continue
        status, summary = cert.get("status", "fail"), _one_line(cert.get("summary"))
        checks.append(_check("tls", url, status, summary, days_left=cert.get("days_left")))
    return checks


# ---------------------------------------------------------------------------------- backup


def _age(seconds: float) -> str:
    """``42 min``, ``5.3 h``, ``3.2 days``."""
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _unverified(backup: Mapping[str, Any]) -> str:
    state = "failed its verification" if backup.get("verification_failed") else "unverified"
    return f"{backup['backup_id']} ({state})"


def routine_checks_backup(
    listing: Any,
    verify: Any = None,
    rpo_hours: float = 24,
    now: str | None = None,
    database: str = "",
    storage: str = "",
    error: str | None = None,
    verify_error: str | None = None,
) -> list[dict[str, Any]]:
    """Backup freshness and integrity: the newest verified backup must be younger than the RPO
    (its ``started``: the restore point) and pass a re-verification now (``verify``: the
    ``pg_backup_info`` state=verify result, registered with ``failed_when: false``; skipped or
    None when not asked).

    ``fail``: the catalog cannot be read, no backup at all, none verified, the newest verified
    one older than the RPO, or its re-verification fails. ``warn``: newer backups than it that
    are not verified (their verification failed, or never ran). Else ``ok``.
    """
    storage = storage or "the backup storage"
    of = f" of {database}" if database else ""
    why = error or _failure(listing)
    if why:
        return [_check("backup", storage, "fail", f"cannot read the backups{of}: {why}")]
    backups = list(_get(listing, "backups") or [])
    if not backups:
        return [_check("backup", storage, "fail", f"no backup at all{of} in {storage}")]
    moment = _parse_time(now) if now else datetime.now(UTC)
    verified = [b for b in backups if b.get("verified")]
    if not verified:
        newest = _unverified(backups[0])
        detail = f"no verified backup{of} ({len(backups)} backup(s), the newest {newest})"
        return [_check("backup", storage, "fail", detail)]
    chosen = verified[0]
    age_s = (moment - _parse_time(chosen["started"])).total_seconds()
    rpo_s = float(rpo_hours) * 3600
    rpo = f"{float(rpo_hours):g} h"
    detail = f"newest verified backup {chosen['backup_id']}, {_age(age_s)} old (RPO {rpo})"
    status = "ok"
    problems = []
    if age_s > rpo_s:
        status = "fail"
        problems.append(f"older than the RPO of {rpo}: a restore now loses {_age(age_s)}")
    verified_again = _get(_get(verify, "verification"), "ok") is True
    if verify_error or (isinstance(verify, Mapping) and not verify.get("skipped")):
        if verified_again and not verify_error:
            detail += "; re-verified: every object matches its manifest"
        else:
            why = verify_error or _one_line(_get(verify, "msg") or "it did not complete")
            status = "fail"
            problems.append(f"its re-verification failed: {why}")
    newer = backups[: backups.index(chosen)]
    if newer:
        problems.append("newer backup(s) not verified: " + ", ".join(map(_unverified, newer)))
        status = worst([status, "warn"])
    text = detail + ("; " + "; ".join(problems) if problems else "")
    return [_check("backup", storage, status, text, backup_id=chosen["backup_id"],
                   age_hours=round(age_s / 3600, 2))]  # fmt: skip


# --------------------------------------------------------------------------------- secrets


def routine_checks_secrets(schedule: Any, error: str | None = None) -> list[dict[str, Any]]:
    """Secrets due for rotation (``rotation_schedule``): overdue ``fail``, due within a week or
    a previous value past its grace period ``warn``."""
    if error:
        return [_check("secrets", "", "fail", f"cannot read the rotation schedule: {error}")]
    rows = list(_get(schedule, "secrets") or [])
    if not rows:
        return [_check("secrets", "", "ok", "no secret configured (opsbook_secrets)")]
    overdue = list(_get(schedule, "overdue") or [])
    due = [n for n in _get(schedule, "due") or [] if n not in overdue]
    revoke = list(_get(schedule, "revoke_due") or [])
    problems = []
    if overdue:
        problems.append(f"overdue: {', '.join(overdue)}")
    if due:
        problems.append(f"due within a week: {', '.join(due)}")
    if revoke:
        problems.append(f"previous value still accepted past its grace period: {', '.join(revoke)}")
    if overdue or due:
        problems.append(f"rotate with rotate_secrets.yml -e secrets={','.join(overdue + due)}")
    if revoke:
        problems.append("retire with rotate_secrets.yml -e rotation_step=revoke")
    status = "fail" if overdue else "warn" if problems else "ok"
    if not problems:
        soonest = min(
            (r for r in rows if r.get("due_in_days") is not None),
            key=lambda r: r["due_in_days"],
            default=None,
        )
        nxt = f"; next: {soonest['name']} in {soonest['due_in_days']:g} days" if soonest else ""
        return [_check("secrets", "", "ok", f"{len(rows)} secret(s), none due{nxt}")]
    return [_check("secrets", "", status, "; ".join(problems))]


# ------------------------------------------------------------------------------ statements


def routine_checks_statements(
    health: Any,
    previous: Any = None,
    threshold_ms: float = 5000,
    database: str = "",
    error: str | None = None,
    shown: int = 3,
) -> list[dict[str, Any]]:
    """The slowest statements since the last check (``pg_health`` with ``statements_since``):
    ``warn`` when one's mean time since then reaches ``threshold_ms``; ``pg_stat_statements``
    missing is ``ok`` (said so), the database unreachable ``fail``."""
    target = database or _get(health, "database_name") or ""
    why = error or _failure(health)
    if why is None and not _get(health, "connected", False):
        why = "cannot connect: " + _one_line(_get(health, "error") or "the check did not run")
    if why is None and _get(health, "verdict") == "fail":
        why = "; ".join(_get(health, "problems") or []) or "the check failed"
    if why:
        return [_check("slow_statements", target, "fail", f"not checked - {why}")]
    if not _get(health, "statements_available"):
        notes = [n for n in _get(health, "notes") or [] if str(n).startswith("statements:")]
        note = _one_line(notes[0].split(":", 1)[1]) if notes else "pg_stat_statements not available"
        return [_check("slow_statements", target, "ok", note)]
    statements = list(_get(health, "slowest_statements") or [])
    since = _get(previous, "taken_at") if _get(previous, "statements") else None
    scope = f"since the last check ({since})" if since else "overall (no earlier snapshot)"
    if not statements:
        return [_check("slow_statements", target, "ok", f"no statement ran {scope}",
                       statements=[], since=since)]  # fmt: skip
    slow = [s for s in statements if float(s.get("mean_ms") or 0) >= float(threshold_ms)]
    top = "; ".join(
        f"{s['mean_ms']:g} ms mean x {s['calls']}: {s['query']}" for s in statements[:shown]
    )
    status = "warn" if slow else "ok"
    head = (
        f"{len(slow)} statement(s) at or over {float(threshold_ms):g} ms mean {scope}"
        if slow
        else f"slowest {scope}"
    )
    return [_check("slow_statements", target, status, f"{head}: {top}",
                   statements=statements, since=since)]  # fmt: skip


# -------------------------------------------------------------------------------- cleanups


def _cleanup(
    name: str, target: str, removed: list[str], mode: str, extra: list[str], problems: list[str]
) -> dict[str, Any]:
    verb = CLEANUP_VERBS.get(mode, CLEANUP_VERBS["remove"])
    parts = [f"{verb}: {', '.join(removed)}" if removed else "nothing to remove"]
    status = "warn" if problems else "ok"
    return _check(name, target, status, "; ".join(parts + extra + problems), removed=removed)


def routine_checks_releases(
    result: Any, host: str, keep: int, mode: str = "remove", error: str | None = None
) -> list[dict[str, Any]]:
    """Releases beyond ``keep`` on one app host (``app_release`` prune: never the current nor
    the previous good release)."""
    why = error or _failure(result)
    if why or not isinstance(result, Mapping):
        detail = f"not checked - {why or 'the release check did not run'}"
        return [_check("cleanup_releases", host, "fail", detail, removed=[])]
    removed = [f"{r['release_id']} ({r['reason']})" for r in result.get("removed") or []]
    partials = list(result.get("removed_partials") or [])
    extra = [f"keep_releases={keep}, never current nor the previous good one"]
    if partials:
        extra.append(f"{len(partials)} partial release dir(s) left by interrupted installs")
    return [_cleanup("cleanup_releases", host, removed, mode, extra, [])]


def routine_checks_databases(
    result: Any, days: int, mode: str = "remove", error: str | None = None
) -> list[dict[str, Any]]:
    """The databases restore replaces kept, past ``days`` (``pg_restore_leftovers``)."""
    why = error or _failure(result)
    if why or not isinstance(result, Mapping):
        detail = f"not checked - {why or 'the database check did not run'}"
        return [_check("cleanup_databases", "", "fail", detail, removed=[])]
    removed = [f"{name} (older than {days} days)" for name in result.get("dropped") or []]
    dropped = set(result.get("dropped") or [])
    kept = [
        f"{d['database']} ({d['age_days']:g} days old)"
        for d in result.get("databases") or []
        if d["database"] not in dropped
    ]
    extra = [f"kept (younger, or in use): {', '.join(kept)}"] if kept else []
    problems = [f"in use, left in place: {name}" for name in result.get("in_use") or []]
    problems += [
        f"could not drop {item['database']}: {item['error']}"
        for item in result.get("not_dropped") or []
    ]
    return [_cleanup("cleanup_databases", "", removed, mode, extra, problems)]


def routine_checks_uploads(
    result: Any, minutes: int, mode: str = "remove", storage: str = "", error: str | None = None
) -> list[dict[str, Any]]:
    """Unfinished uploads interrupted backups left in ``storage``, idle ``minutes``
    (``pg_backup_info`` stale_uploads)."""
    storage = storage or "the backup storage"
    why = error or _failure(result)
    if why or not isinstance(result, Mapping):
        detail = f"not checked - {why or 'the upload check did not run'}"
        return [_check("cleanup_uploads", storage, "fail", detail, removed=[])]
    removed = list(result.get("removed_uploads") or [])
    problems = [w for w in result.get("warnings") or [] if str(w).startswith("could not remove")]
    extra = [f"idle for over {minutes} min"] if removed else []
    return [_cleanup("cleanup_uploads", storage, removed, mode, extra, problems)]


# ---------------------------------------------------------------------------------- report


def routine_checks_fails(verdict: str, fail_on: str = "fail") -> bool:
    """Does ``verdict`` fail the run? ``fail_on``: fail (default), warn (a warn too), never."""
    if fail_on == "never":
        return False
    if fail_on == "warn":
        return verdict in ("warn", "fail")
    return verdict == "fail"


def _label(check: Mapping[str, Any]) -> str:
    return f"{check['name']} {check['target']}".strip()


def _cut(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _markdown(checks: list[dict[str, Any]], head: list[str], notes: list[str]) -> str:
    lines = [*head, "", "| status | check | target | detail |", "|---|---|---|---|"]
    rows = [
        f"| {c['status'].upper()} | {c['name']} | {c['target'] or '-'} | "
        f"{_cut(c['detail']).replace('|', '/')} |"
        for c in sorted(checks, key=lambda c: -STATUSES.index(c["status"]))
    ]
    tail = ["", *notes] if notes else []
    text = "\n".join(lines + rows + tail) + "\n"
    while len(text.encode()) > MAX_REPORT_BYTES and rows:  # keep the worst rows
        rows.pop()
        cut = [f"| ... | {len(checks) - len(rows)} more checks | | see set_stats routine_checks |"]
        text = "\n".join(lines + rows + cut + tail) + "\n"
    return text


def collect(
    found: Mapping[str, Mapping[str, Iterable[Mapping[str, Any]]]],
    expected: Mapping[str, Iterable[str]] | None = None,
) -> list[dict[str, Any]]:
    """The checks every host recorded (``{host: {kind: [checks]}}``), in the order of
    ``KINDS``, plus a failed check for each kind ``expected`` of a host that never recorded it
    (the host failed, or could not be reached, before that check)."""
    checks = [
        dict(check)
        for kinds in found.values()
        for items in (kinds or {}).values()
        for check in items
    ]
    for host, kinds in (expected or {}).items():
        for kind in kinds:
            if kind not in (found.get(host) or {}):
                why = f"not checked - it did not run on {host} (failed or unreachable before it)"
                checks.append(_check(kind, host, "fail", why))
    rank = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(checks, key=lambda c: (rank.get(c["name"], len(KINDS)), c["target"]))


def routine_checks_report(
    checks: Iterable[Mapping[str, Any]] | Mapping[str, Any],
    expected: Mapping[str, Iterable[str]] | None = None,
    env: str = "",
    at: str = "",
    check_mode: bool = False,
    fail_on: str = "fail",
    cleanup: bool = True,
) -> dict[str, Any]:
    """Every check -> ``{verdict, counts, checks, lines, summary, markdown, fails}``.

    ``checks``: a list of checks, or what the hosts recorded (``{host: {kind: [checks]}}``,
    completed from ``expected`` by ``collect``). Verdict: ``fail`` when a check fails, else
    ``warn`` when one warns, else ``ok``. ``lines`` (printed) has one line per check;
    ``summary`` (a notification's lines) the verdict and the checks that are not ok;
    ``markdown`` the report written to disk (under 8 KB: the worst rows are kept)."""
    if isinstance(checks, Mapping):
        found = collect(checks, expected)
    else:
        found = [dict(c) for c in checks or []]
    for check in found:
        if check.get("status") not in STATUSES:
            check["status"] = "fail"
    verdict = worst(c["status"] for c in found)
    counts = {s: sum(1 for c in found if c["status"] == s) for s in STATUSES}
    mode = " (check mode: nothing removed)" if check_mode else ""
    title = (
        f"Routine checks of {env}: {verdict.upper()} ({counts['fail']} fail, "
        f"{counts['warn']} warn, {counts['ok']} ok){mode}"
    )
    width = max((len(_label(c)) for c in found), default=0)
    rows = [f"{c['status'].upper():4}  {_label(c):{width}}  {c['detail']}" for c in found]
    lines = [title, *rows]
    bad = [f"{c['status'].upper()} {_label(c)}: {_cut(c['detail'], 200)}" for c in found
           if c["status"] != "ok"]  # fmt: skip
    summary = [title, *bad[:10]]
    notes = [
        "Cleanup: " + ("on" if cleanup else "off (routine_checks_cleanup=false: report only)")
        + " - only what opsbook's documented retention already calls disposable (releases "
        "beyond keep_releases, never current nor the previous good one; databases replaces "
        "kept, past their age; unfinished uploads of interrupted backups).",
    ]  # fmt: skip
    if fail_on != "fail":
        notes.append(f"routine_checks_fail_on={fail_on}")
    head = [f"# Routine checks: {env}", "", f"- at: {at}", f"- verdict: **{verdict.upper()}** "
            f"({counts['fail']} fail, {counts['warn']} warn, {counts['ok']} ok){mode}"]  # fmt: skip
    return {
        "verdict": verdict,
        "counts": counts,
        "checks": found,
        "lines": lines,
        "summary": summary,
        "markdown": _markdown(found, head, notes),
        "fails": routine_checks_fails(verdict, fail_on),
    }


class FilterModule:
    """opsbook routine checks filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "routine_checks_disk": routine_checks_disk,
            "routine_checks_tls": routine_checks_tls,
            "routine_checks_backup": routine_checks_backup,
            "routine_checks_secrets": routine_checks_secrets,
            "routine_checks_statements": routine_checks_statements,
            "routine_checks_releases": routine_checks_releases,
            "routine_checks_databases": routine_checks_databases,
            "routine_checks_uploads": routine_checks_uploads,
            "routine_checks_report": routine_checks_report,
            "routine_checks_fails": routine_checks_fails,
        }
