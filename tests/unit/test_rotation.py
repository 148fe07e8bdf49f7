"""The rotation's pure part (module_utils/opsbook_rotation.py) and the runbook's filters
(filter_plugins/opsbook_rotation.py): catalog, policies, decisions after every step a run can
be killed at, journal entries, the summary."""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import pytest

from tests.loaders import load_module_utils, load_plugin

rot = load_module_utils("opsbook_rotation")
filters = load_plugin("filter_plugins", "opsbook_rotation")

NOW = rot.parse_iso("2026-12-07T12:00:00Z")
OLD = "o" * 64
NEW_GIVEN = "n" * 64
PREV = "p" * 64


def catalog(**overrides):
    merged, problems = rot.merge_catalog(overrides)
    assert problems == []
    return merged


def jwt_spec():
    return catalog(jwt={"store": "env_file", "test_path": "/api/me"})["jwt"]


def test_fingerprint_is_the_shared_rule():
    assert rot.fingerprint("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()[:12]
    assert rot.fingerprint(None) is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"jwt": {"kind": "rsa"}}, "kind: 'rsa' is not one of"),
        ({"jwt": {"store": {"type": "etcd"}}}, "store.type: 'etcd'"),
        ({"jwt": {"rotate_every_days": 0}}, "rotate_every_days must be at least 1"),
        ({"jwt": {"grace_hours": -1}}, "grace_hours must be >= 0"),
        ({"jwt": {"colour": "red"}}, "unknown setting 'colour'"),
        ({"jwt": {"length": 8}}, "length: a value of that length fails the hmac policy"),
        ({"Bad-Name": {}}, "is not a secret name"),
        ({"custom": {"store": "env_file"}}, "kind: None is not one of"),
    ],
)
def test_bad_settings_are_named(overrides, needle):
    _, problems = rot.merge_catalog(overrides)
    assert any(needle in p for p in problems), problems


def test_names_unknown_and_unconfigured_are_refused():
    cat = catalog(jwt={"store": "env_file"})
    names, problems = rot.resolve_names(["jwt,nope"], cat)
    assert names == ["jwt"]
    assert any("unknown secret 'nope'" in p for p in problems)
    names, problems = rot.resolve_names(["nextauth"], cat)
    assert names == [] and "has no store in this environment" in problems[0]
    assert rot.resolve_names(["all"], cat) == (["jwt"], [])
    assert rot.resolve_names([], cat)[1] == [
        "no secret to rotate: give secrets=NAME[,NAME...] (or all)"
    ]


@pytest.mark.parametrize("kind", ["hmac", "encryption_key", "db_password"])
def test_generated_values_pass_their_policy_and_differ(kind):
    spec = {"kind": kind}
    first, second = rot.new_value(spec), rot.new_value(spec)
    assert first != second
    assert rot.policy_problem(spec, first) is None
    if kind == "encryption_key":
        assert len(base64.b64decode(first)) == 32


@pytest.mark.parametrize(
    ("kind", "value", "needle"),
    [
        ("hmac", "short", "at least 32"),
        ("hmac", "x" * 40 + "!", "outside"),
        ("encryption_key", base64.b64encode(b"k" * 16).decode(), "decodes to 16 bytes"),
        ("encryption_key", "not base64!", "not standard base64"),
        ("db_password", "a" * 30 + "'", "outside A-Z"),
        ("twilio_auth_token", "ABC", "32 lowercase hex"),
        ("stripe_secret_key", "pk_live_" + "a" * 20, "not a Stripe secret"),
        ("stripe_webhook_secret", "whsec_x", "webhook signing secret"),
    ],
)
def test_policies_refuse(kind, value, needle):
    assert needle in rot.policy_problem({"kind": kind}, value)


def test_given_value_is_checked_by_the_policy():
    spec = catalog(stripe={"store": {"type": "vault", "file": "v.yml", "var": "x"}})["stripe"]
    with pytest.raises(rot.RotationProblem, match="fails the stripe_secret_key policy"):
        rot.decide(
            "stripe",
            spec,
            None,
            {"current": "sk_live_" + "a" * 24},
            requested=True,
            run_step="rotate",
            force_revoke=False,
            now=NOW,
            given="pk_live_" + "b" * 24,
        )
    with pytest.raises(rot.RotationProblem, match="give the new value"):
        rot.decide(
            "stripe",
            spec,
            None,
            {"current": "sk_live_" + "a" * 24},
            requested=True,
            run_step="rotate",
            force_revoke=False,
            now=NOW,
        )


