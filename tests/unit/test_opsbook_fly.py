"""module_utils/opsbook_fly.py's pure rules (batches, what a machine's config becomes, what it
rolls back to), its lease discipline and wait loop on a scripted client, the platform_fly role's
filters, the two modules' documentation against their argument specs, and the two modules run
in-process against FlyStandin (tests/standins_fly.py): when a secret reaches the app."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from opsbook.lab.sampleapp import app as sampleapp
from tests.loaders import PROJECT_ROOT, load_module_utils, load_path, module_documentation
from tests.platform_standin import INSTANCE_HEADER
from tests.standins_fly import FlyStandin

load_module_utils("opsbook_rest")
fly = load_module_utils("opsbook_fly")
rest = load_module_utils("opsbook_rest")
filters = load_path(
    "opsbook_test_platform_fly_filters",
    PROJECT_ROOT / "filter_plugins/opsbook_platform_fly.py",
)

IMG = "registry.fly.io/app:{}"


def machine(mid: str = "m1", image: str = IMG.format("1.0.0"), **meta: str) -> dict[str, Any]:
    return {
        "id": mid,
        "state": "started",
        "instance_id": f"V-{mid}",
        "created_at": "2026-01-01T00:00:00Z",
        "config": {"image": image, "env": {"SECRET": "hidden"}, "metadata": dict(meta)},
    }


# ------------------------------------------------------------------------ pure rules


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("registry.fly.io/app:1.2.0", "1.2.0"),
        ("registry.fly.io/app", ""),
        ("localhost:5000/app", ""),
        ("localhost:5000/app:2", "2"),
        ("registry.fly.io/app:1.2.0@sha256:abc", "1.2.0"),
        ("registry.fly.io/app@sha256:abc", ""),
    ],
)
def test_image_tag(image: str, tag: str) -> None:
    assert fly.image_tag(image) == tag


def test_looks_like_image_tells_a_version_from_an_image() -> None:
    assert not fly.looks_like_image("1.2.0")
    assert fly.looks_like_image("app:1.2.0") and fly.looks_like_image("r.io/app")
    assert fly.looks_like_image("app@sha256:abc")


@pytest.mark.parametrize(
    ("canary", "batch", "expected"),
    [
        (1, "50%", [["a"], ["b", "c"], ["d", "e"]]),  # 50% of 5 = 2
        (1, "2", [["a"], ["b", "c"], ["d", "e"]]),
        (0, "100%", [["a", "b", "c", "d", "e"]]),
        (2, "10%", [["a", "b"], ["c"], ["d"], ["e"]]),  # at least 1
        (9, "1", [["a", "b", "c", "d", "e"]]),
        (1, "", [["a"], ["b", "c", "d", "e"]]),
    ],
)
def test_plan_batches_canary_first(canary: int, batch: str, expected: list[list[str]]) -> None:
    assert fly.plan_batches(list("abcde"), canary, batch) == expected


def test_plan_batches_refuses_a_nonsense_batch() -> None:
    assert fly.plan_batches([], 1, "50%") == []
    for bad in ("0", "0%", "-1", "x"):
        with pytest.raises(ValueError):
            fly.plan_batches(["a"], 1, bad)


def test_deploy_change_records_the_previous_image_and_the_history() -> None:
    config = machine()["config"]
    new = fly.deploy_change(IMG.format("1.1.0"), "1.1.0", "rel-7")(config)
    assert new["image"] == IMG.format("1.1.0") and new["env"] == {"SECRET": "hidden"}
    meta = new["metadata"]
    assert meta["opsbook_previous_image"] == IMG.format("1.0.0")
    assert meta["opsbook_version"] == "1.1.0" and meta["opsbook_release"] == "rel-7"
    assert json.loads(meta["opsbook_images"]) == [
        [IMG.format("1.0.0"), "1.0.0"],
        [IMG.format("1.1.0"), "1.1.0"],
    ]
    assert config["metadata"] == {}  # the input is never changed
    # on the image already: version and release ride along with a change, never cause one
    assert fly.deploy_change(IMG.format("1.1.0"), "1.1.0", "rel-8")(new) is None


def test_deploy_change_metadata_and_secrets_version() -> None:
    config = machine(opsbook_secrets_version="3")["config"]
    assert fly.deploy_change(None, min_secrets_version=3)(config) is None
    raised = fly.deploy_change(None, min_secrets_version=4)(config)
    assert raised["metadata"]["opsbook_secrets_version"] == "4"
    assert raised["image"] == config["image"]
    flagged = fly.deploy_change(None, metadata={"opsbook_maintenance": "on"})(config)
    assert flagged["metadata"]["opsbook_maintenance"] == "on"
    assert fly.deploy_change(None, metadata={"opsbook_maintenance": "on"})(flagged) is None


def test_history_is_bounded_and_moves_a_redeployed_image_to_the_end() -> None:
    config = machine()["config"]
    for n in range(1, 15):
        config = fly.deploy_change(IMG.format(f"1.{n}.0"))(config)
    pairs = fly.history(config["metadata"])
    assert len(pairs) == fly.HISTORY_MAX and pairs[-1] == (IMG.format("1.14.0"), "1.14.0")
    again = fly.deploy_change(IMG.format("1.10.0"))(config)
    assert fly.history(again["metadata"])[-1][0] == IMG.format("1.10.0")
    assert fly.history({"opsbook_images": "not json"}) == []


def summary_after(*images: str) -> dict[str, Any]:
    config = machine(image=images[0])["config"]
    for image in images[1:]:
        config = fly.deploy_change(image)(config)
    return fly.summarize({**machine(), "config": config})


def test_rollback_target_previous_version_image_and_refusals() -> None:
    s = summary_after(IMG.format("1.0.0"), IMG.format("1.1.0"), IMG.format("1.2.0"))
    assert s["version"] == "1.2.0" and s["previous_version"] == "1.1.0"
    assert "env" not in json.dumps(s)  # a summary never holds the config's env
    assert fly.rollback_target(s, "") == (IMG.format("1.1.0"), "1.1.0")
    assert fly.rollback_target(s, "1.0.0") == (IMG.format("1.0.0"), "1.0.0")
    assert fly.rollback_target(s, "other/img:9") == ("other/img:9", "9")
    refused = fly.rollback_target(s, "0.9")
    assert isinstance(refused, str) and "it knows 1.0.0, 1.1.0, 1.2.0" in refused
    fresh = fly.summarize(machine())
    assert "no previous image on record" in fly.rollback_target(fresh, "")


def test_rollback_change_goes_one_further_back_each_time() -> None:
    config = summary_after(IMG.format("1.0.0"), IMG.format("1.1.0"), IMG.format("1.2.0"))
    current = {"image": config["image"], "metadata": config["metadata"]}
    once = fly.rollback_change(IMG.format("1.1.0"), "1.1.0")(current)
    assert once["image"] == IMG.format("1.1.0")
    assert once["metadata"]["opsbook_previous_image"] == IMG.format("1.0.0")
    assert once["metadata"]["opsbook_version"] == "1.1.0"
    twice = fly.rollback_change(IMG.format("1.0.0"), "1.0.0")(once)
    assert "opsbook_previous_image" not in twice["metadata"]
    assert fly.rollback_change(IMG.format("1.0.0"), "1.0.0")(twice) is None
    s = fly.summarize({**machine(), "config": twice})
    assert "no previous image" in fly.rollback_target(s, "")
    assert fly.rollback_target(s, "1.2.0") == (IMG.format("1.2.0"), "1.2.0")  # still on record


# ------------------------------------------------------------- lease and wait, scripted


class Client:
    """A RestClient stand-in: answers scripted per "METHOD path" (a Response, a status or a
    RestError), records every call like RestClient.history."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.history: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.bodies: list[Any] = []

    def add_secret(self, value: str | None) -> None:
        pass

    def request(self, method: str, path: str, **kw: Any) -> Any:
        call = f"{method} {path}"
        answers = self.script.get(call) or []
        answer = answers.pop(0) if len(answers) > 1 else (answers[0] if answers else 200)
        self.headers.append(dict(kw.get("headers") or {}))
        self.bodies.append(kw.get("json"))
        if isinstance(answer, Exception):
            self.history.append(f"{call} {getattr(answer, 'status', None)}")
            raise answer
        status, body = answer if isinstance(answer, tuple) else (answer, None)
        self.history.append(f"{call} {status}")
        return rest.Response(call, status, {}, json.dumps(body).encode() if body else b"")

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


