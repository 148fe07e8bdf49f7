"""The secret stores' pure parts: the fingerprint rule, the staged transitions, the vault file
line editor (many YAML shapes, each edit checked byte for byte), the vault store on real
ansible-vault files (1.1 and 1.2 headers, decrypted before and after and compared; only
ciphertext ever written), and the secret_store module's execute() on a plain vault file.

No AWS here: tests/integration/test_secret_store.py runs both AWS stores against moto's server.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import string
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from ansible.parsing.utils.yaml import from_yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from tests.loaders import load_library, load_module_utils

CANARY = "canary-Rot8-secret-4f1e9a77c2"  # a value that must never be seen
OTHER = "other-vaulted-value-71b3"  # another secret in the same file
VAULT_PASSWORD = "unit-vault-pa55-9d2e"
VAR = "vault_jwt_secret"
KEYS = (VAR, f"{VAR}_pending", f"{VAR}_previous")


def load_secret_store_utils() -> tuple[ModuleType, ModuleType]:
    """module_utils/opsbook_secret_store{,_vault}.py as Ansible ships them (and _aws, which the
    module imports), so that load_library("secret_store") finds them."""
    store = load_module_utils("opsbook_secret_store")
    return store, load_module_utils("opsbook_secret_store_vault")


ss, sv = load_secret_store_utils()


def fp(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def encrypt(plaintext: str, vault_id: str | None = None, password: str = VAULT_PASSWORD) -> bytes:
    vault = VaultLib([(vault_id or "default", VaultSecret(password.encode()))])
    return bytes(vault.encrypt(plaintext, vault_id=vault_id))


def decrypt(data: bytes, password: str = VAULT_PASSWORD) -> str:
    return bytes(VaultLib([("x", VaultSecret(password.encode()))]).decrypt(data)).decode()


def secrets_for(vault_id: str = "default", password: str = VAULT_PASSWORD) -> list[Any]:
    return [(vault_id, VaultSecret(password.encode()))]


# =================================================================== the shared rules


def test_fingerprint_is_the_shared_rule() -> None:
    assert ss.fingerprint("s3cret") == fp("s3cret")
    assert ss.fingerprint("s3cret").startswith("sha256:") and len(ss.fingerprint("x")) == 19
    assert ss.fingerprint(None) is None
    assert ss.fingerprint("é") == "sha256:" + hashlib.sha256("é".encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("action", "before", "value", "after"),
    [
        ("put_pending", ("c", None, "p0"), "n", ("c", "n", "p0")),
        ("promote", ("c", "n", "p0"), None, ("n", None, "c")),
        ("promote", ("c", None, "p0"), None, ("c", None, "p0")),  # nothing pending
        ("promote", ("n", "n", "c"), None, ("n", None, "c")),  # an interrupted promote
        ("promote", (None, "n", "p0"), None, ("n", None, "p0")),  # no current: keep previous
        ("discard_pending", ("c", "n", "p0"), None, ("c", None, "p0")),
        ("drop_previous", ("c", "n", "p0"), None, ("c", "n", None)),
    ],
)
def test_transitions_follow_the_staging_model(
    action: str, before: tuple[Any, ...], value: str | None, after: tuple[Any, ...]
) -> None:
    got = ss.transition(action, ss.SecretRecord(*before, meta={"x": 1}), value)
    assert (got.current, got.pending, got.previous) == after
    assert got.meta == {"x": 1}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "env_file"}, "unknown store type 'env_file'"),
        ({"type": "vault", "file": "v.yml"}, "var is required"),
        ({"type": "aws_ssm"}, "parameter is required"),
        ({"type": "aws_secretsmanager", "secret_id": "x", "parameter": "y"}, "parameter is not"),
        ("vault", "must be a dict"),
    ],
)
def test_store_specs_are_checked(spec: Any, message: str) -> None:
    with pytest.raises(ss.SecretStoreError, match=message):
        ss.check_spec(spec)


def test_unset_spec_keys_are_ignored() -> None:
    """A module's dict suboptions arrive as None: not 'unknown' keys."""
    spec = {"type": "vault", "file": "v.yml", "var": "x", "secret_id": None, "region": None}
    assert ss.check_spec(spec) == {"type": "vault", "file": "v.yml", "var": "x"}


# =================================================================== the line editor


def edit(text: str, changes: dict[str, str | None]) -> str:
    return sv.VarsText(text).edit(changes, KEYS)


