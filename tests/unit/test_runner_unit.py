"""Unit tests of the runner's pure parts: secret scrubbing, project discovery,
environment allow-list, input validation, status mapping, event folding and
the runner callbacks (no Ansible is run here)."""

from __future__ import annotations

import json
import os
import stat
import time
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest

from opsbook import project as proj
from opsbook import runner as rn
from opsbook.exitcodes import OpsbookInputError
from opsbook.secrets import (
    REDACTED,
    Scrubber,
    dsn_passwords,
    is_secret_name,
    secret_forms,
    secrets_in_env,
    secrets_in_inventory,
    secrets_in_vars,
)

REPO = Path(__file__).resolve().parents[2]


# --- secrets: what is secret ---------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "password", "db_passwd", "DB_PASSWORD", "api_key", "apikey", "ApiKey", "stripe_secret",
        "github_token", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD", "dsn",
        "database_url", "credentials", "private_key", "ansible_become_pass", "ssh_key",
        "vault_app_api_key", "passphrase", "opsbook_notify_webhook_url", "slack_token",
        "sendgrid_api_key", "client_secret",
    ],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "monkey", "keyboard", "hosts", "ansible_ssh_private_key_file", "AWS_ACCESS_KEY_ID",
        "ANSIBLE_VAULT_PASSWORD_FILE", "token_ttl", "pg_secure_logging", "backup_storage_url",
        "app_base_url", "passenger", "compass",
        "key", "lock_key",  # S3 object keys in opsbook: a plain *_key is not a secret name
    ],
)  # fmt: skip
def test_not_secret_names(name: str) -> None:
    assert not is_secret_name(name)


def test_dsn_passwords() -> None:
    assert dsn_passwords("postgresql://app:s3cret@db:5432/app") == {"s3cret"}
    assert dsn_passwords("see postgres://u:p%40ss@h/db and s3://k:v-value@bucket") == {
        "p%40ss",
        "p@ss",
        "v-value",
    }
    assert dsn_passwords("host=db user=app password='two words' dbname=x") == {
        "'two words'",
        "two words",
    }
    assert dsn_passwords("http://127.0.0.1:8080/health") == set()
    assert dsn_passwords("postgresql://app:********@db/app") == set()


def test_secrets_in_vars() -> None:
    data = {
        "database_url": "postgresql://app:pw-123@db/app",
        "backup_storage_url": "s3://AKIA:sk-98765@bucket/prefix",
        "db": {"password": "nested-pw", "port": 5432},
        "tokens": ["tok-aaaa", "tok-bbbb"],
        "pin_code_secret": 123456,
        "api_key": "{{ vault_api_key }}",  # a template, not the secret
        "short_token": "abc",  # too short to redact safely
        "enabled": True,
        "name": "not-secret",
    }
    assert secrets_in_vars(data) == {
        "postgresql://app:pw-123@db/app",
        "pw-123",
        "sk-98765",
        "nested-pw",
        "tok-aaaa",
        "tok-bbbb",
        "123456",
    }
    assert secrets_in_env({"PGPASSWORD": "pg-pw-1", "HOME": "/root", "X": "pg://u:envpw@h"}) == {
        "pg-pw-1",
        "envpw",
    }


def test_secrets_in_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    (inv / "hosts.yml").write_text(
        "all:\n  hosts:\n    web1:\n      ansible_become_password: become-pw-1\n"
    )
    (inv / "group_vars" / "all" / "vars.yml").write_text(
        "database_url: '{{ vault_database_url }}'\n"
        "api_token: !unsafe 'tok-unsafe-1'\n"
        "other_secret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n"
    )
    (inv / "group_vars" / "all" / "vault.yml").write_text("$ANSIBLE_VAULT;1.1;AES256\n3132\n")
    (inv / "host_vars" / "hosts.ini").write_text("db1 ansible_password=ini-pw-1 port=22\n")
    (inv / "group_vars" / "broken.yml").write_text("a: [\n")
    script = inv / "dynamic.py"
    script.write_text('#!/bin/sh\necho \'{"password": "never-run"}\'\n')
    script.chmod(0o755)
    (inv / ".hidden.yml").write_text("password: hidden-pw\n")
    assert secrets_in_inventory(inv) == {"become-pw-1", "tok-unsafe-1", "ini-pw-1"}


