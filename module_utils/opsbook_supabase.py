# Copyright: opsbook contributors
# Apache-2.0
"""opsbook_supabase: the Supabase Management API calls opsbook makes - a project's secrets,
its database password, its database backups - as functions over ``opsbook_rest.RestClient``,
and the rules the Supabase modules share (options, input checks, what a listed secret's
``value`` is, how fresh a backup is).

    client = open_client(params)                      # Bearer token, retries, deadline
    current = list_secrets(client, ref)               # {name: ListedSecret}
    create_secrets(client, ref, [{"name": "K", "value": "v"}])
    delete_secrets(client, ref, ["OLD"])
    reset_db_password(client, ref, new_password)      # the message Supabase answers
    summary = backup_summary(list_backups(client, ref), now=time.time(), max_age_h=26)

Built from Supabase's own document (tests/platform_api/supabase.openapi.json, cut from
supabase/cli's generated copy of https://api.supabase.com/api/v1-json; see SOURCES.md there):

- ``GET /v1/projects/{ref}/secrets`` answers ``[{name, value, updated_at}]``. The document does
  not say what ``value`` holds. It is NOT the value: Supabase answers the hex SHA-256 digest of
  it. Relied on: supabase/cli prints that field under the heading ``DIGEST``
  (internal/secrets/list/list.go, ``GetSecretDigests``); Supabase's own Terraform provider
  (supabase/terraform-provider-supabase, internal/provider/edge_function_secrets_resource.go)
  computes ``hex(sha256(value))`` and compares it with that field to find drift, and its docs
  say "the Supabase management API only returns SHA-256 digests of secret values, never the
  plaintext". So a secret is "unchanged" when the digest of the wanted value equals the listed
  one; a listed value that is not a 64-hex-digit digest (the API changed) cannot be compared,
  and the secret is written again (``SecretPlan.uncomparable``), which is harmless: the bulk
  create sets the same value.
- ``POST /v1/projects/{ref}/secrets`` (body: an array of ``{name, value}``, 201 without a body)
  creates or replaces the named secrets - an upsert (the Terraform provider above updates
  secrets with it); repeating it with the same body sets the same values, so it is retried
  like an idempotent call. Names must not start with ``SUPABASE_`` (the document's pattern):
  Supabase reserves them (``SUPABASE_URL``, ``SUPABASE_ANON_KEY``, ...) and lists them too.
- ``DELETE /v1/projects/{ref}/secrets`` (body: an array of names, 200). There is no per-secret
  path: one call creates (or deletes) every secret of the task.
- ``PATCH /v1/projects/{ref}/database/password`` ``{password}`` (minLength 4) -> 200
  ``{message}``. Nothing reads the password back: a reset cannot be compared with what is set.
- ``GET /v1/projects/{ref}/database/backups`` -> ``{region, walg_enabled, pitr_enabled,
  backups: [{id, is_physical_backup, status, inserted_at}], physical_backup_data:
  {earliest_physical_backup_date_unix, latest_physical_backup_date_unix}}``. Supabase's docs
  (https://supabase.com/docs/guides/platform/backups): daily backups and point-in-time
  recovery (PITR) are mutually exclusive - with PITR on, no daily backup is taken and the newest
  restore point is ``latest_physical_backup_date_unix``. ``inserted_at`` is an ISO 8601 time
  (``2026-08-10T04:30:15Z``, ``...06:40:10.198Z`` seen in answers); the list is not sorted.
- Errors: the document declares 401/403/429/500 with descriptions only; Supabase's body is
  ``{"message": ...}``, which ``opsbook_rest`` quotes (token masked).

Standard library and ``opsbook_rest`` only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import api_options
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
    rest_option_errors,
)

DEFAULT_BASE_URL = "https://api.supabase.com"
TOKEN_ENV = "SUPABASE_ACCESS_TOKEN"
TOKEN_PAGE = "https://supabase.com/dashboard/account/tokens"
REF_RE = re.compile(r"^[a-z]{20}$")  # the document's ref: 20 lowercase letters
RESERVED_PREFIX = "SUPABASE_"
MAX_NAME_CHARS = 256  # CreateSecretBody: name maxLength
MAX_VALUE_CHARS = 24576  # CreateSecretBody: value maxLength
#: The document accepts 4 characters; opsbook refuses fewer than 16 (a random 16-character
#: password of letters and digits holds ~95 bits; the rotation's own generated database
#: passwords are 24+). The database is reachable from the internet on Supabase.
MIN_DB_PASSWORD_CHARS = 16
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
COMPLETED = "COMPLETED"


# --------------------------------------------------------------------------- options


def supabase_argument_spec(**options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The options every Supabase module takes (project, token, API), then its own."""
    return {
        "project_ref": {"type": "str", "required": True},
        **api_options(TOKEN_ENV, DEFAULT_BASE_URL),
        **options,
    }


