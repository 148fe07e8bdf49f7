# Copyright: opsbook contributors
# Apache-2.0
"""The S3 client opsbook's storage uses: boto3 configuration, S3's limits and defaults,
retries and stall detection, and errors in words an operator can act on.

A silent S3 endpoint fails fast. A request that moves no bytes for ``stall_timeout``
seconds (7 by default: connecting, sending or waiting for the answer) has stalled: it
raises :class:`StorageError` with kind ``stalled`` (``unreachable`` for a connection never
made), naming the endpoint, the operation, the key and the seconds, and it is not retried
(a silent endpoint would only stall again). Other errors (refused or reset connections,
5xx, throttling) are retried by botocore's standard mode, 3 attempts in all. Credentials
come from the usual boto3 sources and are never logged.

Without boto3 this module still imports (``HAS_BOTO3`` is False, botocore's exception
names stand for an exception never raised) and ``make_s3_client`` says what is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_common import (
    GiB,
    MiB,
    StorageError,
    StorageURLError,
    human_size,
    os_reason,
)

try:
    # botocore's exception classes only (they bring neither boto3 nor urllib3): boto3, its
    # client configuration and urllib3 - 0.1 to 0.15 s of CPU in every process that imports the
    # storage layer, for file:// URLs too (each deploy lock and ledger task) - are imported when
    # S3 is used (make_s3_client, stream_errors, _is_timeout).
    # FlexibleChecksumError: re-exported (opsbook_s3_download imports it from here)
    from botocore.exceptions import (  # pylint: disable=unused-import
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        FlexibleChecksumError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    for _library in ("boto3", "urllib3"):
        if importlib.util.find_spec(_library) is None:
            raise ImportError(f"No module named {_library!r}", name=_library)

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR: str | None = None
except ImportError:  # pragma: no cover - exercised only where boto3 is missing
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()

    class _Boto3MissingError(Exception):
        """Stands for botocore's exceptions where boto3 is missing: never raised, since no
        s3:// storage opens without boto3 (make_s3_client)."""

    BotoCoreError = ClientError = ConnectionClosedError = _Boto3MissingError  # type: ignore
    ConnectTimeoutError = EndpointConnectionError = _Boto3MissingError  # type: ignore
    FlexibleChecksumError = NoCredentialsError = _Boto3MissingError  # type: ignore
    PartialCredentialsError = ReadTimeoutError = _Boto3MissingError  # type: ignore

DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_CONCURRENCY = 4
# S3 limits: every part but the last is 5 MiB .. 5 GiB; at most 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_CONCURRENCY = 64
# botocore's retries.max_attempts counts retries: 2 means 3 attempts in all, the AWS SDKs'
# standard default; with standard backoff a dead endpoint fails within about 3 seconds.
DEFAULT_MAX_ATTEMPTS = 2
# No bytes for this long (connect, send or answer) and an S3 request has stalled: botocore's
# connect_timeout and read_timeout (the socket timeout while sending is the connect timeout).
# A stalled upload then fails within 2 * 7 + 1 s, abort included (opsbook_s3_upload).
DEFAULT_STALL_TIMEOUT = 7.0
SSE_ALGORITHMS = ("AES256", "aws:kms")


def max_buffered_bytes(part_size: int, concurrency: int) -> int:
    """Upper bound of the bytes an S3 writer holds: parts in flight plus the one being filled."""
    return part_size * (concurrency + 1)