# --- secrets: redaction --------------------------------------------------------------
def test_secret_forms() -> None:
    assert secret_forms('pa"ss\\word') >= {
        'pa"ss\\word',
        'pa\\"ss\\\\word',
        'pa\\\\\\"ss\\\\\\\\word',
    }
    assert "it''s-secret" in secret_forms("it's-secret")
    assert "p%40ss-word" in secret_forms("p@ss-word")


def test_redact_text_and_data() -> None:
    scrubber = Scrubber(["tok-1234", "abc", 'q"uote-pw'])
    assert scrubber.secrets == frozenset({"tok-1234", 'q"uote-pw'})
    assert scrubber.redact("token tok-1234 twice tok-1234") == f"token {REDACTED} twice {REDACTED}"
    assert scrubber.redact(json.dumps({"m": 'q"uote-pw'})) == '{"m": "' + REDACTED + '"}'
    assert scrubber.redact("abc stays") == "abc stays"
    # DSN passwords are redacted even when unknown
    assert scrubber.redact("to postgresql://app:unknown-pw@db/app") == (
        f"to postgresql://app:{REDACTED}@db/app"
    )
    assert scrubber.redact("host=db password=kw-pw dbname=app") == (
        f"host=db password={REDACTED} dbname=app"
    )
    event = {"event_data": {"res": {"msg": "tok-1234", "n": 3, "items": ["x tok-1234"]}}, "c": None}
    assert scrubber.redact_data(event) == {
        "event_data": {"res": {"msg": REDACTED, "n": 3, "items": [f"x {REDACTED}"]}},
        "c": None,
    }
    assert scrubber.redact_bytes(b"\xff tok-1234 \xfe") == b"\xff " + REDACTED.encode() + b" \xfe"


def test_leaks_in() -> None:
    scrubber = Scrubber(["tok-1234"])
    assert scrubber.leaks_in(b"a tok-1234 b")
    assert scrubber.leaks_in(b"postgresql://u:other-pw@h/db")
    assert not scrubber.leaks_in(b"postgresql://u:********@h/db password=******** ok")


