"""library/app_release.py, library/app_process.py and library/release_artifact.py on tmp dirs.

app_release: every action on a real directory tree (install, activate, mark, rollback, prune,
remove, info), the keep_releases rules, rollback targets, check mode, idempotence, failed
installs leaving nothing behind, unsafe archives, the atomic switch under a concurrent reader,
the host lock, and the module run as a script. app_process: real processes (the sample app and
a daemon with a worker that ignores SIGTERM). release_artifact: local files, a local HTTP
server and S3 mocked in-process by moto.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest

from opsbook.lab import build_release, free_port, http_get, sha256_file
from tests.loaders import PROJECT_ROOT, load_library

ar = load_library("app_release")
ap = load_library("app_process")
ra = load_library("release_artifact")

HOST_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


# ============================================================================ helpers


def params(root: Path, action: str = "info", **kw: Any) -> dict[str, Any]:
    """app_release parameters with the argument spec's defaults, validated."""
    base: dict[str, Any] = {k: v.get("default") for k, v in ar.argument_spec().items()}
    base.update(deploy_root=str(root), action=action, lock_timeout_s=2.0)
    base.update(kw)
    errors = ar.validate_params(base)
    assert not errors, errors
    return base


def run(root: Path, action: str = "info", check: bool = False, **kw: Any) -> dict[str, Any]:
    return ar.run(params(root, action, **kw), check)


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    """A .tar.gz with files given as (name, data) or raw TarInfo entries (links, devices)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


class Lab:
    """A deploy root plus sample app artifacts, with shortcuts for the actions."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "deploy_root"
        self.artifacts = tmp / "artifacts"

    def artifact(self, version: str) -> Path:
        return build_release(version, self.artifacts)

    def install(self, release_id: str, version: str | None = None, **kw: Any) -> dict[str, Any]:
        version = version or release_id
        archive = kw.pop("archive", None) or self.artifact(version)
        sha = kw.pop("sha256", None) or sha256_file(archive)
        return run(
            self.root,
            "install",
            release_id=release_id,
            archive=str(archive),
            sha256=sha,
            version=version,
            **kw,
        )

    def deploy(self, release_id: str, status: str | None = "good") -> None:
        """install + activate (+ mark)."""
        self.install(release_id)
        run(self.root, "activate", release_id=release_id)
        if status:
            run(self.root, "mark", release_id=release_id, status=status)

    def current(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def ids(self) -> list[str]:
        return [r["release_id"] for r in run(self.root)["releases"]]

    def status(self) -> dict[str, str]:
        return {r["release_id"]: r["status"] for r in run(self.root)["releases"]}

    def tree(self) -> dict[str, Any]:
        """Every path under the deploy root with its type, link target and mtime."""
        out: dict[str, Any] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = path.lstat()
                out[str(path.relative_to(self.root))] = (
                    os.readlink(path) if path.is_symlink() else None,
                    st.st_mode,
                    st.st_mtime_ns,
                    st.st_size,
                )
        return out


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


# ============================================================================ inputs


@pytest.mark.parametrize(
    ("release_id", "ok"),
    [
        ("2.3.0-1a2b3c4d", True),
        ("v1+build.7", True),
        (".hidden", False),
        ("a/b", False),
        ("x.partial", False),
        ("a" * 129, False),
        ("-x", False),
    ],
)
def test_release_id_rules(release_id: str, ok: bool) -> None:
    assert (ar.release_id_errors(release_id) is None) is ok


def test_inputs_are_checked_per_action(tmp_path: Path) -> None:
    base = {k: v.get("default") for k, v in ar.argument_spec().items()}
    base.update(deploy_root=str(tmp_path), action="install")
    errors = ar.validate_params(dict(base))
    assert {e.split(" ")[0] for e in errors} >= {"release_id", "archive", "sha256", "version"}
    bad = dict(
        base,
        release_id="r1",
        archive="/a.tgz",
        sha256="xyz",
        version="1",
        keep_releases=0,
        shared_paths=["../etc", "/abs", "ok/dir/"],
        metadata={"status": "good", "git_sha": "abc"},
    )
    errors = ar.validate_params(bad)
    text = "; ".join(errors)
    assert "sha256 must be 64 hex digits" in text
    assert "keep_releases must be at least 1" in text
    assert "'..' is not allowed" in text and "must be relative" in text
    assert "metadata may not set the module's own keys: status" in text
    assert bad["shared_paths"] == ["ok/dir"]
    upper = dict(base, release_id="r1", archive="/a", sha256="AB" * 32, version="1")
    assert ar.validate_params(upper) == [] and upper["sha256"] == "ab" * 32
    relative = dict(base, deploy_root="srv/app", action="info")
    assert "absolute" in "; ".join(ar.validate_params(relative))


# ============================================================================ install


def test_install_unpacks_links_shared_paths_and_writes_metadata(lab: Lab) -> None:
    archive = make_tar(
        lab.tmp / "a.tar.gz",
        [("app.py", b"print(1)\n"), ("VERSION", b"3.1.0\n"), ("log/seed.txt", b"seed")],
    )
    result = lab.install(
        "3.1.0",
        archive=archive,
        shared_paths=["log", "config/settings.json", "uploads"],
        metadata={"git_sha": "0f3c2e1", "deployed_by": "alice", "reason": "test"},
    )
    assert result["changed"] is True
    release = lab.root / "releases" / "3.1.0"
    meta = json.loads((release / ".opsbook-release.json").read_text())
    assert meta["version"] == "3.1.0" and meta["sha256"] == sha256_file(archive)
    assert meta["status"] == "installed" and meta["activated_at"] is None
    assert meta["git_sha"] == "0f3c2e1" and meta["deployed_by"] == "alice"
    assert meta["deployed_at"].endswith("Z") and meta["archive_bytes"] == archive.stat().st_size
    assert meta["seeded_shared_paths"] == ["log"]
    # log: seeded into shared/ from the artifact; the others created empty
    assert os.readlink(release / "log") == "../../shared/log"
    assert (lab.root / "shared/log/seed.txt").read_bytes() == b"seed"
    assert os.readlink(release / "config/settings.json") == "../../../shared/config/settings.json"
    assert (lab.root / "shared/config/settings.json").is_dir()
    assert (release / "uploads").resolve() == (lab.root / "shared/uploads").resolve()
    assert result["release"]["release_id"] == "3.1.0" and result["current"] is None
    assert not list((lab.root / "releases").glob(".*"))


def test_existing_shared_path_wins_over_the_artifact(lab: Lab) -> None:
    (lab.root / "shared/log").mkdir(parents=True)
    (lab.root / "shared/log/app.log").write_text("kept")
    archive = make_tar(lab.tmp / "a.tar.gz", [("app.py", b""), ("log/new.txt", b"x")])
    lab.install("r1", archive=archive, shared_paths=["log"])
    assert sorted(os.listdir(lab.root / "shared/log")) == ["app.log"]
    assert (lab.root / "releases/r1/log").is_symlink()


def test_install_is_idempotent_and_an_id_names_one_artifact(lab: Lab) -> None:
    assert lab.install("2.0.0")["changed"] is True
    before = lab.tree()
    again = lab.install("2.0.0")
    assert again["changed"] is False and "already installed" in again["msg"]
    assert lab.tree() == before
    other = make_tar(lab.tmp / "other.tar.gz", [("app.py", b"other")])
    with pytest.raises(ar.ReleaseError, match="already installed with another artifact"):
        lab.install("2.0.0", archive=other)
    assert lab.tree() == before


def test_checksum_mismatch_installs_nothing(lab: Lab) -> None:
    with pytest.raises(ar.ReleaseError, match=r"sha256 mismatch.*nothing was installed"):
        lab.install("2.0.0", sha256="0" * 64)
    assert lab.ids() == []
    assert not (lab.root / "releases").exists() or not os.listdir(lab.root / "releases")


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ([("app.py", b"ok"), ("../evil", b"x")], r"'\.\.' is not allowed"),
        ([("app.py", b"ok"), ("/etc/evil", b"x")], "absolute paths"),
        ([("app.py", b"ok"), link_member("esc", "../../..")], "leaves the release"),
        ([("app.py", b"ok"), link_member("abs", "/etc/passwd")], "leaves the release"),
        ([("app.py", b"ok"), link_member("hard", "app.py", tarfile.LNKTYPE)], "hard link"),
        ([("app.py", b"ok"), link_member("dev", "", tarfile.CHRTYPE)], "special file"),
        ([("app.py", b"ok"), (".opsbook-release.json", b"{}")], "reserved name"),
    ],
)
def test_unsafe_archives_are_refused_and_leave_nothing(
    lab: Lab, members: list[Any], error: str
) -> None:
    archive = make_tar(lab.tmp / "bad.tar.gz", [("log/seed", b"s"), *members])
    with pytest.raises(ar.ReleaseError, match=error):
        lab.install("bad", archive=archive, shared_paths=["log"])
    assert os.listdir(lab.root / "releases") == []
    assert os.listdir(lab.root / "shared") == []  # nothing seeded either


