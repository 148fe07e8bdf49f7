"""Supabase's Management API for tests: a project's secrets, its database password and its
database backups, judged by Supabase's own document (tests/platform_api/supabase.openapi.json).

    with SupabaseStandin() as supabase:
        supabase.set_secret("OLD", "v")                 # seeded state
        supabase.add_backup(age_h=5)                     # a COMPLETED backup 5 hours old
        supabase.fail_next(429, retry_after=1)           # PlatformStandin's faults
        ... the code under test calls supabase.url with supabase.token, supabase.ref ...
        assert supabase.secrets == {...} and supabase.check_password("...")
        assert supabase.mismatches == []

What it keeps, as Supabase does: the secrets' values (and lists only their hex SHA-256
digests, as the real API does - see module_utils/opsbook_supabase.py for the sources), the
database password (``check_password``; never listed), the backups a test seeds. Supabase's
reserved ``SUPABASE_*`` secrets are listed too.

Error answers: the document declares 401/403/429/500 with descriptions only; Supabase's body is
``{"message": ...}``, so an error answer must be JSON of that shape (``_SupabaseApi``), and a
status the operation does not declare is allowed only as an injected fault (listed in
``server.api.undocumented_faults``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
import threading
import time
from datetime import UTC, datetime
from typing import Any

from openapi_schema_validator import OAS30ReadValidator

from tests.platform_standin import PlatformApi, PlatformStandin
from tests.vendor_api import ApiMismatch, Operation
from tests.vendor_server import Call

SUPABASE_ERROR = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}
RESERVED = {
    "SUPABASE_URL": "https://example.supabase.co",
    "SUPABASE_ANON_KEY": "anon-key-of-the-stand-in",
    "SUPABASE_SERVICE_ROLE_KEY": "service-role-key-of-the-stand-in",
    "SUPABASE_DB_URL": "postgresql://postgres@db.example.supabase.co/postgres",
}


def new_ref() -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(20))


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def supabase_error(status: int, message: str) -> dict[str, str]:
    return {"message": message}


class _SupabaseApi(PlatformApi):
    """Supabase's document; error answers held to Supabase's body ``{"message"}``."""

    def _check_response(
        self, operation: Operation, status: int, body: bytes, content_type: str
    ) -> None:
        if status < 400:
            super()._check_response(operation, status, body, content_type)
            return
        where = f"{self.name}: {operation.method.upper()} {operation.template}"
        if not content_type.startswith("application/json"):
            raise ApiMismatch(f"{where}: error {status} answered {content_type!r}, not JSON")
        error = next(iter(OAS30ReadValidator(SUPABASE_ERROR).iter_errors(json.loads(body))), None)
        if error is not None:
            raise ApiMismatch(f"{where}: error {status} body: {error.message}")
        if str(status) in operation.spec.get("responses", {}):
            return  # declared, without a body schema: Supabase's {"message"} it is
        if getattr(self.injected, "status", None) == status:
            self.undocumented_faults.append(
                f"{operation.method.upper()} {operation.template} {status}"
            )
            return
        raise ApiMismatch(f"{where}: status {status} is not documented")


class SupabaseStandin(PlatformStandin):
    """One Supabase project (``ref``) behind the Management API."""

    def __init__(self, ref: str | None = None, *, reserved: bool = True) -> None:
        super().__init__(
            "supabase",
            {
                "v1-list-all-secrets": self._list_secrets,
                "v1-bulk-create-secrets": self._create_secrets,
                "v1-bulk-delete-secrets": self._delete_secrets,
                "v1-update-database-password": self._update_password,
                "v1-list-all-backups": self._list_backups,
                "v1-get-services-health": self._health,
            },
            auth_status=401,
            error_body=supabase_error,
        )
        self.server.api = _SupabaseApi(self.server.api.name, self.server.api.doc)
        self.ref = ref or new_ref()
        #: name -> (value, updated_at): the values, which the API never lists
        self._secrets: dict[str, tuple[str, str]] = {}
        if reserved:
            for name, value in RESERVED.items():
                self._secrets[name] = (value, _now_iso())
        self._password = "initial-" + secrets.token_urlsafe(18)
        self.passwords_set: list[str] = []  # every password a PATCH set, in order
        self.backups: list[dict[str, Any]] = []
        self.region = "eu-central-1"
        self.pitr_enabled = False
        self.pitr_earliest: float | None = None
        self.pitr_latest: float | None = None
        self.list_values: str = "digest"  # "digest" as Supabase; "masked" to play an API change
        self._lock_secrets = threading.Lock()

    # ------------------------------------------------------------------ state for tests

    @property
    def secrets(self) -> dict[str, str]:
        """The project's own secrets (reserved SUPABASE_* left out): name -> value."""
        return {
            name: value
            for name, (value, _) in self._secrets.items()
            if not name.startswith("SUPABASE_")
        }

    def set_secret(self, name: str, value: str) -> None:
        self._secrets[name] = (value, _now_iso())

    def check_password(self, password: str) -> bool:
        """Whether ``password`` is the database password now (Supabase's own check)."""
        return secrets.compare_digest(password.encode(), self._password.encode())

    def add_backup(
        self,
        age_h: float,
        status: str = "COMPLETED",
        *,
        physical: bool = True,
        raw_time: str | None = None,
    ) -> int:
        """A backup taken ``age_h`` hours ago (``raw_time``: its time written as given)."""
        backup_id = 1_700_000_000 + len(self.backups) + 1
        moment = datetime.fromtimestamp(time.time() - age_h * 3600, UTC)
        self.backups.append(
            {
                "id": backup_id,
                "is_physical_backup": physical,
                "status": status,
                "inserted_at": raw_time
                or moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            }
        )
        return backup_id

    def set_pitr(self, latest_age_h: float | None, earliest_age_h: float = 24 * 7) -> None:
        """PITR on, its newest restore point ``latest_age_h`` ago (None: off)."""
        self.pitr_enabled = latest_age_h is not None
        self.pitr_latest = None if latest_age_h is None else time.time() - latest_age_h * 3600
        self.pitr_earliest = None if latest_age_h is None else time.time() - earliest_age_h * 3600

    # ------------------------------------------------------------------ handlers

    def _project(self, call: Call) -> tuple[int, Any] | None:
        """A refusal before anything is done: a fault asked for, or another project."""
        if call.params.get("ref") != self.ref:
            return 403, supabase_error(403, "Your account does not have the necessary privileges")
        return None

    def _list_secrets(self, call: Call) -> tuple[Any, ...]:
        refused = self._project(call)
        if refused:
            return refused
        with self._lock_secrets:
            listed = [
                {"name": name, "value": self._listed_value(value), "updated_at": updated}
                for name, (value, updated) in sorted(self._secrets.items())
            ]
        return 200, listed

    def _listed_value(self, value: str) -> str:
        return digest(value) if self.list_values == "digest" else "*" * 8

    def _create_secrets(self, call: Call) -> tuple[Any, ...]:
        refused = self._project(call)
        if refused:
            return refused
        with self._lock_secrets:
            for item in call.body:
                self._secrets[item["name"]] = (item["value"], _now_iso())
        return 201, None

    def _delete_secrets(self, call: Call) -> tuple[Any, ...]:
        refused = self._project(call)
        if refused:
            return refused
        with self._lock_secrets:
            for name in call.body:
                if not name.startswith("SUPABASE_"):
                    self._secrets.pop(name, None)
        return 200, None

    def _update_password(self, call: Call) -> tuple[Any, ...]:
        refused = self._project(call)
        if refused:
            return refused
        self._password = call.body["password"]
        self.passwords_set.append(self._password)
        return 200, {"message": "Password updated"}

    def _list_backups(self, call: Call) -> tuple[Any, ...]:
        refused = self._project(call)
        if refused:
            return refused
        physical: dict[str, int] = {}
        if self.pitr_enabled and self.pitr_latest and self.pitr_earliest:
            physical = {
                "earliest_physical_backup_date_unix": int(self.pitr_earliest),
                "latest_physical_backup_date_unix": int(self.pitr_latest),
            }
        return 200, {
            "region": self.region,
            "walg_enabled": True,
            "pitr_enabled": self.pitr_enabled,
            "backups": list(self.backups),
            "physical_backup_data": physical,
        }

    def _health(self, call: Call) -> tuple[Any, ...]:
        refused = self._project(call)
        if refused:
            return refused
        names = call.query.get("services") or []
        return 200, [{"name": n, "healthy": True, "status": "ACTIVE_HEALTHY"} for n in names]

    # ------------------------------------------------------------------ plumbing


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