def supabase_option_errors(params: Mapping[str, Any]) -> list[str]:
    """Errors in the shared options, one sentence each (never the token's value)."""
    errors = []
    ref = params.get("project_ref") or ""
    if not REF_RE.match(ref):
        errors.append(f"project_ref must be 20 lowercase letters (the project's ref), got {ref!r}")
    if not (params.get("token") or "").strip():
        errors.append(f"token is empty (give token, or set {TOKEN_ENV} on the controller)")
    errors += rest_option_errors(params)
    return errors


def refused_hint(exc: RestError) -> str:
    """What to do about a refusal of the token (401) or of its rights (403); "" otherwise."""
    if exc.status == 401:
        return f" (the access token was refused: expired or revoked? a new one: {TOKEN_PAGE})"
    if exc.status == 403:
        return " (the token's account may not do this on this project, or the ref is wrong)"
    return ""


# --------------------------------------------------------------------------- secrets


def secrets_path(ref: str) -> str:
    return f"/v1/projects/{ref}/secrets"


def value_digest(value: str) -> str:
    """What Supabase lists for a secret's value: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ListedSecret:
    name: str
    digest: str  # the listed ``value`` field (a digest, see the module docstring)
    updated_at: str | None = None

    @property
    def comparable(self) -> bool:
        return bool(DIGEST_RE.match(self.digest))

    @property
    def fingerprint(self) -> str | None:
        """opsbook's fingerprint of the value (``sha256:`` + 12 hex digits, as
        opsbook_text.fingerprint computes it from a value), from the digest alone."""
        return "sha256:" + self.digest[:12] if self.comparable else None

    def holds(self, value: str) -> bool | None:
        """Whether the secret holds ``value``; None when the listing cannot say."""
        if self.comparable:
            return self.digest == value_digest(value)
        return None

    def public(self) -> dict[str, Any]:
        """What a module may return about it (never the digest: a hash of a short secret
        can be guessed)."""
        return {"name": self.name, "fingerprint": self.fingerprint, "updated_at": self.updated_at}


def list_secrets(client: RestClient, ref: str) -> dict[str, ListedSecret]:
    """The project's secrets by name (reserved SUPABASE_* ones included)."""
    answer = client.get(secrets_path(ref)).json()
    if not isinstance(answer, list):
        raise RestError(
            f"GET {secrets_path(ref)}", status=200, reason="the answer is not a list of secrets"
        )
    found = {}
    for item in answer:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            found[item["name"]] = ListedSecret(
                item["name"], str(item.get("value") or ""), item.get("updated_at")
            )
    return found


def create_secrets(client: RestClient, ref: str, secrets: list[dict[str, str]]) -> None:
    """Create or replace ``secrets`` (``[{name, value}]``) in one call. Retried on 5xx and
    lost answers too: the same body sets the same values."""
    if secrets:
        body = [{"name": s["name"], "value": s["value"]} for s in secrets]
        for item in body:
            client.add_secret(item["value"])
        client.post(secrets_path(ref), json=body, retry_unsafe=True)