def test_scrub_tree(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    dirty = tmp_path / "a" / "b" / "event.json"
    dirty.write_text(json.dumps({"stdout": "token tok-1234 db postgresql://u:pw-999@h/d"}))
    dirty.chmod(0o600)
    clean = tmp_path / "clean.txt"
    clean.write_text("nothing here")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("tok-1234")
    (tmp_path / "link").symlink_to(outside)
    os.mkfifo(tmp_path / "fifo")  # must never be opened (it would block)

    report = Scrubber(["tok-1234"]).scrub_tree(tmp_path)

    assert report.files_scanned == 2
    assert report.files_redacted == [dirty]
    assert report.leaks_removed == []
    assert json.loads(dirty.read_text()) == {
        "stdout": f"token {REDACTED} db postgresql://u:{REDACTED}@h/d"
    }
    assert stat.S_IMODE(dirty.stat().st_mode) == 0o600
    assert outside.read_text() == "tok-1234"  # symlink not followed
    assert not list(tmp_path.rglob("*.scrub"))


def test_scrub_tree_removes_what_it_cannot_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaky = tmp_path / "leaky"
    leaky.write_text("tok-1234")
    scrubber = Scrubber(["tok-1234"])
    monkeypatch.setattr(scrubber, "redact_bytes", lambda data: data)  # a form we fail to redact
    report = scrubber.scrub_tree(tmp_path)
    assert report.leaks_removed == [leaky] and not leaky.exists()


# --- project discovery ---------------------------------------------------------------
def _make_project(root: Path) -> Path:
    (root / "playbooks").mkdir(parents=True)
    (root / "ansible.cfg").write_text("[defaults]\n")
    return root


def test_find_project_root(tmp_path: Path) -> None:
    root = _make_project(tmp_path / "p")
    deep = root / "roles" / "x" / "tasks"
    deep.mkdir(parents=True)
    assert proj.find_project_root(deep, environ={}) == root.resolve()
    other = _make_project(tmp_path / "other")
    assert (
        proj.find_project_root(deep, environ={"OPSBOOK_PROJECT_DIR": str(other)}) == other.resolve()
    )
    with pytest.raises(OpsbookInputError) as info:
        proj.find_project_root(deep, environ={"OPSBOOK_PROJECT_DIR": str(tmp_path)})
    assert info.value.input_name == "OPSBOOK_PROJECT_DIR"


def test_find_project_root_falls_back_to_source_checkout(tmp_path: Path) -> None:
    assert proj.is_project_root(REPO)  # the tests run from the source checkout they are in
    assert proj.find_project_root(tmp_path, environ={}) == REPO


def test_inventory_root_and_runs_dir(tmp_path: Path) -> None:
    assert proj.inventory_root(tmp_path, environ={}) == tmp_path / "inventories"
    assert proj.inventory_root(tmp_path, {"OPSBOOK_INVENTORY_ROOT": "/srv/inv"}) == Path("/srv/inv")
    assert proj.runs_dir(tmp_path, environ={}) == tmp_path / ".opsbook" / "runs"
    assert proj.runs_dir(tmp_path, {"OPSBOOK_RUNS_DIR": "/var/runs"}) == Path("/var/runs")


def test_runbooks_and_descriptions(tmp_path: Path) -> None:
    root = _make_project(tmp_path)
    books = root / "playbooks"
    (books / "deploy.yml").write_text("# Deploy a release to the app hosts\n- hosts: app\n")
    (books / "restore.yml").write_text("#Restore a backup  \n")
    (books / "plain.yml").write_text("---\n# not on the first line\n")
    (books / "site.yml").write_text("# everything\n")
    (books / "_shared.yml").write_text("# internal\n")
    (books / "notes.yaml").write_text("# other extension\n")
    assert [(r.name, r.description) for r in proj.list_runbooks(root)] == [
        ("deploy", "Deploy a release to the app hosts"),
        ("plain", ""),
        ("restore", "Restore a backup"),
    ]
    assert proj.resolve_runbook(root, "deploy.yml").name == "deploy"
    with pytest.raises(OpsbookInputError, match="did you mean 'deploy'"):
        proj.resolve_runbook(root, "deplyo")
    with pytest.raises(OpsbookInputError, match="known: deploy, plain, restore"):
        proj.resolve_runbook(root, "zzz")
    for bad in ("", "../x", "/etc/passwd", "-rf"):
        with pytest.raises(OpsbookInputError, match="not a runbook name"):
            proj.resolve_runbook(root, bad)


def test_envs(tmp_path: Path) -> None:
    for name in ("local", "staging", ".git"):
        (tmp_path / name).mkdir()
    (tmp_path / "README.md").write_text("")
    assert proj.list_envs(tmp_path) == ["local", "staging"]
    assert proj.resolve_env(tmp_path, "local") == (tmp_path / "local").resolve()
    with pytest.raises(OpsbookInputError) as info:
        proj.resolve_env(tmp_path, "prod")
    assert info.value.input_name == "--env"
    assert info.value.problem.endswith(": local, staging")
    with pytest.raises(OpsbookInputError):
        proj.resolve_env(tmp_path, "..")


# --- runner: pure helpers ------------------------------------------------------------
def test_new_ident() -> None:
    ident = rn.new_ident(datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))
    assert ident.startswith("20250304T050607Z-") and len(ident) == 23
    assert rn._IDENT_RE.match(ident)
    assert len({rn.new_ident() for _ in range(50)}) == 50


def test_env_allow_list() -> None:
    allowed = (
        "PATH HOME LANG LC_ALL TERM USER LOGNAME SSH_AUTH_SOCK AWS_ACCESS_KEY_ID AWS_PROFILE"
        " AWS_SECRET_ACCESS_KEY ANSIBLE_VAULT_PASSWORD_FILE OPSBOOK_OPLOG PGPASSFILE HTTPS_PROXY"
        " no_proxy REQUESTS_CA_BUNDLE"
    )
    for name in allowed.split():
        assert rn.env_allowed(name), name
    for name in ("GITHUB_TOKEN", "LD_PRELOAD", "PYTHONPATH", "VERCEL_TOKEN", "DISPLAY"):
        assert not rn.env_allowed(name), name
    assert rn.env_allowed("VERCEL_TOKEN", ["VERCEL_TOKEN"])
    assert rn.env_allowed("STRIPE_KEY", ["STRIPE_*"])
    assert rn.passthrough_patterns({"OPSBOOK_ENV_PASSTHROUGH": "A, B_*,,"}) == ["A", " B_*"]


