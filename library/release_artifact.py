#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""release_artifact: fetch a release artifact to the controller's cache, sha256 verified."""

from __future__ import annotations

DOCUMENTATION = r"""
module: release_artifact
short_description: Fetch a release artifact (file, https, s3) into a cache, sha256 verified
description:
  - Runs on the controller (C(delegate_to localhost), C(run_once)). Brings the artifact O(src)
    into the cache directory O(cache_dir) as C(<sha256>.tar.gz) (the suffix follows the
    source's - C(.tar.gz), C(.tgz), C(.tar.xz), C(.tar.bz2), C(.tar)), and returns its path,
    sha256 and size. The roles copy that file to the hosts.
  - "Sources: a local path (or C(file://) URL), an C(https://) URL (C(http://) too, see
    O(sha256)), an C(s3://bucket/key) object (boto3, through the opsbook storage layer;
    O(s3_endpoint_url) for an S3-compatible service)."
  - "Checksum rules: with O(sha256) the artifact must match it. Without it, a sidecar
    C(<src>.sha256) (C(sha256sum) output or the bare hex digest) is fetched and used when it
    exists. For C(https://) and C(s3://) one of the two is required: an unverified download is
    refused. For a local file without either, its sha256 is computed and reported
    (RV(verified=false)). A C(http://) source needs O(sha256) itself (a sidecar fetched in
    clear text proves nothing)."
  - A mismatch fails the task B(before anything is installed anywhere); the downloaded bytes
    are discarded (written to a temporary file in O(cache_dir) and never renamed into place).
  - "The cache is keyed by sha256: when the expected sha256 is known and C(<sha256>.*) is in
    the cache (re-hashed to make sure it is intact), nothing is downloaded. A local source is
    always hashed (the module delivers what the path holds)."
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_s3  # boto3 and the S3 connection options
  - opsbook.runbooks.opsbook_controller  # run in the task's worker on the controller
options:
  src:
    description:
      - The artifact - C(/path/app.tar.gz), C(file:///path/app.tar.gz),
        C(https://host/path/app.tar.gz) or C(s3://bucket/key).
      - Put credentials in O(headers), not in the URL. A query string (a presigned URL) is
        accepted but never shown in RV(src) nor in messages.
    type: str
    required: true
  sha256:
    description:
      - The expected sha256 (64 hex digits). Required for C(http://); for C(https://) and
        C(s3://) unless a C(<src>.sha256) sidecar exists.
    type: str
  checksum_sidecar:
    description:
      - Look for C(<src>.sha256) when O(sha256) is not given.
    type: bool
    default: true
  cache_dir:
    description:
      - The cache directory (created C(0700) when missing). The C(release) role uses
        C(<project>/.opsbook/artifacts).
      - When omitted, C($OPSBOOK_ARTIFACT_CACHE), else C(~/.cache/opsbook/artifacts).
    type: path
  headers:
    description:
      - Extra HTTP request headers (an C(Authorization) token ...). Secret (C(no_log)).
    type: dict
    default: {}
  validate_certs:
    description:
      - Verify the TLS certificate of C(https://) sources.
    type: bool
    default: true
  ca_path:
    description:
      - A CA bundle (PEM) to verify C(https://) sources with (a private CA).
    type: path
  timeout_s:
    description:
      - Seconds to wait for a connection or a read.
    type: float
    default: 60
attributes:
  check_mode:
    support: full
    description: A cache hit is reported as usual. Otherwise a local source is hashed and
      verified (read only), a remote one is checked to exist (HEAD / HeadObject) and nothing is
      written; RV(path) is where it would be cached. The C(release) role runs this module
      with C(check_mode=false) so that a dry run proves the artifact and its checksum.
  diff_mode:
    description: No diff is produced.
    support: none
  platform:
    support: full
    platforms: posix
    description: Runs on the controller.
notes:
  - C(changed) is true when a new file was put in the cache.
seealso:
  - module: opsbook.runbooks.app_release
"""

