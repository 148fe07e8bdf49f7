"""The runbooks on a platform target, end to end, as a team on Render would run them: through
`opsbook run` (ansible-runner) at -vvvv with the API key in the environment's vault - the key
is in none of the runner's artifacts, its env/ folder, the operation log or the output; and the
refusals a platform gets instead of a half-done job (scale.yml where there is nothing to scale,
a deploy to hosts without an artifact, a rotation whose value of record would be the platform's
own env); and the secret rotation on a platform: the env store written from the vault, the app
redeployed, sessions signed with the replaced value still accepted, a failed redeploy undone.

The per-platform flows (deploy, automatic rollback, rollback to a named deployment,
maintenance mode, scale) are in tests/integration/test_{vercel,render,fly}_platform.py."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from opsbook.lab.sampleapp.app import new_token
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env
from tests.integration.canaries import encrypt_file, leaks
from tests.integration.platform_flow import ledger, platform_inventory, run_runbook
from tests.standins_fly import FlyStandin
from tests.standins_render import RenderStandin
from tests.standins_vercel import VercelStandin

pytestmark = pytest.mark.integration

VAULT_PASSWORD = f"Canary-Vault-Pw-{secrets.token_hex(4)}"


@pytest.fixture
def render() -> Iterator[RenderStandin]:
    with RenderStandin() as standin:
        standin.add_commit("a1" * 20, "1.0.0")
        standin.seed_live("a1" * 20)
        standin.add_commit("b2" * 20, "1.1.0")
        yield standin
        assert standin.mismatches == []


@pytest.fixture
def short_home() -> Iterator[Path]:
    """HOME and TMPDIR of the run, scanned for leaks afterwards."""
    base = Path(tempfile.mkdtemp(prefix="plat-"))
    for name in ("home", "tmp"):
        (base / name).mkdir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_opsbook_run_deploy_on_render_at_vvvv_leaves_the_api_key_nowhere(
    tmp_path: Path, render: RenderStandin, short_home: Path
) -> None:
    password_file = tmp_path / "vault-password"
    password_file.write_text(VAULT_PASSWORD)
    inventory = platform_inventory(
        tmp_path, "render", render.app.url,
        {"render_api_url": render.url, "render_service_id": render.service_id},
        env="platform", inventories="inventories",
    )  # fmt: skip
    encrypt_file(
        f"render_api_key: {render.token}\n",
        password_file,
        inventory / "group_vars" / "all" / "vault.yml",
    )
    oplog = tmp_path / "oplog.jsonl"
    env = ansible_env(oplog, {
        "HOME": str(short_home / "home"), "TMPDIR": str(short_home / "tmp"),
        "OPSBOOK_PROJECT_DIR": str(PROJECT_ROOT),
        "OPSBOOK_RUNS_DIR": str(tmp_path / "runs"),
        "OPSBOOK_INVENTORY_ROOT": str(tmp_path / "inventories"),
    })  # fmt: skip
    run = subprocess.run(
        [str(VENV_BIN / "opsbook"), "run", "deploy", "--env", "platform", "-vvvv",
         "--vault-password-file", str(password_file), "--reason", "platform canary",
         "-e", "app_version=1.1.0", "-e", f"app_source={'b2' * 20}"],
        cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]

    # it deployed, through Render's API, behind the health gate
    assert render.served_version == "1.1.0"
    record = json.loads(oplog.read_text().splitlines()[-1])
    assert record["playbook"] == "deploy" and record["status"] == "successful", record
    report = record["outputs"]["deploy"]
    assert report["target"] == "render" and report["status"] == "succeeded", report
    assert report["deployed"] == [f"render:{render.service_id}"] and report["api_calls"] > 0
    assert [e["status"] for e in ledger(tmp_path, "platform")] == ["succeeded"]
    artifacts = list((tmp_path / "runs").glob("*/artifacts/*"))
    assert len(artifacts) == 1
    shown = (artifacts[0] / "stdout").read_text()
    assert "task path:" in shown  # -vvvv
    assert "TASK [opsbook.runbooks.platform_render : deploy" in shown

    # ...and the key is nowhere: not in the artifacts, env/, the oplog, HOME, TMPDIR, output
    found = leaks(
        [render.token],
        roots=[tmp_path, short_home],
        texts={"opsbook run stdout": run.stdout, "opsbook run stderr": run.stderr},
        skip=[password_file],
    )
    assert found == {}


def test_a_platform_gets_plain_refusals_where_opsbook_cannot_act(
    run_playbook, tmp_path: Path, render: RenderStandin
) -> None:
    inventory = platform_inventory(
        tmp_path, "render", render.app.url,
        {"render_api_url": render.url, "render_api_key": render.token,
         "render_service_id": render.service_id,
         "opsbook_secrets": {"jwt": {"store": {"type": "env_file"}}}},
    )  # fmt: skip
    before = render.api_calls

    rotation = run_runbook(run_playbook, tmp_path, "rotate_secrets", inventory, secrets="jwt")
    assert rotation.rc != 0  # the value of record would be the platform's env: not read
    assert "jwt kept in the hosts' env files (store env_file), but deploy_target is render" in (
        " ".join(rotation.output.split())
    )

    hosts = platform_inventory(tmp_path, "hosts", render.app.url, {}, env="hosts")
    scale = run_runbook(run_playbook, tmp_path, "scale", hosts, scale_count=3)
    assert scale.rc != 0
    assert "Scale refused, nothing was changed: deploy_target is hosts" in scale.output
    no_artifact = run_runbook(run_playbook, tmp_path, "deploy", hosts, app_version="1.1.0")
    assert no_artifact.rc != 0
    assert "deploy_target=hosts needs app_artifact" in no_artifact.output

    assert render.api_calls == before  # nothing reached the platform
    assert not (tmp_path / "state" / "locks" / "staging" / "deploy.json").exists()


def _me(app_url: str, secret: str) -> int:
    """The status /api/me answers to a token signed with ``secret`` (the sample app's rule)."""
    request = urllib.request.Request(
        f"{app_url}/api/me", headers={"Authorization": f"Bearer {new_token('probe', secret)}"}
    )
    try:
        with urllib.request.build_opener().open(request, timeout=5) as answer:  # no cookie jar
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rotate_jwt_on_render_sets_its_env_store_and_keeps_sessions(
    run_playbook, tmp_path: Path
) -> None:
    old = secrets.token_urlsafe(32)
    vault = tmp_path / "secrets" / "vault.yml"  # the store of record (a plain vault file here)
    vault.parent.mkdir()
    vault.write_text(f"vault_jwt_secret: {old}\n")
    with RenderStandin() as render:
        render.env["JWT_SECRET"] = old
        render.add_commit("a1" * 20, "1.0.0")
        render.seed_live("a1" * 20)
        inventory = platform_inventory(
            tmp_path, "render", render.app.url,
            {"render_api_url": render.url, "render_api_key": render.token,
             "render_service_id": render.service_id,
             "opsbook_secrets": {"jwt": {
                 "store": {"type": "vault", "file": str(vault), "var": "vault_jwt_secret"},
                 "test_path": "/api/me"}}},
        )  # fmt: skip
        unit = f"render:{render.service_id}"

        # a redeploy that fails (a POST is not repeated after a 5xx: one fault fails it): the
        # values the platform held are put back, and applied
        render.fail_on("create-deploy", 500)
        failed = run_runbook(run_playbook, tmp_path, "rotate_secrets", inventory, secrets="jwt")
        assert failed.rc != 0
        report = failed.stats["rotation"]
        assert report["status"] == "undone" and report["hosts_undone"] == [unit], report
        assert render.env["JWT_SECRET"] == old and "JWT_SECRET_PREVIOUS" not in render.env
        assert vault.read_text() == f"vault_jwt_secret: {old}\n"  # the pending value discarded
        assert _me(render.app.url, old) == 200

        rotated = run_runbook(run_playbook, tmp_path, "rotate_secrets", inventory, secrets="jwt")
        assert rotated.rc == 0, rotated.output[-3000:]
        report = rotated.stats["rotation"]
        assert report["status"] == "succeeded" and report["hosts_changed"] == [unit], report
        new = yaml.safe_load(vault.read_text())["vault_jwt_secret"]
        assert new != old and render.env["JWT_SECRET"] == new
        assert render.env["JWT_SECRET_PREVIOUS"] == old
        assert _me(render.app.url, new) == 200 and _me(render.app.url, old) == 200  # sessions live
        assert new not in rotated.output and old not in rotated.output

        revoked = run_runbook(
            run_playbook, tmp_path, "rotate_secrets", inventory,
            secrets="jwt", rotation_step="revoke", force_revoke=True,
        )  # fmt: skip
        assert revoked.rc == 0, revoked.output[-3000:]
        assert "JWT_SECRET_PREVIOUS" not in render.env and render.env["JWT_SECRET"] == new
        assert _me(render.app.url, new) == 200 and _me(render.app.url, old) == 401
        assert render.mismatches == [] and render.bulk_puts == []


@pytest.mark.parametrize("target", ["vercel", "fly"])
def test_rotate_jwt_on_vercel_and_fly(run_playbook, tmp_path: Path, target: str) -> None:
    """The same rotation through the other platforms' env entry points: Vercel's production env
    vars and a build of the serving deployment; Fly's app secrets and the machines updated."""
    old = secrets.token_urlsafe(32)
    vault = tmp_path / "vault.yml"
    vault.write_text(f"vault_jwt_secret: {old}\n")
    rotation = {"opsbook_secrets": {"jwt": {
        "store": {"type": "vault", "file": str(vault), "var": "vault_jwt_secret"},
        "test_path": "/api/me"}}}  # fmt: skip
    if target == "vercel":
        standin: VercelStandin | FlyStandin = VercelStandin()
        standin.set_env("JWT_SECRET", old, ("production",))
        standin.add_production(version="1.0.0")
        connection = {"vercel_project": standin.project_name, "vercel_token": standin.token,
                      "vercel_api_url": standin.url}  # fmt: skip

        def env_value(name: str) -> str | None:
            return standin.env_value(name)
    else:
        standin = FlyStandin()
        machines = [
            standin.add_machine(f"registry.fly.io/{standin.app_name}:1.0.0",
                                env={"PORT": "8080", "JWT_SECRET": old})
            for _ in range(2)
        ]  # fmt: skip
        connection = {"fly_app": standin.app_name, "fly_api_token": standin.token,
                      "fly_api_url": standin.url}  # fmt: skip

        def env_value(name: str) -> str | None:
            values = {standin.booted_env[m].get(name) for m in machines}
            assert len(values) == 1, values  # every machine booted with the same values
            return values.pop()

    with standin:
        inventory = platform_inventory(
            tmp_path, target, standin.app.url, {**connection, **rotation}
        )
        run = run_runbook(run_playbook, tmp_path, "rotate_secrets", inventory, secrets="jwt")
        assert run.rc == 0, run.output[-3000:]
        assert run.stats["rotation"]["status"] == "succeeded"
        new = yaml.safe_load(vault.read_text())["vault_jwt_secret"]
        assert new != old
        assert env_value("JWT_SECRET") == new and env_value("JWT_SECRET_PREVIOUS") == old
        assert _me(standin.app.url, new) == 200 and _me(standin.app.url, old) == 200
        assert _me(standin.app.url, secrets.token_urlsafe(32)) == 401
        assert new not in run.output and old not in run.output
        assert standin.mismatches == []
