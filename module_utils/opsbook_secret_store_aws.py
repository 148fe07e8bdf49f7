# Copyright: opsbook contributors
# Apache-2.0
"""The AWS secret stores: Secrets Manager and SSM Parameter Store, through boto3.

``aws_secretsmanager`` - AWS's own staging labels, as AWS defines them: the current value is
the version labelled AWSCURRENT, the pending one AWSPENDING, the previous one AWSPREVIOUS.

- put_pending: PutSecretValue with ``VersionStages=["AWSPENDING"]`` and a
  ``ClientRequestToken`` (the version id) derived from the stored string's fingerprint,
  ``opsbook-pending-sha256-<12 hex>``: a rerun of the same request is the same version. (AWS
  ignores a request whose token names a version holding the same value already, labels
  included: AWSPENDING is then moved onto that version.)
- promote: UpdateSecretVersionStage moves AWSCURRENT to the pending version (AWS moves
  AWSPREVIOUS to the version it left by itself), then AWSPENDING is removed from it. A promote
  interrupted between the two reads as pending == current; promote again finishes it.
- discard_pending / drop_previous: AWSPENDING / AWSPREVIOUS removed from their version (the
  version stays in the secret's history, unlabelled, until AWS deletes it: retire the old
  value where it is accepted - the database role, the vendor - to retire it for good).
- ``json_key``: the secret's string is a JSON object (as AWS's database secrets are) and the
  value is that key of it; a pending version is the current object with that key replaced.

``aws_ssm`` - a SecureString parameter. The current value is the version labelled
``current`` (the latest version when no version is labelled yet); the previous one is the
version labelled ``previous``. The pending value lives in a sibling SecureString parameter
(``pending_parameter``, default ``/opsbook/pending<parameter>``), so that while a value is
pending the parameter itself still holds, and returns, only the current value: an app reads
``<parameter>`` or ``<parameter>:current`` (and ``<parameter>:previous`` for the previous
value during a grace period); it never reads the pending parameter.

- put_pending: ``current`` is put on the current version if it is not there yet, then the
  pending parameter is written.
- promote: the pending value is written to the parameter (a new version, the latest), the
  version it replaced is labelled ``previous``, the new one ``current``, and the pending
  parameter is deleted. An interrupted promote reads as the old current with the value still
  pending (the ``current`` label has not moved yet) and promote again finishes it without a
  second version.
- discard_pending: the pending parameter is deleted (after a promote that was interrupted
  after writing the new version and is discarded instead, the current value is written again
  as the latest version, labelled ``current``). drop_previous: the ``previous`` label is
  removed (SSM keeps the value in the parameter's history - 100 versions - as AWS does).
- ``kms_key_id``: the KMS key both parameters are encrypted with; default - the key of the
  parameter's latest version.

Neither store creates a secret: a secret or parameter that does not exist, or has no
current value, is an error that says how to create it (opsbook rotates the secrets a team
owns; it does not create them, nor choose their first value). Credentials, region and
endpoint come from boto3's usual chain unless the store names a region or an endpoint.
Messages name the secret and the request that failed, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3 import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_STALL_TIMEOUT,
    HAS_BOTO3,
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    is_stall_error,
    scrub_endpoint,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_secret_store import (
    LABELS,
    SecretRecord,
    SecretStore,
    SecretStoreError,
    fingerprint,
    iso_time,
)

if HAS_BOTO3:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import NoRegionError
else:  # pragma: no cover - exercised only where boto3 is missing
    NoRegionError = BotoCoreError

REDACTED = "********"
SM_STAGES = {"current": "AWSCURRENT", "pending": "AWSPENDING", "previous": "AWSPREVIOUS"}
SSM_LABELS = ("current", "previous")
CREDENTIAL_CODES = (
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "IncompleteSignature",
)


def make_client(service: str, region: str | None, endpoint_url: str | None, where: str) -> Any:
    """A boto3 client: standard retries (3 attempts), the S3 client's stall timeouts."""
    if not HAS_BOTO3:
        raise SecretStoreError(
            f"{where}: needs the Python library boto3 (pip install boto3) where the module "
            "runs; nothing was changed"
        )
    config = BotoConfig(
        retries={"max_attempts": DEFAULT_MAX_ATTEMPTS, "mode": "standard"},
        connect_timeout=DEFAULT_STALL_TIMEOUT,
        read_timeout=DEFAULT_STALL_TIMEOUT,
        user_agent_extra="opsbook",
    )
    try:
        return boto3.session.Session().client(
            service, region_name=region or None, endpoint_url=endpoint_url or None, config=config
        )
    except NoRegionError:
        raise SecretStoreError(
            f"{where}: no AWS region: set the store's region, or AWS_REGION / "
            "AWS_DEFAULT_REGION; nothing was changed"
        ) from None


