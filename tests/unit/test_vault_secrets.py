"""The runner's scrubber knows the values of the vault data a run reads, decrypted in memory.

Real vault data, encrypted here with Ansible's own vault code (the ``ansible-vault`` command
does the same in tests/integration/test_runner_vault.py): a whole encrypted vars file, and
``!vault`` values (what ``ansible-vault encrypt_string`` prints). No Ansible run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret

from opsbook import cli
from opsbook import runner as rn
from opsbook.exitcodes import OpsbookInputError
from opsbook.secrets import is_vaulted, secrets_in_inventory, secrets_in_vars_file

VAULT_PASSWORD = "Vault-Unit-Pa55-7c1"
DSN_PASSWORD = "Dsn-In-Vault-9f3e"
HOOK = "https://hooks.example.com/services/T0/B0/vaulted-hook-5a1d"
INLINE = "inline-vaulted-4b2c"  # under a name no rule calls secret: only the vault says so
FROM_E_FILE = "e-file-vaulted-8d0a"


def encrypt(plaintext: str, password: str = VAULT_PASSWORD) -> str:
    vault = VaultLib([("default", VaultSecret(password.encode()))])
    return vault.encrypt(plaintext).decode()


def inline(plaintext: str) -> str:
    """A !vault value as ansible-vault encrypt_string prints it."""
    body = "\n".join(f"  {line}" for line in encrypt(plaintext).splitlines())
    return f"!vault |\n{body}\n"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "inventories" / "dev"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n")
    (inv / "group_vars" / "all" / "vars.yml").write_text(
        "database_url: '{{ vault_database_url }}'\n"
        f"release_channel: {inline(INLINE)}"
        "replicas: 3\n"
    )
    (inv / "group_vars" / "all" / "vault.yml").write_text(
        encrypt(
            f"vault_database_url: postgresql://app:{DSN_PASSWORD}@db:5432/app\n"
            f"opsbook_notify_webhook_url: {HOOK}\n"
            "deploy_region: eu-central-9\n"  # no secret name: secret because it is vaulted
            "replica_count: 12345\n"  # a number under a plain name: not redacted everywhere
            "greeting: '{{ deploy_region }}'\n"  # a template is not a value
        )
    )
    return inv


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-pass"
    path.write_text(VAULT_PASSWORD + "\n")
    return path


def test_vault_values_are_known_decrypted_in_memory(
    inventory: Path, password_file: Path, tmp_path: Path
) -> None:
    before = tree(tmp_path)
    decrypt, password = rn.vault_decryptor(password_file)
    assert decrypt is not None and password == {VAULT_PASSWORD}
    problems: list[str] = []

    found = secrets_in_inventory(inventory, decrypt, problems)

    assert found == {
        f"postgresql://app:{DSN_PASSWORD}@db:5432/app", DSN_PASSWORD, HOOK, "eu-central-9",
        INLINE,
    }  # fmt: skip
    assert problems == []
    assert tree(tmp_path) == before  # nothing written, nothing changed


def test_vault_password_script_is_read_like_ansible_reads_it(
    inventory: Path, tmp_path: Path
) -> None:
    script = tmp_path / "vault-pass-client.sh"
    script.write_text(f"#!/bin/sh\necho '{VAULT_PASSWORD}'\n")
    script.chmod(0o700)
    decrypt, password = rn.vault_decryptor(script)
    assert password == {VAULT_PASSWORD}
    assert INLINE in secrets_in_inventory(inventory, decrypt)


@pytest.mark.parametrize("given", ["wrong", None])
def test_vault_data_that_cannot_be_read_is_said(
    inventory: Path, tmp_path: Path, given: str | None
) -> None:
    decrypt = None
    if given is not None:
        wrong = tmp_path / "wrong-pass"
        wrong.write_text("not-the-password\n")
        decrypt, _ = rn.vault_decryptor(wrong)
        assert decrypt is not None
    problems: list[str] = []

    found = secrets_in_inventory(inventory, decrypt, problems)

    assert found == set()  # nothing in clear under a secret name
    files = sorted(p.split(":")[0] for p in problems)
    assert files == [
        str(inventory / "group_vars" / "all" / "vars.yml"),
        str(inventory / "group_vars" / "all" / "vault.yml"),
    ]
    reason = "does not open it" if given else "no vault password file was given"
    assert all(reason in p and "unknown to opsbook's scrubber" in p for p in problems)


def test_vars_file_in_clear_keeps_the_name_rules(tmp_path: Path) -> None:
    path = tmp_path / "vars.yml"
    path.write_text("slack_token: xoxb-1234\nregion: eu-central-9\n")
    assert secrets_in_vars_file(path) == {"xoxb-1234"}
    assert not is_vaulted(path.read_text())
    assert is_vaulted(encrypt("a: 1\n")) and is_vaulted(f"a: {inline('x')}")


# --- the plan ------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path, inventory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "deploy.yml").write_text("# Deploy\n")
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    for var in ("OPSBOOK_INVENTORY_ROOT", "OPSBOOK_RUNS_DIR", "ANSIBLE_VAULT_PASSWORD_FILE",
                "OPSBOOK_VAULT_PASSWORD_FILE", "OPSBOOK_ENV_PASSTHROUGH",
                "ANSIBLE_CONFIG"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_plan_knows_the_vault_values_and_never_shows_them(
    project: Path, password_file: Path
) -> None:
    e_file = project / "secret-vars.yml"
    e_file.write_text(encrypt(f"upstream_mirror: {FROM_E_FILE}\n"))
    runner = rn.RunbookRunner(project)

    plan = runner.plan(
        "deploy",
        "dev",
        {"release": "1.2"},
        vault_password_file=password_file,
        extravars_files=[e_file],
    )

    assert {INLINE, HOOK, DSN_PASSWORD, "eu-central-9", FROM_E_FILE, VAULT_PASSWORD} <= (
        plan.secrets
    )
    assert plan.warnings == ()
    assert plan.extravars_files == (e_file,)
    assert runner._cmdline(plan) == (
        f"--vault-password-file {password_file} -e @{e_file}"
    )  # the file as it is: Ansible decrypts it
    shown = repr(plan)
    assert not [s for s in plan.secrets if s in shown]
    scrubber = runner.scrubber(plan)
    assert scrubber.redact(f"hook={HOOK} region=eu-central-9") == "hook=******** region=********"
    with pytest.raises(OpsbookInputError, match="does not exist"):
        runner.plan("deploy", "dev", extravars_files=[project / "missing.yml"])


def test_plan_without_the_password_warns_that_the_vault_is_unknown(project: Path) -> None:
    plan = rn.RunbookRunner(project).plan("deploy", "dev")
    assert INLINE not in plan.secrets
    assert len(plan.warnings) == 2
    assert all("no vault password file was given" in w for w in plan.warnings)


def test_plan_uses_the_vault_password_file_of_ansible_cfg(
    project: Path, password_file: Path
) -> None:
    (project / "ansible.cfg").write_text(
        f"[defaults]\nvault_password_file = {password_file.name}\n"
    )
    plan = rn.RunbookRunner(project).plan("deploy", "dev")
    assert plan.vault_password_file is None  # ansible-playbook reads ansible.cfg by itself
    assert {INLINE, HOOK} <= plan.secrets and plan.warnings == ()


def test_cli_passes_vaulted_vars_files_as_they_are(tmp_path: Path) -> None:
    vaulted = tmp_path / "vaulted.yml"
    vaulted.write_text(encrypt("a: 1\n"))
    tagged = tmp_path / "tagged.yml"
    tagged.write_text(f"token: {inline('x')}")
    plain = tmp_path / "plain.yml"
    plain.write_text("b: 2\n")

    variables, files = cli.split_extra_vars([f"@{vaulted}", f"@{plain}", "c=3", f"@{tagged}"])

    assert variables == {"b": 2, "c": 3}
    assert files == [str(vaulted), str(tagged)]


# --- the operation log's side ----------------------------------------------------------
def test_oplog_knows_every_value_of_an_encrypted_vars_file(tmp_path: Path) -> None:
    """Ansible tags each value with the file it was loaded from: a value of an encrypted file
    is secret whatever its name (a !vault value carries its ciphertext: both are checked)."""
    from ansible._internal._datatag._tags import Origin

    from tests.loaders import load_plugin

    oplog = load_plugin("callback_plugins", "opsbook_oplog")
    encrypted = tmp_path / "vault.yml"
    encrypted.write_text(encrypt("deploy_region: eu-central-9\n"))
    clear = tmp_path / "vars.yml"
    clear.write_text("deploy_zone: eu-central-9b\n")
    variables = {
        "deploy_region": Origin(path=str(encrypted), line_num=1).tag("eu-central-9"),
        "deploy_zone": Origin(path=str(clear), line_num=1).tag("eu-central-9b"),
    }
    assert oplog.secret_values(variables) == {"eu-central-9"}
