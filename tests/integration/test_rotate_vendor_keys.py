"""rotate_secrets.yml rotating the vendors' keys against the stand-ins of tests/standins.py (every
request and answer judged by Twilio's and Stripe's own documents) and the lab's SSH app hosts,
the keys' store of record being the inventory's vault file (plain YAML, as the sandbox's).

Twilio: the secondary token created with the current one, installed, promoted at the end (the
stand-in's primary is the new token, the old one retired). Stripe: a new key given to the run
is proven (GET /v1/balance) before anything is stored - a key Stripe refuses changes nothing -
then installed; the revoke prints the dashboard step. A failed run deletes Twilio's secondary
and - the database password rotated in the same run - puts the role's old password back, the
host and the store keeping the current values. --check asks Twilio nothing and changes
nothing. No token or key reaches the -vvvv output or the operation log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from opsbook.lab import AppHost
from tests.integration.canaries import leaks
from tests.standins import TWILIO_SID, StripeStandin, TwilioStandin

pytestmark = pytest.mark.integration


def logs_in(url: str) -> bool:
    """Whether the server accepts the DSN's password (refused: False; any other failure is an
    error of the test)."""
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc), exc
        return False


@pytest.fixture
def twilio() -> Iterator[TwilioStandin]:
    with TwilioStandin() as standin:
        yield standin


@pytest.fixture
def stripe() -> Iterator[StripeStandin]:
    with StripeStandin() as standin:
        yield standin


def vault_store(tmp_path: Path, var: str) -> dict[str, str]:
    """The store of a secret in the test inventory's vault file (plain YAML)."""
    vault = tmp_path / "inventories" / "test" / "group_vars" / "all" / "vault.yml"
    return {"type": "vault", "file": str(vault), "var": var}


@dataclass
class Vendors:
    inventory: Path
    vault: Path
    host: AppHost

    def store(self) -> dict[str, Any]:
        return yaml.safe_load(self.vault.read_text())

    def journal(self, name: str) -> dict[str, Any]:
        path = self.inventory.parent.parent / "state" / "secrets" / "local" / f"{name}.json"
        return json.loads(path.read_text())


@pytest.fixture
def vendors(
    app_hosts: list[AppHost],
    make_inventory: Callable[..., Path],
    tmp_path: Path,
    twilio: TwilioStandin,
    stripe: StripeStandin,
) -> Callable[..., Vendors]:
    """vendors(stripe_key, more_secrets, more_values): one app host and the vault file holding
    Twilio's primary token and ``stripe_key`` as the current values, an inventory that rotates
    both; ``more_secrets`` other secrets' settings, ``more_values`` {vault variable: (env
    variable, current value)} more values in the vault file and the host's env file."""

    def make(
        stripe_key: str,
        more_secrets: dict[str, Any] | None = None,
        more_values: dict[str, tuple[str, str]] | None = None,
    ) -> Vendors:
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        vault = Path(vault_store(tmp_path, "")["file"])

        def store(var: str) -> dict[str, str]:
            return vault_store(tmp_path, var)

        secrets = {
            "twilio": {
                "store": store("vault_twilio_auth_token"),
                "account_sid": TWILIO_SID,
                "base_url": twilio.url,
            },
            "stripe": {
                "store": store("vault_stripe_secret_key"),
                "base_url": stripe.url,
                "expect_livemode": False,
            },
            **(more_secrets or {}),
        }
        inventory = make_inventory(
            app_hosts=app_hosts[:1],
            extra_vars={"opsbook_state_url": f"file://{state}", "opsbook_secrets": secrets},
        )
        values = {
            "vault_twilio_auth_token": ("TWILIO_AUTH_TOKEN", twilio.primary),
            "vault_stripe_secret_key": ("STRIPE_SECRET_KEY", stripe_key),
            **(more_values or {}),
        }
        vault.write_text("---\n" + "".join(f"{var}: '{v}'\n" for var, (_, v) in values.items()))
        host = app_hosts[0]  # the app uses the store's values already
        current = dict(values.values())
        host.write_env(host.read_env() | current)
        return Vendors(inventory, vault, host)

    return make


