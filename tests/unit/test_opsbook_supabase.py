"""module_utils/opsbook_supabase.py and the Supabase modules' execute(), against
SupabaseStandin (tests/standins_supabase.py), judged by Supabase's own document: secrets planned
and compared by the digest Supabase lists, the database password's floor and its reset (with and
without a proof by connection), the backups' freshness; retries, refusals and check mode; no
value, password or token in a result or a message. No Ansible run: see
tests/integration/test_supabase_platform.py for that."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.loaders import load_library, load_module_utils
from tests.standins_supabase import SupabaseStandin

load_module_utils("opsbook_rest")
load_module_utils("opsbook_pg")
sb = load_module_utils("opsbook_supabase")
secrets_module = load_library("supabase_secrets")
password_module = load_library("supabase_db_password")
backups_module = load_library("supabase_backups")
fingerprint = load_module_utils("opsbook_text").fingerprint

CANARY = "canary-value-" + "7" * 24  # a secret value never to be seen
NEW_PASSWORD = "Pw" + "x1y2z3" * 5  # 32 characters


class Sleeps(list[float]):
    """The sleeps asked for; the clock moves only by them."""

    t = 0.0

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.t += seconds

    def clock(self) -> float:
        return self.t


@pytest.fixture
def supabase() -> Iterator[SupabaseStandin]:
    standin = SupabaseStandin()
    yield standin
    standin.close()
    assert standin.mismatches == []  # every request and answer as Supabase's document allows


def params_of(module: Any, standin: SupabaseStandin, **kw: Any) -> dict[str, Any]:
    params = {k: v.get("default") for k, v in module.argument_spec().items()}
    params.update(project_ref=standin.ref, token=standin.token, base_url=standin.url)
    params.update(kw)
    return params


def run_secrets(
    standin: SupabaseStandin, secrets: list[dict[str, Any]], check_mode: bool = False, **kw: Any
) -> dict[str, Any]:
    sleep = kw.pop("sleep") if "sleep" in kw else Sleeps()
    items = [{"state": "present", "value": None, **s} for s in secrets]
    params = params_of(secrets_module, standin, secrets=items, **kw)
    result = secrets_module.execute(params, check_mode, sleep=sleep, clock=sleep.clock)
    text = json.dumps(result)
    assert standin.token not in text
    for item in items:
        if item["value"]:
            assert item["value"] not in text, result
            assert hashlib.sha256(item["value"].encode()).hexdigest() not in text  # nor its digest
    return result


# ------------------------------------------------------------------ pure parts


def test_the_listed_value_is_the_hex_sha256_of_the_value() -> None:
    listed = sb.ListedSecret("K", hashlib.sha256(b"v").hexdigest())
    assert listed.comparable and listed.holds("v") is True and listed.holds("w") is False
    assert listed.fingerprint == fingerprint("v")  # opsbook's fingerprint, from the digest alone
    masked = sb.ListedSecret("K", "********")
    assert not masked.comparable and masked.holds("v") is None and masked.fingerprint is None
    assert set(listed.public()) == {"name", "fingerprint", "updated_at"}


def test_plan_secrets_compares_what_can_be_compared() -> None:
    current = {
        "SAME": sb.ListedSecret("SAME", sb.value_digest("a")),
        "OTHER": sb.ListedSecret("OTHER", sb.value_digest("b")),
        "MASKED": sb.ListedSecret("MASKED", "****"),
        "GONE": sb.ListedSecret("GONE", sb.value_digest("c")),
    }
    plan = sb.plan_secrets(
        [
            {"name": "SAME", "value": "a", "state": "present"},
            {"name": "OTHER", "value": "new", "state": "present"},
            {"name": "MASKED", "value": "x", "state": "present"},
            {"name": "NEW", "value": "n", "state": "present"},
            {"name": "GONE", "value": None, "state": "absent"},
            {"name": "NEVER", "value": None, "state": "absent"},
        ],
        current,
    )
    assert [e["name"] for e in plan.create] == ["NEW"]
    assert [e["name"] for e in plan.update] == ["OTHER", "MASKED"]
    assert plan.uncomparable == ["MASKED"] and plan.delete == ["GONE"]
    assert plan.unchanged == ["SAME", "NEVER"] and plan.changed
    assert not sb.plan_secrets([{"name": "SAME", "value": "a"}], current).changed


def test_secret_errors_name_the_item_never_the_value() -> None:
    errors = sb.secret_errors(
        [
            {"name": "SUPABASE_URL", "value": CANARY, "state": "present"},
            {"name": "A", "value": None, "state": "present"},
            {"name": "A", "value": None, "state": "absent"},
            {"name": " B", "value": "v", "state": "present"},
            {"name": "C", "value": "v" * 24577, "state": "present"},
            {"name": "", "value": "v", "state": "present"},
        ]
    )
    assert errors == [
        "secrets[0] (SUPABASE_URL): names starting with SUPABASE_ are reserved by Supabase "
        "(it sets them itself; the API refuses them)",
        "secrets[1] (A): state=present needs a value",
        "secrets[2] (A): A is listed twice",
        "secrets[3] ( B): name has leading or trailing spaces",
        "secrets[4] (C): value longer than 24576 characters",
        "secrets[5]: name is empty",
    ]
    assert CANARY not in json.dumps(errors)


def test_the_database_password_floor() -> None:
    assert sb.MIN_DB_PASSWORD_CHARS == 16
    assert sb.db_password_problem("abcd").startswith("the password has 4 characters")
    assert "at least 16" in sb.db_password_problem("a" * 15)
    assert (
        sb.db_password_problem("a" * 40) == "the password repeats fewer than 4 distinct characters"
    )
    assert "leading or trailing" in sb.db_password_problem(" " + NEW_PASSWORD)
    assert sb.db_password_problem(None) == "the password is empty"
    assert sb.db_password_problem(NEW_PASSWORD) is None


def test_parse_time_reads_what_supabase_writes() -> None:
    assert sb.iso(sb.parse_time("2026-08-10T04:30:15Z")) == "2026-08-10T04:30:15Z"
    assert sb.iso(sb.parse_time("2026-09-24T06:40:10.198Z")) == "2026-09-24T06:40:10Z"
    assert sb.iso(sb.parse_time("2026-09-24T08:40:10+02:00")) == "2026-09-24T06:40:10Z"
    assert sb.iso(sb.parse_time("2026-09-24 06:40:10")) == "2026-09-24T06:40:10Z"  # no zone: UTC
    assert sb.parse_time("yesterday") is None and sb.parse_time(None) is None


def test_backup_summary_newest_completed_pitr_and_freshness() -> None:
    now = sb.parse_time("2026-09-24T12:00:00Z").timestamp()
    answer = {
        "region": "eu-central-1",
        "walg_enabled": True,
        "pitr_enabled": False,
        "backups": [  # not sorted, as Supabase answers
            {"id": 1, "status": "COMPLETED", "is_physical_backup": True,
             "inserted_at": "2026-09-22T06:00:00Z"},
            {"id": 3, "status": "FAILED", "is_physical_backup": True,
             "inserted_at": "2026-09-24T06:00:00Z"},
            {"id": 2, "status": "COMPLETED", "is_physical_backup": True,
             "inserted_at": "2026-09-23T06:00:00.500Z"},
            {"id": 4, "status": "COMPLETED", "is_physical_backup": True, "inserted_at": "soon"},
        ],
        "physical_backup_data": {},
    }  # fmt: skip
    summary = sb.backup_summary(answer, now=now, max_age_h=26)
    assert [b["id"] for b in summary["backups"]] == [3, 2, 1, 4]
    assert summary["latest"]["id"] == 2 and summary["latest_age_h"] == 30.0
    assert summary["counts"] == {"FAILED": 1, "COMPLETED": 3} and summary["unreadable"] == 1
    assert (summary["fresh"], summary["restore_point_source"]) == (False, "backup")
    assert summary["pitr_latest_at"] is None
    assert sb.backup_summary(answer, now=now)["fresh"] is None  # no limit asked

    answer.update(
        pitr_enabled=True,
        physical_backup_data={
            "earliest_physical_backup_date_unix": int(now - 7 * 86400),
            "latest_physical_backup_date_unix": int(now - 360),
        },
    )
    pitr = sb.backup_summary(answer, now=now, max_age_h=1)
    assert (pitr["restore_point_age_h"], pitr["restore_point_source"]) == (0.1, "pitr")
    assert pitr["fresh"] is True and pitr["pitr_latest_at"] == "2026-09-24T11:54:00Z"
    assert pitr["latest"]["id"] == 2  # the newest daily backup is still told

    empty = sb.backup_summary({"backups": [], "pitr_enabled": False}, now=now, max_age_h=26)
    assert (empty["latest"], empty["restore_point_age_h"], empty["fresh"]) == (None, None, False)


def test_the_token_falls_back_to_the_controllers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPABASE_ACCESS_TOKEN", "sbp_" + "f" * 40)
    checked = ArgumentSpecValidator(secrets_module.argument_spec()).validate(
        {"project_ref": "a" * 20}
    )
    assert not checked.error_messages
    assert checked.validated_parameters["token"] == "sbp_" + "f" * 40
    assert "sbp_" + "f" * 40 in checked._no_log_values  # masked as an option given
    monkeypatch.delenv("SUPABASE_ACCESS_TOKEN")
    missing = ArgumentSpecValidator(secrets_module.argument_spec()).validate(
        {"project_ref": "a" * 20}
    )
    assert "token" in " ".join(missing.error_messages)


# ------------------------------------------------------------------ supabase_secrets


def test_secrets_created_updated_deleted_idempotently(supabase: SupabaseStandin) -> None:
    supabase.set_secret("OLD", "old-value")
    wanted = [{"name": "A", "value": CANARY}, {"name": "B", "value": "b-value-1"},
              {"name": "OLD", "state": "absent"}]  # fmt: skip
    first = run_secrets(supabase, wanted)
    ref = supabase.ref
    assert (first["changed"], first["created"], first["deleted"]) == (True, ["A", "B"], ["OLD"])
    assert first["api_calls"] == [
        f"GET /v1/projects/{ref}/secrets 200",
        f"POST /v1/projects/{ref}/secrets 201",
        f"DELETE /v1/projects/{ref}/secrets 200",
    ]
    assert supabase.secrets == {"A": CANARY, "B": "b-value-1"}
    assert first["diff"] == {
        "before": {"OLD": "********"},
        "after": {"A": "********", "B": "********"},
    }
    listed = {row["name"]: row["fingerprint"] for row in first["secrets"]}
    assert listed["A"] == fingerprint(CANARY) and "SUPABASE_URL" in listed and "OLD" not in listed
    assert first["msg"] == "created A, B; deleted OLD"

    second = run_secrets(supabase, wanted)
    assert (second["changed"], second["unchanged"]) == (False, ["A", "B", "OLD"])
    assert second["api_calls"] == [f"GET /v1/projects/{ref}/secrets 200"]  # nothing sent
    assert second["msg"] == "every secret named is as asked: nothing changed"

    wanted[1]["value"] = "b-value-2"
    third = run_secrets(supabase, wanted)
    assert (third["changed"], third["updated"], third["created"]) == (True, ["B"], [])
    assert third["diff"]["after"]["B"] == "******** (new value)"
    assert supabase.secrets["B"] == "b-value-2"
    assert run_secrets(supabase, wanted)["changed"] is False


def test_secrets_check_mode_reads_only(supabase: SupabaseStandin) -> None:
    supabase.set_secret("KEEP", "k-value")
    result = run_secrets(
        supabase, [{"name": "A", "value": CANARY}, {"name": "KEEP", "state": "absent"}], True
    )
    assert result["changed"] and result["created"] == ["A"] and result["deleted"] == ["KEEP"]
    assert result["msg"] == "check mode: would have created A; deleted KEEP"
    assert supabase.calls == ["v1-list-all-secrets"] and supabase.secrets == {"KEEP": "k-value"}
    assert [row["name"] for row in result["secrets"] if row["name"] == "KEEP"] == ["KEEP"]


def test_secrets_listing_only(supabase: SupabaseStandin) -> None:
    supabase.set_secret("ONE", "1-value")
    result = run_secrets(supabase, [])
    assert result["changed"] is False and "ONE" in result["names"]
    assert "SUPABASE_ANON_KEY" in result["names"]  # reserved ones are listed too


def test_a_value_that_cannot_be_compared_is_written_again(supabase: SupabaseStandin) -> None:
    supabase.set_secret("A", CANARY)
    supabase.list_values = "masked"  # the API no longer lists digests
    result = run_secrets(supabase, [{"name": "A", "value": CANARY}])
    assert result["changed"] and result["updated"] == ["A"] and result["uncomparable"] == ["A"]
    assert "cannot be compared, so it is written again" in result["warnings"][0]
    assert supabase.secrets["A"] == CANARY


def test_an_expired_token_changes_nothing(supabase: SupabaseStandin) -> None:
    supabase.set_secret("A", "a-value")
    supabase.expire_token()
    result = run_secrets(supabase, [{"name": "A", "value": CANARY}])
    assert result["failed"] and result["changed"] is False
    assert result["msg"] == (
        f"supabase_secrets: GET /v1/projects/{supabase.ref}/secrets: HTTP 401 Unauthorized: "
        "invalid token; 1 attempt in 0.0 s (the access token was refused: expired or revoked? "
        "a new one: https://supabase.com/dashboard/account/tokens); nothing was changed"
    )
    assert supabase.secrets == {"A": "a-value"}
    assert supabase.calls == ["v1-list-all-secrets"]  # refused; nothing else was sent


def test_5xx_and_429_are_retried_as_asked(supabase: SupabaseStandin) -> None:
    supabase.fail_next(503)
    supabase.fail_next(429, retry_after=3)
    sleeps = Sleeps()
    result = run_secrets(supabase, [{"name": "A", "value": CANARY}], sleep=sleeps)
    assert result["created"] == ["A"] and supabase.secrets == {"A": CANARY}
    assert sleeps == [1.0, 3.0]  # backoff after the 503, Retry-After after the 429
    assert result["api_calls"][:3] == [
        f"GET /v1/projects/{supabase.ref}/secrets 503",
        f"GET /v1/projects/{supabase.ref}/secrets 429",
        f"GET /v1/projects/{supabase.ref}/secrets 200",
    ]
    assert supabase.server.api.undocumented_faults == [
        "GET /v1/projects/{ref}/secrets 503"  # 500 is declared, 503 is not: injected only
    ]


def test_a_create_that_keeps_failing_says_its_outcome_is_unknown(
    supabase: SupabaseStandin,
) -> None:
    supabase.fail_on("v1-bulk-create-secrets", 500, times=10)
    wanted = [{"name": "A", "value": CANARY}]
    result = run_secrets(supabase, wanted, deadline_s=5.0)
    assert result["failed"]
    assert "POST /v1/projects/" in result["msg"] and "HTTP 500" in result["msg"]
    assert result["msg"].endswith("whether Supabase set A is unknown (a rerun finds out)")
    assert "3 attempts in 3.0 s; gave up: the next wait is 4.0 s" in result["msg"]
    assert result["changed"] is True and supabase.secrets == {}


def test_a_refused_deletion_after_the_writes_says_what_was_done(
    supabase: SupabaseStandin,
) -> None:
    supabase.set_secret("OLD", "old-value")
    supabase.fail_on("v1-bulk-delete-secrets", 403)
    result = run_secrets(
        supabase, [{"name": "A", "value": CANARY}, {"name": "OLD", "state": "absent"}]
    )
    assert result["failed"] and result["changed"] is True
    assert "DELETE /v1/projects/" in result["msg"] and "HTTP 403 Forbidden" in result["msg"]
    assert result["msg"].endswith("; A were set; OLD were not deleted")
    assert supabase.secrets == {"A": CANARY, "OLD": "old-value"}


def test_invalid_input_sends_nothing(supabase: SupabaseStandin) -> None:
    result = run_secrets(supabase, [{"name": "SUPABASE_URL", "value": CANARY}])
    assert result["failed"] and result["api_calls"] == [] and supabase.api_calls == 0
    assert result["msg"].endswith("; nothing was sent")
    bad_ref = run_secrets(supabase, [], project_ref="ABC")
    assert "project_ref must be 20 lowercase letters" in bad_ref["msg"]


def test_a_wrong_project_is_refused_with_supabases_message(supabase: SupabaseStandin) -> None:
    result = run_secrets(supabase, [], project_ref="z" * 20)
    assert result["failed"] and "HTTP 403 Forbidden" in result["msg"]
    assert "or the ref is wrong" in result["msg"] and result["msg"].endswith("nothing was changed")


# ------------------------------------------------------------------ supabase_db_password


def run_password(
    standin: SupabaseStandin, check_mode: bool = False, connect_fn: Any = None, **kw: Any
) -> dict[str, Any]:
    sleep = kw.pop("sleep") if "sleep" in kw else Sleeps()
    params = params_of(password_module, standin, **{"password": NEW_PASSWORD, **kw})
    extra = {"connect_fn": connect_fn} if connect_fn else {}
    result = password_module.execute(params, check_mode, sleep=sleep, clock=sleep.clock, **extra)
    text = json.dumps(result)
    assert NEW_PASSWORD not in text and standin.token not in text
    return result


def test_the_password_is_reset_every_run(supabase: SupabaseStandin) -> None:
    first = run_password(supabase)
    assert first["changed"] and supabase.check_password(NEW_PASSWORD)
    assert first["message"] == "Password updated" and first["verified"] is None
    assert first["password_fingerprint"] == fingerprint(NEW_PASSWORD)
    assert first["api_calls"] == [f"PATCH /v1/projects/{supabase.ref}/database/password 200"]
    assert first["msg"].endswith("not verified (no verify_dsn)")
    assert run_password(supabase)["changed"]  # cannot be compared: reset again
    assert supabase.passwords_set == [NEW_PASSWORD, NEW_PASSWORD]


def test_the_password_in_check_mode_and_refused_ones(supabase: SupabaseStandin) -> None:
    checked = run_password(supabase, check_mode=True)
    assert checked["changed"] and checked["api_calls"] == [] and supabase.api_calls == 0
    assert "a reset cannot be compared" in checked["msg"]
    weak = run_password(supabase, password="hunter2hunter")
    assert weak["failed"] and supabase.api_calls == 0 and not weak["changed"]
    assert "password refused: the password has 13 characters" in weak["msg"]
    assert "hunter2hunter" not in weak["msg"]


def test_the_password_with_an_expired_token_stays(supabase: SupabaseStandin) -> None:
    supabase.expire_token()
    result = run_password(supabase)
    assert result["failed"] and result["changed"] is False
    assert result["msg"].endswith("nothing was changed: the old password still works")
    assert not supabase.check_password(NEW_PASSWORD) and supabase.passwords_set == []


def test_the_password_reset_after_5xx(supabase: SupabaseStandin) -> None:
    supabase.fail_next(500)
    sleeps = Sleeps()
    result = run_password(supabase, sleep=sleeps)
    assert result["changed"] and supabase.check_password(NEW_PASSWORD) and sleeps == [1.0]
    assert [c.rsplit(" ", 1)[1] for c in result["api_calls"]] == ["500", "200"]


class FakeConnection:
    def execute(self, query: str) -> None:
        assert query == "SELECT 1"

    closed = False
    autocommit = True

    def close(self) -> None:
        self.closed = True


def test_the_new_password_is_proven_by_connecting(supabase: SupabaseStandin) -> None:
    PgConnectError = password_module.PgConnectError
    seen: list[str] = []

    def connect_fn(dsn: str, connect_timeout: int) -> FakeConnection:
        seen.append(dsn)
        if len(seen) < 3:
            raise PgConnectError("FATAL: password authentication failed for user postgres")
        return FakeConnection()

    sleeps = Sleeps()
    result = run_password(
        supabase,
        connect_fn=connect_fn,
        sleep=sleeps,
        verify_dsn="postgresql://postgres:old-one@db.example.supabase.co/postgres",
    )
    assert result["verified"] is True and result["verify_attempts"] == 3 and sleeps == [1.0, 2.0]
    assert all(f":{NEW_PASSWORD}@" in dsn for dsn in seen)  # the DSN's password replaced
    assert "old-one" not in result["msg"]
    assert result["msg"].endswith(
        "connecting with it to postgresql://postgres:********@db.example.supabase.co/postgres works"
    )


def test_a_proof_that_fails_says_the_password_is_changed(supabase: SupabaseStandin) -> None:
    """A real psycopg connection to a closed port: refused at once, no wait left."""
    result = run_password(
        supabase,
        verify_dsn="host=127.0.0.1 port=1 user=postgres dbname=postgres",
        verify_timeout_s=0.5,
    )
    assert result["failed"] and result["changed"] and result["verified"] is False
    assert "the password IS changed at Supabase" in result["msg"]
    assert "port=1" in result["msg"] and supabase.check_password(NEW_PASSWORD)


# ------------------------------------------------------------------ supabase_backups


def test_backups_freshness_through_the_module(supabase: SupabaseStandin) -> None:
    supabase.add_backup(age_h=50)
    newest = supabase.add_backup(age_h=5)
    supabase.add_backup(age_h=1, status="FAILED")
    params = params_of(backups_module, supabase, max_age_h=26)
    result = backups_module.execute(params, False)
    assert result["latest"]["id"] == newest and 4.9 < result["latest_age_h"] < 5.1
    assert result["fresh"] is True and result["pitr_enabled"] is False
    assert result["counts"] == {"FAILED": 1, "COMPLETED": 2} and not result["changed"]
    assert result["msg"].startswith("newest completed backup ")
    assert "; fresh (newest restore point: 5" in result["msg"]
    stale = backups_module.execute({**params, "max_age_h": 2.0}, True)  # check mode reads too
    assert stale["fresh"] is False and "STALE" in stale["msg"]

    supabase.set_pitr(latest_age_h=0.25)
    pitr = backups_module.execute({**params, "max_age_h": 1.0}, False)
    assert pitr["fresh"] and pitr["restore_point_source"] == "pitr" and pitr["pitr_enabled"]


def test_backups_with_an_expired_token(supabase: SupabaseStandin) -> None:
    supabase.expire_token()
    started = time.monotonic()
    result = backups_module.execute(params_of(backups_module, supabase), False)
    assert result["failed"] and "HTTP 401 Unauthorized" in result["msg"]
    assert result["msg"].endswith("nothing was changed (the module only reads)")
    assert time.monotonic() - started < 2  # a 401 is not retried
