# Copyright: opsbook contributors
# Apache-2.0
"""The secret stores of record: where a secret's current, pending and previous values live.

One interface, three stores (``open_secret_store(spec)``):

- ``vault``: the inventory's ansible-vault file (module_utils/opsbook_secret_store_vault.py).
  ``<var>`` is current, ``<var>_pending`` and ``<var>_previous`` the others: top-level keys,
  edited line by line and re-encrypted in memory, the rest of the file byte for byte the same.
- ``aws_secretsmanager``: AWS Secrets Manager's staging labels, as AWS defines them
  (AWSCURRENT, AWSPENDING, AWSPREVIOUS).
- ``aws_ssm``: an SSM Parameter Store SecureString: its versions labelled ``current`` and
  ``previous``, the pending value in a sibling parameter, so that an app reading the
  parameter keeps reading the current value while a pending one is stored
  (both in module_utils/opsbook_secret_store_aws.py).

Every write reads first and is idempotent (the same request again changes nothing), then
reads again and checks the store ended where it should. Values never appear in a message, a
result or an exception: only their fingerprints (:func:`fingerprint`, the rule every part of
the rotation shares). A store opened with ``check_mode=True`` reads and reports what a write
would do, and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import fingerprint

LABELS = ("current", "pending", "previous")
STORE_TYPES = ("vault", "aws_secretsmanager", "aws_ssm")
ACTIONS = ("put_pending", "promote", "discard_pending", "drop_previous")
# A value Ansible would read as a template when the variable is used.
TEMPLATE_MARKERS = ("{{", "{%", "{#")


class SecretStoreError(Exception):
    """A store could not be read or written. The message names the store, what went wrong and
    what was left unchanged; it never holds a secret value."""


def iso_time(moment: datetime | None) -> str | None:
    """A timestamp as ISO 8601 UTC (``2024-05-01T12:00:00Z``)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SecretRecord:
    """A secret's three values as its store holds them. ``meta`` holds, per label, what the
    store knows of that value (version id, created / updated timestamps) and, under
    ``store``, what it knows of itself; never a value."""

    current: str | None
    pending: str | None
    previous: str | None
    meta: dict[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, str | None]:
        return {"current": self.current, "pending": self.pending, "previous": self.previous}

    def fingerprints(self) -> dict[str, str | None]:
        return {label: fingerprint(value) for label, value in self.values().items()}


def transition(action: str, record: SecretRecord, value: str | None = None) -> SecretRecord:
    """The record after ``action``, the same for every store (AWS's staging model):

    - put_pending: pending := value;
    - promote: pending becomes current, current becomes previous (a store with no current
      keeps its previous); a pending value equal to the current one (a promote that was
      interrupted after the move) only clears pending;
    - discard_pending: pending := None;
    - drop_previous: previous := None.
    """
    current, pending, previous = record.current, record.pending, record.previous
    if action == "put_pending":
        pending = value
    elif action == "promote" and pending is not None:
        if pending != current:
            previous = current if current is not None else previous
            current = pending
        pending = None
    elif action == "discard_pending":
        pending = None
    elif action == "drop_previous":
        previous = None
    elif action != "promote":
        raise ValueError(f"unknown action {action!r}")
    return SecretRecord(current, pending, previous, dict(record.meta))


def describe_fingerprints(fingerprints: Mapping[str, str | None]) -> str:
    return ", ".join(f"{label} {fingerprints.get(label) or 'none'}" for label in LABELS)


