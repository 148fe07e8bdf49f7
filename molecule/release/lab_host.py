#!/usr/bin/env python3
"""The molecule `release` scenario's test host, started and stopped with opsbook.lab.

    lab_host.py up --dir DIR [--address 41] [--version 1.0.0]
        sshd on 127.0.10.<address> + the sample app <version> running from
        <deploy_root>/current; writes DIR/inventory/ (tests.lab.write_inventory: group `app`,
        strict host-key checking, ansible_python_interpreter=/usr/bin/python3) and DIR/lab.json.
    lab_host.py artifact --dir DIR --version 2.0.0
        builds DIR/artifacts/sampleapp-<version>.tar.gz (opsbook.lab.build_release).
    lab_host.py down --dir DIR
        stops the host and everything it started, removes DIR.

Each command prints one JSON object. Run with the project's virtualenv Python (opsbook.lab;
tests.lab is imported from the project directory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project: tests.lab

from opsbook.lab import AppHost, SshKeyPair, build_release, host_address, sha256_file, sweep
from tests.lab import write_inventory

HOST_NAME = "release-host"


def host_for(base: Path, address: int) -> AppHost:
    return AppHost(HOST_NAME, host_address(address), base / HOST_NAME, SshKeyPair(base / "ssh"))


def up(base: Path, address: int, version: str) -> dict[str, object]:
    base.mkdir(parents=True, exist_ok=True)
    host = host_for(base, address)
    was_running = host.is_running() and host.app_running()
    host.start(version)
    inventory = write_inventory(
        base / "inventory",
        [host],
        host.key,
        known_hosts_file=base / "known_hosts",
        env="test",
        extra_vars={"app_restart_method": "supervisor"},
    )
    state = {
        "started": not was_running,
        "name": host.name,
        "address": host.address,
        "ssh_port": host.port,
        "base_url": host.base_url,
        "deploy_root": str(host.deploy_root),
        "app_pid": host.app_pid,
        "initial_release": host.current_release,
        "inventory": str(inventory),
    }
    (base / "lab.json").write_text(json.dumps(state, indent=2) + "\n")
    return state


def artifact(base: Path, version: str) -> dict[str, object]:
    path = build_release(version, base / "artifacts")
    info = {"version": version, "path": str(path), "sha256": sha256_file(path)}
    (base / f"artifact-{version}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def down(base: Path, address: int) -> dict[str, object]:
    if not base.exists():
        return {"stopped": False}
    if (base / HOST_NAME / "host.json").exists() and (base / "ssh").exists():
        host_for(base, address).stop()
    swept = sweep(base)
    shutil.rmtree(base, ignore_errors=True)
    return {"stopped": True, "swept": swept}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["up", "artifact", "down"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--address", type=int, default=41, help="127.0.10.<address>")
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)
    base = args.dir.absolute()
    if args.command == "up":
        result = up(base, args.address, args.version)
    elif args.command == "artifact":
        result = artifact(base, args.version)
    else:
        result = down(base, args.address)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