def reads(*hosts, current=OLD, previous=None, pending=None):
    out = {}
    for host in hosts:
        values = {"JWT_SECRET": current}
        if previous:
            values["JWT_SECRET_PREVIOUS"] = previous
        if pending:
            values["JWT_SECRET_PENDING"] = pending
        out[host] = values
    return out


def test_fresh_rotation_sets_pending_and_keeps_current_accepted():
    spec = jwt_spec()
    pool, by_host = rot.pool_from_hosts(reads("app1", "app2"), spec)
    record = rot.record_from_pool("jwt", spec, None, pool, by_host)
    assert record == {"current": OLD, "pending": None, "previous": None}
    d = rot.decide(
        "jwt", spec, None, record, requested=True, run_step="rotate", force_revoke=False, now=NOW
    )
    pending = d["values"]["pending"]
    assert d["action"] == "rotate" and pending not in (None, OLD)
    assert d["stage_env"] == {"set": {"JWT_SECRET_PENDING": pending}, "remove": []}
    assert d["apply_env"] == {
        "set": {"JWT_SECRET": pending, "JWT_SECRET_PREVIOUS": OLD},
        "remove": ["JWT_SECRET_PENDING"],
    }
    assert d["undo_env"] == {
        "set": {"JWT_SECRET": OLD},
        "remove": ["JWT_SECRET_PENDING", "JWT_SECRET_PREVIOUS"],
    }


def test_hosts_that_disagree_are_named_and_nothing_starts():
    spec = jwt_spec()
    both = reads("app1") | reads("app2", current="z" * 64)
    pool, by_host = rot.pool_from_hosts(both, spec)
    with pytest.raises(rot.RotationProblem) as caught:
        rot.record_from_pool("jwt", spec, None, pool, by_host)
    message = str(caught.value)
    assert "app1" in message and "app2" in message and rot.fingerprint(OLD) in message
    assert OLD not in message and "nothing was changed" in message


def journal(step, current=OLD, pending=NEW_GIVEN, previous=None, **extra):
    return {
        "step": step,
        "run_id": "run-1",
        "current_fp": rot.fingerprint(current),
        "pending_fp": rot.fingerprint(pending) if pending else None,
        "previous_fp": rot.fingerprint(previous) if previous else None,
        **extra,
    }


@pytest.mark.parametrize("step", ["created", "setting"])
def test_killed_before_the_test_is_undone_and_rotated_afresh(step):
    """Killed after set and before finish: half the hosts hold the pending value. The next run
    sorts the values by the journal's fingerprints, discards the unproven one, and rotates anew
    (or only undoes when the secret is not asked for)."""
    spec = jwt_spec()
    half = reads("app1", current=NEW_GIVEN, previous=OLD) | reads("app2", pending=NEW_GIVEN)
    pool, by_host = rot.pool_from_hosts(half, spec)
    record = rot.record_from_pool("jwt", spec, journal(step), pool, by_host)
    assert record == {"current": OLD, "pending": NEW_GIVEN, "previous": None}
    again = rot.decide(
        "jwt",
        spec,
        journal(step),
        record,
        requested=True,
        run_step="rotate",
        force_revoke=False,
        now=NOW,
    )
    assert again["action"] == "rotate" and again["values"]["pending"] != NEW_GIVEN
    assert again["values"]["current"] == OLD
    assert "undoing the rotation run run-1 left at step " + step in again["notes"][0]
    only = rot.decide(
        "jwt",
        spec,
        journal(step),
        record,
        requested=False,
        run_step="rotate",
        force_revoke=False,
        now=NOW,
    )
    assert only["action"] == "undo"
    assert only["apply_env"] == {
        "set": {"JWT_SECRET": OLD},
        "remove": ["JWT_SECRET_PENDING", "JWT_SECRET_PREVIOUS"],
    }


