# Copyright: opsbook contributors
# Apache-2.0
"""The ``vault`` secret store: a secret kept in the inventory's ansible-vault file.

The current value is the top-level variable ``<var>``; the pending and previous ones are
``<var>_pending`` and ``<var>_previous``, next to it. The file is encrypted as a whole
(``$ANSIBLE_VAULT;1.1;AES256``, or ``1.2`` with a vault id) or plain YAML (the local
sandbox's).

The file is edited as text, line by line: only the ``key: value`` lines of those three
variables are replaced, inserted (after ``<var>``'s line, or at the end) or removed; every
other byte of the plaintext stays as it was - comments, order, quoting, blank lines, CRLF
line ends, a missing final newline. Values are written on one line, plain when YAML reads
them back as the same string, else single-quoted (double-quoted with escapes when they hold
control characters). The edited text is parsed again and must hold exactly the variables it
held, with only those three changed, before anything is written.

An encrypted file is decrypted and re-encrypted in memory, with the vault secret that
decrypted it and under the same header (format version, cipher, vault id). The only bytes
written are the new ciphertext: to a temporary file in the same directory (mode 0600 as
created, then the file's own mode and owner), flushed, then renamed over the file; the file
is read again just before, and a file that changed since it was read is left alone.

Not edited, refused with what to do: a value that spans lines (``|``, ``>``, a nested
mapping or list, a value continued on the next line), an inline ``!vault`` value or another
YAML tag, anchors and aliases, a variable set twice or not written as a ``key: value`` line
at the start of a line, a value Ansible would read as a template (``{{``, ``{%``, ``{#``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_secret_store import (
    LABELS,
    TEMPLATE_MARKERS,
    SecretRecord,
    SecretStore,
    SecretStoreError,
    iso_time,
)

VAULT_HEADER = b"$ANSIBLE_VAULT;"
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A value written plain when YAML reads it back as the same string (checked as well).
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./+=-][A-Za-z0-9_./+=@:-]*\Z")
# Line breaks YAML knows besides "\n" (and "\r\n"): a file holding one is not edited by lines.
OTHER_BREAKS = re.compile("\r(?!\n)|[\x85\u2028\u2029]")


class FileShapeError(ValueError):
    """The file (or a variable in it) is written in a form the line editor does not edit.
    The message names the variable and the line, never a value."""


class _Tagged(tuple):  # type: ignore[type-arg]
    """A value with a YAML tag (``!vault``, ``!unsafe``...): (tag, value)."""

    __slots__ = ()


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that keeps Ansible's tags (``!vault``, ``!unsafe``) as values."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return _Tagged((f"!{suffix}", value))


_Loader.add_multi_constructor("!", _construct_tagged)


def load_vars(text: str) -> dict[str, Any]:
    """The variables a vars file's text holds (an empty file holds none)."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FileShapeError(f"it is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FileShapeError(f"it holds a {type(data).__name__}, not a mapping of variables")
    return data


def _reads_back(text: str, value: str) -> bool:
    try:
        return yaml.load(f"k: {text}", Loader=_Loader) == {"k": value}
    except yaml.YAMLError:
        return False


def yaml_scalar(value: str) -> str:
    """``value`` as a one-line YAML scalar that reads back as the same string: plain when it
    can be, else single-quoted, else (control characters) double-quoted with escapes."""
    if PLAIN_VALUE.match(value) and not value.endswith(":") and _reads_back(value, value):
        return value
    quoted = "'" + value.replace("'", "''") + "'" if value.isprintable() else json.dumps(value)
    if not _reads_back(quoted, value):  # pragma: no cover - YAML reads both forms back
        raise FileShapeError("the value cannot be written as a one-line YAML string")
    return quoted


def check_writable(key: str, value: str) -> None:
    if any(marker in value for marker in TEMPLATE_MARKERS):
        raise FileShapeError(
            f"the value for {key} holds {{{{, {{% or {{# and Ansible would read it as a "
            "template wherever the variable is used: generate a value without them"
        )