def test_writing_through_a_symlink_out_of_the_release_is_refused(lab: Lab) -> None:
    archive = make_tar(
        lab.tmp / "bad.tar.gz", [link_member("sub", "."), ("app.py", b"x"), ("sub/f", b"y")]
    )
    lab.install("fine", archive=archive)  # a link inside the release is fine
    assert (lab.root / "releases/fine/f").read_bytes() == b"y"


def test_corrupt_archive_leaves_nothing(lab: Lab) -> None:
    good = lab.artifact("2.0.0").read_bytes()
    broken = lab.tmp / "broken.tar.gz"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(ar.ReleaseError, match=r"cannot (unpack|open)"):
        lab.install("2.0.0", archive=broken)
    assert os.listdir(lab.root / "releases") == []
    not_tar = lab.tmp / "plain.tar.gz"
    not_tar.write_bytes(b"hello")
    with pytest.raises(ar.ReleaseError, match="cannot open"):
        lab.install("x", archive=not_tar)


def test_strip_components(lab: Lab) -> None:
    archive = make_tar(lab.tmp / "a.tar.gz", [("app-1/app.py", b"1"), ("app-1/VERSION", b"1\n")])
    lab.install("r1", archive=archive, strip_components=1)
    assert sorted(os.listdir(lab.root / "releases/r1")) == [
        ".opsbook-release.json",
        "VERSION",
        "app.py",
    ]
    with pytest.raises(ar.ReleaseError, match="holds no files"):
        lab.install("r2", archive=archive, strip_components=3)


def test_a_killed_install_leftover_is_replaced(lab: Lab) -> None:
    leftover = lab.root / "releases/.2.0.0.partial"
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("half")
    lab.install("2.0.0")
    assert not leftover.exists() and (lab.root / "releases/2.0.0/app.py").exists()


def test_install_in_check_mode_verifies_but_writes_nothing(lab: Lab) -> None:
    archive = lab.artifact("2.0.0")
    result = run(
        lab.root, "install", check=True, release_id="2.0.0", archive=str(archive),
        sha256=sha256_file(archive), version="2.0.0",
    )  # fmt: skip
    assert result["changed"] is True and result["msg"].startswith("would install")
    assert not lab.root.exists()
    with pytest.raises(ar.ReleaseError, match="sha256 mismatch"):
        run(lab.root, "install", check=True, release_id="2.0.0", archive=str(archive),
            sha256="1" * 64, version="2.0.0")  # fmt: skip
    missing = run(lab.root, "install", check=True, release_id="2.0.0", archive="/nope.tgz",
                  sha256="1" * 64, version="2.0.0")  # fmt: skip
    assert "not verified" in missing["msg"]


