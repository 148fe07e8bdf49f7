"""playbooks/routine_checks.yml against the real lab, and library/tls_cert.py against local TLS
servers with certificates made here (a test CA, a certificate it signed, one expiring soon, an
expired one, a self-signed one).

Three playbook runs, shared by the tests (module scope), in this order:
  faults   --check, with what the cleanups should find in place, no backup at all (an empty
           storage), the app hosts' app_base_url on the local TLS servers (valid, expired,
           self-signed), a secret never rotated (due) and one app host unreachable;
  (a fresh verified backup in the S3 storage, by the pg_backup module itself)
  healthy  the lab with that backup: ok, every check present, the disposable things removed;
  again    the same, a second time, with the disk warn threshold at 1% and the RPO at 0.36 s:
           nothing to remove, nothing changed, disk warns, the backup is older than the RPO.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opsbook.lab import AppHost, PostgresCluster
from tests.harness import ansible_env, run_ansible
from tests.integration.stats_helper import StatsRun, stats_env
from tests.lab import S3_CREDENTIALS, MotoS3Server, write_inventory
from tests.loaders import load_library, load_module_utils

pytestmark = pytest.mark.integration

tls_cert = load_library("tls_cert")
pg_backup = load_library("pg_backup")
storage_api = load_module_utils("opsbook_storage")

BUCKET = "opsbook-test"
MiB = 1024 * 1024
NOW = dt.datetime.now(dt.UTC)
OLD_REPLACED = f"app__opsbook_old_{(NOW - dt.timedelta(days=30)):%Y%m%dT%H%M%SZ}"
YOUNG_REPLACED = f"app__opsbook_old_{(NOW - dt.timedelta(days=1)):%Y%m%dT%H%M%SZ}"
# releases of app1: 0.8.0 is beyond keep_releases=1, 0.9.0 is the previous good release (kept)
OLD_RELEASES = {"0.8.0": "2020-01-01T00:00:00Z", "0.9.0": "2020-02-01T00:00:00Z"}


# ----------------------------------------------------------------------- TLS servers


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    common_name: str, days: tuple[float, float], issuer: tuple[Any, x509.Name] | None = None
) -> tuple[Any, x509.Certificate]:
    """(key, certificate) valid from NOW+days[0] to NOW+days[1], for IP 127.0.0.1; signed by
    issuer (key, name), else self-signed. No SAN and CA:true for the test CA (issuer None and
    common_name 'opsbook test CA')."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer[1] if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + dt.timedelta(days=days[0]))
        .not_valid_after(NOW + dt.timedelta(days=days[1]))
    )
    if common_name == "opsbook test CA":
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return key, builder.sign(issuer[0] if issuer else key, hashes.SHA256())


