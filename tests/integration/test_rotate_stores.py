"""rotate_secrets.yml with the secret kept in a store of record and installed in the app hosts'
env files: the inventory's encrypted vault file (rewritten and re-encrypted in place, the rest
of its plaintext byte-identical), AWS Secrets Manager (AWSPENDING / AWSCURRENT / AWSPREVIOUS)
and SSM Parameter Store (SecureString versions) on moto's server. The store ends with the new
value as current and the replaced one as previous, every host with the same, and a host that
does not hold the store's value stops the run before anything changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from opsbook.lab.hosts import AppHost
from tests.integration.canaries import ansible_vault, encrypt_file
from tests.integration.stats_helper import run_with_stats
from tests.lab import MotoS3Server
from tests.lab.s3 import S3_CREDENTIALS

pytestmark = pytest.mark.integration

VAULT_PASSWORD = "rotation-test-vault-password"
OTHER_LINES = "# keep me\nvault_database_url: postgresql://u:p@db:5432/app  # and me\n"


def state_url(tmp_path: Path) -> str:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return f"file://{state}"


def test_vault_file_store(app_hosts: list[AppHost], make_inventory, run_playbook, tmp_path):
    old = app_hosts[0].read_env()["JWT_SECRET"]
    password = tmp_path / "vault-pass"
    password.write_text(VAULT_PASSWORD + "\n")
    vault = tmp_path / "secrets" / "vault.yml"
    encrypt_file(f"{OTHER_LINES}vault_jwt_secret: {old}\n", password, vault)
    inventory = make_inventory(
        extra_vars={
            "opsbook_state_url": state_url(tmp_path),
            "opsbook_secrets": {
                "jwt": {
                    "store": {"type": "vault", "file": str(vault), "var": "vault_jwt_secret"},
                    "test_path": "/api/me",
                }
            },
        }
    )
    run = run_with_stats(
        run_playbook,
        tmp_path,
        "rotate_secrets",
        inventory,
        {"secrets": "jwt"},
        args=["--vault-password-file", str(password)],
    )
    assert run.rc == 0, run.output[-3000:]
    new = app_hosts[0].read_env()["JWT_SECRET"]
    assert new != old and all(h.read_env()["JWT_SECRET"] == new for h in app_hosts)
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    plain = ansible_vault(["view", "--vault-password-file", str(password), str(vault)], "")
    assert plain == f"{OTHER_LINES}vault_jwt_secret: {new}\nvault_jwt_secret_previous: {old}\n"
    assert new not in run.output and old not in run.output


@pytest.fixture
def aws(s3: MotoS3Server, app_hosts: list[AppHost]) -> dict[str, Any]:
    kwargs = {
        "endpoint_url": s3.endpoint_url,
        "region_name": "us-east-1",
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    sm, ssm = boto3.client("secretsmanager", **kwargs), boto3.client("ssm", **kwargs)
    env = app_hosts[0].read_env()
    tag = Path(app_hosts[0].base_dir).name + str(id(sm))
    secret_id = f"app/jwt-{tag}"
    parameter = f"/app/{tag}/nextauth"
    sm.create_secret(Name=secret_id, SecretString=env["JWT_SECRET"])
    ssm.put_parameter(Name=parameter, Value=env["NEXTAUTH_SECRET"], Type="SecureString")
    return {"sm": sm, "ssm": ssm, "secret_id": secret_id, "parameter": parameter, "env": env}


def aws_inventory(make_inventory, tmp_path: Path, aws: dict[str, Any], s3: MotoS3Server) -> Path:
    return make_inventory(
        extra_vars={
            "opsbook_state_url": state_url(tmp_path),
            "s3_endpoint_url": s3.endpoint_url,
            "opsbook_secrets": {
                "jwt": {
                    "store": {"type": "aws_secretsmanager", "secret_id": aws["secret_id"]},
                    "test_path": "/api/me",
                },
                "nextauth": {
                    "store": {"type": "aws_ssm", "parameter": aws["parameter"]},
                    "test_path": "/api/session",
                    "test_cookie": "session",
                },
            },
        }
    )


def stage_value(sm, secret_id: str, stage: str) -> str:
    return sm.get_secret_value(SecretId=secret_id, VersionStage=stage)["SecretString"]


def test_secrets_manager_and_ssm_stores(
    app_hosts: list[AppHost], make_inventory, run_playbook, tmp_path, aws, s3
):
    inventory = aws_inventory(make_inventory, tmp_path, aws, s3)
    # before any rotation by opsbook, the report takes the ages from the stores (set just now)
    report = run_with_stats(run_playbook, tmp_path, "secrets_report", inventory, {})
    assert report.rc == 0, report.output[-3000:]
    rows = {row["name"]: row for row in report.stats["rotation_schedule"]["secrets"]}
    for name in ("jwt", "nextauth"):
        assert rows[name]["state"] == "ok" and rows[name]["age_days"] == 0.0, rows[name]
        assert rows[name]["last_rotated"]

    run = run_with_stats(
        run_playbook, tmp_path, "rotate_secrets", inventory, {"secrets": "jwt,nextauth"}
    )
    assert run.rc == 0, run.output[-3000:]
    env = app_hosts[0].read_env()
    assert all(h.read_env() == env for h in app_hosts)
    old_jwt, old_nextauth = aws["env"]["JWT_SECRET"], aws["env"]["NEXTAUTH_SECRET"]
    assert env["JWT_SECRET"] != old_jwt and env["NEXTAUTH_SECRET"] != old_nextauth
    # Secrets Manager: AWS's own labels, as AWS defines them
    assert stage_value(aws["sm"], aws["secret_id"], "AWSCURRENT") == env["JWT_SECRET"]
    assert stage_value(aws["sm"], aws["secret_id"], "AWSPREVIOUS") == old_jwt
    versions = aws["sm"].list_secret_version_ids(SecretId=aws["secret_id"])["Versions"]
    assert not any("AWSPENDING" in v.get("VersionStages", []) for v in versions)
    # SSM: what an app that reads the parameter gets is the new value
    got = aws["ssm"].get_parameter(Name=aws["parameter"], WithDecryption=True)["Parameter"]
    assert got["Value"] == env["NEXTAUTH_SECRET"] and got["Type"] == "SecureString"
    report = run.stats["rotation"]
    assert [s["action"] for s in report["secrets"]] == ["rotate", "rotate"]
    for value in (env["JWT_SECRET"], env["NEXTAUTH_SECRET"], old_jwt, old_nextauth):
        assert value not in run.output
    assert json.dumps(report).count("sha256:") >= 4


def test_hosts_that_do_not_hold_the_stores_value_stop_the_run(
    app_hosts: list[AppHost], make_inventory, run_playbook, tmp_path, aws, s3
):
    aws["sm"].put_secret_value(SecretId=aws["secret_id"], SecretString="x" * 64)
    inventory = aws_inventory(make_inventory, tmp_path, aws, s3)
    before = [h.env_file.read_bytes() for h in app_hosts]
    run = run_playbook("rotate_secrets", inventory, {"secrets": "jwt"})
    assert run.returncode != 0
    assert "the store's current JWT_SECRET is sha256:" in run.stdout
    assert all(f"{h.name} holds sha256:" in run.stdout for h in app_hosts)
    assert [h.env_file.read_bytes() for h in app_hosts] == before
    assert stage_value(aws["sm"], aws["secret_id"], "AWSCURRENT") == "x" * 64
