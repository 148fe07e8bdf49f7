"""module_utils/opsbook_vercel.py's pure parts (which deployment serves production, the
previous good one, the env plan, fingerprints in comments, pagination, the wait's backoff),
library/vercel_env.py and vercel_deployment.py run in-process against VercelStandin
(tests/standins_vercel.py), and the platform_vercel role's fact filters."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from opsbook.lab.sampleapp import app as sampleapp
from tests.loaders import PROJECT_ROOT, load_library, load_module_utils, load_path
from tests.standins_vercel import VercelStandin

rest = load_module_utils("opsbook_rest")
vercel = load_module_utils("opsbook_vercel")
text = load_module_utils("opsbook_text")
vercel_env = load_library("vercel_env")
vercel_deployment = load_library("vercel_deployment")
facts = load_path(
    "opsbook_test_platform_vercel_filters",
    PROJECT_ROOT / "filter_plugins" / "opsbook_platform_vercel.py",
)

CANARY = "canary-" + "5ec7e7" * 4  # a secret value that must never be shown
SHA2 = "a2" * 20


class Sleeps(list[float]):
    """The sleeps asked for; the clock moves only by them."""

    t = 0.0

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.t += seconds

    def clock(self) -> float:
        return self.t


def dpl(
    dpl_id: str,
    created: int,
    *,
    alias: Any = False,
    substate: str = "PROMOTED",
    target: str = "production",
    state: str = "READY",
    version: str = "",
    source: str = "",
) -> dict[str, Any]:
    meta = {"opsbook_version": version} if version else {}
    if source:
        meta["opsbook_source"] = source
    item = {
        "uid": dpl_id,
        "url": f"app-{dpl_id}.vercel.app",
        "created": created,
        "readyState": state,
        "readySubstate": substate,
        "aliasAssigned": alias,
        "meta": meta,
    }
    if target:
        item["target"] = target
    return vercel.deployment_summary(item)


# ---------------------------------------------------------------- which deployment serves


def test_serving_is_the_latest_alias_assignment_not_the_newest_deployment() -> None:
    one = dpl("one", 100, alias=110, version="1.0.0")
    two = dpl("two", 200, alias=210, version="2.0.0")  # then rolled back from
    rolled_to = dict(one, alias_assigned=300)  # the Instant Rollback assigned one again
    staged = dpl("three", 400, substate="STAGED", version="3.0.0")  # auto-assignment paused
    preview = dpl("four", 500, target="", substate="STAGED")
    assert vercel.serving([one, two])["id"] == "two"
    assert vercel.serving([rolled_to, two, staged, preview])["id"] == "one"
    assert vercel.serving([staged, preview]) is None
    # listed without readySubstate: aliasAssigned says it was promoted; a boolean: newest wins
    old_a = dict(dpl("a", 10, alias=True), substate="")
    old_b = dict(dpl("b", 20, alias=True), substate="")
    assert vercel.serving([old_a, old_b])["id"] == "b"
    assert vercel.serving([dpl("e", 30, state="ERROR")]) is None


def test_previous_good_is_the_newest_earlier_one_that_served_other_code() -> None:
    one = dpl("one", 100, alias=110, version="1.0.0", source="s1")
    two = dpl("two", 200, alias=210, version="2.0.0", source="s2")
    again = dpl("two-again", 250, alias=260, version="2.0.0", source="s2")  # a maintenance build
    staged = dpl("s", 150, substate="STAGED", version="1.5.0")
    assert vercel.previous_good([one, two, again, staged])["id"] == "one"
    assert vercel.previous_good([one, two], "one") is None
    # after a rollback to one, "the previous good" is older than one - never the bad two
    assert vercel.previous_good([dict(one, alias_assigned=999), two]) is None
    # deploy one, two, roll back to one, deploy three, roll back: back to one - two was
    # rolled back from (one was assigned production again after two), so it is skipped
    one_again = dict(one, alias_assigned=300)
    three = dpl("three", 400, alias=410, version="3.0.0", source="s3")
    assert vercel.rolled_back_from(two, [one_again, two, three])
    assert not vercel.rolled_back_from(one_again, [one_again, two, three])
    assert vercel.previous_good([one_again, two, three])["id"] == "one"


def test_find_deployment_by_id_url_or_version() -> None:
    one = dpl("dpl_one", 100, alias=110, version="1.0.0")
    preview = dpl("dpl_p", 200, target="", substate="STAGED", version="2.0.0")
    listed = [one, preview]
    assert vercel.find_deployment(listed, "dpl_one")["id"] == "dpl_one"
    assert vercel.find_deployment(listed, "https://app-dpl_p.vercel.app/x")["id"] == "dpl_p"
    assert vercel.find_deployment(listed, "1.0.0")["id"] == "dpl_one"
    assert vercel.find_deployment(listed, "2.0.0") is None  # never served production
    assert vercel.find_deployment(listed, "") is None
    assert vercel.candidates(listed) == "dpl_one (1.0.0, READY/PROMOTED)"


# ---------------------------------------------------------------------------- env plan


def entry(key: str, targets: list[str], value: str | None, env_type: str = "plain", **kw: Any):
    item = {"id": f"id-{key}-{'-'.join(targets)}", "key": key, "type": env_type,
            "target": targets, "value": value or "", **kw}  # fmt: skip
    return vercel.env_entry(item)


def test_env_entry_readability() -> None:
    assert entry("A", ["production"], "x")["readable"]
    assert entry("A", ["production"], "x", "encrypted", decrypted=True)["value"] == "x"
    hidden = entry("A", ["production"], "enc:x", "encrypted", decrypted=False)
    assert not hidden["readable"] and hidden["value"] is None
    assert not entry("A", ["production"], "x", "sensitive", decrypted=True)["readable"]
    assert entry("A", ["preview", "production"], "x")["targets"] == ["production", "preview"]


def test_value_matches_by_value_or_fingerprint_in_the_comment() -> None:
    assert vercel.value_matches(entry("A", ["production"], "x"), "x") is True
    assert vercel.value_matches(entry("A", ["production"], "x"), "y") is False
    sensitive = entry("A", ["production"], "", "sensitive", comment=vercel.value_comment(CANARY))
    assert vercel.value_matches(sensitive, CANARY) is True
    assert vercel.value_matches(sensitive, "other") is False
    assert vercel.value_matches(entry("A", ["production"], "", "sensitive"), CANARY) is None
    assert CANARY not in vercel.value_comment(CANARY)
    assert text.fingerprint(CANARY) in vercel.value_comment(CANARY)


def plan(entries: list[dict[str, Any]], key: str, **kw: Any) -> list[tuple[str, str, Any]]:
    kw.setdefault("state", "present")
    kw.setdefault("value", "v")
    kw.setdefault("env_type", "plain")
    kw.setdefault("targets", ["production"])
    steps, _ = vercel.plan_env(entries, key, **kw)
    assert all("value" not in (s.fields or {}) for s in steps)  # a plan never holds a value
    return [(s.op, s.why, (s.fields or {}).get("target")) for s in steps]


def test_plan_env() -> None:
    prod = entry("K", ["production"], "v")
    both = entry("K", ["production", "preview"], "v")
    assert plan([], "K") == [("create", "missing", None)]
    assert plan([prod], "K") == []
    assert plan([prod], "K", value="w") == [("edit", "value", None)]
    assert plan([prod], "K", env_type="encrypted") == [("edit", "type", None)]
    # an entry on more targets gives production up, then production gets its own
    assert plan([both], "K") == [("edit", "targets", ["preview"]), ("create", "missing", None)]
    assert plan([both], "K", targets=["production", "preview"]) == []
    assert plan([both], "K", state="absent", value=None) == [("edit", "targets", ["preview"])]
    assert plan([prod], "K", state="absent", value=None) == [("delete", "absent", None)]
    assert plan([entry("K", ["preview"], "v")], "K", state="absent", value=None) == []
    branch = entry("K", ["preview"], "v", gitBranch="feature")
    assert plan([branch], "K", targets=["preview"], value="w") == [("create", "missing", None)]
    _, note = vercel.plan_env(
        [entry("K", ["production"], "", "sensitive")], "K", state="present", value="v",
        env_type="sensitive", targets=["production"],
    )  # fmt: skip
    assert "cannot be read" in note


# ------------------------------------------------------------------ pagination, waiting


class Canned(rest.RestClient):
    """A RestClient answering from a list of (status, body), recording (path, query)."""

    def __init__(self, answers: list[Any], **kw: Any) -> None:
        super().__init__("https://api.vercel.com", token="tok_" + "x" * 20, **kw)
        self.answers = list(answers)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def request(self, method: str, path: str, **kw: Any) -> Any:
        self.sent.append((path, dict(kw.get("query") or {})))
        body = self.answers.pop(0)
        return rest.Response(f"{method} {path}", 200, {}, json.dumps(body).encode())


def test_list_env_follows_pagination_next_as_until() -> None:
    one = {"key": "A", "type": "plain", "value": "1", "target": ["production"], "id": "a"}
    two = {"key": "B", "type": "plain", "value": "2", "target": ["production"], "id": "b"}
    client = Canned([
        {"envs": [one], "pagination": {"count": 1, "next": 1700000000000, "prev": None}},
        {"envs": [two], "pagination": {"count": 1, "next": None, "prev": 1700000000000}},
    ])  # fmt: skip
    listed = vercel.VercelApi(client, "team_t").list_env("app")
    assert [e["key"] for e in listed] == ["A", "B"]
    assert client.sent[0] == ("/v10/projects/app/env", {"decrypt": "true", "teamId": "team_t"})
    assert client.sent[1][1] == {"decrypt": "true", "teamId": "team_t", "until": 1700000000000}


def test_list_deployments_follows_pagination() -> None:
    page = {"uid": "d1", "created": 2, "readyState": "READY", "meta": {}}
    client = Canned([
        {"deployments": [page], "pagination": {"count": 1, "next": 2, "prev": None}},
        {"deployments": [dict(page, uid="d0", created=1)],
         "pagination": {"count": 1, "next": None, "prev": 2}},
    ])  # fmt: skip
    listed = vercel.VercelApi(client).list_deployments("app", target="production")
    assert [d["id"] for d in listed] == ["d1", "d0"]
    assert client.sent[1][1]["until"] == 2 and client.sent[1][1]["target"] == "production"


def test_wait_ready_polls_from_one_second_with_backoff_and_fails_on_error() -> None:
    sleeps = Sleeps()
    building = {"id": "d", "readyState": "BUILDING"}
    client = Canned([building, building, {"id": "d", "readyState": "READY"}],
                    sleep=sleeps, clock=sleeps.clock)  # fmt: skip
    api = vercel.VercelApi(client)
    ready = api.wait_ready({"id": "d", "state": "QUEUED"}, timeout_s=60)
    assert ready["state"] == "READY" and sleeps == [1.0, 1.5, 2.25]
    client.answers = [{"id": "d", "readyState": "ERROR"}]
    with pytest.raises(vercel.DeploymentFailed, match="ended ERROR"):
        api.wait_ready({"id": "d", "state": "BUILDING"}, timeout_s=60)
    client.answers = [building] * 10
    with pytest.raises(vercel.DeploymentFailed, match="not READY within wait_timeout_s=3"):
        api.wait_ready({"id": "d", "state": "BUILDING"}, timeout_s=3)


# ------------------------------------------------------------ the modules, in-process


@pytest.fixture
def standin() -> Iterator[VercelStandin]:
    with VercelStandin() as project:
        yield project
        assert project.mismatches == []  # every request and answer as Vercel's document allows


def run(module: Any, standin: VercelStandin, check_mode: bool = False, **kw: Any) -> dict:
    params = {k: v.get("default") for k, v in module.argument_spec().items()}
    params.update(project=standin.project_name, token=standin.token, base_url=standin.url)
    sleeps = Sleeps()
    params.update(kw)
    result = module.execute(params, check_mode, sleep=sleeps, clock=sleeps.clock)
    assert standin.token not in json.dumps(result) and CANARY not in json.dumps(result)
    result["sleeps"] = list(sleeps)
    return result


def test_vercel_env_plain_targets_and_input_errors(standin: VercelStandin) -> None:
    standin.set_env("OLD", "old", ("production", "preview"), "plain")
    args = {
        "type": "plain",
        "targets": ["production"],
        "env_vars": [{"key": "FEATURE", "value": "on"}, {"key": "OLD", "state": "absent"}],
    }
    would = run(vercel_env, standin, check_mode=True, **args)
    assert would["changed"] and standin.writes() == []
    done = run(vercel_env, standin, **args)
    assert done["changed_keys"] == ["FEATURE", "OLD"] and standin.env_value("FEATURE") == "on"
    assert [e["target"] for e in standin.env_entries("OLD")] == [["preview"]]
    assert run(vercel_env, standin, **args)["changed"] is False
    gone = run(vercel_env, standin, key="FEATURE", state="absent", targets=["production"])
    assert gone["changed"] and standin.env_entries("FEATURE") == []
    bad = run(vercel_env, standin, key="S", value=CANARY, type="sensitive")
    assert bad["failed"] and "development target" in bad["msg"] and bad["api_calls"] == []


def test_vercel_deployment_actions(standin: VercelStandin) -> None:
    v1 = standin.add_production(version="1.0.0", meta={"opsbook_version": "1.0.0"})
    standin.add_preview(version="2.0.0", sha=SHA2)
    now = run(vercel_deployment, standin, action="current")
    assert now["current"]["id"] == v1 and now["project_id"] == standin.project_id
    meta = {"opsbook_version": "2.0.0"}
    would = run(vercel_deployment, standin, check_mode=True, action="redeploy", sha=SHA2,
                meta=meta)  # fmt: skip
    assert would["changed"] and standin.writes() == []
    made = run(vercel_deployment, standin, action="redeploy", sha=SHA2, meta=meta,
               skip_if_serving=meta)  # fmt: skip
    assert made["changed"] and made["sleeps"] == [1.0]  # one poll, 1 s after the create
    assert standin.serving_version() == "2.0.0"
    again = run(vercel_deployment, standin, action="redeploy", sha=SHA2, meta=meta,
                skip_if_serving=meta)  # fmt: skip
    assert again["changed"] is False and again["api_calls"] == ["GET /v6/deployments 200"]
    back = run(vercel_deployment, standin, action="rollback")  # the previous good one
    assert back["changed"] and back["current"]["id"] == v1 and standin.rolled_back
    same = run(vercel_deployment, standin, action="rollback", deployment=v1)
    assert same["changed"] is False
    # a maintenance-style redeploy of what serves: kept its version, promoted (rolled back)
    rebuilt = run(vercel_deployment, standin, action="redeploy", deployment="current",
                  meta={"opsbook_maintenance_reason": "test"})  # fmt: skip
    assert rebuilt["deployment"]["version"] == "1.0.0" and not standin.rolled_back
    assert standin.promotions == [rebuilt["deployment"]["id"]]
    promoted = run(
        vercel_deployment, standin, action="promote", deployment=made["deployment"]["id"]
    )
    assert promoted["changed"] and standin.serving_version() == "2.0.0"
    preview = run(vercel_deployment, standin, action="promote",
                  deployment=standin.add_preview(version="9"))  # fmt: skip
    assert preview["failed"] and "redeploy it to production instead" in preview["msg"]


def test_a_slow_build_is_polled_from_one_second_apart() -> None:
    with VercelStandin(build_polls=2) as slow:
        slow.add_production(version="1.0.0")
        source = slow.add_preview(version="2.0.0")
        made = run(vercel_deployment, slow, action="redeploy", deployment=source)
        assert made["changed"] and made["sleeps"] == [1.0, 1.5, 2.25]
        assert slow.serving_version() == "2.0.0" and slow.mismatches == []


def test_vercel_deployment_build_error_leaves_production_alone(standin: VercelStandin) -> None:
    v1 = standin.add_production(version="1.0.0")
    standin.failing_versions.add("2.0.0")
    source = standin.add_preview(version="2.0.0")
    failed = run(vercel_deployment, standin, action="redeploy", deployment=source)
    assert failed["failed"] and "ended ERROR" in failed["msg"]
    assert f"production was served by {v1}" in failed["msg"] and standin.production == v1


def test_vercel_deployment_5xx_to_the_create_is_not_repeated(standin: VercelStandin) -> None:
    standin.add_production(version="1.0.0")
    source = standin.add_preview(version="2.0.0")
    standin.fail_next(500, times=1)  # the list answers 500: retried (a GET)
    ok = run(vercel_deployment, standin, action="current")
    assert ok["api_calls"] == ["GET /v6/deployments 500", "GET /v6/deployments 200"]
    calls = {"n": 0}
    original = standin.server.handlers["createDeployment"]

    def boom(call: Any) -> tuple[Any, ...]:
        calls["n"] += 1
        return 500, {"error": {"code": "internal_server_error", "message": "oops"}}

    standin.server.handlers["createDeployment"] = boom
    failed = run(vercel_deployment, standin, action="redeploy", deployment=source)
    standin.server.handlers["createDeployment"] = original
    assert failed["failed"] and calls["n"] == 1 and "is unknown" in failed["msg"]


def me(standin: VercelStandin, secret: str) -> int:
    """The status of production's GET /api/me for a token signed with ``secret``."""
    token = sampleapp.new_token("ada", secret)
    request = urllib.request.Request(
        standin.app.url + "/api/me", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.build_opener().open(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_env_change_reaches_the_app_by_a_redeploy_and_a_rollback_keeps_the_old_env(
    standin: VercelStandin,
) -> None:
    new, old = "jwt-new-" + "1" * 24, "jwt-old-" + "2" * 24
    standin.set_env("JWT_SECRET", old, ("production",))
    v1 = standin.add_production(version="1.0.0")  # built with JWT_SECRET=old
    env = [{"key": "JWT_SECRET", "value": new}, {"key": "JWT_SECRET_PREVIOUS", "value": old}]
    assert run(vercel_env, standin, targets=["production"], env_vars=env)["changed"]
    assert standin.env_value("JWT_SECRET") == new
    assert (me(standin, new), me(standin, old)) == (401, 200)  # not rebuilt: the old env
    rebuilt = run(vercel_deployment, standin, action="redeploy", deployment="current")
    assert rebuilt["changed"] and standin.production != v1
    assert (me(standin, new), me(standin, old)) == (200, 200)  # new, and old as PREVIOUS
    assert standin.app.env(v1) == {"JWT_SECRET": old}
    back = run(vercel_deployment, standin, action="rollback", deployment=v1)
    assert back["changed"] and standin.production == v1 and standin.env_value("JWT_SECRET") == new
    assert (me(standin, new), me(standin, old)) == (401, 200)  # the old build, its old env


# ------------------------------------------------------------------ the role's facts


def test_deploy_fact_outcomes() -> None:
    unit = "vercel:app"
    before = {"id": "d1", "version": "1.0.0"}
    made = {"changed": True, "before": before, "deployment": {"id": "d2"}, "api_calls": ["a"] * 4}
    ok_gate, bad_gate = {"ok": True}, {"ok": False, "msg": "500 on /health"}
    deployed = facts.platform_vercel_deploy_fact({"redeploy": made, "gate": ok_gate}, unit, False)
    assert deployed["units"][unit]["outcome"] == "deployed" and deployed["api_calls"] == 4
    assert deployed["previous"] == "d1" and not deployed["rollout_failed"]
    rolled = facts.platform_vercel_deploy_fact(
        {"redeploy": made, "gate": bad_gate, "rolled": {"changed": True, "api_calls": ["x"]},
         "regate": ok_gate}, unit, False)  # fmt: skip
    state = rolled["units"][unit]
    assert state["outcome"] == "rolled_back" and state["rolled_back_to"] == "d1"
    assert rolled["rollout_failed"] and rolled["stopped_at"] == [unit] and rolled["api_calls"] == 5
    unchanged = facts.platform_vercel_deploy_fact(
        {"redeploy": {"changed": False, "before": before}}, unit, False
    )
    assert unchanged["units"][unit]["outcome"] == "unchanged"
    missing = facts.platform_vercel_deploy_fact(
        {"problem": "the inventory does not set vercel_token", "redeploy": {"skipped": True}},
        unit, False,
    )  # fmt: skip
    assert missing["units"][unit]["outcome"] == "failed" and missing["api_calls"] == 0
    assert "vercel_token" in missing["units"][unit]["error"]


def test_rollback_and_maintenance_facts() -> None:
    unit = "vercel:app"
    rolled = {"changed": True, "before": {"id": "d2"}, "deployment": {"id": "d1", "version": "1"}}
    fact = facts.platform_vercel_rollback_fact(
        {"rolled": rolled, "gate": {"ok": True}}, unit, False
    )
    assert fact["units"][unit] == {"outcome": "rolled_back", "from": "d2", "to": "d1",
                                   "to_version": "1", "error": ""}  # fmt: skip
    failed = facts.platform_vercel_rollback_fact(
        {"rolled": {"failed": True, "msg": "no production deployment matches"}}, unit, False
    )
    assert failed["units"][unit]["outcome"] == "failed" and failed["units"][unit]["to"] == ""
    on = facts.platform_vercel_maintenance_fact(
        {"env": {"changed": True}, "before": {"status": 200}, "redeployed": {"changed": True},
         "after": {"status": 503, "ok": True}}, unit, True, False)  # fmt: skip
    assert on["active"] and on["changed"] and on["error"] == ""
    stuck = facts.platform_vercel_maintenance_fact(
        {"env": {"changed": False}, "before": {"status": 200}}, unit, True, False
    )
    assert not stuck["active"] and "does not answer 503" in stuck["error"]
