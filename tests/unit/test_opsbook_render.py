"""module_utils/opsbook_render.py's pure parts (the previous good deploy, sources, cursors,
the wait's backoff, the masked diff), and library/render_env.py and render_service.py run
in-process against RenderStandin (tests/standins_render.py): idempotent env vars one key at a
time, deploys answered 201 or 202, waits that never poll faster than once a second, rollbacks,
failures that say what was left unchanged - every exchange as Render's document allows."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from opsbook.lab.sampleapp import app as sampleapp
from tests.loaders import PROJECT_ROOT, load_library, load_module_utils, load_path
from tests.standins_render import RenderStandin

load_module_utils("opsbook_rest")
render = load_module_utils("opsbook_render")
render_env = load_library("render_env")
render_service = load_library("render_service")

SHA_A, SHA_B, SHA_C = "a1" * 20, "b2" * 20, "c3" * 20
CANARY = "canary-" + "5ec7e7" * 4  # a secret value that must never be shown


class Sleeps(list[float]):
    """The sleeps asked for; the clock moves only by them."""

    t = 0.0

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        self.t += seconds

    def clock(self) -> float:
        return self.t


@pytest.fixture
def service() -> Iterator[RenderStandin]:
    standin = RenderStandin()
    standin.add_commit(SHA_A, "1.0.0")
    standin.add_commit(SHA_B, "1.1.0")
    standin.seed_live(SHA_A)
    yield standin
    standin.close()
    assert standin.mismatches == []  # every request and answer as Render's document allows
    assert standin.bulk_puts == []


def run(module: Any, standin: RenderStandin, check_mode: bool = False, **kw: Any) -> dict[str, Any]:
    params = {k: v.get("default") for k, v in module.argument_spec().items()}
    params.update(service_id=standin.service_id, token=standin.token, base_url=standin.url + "/v1")
    sleep = kw.pop("sleep", None)
    sleep = Sleeps() if sleep is None else sleep
    params.update(kw)
    result = module.execute(params, check_mode, sleep=sleep, clock=sleep.clock)
    text = json.dumps(result)
    assert standin.token not in text and CANARY not in text, result
    return result


# ------------------------------------------------------------------------ pure parts


def deploy(id_: str, status: str, created: int, sha: str, trigger: str = "api") -> dict[str, Any]:
    return {"id": id_, "status": status, "trigger": trigger, "commit": {"id": sha},
            "createdAt": f"2026-01-01T00:00:{created:02d}Z"}  # fmt: skip


def test_previous_good_is_the_last_deploy_that_served_other_code() -> None:
    deploys = [
        deploy("d1", "deactivated", 1, SHA_A),
        deploy("d2", "build_failed", 2, SHA_C),  # never served
        deploy("d3", "live", 3, SHA_B),
    ]
    assert render.previous_good(deploys)["id"] == "d1"
    assert render.previous_good(deploys, "d1") is None
    assert render.previous_good([deploy("d1", "live", 1, SHA_A)]) is None


def test_previous_good_skips_a_deploy_that_was_rolled_back() -> None:
    # A served; B went live, failed its gate and was rolled back to A (a new deploy, trigger
    # rollback): the previous good one before the current is the one before A, never B.
    deploys = [
        deploy("d0", "deactivated", 0, SHA_C),
        deploy("d1", "deactivated", 1, SHA_A),
        deploy("d2", "deactivated", 2, SHA_B),
        deploy("d3", "live", 3, SHA_A, trigger="rollback"),
    ]
    assert render.previous_good(deploys)["id"] == "d0"


def test_sources_and_versions() -> None:
    assert render.source_body(SHA_A) == {"commitId": SHA_A}
    assert render.source_body("registry.example.com/app:1.2.0") == {
        "imageUrl": "registry.example.com/app:1.2.0"
    }
    assert render.source_body("") == {}
    assert render.same_source(SHA_A[:7], deploy("d", "live", 1, SHA_A))
    assert not render.same_source(SHA_B, deploy("d", "live", 1, SHA_A))
    assert not render.same_source("", deploy("d", "live", 1, SHA_A))
    image = {"id": "d", "image": {"ref": "registry.example.com:5000/team/app:2.0.1"}}
    assert render.image_version(image) == "2.0.1"
    assert render.image_version(deploy("d", "live", 1, SHA_A)) == ""
    assert render.find_deploy([image], "2.0.1", render.image_version)["id"] == "d"
    assert render.service_path("srv-1", "env-vars", "A/B") == "/services/srv-1/env-vars/A%2FB"


def test_the_wait_never_polls_faster_than_once_a_second() -> None:
    delays, delay = [], 0.0
    for _ in range(8):
        delay = render.next_delay(delay)
        delays.append(delay)
    assert delays[:3] == [1.0, 1.5, 2.25] and max(delays) == 10.0 and min(delays) >= 1.0


def test_the_diff_masks_every_value() -> None:
    diff = render.env_diff(
        {"A": "old", "B": None, "C": "same"}, {"A": "new", "B": "x", "C": "same"}
    )
    assert diff == {
        "before": {"A": "********", "C": "********"},
        "after": {"A": "******** (changed)", "B": "********", "C": "********"},
    }


def test_cursor_pages_stop_at_a_short_page() -> None:
    class Page:
        def __init__(self, items: list[Any]) -> None:
            self.items = items

        def json(self) -> list[Any]:
            return self.items

    next_page = render.cursor_pages(2)
    assert next_page(Page([{"cursor": "c1"}, {"cursor": "c2"}])) == {"cursor": "c2"}
    assert next_page(Page([{"cursor": "c3"}])) is None
    assert next_page(Page([])) is None


# ------------------------------------------------------------------------ render_env


def test_env_vars_one_key_at_a_time_idempotent(service: RenderStandin) -> None:
    service.env.update(KEEP="kept", OLD="gone soon")
    would = run(render_env, service, True, key="API_KEY", value=CANARY)
    assert (
        would["changed"] and would["changed_keys"] == ["API_KEY"] and "API_KEY" not in service.env
    )
    assert all(c.startswith("GET ") for c in would["api_calls"])
    made = run(render_env, service, key="API_KEY", value=CANARY)
    assert made["changed"] and service.env["API_KEY"] == CANARY
    assert made["diff"] == {"before": {}, "after": {"API_KEY": "********"}}
    assert made["api_calls"] == [
        f"GET /v1/services/{service.service_id}/env-vars/API_KEY 404",
        f"PUT /v1/services/{service.service_id}/env-vars/API_KEY 200",
    ]
    again = run(render_env, service, key="API_KEY", value=CANARY)
    assert again["changed"] is False and len(again["api_calls"]) == 1
    several = [
        {"key": "API_KEY", "value": CANARY + "2", "state": "present"},
        {"key": "OLD", "value": None, "state": "absent"},
        {"key": "NEVER", "value": None, "state": "absent"},
    ]
    changed = run(render_env, service, env_vars=several)
    assert changed["changed_keys"] == ["API_KEY", "OLD"]
    assert service.env == {"KEEP": "kept", "API_KEY": CANARY + "2"}
    assert changed["diff"]["after"] == {"API_KEY": "******** (changed)"}
    assert run(render_env, service, env_vars=several)["changed"] is False


def test_env_list_follows_the_cursors(service: RenderStandin) -> None:
    service.env.update({f"K{i:03d}": f"v{i}" for i in range(230)})
    client = render.RestClient(service.url + "/v1", token=service.token)
    assert render.list_env_vars(client, service.service_id) == service.env
    pages = [c for c in client.history if "/env-vars" in c]
    assert len(pages) == 3, pages  # 100 + 100 + 30


def test_env_errors_say_what_was_left(service: RenderStandin) -> None:
    service.expire_token()
    refused = run(render_env, service, key="A", value=CANARY)
    assert (
        refused["failed"]
        and "HTTP 401" in refused["msg"]
        and "nothing was changed" in refused["msg"]
    )
    assert "token is not valid" in refused["msg"] and service.env == {}
    invalid = run(render_env, service, key="A")
    assert invalid["failed"] and "state=present needs a value" in invalid["msg"]
    assert invalid["api_calls"] == []


# -------------------------------------------------------------------- render_service


def test_deploy_waits_and_is_idempotent(service: RenderStandin) -> None:
    before = service.live_deploy["id"]
    would = run(render_service, service, True, action="deploy", commit_id=SHA_B)
    assert would["changed"] and would["previous"]["id"] == before and service.deploy_posts == 0
    sleeps = Sleeps()
    service.build_polls = 2
    done = run(render_service, service, action="deploy", commit_id=SHA_B, sleep=sleeps)
    assert (
        done["changed"] and done["deploy"]["status"] == "live" and done["live"]["commit"] == SHA_B
    )
    assert done["previous"]["id"] == before and service.deploy(before)["status"] == "deactivated"
    # the POST's 201 holds the status (build_in_progress): not read again at once - the
    # stand-in's build needs 3 reads: after 1 s, 1.5 s and 2.25 s
    assert sleeps == [1.0, 1.5, 2.25]
    deploys = f"/v1/services/{service.service_id}/deploys"
    new = f"GET {deploys}/{done['deploy']['id']} 200"
    assert done["api_calls"] == [f"GET {deploys} 200", f"POST {deploys} 201", new, new, new]
    assert service.served_version == "1.1.0"
    again = run(render_service, service, action="deploy", commit_id=SHA_B[:7])
    assert again["changed"] is False and service.deploy_posts == 1
    forced = run(render_service, service, action="deploy", commit_id=SHA_B, force=True)
    assert forced["changed"] and service.deploy_posts == 2


def me(standin: RenderStandin, secret: str) -> int:
    """The status of the live deploy's GET /api/me for a token signed with ``secret``."""
    token = sampleapp.new_token("ada", secret)
    request = urllib.request.Request(
        standin.app.url + "/api/me", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.build_opener().open(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_env_vars_reach_the_app_by_the_next_deploy_and_a_rollback_runs_the_old_env(
    service: RenderStandin,
) -> None:
    new, old = "jwt-new-" + "1" * 24, "jwt-old-" + "2" * 24
    assert run(render_env, service, key="JWT_SECRET", value=old)["changed"]
    assert me(service, old) == 401  # the live deploy was made without it
    first = run(render_service, service, action="deploy", commit_id=SHA_B)["deploy"]["id"]
    assert me(service, old) == 200
    env = [
        {"key": "JWT_SECRET", "value": new, "state": "present"},
        {"key": "JWT_SECRET_PREVIOUS", "value": old, "state": "present"},
    ]
    assert run(render_env, service, env_vars=env)["changed"]
    assert (me(service, new), me(service, old)) == (401, 200)  # not deployed yet
    assert run(render_service, service, action="deploy", commit_id=SHA_A)["changed"]
    assert (me(service, new), me(service, old)) == (200, 200)  # new, and old as PREVIOUS
    back = run(render_service, service, action="rollback", rollback_to=first)
    assert back["changed"] and back["live"]["trigger"] == "rollback"
    assert (me(service, new), me(service, old)) == (401, 200)  # the target deploy's env
    assert service.env == {"JWT_SECRET": new, "JWT_SECRET_PREVIOUS": old}  # not overwritten
    assert run(render_service, service, action="deploy", commit_id=SHA_B, force=True)["changed"]
    assert (me(service, new), me(service, old)) == (200, 200)  # a standard deploy: current env


def test_a_queued_deploy_202_is_found_in_the_list(service: RenderStandin) -> None:
    service.queue_next()
    done = run(render_service, service, action="deploy", commit_id=SHA_B)
    assert done["changed"] and done["deploy"]["status"] == "live", done
    assert f"POST /v1/services/{service.service_id}/deploys 202" in done["api_calls"]
    assert service.live_deploy["commit"]["id"] == SHA_B
    # found by the list read at once after the 202 - live there: no retrieve, no sleep
    assert [c.split(" ")[0] for c in done["api_calls"]] == ["GET", "POST", "GET"]


def test_the_wait_starts_from_the_answer_it_was_given(service: RenderStandin) -> None:
    """A deploy given with its status (a POST's 201) is polled 1 s later, not at once; one
    already live or failed is not read at all; one given by its id alone is read at once."""
    params = {k: v.get("default") for k, v in render_service.argument_spec().items()}
    params.update(token=service.token, base_url=service.url + "/v1")
    sleeps = Sleeps()
    client = render_service.open_client(params, sleep=sleeps, clock=sleeps.clock)
    srv, live = service.service_id, dict(service.live_deploy)
    assert render.wait_deploy(client, srv, live, timeout_s=10)["id"] == live["id"]
    failed = {**live, "status": "build_failed"}
    with pytest.raises(render.DeployFailed, match="ended build_failed"):
        render.wait_deploy(client, srv, failed, timeout_s=10)
    assert client.history == [] and sleeps == []
    pending = {**live, "status": "build_in_progress"}
    assert render.wait_deploy(client, srv, pending, timeout_s=10)["status"] == "live"
    assert sleeps == [1.0] and len(client.history) == 1
    assert render.wait_deploy(client, srv, {"id": live["id"]}, timeout_s=10)["id"] == live["id"]
    assert sleeps == [1.0] and len(client.history) == 2  # by its id: read at once


def test_a_deploy_given_the_listed_deploys_does_not_list_them_again(
    service: RenderStandin,
) -> None:
    before = service.live_deploy["id"]
    listed = run(render_service, service, action="list_deploys")
    assert [render.summary(render.from_summary(d)) for d in listed["deploys"]] == listed["deploys"]
    would = run(render_service, service, True, action="deploy", commit_id=SHA_B,
                known_deploys=listed["deploys"])  # fmt: skip
    assert would["changed"] and would["previous"]["id"] == before and would["api_calls"] == []
    same = run(render_service, service, action="deploy", commit_id=SHA_A,
               known_deploys=listed["deploys"])  # fmt: skip
    assert same["changed"] is False and same["api_calls"] == [] and service.deploy_posts == 0
    done = run(render_service, service, action="deploy", commit_id=SHA_B,
               known_deploys=listed["deploys"])  # fmt: skip
    assert done["changed"] and done["deploy"]["status"] == "live"
    assert done["live"]["commit"] == SHA_B and done["previous"]["id"] == before
    assert done["diff"]["before"]["live"].startswith(before)
    assert [c.split(" ")[0] for c in done["api_calls"]] == ["POST", "GET"]  # no list first
    # a 202: the new deploy is told from the known ones by the list read after it
    listed = run(render_service, service, action="list_deploys")
    service.queue_next()
    queued = run(render_service, service, action="deploy", commit_id=SHA_A,
                 known_deploys=listed["deploys"])  # fmt: skip
    assert queued["changed"] and queued["deploy"]["status"] == "live", queued
    assert queued["deploy"]["id"] not in {d["id"] for d in listed["deploys"]}
    assert [c.split(" ")[0] for c in queued["api_calls"]] == ["POST", "GET"]
    assert service.live_deploy["commit"]["id"] == SHA_A and service.deploy_posts == 2
    # an empty list: no deploy serves; only for action=deploy; every item needs its id
    none = run(render_service, service, True, action="deploy", commit_id=SHA_A, known_deploys=[])
    assert none["changed"] and none["previous"] is None and none["api_calls"] == []
    wrong = run(render_service, service, action="rollback", known_deploys=listed["deploys"])
    assert wrong["failed"] and "known_deploys is for action=deploy only" in wrong["msg"]
    bad = run(render_service, service, action="deploy", commit_id=SHA_A, known_deploys=[{}])
    assert bad["failed"] and "known_deploys must be deploys with an id" in bad["msg"]
    assert service.deploy_posts == 2


def test_a_failed_build_leaves_the_live_deploy(service: RenderStandin) -> None:
    before = service.live_deploy["id"]
    service.failing_versions.add("1.1.0")
    failed = run(render_service, service, action="deploy", commit_id=SHA_B)
    assert failed["failed"] and "build_failed" in failed["msg"] and before in failed["msg"]
    assert failed["deploy"]["status"] == "build_failed" and service.live_deploy["id"] == before


def test_rollback_to_the_previous_good_or_a_named_deploy(service: RenderStandin) -> None:
    first = service.live_deploy["id"]
    run(render_service, service, action="deploy", commit_id=SHA_B)
    listed = run(render_service, service, action="list_deploys")
    assert listed["live"]["commit"] == SHA_B and listed["previous_good"]["id"] == first
    would = run(render_service, service, True, action="rollback")
    assert would["changed"] and would["deploy"]["id"] == first and service.deploy_posts == 1
    back = run(render_service, service, action="rollback")
    assert back["changed"] and back["rolled_back_to"]["id"] == first
    assert back["live"]["trigger"] == "rollback" and service.served_version == "1.0.0"
    again = run(render_service, service, action="rollback", rollback_to=SHA_A)
    assert again["changed"] is False
    missing = run(render_service, service, action="rollback", rollback_to="9.9.9")
    assert missing["failed"] and "has no deploy to roll back to ('9.9.9')" in missing["msg"]
    assert first in missing["msg"] and "nothing was changed" in missing["msg"]


def test_retries_rate_limits_and_unknown_outcomes(service: RenderStandin) -> None:
    sleeps = Sleeps()
    service.fail_next(503)
    service.fail_next(429, retry_after=2)
    listed = run(render_service, service, action="list_deploys", sleep=sleeps)
    assert listed["live"] is not None and sleeps == [1.0, 2.0]
    assert [c.rsplit(" ", 1)[-1] for c in listed["api_calls"]] == ["503", "429", "200"]


def test_a_5xx_on_a_trigger_is_not_repeated(service: RenderStandin) -> None:
    service.fail_on("create-deploy", 500)
    failed = run(render_service, service, action="deploy", commit_id=SHA_B)
    posts = [c for c in failed["api_calls"] if c.startswith("POST")]
    assert posts == [f"POST /v1/services/{service.service_id}/deploys 500"]
    assert "whether Render started a deploy is unknown" in failed["msg"]
    assert service.deploy_posts == 0


def test_restart_and_scale(service: RenderStandin) -> None:
    would = run(render_service, service, True, action="scale", num_instances=3)
    assert would["changed"] and service.num_instances == 1 and would["api_calls"] == []
    scaled = run(render_service, service, action="scale", num_instances=3)
    assert scaled["changed"] and scaled["before"] is None and scaled["after"] == 3
    assert service.num_instances == 3
    # Render's document has no read of the count: a rerun sends the same count again
    again = run(render_service, service, action="scale", num_instances=3)
    assert (
        again["changed"]
        and again["api_calls"][-1].startswith("POST ")
        and service.num_instances == 3
    )
    restarted = run(render_service, service, action="restart")
    assert restarted["changed"] and service.restarts == 1
    bad = run(render_service, service, action="scale", num_instances=0)
    assert bad["failed"] and "num_instances >= 1" in bad["msg"] and bad["api_calls"] == []


# ------------------------------------------------------- the role's filters (outcomes)

role_filters = load_path(
    "opsbook_test_platform_render_filters",
    PROJECT_ROOT / "filter_plugins" / "opsbook_platform_render.py",
)
UNIT = "render:srv-1"
LIVE = {"id": "dep-old", "source": SHA_A, "status": "live"}
LISTED = {"changed": False, "live": LIVE, "api_calls": ["GET /v1/services/srv-1/deploys 200"]}
SKIPPED = {"skipped": True}


def deploy_fact(**steps: Any) -> dict[str, Any]:
    base = {"listed": LISTED, "probe": {}, "needed": True, "deployed": SKIPPED,
            "gate": SKIPPED, "rolled": SKIPPED, "regate": SKIPPED}  # fmt: skip
    return role_filters.platform_render_deploy_fact({**base, **steps}, UNIT, False)


def test_deploy_outcomes() -> None:
    new = {"changed": True, "deploy": {"id": "dep-new"}, "api_calls": ["POST x 201"]}
    deployed = deploy_fact(deployed=new, gate={"ok": True})
    assert deployed["units"][UNIT]["outcome"] == "deployed" and deployed["deployment"] == "dep-new"
    assert deployed["api_calls"] == 2 and deployed["previous"] == "dep-old"
    unchanged = deploy_fact(needed=False)
    assert unchanged["units"][UNIT]["outcome"] == "unchanged" and not unchanged["rollout_failed"]
    failed = deploy_fact(deployed={"failed": True, "msg": "ended build_failed", "deploy": {}})
    state = failed["units"][UNIT]
    assert state["outcome"] == "failed" and "dep-old still serves" in state["error"]
    assert not failed["rollout_failed"] and failed["stopped_at"] == [UNIT]  # nothing switched
    gate_failed = {"ok": False, "msg": "0 of 1 passed"}
    rolled = deploy_fact(deployed=new, gate=gate_failed, rolled={"changed": True},
                         regate={"ok": True})  # fmt: skip
    assert rolled["units"][UNIT]["outcome"] == "rolled_back"
    assert rolled["units"][UNIT]["rolled_back_to"] == "dep-old"
    first_ever = deploy_fact(listed={**LISTED, "live": None}, deployed=new, gate=gate_failed)
    assert first_ever["units"][UNIT]["outcome"] == "rollback_failed"
    assert "no earlier deploy" in first_ever["units"][UNIT]["error"]
    unread = deploy_fact(listed={"failed": True, "msg": "HTTP 401"})
    assert unread["units"][UNIT] | {"before_version": None} == {
        "outcome": "failed", "error": "HTTP 401", "needed": True, "before": None,
        "before_version": None, "rolled_back_to": None,
    }  # fmt: skip
    plan = role_filters.platform_render_deploy_fact({"listed": LISTED, "needed": True}, UNIT, True)
    assert plan["units"][UNIT]["outcome"] == "untouched" and not plan["rollout_failed"]


def test_maintenance_and_env_facts() -> None:
    env = {"changed": True, "api_calls": ["GET a 404", "PUT a 200"], "changed_keys": ["M"]}
    on = role_filters.platform_render_maintenance_fact(
        {"env": env, "before": {"status": 200}, "listed": LISTED,
         "redeployed": {"changed": True, "api_calls": ["x"]}, "after": {"status": 503, "ok": True}},
        UNIT, True, False,
    )  # fmt: skip
    assert on["active"] and on["changed"] and on["error"] == "" and on["api_calls"] == 4
    no_live = role_filters.platform_render_maintenance_fact(
        {"env": env, "before": {"status": 200}, "listed": {**LISTED, "live": None},
         "redeployed": SKIPPED, "after": SKIPPED},
        UNIT, True, False,
    )  # fmt: skip
    assert not no_live["active"] and "no deploy is live" in no_live["error"]
    items = [{"name": "A", "value": "x"}, {"name": "B", "state": "absent"}]
    assert role_filters.platform_render_env_vars(items) == [
        {"key": "A", "value": "x", "state": "present"},
        {"key": "B", "value": None, "state": "absent"},
    ]
    result = role_filters.platform_render_env_fact({"env": env}, items, False)
    assert result["names"] == ["A", "B"] and result["changed_names"] == ["M"]
    assert result["changed"] and not result["applied"] and "x" not in json.dumps(result)
    assert role_filters.platform_render_runs(LIVE, SHA_A[:7])
    assert role_filters.platform_render_runs(LIVE, "")
    assert not role_filters.platform_render_runs(None, SHA_A)
    assert role_filters.platform_render_source_kind("ghcr.io/team/app:1.0") == "image_url"


def test_missing_inventory_and_scale_facts() -> None:
    assert role_filters.platform_render_missing({"render_service_id": "srv-1", "x": "y"}) == ""
    problem = role_filters.platform_render_missing(
        {"render_service_id": "", "render_api_key": None}
    )
    assert problem.startswith("the inventory does not set render_service_id (")
    assert "render_api_key (" in problem and problem.endswith("nothing was called on Render")
    fact = role_filters.platform_render_scale_fact({"problem": problem, "scaled": SKIPPED}, 3)
    assert fact["error"] == problem and fact["after"] is None and fact["api_calls"] == 0
    ok = role_filters.platform_render_scale_fact(
        {"problem": "", "scaled": {"changed": True, "api_calls": ["POST /scale 202"]}}, 3
    )
    assert ok == {"target": "render", "before": None, "after": 3, "changed": True,
                  "api_calls": 1, "error": ""}  # fmt: skip
    rollback = role_filters.platform_render_rollback_fact(
        {"problem": problem, "rolled": SKIPPED}, UNIT, False
    )
    assert rollback["units"][UNIT]["outcome"] == "failed"
    assert rollback["units"][UNIT]["error"] == problem
