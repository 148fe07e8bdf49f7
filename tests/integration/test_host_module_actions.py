"""The action plugins of the host modules (action_plugins/), through the real `ansible`
command on localhost: arguments checked on the controller before anything runs on the host,
app_release's archive transfer (src), and app_service's dispatch to a method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import build_release, free_port, http_get, sha256_file
from opsbook.lab.hosts import HOST_PYTHON
from tests.harness import ansible_env, run_ansible


@pytest.fixture(autouse=True)
def _oplog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operation log of these runs goes to the test's own directory."""
    monkeypatch.setenv("OPSBOOK_OPLOG", str(tmp_path / "oplog.jsonl"))


def adhoc(module: str, args: dict[str, Any], *extra: str) -> tuple[int, dict[str, Any], str]:
    """Run one module on localhost (local connection); (rc, the host's result, all output)."""
    done = run_ansible(
        ["localhost", "-i", "localhost,", "-c", "local", "-m", f"opsbook.runbooks.{module}",
         "-a", json.dumps(args),
         "-e", f"ansible_python_interpreter={HOST_PYTHON}", *extra],
        env=ansible_env(extra={"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}),
        timeout=120,
    )  # fmt: skip
    out = done.stdout + done.stderr
    # "localhost | CHANGED => {...}": the host's result as JSON
    marker = done.stdout.find(" => {")
    host = json.loads(done.stdout[marker + 4 :]) if marker >= 0 else {}
    return done.returncode, host, out


def release_args(root: Path, archive: Path, release_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "deploy_root": str(root),
        "action": "install",
        "release_id": release_id,
        "src": str(archive),
        "version": release_id,
        **kw,
        "sha256": kw.get("sha256") or sha256_file(archive),
    }


def test_install_sends_the_archive_from_the_controller(tmp_path: Path) -> None:
    root = tmp_path / "deploy_root"
    archive = build_release("3.1.0", tmp_path / "artifacts")

    rc, res, out = adhoc("app_release", release_args(root, archive, "3.1.0"), "--check")
    assert rc == 0, out
    assert res["changed"] is True and "archive not on the host yet" in res["msg"]
    assert not root.exists()  # check mode wrote nothing, not even the deploy root

    rc, res, out = adhoc("app_release", release_args(root, archive, "3.1.0"))
    assert rc == 0, out
    assert res["changed"] is True and res["release"]["status"] == "installed"
    assert (root / "releases" / "3.1.0" / "app.py").is_file()
    assert archive.is_file()  # the controller's copy is kept; the host's copy is deleted
    assert not list(root.rglob("release-archive"))

    rc, res, out = adhoc("app_release", release_args(root, archive, "3.1.0"))
    assert rc == 0 and res["changed"] is False, out


def test_bad_input_is_refused_on_the_controller(tmp_path: Path) -> None:
    root = tmp_path / "deploy_root"
    archive = build_release("3.2.0", tmp_path / "artifacts")
    cases = [
        ({"deploy_root": str(root), "action": "explode"}, "value of action must be one of"),
        ({"deploy_root": str(root), "action": "info", "nonsense": 1}, "nonsense"),
        ({**release_args(root, archive, "3.2.0"), "archive": "/x.tar.gz"}, "not both"),
        ({**release_args(root, archive, "3.2.0"), "action": "mark"}, "src is only for"),
        (release_args(root, tmp_path / "missing.tar.gz", "3.2.0", sha256="0" * 64),
         "is not a file on the controller"),
    ]  # fmt: skip
    for args, expected in cases:
        rc, res, out = adhoc("app_release", args)
        assert rc != 0, args
        assert expected in res.get("msg", out), (args, out)
        assert "nothing was changed" in res.get("msg", out)
    assert not root.exists()


def test_app_service_command_method(tmp_path: Path) -> None:
    root = tmp_path / "deploy_root"
    root.mkdir()
    marker = "restarted.txt"
    args = {
        "method": "command",
        "state": "restarted",
        "deploy_root": str(root),
        "restart_command": ["/bin/sh", "-c", f"echo again >> {marker}"],
    }
    rc, res, out = adhoc("app_service", args, "--check")
    assert rc == 0 and res["changed"] is True and res["msg"].startswith("would run"), out
    assert not (root / marker).exists()

    rc, res, out = adhoc("app_service", args)
    assert rc == 0, out
    assert res["method"] == "command" and res["rc"] == 0 and res["changed"] is True
    assert (root / marker).read_text() == "again\n"  # ran in deploy_root, once

    rc, res, out = adhoc("app_service", {**args, "state": "started"})
    assert rc == 0 and res["changed"] is False and "no command for state started" in res["msg"]

    failing = {**args, "restart_command": ["/bin/sh", "-c", "echo broken >&2; exit 7"]}
    rc, res, out = adhoc("app_service", failing)
    assert rc != 0 and "FAILED!" in out
    assert "exited 7: broken" in res["msg"], out


def test_app_service_refuses_a_method_without_its_inputs(tmp_path: Path) -> None:
    for args, expected in [
        ({"method": "systemd", "state": "restarted"}, "method systemd needs name"),
        ({"method": "supervisor"}, "method supervisor needs deploy_root"),
        ({"method": "command", "state": "restarted"}, "needs restart_command"),
        ({"method": "upstart"}, "value of method must be one of"),
    ]:
        rc, res, out = adhoc("app_service", args)
        assert rc != 0 and expected in res.get("msg", out), (args, out)


def test_app_service_supervisor_runs_the_current_release(tmp_path: Path) -> None:
    root = tmp_path / "deploy_root"
    archive = build_release("3.3.0", tmp_path / "artifacts")
    rc, res, out = adhoc("app_release", release_args(root, archive, "3.3.0"))
    assert rc == 0, out
    rc, res, out = adhoc(
        "app_release", {"deploy_root": str(root), "action": "activate", "release_id": "3.3.0"}
    )
    assert rc == 0, out
    port = free_port("127.0.0.1")
    (root / "shared" / "app.json").write_text(json.dumps({"host": "127.0.0.1", "port": port}))
    try:
        rc, res, out = adhoc(
            "app_service",
            {"method": "supervisor", "state": "started", "deploy_root": str(root),
             "timeout_s": 20},
        )  # fmt: skip
        assert rc == 0, out
        assert res["method"] == "supervisor" and res["pid"] and res["changed"] is True
        assert res["release"] == str((root / "releases" / "3.3.0").resolve())
        assert http_get(f"http://127.0.0.1:{port}/api/version").body["version"] == "3.3.0"
    finally:
        adhoc("app_service", {"method": "supervisor", "state": "stopped", "deploy_root": str(root)})