def test_killed_after_the_test_is_finished():
    spec = jwt_spec()
    done = reads("app1", "app2", current=NEW_GIVEN, previous=OLD)
    pool, by_host = rot.pool_from_hosts(done, spec)
    record = rot.record_from_pool("jwt", spec, journal("tested"), pool, by_host)
    d = rot.decide(
        "jwt",
        spec,
        journal("tested"),
        record,
        requested=True,
        run_step="rotate",
        force_revoke=False,
        now=NOW,
    )
    assert d["action"] == "finish"
    assert d["values"] == {"current": NEW_GIVEN, "pending": None, "previous": OLD}
    assert "finishing the rotation run run-1 left at step tested" in d["notes"][0]


def test_a_value_the_journal_names_but_no_host_holds_is_a_problem():
    spec = jwt_spec()
    pool, by_host = rot.pool_from_hosts(reads("app1", current="q" * 64), spec)
    with pytest.raises(rot.RotationProblem, match="is on no app host"):
        rot.record_from_pool("jwt", spec, journal("setting"), pool, by_host)


def finished(hours_ago, grace_hours=24, **extra):
    rotated = NOW - timedelta(hours=hours_ago)
    return journal(
        "finished",
        current=NEW_GIVEN,
        pending=None,
        previous=OLD,
        rotated_at=rot.iso(rotated),
        grace_until=rot.iso(rotated + timedelta(hours=grace_hours)),
        **extra,
    )


def test_revoke_waits_for_the_grace_period_unless_forced():
    spec = jwt_spec()
    record = {"current": NEW_GIVEN, "pending": None, "previous": OLD}
    early = rot.decide(
        "jwt",
        spec,
        finished(1),
        record,
        requested=True,
        run_step="revoke",
        force_revoke=False,
        now=NOW,
    )
    assert early["action"] == "none" and "stays accepted until" in early["notes"][0]
    forced = rot.decide(
        "jwt",
        spec,
        finished(1),
        record,
        requested=True,
        run_step="revoke",
        force_revoke=True,
        now=NOW,
    )
    assert forced["action"] == "revoke"
    assert forced["values"]["revoked"] == OLD
    assert forced["apply_env"] == {
        "set": {"JWT_SECRET": NEW_GIVEN},
        "remove": ["JWT_SECRET_PENDING", "JWT_SECRET_PREVIOUS"],
    }
    late = rot.decide(
        "jwt",
        spec,
        finished(30),
        record,
        requested=True,
        run_step="revoke",
        force_revoke=False,
        now=NOW,
    )
    assert late["action"] == "revoke"


def test_encryption_key_is_not_rotated_again_before_reencryption():
    spec = catalog(encryption_key={"store": "env_file"})["encryption_key"]
    key_new = base64.b64encode(b"n" * 32).decode()
    key_old = base64.b64encode(b"o" * 32).decode()
    record = {"current": key_new, "pending": None, "previous": key_old}
    entry = journal("finished", current=key_new, pending=None, previous=key_old)
    with pytest.raises(rot.RotationProblem, match="re-encryption"):
        rot.decide(
            "encryption_key",
            spec,
            entry,
            record,
            requested=True,
            run_step="rotate",
            force_revoke=False,
            now=NOW,
        )
    entry["reencrypted_fp"] = entry["current_fp"]
    d = rot.decide(
        "encryption_key",
        spec,
        entry,
        record,
        requested=True,
        run_step="rotate",
        force_revoke=False,
        now=NOW,
    )
    assert d["action"] == "rotate"


def test_status_due_and_overdue():
    spec = jwt_spec()
    status = rot.status_of(spec, {"rotated_at": rot.iso(NOW - timedelta(days=100))}, NOW)
    assert status["overdue"] and status["age_days"] == 100.0
    fresh = rot.status_of(spec, {"rotated_at": rot.iso(NOW - timedelta(days=10))}, NOW)
    assert not fresh["due"] and fresh["due_in_days"] == 80.0
    never = rot.status_of(spec, None, NOW)
    assert never["due"] and never["age_days"] is None


def test_journal_entries_and_history_are_bounded():
    record = None
    for i in range(30):
        record = rot.journal_entry(
            record,
            name="jwt",
            env="t",
            kind="hmac",
            step="setting",
            run_id=str(i),
            operator="me",
            now=NOW,
        )
    assert len(record["history"]) == rot.HISTORY_KEEP and record["history"][-1]["run_id"] == "29"
    with pytest.raises(ValueError):
        rot.journal_entry(
            None, name="jwt", env="t", kind="hmac", step="bogus", run_id="", operator="", now=NOW
        )


