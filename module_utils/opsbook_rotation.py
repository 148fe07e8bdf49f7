# Copyright: opsbook contributors
# Apache-2.0
"""Secret rotation, the pure part: which secrets exist and how each kind is generated and
checked, the journal of a rotation (fingerprints only, never a value), and what a run must do
with each secret given its journal and the values its store and the app hosts hold.

The staged model is AWS Secrets Manager's (create, set, test, finish; pending, current,
previous), plus revoke: the previous value stays accepted for a grace period, then is retired.

Journal steps, written before the work they name::

    created  the pending value is generated and being stored (no target changed yet)
    setting  targets are being changed (hosts' env files, a database role, a vendor)
    tested   every target holds the pending value and the test passed
    finished the store promoted pending to current (current became previous)
    undone   the rotation was abandoned and every target holds the current value again
    revoked  the previous value was retired

A run killed at ``created`` or ``setting`` is undone by the next run (its pending value was
never proven); one killed at ``tested`` is finished by the next run (its value was proven
everywhere). The next run says which.

Values are identified by fingerprint (``fingerprint``): the journal records the fingerprints of
current, pending and previous, so the values found on the hosts or in the store can be sorted
whatever step a run stopped at.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
from datetime import datetime, timedelta, timezone
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import fingerprint

FORMAT_VERSION = 1
JOURNAL_PREFIX = "secrets"
HISTORY_KEEP = 20

STEPS = ("created", "setting", "tested", "finished", "undone", "revoked")
INTERRUPTED_UNDO = ("created", "setting")
INTERRUPTED_FINISH = ("tested",)

STORE_TYPES = ("env_file", "vault", "aws_secretsmanager", "aws_ssm")
RUN_STEPS = ("rotate", "revoke")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_ENV_VAR_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_URLSAFE = string.ascii_letters + string.digits + "-_"
_ALNUM = string.ascii_letters + string.digits


def utcnow() -> datetime:
    return datetime.now(timezone.utc)  # noqa: UP017 - module_utils may run on older Pythons


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)  # noqa: UP017


# ---- kinds: how a value is made and what it must look like


def _policy_urlsafe(value: str, spec: dict[str, Any]) -> str | None:
    minimum = max(32, int(spec.get("length") or 0) if spec.get("length") else 32)
    if len(value) < minimum:
        return f"{len(value)} characters, at least {minimum} needed"
    if any(ch not in _URLSAFE for ch in value):
        return "characters outside A-Z a-z 0-9 - _"
    return None


def _policy_encryption_key(value: str, spec: dict[str, Any]) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "not standard base64"
    if len(raw) != 32:
        return f"decodes to {len(raw)} bytes, 32 needed (AES-256 / HMAC-SHA256 key)"
    return None


def _policy_db_password(value: str, spec: dict[str, Any]) -> str | None:
    minimum = max(24, int(spec.get("length") or 0) if spec.get("length") else 24)
    if len(value) < minimum:
        return f"{len(value)} characters, at least {minimum} needed"
    if any(ch not in _ALNUM for ch in value):
        return "characters outside A-Z a-z 0-9 (kept URL- and libpq-safe)"
    return None


def _policy_twilio(value: str, spec: dict[str, Any]) -> str | None:
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        return "not 32 lowercase hex digits (a Twilio auth token)"
    return None


def _policy_stripe_key(value: str, spec: dict[str, Any]) -> str | None:
    if not re.fullmatch(r"(sk|rk)_(live|test)_[A-Za-z0-9]{16,}", value):
        return "not a Stripe secret or restricted key (sk_live_..., sk_test_..., rk_...)"
    return None


def _policy_stripe_webhook(value: str, spec: dict[str, Any]) -> str | None:
    if not re.fullmatch(r"whsec_[A-Za-z0-9]{16,}", value):
        return "not a Stripe webhook signing secret (whsec_...)"
    return None


def _generate_urlsafe(spec: dict[str, Any]) -> str:
    length = int(spec.get("length") or 64)
    return "".join(secrets.choice(_URLSAFE) for _unused in range(length))


def _generate_encryption_key(spec: dict[str, Any]) -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _generate_db_password(spec: dict[str, Any]) -> str:
    length = int(spec.get("length") or 32)
    return "".join(secrets.choice(_ALNUM) for _unused in range(length))


#: kind -> (how the pending value is obtained, policy check, one-line description)
KINDS: dict[str, dict[str, Any]] = {
    "hmac": {
        "source": "generated",
        "generate": _generate_urlsafe,
        "policy": _policy_urlsafe,
        "about": "an HMAC signing secret (JWT, session cookies): 64 URL-safe characters; the "
        "previous value stays accepted (<VAR>_PREVIOUS) until revoke",
    },
    "encryption_key": {
        "source": "generated",
        "generate": _generate_encryption_key,
        "policy": _policy_encryption_key,
        "about": "a data encryption key (32 bytes, base64) kept in a keyring: revoke is refused "
        "until the re-encryption command has succeeded under the new key",
    },
    "db_password": {
        "source": "generated",
        "generate": _generate_db_password,
        "policy": _policy_db_password,
        "about": "a PostgreSQL login's password (SCRAM), single user or alternating users",
    },
    "twilio_auth_token": {
        "source": "vendor",
        "policy": _policy_twilio,
        "about": "a Twilio auth token: Twilio makes the secondary token, promote makes it primary",
    },
    "stripe_secret_key": {
        "source": "given",
        "policy": _policy_stripe_key,
        "about": "a Stripe secret or restricted key: made in the dashboard, given to the run, "
        "proven with GET /v1/balance before it is installed",
    },
    "stripe_webhook_secret": {
        "source": "given",
        "policy": _policy_stripe_webhook,
        "about": "a Stripe webhook signing secret: made in the dashboard, given to the run",
    },
}

#: The secrets opsbook knows, with the runbooks' schedule. An environment turns one on by
#: giving it a store (the inventory's ``opsbook_secrets``), and may override any field.
CATALOG: dict[str, dict[str, Any]] = {
    "jwt": {"kind": "hmac", "env_var": "JWT_SECRET", "rotate_every_days": 90, "grace_hours": 24},
    "nextauth": {
        "kind": "hmac",
        "env_var": "NEXTAUTH_SECRET",
        "rotate_every_days": 90,
        "grace_hours": 24,
    },
    "encryption_key": {
        "kind": "encryption_key",
        "env_var": "ENCRYPTION_KEY",
        "rotate_every_days": 90,
        "grace_hours": 0,
    },
    "db_password": {
        "kind": "db_password",
        "env_var": "DATABASE_URL",
        "rotate_every_days": 180,
        "grace_hours": 0,
    },
    "twilio": {
        "kind": "twilio_auth_token",
        "env_var": "TWILIO_AUTH_TOKEN",
        "rotate_every_days": 365,
        "grace_hours": 0,
    },
    "stripe": {
        "kind": "stripe_secret_key",
        "env_var": "STRIPE_SECRET_KEY",
        "rotate_every_days": 365,
        "grace_hours": 0,
    },
    "stripe_webhook": {
        "kind": "stripe_webhook_secret",
        "env_var": "STRIPE_WEBHOOK_SECRET",
        "rotate_every_days": 365,
        "grace_hours": 0,
    },
}

_SPEC_FIELDS = {
    "kind": str,
    "env_var": str,
    "store": (dict, str),
    "app_env": bool,
    "rotate_every_days": int,
    "grace_hours": (int, float),
    "length": int,
    "test_path": str,
    "test_cookie": str,
    "reencrypt_command": list,
    "restart": bool,
}


#: Settings only some kinds take (see "the kinds that live outside the env files" below).
KIND_SETTINGS: dict[str, dict[str, Any]] = {
    "db_password": {"strategy": str, "roles": list, "admin_url_var": str, "direct_env_var": str},
    "twilio_auth_token": {"account_sid": str, "base_url": str},
    "stripe_secret_key": {"base_url": str, "expect_livemode": bool},
    "stripe_webhook_secret": {"base_url": str},
}
DB_STRATEGIES = ("single", "alternating")
DEFAULT_DIRECT_ENV_VAR = "DIRECT_URL"
#: Kinds whose previous value the app accepts during the grace period (<VAR>_PREVIOUS); the
#: others' env file holds the current value only (unless the env file is their store).
PREVIOUS_ACCEPTED = ("hmac", "encryption_key")
_SID_RE = re.compile(r"^AC[0-9a-fA-F]{32}$")


def merge_catalog(overrides: Any) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The environment's catalog: CATALOG with the inventory's ``opsbook_secrets`` over it
    (a new name needs a kind). Returns (catalog, problems)."""
    problems: list[str] = []
    catalog = {name: dict(spec) for name, spec in CATALOG.items()}
    if overrides in (None, ""):
        overrides = {}
    if not isinstance(overrides, dict):
        got = type(overrides).__name__
        return catalog, [f"opsbook_secrets must be a mapping of secret name to settings, got {got}"]
    for name, override in overrides.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            problems.append(f"opsbook_secrets: {name!r} is not a secret name (a-z, 0-9, _)")
            continue
        if override is None:
            override = {}
        if not isinstance(override, dict):
            problems.append(
                f"opsbook_secrets.{name} must be a mapping, got {type(override).__name__}"
            )
            continue
        spec = dict(catalog.get(name, {}))
        spec.update(override)
        if isinstance(spec.get("store"), str):
            spec["store"] = {"type": spec["store"]}
        catalog[name] = spec
        problems += spec_problems(name, spec)
    return catalog, problems