def test_restrict_environment() -> None:
    inherited = {"PATH": "/bin", "SECRET_THING": "x", "ANSIBLE_FORCE_COLOR": "1", "HOME": "/root"}
    env = {
        **inherited,
        "PATH": "/venv/bin:/bin",  # changed by opsbook: kept
        "OPSBOOK_RUN_ID": "id",  # set by opsbook
        "AWX_ISOLATED_DATA_DIR": "/a",  # set by runner
        "ANSIBLE_HOST_KEY_CHECKING": "False",  # forced by runner: dropped
        "ANSIBLE_VAULT_PASSWORD_FILE": "/v",
    }
    assert rn.restrict_environment(env, inherited, drop=["ANSIBLE_VAULT_PASSWORD_FILE"]) == {
        "PATH": "/venv/bin:/bin",
        "ANSIBLE_FORCE_COLOR": "1",
        "HOME": "/root",
        "OPSBOOK_RUN_ID": "id",
        "AWX_ISOLATED_DATA_DIR": "/a",
    }
    chosen = {**inherited, "ANSIBLE_HOST_KEY_CHECKING": "False"}
    assert rn.restrict_environment(chosen, chosen)["ANSIBLE_HOST_KEY_CHECKING"] == "False"
    assert "SECRET_THING" in rn.restrict_environment(env, inherited, ["SECRET_*"])


def test_validate_inputs() -> None:
    assert rn.validate_extravars(None) == {}
    assert rn.validate_extravars({"a_1": 1, "_b": 2}) == {"a_1": 1, "_b": 2}
    # AWX's own extra vars are refused (the operation log trusts them), users' awx_* are not
    assert rn.validate_extravars({"awx_setup_prefix": "x"}) == {"awx_setup_prefix": "x"}
    for reserved in ("awx_user_name", "tower_job_id", "awx_workflow_job_id"):
        with pytest.raises(OpsbookInputError, match=f"'{reserved}' is reserved for AWX"):
            rn.validate_extravars({"opsbook_reason": "r", reserved: "mallory"})
    for bad in ({"": 1}, {"1abc": 1}, {"a-b": 1}, {"a b": 1}, ["a"]):
        with pytest.raises(OpsbookInputError) as info:
            rn.validate_extravars(bad)  # type: ignore[arg-type]
        assert info.value.input_name == "-e"
    assert rn.validate_timeout(None) is None
    assert rn.validate_timeout(2) == 2
    assert rn.validate_timeout(0.2) == 1
    assert rn.validate_timeout(2.5) == 3
    for bad in (0, -1, True, "3", float("nan")):
        with pytest.raises(OpsbookInputError, match="positive number"):
            rn.validate_timeout(bad)  # type: ignore[arg-type]
    assert rn.validate_limit(" web* ") == "web*"
    for bad in ("", "  ", "a\nb"):
        with pytest.raises(OpsbookInputError):
            rn.validate_limit(bad)


def test_vault_password_file(tmp_path: Path) -> None:
    given, from_env = tmp_path / "given", tmp_path / "env"
    given.write_text("given-pass\n")
    from_env.write_text("env-pass\n")
    env = {"ANSIBLE_VAULT_PASSWORD_FILE": str(from_env)}
    assert rn.resolve_vault_password_file(given, env) == given
    assert rn.resolve_vault_password_file(None, env) == from_env
    both = {**env, "OPSBOOK_VAULT_PASSWORD_FILE": str(given)}
    assert rn.resolve_vault_password_file(None, both) == given
    assert rn.resolve_vault_password_file(None, {}) is None
    with pytest.raises(OpsbookInputError) as info:
        rn.resolve_vault_password_file(None, {"ANSIBLE_VAULT_PASSWORD_FILE": "/nope"})
    assert info.value.input_name == "ANSIBLE_VAULT_PASSWORD_FILE"
    assert rn.vault_password(given) == {"given-pass"}
    given.chmod(0o755)  # a script prints the password: nothing to read
    assert rn.vault_password(given) == set()


def test_configured_callback_dirs(tmp_path: Path) -> None:
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\ncallback_plugins = callback_plugins:/opt/cb ; comment\n"
        "[ssh_connection]\ncontrol_path = %(directory)s/%%C\n"
    )
    assert rn.configured_callback_dirs(tmp_path, {}) == [
        str(tmp_path / "callback_plugins"),
        "/opt/cb",
    ]
    assert rn.configured_callback_dirs(tmp_path / "missing", {}) == []


