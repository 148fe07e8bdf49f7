# Copyright: opsbook contributors
# Apache-2.0
"""``file:///abs/path`` storage: objects as files under a directory.

A writer writes ``<key>.opsbook.tmp-<random>`` in the destination directory, fsyncs it,
renames it into place and fsyncs the directory, so a reader sees the whole object or
nothing. Conditional writes: a hard link of a complete temporary file (create) and flock(2)
(replace, delete). Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from ansible_collections.opsbook.runbooks.plugins.module_utils import (
    opsbook_storage_common as common,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage_common import (
    ConditionalWriteUnsupportedError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    normalize_key,
    os_reason,
    refuse_empty_prefix,
    unquote_etag,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

# "<key>.tmp-<16 hex>": a file writer's work in progress, never listed. Today's writers
# write "<key>.opsbook.tmp-<16 hex>" (_OPSBOOK_TEMP_RE), the only ones incomplete_uploads()
# takes for opsbook's; the older "<key>.tmp-<16 hex>" stay hidden.
_TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{16}$")
_OPSBOOK_TEMP_SUFFIX = ".opsbook.tmp-"
_OPSBOOK_TEMP_RE = re.compile(r"^(?P<name>.+)\.opsbook\.tmp-[0-9a-f]{16}$")


class FileStorage(common.Storage):
    """Objects as files under an absolute directory; writes are atomic (temp, fsync, rename)."""

    def __init__(self, parsed: common.StorageURL) -> None:
        self.root = Path(parsed.path)
        self.url = parsed.url

    def describe(self) -> str:
        return self.url

    def path_of(self, key: str) -> Path:
        """The file that holds key."""
        return self.root / normalize_key(key)

    def open_writer(self, key: str) -> common.Writer:
        return FileWriter(self, normalize_key(key))

    def open_reader(self, key: str) -> BinaryIO:
        path = self.path_of(key)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"{self._where(key)} does not exist") from None
        except OSError as exc:
            raise StorageError(f"cannot open {self._where(key)}: {exc.strerror}") from exc

    def head(self, key: str) -> dict[str, Any] | None:
        path = self.path_of(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {self._where(key)}: {exc.strerror}") from exc
        if not path.is_file():
            return None
        return {"key": key, "bytes": st.st_size, "sse": None, "modified": _mtime(st.st_mtime)}

    def list(self, prefix: str = "") -> list[common.ObjectInfo]:
        normalize_key(prefix, allow_empty=True, what="prefix")
        return [
            common.ObjectInfo(key, st.st_size, _mtime(st.st_mtime))
            for key, st in self._walk(prefix)
            if not _TEMP_RE.search(key)
        ]

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            raise StorageError(f"{self._where(key)} is a directory, not an object") from None
        except OSError as exc:
            raise StorageError(f"cannot delete {self._where(key)}: {exc.strerror}") from exc
        self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        refuse_empty_prefix(prefix, self.url)
        normalize_key(prefix, allow_empty=True, what="prefix")
        count = 0
        for key, _st in list(self._walk(prefix)):
            path = self.root / key
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot delete {self._where(key)}: {exc.strerror}") from exc
            self._prune_empty_dirs(path.parent)
            count += 0 if _TEMP_RE.search(key) else 1
        return count

    def check_writable(self) -> dict[str, Any]:
        started = time.monotonic()
        key = f"{common.PROBE_PREFIX}{secrets.token_hex(6)}"
        try:
            _makedirs_private(self.root)
            if not self.root.is_dir():
                raise StorageError(f"{self.url} is not writable: {self.root} is not a directory")
            self.put_bytes(key, b"opsbook write probe\n")
            self.delete(key)
        except StorageError as exc:
            raise StorageError(
                f"{self.url} is not writable: {_strip_where(exc, self)}", exc.kind
            ) from exc
        except OSError as exc:
            raise StorageError(f"{self.url} is not writable: {os_reason(exc)}") from exc
        return {"url": self.url, "probe_key": key, "seconds": round(time.monotonic() - started, 3)}

    def incomplete_uploads(self, older_than_s: float) -> list[common.IncompleteUpload]:
        cutoff = time.time() - older_than_s
        found = []
        for key, st in self._walk(""):
            directory, _sep, name = key.rpartition("/")
            match = _OPSBOOK_TEMP_RE.match(name)
            if match is None or st.st_mtime >= cutoff:
                continue
            target = f"{directory}/{match['name']}" if directory else match["name"]
            temp = str(self.root / key)
            found.append(common.IncompleteUpload(target, _mtime(st.st_mtime), temp, "temp_file"))
        return sorted(found, key=lambda item: (item.started, item.key))

    def abort_incomplete(self, item: common.IncompleteUpload) -> None:
        path = Path(item.id)
        # Only a file writer's temporary file of this storage, whatever the item says.
        if item.kind != "temp_file" or not _OPSBOOK_TEMP_RE.match(path.name):
            raise StorageError(f"{self.url}: {item.id} is not an opsbook temporary file")
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            raise StorageError(f"{self.url}: {item.id} is not under {self.root}") from None
        normalize_key(relative.as_posix())
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"{self._where(item.key)}: cannot remove the unfinished write {path}: "
                f"{os_reason(exc)}; it is left as it was"
            ) from exc
        self._prune_empty_dirs(path.parent)

    def cleanup_incomplete(self, older_than: float = 86400.0) -> list[common.IncompleteUpload]:
        items = self.incomplete_uploads(older_than)
        for item in items:
            self.abort_incomplete(item)
        return items

    # --------------------------------------------------- conditional operations
    # create: a complete temporary file hard-linked to the key (link(2) fails when the key
    # exists: exactly one of concurrent creators wins, and a reader never sees a partial
    # object). replace / delete: under an exclusive flock(2) of the key's file, taken on the
    # inode the key names when the lock is granted. The version token is the content's sha256.

    def read_versioned(self, key: str) -> common.Versioned | None:
        path = self.path_of(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except IsADirectoryError:
            raise StorageError(f"{self._where(key)} is a directory, not an object") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self._where(key)}: {os_reason(exc)}") from exc
        return common.Versioned(key, data, content_etag(data))

    def create_bytes(self, key: str, data: bytes) -> dict[str, Any]:
        path = self.path_of(key)
        data = bytes(data)
        temp = self._write_temp(key, path, data)
        try:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise PreconditionFailedError(f"{self._where(key)} already exists") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                    raise StorageError(
                        f"cannot create {self._where(key)}: {os_reason(exc)}"
                    ) from exc
                self._create_exclusive(key, path, data)  # no hard links here: O_EXCL
            _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        return {"key": key, "bytes": len(data), "etag": content_etag(data)}

    def replace_bytes(self, key: str, data: bytes, if_match: str) -> dict[str, Any]:
        path = self.path_of(key)
        data = bytes(data)
        with self._locked(key) as current:
            self._check_version(key, current, if_match, "replace")
            temp = self._write_temp(key, path, data)
            try:
                os.replace(temp, path)
                _fsync_dir(path.parent)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    temp.unlink()
                raise StorageError(f"cannot replace {self._where(key)}: {os_reason(exc)}") from exc
        return {"key": key, "bytes": len(data), "etag": content_etag(data)}

    def delete_if_match(self, key: str, if_match: str) -> None:
        path = self.path_of(key)
        with self._locked(key) as current:
            self._check_version(key, current, if_match, "delete")
            try:
                path.unlink()
                _fsync_dir(path.parent)
            except OSError as exc:
                raise StorageError(f"cannot delete {self._where(key)}: {os_reason(exc)}") from exc

    def _check_version(self, key: str, current: bytes | None, if_match: str, what: str) -> None:
        if current is None:
            raise PreconditionFailedError(f"{self._where(key)}: not {what}d: it does not exist")
        if content_etag(current) != unquote_etag(if_match):
            raise PreconditionFailedError(
                f"{self._where(key)}: not {what}d: it changed (it is no longer version "
                f"{unquote_etag(if_match)[:12]})"
            )

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[bytes | None]:
        """Hold an exclusive flock on the file key names and yield its content (None when it
        does not exist). A replace or delete that happened while we waited for the lock
        leaves us holding a lock on an inode the key no longer names: then start again."""
        if fcntl is None:  # pragma: no cover - not POSIX
            raise ConditionalWriteUnsupportedError(f"{self.url}: no flock(2) on this platform")
        path = self.path_of(key)
        for _attempt in range(1000):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                yield None
                return
            except OSError as exc:
                raise StorageError(f"cannot open {self._where(key)}: {os_reason(exc)}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.fstat(fd)
                try:
                    named = os.stat(path)
                except FileNotFoundError:
                    continue  # deleted while we waited: it does not exist now (next round)
                if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
                    continue  # replaced while we waited
                chunks = []
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
                yield b"".join(chunks)
                return
            finally:
                os.close(fd)  # releases the lock
        raise StorageError(f"{self._where(key)}: could not lock it (it keeps changing)")

    def _write_temp(self, key: str, path: Path, data: bytes) -> Path:
        """A complete, fsynced <key>.opsbook.tmp-<random> beside path."""
        try:
            _makedirs_private(path.parent)
            temp = _temp_path(path)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create {self._where(key)}: {os_reason(exc)}") from exc
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise StorageError(f"cannot write {self._where(key)}: {os_reason(exc)}") from exc
        return temp

    def _create_exclusive(self, key: str, path: Path, data: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise PreconditionFailedError(f"{self._where(key)} already exists") from None
        except OSError as exc:
            raise StorageError(f"cannot create {self._where(key)}: {os_reason(exc)}") from exc
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    # ------------------------------------------------------------ internals

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _walk(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """(key, stat) of every regular file whose key starts with prefix, sorted by key."""
        base_dir = prefix.rpartition("/")[0]
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return
        found = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        st = full.lstat()
                    except FileNotFoundError:
                        continue  # removed while we walked
                    if os.path.isfile(full) and not full.is_symlink():
                        found.append((key, st))
        yield from sorted(found, key=lambda item: item[0])

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove directory and its parents while they are empty (never the root)."""
        root = self.root.resolve()
        current = directory
        while current.resolve() != root and root in current.resolve().parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent


class FileWriter(common.Writer):
    """Writes <key>.opsbook.tmp-<rand> beside the destination; commit() fsyncs and renames
    it."""

    def __init__(self, storage: FileStorage, key: str) -> None:
        self.key = key
        self.bytes_written = 0
        self.result = None
        self._where = f"{storage.url}/{key}"
        self.path = storage.root / key
        self._storage = storage
        self._state = "open"
        try:
            _makedirs_private(self.path.parent)
            self.temp_path = _temp_path(self.path)
            fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._state = "failed"
            raise StorageError(f"cannot create {self._where}: {os_reason(exc)}") from exc
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_open()
        if self._file is None:
            raise AssertionError("self._file is not None")
        try:
            self._file.write(data)
        except OSError as exc:
            self._fail(f"writing failed after {self.bytes_written} bytes", exc)
        n = memoryview(data).nbytes
        self.bytes_written += n
        return n

    def commit(self) -> dict[str, Any]:
        self._check_open()
        if self._file is None:
            raise AssertionError("self._file is not None")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.temp_path, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            self._fail("commit failed", exc)
        self._state = "committed"
        self.result = {"key": self.key, "bytes": self.bytes_written}
        return self.result

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._discard()

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"{self._where}: writer is already {self._state}")

    def _discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        try:
            self.temp_path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"{self._where}: cannot remove the temporary file {self.temp_path}: {exc.strerror}"
            ) from exc
        self._storage._prune_empty_dirs(self.path.parent)  # a backup dir left empty: gone too

    def _fail(self, what: str, exc: OSError) -> NoReturn:
        self._state = "failed"
        note = ""
        try:
            self._discard()
        except StorageError as cleanup:
            note = f"; {cleanup}"
        raise StorageError(f"{self._where}: {what}: {os_reason(exc)}{note}") from exc


def _temp_path(path: Path) -> Path:
    """Where a file writer writes path before renaming it: ``<name>.opsbook.tmp-<16 hex>``
    beside it (never listed; incomplete_uploads() recognises it as opsbook's)."""
    return path.with_name(f"{path.name}{_OPSBOOK_TEMP_SUFFIX}{secrets.token_hex(8)}")


def _makedirs_private(directory: Path) -> None:
    """Create directory and its missing parents with mode 0700 (existing ones are untouched)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename or mkdir in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def content_etag(data: bytes) -> str:
    """The version token of a file:// object: the sha256 of its content."""
    return hashlib.sha256(data).hexdigest()


def _strip_where(exc: StorageError, storage: common.Storage) -> str:
    """The message of exc without a leading '<url>/<key>: ' (the caller names the storage)."""
    message = str(exc)
    head, sep, rest = message.partition(": ")
    return rest if sep and head.startswith(storage.url) else message