def spec_problems(name: str, spec: dict[str, Any]) -> list[str]:
    """What is wrong with one secret's settings (empty when nothing)."""
    problems = []
    where = f"opsbook_secrets.{name}"
    kind = spec.get("kind")
    known = {**_SPEC_FIELDS, **KIND_SETTINGS.get(str(kind), {})}
    for key, value in spec.items():
        wanted = known.get(key)
        if wanted is None:
            problems.append(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        elif value is not None and not isinstance(value, wanted):
            problems.append(f"{where}.{key}: wrong type {type(value).__name__}")
    if kind not in KINDS:
        problems.append(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not _ENV_VAR_RE.match(str(spec.get("env_var") or "")):
        problems.append(
            f"{where}.env_var: {spec.get('env_var')!r} is not an environment variable name"
        )
    store = spec.get("store")
    if isinstance(store, dict) and store.get("type") not in STORE_TYPES:
        problems.append(
            f"{where}.store.type: {store.get('type')!r} is not one of {', '.join(STORE_TYPES)}"
        )
    if (spec.get("rotate_every_days") or 0) < 1:
        problems.append(f"{where}.rotate_every_days must be at least 1")
    if (spec.get("grace_hours") or 0) < 0:
        problems.append(f"{where}.grace_hours must be >= 0")
    if kind in KINDS and spec.get("length") is not None:
        sample = KINDS[kind].get("generate")
        if sample is not None:
            problem = KINDS[kind]["policy"](sample(spec), spec)
            if problem:
                problems.append(
                    f"{where}.length: a value of that length fails the {kind} policy: {problem}"
                )
    return problems + kind_problems(name, spec)


def is_configured(spec: dict[str, Any]) -> bool:
    return isinstance(spec.get("store"), dict) and spec["store"].get("type") in STORE_TYPES


def uses_app_env(spec: dict[str, Any]) -> bool:
    """Whether the secret is installed in the app hosts' env file (always for env_file)."""
    store = spec.get("store") or {}
    return store.get("type") == "env_file" or bool(spec.get("app_env", True))


def resolve_names(
    requested: list[str], catalog: dict[str, dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """The secrets a run works on: names in the order given (``all`` = every configured one).
    Returns (names, problems): an unknown name or one without a store is a problem."""
    names: list[str] = []
    problems: list[str] = []
    configured = [name for name, spec in catalog.items() if is_configured(spec)]
    for raw in requested:
        for name in [part.strip() for part in str(raw).split(",") if part.strip()]:
            if name == "all":
                names += [n for n in configured if n not in names]
            elif name not in catalog:
                problems.append(f"unknown secret {name!r} (known: {', '.join(sorted(catalog))})")
            elif not is_configured(catalog[name]):
                problems.append(
                    f"secret {name!r} has no store in this environment: set "
                    f"opsbook_secrets.{name}.store in the inventory (type: one of "
                    f"{', '.join(STORE_TYPES)})"
                )
            elif name not in names:
                names.append(name)
    if not names and not problems:
        problems.append("no secret to rotate: give secrets=NAME[,NAME...] (or all)")
    return names, problems


def env_keys(spec: dict[str, Any]) -> dict[str, str]:
    """The env file variables of a secret: current, previous, pending - and for a database
    password ``direct`` (``direct_env_var``, default DIRECT_URL), which follows its credentials."""
    var = spec["env_var"]
    keys = {"current": var, "previous": f"{var}_PREVIOUS", "pending": f"{var}_PENDING"}
    if spec.get("kind") == "db_password":
        keys["direct"] = spec.get("direct_env_var") or DEFAULT_DIRECT_ENV_VAR
    return keys


def new_value(spec: dict[str, Any]) -> str:
    kind = KINDS[spec["kind"]]
    value = kind["generate"](spec)
    problem = kind["policy"](value, spec)
    if problem:
        raise ValueError(f"the generated value fails the {spec['kind']} policy: {problem}")
    return value


def policy_problem(spec: dict[str, Any], value: str) -> str | None:
    return KINDS[spec["kind"]]["policy"](value, spec)


# ---- the journal


def journal_key(env: str, name: str) -> str:
    return f"{JOURNAL_PREFIX}/{env}/{name}.json"


def journal_entry(
    previous: dict[str, Any] | None,
    *,
    name: str,
    env: str,
    kind: str,
    step: str,
    run_id: str,
    operator: str,
    now: datetime,
    note: str = "",
    **fields: Any,
) -> dict[str, Any]:
    """The next journal record: ``previous`` with ``step`` and ``fields`` applied, the step
    added to the (bounded) history."""
    if step not in STEPS:
        raise ValueError(f"unknown journal step {step!r}")
    record = dict(previous or {})
    record.update(
        {
            "format": FORMAT_VERSION,
            "name": name,
            "env": env,
            "kind": kind,
            "step": step,
            "run_id": run_id,
            "operator": operator,
            "updated_at": iso(now),
        }
    )
    record.update(fields)
    history = list(record.get("history") or [])
    history.append({"at": iso(now), "step": step, "run_id": run_id, "note": note})
    record["history"] = history[-HISTORY_KEEP:]
    return record


def journal_bytes(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


# ---- ages and due dates


def status_of(
    spec: dict[str, Any],
    journal: dict[str, Any] | None,
    now: datetime,
    created_at: str | None = None,
) -> dict[str, Any]:
    """Age and due state of a secret: last rotated (the journal's finish, else ``created_at``
    from the store when it knows it), days until due, and whether its grace period is over."""
    last = (journal or {}).get("rotated_at") or created_at
    every = int(spec.get("rotate_every_days") or 0)
    out: dict[str, Any] = {
        "last_rotated": last,
        "rotate_every_days": every,
        "age_days": None,
        "due_in_days": None,
        # never rotated by opsbook and the store does not say when it was set: due (its age is
        # unknown), not overdue
        "due": True,
        "overdue": False,
        "grace_until": (journal or {}).get("grace_until"),
        "grace_over": True,
        "previous_held": bool((journal or {}).get("previous_fp"))
        and (journal or {}).get("step") == "finished",
    }
    if last:
        age = (now - parse_iso(last)).total_seconds() / 86400
        out["age_days"] = round(age, 1)
        out["due_in_days"] = round(every - age, 1)
        out["overdue"] = age > every
        out["due"] = age >= every - min(7, every / 10)
    if out["grace_until"]:
        out["grace_over"] = now >= parse_iso(out["grace_until"])
    return out


def grace_until(spec: dict[str, Any], now: datetime) -> str:
    return iso(now + timedelta(hours=float(spec.get("grace_hours") or 0)))


# ---- sorting values by fingerprint


def pool_from_hosts(
    reads: dict[str, dict[str, str]], spec: dict[str, Any]
) -> tuple[dict[str, str], dict[str, dict[str, str | None]]]:
    """From the env files of the hosts: every value found under the secret's three keys, by
    fingerprint, and what each host holds ({host: {current|previous|pending: fp}})."""
    keys = env_keys(spec)
    pool: dict[str, str] = {}
    by_host: dict[str, dict[str, str | None]] = {}
    for host, values in sorted(reads.items()):
        held: dict[str, str | None] = {}
        for role, key in keys.items():
            value = (values or {}).get(key)
            if value:
                pool[fingerprint(value) or ""] = value
            held[role] = fingerprint(value) if value else None
        by_host[host] = held
    return pool, by_host


def host_disagreement(
    by_host: dict[str, dict[str, str | None]], role: str = "current"
) -> dict[str, list[str]]:
    """{fingerprint: [hosts]} when the hosts do not all hold the same value under ``role``;
    empty when they agree."""
    seen: dict[str, list[str]] = {}
    for host, held in by_host.items():
        seen.setdefault(str(held.get(role)), []).append(host)
    return seen if len(seen) > 1 else {}


def steady_env(spec: dict[str, Any], current: str, previous: str | None) -> dict[str, Any]:
    """The env file when no rotation runs: the current value, the previous one while it is
    accepted, nothing pending."""
    keys = env_keys(spec)
    change: dict[str, Any] = {"set": {keys["current"]: current}, "remove": [keys["pending"]]}
    if previous:
        change["set"][keys["previous"]] = previous
    else:
        change["remove"].append(keys["previous"])
    return change


def set_env(spec: dict[str, Any], pending: str, current: str | None) -> dict[str, Any]:
    """The env file while a rotation is set: the pending value used, the current one accepted."""
    keys = env_keys(spec)
    change: dict[str, Any] = {"set": {keys["current"]: pending}, "remove": [keys["pending"]]}
    if current:
        change["set"][keys["previous"]] = current
    else:
        change["remove"].append(keys["previous"])
    return change


def merge_env(changes: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"set": {}, "remove": []}
    for change in changes:
        merged["set"].update(change.get("set") or {})
        merged["remove"] += [
            key for key in change.get("remove") or [] if key not in merged["remove"]
        ]
    merged["remove"] = [key for key in merged["remove"] if key not in merged["set"]]
    return merged


# ---- what a run does with one secret


class RotationProblem(Exception):
    """A secret the run cannot work on; the message names it and says nothing was changed."""


def record_from_pool(
    name: str,
    spec: dict[str, Any],
    journal: dict[str, Any] | None,
    pool: dict[str, str],
    by_host: dict[str, dict[str, str | None]],
) -> dict[str, str | None]:
    """current / pending / previous of an ``env_file`` secret, from the hosts' env files: by the
    journal's fingerprints while a rotation is open or its previous value is held, else from what
    every host holds (hosts that disagree are a problem: the run says which holds what)."""
    step = (journal or {}).get("step")
    outside = None
    if step == "finished" and journal.get("previous_fp"):
        held = {h.get("current") for h in by_host.values()}
        if journal.get("current_fp") not in held and len(held) == 1 and None not in held:
            # Every host agrees on a value the journal does not name: it was rotated by hand
            # since. Start from what the hosts hold (and say so) rather than refuse.
            outside = (
                f"{spec['env_var']} was changed outside opsbook since run {journal.get('run_id')} "
                f"(every host holds {next(iter(held))}, the journal named "
                f"{journal.get('current_fp')}); this run starts from what the hosts hold"
            )
    if outside is None and (
        step in INTERRUPTED_UNDO + INTERRUPTED_FINISH
        or (step == "finished" and journal.get("previous_fp"))
    ):
        record: dict[str, str | None] = {}
        for role in ("current", "pending", "previous"):
            fp = (journal or {}).get(f"{role}_fp")
            record[role] = pool.get(fp) if fp else None
            if fp and record[role] is None and not (role == "pending" and step == "created"):
                raise RotationProblem(
                    f"{name}: the {role} value the journal names ({fp}) is on no app host; "
                    f"restore {env_keys(spec)['current']} on the hosts from a backup of the env "
                    "file, then run again (nothing was changed)"
                )
        return record
    split = host_disagreement(by_host, "current")
    if split:
        held = "; ".join(f"{fp}: {', '.join(hosts)}" for fp, hosts in sorted(split.items()))
        raise RotationProblem(
            f"{name}: the app hosts do not hold the same {spec['env_var']} ({held}); make them "
            "agree (set the right value on every host) before rotating - nothing was changed"
        )
    first = next(iter(by_host.values()), {})
    current = pool.get(first.get("current") or "")
    if not current:
        raise RotationProblem(
            f"{name}: no app host has {spec['env_var']} in its env file; set it first (the "
            "rotation replaces a value, it does not create the first one) - nothing was changed"
        )
    previous_split = host_disagreement(by_host, "previous")
    previous = None if previous_split else pool.get(first.get("previous") or "")
    record = {"current": current, "pending": None, "previous": previous}
    if outside:
        record["note"] = outside
    return record


def decide(
    name: str,
    spec: dict[str, Any],
    journal: dict[str, Any] | None,
    record: dict[str, str | None],
    *,
    requested: bool,
    run_step: str,
    force_revoke: bool,
    now: datetime,
    given: str | None = None,
) -> dict[str, Any]:
    """What the run does with one secret: ``action`` (rotate | undo | finish | revoke | none),
    the values involved (``values``: current, pending, previous - the run's targets end with
    either the rotated or the old ones), the env file changes of the apply phase and of an undo,
    the work of the kinds that live outside the env files, and notes that say why. Raises
    RotationProblem when the secret cannot be worked on."""
    decision = _decide_action(
        name,
        spec,
        journal,
        record,
        requested=requested,
        run_step=run_step,
        force_revoke=force_revoke,
        now=now,
        given=given,
    )
    if decision["action"] != "none" and not previous_in_env(spec):
        _kind_work(decision, spec, record)
    return decision


def _decide_action(
    name: str,
    spec: dict[str, Any],
    journal: dict[str, Any] | None,
    record: dict[str, str | None],
    *,
    requested: bool,
    run_step: str,
    force_revoke: bool,
    now: datetime,
    given: str | None = None,
) -> dict[str, Any]:
    journal = journal or {}
    step = journal.get("step")
    kind = spec["kind"]
    notes: list[str] = []
    current, previous = record.get("current"), record.get("previous")
    if record.get("note"):
        notes.append(record["note"])
    interrupted = step in INTERRUPTED_UNDO + INTERRUPTED_FINISH
    decision: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "env_var": spec["env_var"],
        "app_env": uses_app_env(spec),
        "store_type": (spec.get("store") or {}).get("type"),
        "spec": spec,
        "interrupted": {"step": step, "run_id": journal.get("run_id")} if interrupted else None,
        "notes": notes,
    }

    if step in INTERRUPTED_FINISH:
        pending = record.get("pending")
        if not pending or fingerprint(pending) != journal.get("pending_fp"):
            raise RotationProblem(
                f"{name}: run {journal.get('run_id')} proved a new value and was stopped before "
                f"finishing, but that value ({journal.get('pending_fp')}) is no longer where it "
                "was stored; nothing was changed - check the store"
            )
        notes.append(
            f"finishing the rotation run {journal.get('run_id')} left at step tested "
            "(its new value had passed the test on every target)"
        )
        return _with_values(decision, "finish", spec, current=pending, previous=current, undo=None)

    if interrupted:
        notes.append(
            f"undoing the rotation run {journal.get('run_id')} left at step {step} "
            "(its pending value was never proven; it is discarded)"
        )

    if requested and run_step == "rotate":
        if (
            kind == "encryption_key"
            and journal.get("step") == "finished"
            and journal.get("previous_fp")
            and journal.get("reencrypted_fp") != journal.get("current_fp")
        ):
            raise RotationProblem(
                f"{name}: data may still be encrypted under {spec['env_var']}_PREVIOUS (no "
                "re-encryption has succeeded since the last rotation): rotating again would "
                "drop that key; run the re-encryption (rotation_step=revoke runs it) first - "
                "nothing was changed"
            )
        if not current:
            raise RotationProblem(f"{name}: the store holds no current value; nothing was changed")
        pending = _pending_value(name, spec, given, current)
        if previous and step == "finished":
            status = status_of(spec, journal, now)
            if not status["grace_over"]:
                notes.append(
                    f"the previous value was still accepted until {status['grace_until']}; "
                    "this rotation retires it now"
                )
        undo = steady_env(spec, current, previous) if uses_app_env(spec) else None
        decision["stage_env"] = (
            {"set": {env_keys(spec)["pending"]: pending}, "remove": []}
            if decision["store_type"] == "env_file"
            else None
        )
        decision["replaces_pending"] = bool(record.get("pending"))
        return _with_values(
            decision, "rotate", spec, current=current, previous=previous, pending=pending, undo=undo
        )

    if interrupted:
        decision["discard_pending"] = True
        return _with_values(decision, "undo", spec, current=current, previous=previous, undo=None)

    if requested and run_step == "revoke":
        status = status_of(spec, journal, now)
        if step != "finished" or not journal.get("previous_fp") or not previous:
            notes.append("nothing to revoke: no previous value is held")
            return _with_values(
                decision, "none", spec, current=current, previous=previous, undo=None
            )
        if not status["grace_over"] and not force_revoke:
            notes.append(
                f"the previous value stays accepted until {status['grace_until']} (its grace "
                "period); force_revoke=true retires it now"
            )
            return _with_values(
                decision, "none", spec, current=current, previous=previous, undo=None
            )
        decision["reencrypt"] = kind == "encryption_key"
        undo = steady_env(spec, current or "", previous) if uses_app_env(spec) else None
        decision["revoked_fp"] = fingerprint(previous)
        decision = _with_values(decision, "revoke", spec, current=current, previous=None, undo=undo)
        decision["values"]["revoked"] = previous
        return decision

    notes.append("not asked for in this run")
    return _with_values(decision, "none", spec, current=current, previous=previous, undo=None)


def _pending_value(name: str, spec: dict[str, Any], given: str | None, current: str) -> str:
    kind = KINDS[spec["kind"]]
    if spec["kind"] == "db_password":
        return db_pending(name, spec, current)
    if kind["source"] == "generated":
        return new_value(spec)
    if kind["source"] == "vendor" and not given:
        # The vendor makes the value (Twilio's secondary token): the playbook obtains it and
        # gives it here.
        raise RotationProblem(
            f"{name}: the vendor's new value was not obtained; nothing was changed"
        )
    if not given:
        raise RotationProblem(
            f"{name}: a {spec['kind']} cannot be generated here; give the new value "
            f"(secret_values.{name}, from the vault or an AWX credential) - nothing was changed"
        )
    problem = policy_problem(spec, given)
    if problem:
        raise RotationProblem(
            f"{name}: the value given fails the {spec['kind']} policy: {problem}; "
            "nothing was changed"
        )
    return given


def _with_values(
    decision: dict[str, Any],
    action: str,
    spec: dict[str, Any],
    *,
    current: str | None,
    previous: str | None,
    undo: dict[str, Any] | None,
    pending: str | None = None,
) -> dict[str, Any]:
    decision["action"] = action
    decision["values"] = {"current": current, "pending": pending, "previous": previous}
    decision["fingerprints"] = {
        role: fingerprint(value) for role, value in decision["values"].items()
    }
    apply_env = None
    if uses_app_env(spec) and current:
        if action == "rotate" and pending:
            apply_env = set_env(spec, pending, current)
        elif action in ("finish", "undo", "revoke"):
            apply_env = steady_env(spec, current, previous)
    decision["apply_env"] = apply_env
    decision["undo_env"] = undo
    decision.setdefault("stage_env", None)
    return decision


# ---- the kinds that live outside the env files: the database password, the vendors' keys
#
# db_password - DATABASE_URL, a DSN, in a store of record (the vault file, Secrets Manager, SSM;
#   not env_file: the hosts' env files hold the DSN the app uses, never the previous one). Its
#   pending value is the current DSN with a new password (generated by the db_password policy)
#   and, with strategy ``alternating``, the other login role of ``roles``. The env file gets
#   DATABASE_URL and - when the hosts' env files hold it - ``direct_env_var`` (DIRECT_URL)
#   with the same credentials; never DATABASE_URL_PREVIOUS. The database work is described in
#   the decision (``db``: per phase, the pg_role_password calls, DSNs by fingerprint) and done
#   by the role: set - ``single``: ALTER ROLE by the login itself; ``alternating``: the other
#   role ensured (admin DSN, the inventory variable ``admin_url_var``) with the new password;
#   test - a login with the pending DSN; undo - ``single``: the old password set back, logging
#   in with the new one; ``alternating``: nothing to put back (the app is back on the role whose
#   password did not change); revoke - ``single``: the old DSN proven dead (the server refuses
#   the password); ``alternating``: the old role retired (PASSWORD NULL), then proven dead.
# twilio_auth_token - made by Twilio (a secondary token, created by the role before the
#   decisions), promoted at finish: the old primary works until then, so every undo is clean.
# stripe_secret_key / stripe_webhook_secret - given (secret_values), proven by the role before
#   anything is stored; revoke prints the dashboard instruction (Stripe has no API for it).


def kind_problems(name: str, spec: dict[str, Any]) -> list[str]:
    """What is wrong with the settings only some kinds take (empty when nothing)."""
    where = f"opsbook_secrets.{name}"
    kind = spec.get("kind")
    problems: list[str] = []
    configured = is_configured(spec)
    if kind == "db_password":
        strategy = spec.get("strategy") or "single"
        if strategy not in DB_STRATEGIES:
            problems.append(
                f"{where}.strategy: {strategy!r} is not one of {', '.join(DB_STRATEGIES)}"
            )
        roles = spec.get("roles")
        if strategy == "alternating":
            if (
                not isinstance(roles, list)
                or len(roles) != 2
                or not all(isinstance(r, str) and r.strip() for r in roles)
                or roles[0] == roles[1]
            ):
                problems.append(
                    f"{where}.roles: strategy alternating needs two different login role names"
                )
            if not spec.get("admin_url_var"):
                problems.append(
                    f"{where}.admin_url_var: strategy alternating needs the name of the inventory "
                    "variable holding an admin DSN (CREATEROLE) to ensure and retire the roles"
                )
        direct = spec.get("direct_env_var")
        if direct is not None and not _ENV_VAR_RE.match(str(direct)):
            problems.append(
                f"{where}.direct_env_var: {direct!r} is not an environment variable name"
            )
        if configured and (spec.get("store") or {}).get("type") == "env_file":
            problems.append(
                f"{where}.store: a database password needs a store of record (vault, "
                "aws_secretsmanager or aws_ssm), not env_file: the hosts' env files hold the "
                "DATABASE_URL the app uses, never the previous one a revoke proves dead"
            )
    elif (
        kind == "twilio_auth_token"
        and configured
        and not _SID_RE.match(str(spec.get("account_sid") or ""))
    ):
        problems.append(
            f"{where}.account_sid: the Twilio account SID (AC and 32 hexadecimal digits) "
            "is required"
        )
    return problems


def previous_in_env(spec: dict[str, Any]) -> bool:
    """Whether the env file holds <VAR>_PREVIOUS (and the undo and steady states say so): for
    the kinds the app accepts in their previous value, and wherever the env file is the store."""
    store = (spec.get("store") or {}).get("type")
    return spec["kind"] in PREVIOUS_ACCEPTED or store == "env_file"


def _dsn_login(dsn: str | None) -> tuple[str, str]:
    """(user, password) of a DSN, as libpq reads it ("" when it has none)."""
    from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
        dsn_settings,  # psycopg: only when needed
    )

    settings = dsn_settings(dsn or "")
    return settings.get("user") or "", settings.get("password") or ""


def _with_login(dsn: str, like: str) -> str:
    """``dsn`` with the user and password of ``like`` (unchanged when they are the same)."""
    from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
        dsn_with_credentials,
    )

    user, password = _dsn_login(like)
    if _dsn_login(dsn) == (user, password) or not password:
        return dsn
    return dsn_with_credentials(dsn, password, None if _dsn_login(dsn)[0] == user else user)


def db_twin(name: str, spec: dict[str, Any], user: str) -> str:
    """The other login role of an alternating-users database password."""
    roles = list(spec.get("roles") or [])
    if user not in roles:
        raise RotationProblem(
            f"{name}: the current {spec['env_var']} logs in as {user!r}, which is not one of the "
            f"roles {roles} of strategy alternating; nothing was changed"
        )
    return roles[1 - roles.index(user)]


def db_pending(name: str, spec: dict[str, Any], current: str) -> str:
    """The pending DSN of a database password: the current one with a new password (policy
    db_password) - for strategy ``alternating``, and the other login role."""
    from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_pg import (
        dsn_with_credentials,
    )

    user, _unused = _dsn_login(current)
    if not user:
        raise RotationProblem(
            f"{name}: the current {spec['env_var']} names no user (the login whose password is "
            "rotated); nothing was changed"
        )
    twin = db_twin(name, spec, user) if spec.get("strategy") == "alternating" else None
    try:
        return dsn_with_credentials(current, new_value(spec), twin)
    except ValueError as exc:
        raise RotationProblem(f"{name}: {exc}; nothing was changed") from None


def _plain_env(spec: dict[str, Any], value: str, direct: str | None = None) -> dict[str, Any]:
    """The env file of a kind the app uses in its current value only."""
    keys = env_keys(spec)
    change: dict[str, Any] = {"set": {keys["current"]: value}, "remove": []}
    if direct:
        change["set"][keys["direct"]] = direct
    change["remove"] = [keys["pending"], keys["previous"]]
    return change


def _direct_base(name: str, spec: dict[str, Any], record: dict[str, Any]) -> str | None:
    """The DIRECT_URL the hosts hold (credentials aside): None when no host holds one; hosts
    that hold different ones are a problem (the run names them)."""
    held = {h: v for h, v in (record.get("direct_by_host") or {}).items() if v}
    if not held:
        return None
    current = record.get("current") or ""
    found: dict[str, list[str]] = {}
    for host, value in sorted(held.items()):
        found.setdefault(_with_login(value, current), []).append(host)
    if len(found) > 1:
        var = env_keys(spec)["direct"]
        split = "; ".join(
            f"{', '.join(hosts)}: {fingerprint(held[hosts[0]])}" for hosts in found.values()
        )
        raise RotationProblem(
            f"{name}: the app hosts hold different {var} ({split}), not only in their "
            f"credentials; make them agree before rotating - nothing was changed"
        )
    base = next(iter(found))
    # a value a host holds as it is (the playbook has it) rather than the same one rebuilt
    return next((v for v in held.values() if v == base), base)


def _kind_work(decision: dict[str, Any], spec: dict[str, Any], record: dict[str, Any]) -> None:
    """The env changes of a kind the app uses in its current value only (no <VAR>_PREVIOUS),
    and a database password's own work (``db``) and derived values (``derived``)."""
    action, values = decision["action"], decision["values"]
    current, pending = values["current"], values["pending"]
    direct_base = None
    if spec["kind"] == "db_password":
        direct_base = _direct_base(decision["name"], spec, record) if decision["app_env"] else None
        decision["db"] = db_work(decision["name"], spec, action, values, record)
    derived: dict[str, str] = {}

    def env(dsn: str) -> dict[str, Any]:
        direct = _with_login(direct_base, dsn) if direct_base else None
        if direct and direct not in (record.get("direct_by_host") or {}).values():
            derived[fingerprint(direct) or ""] = direct
        return _plain_env(spec, dsn, direct)

    if decision["app_env"] and current:
        target = pending if action == "rotate" else current
        decision["apply_env"] = env(target) if target else None
        if decision.get("undo_env") is not None:
            decision["undo_env"] = env(current)
    decision["derived"] = derived


def db_work(
    name: str, spec: dict[str, Any], action: str, values: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any]:
    """What the database must do at each phase of the run, for the role (kinds_db.yml): the
    pg_role_password calls of ``set`` and ``test`` (DSNs as fingerprints - ``dsn_fp``,
    ``login_dsn_fp`` - or ``admin``: the DSN of the inventory variable ``admin_url_var``), and
    the ``restore`` of a single-user password at ``set`` (a killed run's) or ``undo`` (this
    run's, after a failure): when a login with ``login_fp`` fails, the password is set back,
    logging in with ``via_fp``. Passwords are values (the decision's task is no_log)."""
    strategy = spec.get("strategy") or "single"
    current, pending = values.get("current") or "", values.get("pending") or ""
    user, current_pw = _dsn_login(current)
    fp = fingerprint
    work: dict[str, Any] = {
        "strategy": strategy,
        "admin_url_var": spec.get("admin_url_var") or "",
        "user": user,
        "set": [],
        "test": [],
        "restore": {"set": None, "undo": None},
        "notes": [],
    }

    def restore(via: str | None) -> dict[str, Any] | None:
        if strategy != "single" or not via or via == current or _dsn_login(via)[0] != user:
            return None
        return {"role": user, "login_fp": fp(current), "via_fp": fp(via), "password": current_pw}

    def login(dsn: str, expect: str, what: str) -> dict[str, Any]:
        who = _dsn_login(dsn)[0]
        return {
            "action": "login",
            "login_dsn_fp": fp(dsn),
            "expect": expect,
            "label": what + f" ({who})",
        }

    stored = record.get("pending")
    if action == "rotate":
        new_user, new_pw = _dsn_login(pending)
        if strategy == "single":
            work["restore"]["set"] = restore(stored)
            work["set"].append(
                {
                    "action": "set",
                    "dsn_fp": fp(current),
                    "password": new_pw,
                    "label": f"{name}: ALTER ROLE {user} PASSWORD (the new one; by {user} itself)",
                }
            )
            work["restore"]["undo"] = restore(pending)
        else:
            work["set"].append(
                {
                    "action": "ensure_role",
                    "admin": True,
                    "role": new_user,
                    "like": user,
                    "password": new_pw,
                    "label": f"{name}: the other login {new_user} (like {user}), new password",
                }
            )
            work["notes"].append(
                f"alternating users: after a failure there is nothing to put back in the database "
                f"- the app is back on {user}, whose password this run did not change ({new_user} "
                "keeps the discarded password until the next rotation sets another)"
            )
        work["test"].append(login(pending, "success", f"{name}: the new login works"))
    elif action in ("undo", "finish"):
        if action == "undo":
            work["restore"]["set"] = restore(stored)
        work["test"].append(login(current, "success", f"{name}: the current login works"))
    elif action == "revoke":
        revoked = record.get("previous") or ""
        old_user, old_pw = _dsn_login(revoked)
        if strategy == "alternating" and old_user and old_user != user:
            work["set"].append(
                {
                    "action": "retire",
                    "admin": True,
                    "role": old_user,
                    "password": old_pw,
                    "label": f"{name}: retire the old login {old_user} (PASSWORD NULL)",
                }
            )
        work["test"].append(login(current, "success", f"{name}: the current login works"))
        work["test"].append(login(revoked, "failure", f"{name}: the old login is refused"))
    return work


def env_fingerprints(change: dict[str, Any] | None) -> dict[str, Any] | None:
    """An env change with each value replaced by its fingerprint (what a module may return:
    the values themselves are found again by fingerprint among those the playbook read)."""
    if change is None:
        return None
    return {
        "set": {key: fingerprint(value) for key, value in (change.get("set") or {}).items()},
        "remove": list(change.get("remove") or []),
    }


def public_decision(decision: dict[str, Any]) -> dict[str, Any]:
    """A decision as the secret_rotation module returns it: fingerprints, and the one value no
    input holds - a pending value generated here. Values the module was given (the stores' and
    the hosts') would be masked by Ansible in a result anyway; the playbook has them."""
    out = {key: value for key, value in decision.items() if key != "values"}
    values = decision.get("values") or {}
    out["fingerprints"] = {role: fingerprint(value) for role, value in values.items()}
    generated = (
        decision.get("action") == "rotate" and KINDS[decision["kind"]]["source"] == "generated"
    )
    out["generated"] = {"pending": values.get("pending")} if generated else {}
    for phase in ("apply_env", "undo_env", "stage_env"):
        out[phase] = env_fingerprints(decision.get(phase))
    return out