BASE = "/apps/app/machines/m1"


def updated(image: str) -> dict[str, Any]:
    return {**machine(image=image), "instance_id": "V-new"}


def test_locked_update_releases_the_lease_and_waits_for_the_new_version() -> None:
    client = Client({
        f"POST {BASE}/lease": [(201, {"nonce": "n-1", "version": "V-m1"})],
        f"POST {BASE}": [(200, updated(IMG.format("1.1.0")))],
        f"GET {BASE}/wait": [(200, {"ok": True, "state": "started"})],
    })  # fmt: skip
    result = fly.update_machine_locked(
        client, "app", machine(), fly.deploy_change(IMG.format("1.1.0"))
    )
    assert result["outcome"] == "updated" and result["changed"] is True
    assert result["after_version"] == "1.1.0" and result["state"] == "started"
    assert client.history == [
        f"POST {BASE}/lease 201",  # the lease's version is the listed one: no GET
        f"POST {BASE} 200",
        f"DELETE {BASE}/lease 200",
        f"GET {BASE}/wait 200",
    ]
    assert client.headers[1] == {fly.LEASE_HEADER: "n-1"}
    assert client.headers[2] == {fly.LEASE_HEADER: "n-1"}


def test_locked_update_reads_again_when_the_machine_moved_and_releases_on_refusal() -> None:
    refusal = rest.RestError(f"POST {BASE}", status=400, vendor_message="image not found")
    client = Client({
        f"POST {BASE}/lease": [(201, {"nonce": "n-2", "version": "V-other"})],
        f"GET {BASE}": [(200, machine())],
        f"POST {BASE}": [refusal],
    })  # fmt: skip
    result = fly.update_machine_locked(client, "app", machine(), fly.deploy_change(IMG.format("2")))
    assert result["outcome"] == "failed" and result["changed"] is False
    assert "image not found" in result["error"] and "was not changed" in result["error"]
    assert client.history[-1] == f"DELETE {BASE}/lease 200"
    assert f"GET {BASE} 200" in client.history


