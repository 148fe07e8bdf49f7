# Copyright: opsbook contributors
# Apache-2.0
"""The names ``pg_restore`` gives the databases it makes, and how they are found again.

- ``<target>__opsbook_restore_<6 hex>``: a restore's scratch database (its work copy);
- ``<target>__opsbook_old_<YYYYmmddTHHMMSSZ>``: the database a replace (``mode=replace``) put
  aside, kept as a safety net until it is dropped by age (``drop_previous_after_days`` of
  ``pg_restore``, or ``pg_restore_leftovers``, which ``routine_checks.yml`` runs).

The target is cut (never inside a UTF-8 character) so that every name fits PostgreSQL's 63
bytes. Only names of exactly these shapes are ever taken for opsbook's: nothing else is listed
or dropped. Standard library only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

SCRATCH_INFIX = "__opsbook_restore_"
PREVIOUS_INFIX = "__opsbook_old_"
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1
_PREVIOUS_TIME_RE = re.compile(re.escape(PREVIOUS_INFIX) + r"(?P<ts>\d{8}T\d{6}Z)$")
_ANY_PREVIOUS_RE = re.compile(r"^(?P<target>.+)" + _PREVIOUS_TIME_RE.pattern)
_STAMP = "%Y%m%dT%H%M%SZ"
_ISO = "%Y-%m-%dT%H:%M:%SZ"


def truncate_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def _with_suffix(target: str, suffix: str) -> str:
    return truncate_utf8(target, MAX_IDENTIFIER_BYTES - len(suffix.encode("utf-8"))) + suffix


def scratch_database_name(target: str, run_id: str) -> str:
    """``<target>__opsbook_restore_<run_id>``, the target cut so that it fits 63 bytes."""
    return _with_suffix(target, SCRATCH_INFIX + run_id)


def previous_database_name(target: str, when: datetime) -> str:
    """``<target>__opsbook_old_<YYYYmmddTHHMMSSZ>`` (UTC), the target cut to fit 63 bytes."""
    return _with_suffix(target, PREVIOUS_INFIX + when.astimezone(UTC).strftime(_STAMP))


def leftover_databases(names: list[str], target: str) -> dict[str, list[str]]:
    """Databases that earlier runs for ``target`` left: ``scratch`` (a run died before its
    cleanup) and ``previous`` (kept by replaces), sorted."""
    scratch_prefix = truncate_utf8(target, MAX_IDENTIFIER_BYTES - len(SCRATCH_INFIX) - 6)
    previous_prefix = truncate_utf8(target, MAX_IDENTIFIER_BYTES - len(PREVIOUS_INFIX) - 16)
    scratch_re = re.compile(re.escape(scratch_prefix + SCRATCH_INFIX) + r"[0-9a-f]{6}")
    previous_re = re.compile(re.escape(previous_prefix + PREVIOUS_INFIX) + r"\d{8}T\d{6}Z")
    return {
        "scratch": sorted(n for n in names if scratch_re.fullmatch(n)),
        "previous": sorted(n for n in names if previous_re.fullmatch(n)),
    }


def previous_databases(names: list[str], target: str | None = None) -> list[dict[str, str]]:
    """The previous databases replaces kept (by their exact name pattern) - of ``target``, or
    of any target when it is None - the newest first, each with the UTC time it was replaced
    at (and, for any target, the target's name as the name holds it: cut when it was long)."""
    if target is not None:
        found = [(name, target) for name in leftover_databases(names, target)["previous"]]
    else:
        found = [(n, m["target"]) for n in names if (m := _ANY_PREVIOUS_RE.match(n))]
    kept = []
    for name, owner in found:
        match = _PREVIOUS_TIME_RE.search(name)
        try:
            when = datetime.strptime(match["ts"], _STAMP) if match else None
        except ValueError:  # 20241399T...: the shape, not a time; not opsbook's
            when = None
        if when is None:
            continue
        item = {"database": name, "replaced_at": when.strftime(_ISO)}
        if target is None:
            item["target"] = owner
        kept.append(item)
    return sorted(kept, key=lambda item: (item["replaced_at"], item["database"]), reverse=True)


def previous_older_than(
    kept: list[dict[str, str]], now: datetime, days: float, keep: str | None
) -> list[str]:
    """Of ``previous_databases``: the ones more than ``days`` days old (never ``keep``)."""
    return [
        item["database"] for item in kept if item["database"] != keep and age_days(item, now) > days
    ]


def age_days(item: dict[str, Any], now: datetime) -> float:
    """Days since a ``previous_databases`` item was replaced."""
    replaced = datetime.strptime(item["replaced_at"], _ISO).replace(tzinfo=UTC)
    return (now - replaced).total_seconds() / 86400
