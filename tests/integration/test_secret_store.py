"""The secret stores against real servers: AWS Secrets Manager and SSM Parameter Store on moto's
server (the `s3` fixture's, which serves every AWS API on one port), and the secret_store module
through ansible-playbook with a vault password file - the inventory's vault file rewritten and
re-encrypted, AWS's labels moved, canary values absent from the -vvvv output, and --check
changing nothing anywhere.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from tests.harness import ansible_env, run_ansible
from tests.integration.canaries import encrypt_file, leaks
from tests.lab import S3_CREDENTIALS, MotoS3Server
from tests.loaders import load_module_utils

pytestmark = pytest.mark.integration

CANARY = "canary-store-Q7v2-5e0c1b9d44"
VAULT_PASSWORD = "integration-vault-pa55-3c8a"
VAR = "vault_jwt_secret"


def _load() -> ModuleType:
    base = load_module_utils("opsbook_secret_store")
    for name in ("opsbook_secret_store_vault", "opsbook_secret_store_aws"):
        load_module_utils(name)
    return base


ss = _load()


def fp(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment only (boto3's usual chain), nothing else configured."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def aws(s3: MotoS3Server) -> dict[str, Any]:
    """Clients of moto's server, and a name prefix that belongs to this test alone."""
    import boto3

    kwargs = {"endpoint_url": s3.endpoint_url, "region_name": "us-east-1"}
    return {
        "endpoint": s3.endpoint_url,
        "sm": boto3.client("secretsmanager", **kwargs),
        "ssm": boto3.client("ssm", **kwargs),
        "kms": boto3.client("kms", **kwargs),
        "prefix": f"t-{uuid.uuid4().hex[:10]}",
    }


# =================================================================== Secrets Manager


def sm_store(aws: dict[str, Any], secret_id: str, **extra: Any) -> Any:
    spec = {"type": "aws_secretsmanager", "secret_id": secret_id, "endpoint_url": aws["endpoint"]}
    check_mode = extra.pop("check_mode", False)
    return ss.open_secret_store({**spec, **extra}, check_mode=check_mode)


def stages(aws: dict[str, Any], secret_id: str) -> dict[str, list[str]]:
    found = aws["sm"].describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})
    return {version: sorted(labels) for version, labels in found.items()}


def token_of(value: str) -> str:
    return "opsbook-pending-" + fp(value).replace(":", "-")


def test_secrets_manager_moves_aws_staging_labels(aws: dict[str, Any]) -> None:
    secret_id = f"{aws['prefix']}/app/jwt"
    first = aws["sm"].create_secret(Name=secret_id, SecretString="sm-current-1")["VersionId"]
    store = sm_store(aws, secret_id)
    record = store.read()
    assert record.fingerprints() == {"current": fp("sm-current-1"), "pending": None,
                                     "previous": None}  # fmt: skip
    assert record.meta["current"]["version"] == first
    assert record.meta["current"]["created"].endswith("Z")

    put = store.put_pending(CANARY)
    assert put["changed"] and put["after"]["pending"] == fp(CANARY)
    assert stages(aws, secret_id) == {first: ["AWSCURRENT"], token_of(CANARY): ["AWSPENDING"]}
    # An app reading the secret (AWSCURRENT) still reads the current value.
    assert aws["sm"].get_secret_value(SecretId=secret_id)["SecretString"] == "sm-current-1"
    assert store.put_pending(CANARY)["changed"] is False  # a rerun adds no version
    assert len(stages(aws, secret_id)) == 2

    with pytest.raises(ss.SecretStoreError, match="another pending value is stored") as caught:
        store.put_pending("sm-other-2")
    assert CANARY not in str(caught.value) and "sm-other-2" not in str(caught.value)
    replaced = store.put_pending("sm-next-2", replace_pending=True)
    assert replaced["before"]["pending"] == fp(CANARY)
    assert stages(aws, secret_id)[token_of("sm-next-2")] == ["AWSPENDING"]
    assert stages(aws, secret_id)[token_of(CANARY)] == []  # AWS moved the label

    promoted = store.promote()
    assert promoted["after"] == {"current": fp("sm-next-2"), "pending": None,
                                 "previous": fp("sm-current-1")}  # fmt: skip
    assert stages(aws, secret_id) == {
        first: ["AWSPREVIOUS"],  # moved by AWS itself
        token_of(CANARY): [],
        token_of("sm-next-2"): ["AWSCURRENT"],
    }
    assert store.promote()["changed"] is False

    store.put_pending("sm-third-3")
    assert store.discard_pending()["after"]["pending"] is None
    assert "AWSPENDING" not in str(stages(aws, secret_id))
    assert store.drop_previous()["after"]["previous"] is None
    assert stages(aws, secret_id)[first] == []
    assert store.read().current == "sm-next-2"