def test_an_identical_unmanaged_release_is_adopted_a_different_one_refused(lab: Lab) -> None:
    archive = lab.artifact("1.0.0")
    target = lab.root / "releases/1.0.0"
    target.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    assert lab.status() == {"1.0.0": "unmanaged"}
    result = lab.install("1.0.0")
    assert result["changed"] is True and result["adopted"] == ["1.0.0"]
    assert lab.status() == {"1.0.0": "installed"}
    assert run(lab.root)["releases"][0]["sha256"] == sha256_file(archive)
    assert lab.install("1.0.0")["changed"] is False
    other = lab.root / "releases/9.9.9"
    other.mkdir()
    (other / "app.py").write_text("something else")
    with pytest.raises(ar.ReleaseError, match=r"not managed by opsbook.*differs"):
        lab.install("9.9.9")
    assert (other / "app.py").read_text() == "something else"


# ============================================================================ activate


def test_activate_switches_current_atomically_and_records_history(lab: Lab) -> None:
    lab.install("1.0.0")
    lab.install("2.0.0")
    first = run(lab.root, "activate", release_id="1.0.0", metadata={"run_id": "r-1"})
    assert first["changed"] is True and first["previous"] is None
    assert lab.current() == "releases/1.0.0"
    second = run(lab.root, "activate", release_id="2.0.0", metadata={"run_id": "r-2"})
    assert second["previous"] == "1.0.0" and second["current"] == "2.0.0"
    assert second["current_version"] == "2.0.0"
    assert second["release"]["activated_at"] and second["release"]["activations"] == 1
    again = run(lab.root, "activate", release_id="2.0.0")
    assert again["changed"] is False and "already current" in again["msg"]
    history = run(lab.root)["history"]
    assert [(h["action"], h["release_id"], h["previous"], h.get("run_id")) for h in history] == [
        ("activate", "1.0.0", None, "r-1"),
        ("activate", "2.0.0", "1.0.0", "r-2"),
    ]
    assert not [p for p in os.listdir(lab.root) if p.startswith(".current")]


def test_activate_refuses_what_is_not_there(lab: Lab) -> None:
    lab.install("1.0.0")
    with pytest.raises(ar.ReleaseError, match=r"not installed.*nothing was changed"):
        run(lab.root, "activate", release_id="7.0.0")
    (lab.root / "current").mkdir()
    with pytest.raises(ar.ReleaseError, match="not a symlink"):
        run(lab.root, "activate", release_id="1.0.0")
    assert (lab.root / "current").is_dir() and not (lab.root / "current").is_symlink()


def test_activate_in_check_mode_changes_nothing(lab: Lab) -> None:
    lab.deploy("1.0.0")
    lab.install("2.0.0")
    before = lab.tree()
    result = run(lab.root, "activate", check=True, release_id="2.0.0")
    assert result["changed"] is True and result["msg"].startswith("would be")
    assert result["current"] == "1.0.0" and lab.tree() == before


def test_check_mode_assumes_a_release_installed_earlier_in_the_run(lab: Lab) -> None:
    lab.deploy("1.0.0")
    before = lab.tree()
    for action, extra in (("activate", {}), ("mark", {"status": "good"})):
        result = run(lab.root, action, check=True, release_id="2.0.0", **extra)
        assert result["changed"] is True and "not installed yet" in result["msg"]
        assert "check mode assumes an earlier task" in result["warnings_"][0]
    assert lab.tree() == before
    with pytest.raises(ar.ReleaseError, match="not installed"):
        run(lab.root, "activate", release_id="2.0.0")


def test_switching_away_from_an_unmanaged_release_adopts_it_as_good(lab: Lab) -> None:
    legacy = lab.root / "releases/legacy"
    legacy.mkdir(parents=True)
    (legacy / "VERSION").write_text("0.9\n")
    (lab.root / "current").symlink_to(legacy)  # absolute, as the lab's AppHost makes it
    assert run(lab.root)["current"] == "legacy"
    lab.deploy("1.0.0", status=None)
    info = run(lab.root)
    legacy_info = info["releases"][0]
    assert legacy_info["release_id"] == "legacy" and legacy_info["status"] == "good"
    assert legacy_info["version"] == "0.9" and legacy_info["adopted"]
    assert info["previous_good"] == "legacy"
    assert run(lab.root, "rollback")["to"] == "legacy"


def test_the_switch_is_atomic_for_a_concurrent_reader(lab: Lab) -> None:
    lab.install("1.0.0")
    lab.install("2.0.0")
    run(lab.root, "activate", release_id="1.0.0")
    current = lab.root / "current"
    stop = threading.Event()
    seen: dict[str, int] = {}
    misses: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                target = os.readlink(current)
                if not (current / "app.py").is_file():
                    misses.append(f"no app.py behind {target}")
                seen[target] = seen.get(target, 0) + 1
            except OSError as exc:
                misses.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        manager = ar.ReleaseManager(params(lab.root, "activate", release_id="2.0.0"), False)
        for i in range(300):
            manager.switch_current("2.0.0" if i % 2 == 0 else "1.0.0")
    finally:
        stop.set()
        thread.join()
    assert misses == []
    assert set(seen) == {"releases/1.0.0", "releases/2.0.0"}


# ============================================================================ mark and rollback


