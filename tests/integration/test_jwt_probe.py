"""jwt_probe through ansible-playbook against the lab's app hosts, across a JWT rotation.

app1 is rotated to a canary JWT_SECRET with its seeded secret kept as JWT_SECRET_PREVIOUS
(the grace period); app2 to the same canary with no previous (revoked). A token the app issued
before the rotation still passes on app1 and is refused on app2. One playbook run at -vvvv
holds every case, in the worker and as an ordinary module process; no secret, token or
token-shaped string reaches its output or its results. The autouse lab reset puts the seeded
.env back (and restarts the apps) after the test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsbook.lab import AppHost, free_port
from opsbook.lab.sampleapp.app import TokenError, verify_token
from tests.harness import PROJECT_ROOT

pytestmark = pytest.mark.integration

JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def probe(name: str, path: str, register: str, **args: Any) -> dict[str, Any]:
    """A jwt_probe task on the play's host's app, from the controller; never fails the play."""
    return {
        "name": name,
        "opsbook.runbooks.jwt_probe": {"url": "{{ app_base_url }}" + path, **args},
        "delegate_to": "localhost",
        "register": f"probe_{register}",  # not a name of the extra vars, which win
        "ignore_errors": True,
    }


def save(path: Path, names: list[str]) -> dict[str, Any]:
    results = "{" + ", ".join(f"'{n.removeprefix('probe_')}': {n}" for n in names) + "}"
    return {
        "name": "Save the results",
        "ansible.builtin.copy": {
            "content": "{{ " + results + " | to_json }}",
            "dest": str(path),
            "mode": "0600",
        },
        "delegate_to": "localhost",
    }


def playbook(tmp_path: Path) -> Path:
    grace = [
        probe("Mint with the new secret", "/api/me", "current", secret="{{ new }}"),
        probe("Mint with the previous secret", "/api/me", "previous", secret="{{ old }}"),
        probe("Send a token issued before", "/api/me", "old_token", token="{{ old_token }}"),
        probe("Expect a wrong secret refused", "/api/me", "wrong_401",
              secret="{{ wrong }}", expect_status=[401]),
        probe("A wrong secret fails", "/api/me", "wrong_fails", secret="{{ wrong }}"),
        probe("Mint a session cookie", "/api/session", "session",
              secret="{{ nextauth }}", cookie="session"),
        probe("A session is no bearer token", "/api/session", "session_bearer",
              secret="{{ nextauth }}", fail_on_mismatch=False),
        {**probe("In check mode too", "/api/me", "checked", secret="{{ new }}"),
         "check_mode": True},
        {**probe("As a module process", "/api/me", "module_process", secret="{{ new }}"),
         "environment": {"OPSBOOK_PROBE_TEST": "1"}},
        probe("Too short a secret", "/api/me", "short", secret="{{ new[:20] }}"),
        {**probe("Too short, as a module process", "/api/me", "short_module",
                 secret="{{ new[:20] }}"), "environment": {"OPSBOOK_PROBE_TEST": "1"}},
        {**probe("Nobody answers", "/api/me", "refused", secret="{{ new }}"),
         "opsbook.runbooks.jwt_probe": {"url": "{{ dead_url }}", "secret": "{{ new }}",
                                        "timeout_s": 2}},
    ]  # fmt: skip
    revoked = [
        probe("The old token is refused", "/api/me", "revoked", token="{{ old_token }}",
              expect_status=[401]),
        probe("The old token fails the task", "/api/me", "revoked_fails",
              token="{{ old_token }}"),
        probe("The new secret works", "/api/me", "current", secret="{{ new }}"),
    ]  # fmt: skip
    plays = [
        {
            "name": "Grace period (app1)",
            "hosts": "app1",
            "gather_facts": False,
            "tasks": [*grace, save(tmp_path / "grace.json", [t["register"] for t in grace])],
        },
        {
            "name": "Revoked (app2)",
            "hosts": "app2",
            "gather_facts": False,
            "tasks": [*revoked, save(tmp_path / "revoked.json", [t["register"] for t in revoked])],
        },
    ]
    path = tmp_path / "jwt_probe.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def post(host: AppHost, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{host.base_url}{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def login(host: AppHost, user: str) -> str:
    return str(post(host, "/api/login", {"user": user})["token"])


def test_jwt_probe_across_a_rotation_keeps_every_secret_out_of_vvvv(
    app_hosts: list[AppHost], make_inventory: Any, run_playbook: Any, tmp_path: Path
) -> None:
    app1, app2 = app_hosts[:2]
    seeded = app1.read_env()
    old_token = login(app1, "ada")  # issued with app1's seeded JWT_SECRET
    new = "canary-jwt-" + secrets.token_urlsafe(32)
    app1.write_env({**seeded, "JWT_SECRET": new, "JWT_SECRET_PREVIOUS": seeded["JWT_SECRET"]})
    app2.write_env({**app2.read_env(), "JWT_SECRET": new})
    for host in (app1, app2):
        host.restart_app()
    canaries = {
        "new": new,
        "old": seeded["JWT_SECRET"],
        "nextauth": seeded["NEXTAUTH_SECRET"],
        "wrong": "canary-wrong-" + secrets.token_urlsafe(32),
        "old_token": old_token,
    }

    run = run_playbook(
        os.path.relpath(playbook(tmp_path), PROJECT_ROOT / "playbooks"),
        make_inventory(),
        extravars={**canaries, "dead_url": f"http://127.0.0.1:{free_port('127.0.0.1')}/api/me"},
        args=["-vvvv"],
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    grace = json.loads((tmp_path / "grace.json").read_text())
    revoked = json.loads((tmp_path / "revoked.json").read_text())

    # the grace period: current and previous both verify; a token from before still passes
    assert grace["current"]["ok"] and grace["current"]["json"]["key"] == "current"
    assert grace["previous"]["json"] == {"sub": "opsbook-probe", "key": "previous"}
    assert grace["old_token"]["status"] == 200 and grace["old_token"]["json"]["sub"] == "ada"
    assert grace["old_token"]["json"]["key"] == "previous"
    assert grace["old_token"]["minted"] is False
    assert grace["wrong_401"]["ok"] and not grace["wrong_401"].get("failed")
    url = f"{app1.base_url}/api/me"
    assert grace["wrong_fails"]["failed"] and grace["wrong_fails"]["status"] == 401
    assert grace["wrong_fails"]["msg"] == (
        f"GET {url} (bearer token {grace['wrong_fails']['token_fingerprint']}): status 401, "
        "expected 200"
    )
    assert f"GET {url} (bearer token sha256:" in output  # the failure is readable as it is
    assert grace["session"]["json"]["key"] == "current"
    assert grace["session"]["sent_as"] == "cookie:session"
    assert grace["session_bearer"]["status"] == 401 and not grace["session_bearer"]["ok"]
    assert not grace["session_bearer"].get("failed")  # fail_on_mismatch=false: read ok
    assert grace["checked"]["status"] == 200 and grace["checked"]["changed"] is False
    assert grace["module_process"]["json"]["key"] == "current"
    # it really ran as a module process, whose invocation -vvvv shows, masked
    assert "ESTABLISH LOCAL CONNECTION" in output
    assert '"secret": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in output
    for short in ("short", "short_module"):
        assert grace[short]["failed"]
        assert "secret is 20 characters; an HS256 secret needs at least 32" in grace[short]["msg"]
    assert grace["refused"]["failed"] and grace["refused"]["status"] is None
    assert "no answer (connection refused)" in grace["refused"]["msg"]

    # revoked: the same token is refused, the new secret works
    assert revoked["revoked"]["ok"] and revoked["revoked"]["status"] == 401
    assert revoked["revoked"]["json"] == {"error": "bad signature"}
    assert revoked["revoked"]["token_fingerprint"] == grace["old_token"]["token_fingerprint"]
    assert revoked["revoked_fails"]["failed"]
    assert "status 401, expected 200" in revoked["revoked_fails"]["msg"]
    assert revoked["current"]["ok"]

    # no secret, no token, nothing token-shaped: not at -vvvv, not in the results
    results = (tmp_path / "grace.json").read_text() + (tmp_path / "revoked.json").read_text()
    for name, value in canaries.items():
        assert value not in output, f"{name} leaked into the -vvvv output"
        assert value not in results, f"{name} leaked into the results"
    assert not JWT_SHAPED.search(output) and not JWT_SHAPED.search(results)


def signed_with(token: str, secret: str) -> bool:
    try:
        verify_token(token, [("current", secret)])
    except TokenError:
        return False
    return True


def test_the_lab_reset_puts_the_seeded_env_back_and_restarts_only_a_changed_app(
    app_hosts: list[AppHost],
) -> None:
    rotated, untouched = app_hosts[2], app_hosts[1]
    untouched.reset()  # whatever an earlier test left: a known start
    seeded, pid_before = rotated.read_env(), untouched.app_pid
    assert (rotated.env_file.stat().st_mode & 0o777) == 0o600
    new = secrets.token_urlsafe(48)
    rotated.write_env({**seeded, "JWT_SECRET": new})
    rotated.restart_app()
    assert signed_with(login(rotated, "x"), new)
    note = post(rotated, "/api/notes", {"text": "under the seeded key"})["id"]
    assert (rotated.shared_dir / "notes" / f"{note}.json").is_file()

    for host in (rotated, untouched):
        host.reset()
    assert rotated.read_env() == seeded
    assert not (rotated.shared_dir / "notes").exists()  # no note outlives its test
    token = login(rotated, "y")  # the app was restarted with the seeded secret
    assert signed_with(token, seeded["JWT_SECRET"]) and not signed_with(token, new)
    assert untouched.app_pid == pid_before  # nothing changed there: not restarted
