#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""app_release: releases of an app on a host - install, switch `current` atomically, roll back."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_release
short_description: Releases of an app on a host - install, atomic switch, mark, rollback, prune
description:
  - "Manages the release layout under O(deploy_root):
    C(releases/<release_id>/) (one unpacked artifact each, with its metadata file
    C(.opsbook-release.json)), C(current) (a symlink to C(releases/<release_id>)), C(shared/)
    (files that outlive releases, linked into each release) and C(.opsbook/) (the host's
    activation history C(history.json) and the lock file)."
  - "O(action=install) unpacks the archive O(archive) (a C(.tar.gz) already on the host) into
    C(releases/.<release_id>.partial), after verifying its sha256 against O(sha256); replaces
    each O(shared_paths) entry by a link to C(shared/<path>); writes the metadata (status
    C(installed)) and renames the directory into place. A failed install leaves nothing behind
    (no partial directory, no seeded shared path, C(current) untouched). The same release id
    with the same sha256 is left as it is (C(changed=false)); the same id with another sha256
    fails."
  - "O(action=activate) switches C(current) to the release atomically: a new symlink is made
    next to C(current) and renamed over it (one rename replaces the link in one step, so a
    reader always finds C(current) pointing at a complete release, the old one or the new
    one, never missing). The deploy root is fsynced afterwards."
  - "O(action=mark) sets a release's status: C(good) (it passed its health gate) or C(failed)."
  - "O(action=rollback) switches C(current) back. Without O(to) the target is the newest
    C(good) release deployed B(before) the release C(current) points at - read from the link,
    not the newest directory - and the release rolled back from is marked C(rolled_back), so a
    second rollback goes one further back. With O(to) (a release id, else a version) that
    release is the target."
  - "O(action=prune) applies O(keep_releases): the newest O(keep_releases) releases with status
    C(good), C(installed) or C(unmanaged) are kept, older ones are removed; C(current) and the
    previous good release (the rollback target) are never removed; C(failed) and
    C(rolled_back) releases do not count towards O(keep_releases) (they are kept while newer
    than the oldest kept release, at most O(keep_releases) of them); a C(failed) release that
    was never activated is always removed. Leftovers of killed installs
    (C(releases/.*.partial)) are removed too."
  - "O(action=remove) removes one release that is not C(current) (a release that failed
    before activation)."
  - "O(action=info) reports everything and changes nothing."
  - "A release directory without metadata (put there by hand or by an older tool) is reported
    with status C(unmanaged). When C(current) is switched away from such a release it is
    adopted (metadata written, status C(good): it was serving) so that a rollback can return
    to it."
  - "Every action that writes holds an exclusive lock (C(flock) on C(.opsbook/lock)), so two
    runs on one host cannot interleave. Runs on the host with the Python standard library only."
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
options:
  deploy_root:
    description:
      - The app's deploy root on the host (the inventory's C(deploy_root)).
    type: path
    required: true
  action:
    description:
      - What to do; see the description.
    type: str
    required: true
    choices: [info, install, activate, mark, rollback, prune, remove]
  release_id:
    description:
      - The release (its directory name under C(releases/)); required by O(action=install),
        O(action=activate), O(action=mark) and O(action=remove).
      - Letters, digits and C(. _ + -), starting with a letter or digit, at most 128 characters.
    type: str
  src:
    description:
      - O(action=install) - path B(on the controller) of the release artifact. The action
        plugin sends it into the task's temporary directory on the host (one transfer) and
        the module installs it from there and deletes it (as O(archive) with
        O(remove_archive=true)). Nothing is sent in check mode.
      - Give O(src) or O(archive), not both.
    type: path
  archive:
    description:
      - O(action=install) - path B(on the host) of the release artifact, a C(.tar.gz) (or
        C(.tar), C(.tar.bz2), C(.tar.xz)). Use O(src) for an artifact on the controller.
      - Members must be regular files, directories or symlinks staying inside the release;
        absolute paths and C(..) are refused.
    type: path
  sha256:
    description:
      - O(action=install) - expected sha256 (hex) of O(archive), verified on the host before
        anything is unpacked. Also recorded in the metadata and used to decide whether an
        existing release with the same id is the same release.
    type: str
  version:
    description:
      - O(action=install) - the app version the release holds (recorded in the metadata).
    type: str
  strip_components:
    description:
      - O(action=install) - leading path components to strip from the archive's members (like
        C(tar --strip-components)); 1 for an archive holding one top-level directory.
    type: int
    default: 0
  shared_paths:
    description:
      - O(action=install) - paths inside the release (relative) replaced by a symlink to
        C(<deploy_root>/shared/<path>).
      - When C(shared/<path>) does not exist yet it is seeded with what the artifact holds at
        that path, or created as an empty directory when the artifact holds nothing there.
    type: list
    elements: str
    default: []
  metadata:
    description:
      - Extra facts about the release (C(git_sha), C(deployed_by), C(reason), C(run_id), C(env),
        C(artifact_src) ...). O(action=install) stores them in the release's metadata file;
        O(action=activate), O(action=rollback) and O(action=mark) record them in the history
        entry they write.
      - The module's own keys (C(release_id), C(version), C(sha256), C(status), C(deployed_at),
        C(activated_at), ...) cannot be overridden.
    type: dict
    default: {}
  status:
    description:
      - O(action=mark) - the release's new status.
    type: str
    choices: [good, failed]
  to:
    description:
      - O(action=rollback) - the target, a release id or a version (the newest release with
        that version). Without it, the newest good release deployed before the current one.
    type: str
  keep_releases:
    description:
      - O(action=prune) - how many good/installed releases to keep (at least 1).
    type: int
    default: 5
  remove_archive:
    description:
      - O(action=install) - delete O(archive) afterwards (installed, already installed or
        failed), so that a deploy needs no separate clean-up task on the host.
    type: bool
    default: false
  prune:
    description:
      - O(action=mark) - apply O(keep_releases) in the same call, after the status is set
        (what O(action=prune) does), so that marking a release good and pruning the old ones
        cost one module run per host.
    type: bool
    default: false
  lock_timeout_s:
    description:
      - Seconds to wait for another opsbook run on this host to release the lock.
    type: float
    default: 60