def test_mark(lab: Lab) -> None:
    lab.install("1.0.0")
    result = run(lab.root, "mark", release_id="1.0.0", status="good")
    assert result["changed"] is True and result["release"]["status"] == "good"
    assert run(lab.root, "mark", release_id="1.0.0", status="good")["changed"] is False
    check = run(lab.root, "mark", check=True, release_id="1.0.0", status="failed")
    assert check["changed"] is True and lab.status()["1.0.0"] == "good"
    run(lab.root, "mark", release_id="1.0.0", status="failed")
    meta = json.loads((lab.root / "releases/1.0.0/.opsbook-release.json").read_text())
    assert [s["status"] for s in meta["status_history"]] == ["installed", "good", "failed"]


def test_rollback_reads_current_and_goes_one_further_back_each_time(lab: Lab) -> None:
    for rid in ("1.0.0", "2.0.0", "3.0.0"):
        lab.deploy(rid)
    lab.install("4.0.0")  # newest directory, never activated: not a target, not a source
    first = run(lab.root, "rollback", metadata={"reason": "bad deploy"})
    assert (first["from"], first["to"], first["changed"]) == ("3.0.0", "2.0.0", True)
    assert lab.current() == "releases/2.0.0"
    assert lab.status()["3.0.0"] == "rolled_back"
    assert first["previous_good"] == "1.0.0"
    second = run(lab.root, "rollback")
    assert (second["from"], second["to"]) == ("2.0.0", "1.0.0")
    assert lab.status() == {
        "1.0.0": "good", "2.0.0": "rolled_back", "3.0.0": "rolled_back", "4.0.0": "installed"
    }  # fmt: skip
    before = lab.tree()
    with pytest.raises(ar.ReleaseError, match=r"no good release was deployed before.*nothing was"):
        run(lab.root, "rollback")
    assert lab.tree() == before
    history = run(lab.root)["history"]
    assert [h["action"] for h in history][-2:] == ["rollback", "rollback"]
    assert history[-2]["reason"] == "bad deploy"


def test_rollback_skips_failed_releases_and_leaves_a_failed_current(lab: Lab) -> None:
    lab.deploy("1.0.0")
    lab.deploy("2.0.0", status="failed")
    lab.deploy("3.0.0", status="failed")  # its health gate failed: current, not good
    result = run(lab.root, "rollback")
    assert (result["from"], result["to"]) == ("3.0.0", "1.0.0")
    assert lab.status()["3.0.0"] == "rolled_back"


def test_rollback_to_a_named_release_or_version(lab: Lab) -> None:
    lab.deploy("a", status="good")
    lab.deploy("b", status="good")
    lab.deploy("c", status="good")
    by_id = run(lab.root, "rollback", to="a")
    assert by_id["to"] == "a"
    same = run(lab.root, "rollback", to="a")
    assert same["changed"] is False
    by_version = run(lab.root, "rollback", to="b")  # ids double as versions here
    assert by_version["to"] == "b"
    with pytest.raises(ar.ReleaseError, match="no release id or version 'zzz'"):
        run(lab.root, "rollback", to="zzz")


def test_rollback_by_version_prefers_the_newest_good_release(lab: Lab) -> None:
    for rid, status in (("2.0.0-aa", "good"), ("2.0.0-bb", "failed"), ("3.0.0-cc", "good")):
        lab.install(rid, version=rid.split("-")[0])
        run(lab.root, "activate", release_id=rid)
        run(lab.root, "mark", release_id=rid, status=status)
    assert run(lab.root, "rollback", to="2.0.0")["to"] == "2.0.0-aa"


def test_rollback_check_mode_and_without_current(lab: Lab) -> None:
    with pytest.raises(ar.ReleaseError, match="no release is current"):
        run(lab.root, "rollback")
    lab.deploy("1.0.0")
    lab.deploy("2.0.0")
    before = lab.tree()
    result = run(lab.root, "rollback", check=True)
    assert (result["from"], result["to"], result["changed"]) == ("2.0.0", "1.0.0", True)
    assert lab.tree() == before


# ============================================================================ prune and remove


def prune_case(lab: Lab, spec: list[tuple[str, bool, str | None]], current: str) -> None:
    """Releases oldest first: (id, activated?, final status or None for 'installed')."""
    for rid, activated, status in spec:
        lab.install(rid)
        if activated:
            run(lab.root, "activate", release_id=rid)
        if status:
            run(lab.root, "mark", release_id=rid, status=status)
    run(lab.root, "activate", release_id=current)


def test_prune_never_current_never_previous_good_failed_not_counted(lab: Lab) -> None:
    prune_case(
        lab,
        [
            ("r1", True, "good"),
            ("r2", True, "good"),  # previous good: kept even beyond keep_releases
            ("r3", False, "failed"),  # failed before activation: always removed
            ("r4", True, "failed"),  # failed after activation: not counted
            ("r5", False, None),  # installed, becomes current
        ],
        current="r5",
    )
    plan = run(lab.root, "prune", check=True, keep_releases=1)
    assert {r["release_id"]: r["reason"] for r in plan["removed"]} == {
        "r4": "failed, older than the 1 kept releases",
        "r3": "failed before activation",
        "r1": "beyond keep_releases=1",
    }
    assert lab.ids() == ["r1", "r2", "r3", "r4", "r5"]  # check mode removed nothing
    result = run(lab.root, "prune", keep_releases=1)
    assert lab.ids() == ["r2", "r5"] and result["changed"] is True
    assert run(lab.root, "prune", keep_releases=1)["changed"] is False
    assert not [p for p in os.listdir(lab.root / "releases") if p.startswith(".")]


