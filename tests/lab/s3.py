"""An S3-compatible server for tests: moto's server mode in its own process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from opsbook.lab._proc import (
    LabError,
    component_error,
    free_port,
    wait_until,
)

__all__ = ["S3_CREDENTIALS", "MotoS3Server"]

# moto accepts any credentials; these are the ones the lab hands out.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoS3Server:
    """`python -m moto.server` on host:port (a free port when None)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_file: Path | str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout = start_timeout
        self._own_log = log_file is None
        if log_file is None:
            fd, name = tempfile.mkstemp(prefix="opsbook-moto-", suffix=".log")
            os.close(fd)
            log_file = name
        self.log_file = Path(log_file)
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"MotoS3Server({self.endpoint_url})"

    @property
    def label(self) -> str:
        return f"S3 server (moto) on {self.host}:{self.port}"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS tooling at this server."""
        return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint_url}

    # ----------------------------------------------------------- lifecycle

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MotoS3Server:
        """Start the server and wait until it answers HTTP."""
        if self.is_running():
            return self
        env = {**os.environ, **S3_CREDENTIALS}
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        answered = wait_until(self._ready, self.start_timeout, interval=0.1)
        exited = self._proc.poll()
        if not answered or exited is not None:
            self.kill()
            state = f"exited with {exited}" if exited is not None else "did not answer in time"
            raise component_error(self.label, f"did not start ({state})", self.log_file)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it does not exit in time."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-operation (fault tests). Its data is lost."""
        self._signal(signal.SIGKILL, 5.0)

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------- client

    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client for this endpoint (dummy credentials, us-east-1)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
            **kwargs,
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket name (no error when it exists); return its s3:// URL."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    # ------------------------------------------------------------ internals

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            return True  # exited: stop waiting, start() reports it
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answers HTTP, whatever the status
        except OSError:
            return False

    def _signal(self, sig: int, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
        if proc.poll() is None:
            raise LabError(f"{self.label}: could not stop pid {proc.pid}")
        self._proc = None
        if self._own_log:
            self.log_file.unlink(missing_ok=True)
