"""Vercel as a deploy target, against VercelStandin (tests/standins_vercel.py), every request
and answer judged by Vercel's document:

- the modules (vercel_env, vercel_deployment) through ansible-playbook at -vvvv, in a team
  (teamId on every call): env vars created, updated and deleted idempotently (a rerun changes
  nothing - a sensitive value compared by its fingerprint), check mode and a masked diff, a
  refused token (403, nothing changed), a 5xx retried and a 429's Retry-After honoured
  (measured); a redeploy of a commit's preview to production, skipped when it serves already,
  an Instant Rollback by version, a redeploy after it (Vercel left it STAGED: promoted), a
  rollback to nothing that exists; the API calls reported; the token and the values never in
  the output, the results or the operation log;
- X-RateLimit-Reset (Vercel's epoch) honoured by the client;
- the runbooks on a Vercel inventory (tests/integration/platform_flow.py): deploy behind the
  health gate (at -vvvv), again (unchanged, no write), --check (no write), a broken version
  rolled back automatically, rollback.yml to a named deployment and to one that does not
  exist, maintenance mode on (503), on again (unchanged), off, and scale refused.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
import yaml

from tests.harness import PROJECT_ROOT
from tests.integration.platform_flow import ledger, platform_inventory, run_runbook
from tests.loaders import load_module_utils
from tests.standins_vercel import VercelStandin

pytestmark = pytest.mark.integration

SHA2, SHA3 = "a2" * 20, "b3" * 20
PYTHON = str(PROJECT_ROOT / ".venv" / "bin" / "python")
TEAM = "team_opsbook"


def write_playbook(
    tmp_path: Path,
    name: str,
    tasks: list[dict[str, Any]],
    saved: list[str],
    play_vars: dict[str, Any] | None = None,
) -> str:
    """A localhost play of ``tasks`` (with ``play_vars``) that saves the registered results
    ``saved`` to <tmp>/<name>.json; the path relative to playbooks/ (what run_playbook takes)."""
    results = "{" + ", ".join(f"'{n}': {n} | default(none)" for n in saved) + "}"
    tasks = [
        *tasks,
        {
            "name": "Save the results",
            "ansible.builtin.copy": {
                "content": "{{ " + results + " | to_json }}",
                "dest": str(tmp_path / f"{name}.json"),
                "mode": "0600",
            },
        },
    ]
    play = {"name": name, "hosts": "localhost", "gather_facts": False, "vars": play_vars or {},
            "tasks": tasks}  # fmt: skip
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump([play], sort_keys=False))
    return os.path.relpath(path, PROJECT_ROOT / "playbooks")


def task(module: str, register: str, **args: Any) -> dict[str, Any]:
    return {
        "name": register,
        f"opsbook.runbooks.{module}": {
            "project": "opsbook-app",
            "team_id": TEAM,
            "base_url": "{{ vercel_url }}",
            "token": "{{ vercel_token }}",
            **args,
        },
        "register": register,
        "ignore_errors": True,
    }


def statuses(calls: list[str]) -> list[str]:
    return [c.rsplit(" ", 1)[-1] for c in calls]


def test_vercel_modules_idempotent_faults_and_no_secret_at_vvvv(
    run_playbook: Any, tmp_path: Path
) -> None:
    canary = "canary-vercel-" + os.urandom(8).hex()
    expired = "tok_expired_" + os.urandom(8).hex()
    with VercelStandin(team_id=TEAM) as vercel:
        v1 = vercel.add_production(version="1.0.0", meta={"opsbook_version": "1.0.0"})
        p2 = vercel.add_preview(version="2.0.0", sha=SHA2)
        p3 = vercel.add_preview(version="3.0.0", sha=SHA3)
        vercel.set_env("FOREIGN", "set-by-hand", ("production", "preview"), "sensitive")
        vercel.fail_next(503)  # the first call: retried after the backoff
        vercel.fail_next(429, retry_after=1)  # then a rate limit: Retry-After honoured
        secret = {"type": "sensitive", "targets": ["production", "preview"]}
        pair = [{"key": "SECRET_A", "value": "{{ canary }}"},
                {"key": "FOREIGN", "value": "{{ canary }}-f"}]  # fmt: skip
        meta2 = {"opsbook_version": "2.0.0", "opsbook_release": "r2"}
        tasks = [
            task("vercel_env", "would", env_vars=pair, **secret) | {"check_mode": True},
            task("vercel_env", "created", env_vars=pair, **secret) | {"diff": True},
            task("vercel_env", "again", env_vars=pair, **secret),
            task("vercel_env", "updated", key="SECRET_A", value="{{ canary }}-2", **secret)
            | {"diff": True},
            task("vercel_env", "refused", key="SECRET_A", value="x", token=expired, **secret),
            task("vercel_env", "deleted", key="FOREIGN", state="absent", **secret),
            task("vercel_deployment", "redeployed", action="redeploy", sha=SHA2[:12],
                 meta=meta2, skip_if_serving={"opsbook_version": "2.0.0"}),
            task("vercel_deployment", "rolled", action="rollback", deployment="1.0.0"),
            task("vercel_deployment", "after_rollback", action="redeploy", deployment=p3,
                 meta={"opsbook_version": "3.0.0"}),
            task("vercel_deployment", "missing", action="rollback", deployment="9.9.9"),
        ]  # fmt: skip
        saved = [t["register"] for t in tasks]
        playbook = write_playbook(tmp_path, "vercel_modules", tasks, saved)
        extravars = {
            "vercel_url": vercel.url,
            "vercel_token": vercel.token,
            "canary": canary,
            "ansible_connection": "local",
            "ansible_python_interpreter": PYTHON,
        }
        run = run_playbook(playbook, "localhost,", extravars=extravars, args=["-vvvv"])
        assert vercel.mismatches == []
        token, stamps = vercel.token, list(vercel.stamps)
        teams = {tuple(call.query.get("teamId") or []) for call in vercel.server.calls}
        secret_a = vercel.env_entries("SECRET_A")
        foreign = vercel.env_entries("FOREIGN")
        production, rolled_back = vercel.production, vercel.rolled_back
        serving = vercel.serving_version()
        rollbacks, promotions = list(vercel.rollbacks), list(vercel.promotions)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    results = json.loads((tmp_path / "vercel_modules.json").read_text())
    assert teams == {(TEAM,)}  # teamId on every call that reached a handler

    # env vars: check mode, create, idempotent rerun, update, a bad token, delete
    would = results["would"]
    assert would["changed"] and would["changed_keys"] == ["SECRET_A", "FOREIGN"]
    assert statuses(would["api_calls"]) == ["503", "429", "200"]  # GETs only, retried
    waits = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    assert 0.9 <= waits[0] < 1.6 and 0.95 <= waits[1] < 1.6, waits[:3]  # backoff, Retry-After
    created = results["created"]
    assert created["changed"] and created["notes"] == [
        "FOREIGN: the value Vercel holds cannot be read (type sensitive) and carries no opsbook "
        "fingerprint: written"
    ]
    assert [(c["op"], c["key"]) for c in created["changes"]] == [
        ("create", "SECRET_A"), ("edit", "FOREIGN")]  # fmt: skip
    assert created["diff"]["after"]["SECRET_A"] == [
        {"targets": ["production", "preview"], "type": "sensitive", "value": "******** (changed)"}
    ]
    again = results["again"]
    assert again["changed"] is False and statuses(again["api_calls"]) == ["200"]
    updated = results["updated"]
    assert updated["changed"] and updated["changes"][0]["why"] == "value"
    assert updated["diff"]["before"]["SECRET_A"][0]["value"] == "********"
    assert [e["value"] for e in secret_a] == [canary + "-2"]
    assert foreign == [] and results["deleted"]["changed"]
    refused = results["refused"]
    assert refused["failed"] and "HTTP 403 Forbidden: Not authorized" in refused["msg"]
    assert "the token is refused" in refused["msg"] and "nothing was changed" in refused["msg"]

    # deployments: a redeploy of the commit's preview, an Instant Rollback by version, a
    # redeploy after it (Vercel left it STAGED: promoted), a target that does not exist
    redeployed = results["redeployed"]
    new2 = redeployed["deployment"]
    assert redeployed["changed"] and new2["state"] == "READY" and new2["version"] == "2.0.0"
    assert new2["meta"]["githubCommitSha"] == SHA2 and redeployed["before"]["id"] == v1
    assert redeployed["current"]["id"] == new2["id"] != p2
    assert [c.split(" ")[1] for c in redeployed["api_calls"]] == [
        "/v6/deployments", "/v6/deployments", "/v13/deployments",
        f"/v13/deployments/{new2['id']}", "/v6/deployments"]  # fmt: skip
    rolled = results["rolled"]
    assert rolled["changed"] and rolled["current"]["id"] == v1
    assert rolled["before"]["id"] == new2["id"]
    after = results["after_rollback"]  # Vercel left it STAGED (a rollback paused promotion)
    assert after["changed"] and "promoted" in after["msg"]
    assert after["current"]["version"] == "3.0.0"
    assert rollbacks == [v1] and promotions == [after["deployment"]["id"]]
    assert production == after["deployment"]["id"] and serving == "3.0.0" and not rolled_back
    missing = results["missing"]
    assert missing["failed"] and "no production deployment of opsbook-app matches '9.9.9'" in str(
        missing["msg"]
    )
    assert v1 in missing["msg"] and "nothing was changed" in missing["msg"]

    # no secret anywhere: the token, the expired token, the env values
    oplog = run_playbook.oplog.read_text()
    saved_text = (tmp_path / "vercel_modules.json").read_text()
    for name, value in {"token": token, "expired": expired, "canary": canary}.items():
        assert value not in output, f"{name} leaked into the -vvvv output"
        assert value not in saved_text, f"{name} leaked into the results"
        assert value not in oplog, f"{name} leaked into the operation log"


def test_vercel_client_honours_x_ratelimit_reset() -> None:
    """Vercel's 429 carries X-RateLimit-Reset (epoch seconds): the client waits until then."""
    rest, api_mod = load_module_utils("opsbook_rest"), load_module_utils("opsbook_vercel")
    waited: list[float] = []
    with VercelStandin() as vercel:
        vercel.fail_next(429, rate_limit_reset_in=3)
        client = rest.RestClient(vercel.url, token=vercel.token, sleep=waited.append)
        assert api_mod.VercelApi(client).list_env("opsbook-app") == []
        assert vercel.mismatches == []
        # Vercel's document declares no 429 on this operation: allowed as an injected fault
        assert vercel.server.api.undocumented_faults == ["GET /v10/projects/{idOrName}/env 429"]
    assert len(waited) == 1 and 2.5 <= waited[0] <= 4.5, waited
    assert client.history == [
        "GET /v10/projects/opsbook-app/env 429",
        "GET /v10/projects/opsbook-app/env 200",
    ]


