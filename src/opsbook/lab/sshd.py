"""SSH test hosts: one sshd process per loopback address (127.0.10.N), key auth only.

Linux routes all of 127.0.0.0/8 to the loopback interface, so every host gets
its own address with no network setup. Each host keeps everything in its
base_dir::

    base_dir/
      host.json          name, address, ports (reused when the host is rebuilt)
      sshd/              sshd_config, host key, pid file, log, authorized_keys, known_hosts
      home/              the login's HOME on this host (sshd's SetEnv): the host's own
                         ~/.ansible, and no dotfiles of the machine's real user (a shell
                         profile that runs e.g. `pyenv init` would add ~0.1 CPU s to every
                         SSH command, which no clean server pays)
      deploy_root/       releases/, shared/ (what the deploy runbooks manage;
                         another place when deploy_root= is given)

As root the login user is root; otherwise sshd runs unprivileged (on a port
above 1024) and the login user is the current user.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from opsbook.lab._proc import (
    LabError,
    component_error,
    current_user,
    descendants,
    free_port,
    kill_hard,
    pid_alive,
    read_pidfile,
    terminate,
    wait_until,
)

__all__ = ["SSHD", "SshHost", "SshKeyPair", "host_address", "write_known_hosts"]

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"


def host_address(n: int, prefix: str = "127.0.10") -> str:
    """The loopback address of test host n (1 -> 127.0.10.1)."""
    if not 1 <= n <= 254:
        raise ValueError(f"host number must be 1..254, got {n}")
    return f"{prefix}.{n}"


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphans of our descendants are re-parented to us.

    Used as preexec_fn: the attribute survives execve, so the server exec'd
    next adopts (and reaps) what its sessions leave behind.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _keygen(path: Path, comment: str) -> None:
    result = subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"ssh-keygen failed for {path}: {result.stderr.strip()}")


class SshKeyPair:
    """An ed25519 key pair in directory (made with ssh-keygen unless it exists)."""

    def __init__(
        self, directory: Path | str, name: str = "id_ed25519", comment: str = "opsbook-lab"
    ):
        self.directory = Path(directory).absolute()
        self.private_key = self.directory / name
        self.public_key = self.directory / f"{name}.pub"
        if not self.private_key.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            _keygen(self.private_key, comment)

    def __repr__(self) -> str:
        return f"SshKeyPair({self.private_key})"

    @property
    def public_key_line(self) -> str:
        return self.public_key.read_text().strip()


def write_known_hosts(path: Path | str, hosts: list[SshHost]) -> Path:
    """Write a known_hosts file with the host key of every host; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for host in hosts for line in host.known_hosts_lines()]
    path.write_text("".join(line + "\n" for line in lines))
    return path


