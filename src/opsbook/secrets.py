"""Keeping secret values out of run artifacts and out of the terminal.

Pure logic, no Ansible: which values are secret (by the name they are stored
under - the rules shared with the operation log, ``module_utils/opsbook_secret_names.py`` -
or because they are the password of a DSN, or because they were vault-encrypted), and a
:class:`Scrubber` that redacts them from text, from nested data (runner events) and from
every file of a directory tree, then verifies by a second scan that none is left.

Vault-encrypted data (a whole file, or ``!vault`` values) is decrypted by a ``decrypt``
function the caller gives (the runner builds it from the vault password file with Ansible's
own vault code), in memory only: the plaintext is parsed and its values kept as secrets;
nothing decrypted is ever written. Every value of an encrypted file is a secret, whatever its
name (numbers only under a secret name).

A secret is redacted in the forms it takes on disk: as is, JSON-escaped (once
and twice: runner events embed Ansible's JSON output), YAML single-quoted and
percent-encoded (inside URLs). Passwords of URL DSNs (``scheme://user:PASSWORD@``)
and of libpq keyword DSNs (``password=PASSWORD``) are redacted wherever they
appear, known or not. Values shorter than :data:`MIN_SECRET_LENGTH` are ignored:
redacting "on" or "1" everywhere would destroy the output and protect nothing.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import yaml

from opsbook._secret_names import is_secret_name

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "Decrypt",
    "ScrubReport",
    "Scrubber",
    "dsn_passwords",
    "is_secret_name",
    "is_vaulted",
    "secret_forms",
    "secrets_in_env",
    "secrets_in_inventory",
    "secrets_in_vars",
    "secrets_in_vars_file",
]

REDACTED = "********"
MIN_SECRET_LENGTH = 4

#: Decrypts vault text (``$ANSIBLE_VAULT;...``) to its plaintext; raises when it cannot.
Decrypt = Callable[[bytes], bytes]

_VAULT_HEADER = b"$ANSIBLE_VAULT;"
_VAULT_TAG = re.compile(r"!vault\b")

# scheme://user:PASSWORD@host  (the password: up to '@', no blanks, quotes or '/').
_URL_DSN = r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"<>]*:)([^\s@/'\"<>]+)(?=@)"
# libpq keyword/value DSN: password=PASSWORD or password='PASS WORD'.
_KEYWORD_DSN = r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"&;,)]+)"

_URL_DSN_TEXT = re.compile(_URL_DSN)
_KEYWORD_DSN_TEXT = re.compile(_KEYWORD_DSN, re.IGNORECASE)
_URL_DSN_BYTES = re.compile(_URL_DSN.encode())
_KEYWORD_DSN_BYTES = re.compile(_KEYWORD_DSN.encode(), re.IGNORECASE)

_MAX_INVENTORY_FILE = 1024 * 1024
_INI_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S+)")


def dsn_passwords(text: str) -> set[str]:
    """Passwords found in DSNs inside ``text``, as written and percent-decoded."""
    found: set[str] = set()
    for match in _URL_DSN_TEXT.finditer(text):
        found.update({match.group(2), unquote(match.group(2))})
    for match in _KEYWORD_DSN_TEXT.finditer(text):
        value = match.group(2)
        found.update({value, value.strip("'")})
    return {value for value in found if value != REDACTED}


def _is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def secrets_in_vars(data: Any, *, secret: bool = False) -> set[str]:
    """Secret values in variables: every value stored under a secret-looking name
    (at any depth: ``{"db": {"password": ...}}``), and every DSN password."""
    found: set[str] = set()
    if isinstance(data, Mapping):
        for key, value in data.items():
            found |= secrets_in_vars(value, secret=secret or is_secret_name(str(key)))
    elif isinstance(data, list | tuple | set | frozenset):
        for item in data:
            found |= secrets_in_vars(item, secret=secret)
    elif isinstance(data, str):
        if secret and not _is_template(data):
            found.add(data)
        found |= dsn_passwords(data)
    elif secret and isinstance(data, int | float) and not isinstance(data, bool):
        found.add(str(data))
    return {value for value in found if len(value) >= MIN_SECRET_LENGTH}


def secrets_in_env(environ: Mapping[str, str]) -> set[str]:
    """Secret values in an environment (``AWS_SECRET_ACCESS_KEY``, ``PGPASSWORD``, DSNs...)."""
    return secrets_in_vars(dict(environ))


def is_vaulted(text: str) -> bool:
    """True when ``text`` (a vars file) holds vault-encrypted data: the whole of it, or
    ``!vault`` values."""
    return text.lstrip().startswith(_VAULT_HEADER.decode()) or bool(_VAULT_TAG.search(text))


class _Vaulted(str):
    """The ciphertext of a ``!vault`` value, as the loader found it (not decrypted yet)."""

    __slots__ = ()


class _TolerantLoader(yaml.SafeLoader):
    """Safe YAML loader that accepts Ansible tags (``!vault`` -> :class:`_Vaulted`, others
    -> plain)."""


def _ansible_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if suffix == "vault":
        return (
            _Vaulted(loader.construct_scalar(node)) if isinstance(node, yaml.ScalarNode) else None
        )
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


_TolerantLoader.add_multi_constructor("!", _ansible_tag)


class _VaultReader:
    """Decrypts what one file holds, in memory, and remembers what went wrong (no secret in
    the messages)."""

    def __init__(self, path: Path, decrypt: Decrypt | None, problems: list[str] | None) -> None:
        self.path = path
        self.decrypt = decrypt
        self.problems = problems
        self.plaintexts: set[str] = set()

    def _problem(self, what: str) -> None:
        message = f"{self.path}: {what}: its secrets are unknown to opsbook's scrubber"
        if self.problems is not None and message not in self.problems:
            self.problems.append(message)

    def open(self, vaulttext: str) -> str | None:
        """The plaintext of vault text; None (and a problem noted) when it cannot be read."""
        if self.decrypt is None:
            self._problem("vault-encrypted, and no vault password file was given")
            return None
        try:
            plain = self.decrypt(vaulttext.encode("utf-8")).decode("utf-8", errors="replace")
        except Exception:  # never show why: the message could quote what it was given
            self._problem("vault-encrypted, and the vault password file does not open it")
            return None
        return plain

    def reveal(self, data: Any) -> Any:
        """``data`` with each ``!vault`` value replaced by its plaintext (kept as a secret)."""
        if isinstance(data, _Vaulted):
            plain = self.open(str(data))
            if plain is not None:
                self.plaintexts.add(plain)
            return plain
        if isinstance(data, Mapping):
            return {key: self.reveal(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return [self.reveal(item) for item in data]
        return data


def _strings_in(data: Any) -> set[str]:
    """Every string value (not the keys) of nested data."""
    if isinstance(data, str):
        return {data}
    if isinstance(data, Mapping):
        items: Iterable[Any] = data.values()
    elif isinstance(data, list | tuple):
        items = data
    else:
        return set()
    found: set[str] = set()
    for item in items:
        found |= _strings_in(item)
    return found


def _parse_vars(text: str, yaml_first: bool) -> Any:
    """A vars file's data: YAML/JSON, or ``name=value`` pairs (an INI hosts file)."""
    if yaml_first:
        try:
            data = yaml.load(text, Loader=_TolerantLoader)
        except yaml.YAMLError:
            data = None
        if isinstance(data, Mapping | list):
            return data
    return {name: value.strip("'\"") for name, value in _INI_ASSIGNMENT.findall(text)}


