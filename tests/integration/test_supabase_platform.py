"""supabase_secrets, supabase_db_password and supabase_backups through ansible-playbook at
-vvvv --diff, against SupabaseStandin (tests/standins_supabase.py), every request and answer
judged by Supabase's own document: secrets created, updated and deleted idempotently (a second
run changes nothing), check mode changing nothing, the diff masked, the database password reset
(in check mode: not), the backups' freshness, a 5xx retried and a 429's Retry-After honoured
(measured at the stand-in), the token taken from the controller's environment; then, with the
token expired, a clear error from each module and nothing changed. No token, value, password or
digest of one reaches the output, the results or the operation log.

Two ansible-playbook runs, about ten module tasks; the pure parts and every failure path are in
tests/unit/test_opsbook_supabase.py (no Ansible run)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import PROJECT_ROOT
from tests.standins_supabase import SupabaseStandin

pytestmark = pytest.mark.integration

CONNECTION = {
    "ansible_connection": "local",
    "ansible_python_interpreter": str(PROJECT_ROOT / ".venv" / "bin" / "python"),
}


def task(module: str, name: str, register: str, **args: Any) -> dict[str, Any]:
    options = {"project_ref": "{{ ref }}", "base_url": "{{ api }}", "token": "{{ token }}"}
    return {
        "name": name,
        f"opsbook.runbooks.{module}": {**options, **args},
        "register": register,
        "ignore_errors": True,
    }


def secrets_task(name: str, register: str, items: list[dict[str, Any]], **kw: Any) -> dict:
    return task("supabase_secrets", name, register, secrets=items, **kw)


def playbook(tmp_path: Path, name: str, tasks: list[dict[str, Any]]) -> str:
    registered = [t["register"] for t in tasks]
    results = "{" + ", ".join(f"'{n}': {n}" for n in registered) + "}"
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
    plays = [{"name": name, "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return os.path.relpath(path, PROJECT_ROOT / "playbooks")


def the_work(tmp_path: Path) -> str:
    present = [{"name": "API_KEY", "value": "{{ value_a }}"},
               {"name": "WEBHOOK", "value": "{{ value_b }}"},
               {"name": "OLD", "state": "absent"}]  # fmt: skip
    updated = [{"name": "API_KEY", "value": "{{ value_a2 }}"}]
    password = "{{ db_password }}"
    tasks = [
        {**secrets_task("Would set (check mode)", "would", present), "check_mode": True},
        secrets_task("Set", "created", present),
        secrets_task("Set again", "again", present),
        secrets_task("Update one", "updated", updated),
        secrets_task("Update it again", "updated_again", updated),
        secrets_task("Remove it", "removed", [{"name": "API_KEY", "state": "absent"}]),
        {  # the token from the controller's environment (SUPABASE_ACCESS_TOKEN)
            "name": "List",
            "opsbook.runbooks.supabase_secrets": {
                "project_ref": "{{ ref }}",
                "base_url": "{{ api }}",
            },
            "register": "listed",
        },
        {**task("supabase_db_password", "Would reset", "pw_would", password=password),
         "check_mode": True},
        task("supabase_db_password", "Reset the password", "pw_reset", password=password),
        task("supabase_db_password", "A weak one", "pw_weak", password="{{ weak_password }}"),
        task("supabase_backups", "Backups, daily", "backups", max_age_h=26),
        task("supabase_backups", "Backups, hourly", "backups_hourly", max_age_h=1),
    ]  # fmt: skip
    return playbook(tmp_path, "supabase_work", tasks)


def the_refusals(tmp_path: Path) -> str:
    tasks = [
        secrets_task(
            "Set with an expired token", "secret", [{"name": "X", "value": "{{ value_a }}"}]
        ),
        task("supabase_db_password", "Reset with it", "password", password="{{ db_password }}"),
        task("supabase_backups", "Read with it", "backups", max_age_h=26),
    ]
    return playbook(tmp_path, "supabase_refused", tasks)


def test_supabase_modules_through_ansible(run_playbook: Any, tmp_path: Path) -> None:
    canaries = {
        "value_a": "sa_" + secrets.token_hex(12),
        "value_a2": "sb_" + secrets.token_hex(12),
        "value_b": "sc_" + secrets.token_hex(12),
        "db_password": "Db" + secrets.token_hex(14),
        "weak_password": "wk" + secrets.token_hex(4),
    }
    with SupabaseStandin() as supabase:
        supabase.set_secret("OLD", "old-" + secrets.token_hex(8))
        old_value = supabase.secrets["OLD"]
        supabase.add_backup(age_h=30)
        supabase.add_backup(age_h=4)
        supabase.fail_next(503)  # the first call: retried after the backoff (1 s)
        supabase.fail_next(429, retry_after=1)  # then a rate limit: after Retry-After
        extravars = {
            **canaries,
            **CONNECTION,
            "ref": supabase.ref,
            "api": supabase.url,
            "token": supabase.token,
        }
        env = {"SUPABASE_ACCESS_TOKEN": supabase.token}
        work = run_playbook(
            the_work(tmp_path), "localhost,", extravars, env=env, args=["-vvvv", "--diff"]
        )
        arrivals = [at for _, _, at in supabase.timeline]
        state = (dict(supabase.secrets), list(supabase.passwords_set))
        assert supabase.check_password(canaries["db_password"])

        supabase.expire_token()
        refused = run_playbook(the_refusals(tmp_path), "localhost,", extravars, args=["-vvvv"])
        assert (dict(supabase.secrets), list(supabase.passwords_set)) == state  # unchanged
        assert supabase.check_password(canaries["db_password"])
        assert supabase.mismatches == []
        assert supabase.server.api.undocumented_faults == ["GET /v1/projects/{ref}/secrets 503"]
    output = work.stdout + work.stderr
    assert work.returncode == 0, output[-5000:]
    assert refused.returncode == 0, (refused.stdout + refused.stderr)[-5000:]
    results = json.loads((tmp_path / "supabase_work.json").read_text())
    ref = supabase.ref
    secrets_call = f"/v1/projects/{ref}/secrets"

    # check mode read only, after a 5xx and a 429 retried as asked
    would = results["would"]
    assert would["api_calls"] == [f"GET {secrets_call} 503", f"GET {secrets_call} 429",
                                  f"GET {secrets_call} 200"]  # fmt: skip
    assert arrivals[1] - arrivals[0] >= 0.95  # the backoff after the 503
    assert arrivals[2] - arrivals[1] >= 0.95  # Retry-After: 1
    assert would["changed"] and would["created"] == ["API_KEY", "WEBHOOK"]
    assert would["deleted"] == ["OLD"]

    created = results["created"]
    assert created["created"] == ["API_KEY", "WEBHOOK"] and created["deleted"] == ["OLD"]
    assert created["api_calls"] == [f"GET {secrets_call} 200", f"POST {secrets_call} 201",
                                    f"DELETE {secrets_call} 200"]  # fmt: skip
    assert results["again"]["changed"] is False
    assert results["again"]["api_calls"] == [f"GET {secrets_call} 200"]
    assert results["updated"]["updated"] == ["API_KEY"] and results["updated"]["changed"]
    assert results["updated_again"]["changed"] is False
    assert results["removed"]["deleted"] == ["API_KEY"]
    assert "API_KEY" not in results["listed"]["names"] and "WEBHOOK" in results["listed"]["names"]
    assert state[0] == {"WEBHOOK": canaries["value_b"]}
    assert "******** (new value)" in output  # the diff, masked
    assert "OLD" not in state[0] and old_value not in output

    assert results["pw_would"]["changed"] and results["pw_would"]["api_calls"] == []
    reset = results["pw_reset"]
    assert reset["changed"] and reset["api_calls"] == [
        f"PATCH /v1/projects/{ref}/database/password 200"
    ]
    assert state[1] == [canaries["db_password"]]  # one reset: check mode sent nothing
    weak = results["pw_weak"]
    assert weak["failed"] and weak["api_calls"] == [] and "at least 16" in weak["msg"]

    assert results["backups"]["fresh"] is True and results["backups_hourly"]["fresh"] is False
    assert 3.9 < results["backups"]["latest_age_h"] < 4.1

    # an expired token: each module says so, and nothing was changed
    refusals = json.loads((tmp_path / "supabase_refused.json").read_text())
    for name in ("secret", "password", "backups"):
        result = refusals[name]
        assert result["failed"] and not result["changed"], result
        assert "HTTP 401 Unauthorized" in result["msg"] and "expired or revoked?" in result["msg"]
        assert "nothing was changed" in result["msg"]

    # no token, value, password or digest of one anywhere
    oplog = run_playbook.oplog.read_text()
    assert "supabase_work" in oplog
    texts = {
        "output": output + refused.stdout + refused.stderr,
        "results": json.dumps([results, refusals]),
        "oplog": oplog,
    }
    watched = {**canaries, "token": supabase.token}
    for name, value in list(watched.items()):
        watched[f"{name} digest"] = hashlib.sha256(value.encode()).hexdigest()
    for where, text in texts.items():
        for name, value in watched.items():
            assert value not in text, f"{name} leaked into the {where}"