def summary_item(action, **extra):
    fps = {"current": "sha256:aaa", "pending": "sha256:bbb", "previous": None}
    return {
        "name": "jwt",
        "action": action,
        "fingerprints": fps,
        "spec": {"env_var": "JWT_SECRET", "grace_hours": 24},
        "store_type": "vault",
        "notes": [],
        **extra,
    }


def test_filter_journal_entries_by_outcome():
    rotate = summary_item("rotate")
    assert filters.journal_entries([rotate], "setting")[0]["step"] == "setting"
    ok = filters.journal_entries([rotate], "succeeded")[0]
    assert (
        ok["step"] == "finished"
        and ok["current_fp"] == "sha256:bbb"
        and ok["previous_fp"] == "sha256:aaa"
    )
    assert filters.journal_entries([rotate], "failed")[0]["step"] == "undone"
    assert filters.journal_entries([summary_item("none")], "succeeded") == []
    assert filters.journal_entries([summary_item("finish")], "failed") == []


def test_filter_store_actions_and_restart():
    assert filters.store_actions([summary_item("rotate")], False)[0]["store_action"] == "promote"
    assert (
        filters.store_actions([summary_item("rotate")], True)[0]["store_action"]
        == "discard_pending"
    )
    assert filters.store_actions([summary_item("rotate", store_type="env_file")], False) == []
    assert not filters.restart_needed(["JWT_SECRET_PENDING"])
    assert filters.restart_needed(["JWT_SECRET_PENDING", "JWT_SECRET"])


def test_filter_probes_cover_new_and_replaced_values_on_every_host():
    fp = rot.fingerprint
    decision = {
        "name": "jwt",
        "kind": "hmac",
        "action": "rotate",
        "app_env": True,
        "spec": {"test_path": "/api/me", "grace_hours": 24},
        "fingerprints": {"current": fp(OLD), "pending": fp(NEW_GIVEN), "previous": None},
    }
    values = {fp(OLD): OLD, fp(NEW_GIVEN): NEW_GIVEN}
    probes = filters.probes([decision], ["app1", "app2"], values)
    assert {(p["host"], p["secret"], tuple(p["expect"])) for p in probes} == {
        ("app1", NEW_GIVEN, (200,)),
        ("app1", OLD, (200,)),
        ("app2", NEW_GIVEN, (200,)),
        ("app2", OLD, (200,)),
    }
    assert all(OLD not in p["label"] and NEW_GIVEN not in p["label"] for p in probes)
    revoke = decision | {
        "action": "revoke",
        "fingerprints": {"current": fp(NEW_GIVEN), "revoked": fp(OLD)},
    }
    assert ("app1", OLD, (401, 403)) in {
        (p["host"], p["secret"], tuple(p["expect"]))
        for p in filters.probes([revoke], ["app1"], values)
    }
    with pytest.raises(filters.AnsibleFilterError, match="is not among the values of the run"):
        filters.probes([decision], ["app1"], {})


def test_module_returns_fingerprints_and_generated_values_only():
    """Values the module was given come back as fingerprints (Ansible would mask them in a
    result anyway); the pool filter finds them again, and resolve puts them back."""
    spec = jwt_spec()
    record = {"current": OLD, "pending": None, "previous": PREV}
    decision = rot.decide(
        "jwt", spec, None, record, requested=True, run_step="rotate", force_revoke=False, now=NOW
    )
    public = rot.public_decision(decision)
    text = repr(public)
    assert OLD not in text and PREV not in text
    pending = public["generated"]["pending"]
    assert public["apply_env"]["set"] == {
        "JWT_SECRET": rot.fingerprint(pending),
        "JWT_SECRET_PREVIOUS": rot.fingerprint(OLD),
    }
    values = filters.pool({"decisions": [public]}, {}, {"app1": {"JWT_SECRET": OLD}}, {})
    assert filters.resolve(public["apply_env"], values)["set"] == {
        "JWT_SECRET": pending,
        "JWT_SECRET_PREVIOUS": OLD,
    }
    with pytest.raises(filters.AnsibleFilterError, match="no value of the run has the fingerprint"):
        filters.resolve(public["apply_env"], {})
    assert filters._fingerprint(OLD) == rot.fingerprint(OLD)