def delete_secrets(client: RestClient, ref: str, names: list[str]) -> None:
    """Delete the named secrets in one call (DELETE with a body: the list of names)."""
    if names:
        client.delete(secrets_path(ref), json=list(names))


@dataclass
class SecretPlan:
    """What a task's secrets need, name by name, against what is listed."""

    create: list[dict[str, str]] = field(default_factory=list)
    update: list[dict[str, str]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: present secrets whose listed value could not be compared (written again)
    uncomparable: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.create or self.update or self.delete)

    @property
    def writes(self) -> list[dict[str, str]]:
        return self.create + self.update


def plan_secrets(
    wanted: Iterable[Mapping[str, Any]], current: Mapping[str, ListedSecret]
) -> SecretPlan:
    """The plan for ``wanted`` (``[{name, value, state}]``, checked by ``secret_errors``)."""
    plan = SecretPlan()
    for item in wanted:
        name, state = item["name"], item.get("state") or "present"
        listed = current.get(name)
        if state == "absent":
            (plan.delete if listed else plan.unchanged).append(name)
            continue
        entry = {"name": name, "value": item["value"]}
        if listed is None:
            plan.create.append(entry)
            continue
        holds = listed.holds(item["value"])
        if holds:
            plan.unchanged.append(name)
        else:
            plan.update.append(entry)
            if holds is None:
                plan.uncomparable.append(name)
    return plan


def secret_errors(wanted: Iterable[Mapping[str, Any]]) -> list[str]:
    """Input errors of a list of ``{name, value, state}`` (never a value)."""
    errors = []
    seen: set[str] = set()
    for index, item in enumerate(wanted):
        name = item.get("name") or ""
        where = f"secrets[{index}]" + (f" ({name})" if name else "")
        state = item.get("state") or "present"
        if not name.strip():
            errors.append(f"{where}: name is empty")
        elif name != name.strip():
            errors.append(f"{where}: name has leading or trailing spaces")
        elif name.startswith(RESERVED_PREFIX):
            errors.append(
                f"{where}: names starting with {RESERVED_PREFIX} are reserved by Supabase "
                "(it sets them itself; the API refuses them)"
            )
        elif len(name) > MAX_NAME_CHARS:
            errors.append(f"{where}: name longer than {MAX_NAME_CHARS} characters")
        if name in seen:
            errors.append(f"{where}: {name} is listed twice")
        seen.add(name)
        value = item.get("value")
        if state == "present":
            if value is None:
                errors.append(f"{where}: state=present needs a value")
            elif len(value) > MAX_VALUE_CHARS:
                errors.append(f"{where}: value longer than {MAX_VALUE_CHARS} characters")
    return errors


# --------------------------------------------------------------------------- database password


def password_path(ref: str) -> str:
    return f"/v1/projects/{ref}/database/password"


def db_password_problem(password: str | None) -> str | None:
    """Why ``password`` is refused as the database password (None: accepted)."""
    if not password:
        return "the password is empty"
    if len(password) < MIN_DB_PASSWORD_CHARS:
        return (
            f"the password has {len(password)} characters; opsbook asks for at least "
            f"{MIN_DB_PASSWORD_CHARS} (Supabase accepts 4: too weak for a database reachable "
            "from the internet)"
        )
    if password != password.strip():
        return "the password has leading or trailing spaces (a copy-paste slip?)"
    if "\x00" in password:
        return "the password holds a NUL character"
    if len(set(password)) < 4:
        return "the password repeats fewer than 4 distinct characters"
    return None


def reset_db_password(client: RestClient, ref: str, password: str) -> str:
    """Set the database password (the ``postgres`` role's); returns Supabase's message.
    Retried on 5xx and lost answers: a repeat sets the same password."""
    client.add_secret(password)
    answer = client.patch(password_path(ref), json={"password": password}, retry_unsafe=True)
    body = answer.json()
    message = body.get("message") if isinstance(body, dict) else None
    return client.scrub(str(message or ""))