def test_secrets_manager_finishes_an_interrupted_promote(aws: dict[str, Any]) -> None:
    secret_id = f"{aws['prefix']}/app/nextauth"
    first = aws["sm"].create_secret(Name=secret_id, SecretString="na-current")["VersionId"]
    store = sm_store(aws, secret_id)
    store.put_pending("na-next")
    # Killed between the two requests of promote: AWSCURRENT moved, AWSPENDING still there.
    aws["sm"].update_secret_version_stage(
        SecretId=secret_id,
        VersionStage="AWSCURRENT",
        MoveToVersionId=token_of("na-next"),
        RemoveFromVersionId=first,
    )
    record = store.read()
    assert record.current == record.pending == "na-next"
    assert record.previous == "na-current"
    assert store.promote()["changed"] is True
    assert stages(aws, secret_id) == {first: ["AWSPREVIOUS"], token_of("na-next"): ["AWSCURRENT"]}


def test_secrets_manager_json_key_keeps_the_other_fields(aws: dict[str, Any]) -> None:
    secret_id = f"{aws['prefix']}/app/db"
    document = {"engine": "postgres", "username": "app", "password": "db-pw-1", "port": 5432}
    aws["sm"].create_secret(Name=secret_id, SecretString=json.dumps(document))
    store = sm_store(aws, secret_id, json_key="password")
    assert store.read().current == "db-pw-1"
    store.put_pending("db-pw-2")
    pending = aws["sm"].get_secret_value(SecretId=secret_id, VersionStage="AWSPENDING")
    assert json.loads(pending["SecretString"]) == {**document, "password": "db-pw-2"}
    store.promote()
    assert store.read().values() == {"current": "db-pw-2", "pending": None,
                                     "previous": "db-pw-1"}  # fmt: skip


def test_secrets_manager_check_mode_writes_nothing(aws: dict[str, Any]) -> None:
    secret_id = f"{aws['prefix']}/app/check"
    aws["sm"].create_secret(Name=secret_id, SecretString="chk-current")
    before = stages(aws, secret_id)
    result = sm_store(aws, secret_id, check_mode=True).put_pending("chk-next")
    assert result["changed"] and result["after"]["pending"] == fp("chk-next")
    assert stages(aws, secret_id) == before


def test_secrets_manager_errors_say_how_to_fix(aws: dict[str, Any]) -> None:
    missing = f"{aws['prefix']}/nope"
    with pytest.raises(ss.SecretStoreError) as caught:
        sm_store(aws, missing).read()
    text = str(caught.value)
    assert text.startswith(f"AWS Secrets Manager secret {missing} (us-east-1): ")
    assert f"create-secret --name {missing}" in text and "nothing was changed" in text

    empty = f"{aws['prefix']}/empty"
    aws["sm"].create_secret(Name=empty)
    with pytest.raises(ss.SecretStoreError, match="has no AWSCURRENT version"):
        sm_store(aws, empty).put_pending(CANARY)

    deleted = f"{aws['prefix']}/deleted"
    aws["sm"].create_secret(Name=deleted, SecretString="to-be-deleted")
    aws["sm"].delete_secret(SecretId=deleted, RecoveryWindowInDays=7)
    with pytest.raises(ss.SecretStoreError, match="marked for deletion: restore it"):
        sm_store(aws, deleted).read()

    taken = f"{aws['prefix']}/taken"
    aws["sm"].create_secret(Name=taken, SecretString=CANARY)
    with pytest.raises(ss.SecretStoreError, match="is the current value") as caught:
        sm_store(aws, taken).put_pending(CANARY)
    assert CANARY not in str(caught.value)

    started = time.monotonic()
    dead = ss.open_secret_store(
        {"type": "aws_secretsmanager", "secret_id": taken, "endpoint_url": "http://127.0.0.1:9"}
    )
    with pytest.raises(ss.SecretStoreError, match=r"http://127\.0\.0\.1:9 is unreachable"):
        dead.read()
    assert time.monotonic() - started < 10


# =================================================================== SSM Parameter Store


def ssm_store(aws: dict[str, Any], name: str, **extra: Any) -> Any:
    spec = {"type": "aws_ssm", "parameter": name, "endpoint_url": aws["endpoint"], **extra}
    return ss.open_secret_store(spec)


