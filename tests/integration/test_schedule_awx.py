"""playbooks/awx_setup.yml against an AWX API stand-in (tests/awx_standin.py), with the awx.awx
collection scripts/setup.sh fetched.

AWX holds what an older schedules.yml made: the project on another branch, the inventory, the
backup job template, the nightly backup at 01:00 and a schedule the file no longer has - and a
schedule a person made and one of another environment, which must be left alone. Three runs,
in order, shared by the tests below:
  check   --check: it says what it would change and writes nothing (no POST, PATCH or DELETE)
  apply   the project updated, the inventory's source, the restore drill's job template and
          schedule made, the nightly backup's rrule updated, the stale schedule removed
  again   the same again: nothing changes, nothing is written
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from opsbook._schedules import owner_mark
from tests.awx_standin import AwxStandin, Request, project_files
from tests.harness import ansible_env, run_ansible
from tests.integration.stats_helper import StatsRun, stats_env
from tests.loaders import PROJECT_ROOT

pytestmark = pytest.mark.integration

TOKEN = "awx-token-0123456789abcdef"
SCM_URL = "https://git.example.com/ops/opsbook.git"
ENTRIES = [
    {
        "name": "nightly-backup",
        "runbook": "backup",
        "cron": "0 2 * * *",
        "envs": ["staging", "production"],
        "reason": "nightly backup",
        "timeout": 3600,
    },
    {
        "name": "quarterly-restore-drill",
        "runbook": "restore_drill",
        "cron": "0 4 1 1,4,7,10 *",
        "envs": ["staging"],
        "reason": "quarterly restore drill",
        "timeout": 14400,
        "extra_vars": {"restore_drill_max_rpo_s": 93600},
    },
]
START = "DTSTART;TZID=UTC:20250101T000000 RRULE:"
RRULES = {
    "opsbook-staging-nightly-backup": f"{START}FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=0",
    "opsbook-staging-quarterly-restore-drill": f"{START}FREQ=MONTHLY;INTERVAL=1;"
    "BYMONTH=1,4,7,10;BYMONTHDAY=1;BYHOUR=4;BYMINUTE=0",
}
MADE_BY = "(made by playbooks/awx_setup.yml"
LOCALHOST = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}


@dataclass
class Run:
    result: StatsRun
    writes: list[Request]
    oplog: str

    @property
    def awx_setup(self) -> dict[str, Any]:
        return dict(self.result.stats["awx_setup"])

    @property
    def changed(self) -> int:
        return sum(host["changed"] for host in self.result.hosts.values())


def seed(standin: AwxStandin) -> None:
    """What an older schedules.yml made, a person's schedule and another environment's."""
    standin.add("credentials", name="opsbook vault", kind="vault")
    standin.add("credentials", name="app hosts", kind="ssh")
    org = standin.named("organizations", "Default")["id"]
    project = standin.add(
        "projects",
        name="opsbook",
        organization=org,
        scm_type="git",
        scm_url=SCM_URL,
        scm_branch="master",
        scm_update_on_launch=True,
        description=f"opsbook runbooks {MADE_BY})",
    )["id"]
    inventory = standin.add(
        "inventories",
        name="opsbook-staging",
        organization=org,
        description=f"opsbook staging {MADE_BY})",
    )["id"]
    backup = standin.add(
        "job_templates",
        name="opsbook-staging-backup",
        organization=org,
        project=project,
        inventory=inventory,
        playbook="playbooks/backup.yml",
        ask_variables_on_launch=True,
        ask_timeout_on_launch=True,
        description=f"opsbook runbook backup on staging {MADE_BY} from schedules.yml)",
    )["id"]
    mark = owner_mark("staging")
    old = {
        "unified_job_template": backup,
        "timeout": 3600,
        "rrule": f"{START}FREQ=DAILY;INTERVAL=1;BYHOUR=1;BYMINUTE=0",
    }
    standin.add(
        "schedules",
        name="opsbook-staging-nightly-backup",
        **old,
        extra_data={"opsbook_reason": "nightly backup"},
        description=f"nightly backup; cron 0 1 * * * UTC, from schedules.yml {mark}",
    )
    standin.add(
        "schedules",
        name="opsbook-staging-weekly-backup",
        **old,
        description=f"gone from the file {mark}",
    )
    standin.add("schedules", name="opsbook-staging-by-hand", **old, description="a person's")
    standin.add(
        "schedules",
        name="opsbook-staging-eu-nightly-backup",
        **old,
        description=f"another environment's {owner_mark('staging-eu')}",
    )


@pytest.fixture(scope="module")
def awx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AwxStandin, dict[str, Run]]]:
    tmp = tmp_path_factory.mktemp("awx_setup")
    standin = AwxStandin(TOKEN, project_files(PROJECT_ROOT))
    seed(standin)
    inventory = tmp / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"hosts": {"localhost": LOCALHOST}}})
    )
    (inventory / "group_vars" / "all" / "vars.yml").write_text("opsbook_env: staging\n")
    schedules = tmp / "schedules.yml"
    schedules.write_text(yaml.safe_dump({"schedules": ENTRIES}))
    extravars = tmp / "extravars.json"  # in a file: the token is never on a command line
    extravars.write_text(
        json.dumps(
            {
                "awx_setup_controller_host": standin.url,
                "awx_setup_controller_oauthtoken": TOKEN,
                "awx_setup_scm_url": SCM_URL,
                "awx_setup_schedules_file": str(schedules),
                "awx_setup_credentials": ["opsbook vault", "app hosts"],
            }
        )
    )
    runs: dict[str, Run] = {}
    try:
        for name, check in (("check", True), ("apply", False), ("again", False)):
            cb_env, stats_file = stats_env(tmp)
            oplog = tmp / f"oplog-{name}.jsonl"
            argv = ["playbooks/awx_setup.yml", "-i", str(inventory / "hosts.yml")]
            argv += ["-e", f"@{extravars}", *(["--check"] if check else [])]
            standin.requests.clear()
            proc = run_ansible(argv, env=ansible_env(oplog, cb_env), tool="ansible-playbook")
            assert stats_file.exists(), proc.stdout + proc.stderr
            result = StatsRun(
                proc.returncode, proc.stdout, proc.stderr, json.loads(stats_file.read_text())
            )
            assert result.rc == 0, f"{name}: {result.output}"
            runs[name] = Run(result, standin.writes(), oplog.read_text())
        yield standin, runs
    finally:
        standin.close()


def test_check_mode_writes_nothing_and_says_what_it_would_change(
    awx: tuple[AwxStandin, dict[str, Run]],
) -> None:
    _standin, runs = awx
    check = runs["check"]
    assert check.writes == []
    assert check.awx_setup["changed"]["project"] is True  # the branch would change
    assert check.awx_setup["changed"]["job_templates"] == [
        "opsbook-staging-backup",  # its credentials
        "opsbook-staging-restore_drill",  # made
    ]
    assert check.awx_setup["changed"]["schedules"] == [
        "opsbook-staging-nightly-backup",  # its rrule
        "opsbook-staging-quarterly-restore-drill",  # made, once its job template is
    ]
    assert check.awx_setup["removed"] == ["opsbook-staging-weekly-backup"]
    assert check.awx_setup["schedules"] == RRULES
    assert "(check mode: nothing was changed)" in check.awx_setup["summary"][0]


def test_apply_makes_what_the_file_says_and_removes_only_opsbook_s_stale_schedule(
    awx: tuple[AwxStandin, dict[str, Run]],
) -> None:
    standin, runs = awx
    apply = runs["apply"]
    nightly = standin.named("schedules", "opsbook-staging-nightly-backup")
    drill_template = standin.named("job_templates", "opsbook-staging-restore_drill")
    project = standin.named("projects", "opsbook")
    writes = sorted((r.method, r.path) for r in apply.writes)
    assert [w for w in writes if "credentials" not in w[1]] == sorted(
        [
            ("PATCH", f"/api/v2/projects/{project['id']}/"),
            ("POST", "/api/v2/inventory_sources/"),
            ("POST", "/api/v2/job_templates/"),
            ("PATCH", f"/api/v2/schedules/{nightly['id']}/"),
            ("POST", "/api/v2/schedules/"),
            ("DELETE", next(r.path for r in apply.writes if r.method == "DELETE")),
        ]
    )
    assert len([w for w in writes if w[1].endswith("/credentials/")]) == 4  # 2 templates x 2
    assert (project["scm_type"], project["scm_url"]) == ("git", SCM_URL)
    assert project["scm_branch"] == "main"
    inventory = standin.named("inventories", "opsbook-staging")
    source = standin.named("inventory_sources", "opsbook-staging")
    assert (source["inventory"], source["source"], source["source_project"]) == (
        inventory["id"],
        "scm",
        project["id"],
    )
    assert source["source_path"] == "inventories/staging/hosts.yml"
    assert source["update_on_launch"] is True and source["overwrite"] is True
    for runbook in ("backup", "restore_drill"):
        template = standin.named("job_templates", f"opsbook-staging-{runbook}")
        assert template["playbook"] == f"playbooks/{runbook}.yml"
        assert (template["project"], template["inventory"]) == (project["id"], inventory["id"])
        assert template["ask_variables_on_launch"] and template["ask_timeout_on_launch"]
        assert standin.credentials_of(template["name"]) == ["app hosts", "opsbook vault"]
    drill = standin.named("schedules", "opsbook-staging-quarterly-restore-drill")
    assert {s["name"]: s["rrule"] for s in (nightly, drill)} == RRULES
    assert drill["unified_job_template"] == drill_template["id"]
    assert drill["extra_data"] == {
        "opsbook_reason": "quarterly restore drill",
        "restore_drill_max_rpo_s": 93600,
    }
    assert (drill["timeout"], drill["enabled"]) == (14400, True)
    assert drill["description"].endswith(owner_mark("staging"))
    assert drill["next_run"]  # AWX (dateutil) reads the rule: it fires again
    assert standin.names("schedules") == [
        "opsbook-staging-by-hand",
        "opsbook-staging-eu-nightly-backup",
        "opsbook-staging-nightly-backup",
        "opsbook-staging-quarterly-restore-drill",
    ]
    assert apply.awx_setup["removed"] == ["opsbook-staging-weekly-backup"]
    assert apply.awx_setup["summary"][0].endswith("2 schedule(s) (2 changed), 1 removed")
    # the token went in an extra-vars file: it is printed and recorded nowhere
    for run in runs.values():
        assert TOKEN not in run.result.output
        assert TOKEN not in run.oplog
    assert "opsbook-staging-quarterly-restore-drill" in apply.oplog  # recorded, with its outputs


def test_a_second_run_changes_nothing(awx: tuple[AwxStandin, dict[str, Run]]) -> None:
    _standin, runs = awx
    again = runs["again"]
    assert again.writes == []
    assert again.changed == 0
    assert again.awx_setup["removed"] == []
    assert again.awx_setup["changed"] == {
        "project": False,
        "inventory": False,
        "job_templates": [],
        "schedules": [],
    }