def redact(text: str, values: Iterable[str | None]) -> str:
    for value in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def describe_aws_error(exc: BaseException, endpoint: str | None) -> tuple[str, str | None]:
    """(reason, error code) of a boto3 error, in words an operator can act on."""
    where = scrub_endpoint(endpoint)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        detail = f"{code}: {error.get('Message')}" if error.get("Message") else code
        if code in CREDENTIAL_CODES:
            return f"the AWS credentials were rejected ({detail})", code
        if code.startswith("AccessDenied"):
            return f"access denied ({detail})", code
        return detail, code
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            "no usable AWS credentials found (environment, shared config/credentials file, or "
            "instance/task role)",
            None,
        )
    if is_stall_error(exc):
        return f"{where} did not answer within {DEFAULT_STALL_TIMEOUT:g} s", None
    if isinstance(exc, EndpointConnectionError):
        return f"{where} is unreachable", None
    return f"{type(exc).__name__}: {exc}", None


class AwsStore(SecretStore):
    """What both AWS stores share: the client, and requests whose failures read well."""

    service = ""

    def __init__(
        self, region: str | None, endpoint_url: str | None, check_mode: bool = False
    ) -> None:
        super().__init__(check_mode)
        self.endpoint_url = endpoint_url
        self.client = make_client(self.service, region, endpoint_url, self.describe_named(region))
        self.region = self.client.meta.region_name
        self._known: set[str] = set()  # values seen: redacted from any AWS message

    def describe_named(self, region: str | None) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.describe_named(self.region)

    def call(
        self,
        operation: str,
        left: str,
        *,
        missing: Callable[[str], str | None] | None = None,
        absent: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> dict[str, Any]:
        """``client.<operation>(**kwargs)``; a failure raises SecretStoreError naming the
        request, why, and ``left`` (what the store holds now). ``missing(code)`` may give
        the whole reason for an error code (a secret that does not exist); an error whose
        code is in ``absent`` is an empty answer instead."""
        values = [kwargs.get("SecretString"), kwargs.get("Value"), *self._known]
        try:
            return dict(getattr(self.client, operation)(**kwargs))
        except (ClientError, BotoCoreError) as exc:
            reason, code = describe_aws_error(exc, self.endpoint_url)
            if code in absent:
                return {}
            special = missing(code) if missing and code else None
            text = special or f"{operation} failed: {reason}; {left}"
            raise SecretStoreError(redact(f"{self.describe()}: {text}", values)) from None

    def remember(self, *values: str | None) -> None:
        self._known.update(value for value in values if value)


# ============================================================== Secrets Manager


def request_token(secret_string: str) -> str:
    """The ClientRequestToken (version id) of a pending version: from its fingerprint."""
    digest = str(fingerprint(secret_string)).replace(":", "-")
    return f"opsbook-pending-{digest}"


class SecretsManagerStore(AwsStore):
    """A secret in AWS Secrets Manager (see the module's docstring)."""

    service = "secretsmanager"

    def __init__(
        self,
        secret_id: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        json_key: str | None = None,
        check_mode: bool = False,
    ) -> None:
        self.secret_id = secret_id
        self.json_key = json_key
        super().__init__(region, endpoint_url, check_mode)
        self._strings: dict[str, str] = {}  # label -> the stored string (json_key: the object)

    def describe_named(self, region: str | None) -> str:
        key = f" key {self.json_key}" if self.json_key else ""
        return f"AWS Secrets Manager secret {self.secret_id}{key} ({region or 'default region'})"

    def _missing(self, code: str) -> str | None:
        if code == "ResourceNotFoundException":
            return (
                "the secret does not exist: create it with its current value (aws "
                f"secretsmanager create-secret --name {self.secret_id} --secret-string ...) - "
                "opsbook rotates secrets, it does not create them; nothing was changed"
            )
        return None

    def _versions(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """label -> {"version", "stage"} for the labels AWS has attached (DescribeSecret),
        and what AWS says of the secret itself."""
        described = self.call(
            "describe_secret", "nothing was changed", missing=self._missing, SecretId=self.secret_id
        )
        if described.get("DeletedDate"):
            raise SecretStoreError(
                f"{self.describe()}: the secret is marked for deletion: restore it (aws "
                f"secretsmanager restore-secret --secret-id {self.secret_id}) first; nothing was "
                "changed"
            )
        found: dict[str, dict[str, Any]] = {}
        for version_id, stages in (described.get("VersionIdsToStages") or {}).items():
            for label, stage in SM_STAGES.items():
                if stage in stages:
                    found[label] = {"version": version_id, "stage": stage}
        about = {
            "arn": described.get("ARN"),
            "last_changed": iso_time(described.get("LastChangedDate")),
            "last_rotated": iso_time(described.get("LastRotatedDate")),
        }
        return found, {key: value for key, value in about.items() if value}

    def _value(self, label: str, string: str) -> str | None:
        if not self.json_key:
            return string
        try:
            data = json.loads(string)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise SecretStoreError(
                f"{self.describe()}: the {SM_STAGES[label]} version is not a JSON object, and "
                "json_key is set; nothing was changed"
            )
        value = data.get(self.json_key)
        if value is not None and not isinstance(value, str):
            raise SecretStoreError(
                f"{self.describe()}: {self.json_key} of the {SM_STAGES[label]} version is a "
                f"{type(value).__name__}, not a string; nothing was changed"
            )
        return value

    def read(self) -> SecretRecord:
        versions, about = self._versions()
        if "current" not in versions:
            raise SecretStoreError(
                f"{self.describe()}: the secret has no AWSCURRENT version: give it its current "
                f"value first (aws secretsmanager put-secret-value --secret-id {self.secret_id} "
                "--secret-string ...) - opsbook does not choose a secret's first value; "
                "nothing was changed"
            )
        strings: dict[str, str] = {}
        fetched: dict[str, str] = {}
        created: dict[str, str | None] = {}
        for label, info in versions.items():
            version_id = info["version"]
            if version_id not in fetched:
                answer = self.call(
                    "get_secret_value",
                    "nothing was changed",
                    missing=self._missing,
                    SecretId=self.secret_id,
                    VersionId=version_id,
                )
                if "SecretString" not in answer:
                    raise SecretStoreError(
                        f"{self.describe()}: the {info['stage']} version holds binary data "
                        "(SecretBinary): opsbook rotates string secrets; nothing was changed"
                    )
                fetched[version_id] = answer["SecretString"]
                created[version_id] = iso_time(answer.get("CreatedDate"))
            strings[label] = fetched[version_id]
            info["created"] = created[version_id]
        self._strings = strings
        self.remember(*strings.values())
        values = {
            label: self._value(label, strings[label]) if label in strings else None
            for label in LABELS
        }
        meta: dict[str, Any] = {label: versions.get(label, {}) for label in LABELS}
        meta["store"] = {
            "secret_id": self.secret_id,
            "region": self.region,
            **about,
            **({"json_key": self.json_key} if self.json_key else {}),
        }
        record = SecretRecord(values["current"], values["pending"], values["previous"], meta)
        self.last_record = record
        return record

    def _pending_string(self, value: str) -> str:
        if not self.json_key:
            return value
        data = json.loads(self._strings["current"])
        data[self.json_key] = value
        return json.dumps(data)

    def _stage(self, stage: str, left: str, **kwargs: Any) -> None:
        self.call(
            "update_secret_version_stage",
            left,
            SecretId=self.secret_id,
            VersionStage=stage,
            **kwargs,
        )

    def _write(self, action: str, before: SecretRecord, after: SecretRecord) -> None:
        version = {label: before.meta[label].get("version") for label in LABELS}
        unchanged = "the secret's labels were left as they were"
        if action == "put_pending":
            string = self._pending_string(str(after.pending))
            token = request_token(string)
            answer = self.call(
                "put_secret_value",
                f"the secret was left as it was (a version {token} may have been added: "
                "put_pending again)",
                SecretId=self.secret_id,
                SecretString=string,
                VersionStages=[SM_STAGES["pending"]],
                ClientRequestToken=token,
            )
            if SM_STAGES["pending"] not in answer.get("VersionStages", []):
                moved = {"RemoveFromVersionId": version["pending"]} if version["pending"] else {}
                self._stage(SM_STAGES["pending"], unchanged, MoveToVersionId=token, **moved)
        elif action == "promote":
            if before.pending != before.current and version["pending"] != version["current"]:
                self._stage(
                    SM_STAGES["current"],
                    unchanged,
                    MoveToVersionId=version["pending"],
                    RemoveFromVersionId=version["current"],
                )
            self._stage(
                SM_STAGES["pending"],
                "AWSCURRENT is on the pending version now (AWS moved AWSPREVIOUS) and "
                "AWSPENDING still on it: promote again to finish",
                RemoveFromVersionId=version["pending"],
            )
        elif action == "discard_pending":
            self._stage(SM_STAGES["pending"], unchanged, RemoveFromVersionId=version["pending"])
        elif action == "drop_previous":
            self._stage(SM_STAGES["previous"], unchanged, RemoveFromVersionId=version["previous"])


# ============================================================== SSM Parameter Store


def default_pending_parameter(parameter: str) -> str:
    """Where a parameter's pending value lives by default: out of the parameter's own path,
    so an app loading its path (GetParametersByPath) never sees it."""
    return "/opsbook/pending" + (parameter if parameter.startswith("/") else f"/{parameter}")


class SsmParameterStore(AwsStore):
    """A SecureString parameter in SSM Parameter Store (see the module's docstring)."""

    service = "ssm"

    def __init__(
        self,
        parameter: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        kms_key_id: str | None = None,
        pending_parameter: str | None = None,
        check_mode: bool = False,
    ) -> None:
        self.parameter = parameter
        self.pending_parameter = pending_parameter or default_pending_parameter(parameter)
        self.kms_key_id = kms_key_id
        super().__init__(region, endpoint_url, check_mode)
        if self.pending_parameter == parameter:
            raise SecretStoreError(
                f"{self.describe()}: pending_parameter must be another parameter; nothing was "
                "changed"
            )
        self._key_id: str | None = None  # the KMS key of the latest version

    def describe_named(self, region: str | None) -> str:
        return f"SSM parameter {self.parameter} ({region or 'default region'})"

    def _missing(self, code: str) -> str | None:
        if code == "ParameterNotFound":
            return (
                "the parameter does not exist: create it with its current value (aws ssm "
                f"put-parameter --name {self.parameter} --type SecureString --value ...) - "
                "opsbook rotates parameters, it does not create them; nothing was changed"
            )
        return None

    def _history(self) -> list[dict[str, Any]]:
        versions: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"Name": self.parameter, "WithDecryption": True, "MaxResults": 50}
        while True:
            page = self.call(
                "get_parameter_history", "nothing was changed", missing=self._missing, **kwargs
            )
            versions.extend(page.get("Parameters", []))
            if not page.get("NextToken"):
                return sorted(versions, key=lambda item: int(item["Version"]))
            kwargs["NextToken"] = page["NextToken"]

    def _pending(self) -> dict[str, Any] | None:
        answer = self.call(
            "get_parameter",
            f"nothing was changed (reading the pending parameter {self.pending_parameter})",
            absent=("ParameterNotFound",),
            Name=self.pending_parameter,
            WithDecryption=True,
        )
        return answer.get("Parameter")

    @staticmethod
    def _labelled(history: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
        found = [item for item in history if label in (item.get("Labels") or [])]
        return found[-1] if found else None

    @staticmethod
    def _version_meta(item: dict[str, Any] | None) -> dict[str, Any]:
        if item is None:
            return {}
        return {
            "version": int(item["Version"]),
            "updated": iso_time(item.get("LastModifiedDate")),
            "labels": list(item.get("Labels") or []),
        }

    def read(self) -> SecretRecord:
        history = self._history()
        latest = history[-1]
        if latest.get("Type") != "SecureString":
            raise SecretStoreError(
                f"{self.describe()}: the parameter is a {latest.get('Type')} parameter: opsbook "
                "keeps secrets only in SecureString parameters (move the value to one); nothing "
                "was changed"
            )
        current = self._labelled(history, "current") or latest
        previous = self._labelled(history, "previous")
        pending = self._pending()
        self._key_id = latest.get("KeyId")
        self.remember(*(item.get("Value") for item in history))
        self.remember(pending["Value"] if pending else None)
        meta: dict[str, Any] = {
            "current": self._version_meta(current),
            "previous": self._version_meta(previous),
            "pending": {}
            if pending is None
            else {
                "parameter": self.pending_parameter,
                "version": int(pending["Version"]),
                "updated": iso_time(pending.get("LastModifiedDate")),
            },
        }
        store: dict[str, Any] = {
            "parameter": self.parameter,
            "pending_parameter": self.pending_parameter,
            "region": self.region,
            "latest_version": int(latest["Version"]),
            "latest_fingerprint": fingerprint(latest.get("Value")),
        }
        pending_value = pending["Value"] if pending else None
        if latest is not current and latest.get("Value") != pending_value:
            store["warnings"] = [
                f"version {latest['Version']} of {self.parameter} (the latest: what a read "
                f"without a label returns) is not labelled current (version "
                f"{current['Version']} is): it was written outside opsbook"
            ]
        meta["store"] = store
        record = SecretRecord(
            current.get("Value"), pending_value, previous.get("Value") if previous else None, meta
        )
        self.last_record = record
        return record

    def _put(self, name: str, value: str, left: str) -> int:
        """A new version of ``name`` (its description, tier and policies left alone), with the
        store's KMS key."""
        key = self.kms_key_id or self._key_id
        answer = self.call(
            "put_parameter",
            left,
            Name=name,
            Value=value,
            Type="SecureString",
            Overwrite=True,
            **({"KeyId": key} if key else {}),
        )
        return int(answer["Version"])

    def _label(self, version: int, label: str, left: str) -> None:
        self.call(
            "label_parameter_version",
            left,
            Name=self.parameter,
            ParameterVersion=version,
            Labels=[label],
        )

    def _delete_pending(self, left: str) -> None:
        self.call(
            "delete_parameter", left, absent=("ParameterNotFound",), Name=self.pending_parameter
        )

    def _write(self, action: str, before: SecretRecord, after: SecretRecord) -> None:
        store = before.meta["store"]
        current_version = before.meta["current"]["version"]
        latest = store["latest_version"]
        labelled = "current" in before.meta["current"]["labels"]
        unchanged = "the parameter and its labels were left as they were"
        if action == "put_pending":
            if not labelled:
                self._label(current_version, "current", unchanged)
            self._put(
                self.pending_parameter,
                str(after.pending),
                f"{self.parameter} is unchanged; the pending parameter may or may not have "
                "been written: put_pending again",
            )
        elif action == "promote":
            if before.pending != before.current:
                self._promote(before, current_version, latest, labelled)
            self._delete_pending(
                f"{self.parameter} holds the new current value, labelled current; the pending "
                f"parameter {self.pending_parameter} is still there: promote again to finish"
            )
        elif action == "discard_pending":
            if latest != current_version and store["latest_fingerprint"] == fingerprint(
                before.pending
            ):
                # A promote that wrote the new version and stopped: the current value back on top.
                version = self._put(
                    self.parameter,
                    str(before.current),
                    f"{self.parameter}'s latest version still holds the pending value "
                    "(an interrupted promote): discard_pending again",
                )
                self._label(version, "current", "discard_pending again")
            self._delete_pending(
                f"the pending parameter {self.pending_parameter} is still there; "
                f"{self.parameter} is unchanged"
            )
        elif action == "drop_previous":
            self.call(
                "unlabel_parameter_version",
                unchanged,
                Name=self.parameter,
                ParameterVersion=before.meta["previous"]["version"],
                Labels=["previous"],
            )

    def _promote(
        self, before: SecretRecord, current_version: int, latest: int, labelled: bool
    ) -> None:
        unchanged = "the parameter and its labels were left as they were"
        if not labelled:  # a put after this is told from the current version by the label
            self._label(current_version, "current", unchanged)
        again = "promote again to finish"
        if latest != current_version and before.meta["store"]["latest_fingerprint"] == (
            fingerprint(before.pending)
        ):
            new = latest  # written by a promote that stopped before its labels
        else:
            new = self._put(
                self.parameter,
                str(before.pending),
                f"{self.parameter} may hold the pending value as its latest version; {again}",
            )
        self._label(
            current_version,
            "previous",
            f"{self.parameter} holds the new value (version {new}), not yet labelled; {again}",
        )
        self._label(
            new,
            "current",
            f"{self.parameter} holds the new value (version {new}) and version "
            f"{current_version} is labelled previous, but current is not moved yet; {again}",
        )