class SecretStore:
    """The interface every store implements: ``read()``, ``describe()`` and ``_write()``; the
    actions (put_pending, promote, discard_pending, drop_previous) are built here on them.

    Each action returns ``{"changed", "before", "after", "meta", "msg"}`` (``before`` and
    ``after``: fingerprints by label; ``after`` is what a write would leave in check mode)
    and leaves the record it ended with (or would end with) in :attr:`last_record`.
    """

    def __init__(self, check_mode: bool = False) -> None:
        self.check_mode = check_mode
        self.last_record: SecretRecord | None = None

    # -- what each store implements

    def read(self) -> SecretRecord:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _write(self, action: str, before: SecretRecord, after: SecretRecord) -> None:
        """Make the store hold ``after`` (``before`` is what it held, read just now)."""
        raise NotImplementedError

    def check_value(self, value: str) -> None:
        """Refuse a value this store cannot hold (SecretStoreError)."""
        if not isinstance(value, str) or value == "":
            raise SecretStoreError(f"{self.describe()}: the value is empty; nothing was changed")

    # -- the actions

    def put_pending(self, value: str, replace_pending: bool = False) -> dict[str, Any]:
        """Store ``value`` as pending. The same value already pending: unchanged. Another
        pending value: replaced with ``replace_pending``, else an error. A value that is the
        current or the previous one is refused (a rotation needs a new value)."""
        self.check_value(value)
        before = self.read()
        where = self.describe()
        if before.pending != value:
            for label in ("current", "previous"):
                if getattr(before, label) == value:
                    raise SecretStoreError(
                        f"{where}: the value given is the {label} value "
                        f"({fingerprint(value)}): a rotation needs a new value; nothing was "
                        "changed"
                    )
            if before.pending is not None and not replace_pending:
                raise SecretStoreError(
                    f"{where}: another pending value is stored ({fingerprint(before.pending)}, "
                    f"not {fingerprint(value)}): promote or discard it first, or replace it "
                    "(replace_pending); nothing was changed"
                )
        return self._change("put_pending", before, value)

    def promote(self) -> dict[str, Any]:
        """Pending becomes current, current becomes previous; nothing pending: unchanged."""
        return self._change("promote", self.read())

    def discard_pending(self) -> dict[str, Any]:
        """Forget the pending value (a rotation rolled back); current and previous stay."""
        return self._change("discard_pending", self.read())

    def drop_previous(self) -> dict[str, Any]:
        """Forget the previous value (its grace period is over)."""
        return self._change("drop_previous", self.read())

    def _change(
        self, action: str, before: SecretRecord, value: str | None = None
    ) -> dict[str, Any]:
        after = transition(action, before, value)
        where = self.describe()
        if after.values() == before.values():
            self.last_record = before
            return self._result(False, before, before, f"{where}: {action}: nothing to change")
        if self.check_mode:
            self.last_record = after
            return self._result(True, before, after, f"{where}: {action} would change it")
        self._write(action, before, after)
        found = self.read()
        if found.values() != after.values():
            raise SecretStoreError(
                f"{where}: {action} was written but the store now holds "
                f"{describe_fingerprints(found.fingerprints())} instead of "
                f"{describe_fingerprints(after.fingerprints())}; read it and repair by hand"
            )
        self.last_record = found
        return self._result(True, before, found, f"{where}: {action} done")

    @staticmethod
    def _result(
        changed: bool, before: SecretRecord, after: SecretRecord, msg: str
    ) -> dict[str, Any]:
        return {
            "changed": changed,
            "before": before.fingerprints(),
            "after": after.fingerprints(),
            "meta": after.meta,
            "msg": msg,
        }


def _store_keys(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec without unset keys (a module's dict suboptions arrive as None)."""
    return {key: value for key, value in spec.items() if value is not None}


STORE_KEYS = {
    "vault": ({"file", "var"}, set()),
    "aws_secretsmanager": ({"secret_id"}, {"region", "endpoint_url", "json_key"}),
    "aws_ssm": ({"parameter"}, {"region", "endpoint_url", "kms_key_id", "pending_parameter"}),
}


def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The store spec, checked: a known type, its required keys, no key of another store."""
    if not isinstance(spec, Mapping):
        raise SecretStoreError(f"the store must be a dict, got {type(spec).__name__}")
    given = _store_keys(spec)
    kind = given.pop("type", None)
    if kind not in STORE_KEYS:
        raise SecretStoreError(
            f"unknown store type {kind!r}: one of {', '.join(STORE_TYPES)}; nothing was changed"
        )
    required, optional = STORE_KEYS[kind]
    missing = sorted(key for key in required if not given.get(key))
    unknown = sorted(set(given) - required - optional)
    problems = [f"{key} is required" for key in missing]
    problems += [f"{key} is not an option of a {kind} store" for key in unknown]
    if problems:
        raise SecretStoreError(f"{kind} store: {'; '.join(problems)}; nothing was changed")
    return {"type": kind, **given}


def open_secret_store(
    spec: Mapping[str, Any], vault_secrets: Any = None, *, check_mode: bool = False
) -> SecretStore:
    """The store ``spec`` names:

    - ``{"type": "vault", "file": path, "var": name}`` (``vault_secrets``: the run's vault
      secrets, a list of ``(vault_id, VaultSecret)``, needed when the file is encrypted);
    - ``{"type": "aws_secretsmanager", "secret_id", "region"?, "endpoint_url"?,
      "json_key"?}``;
    - ``{"type": "aws_ssm", "parameter", "region"?, "endpoint_url"?, "kms_key_id"?,
      "pending_parameter"?}``.

    AWS credentials come from boto3's usual chain (environment, profile, role).
    """
    checked = check_spec(spec)
    kind = checked.pop("type")
    if kind == "vault":
        from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_secret_store_vault import (  # noqa: E501
            VaultFileStore,
        )

        return VaultFileStore(
            checked["file"], checked["var"], vault_secrets=vault_secrets, check_mode=check_mode
        )
    from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_secret_store_aws import (
        SecretsManagerStore,
        SsmParameterStore,
    )

    if kind == "aws_secretsmanager":
        return SecretsManagerStore(check_mode=check_mode, **checked)
    return SsmParameterStore(check_mode=check_mode, **checked)