def part_size_for(expected_bytes: int, part_size: int = DEFAULT_PART_SIZE) -> int:
    """The smallest part size >= part_size (whole MiB) that fits expected_bytes in 10,000 parts.

    With a 10% margin, since the final size of a stream is only estimated.
    """
    needed = -(-int(expected_bytes * 1.1) // MAX_PARTS)
    size = max(part_size, MIN_PART_SIZE, needed)
    return min(-(-size // MiB) * MiB, MAX_PART_SIZE)


def scrub_endpoint(endpoint: str | None) -> str:
    """An endpoint URL without any user:password@ part."""
    if not endpoint:
        return "the default AWS endpoint"
    parts = urlsplit(endpoint)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return parts._replace(netloc=netloc).geturl()
    return endpoint


def check_sse(sse: str | None, kms_key_id: str | None) -> None:
    if sse not in (None, *SSE_ALGORITHMS):
        raise StorageURLError(f"sse must be one of AES256, aws:kms or none, got {sse!r}")
    if kms_key_id and sse != "aws:kms":
        raise StorageURLError("kms_key_id is only meaningful with sse='aws:kms'")


def check_transfer_settings(
    part_size: int, concurrency: int, max_attempts: int, stall_timeout: float
) -> None:
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise StorageURLError(
            f"part_size must be between {human_size(MIN_PART_SIZE)} and "
            f"{human_size(MAX_PART_SIZE)} (S3 limits), got {part_size}"
        )
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise StorageURLError(
            f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
        )
    if max_attempts < 0:
        raise StorageURLError(f"max_attempts (retries) must be >= 0, got {max_attempts}")
    if not 0 < stall_timeout <= 600:
        raise StorageURLError(
            f"stall_timeout must be more than 0 and at most 600 seconds, got {stall_timeout}"
        )


def make_s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    addressing_style: str | None = None,
) -> Any:
    """A boto3 S3 client: standard retries, stall detection, credentials from boto3's chain.

    stall_timeout is both botocore timeouts: connect_timeout (which is also the socket
    timeout while a request is sent) and read_timeout (between two bytes of the answer).
    A request that timed out is not retried (see is_stall_error); other transient
    errors are, up to max_attempts times. With a custom endpoint the addressing style
    defaults to path-style, which every S3-compatible server understands.
    """
    if not HAS_BOTO3:
        raise StorageError(
            "s3:// storage needs the Python library boto3 (pip install boto3) on the host "
            "running the module",
            kind="invalid",
        )
    import boto3
    from botocore.config import Config as BotoConfig

    style = addressing_style or ("path" if endpoint_url else "auto")
    config = BotoConfig(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=stall_timeout,
        read_timeout=stall_timeout,
        max_pool_connections=max(10, concurrency + 2),
        s3={"addressing_style": style},
        user_agent_extra="opsbook",
    )
    session = boto3.session.Session()
    client = session.client(
        "s3", endpoint_url=endpoint_url or None, region_name=region, config=config
    )
    # Before botocore's own retry handler: the first answer that is not None decides.
    client.meta.events.register_first(
        "needs-retry.s3", _retry_veto, unique_id="opsbook-no-retry-after-stall"
    )
    return client


# Set by single_attempt(): requests this thread makes are not retried.
_SINGLE_ATTEMPT = threading.local()


@contextlib.contextmanager
def single_attempt() -> Iterator[None]:
    """Requests made in this block (by this thread) get one attempt, no retries: clean-up
    after a stall (an abort) must not multiply the wait by the retries."""
    previous = getattr(_SINGLE_ATTEMPT, "active", False)
    _SINGLE_ATTEMPT.active = True
    try:
        yield
    finally:
        _SINGLE_ATTEMPT.active = previous


def _retry_veto(caught_exception: BaseException | None = None, **_kwargs: Any) -> bool | None:
    """botocore ``needs-retry`` handler: False (no retry) after a stall or inside
    single_attempt(); None leaves the decision to botocore's standard retry handler."""
    if caught_exception is not None and is_stall_error(caught_exception):
        return False
    if getattr(_SINGLE_ATTEMPT, "active", False):
        return False
    return None


def is_stall_error(exc: BaseException | None) -> bool:
    """True when exc (or what it wraps) says an S3 request timed out: no bytes came for the
    stall timeout while connecting (ConnectTimeoutError), while sending (a socket timeout
    that botocore reports as ConnectionClosedError) or while waiting for the answer or the
    body (ReadTimeoutError). A StorageError says so with its kind."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageError) and exc.kind == "stalled":
            return True
        if _is_timeout(exc):
            return True
        inner = getattr(exc, "kwargs", {}).get("error")  # botocore keeps urllib3's error here
        if not isinstance(inner, BaseException) and len(getattr(exc, "args", ())) > 1:
            inner = exc.args[1]  # urllib3 ProtocolError("Connection aborted.", TimeoutError())
        if not isinstance(inner, BaseException):
            inner = exc.__cause__
        exc = inner
    return False


def stream_errors() -> tuple[type[BaseException], ...]:
    """What reading or sending an S3 body may raise: botocore's errors, urllib3's (imported
    with boto3 by the client that made the request) and OSError."""
    if not HAS_BOTO3:
        return (OSError,)
    import urllib3.exceptions

    return (BotoCoreError, urllib3.exceptions.HTTPError, OSError)


def _is_timeout(exc: BaseException) -> bool:
    if not HAS_BOTO3:
        return isinstance(exc, TimeoutError)
    import urllib3.exceptions

    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False  # a refused or failed connection (urllib3 derives it from its timeout)
    return isinstance(
        exc, (ReadTimeoutError, ConnectTimeoutError, urllib3.exceptions.TimeoutError, TimeoutError)
    )


def _seconds(value: float) -> str:
    return f"{value:g}"


def describe_s3_error(
    exc: BaseException,
    endpoint: str,
    bucket: str,
    operation: str | None = None,
    stall_timeout: float | None = None,
) -> tuple[str, str | None]:
    """(reason, kind) of a boto3/botocore error, in words an operator can act on.

    A timeout reads "the S3 endpoint <endpoint> stalled (no bytes for <stall_timeout> s)
    during <operation>", kind ``stalled`` (``unreachable`` when the connection itself
    timed out).
    """
    if HAS_BOTO3 and isinstance(exc, ClientError):
        return describe_client_error(exc, bucket)
    if not HAS_BOTO3:
        return f"{type(exc).__name__}: {exc}", None
    during = f" during {operation}" if operation else ""
    silent = f"no bytes for {_seconds(stall_timeout)} s" if stall_timeout else "no bytes in time"
    if isinstance(exc, ConnectTimeoutError):
        return (
            f"connecting to the S3 endpoint {endpoint} stalled ({silent}){during}",
            "unreachable",
        )
    if is_stall_error(exc):
        return f"the S3 endpoint {endpoint} stalled ({silent}){during}", "stalled"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            "no usable AWS credentials found (environment, shared config/credentials file, "
            "or instance/task role)",
            "credentials",
        )
    if isinstance(exc, EndpointConnectionError):
        return f"the S3 endpoint {endpoint} is unreachable ({_connect_cause(exc)})", "unreachable"
    if isinstance(exc, ConnectionClosedError):
        return f"the S3 endpoint {endpoint} closed the connection before answering", "unreachable"
    if isinstance(exc, BotoCoreError):
        return f"{exc} (endpoint {endpoint})", None
    if isinstance(exc, OSError):
        return os_reason(exc), None
    return f"{type(exc).__name__}: {exc}", None


def _connect_cause(exc: Any) -> str:
    """Why a connection failed ("... [Errno 111] Connection refused"), without object URLs."""
    cause = str(getattr(exc, "kwargs", {}).get("error") or "")
    _head, sep, tail = cause.partition("): ")  # drop "AWSHTTPConnection(host=..., port=...): "
    return (tail if sep else cause) or "could not connect"


def describe_client_error(exc: Any, bucket: str) -> tuple[str, str | None]:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = error.get("Message") or ""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = f"{code}: {message}" if message else code
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist ({code})", "bucket_missing"
    if code in ("NoSuchKey", "NoSuchUpload") or (status == 404 and code in ("404", "NotFound")):
        return f"not found ({detail})", "not_found"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return f"the AWS credentials were rejected ({detail})", "credentials"
    if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
        return f"access denied ({detail})", "access_denied"
    suffix = f", HTTP {status}" if status else ""
    return f"{detail}{suffix}", None
