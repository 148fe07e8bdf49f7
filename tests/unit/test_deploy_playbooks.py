"""deploy.yml and rollback.yml, read as data: once the deploy lock is taken, no play can end
the run before the report play releases it. The plays import roles/deploy's entry points: a
play's tasks are read with those imports (and the role's include_tasks) expanded.

Ansible stops a playbook when every host of a play (or of a serial batch) failed, and a failed
host takes no part in later plays: a failure after the lock that is not rescued would leave
the lock held for its whole TTL. So after the lock every task is a block with a rescue (or an
always), a read that cannot fail (failed_when: false), a meta task, or an include of a file
made only of such tasks; the report play releases the lock in an always before its final
checks fail the run. The integration tests (tests/integration/test_deploy.py) run the paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.loaders import PROJECT_ROOT

PLAYBOOKS = PROJECT_ROOT / "playbooks"
DEPLOY_TASKS = PROJECT_ROOT / "roles" / "deploy" / "tasks"


def expand(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tasks with every import of a roles/deploy entry point replaced by its tasks."""
    found = []
    for task in tasks or []:
        call = role_call(task)
        if call and call[0] == "opsbook.runbooks.deploy" and "ansible.builtin.import_role" in task:
            found += expand(yaml.safe_load((DEPLOY_TASKS / f"{call[1]}.yml").read_text()))
        else:
            found.append(task)
    return found


def runbook_plays(name: str) -> list[dict[str, Any]]:
    """The plays of playbooks/<name>.yml, without the import of _vault.yml (the vault file read
    at job time) every runbook starts with."""
    plays = yaml.safe_load((PLAYBOOKS / f"{name}.yml").read_text())
    return [p for p in plays if p.get("ansible.builtin.import_playbook") != "_vault.yml"]


def play_tasks(play: dict[str, Any]) -> list[dict[str, Any]]:
    return expand(play["tasks"])


def role_call(task: dict[str, Any]) -> tuple[str, str] | None:
    for key in ("ansible.builtin.import_role", "ansible.builtin.include_role"):
        if key in task:
            return task[key]["name"], task[key].get("tasks_from", "main")
    return None


def walk(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every task, blocks and their rescue/always included, and the tasks of the role's own
    include_tasks files."""
    found = []
    for task in tasks or []:
        found.append(task)
        for part in ("block", "rescue", "always"):
            found += walk(task.get(part) or [])
        include = task.get("ansible.builtin.include_tasks")
        if include and (DEPLOY_TASKS / include).is_file():
            found += walk(yaml.safe_load((DEPLOY_TASKS / include).read_text()))
    return found


def calls(tasks: list[dict[str, Any]], role: tuple[str, str]) -> bool:
    return any(role_call(t) == role for t in walk(tasks))


def safe(task: dict[str, Any], base: Path) -> bool:
    """The task cannot fail its host."""
    if "block" in task:
        return bool(task.get("rescue") or task.get("always"))
    if task.get("failed_when") is False:
        return True
    if "ansible.builtin.meta" in task:
        return True
    include = task.get("ansible.builtin.include_tasks")
    if include:
        included = yaml.safe_load((base / include).read_text())
        return all(safe(t, base) for t in included)
    return False


ACQUIRE = ("opsbook.runbooks.deploy_lock", "acquire")
RELEASE = ("opsbook.runbooks.deploy_lock", "release")


@pytest.mark.parametrize("name", ["deploy", "rollback"])
def test_after_the_lock_no_play_can_end_the_run_before_it_is_released(name: str) -> None:
    plays = runbook_plays(name)
    lock_play = next(i for i, p in enumerate(plays) if calls(play_tasks(p), ACQUIRE))
    tasks = play_tasks(plays[lock_play])
    holder = next(i for i, t in enumerate(tasks) if calls([t], ACQUIRE))
    if holder < len(tasks) - 1:  # tasks follow the lock in its play: its rescue releases it
        assert "block" in tasks[holder] and calls(tasks[holder]["rescue"], RELEASE), name
    later, report = plays[lock_play + 1 : -1], plays[-1]
    assert later, name
    for play in later:
        assert not play.get("any_errors_fatal"), play["name"]
        for task in play_tasks(play):
            assert safe(task, DEPLOY_TASKS), f"{name}: {play['name']}: {task['name']}"
    first, *rest = play_tasks(report)
    assert calls(first.get("always") or [], RELEASE), f"{name}: the report releases in always"
    assert all("ansible.builtin.fail" in t for t in rest), f"{name}: only the verdict follows"


def test_the_safety_rule_catches_an_unrescued_task() -> None:
    assert not safe({"name": "x", "ansible.builtin.set_fact": {"a": 1}}, DEPLOY_TASKS)
    assert not safe({"name": "x", "block": [{"name": "y"}]}, DEPLOY_TASKS)
    assert safe({"name": "x", "block": [{"name": "y"}], "rescue": [{"name": "z"}]}, DEPLOY_TASKS)
    include = {"name": "x", "ansible.builtin.include_tasks": "lock_release.yml"}
    assert not safe(include, DEPLOY_TASKS)  # an import_role with no rescue


def test_the_plays_import_the_deploy_roles_entry_points() -> None:
    """Thin playbooks: every deploy play, and rollback.yml's non-database ones, is one import
    of a roles/deploy entry point; the expansion reads the role's tasks."""
    for name in ("deploy", "rollback"):
        for play in runbook_plays(name):
            if name == "rollback" and "database" in play["name"]:
                continue
            assert len(play["tasks"]) == 1
            assert role_call(play["tasks"][0])[0] == "opsbook.runbooks.deploy"
            assert play_tasks(play) != play["tasks"]