def test_locked_update_finds_out_after_a_lost_answer() -> None:
    lost = rest.RestError(f"POST {BASE}", status=503)
    applied = updated(IMG.format("2"))
    applied["config"]["metadata"] = fly.deploy_change(IMG.format("2"))(machine()["config"])[
        "metadata"
    ]
    client = Client({
        f"POST {BASE}/lease": [(201, {"nonce": "n", "version": "V-m1"})],
        f"POST {BASE}": [lost],
        f"GET {BASE}": [(200, applied)],
    })  # fmt: skip
    result = fly.update_machine_locked(
        client, "app", machine(), fly.deploy_change(IMG.format("2")), wait=False
    )
    assert result["outcome"] == "updated" and result["changed"] is True
    unreadable = rest.RestError(f"GET {BASE}", status=503)
    client = Client({
        f"POST {BASE}/lease": [(201, {"nonce": "n", "version": "V-m1"})],
        f"POST {BASE}": [lost],
        f"GET {BASE}": [unreadable],
    })  # fmt: skip
    result = fly.update_machine_locked(client, "app", machine(), fly.deploy_change(IMG.format("2")))
    assert result["changed"] is None and "is unknown" in result["error"]
    assert client.history[-1] == f"DELETE {BASE}/lease 200"


def test_locked_update_from_a_known_summary_reads_the_machine_under_the_lease() -> None:
    """A summary (no config, no env) decides; the update is made from the GET under the lease,
    so a machine changed meanwhile keeps what it has (env, services) and only gets the image."""
    known = fly.from_summary(fly.summarize(machine()))
    assert "env" not in json.dumps(known)
    moved = machine()
    moved["config"]["services"] = [{"internal_port": 9090}]  # changed by someone else
    client = Client({
        f"POST {BASE}/lease": [(201, {"nonce": "n-3", "version": "V-m1"})],
        f"GET {BASE}": [(200, moved)],
        f"POST {BASE}": [(200, updated(IMG.format("1.1.0")))],
    })  # fmt: skip
    result = fly.update_machine_locked(
        client, "app", known, fly.deploy_change(IMG.format("1.1.0")), wait=False,
        read_under_lease=True,
    )  # fmt: skip
    assert result["outcome"] == "updated"
    assert client.history == [
        f"POST {BASE}/lease 201",
        f"GET {BASE} 200",  # read under the lease even though its version is the known one
        f"POST {BASE} 200",
        f"DELETE {BASE}/lease 200",
    ]
    sent = client.bodies[2]["config"]
    assert sent["env"] == {"SECRET": "hidden"} and sent["services"] == [{"internal_port": 9090}]
    assert sent["image"] == IMG.format("1.1.0")
    # a machine already moved to the image meanwhile: nothing sent, the lease released
    client = Client({
        f"POST {BASE}/lease": [(201, {"nonce": "n-4", "version": "V-x"})],
        f"GET {BASE}": [(200, machine(image=IMG.format("1.1.0")))],
    })  # fmt: skip
    result = fly.update_machine_locked(
        client, "app", known, fly.deploy_change(IMG.format("1.1.0")), read_under_lease=True
    )
    assert result["outcome"] == "unchanged" and result["changed"] is False
    assert client.history == [
        f"POST {BASE}/lease 201",
        f"GET {BASE} 200",
        f"DELETE {BASE}/lease 200",
    ]


