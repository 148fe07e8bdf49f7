"""pg_role_password against the lab's PostgreSQL (scram-sha-256 everywhere), through
ansible-playbook at -vvvv: one playbook walks a rotation of dedicated roles, the tests read
its results, the roles left behind, the output and the server's log.

The scenario, in order: set in check mode (the old password still logs in), set (the old
password is refused with 28P01, the new one logs in), the same set again through a module
process (changed=false), a login to a closed port (failed, never "proven dead"),
ensure_role without CREATEROLE (refused, nothing changed), in check mode, for real and again,
retire of the admin's own role (refused), retire in check mode, for real and again. The roles
log every statement (log_statement=all), so the server's log shows what reached it: SCRAM
verifiers, never the canary passwords.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from opsbook.lab import PostgresCluster
from tests.harness import VENV_BIN, ansible_env, run_ansible
from tests.integration.canaries import leaks

pytestmark = pytest.mark.integration

MODULE_PROCESS = {"OPSBOOK_TEST_MODULE_PROCESS": "1"}  # `environment`: an AnsiballZ module run


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Scenario:
    roles: dict[str, str]
    canaries: list[str]
    results: dict[str, dict[str, Any]]
    output: str
    oplog: str
    server_log: str
    catalog: dict[str, Any]


def task(name: str, args: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"name": name, "opsbook.runbooks.pg_role_password": args, "register": name, **options}


def login(login_dsn: str, **args: Any) -> dict[str, Any]:
    """Arguments of a login with ``login_dsn`` (the dsn, the admin's, is not used by it)."""
    return {"action": "login", "dsn": "{{ adm_dsn }}", "login_dsn": login_dsn, **args}


def tasks() -> list[dict[str, Any]]:
    a, b, adm = "{{ role_a }}", "{{ role_b }}", "{{ role_adm }}"
    new_a = "{{ a_dsn | opsbook.runbooks.dsn_with_credentials(new_password) }}"
    twin = "{{ kv_dsn | opsbook.runbooks.dsn_with_credentials(twin_password, role_b) }}"
    closed = "{{ closed_dsn | opsbook.runbooks.dsn_with_credentials(new_password) }}"
    ensure = {"action": "ensure_role", "dsn": "{{ adm_dsn }}", "role": b, "like": a}
    ensure["password"] = "{{ twin_password }}"
    retire = {"action": "retire", "dsn": "{{ adm_dsn }}", "role": a}
    retire.update(password="{{ new_password }}", nologin=True)
    set_a = {"action": "set", "dsn": "{{ a_dsn }}", "password": "{{ new_password }}"}
    return [
        task("set_check", set_a, check_mode=True),
        task("old_still", {"action": "login", "dsn": "{{ a_dsn }}"}),  # dsn: the login
        task("set", set_a),
        task(
            "set_again",
            {"action": "set", "dsn": new_a, "role": a, "password": "{{ new_password }}"},
            environment=MODULE_PROCESS,
        ),
        task("old_dead", {"action": "login", "dsn": "{{ a_dsn }}", "expect": "failure"}),
        task("new_ok", login(new_a)),
        task("closed", login(closed, expect="failure"), ignore_errors=True),
        task(
            "ensure_denied",
            {**ensure, "dsn": new_a},
            environment=MODULE_PROCESS,
            ignore_errors=True,
        ),
        task("ensure_check", ensure, check_mode=True),
        task("twin_absent", login(twin, expect="failure")),
        task("ensure", ensure),
        task("ensure_again", ensure),
        task("twin_ok", login(twin)),
        task("retire_self", {**retire, "role": adm}, ignore_errors=True),
        task("retire_check", retire, check_mode=True),
        task("new_still", login(new_a)),
        task("retire", retire),
        task("retire_again", retire),
        task("a_dead", login(new_a, expect="failure")),
    ]


RESULTS = [t["register"] for t in tasks()]


@pytest.fixture(scope="module")
def scenario(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    work = tmp_path_factory.mktemp("pg_role_password")
    tag = uuid.uuid4().hex[:8]
    roles = {k: f"rp_{tag}_{k}" for k in ("a", "b", "grp", "adm")}
    old, admin_pw = f"old-{tag}-pw", f"adm-{tag}-pw"
    new = f"CANARY-{tag}-n3w p@ss'w\\rd%"
    twin = f"CANARY2-{tag}-tw!n:/?"
    where = f"{pg.host}:{pg.port}/postgres"
    pg.execute(
        f"CREATE ROLE {roles['grp']} NOLOGIN; "
        f"CREATE ROLE {roles['a']} LOGIN PASSWORD '{old}'; "
        f"GRANT {roles['grp']} TO {roles['a']}; "
        f"ALTER ROLE {roles['a']} SET log_statement = 'all'; "
        f"CREATE ROLE {roles['adm']} LOGIN CREATEROLE PASSWORD '{admin_pw}'; "
        f"ALTER ROLE {roles['adm']} SET log_statement = 'all'"
    )
    log_start = pg.log_file.stat().st_size
    extravars = {
        "role_a": roles["a"],
        "role_b": roles["b"],
        "role_adm": roles["adm"],
        "a_dsn": f"postgresql://{roles['a']}:{old}@{where}?sslmode=disable",
        "adm_dsn": f"postgresql://{roles['adm']}:{admin_pw}@{where}",
        "kv_dsn": f"host={pg.host} port={pg.port} dbname=postgres user={roles['a']} sslmode=allow",
        "closed_dsn": f"postgresql://{roles['a']}@127.0.0.1:{closed_port()}/postgres",
        "new_password": new,
        "twin_password": twin,
    }
    result_file = work / "results.json"
    save = {
        "name": "save",
        "ansible.builtin.copy": {
            "content": "{{ {" + ", ".join(f"'{r}': {r}" for r in RESULTS) + "} | to_json }}",
            "dest": str(result_file),
            "mode": "0600",
        },
        "check_mode": False,
    }
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [*tasks(), save]}]
    playbook = work / "rotate.yml"
    playbook.write_text(json.dumps(play, indent=1))
    (work / "vars.json").write_text(json.dumps(extravars))
    try:
        proc = run_ansible(
            [str(playbook), "-i", "localhost,", "-c", "local", "-vvvv",
             "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}",
             "-e", f"@{work / 'vars.json'}"],
            env=ansible_env(work / "oplog.jsonl"),
            timeout=300,
            tool="ansible-playbook",
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        with pg.log_file.open("rb") as log:
            log.seek(log_start)
            server_log = log.read().decode("utf-8", "replace")
        catalog = {
            name: pg.execute(
                "SELECT r.rolcanlogin, r.rolpassword IS NULL, "
                "ARRAY(SELECT g.rolname FROM pg_auth_members m "
                "      JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) "
                "FROM pg_authid r WHERE r.rolname = %s",
                params=(name,),
            )
            for name in roles.values()
        }
        yield Scenario(
            roles=roles,
            canaries=[new, twin],
            results=json.loads(result_file.read_text()),
            output=output,
            oplog=(work / "oplog.jsonl").read_text() if (work / "oplog.jsonl").exists() else "",
            server_log=server_log,
            catalog=catalog,
        )
    finally:
        for name in (roles["b"], roles["a"], roles["adm"], roles["grp"]):
            pg.execute(f"DROP ROLE IF EXISTS {name}")


def test_set_in_check_mode_changes_nothing(scenario: Scenario) -> None:
    r = scenario.results
    assert r["set_check"]["changed"] is True
    assert r["set_check"]["msg"].startswith(
        f"would set the password of role '{scenario.roles['a']}'"
    )
    assert r["old_still"]["ok"] is True  # the old password still logs in after --check


def test_set_then_the_old_password_is_refused_and_the_new_one_logs_in(scenario: Scenario) -> None:
    r, a = scenario.results, scenario.roles["a"]
    assert (r["set"]["changed"], r["set"]["password_changed"], r["set"]["role"]) == (True, True, a)
    assert "a login with the password first: refused" in r["set"]["msg"]
    assert (r["old_dead"]["ok"], r["old_dead"]["sqlstate"]) == (False, "28P01")
    assert r["old_dead"]["msg"].endswith(
        "refused: the server rejected the password (SQLSTATE 28P01)"
    )
    assert (r["new_ok"]["ok"], r["new_ok"]["current_user"], r["new_ok"]["sqlstate"]) == (
        True,
        a,
        None,
    )


def test_set_again_through_a_module_process_changes_nothing(scenario: Scenario) -> None:
    again = scenario.results["set_again"]
    assert (again["changed"], again["password_changed"]) == (False, False)
    assert (
        again["msg"]
        == f"role '{scenario.roles['a']}' already has this password (a login with it works)"
    )


def test_a_closed_port_is_never_proof_of_a_dead_password(scenario: Scenario) -> None:
    closed = scenario.results["closed"]
    assert closed["failed"] is True
    assert (closed["ok"], closed["sqlstate"]) == (False, None)
    assert "not because the server refused the password" in closed["msg"]
    assert "Connection refused" in closed["msg"]


def test_ensure_role_needs_createrole_and_then_changes_nothing(scenario: Scenario) -> None:
    denied = scenario.results["ensure_denied"]
    assert denied["failed"] is True and denied["changed"] is False
    assert f"the dsn's role '{scenario.roles['a']}' lacks CREATEROLE" in denied["msg"]
    assert denied["msg"].endswith("nothing was changed")


def test_ensure_role_creates_the_twin_with_the_memberships(scenario: Scenario) -> None:
    r, roles = scenario.results, scenario.roles
    assert r["ensure_check"]["changed"] is True and r["ensure_check"]["created"] is True
    assert r["twin_absent"]["sqlstate"] == "28P01"  # check mode created no role
    ensure = r["ensure"]
    assert (ensure["changed"], ensure["created"], ensure["password_changed"]) == (True, True, True)
    assert ensure["granted"] == [roles["grp"]]
    assert ensure["diff"]["after"]["member_of"] == [roles["grp"]]
    assert (r["ensure_again"]["changed"], r["ensure_again"]["granted"]) == (False, [])
    assert (r["twin_ok"]["ok"], r["twin_ok"]["current_user"]) == (True, roles["b"])
    login, no_password, member_of = scenario.catalog[roles["b"]][0]
    assert (login, no_password, member_of) == (True, False, [roles["grp"]])


def test_retire_refuses_the_admins_own_role(scenario: Scenario) -> None:
    refused = scenario.results["retire_self"]
    assert refused["failed"] is True and refused["changed"] is False
    assert "is the role the dsn logs in as" in refused["msg"]
    assert scenario.catalog[scenario.roles["adm"]][0][:2] == (True, False)


def test_retire_removes_the_password_and_login(scenario: Scenario) -> None:
    r, a = scenario.results, scenario.roles["a"]
    assert r["retire_check"]["changed"] is True and r["new_still"]["ok"] is True
    retired = r["retire"]
    assert (retired["changed"], retired["password_removed"], retired["login_disabled"]) == (
        True,
        True,
        True,
    )
    assert retired["diff"]["before"]["password"] == "set"  # proven by a login: no superuser
    assert r["retire_again"]["changed"] is False
    assert (r["a_dead"]["ok"], r["a_dead"]["sqlstate"]) == (False, "28P01")
    assert scenario.catalog[a][0][:2] == (False, True)  # NOLOGIN, rolpassword NULL


def test_no_password_reaches_the_output_the_results_or_the_server(scenario: Scenario) -> None:
    assert "<localhost> ESTABLISH LOCAL CONNECTION" in scenario.output  # -vvvv it was
    assert "PASSWORD 'SCRAM-SHA-256$" in scenario.server_log  # the statements were logged
    assert f'CREATE ROLE "{scenario.roles["b"]}" LOGIN PASSWORD \'SCRAM-SHA-256$' in (
        scenario.server_log
    )
    found = leaks(
        scenario.canaries,
        texts={
            "ansible-playbook -vvvv": scenario.output,
            "results": json.dumps(scenario.results),
            "operation log": scenario.oplog,
            "server log": scenario.server_log,
        },
    )
    assert found == {}
    assert "SCRAM-SHA-256$" not in json.dumps(scenario.results) + scenario.output