@pytest.mark.parametrize(
    ("runner_status", "stats", "expected"),
    [
        ("successful", {"a": {"ok": 1}}, "successful"),
        ("successful", {}, "successful"),
        ("failed", {"a": {"failed": 1}}, "failed"),
        ("failed", {"a": {"unreachable": 1}, "b": {"ok": 1}}, "unreachable"),
        ("failed", {"a": {"unreachable": 1}, "b": {"failed": 1}}, "failed"),
        ("failed", {}, "failed"),
        ("successful", {"a": {"failed": 1}}, "failed"),
        ("timeout", {"a": {"failed": 1}}, "timeout"),
        ("canceled", {}, "canceled"),
        ("error", {}, "failed"),
    ],
)
def test_classify(runner_status: str, stats: dict, expected: str) -> None:
    assert rn.classify(runner_status, stats) == expected


def test_result_message() -> None:
    assert rn.result_message({"msg": " boom "}) == "boom"
    assert rn.result_message({"censored": "hidden"}) == "hidden"
    assert rn.result_message({"stderr": "err", "rc": 1}) == "err"
    loop = {
        "msg": "One or more items failed",
        "results": [{"failed": False}, {"failed": True, "msg": "item 2 bad"}],
    }
    assert rn.result_message(loop) == "One or more items failed: item 2 bad"
    assert rn.result_message(None) == ""
    assert rn.result_message("text") == "text"


def _host_event(kind: str, host: str, **data: object) -> dict:
    return {"event": kind, "event_data": {"host": host, "task": "T", **data}}


def test_event_collector() -> None:
    collector = rn.EventCollector()
    for event in [
        _host_event("runner_on_ok", "a", res={"changed": True}),
        _host_event("runner_on_failed", "a", res={"msg": "ignored one"}, ignore_errors=True),
        _host_event("runner_on_failed", "b", res={"msg": "bad"}),
        _host_event("runner_on_unreachable", "c", res={"msg": "no route"}),
        _host_event("runner_on_skipped", "c"),
        {"event": "verbose", "stdout": "\x1b[0;31m[ERROR]: the playbook is broken\x1b[0m\nmore"},
        {"event": "verbose", "stdout": "ERROR! old style"},
    ]:
        collector.add(event)
    assert collector.failures == [
        {"host": "b", "task": "T", "msg": "bad"},
        {"host": "c", "task": "T", "msg": "no route"},
    ]
    assert collector.errors == ["[ERROR]: the playbook is broken", "ERROR! old style"]
    # stopped before the recap: counted from host results
    counted = collector.host_stats()
    assert counted["a"] == {
        "ok": 2,
        "changed": 1,
        "failed": 0,
        "unreachable": 0,
        "skipped": 0,
        "rescued": 0,
        "ignored": 1,
    }
    assert counted["c"]["unreachable"] == 1 and counted["c"]["skipped"] == 1
    assert collector.outputs() == {}
    collector.add(
        {
            "event": "playbook_on_stats",
            "event_data": {
                "ok": {"a": 3},
                "changed": {"a": 1},
                "failures": {"b": 1},
                "dark": {"c": 1},
                "processed": {"a": 1, "b": 1, "c": 1, "d": 1},
                "artifact_data": {"verdict": "ok"},
            },
        }
    )
    stats = collector.host_stats()
    assert list(stats) == ["a", "b", "c", "d"]
    assert stats["a"]["ok"] == 3 and stats["b"]["failed"] == 1 and stats["c"]["unreachable"] == 1
    assert stats["d"] == dict.fromkeys(
        ("ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored"), 0
    )
    assert collector.outputs() == {"verdict": "ok"}