def split_lines(text: str) -> list[str]:
    """The lines of text, each with its line end ("\\n" or "\\r\\n"; none for a last line
    without one)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def line_end(line: str) -> str:
    if line.endswith("\r\n"):
        return "\r\n"
    return "\n" if line.endswith("\n") else ""


@dataclass
class Entry:
    """Where a top-level ``key: value`` line's value is: line ``index``, characters
    ``start``..``end`` of its content (``start == end``: the key has no value written)."""

    key: str
    index: int
    content: str
    eol: str
    start: int
    end: int
    empty: bool


class VarsText:
    """A vars file's plaintext, edited by lines (see the module's docstring)."""

    def __init__(self, text: str) -> None:
        if OTHER_BREAKS.search(text):
            raise FileShapeError(
                "it has line breaks other than \\n and \\r\\n (a bare \\r, NEL, or a Unicode "
                "line or paragraph separator)"
            )
        self.text = text
        self.lines = split_lines(text)
        self.data = load_vars(text)
        self.eol = next((line_end(line) for line in self.lines if line_end(line)), "\n")

    def _content(self, index: int) -> str:
        line = self.lines[index]
        return line[: len(line) - len(line_end(line))]

    def entry(self, key: str) -> Entry | None:
        """The line setting ``key``, checked to be a one-line value this editor rewrites."""
        name = re.escape(key)
        pattern = re.compile(rf"(?:{name}|'{name}'|\"{name}\")[ \t]*:(?=[ \t]|$)")
        found = [i for i in range(len(self.lines)) if pattern.match(self._content(i))]
        if len(found) > 1:
            lines = ", ".join(str(i + 1) for i in found)
            raise FileShapeError(f"{key} is set more than once (lines {lines})")
        if not found:
            if key in self.data:
                raise FileShapeError(
                    f"{key} is not written as a 'key: value' line at the start of a line "
                    "(indented, flow style or a complex key)"
                )
            return None
        index = found[0]
        content = self._content(index)
        colon_end = pattern.match(content).end()  # type: ignore[union-attr]
        rest = content[colon_end:]
        value_text = rest.lstrip(" \t")
        start = colon_end + len(rest) - len(value_text)
        where = f"{key} (line {index + 1})"
        self._refuse_shape(where, value_text)
        empty = value_text == "" or value_text.startswith("#")
        end = start if empty else self._value_end(where, content)
        self._refuse_continuation(where, index)
        alone = load_vars(content).get(key)
        if alone != self.data.get(key):
            raise FileShapeError(f"{where}: its value continues past the line")
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise FileShapeError(
                f"{where} is not a string in the file (YAML reads a {type(value).__name__}): "
                "quote it"
            )
        return Entry(key, index, content, line_end(self.lines[index]), start, end, empty)

    @staticmethod
    def _refuse_shape(where: str, value_text: str) -> None:
        if value_text.startswith("!vault"):
            raise FileShapeError(
                f"{where} is an inline !vault value: this store edits a vault file encrypted "
                "as a whole - move the variable into the encrypted vault file (ansible-vault "
                "decrypt the value, then ansible-vault edit the file) and try again"
            )
        first = value_text[:1]
        reasons = {
            "|": "a multi-line block value (|)",
            ">": "a multi-line block value (>)",
            "!": "a value with a YAML tag",
            "&": "a value with a YAML anchor",
            "*": "a YAML alias",
            "[": "a list, not a string",
            "{": "a mapping, not a string",
        }
        if first in reasons:
            raise FileShapeError(
                f"{where} is {reasons[first]}: this store rewrites one-line string values "
                "only - write it as one line (quoted if needed) and try again"
            )

    @staticmethod
    def _value_end(where: str, content: str) -> int:
        try:
            scalars = [
                token
                for token in yaml.scan(content, Loader=yaml.SafeLoader)
                if isinstance(token, yaml.ScalarToken)
            ]
        except yaml.YAMLError:
            scalars = []
        if len(scalars) != 2:
            raise FileShapeError(f"{where}: its value continues past the line")
        return int(scalars[1].end_mark.index)

    def _refuse_continuation(self, where: str, index: int) -> None:
        for following in range(index + 1, len(self.lines)):
            content = self._content(following)
            if content[:1] not in ("", " ", "\t"):
                return  # the next top-level line (a key, a comment, ---)
            if content.strip() and not content.strip().startswith("#"):
                raise FileShapeError(
                    f"{where} has a value spanning lines (a mapping, a list or a value "
                    "continued on the next line): this store rewrites one-line string values "
                    "only"
                )

    def _set_line(self, entry: Entry, value: str) -> str:
        scalar = yaml_scalar(value)
        content = entry.content
        if entry.empty:
            tail = content[entry.start :]
            head = content[: entry.start]
            text = head + ("" if head.endswith((" ", "\t")) else " ") + scalar
            return text + (" " + tail if tail else "") + entry.eol
        return content[: entry.start] + scalar + content[entry.end :] + entry.eol

    def edit(self, changes: Mapping[str, str | None], order: Sequence[str]) -> str:
        """The text with ``changes`` made (key -> new value, None removes the line). A key
        added goes after the line of the key before it in ``order``, else at the end."""
        entries = {key: self.entry(key) for key in order}
        replaced: dict[int, str | None] = {}
        inserted: dict[int, list[str]] = defaultdict(list)  # after line index; -1: at the end
        anchor = -1
        for key in order:
            entry = entries[key]
            if key not in changes:
                anchor = entry.index if entry is not None else anchor
                continue
            value = changes[key]
            if value is not None:
                check_writable(key, value)
            if entry is not None:
                replaced[entry.index] = None if value is None else self._set_line(entry, value)
                anchor = entry.index if value is not None else anchor
            elif value is not None:
                eol = line_end(self.lines[anchor]) if anchor >= 0 else ""
                inserted[anchor].append(f"{key}: {yaml_scalar(value)}" + (eol or self.eol))
        text = self._assemble(replaced, inserted)
        self._verify(text, changes)
        return text

    def _assemble(self, replaced: dict[int, str | None], inserted: dict[int, list[str]]) -> str:
        out: list[str] = []
        for index, line in enumerate(self.lines):
            new = replaced.get(index, line)
            if new is not None:
                out.append(new)
            out.extend(inserted.get(index, []))
        out.extend(inserted.get(-1, []))
        # Every line but the last ends with a line end; a file that had no final line end
        # and gets a line added at its end keeps having none.
        for index in range(len(out) - 1):
            if not line_end(out[index]):
                out[index] += self.eol
        added_last = bool(inserted.get(-1)) or bool(
            self.lines and inserted.get(len(self.lines) - 1)
        )
        if out and added_last and self.lines and not line_end(self.lines[-1]):
            out[-1] = out[-1][: len(out[-1]) - len(line_end(out[-1]))]
        return "".join(out)

    def _verify(self, text: str, changes: Mapping[str, str | None]) -> None:
        expected = dict(self.data)
        for key, value in changes.items():
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
        try:
            found = load_vars(text)
        except FileShapeError as exc:
            raise FileShapeError(f"the edited file would not read back ({exc})") from None
        if found != expected:
            differ = sorted(
                str(key)
                for key in set(found) | set(expected)
                if found.get(key) != expected.get(key)
            )
            raise FileShapeError(
                "the edited file would not read back as intended (variables that would "
                f"differ: {', '.join(differ)})"
            )


@dataclass
class Envelope:
    """How an encrypted vault file was written, to write it again the same way."""

    version: str
    cipher: str
    vault_id: str | None
    secret: Any  # the VaultSecret that decrypted it
    crlf: bool
    final_newline: bool


def vault_ids(vault_secrets: Any) -> str:
    return ", ".join(str(vault_id) for vault_id, _secret in vault_secrets or []) or "none"


def decrypt_file(raw: bytes, vault_secrets: Any, where: str) -> tuple[bytes, Envelope]:
    """The plaintext of an encrypted vault file (in memory) and its envelope."""
    # Checked first: where no secret was handed over (a module process), Ansible's vault
    # code is not imported at all - importing the controller's code there breaks the module.
    if not vault_secrets:
        raise SecretStoreError(
            f"{where}: the file is vault-encrypted and the run has no vault secret: run "
            "ansible-playbook with --vault-password-file or --vault-id, and the task on the "
            "controller's local connection (delegate_to: localhost, no environment or async), "
            "where the action plugin hands the run's vault secrets to the module; nothing was "
            "changed"
        )
    try:
        from ansible.parsing.vault import VaultLib
    except ImportError:
        raise SecretStoreError(
            f"{where}: the file is vault-encrypted and Ansible's vault code cannot be imported "
            "here: run the task on the controller (delegate_to: localhost); nothing was changed"
        ) from None
    try:
        plaintext, _vault_id, secret = VaultLib(vault_secrets).decrypt_and_get_vault_id(raw)
    except Exception:  # AnsibleError and its kin: no secret fits, or a damaged file
        raise SecretStoreError(
            f"{where}: none of the run's vault secrets (vault ids: "
            f"{vault_ids(vault_secrets)}) decrypts the file, or it is damaged; nothing was "
            "changed"
        ) from None
    header = raw.split(b"\n", 1)[0].strip().split(b";")
    envelope = Envelope(
        version=header[1].decode("ascii").strip(),
        cipher=header[2].decode("ascii").strip(),
        vault_id=header[3].decode("utf-8").strip() if len(header) > 3 else None,
        secret=secret,
        crlf=b"\r\n" in raw,
        final_newline=raw.endswith(b"\n"),
    )
    return bytes(plaintext), envelope


def encrypt_file(plaintext: bytes, envelope: Envelope, where: str) -> bytes:
    """Ciphertext of ``plaintext`` under the same header and secret, checked to decrypt."""
    from ansible.parsing.vault import (
        CIPHER_MAPPING,
        CIPHER_WRITE_ALLOWLIST,
        VaultLib,
        format_vaulttext_envelope,
    )

    if envelope.cipher not in CIPHER_WRITE_ALLOWLIST:
        raise SecretStoreError(
            f"{where}: the file's cipher {envelope.cipher} is not one Ansible writes; "
            "nothing was changed"
        )
    ciphertext = CIPHER_MAPPING[envelope.cipher]().encrypt(plaintext, envelope.secret)
    data = bytes(
        format_vaulttext_envelope(
            ciphertext, envelope.cipher, version=envelope.version, vault_id=envelope.vault_id
        )
    )
    if not envelope.final_newline:
        data = data.rstrip(b"\n")
    if envelope.crlf:
        data = data.replace(b"\n", b"\r\n")
    if bytes(VaultLib([("check", envelope.secret)]).decrypt(data)) != plaintext:
        raise SecretStoreError(  # pragma: no cover - Ansible's own round trip
            f"{where}: the re-encrypted file did not decrypt to the edited text; nothing was "
            "changed"
        )
    return data


def replace_file(path: str, data: bytes, expected: bytes, where: str) -> None:
    """Write ``data`` over ``path`` atomically: a temporary file in the same directory (0600
    as created, then ``path``'s mode and owner), flushed, renamed over ``path`` - unless
    ``path`` no longer holds ``expected``."""
    info = os.stat(path)
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".opsbook-tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), stat.S_IMODE(info.st_mode))
            if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(handle.fileno(), info.st_uid, info.st_gid)
                except PermissionError:
                    raise SecretStoreError(
                        f"{where}: cannot give the rewritten file the owner of the file "
                        f"(uid {info.st_uid}, gid {info.st_gid}): run as that user or root; "
                        "the file was left unchanged"
                    ) from None
            os.fsync(handle.fileno())
        with open(path, "rb") as current:
            if current.read() != expected:
                raise SecretStoreError(
                    f"{where}: the file changed while it was being rewritten (another run or "
                    "an editor?); it was left as that change left it - run again"
                )
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class VaultFileStore(SecretStore):
    """A secret in the inventory's vault file (see the module's docstring)."""

    def __init__(
        self, path: str, var: str, vault_secrets: Any = None, check_mode: bool = False
    ) -> None:
        super().__init__(check_mode)
        if not VAR_NAME.match(var or ""):
            raise SecretStoreError(
                f"vault store: var {var!r} is not a variable name; nothing was changed"
            )
        self.path = path
        self.var = var
        self.keys = (var, f"{var}_pending", f"{var}_previous")
        self.vault_secrets = vault_secrets
        self._raw: bytes | None = None

    def describe(self) -> str:
        return f"vault file {self.path} ({self.var})"

    def _load(self) -> tuple[bytes, VarsText, Envelope | None]:
        where = self.describe()
        real = os.path.realpath(self.path)
        try:
            with open(real, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raise SecretStoreError(
                f"{where}: the file does not exist; nothing was changed"
            ) from None
        except OSError as exc:
            raise SecretStoreError(
                f"{where}: cannot read the file ({exc.strerror}); nothing was changed"
            ) from None
        envelope = None
        plaintext = raw
        if raw.startswith(VAULT_HEADER):
            plaintext, envelope = decrypt_file(raw, self.vault_secrets, where)
        try:
            text = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretStoreError(f"{where}: the file is not UTF-8; nothing was changed") from None
        try:
            return raw, VarsText(text), envelope
        except FileShapeError as exc:
            raise SecretStoreError(f"{where}: {exc}; nothing was changed") from None

    def read(self) -> SecretRecord:
        raw, doc, envelope = self._load()
        self._raw = raw
        values: dict[str, str | None] = {}
        meta: dict[str, Any] = {}
        for label, key in zip(LABELS, self.keys, strict=True):
            try:
                entry = doc.entry(key)
            except FileShapeError as exc:
                raise SecretStoreError(f"{self.describe()}: {exc}; nothing was changed") from None
            values[label] = None if entry is None else doc.data.get(key)
            meta[label] = {"variable": key, **({"line": entry.index + 1} if entry else {})}
        modified = os.stat(os.path.realpath(self.path)).st_mtime
        meta["store"] = {
            "file": self.path,
            "encrypted": envelope is not None,
            "vault_id": envelope.vault_id if envelope else None,
            "format": f"{envelope.version};{envelope.cipher}" if envelope else "plain YAML",
            "modified": iso_time(datetime.fromtimestamp(modified, UTC)),
        }
        record = SecretRecord(values["current"], values["pending"], values["previous"], meta)
        self.last_record = record
        return record

    def _write(self, action: str, before: SecretRecord, after: SecretRecord) -> None:
        where = self.describe()
        raw, doc, envelope = self._load()
        if raw != self._raw:
            raise SecretStoreError(
                f"{where}: the file changed since it was read; nothing was changed - run again"
            )
        old, new = before.values(), after.values()
        changes = {
            key: new[label]
            for label, key in zip(LABELS, self.keys, strict=True)
            if new[label] != old[label]
        }
        try:
            text = doc.edit(changes, self.keys)
        except FileShapeError as exc:
            raise SecretStoreError(f"{where}: {action}: {exc}; nothing was changed") from None
        plaintext = text.encode("utf-8")
        data = plaintext if envelope is None else encrypt_file(plaintext, envelope, where)
        # The only write: ciphertext, when the file is encrypted (tests hold it to that).
        replace_file(os.path.realpath(self.path), data, raw, where)
