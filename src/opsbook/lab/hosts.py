"""App hosts: an SSH test host running the sample app from <deploy_root>/current.

Layout of a host's deploy_root (what the deploy runbooks manage)::

    deploy_root/
      releases/<release>/   app.py, VERSION (an unpacked artifact)
      current -> releases/<release>   switched atomically (symlink + rename)
      shared/               health_mode, maintenance, app.json, app.pid, app.log,
                            .env (the app's secrets, mode 0600), notes/

The app is started detached (``app.py --detach``, exactly as a deploy restarts
it over SSH) and tracked by its pid file, so any process can stop it.

``shared/.env`` is seeded once, when a host is set up and has none: fresh random
JWT_SECRET, NEXTAUTH_SECRET (``secrets.token_urlsafe(48)``) and ENCRYPTION_KEY
(base64 of 32 random bytes). An existing one is never overwritten (the sandbox's
data survives down/up); ``reset()`` (between tests) puts the seeded content back,
removes shared/notes/ and restarts the app when it may hold other values (the app
reads .env only when it starts).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
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
from opsbook.lab.sampleapp.app import parse_env
from opsbook.lab.sshd import SshHost, SshKeyPair, host_address

__all__ = [
    "HOST_PYTHON",
    "AppHost",
    "HttpAnswer",
    "extract_release",
    "http_get",
    "render_env",
    "seed_env_values",
    "start_app_hosts",
    "stop_all",
]

HOST_PYTHON = "/usr/bin/python3"
HEALTH_MODES = ("ok", "fail", "slow")
ENV_HEADER = "# opsbook lab: the sample app's secrets (read when the app starts)\n"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENV_UNQUOTED = re.compile(r"[A-Za-z0-9_./:@+=,-]*\Z")


def seed_env_values() -> dict[str, str]:
    """Fresh secrets for a new host's shared/.env."""
    return {
        "JWT_SECRET": secrets.token_urlsafe(48),
        "NEXTAUTH_SECRET": secrets.token_urlsafe(48),
        "ENCRYPTION_KEY": base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
    }


def render_env(values: dict[str, str], header: str = ENV_HEADER) -> str:
    """An env file of values: KEY=value, quoted as the rotation design says (unquoted when
    the value is only [A-Za-z0-9_./:@+=,-], else in double quotes with \\ and \" escaped).
    ValueError (naming the key, never the value) for a bad key or a value with a newline
    or NUL."""
    lines = [header] if header else []
    for key, value in values.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"invalid env key {key!r}")
        if any(c in value for c in "\n\r\0"):
            raise ValueError(f"the value of {key} holds a newline or NUL")
        if not _ENV_UNQUOTED.match(value):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key}={value}\n")
    return "".join(lines)


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
        env_seed: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            name, address, base_dir, key, port=port, user=user, deploy_root=deploy_root
        )
        # The secrets a new shared/.env gets: the hosts of one app share them (a token one
        # host signs is good on every other), so start_app_hosts gives them one set.
        self.env_seed = env_seed
        self.app_port: int = app_port or int(self._state.get("app_port") or 0) or free_port(address)
        self.python = python
        self.app_timeout = app_timeout
        self.releases_dir = self.deploy_root / "releases"
        self.shared_dir = self.deploy_root / "shared"
        self.current_link = self.deploy_root / "current"
        self.artifacts_dir = self.base_dir / "artifacts"
        self.app_pidfile = self.shared_dir / "app.pid"
        self.app_log = self.shared_dir / "app.log"
        self.env_file = self.shared_dir / ".env"
        # The .env content this host was set up with (reset() restores it), and the app
        # process known to hold exactly those values.
        self._seeded_env: bytes | None = None
        self._seeded_env_pid: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.app_port}"

    @property
    def app_label(self) -> str:
        return f"sample app on {self.name} ({self.base_url})"

    # ----------------------------------------------------- whole host

    def start(self, version: str = "1.0.0") -> AppHost:
        """Start sshd; seed shared/.env unless there is one; install release `version` unless
        one is current; start the app."""
        super().start()
        self.seed_env()
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
        self.seed_env()

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
        self.seed_env()
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
        """Back to a healthy, serving host: health ok, no maintenance, the seeded .env and no
        notes (a note written under a test's rotated key would outlive it), sshd and app
        running (restarted when it may hold other secrets than the seeded ones)."""
        self.set_health("ok")
        self.set_maintenance(False)
        self.restore_env()
        shutil.rmtree(self.shared_dir / "notes", ignore_errors=True)
        if self.app_running() and not self._app_holds_seeded_env():
            self.stop_app()
        self.start()
        self._seeded_env_pid = self.app_pid

    # ----------------------------------------------------- secrets (shared/.env)

    def seed_env(self) -> bool:
        """Write shared/.env (0600) with fresh secrets unless there is one; True if written.
        The content found or written is what reset() restores."""
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        text = render_env(self.env_seed or seed_env_values()).encode("utf-8")
        try:
            fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if self._seeded_env is None:
                self._seeded_env = self.env_file.read_bytes()
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
        self._seeded_env = text
        return True

    def read_env(self) -> dict[str, str]:
        """The values in shared/.env, parsed as the app parses them ({} without a file)."""
        try:
            return parse_env(self.env_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def write_env(self, values: dict[str, str]) -> None:
        """Replace shared/.env with values, atomically, mode 0600 (restart_app() to apply)."""
        self._write_env_bytes(render_env(values).encode("utf-8"))

    def restore_env(self) -> bool:
        """Put the seeded shared/.env back (a test's rotation must not leak into the next);
        True when it was rewritten. The app is not restarted here."""
        if self._seeded_env is None:
            return self.seed_env()
        try:
            if self.env_file.read_bytes() == self._seeded_env:
                return False
        except FileNotFoundError:
            pass
        self._write_env_bytes(self._seeded_env)
        return True

    def _write_env_bytes(self, data: bytes) -> None:
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.shared_dir / f".env.lab-{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.env_file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _app_holds_seeded_env(self) -> bool:
        """Whether the running app read the seeded .env: it is the process the last reset
        left (started with those values), or it started after .env last changed (the file
        now holds them) - judged by mtimes, a tie counting as "maybe not"."""
        if self.app_pid is not None and self.app_pid == self._seeded_env_pid:
            return True
        try:
            return self.env_file.stat().st_mtime_ns < self.app_pidfile.stat().st_mtime_ns
        except FileNotFoundError:
            return False

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

    The hosts share one set of seeded secrets (one app). On failure every host already started
    is stopped before the error propagates.
    """
    hosts: list[AppHost] = []
    shared = seed_env_values()
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
                env_seed=shared,
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
