"""Render as a deploy target, through ansible-playbook against RenderStandin
(tests/standins_render.py), every request and answer judged by Render's document:

- the modules (render_env, render_service) at -vvvv: env vars created, updated and deleted one
  key at a time and idempotently (a rerun changes nothing), check mode and a masked diff, a
  wrong token (a clear 401, nothing changed), a 5xx retried and a 429's Retry-After honoured
  (measured), deploys, a rollback to a named deploy, the API calls reported; the token and
  the values never in the output, the results or the operation log;
- the runbooks on deploy_target render (tests/integration/platform_flow.py): deploy.yml behind
  the health gate (again: unchanged, no write call; --check: no write call), a broken version
  rolled back automatically, rollback.yml to a named deploy and to one Render does not have,
  maintenance_mode.yml on (the app answers 503), on again (nothing written) and off, scale.yml.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import PROJECT_ROOT
from tests.integration.platform_flow import ledger, platform_inventory, run_runbook
from tests.standins_render import RenderStandin

pytestmark = pytest.mark.integration

SHA_A, SHA_B, SHA_C = "a1" * 20, "b2" * 20, "c3" * 20
PYTHON = str(PROJECT_ROOT / ".venv" / "bin" / "python")


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
    play = {"name": name, "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    if play_vars:
        play["vars"] = play_vars
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump([play], sort_keys=False))
    return os.path.relpath(path, PROJECT_ROOT / "playbooks")


def api(render: RenderStandin) -> dict[str, Any]:
    return {
        "render_url": render.url + "/v1",
        "render_token": render.token,
        "service": render.service_id,
        "ansible_connection": "local",
        "ansible_python_interpreter": PYTHON,
    }


def env_task(register: str, **args: Any) -> dict[str, Any]:
    return {
        "name": register,
        "opsbook.runbooks.render_env": {
            "service_id": "{{ service }}",
            "token": "{{ render_token }}",
            "base_url": "{{ render_url }}",
            **args,
        },
        "register": register,
        "ignore_errors": True,
    }


def service_task(register: str, **args: Any) -> dict[str, Any]:
    return {
        "name": register,
        "opsbook.runbooks.render_service": {
            "service_id": "{{ service }}",
            "token": "{{ render_token }}",
            "base_url": "{{ render_url }}",
            **args,
        },
        "register": register,
        "ignore_errors": True,
    }


def test_render_modules_idempotent_faults_and_no_secret_at_vvvv(
    run_playbook: Any, tmp_path: Path
) -> None:
    canary = "canary-render-" + os.urandom(8).hex()
    with RenderStandin() as render:
        render.add_commit(SHA_A, "1.0.0")
        render.add_commit(SHA_B, "1.1.0")
        first = render.seed_live(SHA_A)
        render.env["KEEP"] = "kept-value"
        render.fail_next(503)  # the first call: retried
        render.fail_next(429, retry_after=1)  # then a rate limit: Retry-After honoured
        tasks = [
            env_task("would", key="API_KEY", value="{{ canary }}") | {"check_mode": True},
            env_task("created", key="API_KEY", value="{{ canary }}") | {"diff": True},
            env_task("again", key="API_KEY", value="{{ canary }}"),
            env_task("several", env_vars=[
                {"key": "API_KEY", "value": "{{ canary }}-2"},
                {"key": "MODE", "value": "on"},
                {"key": "GONE", "state": "absent"},
            ]),
            env_task("several_again", env_vars=[
                {"key": "API_KEY", "value": "{{ canary }}-2"},
                {"key": "MODE", "value": "on"},
                {"key": "GONE", "state": "absent"},
            ]),
            env_task("deleted", key="MODE", state="absent"),
            env_task("refused", key="API_KEY", value="other", token="tok_expired_or_revoked"),
            service_task("would_deploy", action="deploy", commit_id=SHA_B) | {"check_mode": True},
            service_task("deployed", action="deploy", commit_id=SHA_B),
            service_task("deployed_again", action="deploy", commit_id=SHA_B[:12]),
            service_task("rolled", action="rollback", rollback_to=first),
            service_task("scaled", action="scale", num_instances=2),
        ]  # fmt: skip
        saved = [t["register"] for t in tasks]
        playbook = write_playbook(tmp_path, "render_modules", tasks, saved)
        run = run_playbook(
            playbook, "localhost,", extravars={**api(render), "canary": canary}, args=["-vvvv"]
        )
        stamps = list(render.stamps)
        assert render.mismatches == [] and render.bulk_puts == []
        env, live, instances = dict(render.env), render.live_deploy, render.num_instances
        token = render.token
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    results = json.loads((tmp_path / "render_modules.json").read_text())

    # env vars: check mode, create, idempotent reruns, several at once, delete, a bad token
    assert results["would"]["changed"] and results["would"]["changed_keys"] == ["API_KEY"]
    would_calls = results["would"]["api_calls"]  # the first calls: a 503, then a 429
    assert all(c.startswith("GET ") for c in would_calls)
    assert [c.rsplit(" ", 1)[-1] for c in would_calls] == ["503", "429", "404"]
    created = results["created"]
    assert created["changed"] and created["diff"]["after"] == {"API_KEY": "********"}
    assert [c.rsplit(" ", 1)[-1] for c in created["api_calls"]] == ["404", "200"]
    assert results["again"]["changed"] is False
    assert results["several"]["changed_keys"] == ["API_KEY", "MODE"]
    assert results["several_again"]["changed"] is False
    assert results["deleted"]["changed"] and "MODE" not in env
    refused = results["refused"]
    assert refused["failed"] and "HTTP 401 Unauthorized" in refused["msg"]
    assert "nothing was changed" in refused["msg"] and env["API_KEY"] == canary + "-2"
    assert env["KEEP"] == "kept-value"  # never touched (no bulk replace)
    # the 429's Retry-After: 1 was waited out - not the 2 s the backoff would take next
    waits = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    assert 0.95 <= waits[1] < 1.8, waits[:3]

    # deploys: check mode, deploy and wait, idempotent, rollback to a named deploy, scale
    assert results["would_deploy"]["changed"] and "check mode" in results["would_deploy"]["msg"]
    deployed = results["deployed"]
    assert deployed["changed"] and deployed["deploy"]["status"] == "live"
    assert deployed["previous"]["id"] == first
    assert results["deployed_again"]["changed"] is False
    rolled = results["rolled"]
    assert rolled["changed"] and rolled["rolled_back_to"]["id"] == first
    assert live is not None and live["trigger"] == "rollback" and live["commit"]["id"] == SHA_A
    assert results["scaled"]["changed"] and instances == 2
    assert any(c.startswith("POST /v1/services/") for c in rolled["api_calls"])

    # no secret anywhere: the token, the env values
    oplog = run_playbook.oplog.read_text()
    saved_text = (tmp_path / "render_modules.json").read_text()
    for name, value in {"token": token, "canary": canary}.items():
        assert value not in output, f"{name} leaked into the -vvvv output"
        assert value not in saved_text, f"{name} leaked into the results"
        assert value not in oplog, f"{name} leaked into the operation log"


def role_step(name: str, entry: str, fact: str, **role_vars: Any) -> list[dict[str, Any]]:
    """Include platform_render's entry point, then keep its output fact under ``name``."""
    return [
        {
            "name": f"{name} | {entry}",
            "ansible.builtin.include_role": {
                "name": "opsbook.runbooks.platform_render",
                "tasks_from": entry,
            },
            "vars": role_vars,
        },
        {"name": f"{name} | keep", "ansible.builtin.set_fact": {name: "{{ " + fact + " }}"}},
    ]