def secrets_in_vars_file(
    path: Path,
    decrypt: Decrypt | None = None,
    problems: list[str] | None = None,
    *,
    max_size: int = _MAX_INVENTORY_FILE,
) -> set[str]:
    """Secret values of one vars or inventory file: those under secret names and DSN
    passwords in clear text, and - decrypted in memory with ``decrypt`` - every value of a
    vault-encrypted file and every ``!vault`` value. What cannot be decrypted is noted in
    ``problems``. Executable files (dynamic inventory scripts) are never run."""
    path = Path(path)
    try:
        if path.stat().st_size > max_size or os.access(path, os.X_OK):
            return set()  # too big to be vars, or a dynamic inventory script: never run it
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    reader = _VaultReader(path, decrypt, problems)
    encrypted_file = text.lstrip().startswith(_VAULT_HEADER.decode())
    if encrypted_file:
        plain = reader.open(text)
        if plain is None:
            return set()
        data = _parse_vars(plain, yaml_first=True)
    else:
        data = _parse_vars(text, yaml_first=path.suffix in {".yml", ".yaml", ".json"})
    data = reader.reveal(data)
    found = secrets_in_vars(data) | reader.plaintexts
    for plain in reader.plaintexts:
        found |= dsn_passwords(plain)
    if encrypted_file:  # everything in an encrypted file is secret, whatever its name
        found |= {value for value in _strings_in(data) if not _is_template(value)}
    return {value for value in found if len(value) >= MIN_SECRET_LENGTH}


