"""Fly.io through its Machines API, against the stand-in of tests/standins_fly.py: the modules
(fly_secrets, fly_machines) at -vvvv, then the platform_fly role's entry points, each in one
ansible-playbook run. Every request and answer is one Fly's document allows (the stand-in's
``mismatches`` stay empty), every lease taken is released, no token nor secret value reaches the
output, the results or the operation log."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import PROJECT_ROOT
from tests.integration.platform_flow import ledger, platform_inventory, run_runbook
from tests.standins_fly import FlyStandin

pytestmark = pytest.mark.integration

IMAGE = "registry.fly.io/opsbook-app:{}"


def write_playbook(tmp_path: Path, name: str, plays: list[dict[str, Any]]) -> str:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return os.path.relpath(path, PROJECT_ROOT / "playbooks")


def save_results(tmp_path: Path, names: list[str]) -> dict[str, Any]:
    results = "{" + ", ".join(f"'{n}': {n}" for n in names) + "}"
    return {
        "name": "Save the results",
        "ansible.builtin.copy": {
            "content": "{{ " + results + " | to_json }}",
            "dest": str(tmp_path / "results.json"),
            "mode": "0600",
        },
    }


def local_vars(**extra: Any) -> dict[str, Any]:
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        **extra,
    }


# ------------------------------------------------------------------------------ modules


def fly(action: str, register: str, *, on: str = "fly", **args: Any) -> dict[str, Any]:
    return {
        "name": f"fly_machines {action} ({register})",
        "opsbook.runbooks.fly_machines": {
            "app": "opsbook-app",
            "token": f"{{{{ {on}_token }}}}",
            "base_url": f"{{{{ {on}_url }}}}",
            "action": action,
            "wait_timeout_s": 5,
            **args,
        },
        "register": register,
        "ignore_errors": True,
    }


def secrets_task(register: str, secrets_list: list[dict[str, Any]], *, on: str = "fly",
                 **args: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "name": f"fly_secrets ({register})",
        "opsbook.runbooks.fly_secrets": {
            "app": "opsbook-app",
            "token": f"{{{{ {on}_token }}}}",
            "base_url": f"{{{{ {on}_url }}}}",
            "secrets": secrets_list,
            **args,
        },
        "register": register,
        "ignore_errors": True,
        "diff": True,
    }


def test_fly_modules_idempotent_retried_masked_at_vvvv(run_playbook: Any, tmp_path: Path) -> None:
    """fly_secrets and fly_machines (in the task's worker, and once as a module process), and
    the role's env entry point, in one run at -vvvv."""
    canary_a, canary_b, canary_b2, canary_env = (
        f"canary-{secrets.token_hex(12)}" for _ in range(4)
    )
    pair = [{"name": "SMTP_PASSWORD", "value": "{{ canary_a }}"},
            {"name": "API_KEY", "value": "{{ canary_b }}"}]  # fmt: skip
    changed = [{"name": "SMTP_PASSWORD", "state": "absent"},
               {"name": "API_KEY", "value": "{{ canary_b2 }}"}]  # fmt: skip
    v11 = IMAGE.format("1.1.0")
    with FlyStandin() as standin, FlyStandin() as gone:
        m1, m2 = (standin.add_machine(IMAGE.format("1.0.0")) for _ in range(2))
        gone.add_machine(IMAGE.format("1.0.0"))
        gone.expire_token()
        standin.fail_on("Secret_create", 503)  # the first write: retried, then done
        standin.fail_on("Machines_list", 429, retry_after=1)  # the first list: honoured
        standin.refuse_updates[m2] = 1
        tasks = [
            {**secrets_task("s_would", pair), "check_mode": True},
            secrets_task("s_set", pair),
            {**secrets_task("s_again", pair), "environment": {"OPSBOOK_TEST": "1"}},
            secrets_task("s_changed", changed),
            secrets_task("s_on_create", changed, update="on_create"),
            fly("list", "m_plan", image=v11, canary=1, batch="1"),
            {**fly("update", "m_would", machine_ids=[m1], image=v11), "check_mode": True},
            {**fly("update", "m_update", machine_ids=[m1], image=v11, version="1.1.0",
                   release="r-1", gate_base_url="{{ app_url }}"), "diff": True},
            fly("update", "m_again", machine_ids=[m1], image=v11),
            fly("update", "m_refused", machine_ids=[m2], image=v11),
            fly("rollback", "m_unknown", rollback_to="0.9"),
            fly("rollback", "m_rollback", machine_ids=[m1]),
            fly("scale", "m_up", count=3),
            fly("scale", "m_down", count=2),
            secrets_task("gone_set", pair, on="gone"),
            *role_entry("env", "env_set", platform_env=[{"name": "JWT_SECRET",
                                                         "value": "{{ canary_env }}"}],
                        platform_env_apply=True),
        ]  # fmt: skip
        names = [t["register"] for t in tasks if "register" in t] + ["env_set"]
        plays = [{"name": "Fly modules", "hosts": "localhost", "gather_facts": False,
                  "tasks": [*tasks, save_results(tmp_path, names)]}]  # fmt: skip
        canaries = {"canary_a": canary_a, "canary_b": canary_b, "canary_b2": canary_b2,
                    "canary_env": canary_env, "fly_token": standin.token,
                    "gone_token": gone.token}  # fmt: skip
        run = run_playbook(
            write_playbook(tmp_path, "fly_modules", plays),
            "localhost,",
            extravars=local_vars(
                **canaries,
                fly_url=standin.url,
                gone_url=gone.url,
                app_url=standin.app.url,
                fly_app=standin.app_name,
                fly_api_token=standin.token,
                fly_api_url=standin.url,
            ),
            args=["-vvvv"],
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-5000:]
        assert "EXEC /bin/sh -c 'OPSBOOK_TEST=1 " in output  # one ran as a module process
        assert standin.mismatches == [] and gone.mismatches == []
        assert standin.leases == {} and standin.lease_violations == []
        assert set(standin.server.api.undocumented_faults) == {
            "POST /apps/{app_name}/secrets/{secret_name} 503",
            "GET /apps/{app_name}/machines 429",
        }
        lists = [(status, at) for op, status, at in standin.timeline if op == "Machines_list"]
        assert lists[0][0] == 429 and lists[1][1] - lists[0][1] >= 0.95  # Retry-After: 1
        final_secrets = {name: s["value"] for name, s in standin.secrets.items()}
        images = {m: standin.image(m) for m in (m1, m2)}
        alive = standin.alive()
        booted = {m: standin.booted[m].get("JWT_SECRET") for m in alive}
        assert gone.secrets == {}
    r = json.loads((tmp_path / "results.json").read_text())

    # fly_secrets: check mode reads only; a rewrite with the same value is no change
    assert r["s_would"]["changed"] and r["s_would"]["api_calls"] == [
        "GET /apps/opsbook-app/secrets 200"
    ]
    assert r["s_set"]["changed_names"] == ["SMTP_PASSWORD", "API_KEY"]
    assert r["s_set"]["api_calls"][1:3] == [
        "POST /apps/opsbook-app/secrets/SMTP_PASSWORD 503",
        "POST /apps/opsbook-app/secrets/SMTP_PASSWORD 201",
    ]
    assert r["s_again"]["changed"] is False and r["s_again"]["changed_names"] == []
    assert r["s_changed"]["changed_names"] == ["SMTP_PASSWORD", "API_KEY"]
    assert r["s_changed"]["diff"] == {
        "before": {"API_KEY": "********", "SMTP_PASSWORD": "********"},
        "after": {"API_KEY": "******** (changed)"},
    }
    assert r["s_on_create"]["changed"] is False
    assert r["s_on_create"]["api_calls"] == ["GET /apps/opsbook-app/secrets 200"]
    assert final_secrets == {"API_KEY": canary_b2, "JWT_SECRET": canary_env}

    # fly_machines: a plan, check mode, an update under a lease, idempotent, a rollback
    plan = r["m_plan"]["plan"]
    assert plan["batches"] == [[m1], [m2]] and plan["units"][f"fly:{m1}"]["outcome"] == "untouched"
    assert r["m_plan"]["api_calls"] == [
        "GET /apps/opsbook-app/machines 429",
        "GET /apps/opsbook-app/machines 200",
    ]
    assert r["m_would"]["results"][0]["outcome"] == "would_update"
    assert r["m_would"]["api_calls"] == ["GET /apps/opsbook-app/machines 200"]
    update = r["m_update"]
    assert update["changed"] and update["results"][0]["outcome"] == "updated"
    assert update["api_calls"] == [
        "GET /apps/opsbook-app/machines 200",
        f"POST /apps/opsbook-app/machines/{m1}/lease 201",
        f"POST /apps/opsbook-app/machines/{m1} 200",
        f"DELETE /apps/opsbook-app/machines/{m1}/lease 200",
        f"GET /apps/opsbook-app/machines/{m1}/wait 200",
    ]
    assert update["diff"] == {"before": {m1: IMAGE.format("1.0.0")}, "after": {m1: v11}}
    assert update["gate_targets"][0]["headers"] == {"fly-force-instance-id": m1}
    assert r["m_again"]["changed"] is False
    assert r["m_again"]["api_calls"] == ["GET /apps/opsbook-app/machines 200"]
    refused = r["m_refused"]
    assert refused["failed"] and "HTTP 400" in refused["msg"]
    assert "image not found" in refused["msg"] and "the machine was not changed" in refused["msg"]
    assert f"DELETE /apps/opsbook-app/machines/{m2}/lease 200" in refused["api_calls"]
    assert r["m_unknown"]["failed"] and "it knows 1.0.0, 1.1.0" in r["m_unknown"]["msg"]
    assert "nothing was changed on any machine" in r["m_unknown"]["msg"]
    assert r["m_rollback"]["results"][0]["after_image"] == IMAGE.format("1.0.0")
    assert r["m_up"]["before"] == 2 and r["m_up"]["after"] == 3
    assert r["m_down"]["after"] == 2 and sorted(alive) == sorted([m1, m2])  # the newest went
    assert images == {m1: IMAGE.format("1.0.0"), m2: IMAGE.format("1.0.0")}

    # an expired token: a clear error, nothing changed
    assert r["gone_set"]["failed"] and "HTTP 401" in r["gone_set"]["msg"]
    assert "token was refused" in r["gone_set"]["msg"]
    assert "nothing was changed" in r["gone_set"]["msg"]

    # the role's env entry point: set, then every machine booted with it
    env = r["env_set"]
    assert env["changed"] and env["applied"] and env["changed_names"] == ["JWT_SECRET"]
    assert set(booted.values()) == {canary_env}

    saved = (tmp_path / "results.json").read_text()
    oplog = run_playbook.oplog.read_text()
    for name, value in canaries.items():
        assert value not in output, f"{name} leaked into the -vvvv output"
        assert value not in saved, f"{name} leaked into the results"
        assert value not in oplog, f"{name} leaked into the operation log"


def role_entry(name: str, register: str, **role_vars: Any) -> list[dict[str, Any]]:
    """Include platform_fly's entry point ``name`` and keep its output fact as ``register``."""
    fact = {
        "deploy": "platform_deploy",
        "rollback": "platform_rollback",
        "maintenance": "platform_maintenance",
        "scale": "platform_scale",
        "env": "platform_env_result",
    }[name]
    return [
        {
            "name": f"platform_fly {name} ({register})",
            "ansible.builtin.include_role": {
                "name": "opsbook.runbooks.platform_fly",
                "tasks_from": name,
            },
            "vars": role_vars,
        },
        {"name": f"Keep {register}", "ansible.builtin.set_fact": {register: f"{{{{ {fact} }}}}"}},
    ]


# ------------------------------------------------------------------------- the runbooks


def writes(standin: FlyStandin, since: int) -> list[str]:
    """The calls after the first ``since`` that could change something (not GET)."""
    return [c.operation_id for c in standin.server.calls[since:] if c.method != "GET"]


def updates(standin: FlyStandin, since: int) -> list[tuple[str, str]]:
    """(machine id, image) of every machine update after the first ``since`` calls, in order."""
    return [
        (c.params["machine_id"], c.body["config"]["image"])
        for c in standin.server.calls[since:]
        if c.operation_id == "Machines_update"
    ]


def serving(standin: FlyStandin) -> dict[str, str]:
    return {m: standin.app.instances[m]["version"] for m in standin.alive()}


def inventory_for(tmp_path: Path, standin: FlyStandin) -> Path:
    return platform_inventory(
        tmp_path,
        "fly",
        standin.app.url,
        {
            "fly_app": standin.app_name,
            "fly_api_token": standin.token,
            "fly_api_url": standin.url,
            "deploy_canary": 1,
            "deploy_batch": "50%",
        },
    )


def test_fly_deploy_canary_first_gate_automatic_and_named_rollback(
    run_playbook: Any, tmp_path: Path
) -> None:
    with FlyStandin() as standin:
        first, second, third = (standin.add_machine(IMAGE.format("1.0.0")) for _ in range(3))
        standin.versions_broken.add("3.0.0")
        inventory = inventory_for(tmp_path, standin)

        # 1. deploy 2.0.0 (at -vvvv): the canary first, then 50% of 3 = 1 at a time
        v2 = run_runbook(run_playbook, tmp_path, "deploy", inventory, app_version="2.0.0",
                         args=("-vvvv",))  # fmt: skip
        assert v2.rc == 0, v2.output[-4000:]
        report = v2.stats["deploy"]
        assert report["status"] == "succeeded" and report["target"] == "fly"
        assert {report["hosts"][f"fly:{m}"]["outcome"] for m in (first, second, third)} == {
            "deployed"
        }
        assert report["deployment"] == IMAGE.format("2.0.0")
        assert report["previous"] == IMAGE.format("1.0.0")
        assert updates(standin, 0) == [(m, IMAGE.format("2.0.0")) for m in (first, second, third)]
        # one list of the machines (the plan's) for the whole deploy of 3 batches of 1: each
        # batch reuses it, its machine read once under its lease (not the whole list again)
        ops = [c.operation_id for c in standin.server.calls]
        assert ops.count("Machines_list") == 1 and ops.count("Machines_show") == 3, ops
        assert set(serving(standin).values()) == {"2.0.0"}
        assert ledger(tmp_path)[-1]["status"] == "succeeded"
        assert standin.token not in v2.output
        assert standin.token not in run_playbook.oplog.read_text()

        # the same deploy again: unchanged, nothing written
        calls = len(standin.server.calls)
        same = run_runbook(run_playbook, tmp_path, "deploy", inventory, app_version="2.0.0")
        assert same.rc == 0, same.output[-4000:]
        assert same.stats["deploy"]["status"] == "unchanged" and writes(standin, calls) == []

        # 2. deploy 3.0.0, whose canary fails its gate: the rollout stops there, the canary
        # goes back to 2.0.0 by itself, the other machines are never touched
        calls = len(standin.server.calls)
        v3 = run_runbook(run_playbook, tmp_path, "deploy", inventory, app_version="3.0.0")
        assert v3.rc != 0
        report = v3.stats["deploy"]
        assert report["status"] == "rolled_back" and report["previous"] == IMAGE.format("2.0.0")
        assert report["hosts"][f"fly:{first}"]["outcome"] == "failed"
        assert {report["hosts"][f"fly:{m}"]["outcome"] for m in (second, third)} == {"untouched"}
        assert updates(standin, calls) == [
            (first, IMAGE.format("3.0.0")),
            (first, IMAGE.format("2.0.0")),
        ]
        assert set(serving(standin).values()) == {"2.0.0"}

        # 7. --check: the plan, nothing written
        calls = len(standin.server.calls)
        check = run_runbook(run_playbook, tmp_path, "deploy", inventory, check=True,
                            app_version="3.0.0")  # fmt: skip
        assert check.stats["deploy"]["check_mode"] and writes(standin, calls) == []

        # 3. rollback.yml to version 1.0.0 (on every machine's record); then to one no machine has
        back = run_runbook(run_playbook, tmp_path, "rollback", inventory, rollback_to="1.0.0")
        assert back.rc == 0, back.output[-4000:]
        assert back.stats["rollback"]["ok"] and set(serving(standin).values()) == {"1.0.0"}
        state = back.stats["rollback"]["hosts"][f"fly:{first}"]
        assert state["outcome"] == "rolled_back" and state["to"] == IMAGE.format("1.0.0")
        assert state["to_version"] == "1.0.0"
        calls = len(standin.server.calls)
        missing = run_runbook(run_playbook, tmp_path, "rollback", inventory, rollback_to="0.9.0")
        assert missing.rc != 0 and not missing.stats["rollback"]["ok"]
        error = missing.stats["rollback"]["hosts"][f"fly:{first}"]["error"]
        assert "no image of version 0.9.0" in error and "1.0.0, 2.0.0, 3.0.0" in error
        assert writes(standin, calls) == [] and set(serving(standin).values()) == {"1.0.0"}
        assert standin.mismatches == [] and standin.leases == {}
        assert standin.lease_violations == []


def test_fly_maintenance_mode_and_scale(run_playbook: Any, tmp_path: Path) -> None:
    with FlyStandin() as standin:
        machines = [standin.add_machine(IMAGE.format("1.0.0")) for _ in range(2)]
        inventory = inventory_for(tmp_path, standin)

        # 4. maintenance on: the app secret and an update of each machine -> 503 everywhere
        on = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory, maintenance="on")
        assert on.rc == 0, on.output[-4000:]
        hosts = on.stats["maintenance_mode"]["hosts"]
        assert {hosts[f"fly:{m}"]["active"] for m in machines} == {True}
        assert standin.secrets["MAINTENANCE_MODE"]["value"] == "true"
        assert all(standin.app.instances[m]["maintenance"] for m in machines)
        calls = len(standin.server.calls)
        again = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory,
                            maintenance="on")  # fmt: skip
        assert again.rc == 0, again.output[-4000:]
        assert {h["changed"] for h in again.stats["maintenance_mode"]["hosts"].values()} == {False}
        assert writes(standin, calls) == []
        off = run_runbook(run_playbook, tmp_path, "maintenance_mode", inventory, maintenance="off")
        assert off.rc == 0, off.output[-4000:]
        assert {h["active"] for h in off.stats["maintenance_mode"]["hosts"].values()} == {False}
        assert "MAINTENANCE_MODE" not in standin.secrets
        assert not any(standin.app.instances[m]["maintenance"] for m in machines)

        # 5. scale to 3: a clone of the newest machine; again: nothing written
        scaled = run_runbook(run_playbook, tmp_path, "scale", inventory, scale_count=3)
        assert scaled.rc == 0, scaled.output[-4000:]
        assert (scaled.stats["scale"]["before"], scaled.stats["scale"]["after"]) == (2, 3)
        assert len(standin.alive()) == 3
        calls = len(standin.server.calls)
        same = run_runbook(run_playbook, tmp_path, "scale", inventory, scale_count=3)
        assert same.rc == 0 and same.stats["scale"]["changed"] is False
        assert writes(standin, calls) == []
        assert standin.mismatches == [] and standin.leases == {}
