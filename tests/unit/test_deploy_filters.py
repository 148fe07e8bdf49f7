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