def secrets_in_inventory(
    inventory: Path, decrypt: Decrypt | None = None, problems: list[str] | None = None
) -> set[str]:
    """Secret values of an inventory directory (hosts files, ``group_vars``, ``host_vars``):
    see :func:`secrets_in_vars_file`; hidden files are skipped; dynamic inventory scripts are
    never executed."""
    inventory = Path(inventory)
    files = (
        [inventory]
        if inventory.is_file()
        else sorted(p for p in inventory.rglob("*") if p.is_file())
    )
    found: set[str] = set()
    for path in files:
        if inventory.is_file() or not any(
            part.startswith(".") for part in path.relative_to(inventory).parts
        ):
            found |= secrets_in_vars_file(path, decrypt, problems)
    return found


def secret_forms(value: str) -> set[str]:
    """The forms a secret value can take in artifacts (see the module docstring)."""
    json_once = json.dumps(value)[1:-1]
    forms = {
        value,
        json_once,
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(json_once)[1:-1],
        value.replace("'", "''"),
        quote(value, safe=""),
    }
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


@dataclass
class ScrubReport:
    """What :meth:`Scrubber.scrub_tree` did."""

    files_scanned: int = 0
    files_redacted: list[Path] = field(default_factory=list)
    leaks_removed: list[Path] = field(default_factory=list)


class Scrubber:
    """Redacts a fixed set of secret values (and any DSN password) from text,
    data and files."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(
            s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH
        )
        forms: set[str] = set()
        for value in self.secrets:
            forms |= secret_forms(value)
        ordered = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers
        self._text_re = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._bytes_re = (
            re.compile(b"|".join(re.escape(f.encode()) for f in ordered)) if ordered else None
        )

    # --- text and data -------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` with every known secret and every DSN password replaced."""
        if self._text_re is not None:
            text = self._text_re.sub(REDACTED, text)
        if "://" in text:
            text = _URL_DSN_TEXT.sub(rf"\g<1>{REDACTED}", text)
        if "=" in text:
            text = _KEYWORD_DSN_TEXT.sub(rf"\g<1>{REDACTED}", text)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        """Same as :meth:`redact`, on bytes (files of any encoding)."""
        if self._bytes_re is not None:
            data = self._bytes_re.sub(REDACTED.encode(), data)
        if b"://" in data:
            data = _URL_DSN_BYTES.sub(rb"\g<1>" + REDACTED.encode(), data)
        if b"=" in data:
            data = _KEYWORD_DSN_BYTES.sub(rb"\g<1>" + REDACTED.encode(), data)
        return data

    def redact_data(self, data: Any) -> Any:
        """A copy of nested data (dicts, lists, strings) with every string redacted."""
        if isinstance(data, str):
            return self.redact(data)
        if isinstance(data, Mapping):
            return {key: self.redact_data(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return [self.redact_data(item) for item in data]
        return data

    def leaks_in(self, data: bytes) -> bool:
        """True when ``data`` still holds a known secret or an unredacted DSN password."""
        if self._bytes_re is not None and self._bytes_re.search(data):
            return True
        for pattern in (_URL_DSN_BYTES, _KEYWORD_DSN_BYTES):
            for match in pattern.finditer(data):
                if match.group(2).strip(b"'") != REDACTED.encode():
                    return True
        return False

    # --- files ---------------------------------------------------------------------
    @staticmethod
    def _regular_files(root: Path) -> Iterable[Path]:
        """Regular files under ``root``; symlinks and FIFOs are never followed or opened."""
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                path = Path(dirpath, name)
                try:
                    if stat.S_ISREG(path.lstat().st_mode):
                        yield path
                except OSError:
                    continue

    def scrub_file(self, path: Path) -> bool:
        """Redact one file in place; True when it changed."""
        data = path.read_bytes()
        clean = self.redact_bytes(data)
        if clean == data:
            return False
        mode = stat.S_IMODE(path.stat().st_mode)
        tmp = path.with_name(path.name + ".scrub")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(clean)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        return True

    def find_leaks(self, root: Path) -> list[Path]:
        """Files under ``root`` that still hold a secret (the verifying scan)."""
        leaks = []
        for path in self._regular_files(Path(root)):
            try:
                if self.leaks_in(path.read_bytes()):
                    leaks.append(path)
            except OSError:
                continue
        return leaks

    def scrub_tree(self, root: Path) -> ScrubReport:
        """Redact every regular file under ``root``, then verify by a second scan;
        a file still holding a secret after redaction is deleted."""
        report = ScrubReport()
        for path in self._regular_files(Path(root)):
            report.files_scanned += 1
            try:
                if self.scrub_file(path):
                    report.files_redacted.append(path)
            except OSError:
                continue  # unreadable: the verifying scan decides
        for path in self.find_leaks(root):
            path.unlink(missing_ok=True)
            report.leaks_removed.append(path)
        return report