def test_prune_counts_good_and_installed_only(lab: Lab) -> None:
    prune_case(
        lab,
        [
            ("r1", True, "good"),
            ("r2", True, "good"),
            ("r3", True, "good"),
            ("r4", True, "failed"),  # newer than the kept ones: kept, not counted
            ("r5", True, "good"),
        ],
        current="r5",
    )
    run(lab.root, "prune", keep_releases=3)
    assert lab.ids() == ["r2", "r3", "r4", "r5"]  # r1 is the 4th good one
    assert run(lab.root)["previous_good"] == "r3"


def test_prune_after_rollbacks_keeps_current_and_its_previous_good(lab: Lab) -> None:
    for rid in ("r1", "r2", "r3", "r4"):
        lab.deploy(rid)
    run(lab.root, "rollback")
    run(lab.root, "rollback")  # current r2, previous good r1; r3/r4 rolled back
    run(lab.root, "prune", keep_releases=2)
    assert lab.ids() == ["r1", "r2", "r3", "r4"]  # rolled-back r3/r4 are newer than r2
    run(lab.root, "prune", keep_releases=1)
    # At most keep_releases rolled-back/failed releases stay (a deploy/rollback loop must not
    # fill the disk); current and its previous good release always stay.
    assert lab.ids() == ["r1", "r2", "r4"]
    assert lab.current() == "releases/r2"


def test_prune_removes_leftovers_of_killed_installs(lab: Lab) -> None:
    lab.deploy("r1")
    (lab.root / "releases/.r9.partial").mkdir()
    result = run(lab.root, "prune")
    assert result["changed"] is True and result["removed"] == []
    assert os.listdir(lab.root / "releases") == ["r1"]


def test_remove(lab: Lab) -> None:
    lab.deploy("r1")
    lab.install("r2")
    run(lab.root, "mark", release_id="r2", status="failed")
    with pytest.raises(ar.ReleaseError, match="r1 is current"):
        run(lab.root, "remove", release_id="r1")
    check = run(lab.root, "remove", check=True, release_id="r2")
    assert check["changed"] is True and lab.ids() == ["r1", "r2"]
    result = run(lab.root, "remove", release_id="r2")
    assert result["removed"] == [{"release_id": "r2", "reason": "asked (status failed)"}]
    assert lab.ids() == ["r1"]
    assert run(lab.root, "remove", release_id="r2")["changed"] is False


def test_info_on_an_empty_host(tmp_path: Path) -> None:
    info = run(tmp_path / "nothing-here")
    assert info["current"] is None and info["releases"] == [] and info["previous_good"] is None
    assert not (tmp_path / "nothing-here").exists()


def test_current_pointing_outside_releases_is_reported(lab: Lab) -> None:
    lab.root.mkdir()
    (lab.root / "current").symlink_to("/tmp")
    result = run(lab.root)
    assert result["current"] is None
    assert "outside" in result["warnings_"][0]