def test_render_role_env_entry_point_and_missing_inventory(
    run_playbook: Any, tmp_path: Path
) -> None:
    """The env entry point (the secret rotation's way to Render): set, applied by a redeploy of
    the live code, idempotent, values hidden; an entry point without render_api_key calls
    nothing and names the variable."""
    canary = "canary-role-" + os.urandom(8).hex()
    with RenderStandin() as render:
        render.add_commit(SHA_A, "1.0.0")
        render.seed_live(SHA_A)
        render.env["KEEP"] = "kept-value"
        wanted = [
            {"name": "SESSION_SECRET", "value": "{{ canary }}"},
            {"name": "OLD", "state": "absent"},
        ]
        tasks = [
            *role_step("env", "env", "platform_env_result", platform_env=wanted,
                       platform_env_apply=True),
            *role_step("env_again", "env", "platform_env_result", platform_env=wanted,
                       platform_env_apply=True),
            *role_step("no_key", "deploy", "platform_deploy", render_api_key="",
                       platform_version="2.0.0", platform_health={"retries": 0}),
        ]  # fmt: skip
        inventory_vars = {  # as play vars (extra vars would win over the role vars of no_key)
            "render_service_id": render.service_id,
            "render_api_key": render.token,
            "render_api_url": render.url + "/v1",
            "app_base_url": render.app.url,
        }
        saved = ["env", "env_again", "no_key"]
        playbook = write_playbook(tmp_path, "render_role", tasks, saved, inventory_vars)
        extravars = {
            "canary": canary,
            "ansible_connection": "local",
            "ansible_python_interpreter": PYTHON,
        }
        calls = len(render.server.calls)
        run = run_playbook(playbook, "localhost,", extravars=extravars)
        assert render.mismatches == [] and render.bulk_puts == []
        env, posts, token = dict(render.env), render.deploy_posts, render.token
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    facts = json.loads((tmp_path / "render_role.json").read_text())
    assert facts["env"]["changed"] and facts["env"]["applied"] and posts == 1
    assert facts["env"]["names"] == ["SESSION_SECRET", "OLD"]
    assert facts["env"]["changed_names"] == ["SESSION_SECRET"] and facts["env"]["error"] == ""
    assert env == {"KEEP": "kept-value", "SESSION_SECRET": canary}
    assert facts["env_again"]["changed"] is False and not facts["env_again"]["applied"]
    no_key = facts["no_key"]["units"][f"render:{render.service_id}"]
    assert no_key["outcome"] == "failed" and "render_api_key" in no_key["error"]
    assert "nothing was called" in no_key["error"] and facts["no_key"]["api_calls"] == 0
    # env (list, PUT), redeploy (list, POST, one poll: the list is not read twice), one list
    assert len(render.server.calls) - calls == 5 + 1
    for value in (token, canary):
        assert value not in output and value not in (tmp_path / "render_role.json").read_text()


