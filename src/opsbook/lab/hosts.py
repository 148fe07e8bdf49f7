"""App hosts: an SSH test host running the sample app from <deploy_root>/current.

Layout of a host's deploy_root (what the deploy runbooks manage)::

    deploy_root/
      releases/<release>/   app.py, VERSION (an unpacked artifact)
      current -> releases/<release>   switched atomically (symlink + rename)
      shared/               health_mode, maintenance, app.json, app.pid, app.log

The app is started detached (``app.py --detach``, exactly as a deploy restarts
it over SSH) and tracked by its pid file, so any process can stop it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from opsbook.lab._proc import (
    LabError,
    component_error,
    free_port,
    kill_hard,
    pid_alive,
    processes_referencing,
    read_pidfile,
    terminate,
    wait_until,
)
from opsbook.lab.sampleapp import artifact_name, build_release
from opsbook.lab.sshd import SshHost, SshKeyPair, host_address

__all__ = [
    "HOST_PYTHON",
    "AppHost",
    "HttpAnswer",
    "extract_release",
    "http_get",
    "start_app_hosts",
    "stop_all",
]

HOST_PYTHON = "/usr/bin/python3"
HEALTH_MODES = ("ok", "fail", "slow")


def extract_release(artifact: Path, target: Path) -> None:
    """Unpack a release artifact into target, refusing unsafe members."""
    with tarfile.open(artifact) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise LabError(f"{artifact}: unsafe member {member.name!r}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(target, filter="data")
        else:
            tar.extractall(target)  # members checked above


class HttpAnswer:
    """Status, parsed JSON body (or None) and latency of one HTTP GET."""

    def __init__(self, status: int, body: Any, elapsed_ms: float) -> None:
        self.status = status
        self.body = body
        self.elapsed_ms = elapsed_ms

    def __repr__(self) -> str:
        return f"HttpAnswer({self.status}, {self.body!r}, {self.elapsed_ms:.0f} ms)"


def http_get(url: str, timeout: float = 5.0) -> HttpAnswer:
    """GET url; HTTP errors are answers too (status >= 400), connection errors raise OSError."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    elapsed = (time.monotonic() - started) * 1000
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    return HttpAnswer(status, body, elapsed)