EXAMPLES = r"""
- name: Fetch the artifact from S3 (checksum from the ledger)
  release_artifact:
    src: s3://acme-artifacts/app/app-2.3.0.tar.gz
    sha256: "{{ app_artifact_sha256 }}"
    s3_endpoint_url: "{{ s3_endpoint_url | default(omit) }}"
    cache_dir: "{{ playbook_dir }}/../.opsbook/artifacts"
  delegate_to: localhost
  run_once: true
  register: artifact

- name: From a build server, verified by its app-2.3.0.tar.gz.sha256 sidecar
  release_artifact:
    src: https://builds.example.com/app/app-2.3.0.tar.gz
    headers:
      Authorization: "Bearer {{ vault_build_token }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
path:
  description: The cached artifact on the controller (in check mode, where it would be).
  returned: always
  type: str
  sample: /work/app/.opsbook/artifacts/9f86d0...0a08.tar.gz
sha256:
  description: Its sha256 (hex).
  returned: always
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
bytes:
  description: Its size (null in check mode for a remote source that is not cached).
  returned: always
  type: int
  sample: 4182
cached:
  description: True when the cache already held the artifact (nothing was downloaded).
  returned: always
  type: bool
verified:
  description: True when the artifact matched an expected sha256 (O(sha256) or the sidecar).
  returned: always
  type: bool
sha256_source:
  description: Where the expected sha256 came from - C(given), C(sidecar) or C(computed)
    (nothing to verify against).
  returned: always
  type: str
src:
  description: The source, without credentials or query string.
  returned: always
  type: str
  sample: https://builds.example.com/app/app-2.3.0.tar.gz
msg:
  description: What happened.
  returned: always
  type: str
"""

import contextlib
import hashlib
import os
import re
import secrets
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

from ansible.module_utils.urls import open_url
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    NotFoundError,
    StorageError,
    open_storage,
)

CHUNK = 1 << 20
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar")
CANONICAL_SUFFIX = {".tgz": ".tar.gz", ".txz": ".tar.xz", ".tbz2": ".tar.bz2"}


class ArtifactError(Exception):
    """The artifact cannot be fetched or verified; nothing was cached."""


# --------------------------------------------------------------------------- pure parts


def display_src(src: str) -> str:
    """The source without user info, query string or fragment (safe to show)."""
    parts = urlsplit(src)
    if not parts.scheme or parts.scheme == "file":
        return src
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def source_kind(src: str) -> str:
    """local | http | https | s3 (ArtifactError for anything else)."""
    scheme = urlsplit(src).scheme.lower()
    if scheme in ("", "file"):
        return "local"
    if scheme in ("http", "https", "s3"):
        return scheme
    raise ArtifactError(
        f"src {display_src(src)!r}: unsupported scheme {scheme!r} (a local path, file://, "
        "https://, http:// or s3://bucket/key)"
    )


def local_path(src: str) -> str:
    parts = urlsplit(src)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ArtifactError(f"src {src!r}: file:// URLs must name a local absolute path")
        return unquote(parts.path)
    return os.path.abspath(os.path.expanduser(src))


def cache_suffix(src: str) -> str:
    path = urlsplit(src).path.lower() if urlsplit(src).scheme else src.lower()
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return CANONICAL_SUFFIX.get(suffix, suffix)
    return ".tar.gz"


def sidecar_url(src: str) -> str:
    """<src>.sha256, keeping a query string where it is (a presigned URL gets none)."""
    parts = urlsplit(src)
    if not parts.scheme:
        return src + ".sha256"
    return urlunsplit((parts.scheme, parts.netloc, parts.path + ".sha256", parts.query, ""))


def parse_sidecar(text: str, where: str) -> str:
    """The digest of a sha256sum line ('<hex>  name') or a bare hex digest."""
    for line in text.splitlines():
        words = line.strip().split()
        if not words:
            continue
        digest = words[0].lstrip("\\").lower()
        if SHA256_RE.match(digest):
            return digest
        break
    raise ArtifactError(f"{where} does not hold a sha256 (64 hex digits)")


def normalize_sha(value: str | None) -> str | None:
    if value in (None, ""):
        return None
    sha = str(value).strip().lower()
    if sha.startswith("sha256:"):
        sha = sha[len("sha256:") :]
    if not SHA256_RE.match(sha):
        raise ArtifactError(f"sha256 must be 64 hex digits, got {value!r}")
    return sha


