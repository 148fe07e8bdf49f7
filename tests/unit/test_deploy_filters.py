"""filter_plugins/opsbook_deploy.py: the bookkeeping of deploy.yml and rollback.yml."""

from __future__ import annotations

from typing import Any

import pytest

from tests.loaders import load_plugin

fd = load_plugin("filter_plugins", "opsbook_deploy")


@pytest.mark.parametrize(
    ("now", "window", "inside"),
    [
        ("03:00", "", True),
        ("03:00", "02:00-05:00", True),
        ("02:00", "02:00-05:00", True),
        ("05:00", "02:00-05:00", False),
        ("12:00", "02:00-05:00", False),
        ("23:30", "22:00-02:00", True),
        ("01:59", "22:00-02:00", True),
        ("02:00", "22:00-02:00", False),
        ("10:00", "04:00-04:00", True),
    ],
)
def test_deploy_in_window(now: str, window: str, inside: bool) -> None:
    assert fd.deploy_in_window(now, window) is inside


@pytest.mark.parametrize("window", ["2-5", "02:00-25:00", "02:61-03:00"])
def test_deploy_in_window_refuses_a_bad_window(window: str) -> None:
    with pytest.raises(Exception, match=r"window|time of day"):
        fd.deploy_in_window("03:00", window)


def facts(**kw: Any) -> dict[str, Any]:
    return {"deploy_reachable": True, "deploy_needed": True, "deploy_outcome": "pending", **kw}


HOSTVARS = {
    "app1": facts(deploy_outcome="deployed", deploy_before="1.0.0"),
    "app2": facts(
        deploy_outcome="failed",
        deploy_error="Health gate failed",
        deploy_before="1.0.0",
        deploy_rolled_back_to="1.0.0",
    ),
    "app3": facts(deploy_before="1.0.0"),  # never switched: the rollout stopped first
    "app4": facts(deploy_needed=False),  # already served the version
    "app5": facts(deploy_reachable=False, deploy_error="unreachable: ssh: connect refused"),
    "app6": {},  # never reached at all
}


def test_host_states_give_every_host_one_outcome() -> None:
    states = fd.deploy_host_states(HOSTVARS, list(HOSTVARS))
    assert {h: s["outcome"] for h, s in states.items()} == {
        "app1": "deployed",
        "app2": "failed",
        "app3": "untouched",
        "app4": "unchanged",
        "app5": "unreachable",
        "app6": "unreachable",
    }
    assert fd.deploy_install_problems(states) == [
        "app2: Health gate failed",
        "app5: unreachable: ssh: connect refused",
        "app6: unreachable: the host was not reached",
    ]


def test_batch_failed_counts_failures_and_hosts_gone_against_the_percentage() -> None:
    states = fd.deploy_host_states(HOSTVARS, list(HOSTVARS))
    batch = ["app1", "app2", "app3", "app4"]
    assert fd.deploy_batch_failed(states, batch, batch, 0) == ["app2"]
    assert fd.deploy_batch_failed(states, batch, batch, 25) == []  # 1 of 4 is 25%: tolerated
    # A host Ansible dropped from the batch (unreachable) counts as failed.
    assert fd.deploy_batch_failed(states, batch, ["app1", "app2", "app4"], 25) == ["app2", "app3"]
    assert fd.deploy_batch_failed(states, ["app1", "app4"], ["app1", "app4"], 0) == []


def test_summary_status_and_lines() -> None:
    states = fd.deploy_host_states(HOSTVARS, ["app1", "app4"])
    ok = fd.deploy_summary(states, "", False, "2.0.0", "2.0.0-x")
    assert ok["status"] == "succeeded" and ok["ok"] is True
    assert ok["lines"] == [
        "app1: deployed, serving 2.0.0 (release 2.0.0-x)",
        "app4: unchanged, already serving 2.0.0",
    ]
    unchanged = fd.deploy_summary(fd.deploy_host_states(HOSTVARS, ["app4"]), "", False)
    assert unchanged["status"] == "unchanged" and unchanged["ok"] is True
    states = fd.deploy_host_states(HOSTVARS, ["app1", "app2", "app3"])
    stopped = fd.deploy_summary(states, "", True, "2.0.0", "2.0.0-x")
    assert stopped["status"] == "rolled_back" and stopped["ok"] is False
    assert stopped["failed"] == ["app2"] and stopped["untouched"] == ["app3"]
    assert "app2: failed, back on release 1.0.0 - Health gate failed" in stopped["lines"]
    assert "app3: untouched, still on release 1.0.0" in stopped["lines"]
    aborted = fd.deploy_summary(states, "not installed on app5", False)
    assert aborted["status"] == "aborted"


