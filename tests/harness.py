"""The opsbook test lab, by hand: the same real servers the pytest fixtures start.

    .venv/bin/python tests/harness.py up [--hosts N] [--pgbench-scale S] [--dir DIR]

starts PostgreSQL 15 (with the sample app schema), the S3 server (moto) with a
bucket, and N app hosts (sshd on 127.0.10.1..N, the sample app running), writes
an inventory, prints how to reach everything, waits for Ctrl-C or SIGTERM, then
tears everything down. The building blocks live in ``opsbook.lab``; this file
only wires them to a command line and holds the helpers the tests share
(running ansible with the project's configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.lab import S3_CREDENTIALS, Lab

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"


def _tool(name: str) -> str:
    """A tool from the project's virtualenv, else the one beside this Python, else PATH."""
    for candidate in (VENV_BIN / name, Path(sys.executable).parent / name):
        if candidate.exists():
            return str(candidate)
    return shutil.which(name) or name


def ansible_env(
    oplog: Path | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for ansible commands run the way the project runs them."""
    env = dict(os.environ)
    env.update(S3_CREDENTIALS)
    env.update(
        ANSIBLE_CONFIG=str(PROJECT_ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    if oplog is not None:
        env["OPSBOOK_OPLOG"] = str(oplog)
    env.update(extra or {})
    return env


def run_ansible(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    tool: str = "ansible",
) -> subprocess.CompletedProcess[str]:
    """Run an ansible tool (ansible, ansible-playbook, ...) from the project root."""
    return subprocess.run(
        [_tool(tool), *args],
        cwd=PROJECT_ROOT,
        env=dict(env) if env is not None else ansible_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll condition until it returns something true (returned); fail naming what was
    awaited when timeout seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def lab_inventory_dir(lab: Lab, env: str = "lab") -> Path:
    """<base_dir>/inventories/<env>: its parent works as OPSBOOK_INVENTORY_ROOT."""
    return lab.base_dir / "inventories" / env


# ------------------------------------------------------------------ script


def _print_summary(lab: Lab, inventory: Path) -> None:
    info: dict[str, Any] = lab.describe()
    print("opsbook lab is up", flush=True)
    print(f"  base dir        {info['base_dir']}")
    print(f"  database_url    {info['database_url']}")
    if info["s3_endpoint_url"]:
        print(f"  S3 endpoint     {info['s3_endpoint_url']}  bucket {info['s3_bucket']}")
        print(
            "                  credentials: AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
        )
    print(f"  inventory       {inventory}")
    for host in info["app_hosts"]:
        print(f"  {host['name']:<15} ssh {host['ssh']}  app {host['app_base_url']}")
    print("try:")
    print(
        f"  ANSIBLE_CONFIG={PROJECT_ROOT}/ansible.cfg {VENV_BIN}/ansible app -i {inventory} -m ping"
    )
    print(
        f"  OPSBOOK_INVENTORY_ROOT={inventory.parent} {VENV_BIN}/opsbook run health_check"
        f" --env {inventory.name}"
    )
    print("Ctrl-C (or SIGTERM) tears everything down.", flush=True)


def _wait_for_signal() -> int:
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    stop.wait()
    return received[0]


def up(args: argparse.Namespace) -> int:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="opsbook-lab-"))
    lab = Lab(
        base,
        hosts=args.hosts,
        first_address=args.first_address,
        pgbench_scale=args.pgbench_scale,
        with_s3=not args.no_s3,
        remove_on_stop=not (args.keep or args.dir),
    )
    print(f"starting the lab in {base} ...", flush=True)
    try:
        lab.start()
        inventory = lab.write_inventory(lab_inventory_dir(lab), env="local")
        (base / "lab.json").write_text(json.dumps(lab.describe(), indent=2) + "\n")
        _print_summary(lab, inventory)
        signum = _wait_for_signal()
        print(f"\nsignal {signum}: tearing the lab down ...", flush=True)
    finally:
        lab.stop()
    print("lab stopped; nothing left running.")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tests/harness.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("up", help="start the lab, wait for Ctrl-C, tear it down")
    cmd.add_argument("--hosts", type=int, default=3, help="number of app hosts (default 3)")
    cmd.add_argument(
        "--pgbench-scale", type=int, default=0, help="also load pgbench data at this scale"
    )
    cmd.add_argument("--first-address", type=int, default=1, help="first host is 127.0.10.<N>")
    cmd.add_argument("--dir", help="lab directory (default: a new temporary directory)")
    cmd.add_argument(
        "--keep", action="store_true", help="keep the temporary lab directory afterwards"
    )
    cmd.add_argument("--no-s3", action="store_true", help="do not start the S3 server")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "up":
        return up(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