def test_locked_update_without_a_change_sends_nothing() -> None:
    client = Client({})
    result = fly.update_machine_locked(
        client, "app", machine(), fly.deploy_change(IMG.format("1.0.0"))
    )
    assert result["outcome"] == "unchanged" and client.history == []


def test_wait_asks_again_after_a_408_and_gives_up_at_its_timeout() -> None:
    client = Client({f"GET {BASE}/wait": [408, (200, {"ok": True, "state": "started"})]})
    assert fly.wait_machine(client, "app", "m1", timeout_s=90)["state"] == "started"
    now = [0.0]

    def clock() -> float:
        now[0] += 30
        return now[0]

    client = Client({f"GET {BASE}/wait": [408]})
    with pytest.raises(rest.RestError, match="did not reach started within 60 s"):
        fly.wait_machine(client, "app", "m1", timeout_s=60, clock=clock)


# --------------------------------------------------------------------- role filters


def gate(**ok: bool) -> dict[str, Any]:
    return {
        "by_host": {
            f"fly:{m}": {"ok": v, "problems": [] if v else ["/health: status 500"]}
            for m, v in ok.items()
        }
    }


def result(mid: str, outcome: str, changed: bool | None = True, **extra: Any) -> dict[str, Any]:
    return {"id": mid, "outcome": outcome, "changed": changed, "error": "", **extra}


def test_after_batch_and_after_rollback_outcomes() -> None:
    units = {f"fly:{m}": {"outcome": "untouched", "needed": True, "before": "i1"} for m in "abc"}
    update = {"results": [result("a", "updated"), result("b", "updated")]}
    units = filters.platform_fly_after_batch(units, ["a", "b"], update, gate(a=True, b=False))
    assert units["fly:a"]["outcome"] == "deployed" and units["fly:b"]["outcome"] == "failed"
    assert "health gate: /health: status 500" in units["fly:b"]["error"]
    assert filters.platform_fly_batch_failed(units, ["a", "b"])
    assert filters.platform_fly_changed_ids(update) == ["a", "b"]
    assert filters.platform_fly_only([["a"], ["b", "c"]], ["c", "a"]) == [["a"], ["c"]]
    back = {"results": [result("a", "updated", after_image="i1"), result("b", "failed")]}
    units = filters.platform_fly_after_rollback(units, ["a", "b"], back, gate(a=True))
    assert units["fly:a"]["outcome"] == "rolled_back" and units["fly:a"]["rolled_back_to"] == "i1"
    assert units["fly:b"]["outcome"] == "rollback_failed"
    assert units["fly:c"]["outcome"] == "untouched"