def test_gate_targets() -> None:
    hostvars = {
        "a": {"app_base_url": "http://a:8080", "deploy_switched": True, "r": {"v": "1.0"}},
        "b": {"app_base_url": "http://b:8080", "r": {"v": "0.9"}},
    }
    assert fd.deploy_gate_targets(["a", "b"], hostvars, "2.0", only_if="deploy_switched") == [
        {"name": "a", "base_url": "http://a:8080", "version": "2.0"}
    ]
    assert fd.deploy_gate_targets(["a", "b"], hostvars, None, version_var="r.v") == [
        {"name": "a", "base_url": "http://a:8080", "version": "1.0"},
        {"name": "b", "base_url": "http://b:8080", "version": "0.9"},
    ]
    hostvars["b"]["deploy_switched"] = True
    hostvars["a"]["deploy_switch_failed"] = True  # rolled back already: not waited for
    assert fd.deploy_gate_targets(
        ["a", "b"], hostvars, "2.0", only_if="deploy_switched", unless="deploy_switch_failed"
    ) == [{"name": "b", "base_url": "http://b:8080", "version": "2.0"}]


# --------------------------------------------------------------------------- rollback


def release(rid: str, version: str, status: str = "good", current: bool = False) -> dict:
    return {"release_id": rid, "version": version, "status": status, "current": current}


def test_rollback_target_missing_lists_what_each_host_holds() -> None:
    same = {"releases": [release("1.0.0-a", "1.0.0"), release("2.0.0-b", "2.0.0", current=True)]}
    hostvars = {
        "app1": {"deploy_rollback_info": same},
        "app2": {"deploy_rollback_info": same},
        "app3": {"deploy_rollback_info": {"releases": [release("1.0.0-a", "1.0.0")]}},
        "down": {"deploy_rollback_info": {"unreachable": True, "msg": "ssh: timeout"}},
        "limited": {},
    }
    hosts = list(hostvars)
    assert fd.rollback_target_missing(hostvars, hosts, "1.0.0") == []
    assert fd.rollback_target_missing(hostvars, hosts, "1.0.0-a") == []
    assert fd.rollback_target_missing(hostvars, hosts, "2.0.0-b") == [
        "app3 (releases there: 1.0.0-a (1.0.0, good))"
    ]
    assert fd.rollback_target_missing(hostvars, hosts, "9.9.9") == [
        "app1, app2 (releases there: 1.0.0-a (1.0.0, good), 2.0.0-b (2.0.0, good, current))",
        "app3 (releases there: 1.0.0-a (1.0.0, good))",
    ]


def rolled(host: str, changed: bool = True, **kw: Any) -> dict[str, Any]:
    switch = {"changed": changed, "from": "2.0.0-b", "to": "1.0.0-a", "current_version": "1.0.0"}
    return {"app_base_url": f"http://{host}:8080", fd.ROLLBACK_SWITCH: {**switch, **kw}}


def test_rollback_gate_targets_only_hosts_switched_and_restarted() -> None:
    hostvars = {
        "app1": rolled("app1"),
        "app2": rolled("app2", changed=False),
        "app3": {**rolled("app3"), "deploy_rollback_error": "restart failed"},
        "app4": rolled("app4", unreachable=True),
        "app5": {**rolled("app5"), "app_service_result": {"unreachable": True}},
        "app6": {},
    }
    targets = fd.rollback_gate_targets(hostvars, list(hostvars))
    assert targets == [
        {"name": "app1", "base_url": "http://app1:8080", "version": "1.0.0"},
        {"name": "app2", "base_url": "http://app2:8080", "version": "1.0.0"},
    ]
    # nothing moved in check mode: no gate (the app as it is now is not the rollback's result)
    assert fd.rollback_gate_targets(hostvars, ["app1"], check_mode=True) == []


def test_rollback_host_states_from_what_each_host_registered() -> None:
    gate = {"by_host": {"app1": {"ok": True}, "app2": {"ok": False, "problems": ["/health: 500"]}}}
    hostvars = {
        "app1": {**rolled("app1"), "deploy_rollback_gate": gate},
        "app2": {**rolled("app2"), "deploy_rollback_gate": gate},
        "app3": {
            **rolled("app3", failed=True, msg="no good release"),
            "deploy_rollback_error": "x",
        },
        "app4": rolled("app4", unreachable=True, msg="ssh: refused "),
        "app5": {**rolled("app5", changed=False), "deploy_rollback_gate_error": "gate crashed"},
        "app6": {},
    }
    states = fd.rollback_host_states(hostvars, list(hostvars))
    assert {h: s["outcome"] for h, s in states.items()} == {
        "app1": "rolled_back",
        "app2": "failed",
        "app3": "failed",
        "app4": "unreachable",
        "app5": "failed",
        "app6": "unreachable",
    }
    assert states["app1"] == {
        "outcome": "rolled_back", "from": "2.0.0-b", "to": "1.0.0-a", "to_version": "1.0.0",
        "error": "",
    }  # fmt: skip
    assert states["app2"]["error"] == "health gate: /health: 500"
    assert states["app4"]["error"] == (
        "state unknown (it may or may not have been rolled back; look at it once it answers) - "
        "unreachable: ssh: refused"
    )
    assert states["app5"]["error"] == "health gate: gate crashed"
    assert states["app6"]["error"] == "the host was not reached"
    summary = fd.rollback_summary(states)
    assert summary["ok"] is False
    assert summary["releases"] == ["1.0.0-a"] and summary["versions"] == ["1.0.0"]
    assert summary["lines"][0] == "app1: rolled_back from 2.0.0-b to 1.0.0-a (1.0.0)"
    good = fd.rollback_summary({h: states[h] for h in ("app1",)})
    assert good["ok"] is True