class AppHost(SshHost):
    """An SshHost that also runs the sample app on address:app_port."""

    def __init__(
        self,
        name: str,
        address: str,
        base_dir: Path | str,
        key: SshKeyPair,
        port: int | None = None,
        app_port: int | None = None,
        user: str | None = None,
        python: str = HOST_PYTHON,
        app_timeout: float = 15.0,
        deploy_root: Path | str | None = None,
    ) -> None:
        super().__init__(
            name, address, base_dir, key, port=port, user=user, deploy_root=deploy_root
        )
        self.app_port: int = app_port or int(self._state.get("app_port") or 0) or free_port(address)
        self.python = python
        self.app_timeout = app_timeout
        self.releases_dir = self.deploy_root / "releases"
        self.shared_dir = self.deploy_root / "shared"
        self.current_link = self.deploy_root / "current"
        self.artifacts_dir = self.base_dir / "artifacts"
        self.app_pidfile = self.shared_dir / "app.pid"
        self.app_log = self.shared_dir / "app.log"

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.app_port}"

    @property
    def app_label(self) -> str:
        return f"sample app on {self.name} ({self.base_url})"

    # ----------------------------------------------------- whole host

    def start(self, version: str = "1.0.0") -> AppHost:
        """Start sshd; install release `version` unless one is current; start the app."""
        super().start()
        if self.current_release is None:
            self.install_release(version)
        if not self.app_running():
            self.start_app()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the app, then sshd and its sessions."""
        self.stop_app(timeout)
        super().stop(timeout)

    def kill(self) -> None:
        """SIGKILL the app and sshd: the whole host is gone (fault tests)."""
        self.kill_app()
        super().kill()

    def prepare(self) -> None:
        super().prepare()
        self._write_app_config()

    # ----------------------------------------------------- releases

    @property
    def current_release(self) -> str | None:
        """Name of the release dir `current` points at (None when there is none)."""
        if not self.current_link.is_symlink():
            return None
        return Path(os.readlink(self.current_link)).name

    def install_release(
        self, version: str, artifact: Path | None = None, activate: bool = True
    ) -> Path:
        """Unpack an artifact (built when not given) into releases/<version>/ and switch to it."""
        if artifact is None:
            artifact = self.artifacts_dir / artifact_name(version)
            if not artifact.exists():
                artifact = build_release(version, self.artifacts_dir)
        release = self.releases_dir / version
        if not (release / "app.py").exists():
            self._unpack(artifact, release)
        if activate:
            self.activate(release)
        return release

    def activate(self, release: Path) -> None:
        """Point `current` at release atomically: a new symlink renamed over the old one."""
        if not (release / "app.py").exists():
            raise LabError(f"{self.name}: {release} holds no app.py")
        tmp = self.deploy_root / f".current.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(release)
        os.replace(tmp, self.current_link)

    @staticmethod
    def _unpack(artifact: Path, release: Path) -> None:
        staging = release.with_name(f".{release.name}.unpacking")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        extract_release(artifact, staging)
        shutil.rmtree(release, ignore_errors=True)
        os.replace(staging, release)

    # ----------------------------------------------------- the app process

    @property
    def app_pid(self) -> int | None:
        return read_pidfile(self.app_pidfile)

    def app_running(self) -> bool:
        return pid_alive(self.app_pid)

    def app_command(self) -> list[str]:
        """argv that starts the app from `current`, detached (as a deploy does)."""
        return [
            self.python, str(self.current_link / "app.py"),
            "--host", self.address, "--port", str(self.app_port),
            "--state-dir", str(self.shared_dir), "--pidfile", str(self.app_pidfile),
            "--log-file", str(self.app_log), "--detach",
        ]  # fmt: skip

    def start_app(self) -> None:
        """Start the app from `current` and wait until /health answers."""
        if self.app_running():
            return
        if self.current_release is None:
            raise LabError(f"{self.app_label}: no release is current; install_release() first")
        self._write_app_config()
        result = subprocess.run(
            self.app_command(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.app_timeout,
            check=False,
        )
        if result.returncode != 0:
            raise component_error(
                self.app_label, f"did not start: {result.stderr.strip()}", self.app_log
            )
        if not wait_until(self._answers, self.app_timeout, interval=0.05):
            raise component_error(self.app_label, "/health does not answer", self.app_log)

    def stop_app(self, timeout: float = 10.0) -> None:
        """SIGTERM the app (and any stray copy running from this deploy_root)."""
        terminate(self._app_pids(), timeout)

    def kill_app(self) -> None:
        """SIGKILL the app: it crashes (fault tests)."""
        kill_hard(self._app_pids())

    def restart_app(self) -> None:
        self.stop_app()
        self.start_app()

    def _app_pids(self) -> list[int]:
        pids = set(processes_referencing(self.deploy_root))
        pid = self.app_pid
        if pid_alive(pid):
            assert pid is not None
            pids.add(pid)
        return sorted(pids)

    def _answers(self) -> bool:
        try:
            http_get(f"{self.base_url}/health", timeout=1.0)
        except OSError:
            return False
        return True

    def _write_app_config(self) -> None:
        """shared/app.json: lets a plain `python3 current/app.py --detach` find its address."""
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        config = {"host": self.address, "port": self.app_port}
        (self.shared_dir / "app.json").write_text(json.dumps(config, indent=2) + "\n")

    def _state_data(self) -> dict[str, Any]:
        return {**super()._state_data(), "app_port": self.app_port}

    # ----------------------------------------------------- control files

    def set_health(self, mode: str = "ok", delay_ms: int = 0) -> None:
        """Make /health answer ok, fail (500) or slowly (delay_ms, then 200)."""
        if mode not in HEALTH_MODES:
            raise ValueError(f"health mode must be one of {HEALTH_MODES}, got {mode!r}")
        text = f"slow {int(delay_ms)}" if mode == "slow" else mode
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        (self.shared_dir / "health_mode").write_text(text + "\n")

    def set_maintenance(self, on: bool = True) -> None:
        """Maintenance on: every endpoint answers 503."""
        flag = self.shared_dir / "maintenance"
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def reset(self) -> None:
        """Back to a healthy, serving host: health ok, no maintenance, sshd and app running."""
        self.set_health("ok")
        self.set_maintenance(False)
        self.start()

    # ----------------------------------------------------- probes

    def get(self, path: str, timeout: float = 5.0) -> HttpAnswer:
        """GET a path of the app (e.g. "/health")."""
        return http_get(f"{self.base_url}{path}", timeout=timeout)

    def health(self) -> HttpAnswer:
        return self.get("/health")

    def version(self) -> str:
        """The version /api/version reports."""
        answer = self.get("/api/version")
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise LabError(f"{self.app_label}: /api/version answered {answer}")
        return str(answer.body["version"])


def start_app_hosts(
    n: int,
    base_dir: Path | str,
    key: SshKeyPair,
    first_address: int = 1,
    ssh_port: int | None = None,
    app_port: int | None = None,
    version: str = "1.0.0",
    name_prefix: str = "app",
) -> list[AppHost]:
    """Start n app hosts app1..appN on 127.0.10.<first_address>.. under base_dir/<name>.

    On failure every host already started is stopped before the error propagates.
    """
    hosts: list[AppHost] = []
    try:
        for i in range(n):
            name = f"{name_prefix}{i + 1}"
            host = AppHost(
                name,
                host_address(first_address + i),
                Path(base_dir) / name,
                key,
                port=ssh_port,
                app_port=app_port,
            )
            hosts.append(host)
            host.start(version)
    except BaseException:
        stop_all(hosts)
        raise
    return hosts


def stop_all(hosts: list[AppHost]) -> None:
    """Stop every host (reverse order), even when some stops fail; raise the first error."""
    errors: list[BaseException] = []
    for host in reversed(hosts):
        try:
            host.stop()
        except Exception as exc:  # keep tearing down the others
            errors.append(exc)
    if errors:
        raise errors[0]
