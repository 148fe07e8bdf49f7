"""rotate_secrets.yml and secrets_report.yml against the lab's real SSH app hosts, whose sample
app signs and verifies HS256 tokens with JWT_SECRET (and accepts JWT_SECRET_PREVIOUS).

A session that exists before the rotation survives it (grace period) and dies at revoke; a
failed test puts the old value back everywhere with the app serving; a run killed after set is
settled by the next; --check changes nothing; the lock keeps two runs apart; a bad secret name
or an unconfigured store is refused before anything is touched; no secret value reaches the
output at -vvvv, the journal or the operation log.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost
from tests.integration.stats_helper import run_with_stats
from tests.loaders import load_library, load_module_utils

pytestmark = pytest.mark.integration

rot = load_module_utils("opsbook_rotation")

SECRETS = {
    "jwt": {"store": "env_file", "test_path": "/api/me"},
    "nextauth": {"store": "env_file", "test_path": "/api/session", "test_cookie": "session"},
}


def call(url: str, data: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method="POST" if data is not None else "GET")
    if data is not None:
        request.data = json.dumps(data).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def login(host: AppHost, user: str = "ada") -> str:
    status, body = call(f"{host.base_url}/api/login", {"user": user})
    assert status == 200, (host.name, status, body)
    return body["token"]


def accepted(host: AppHost, token: str) -> int:
    return call(f"{host.base_url}/api/me", token=token)[0]


@pytest.fixture
def inventory(make_inventory, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    return make_inventory(
        extra_vars={"opsbook_secrets": SECRETS, "opsbook_state_url": f"file://{state}"}
    )


def journal(inventory: Path, name: str) -> dict[str, Any]:
    state = inventory.parent.parent / "state"
    return json.loads((state / "secrets" / "local" / f"{name}.json").read_text())


def test_rotation_keeps_old_sessions_until_revoke(
    app_hosts, inventory, run_playbook, tmp_path, request
):
    first, second = app_hosts[0], app_hosts[1]
    before = {h.name: h.read_env() for h in app_hosts}
    old = before[first.name]["JWT_SECRET"]
    assert all(env["JWT_SECRET"] == old for env in before.values())
    token = login(first)
    # the release's link to the env file (what deploy_shared_paths makes), to see it untouched
    link = first.current_link.resolve() / ".env"
    link.symlink_to(first.env_file)
    request.addfinalizer(lambda: link.unlink(missing_ok=True))

    run = run_with_stats(run_playbook, tmp_path, "rotate_secrets", inventory, {"secrets": "jwt"})
    assert run.rc == 0, run.stdout[-3000:]
    assert link.is_symlink() and link.readlink() == first.env_file
    assert first.env_file.stat().st_mode & 0o777 == 0o600
    after = {h.name: h.read_env() for h in app_hosts}
    new = after[first.name]["JWT_SECRET"]
    assert new != old and rot.policy_problem({"kind": "hmac"}, new) is None
    assert link.read_text() == first.env_file.read_text()
    for env in after.values():
        assert env["JWT_SECRET"] == new and env["JWT_SECRET_PREVIOUS"] == old
        assert "JWT_SECRET_PENDING" not in env
    # the session made before the rotation still works on every host; new ones too
    assert {accepted(h, token) for h in app_hosts} == {200}
    assert accepted(first, login(second)) == 200
    entry = journal(inventory, "jwt")
    assert entry["step"] == "finished"
    assert entry["current_fp"] == rot.fingerprint(new)
    assert entry["previous_fp"] == rot.fingerprint(old)
    report = run.stats["rotation"]
    assert report["ok"] and report["secrets"][0]["action"] == "rotate"
    # nextauth was not asked for: untouched
    assert after[first.name]["NEXTAUTH_SECRET"] == before[first.name]["NEXTAUTH_SECRET"]

    # revoke inside the grace period: nothing happens, and the run says until when
    early = run_playbook("rotate_secrets", inventory, {"secrets": "jwt", "rotation_step": "revoke"})
    assert early.returncode == 0, early.stdout[-3000:]
    assert "stays accepted until" in early.stdout
    assert first.read_env()["JWT_SECRET_PREVIOUS"] == old

    # forced revoke: the old session dies; no value in the output (-vvvv: test_secrets_everywhere)
    revoke = run_playbook(
        "rotate_secrets",
        inventory,
        {"secrets": "jwt", "rotation_step": "revoke", "force_revoke": True},
    )
    assert revoke.returncode == 0, revoke.stdout[-3000:]
    assert "JWT_SECRET_PREVIOUS" not in first.read_env()
    assert {accepted(h, token) for h in app_hosts} == {401}
    assert journal(inventory, "jwt")["step"] == "revoked"
    for value in (old, new):
        assert value not in revoke.stdout + revoke.stderr
        assert value not in run.stdout + run.stderr
        assert value not in (tmp_path / "oplog.jsonl").read_text()
    assert old not in json.dumps(journal(inventory, "jwt"))


def test_check_mode_changes_nothing(app_hosts, inventory, run_playbook):
    before = [h.env_file.read_bytes() for h in app_hosts]
    run = run_playbook("rotate_secrets", inventory, {"secrets": "jwt,nextauth"}, check=True)
    assert run.returncode == 0, run.stdout[-3000:]
    assert [h.env_file.read_bytes() for h in app_hosts] == before
    assert not (inventory.parent.parent / "state" / "secrets").exists()


def test_failed_test_puts_the_old_value_back(app_hosts, make_inventory, run_playbook, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    broken = {"jwt": {"store": "env_file", "test_path": "/no-such-endpoint"}}
    inventory = make_inventory(
        extra_vars={"opsbook_secrets": broken, "opsbook_state_url": f"file://{state}"}
    )
    before = {h.name: h.read_env() for h in app_hosts}
    token = login(app_hosts[0])
    run = run_playbook("rotate_secrets", inventory, {"secrets": "jwt"})
    assert run.returncode != 0
    assert "the test failed" in run.stdout and "undone (the current value is back)" in run.stdout
    for host in app_hosts:
        env = host.read_env()
        assert env.get("JWT_SECRET") == before[host.name]["JWT_SECRET"]
        assert "JWT_SECRET_PREVIOUS" not in env and "JWT_SECRET_PENDING" not in env
        assert host.health().status == 200
        assert accepted(host, token) == 200
    entry = json.loads((state / "secrets" / "local" / "jwt.json").read_text())
    assert entry["step"] == "undone"


def test_a_run_killed_after_set_is_settled_by_the_next(app_hosts, inventory, run_playbook):
    """The state a run killed between set and finish leaves: the journal at "setting", one
    host switched to the pending value, the other only staged. The next run says it undoes it,
    discards the unproven value, and ends with every host on one new value."""
    first, second = app_hosts[0], app_hosts[1]
    old = first.read_env()["JWT_SECRET"]
    stale = "s" * 64
    first.write_env(first.read_env() | {"JWT_SECRET": stale, "JWT_SECRET_PREVIOUS": old})
    second.write_env(second.read_env() | {"JWT_SECRET_PENDING": stale})
    state = inventory.parent.parent / "state" / "secrets" / "local"
    state.mkdir(parents=True)
    killed = rot.journal_entry(
        None,
        name="jwt",
        env="local",
        kind="hmac",
        step="setting",
        run_id="killed-run",
        operator="test",
        now=rot.utcnow(),
        current_fp=rot.fingerprint(old),
        pending_fp=rot.fingerprint(stale),
        previous_fp=None,
    )
    (state / "jwt.json").write_bytes(rot.journal_bytes(killed))
    run = run_playbook("rotate_secrets", inventory, {"secrets": "jwt"})
    assert run.returncode == 0, run.stdout[-3000:]
    assert "undoing the rotation run killed-run left at step setting" in run.stdout
    envs = [h.read_env() for h in app_hosts]
    assert envs[0]["JWT_SECRET"] == envs[1]["JWT_SECRET"] not in (stale, old)
    assert all(env["JWT_SECRET_PREVIOUS"] == old for env in envs)
    assert all("JWT_SECRET_PENDING" not in env for env in envs)


@pytest.mark.parametrize(
    ("extravars", "needles"),
    [
        # every problem at once: an unknown name and one this environment gives no store
        (
            {"secrets": "jwt,bogus,encryption_key"},
            ["unknown secret 'bogus'", "secret 'encryption_key' has no store"],
        ),
        (
            {"secrets": "jwt", "opsbook_secrets": {"jwt": {"store": "env_file", "length": 8}}},
            ["length: a value of that length fails the hmac policy"],
        ),
    ],
)
def test_bad_names_are_refused_before_anything(
    app_hosts, inventory, run_playbook, extravars, needles
):
    before = [h.env_file.read_bytes() for h in app_hosts]
    run = run_playbook("rotate_secrets", inventory, extravars)
    assert run.returncode != 0
    assert all(needle in run.stdout for needle in needles), run.stdout[-2000:]
    assert [h.env_file.read_bytes() for h in app_hosts] == before
    assert not (inventory.parent.parent / "state" / "locks" / "local" / "deploy.json").exists()


def test_a_rotation_waits_for_the_deploy_lock(app_hosts, inventory, run_playbook):
    """Another rotation holds the deploy lock (a deploy would hold the same one): this rotation
    is refused, naming it, and changes nothing."""
    playbook, reason = "rotate_secrets", "rotate nextauth"
    state = inventory.parent.parent / "state"
    taken = load_library("deploy_lock").execute(
        {
            "url": f"file://{state}",
            "env": "local",
            "state": "present",
            "run_id": "the-other-run",
            "owner": "someone",
            "reason": reason,
            "playbook": playbook,
            "ttl_s": 600,
            "break_lock": False,
            "refresh": False,
            "conditional_writes": "auto",
            "break_hint": "break_lock=true",
            "contention_timeout_s": 30.0,
            "holder_pid": None,
        },
        False,
    )
    assert not taken.get("failed"), taken
    before = [h.env_file.read_bytes() for h in app_hosts]
    run = run_playbook("rotate_secrets", inventory, {"secrets": "jwt"})
    assert run.returncode != 0 and "the-other-run" in run.stdout and reason in run.stdout
    assert [h.env_file.read_bytes() for h in app_hosts] == before
    assert not (state / "secrets").exists()


def test_secrets_report_flags_what_is_due(inventory, run_playbook, tmp_path):
    state = inventory.parent.parent / "state" / "secrets" / "local"
    state.mkdir(parents=True)
    old = rot.journal_entry(
        None,
        name="jwt",
        env="local",
        kind="hmac",
        step="finished",
        run_id="r",
        operator="t",
        now=rot.utcnow(),
        rotated_at="2020-01-01T00:00:00Z",
    )
    (state / "jwt.json").write_bytes(rot.journal_bytes(old))
    run = run_with_stats(run_playbook, tmp_path, "secrets_report", inventory, {})
    assert run.rc != 0 and "overdue" in run.stdout
    report = run.stats["rotation_schedule"]
    assert report["overdue"] == ["jwt"]
    assert "nextauth" in report["due"]  # never rotated by opsbook: its age is unknown
    assert any(line.startswith("| jwt | JWT_SECRET | env_file |") for line in report["lines"])
    lenient = run_playbook("secrets_report", inventory, {"secrets_report_fail_on": "never"})
    assert lenient.returncode == 0
