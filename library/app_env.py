#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""app_env: read and edit the app hosts' env file (<deploy_root>/shared/.env), atomically."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_env
short_description: Read or change keys of the app's env file, atomically, reporting fingerprints
description:
  - "Reads and edits the env file the app reads at start (C(<deploy_root>/shared/.env) by
    default): O(set) adds or replaces keys, O(remove) deletes keys. Every other line (comments,
    blank lines, other keys) and the order of the lines are kept byte for byte; a replaced key
    keeps its line, its C(export) prefix and its inline comment. Without O(set) and O(remove)
    the module only reads."
  - "Values are never returned or shown, only their fingerprints: C(sha256:) and the first 12
    hex digits of the SHA-256 of the value's UTF-8 bytes (the rule every opsbook secret module
    shares). O(return_values=true) is the one exception, for a task that must pass a value on:
    that task must be C(no_log: true)."
  - "B(Compare-and-set.) O(expect) names the fingerprint each key must have before the change
    (or C(\"\") for a key that must be absent). When one does not match, nothing is written and
    the task fails naming the key and both fingerprints - unless the file already holds exactly
    what O(set) and O(remove) would produce (an interrupted run applied them): then the task
    is ok and unchanged. Without O(set) and O(remove), a mismatch always fails (a check)."
  - "B(File format.) One C(KEY=value) per line; C(#) comments and blank lines. Reading accepts
    an C(export ) prefix, blanks around C(=), double-quoted values (C(\\\\) and C(\\\") are
    escapes, any other backslash is kept as it is), single-quoted values (no escapes), and
    unquoted values (up to a C(#) that follows a blank, blanks around them dropped). A key
    given twice holds its last value. A value is written unquoted when it matches
    C([A-Za-z0-9_./:@+=,-]*), else double-quoted with C(\\\\) and C(\\\") escaped. A line that
    is none of these fails the task (its number is given, never its text): the module cannot
    know what the app would read from it."
  - "B(Writes are atomic.) A temporary file is created (mode 0600, C(O_EXCL)) in the file's
    directory, written, fsync'd and renamed over the file, then the directory is fsync'd. A
    reader sees the old file or the new one, never a part. The owner and group of an existing
    file are kept; the mode is always 0600 (a looser mode is tightened, on a read too, and
    reported). Temporary files a killed run left (the file's name, hidden, then C(.app_env-),
    hex digits and C(.tmp): C(.env.app_env-*.tmp) for C(.env)) are removed and reported.
    Writers on one host are serialized by a lock on the file's directory."
  - "When the path is a symbolic link (a release's C(.env) pointing into C(shared/)), the file
    it points at is written; the link is never replaced."
  - Python standard library only (runs on the app hosts' C(/usr/bin/python3)).
version_added: "0.3.0"
author:
  - opsbook maintainers (@opsbook)
options:
  deploy_root:
    description:
      - The app's deploy root (C(current), C(releases/), C(shared/)); must exist.
    type: path
    required: true
  path:
    description:
      - The env file, relative to O(deploy_root) or absolute. Its directory must exist; a
        missing file is created.
    type: str
    default: shared/.env
  set:
    description:
      - "Keys to set, C(KEY: value). An absent key is added at the end of the file, a present
        one is replaced in place (a later duplicate of it is removed)."
      - Names match C(^[A-Za-z_][A-Za-z0-9_]*$); values are strings without NUL, carriage
        return or newline. A bad name or value fails the task, naming the key, before
        anything is written.
    type: dict
  remove:
    description:
      - Keys to remove (every line of each). A key that is absent is fine.
    type: list
    elements: str
  expect:
    description:
      - "Compare-and-set precondition: C(KEY: fingerprint) the key's value must have now, or
        C(\"\") when the key must be absent (see the description)."
    type: dict
  keys:
    description:
      - The keys reported in RV(fingerprints) (and RV(values)). Default - every key of
        O(set) and O(remove); for a read, every key in the file.
    type: list
    elements: str
  return_values:
    description:
      - "Also return RV(values), the values of the reported keys. The task must be
        C(no_log: true)."
    type: bool
    default: false
  lock_timeout_s:
    description:
      - Seconds to wait for another run's write of the same directory to finish.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    description: Reports what would change (RV(changed_keys), RV(fingerprints) after the
      change, RV(mode_fixed), RV(stale_removed)); writes, removes and chmods nothing.
  diff_mode:
    support: full
    description: "The file before and after, every value masked: C(KEY=********) followed by
      its fingerprint in parentheses, so a reviewer sees which keys change, never a value. A
      commented-out assignment is masked too."
  action:
    support: full
    description: C(action_plugins/app_env.py) checks the arguments on the controller against
      this module's spec and refuses to send O(set) over a connection that does not pipeline
      (the arguments would be written to a temporary file on the host). The module itself
      runs on the host with the Python standard library only (no AnsiballZ), and refuses to
      run without its action plugin.
  platform:
    support: full
    description: The app hosts (their Python 3 standard library only).
    platforms: posix
notes:
  - A file the module creates gets the owner and group of its directory when the module runs
    as root (the app user that owns C(shared/) can read it), else the user's own.
  - The app reads its env file when it starts; restart it (M(opsbook.runbooks.app_process),
    M(opsbook.runbooks.app_service))
    for a change to take effect.
seealso:
  - module: opsbook.runbooks.app_process
  - module: opsbook.runbooks.app_service
"""

EXAMPLES = r"""
- name: Install the pending JWT secret, keep the current one as previous (compare-and-set)
  app_env:
    deploy_root: /srv/app
    set:
      JWT_SECRET: "{{ jwt_pending }}"
      JWT_SECRET_PREVIOUS: "{{ jwt_current }}"
    remove: [JWT_SECRET_PENDING]
    expect:
      JWT_SECRET: "{{ jwt_current_fingerprint }}"
  no_log: true

- name: Fingerprints of every key in the file (read only)
  app_env:
    deploy_root: /srv/app
  register: env_now

- name: Retire the previous secret after the grace period
  app_env:
    deploy_root: /srv/app
    remove: [JWT_SECRET_PREVIOUS]

- name: Read one value to pass it on (the task and its result stay out of the logs)
  app_env:
    deploy_root: /srv/app
    keys: [JWT_SECRET_PENDING]
    return_values: true
  register: pending
  no_log: true
"""

RETURN = r"""
path:
  description: The file read or written (symbolic links resolved).
  returned: always
  type: str
  sample: /srv/app/shared/.env
fingerprints:
  description: For each reported key (O(keys)), the fingerprint of its value after the change
    (in check mode, as it would be), or null when it is absent.
  returned: always
  type: dict
  sample: {"JWT_SECRET": "sha256:5f2b4c8e9a01", "JWT_SECRET_PENDING": null}
changed_keys:
  description: The keys whose lines were (or would be) added, replaced or removed, sorted.
  returned: always
  type: list
  elements: str
  sample: [JWT_SECRET, JWT_SECRET_PREVIOUS]
mode_fixed:
  description: True when the file's mode was not 0600 and was (or would be) set to 0600.
  returned: always
  type: bool
stale_removed:
  description: Temporary files of an earlier killed run that were (or would be) removed.
  returned: always
  type: list
  elements: str
values:
  description: "The values of the reported keys (null when absent). Only with
    O(return_values=true); such a task must be C(no_log: true)."
  returned: when O(return_values=true)
  type: dict
msg:
  description: What happened, without values.
  returned: always
  type: str
  sample: "updated /srv/app/shared/.env: JWT_SECRET, JWT_SECRET_PREVIOUS changed"
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import sys
import time
import traceback
from typing import Any, NamedTuple

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
UNQUOTED_RE = re.compile(r"[A-Za-z0-9_./:@+=,-]*\Z")
FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{12}\Z")
# indent, optional `export`, the key and `=` with blanks around it
HEAD_RE = re.compile(r"([ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=)[ \t]*")
# what may follow a quoted value: blanks and an optional comment
TAIL_RE = re.compile(r"[ \t]*(?:#.*)?\Z")
# an assignment commented out (masked in the diff like a live one)
COMMENTED_RE = re.compile(r"([ \t]*#[ \t]*(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_]*[ \t]*=)(.*)\Z")
INLINE_COMMENT_RE = re.compile(r"[ \t]+#")
FORBIDDEN_IN_VALUE = {"\0": "NUL", "\r": "CR", "\n": "LF"}
MODE = 0o600
MASK = "********"
TMP_INFIX = ".app_env-"
TMP_SUFFIX = ".tmp"


class EnvFileError(Exception):
    """Bad input or a file the module cannot handle; the message holds no value."""


def fingerprint(value: str) -> str:
    """The shared rule: "sha256:" + the first 12 hex digits of SHA-256 of the UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def quote(value: str) -> str:
    """The value as written: unquoted when it is made of safe characters, else double-quoted."""
    if UNQUOTED_RE.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- the file's lines


class EnvLine(NamedTuple):
    """One line: text (without its ending) and ending ("\\n", "\\r\\n" or "" at the end of a
    file without a final newline). An assignment also has key, value, and head / tail: the text
    before the value (indent, export, key, =) and after it (blanks, an inline comment)."""

    text: str
    ending: str
    key: str | None = None
    value: str | None = None
    head: str = ""
    tail: str = ""

    def render(self) -> str:
        return self.text + self.ending

    def with_value(self, value: str) -> EnvLine:
        """This line holding value (the same line, byte for byte, when it already does)."""
        if value == self.value:
            return self
        return self._replace(text=self.head + quote(value) + self.tail, value=value)

    def masked(self) -> str:
        """The line as the diff shows it: the value replaced by the mask and its fingerprint."""
        if self.key is not None and self.value is not None:
            return f"{self.head}{MASK} ({fingerprint(self.value)}){self.tail}{self.ending}"
        commented = COMMENTED_RE.match(self.text)
        if commented and commented.group(2).strip():
            return f"{commented.group(1)}{MASK}{self.ending}"
        return self.render()


def _unescape_double(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and body[i + 1] in '\\"':
            out.append(body[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _closing_quote(rest: str) -> int:
    """Index of the unescaped double quote closing rest (which starts with one), or -1."""
    i = 1
    while i < len(rest):
        if rest[i] == "\\":
            i += 2
            continue
        if rest[i] == '"':
            return i
        i += 1
    return -1


def parse_line(text: str, ending: str, number: int) -> EnvLine:
    """One line (without its ending); EnvFileError naming the line number when malformed."""
    stripped = text.strip(" \t")
    if not stripped or stripped.startswith("#"):
        return EnvLine(text, ending)
    head = HEAD_RE.match(text)
    if not head:
        raise EnvFileError(f"line {number} is not KEY=value, a comment or a blank line")
    key = head.group(2)
    rest = text[head.end() :]
    if rest.startswith('"'):
        close = _closing_quote(rest)
        if close < 0:
            raise EnvFileError(f"line {number} ({key}): the double-quoted value is not closed")
        value = _unescape_double(rest[1:close])
        tail = rest[close + 1 :]
    elif rest.startswith("'"):
        close = rest.find("'", 1)
        if close < 0:
            raise EnvFileError(f"line {number} ({key}): the single-quoted value is not closed")
        value = rest[1:close]
        tail = rest[close + 1 :]
    elif rest.startswith("#") and head.end() > head.end(1):  # `KEY= # note`: empty, a comment
        return EnvLine(text, ending, key, "", head.group(1), text[head.end(1) :])
    else:
        comment = INLINE_COMMENT_RE.search(rest)
        raw = rest[: comment.start()] if comment else rest
        value = raw.rstrip(" \t")
        tail = rest[len(value) :]
        return EnvLine(text, ending, key, value, text[: head.end()], tail)
    if not TAIL_RE.match(tail):
        raise EnvFileError(f"line {number} ({key}): text after the closing quote")
    return EnvLine(text, ending, key, value, text[: head.end()], tail)


def parse_env(text: str) -> list[EnvLine]:
    """Every line of the file's text; render_env(parse_env(text)) == text."""
    lines = []
    for number, match in enumerate(re.finditer(r"[^\n]*\n|[^\n]+\Z", text), start=1):
        chunk = match.group(0)
        if chunk.endswith("\r\n"):
            body, ending = chunk[:-2], "\r\n"
        elif chunk.endswith("\n"):
            body, ending = chunk[:-1], "\n"
        else:
            body, ending = chunk, ""
        lines.append(parse_line(body, ending, number))
    return lines


def render_env(lines: list[EnvLine]) -> str:
    return "".join(line.render() for line in lines)


def render_masked(lines: list[EnvLine]) -> str:
    return "".join(line.masked() for line in lines)


def env_values(lines: list[EnvLine]) -> dict[str, str]:
    """KEY -> value as the app reads them (a key given twice holds its last value)."""
    values: dict[str, str] = {}
    for line in lines:
        if line.key is not None and line.value is not None:
            values[line.key] = line.value
    return values


def key_lines(lines: list[EnvLine]) -> dict[str, list[str]]:
    """KEY -> the text of each of its lines (what changed_keys compares)."""
    out: dict[str, list[str]] = {}
    for line in lines:
        if line.key is not None:
            out.setdefault(line.key, []).append(line.text)
    return out


def apply_changes(
    lines: list[EnvLine], to_set: dict[str, str], to_remove: list[str]
) -> list[EnvLine]:
    """The lines after set (in place, or appended in the order given) and remove."""
    removed = set(to_remove)
    out: list[EnvLine] = []
    done: set[str] = set()
    for line in lines:
        key = line.key
        if key is not None and key in removed:
            continue
        if key is not None and key in to_set:
            if key not in done:  # a later duplicate would override the new value: dropped
                done.add(key)
                out.append(line.with_value(to_set[key]))
            continue
        out.append(line)
    missing = [key for key in to_set if key not in done]
    if missing:
        newline = next((line.ending for line in reversed(lines) if line.ending), "\n")
        if out and not out[-1].ending:
            out[-1] = out[-1]._replace(ending=newline)
        for key in missing:
            value = to_set[key]
            out.append(EnvLine(f"{key}={quote(value)}", newline, key, value, f"{key}=", ""))
    return out


# --------------------------------------------------------------------------- inputs


class Request:
    """The task's inputs, checked (names, values, fingerprints) before the file is touched."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.to_set = self._set(params.get("set") or {})
        self.to_remove = self._names("remove", params.get("remove") or [])
        self.expect = self._expect(params.get("expect") or {})
        self.keys = self._names("keys", params["keys"]) if params.get("keys") is not None else None
        self.return_values = bool(params.get("return_values"))
        both = sorted(set(self.to_set) & set(self.to_remove))
        if both:
            raise EnvFileError(f"{', '.join(both)} both in set and in remove")

    @property
    def writes(self) -> bool:
        return bool(self.to_set or self.to_remove)

    @staticmethod
    def _name(option: str, key: Any) -> str:
        if not isinstance(key, str) or not KEY_RE.match(key):
            shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
            raise EnvFileError(
                f"{option}: {shown} is not a valid key name (^[A-Za-z_][A-Za-z0-9_]*$)"
            )
        return key

    def _names(self, option: str, keys: Any) -> list[str]:
        if not isinstance(keys, list):
            raise EnvFileError(f"{option} must be a list of key names")
        return list(dict.fromkeys(self._name(option, key) for key in keys))

    def _set(self, mapping: Any) -> dict[str, str]:
        if not isinstance(mapping, dict):
            raise EnvFileError("set must be a dict of KEY: value")
        out = {}
        for key, value in mapping.items():
            self._name("set", key)
            if not isinstance(value, str):
                raise EnvFileError(
                    f"set: the value of {key} is a {type(value).__name__}, not a string "
                    "(quote it, or add | string)"
                )
            bad = [name for char, name in FORBIDDEN_IN_VALUE.items() if char in value]
            if bad:
                raise EnvFileError(
                    f"set: the value of {key} contains {' and '.join(bad)} (not allowed in an "
                    "env file line)"
                )
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise EnvFileError(f"set: the value of {key} is not valid Unicode text") from None
            out[key] = value
        return out

    def _expect(self, mapping: Any) -> dict[str, str]:
        if not isinstance(mapping, dict):
            raise EnvFileError('expect must be a dict of KEY: fingerprint (or "")')
        out = {}
        for key, wanted in mapping.items():
            self._name("expect", key)
            if not isinstance(wanted, str) or not (wanted == "" or FINGERPRINT_RE.match(wanted)):
                raise EnvFileError(
                    f'expect: {key} must be a fingerprint (sha256: and 12 hex digits) or "" '
                    "for absent; what was given is not shown (it may be a value)"
                )
            out[key] = wanted
        return out


# --------------------------------------------------------------------------- the file


def _read(path: str) -> tuple[str | None, os.stat_result | None]:
    """(text, stat) of the file; (None, None) when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise EnvFileError(f"{path}: too many levels of symbolic links") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EnvFileError(f"{path} is not a regular file")
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8"), info
    except UnicodeDecodeError as exc:
        raise EnvFileError(f"{path} is not UTF-8 (byte {exc.start})") from None


def temporary_prefix(name: str) -> str:
    """What the name of a temporary file for the file `name` starts with (hidden)."""
    return ("" if name.startswith(".") else ".") + name + TMP_INFIX


def stale_temporaries(directory: str, name: str) -> list[str]:
    """Temporary files of this module for the file `name` left in directory by a killed run."""
    pattern = re.compile(
        re.escape(temporary_prefix(name)) + r"[0-9a-f]+" + re.escape(TMP_SUFFIX) + r"\Z"
    )
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, e) for e in entries if pattern.match(e))


def write_atomically(path: str, text: str, old: os.stat_result | None) -> None:
    """Replace path with text: a 0600 temporary file beside it, fsync'd, renamed over it (then
    fsync_directory). An existing file's owner and group are kept; a new file gets the
    directory's when running as root."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, temporary_prefix(name) + secrets.token_hex(6) + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    try:
        try:
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            owner = old if old is not None else (os.stat(directory) if os.geteuid() == 0 else None)
            mine = os.fstat(fd)
            if owner is not None and (owner.st_uid, owner.st_gid) != (mine.st_uid, mine.st_gid):
                try:
                    os.fchown(fd, owner.st_uid, owner.st_gid)
                except PermissionError:
                    raise EnvFileError(
                        f"cannot give the new {path} the owner {owner.st_uid}:{owner.st_gid} of "
                        f"the old one (running as uid {os.geteuid()}); run as that user or "
                        "with become"
                    ) from None
            os.fchmod(fd, MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_directory(directory: str) -> None:
    """Make a rename in directory durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def directory_lock(directory: str, timeout_s: float):
    """An exclusive flock on the directory: one writer (and stale-file sweep) at a time."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
                    raise EnvFileError(
                        f"another run is writing in {directory} (waited {timeout_s:g} s)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the module's work


class EnvFile:
    """One run: the plan (what the file holds, what it would hold) and, unless in check mode,
    the change."""

    def __init__(self, params: dict[str, Any], check_mode: bool, diff_mode: bool = False) -> None:
        self.request = Request(params)
        self.check = check_mode
        self.diff = diff_mode
        root = params["deploy_root"]
        if not os.path.isabs(root):
            raise EnvFileError(f"deploy_root must be absolute, got {root!r}")
        if not os.path.isdir(root):
            raise EnvFileError(f"deploy_root {root} is not a directory")
        self.root = root
        given = params.get("path") or "shared/.env"
        self.given = given if os.path.isabs(given) else os.path.join(root, given)
        self.path = os.path.realpath(self.given)
        self.directory, self.name = os.path.split(self.path)
        timeout = params.get("lock_timeout_s")
        self.lock_timeout = 30.0 if timeout is None else float(timeout)
        self.acted = False  # something on disk changed (for a failure's `changed`)
        self.written = False  # the new file is in place
        self.reapplied = False  # expect did not match but set/remove were already applied

    def run(self) -> dict[str, Any]:
        if self.request.writes and not os.path.isdir(self.directory):
            raise EnvFileError(
                f"the directory {self.directory} of {self.given} does not exist (it is not "
                "created here)"
            )
        if self.check or not os.path.isdir(self.directory):
            return self._run()
        with directory_lock(self.directory, self.lock_timeout):
            return self._run()

    def _run(self) -> dict[str, Any]:
        request = self.request
        text, info = _read(self.path)
        try:
            before = parse_env(text or "")
        except EnvFileError as exc:
            raise EnvFileError(f"{self.path}: {exc}") from None
        after = apply_changes(before, request.to_set, request.to_remove)
        new_text = render_env(after)
        self._compare(before, new_text != (text or ""))
        writes = request.writes and new_text != (text or "")  # no empty file for a remove
        old_mode = stat.S_IMODE(info.st_mode) if info is not None else None
        mode_fixed = old_mode is not None and old_mode != MODE
        stale = stale_temporaries(self.directory, self.name)
        old_lines, new_lines = key_lines(before), key_lines(after)
        changed_keys = sorted(
            key
            for key in set(request.to_set) | set(request.to_remove)
            if old_lines.get(key) != new_lines.get(key)
        )
        if not self.check:
            for leftover in stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
                    self.acted = True
            if writes:
                write_atomically(self.path, new_text, info)
                self.acted = self.written = True
                fsync_directory(self.directory)
            elif mode_fixed:
                os.chmod(self.path, MODE)
                self.acted = True
        result: dict[str, Any] = {
            "changed": bool(writes or mode_fixed or stale),
            "path": self.path,
            "changed_keys": changed_keys,
            "mode_fixed": mode_fixed,
            "stale_removed": stale,
        }
        values = env_values(after)
        keys = request.keys
        if keys is None:
            keys = list(request.to_set) + request.to_remove if request.writes else list(values)
        result["fingerprints"] = {
            key: fingerprint(values[key]) if key in values else None for key in keys
        }
        if request.return_values:
            result["values"] = {key: values.get(key) for key in keys}
        if self.diff and result["changed"]:
            result["diff"] = {
                "before_header": self.path if text is not None else f"{self.path} (absent)",
                "after_header": self.path,
                "before": render_masked(before),
                "after": render_masked(after),
            }
        result["msg"] = self._message(text is None, writes, changed_keys, old_mode, stale)
        return result

    def _compare(self, before: list[EnvLine], would_change: bool) -> None:
        """expect: fail when a key's fingerprint is not the one expected, unless set/remove
        are already applied (an interrupted run re-applied)."""
        if not self.request.expect:
            return
        values = env_values(before)
        wrong = []
        for key, wanted in self.request.expect.items():
            found = fingerprint(values[key]) if key in values else ""
            if found != wanted:
                wrong.append(f"{key} is {found or 'absent'}, expected {wanted or 'absent'}")
        if wrong and (would_change or not self.request.writes):
            raise EnvFileError(f"expect does not match {self.path}: {'; '.join(wrong)}")
        self.reapplied = bool(wrong)

    def _message(
        self,
        created: bool,
        writes: bool,
        changed_keys: list[str],
        old_mode: int | None,
        stale: list[str],
    ) -> str:
        would = "would " if self.check else ""
        if not self.request.writes:
            text = f"read {self.path}" + (" (absent)" if created else "")
        elif writes:
            verb = "create" if created else "update"
            done = f"{verb}d" if not self.check else verb
            text = f"{would}{done} {self.path}: {', '.join(changed_keys)} changed"
        else:
            text = f"{self.path} already holds the requested values"
            if self.reapplied:
                text += " (expect did not match: an earlier run applied them)"
        if old_mode is not None and old_mode != MODE:
            text += f"; mode {old_mode:04o} {'would be ' if self.check else ''}set to 0600"
        if stale:
            removed = "would remove" if self.check else "removed"
            text += f"; {removed} {len(stale)} temporary file(s) of an interrupted run"
        return text


def execute(params: dict[str, Any], check_mode: bool, diff_mode: bool = False) -> dict[str, Any]:
    """The module's work: the result dict (EnvFileError for bad input or an unusable file)."""
    return EnvFile(params, check_mode, diff_mode).run()


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "deploy_root": {"type": "path", "required": True},
        "path": {"type": "str", "default": "shared/.env"},
        "set": {"type": "dict", "no_log": True},
        "remove": {"type": "list", "elements": "str"},
        "expect": {"type": "dict"},
        "keys": {"type": "list", "elements": "str"},
        "return_values": {"type": "bool", "default": False},
        "lock_timeout_s": {"type": "float", "default": 30.0},
    }


# ---------------------------------------------------------------- host side of the protocol
# Ansible puts the task's arguments here (a "jsonargs" module): they were already checked
# against argument_spec() on the controller by action_plugins/app_env.py.
ANSIBLE_ARGS = r"""<<INCLUDE_ANSIBLE_MODULE_JSON_ARGS>>"""
CHECKED_KEY = "_opsbook_checked"


def host_params(raw: str, spec: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool, bool]:
    """(params, check_mode, diff_mode) from the JSON arguments; paths expanded on the host."""
    if raw.startswith("<<") or not json.loads(raw).get(CHECKED_KEY):
        raise SystemExit(
            exit_json(
                {
                    "failed": True,
                    "msg": "app_env runs through its action plugin (action_plugins/app_env.py): "
                    "add the project's action_plugins to Ansible's action plugin path",
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
    return params, bool(args.get("_ansible_check_mode")), bool(args.get("_ansible_diff"))


def exit_json(result: dict[str, Any]) -> int:
    """Print the result for Ansible; the exit status (1 when failed)."""
    result.setdefault("changed", False)
    print(json.dumps(result, default=str))
    return 1 if result.get("failed") else 0


def main(raw: str = ANSIBLE_ARGS) -> int:
    params, check_mode, diff_mode = host_params(raw, argument_spec())
    env_file = None
    try:
        env_file = EnvFile(params, check_mode, diff_mode)
        result = env_file.run()
    except Exception as exc:  # a report, not a traceback the controller cannot read
        if isinstance(exc, (EnvFileError, OSError)):
            what = str(exc)
        else:  # not its text: nothing says it holds no value
            frames = traceback.extract_tb(exc.__traceback__)
            what = f"unexpected error {type(exc).__name__} at line {frames[-1].lineno}"
        return exit_json(
            {
                "failed": True,
                "changed": bool(env_file and env_file.acted),
                "msg": f"app_env: {what}; {left_as(env_file)}",
            }
        )
    return exit_json(result)


def left_as(env_file: EnvFile | None) -> str:
    """What a failed run left: said in every failure message."""
    if env_file is None or not env_file.acted:
        return "nothing was changed"
    if env_file.written:
        return f"the new {env_file.path} is in place"
    return f"{env_file.path} was left as it was"


if __name__ == "__main__":
    sys.exit(main())