def test_after_batch_skipped_and_whole_task_failures() -> None:
    update = {"results": [result("a", "failed", None, error="boom"), result("b", "skipped", False)]}
    units = filters.platform_fly_after_batch({}, ["a", "b"], update, {"skipped": True})
    assert (
        units["fly:a"]["outcome"] == "failed" and "look at the machine" in units["fly:a"]["error"]
    )
    assert units["fly:b"]["outcome"] == "untouched"
    assert filters.platform_fly_changed_ids(update) == []
    failed = filters.platform_fly_after_batch({}, ["a"], {"failed": True, "msg": "HTTP 401"}, {})
    assert failed["fly:a"] == {
        "needed": True, "before": "", "before_version": "", "rolled_back_to": "",
        "outcome": "failed", "error": "HTTP 401",
    }  # fmt: skip


def test_deploy_fact_of_a_run_and_of_one_that_could_not_start() -> None:
    plan = {"plan": {"batches": [["a"]]}}
    units = {
        "fly:a": {"outcome": "deployed", "needed": True, "before": "i1"},
        "fly:b": {"outcome": "unchanged", "needed": False, "before": "i2"},
    }
    fact = filters.platform_fly_deploy_fact(units, plan, app="app", image="i2", calls=5)
    assert fact["deployment"] == "i2" and fact["previous"] == "i1" and fact["api_calls"] == 5
    assert fact["rollout_failed"] is False and fact["plan"] == [["a"]]
    missing = filters.platform_fly_missing({"fly_app": "app", "fly_api_token": ""})
    assert "fly_api_token" in missing and "fly_app" not in missing
    refused = filters.platform_fly_deploy_fact({}, {}, app="app", image="i", problem=missing)
    assert refused["units"]["fly:app"]["error"] == missing
    failed = filters.platform_fly_deploy_fact({}, {"failed": True, "msg": "HTTP 401"}, app="x",
                                              image="i")  # fmt: skip
    assert failed["units"]["fly:x"]["error"] == "HTTP 401 - nothing was changed"


def test_rollback_fact_refused_planned_and_done() -> None:
    machines = [{"id": "a", "image": "i3"}, {"id": "b", "image": "i3"}]
    refused = {"failed": True, "msg": "no image of version 0.9", "machines": machines}
    fact = filters.platform_fly_rollback_fact(refused, [], [], [], app="app")
    assert {u["outcome"] for u in fact["units"].values()} == {"failed"}
    assert fact["units"]["fly:a"]["error"] == "no image of version 0.9"
    plan = {
        "machines": machines,
        "results": [
            result("a", "would_update", before_image="i3", after_image="i1", after_version="1"),
            result("b", "unchanged", False, before_image="i1", after_image="i1"),
        ],
    }
    dry = filters.platform_fly_rollback_fact(plan, [["a"]], [], [], app="app", check_mode=True)
    assert dry["units"]["fly:a"]["outcome"] == "would_roll_back"
    assert dry["units"]["fly:b"]["outcome"] == "unchanged"
    done = {"results": [result("a", "updated", before_image="i3", after_image="i1",
                               after_version="1")]}  # fmt: skip
    fact = filters.platform_fly_rollback_fact(plan, [["a"]], [done], [gate(a=True)], app="app")
    assert fact["units"]["fly:a"] == {
        "outcome": "rolled_back", "from": "i3", "to": "i1", "to_version": "1", "error": "",
    }  # fmt: skip