WRITES = ("POST", "PUT", "PATCH", "DELETE")


def writes(render: RenderStandin, since: int = 0) -> list[str]:
    """The calls that could change something, that reached the stand-in since call ``since``."""
    return [f"{c.method} {c.path}" for c in render.server.calls[since:] if c.method in WRITES]


def operations(render: RenderStandin, since: int = 0) -> list[tuple[float, str]]:
    """(time, operationId) of every attempt that reached the stand-in since attempt ``since``."""
    return list(render.stamps[since:])


def assert_no_call_too_many(ops: list[tuple[float, str]], trigger: str) -> None:
    """One deploy's calls: the deploys listed once at most, before the trigger (not again by
    the module), the trigger once, then polls of the new deploy - the first one at least 1 s
    after the trigger's 201 (its answer holds the status: not read again at once)."""
    names = [op for _, op in ops]
    assert names.count(trigger) == 1, names
    at = names.index(trigger)
    assert names[:at] in (["list-deploys"], []), names
    assert set(names[at + 1 :]) == {"retrieve-deploy"}, names
    assert ops[at + 1][0] - ops[at][0] >= 0.95, [round(t - ops[0][0], 2) for t, _ in ops]


def inventory_for(tmp_path: Path, render: RenderStandin) -> Path:
    return platform_inventory(
        tmp_path,
        "render",
        render.app.url,
        {
            "render_api_url": render.url + "/v1",
            "render_api_key": render.token,
            "render_service_id": render.service_id,
        },
    )