def test_filter_summary_says_what_happened_without_values():
    hostvars = {"app1": {"rotation_changed": True}, "app2": {}}
    report = filters.summary(
        [summary_item("rotate")], hostvars, ["app1", "app2"], False, "", "rotate", "test"
    )
    assert report["ok"] and report["status"] == "succeeded"
    assert "rotated sha256:aaa -> sha256:bbb" in report["lines"][1]
    assert report["hosts_changed"] == ["app1"]
    failed = filters.summary(
        [summary_item("rotate")],
        {"app1": {"rotation_changed": True, "rotation_undone": True}, "app2": {}},
        ["app1", "app2"],
        True,
        "the test failed",
        "rotate",
        "test",
    )
    assert not failed["ok"] and failed["status"] == "undone"
    assert "undone (the current value is back)" in failed["lines"][1]


def test_a_value_changed_by_hand_since_the_last_rotation_is_adopted_and_said():
    """Every host agrees on a value the finished journal does not name (someone rotated by
    hand): the run starts from it and says so, instead of refusing."""
    spec = jwt_spec()
    by_hand = "h" * 64
    pool, by_host = rot.pool_from_hosts(reads("app1", "app2", current=by_hand), spec)
    record = rot.record_from_pool("jwt", spec, finished(100), pool, by_host)
    assert record["current"] == by_hand and record["previous"] is None
    d = rot.decide(
        "jwt",
        spec,
        finished(100),
        record,
        requested=True,
        run_step="rotate",
        force_revoke=False,
        now=NOW,
    )
    assert d["action"] == "rotate" and d["values"]["current"] == by_hand
    assert "was changed outside opsbook since run run-1" in d["notes"][0]
    assert by_hand not in d["notes"][0]
    # hosts that disagree are still refused
    split = reads("app1", current=by_hand) | reads("app2", current="z" * 64)
    pool, by_host = rot.pool_from_hosts(split, spec)
    with pytest.raises(rot.RotationProblem, match="is on no app host"):
        rot.record_from_pool("jwt", spec, finished(100), pool, by_host)


def test_filter_summary_names_a_host_the_undo_could_not_reach():
    hostvars = {
        "app1": {"rotation_changed": True, "rotation_undone": True},
        "app2": {"rotation_undo_result": {"unreachable": True}},
    }
    report = filters.summary(
        [summary_item("rotate")], hostvars, ["app1", "app2"], True, "x", "rotate", "t"
    )
    assert report["undo_errors"] == {"app2": "unreachable"}
    assert any(
        line.startswith("app2 could not be put back (unreachable)") for line in report["lines"]
    )


def test_filter_summary_when_only_finishing_failed():
    """The Twilio promote (finish) fails after every host runs on the new value and it was
    proven: not "undone" - the next run finishes it (the journal stays at tested)."""
    report = filters.summary(
        [summary_item("rotate")], {"app1": {"rotation_changed": True}}, ["app1"], True,
        "finishing failed: promote", "rotate", "t", False, "finish",
    )  # fmt: skip
    assert report["status"] == "unfinished" and not report["ok"]
    assert "sha256:bbb installed and proven, but finishing failed" in report["lines"][1]
    assert filters.journal_entries([summary_item("rotate")], "failed")[0]["step"] == "undone"


def test_filters_for_the_ages_the_aws_stores_know():
    catalog = {
        "jwt": {"store": "env_file"},
        "nextauth": {"store": {"type": "aws_ssm", "parameter": "/app/n"}},
        "stripe": {"store": {"type": "aws_secretsmanager", "secret_id": "s"}},
        "twilio": {"store": {"type": "vault", "file": "v", "var": "x"}},
    }
    assert [s["name"] for s in filters.dated_stores(catalog)] == ["nextauth", "stripe"]
    reads = {
        "results": [
            {
                "item": {"name": "nextauth"},
                "meta": {"current": {"updated": "2026-01-01T00:00:00Z"}},
            },
            {"item": {"name": "stripe"}, "meta": {"current": {"created": "2026-02-01T00:00:00Z"}}},
            {"item": {"name": "gone"}, "failed": True, "msg": "no such secret"},
        ]
    }
    assert filters.store_dates(reads) == {
        "nextauth": "2026-01-01T00:00:00Z",
        "stripe": "2026-02-01T00:00:00Z",
    }
    aged = rot.status_of(jwt_spec(), None, NOW, "2026-09-01T12:00:00Z")
    assert aged["age_days"] == 97.0 and aged["overdue"]