def history(aws: dict[str, Any], name: str) -> list[tuple[int, str, list[str]]]:
    found = aws["ssm"].get_parameter_history(Name=name, WithDecryption=True)["Parameters"]
    return [(p["Version"], p["Value"], sorted(p.get("Labels") or [])) for p in found]


def value_of(aws: dict[str, Any], name: str) -> str | None:
    try:
        return aws["ssm"].get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except aws["ssm"].exceptions.ParameterNotFound:
        return None


def test_ssm_apps_keep_reading_current_while_a_value_is_pending(aws: dict[str, Any]) -> None:
    name = f"/{aws['prefix']}/app/JWT_SECRET"
    pending_name = f"/opsbook/pending{name}"
    aws["ssm"].put_parameter(Name=name, Value="ssm-current-1", Type="SecureString")
    store = ssm_store(aws, name)
    assert store.read().fingerprints()["current"] == fp("ssm-current-1")

    put = store.put_pending(CANARY)
    assert put["changed"] and put["after"]["pending"] == fp(CANARY)
    # What an app reads - the parameter, or its `current` label - is still the current value.
    assert value_of(aws, name) == value_of(aws, f"{name}:current") == "ssm-current-1"
    assert value_of(aws, pending_name) == CANARY
    assert history(aws, name) == [(1, "ssm-current-1", ["current"])]
    assert store.put_pending(CANARY)["changed"] is False

    promoted = store.promote()
    assert promoted["after"] == {"current": fp(CANARY), "pending": None,
                                 "previous": fp("ssm-current-1")}  # fmt: skip
    assert value_of(aws, name) == value_of(aws, f"{name}:current") == CANARY
    assert value_of(aws, f"{name}:previous") == "ssm-current-1"
    assert value_of(aws, pending_name) is None
    assert history(aws, name) == [(1, "ssm-current-1", ["previous"]), (2, CANARY, ["current"])]
    assert store.promote()["changed"] is False

    assert store.drop_previous()["after"]["previous"] is None
    assert history(aws, name)[0][2] == []
    store.put_pending("ssm-next-3")
    store.discard_pending()
    assert value_of(aws, pending_name) is None and value_of(aws, name) == CANARY


def test_ssm_interrupted_promote_is_finished_without_a_second_version(
    aws: dict[str, Any],
) -> None:
    name = f"/{aws['prefix']}/app/ENCRYPTION_KEY"
    aws["ssm"].put_parameter(Name=name, Value="ek-current", Type="SecureString")
    store = ssm_store(aws, name)
    store.put_pending("ek-next")
    # Killed after promote wrote the new version, before its labels moved.
    aws["ssm"].put_parameter(Name=name, Value="ek-next", Type="SecureString", Overwrite=True)
    record = store.read()
    assert (record.current, record.pending) == ("ek-current", "ek-next")
    assert "warnings" not in record.meta["store"]
    store.promote()
    assert history(aws, name) == [(1, "ek-current", ["previous"]), (2, "ek-next", ["current"])]


def test_ssm_discard_after_an_interrupted_promote_puts_current_back(
    aws: dict[str, Any],
) -> None:
    name = f"/{aws['prefix']}/app/NEXTAUTH_SECRET"
    aws["ssm"].put_parameter(Name=name, Value="na-current", Type="SecureString")
    store = ssm_store(aws, name, pending_parameter=f"/{aws['prefix']}/pending/NEXTAUTH")
    store.put_pending("na-next")
    aws["ssm"].put_parameter(Name=name, Value="na-next", Type="SecureString", Overwrite=True)
    store.discard_pending()
    assert value_of(aws, name) == "na-current"
    assert history(aws, name)[-1] == (3, "na-current", ["current"])
    assert value_of(aws, f"/{aws['prefix']}/pending/NEXTAUTH") is None


def test_ssm_keeps_the_parameters_kms_key(aws: dict[str, Any]) -> None:
    key = aws["kms"].create_key(Description="opsbook test")["KeyMetadata"]["KeyId"]
    name = f"/{aws['prefix']}/app/STRIPE_KEY"
    aws["ssm"].put_parameter(Name=name, Value="sk-current", Type="SecureString", KeyId=key)
    ssm_store(aws, name).put_pending("sk-next")
    described = aws["ssm"].describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"/opsbook/pending{name}"]}]
    )["Parameters"]
    assert [(p["Type"], p.get("KeyId")) for p in described] == [("SecureString", key)]