def test_maintenance_fact_and_probe() -> None:
    machines = {"machines": [{"id": "a"}, {"id": "b"}]}
    probe = filters.platform_fly_probe(
        {"by_host": {"fly:a": {"status": 503}, "fly:b": {"status": 200}}}
    )
    assert probe == {"a": True, "b": False}
    fact = filters.platform_fly_maintenance_fact(machines, True, probe, {"b": True}, ["b"])
    assert fact["active"] and fact["changed"] and fact["state"] == "on"
    assert fact["units"]["fly:a"] == {"active": True, "changed": False, "error": ""}
    off = filters.platform_fly_maintenance_fact(machines, False, probe, {}, [])
    assert off["active"] and "not as asked" not in off["units"]["fly:a"]["error"]
    assert "does not answer as asked" in off["units"]["fly:a"]["error"]


# --------------------------------------------------------------------------- modules


@pytest.mark.parametrize("name", ["fly_machines", "fly_secrets"])
def test_documented_options_are_the_argument_spec(name: str) -> None:
    module = load_path(f"opsbook_test_{name}", PROJECT_ROOT / "library" / f"{name}.py")
    doc = module_documentation(module)
    documented = doc["options"]
    spec = module.argument_spec()
    assert set(documented) == set(spec)
    for option, declared in spec.items():
        assert documented[option].get("type", "str") == declared.get("type", "str"), option
        assert documented[option].get("default") == declared.get("default"), option
        assert documented[option].get("choices") == declared.get("choices"), option
        # no_log lives in the spec only: ansible-test's validate-modules rejects it in the docs
        assert "no_log" not in documented[option], option
    secret = {"fly_machines": {"token"}, "fly_secrets": {"token", "value"}}[name]
    assert {o for o, declared in spec.items() if declared.get("no_log")} >= secret
    assert yaml.safe_load(module.RETURN) and yaml.safe_load(module.EXAMPLES)


def test_module_input_errors_send_nothing() -> None:
    machines = load_path("opsbook_test_fly_machines", PROJECT_ROOT / "library/fly_machines.py")
    secrets = load_path("opsbook_test_fly_secrets", PROJECT_ROOT / "library/fly_secrets.py")

    def params(module: Any, **kw: Any) -> dict[str, Any]:
        base = {k: v.get("default") for k, v in module.argument_spec().items()}
        return {**base, "app": "app", "token": "t0ken-value", **kw}

    bad: list[tuple[Callable[..., dict[str, Any]], dict[str, Any], str]] = [
        (machines.execute, params(machines, action="scale", count=0), "count must be >= 1"),
        (machines.execute, params(machines, action="update"), "needs image, metadata"),
        (machines.execute, params(machines, action="list", batch="0%"), "percentage > 0"),
        (secrets.execute, params(secrets, name="1BAD", value="v"), "is not a secret name"),
        (secrets.execute, params(secrets, name="A"), "state=present needs a value"),
    ]
    for execute, given, text in bad:
        outcome = execute(given, False)
        assert outcome["failed"] and text in outcome["msg"] and outcome["api_calls"] == []
        assert "t0ken-value" not in json.dumps(outcome)


# ------------------------------------------------------- the modules against FlyStandin


