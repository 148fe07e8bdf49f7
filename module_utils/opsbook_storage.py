# Copyright: opsbook contributors
# Apache-2.0
"""Backup storage for opsbook modules: one interface over ``s3://`` and ``file://``.

``open_storage(url, ...)`` returns a :class:`Storage` whose keys are relative to
the URL's prefix and ``/``-separated:

* ``s3://bucket/prefix`` on any S3-compatible endpoint through boto3. Writers
  stream: data is cut into parts that a small thread pool uploads concurrently
  (multipart upload, no local temporary file), with at most
  ``part_size * (concurrency + 1)`` bytes held whatever the object's size; an
  object smaller than one part goes up with a single PutObject. On any failure
  the multipart upload is aborted and :class:`StorageError` raised. Credentials
  come from the usual boto3 sources and are never logged; botocore's
  ``standard`` retry mode handles transient errors, and a silent endpoint fails
  fast (``stall_timeout``, 7 s by default).
* ``file:///abs/path``: a writer writes ``<key>.opsbook.tmp-<random>`` in the
  destination directory, fsyncs it, renames it into place and fsyncs the
  directory, so a reader sees the whole object or nothing.

Usage::

    storage = open_storage("s3://backups/prod", endpoint_url=None, sse="AES256")
    with storage.open_writer("db-20240101T000000Z-ab12/data.pgdump.zst") as writer:
        for chunk in chunks:
            writer.write(chunk)
        info = writer.commit()        # {"key", "bytes", "etag", "parts", "sse"}
    # an exception inside the block aborts the upload and propagates unchanged

Notes:

* An S3 object has at most 10,000 parts: ``part_size_for(expected_bytes)``
  picks a part size for a large stream (16 MiB parts reach 156 GiB).
* Small objects can also be written conditionally (deploy locks, the deploy ledger):
  ``create_bytes`` (only if absent), ``replace_bytes`` / ``delete_if_match`` (only that
  version, from ``read_versioned``). On S3 these are conditional requests (If-None-Match /
  If-Match; ``probe_conditional_writes`` detects servers that ignore them); on files a hard
  link of a complete temporary file (create) and flock(2) (replace, delete).
* A writer killed outright (SIGKILL, power loss) cannot clean up: its temporary
  file or incomplete multipart upload is never listed. ``incomplete_uploads(
  older_than_s)`` finds those opsbook's writer left (an S3 writer records each
  multipart upload it starts in a small marker object under
  ``<prefix>/.opsbook-uploads/``, deleted when the upload ends, so an upload
  anyone else started under the prefix is never taken for opsbook's; a file
  writer's temporary files carry ``.opsbook.tmp-`` in their names) and
  ``abort_incomplete(item)`` removes one; ``cleanup_incomplete(older_than)``
  does both (an S3 lifecycle rule AbortIncompleteMultipartUpload also works).

Where each part lives (this module re-exports their public names):

* ``opsbook_storage_common``: the errors, storage URLs and keys, the records
  (ObjectInfo, Versioned, IncompleteUpload), the Storage and Writer interfaces;
* ``opsbook_storage_file``: FileStorage and FileWriter (``file://``);
* ``opsbook_s3``: the boto3 client, S3's limits and defaults, retries, stall
  detection, error descriptions;
* ``opsbook_storage_s3``: S3Storage (``s3://``): keys, listing, deletion,
  conditional writes, unfinished uploads;
* ``opsbook_s3_upload``: S3Writer and its part buffers (the memory bound, the
  stall and abort timings); ``opsbook_s3_download``: S3Reader.

Modules import it as
``ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage`` (the collection
opsbook.runbooks; Ansible ships the modules above with it, following the imports); it needs only
the standard library, plus boto3 for ``s3://`` URLs (``HAS_BOTO3``).
"""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3 import (
    BOTO3_IMPORT_ERROR,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PART_SIZE,
    DEFAULT_STALL_TIMEOUT,
    HAS_BOTO3,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    check_sse,
    check_transfer_settings,
    describe_s3_error,
    is_stall_error,
    make_s3_client,
    max_buffered_bytes,
    part_size_for,
    single_attempt,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3_download import S3Reader
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_s3_upload import (
    Part,
    PartBody,
    PartBuffer,
    PartPool,
    S3Writer,
    composite_crc32,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_common import (
    ConditionalWriteUnsupportedError,
    GiB,
    IncompleteUpload,
    MiB,
    NotFoundError,
    ObjectInfo,
    PreconditionFailedError,
    Storage,
    StorageError,
    StorageURL,
    StorageURLError,
    Versioned,
    Writer,
    join_key,
    normalize_key,
    parse_storage_url,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_file import (
    FileStorage,
    FileWriter,
    content_etag,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_s3 import (
    UPLOAD_MARKER_DIR,
    S3Storage,
)

__all__ = [
    "BOTO3_IMPORT_ERROR",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "DEFAULT_STALL_TIMEOUT",
    "HAS_BOTO3",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "UPLOAD_MARKER_DIR",
    "ConditionalWriteUnsupportedError",
    "FileStorage",
    "FileWriter",
    "GiB",
    "IncompleteUpload",
    "MiB",
    "NotFoundError",
    "ObjectInfo",
    "Part",
    "PartBody",
    "PartBuffer",
    "PartPool",
    "PreconditionFailedError",
    "S3Reader",
    "S3Storage",
    "S3Writer",
    "Storage",
    "StorageError",
    "StorageURL",
    "StorageURLError",
    "Versioned",
    "Writer",
    "composite_crc32",
    "content_etag",
    "describe_s3_error",
    "is_stall_error",
    "join_key",
    "make_s3_client",
    "max_buffered_bytes",
    "normalize_key",
    "open_storage",
    "parse_storage_url",
    "part_size_for",
    "single_attempt",
]


def open_storage(
    url: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    sse: str | None = None,
    kms_key_id: str | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    addressing_style: str | None = None,
) -> Storage:
    """Open the storage at url (``s3://bucket/prefix`` or ``file:///abs/path``).

    endpoint_url, region, sse ('AES256' | 'aws:kms' | None), kms_key_id,
    part_size, concurrency, max_attempts (retries after the first attempt) and
    stall_timeout (seconds without a byte before an S3 request has stalled: see
    opsbook_s3) apply to s3:// only; server-side encryption asked of
    a file:// URL is an error.
    """
    parsed = parse_storage_url(url)
    check_sse(sse, kms_key_id)
    if parsed.scheme == "file":
        if sse:
            raise StorageURLError(
                f"server-side encryption ({sse}) is only available for s3:// storage, "
                f"not {parsed.url}"
            )
        return FileStorage(parsed)
    check_transfer_settings(part_size, concurrency, max_attempts, stall_timeout)
    client = make_s3_client(
        endpoint_url,
        region,
        concurrency=concurrency,
        max_attempts=max_attempts,
        stall_timeout=stall_timeout,
        addressing_style=addressing_style,
    )
    return S3Storage(
        parsed,
        client,
        sse=sse,
        kms_key_id=kms_key_id,
        part_size=part_size,
        concurrency=concurrency,
    )
