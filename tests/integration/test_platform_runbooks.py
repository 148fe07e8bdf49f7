"""The runbooks on a platform target, end to end, as a team on Render would run them: through
`opsbook run` (ansible-runner) at -vvvv with the API key in the environment's vault - the key
is in none of the runner's artifacts, its env/ folder, the operation log or the output; and the
refusals a platform gets instead of a half-done job (the secret rotation, which does not write
platform env stores yet, and scale.yml where there is nothing to scale).

The per-platform flows (deploy, automatic rollback, rollback to a named deployment,
maintenance mode, scale) are in tests/integration/test_{vercel,render,fly}_platform.py."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env
from tests.integration.canaries import encrypt_file, leaks
from tests.integration.platform_flow import ledger, platform_inventory, run_runbook
from tests.standins_render import RenderStandin

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
    assert len(artifacts) == 1 and (artifacts[0] / "stdout").read_text().count("ESTABLISH") > 0

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
         "render_service_id": render.service_id},
    )  # fmt: skip
    before = render.api_calls

    rotation = run_runbook(run_playbook, tmp_path, "rotate_secrets", inventory, secrets="jwt")
    assert rotation.rc != 0
    assert "rotate_secrets refused, nothing was changed: deploy_target is render" in (
        rotation.output
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