def test_ssm_errors_and_warnings(aws: dict[str, Any]) -> None:
    missing = f"/{aws['prefix']}/nope"
    with pytest.raises(ss.SecretStoreError, match=f"put-parameter --name {missing} --type"):
        ssm_store(aws, missing).read()
    plain = f"/{aws['prefix']}/plain"
    aws["ssm"].put_parameter(Name=plain, Value="not-secure", Type="String")
    with pytest.raises(ss.SecretStoreError, match="is a String parameter"):
        ssm_store(aws, plain).read()
    name = f"/{aws['prefix']}/by-hand"
    aws["ssm"].put_parameter(Name=name, Value="bh-1", Type="SecureString")
    ssm_store(aws, name).put_pending("bh-2")
    aws["ssm"].put_parameter(Name=name, Value="bh-typed", Type="SecureString", Overwrite=True)
    record = ssm_store(aws, name).read()
    assert record.current == "bh-1"
    assert "written outside opsbook" in record.meta["store"]["warnings"][0]


# =================================================================== through ansible-playbook

PLAYBOOK = """
- name: secret_store through ansible-playbook
  hosts: localhost
  gather_facts: false
  vars:
    vault_store: {type: vault, file: "{{ vault_file }}", var: vault_jwt_secret}
    sm_store: {type: aws_secretsmanager, secret_id: "{{ sm_id }}", endpoint_url: "{{ aws_url }}"}
    ssm_store: {type: aws_ssm, parameter: "{{ ssm_name }}", endpoint_url: "{{ aws_url }}"}
  tasks:
    - name: Ansible read the vault file this run rewrites (the value in it is current)
      ansible.builtin.assert:
        that: "'sha256:' + (vault_jwt_secret | hash('sha256'))[:12] == expect_loaded"
      no_log: true

    - name: Read
      opsbook.runbooks.secret_store: {store: "{{ vault_store }}"}
      register: read

    # The loop items name the values, never hold them: a loop item is shown at -vvvv.
    - name: Put pending in every store
      opsbook.runbooks.secret_store:
        store: "{{ lookup('vars', item.store) }}"
        action: put_pending
        value: "{{ lookup('vars', item.value) }}"
      loop:
        - {store: vault_store, value: new_vault}
        - {store: sm_store, value: new_sm}
        - {store: ssm_store, value: new_ssm}
      loop_control: {label: "{{ item.store }}"}
      register: put

    - name: Again - nothing changes
      opsbook.runbooks.secret_store:
        {store: "{{ vault_store }}", action: put_pending, value: "{{ new_vault }}"}
      register: again

    - name: Promote (skipped in check mode - nothing is pending there)
      opsbook.runbooks.secret_store: {store: "{{ item }}", action: promote}
      loop: ["{{ vault_store }}", "{{ sm_store }}", "{{ ssm_store }}"]
      loop_control: {label: "{{ item.type }}"}
      register: promote
      when: not ansible_check_mode

    - name: Read the values (no_log)
      opsbook.runbooks.secret_store: {store: "{{ vault_store }}", return_values: true}
      register: values
      no_log: true

    - name: Values without no_log are refused
      opsbook.runbooks.secret_store: {store: "{{ vault_store }}", return_values: true}
      register: refused
      ignore_errors: true

    # With `environment:` the module runs as a module process, without the run's vault secrets.
    - name: As a module process, the AWS store is read
      opsbook.runbooks.secret_store: {store: "{{ sm_store }}"}
      environment: {OPSBOOK_TEST: "1"}
      register: as_module

    - name: As a module process, the encrypted vault file is refused with what to do
      opsbook.runbooks.secret_store: {store: "{{ vault_store }}"}
      environment: {OPSBOOK_TEST: "1"}
      register: vault_as_module
      ignore_errors: true

    - name: What happened, for the test (fingerprints only)
      ansible.builtin.copy:
        dest: "{{ report }}"
        content: "{{ {'read': read.fingerprints, 'put': put.results | map(attribute='fingerprints'),
          'put_changed': put.results | map(attribute='changed'), 'again': again.changed,
          'promote': promote.results | default([]) | selectattr('fingerprints', 'defined')
          | map(attribute='fingerprints'),
          'values_fp': 'sha256:' + (values['values']['current'] | hash('sha256'))[:12],
          'refused': refused.msg, 'as_module': as_module.fingerprints,
          'vault_as_module': vault_as_module.msg} | to_json }}"
        mode: "0600"
      check_mode: false
      diff: false
"""