def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def default_cache_dir() -> str:
    return os.environ.get("OPSBOOK_ARTIFACT_CACHE") or os.path.expanduser(
        "~/.cache/opsbook/artifacts"
    )


# --------------------------------------------------------------------------- fetcher


class Fetcher:
    def __init__(self, params: dict[str, Any], check_mode: bool) -> None:
        self.params = params
        self.check = check_mode
        self.src = params["src"].strip()
        self.shown = display_src(self.src)
        self.kind = source_kind(self.src)
        self.cache_dir = os.path.abspath(params["cache_dir"] or default_cache_dir())
        self.suffix = cache_suffix(self.src)
        self._storage: Any = None

    def cache_path(self, sha: str) -> str:
        return os.path.join(self.cache_dir, sha + self.suffix)

    # ---- expected checksum

    def expected(self) -> tuple[str | None, str]:
        """(expected sha256 or None, its source: given | sidecar | computed)."""
        given = normalize_sha(self.params["sha256"])
        if given:
            return given, "given"
        if self.kind == "http":
            raise ArtifactError(
                f"{self.shown}: a plain http:// source needs sha256 (a sidecar fetched in clear "
                "text proves nothing); nothing was downloaded"
            )
        if self.params["checksum_sidecar"]:
            text = self.read_sidecar()
            if text is not None:
                return parse_sidecar(text, display_src(sidecar_url(self.src))), "sidecar"
        if self.kind in ("https", "s3"):
            raise ArtifactError(
                f"{self.shown}: no sha256 given and no {display_src(sidecar_url(self.src))} "
                "sidecar; an unverified download is refused (pass sha256); nothing was downloaded"
            )
        return None, "computed"

    def read_sidecar(self) -> str | None:
        url = sidecar_url(self.src)
        if self.kind == "local":
            try:
                with open(local_path(url)) as handle:
                    return handle.read(4096)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise ArtifactError(f"cannot read {url}: {exc.strerror}") from exc
        if self.kind == "s3":
            bucket, key = self.s3_location()
            storage = self.storage(bucket)
            if storage.head(key + ".sha256") is None:
                return None
            return storage.get_bytes(key + ".sha256")[:4096].decode(errors="replace")
        try:
            with self.open_http(url) as response:
                return response.read(4096).decode(errors="replace")
        except ArtifactError as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise

    # ---- sources

    def s3_location(self) -> tuple[str, str]:
        parts = urlsplit(self.src)
        key = parts.path.lstrip("/")
        if not parts.netloc or not key:
            raise ArtifactError(f"src {self.shown!r}: expected s3://bucket/key")
        return parts.netloc, key

    def storage(self, bucket: str) -> Any:
        if self._storage is None:
            self._storage = open_storage(
                f"s3://{bucket}",
                endpoint_url=self.params["s3_endpoint_url"] or None,
                region=self.params["s3_region"] or None,
            )
        return self._storage

    def open_http(self, url: str) -> Any:
        try:
            return open_url(
                url,
                method="GET",
                headers=dict(self.params["headers"] or {}),
                validate_certs=self.params["validate_certs"],
                ca_path=self.params["ca_path"],
                timeout=self.params["timeout_s"],
                follow_redirects="safe",
                http_agent="opsbook-release-artifact",
            )
        except Exception as exc:  # urllib's HTTPError, URLError, SSL and socket errors
            status = getattr(exc, "code", None)
            reason = getattr(exc, "reason", None) or exc
            error = ArtifactError(
                f"GET {display_src(url)} failed: "
                + (f"HTTP {status} {reason}" if status else str(reason))
            )
            error.status = status  # type: ignore[attr-defined]
            raise error from exc

    def open_source(self) -> BinaryIO:
        if self.kind == "local":
            path = local_path(self.src)
            try:
                return open(path, "rb")
            except OSError as exc:
                raise ArtifactError(f"cannot read {path}: {exc.strerror}") from exc
        if self.kind == "s3":
            bucket, key = self.s3_location()
            try:
                return self.storage(bucket).open_reader(key)
            except NotFoundError as exc:
                raise ArtifactError(f"{self.shown} does not exist") from exc
        return self.open_http(self.src)

    def exists_remotely(self) -> int | None:
        """Size of a remote source (check mode), ArtifactError when it is missing."""
        if self.kind == "s3":
            bucket, key = self.s3_location()
            head = self.storage(bucket).head(key)
            if head is None:
                raise ArtifactError(f"{self.shown} does not exist")
            return int(head["bytes"])
        with self.open_http(self.src) as response:
            length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else None

    # ---- the cache

    def cached(self, sha: str) -> tuple[str, int] | None:
        """(path, size) of an intact cached copy of sha; a corrupt one is removed."""
        path = self.cache_path(sha)
        if not os.path.isfile(path):
            return None
        actual, size = sha256_file(path)
        if actual == sha:
            return path, size
        if not self.check:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return None

    def download(self, expected: str | None) -> tuple[str, str, int]:
        """Stream the source into the cache; (path, sha256, size). Verified before the rename."""
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.cache_dir, f".fetch-{secrets.token_hex(8)}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with self.open_source() as source, open(tmp, "wb") as out:
                while True:
                    try:
                        chunk = source.read(CHUNK)
                    except (OSError, StorageError) as exc:
                        raise ArtifactError(f"reading {self.shown} failed: {exc}") from exc
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if expected and actual != expected:
                raise ArtifactError(
                    f"sha256 mismatch for {self.shown}: expected {expected}, got {actual} "
                    f"({size} bytes); the download was discarded and nothing was installed"
                )
            final = self.cache_path(actual)
            os.chmod(tmp, 0o600)
            os.replace(tmp, final)
            return final, actual, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # ---- the whole thing

    def run(self) -> dict[str, Any]:
        expected, origin = self.expected()
        result: dict[str, Any] = {
            "src": self.shown,
            "sha256_source": origin,
            "verified": expected is not None,
            "changed": False,
        }
        if self.kind == "local":
            path = local_path(self.src)
            if not os.path.isfile(path):
                raise ArtifactError(f"{path} does not exist (or is not a file)")
            actual, size = sha256_file(path)
            if expected and actual != expected:
                raise ArtifactError(
                    f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
                    "nothing was cached or installed"
                )
            expected = actual
        hit = self.cached(expected) if expected else None
        if hit is not None:
            result.update(path=hit[0], sha256=expected, bytes=hit[1], cached=True)
            result["msg"] = f"{self.shown}: in the cache ({hit[0]})"
            return result
        result["cached"] = False
        if self.check:
            if self.kind == "local":
                size: int | None = os.path.getsize(local_path(self.src))
            else:
                size = self.exists_remotely()
            result.update(path=self.cache_path(expected) if expected else None)
            result.update(sha256=expected, bytes=size, changed=True)
            result["msg"] = f"would fetch {self.shown} into {self.cache_dir}"
            return result
        path, actual, size = self.download(expected)
        result.update(path=path, sha256=actual, bytes=size, changed=True)
        check = "verified" if expected else "not verified: no sha256 to check against"
        result["msg"] = f"fetched {self.shown} ({size} bytes, sha256 {actual}, {check}) to {path}"
        return result


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "src": {"type": "str", "required": True},
        "sha256": {"type": "str"},
        "checksum_sidecar": {"type": "bool", "default": True},
        "cache_dir": {"type": "path"},
        "s3_endpoint_url": {"type": "str"},
        "s3_region": {"type": "str"},
        "headers": {"type": "dict", "default": {}, "no_log": True},
        "validate_certs": {"type": "bool", "default": True},
        "ca_path": {"type": "path"},
        "timeout_s": {"type": "float", "default": 60.0},
    }


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, with ``failed`` on a failure.
    main() runs it in a module process; on the controller the action plugin
    (action_plugins/release_artifact.py) runs it in the task's worker."""
    try:
        return Fetcher(params, check_mode).run()
    except ArtifactError as exc:
        return {"failed": True, "changed": False, "msg": f"release_artifact: {exc}"}
    except (StorageError, OSError) as exc:
        return {
            "failed": True,
            "changed": False,
            "msg": f"release_artifact: {display_src(params['src'])}: {exc}; nothing was cached",
        }


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