def front_version(vercel: VercelStandin) -> str:
    """The version the app at app_base_url reports (what production serves)."""
    with urlopen(vercel.app.url + "/api/version", timeout=5) as answer:
        return json.loads(answer.read())["version"]


def vercel_inventory(tmp_path: Path, vercel: VercelStandin, **extra: Any) -> Path:
    return platform_inventory(
        tmp_path,
        "vercel",
        vercel.app.url,
        {
            "vercel_project": vercel.project_name,
            "vercel_team_id": vercel.team_id,
            "vercel_token": vercel.token,
            "vercel_api_url": vercel.url,
        },
        **extra,
    )


def test_vercel_runbooks_deploy_gate_rollback(run_playbook: Any, tmp_path: Path) -> None:
    with VercelStandin(team_id=TEAM) as vercel:
        v1 = vercel.add_production(version="1.0.0", meta={"opsbook_version": "1.0.0"})
        vercel.add_preview(version="2.0.0", sha=SHA2)
        p3 = vercel.add_preview(version="3.0.0", sha=SHA3)
        vercel.versions_broken.add("3.0.0")
        inventory = vercel_inventory(tmp_path, vercel)

        # 1. deploy 2.0.0 (the preview of its commit, built for production) at -vvvv
        run = run_runbook(run_playbook, tmp_path, "deploy", inventory, args=("-vvvv",),
                          app_version="2.0.0", app_git_sha=SHA2)  # fmt: skip
        output = run.stdout + run.stderr
        assert run.rc == 0, output[-4000:]
        report = run.stats["deploy"]
        unit = f"vercel:{vercel.project_name}"
        assert report["status"] == "succeeded" and report["hosts"][unit]["outcome"] == "deployed"
        v2 = vercel.production
        assert report["deployment"] == v2 and report["previous"] == v1
        assert report["hosts"][unit]["before_version"] == "1.0.0"
        assert report["api_calls"] == 5 and vercel.serving_version() == "2.0.0"
        assert front_version(vercel) == "2.0.0"
        assert [e["status"] for e in ledger(tmp_path)] == ["succeeded"]
        oplog = run_playbook.oplog.read_text()
        assert vercel.token not in output and vercel.token not in oplog

        # 2. the same deploy again: unchanged, nothing written
        writes = len(vercel.writes())
        run = run_runbook(run_playbook, tmp_path, "deploy", inventory,
                          app_version="2.0.0", app_git_sha=SHA2)  # fmt: skip
        assert run.rc == 0 and run.stats["deploy"]["status"] == "unchanged", run.stdout[-3000:]
        assert len(vercel.writes()) == writes

        # 3. --check of 3.0.0: the plan, nothing written
        run = run_runbook(run_playbook, tmp_path, "deploy", inventory, check=True,
                          app_version="3.0.0", app_source=p3)  # fmt: skip
        assert run.rc == 0, run.stdout[-3000:]
        assert len(vercel.writes()) == writes and vercel.production == v2

        # 4. 3.0.0 fails its health gate: rolled back (Instant Rollback) to 2.0.0
        run = run_runbook(run_playbook, tmp_path, "deploy", inventory,
                          app_version="3.0.0", app_source=p3)  # fmt: skip
        report = run.stats["deploy"]
        assert run.rc != 0 and report["status"] == "rolled_back", run.stdout[-3000:]
        state = report["hosts"][unit]
        assert state["outcome"] == "rolled_back" and state["rolled_back_to"] == v2
        assert "health gate failed" in state["error"] and report["previous"] == v2
        assert vercel.production == v2 and vercel.rolled_back and vercel.rollbacks == [v2]
        assert vercel.serving_version() == "2.0.0" and front_version(vercel) == "2.0.0"

        # 5. rollback.yml to the first deployment, by id
        run = run_runbook(run_playbook, tmp_path, "rollback", inventory, rollback_to=v1)
        assert run.rc == 0, run.stdout[-3000:]
        rolled = run.stats["rollback"]
        assert rolled["ok"] and rolled["hosts"][unit]["outcome"] == "rolled_back"
        assert rolled["hosts"][unit]["to"] == v1 and rolled["hosts"][unit]["to_version"] == "1.0.0"
        assert vercel.production == v1 and front_version(vercel) == "1.0.0"

        # 6. a rollback to a deployment the project does not have: failed, nothing changed
        writes = len(vercel.writes())
        run = run_runbook(run_playbook, tmp_path, "rollback", inventory, rollback_to="dpl_nope")
        rolled = run.stats["rollback"]
        assert run.rc != 0 and not rolled["ok"], run.stdout[-3000:]
        error = rolled["hosts"][unit]["error"]
        assert "matches 'dpl_nope'" in error and v1 in error and "nothing was changed" in error
        assert len(vercel.writes()) == writes and vercel.production == v1
        assert vercel.mismatches == [] and vercel.server.api.undocumented_faults == []