def test_secret_store_module_through_ansible_playbook(aws: dict[str, Any], tmp_path: Path) -> None:
    """A vault file encrypted by ansible-vault, a Secrets Manager secret and an SSM parameter,
    staged and promoted by one run at -vvvv, then a --check run that changes nothing."""
    inventory = tmp_path / "inventories" / "it"
    vault_file = inventory / "group_vars" / "all" / "vault.yml"
    password_file = tmp_path / "vault-pass"
    password_file.write_text(VAULT_PASSWORD + "\n")
    plaintext = (
        "# it secrets\nvault_database_url: postgresql://app:db-pw-7f@db/app\n"
        f"{VAR}: it-current-0  # HS256 key\nvault_other: 'x y'\n"
    )
    encrypt_file(plaintext, password_file, vault_file)
    (inventory / "hosts.yml").write_text(
        f"all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    sm_id = f"{aws['prefix']}/it/jwt"
    aws["sm"].create_secret(Name=sm_id, SecretString="it-sm-current")
    ssm_name = f"/{aws['prefix']}/it/JWT_SECRET"
    aws["ssm"].put_parameter(Name=ssm_name, Value="it-ssm-current", Type="SecureString")
    canaries = {
        "new_vault": CANARY + "-vault",
        "new_sm": CANARY + "-sm",
        "new_ssm": CANARY + "-ssm",
    }
    playbook = tmp_path / "secret_store.yml"
    playbook.write_text(PLAYBOOK)

    def run(check: bool, expect_loaded: str) -> tuple[Any, dict[str, Any]]:
        report = tmp_path / f"report-{int(check)}.json"
        extra = tmp_path / f"extra-{int(check)}.json"
        extra.write_text(json.dumps({
            **canaries, "vault_file": str(vault_file), "sm_id": sm_id, "ssm_name": ssm_name,
            "aws_url": aws["endpoint"], "report": str(report), "expect_loaded": expect_loaded,
        }))  # fmt: skip
        argv = [str(playbook), "-i", str(inventory / "hosts.yml"), "-e", f"@{extra}",
                "--vault-password-file", str(password_file), "-vvvv", "--diff"]  # fmt: skip
        proc = run_ansible(
            [*argv, "--check"] if check else argv,
            env=ansible_env(tmp_path / "oplog.jsonl"),
            timeout=180,
            tool="ansible-playbook",
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert not leaks(canaries.values(), texts={"stdout": proc.stdout, "stderr": proc.stderr})
        return proc, json.loads(report.read_text())

    _proc, report = run(False, fp("it-current-0"))
    assert report["read"] == {"current": fp("it-current-0"), "pending": None, "previous": None}
    assert report["put_changed"] == [True, True, True]
    assert [r["pending"] for r in report["put"]] == [fp(v) for v in canaries.values()]
    assert report["again"] is False
    previous = [fp("it-current-0"), fp("it-sm-current"), fp("it-ssm-current")]
    assert report["promote"] == [
        {"current": fp(value), "pending": None, "previous": old}
        for value, old in zip(canaries.values(), previous, strict=True)
    ]
    assert report["values_fp"] == fp(canaries["new_vault"])
    assert "set no_log: true on the task" in report["refused"]
    assert report["as_module"]["current"] == fp(canaries["new_sm"])
    assert "run ansible-playbook with --vault-password-file" in report["vault_as_module"]

    vault = VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))])
    raw = vault_file.read_bytes()
    assert raw.startswith(b"$ANSIBLE_VAULT;1.1;AES256\n")
    assert bytes(vault.decrypt(raw)).decode() == plaintext.replace(
        f"{VAR}: it-current-0  # HS256 key\n",
        f"{VAR}: {canaries['new_vault']}  # HS256 key\n{VAR}_previous: it-current-0\n",
    )
    assert yaml.safe_load(bytes(vault.decrypt(raw)))[VAR] == canaries["new_vault"]
    assert sorted(p.name for p in vault_file.parent.iterdir()) == ["vault.yml"]
    # No file holds a value in clear (the oplog, the report...) but the test's own input.
    assert not leaks(canaries.values(), roots=[tmp_path], skip=[tmp_path / "extra-0.json"])

    # --check: every store read, a new value "staged" (changed), nothing written anywhere.
    sm_before = aws["sm"].describe_secret(SecretId=sm_id)["VersionIdsToStages"]
    ssm_before = history(aws, ssm_name)
    canaries = {key: value + "-2" for key, value in canaries.items()}
    _proc, report = run(True, fp(CANARY + "-vault"))
    assert report["put_changed"] == [True, True, True]
    assert [r["pending"] for r in report["put"]] == [fp(v) for v in canaries.values()]
    assert vault_file.read_bytes() == raw
    assert aws["sm"].describe_secret(SecretId=sm_id)["VersionIdsToStages"] == sm_before
    assert history(aws, ssm_name) == ssm_before
    assert value_of(aws, f"/opsbook/pending{ssm_name}") is None
