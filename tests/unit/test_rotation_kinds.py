"""The kinds that live outside the env files, pure parts: the database password's decisions
(module_utils/opsbook_rotation.py - pending DSN, single and alternating users, DIRECT_URL, what
the database does at each phase) and the filters that turn decisions into pg_role_password,
twilio_auth_token and stripe_key_check calls (filter_plugins/opsbook_rotation.py)."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.loaders import load_module_utils, load_plugin

rot = load_module_utils("opsbook_rotation")
filters = load_plugin("filter_plugins", "opsbook_rotation")

NOW = rot.parse_iso("2026-12-07T12:00:00Z")
fp = rot.fingerprint
VAULT = {"type": "vault", "file": "vault.yml", "var": "vault_database_url"}
OLD = "postgresql://app_a:oldPassw0rdoldPassw0rd@db.internal:5432/app?sslmode=require"
DIRECT = "postgresql://app_a:oldPassw0rdoldPassw0rd@db-direct.internal:5432/app"
SID = "AC" + "5e" * 16


def spec(name="db_password", **settings):
    merged, problems = rot.merge_catalog({name: {"store": VAULT, **settings}})
    assert problems == []
    return merged[name]


def decide(name, the_spec, record, journal=None, **kw):
    kw = {"requested": True, "run_step": "rotate", "force_revoke": False, "now": NOW} | kw
    return rot.decide(name, the_spec, journal, record, **kw)


def login(dsn):
    settings = conninfo_to_dict(dsn)
    return settings["user"], settings["password"]


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"strategy": "rolling"}, "strategy: 'rolling' is not one of single, alternating"),
        ({"strategy": "alternating", "admin_url_var": "x"}, "roles: strategy alternating needs"),
        (
            {"strategy": "alternating", "roles": ["a", "a"], "admin_url_var": "x"},
            "two different login role names",
        ),
        ({"strategy": "alternating", "roles": ["a", "b"]}, "admin_url_var: strategy alternating"),
        ({"direct_env_var": "direct-url"}, "is not an environment variable name"),
        ({"store": "env_file"}, "needs a store of record (vault, aws_secretsmanager or aws_ssm)"),
        ({"account_sid": SID}, "unknown setting 'account_sid'"),
    ],
)
def test_database_password_settings_are_checked(settings, needle):
    _, problems = rot.merge_catalog({"db_password": {"store": VAULT} | settings})
    assert any(needle in p for p in problems), problems


def test_vendor_settings_are_checked_only_where_they_belong():
    assert rot.merge_catalog({"twilio": {"store": VAULT, "account_sid": SID}})[1] == []
    _, problems = rot.merge_catalog({"twilio": {"store": VAULT}})
    assert any("account_sid: the Twilio account SID" in p for p in problems)
    assert rot.merge_catalog({"twilio": {"rotate_every_days": 30}})[1] == []  # not configured
    _, problems = rot.merge_catalog({"stripe": {"store": VAULT, "expect_livemode": "yes"}})
    assert problems == ["opsbook_secrets.stripe.expect_livemode: wrong type str"]
    _, problems = rot.merge_catalog({"jwt": {"store": "env_file", "base_url": "x"}})
    assert any("unknown setting 'base_url'" in p for p in problems)


def test_single_user_rotation_keeps_the_login_and_moves_direct_url_with_it():
    record = {"current": OLD, "direct_by_host": {"app1": DIRECT, "app2": DIRECT, "app3": None}}
    d = decide("db_password", spec(), record)
    pending = d["values"]["pending"]
    user, password = login(pending)
    assert user == "app_a" and password != "oldPassw0rdoldPassw0rd"
    assert rot.policy_problem({"kind": "db_password"}, password) is None
    assert pending.endswith("@db.internal:5432/app?sslmode=require")
    new_direct = DIRECT.replace("oldPassw0rdoldPassw0rd", password)
    assert d["apply_env"] == {
        "set": {"DATABASE_URL": pending, "DIRECT_URL": new_direct},
        "remove": ["DATABASE_URL_PENDING", "DATABASE_URL_PREVIOUS"],
    }
    assert d["undo_env"] == {
        "set": {"DATABASE_URL": OLD, "DIRECT_URL": DIRECT},
        "remove": ["DATABASE_URL_PENDING", "DATABASE_URL_PREVIOUS"],
    }
    assert d["derived"] == {fp(new_direct): new_direct}  # the old DIRECT_URL: the hosts'
    work = d["db"]
    assert work["set"] == [
        {
            "action": "set",
            "dsn_fp": fp(OLD),
            "password": password,
            "label": "db_password: ALTER ROLE app_a PASSWORD (the new one; by app_a itself)",
        }
    ]
    assert [s["login_dsn_fp"] for s in work["test"]] == [fp(pending)]
    assert work["restore"] == {
        "set": None,
        "undo": {
            "role": "app_a",
            "login_fp": fp(OLD),
            "via_fp": fp(pending),
            "password": "oldPassw0rdoldPassw0rd",
        },
    }
    assert "DIRECT_URL" in rot.env_keys(spec()).values()


def test_direct_url_that_differs_beyond_its_credentials_is_a_problem():
    other = "postgresql://app_a:x@elsewhere:5432/app"
    record = {"current": OLD, "direct_by_host": {"app1": DIRECT, "app2": other}}
    with pytest.raises(rot.RotationProblem) as caught:
        decide("db_password", spec(), record)
    message = str(caught.value)
    assert "app1" in message and "app2" in message and "DIRECT_URL" in message
    assert "oldPassw0rd" not in message and "nothing was changed" in message


def test_a_host_behind_on_direct_url_credentials_is_brought_along():
    """A host whose DIRECT_URL still has an older password: the same URL otherwise - it gets
    the new credentials with the others."""
    stale = DIRECT.replace("oldPassw0rdoldPassw0rd", "olderPassw0rd")
    d = decide("db_password", spec(), {"current": OLD, "direct_by_host": {"a": DIRECT, "b": stale}})
    assert login(d["apply_env"]["set"]["DIRECT_URL"]) == login(d["values"]["pending"])


def test_alternating_users_switch_to_the_other_role_and_retire_the_old_one():
    alt = spec(strategy="alternating", roles=["app_a", "app_b"], admin_url_var="admin_dsn")
    d = decide("db_password", alt, {"current": OLD})
    pending = d["values"]["pending"]
    assert login(pending)[0] == "app_b"
    (step,) = d["db"]["set"]
    assert step | {"password": "-"} == {
        "action": "ensure_role",
        "admin": True,
        "role": "app_b",
        "like": "app_a",
        "password": "-",
        "label": "db_password: the other login app_b (like app_a), new password",
    }
    assert d["db"]["restore"] == {"set": None, "undo": None}
    assert "nothing to put back in the database" in d["db"]["notes"][0]
    assert d["apply_env"]["set"] == {"DATABASE_URL": pending}  # no DIRECT_URL on the hosts

    journal = {
        "step": "finished",
        "current_fp": fp(pending),
        "previous_fp": fp(OLD),
        "grace_until": "2026-12-07T11:00:00Z",
    }
    revoke = decide(
        "db_password", alt, {"current": pending, "previous": OLD}, journal, run_step="revoke"
    )
    assert revoke["action"] == "revoke"
    (retire,) = revoke["db"]["set"]
    assert (retire["action"], retire["role"], retire["password"]) == (
        "retire",
        "app_a",
        "oldPassw0rdoldPassw0rd",
    )
    assert [(s["login_dsn_fp"], s["expect"]) for s in revoke["db"]["test"]] == [
        (fp(pending), "success"),
        (fp(OLD), "failure"),
    ]
    assert "DATABASE_URL_PREVIOUS" not in revoke["apply_env"]["set"]

    with pytest.raises(rot.RotationProblem, match="logs in as 'someone', which is not one of"):
        decide("db_password", alt, {"current": OLD.replace("app_a", "someone")})


def test_single_user_revoke_only_proves_the_old_login_dead():
    journal = {"step": "finished", "current_fp": "x", "previous_fp": fp(OLD)}
    new = OLD.replace("oldPassw0rdoldPassw0rd", "N" * 32)
    d = decide("db_password", spec(), {"current": new, "previous": OLD}, journal, run_step="revoke")
    assert d["db"]["set"] == []
    assert [s["expect"] for s in d["db"]["test"]] == ["success", "failure"]
    assert d["db"]["test"][1]["label"] == "db_password: the old login is refused (app_a)"


@pytest.mark.parametrize("requested", [True, False])
def test_a_killed_single_user_rotation_puts_its_password_back_first(requested):
    killed = OLD.replace("oldPassw0rdoldPassw0rd", "K" * 32)
    journal = {"step": "setting", "run_id": "r1", "current_fp": fp(OLD), "pending_fp": fp(killed)}
    d = decide(
        "db_password", spec(), {"current": OLD, "pending": killed}, journal, requested=requested
    )
    assert d["action"] == ("rotate" if requested else "undo")
    assert d["db"]["restore"]["set"] == {
        "role": "app_a",
        "login_fp": fp(OLD),
        "via_fp": fp(killed),
        "password": "oldPassw0rdoldPassw0rd",
    }
    if not requested:
        assert d["apply_env"]["set"] == {"DATABASE_URL": OLD}
        assert [s["login_dsn_fp"] for s in d["db"]["test"]] == [fp(OLD)]


def test_vendor_keys_in_a_store_leave_no_previous_value_in_the_env_file():
    twilio = spec("twilio", account_sid=SID)
    d = decide("twilio", twilio, {"current": "a" * 32}, given="b" * 32)
    assert d["apply_env"] == {
        "set": {"TWILIO_AUTH_TOKEN": "b" * 32},
        "remove": ["TWILIO_AUTH_TOKEN_PENDING", "TWILIO_AUTH_TOKEN_PREVIOUS"],
    }
    assert d["undo_env"]["set"] == {"TWILIO_AUTH_TOKEN": "a" * 32}
    assert "db" not in d and d["derived"] == {}
    # the env file as the store keeps the previous value (it is the store's)
    merged, _ = rot.merge_catalog({"twilio": {"store": "env_file", "account_sid": SID}})
    d = decide("twilio", merged["twilio"], {"current": "a" * 32}, given="b" * 32)
    assert d["apply_env"]["set"]["TWILIO_AUTH_TOKEN_PREVIOUS"] == "a" * 32


def test_filter_kind_files_follow_the_run_and_the_phase():
    plan = [{"spec": {"kind": k}} for k in ("hmac", "twilio_auth_token", "stripe_secret_key")]
    assert filters.kind_files(plan, "create") == ["stripe", "twilio"]  # Stripe's proof first
    assert filters.kind_files(plan, "set") == []
    assert filters.kind_files([*plan, {"spec": {"kind": "db_password"}}], "test") == ["db"]
    assert filters.kind_files([{"spec": {"kind": "hmac"}}], "undo") == []


def test_filter_db_calls_resolve_values_and_name_a_missing_admin_dsn():
    alt = spec(strategy="alternating", roles=["app_a", "app_b"], admin_url_var="admin_dsn")
    public = rot.public_decision(decide("db_password", alt, {"current": OLD}))
    pending = public["generated"]["pending"]
    values = {fp(OLD): OLD, fp(pending): pending}
    (call,) = filters.db_calls([public], "set", values, {"admin_dsn": "postgresql://adm@h/app"})
    assert call["dsn"] == "postgresql://adm@h/app" and call["role"] == "app_b"
    assert call["password"] == login(pending)[1]
    with pytest.raises(filters.AnsibleFilterError, match=r"\(admin_url_var\) is not set"):
        filters.db_calls([public], "set", values, {"admin_dsn": ""})
    (test,) = filters.db_calls([public], "test", values)
    assert test["login_dsn"] == test["dsn"] == pending and test["expect"] == "success"
    assert filters.db_admin_vars([public], "set") == ["admin_dsn"]
    assert filters.db_admin_vars([public], "test") == []

    single = rot.public_decision(decide("db_password", spec(), {"current": OLD}))
    new = single["generated"]["pending"]
    (restore,) = filters.db_restores([single], "undo", {fp(OLD): OLD, fp(new): new})
    assert (restore["login_dsn"], restore["via_dsn"], restore["role"]) == (OLD, new, "app_a")
    assert filters.db_restores([single], "set", {}) == []
    with pytest.raises(filters.AnsibleFilterError, match="is not among the values of the run"):
        filters.db_restores([single], "undo", {})


def test_filter_kind_records_and_derived_values():
    plan = [
        {"name": "db_password", "app_env": True, "spec": {"kind": "db_password"}},
        {"name": "jwt", "app_env": True, "spec": {"kind": "hmac"}},
    ]
    hosts = {"app1": {"DIRECT_URL": DIRECT, "JWT_SECRET": "j"}, "app2": {}}
    out = filters.kind_records({"db_password": {"current": OLD}}, plan, hosts)
    assert out == {
        "db_password": {"current": OLD, "direct_by_host": {"app1": DIRECT, "app2": None}}
    }
    assert filters.derived({"decisions": [{"derived": {"sha256:1": "x"}}, {}]}) == {"sha256:1": "x"}


TWILIO_SPEC = {"kind": "twilio_auth_token", "account_sid": SID, "base_url": "http://t"}


def test_filter_twilio_creates_keep_a_killed_runs_secondary():
    stored = "c" * 32
    plan = [
        {"name": "twilio", "spec": TWILIO_SPEC, "journal": None},
    ]
    records = {"twilio": {"current": "a" * 32}}
    (fresh,) = filters.twilio_creates(plan, ["twilio"], "rotate", records)
    assert fresh["secondary_token"] is None and fresh["auth_token"] == "a" * 32
    assert fresh["base_url"] == "http://t" and fresh["account_sid"] == SID
    killed = {"step": "setting", "run_id": "r9", "pending_fp": fp(stored)}
    plan[0]["journal"] = killed
    records["twilio"]["pending"] = stored
    (kept,) = filters.twilio_creates(plan, ["all"], "rotate", records)
    assert kept["secondary_token"] == stored and kept["label"].endswith("run r9")
    plan[0]["journal"] = killed | {"step": "tested"}
    assert filters.twilio_creates(plan, ["twilio"], "rotate", records) == []  # finished instead
    plan[0]["journal"] = None
    assert filters.twilio_creates(plan, ["jwt"], "rotate", records) == []
    assert filters.twilio_creates(plan, ["twilio"], "revoke", records) == []

    created = {
        "results": [
            {"item": {"name": "twilio", "secondary_token": None}, "secondary_auth_token": "d" * 32},
            {"item": {"name": "t2", "secondary_token": stored}},
            {"item": {"name": "t3", "secondary_token": None}, "failed": True},
        ]
    }
    assert filters.twilio_made(created) == {"twilio": "d" * 32, "t2": stored}
    check = {"results": [{"item": {"name": "twilio", "secondary_token": None}}]}
    assert filters.twilio_made(check, True) == {"twilio": filters.TWILIO_CHECK_MODE_TOKEN}
    assert (
        rot.policy_problem({"kind": "twilio_auth_token"}, filters.TWILIO_CHECK_MODE_TOKEN) is None
    )


def test_filter_twilio_calls_promote_at_finish_and_delete_on_undo():
    old, new = "a" * 32, "b" * 32
    values = {fp(old): old, fp(new): new}

    def decision(action, **fps):
        return {"name": "twilio", "kind": "twilio_auth_token", "action": action,
                "spec": TWILIO_SPEC, "fingerprints": fps}  # fmt: skip

    rotate = decision("rotate", current=fp(old), pending=fp(new))
    (promote,) = filters.twilio_calls([rotate], "finish", values)
    assert (promote["state"], promote["auth_token"], promote["secondary_token"]) == (
        "promoted",
        old,
        new,
    )
    (delete,) = filters.twilio_calls([rotate], "undo", values)
    assert (delete["state"], delete["auth_token"]) == ("secondary_absent", old)
    finish = decision("finish", current=fp(new), previous=fp(old))
    assert filters.twilio_calls([finish], "finish", values)[0]["secondary_token"] == new
    undo = decision("undo", current=fp(old))
    assert filters.twilio_calls([undo], "finish", values)[0]["state"] == "secondary_absent"
    assert filters.twilio_calls([decision("revoke", current=fp(new))], "finish", values) == []
    # made before the decisions, which failed: the secondary is deleted all the same
    plan = [{"name": "twilio", "spec": TWILIO_SPEC}]
    (orphan,) = filters.twilio_calls(
        [], "undo", {}, plan, {"twilio": new}, {"twilio": {"current": old}}
    )
    assert (orphan["state"], orphan["auth_token"]) == ("secondary_absent", old)
    assert filters.twilio_calls([], "finish", {}, plan, {"twilio": new}, {}) == []


def test_filter_stripe_checks_pick_the_kind_and_mode():
    plan = [
        {"name": "stripe", "spec": {"kind": "stripe_secret_key", "expect_livemode": True}},
        {"name": "stripe_webhook", "spec": {"kind": "stripe_webhook_secret"}},
    ]
    given = {"stripe": "rk_live_" + "x" * 24, "stripe_webhook": "whsec_" + "y" * 24}
    checks = filters.stripe_checks(plan, ["all"], "rotate", given)
    assert [(c["kind"], c["expect_livemode"], c["base_url"]) for c in checks] == [
        ("restricted_key", True, "https://api.stripe.com"),
        ("webhook_secret", None, "https://api.stripe.com"),
    ]
    assert all(given[c["name"]] not in c["label"] for c in checks)
    assert filters.stripe_checks(plan, ["stripe"], "rotate", {}) == []  # nothing given
    assert filters.stripe_checks(plan, ["stripe"], "revoke", given) == []


def test_filter_revoke_lines_give_the_dashboard_step_without_the_key():
    old = "sk_test_" + "z" * 20 + "9a8b"
    hook = "whsec_" + "w" * 20 + "1234"
    decisions = [
        {"name": "stripe", "kind": "stripe_secret_key", "action": "revoke",
         "spec": {"env_var": "STRIPE_SECRET_KEY"}, "revoked_fp": fp(old)},
        {"name": "stripe_webhook", "kind": "stripe_webhook_secret", "action": "revoke",
         "spec": {"env_var": "STRIPE_WEBHOOK_SECRET"}, "revoked_fp": fp(hook)},
        {"name": "twilio", "kind": "twilio_auth_token", "action": "revoke",
         "spec": {"env_var": "TWILIO_AUTH_TOKEN"}, "revoked_fp": "sha256:tw"},
        {"name": "stripe2", "kind": "stripe_secret_key", "action": "rotate", "spec": {}},
    ]  # fmt: skip
    lines = filters.vendor_revoke_lines(decisions, {fp(old): old, fp(hook): hook})
    assert len(lines) == 3
    key, webhook, twilio = lines
    assert "find the key sk_test_...9a8b" in key and "dashboard.stripe.com/test/apikeys" in key
    assert "Delete key..." in key and fp(old) in key
    assert "whsec_...1234" in webhook and "Roll secret" in webhook
    assert "nothing to do at Twilio" in twilio and "sha256:tw" in twilio
    assert old not in "".join(lines) and hook not in "".join(lines)
    live = "sk_live_" + "q" * 24
    live_decision = decisions[0] | {"revoked_fp": fp(live)}
    (line,) = filters.vendor_revoke_lines([live_decision], {fp(live): live})
    assert "https://dashboard.stripe.com/apikeys" in line and "test mode" not in line
