# Copyright: opsbook contributors
# Apache-2.0
"""What opsbook says to people, written once for the modules and the roles' filters.

- ``human_bytes``: a byte count in IEC binary units, labelled as such (``1.5 MiB``).
  Binary, because every other size opsbook states is binary (S3 part sizes, the upload's
  memory, ``df`` and the restore's disk-space check), and labelled KiB/MiB/GiB so that
  the number and its unit agree: one backup's size is one number wherever it is printed.
- ``typed_confirmation_problem``: the typed-confirmation rule of every destructive operation.

One exception, on purpose: sizes of tables and indexes (``pg_maintenance``, ``pg_health``) are
shown as PostgreSQL's ``pg_size_pretty`` shows them (``2208 kB``), the numbers an operator
compares with ``psql``'s ``\\dt+``; ``pg_health`` takes them from the server itself.

The filters in ``filter_plugins/opsbook_filters.py`` (``opsbook_bytes``,
``opsbook_confirmation``) call these very functions. Standard library only: modules that
run on any host may import it.
"""

from __future__ import annotations

import hashlib

IEC_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(count: float) -> str:
    """``512 B``, ``1.0 KiB``, ``204.3 MiB``, ``1.2 GiB`` (powers of 1024, one decimal)."""
    value = float(count)
    if abs(value) < 1024:
        return f"{value:.0f} B"
    for unit in IEC_UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == IEC_UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def typed_confirmation_problem(
    target: str,
    confirm: str | None,
    needed: str | None = None,
    *,
    what: str = "the database",
    go_ahead: str | None = None,
    quote: bool = False,
) -> str | None:
    """Why the typed confirmation does not allow the operation on ``target`` (None if it does).

    The rule, the same for every operation: ``confirm`` must equal the target database's
    name exactly (case and spaces count). A ``confirm`` naming anything else is always
    refused - the operator had another database in mind - even where none is needed. An
    empty ``confirm`` is refused only when the operation ``needed`` one; ``needed`` is the
    operation's own reason, e.g. ``"opsbook_env is production: down on database app needs
    the typed confirmation"`` (empty or None: none is needed).

    The answer ends with how to go ahead (``go_ahead``; by default ``re-run with -e
    confirm=<target> to go ahead``). ``what`` names the target in the mismatch message;
    ``quote`` shows the names quoted (``'app'``), as module messages show values.
    """
    show = repr if quote else str
    if confirm and confirm != target:
        problem = f"confirm ({show(confirm)}) does not equal the name of {what} ({show(target)})"
    elif not confirm and needed:
        problem = needed
    else:
        return None
    return f"{problem}: {go_ahead or f're-run with -e confirm={target} to go ahead'}"


def fingerprint(value: str | None) -> str | None:
    """What may be shown of a secret value: ``sha256:`` and the first 12 hex digits of its
    sha256 (None for None). One rule for every module, store, journal and report; the host-side
    copies (library/app_env.py, the sample app) are held to it by tests."""
    if value is None:
        return None
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]