def test_twilio_and_stripe_rotated_then_revoked(vendors, twilio, stripe, run_playbook, tmp_path):
    old_token, old_key, new_key = twilio.primary, stripe.add_key(), stripe.add_key()
    setup = vendors(old_key)

    run = run_playbook(
        "rotate_secrets",
        setup.inventory,
        {"secrets": "twilio,stripe", "secret_values": {"stripe": new_key}},
        args=["-vvvv"],
    )
    assert run.returncode == 0, run.stdout[-3000:]
    new_token = twilio.primary
    assert new_token != old_token and old_token in twilio.retired and twilio.secondary is None
    assert twilio.calls == ["CreateSecondaryAuthToken", "UpdateAuthTokenPromotion"]
    env = setup.host.read_env()
    assert env["TWILIO_AUTH_TOKEN"] == new_token and env["STRIPE_SECRET_KEY"] == new_key
    assert not {"TWILIO_AUTH_TOKEN_PREVIOUS", "STRIPE_SECRET_KEY_PREVIOUS"} & set(env)
    store = setup.store()
    assert store["vault_twilio_auth_token"] == new_token
    assert store["vault_twilio_auth_token_previous"] == old_token
    assert store["vault_stripe_secret_key"] == new_key
    assert store["vault_stripe_secret_key_previous"] == old_key
    assert stripe.calls == ["GetBalance"]  # the new key proven once, before it was stored
    oplog = (tmp_path / "oplog.jsonl").read_text()
    output = {"stdout": run.stdout + run.stderr, "oplog": oplog}
    assert leaks([old_token, new_token, old_key, new_key], texts=output) == {}

    revoke = run_playbook(
        "rotate_secrets", setup.inventory, {"secrets": "twilio,stripe", "rotation_step": "revoke"}
    )
    assert revoke.returncode == 0, revoke.stdout[-3000:]
    shown = f"sk_test_...{old_key[-4:]}"
    assert f"find the key {shown}" in revoke.stdout and "Delete key..." in revoke.stdout
    assert "https://dashboard.stripe.com/test/apikeys" in revoke.stdout
    assert "stopped working when Twilio promoted the new one" in revoke.stdout
    assert old_key not in revoke.stdout
    assert setup.journal("stripe")["step"] == setup.journal("twilio")["step"] == "revoked"
    assert "vault_stripe_secret_key_previous" not in setup.store()
    assert twilio.calls == ["CreateSecondaryAuthToken", "UpdateAuthTokenPromotion"]
    assert twilio.mismatches == [] and stripe.mismatches == []


def test_a_stripe_key_stripe_refuses_changes_nothing(vendors, stripe, twilio, run_playbook):
    setup = vendors(stripe.add_key())
    unknown = "sk_test_" + "Q" * 24  # the format of a key; Stripe does not know it
    before = (setup.vault.read_bytes(), setup.host.env_file.read_bytes())

    run = run_playbook(
        "rotate_secrets",
        setup.inventory,
        {"secrets": "twilio,stripe", "secret_values": {"stripe": unknown}},
    )
    assert run.returncode != 0
    assert "api_key does not authenticate" in run.stdout and "nothing was changed" in run.stdout
    assert (setup.vault.read_bytes(), setup.host.env_file.read_bytes()) == before
    assert not (setup.inventory.parent.parent / "state" / "secrets").exists()
    assert twilio.calls == []  # the key is proven before Twilio is asked for anything
    assert unknown not in run.stdout
    assert stripe.mismatches == []


def test_a_failed_run_puts_every_kind_back(pg, vendors, twilio, stripe, run_playbook, tmp_path):
    """db_password, twilio and jwt in one run; jwt's test fails (no such endpoint): Twilio's
    secondary token is deleted, the database role has its old password again (set back by the
    login, with the new one), the host and the store hold the current values."""
    tag = uuid.uuid4().hex[:8]
    role, old_pw = f"rot_{tag}_app", f"CANARYdb{tag}" + uuid.uuid4().hex
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{old_pw}'")
    old_dsn = f"postgresql://{role}:{old_pw}@{pg.host}:{pg.port}/app"
    old_token = twilio.primary
    more = {
        "jwt": {"store": "env_file", "test_path": "/no-such-endpoint"},
        "db_password": {"store": vault_store(tmp_path, "vault_database_url")},
    }
    setup = vendors(stripe.add_key(), more, {"vault_database_url": ("DATABASE_URL", old_dsn)})
    store_before, env_before = setup.store(), setup.host.read_env()

    run = run_playbook("rotate_secrets", setup.inventory, {"secrets": "db_password,twilio,jwt"})
    assert run.returncode != 0 and "the test failed" in run.stdout
    assert twilio.calls == ["CreateSecondaryAuthToken", "DeleteSecondaryAuthToken"]
    assert twilio.secondary is None and twilio.primary == old_token
    assert len(twilio.retired) == 1  # the secondary this run created, deleted
    # the role's password was changed (set), then put back after the failed test (undo)
    assert f"ALTER ROLE {role} PASSWORD" in run.stdout
    assert f"the password of {role} as before this rotation" in run.stdout
    assert logs_in(old_dsn)
    assert setup.host.read_env() == env_before and setup.host.health().status == 200
    assert setup.store() == store_before
    assert setup.journal("twilio")["step"] == setup.journal("db_password")["step"] == "undone"
    assert twilio.mismatches == []


def test_check_mode_asks_twilio_nothing_and_changes_nothing(vendors, twilio, stripe, run_playbook):
    setup = vendors(stripe.add_key())
    before = (setup.vault.read_bytes(), setup.host.env_file.read_bytes())
    run = run_playbook(
        "rotate_secrets",
        setup.inventory,
        {"secrets": "twilio,stripe", "secret_values": {"stripe": stripe.add_key()}},
        check=True,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert twilio.calls == [] and stripe.calls == ["GetBalance"]  # the proof only reads
    assert (setup.vault.read_bytes(), setup.host.env_file.read_bytes()) == before
    assert not (setup.inventory.parent.parent / "state" / "secrets").exists()
