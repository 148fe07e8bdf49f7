"""roles/release (and roles/app_service, app_release, app_process, release_artifact) through
ansible-playbook over real SSH, against this module's own three app hosts on 127.0.10.21-23.

The role's entry points are applied by tests/playbooks/release.yml (a list of steps). Before
each test the hosts are put back to the lab's start: sample app 1.0.0 unpacked by the lab
(no opsbook metadata), current pointing at it, the app running.

Sources: a local file, an https:// URL served by a local TLS server with a self-signed
certificate (trusted through release_artifact_ca_path; the same server without the CA is
refused), and an s3:// object on the session's moto server (the `s3` fixture).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import (
    AppHost,
    SshKeyPair,
    build_release,
    pid_alive,
    sha256_file,
    start_app_hosts,
    stop_all,
)
from opsbook.lab._proc import make_lab_dir
from tests.harness import ansible_env, run_ansible
from tests.integration.stats_helper import stats_env
from tests.lab import MotoS3Server, write_inventory

pytestmark = pytest.mark.integration

PLAYBOOK = "tests/playbooks/release.yml"
RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)
RUN_ID = "test-run-0001"
OPERATOR = "release-tester"
# The rules below (keep_releases, rollback targets, check mode, the atomic switch) are each
# host's own: those tests run the role on rel1 alone and check that rel2 and rel3 were left as
# they were. The three hosts in parallel: test_deploy_v1_then_v2_..., test_a_failed_install_...
# (and test_deploy.py, through deploy.yml).
ONE_HOST = {"release_test_hosts": "rel1"}


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    facts: dict[str, dict[str, Any]]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP_RE.finditer(self.stdout)
        }

    def __repr__(self) -> str:  # shown by pytest when an assert fails
        return f"Run(rc={self.rc})\n{self.output[-6000:]}"


class ReleaseLab:
    """The module's hosts, their inventory, artifacts and a runner for the test playbook."""

    def __init__(self, base: Path, hosts: list[AppHost], inventory: Path) -> None:
        self.base = base
        self.hosts = hosts
        self.inventory = inventory
        self.artifacts = base / "artifacts"
        self.cache = base / "cache"
        self.runs = 0

    # ---- artifacts and steps

    def artifact(self, version: str) -> Path:
        return build_release(version, self.artifacts)

    def source(self, version: str, **extra: Any) -> dict[str, Any]:
        """Variables of a release of the sample app from a local artifact."""
        artifact = self.artifact(version)
        return {
            "release_id": version,
            "release_version": version,
            "release_artifact_src": str(artifact),
            "release_artifact_sha256": sha256_file(artifact),
            "release_artifact_cache_dir": str(self.cache),
            **extra,
        }

    @staticmethod
    def step(entry: str, **variables: Any) -> dict[str, Any]:
        return {"entry": entry, "vars": variables}

    def main(self, version: str, **extra: Any) -> dict[str, Any]:
        return self.step("main", **self.source(version, **extra))

    def deploy_good(self, version: str, **extra: Any) -> list[dict[str, Any]]:
        return [
            self.main(version, **extra),
            self.step("mark", release_id=version, release_status="good"),
        ]

    # ---- running the playbook

    def play(self, steps: list[dict[str, Any]], check: bool = False, **extra: Any) -> Run:
        self.runs += 1
        extravars = {"release_test_steps": steps, "opsbook_reason": "release role test", **extra}
        vars_file = self.base / f"extravars-{self.runs}.json"
        vars_file.write_text(json.dumps(extravars))
        argv = [PLAYBOOK, "-i", str(self.inventory / "hosts.yml"), "-e", f"@{vars_file}"]
        if check:
            argv.append("--check")
        # The role's facts: published per host by the playbook (set_stats), dumped by the
        # stats callback.
        stats, stats_file = stats_env(self.base)
        env = ansible_env(
            self.base / "oplog.jsonl",
            {"OPSBOOK_RUN_ID": RUN_ID, "OPSBOOK_OPERATOR": OPERATOR, **stats},
        )
        result = run_ansible(argv, env=env, timeout=600, tool="ansible-playbook")
        custom = json.loads(stats_file.read_text())["custom"] if stats_file.exists() else {}
        facts = {
            host: data["release_test_facts"]
            for host, data in custom.items()
            if "release_test_facts" in data
        }
        return Run(result.returncode, result.stdout, result.stderr, facts)

    # ---- state of the hosts

    def reset(self) -> None:
        """Back to the lab's start: 1.0.0 unpacked by the lab (unmanaged), current, running."""
        for host in self.hosts:
            host.stop_app()
            for name in ("releases", ".opsbook", "shared"):
                shutil.rmtree(host.deploy_root / name, ignore_errors=True)
            host.current_link.unlink(missing_ok=True)
            host.start("1.0.0")

    @staticmethod
    def tree(host: AppHost) -> dict[str, Any]:
        """Every path under the deploy root: link target, mode, mtime, size (not the app log)."""
        out: dict[str, Any] = {}
        for dirpath, dirnames, filenames in os.walk(host.deploy_root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                rel = str(path.relative_to(host.deploy_root))
                if rel == "shared/app.log":
                    continue
                st = path.lstat()
                link = os.readlink(path) if path.is_symlink() else None
                out[rel] = (link, st.st_mode, st.st_mtime_ns, st.st_size)
        return out

    def trees(self) -> dict[str, Any]:
        return {h.name: self.tree(h) for h in self.hosts}

    @staticmethod
    def meta(host: AppHost, release_id: str) -> dict[str, Any]:
        path = host.deploy_root / "releases" / release_id / ".opsbook-release.json"
        return dict(json.loads(path.read_text()))

    @staticmethod
    def serving(host: AppHost) -> tuple[str, int]:
        answer = host.get("/api/version")
        assert answer.status == 200, answer
        return str(answer.body["version"]), int(answer.body["pid"])


@pytest.fixture(scope="module")
def release_lab(
    tmp_path_factory: pytest.TempPathFactory, ssh_key: SshKeyPair
) -> Iterator[ReleaseLab]:
    base = make_lab_dir(tmp_path_factory.mktemp("release-role"))
    hosts = start_app_hosts(3, base / "hosts", ssh_key, first_address=21, name_prefix="rel")
    try:
        inventory = write_inventory(base / "inventory", hosts, None, env="test")
        yield ReleaseLab(base, hosts, inventory)
    finally:
        stop_all(hosts)


@pytest.fixture
def lab(release_lab: ReleaseLab) -> ReleaseLab:
    release_lab.reset()
    return release_lab


def assert_ok(run: Run) -> None:
    failed = any(r["failed"] or r["unreachable"] for r in run.recap().values())
    if run.rc != 0 or failed:
        pytest.fail(f"ansible-playbook exited {run.rc}:\n{run.output[-8000:]}", pytrace=False)


# ============================================================================ deploy


def test_deploy_v1_then_v2_serves_v2_from_a_new_process_and_a_rerun_changes_nothing(
    lab: ReleaseLab,
) -> None:
    start_pids = {h.name: h.app_pid for h in lab.hosts}

    v1 = lab.play([lab.main("1.0.0", release_shared_paths=["log"])])
    assert_ok(v1)
    for host in lab.hosts:
        facts = v1.facts[host.name]
        # the lab's unmanaged 1.0.0 is the same bytes: adopted, not unpacked again
        assert facts["release_install"]["changed"] is True
        assert facts["release_activation"] == {
            "changed": False, "previous": "1.0.0", "current": "1.0.0",
            "pid": start_pids[host.name],
        }  # fmt: skip
        assert lab.serving(host) == ("1.0.0", start_pids[host.name])
        assert lab.meta(host, "1.0.0")["sha256"] == sha256_file(lab.artifact("1.0.0"))

    v2 = lab.play([lab.main("2.0.0", release_shared_paths=["log"])])
    assert_ok(v2)
    assert all(r["changed"] > 0 for r in v2.recap().values()) and len(v2.recap()) == 3
    for host in lab.hosts:
        version, pid = lab.serving(host)
        assert version == "2.0.0" and pid != start_pids[host.name]
        assert not pid_alive(start_pids[host.name])
        assert os.readlink(host.current_link) == "releases/2.0.0"
        assert os.readlink(host.deploy_root / "releases/2.0.0/log") == "../../shared/log"
        meta = lab.meta(host, "2.0.0")
        assert meta["version"] == "2.0.0" and meta["status"] == "installed"
        assert meta["sha256"] == sha256_file(lab.artifact("2.0.0"))
        assert meta["deployed_by"] == OPERATOR and meta["run_id"] == RUN_ID
        assert meta["reason"] == "release role test" and meta["env"] == "local"
        assert meta["artifact_src"] == str(lab.artifact("2.0.0"))
        assert meta["activated_at"] and meta["activations"] == 1
        activation = v2.facts[host.name]["release_activation"]
        assert activation["previous"] == "1.0.0" and activation["pid"] == pid
        # the copied archive was removed once unpacked
        assert no_archive_left(host)
        history = json.loads((host.deploy_root / ".opsbook/history.json").read_text())
        assert [(e["release_id"], e["previous"]) for e in history["activations"]] == [
            ("2.0.0", "1.0.0")
        ]
    pids = {h.name: lab.serving(h)[1] for h in lab.hosts}
    trees = lab.trees()

    again = lab.play([lab.main("2.0.0", release_shared_paths=["log"])])
    assert_ok(again)
    assert {h: r["changed"] for h, r in again.recap().items()} == {h.name: 0 for h in lab.hosts}
    assert {h.name: lab.serving(h)[1] for h in lab.hosts} == pids
    assert lab.trees() == trees


def no_archive_left(host: Any) -> bool:
    """The archive install sent (into the task's temporary directory) is gone, unpacked or not."""
    sent = [*host.deploy_root.rglob("*.tar.gz"), *host.home.rglob("release-archive")]
    return not sent and not list(host.home.rglob("ansible-tmp-*"))


def test_a_failed_install_leaves_nothing_behind(lab: ReleaseLab) -> None:
    evil = lab.base / "evil" / "sampleapp-6.6.6.tar.gz"
    evil.parent.mkdir(exist_ok=True)
    with tarfile.open(evil, "w:gz") as tar:
        for name, data in (("app.py", b"print('x')\n"), ("../escape", b"boom")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pids = {h.name: h.app_pid for h in lab.hosts}
    run = lab.play(
        [
            lab.step(
                "main",
                release_id="6.6.6",
                release_version="6.6.6",
                release_artifact_src=str(evil),
                release_artifact_sha256=sha256_file(evil),
                release_artifact_cache_dir=str(lab.cache),
            )
        ]
    )
    assert run.rc != 0
    assert "'..' is not allowed" in run.output
    assert "current and the other releases are untouched" in run.output
    for host in lab.hosts:
        releases = host.deploy_root / "releases"
        assert sorted(os.listdir(releases)) == ["1.0.0"]  # no 6.6.6, no .6.6.6.partial
        assert no_archive_left(host)
        assert Path(os.readlink(host.current_link)).name == "1.0.0"
        assert not (host.deploy_root / "escape").exists()
        assert host.app_pid == pids[host.name] and lab.serving(host)[0] == "1.0.0"


def test_a_checksum_mismatch_is_refused_before_any_host_is_touched(lab: ReleaseLab) -> None:
    before = lab.trees()
    variables = lab.source("2.0.0", release_artifact_sha256="0" * 64)
    run = lab.play([lab.step("main", **variables)])
    assert run.rc != 0
    assert "sha256 mismatch" in run.output and "nothing was cached or installed" in run.output
    assert lab.trees() == before
    assert all(not (h.deploy_root / ".opsbook").exists() for h in lab.hosts)
    assert "fetch | Fetch and verify" in run.stdout and "install |" not in run.stdout


# ============================================================================ sources


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """An https:// server on 127.0.0.1 with a self-signed certificate: (base URL, www, cert)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: _Files(*a, directory=str(www), **k)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", www, cert
    finally:
        server.shutdown()
        server.server_close()


def test_https_source_verified_by_its_sidecar(
    lab: ReleaseLab, https_server: tuple[str, Path, Path]
) -> None:
    base, www, cert = https_server
    artifact = lab.artifact("2.1.0")
    shutil.copy(artifact, www / artifact.name)
    (www / f"{artifact.name}.sha256").write_text(f"{sha256_file(artifact)}  {artifact.name}\n")
    url = f"{base}/{artifact.name}"
    common = {"release_artifact_cache_dir": str(lab.base / "cache-https")}
    one = {"release_test_hosts": "rel1"}  # the source is what is tested: one host is enough

    untrusted = lab.play([lab.step("fetch", release_artifact_src=url, **common)], **one)
    assert untrusted.rc != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.output

    shutil.copy(artifact, www / "no-sidecar.tar.gz")
    unverified = lab.play(
        [lab.step("fetch", release_artifact_src=f"{base}/no-sidecar.tar.gz",
                  release_artifact_ca_path=str(cert), **common)],
        **one,
    )  # fmt: skip
    assert unverified.rc != 0 and "unverified download is refused" in unverified.output

    run = lab.play(
        [
            lab.step(
                "main",
                release_id="2.1.0",
                release_version="2.1.0",
                release_artifact_src=url,
                release_artifact_ca_path=str(cert),
                **common,
            )
        ],
        **one,
    )
    assert_ok(run)
    host, untouched = lab.hosts[0], lab.hosts[1:]
    local = run.facts[host.name]["release_artifact_local"]
    assert local["verified"] is True and local["sha256"] == sha256_file(artifact)
    assert lab.serving(host)[0] == "2.1.0"
    assert lab.meta(host, "2.1.0")["artifact_src"] == url
    assert all(lab.serving(h)[0] == "1.0.0" for h in untouched)


def test_s3_source(lab: ReleaseLab, s3: MotoS3Server) -> None:
    artifact = lab.artifact("2.2.0")
    key = f"artifacts/{artifact.name}"
    s3.client().put_object(Bucket="opsbook-test", Key=key, Body=artifact.read_bytes())
    variables = {
        "release_id": "2.2.0",
        "release_version": "2.2.0",
        "release_artifact_src": f"s3://opsbook-test/{key}",
        "release_artifact_sha256": sha256_file(artifact),
        "release_s3_endpoint_url": s3.endpoint_url,
        "release_artifact_cache_dir": str(lab.base / "cache-s3"),
    }
    run = lab.play([lab.step("main", **variables)], release_test_hosts="rel1")
    assert_ok(run)
    host = lab.hosts[0]
    assert lab.serving(host)[0] == "2.2.0"
    assert lab.meta(host, "2.2.0")["artifact_src"] == f"s3://opsbook-test/{key}"
    assert run.facts[host.name]["release_artifact_local"]["verified"] is True


# ============================================================================ keep, rollback


def test_keep_releases_rules(lab: ReleaseLab) -> None:
    keep_all = {"release_keep_releases": 50, "release_restart": False}
    steps = [
        lab.main("1.1.0", **keep_all),
        lab.step("mark", release_id="1.1.0", release_status="good"),
        lab.main("1.2.0", **keep_all),
        lab.step("mark", release_id="1.2.0", release_status="good"),
        lab.step("fetch", **lab.source("1.3.0")),
        lab.step("install", **lab.source("1.3.0")),  # never activated
        lab.main("1.4.0", **keep_all),  # activated, then failed its gate
        lab.main("1.5.0", **keep_all),  # current, installed (not yet marked)
        lab.step("mark", release_id="1.3.0", release_status="failed"),
        lab.step("mark", release_id="1.4.0", release_status="failed"),
    ]
    host, others = lab.hosts[0], lab.hosts[1:]
    untouched = {h.name: lab.tree(h) for h in others}
    assert_ok(lab.play(steps, **ONE_HOST))
    all_ids = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"]
    assert sorted(os.listdir(host.deploy_root / "releases")) == all_ids

    check = lab.play([lab.step("prune", release_keep_releases=1)], check=True, **ONE_HOST)
    assert_ok(check)
    assert sorted(os.listdir(host.deploy_root / "releases")) == all_ids

    run = lab.play([lab.step("prune", release_keep_releases=1)], **ONE_HOST)
    assert_ok(run)
    # 1.5.0 current; 1.2.0 the previous good; 1.4.0 failed (not counted, older than the
    # kept one); 1.3.0 failed before activation; 1.1.0 and the adopted 1.0.0 beyond keep
    assert sorted(os.listdir(host.deploy_root / "releases")) == ["1.2.0", "1.5.0"]
    pruned = run.facts[host.name]["release_prune"]["removed"]
    removed = {r["release_id"]: r["reason"] for r in pruned}
    assert removed == {
        "1.4.0": "failed, older than the 1 kept releases",
        "1.3.0": "failed before activation",
        "1.1.0": "beyond keep_releases=1",
        "1.0.0": "beyond keep_releases=1",
    }
    assert run.facts[host.name]["release_state"]["previous_good"] == "1.2.0"
    assert {h.name: lab.tree(h) for h in others} == untouched


def test_rollback_twice_follows_current_not_the_newest_directory(lab: ReleaseLab) -> None:
    host, others = lab.hosts[0], lab.hosts[1:]
    untouched = {h.name: (lab.tree(h), lab.serving(h)) for h in others}
    quick = {"release_restart": False}  # the app keeps serving 1.0.0 until the rollbacks
    assert_ok(lab.play([*lab.deploy_good("3.0.0", **quick), *lab.deploy_good("3.1.0", **quick),
                        *lab.deploy_good("3.2.0", **quick)], **ONE_HOST))  # fmt: skip
    version, pid = lab.serving(host)
    assert version == "1.0.0"

    first = lab.play([lab.step("rollback", release_metadata={"reason": "bad 3.2.0"})], **ONE_HOST)
    assert_ok(first)
    assert first.facts[host.name]["release_rollback"]["from"] == "3.2.0"
    assert first.facts[host.name]["release_rollback"]["to"] == "3.1.0"
    version, new_pid = lab.serving(host)
    assert version == "3.1.0" and new_pid != pid and not pid_alive(pid)
    assert lab.meta(host, "3.2.0")["status"] == "rolled_back"
    assert max(os.listdir(host.deploy_root / "releases")) == "3.2.0"  # still the newest dir
    pid = new_pid

    second = lab.play([lab.step("rollback")], **ONE_HOST)
    assert_ok(second)
    rollback = second.facts[host.name]["release_rollback"]
    assert (rollback["from"], rollback["to"], rollback["changed"]) == ("3.1.0", "3.0.0", True)
    version, new_pid = lab.serving(host)
    assert version == "3.0.0" and new_pid != pid
    assert Path(os.readlink(host.current_link)).name == "3.0.0"
    history = json.loads((host.deploy_root / ".opsbook/history.json").read_text())
    actions = [(e["action"], e["release_id"]) for e in history["activations"]][-2:]
    assert actions == [("rollback", "3.1.0"), ("rollback", "3.0.0")]
    assert history["activations"][-2]["reason"] == "bad 3.2.0"

    named = lab.play([lab.step("rollback", release_rollback_to="3.2.0")], **ONE_HOST)
    assert_ok(named)
    assert lab.serving(host)[0] == "3.2.0"
    assert {h.name: (lab.tree(h), lab.serving(h)) for h in others} == untouched


def test_check_mode_changes_nothing(lab: ReleaseLab) -> None:
    host = lab.hosts[0]
    assert_ok(lab.play(lab.deploy_good("2.0.0"), **ONE_HOST))
    trees = lab.trees()
    serving = {h.name: lab.serving(h) for h in lab.hosts}
    assert serving[host.name][0] == "2.0.0"

    deploy = lab.play([lab.main("4.0.0")], check=True, **ONE_HOST)
    assert_ok(deploy)
    rollback = lab.play([lab.step("rollback")], check=True, **ONE_HOST)
    assert_ok(rollback)
    assert deploy.facts[host.name]["release_activation"]["changed"] is True  # would switch
    assert deploy.facts[host.name]["release_activation"]["current"] == "4.0.0"
    assert rollback.facts[host.name]["release_rollback"]["to"] == "1.0.0"
    assert lab.trees() == trees
    assert {h.name: lab.serving(h) for h in lab.hosts} == serving


def test_current_is_never_missing_while_activating(lab: ReleaseLab) -> None:
    host, others = lab.hosts[0], lab.hosts[1:]
    untouched = {h.name: lab.tree(h) for h in others}
    no_restart = {"release_restart": False}
    assert_ok(lab.play([lab.main("5.0.0", **no_restart), lab.main("5.1.0", **no_restart)],
                       **ONE_HOST))  # fmt: skip
    stop = threading.Event()
    seen: set[str] = set()
    misses: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                target = os.readlink(host.current_link)
                if not (host.current_link / "app.py").is_file():
                    misses.append(f"{host.name}: no app.py behind {target}")
                seen.add(target)
            except OSError as exc:
                misses.append(f"{host.name}: {exc!r}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        steps = [
            lab.step("activate", release_id=rid, **no_restart)
            for rid in ("5.0.0", "5.1.0", "5.0.0", "5.1.0")
        ]
        run = lab.play(steps, **ONE_HOST)
    finally:
        stop.set()
        thread.join()
    assert_ok(run)
    assert misses == []
    assert seen == {"releases/5.0.0", "releases/5.1.0"}, seen
    assert {h.name: lab.tree(h) for h in others} == untouched
