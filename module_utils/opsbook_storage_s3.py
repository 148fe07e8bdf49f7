# Copyright: opsbook contributors
# Apache-2.0
"""``s3://bucket/prefix`` storage on any S3-compatible endpoint: :class:`S3Storage`.

Keys, listing, deletion, write probes, conditional writes (If-None-Match / If-Match) and
the unfinished multipart uploads opsbook's own writer left. Writing is
``opsbook_s3_upload`` (S3Writer), reading ``opsbook_s3_download`` (S3Reader), the client
and its errors ``opsbook_s3``. Needs boto3.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from ansible_collections.opsbook.runbooks.plugins.module_utils import (
    opsbook_storage_common as common,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3 import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DEFAULT_STALL_TIMEOUT,
    BotoCoreError,
    ClientError,
    check_sse,
    describe_client_error,
    describe_s3_error,
    scrub_endpoint,
    stream_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3_download import S3Reader
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3_upload import (
    S3Writer,
    put_outcome,
    put_result,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_common import (
    ConditionalWriteUnsupportedError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    human_size,
    join_key,
    normalize_key,
    refuse_empty_prefix,
    unquote_etag,
)

# Where an S3 writer records the multipart uploads it started (one marker object each).
UPLOAD_MARKER_DIR = ".opsbook-uploads"
_DELETE_BATCH = 1000


def _quote_etag(etag: str) -> str:
    """An ETag as the If-Match header carries it (quoted)."""
    return f'"{unquote_etag(etag)}"'


class S3Storage(common.Storage):
    """Objects under s3://bucket/prefix through one (thread-safe) boto3 client."""

    list_page_size = 1000  # keys per ListObjectsV2 page (S3's maximum)

    def __init__(
        self,
        parsed: common.StorageURL,
        client: Any,
        sse: str | None = None,
        kms_key_id: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        stall_timeout: float | None = None,
    ) -> None:
        check_sse(sse, kms_key_id)
        self.client = client
        self.bucket = parsed.bucket
        self.prefix = parsed.prefix
        self.url = parsed.url
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.part_size = part_size
        self.concurrency = concurrency
        meta = getattr(client, "meta", None)
        self.endpoint = scrub_endpoint(getattr(meta, "endpoint_url", None))
        configured = getattr(getattr(meta, "config", None), "read_timeout", None)
        # the client's read timeout is the stall timeout (make_s3_client)
        self.stall_timeout: float = float(
            stall_timeout
            or (configured if isinstance(configured, (int, float)) else 0)
            or DEFAULT_STALL_TIMEOUT
        )

    def describe(self) -> str:
        sse = self.sse + (" (key set)" if self.kms_key_id else "") if self.sse else "none"
        return (
            f"{self.url} at {self.endpoint} (sse {sse}, part size {human_size(self.part_size)}, "
            f"{self.concurrency} concurrent parts)"
        )

    def full_key(self, key: str) -> str:
        """The bucket key of key."""
        return join_key(self.prefix, normalize_key(key))

    def sse_args(self) -> dict[str, str]:
        """Server-side encryption arguments for PutObject / CreateMultipartUpload."""
        args: dict[str, str] = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def checksum_algorithm(self) -> str | None:
        """'CRC32' when botocore adds request checksums by default (it then must on every part)."""
        config = getattr(getattr(self.client, "meta", None), "config", None)
        when = getattr(config, "request_checksum_calculation", None)
        return "CRC32" if when == "when_supported" else None

    def error(
        self, key: str | None, what: str, exc: BaseException, operation: str | None = None
    ) -> StorageError:
        """A StorageError naming s3://bucket/key, what was being done and why it failed.

        operation (the S3 operation, e.g. "GetObject") defaults to what's first word when
        that is one; a stall names it.
        """
        if operation is None:
            first = what.split(" ", 1)[0]
            operation = first if re.fullmatch(r"[A-Z][A-Za-z0-9]+", first) else None
        reason, kind = describe_s3_error(
            exc, self.endpoint, self.bucket, operation, self.stall_timeout
        )
        where = f"s3://{self.bucket}/{self.full_key(key)}" if key else self.url
        if kind == "not_found":
            return NotFoundError(f"{where}: {what}: {reason}")
        return StorageError(f"{where}: {what}: {reason}", kind)

    def describe_error(self, exc: BaseException, operation: str | None) -> tuple[str, str | None]:
        """(reason, kind) of exc from this storage's endpoint (describe_s3_error)."""
        return describe_s3_error(exc, self.endpoint, self.bucket, operation, self.stall_timeout)

    def open_writer(self, key: str) -> common.Writer:
        return S3Writer(self, normalize_key(key))

    def open_reader(self, key: str) -> BinaryIO:
        return S3Reader(self, normalize_key(key))  # type: ignore[return-value]

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return None
            raise self.error(key, "HeadObject failed", exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise self.error(key, "HeadObject failed", exc) from exc
        return {
            "key": key,
            "bytes": resp["ContentLength"],
            "sse": resp.get("ServerSideEncryption"),
            "kms_key_id": resp.get("SSEKMSKeyId"),
            "etag": resp.get("ETag", "").strip('"'),
            "modified": resp.get("LastModified"),
        }

    def stored_checksum(self, key: str) -> dict[str, Any] | None:
        try:
            resp = self.client.head_object(
                Bucket=self.bucket, Key=self.full_key(key), ChecksumMode="ENABLED"
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self.error(key, "HeadObject failed", exc, "HeadObject") from exc
        for algorithm in ("CRC32", "CRC32C", "CRC64NVME", "SHA256", "SHA1"):
            raw = resp.get(f"Checksum{algorithm}")
            if raw:
                value, _unused, parts = str(raw).partition("-")
                return {
                    "algorithm": algorithm,
                    "value": value,
                    "parts": int(parts) if parts.isdigit() else None,
                    "bytes": resp.get("ContentLength"),
                }
        return None

    def put_bytes(self, key: str, data: bytes) -> dict[str, Any]:
        full = self.full_key(key)
        try:
            resp = self.client.put_object(
                Bucket=self.bucket, Key=full, Body=bytes(data), **self.sse_args()
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self.error(key, f"PutObject failed{put_outcome(exc)}", exc) from exc
        return put_result(key, len(data), resp)

    def get_bytes(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
            return resp["Body"].read()
        except (ClientError, *stream_errors()) as exc:
            raise self.error(key, "GetObject failed", exc) from exc

    def list(self, prefix: str = "") -> list[common.ObjectInfo]:
        normalize_key(prefix, allow_empty=True, what="prefix")
        base = self._base()
        markers = f"{base}{UPLOAD_MARKER_DIR}/"
        return [
            common.ObjectInfo(item["Key"][len(base) :], item["Size"], item["LastModified"])
            for item in self._iter_objects(base + prefix)
            if item["Key"] != base and not item["Key"].startswith(markers)
        ]

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self.error(key, "DeleteObject failed", exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        refuse_empty_prefix(prefix, self.url)
        normalize_key(prefix, allow_empty=True, what="prefix")
        base = f"{self.prefix}/" if self.prefix else ""
        keys = [item["Key"] for item in self._iter_objects(base + prefix)]
        for start in range(0, len(keys), _DELETE_BATCH):
            self._delete_batch(keys[start : start + _DELETE_BATCH])
        return len(keys)

    def check_writable(self) -> dict[str, Any]:
        started = time.monotonic()
        key = f"{common.PROBE_PREFIX}{secrets.token_hex(6)}"
        full = self.full_key(key)
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=full, Body=b"opsbook write probe\n", **self.sse_args()
            )
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError, OSError) as exc:
            reason, kind = describe_s3_error(exc, self.endpoint, self.bucket)
            raise StorageError(f"{self.url} is not writable: {reason}", kind) from exc
        return {"url": self.url, "probe_key": key, "seconds": round(time.monotonic() - started, 3)}

    # ------------------------------------------------------- unfinished uploads
    # S3 does not say who started a multipart upload, so each S3Writer records its own in a
    # marker object, <prefix>/.opsbook-uploads/<sha256(key, upload id)>, written right after
    # CreateMultipartUpload and deleted once the upload is completed or aborted. An upload
    # under the prefix without its marker is someone else's and is never listed nor aborted.

    def upload_marker_key(self, full_key: str, upload_id: str) -> str:
        """The bucket key of the marker of the upload upload_id of full_key."""
        digest = hashlib.sha256(f"{full_key}\0{upload_id}".encode()).hexdigest()[:40]
        return f"{self._base()}{UPLOAD_MARKER_DIR}/{digest}"

    def incomplete_uploads(self, older_than_s: float) -> list[common.IncompleteUpload]:
        return self._scan_incomplete(older_than_s)[0]

    def abort_incomplete(self, item: common.IncompleteUpload) -> None:
        if item.kind != "multipart_upload":
            raise StorageError(f"{self.url}: {item.describe()} is not a multipart upload")
        full = self.full_key(item.key)
        marker = self.upload_marker_key(full, item.id)
        try:
            self.client.head_object(Bucket=self.bucket, Key=marker)
        except ClientError as exc:
            if describe_client_error(exc, self.bucket)[1] == "not_found":
                return  # gone already (another run's clean-up), or never opsbook's: untouched
            raise self._incomplete_error(item, "HeadObject", exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise self._incomplete_error(item, "HeadObject", exc) from exc
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=item.id)
        except ClientError as exc:
            if describe_client_error(exc, self.bucket)[1] != "not_found":  # NoSuchUpload: gone
                raise self._incomplete_error(item, "AbortMultipartUpload", exc) from exc
        except (BotoCoreError, OSError) as exc:
            raise self._incomplete_error(item, "AbortMultipartUpload", exc) from exc
        # The upload is gone; a marker that cannot be deleted now is by cleanup_incomplete().
        with contextlib.suppress(ClientError, BotoCoreError, OSError):
            self.client.delete_object(Bucket=self.bucket, Key=marker)

    def cleanup_incomplete(self, older_than: float = 86400.0) -> list[common.IncompleteUpload]:
        items, stale_markers = self._scan_incomplete(older_than)
        for item in items:
            self.abort_incomplete(item)
        for start in range(0, len(stale_markers), _DELETE_BATCH):
            self._delete_batch(stale_markers[start : start + _DELETE_BATCH])
        return items

    def _scan_incomplete(
        self, older_than_s: float
    ) -> tuple[list[common.IncompleteUpload], list[str]]:
        """(opsbook's uploads started before the cutoff, markers older than it whose upload
        is gone)."""
        base = self._base()
        marker_dir = f"{base}{UPLOAD_MARKER_DIR}/"
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        markers = {item["Key"]: item["LastModified"] for item in self._iter_objects(marker_dir)}
        if not markers:
            return [], []  # no writer of opsbook's left anything (one request, not two)
        found, live = [], set()
        for upload in self._iter_uploads(base):
            full = upload["Key"]
            if not full.startswith(base) or full.startswith(marker_dir):
                continue
            marker = self.upload_marker_key(full, upload["UploadId"])
            if marker not in markers:
                continue  # not started by opsbook's writer
            live.add(marker)
            # The later of the two: some S3-compatible servers report a made-up Initiated
            # (moto: always 2010-11-10), and the marker is written just after the upload
            # started, so neither ever makes an upload look older than it is.
            started = max(upload["Initiated"], markers[marker])
            # older_than_s 0: every one found (the caller knows no writer runs), whatever the
            # whole-second times of the server say
            idle = older_than_s <= 0 or (
                started < cutoff
                and self._last_part_time(full, upload["UploadId"], started) < cutoff
            )
            if idle:
                found.append(
                    common.IncompleteUpload(
                        full[len(base) :], started, upload["UploadId"], "multipart_upload"
                    )
                )
        stale = sorted(k for k, modified in markers.items() if k not in live and modified < cutoff)
        return sorted(found, key=lambda item: (item.started, item.key)), stale

    def _last_part_time(self, full_key: str, upload_id: str, started: datetime) -> datetime:
        """When the upload last moved: its newest part (a live writer sends one every few
        seconds), else when it started. A long backup still running is never taken for dead."""
        newest = started
        marker = 0
        while True:
            resp = self.client.list_parts(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumberMarker=marker
            )
            for part in resp.get("Parts", []):
                if part.get("LastModified") and part["LastModified"] > newest:
                    newest = part["LastModified"]
            if not resp.get("IsTruncated"):
                return newest
            marker = int(resp.get("NextPartNumberMarker") or 0)
            if not marker:
                return newest

    def _incomplete_error(
        self, item: common.IncompleteUpload, operation: str, exc: BaseException
    ) -> StorageError:
        reason, kind = self.describe_error(exc, operation)
        return StorageError(
            f"s3://{self.bucket}/{self.full_key(item.key)}: aborting the unfinished multipart "
            f"upload {item.id} failed ({operation}): {reason}; it is left as it was",
            kind,
        )

    # --------------------------------------------------- conditional operations
    # S3 conditional writes: PutObject If-None-Match: * (create only if absent), PutObject
    # If-Match: <etag> (replace only that version) and DeleteObject If-Match: <etag>. A server
    # answering 501 NotImplemented raises ConditionalWriteUnsupportedError; one that silently
    # ignores the headers is caught only by probe_conditional_writes().

    conditional_conflict_retries = 3  # 409 ConditionalRequestConflict: a concurrent write

    def read_versioned(self, key: str) -> common.Versioned | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
            data = resp["Body"].read()
        except ClientError as exc:
            if describe_client_error(exc, self.bucket)[1] == "not_found":
                return None
            raise self.error(key, "GetObject failed", exc) from exc
        except stream_errors() as exc:
            raise self.error(key, "GetObject failed", exc) from exc
        return common.Versioned(key, data, unquote_etag(resp.get("ETag", "")))

    def create_bytes(self, key: str, data: bytes) -> dict[str, Any]:
        return self._conditional_put(key, data, {"IfNoneMatch": "*"}, "create")

    def replace_bytes(self, key: str, data: bytes, if_match: str) -> dict[str, Any]:
        return self._conditional_put(key, data, {"IfMatch": _quote_etag(if_match)}, "replace")

    def delete_if_match(self, key: str, if_match: str) -> None:
        full = self.full_key(key)
        for attempt in range(self.conditional_conflict_retries + 1):
            try:
                self.client.delete_object(
                    Bucket=self.bucket, Key=full, IfMatch=_quote_etag(if_match)
                )
                return
            except (ClientError, BotoCoreError, OSError) as exc:
                if self._conditional_failure(key, "delete", exc, attempt):
                    continue

    def probe_conditional_writes(self, key: str) -> dict[str, bool]:
        """Whether this endpoint honours the conditional requests, tested on key.

        Returns {"if_none_match", "if_match", "delete_if_match"}: True when a request whose
        condition does not hold was refused. Some S3-compatible servers ignore the headers
        and write anyway, which would make create_bytes() overwrite silently: a caller that
        relies on atomicity checks this first. The probe object (a few bytes) is left at key.
        Raises StorageError when the endpoint cannot be reached or written.
        """
        body = b"opsbook conditional-write probe; safe to delete\n"
        result = {"if_none_match": False, "if_match": False, "delete_if_match": False}
        for _attempt in range(2):  # the first create succeeds when the probe object is new
            try:
                self.create_bytes(key, body)
            except PreconditionFailedError:
                result["if_none_match"] = True
                break
            except ConditionalWriteUnsupportedError:
                return result
        if not result["if_none_match"]:
            return result
        wrong = "0" * 32
        for name, call in (
            ("if_match", lambda: self.replace_bytes(key, body, wrong)),
            ("delete_if_match", lambda: self.delete_if_match(key, wrong)),
        ):
            try:
                call()
            except PreconditionFailedError:
                result[name] = True
            except ConditionalWriteUnsupportedError:
                result[name] = False
        return result

    def _conditional_put(
        self, key: str, data: bytes, condition: dict[str, str], what: str
    ) -> dict[str, Any]:
        full = self.full_key(key)
        body = bytes(data)
        for attempt in range(self.conditional_conflict_retries + 1):
            try:
                resp = self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=body, **condition, **self.sse_args()
                )
            except (ClientError, BotoCoreError, OSError) as exc:
                if self._conditional_failure(key, what, exc, attempt):
                    continue
            result = put_result(key, len(body), resp)
            return {"key": key, "bytes": len(body), "etag": result["etag"]}
        raise AssertionError("unreachable")  # pragma: no cover

    def _conditional_failure(self, key: str, what: str, exc: BaseException, attempt: int) -> bool:
        """Raise the error a failed conditional request means; True: retry it (409)."""
        where = f"s3://{self.bucket}/{self.full_key(key)}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "PreconditionFailed" or status == 412:
                state = "already exists" if what == "create" else "changed"
                raise PreconditionFailedError(f"{where}: not {what}d: it {state}") from None
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise PreconditionFailedError(f"{where}: not {what}d: it does not exist") from None
            if code == "ConditionalRequestConflict" or status == 409:
                if attempt < self.conditional_conflict_retries:
                    time.sleep(0.1 * (attempt + 1))
                    return True
                raise PreconditionFailedError(
                    f"{where}: not {what}d: concurrent conditional writes kept conflicting"
                ) from None
            message = str(error.get("Message", ""))
            if (
                code in ("NotImplemented", "501")
                or status == 501
                or (code in ("InvalidArgument", "InvalidRequest") and "If-" in message)
            ):
                raise ConditionalWriteUnsupportedError(
                    f"{where}: the S3 endpoint {self.endpoint} does not support conditional "
                    f"requests ({code}: {message or 'not implemented'})"
                ) from None
        raise self.error(key, f"conditional {what} failed", exc) from exc

    # ------------------------------------------------------------ internals

    def _base(self) -> str:
        """The bucket key prefix of every key of this storage ("" at the bucket's root)."""
        return f"{self.prefix}/" if self.prefix else ""

    def _iter_objects(self, full_prefix: str) -> Iterator[dict[str, Any]]:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=full_prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                yield from page.get("Contents", [])
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self.error(None, f"listing {full_prefix!r} failed", exc, "ListObjectsV2") from exc

    def _iter_uploads(self, full_prefix: str) -> Iterator[dict[str, Any]]:
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                yield from page.get("Uploads", [])
        except (ClientError, BotoCoreError, OSError) as exc:
            what = f"listing the multipart uploads under {full_prefix!r} failed"
            raise self.error(None, what, exc, "ListMultipartUploads") from exc

    def _delete_batch(self, keys: list[str]) -> None:
        try:
            resp = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self.error(None, f"DeleteObjects of {len(keys)} keys failed", exc) from exc
        errors = resp.get("Errors") or []
        if errors:
            shown = ", ".join(f"{e.get('Key')} ({e.get('Code')})" for e in errors[:5])
            raise StorageError(f"{self.url}: {len(errors)} objects could not be deleted: {shown}")