def test_a_secret_reaches_the_app_when_the_machine_boots_not_on_a_restart() -> None:
    machines = load_path("opsbook_test_fly_machines", PROJECT_ROOT / "library/fly_machines.py")
    secrets = load_path("opsbook_test_fly_secrets", PROJECT_ROOT / "library/fly_secrets.py")
    new, old = "jwt-new-" + "1" * 24, "jwt-old-" + "2" * 24

    with FlyStandin() as standin:
        m1 = standin.add_machine(IMG.format("1.0.0"), env={"PORT": "8080"})

        def run(module: Any, **kw: Any) -> dict[str, Any]:
            params = {k: v.get("default") for k, v in module.argument_spec().items()}
            params.update(app=standin.app_name, token=standin.token, base_url=standin.url, **kw)
            result = module.execute(params, False, sleep=lambda s: None)
            assert not result.get("failed"), result
            assert new not in json.dumps(result) and old not in json.dumps(result)
            return result

        def me(secret: str) -> int:
            token = sampleapp.new_token("ada", secret)
            headers = {"Authorization": f"Bearer {token}", INSTANCE_HEADER: m1}
            request = urllib.request.Request(standin.app.url + "/api/me", headers=headers)
            try:
                with urllib.request.build_opener().open(request, timeout=5) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        first = run(secrets, name="JWT_SECRET", value=old)["version"]
        assert me(old) == 401  # set, but the machine booted before it
        run(machines, action="restart", machine_ids=[m1])
        assert me(old) == 401  # a restart keeps the env it booted with
        run(machines, action="update", machine_ids=[m1], min_secrets_version=first)
        assert me(old) == 200
        both = [{"name": "JWT_SECRET", "value": new}, {"name": "JWT_SECRET_PREVIOUS", "value": old}]
        second = run(secrets, secrets=both)["version"]
        assert (me(new), me(old)) == (401, 200)
        run(machines, action="update", machine_ids=[m1], min_secrets_version=second)
        assert (me(new), me(old)) == (200, 200)  # new, and old as PREVIOUS
        assert standin.app.env(m1) == {"PORT": "8080", "JWT_SECRET": new,
                                       "JWT_SECRET_PREVIOUS": old}  # fmt: skip
        assert standin.mismatches == [] and standin.leases == {}


def test_update_and_rollback_with_known_machines_do_not_list_them_again() -> None:
    machines = load_path("opsbook_test_fly_machines", PROJECT_ROOT / "library/fly_machines.py")
    v11 = IMG.format("1.1.0")
    with FlyStandin() as standin:
        m1, m2, m3 = (standin.add_machine(IMG.format("1.0.0")) for _ in range(3))

        def run(**kw: Any) -> dict[str, Any]:
            params = {k: v.get("default") for k, v in machines.argument_spec().items()}
            params.update(app=standin.app_name, token=standin.token, base_url=standin.url, **kw)
            result = machines.execute(params, False, sleep=lambda s: None)
            assert not result.get("failed"), result
            return result

        plan = run(action="list", image=v11)
        known = plan["machines"]
        path = f"/apps/{standin.app_name}/machines"
        one = run(action="update", machine_ids=[m1], image=v11, known_machines=known)
        assert one["results"][0]["outcome"] == "updated"
        assert one["api_calls"] == [
            f"POST {path}/{m1}/lease 201",
            f"GET {path}/{m1} 200",
            f"POST {path}/{m1} 200",
            f"DELETE {path}/{m1}/lease 200",
            f"GET {path}/{m1}/wait 200",
        ]
        assert one["machines"] == [s for s in known if s["id"] == m1]
        # two to change: one list costs fewer calls than a read of each
        two = run(action="update", machine_ids=[m2, m3], image=v11, known_machines=known)
        assert two["api_calls"][0] == f"GET {path} 200" and two["changed"]
        # known but stale (m1 is on 1.1.0 now): read under the lease, nothing overwritten
        again = run(action="update", machine_ids=[m1], image=v11, known_machines=known)
        assert again["results"][0]["outcome"] == "unchanged" and not again["changed"]
        assert again["api_calls"] == [
            f"POST {path}/{m1}/lease 201",
            f"GET {path}/{m1} 200",
            f"DELETE {path}/{m1}/lease 200",
        ]
        # an id it does not know: listed as without it
        fresh = run(action="list")["machines"]
        back = run(action="rollback", machine_ids=[m1], known_machines=fresh)
        assert back["results"][0]["after_image"] == IMG.format("1.0.0")
        assert f"GET {path} 200" not in back["api_calls"]
        listed = run(action="rollback", machine_ids=[m2], known_machines=fresh[:1])
        assert listed["api_calls"][0] == f"GET {path} 200"
        assert standin.image(m2) == IMG.format("1.0.0") and standin.leases == {}
        assert standin.mismatches == [] and standin.lease_violations == []
