"""rotate_secrets.yml's faults against the lab's real SSH app hosts: a host that stops
answering mid-rotation, a run SIGKILLed mid-rotation, and an encryption key whose revoke waits
for its re-encryption. (The scenario and the refusals: test_rotate_secrets.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from opsbook.lab.sshd import SshHost
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env
from tests.integration.faults import Injector, processes_with
from tests.integration.stats_helper import run_with_stats
from tests.integration.test_rotate_secrets import SECRETS, call

pytestmark = pytest.mark.integration


@pytest.fixture
def inventory(make_inventory, tmp_path):
    """The lab's hosts, JWT_SECRET and NEXTAUTH_SECRET kept in their env files."""
    (tmp_path / "state").mkdir()
    return make_inventory(
        extra_vars={"opsbook_secrets": SECRETS, "opsbook_state_url": f"file://{tmp_path / 'state'}"}
    )


def test_a_host_unreachable_mid_rotation_is_named_and_the_others_put_back(
    app_hosts, inventory, run_playbook, tmp_path
):
    """The last host stops answering SSH once the canary holds the new value: the rollout stops,
    every host this run changed gets the old value back, and the run names the host it could
    not reach. The next run, with the host back, rotates every host to one value."""
    canary, last = app_hosts[0], app_hosts[-1]
    old = canary.read_env()["JWT_SECRET"]
    killer = Injector(
        lambda: canary.read_env().get("JWT_SECRET") not in (None, old), lambda: SshHost.kill(last)
    )
    with killer:
        run = run_with_stats(
            run_playbook, tmp_path, "rotate_secrets", inventory, {"secrets": "jwt"}
        )
    killer.check(run.output[-3000:])
    assert run.rc != 0
    report = run.stats["rotation"]
    assert not report["ok"] and last.name in " ".join(report["lines"])
    assert canary.name in report["hosts_undone"]
    for host in app_hosts:  # nobody uses a value the others lack
        assert host.read_env()["JWT_SECRET"] == old, host.name
    for host in app_hosts[:-1]:
        assert "JWT_SECRET_PENDING" not in host.read_env()
    # the unreachable host was only staged (a pending value its app never reads); the run says
    # it could not put it back, and the next run clears it
    assert f"{last.name} could not be put back (unreachable)" in run.output
    assert canary.health().status == 200

    SshHost.start(last)
    again = run_playbook("rotate_secrets", inventory, {"secrets": "jwt"})
    assert again.returncode == 0, again.stdout[-3000:]
    values = {h.read_env()["JWT_SECRET"] for h in app_hosts}
    assert len(values) == 1 and old not in values
    assert all("JWT_SECRET_PENDING" not in h.read_env() for h in app_hosts)


def test_a_run_sigkilled_mid_rotation_is_undone_by_the_next(
    app_hosts, inventory, run_playbook, tmp_path
):
    """ansible-playbook is SIGKILLed once the canary runs on the new value: nothing could put it
    back. The next run (break_lock: the dead run's lock) says it undoes that rotation and ends
    with every host on one new value, the value the killed run made nowhere."""
    canary = app_hosts[0]
    old = canary.read_env()["JWT_SECRET"]
    marker = f"opsbook-rotation-kill-{os.getpid()}-{time.monotonic_ns()}"
    variables = tmp_path / "kill-vars.json"
    variables.write_text(json.dumps({"secrets": "jwt"}))
    argv = [str(VENV_BIN / "ansible-playbook"), "playbooks/rotate_secrets.yml",
            "-i", str(inventory), "-e", f"@{variables}"]  # fmt: skip
    env = ansible_env(tmp_path / "oplog.jsonl", {"OPSBOOK_TEST_MARKER": marker})
    journal_file = inventory.parent.parent / "state" / "secrets" / "local" / "jwt.json"
    with (tmp_path / "killed.log").open("w") as sink:
        proc = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    killed_value = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            value = canary.read_env().get("JWT_SECRET")
            if value not in (None, old):
                os.killpg(proc.pid, signal.SIGKILL)
                killed_value = value
                break
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert killed_value, (tmp_path / "killed.log").read_text()[-3000:]
    assert json.loads(journal_file.read_text())["step"] == "setting"

    run = run_playbook("rotate_secrets", inventory, {"secrets": "jwt", "break_lock": True})
    assert run.returncode == 0, run.stdout[-3000:]
    assert "undoing the rotation run" in run.stdout and "left at step setting" in run.stdout
    envs = [h.read_env() for h in app_hosts]
    assert len({env["JWT_SECRET"] for env in envs}) == 1
    assert envs[0]["JWT_SECRET"] not in (old, killed_value)
    assert all(env["JWT_SECRET_PREVIOUS"] == old for env in envs)
    assert all("JWT_SECRET_PENDING" not in env for env in envs)
    assert json.loads(journal_file.read_text())["step"] == "finished"


def test_encryption_key_keyring_and_reencryption_before_revoke(
    app_hosts, make_inventory, run_playbook, tmp_path
):
    """Data encrypted under ENCRYPTION_KEY stays readable after the rotation (the replaced key
    is kept as previous); a revoke whose re-encryption fails is refused; the revoke runs the
    re-encryption on every host first, then drops the key. (A second rotation before the
    re-encryption is refused: tests/unit/test_rotation.py.)"""
    state = tmp_path / "state"
    state.mkdir()
    secrets_conf = {
        "encryption_key": {
            "store": "env_file",
            "reencrypt_command": ["/usr/bin/python3", "current/app.py", "reencrypt"],
        }
    }
    enc_inventory = make_inventory(
        extra_vars={"opsbook_secrets": secrets_conf, "opsbook_state_url": f"file://{state}"}
    )
    first = app_hosts[0]
    status, body = call(f"{first.base_url}/api/notes", {"text": "launch codes"})
    assert status == 201
    note = f"{first.base_url}/api/notes/{body['id']}"

    rotated = run_playbook("rotate_secrets", enc_inventory, {"secrets": "encryption_key"})
    assert rotated.returncode == 0, rotated.stdout[-3000:]
    assert call(note) == (200, {"text": "launch codes", "key": "previous"})

    # a re-encryption that fails: the revoke is refused, the previous key stays
    broken = {"encryption_key": secrets_conf["encryption_key"] | {"reencrypt_command": ["false"]}}
    refused = run_playbook(
        "rotate_secrets",
        enc_inventory,
        {"secrets": "encryption_key", "rotation_step": "revoke", "opsbook_secrets": broken},
    )
    assert refused.returncode != 0 and "staging failed on" in refused.stdout
    assert all("ENCRYPTION_KEY_PREVIOUS" in h.read_env() for h in app_hosts)
    assert call(note) == (200, {"text": "launch codes", "key": "previous"})

    revoke = run_playbook(
        "rotate_secrets", enc_inventory, {"secrets": "encryption_key", "rotation_step": "revoke"}
    )
    assert revoke.returncode == 0, revoke.stdout[-3000:]
    assert all("ENCRYPTION_KEY_PREVIOUS" not in h.read_env() for h in app_hosts)
    assert call(note) == (200, {"text": "launch codes", "key": "current"})
    entry = json.loads((state / "secrets" / "local" / "encryption_key.json").read_text())
    assert entry["step"] == "revoked" and entry["reencrypted_fp"] == entry["current_fp"]