def test_a_held_lock_makes_writes_wait_then_fail(lab: Lab) -> None:
    lab.install("r1")
    fd = os.open(lab.root / ".opsbook/lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(ar.ReleaseError, match="another opsbook run holds"):
            run(lab.root, "activate", release_id="r1", lock_timeout_s=0.3)
        assert time.monotonic() - started >= 0.3
        assert run(lab.root)["current"] is None  # info needs no lock
    finally:
        os.close(fd)
    assert run(lab.root, "activate", release_id="r1")["changed"] is True


# ============================================================================ as a module


def run_module(
    name: str, args: dict[str, Any], tmp_path: Path, check_mode: bool = False
) -> tuple[int, dict[str, Any]]:
    """Run library/<name>.py as Ansible runs a jsonargs module: the arguments put into the
    source, the source piped to the host's Python."""
    del tmp_path
    source = (PROJECT_ROOT / "library" / f"{name}.py").read_text()
    payload = json.dumps({**args, "_ansible_check_mode": check_mode, "_opsbook_checked": True})
    assert source.count(JSONARGS) == 1
    result = subprocess.run(
        [HOST_PYTHON, "-"],
        input=source.replace(JSONARGS, payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, json.loads(result.stdout)


JSONARGS = "<<INCLUDE_ANSIBLE_MODULE_JSON_ARGS>>"


def test_app_release_runs_as_a_module(lab: Lab, tmp_path: Path) -> None:
    archive = lab.artifact("2.0.0")
    rc, out = run_module(
        "app_release",
        {
            "deploy_root": str(lab.root),
            "action": "install",
            "release_id": "2.0.0",
            "archive": str(archive),
            "sha256": sha256_file(archive),
            "version": "2.0.0",
        },
        tmp_path,
    )
    assert rc == 0 and out["changed"] is True and out["releases"][0]["release_id"] == "2.0.0"
    rc, out = run_module(
        "app_release", {"deploy_root": str(lab.root), "action": "rollback"}, tmp_path
    )
    assert rc == 1 and out["failed"] is True
    assert out["msg"].startswith("app_release rollback: no release is current")
    rc, out = run_module("app_release", {"deploy_root": str(lab.root), "action": "mark"}, tmp_path)
    assert rc == 1 and "release_id is required with action=mark" in out["msg"]


def test_host_modules_are_stdlib_jsonargs_modules() -> None:
    """No AnsiballZ (its module_utils cost ~0.2 CPU s per run on the host): Ansible must see
    jsonargs modules, and nothing but the standard library is imported."""
    for name in ("app_release", "app_process"):
        source = (PROJECT_ROOT / "library" / f"{name}.py").read_text()
        assert "module_utils" not in source and "ansible_collections" not in source
        assert JSONARGS in source
        result = subprocess.run(
            [HOST_PYTHON, "-I", "-S", "-c",
             f"import runpy; runpy.run_path({str(PROJECT_ROOT / 'library' / name)!r} + '.py')"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def test_module_without_its_action_plugin_says_so(tmp_path: Path) -> None:
    """Run without action_plugins/ (nothing validated): a clear refusal, not a wrong result."""
    script = (PROJECT_ROOT / "library" / "app_release.py").read_text()
    unchecked = json.dumps({"deploy_root": str(tmp_path), "action": "info"})
    for source in (script, script.replace(JSONARGS, unchecked)):
        done = subprocess.run(
            [HOST_PYTHON, "-"], input=source, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert "runs through its action plugin" in json.loads(done.stdout)["msg"]


def test_module_check_mode_and_path_expansion(lab: Lab, tmp_path: Path) -> None:
    archive = lab.artifact("2.1.0")
    rc, out = run_module(
        "app_release",
        {"deploy_root": str(lab.root), "action": "install", "release_id": "2.1.0",
         "archive": str(archive), "sha256": sha256_file(archive), "version": "2.1.0"},
        tmp_path,
        check_mode=True,
    )  # fmt: skip
    assert rc == 0 and out["changed"] is True and out["msg"].startswith("would install")
    assert not (lab.root / "releases" / "2.1.0").exists()
    rc, out = run_module(
        "app_release", {"deploy_root": "~/no-such-root", "action": "info"}, tmp_path
    )
    assert rc == 0 and out["current"] is None  # ~ expanded on the host, not refused as relative


# ============================================================================ app_process


def process_params(root: Path, state: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {k: v.get("default") for k, v in ap.argument_spec().items()}
    base.update(deploy_root=str(root), state=state, python=HOST_PYTHON, timeout_s=10.0)
    base.update(kw)
    return base


def supervise(root: Path, state: str, check: bool = False, **kw: Any) -> dict[str, Any]:
    return ap.run(ap.Supervisor(process_params(root, state, **kw), check))


@pytest.fixture
def app_lab(lab: Lab) -> Iterator[Lab]:
    """1.0.0 and 2.0.0 of the sample app installed, 1.0.0 current, app.json on a free port."""
    lab.install("1.0.0")
    lab.install("2.0.0")
    run(lab.root, "activate", release_id="1.0.0")
    port = free_port("127.0.0.1")
    (lab.root / "shared/app.json").write_text(json.dumps({"host": "127.0.0.1", "port": port}))
    lab.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield lab
    finally:
        pid = ap.read_pid(str(lab.root / "shared/app.pid"))
        if ap.alive(pid):
            os.kill(pid, 15)  # type: ignore[arg-type]


def api(lab: Lab) -> dict[str, Any]:
    return http_get(f"{lab.url}/api/version").body  # type: ignore[attr-defined, no-any-return]


def test_restart_runs_the_release_current_points_at(app_lab: Lab) -> None:
    started = supervise(app_lab.root, "started")
    assert started["changed"] is True and started["old_pid"] is None
    assert started["verified"] is True and started["running_release"] == "1.0.0"
    assert api(app_lab)["version"] == "1.0.0"
    assert started["command"][1] == str((app_lab.root / "releases/1.0.0/app.py").resolve())
    assert supervise(app_lab.root, "started")["changed"] is False
    run(app_lab.root, "activate", release_id="2.0.0")
    restarted = supervise(app_lab.root, "restarted")
    old, new = restarted["old_pid"], restarted["new_pid"]
    assert old == started["pid"] and new != old and not ap.alive(old)
    assert restarted["stopped_pids"] == [old]
    assert restarted["release"] == str((app_lab.root / "releases/2.0.0").resolve())
    answer = api(app_lab)
    assert (answer["version"], answer["pid"]) == ("2.0.0", new)
    stopped = supervise(app_lab.root, "stopped")
    assert stopped["changed"] is True and not ap.alive(new)
    assert supervise(app_lab.root, "stopped")["changed"] is False


def test_started_restarts_a_process_running_an_older_release(app_lab: Lab) -> None:
    first = supervise(app_lab.root, "started")
    run(app_lab.root, "activate", release_id="2.0.0")
    kept = supervise(app_lab.root, "started", restart_stale=False)
    assert kept["changed"] is False and "current is 2.0.0" in kept["msg"]
    stale = supervise(app_lab.root, "started")
    assert stale["changed"] is True and stale["old_pid"] == first["pid"]
    assert "ran release 1.0.0" in stale["msg"] and api(app_lab)["version"] == "2.0.0"


def test_process_check_mode_signals_nothing(app_lab: Lab) -> None:
    first = supervise(app_lab.root, "started")
    for state in ("restarted", "stopped"):
        result = supervise(app_lab.root, state, check=True)
        assert result["changed"] is True and result["msg"].startswith("would")
    assert api(app_lab)["pid"] == first["pid"]


DAEMON = r"""
import os, signal, sys, time
pidfile = sys.argv[1]
if os.fork():
    os._exit(0)
os.setsid()
worker = os.fork()
if worker == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a stubborn worker of the old release
    while True:
        time.sleep(1)
open(pidfile + ".worker", "w").write(str(worker))
open(pidfile, "w").write(str(os.getpid()))
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))   # the leader goes, the worker stays
while True:
    time.sleep(1)
"""


def test_no_process_of_the_old_session_survives_a_restart(lab: Lab) -> None:
    lab.deploy("1.0.0")
    daemon = lab.root / "releases/1.0.0/daemon.py"
    daemon.write_text(DAEMON)
    pidfile = lab.root / "shared/d.pid"
    command = [HOST_PYTHON, str(lab.root / "current/daemon.py"), str(pidfile)]
    kw = {"command": command, "pidfile": str(pidfile), "timeout_s": 1.0}
    first = supervise(lab.root, "started", **kw)
    worker = int(Path(f"{pidfile}.worker").read_text())
    assert ap.alive(worker) and ap.session_of(worker) == first["pid"]
    try:
        second = supervise(lab.root, "restarted", **kw)
        assert sorted(second["stopped_pids"]) == sorted([first["pid"], worker])
        assert not ap.alive(first["pid"]) and not ap.alive(worker)  # SIGKILLed after 1 s
    finally:
        for pid in (ap.read_pid(str(pidfile)), int(Path(f"{pidfile}.worker").read_text())):
            if ap.alive(pid):
                os.kill(pid, 9)  # type: ignore[arg-type]


def test_module_detach_runs_a_foreground_command(app_lab: Lab) -> None:
    command = [HOST_PYTHON, str(app_lab.root / "current/app.py")]
    result = supervise(app_lab.root, "restarted", detach="module", command=command)
    assert result["verified"] is True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            answer = api(app_lab)
            break
        except OSError:
            time.sleep(0.1)
    assert answer["pid"] == result["pid"] and answer["version"] == "1.0.0"
    failing = supervise(app_lab.root, "stopped")
    assert failing["changed"] is True
    with pytest.raises(ap.ProcessError, match="exited with 2 right after starting"):
        supervise(app_lab.root, "started", detach="module", command=[HOST_PYTHON, "-c", "exit(2)"])


def test_start_failures_are_reported(app_lab: Lab) -> None:
    with pytest.raises(ap.ProcessError, match="exited with 3: boom"):
        supervise(
            app_lab.root,
            "started",
            command=[HOST_PYTHON, "-c", "import sys; print('boom'); sys.exit(3)"],
        )
    with pytest.raises(ap.ProcessError, match="names no new live process"):
        supervise(app_lab.root, "started", command=["/bin/true"], timeout_s=0.3)
    (app_lab.root / "current").unlink()
    with pytest.raises(ap.ProcessError, match="does not exist: no release to run"):
        supervise(app_lab.root, "started")


def test_command_rewrite(tmp_path: Path) -> None:
    sup = ap.Supervisor(process_params(tmp_path, "started", command=None), False)
    argv, rewritten = sup.command(str(tmp_path / "releases/7"))
    assert argv == [HOST_PYTHON, str(tmp_path / "releases/7/app.py"), "--detach"] and rewritten
    custom = [
        f"{tmp_path}/current/bin/run",
        "--config",
        f"{tmp_path}/shared/c",
        f"{tmp_path}/currently",
    ]
    sup = ap.Supervisor(process_params(tmp_path, "started", command=custom), False)
    argv, _ = sup.command(str(tmp_path / "releases/7"))
    assert argv == [f"{tmp_path}/releases/7/bin/run", "--config", f"{tmp_path}/shared/c",
                    f"{tmp_path}/currently"]  # fmt: skip
    sup = ap.Supervisor(process_params(tmp_path, "started", resolve_current=False), False)
    assert sup.command("/x")[1] is False


# ============================================================================ release_artifact


def artifact_params(src: str, cache: Path, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {k: v.get("default") for k, v in ra.argument_spec().items()}
    base.update(src=src, cache_dir=str(cache), timeout_s=10.0)
    base.update(kw)
    return base


def fetch(src: str, cache: Path, check: bool = False, **kw: Any) -> dict[str, Any]:
    return ra.Fetcher(artifact_params(src, cache, **kw), check).run()


@pytest.mark.parametrize(
    ("src", "shown"),
    [
        (
            "https://user:pw@h.example:8443/a/app.tgz?X-Amz-Signature=s#f",
            "https://h.example:8443/a/app.tgz",
        ),
        ("s3://bucket/key.tar.gz", "s3://bucket/key.tar.gz"),
        ("/srv/app.tar.gz", "/srv/app.tar.gz"),
    ],
)
def test_display_src_hides_credentials(src: str, shown: str) -> None:
    assert ra.display_src(src) == shown


def test_artifact_pure_parts() -> None:
    assert ra.cache_suffix("https://h/x/app-1.tgz?a=b") == ".tar.gz"
    assert ra.cache_suffix("/x/app.tar.xz") == ".tar.xz"
    assert ra.cache_suffix("s3://b/k") == ".tar.gz"
    digest = "ab" * 32
    assert ra.parse_sidecar(f"{digest}  app.tar.gz\n", "x") == digest
    assert ra.parse_sidecar(f"\n{digest.upper()}\n", "x") == digest
    with pytest.raises(ra.ArtifactError, match="does not hold a sha256"):
        ra.parse_sidecar("not a digest", "x")
    assert ra.normalize_sha(f"sha256:{digest.upper()}") == digest
    assert ra.sidecar_url("https://h/a.tgz?sig=1") == "https://h/a.tgz.sha256?sig=1"
    with pytest.raises(ra.ArtifactError, match="unsupported scheme 'ftp'"):
        ra.source_kind("ftp://h/a.tgz")


def test_local_artifact_is_cached_by_sha256(lab: Lab, tmp_path: Path) -> None:
    archive = lab.artifact("2.0.0")
    sha = sha256_file(archive)
    cache = tmp_path / "cache"
    plain = fetch(str(archive), cache)
    assert plain["changed"] is True and plain["verified"] is False
    assert plain["sha256_source"] == "computed" and plain["path"] == str(cache / f"{sha}.tar.gz")
    again = fetch(f"file://{archive}", cache, sha256=sha)
    assert again["changed"] is False and again["cached"] is True and again["verified"] is True
    Path(again["path"]).write_bytes(b"corrupted")  # a damaged cache entry is replaced
    healed = fetch(str(archive), cache, sha256=sha)
    assert healed["changed"] is True and sha256_file(healed["path"]) == sha


def test_local_artifact_checksum_rules(lab: Lab, tmp_path: Path) -> None:
    archive = lab.artifact("2.0.0")
    cache = tmp_path / "cache"
    with pytest.raises(ra.ArtifactError, match=r"sha256 mismatch.*nothing was cached"):
        fetch(str(archive), cache, sha256="0" * 64)
    assert not cache.exists()
    Path(f"{archive}.sha256").write_text(f"{'1' * 64}  {archive.name}\n")
    with pytest.raises(ra.ArtifactError, match="sha256 mismatch"):
        fetch(str(archive), cache)
    Path(f"{archive}.sha256").write_text(f"{sha256_file(archive)}  {archive.name}\n")
    assert fetch(str(archive), cache)["sha256_source"] == "sidecar"
    with pytest.raises(ra.ArtifactError, match="does not exist"):
        fetch(str(tmp_path / "missing.tar.gz"), cache)


def test_local_artifact_in_check_mode_writes_nothing(lab: Lab, tmp_path: Path) -> None:
    archive = lab.artifact("2.0.0")
    cache = tmp_path / "cache"
    result = fetch(str(archive), cache, check=True, sha256=sha256_file(archive))
    assert result["changed"] is True and result["msg"].startswith("would fetch")
    assert not cache.exists()


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = lambda *a, **k: _Files(*a, directory=str(www), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()


def test_http_artifact_needs_an_explicit_sha256(
    lab: Lab, tmp_path: Path, http_dir: tuple[str, Path]
) -> None:
    base, www = http_dir
    archive = lab.artifact("2.0.0")
    (www / archive.name).write_bytes(archive.read_bytes())
    (www / f"{archive.name}.sha256").write_text(sha256_file(archive))
    cache = tmp_path / "cache"
    with pytest.raises(ra.ArtifactError, match="plain http:// source needs sha256"):
        fetch(f"{base}/{archive.name}", cache)
    ok = fetch(f"{base}/{archive.name}", cache, sha256=sha256_file(archive))
    assert ok["changed"] is True and ok["bytes"] == archive.stat().st_size
    with pytest.raises(ra.ArtifactError, match=r"sha256 mismatch.*discarded"):
        fetch(f"{base}/{archive.name}", tmp_path / "c2", sha256="2" * 64)
    assert not list((tmp_path / "c2").iterdir())  # no temporary file left
    with pytest.raises(ra.ArtifactError, match="HTTP 404"):
        fetch(f"{base}/nope.tar.gz", cache, sha256="2" * 64)
    check = fetch(f"{base}/{archive.name}", tmp_path / "c3", check=True, sha256="3" * 64)
    assert check["bytes"] == archive.stat().st_size and not (tmp_path / "c3").exists()


def test_s3_artifact_with_sidecar_and_checksum(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    archive = lab.artifact("2.0.0")
    sha = sha256_file(archive)
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="arts")
        client.put_object(Bucket="arts", Key="app/a.tar.gz", Body=archive.read_bytes())
        cache = tmp_path / "cache"
        with pytest.raises(ra.ArtifactError, match="unverified download is refused"):
            fetch("s3://arts/app/a.tar.gz", cache)
        client.put_object(Bucket="arts", Key="app/a.tar.gz.sha256", Body=f"{sha}  a.tar.gz\n")
        got = fetch("s3://arts/app/a.tar.gz", cache)
        assert got["sha256_source"] == "sidecar" and got["sha256"] == sha
        assert hashlib.sha256(Path(got["path"]).read_bytes()).hexdigest() == sha
        assert fetch("s3://arts/app/a.tar.gz", cache, sha256=sha)["cached"] is True
        with pytest.raises(ra.ArtifactError, match="sha256 mismatch"):
            fetch("s3://arts/app/a.tar.gz", tmp_path / "c2", sha256="4" * 64)
        with pytest.raises(ra.ArtifactError, match="does not exist"):
            fetch("s3://arts/app/missing.tar.gz", cache, sha256="4" * 64)


# ============================================================================ deploy shortcuts


def test_install_removes_the_copied_archive_when_asked(lab: Lab) -> None:
    archive = lab.tmp / "copied.tar.gz"
    archive.write_bytes(lab.artifact("1.0.0").read_bytes())
    lab.install("1.0.0", archive=archive, remove_archive=True)
    assert not archive.exists()
    assert (lab.root / "releases" / "1.0.0" / "app.py").exists()
    # Also when the install fails (the sha256 does not match): nothing is left behind.
    again = lab.tmp / "copied-again.tar.gz"
    again.write_bytes(lab.artifact("2.0.0").read_bytes())
    with pytest.raises(ar.ReleaseError):
        lab.install("2.0.0", archive=again, sha256="0" * 64, remove_archive=True)
    assert not again.exists()
    assert "2.0.0" not in lab.ids()


def test_install_keeps_the_archive_by_default(lab: Lab) -> None:
    archive = lab.tmp / "kept.tar.gz"
    archive.write_bytes(lab.artifact("1.0.0").read_bytes())
    lab.install("1.0.0", archive=archive)
    assert archive.exists()


def test_mark_with_prune_marks_then_applies_keep_releases(lab: Lab) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        lab.deploy(version)
    lab.install("4.0.0")
    run(lab.root, "activate", release_id="4.0.0")
    result = run(lab.root, "mark", release_id="4.0.0", status="good", prune=True, keep_releases=2)
    assert result["changed"] is True
    assert lab.status()["4.0.0"] == "good"
    assert sorted(r["release_id"] for r in result["removed"]) == ["1.0.0", "2.0.0"]
    assert lab.ids() == ["3.0.0", "4.0.0"]
    # Without prune, mark leaves the other releases alone.
    lab.install("5.0.0")
    run(lab.root, "activate", release_id="5.0.0")
    plain = run(lab.root, "mark", release_id="5.0.0", status="good", keep_releases=1)
    assert "removed" not in plain
    assert lab.ids() == ["3.0.0", "4.0.0", "5.0.0"]