class SshHost:
    """An sshd listening on address:port with its own host key, config and deploy_root."""

    def __init__(
        self,
        name: str,
        address: str,
        base_dir: Path | str,
        key: SshKeyPair,
        port: int | None = None,
        user: str | None = None,
        start_timeout: float = 15.0,
        deploy_root: Path | str | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.base_dir = Path(base_dir).absolute()
        self.key = key
        self.user = user or current_user()
        self.start_timeout = start_timeout
        self.sshd_dir = self.base_dir / "sshd"
        self.config_file = self.sshd_dir / "sshd_config"
        self.host_key = self.sshd_dir / "ssh_host_ed25519_key"
        self.pid_file = self.sshd_dir / "sshd.pid"
        self.log_file = self.sshd_dir / "sshd.log"
        self.authorized_keys = self.sshd_dir / "authorized_keys"
        self.known_hosts_file = self.sshd_dir / "known_hosts"
        self.home = self.base_dir / "home"
        self.deploy_root = Path(deploy_root or self.base_dir / "deploy_root").absolute()
        self.state_file = self.base_dir / "host.json"
        self._state = self._load_state()
        self._proc: subprocess.Popen[bytes] | None = None
        self.port: int = port or int(self._state.get("ssh_port") or 0) or free_port(address)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.address}:{self.port})"

    @property
    def label(self) -> str:
        return f"sshd for {self.name} on {self.address}:{self.port}"

    # ----------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return read_pidfile(self.pid_file)

    def is_running(self) -> bool:
        return pid_alive(self.pid)

    def start(self) -> SshHost:
        """Prepare the host (keys, config, deploy_root) and start sshd; wait until it listens."""
        if self.is_running():
            return self
        self.prepare()
        self.pid_file.unlink(missing_ok=True)
        # -D: sshd stays in the process we start, so it can be made a child
        # subreaper: whatever a session leaves behind (a daemonised app, a
        # background job) is re-parented to sshd, not init, and stop() finds it.
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(SSHD), "-D", "-f", str(self.config_file), "-E", str(self.log_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=become_subreaper,
            )
        proc = self._proc

        # sshd writes its pid file once its listening socket is bound.
        def settled() -> bool:
            return proc.poll() is not None or self.pid == proc.pid

        wait_until(settled, self.start_timeout)
        exit_code = proc.poll()
        if exit_code is not None or self.pid != proc.pid:
            self.kill()
            what = f"sshd exited with {exit_code}" if exit_code is not None else "not listening"
            raise component_error(self.label, f"did not start ({what})", self.log_file)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sshd and every session it forked (their commands included)."""
        pid = self.pid
        if pid_alive(pid):
            assert pid is not None
            sessions = descendants(pid)
            terminate([pid], timeout)
            terminate(sessions, timeout)
        self._reap()
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL sshd and its sessions: the host becomes unreachable (fault tests)."""
        pid = self.pid
        if pid_alive(pid):
            assert pid is not None
            kill_hard([pid, *descendants(pid)])
        if self._proc is not None and self._proc.poll() is None:
            kill_hard([self._proc.pid])
        self._reap()
        self.pid_file.unlink(missing_ok=True)

    def _reap(self) -> None:
        """Collect our sshd child's exit status so it does not linger as a zombie."""
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5.0)
            self._proc = None

    def destroy(self) -> None:
        """Stop and remove base_dir."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> SshHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ clients

    def known_hosts_lines(self) -> list[str]:
        """known_hosts lines for this host's key (after prepare() or start())."""
        keytype, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        target = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return [f"{target} {keytype} {blob}"]

    def ssh_options(self, known_hosts: Path | None = None) -> list[str]:
        """ssh options for strict host-key checking against a real known_hosts file."""
        return [
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts_file}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def ssh_command(self, *command: str) -> list[str]:
        """argv for `ssh` to this host (for tests and for people poking at the lab)."""
        return [
            "ssh", "-i", str(self.key.private_key), "-p", str(self.port),
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "IdentitiesOnly=yes",
            *self.ssh_options(), f"{self.user}@{self.address}", *command,
        ]  # fmt: skip

    def run(self, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over ssh."""
        return self.run_argv(self.ssh_command(command), timeout)

    @staticmethod
    def run_argv(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run an ssh argv (e.g. a modified ssh_command()), capturing its output."""
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # ------------------------------------------------------------ internals

    def prepare(self) -> None:
        """Create dirs, host key, authorized_keys, known_hosts and sshd_config."""
        self.sshd_dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(mode=0o700, exist_ok=True)
        for sub in ("releases", "shared"):
            (self.deploy_root / sub).mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            _keygen(self.host_key, f"opsbook-lab-host-{self.name}")
        if not self.authorized_keys.exists():
            self.authorized_keys.write_text(self.key.public_key_line + "\n")
        write_known_hosts(self.known_hosts_file, [self])
        self.config_file.write_text(self._config())
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._save_state()

    def _config(self) -> str:
        root_login = "prohibit-password" if self.user == "root" else "no"
        return "\n".join(
            [
                f"# opsbook lab host {self.name}",
                f"ListenAddress {self.address}:{self.port}",
                f"HostKey {self.host_key}",
                f"PidFile {self.pid_file}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                f"AllowUsers {self.user}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                f"PermitRootLogin {root_login}",
                "X11Forwarding no",
                "PrintMotd no",
                "LogLevel INFO",
                # A fleet-sized controller (forks=50) opens many connections at once.
                "MaxStartups 200:30:400",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                # bash sources ~/.bashrc for commands run by sshd: the host's own empty HOME
                # keeps the machine user's profile out of every module run.
                f'SetEnv HOME="{self.home}"',
                "",
            ]
        )

    def _load_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _state_data(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "ssh_port": self.port}

    def _save_state(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self._state_data(), indent=2) + "\n")