def test_render_deploy_gate_automatic_rollback_and_named_rollback(
    run_playbook: Any, tmp_path: Path
) -> None:
    with RenderStandin() as render:
        render.add_commit(SHA_A, "1.0.0")
        render.add_commit(SHA_B, "2.0.0")
        render.add_commit(SHA_C, "3.0.0")
        render.versions_broken.add("3.0.0")
        v1 = render.seed_live(SHA_A)
        inventory = inventory_for(tmp_path, render)
        unit = f"render:{render.service_id}"

        # 1. deploy v2 (at -vvvv): succeeded, recorded; the same again: unchanged, no write
        stamps = len(render.stamps)
        v2 = run_runbook(run_playbook, tmp_path, "deploy", inventory, app_version="2.0.0",
                         app_source=SHA_B, args=("-vvvv",))  # fmt: skip
        assert v2.rc == 0, v2.output[-4000:]
        report = v2.stats["deploy"]
        assert report["status"] == "succeeded" and report["hosts"][unit]["outcome"] == "deployed"
        assert report["previous"] == v1 and report["target"] == "render"
        # issue 14: no more calls than needed - one list, the trigger, one poll (the stand-in's
        # build is done at its first read) 1 s after the 201, not at once
        ops = operations(render, stamps)
        assert [op for _, op in ops] == ["list-deploys", "create-deploy", "retrieve-deploy"]
        assert_no_call_too_many(ops, "create-deploy")
        assert report["api_calls"] == 3
        v2_id = report["deployment"]
        assert render.live_deploy["id"] == v2_id and render.served_version == "2.0.0"
        assert ledger(tmp_path)[-1]["status"] == "succeeded"
        assert render.token not in v2.output and render.token not in run_playbook.oplog.read_text()
        calls = len(render.server.calls)
        same = run_runbook(run_playbook, tmp_path, "deploy", inventory, app_version="2.0.0",
                           app_source=SHA_B)  # fmt: skip
        assert same.rc == 0, same.output[-4000:]
        assert same.stats["deploy"]["status"] == "unchanged" and writes(render, calls) == []

        # 2. deploy v3, which fails its health gate: rolled back to v2 by itself
        stamps = len(render.stamps)
        v3 = run_runbook(run_playbook, tmp_path, "deploy", inventory, app_version="3.0.0",
                         app_source=SHA_C)  # fmt: skip
        assert v3.rc != 0
        report = v3.stats["deploy"]
        assert report["status"] == "rolled_back" and report["previous"] == v2_id
        assert report["hosts"][unit]["outcome"] == "rolled_back"
        assert render.served_version == "2.0.0" and render.live_deploy["trigger"] == "rollback"
        ops = operations(render, stamps)  # the deploy, then the rollback (a list of its own)
        split = [op for _, op in ops].index("rollback-deploy") - 1
        assert [op for _, op in ops[split:]] == [
            "list-deploys", "rollback-deploy", "retrieve-deploy"
        ]  # fmt: skip
        assert_no_call_too_many(ops[:split], "create-deploy")
        assert_no_call_too_many(ops[split:], "rollback-deploy")

        # 7. --check: the plan, no write call
        calls = len(render.server.calls)
        check = run_runbook(run_playbook, tmp_path, "deploy", inventory, check=True,
                            app_version="3.0.0", app_source=SHA_C)  # fmt: skip
        assert check.stats["deploy"]["check_mode"] and writes(render, calls) == []

        # 3. rollback.yml to the v1 deployment by id; then to one Render does not have
        back = run_runbook(run_playbook, tmp_path, "rollback", inventory, rollback_to=v1)
        assert back.rc == 0, back.output[-4000:]
        assert back.stats["rollback"]["ok"] and render.served_version == "1.0.0"
        state = back.stats["rollback"]["hosts"][unit]
        assert state["outcome"] == "rolled_back" and state["to"] == v1
        assert state["to_version"] == "1.0.0"
        calls, live = len(render.server.calls), render.live_deploy["id"]
        missing = run_runbook(run_playbook, tmp_path, "rollback", inventory, rollback_to="dep-nope")
        assert missing.rc != 0 and not missing.stats["rollback"]["ok"]
        error = missing.stats["rollback"]["hosts"][unit]["error"]
        assert "has no deploy to roll back to ('dep-nope')" in error and v1 in error
        assert writes(render, calls) == [] and render.live_deploy["id"] == live
        assert render.mismatches == [] and render.bulk_puts == []


def test_render_maintenance_mode_and_scale(run_playbook: Any, tmp_path: Path) -> None:
    with RenderStandin() as render:
        render.add_commit(SHA_A, "1.0.0")
        render.seed_live(SHA_A)
        inventory = inventory_for(tmp_path, render)
        unit = f"render:{render.service_id}"

        # 4. maintenance on: MAINTENANCE_MODE and a redeploy of the live code -> 503
        on = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory, maintenance="on")
        assert on.rc == 0, on.output[-4000:]
        assert on.stats["maintenance_mode"]["hosts"][unit] == {
            "active": True, "changed": True, "error": ""
        }  # fmt: skip
        assert render.env["MAINTENANCE_MODE"] == "true" and render.deploy_posts == 1
        assert render.live_deploy["commit"]["id"] == SHA_A  # the same code, deployed again
        calls = len(render.server.calls)
        again = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory,
                            maintenance="on")  # fmt: skip
        assert again.rc == 0 and again.stats["maintenance_mode"]["hosts"][unit]["changed"] is False
        assert writes(render, calls) == []
        off = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory, maintenance="off")
        assert off.rc == 0, off.output[-4000:]
        assert off.stats["maintenance_mode"]["hosts"][unit]["active"] is False
        assert "MAINTENANCE_MODE" not in render.env and render.deploy_posts == 2

        # 5. scale: the count changes; a second run sends the same count again (Render's
        # document has no read of it: reported as a change, harmless - a fixed count)
        scaled = run_runbook(run_playbook, tmp_path, "scale", inventory, scale_count=3)
        assert scaled.rc == 0, scaled.output[-4000:]
        assert scaled.stats["scale"]["after"] == 3 and scaled.stats["scale"]["before"] is None
        assert render.num_instances == 3
        assert render.mismatches == [] and render.bulk_puts == []
