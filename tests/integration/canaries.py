"""Canary secrets for the leak tests: real ansible-vault encryption, and a search for every
form a secret takes on disk (as is, JSON-escaped, percent-encoded, ...: the forms the
runner's scrubber redacts) in files and in captured output."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from opsbook.secrets import secret_forms
from tests.harness import VENV_BIN, ansible_env


def ansible_vault(args: list[str], stdin: str) -> str:
    """Run the ansible-vault command with ``stdin`` (the plaintext never touches the disk)."""
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-vault"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=ansible_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def encrypt_file(plaintext: str, password_file: Path, output: Path) -> Path:
    """``ansible-vault encrypt`` of ``plaintext`` (read from stdin) into ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    ansible_vault(
        ["encrypt", "--vault-password-file", str(password_file), "--output", str(output)],
        plaintext,
    )
    assert output.read_text().startswith("$ANSIBLE_VAULT;")
    return output


def encrypt_string(name: str, value: str, password_file: Path) -> str:
    """``ansible-vault encrypt_string --stdin-name NAME``: a ``NAME: !vault |`` YAML entry."""
    text = ansible_vault(
        ["encrypt_string", "--vault-password-file", str(password_file), "--stdin-name", name],
        value,
    )
    assert text.startswith(f"{name}: !vault |"), text
    return text


def _hits(data: bytes, values: Iterable[str]) -> list[str]:
    return sorted(v for v in values if any(f.encode() in data for f in secret_forms(v)))


def leaks(
    values: Iterable[str],
    roots: Iterable[Path] = (),
    texts: Mapping[str, str] | None = None,
    skip: Iterable[Path] = (),
) -> dict[str, list[str]]:
    """Where any form of any value is: ``{file or text name: [values]}``. Every regular file
    under ``roots`` is read (symlinks are not followed), except the paths in ``skip``."""
    values = list(values)
    skipped = {Path(p) for p in skip}
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            if path in skipped or path.is_symlink() or not path.is_file():
                continue
            try:
                hits = _hits(path.read_bytes(), values)
            except OSError:
                continue
            if hits:
                found[str(path)] = hits
    for name, text in (texts or {}).items():
        hits = _hits(text.encode("utf-8", errors="replace"), values)
        if hits:
            found[name] = hits
    return found