class TlsServer(threading.Thread):
    """Completes TLS handshakes on 127.0.0.1:<free port> with one certificate, then closes."""

    def __init__(self, directory: Path, name: str, key: Any, cert: x509.Certificate) -> None:
        super().__init__(daemon=True)
        key_file, cert_file = directory / f"{name}.key", directory / f"{name}.pem"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.handshakes = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the module's tests are over
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    self.handshakes += 1
            except (OSError, ssl.SSLError):
                conn.close()  # the client refused the certificate

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """{'ca_file', 'valid', 'soon', 'expired', 'self_signed'}: the test CA's PEM and a server
    (its .url) per case."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca = _certificate("opsbook test CA", (-1, 3650))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    signer = (ca_key, ca.subject)
    servers = {
        "valid": TlsServer(directory, "valid", *_certificate("valid", (-1, 90), signer)),
        "soon": TlsServer(directory, "soon", *_certificate("soon", (-80, 10), signer)),
        "expired": TlsServer(directory, "expired", *_certificate("expired", (-90, -2), signer)),
        "self_signed": TlsServer(directory, "self", *_certificate("self", (-1, 90))),
    }
    for server in servers.values():
        server.start()
    yield {"ca_file": str(ca_file), **servers}
    for server in servers.values():
        server.stop()


def test_tls_cert_reads_the_dates_and_judges_trust_and_expiry(tls_servers: dict[str, Any]) -> None:
    params = {name: spec.get("default") for name, spec in tls_cert.argument_spec().items()}
    cases = ("valid", "soon", "expired", "self_signed")
    params.update(urls=[tls_servers[c].url for c in cases], ca_file=tls_servers["ca_file"])
    result = tls_cert.execute(params, False)
    assert result["changed"] is False and result["status"] == "fail", result
    found = {case: result["certificates"][tls_servers[case].url] for case in cases}

    assert found["valid"]["status"] == "ok" and found["valid"]["problems"] == []
    assert found["valid"]["trusted"] is True and 89.5 <= found["valid"]["days_left"] <= 90
    assert (
        found["valid"]["names"] == ["127.0.0.1"]
        and "CN=opsbook test CA" in found["valid"]["issuer"]
    )
    assert found["soon"]["status"] == "warn" and found["soon"]["trusted"] is True
    assert found["soon"]["problems"] == ["expires in under 21 days"]
    assert 9.5 <= found["soon"]["days_left"] <= 10
    assert found["expired"]["status"] == "fail" and found["expired"]["days_left"] <= -1.9
    assert found["expired"]["problems"][0].startswith("expired 2 days ago")
    # self-signed: untrusted, said so in OpenSSL's words, the days still reported
    selfs = found["self_signed"]
    assert selfs["status"] == "fail" and selfs["self_signed"] is True and selfs["trusted"] is False
    assert selfs["problems"] == ["not trusted: self-signed certificate"]
    assert 89.5 <= selfs["days_left"] <= 90 and "days left" in selfs["summary"]

    # Without the test CA the valid one is not trusted either; with fail_days 30 the soon one
    # fails; a closed port is a failure naming it, the others still checked.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{sock.getsockname()[1]}"
    params.update(urls=[tls_servers["valid"].url, tls_servers["soon"].url, closed],
                  ca_file=None, fail_days=30)  # fmt: skip
    again = tls_cert.execute(params, False)["certificates"]
    assert again[tls_servers["valid"].url]["problems"] == [
        "not trusted: unable to get local issuer certificate"
    ]
    assert again[tls_servers["soon"].url]["status"] == "fail"
    assert (
        again[closed]["status"] == "fail"
        and "cannot read the certificate" in again[closed]["error"]
    )
    bad = tls_cert.execute({**params, "urls": ["http://127.0.0.1:1"]}, False)
    assert bad["failed"] is True and "is not an https:// URL" in bad["msg"]


# ------------------------------------------------------------------------- the runs


def _run(directory: Path, name: str, inventory: Path, check: bool = False,
         extravars: dict[str, Any] | None = None) -> StatsRun:  # fmt: skip
    env, stats_file = stats_env(directory)
    argv = [f"playbooks/{name}.yml", "-i", str(inventory)]
    if extravars:
        vars_file = directory / f"extravars-{uuid.uuid4().hex[:6]}.json"
        vars_file.write_text(json.dumps(extravars))
        argv += ["-e", f"@{vars_file}"]
    if check:
        argv.append("--check")
    proc = run_ansible(argv, env=ansible_env(directory / "oplog.jsonl", env), timeout=600,
                       tool="ansible-playbook")  # fmt: skip
    assert stats_file.exists(), proc.stdout + proc.stderr
    return StatsRun(proc.returncode, proc.stdout, proc.stderr, json.loads(stats_file.read_text()))


def _checks(run: StatsRun) -> dict[tuple[str, str], dict[str, Any]]:
    found = run.stats["routine_checks"]["checks"]
    return {(c["name"], c["target"]): c for c in found}


def _deploy_root(base: Path, host: AppHost, releases: dict[str, str]) -> Path:
    """A deploy root of this test's own for host (the lab's hosts are shared with other tests):
    release 1.0.0 current, and the given releases, good, deployed at the given times."""
    root = base / "deploy" / host.name
    (root / "releases" / "1.0.0").mkdir(parents=True)
    (root / "current").symlink_to("releases/1.0.0")
    for release_id, when in releases.items():
        path = root / "releases" / release_id
        path.mkdir()
        meta = {"version": release_id, "status": "good", "deployed_at": when,
                "first_activated_at": when}  # fmt: skip
        (path / ".opsbook-release.json").write_text(json.dumps(meta))
    return root


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
    pg: PostgresCluster,
    s3: MotoS3Server,
    app_hosts: list[AppHost],
    tls_servers: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("routine")
    prefix = f"routine-{uuid.uuid4().hex[:8]}"
    storage_url = f"s3://{BUCKET}/{prefix}"
    common = {"opsbook_state_url": f"file://{base / 'state'}",
              "opsbook_report_dir": str(base / "reports"), "routine_checks_keep_releases": 1,
              "routine_checks_stale_upload_minutes": 0}  # fmt: skip
    healthy = write_inventory(
        base / "healthy", app_hosts, None, database_url=pg.dsn_for("app"),
        backup_storage_url=storage_url, s3_endpoint_url=s3.endpoint_url, extra_vars=common,
    )  # fmt: skip
    (base / "empty").mkdir()
    faulty = write_inventory(
        base / "faulty", app_hosts, None, database_url=pg.dsn_for("app"),
        backup_storage_url=f"file://{base / 'empty'}",
        extra_vars={**common, "routine_checks_tls_ca_file": tls_servers["ca_file"],
                    "opsbook_secrets": {"jwt": {"store": "env_file"}}},
    )  # fmt: skip
    # Each app host's deploy root is this test's own (app1 holds releases beyond keep); in the
    # faulty inventory, the app_base_urls are the TLS servers and app3 cannot be reached.
    roots = {h.name: _deploy_root(base, h, OLD_RELEASES if h is app_hosts[0] else {})
             for h in app_hosts}  # fmt: skip
    urls = dict(zip([h.name for h in app_hosts], ("valid", "expired", "self_signed"), strict=True))
    for inventory in (healthy, faulty):
        (inventory / "host_vars").mkdir()
        for host in app_hosts:
            extra: dict[str, Any] = {"deploy_root": str(roots[host.name])}
            if inventory is faulty:
                extra["app_base_url"] = tls_servers[urls[host.name]].url
                if host is app_hosts[2]:
                    extra["ansible_port"] = _closed_port()  # unreachable
            (inventory / "host_vars" / f"{host.name}.yml").write_text(yaml.safe_dump(extra))

    # What the cleanups should find besides: a database a replace kept 30 days ago (and one kept
    # yesterday), an upload a killed backup left in the S3 storage.
    pg.create_database(OLD_REPLACED)
    pg.create_database(YOUNG_REPLACED)
    credentials = pytest.MonkeyPatch()
    for name, value in S3_CREDENTIALS.items():
        credentials.setenv(name, value)
    storage = storage_api.open_storage(storage_url, endpoint_url=s3.endpoint_url, part_size=5 * MiB)
    writer = storage.open_writer("app-20200101T000000Z-dead/data.pgdump.zst")
    writer.write(os.urandom(6 * MiB))
    writer._wait_for_parts()  # one part stored, never completed nor aborted: as after a SIGKILL
    try:
        releases = roots[app_hosts[0].name] / "releases"
        found: dict[str, Any] = {"base": base, "storage": storage, "app_hosts": app_hosts}
        found["faults"] = _run(base, "routine_checks", faulty, check=True)
        found["uploads_after_check"] = storage.incomplete_uploads(0)
        found["databases_after_check"] = {
            n: pg.database_exists(n) for n in (OLD_REPLACED, YOUNG_REPLACED)
        }
        found["releases_after_check"] = sorted(p.name for p in releases.iterdir())
        # a fresh verified backup, taken by the module backup.yml runs (this test is not about it)
        params = {name: spec.get("default") for name, spec in pg_backup.argument_spec().items()}
        params.update(
            dsn=pg.dsn_for("app"), storage_url=storage_url, s3_endpoint_url=s3.endpoint_url
        )
        backup = pg_backup.execute(params, False)
        assert not backup.get("failed") and backup["verification"]["ok"] is True, backup
        found["healthy"] = _run(base, "routine_checks", healthy)
        found["releases_after"] = sorted(p.name for p in releases.iterdir())
        found["again"] = _run(base, "routine_checks", healthy, extravars={
            "routine_checks_disk_warn_percent": 1, "routine_checks_rpo_hours": 0.0001})  # fmt: skip
        yield found
    finally:
        pg.drop_database(OLD_REPLACED)
        pg.drop_database(YOUNG_REPLACED)
        for item in storage.incomplete_uploads(0):
            storage.abort_incomplete(item)
        for stored in storage.list():
            storage.delete(stored.key)
        credentials.undo()


def test_faults_each_fail_their_own_check_and_check_mode_removes_nothing(
    runs: dict[str, Any], tls_servers: dict[str, Any]
) -> None:
    run = runs["faults"]
    assert run.rc == 2, run.output  # fail verdict: the run fails, after publishing
    published = run.stats["routine_checks"]
    assert published["verdict"] == "fail" and published["check_mode"] is True
    checks = _checks(run)
    app1, app2, app3 = (h.name for h in runs["app_hosts"])
    backup = next(c for (name, _), c in checks.items() if name == "backup")
    assert backup["status"] == "fail"
    assert backup["detail"] == f"no backup at all of app in file://{runs['base'] / 'empty'}"
    tls = {target: c for (name, target), c in checks.items() if name == "tls"}
    assert (
        tls[tls_servers["valid"].url]["status"] == "ok"
    )  # trusted through routine_checks_tls_ca_file
    assert tls[tls_servers["expired"].url]["status"] == "fail"
    assert tls[tls_servers["expired"].url]["detail"].startswith("expired 2 days ago")
    assert tls[tls_servers["self_signed"].url]["status"] == "fail"
    assert (
        "not trusted: self-signed certificate; 9" in tls[tls_servers["self_signed"].url]["detail"]
    )
    # the unreachable host fails its own checks; every other host and check still ran
    for kind in ("disk", "cleanup_releases"):
        assert checks[(kind, app3)]["status"] == "fail"
        assert "unreachable" in checks[(kind, app3)]["detail"], checks[(kind, app3)]
    assert (
        checks[("disk", app1)]["status"] == "ok" and checks[("disk", "localhost")]["status"] == "ok"
    )
    secrets = checks[("secrets", "")]
    assert secrets["status"] == "warn" and secrets["detail"].startswith("due within a week: jwt")
    # --check: what would be removed is said, and nothing is removed
    assert checks[("cleanup_releases", app1)]["removed"] == ["0.8.0 (beyond keep_releases=1)"]
    assert checks[("cleanup_releases", app1)]["detail"].startswith("would remove (check mode)")
    assert checks[("cleanup_releases", app2)]["removed"] == []
    assert f"{OLD_REPLACED} (older than 7 days)" in checks[("cleanup_databases", "")]["removed"]
    assert runs["databases_after_check"] == {OLD_REPLACED: True, YOUNG_REPLACED: True}
    assert runs["releases_after_check"] == ["0.8.0", "0.9.0", "1.0.0"]
    assert len(runs["uploads_after_check"]) == 1
    assert run.hosts[app1]["changed"] >= 1 and run.hosts[app2]["changed"] == 0  # "would change"
    assert "Routine checks of local: FAIL" in run.stdout
    assert f"FAIL backup file://{runs['base'] / 'empty'}: no backup at all" in run.output


def test_a_healthy_lab_is_ok_and_the_disposable_is_removed(runs: dict[str, Any]) -> None:
    run = runs["healthy"]
    assert run.rc == 0, run.output
    published = run.stats["routine_checks"]
    assert published["verdict"] == "ok" and published["counts"]["fail"] == 0
    checks = _checks(run)
    hosts = [h.name for h in runs["app_hosts"]]
    kinds = {name for name, _ in checks}
    assert kinds == {"disk", "tls", "backup", "secrets", "slow_statements", "cleanup_releases",
                     "cleanup_databases", "cleanup_uploads"}  # fmt: skip
    assert {t for n, t in checks if n == "disk"} == {*hosts, "localhost"}
    assert all(c["status"] == "ok" for c in checks.values()), checks
    backup = next(c for (name, _), c in checks.items() if name == "backup")
    assert "newest verified backup app-" in backup["detail"] and "(RPO 24 h)" in backup["detail"]
    assert "re-verified: every object matches its manifest" in backup["detail"]
    assert checks[("tls", "")]["detail"] == "no https app_base_url to check"
    assert (
        "pg_stat_statements is not installed in database app"
        in checks[("slow_statements", "app")]["detail"]
    )
    # removed: the release beyond keep (never the previous good 0.9.0), the old replaced
    # database (not yesterday's), the stale upload
    assert checks[("cleanup_releases", hosts[0])]["detail"].startswith("removed: 0.8.0")
    assert runs["releases_after"] == ["0.9.0", "1.0.0"]
    assert f"{OLD_REPLACED} (older than 7 days)" in checks[("cleanup_databases", "")]["removed"]
    assert (
        f"kept (younger, or in use): {YOUNG_REPLACED}"
        in checks[("cleanup_databases", "")]["detail"]
    )
    uploads = next(c for (name, _), c in checks.items() if name == "cleanup_uploads")
    assert [u.split(" ")[0] for u in uploads["removed"]] == [
        "app-20200101T000000Z-dead/data.pgdump.zst"
    ]
    assert runs["storage"].incomplete_uploads(0) == []
    # the report: on disk (0600 in a 0700 directory), published, under 8 KB
    path = Path(published["report_path"])
    assert path.parent == runs["base"] / "reports"
    assert path.name.startswith("routine_checks-local-") and path.suffix == ".md"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == published["report"] and len(published["report"]) < 8000
    assert "- verdict: **OK** (0 fail, 0 warn, 13 ok)" in published["report"]
    assert published["summary"] == ["Routine checks of local: OK (0 fail, 0 warn, 13 ok)"]


def test_a_second_run_removes_nothing_and_a_stale_backup_fails(runs: dict[str, Any]) -> None:
    run = runs["again"]
    assert run.rc == 2, run.output
    assert all(s["changed"] == 0 for s in run.hosts.values()), run.hosts
    checks = _checks(run)
    backup = next(c for (name, _), c in checks.items() if name == "backup")
    assert backup["status"] == "fail"
    assert "older than the RPO of 0.0001 h: a restore now loses" in backup["detail"]
    for (name, _), check in checks.items():
        if name.startswith("cleanup_"):
            assert check["removed"] == [] and check["detail"].startswith("nothing to remove")
        if name == "disk":  # at 1% every file system warns
            assert check["status"] == "warn" and "(warn at 1%, fail at 90%)" in check["detail"]
    published = run.stats["routine_checks"]
    assert published["verdict"] == "fail" and published["counts"]["warn"] == 4
    assert any(line.startswith("FAIL backup ") for line in published["summary"])