attributes:
  check_mode:
    support: full
    description: Every action reports what it would do (C(changed), RV(msg), RV(removed),
      RV(from)/RV(to)) and writes nothing. O(action=install) verifies the archive's sha256 when
      the archive is already on the host. O(action=activate) and O(action=mark) of a release
      that is not installed report the change with a warning (an earlier task of the same
      run would have installed it) instead of failing.
  diff_mode:
    description: No diff is produced.
    support: none
  action:
    support: full
    description: C(action_plugins/app_release.py) checks the arguments on the controller
      against this module's spec, and sends O(src). The module itself runs on the host with
      the Python standard library only (no AnsiballZ), and refuses to run without its action
      plugin.
  platform:
    support: full
    description: The app hosts (their Python 3 standard library only).
    platforms: posix
notes:
  - Idempotent - installing the same release id and sha256 again, activating the current
    release, marking a release with its status, pruning when nothing is beyond the limit or
    removing a missing release change nothing. O(action=rollback) is not idempotent by design
    (each one goes one release further back); use O(to) to name the target.
  - C(current) is a relative symlink (C(releases/<id>)), so the deploy root can move.
seealso:
  - module: opsbook.runbooks.app_process
    description: Restart the app so that it runs the release C(current) points at.
  - module: opsbook.runbooks.release_artifact
    description: Fetch and verify the artifact on the controller.
"""

EXAMPLES = r"""
- name: Unpack release 2.3.0-1a2b3c4d (the artifact was copied to the host first)
  app_release:
    deploy_root: /srv/app
    action: install
    release_id: 2.3.0-1a2b3c4d
    archive: /srv/app/.opsbook/artifacts/1a2b3c4d....tar.gz
    sha256: 1a2b3c4d5e6f...
    version: 2.3.0
    shared_paths: [log, config/settings.json]
    metadata:
      git_sha: 0f3c2e1
      deployed_by: alice
      reason: release 2.3.0
      run_id: "{{ lookup('env', 'OPSBOOK_RUN_ID') }}"

- name: Switch current to it
  app_release:
    deploy_root: /srv/app
    action: activate
    release_id: 2.3.0-1a2b3c4d
  register: activation

- name: Record that it passed the health gate
  app_release:
    deploy_root: /srv/app
    action: mark
    release_id: 2.3.0-1a2b3c4d
    status: good

- name: Roll back to the previous good release
  app_release:
    deploy_root: /srv/app
    action: rollback
  register: rollback

- name: Keep five releases
  app_release:
    deploy_root: /srv/app
    action: prune
    keep_releases: 5

- name: What is on the host
  app_release:
    deploy_root: /srv/app
    action: info
  register: releases
"""

RETURN = r"""
current:
  description: The release C(current) points at after the action (null when there is none).
  returned: always
  type: str
  sample: 2.3.0-1a2b3c4d
current_version:
  description: Its version.
  returned: always
  type: str
  sample: 2.3.0
previous_good:
  description: The newest good release deployed before C(current) - where a rollback without
    O(to) goes (null when there is none).
  returned: always
  type: str
  sample: 2.2.1-9f8e7d6c
releases:
  description: Every release, oldest first (by C(deployed_at)), with its metadata.
  returned: always
  type: list
  elements: dict
  sample:
    - release_id: 2.3.0-1a2b3c4d
      version: 2.3.0
      sha256: 1a2b3c4d5e6f...
      status: good
      deployed_at: "2024-05-01T12:00:00.123456Z"
      activated_at: "2024-05-01T12:00:03.456789Z"
      managed: true
      current: true
      path: /srv/app/releases/2.3.0-1a2b3c4d
      git_sha: 0f3c2e1
      deployed_by: alice
release:
  description: The release the action was about (after the action), when there is one.
  returned: when a release is named or chosen
  type: dict
previous:
  description: O(action=activate) - the release C(current) pointed at before (null when none).
  returned: action=activate
  type: str
from:
  description: O(action=rollback) - the release rolled back from.
  returned: action=rollback
  type: str
to:
  description: O(action=rollback) - the release rolled back to.
  returned: action=rollback
  type: str
removed:
  description: O(action=prune) / O(action=remove) - what was (or, in check mode, would be)
    removed, with the reason.
  returned: action=prune or action=remove
  type: list
  elements: dict
  sample: [{release_id: 2.0.0-aa11bb22, reason: "beyond keep_releases=5"}]
adopted:
  description: Releases without metadata that this action adopted (metadata written).
  returned: when one was adopted
  type: list
  elements: str
history:
  description: O(action=info) - the last activations on this host, oldest first.
  returned: action=info
  type: list
  elements: dict
msg:
  description: What was done (or would be done in check mode).
  returned: always
  type: str
  sample: "current switched from 2.2.1-9f8e7d6c to 2.3.0-1a2b3c4d"
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tarfile
import time
import zlib
from datetime import datetime, timezone
from typing import Any

METADATA_FILE = ".opsbook-release.json"
STATE_DIR = ".opsbook"
HISTORY_FILE = "history.json"
LOCK_FILE = "lock"
RELEASES = "releases"
CURRENT = "current"
SHARED = "shared"
PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1
HISTORY_LIMIT = 500
STATUS_HISTORY_LIMIT = 50

STATUS_INSTALLED = "installed"
STATUS_GOOD = "good"
STATUS_FAILED = "failed"
STATUS_ROLLED_BACK = "rolled_back"
STATUS_UNMANAGED = "unmanaged"
# Statuses that count towards keep_releases.
COUNTED = (STATUS_GOOD, STATUS_INSTALLED, STATUS_UNMANAGED)

RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RESERVED_KEYS = frozenset(
    {
        "format_version",
        "release_id",
        "version",
        "sha256",
        "status",
        "status_changed_at",
        "status_history",
        "deployed_at",
        "activated_at",
        "first_activated_at",
        "activations",
        "archive_bytes",
        "shared_paths",
        "seeded_shared_paths",
        "adopted",
        "managed",
        "current",
        "path",
    }
)
CHUNK = 1 << 20


class ReleaseError(Exception):
    """An action cannot be done; the message says what and what was left unchanged."""


# --------------------------------------------------------------------------- helpers


def utc_now() -> str:
    """ISO 8601 UTC with microseconds (sorts in time order)."""
    now = datetime.now(timezone.utc)  # noqa: UP017 - hosts may run Python < 3.11
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_from_timestamp(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, timezone.utc)  # noqa: UP017
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_of(path: str) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON to path atomically: temp file in the same dir, fsync, rename, fsync dir."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def read_json(path: str) -> Any:
    with open(path) as handle:
        return json.load(handle)


def remove_tree(path: str) -> None:
    """Remove a file, a symlink or a directory tree (nothing when missing)."""
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def normalize_relative(path: str, what: str) -> str:
    """A clean relative path ('a/b'), or ReleaseError."""
    if not isinstance(path, str) or not path.strip():
        raise ReleaseError(f"{what}: an empty path is not allowed")
    if path.startswith("/"):
        raise ReleaseError(f"{what} {path!r}: must be relative")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise ReleaseError(f"{what} {path!r}: must name something inside the release")
    if ".." in parts:
        raise ReleaseError(f"{what} {path!r}: '..' is not allowed")
    return "/".join(parts)


def release_id_errors(release_id: str | None) -> str | None:
    if not release_id:
        return "release_id is required"
    if not RELEASE_ID_RE.match(release_id) or release_id.endswith(PARTIAL_SUFFIX):
        return (
            f"release_id {release_id!r} is invalid: letters, digits and '. _ + -', "
            "starting with a letter or digit, at most 128 characters, "
            f"not ending in {PARTIAL_SUFFIX}"
        )
    return None


# --------------------------------------------------------------------------- layout


class Release:
    """One directory under releases/ and its metadata (None when unmanaged)."""

    def __init__(self, release_id: str, path: str, meta: dict[str, Any] | None, mtime: float):
        self.release_id = release_id
        self.path = path
        self.meta = meta
        self.mtime = mtime

    @property
    def managed(self) -> bool:
        return self.meta is not None

    @property
    def status(self) -> str:
        if self.meta is None:
            return STATUS_UNMANAGED
        return str(self.meta.get("status") or STATUS_INSTALLED)

    @property
    def version(self) -> str | None:
        if self.meta is not None and self.meta.get("version"):
            return str(self.meta["version"])
        try:
            with open(os.path.join(self.path, "VERSION")) as handle:
                return handle.read().strip() or None
        except OSError:
            return None

    @property
    def sha256(self) -> str | None:
        return None if self.meta is None else self.meta.get("sha256")

    @property
    def deployed_at(self) -> str:
        if self.meta is not None and self.meta.get("deployed_at"):
            return str(self.meta["deployed_at"])
        return iso_from_timestamp(self.mtime)

    @property
    def activated_at(self) -> str | None:
        return None if self.meta is None else self.meta.get("activated_at")

    @property
    def ever_activated(self) -> bool:
        if self.meta is None:
            return True  # unknown history: assume it served
        return bool(self.meta.get("first_activated_at") or self.meta.get("activated_at"))

    def sort_key(self) -> tuple[str, str]:
        return (self.deployed_at, self.release_id)

    def describe(self, current: str | None) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.meta or {})
        data.update(
            release_id=self.release_id,
            version=self.version,
            sha256=self.sha256,
            status=self.status,
            deployed_at=self.deployed_at,
            activated_at=self.activated_at,
            managed=self.managed,
            current=self.release_id == current,
            path=self.path,
        )
        data.pop("status_history", None)
        return data

    def label(self) -> str:
        return f"{self.release_id} ({self.status})"