def test_vercel_runbooks_maintenance_and_scale(run_playbook: Any, tmp_path: Path) -> None:
    with VercelStandin() as vercel:
        v1 = vercel.add_production(version="1.0.0", meta={"opsbook_version": "1.0.0"})
        inventory = vercel_inventory(tmp_path, vercel)
        unit = f"vercel:{vercel.project_name}"

        # on: MAINTENANCE_MODE=true in production, the serving deployment built again -> 503
        run = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory, maintenance="on")
        assert run.rc == 0, (run.stdout + run.stderr)[-4000:]
        stats = run.stats["maintenance_mode"]
        assert stats["hosts"][unit] == {"active": True, "changed": True}
        assert vercel.env_value("MAINTENANCE_MODE") == "true"
        on = vercel.production
        assert on != v1 and vercel.deployment(on)["meta"]["opsbook_version"] == "1.0.0"
        assert vercel.env_value("MAINTENANCE_MODE", "preview") is None

        # on again: nothing written
        writes = len(vercel.writes())
        run = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory, maintenance="on")
        assert run.rc == 0 and run.stats["maintenance_mode"]["hosts"][unit] == {
            "active": True, "changed": False}  # fmt: skip
        assert len(vercel.writes()) == writes

        # off: the variable removed, built again -> the app answers 200
        run = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory, maintenance="off")
        assert run.rc == 0, run.stdout[-3000:]
        assert run.stats["maintenance_mode"]["hosts"][unit] == {"active": False, "changed": True}
        assert vercel.env_value("MAINTENANCE_MODE") is None and vercel.production != on

        # scale: refused plainly, nothing called
        calls = vercel.api_calls
        run = run_runbook(run_playbook, tmp_path, "scale", inventory, scale_count=3)
        assert run.rc != 0 and "Vercel scales its functions by itself" in run.stdout
        assert vercel.api_calls == calls

        # the env entry point (the rotation's): set and applied, then unchanged; and an
        # inventory without vercel_token: nothing called, the fact says which variable
        canary = "canary-vercel-env-" + os.urandom(8).hex()
        env_vars = {"platform_env": [{"name": "API_KEY", "value": "{{ canary }}"},
                                     {"name": "GONE", "state": "absent"}],
                    "platform_env_apply": True}  # fmt: skip
        health = {"retries": 0, "delay_s": 0.1, "timeout_s": 2}
        tasks = [
            *role_step("env_first", "env", "platform_env_result", **env_vars),
            *role_step("env_again", "env", "platform_env_result", **env_vars),
            *role_step("no_token", "deploy", "platform_deploy", vercel_token="",
                       platform_version="9.0.0", platform_health=health),
        ]  # fmt: skip
        # role vars outrank play vars (not extra vars): the inventory's, as play vars here
        connection = {"vercel_project": vercel.project_name, "vercel_token": vercel.token,
                      "vercel_api_url": vercel.url, "app_base_url": vercel.app.url}  # fmt: skip
        saved = ["env_first", "env_again", "no_token"]
        playbook = write_playbook(tmp_path, "vercel_env_role", tasks, saved, connection)
        before, calls_before = vercel.production, vercel.api_calls
        extravars = {"canary": canary, "ansible_connection": "local",
                     "ansible_python_interpreter": PYTHON}  # fmt: skip
        run = run_playbook(playbook, "localhost,", extravars=extravars)
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        results = json.loads((tmp_path / "vercel_env_role.json").read_text())
        first, again = results["env_first"], results["env_again"]
        assert first["changed"] and first["applied"] and first["names"] == ["API_KEY", "GONE"]
        assert first["changed_names"] == ["API_KEY"] and first["error"] == ""
        assert vercel.env_value("API_KEY") == canary and vercel.production != before
        assert again["changed"] is False and again["applied"] is False
        assert again["api_calls"] == 1  # the list only
        unit = f"vercel:{vercel.project_name}"
        missing = results["no_token"]["units"][unit]
        assert missing["outcome"] == "failed" and "vercel_token" in missing["error"]
        assert results["no_token"]["api_calls"] == 0
        assert vercel.api_calls == calls_before + first["api_calls"] + 1
        assert canary not in run.stdout + run.stderr
        assert vercel.mismatches == [] and vercel.server.api.undocumented_faults == []


def role_step(name: str, entry: str, fact: str, **role_vars: Any) -> list[dict[str, Any]]:
    """Include platform_vercel's entry point, then keep its output fact under ``name``."""
    return [
        {
            "name": f"{name} | {entry}",
            "ansible.builtin.include_role": {
                "name": "opsbook.runbooks.platform_vercel",
                "tasks_from": entry,
            },
            "vars": role_vars,
        },
        {"name": f"{name} | keep", "ansible.builtin.set_fact": {name: "{{ " + fact + " }}"}},
    ]


def test_vercel_standin_judges_its_error_bodies() -> None:
    """An error body the document declares no content for must still be a Vercel error
    (VercelForbiddenError ...): the stand-in cannot drift into answering anything."""
    with VercelStandin() as vercel:
        api = vercel.server.api
        operation, _ = api.operation("GET", "/v13/deployments/dpl_x")
        api.check_response(operation, 404, b'{"error": {"code": "not_found", "message": "x"}}')
        with pytest.raises(AssertionError, match="VercelNotFoundError"):
            api.check_response(operation, 404, b'{"message": "x"}')
        api.mismatches.clear()