# --- runner: planning and callbacks --------------------------------------------------
@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = _make_project(tmp_path / "proj")
    (root / "playbooks" / "deploy.yml").write_text("# Deploy\n")
    inv = root / "inventories" / "dev" / "group_vars" / "all"
    inv.mkdir(parents=True)
    (inv / "vars.yml").write_text("vault_api_key: inv-secret-1\n")
    for var in ("OPSBOOK_INVENTORY_ROOT", "OPSBOOK_RUNS_DIR", "ANSIBLE_VAULT_PASSWORD_FILE",
                "OPSBOOK_VAULT_PASSWORD_FILE", "OPSBOOK_ENV_PASSTHROUGH"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    return root


def test_plan_validates_and_collects_secrets_without_side_effects(project: Path) -> None:
    runner = rn.RunbookRunner(project)
    plan = runner.plan(
        "deploy",
        "dev",
        {"database_url": "postgresql://a:db-pw-1@h/d", "release": "1.2"},
        reason=" hotfix ",
        secrets=["explicit-1"],
        envvars={"MY_TOKEN": "env-tok-1"},
        timeout=1.5,
    )
    assert plan.runbook.name == "deploy" and plan.env == "dev"
    assert plan.inventory == project / "inventories" / "dev"
    assert plan.extravars["opsbook_reason"] == "hotfix"
    assert plan.timeout == 2
    assert plan.secrets == {
        "postgresql://a:db-pw-1@h/d", "db-pw-1", "inv-secret-1", "explicit-1", "env-tok-1",
    }  # fmt: skip
    assert not (project / ".opsbook").exists()
    with pytest.raises(OpsbookInputError, match="secrets"):
        runner.plan("deploy", "dev", secrets="one-string")  # type: ignore[arg-type]
    with pytest.raises(OpsbookInputError, match="--reason"):
        runner.plan("deploy", "dev", reason="  ")
    with pytest.raises(OpsbookInputError, match="project_dir"):
        rn.RunbookRunner(project / "playbooks")


def test_private_files_and_rotation(project: Path) -> None:
    runner = rn.RunbookRunner(project, keep_runs=2)
    runs = project / ".opsbook" / "runs"
    runs.mkdir(parents=True)
    old = [runs / f"2020010{i}T000000Z-00000{i}" for i in range(1, 4)]
    for path in old:
        path.mkdir()
    (runs / "keep-me-not-a-run").mkdir()
    ident, private = runner._new_private_dir()
    assert sorted(p.name for p in runs.iterdir()) == [old[2].name, ident, "keep-me-not-a-run"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o700

    plan = runner.plan("deploy", "dev", {"api_token": "tok-xyz-1"})
    state = rn._Run(plan, ident, private, rn.Scrubber(plan.secrets), None, None, [])
    state.write_private_files()
    extravars = private / "env" / "extravars"
    assert stat.S_IMODE(extravars.stat().st_mode) == 0o600
    assert json.loads(extravars.read_text()) == {"api_token": "tok-xyz-1"}
    assert json.loads((private / "env" / "settings").read_text())["suppress_output_file"] is True
    state.remove_extravars()
    assert not extravars.exists()


def _state(
    project: Path,
    handler: rn.EventHandler | None = None,
    cancel: rn.CancelCallback | None = None,
) -> rn._Run:
    runner = rn.RunbookRunner(project)
    plan = runner.plan("deploy", "dev", {"api_token": "tok-xyz-1"})
    ident, private = runner._new_private_dir()
    (private / "artifacts" / ident).mkdir(parents=True)
    return rn._Run(plan, ident, private, rn.Scrubber(plan.secrets), handler, cancel, [])


def test_on_event_redacts_in_place_and_removes_extravars(project: Path) -> None:
    seen: list[dict] = []
    state = _state(project, handler=seen.append)
    state.write_private_files()
    event = {"event": "playbook_on_start", "stdout": "token tok-xyz-1", "event_data": {}}
    assert state.on_event(event) is True
    assert event["stdout"] == f"token {REDACTED}"  # runner writes this very dict
    assert seen == [event]
    assert not state.extravars_file.exists()
    state.cleanup()
    assert (state.artifacts_dir / "stdout").read_text() == f"token {REDACTED}\n"
    assert not (state.private_dir / "env").exists()


def test_on_event_keeps_only_ids_when_redaction_fails(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict] = []
    state = _state(project, handler=seen.append)

    def broken(_data: object) -> object:
        raise RecursionError("too deep")

    monkeypatch.setattr(state.scrubber, "redact_data", broken)
    event = {"event": "runner_on_ok", "uuid": "u1", "counter": 3, "stdout": "tok-xyz-1"}
    assert state.on_event(event) is True
    assert event == {"event": "runner_on_ok", "uuid": "u1", "counter": 3} and seen == [event]


def test_scrubber_includes_environment_secrets(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-env-secret-1")
    monkeypatch.setenv("UNPASSED_TOKEN", "never-passed-1")
    runner = rn.RunbookRunner(project)
    scrubber = runner.scrubber(runner.plan("deploy", "dev"))
    assert "aws-env-secret-1" in scrubber.secrets
    assert "never-passed-1" not in scrubber.secrets


def test_on_event_survives_a_broken_handler(project: Path) -> None:
    def broken(_event: dict) -> None:
        raise RuntimeError("bug in the caller's handler")

    state = _state(project, handler=broken)
    assert state.on_event({"event": "verbose", "stdout": "x"}) is True
    assert state.on_event({"event": "verbose", "stdout": "y"}) is True
    assert state.warnings == ["the event handler raised an exception (see the log)"]


def test_on_status_restricts_env_and_redacts_command(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNLISTED_SECRET_THING", "x")
    state = _state(project)
    config = types.SimpleNamespace(env={**os.environ, "OPSBOOK_RUN_ID": state.ident})
    state.on_status({"status": "starting"}, runner_config=config)
    assert "UNLISTED_SECRET_THING" not in config.env and config.env["OPSBOOK_RUN_ID"] == state.ident
    command = state.artifacts_dir / "command"
    command.write_text(json.dumps({"env": {"AWS_SECRET_ACCESS_KEY": "tok-xyz-1"}}))
    state.on_status({"status": "running"})
    assert "tok-xyz-1" not in command.read_text()


def test_should_cancel_stops_gracefully_then_gives_runner_the_kill(project: Path) -> None:
    """A cancel (or the timeout) first SIGTERMs the run and returns False - runner must not
    SIGKILL yet - and only True once the grace period is over."""
    assert _state(project).should_cancel() is False
    canceled = _state(project, cancel=lambda: True)
    canceled.stop_grace_s = 0.3
    assert canceled.should_cancel() is False  # SIGTERM sent (to nothing yet), grace running
    assert canceled.stop_reason == "canceled"
    assert (canceled.private_dir / "stop_reason").read_text() == "canceled"  # for the oplog
    time.sleep(0.35)
    assert canceled.should_cancel() is True

    def broken() -> bool:
        raise RuntimeError("broken")

    state = _state(project, cancel=broken)
    state.stop_grace_s = 0.0
    assert state.should_cancel() is True and state.stop_reason == "canceled"

    timed = _state(project)
    timed.deadline = time.monotonic() - 1
    timed.stop_grace_s = 0.0
    assert timed.should_cancel() is True and timed.stop_reason == "timeout"
    state = _state(project)
    state._on_signal(2, None)  # SIGINT to opsbook run
    assert state.should_cancel() is False and state.stop_reason == "canceled"
    state.stop_grace_s = 0.0
    assert state.should_cancel() is True


def test_find_run_processes(tmp_path: Path) -> None:
    def fake(pid: int, env: bytes, cmd: bytes) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "environ").write_bytes(env)
        (tmp_path / str(pid) / "cmdline").write_bytes(cmd)

    fake(10, b"A=1\0OPSBOOK_RUN_ID=run-1\0", b"ansible-playbook\0")
    fake(11, b"OPSBOOK_RUN_ID=run-1\0", b"sleep\x0030\0")
    fake(12, b"OPSBOOK_RUN_ID=run-10\0", b"other run\0")
    fake(13, b"OPSBOOK_RUN_ID=run-1\0", b"ssh: /root/.ansible/cp/abc [mux]\0")
    (tmp_path / "self").mkdir()
    assert sorted(rn.find_run_processes("run-1", proc=tmp_path)) == [10, 11]
    assert rn.find_run_processes("run-1", proc=tmp_path / "missing") == []


def test_plan_warns_about_undeclared_extra_vars_and_tells_the_playbook(project: Path) -> None:
    inputs = project / "playbooks" / "vars" / "inputs"
    inputs.mkdir(parents=True)
    (inputs / "deploy.yml").write_text(
        "opsbook_inputs:\n  runbook: deploy\n  options:\n"
        "    app_version: {type: str, description: the version}\n"
    )
    (inputs / "common.yml").write_text(
        "opsbook_inputs:\n  runbook: common\n  options:\n"
        "    opsbook_reason: {type: str, description: why}\n"
    )
    runner = rn.RunbookRunner(project)
    plan = runner.plan(
        "deploy", "dev", {"app_verison": "1.0", "awx_setup_x": 3, "app_version": "1"}, reason="x"
    )
    assert plan.warnings == (
        "-e app_verison: deploy has no input of that name; did you mean app_version?",
    )
    assert plan.envvars[proj.INPUT_WARNINGS_SHOWN_ENV] == "1"
    (inputs / "deploy.yml").unlink()  # no declaration: nothing to judge, the playbook decides
    undeclared = runner.plan("deploy", "dev", {"app_verison": "1.0"})
    assert undeclared.warnings == ()
    assert proj.INPUT_WARNINGS_SHOWN_ENV not in undeclared.envvars