# --------------------------------------------------------------------------- backups


def backups_path(ref: str) -> str:
    return f"/v1/projects/{ref}/database/backups"


def list_backups(client: RestClient, ref: str) -> dict[str, Any]:
    """The backups answer as Supabase gives it (a dict)."""
    answer = client.get(backups_path(ref)).json()
    if not isinstance(answer, dict):
        raise RestError(
            f"GET {backups_path(ref)}", status=200, reason="the answer is not a backups object"
        )
    return answer


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` or an offset; no offset is read as UTC); None if unreadable."""
    if not isinstance(text, str) or not text.strip():
        return None
    value = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    value = value.replace(" ", "T", 1) if "T" not in value else value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # noqa: UP017 - older Pythons too
    return moment


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017


def age_hours(moment: datetime, now: float) -> float:
    return round((now - moment.timestamp()) / 3600.0, 2)


def backup_summary(
    answer: Mapping[str, Any], *, now: float, max_age_h: float | None = None
) -> dict[str, Any]:
    """What a routine check or a restore drill needs of the backups answer: the backups
    newest first, the newest completed one and its age, PITR and its newest restore point,
    the newest restore point of either kind (``restore_point_age_h``) and, with
    ``max_age_h``, whether it is ``fresh``. Times Supabase wrote unreadably are kept as
    written and counted in ``unreadable``."""
    rows = [b for b in answer.get("backups") or [] if isinstance(b, dict)]
    dated = [(parse_time(b.get("inserted_at")), b) for b in rows]
    unreadable = sum(1 for moment, _unused in dated if moment is None)
    epoch = datetime.fromtimestamp(0, timezone.utc)  # noqa: UP017
    dated.sort(key=lambda pair: pair[0] or epoch, reverse=True)
    backups = [
        {
            "id": b.get("id"),
            "status": b.get("status"),
            "is_physical_backup": b.get("is_physical_backup"),
            "inserted_at": b.get("inserted_at"),
            "age_h": age_hours(moment, now) if moment else None,
        }
        for moment, b in dated
    ]
    latest = next((b for b in backups if b["status"] == COMPLETED and b["age_h"] is not None), None)
    counts: dict[str, int] = {}
    for b in backups:
        counts[str(b["status"])] = counts.get(str(b["status"]), 0) + 1
    pitr_enabled = bool(answer.get("pitr_enabled"))
    physical = answer.get("physical_backup_data") or {}
    newest_unix = physical.get("latest_physical_backup_date_unix") if physical else None
    earliest_unix = physical.get("earliest_physical_backup_date_unix") if physical else None
    pitr_latest = _from_unix(newest_unix) if pitr_enabled else None
    pitr_earliest = _from_unix(earliest_unix) if pitr_enabled else None
    points = []  # (age, kind) of the newest restore point of each kind
    if latest is not None:
        points.append((latest["age_h"], "backup"))
    if pitr_latest is not None:
        points.append((age_hours(pitr_latest, now), "pitr"))
    restore_age, source = min(points) if points else (None, None)
    fresh = None if max_age_h is None else (restore_age is not None and restore_age <= max_age_h)
    return {
        "region": answer.get("region"),
        "walg_enabled": answer.get("walg_enabled"),
        "pitr_enabled": pitr_enabled,
        "backups": backups,
        "counts": counts,
        "unreadable": unreadable,
        "latest": latest,
        "latest_age_h": latest["age_h"] if latest else None,
        "pitr_earliest_at": iso(pitr_earliest) if pitr_earliest else None,
        "pitr_latest_at": iso(pitr_latest) if pitr_latest else None,
        "restore_point_age_h": restore_age,
        "restore_point_source": source,
        "max_age_h": max_age_h,
        "fresh": fresh,
    }


def _from_unix(value: Any) -> datetime | None:
    """A unix time Supabase gives (0 or absent: none)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(float(value), timezone.utc)  # noqa: UP017