@pytest.mark.parametrize(
    ("before", "changes", "after"),
    [
        pytest.param(
            "---\n# Secrets of production\napp_name: shop  # the app\n"
            f"{VAR}: old-value  # rotated quarterly\nreplicas: 3\n",
            {VAR: "new-value"},
            "---\n# Secrets of production\napp_name: shop  # the app\n"
            f"{VAR}: new-value  # rotated quarterly\nreplicas: 3\n",
            id="replace-plain-keeps-comment",
        ),
        pytest.param(
            f"a: 1\n{VAR}: 'it''s'\nb: 2\n",
            {VAR: "pl41n"},
            f"a: 1\n{VAR}: pl41n\nb: 2\n",
            id="replace-single-quoted",
        ),
        pytest.param(
            f'a: 1\n{VAR}: "dq\\tvalue"\nb: 2\n',
            {VAR: "has space"},
            f"a: 1\n{VAR}: 'has space'\nb: 2\n",
            id="replace-double-quoted",
        ),
        pytest.param(
            f'"{VAR}": x\n',
            {VAR: "y"},
            f'"{VAR}": y\n',
            id="quoted-key",
        ),
        pytest.param(
            f"a: 1\n{VAR}: cur\nz: 2\n",
            {f"{VAR}_pending": "pend"},
            f"a: 1\n{VAR}: cur\n{VAR}_pending: pend\nz: 2\n",
            id="insert-pending-after-var",
        ),
        pytest.param(
            f"{VAR}: cur\n{VAR}_pending: pend\nz: 2\n",
            {VAR: "pend", f"{VAR}_pending": None, f"{VAR}_previous": "cur"},
            f"{VAR}: pend\n{VAR}_previous: cur\nz: 2\n",
            id="promote-shape",
        ),
        pytest.param(
            f"{VAR}: cur\n# keep me\n{VAR}_previous: old  # grace\nz: 2\n",
            {f"{VAR}_previous": None},
            f"{VAR}: cur\n# keep me\nz: 2\n",
            id="remove-only-the-line",
        ),
        pytest.param(
            f"a: 1\r\n{VAR}: cur\r\nb: 2\r\n",
            {VAR: "new", f"{VAR}_previous": "cur"},
            f"a: 1\r\n{VAR}: new\r\n{VAR}_previous: cur\r\nb: 2\r\n",
            id="crlf",
        ),
        pytest.param(
            f"a: 1\n{VAR}: cur",
            {f"{VAR}_pending": "p"},
            f"a: 1\n{VAR}: cur\n{VAR}_pending: p",
            id="no-final-newline-insert-after-last",
        ),
        pytest.param(
            f"{VAR}: cur\nb: 2",
            {VAR: "new"},
            f"{VAR}: new\nb: 2",
            id="no-final-newline-replace",
        ),
        pytest.param(
            "a: 1\nb: 2\n",
            {f"{VAR}_pending": "p"},
            f"a: 1\nb: 2\n{VAR}_pending: p\n",
            id="var-absent-appends",
        ),
        pytest.param("", {VAR: "v"}, f"{VAR}: v\n", id="empty-file"),
        pytest.param(
            "# only a comment\n", {VAR: "v"}, f"# only a comment\n{VAR}: v\n", id="comments-only"
        ),
        pytest.param(f"{VAR}:\nb: 2\n", {VAR: "v"}, f"{VAR}: v\nb: 2\n", id="empty-value"),
        pytest.param(
            f"{VAR}:   # to be set\nb: 2\n",
            {VAR: "v"},
            f"{VAR}:   v # to be set\nb: 2\n",
            id="empty-value-with-comment",
        ),
        pytest.param(
            "db:\n  host: x\n  port: 5432\n"
            "token: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n"
            f"{VAR}: cur\nnote: 'caf\u00e9 \u2603'\n",
            {VAR: "true"},
            "db:\n  host: x\n  port: 5432\n"
            "token: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n"
            f"{VAR}: 'true'\nnote: 'caf\u00e9 \u2603'\n",
            id="other-keys-nested-inline-vault-unicode",
        ),
        pytest.param(
            f"{VAR}: cur\n{VAR}_pending: p\n",
            {f"{VAR}_pending": "x\ty"},
            f'{VAR}: cur\n{VAR}_pending: "x\\ty"\n',
            id="control-character-double-quoted",
        ),
    ],
)
def test_line_edits_touch_only_their_lines(
    before: str, changes: dict[str, str | None], after: str
) -> None:
    assert edit(before, changes) == after
    # Ansible reads the result as intended.
    data = from_yaml(after) or {}
    for key, value in changes.items():
        assert data.get(key) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{VAR}: |\n  line1\n  line2\n", r"multi-line block value \(\|\)"),
        (f"{VAR}: >-\n  folded\n", r"multi-line block value \(>\)"),
        (f"{VAR}: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n", "inline !vault value"),
        (f"{VAR}: !unsafe '{{{{ x }}}}'\n", "YAML tag"),
        (f"{VAR}:\n  nested: 1\n", "spanning lines"),
        (f"{VAR}:\n  - a\n", "spanning lines"),
        (f"{VAR}: first\n  continued\n", "spanning lines"),
        (f"{VAR}: 'quoted\n  over two lines'\n", "continues past the line"),
        (f"{VAR}: [a, b]\n", "a list"),
        (f"{VAR}: {{a: b}}\n", "a mapping"),
        (f"{VAR}: &anchor v\nother: *anchor\n", "anchor"),
        (f"base: &b v\n{VAR}: *b\n", "alias"),
        (f"{VAR}: 1\n{VAR}: 2\n", "set more than once"),
        (f"top:\n  {VAR}: x\n", None),  # not top-level: the variable is absent
        (f"{{{VAR}: x}}\n", "not written as a 'key: value' line"),
        (f"{VAR}: 12345\n", "not a string in the file"),
        (f"a: 1\r{VAR}: x\r", "line breaks other than"),
        ("- a list\n", "not a mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_shapes_the_editor_refuses(text: str, message: str | None) -> None:
    if message is None:
        assert sv.VarsText(text).entry(VAR) is None
        return
    with pytest.raises(sv.FileShapeError, match=message):
        sv.VarsText(text).entry(VAR)


def test_a_value_ansible_would_template_is_refused() -> None:
    with pytest.raises(sv.FileShapeError, match="read it as a template"):
        edit(f"{VAR}: x\n", {f"{VAR}_pending": "abc{{ lookup('pipe', 'id') }}"})


def test_values_read_back_as_the_same_string() -> None:
    """Whatever a generator or a vendor hands over reads back, through Ansible's own YAML,
    as the very string written."""
    punctuation = string.punctuation.replace("{", "").replace("}", "")
    values = [
        *(secrets.token_urlsafe(32) for _ in range(50)),
        *(secrets.token_hex(16) for _ in range(10)),
        *("".join(secrets.choice(string.ascii_letters + punctuation) for _ in range(40))
          for _ in range(100)),
        "true", "no", "null", "~", "0x1F", "1e5", "2024-01-01", "-", "-x", "@x", "!x", "&x",
        "*x", "a: b", "a #b", "#x", "x:", "", " lead", "trail ", "'", '"', "\\", "é\u2603",
        "sk_live_51H8abc", "AC0123:tok/+=",
    ]  # fmt: skip
    for value in values:
        written = sv.yaml_scalar(value)
        assert "\n" not in written
        assert (from_yaml(f"k: {written}\n") or {})["k"] == value, (value, written)


# =================================================================== the vault store


def vault_text(current: str = CANARY) -> str:
    return (
        "---\n"
        "# production secrets (ansible-vault edit this file)\n"
        "vault_database_url: postgresql://app:" + OTHER + "@db:5432/app\n"
        f"{VAR}: {current}  # JWT signing key\n"
        "\n"
        "vault_stripe_key: 'sk_test_abc''def'\n"
        "nested:\n"
        "  keep: [1, 2]\n"
    )


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "inventories" / "prod" / "group_vars" / "all"
    directory.mkdir(parents=True)
    return directory


def make_store(path: Path, check_mode: bool = False, vault_id: str = "default") -> Any:
    return ss.open_secret_store(
        {"type": "vault", "file": str(path), "var": VAR},
        secrets_for(vault_id),
        check_mode=check_mode,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_no_plaintext_on_disk(directory: Path, *values: str) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in values:
                assert value.encode() not in data, f"{path.name} holds a secret value"


@pytest.mark.parametrize("vault_id", [None, "prod"], ids=["1.1", "1.2-vault-id"])
def test_vault_rotation_rewrites_only_the_secret_lines(
    vault_dir: Path, vault_id: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = vault_dir / "vault.yml"
    plaintext = vault_text("current-0a9f3c")
    path.write_bytes(encrypt(plaintext, vault_id))
    path.chmod(0o640)
    header = path.read_bytes().split(b"\n", 1)[0]
    written: list[bytes] = []
    real_replace = sv.replace_file

    def spy(target: str, data: bytes, expected: bytes, where: str) -> None:
        written.append(data)
        assert data.startswith(header + b"\n")  # ciphertext, under the same header
        assert_no_plaintext_on_disk(vault_dir, CANARY, OTHER, "current-0a9f3c")
        real_replace(target, data, expected, where)
        assert_no_plaintext_on_disk(vault_dir, CANARY, OTHER, "current-0a9f3c")

    monkeypatch.setattr(sv, "replace_file", spy)
    store = make_store(path, vault_id=vault_id or "default")
    assert store.read().fingerprints() == {
        "current": fp("current-0a9f3c"),
        "pending": None,
        "previous": None,
    }

    put = store.put_pending(CANARY)
    assert put["changed"] and put["after"]["pending"] == fp(CANARY)
    assert store.put_pending(CANARY)["changed"] is False  # idempotent: no write
    promoted = store.promote()
    assert promoted["after"] == {
        "current": fp(CANARY),
        "pending": None,
        "previous": fp("current-0a9f3c"),
    }
    assert store.promote()["changed"] is False
    assert len(written) == 2

    after = decrypt(path.read_bytes())
    expected = plaintext.replace(
        f"{VAR}: current-0a9f3c  # JWT signing key\n",
        f"{VAR}: {CANARY}  # JWT signing key\n{VAR}_previous: current-0a9f3c\n",
    )
    assert after == expected
    assert path.read_bytes().split(b"\n", 1)[0] == header
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in vault_dir.iterdir()) == ["vault.yml"]  # no temp file left

    assert store.drop_previous()["changed"]
    assert decrypt(path.read_bytes()) == plaintext.replace("current-0a9f3c", CANARY)
    assert_no_plaintext_on_disk(vault_dir, CANARY, OTHER)


def test_vault_file_without_final_newline_or_with_crlf_keeps_its_shape(vault_dir: Path) -> None:
    path = vault_dir / "vault.yml"
    plaintext = f"a: 1\r\n{VAR}: cur"
    data = encrypt(plaintext).rstrip(b"\n").replace(b"\n", b"\r\n")
    path.write_bytes(data)
    make_store(path).put_pending("pend")
    raw = path.read_bytes()
    assert not raw.endswith(b"\n") and b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert decrypt(raw) == f"a: 1\r\n{VAR}: cur\r\n{VAR}_pending: pend"


def test_check_mode_reports_and_writes_nothing(vault_dir: Path) -> None:
    path = vault_dir / "vault.yml"
    path.write_bytes(encrypt(vault_text()))
    before = snapshot(vault_dir)
    store = make_store(path, check_mode=True)
    result = store.put_pending("next-value-1")
    assert result["changed"] and result["after"]["pending"] == fp("next-value-1")
    assert store.last_record.pending == "next-value-1"
    assert store.promote()["changed"] is False  # nothing is pending yet: check mode wrote none
    assert snapshot(vault_dir) == before


def test_plain_yaml_vault_file_is_edited_the_same_way(vault_dir: Path) -> None:
    """The local sandbox's vault file is plain YAML: edited in place, no secret needed."""
    path = vault_dir / "vault.yml"
    path.write_text(vault_text("sandbox-current"))
    store = ss.open_secret_store({"type": "vault", "file": str(path), "var": VAR})
    store.put_pending("sandbox-next")
    store.promote()
    assert path.read_text() == vault_text("sandbox-next").replace(
        "  # JWT signing key\n", f"  # JWT signing key\n{VAR}_previous: sandbox-current\n"
    )
    assert store.read().meta["store"]["encrypted"] is False


def test_symlinked_vault_file_rewrites_its_target(vault_dir: Path) -> None:
    target = vault_dir / "real-vault.yml"
    target.write_bytes(encrypt(vault_text()))
    link = vault_dir / "vault.yml"
    link.symlink_to(target.name)
    make_store(link).put_pending("via-link")
    assert link.is_symlink()
    assert f"{VAR}_pending: via-link" in decrypt(target.read_bytes())


@pytest.mark.parametrize(
    ("setup", "call", "message"),
    [
        ("no-secret", "read", "no vault secret: run ansible-playbook with --vault-password-file"),
        ("wrong-secret", "read", r"none of the run's vault secrets \(vault ids: default\)"),
        ("missing", "read", "the file does not exist"),
        ("pending", "put_pending:another", "another pending value is stored"),
        ("plain", "put_pending:" + CANARY, "is the current value"),
        ("plain", "put_pending:{{ x }}", "read it as a template"),
        ("inline", "read", "inline !vault value"),
        ("plain", "put_pending:", "the value is empty"),
    ],
)
def test_vault_store_errors_say_what_and_change_nothing(
    vault_dir: Path, setup: str, call: str, message: str
) -> None:
    path = vault_dir / "vault.yml"
    secrets_given = secrets_for()
    if setup == "no-secret":
        path.write_bytes(encrypt(vault_text()))
        secrets_given = []
    elif setup == "wrong-secret":
        path.write_bytes(encrypt(vault_text(), password="another-password"))
    elif setup == "pending":
        path.write_bytes(encrypt(vault_text() + f"{VAR}_pending: first-pending\n"))
    elif setup == "plain":
        path.write_bytes(encrypt(vault_text()))
    elif setup == "inline":
        inline = encrypt(CANARY).decode().replace("\n", "\n  ")
        path.write_text(f"{VAR}: !vault |\n  {inline}\n")
    before = snapshot(vault_dir)
    store = ss.open_secret_store({"type": "vault", "file": str(path), "var": VAR}, secrets_given)
    action, _sep, value = call.partition(":")
    with pytest.raises(ss.SecretStoreError, match=message) as caught:
        getattr(store, action)(value) if action == "put_pending" else getattr(store, action)()
    text = str(caught.value)
    assert text.startswith(f"vault file {path} ({VAR}): ")
    assert CANARY not in text and OTHER not in text
    assert "nothing was changed" in text
    assert snapshot(vault_dir) == before


def test_replace_pending_replaces_it(vault_dir: Path) -> None:
    path = vault_dir / "vault.yml"
    path.write_bytes(encrypt(vault_text() + f"{VAR}_pending: first-pending\n"))
    result = make_store(path).put_pending("second-pending", replace_pending=True)
    assert result["before"]["pending"] == fp("first-pending")
    assert result["after"]["pending"] == fp("second-pending")


def test_a_file_changed_underneath_is_left_alone(vault_dir: Path) -> None:
    path = vault_dir / "vault.yml"
    path.write_bytes(encrypt(vault_text()))
    original = path.read_bytes()
    path.write_bytes(b"changed by an editor\n")
    with pytest.raises(ss.SecretStoreError, match="changed while it was being rewritten"):
        sv.replace_file(str(path), b"$ANSIBLE_VAULT;new", original, "vault file x (v)")
    assert path.read_bytes() == b"changed by an editor\n"
    assert sorted(p.name for p in vault_dir.iterdir()) == ["vault.yml"]


def test_a_file_changed_between_read_and_write_is_not_written(vault_dir: Path) -> None:
    path = vault_dir / "vault.yml"
    path.write_bytes(encrypt(vault_text()))
    store = make_store(path)
    before = store.read()
    path.write_bytes(encrypt(vault_text() + "added: by someone\n"))
    changed = path.read_bytes()
    after = ss.transition("put_pending", before, "p1")
    with pytest.raises(ss.SecretStoreError, match="changed since it was read"):
        store._write("put_pending", before, after)
    assert path.read_bytes() == changed


def test_owner_and_group_are_kept_or_nothing_is_written(
    vault_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = vault_dir / "vault.yml"
    path.write_bytes(encrypt(vault_text()))
    original = path.read_bytes()
    real_stat = os.stat

    class Foreign:  # the file belongs to another user
        def __init__(self, info: os.stat_result) -> None:
            self._info = info
            self.st_uid = info.st_uid + 4242
            self.st_gid = info.st_gid

        def __getattr__(self, name: str) -> Any:
            return getattr(self._info, name)

    def fake_stat(target: Any, *args: Any, **kwargs: Any) -> Any:
        info = real_stat(target, *args, **kwargs)
        return Foreign(info) if str(target) == str(path) else info

    def refuse(*_args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sv.os, "stat", fake_stat)
    monkeypatch.setattr(sv.os, "fchown", refuse)
    with pytest.raises(ss.SecretStoreError, match="owner of the file"):
        sv.replace_file(str(path), b"$ANSIBLE_VAULT;x", original, "vault file x (v)")
    assert path.read_bytes() == original
    assert sorted(p.name for p in vault_dir.iterdir()) == ["vault.yml"]


# =================================================================== the module


@pytest.fixture(scope="module")
def module() -> ModuleType:
    return load_library("secret_store")


def run(module: ModuleType, check_mode: bool = False, **params: Any) -> dict[str, Any]:
    full = {
        "action": "read",
        "value": None,
        "replace_pending": False,
        "return_values": False,
        **params,
    }
    return module.execute(full, check_mode)


def test_module_stages_a_secret_and_returns_fingerprints_only(
    module: ModuleType, vault_dir: Path
) -> None:
    path = vault_dir / "vault.yml"
    path.write_bytes(encrypt(vault_text("module-current")))
    store = {"type": "vault", "file": str(path), "var": VAR, "region": None}
    vault = {"_vault_secrets": secrets_for()}

    checked = run(module, True, store=store, action="put_pending", value=CANARY, **vault)
    assert checked["changed"] and checked["fingerprints"]["pending"] == fp(CANARY)
    assert f"{VAR}_pending" not in decrypt(path.read_bytes())

    put = run(module, store=store, action="put_pending", value=CANARY, **vault)
    assert put["changed"] and put["before"]["pending"] is None
    assert put["store"] == f"vault file {path} ({VAR})"
    assert put["diff"]["after"] == (
        f"current: {fp('module-current')}\npending: {fp(CANARY)}\nprevious: -\n"
    )
    assert CANARY not in repr(put)
    again = run(module, store=store, action="put_pending", value=CANARY, **vault)
    assert again["changed"] is False

    promoted = run(module, store=store, action="promote", **vault)
    assert promoted["fingerprints"] == {
        "current": fp(CANARY),
        "pending": None,
        "previous": fp("module-current"),
    }
    assert promoted["meta"]["store"]["encrypted"] is True
    assert promoted["meta"]["previous"] == {"variable": f"{VAR}_previous", "line": 5}

    read = run(module, store=store, return_values=True, **vault)
    assert read["values"] == {"current": CANARY, "pending": None, "previous": "module-current"}
    assert "values" not in run(module, store=store, **vault)


def test_module_discards_with_replace_pending_set(module: ModuleType, vault_dir: Path) -> None:
    """A role may pass replace_pending to every action of a loop: only put_pending uses it."""
    path = vault_dir / "vault.yml"
    path.write_text(vault_text() + f"{VAR}_pending: to-discard\n")
    store = {"type": "vault", "file": str(path), "var": VAR}
    result = run(module, store=store, action="discard_pending", replace_pending=True)
    assert result["changed"] and result["before"]["pending"] == fp("to-discard")
    assert path.read_text() == vault_text()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"action": "put_pending"}, "value is required"),
        ({"action": "promote", "value": "x"}, "value is only used with action=put_pending"),
    ],
)
def test_module_refuses_bad_input(
    module: ModuleType, vault_dir: Path, params: dict[str, Any], message: str
) -> None:
    path = vault_dir / "vault.yml"
    path.write_text(vault_text())
    result = run(module, store={"type": "vault", "file": str(path), "var": VAR}, **params)
    assert result["failed"] and message in result["msg"]
    assert result["msg"].endswith("nothing was changed")
    assert path.read_text() == vault_text()


def test_module_failure_names_the_store_never_the_value(
    module: ModuleType, vault_dir: Path
) -> None:
    path = vault_dir / "vault.yml"
    path.write_bytes(encrypt(vault_text()))
    result = run(
        module,
        store={"type": "vault", "file": str(path), "var": VAR},
        action="put_pending",
        value=CANARY,
        _vault_secrets=secrets_for(),
    )
    assert result["failed"] and "is the current value" in result["msg"]
    assert result["store"] == f"vault file {path} ({VAR})"
    assert CANARY not in repr(result)


def test_store_suboptions_documented_as_the_argument_spec(module: ModuleType) -> None:
    """test_module_docs.py holds the top-level options to argument_spec(); the store's
    suboptions are held here."""
    documented = yaml.safe_load(module.DOCUMENTATION)["options"]["store"]["suboptions"]
    declared = module.argument_spec()["store"]["options"]
    assert set(documented) == set(declared)
    for name, spec in declared.items():
        assert documented[name].get("type", "str") == spec.get("type", "str"), name
        assert documented[name].get("choices") == spec.get("choices"), name
        assert bool(documented[name].get("required")) == bool(spec.get("required")), name
    assert module.argument_spec()["value"]["no_log"] is True
