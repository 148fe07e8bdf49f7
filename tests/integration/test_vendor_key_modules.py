"""twilio_auth_token and stripe_key_check through ansible-playbook at -vvvv, against the
stand-ins of tests/standins.py: a Twilio rotation (secondary, kept on a rerun, promoted,
promoted again, checked; a retired token refused), in the task's worker and as an ordinary
module process, in check mode too; a Stripe key proven, a revoked one refused, a webhook
secret checked by format. No token or key reaches the output, the results or the operation
log; every request and answer is one the vendors' documents allow."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import PROJECT_ROOT
from tests.standins import StripeStandin, TwilioStandin

pytestmark = pytest.mark.integration


def twilio_task(name: str, register: str, **args: Any) -> dict[str, Any]:
    return {
        "name": name,
        "opsbook.runbooks.twilio_auth_token": {
            "account_sid": "{{ sid }}",
            "auth_token": "{{ primary }}",
            "base_url": "{{ twilio_url }}",
            **args,
        },
        "register": register,
        "ignore_errors": True,
    }


def stripe_task(name: str, register: str, **args: Any) -> dict[str, Any]:
    return {
        "name": name,
        "opsbook.runbooks.stripe_key_check": {"base_url": "{{ stripe_url }}", **args},
        "register": register,
        "ignore_errors": True,
    }


def playbook(tmp_path: Path) -> Path:
    pending = "{{ created.secondary_auth_token }}"
    tasks = [
        {**twilio_task("Would create (check mode)", "would", state="secondary"),
         "check_mode": True},
        {**twilio_task("Create the secondary", "created", state="secondary"), "no_log": True},
        twilio_task("A rerun keeps it", "kept", state="secondary", secondary_token=pending),
        twilio_task("Promote it", "promoted", state="promoted", secondary_token=pending),
        {**twilio_task("Promote again, as a module process", "again", state="promoted",
                       secondary_token=pending), "environment": {"OPSBOOK_TEST": "1"}},
        twilio_task("The new primary authenticates", "checked", state="check",
                    auth_token=pending),
        twilio_task("The old one does not", "old", state="check"),
        stripe_task("Prove the key", "key_ok", api_key="{{ stripe_key }}",
                    expect_livemode=False),
        stripe_task("A revoked key", "key_revoked", api_key="{{ stripe_revoked }}"),
        stripe_task("A webhook secret", "webhook", api_key="{{ webhook_secret }}",
                    kind="webhook_secret"),
    ]  # fmt: skip
    names = [t["register"] for t in tasks if t["register"] != "created"]
    results = "{" + ", ".join(f"'{n}': {n}" for n in names) + "}"
    tasks.append(
        {
            "name": "Save the results",
            "ansible.builtin.copy": {
                "content": "{{ " + results + " | to_json }}",
                "dest": str(tmp_path / "results.json"),
                "mode": "0600",
            },
        }
    )
    plays = [{"name": "Vendor keys", "hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    path = tmp_path / "vendor_keys.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def test_vendor_key_modules_keep_every_token_out_of_vvvv(run_playbook: Any, tmp_path: Path) -> None:
    primary = secrets.token_hex(16)
    with TwilioStandin(primary=primary) as twilio, StripeStandin() as stripe:
        key, revoked = stripe.add_key(), stripe.add_key()
        stripe.revoke(revoked)
        canaries = {
            "primary": primary,
            "stripe_key": key,
            "stripe_revoked": revoked,
            "webhook_secret": "whsec_" + secrets.token_hex(16),
        }
        run = run_playbook(
            os.path.relpath(playbook(tmp_path), PROJECT_ROOT / "playbooks"),
            "localhost,",
            extravars={
                **canaries,
                "sid": twilio.account_sid,
                "twilio_url": twilio.url,
                "stripe_url": stripe.url,
                "ansible_connection": "local",
                "ansible_python_interpreter": str(PROJECT_ROOT / ".venv" / "bin" / "python"),
            },
            args=["-vvvv"],
        )
        new_primary = twilio.primary
        assert twilio.mismatches == [] and stripe.mismatches == []
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    results = json.loads((tmp_path / "results.json").read_text())

    assert results["would"]["changed"] and results["would"]["calls"] == []
    assert new_primary != primary and twilio.retired == [primary] and twilio.secondary is None
    assert results["kept"]["changed"] is False and results["kept"]["calls"] == []
    assert results["promoted"]["promoted"] and results["promoted"]["changed"]
    assert results["promoted"]["calls"] == ["POST /v1/AuthTokens/Promote 200"]
    again = results["again"]
    assert again["promoted"] is False and again["changed"] is False
    assert "EXEC /bin/sh -c 'OPSBOOK_TEST=1 " in output  # it really ran as a module process
    assert '"secondary_token": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in output
    assert results["checked"]["authenticated"] is True
    assert results["old"]["failed"] and results["old"]["authenticated"] is False
    assert "HTTP 401 Unauthorized: Authenticate (code 20003)" in results["old"]["msg"]
    assert results["key_ok"]["proven"] and results["key_ok"]["livemode"] is False
    assert results["key_revoked"]["failed"] and "HTTP 401" in results["key_revoked"]["msg"]
    assert results["webhook"]["proven_by"] == "format"

    oplog = run_playbook.oplog.read_text()
    assert "vendor_keys" in oplog  # the run was logged
    assert "ESTABLISH LOCAL CONNECTION" in output
    saved = (tmp_path / "results.json").read_text()
    for name, value in {**canaries, "new_primary": new_primary}.items():
        assert value not in output, f"{name} leaked into the -vvvv output"
        assert value not in saved, f"{name} leaked into the results"
        assert value not in oplog, f"{name} leaked into the operation log"
