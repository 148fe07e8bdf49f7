"""The sample app's release artifacts and HTTP behaviour (in-process, no servers)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from opsbook.lab.hosts import extract_release
from opsbook.lab.sampleapp import APP_SOURCE, ARTIFACT_MTIME, build_release, sha256_file


def _members(artifact: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(artifact) as tar:
        return {member.name: member for member in tar.getmembers()}


def _read(artifact: Path, name: str) -> bytes:
    with tarfile.open(artifact) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def test_build_release_contains_app_and_version_at_top_level(tmp_path: Path) -> None:
    artifact = build_release("1.2.3", tmp_path)

    assert artifact == tmp_path / "sampleapp-1.2.3.tar.gz"
    assert sorted(_members(artifact)) == ["VERSION", "app.py"]
    assert _read(artifact, "VERSION") == b"1.2.3\n"
    assert _read(artifact, "app.py") == APP_SOURCE.read_bytes()


def test_build_release_is_byte_identical_for_the_same_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_release("2.0.0", tmp_path / "a")
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)  # a leaked timestamp would now differ
    second = build_release("2.0.0", tmp_path / "b")

    assert first.read_bytes() == second.read_bytes()
    assert sha256_file(first) == sha256_file(second)
    assert sha256_file(first) != sha256_file(build_release("2.0.1", tmp_path / "c"))


def test_build_release_members_have_fixed_metadata(tmp_path: Path) -> None:
    members = _members(build_release("1.0.0", tmp_path))

    for member in members.values():
        assert member.isfile()
        assert member.mtime == ARTIFACT_MTIME
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
    assert members["app.py"].mode == 0o755
    assert members["VERSION"].mode == 0o644


@pytest.mark.parametrize("version", ["", "../evil", "a/b", ".hidden"])
def test_build_release_rejects_unsafe_versions(tmp_path: Path, version: str) -> None:
    with pytest.raises(ValueError, match="invalid release version"):
        build_release(version, tmp_path)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"opsbook" * 100_000)

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the app


def _load_app(release_dir: Path) -> ModuleType:
    """Import app.py from an unpacked release, as the hosts run it."""
    spec = importlib.util.spec_from_file_location(
        f"sampleapp_{release_dir.name}", release_dir / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def running_app(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The app from an unpacked 3.1.4 release, served in a thread; (base_url, state_dir)."""
    release = tmp_path / "deploy" / "releases" / "3.1.4"
    release.mkdir(parents=True)
    extract_release(build_release("3.1.4", tmp_path / "artifacts"), release)
    state_dir = tmp_path / "deploy" / "shared"
    state_dir.mkdir()
    app = _load_app(release)
    server = app.make_server("127.0.0.1", 0, app.AppState(state_dir, app_dir=release))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state_dir
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _get(url: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    try:
        with urllib.request.build_opener().open(url, timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body), time.monotonic() - started


def test_app_reports_version_and_release(running_app: tuple[str, Path]) -> None:
    url, _ = running_app

    assert _get(f"{url}/health")[:2] == (
        200,
        {"status": "ok", "version": "3.1.4", "release": "3.1.4"},
    )
    status, body, _ = _get(f"{url}/api/version")
    assert status == 200
    assert (body["version"], body["release"]) == ("3.1.4", "3.1.4")
    assert _get(f"{url}/nowhere")[0] == 404


def test_app_health_modes(running_app: tuple[str, Path]) -> None:
    url, state_dir = running_app
    mode = state_dir / "health_mode"

    mode.write_text("fail\n")
    status, body, _ = _get(f"{url}/health")
    assert (status, body["status"]) == (500, "fail")
    assert _get(f"{url}/api/version")[0] == 200  # only /health is affected

    mode.write_text("slow 250\n")
    status, body, elapsed = _get(f"{url}/health")
    assert (status, body["status"]) == (200, "ok")
    assert elapsed >= 0.25

    mode.write_text("ok\n")
    assert _get(f"{url}/health")[0] == 200


def test_app_maintenance_answers_503_everywhere(running_app: tuple[str, Path]) -> None:
    url, state_dir = running_app
    (state_dir / "maintenance").touch()

    for path in ("/health", "/api/version", "/"):
        status, body, _ = _get(f"{url}{path}")
        assert (status, body["status"]) == (503, "maintenance")