class Layout:
    """Paths under deploy_root and reading the state they hold."""

    def __init__(self, deploy_root: str) -> None:
        self.root = os.path.abspath(deploy_root)
        self.releases = os.path.join(self.root, RELEASES)
        self.current = os.path.join(self.root, CURRENT)
        self.shared = os.path.join(self.root, SHARED)
        self.state = os.path.join(self.root, STATE_DIR)
        self.history = os.path.join(self.state, HISTORY_FILE)
        self.lock = os.path.join(self.state, LOCK_FILE)

    def release_path(self, release_id: str) -> str:
        return os.path.join(self.releases, release_id)

    def partial_path(self, release_id: str) -> str:
        return os.path.join(self.releases, f".{release_id}{PARTIAL_SUFFIX}")

    def link_target(self, release_id: str) -> str:
        """What `current` holds for release_id: a relative link."""
        return f"{RELEASES}/{release_id}"

    # ---- reading

    def read_meta(self, release_id: str) -> dict[str, Any] | None:
        path = os.path.join(self.release_path(release_id), METADATA_FILE)
        try:
            data = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ReleaseError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ReleaseError(f"{path} does not hold a JSON object")
        return data

    def releases_list(self) -> list[Release]:
        """Every release directory, oldest first (deployed_at, then id)."""
        found = []
        try:
            names = os.listdir(self.releases)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith("."):
                continue
            path = self.release_path(name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            found.append(Release(name, path, self.read_meta(name), st.st_mtime))
        return sorted(found, key=Release.sort_key)

    def current_state(self) -> tuple[str | None, str | None]:
        """(release id `current` points at or None, a problem or None)."""
        if not os.path.lexists(self.current):
            return None, None
        if not os.path.islink(self.current):
            return None, f"{self.current} exists but is not a symlink"
        target = os.readlink(self.current)
        resolved = os.path.realpath(self.current)
        if os.path.dirname(resolved) != os.path.realpath(self.releases):
            return None, f"{self.current} points at {target}, outside {self.releases}"
        if not os.path.isdir(resolved):
            return None, f"{self.current} points at {target}, which does not exist"
        return os.path.basename(resolved), None

    def read_history(self) -> list[dict[str, Any]]:
        try:
            data = read_json(self.history)
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []
        entries = data.get("activations") if isinstance(data, dict) else None
        return list(entries) if isinstance(entries, list) else []

    def partials(self) -> list[str]:
        try:
            names = os.listdir(self.releases)
        except FileNotFoundError:
            return []
        return sorted(
            os.path.join(self.releases, n)
            for n in names
            if n.startswith(".") and (n.endswith(PARTIAL_SUFFIX) or ".removing-" in n)
        )


@contextlib.contextmanager
def host_lock(layout: Layout, timeout_s: float):
    """Exclusive flock on <deploy_root>/.opsbook/lock (created when missing)."""
    os.makedirs(layout.state, mode=0o755, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise ReleaseError(
                        f"another opsbook run holds {layout.lock} (waited {timeout_s:.0f} s); "
                        "nothing was changed"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- archive


def _member_name(member: tarfile.TarInfo, strip: int) -> str | None:
    """The member's path inside the release, or None when stripped away entirely."""
    name = member.name
    if name.startswith("/"):
        raise ReleaseError(f"archive member {name!r}: absolute paths are not allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ReleaseError(f"archive member {name!r}: '..' is not allowed")
    parts = parts[strip:]
    return "/".join(parts) if parts else None


def _inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    path = os.path.realpath(path)
    return path == root or path.startswith(root + os.sep)


def extract_archive(archive: str, target: str, strip: int = 0) -> int:
    """Unpack archive into the existing directory target, safely; return the member count.

    Regular files, directories and symlinks whose target stays inside the release only;
    setuid/setgid/sticky bits are dropped. Every file is fsynced.
    """
    count = 0
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError) as exc:
        raise ReleaseError(f"cannot open {archive} as a tar archive: {exc}") from exc
    with tar:
        try:
            for member in tar:
                name = _member_name(member, strip)
                if name is None:
                    continue
                if name == METADATA_FILE:
                    raise ReleaseError(f"archive member {member.name!r}: reserved name")
                dest = os.path.join(target, name)
                parent = os.path.dirname(dest)
                os.makedirs(parent, mode=0o755, exist_ok=True)
                if not _inside(target, parent):
                    raise ReleaseError(
                        f"archive member {member.name!r}: would be written outside the release "
                        "(through a symlink)"
                    )
                if member.isdir():
                    if os.path.islink(dest) or (os.path.exists(dest) and not os.path.isdir(dest)):
                        os.unlink(dest)
                    os.makedirs(dest, mode=0o755, exist_ok=True)
                    os.chmod(dest, (member.mode & 0o777) | 0o700)
                elif member.isfile():
                    _extract_file(tar, member, dest)
                elif member.issym():
                    link = member.linkname
                    resolved = os.path.normpath(os.path.join(os.path.dirname(name), link))
                    if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                        raise ReleaseError(
                            f"archive member {member.name!r}: symlink to {link!r} "
                            "leaves the release"
                        )
                    remove_tree(dest)
                    os.symlink(link, dest)
                else:
                    kind = "hard link" if member.islnk() else "special file"
                    raise ReleaseError(f"archive member {member.name!r}: a {kind} is not allowed")
                count += 1
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            # the target named: a full disk is the deploy root's, not the archive's
            raise ReleaseError(f"cannot unpack {archive} into {target}: {exc}") from exc
    if count == 0:
        raise ReleaseError(f"{archive} holds no files (strip_components={strip})")
    return count


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
    if os.path.lexists(dest):
        remove_tree(dest)
    source = tar.extractfile(member)
    if source is None:
        raise ReleaseError(f"archive member {member.name!r} cannot be read")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(dest, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            fd = -1
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    os.chmod(dest, member.mode & 0o777)
    with contextlib.suppress(OSError):
        os.utime(dest, (member.mtime, member.mtime))


# --------------------------------------------------------------------------- the actions


class ReleaseManager:
    """The actions; each returns the module result (without the common fields)."""

    def __init__(self, params: dict[str, Any], check_mode: bool) -> None:
        self.params = params
        self.check = check_mode
        self.layout = Layout(params["deploy_root"])
        self.adopted: list[str] = []
        self.warnings: list[str] = []

    # ---- shared pieces

    def state(self) -> tuple[list[Release], str | None]:
        current, problem = self.layout.current_state()
        if problem:
            self.warnings.append(problem)
        return self.layout.releases_list(), current

    def find(self, releases: list[Release], release_id: str) -> Release | None:
        for release in releases:
            if release.release_id == release_id:
                return release
        return None

    def require(self, releases: list[Release], release_id: str) -> Release:
        release = self.find(releases, release_id)
        if release is None:
            have = ", ".join(r.label() for r in releases) or "none"
            raise ReleaseError(
                f"release {release_id} is not installed in {self.layout.releases} "
                f"(releases: {have}); nothing was changed"
            )
        return release

    @staticmethod
    def previous_good(releases: list[Release], current: str | None) -> Release | None:
        """The newest good release deployed before the current one."""
        if current is None:
            return None
        ids = [r.release_id for r in releases]
        if current not in ids:
            return None
        before = releases[: ids.index(current)]
        for release in reversed(before):
            if release.status == STATUS_GOOD:
                return release
        return None

    def history_metadata(self) -> dict[str, Any]:
        meta = self.params.get("metadata") or {}
        keep = ("run_id", "deployed_by", "reason", "env", "operator")
        return {k: meta[k] for k in keep if k in meta}

    def append_history(self, entry: dict[str, Any]) -> None:
        entries = self.layout.read_history()
        entries.append(entry)
        entries = entries[-HISTORY_LIMIT:]
        os.makedirs(self.layout.state, mode=0o755, exist_ok=True)
        write_json_atomic(
            self.layout.history, {"format_version": FORMAT_VERSION, "activations": entries}
        )

    def write_meta(self, release: Release, meta: dict[str, Any]) -> None:
        write_json_atomic(os.path.join(release.path, METADATA_FILE), meta)
        release.meta = meta

    def set_status(self, release: Release, status: str, now: str, served: bool = False) -> None:
        meta = dict(release.meta or self.adoption_meta(release, status, now, served))
        meta["status"] = status
        meta["status_changed_at"] = now
        history = list(meta.get("status_history") or [])
        history.append({"status": status, "at": now, **self.history_metadata()})
        meta["status_history"] = history[-STATUS_HISTORY_LIMIT:]
        self.write_meta(release, meta)

    def adoption_meta(
        self, release: Release, status: str, now: str, served: bool = False
    ) -> dict[str, Any]:
        """Metadata for a release directory opsbook did not install (served: it was current)."""
        since = iso_from_timestamp(release.mtime) if served else None
        return {
            "format_version": FORMAT_VERSION,
            "release_id": release.release_id,
            "version": release.version,
            "sha256": None,
            "status": status,
            "status_changed_at": now,
            "status_history": [{"status": status, "at": now, "note": "adopted"}],
            "deployed_at": iso_from_timestamp(release.mtime),
            "activated_at": since,
            "first_activated_at": since,
            "activations": 1 if served else 0,
            "adopted": now,
        }

    def adopt(self, release: Release, status: str, now: str, served: bool = False) -> None:
        if release.managed:
            return
        self.adopted.append(release.release_id)
        if not self.check:
            self.write_meta(release, self.adoption_meta(release, status, now, served))

    def switch_current(self, release_id: str) -> None:
        """Point `current` at releases/<release_id>: a new symlink renamed over the old one."""
        layout = self.layout
        if os.path.lexists(layout.current) and not os.path.islink(layout.current):
            raise ReleaseError(
                f"{layout.current} exists and is not a symlink; move it away (it is not "
                "a release opsbook manages); nothing was changed"
            )
        tmp = os.path.join(layout.root, f".{CURRENT}.tmp-{secrets.token_hex(6)}")
        os.symlink(layout.link_target(release_id), tmp)
        try:
            os.replace(tmp, layout.current)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(layout.root)

    def record_activation(
        self, release: Release, action: str, previous: str | None, now: str
    ) -> None:
        meta = dict(release.meta or self.adoption_meta(release, release.status, now))
        meta["activated_at"] = now
        meta["first_activated_at"] = meta.get("first_activated_at") or now
        meta["activations"] = int(meta.get("activations") or 0) + 1
        self.write_meta(release, meta)
        self.append_history(
            {
                "action": action,
                "release_id": release.release_id,
                "version": release.version,
                "previous": previous,
                "at": now,
                **self.history_metadata(),
            }
        )

    # ---- info

    def info(self) -> dict[str, Any]:
        self.state()  # collects a warning when current is not a link into releases/
        return {"changed": False, "history": self.layout.read_history()[-20:], "msg": ""}

    # ---- install

    def install(self) -> dict[str, Any]:
        p = self.params
        release_id = p["release_id"]
        sha = p["sha256"]
        releases, _current = self.state()
        existing = self.find(releases, release_id)
        if existing is not None and existing.managed:
            if existing.sha256 == sha:
                return {
                    "changed": False,
                    "release_id": release_id,
                    "msg": f"release {release_id} is already installed with sha256 {sha} "
                    f"(status {existing.status})",
                }
            raise ReleaseError(
                f"release {release_id} is already installed with another artifact "
                f"(sha256 {existing.sha256}, not {sha}); a release id names one artifact: "
                "use a new release id; nothing was changed"
            )
        archive = p["archive"]
        archive_present = os.path.isfile(archive)
        if archive_present:
            actual, size = sha256_of(archive)
            if actual != sha:
                raise ReleaseError(
                    f"sha256 mismatch for {archive}: expected {sha}, got {actual}; "
                    "nothing was installed"
                )
        elif not self.check:
            raise ReleaseError(
                f"archive {archive} does not exist on the host; nothing was installed"
            )
        else:
            size = None
        if self.check:
            what = (
                "adopt the existing directory (when its files match the archive) as"
                if existing
                else "install"
            )
            note = "" if archive_present else " (archive not on the host yet: not verified)"
            return {
                "changed": True,
                "release_id": release_id,
                "msg": "would {} release {} (version {}){}".format(
                    what, release_id, p["version"], note
                ),
            }
        return self._install(existing, size or 0)

    def _install(self, existing: Release | None, size: int) -> dict[str, Any]:
        p = self.params
        layout = self.layout
        release_id = p["release_id"]
        os.makedirs(layout.releases, mode=0o755, exist_ok=True)
        os.makedirs(layout.shared, mode=0o755, exist_ok=True)
        partial = layout.partial_path(release_id)
        remove_tree(partial)  # a leftover of a killed install
        created_shared: list[str] = []
        try:
            os.makedirs(partial, mode=0o755)
            extract_archive(p["archive"], partial, p["strip_components"])
            if existing is not None:
                return self._adopt_existing(existing, partial, size)
            seeded = self._link_shared(partial, release_id, created_shared)
            now = utc_now()
            meta = dict(p["metadata"] or {})
            meta.update(
                format_version=FORMAT_VERSION,
                release_id=release_id,
                version=p["version"],
                sha256=p["sha256"],
                status=STATUS_INSTALLED,
                status_changed_at=now,
                status_history=[{"status": STATUS_INSTALLED, "at": now}],
                deployed_at=now,
                activated_at=None,
                first_activated_at=None,
                activations=0,
                archive_bytes=size,
                shared_paths=list(p["shared_paths"]),
                seeded_shared_paths=seeded,
            )
            write_json_atomic(os.path.join(partial, METADATA_FILE), meta)
            os.chmod(partial, 0o755)
            os.rename(partial, layout.release_path(release_id))
            fsync_dir(layout.releases)
        except BaseException as exc:
            left = self._cleanup_failed_install(partial, created_shared)
            if isinstance(exc, ReleaseError):
                raise ReleaseError(f"{exc}; nothing was installed{left}") from exc
            if isinstance(exc, OSError):
                raise ReleaseError(
                    f"install of {release_id} failed: {exc}; nothing was installed{left}"
                ) from exc
            raise
        return {
            "changed": True,
            "release_id": release_id,
            "msg": "release {} (version {}) installed in {}".format(
                release_id, p["version"], layout.release_path(release_id)
            ),
        }

    def _cleanup_failed_install(self, partial: str, created_shared: list[str]) -> str:
        left = []
        for path in [partial, *reversed(created_shared)]:
            try:
                remove_tree(path)
            except OSError as exc:
                left.append(f"{path} ({exc.strerror})")
        return "; could not remove: {}".format(", ".join(left)) if left else ""

    def _link_shared(self, partial: str, release_id: str, created: list[str]) -> list[str]:
        """Replace each shared path in the release by a link into shared/; return those seeded."""
        layout = self.layout
        final = layout.release_path(release_id)
        seeded = []
        for rel in self.params["shared_paths"]:
            in_release = os.path.join(partial, rel)
            in_shared = os.path.join(layout.shared, rel)
            if not _inside(partial, os.path.dirname(in_release)):
                raise ReleaseError(f"shared path {rel!r} resolves outside the release")
            os.makedirs(os.path.dirname(in_release), mode=0o755, exist_ok=True)
            has_content = os.path.lexists(in_release)
            if not os.path.lexists(in_shared):
                self._make_parents(os.path.dirname(in_shared), created)
                if has_content:
                    os.rename(in_release, in_shared)
                    seeded.append(rel)
                else:
                    os.mkdir(in_shared, 0o755)
                created.append(in_shared)
            elif has_content:
                remove_tree(in_release)
            link = os.path.relpath(in_shared, os.path.dirname(os.path.join(final, rel)))
            os.symlink(link, in_release)
        return seeded

    @staticmethod
    def _make_parents(path: str, created: list[str]) -> None:
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            os.mkdir(directory, 0o755)
            created.append(directory)

    def _adopt_existing(self, existing: Release, partial: str, size: int) -> dict[str, Any]:
        """An unmanaged directory named like the release: adopt it when it matches the archive."""
        p = self.params
        differences = compare_trees(partial, existing.path, ignore=set(p["shared_paths"]))
        remove_tree(partial)
        if differences:
            raise ReleaseError(
                "{} exists, is not managed by opsbook (no {}) and differs from the archive "
                "({}); move it away or use another release id".format(
                    existing.path, METADATA_FILE, "; ".join(differences[:5])
                )
            )
        now = utc_now()
        meta = self.adoption_meta(existing, STATUS_INSTALLED, now)
        meta.update(dict(p["metadata"] or {}))
        meta.update(
            version=p["version"],
            sha256=p["sha256"],
            archive_bytes=size,
            shared_paths=[],
        )
        self.write_meta(existing, meta)
        self.adopted.append(existing.release_id)
        return {
            "changed": True,
            "release_id": existing.release_id,
            "msg": f"release {existing.release_id} was already unpacked (unmanaged, "
            "identical to the archive): adopted, metadata written",
        }

    # ---- activate

    def not_installed_yet(self, release_id: str) -> str:
        """Check mode: a release an earlier task of the same run would have installed."""
        self.warnings.append(
            f"release {release_id} is not installed: check mode assumes an earlier task of "
            "this run installs it (a real run fails here otherwise)"
        )
        return f" (release {release_id} is not installed yet)"

    def activate(self) -> dict[str, Any]:
        release_id = self.params["release_id"]
        releases, current = self.state()
        if self.check and self.find(releases, release_id) is None:
            note = self.not_installed_yet(release_id)
            return {
                "changed": True,
                "previous": current,
                "release_id": release_id,
                "msg": f"would be: current switched from {current or '(none)'} to "
                f"{release_id}{note}",
            }
        release = self.require(releases, release_id)
        if current == release_id:
            return {
                "changed": False,
                "previous": current,
                "release_id": release_id,
                "msg": f"release {release_id} is already current",
            }
        if release.status in (STATUS_FAILED, STATUS_ROLLED_BACK):
            self.warnings.append(
                f"activating release {release_id} whose status is {release.status}"
            )
        now = utc_now()
        old = self.find(releases, current) if current else None
        if old is not None:
            self.adopt(old, STATUS_GOOD, now, served=True)
        if not self.check:
            self.switch_current(release_id)
            self.record_activation(release, "activate", current, now)
        return {
            "changed": True,
            "previous": current,
            "release_id": release_id,
            "msg": "{}current switched from {} to {}".format(
                "would be: " if self.check else "", current or "(none)", release_id
            ),
        }

    # ---- mark

    def mark(self) -> dict[str, Any]:
        release_id = self.params["release_id"]
        status = self.params["status"]
        releases, _current = self.state()
        if self.check and self.find(releases, release_id) is None:
            note = self.not_installed_yet(release_id)
            return {
                "changed": True,
                "release_id": release_id,
                "msg": f"would be: release {release_id} marked {status}{note}",
            }
        release = self.require(releases, release_id)
        if release.status == status:
            return {
                "changed": False,
                "release_id": release_id,
                "msg": f"release {release_id} is already {status}",
            }
        before = release.status
        if not self.check:
            if not release.managed:
                self.adopted.append(release_id)
            self.set_status(release, status, utc_now())
        return {
            "changed": True,
            "release_id": release_id,
            "msg": "{}release {} marked {} (was {})".format(
                "would be: " if self.check else "", release_id, status, before
            ),
        }

    # ---- rollback

    def rollback(self) -> dict[str, Any]:
        to = self.params.get("to")
        releases, current = self.state()
        if current is None:
            raise ReleaseError(
                f"no release is current in {self.layout.root}, nothing to roll back from; "
                "nothing was changed"
            )
        source = self.require(releases, current)
        target = self._rollback_target(releases, current, to)
        if target.release_id == current:
            return {
                "changed": False,
                "from": current,
                "to": current,
                "release_id": current,
                "msg": f"release {current} ({to}) is already current",
            }
        if target.status in (STATUS_FAILED, STATUS_ROLLED_BACK, STATUS_UNMANAGED):
            self.warnings.append(
                f"rolling back to release {target.release_id} whose status is {target.status}"
            )
        now = utc_now()
        if not self.check:
            if not source.managed:
                self.adopted.append(source.release_id)
            self.switch_current(target.release_id)
            self.set_status(source, STATUS_ROLLED_BACK, now, served=True)
            self.record_activation(target, "rollback", current, now)
        return {
            "changed": True,
            "from": current,
            "to": target.release_id,
            "release_id": target.release_id,
            "msg": "{}rolled back from {} to {}".format(
                "would be: " if self.check else "", current, target.label()
            ),
        }

    def _rollback_target(self, releases: list[Release], current: str, to: str | None) -> Release:
        have = ", ".join(r.label() for r in releases)
        if to:
            exact = self.find(releases, to)
            if exact is not None:
                return exact
            same_version = [r for r in releases if r.version == to]
            good = [r for r in same_version if r.status == STATUS_GOOD]
            chosen = (good or same_version)[-1:] if same_version else []
            if chosen:
                return chosen[0]
            raise ReleaseError(
                f"no release id or version {to!r} in {self.layout.releases} "
                f"(releases: {have}); nothing was changed"
            )
        target = self.previous_good(releases, current)
        if target is None:
            raise ReleaseError(
                f"no good release was deployed before the current one ({current}) - "
                f"nothing to roll back to (releases, oldest first: {have}); name one with "
                "`to`; nothing was changed"
            )
        return target

    # ---- prune and remove

    def prune_plan(self, releases: list[Release], current: str | None) -> list[dict[str, str]]:
        keep = self.params["keep_releases"]
        previous = self.previous_good(releases, current)
        protected = {current, previous.release_id if previous else None}
        counted = uncounted = 0
        plan = []
        for release in reversed(releases):  # newest first
            rid = release.release_id
            status = release.status
            if status == STATUS_FAILED and not release.ever_activated and rid != current:
                plan.append({"release_id": rid, "reason": "failed before activation"})
                continue
            if status in COUNTED:
                counted += 1
                if counted > keep and rid not in protected:
                    plan.append({"release_id": rid, "reason": f"beyond keep_releases={keep}"})
            elif rid not in protected:
                uncounted += 1
                if counted >= keep:
                    reason = f"{status}, older than the {keep} kept releases"
                elif uncounted > keep:
                    reason = f"{status}, beyond the {keep} newest failed/rolled back releases"
                else:
                    continue
                plan.append({"release_id": rid, "reason": reason})
        return plan

    def prune(self) -> dict[str, Any]:
        releases, current = self.state()
        plan = self.prune_plan(releases, current)
        partials = self.layout.partials()
        if not self.check:
            for item in plan:
                self._remove_dir(self.layout.release_path(item["release_id"]))
            for path in partials:
                remove_tree(path)
        if not plan and not partials:
            return {"changed": False, "removed": [], "msg": "nothing to prune"}
        names = ", ".join(i["release_id"] for i in plan) or "no release"
        extra = f" and {len(partials)} leftover partial dir(s)" if partials else ""
        return {
            "changed": True,
            "removed": plan,
            "removed_partials": partials,
            "msg": "{}removed {}{}".format("would have " if self.check else "", names, extra),
        }

    def remove(self) -> dict[str, Any]:
        release_id = self.params["release_id"]
        releases, current = self.state()
        release = self.find(releases, release_id)
        partial = self.layout.partial_path(release_id)
        if release is None:
            if os.path.lexists(partial):
                if not self.check:
                    remove_tree(partial)
                return {"changed": True, "removed": [], "msg": f"removed leftover {partial}"}
            return {
                "changed": False,
                "removed": [],
                "msg": f"release {release_id} is not installed",
            }
        if release_id == current:
            raise ReleaseError(
                f"release {release_id} is current; activate or roll back to another release first; "
                "nothing was changed"
            )
        if not self.check:
            self._remove_dir(release.path)
        return {
            "changed": True,
            "removed": [{"release_id": release_id, "reason": f"asked (status {release.status})"}],
            "msg": "{}removed release {}".format("would have " if self.check else "", release_id),
        }

    def _remove_dir(self, path: str) -> None:
        """Rename out of the releases namespace first, so a half-removed release is never listed."""
        doomed = os.path.join(
            os.path.dirname(path),
            f".{os.path.basename(path)}.removing-{secrets.token_hex(4)}",
        )
        os.rename(path, doomed)
        shutil.rmtree(doomed)


def compare_trees(new: str, old: str, ignore: set[str]) -> list[str]:
    """Differences between two unpacked trees (paths, types, file contents)."""

    def walk(root: str) -> dict[str, tuple[str, str]]:
        found = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if rel == METADATA_FILE or rel.split("/")[0] in ignore:
                    continue
                if os.path.islink(full):
                    found[rel] = ("link", os.readlink(full))
                elif os.path.isdir(full):
                    found[rel] = ("dir", "")
                else:
                    found[rel] = ("file", sha256_of(full)[0])
        return found

    a, b = walk(new), walk(old)
    out = [f"{k} only in the archive" for k in sorted(set(a) - set(b))]
    out += [f"{k} not in the archive" for k in sorted(set(b) - set(a))]
    out += [f"{k} differs" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return out


# --------------------------------------------------------------------------- module


REQUIRED_BY_ACTION = {
    "install": ("release_id", "archive", "sha256", "version"),
    "activate": ("release_id",),
    "mark": ("release_id", "status"),
    "remove": ("release_id",),
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "deploy_root": {"type": "path", "required": True},
        "action": {
            "type": "str",
            "required": True,
            "choices": ["info", "install", "activate", "mark", "rollback", "prune", "remove"],
        },
        "release_id": {"type": "str"},
        "archive": {"type": "path"},
        "sha256": {"type": "str"},
        "version": {"type": "str"},
        "strip_components": {"type": "int", "default": 0},
        "shared_paths": {"type": "list", "elements": "str", "default": []},
        "metadata": {"type": "dict", "default": {}},
        "status": {"type": "str", "choices": ["good", "failed"]},
        "to": {"type": "str"},
        "keep_releases": {"type": "int", "default": 5},
        "remove_archive": {"type": "bool", "default": False},
        "prune": {"type": "bool", "default": False},
        "lock_timeout_s": {"type": "float", "default": 60.0},
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    """Check and normalize the inputs; return the problems found."""
    errors = []
    action = params["action"]
    for name in REQUIRED_BY_ACTION.get(action, ()):
        if params.get(name) in (None, ""):
            errors.append(f"{name} is required with action={action}")
    if params.get("release_id"):
        problem = release_id_errors(params["release_id"])
        if problem:
            errors.append(problem)
    if params.get("sha256"):
        sha = str(params["sha256"]).strip().lower()
        if not SHA256_RE.match(sha):
            errors.append("sha256 must be 64 hex digits, got {!r}".format(params["sha256"]))
        params["sha256"] = sha
    if params["keep_releases"] < 1:
        errors.append(f"keep_releases must be at least 1, got {params['keep_releases']}")
    if params["strip_components"] < 0:
        errors.append("strip_components must be >= 0")
    shared = []
    for path in params.get("shared_paths") or []:
        try:
            shared.append(normalize_relative(path, "shared path"))
        except ReleaseError as exc:
            errors.append(str(exc))
    params["shared_paths"] = shared
    reserved = sorted(set(params.get("metadata") or {}) & RESERVED_KEYS)
    if reserved:
        errors.append("metadata may not set the module's own keys: {}".format(", ".join(reserved)))
    if not os.path.isabs(params["deploy_root"]):
        errors.append(
            "deploy_root must be an absolute path, got {!r}".format(params["deploy_root"])
        )
    return errors


def summary(manager: ReleaseManager) -> dict[str, Any]:
    """current, current_version, previous_good and releases, as they are now."""
    releases, current = manager.layout.releases_list(), manager.layout.current_state()[0]
    cur = manager.find(releases, current) if current else None
    previous = ReleaseManager.previous_good(releases, current)
    return {
        "current": current,
        "current_version": cur.version if cur else None,
        "previous_good": previous.release_id if previous else None,
        "releases": [r.describe(current) for r in releases],
    }


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Do the action; return the result (raises ReleaseError)."""
    manager = ReleaseManager(params, check_mode)
    action = params["action"]
    handler = getattr(manager, action)
    needs_lock = action == "install" or os.path.isdir(manager.layout.root)
    try:
        if action == "info" or check_mode or not needs_lock:
            result = handler()
        else:
            with host_lock(manager.layout, params["lock_timeout_s"]):
                result = handler()
                if action == "mark" and params.get("prune"):
                    pruned = manager.prune()
                    result["changed"] = result["changed"] or pruned["changed"]
                    result["removed"] = pruned.get("removed", [])
                    result["msg"] = f"{result['msg']}; prune: {pruned['msg']}"
    finally:
        archive = params.get("archive")
        if action == "install" and params.get("remove_archive") and archive and not check_mode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(archive)
    result.update(summary(manager))
    release_id = result.pop("release_id", None)
    if release_id:
        found = [r for r in result["releases"] if r["release_id"] == release_id]
        result["release"] = found[0] if found else None
    if manager.adopted:
        result["adopted"] = manager.adopted
    result["warnings_"] = manager.warnings
    return result


# ---------------------------------------------------------------- host side of the protocol
# Ansible puts the task's arguments here (a "jsonargs" module): they were already checked
# against argument_spec() on the controller by action_plugins/app_release.py.
ANSIBLE_ARGS = r"""<<INCLUDE_ANSIBLE_MODULE_JSON_ARGS>>"""


def host_params(raw: str, spec: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(params, check_mode) from the JSON arguments; path options expanded here, on the host."""
    if raw.startswith("<<") or not json.loads(raw).get("_opsbook_checked"):
        raise SystemExit(
            exit_json(
                {
                    "failed": True,
                    "msg": "app_release runs through its action plugin "
                    "(action_plugins/app_release.py): add the project's action_plugins to "
                    "Ansible's action plugin path",
                }
            )
        )
    args = json.loads(raw)
    params: dict[str, Any] = {}
    for key, option in spec.items():
        value = args.get(key)
        if value is None:
            value = option.get("default")
        if value is not None and option.get("type") == "path":
            value = os.path.expanduser(os.path.expandvars(str(value)))
        params[key] = value
    return params, bool(args.get("_ansible_check_mode"))


def exit_json(result: dict[str, Any]) -> int:
    """Print the result for Ansible; the exit status (1 when failed)."""
    result.setdefault("changed", False)
    print(json.dumps(result, default=str))
    return 1 if result.get("failed") else 0


def main() -> int:
    params, check_mode = host_params(ANSIBLE_ARGS, argument_spec())
    errors = validate_params(params)
    if errors:
        return exit_json(
            {"failed": True, "msg": "app_release: invalid input: " + "; ".join(errors)}
        )
    action = params["action"]
    try:
        result = run(params, check_mode)
    except ReleaseError as exc:
        return exit_json({"failed": True, "msg": f"app_release {action}: {exc}"})
    except OSError as exc:
        return exit_json(
            {
                "failed": True,
                "msg": "app_release {}: {} ({}); see the deploy root {}".format(
                    action, exc.strerror or exc, getattr(exc, "filename", ""), params["deploy_root"]
                ),
            }
        )
    except Exception as exc:  # a report, not a traceback the controller cannot read
        return exit_json({"failed": True, "msg": f"app_release {action}: unexpected error {exc!r}"})
    warnings = result.pop("warnings_", [])
    if warnings:
        result["warnings"] = warnings
    return exit_json(result)


if __name__ == "__main__":
    sys.exit(main())
