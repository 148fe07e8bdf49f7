"""Ansible inventories for lab hosts, following the opsbook inventory contract.

Writes ``<dir>/hosts.yml`` (groups ``app`` and ``dbadmin``) and
``<dir>/group_vars/all/vars.yml`` (opsbook_env, database_url,
backup_storage_url, s3_endpoint_url, deploy_target and any extra vars).
App hosts are reached over SSH with strict host-key checking against a real
known_hosts file; ``dbadmin`` is localhost with the controller's Python
(``ansible_playbook_python``, the one that has psycopg and boto3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from opsbook.lab.hosts import HOST_PYTHON, AppHost
from opsbook.lab.sshd import SshKeyPair, write_known_hosts

__all__ = ["OPSBOOK_ENVS", "app_host_vars", "opsbook_env_for", "write_inventory"]

OPSBOOK_ENVS = ("local", "staging", "production")


def app_host_vars(host: AppHost, key: SshKeyPair | None, known_hosts_file: Path) -> dict[str, Any]:
    """Connection and contract variables of one app host (key None: the host's own key)."""
    key = key or host.key
    return {
        "ansible_host": host.address,
        "ansible_port": host.port,
        "ansible_user": host.user,
        "ansible_ssh_private_key_file": str(key.private_key),
        "ansible_ssh_common_args": (
            f"-o UserKnownHostsFile={known_hosts_file} -o StrictHostKeyChecking=yes"
        ),
        "ansible_python_interpreter": HOST_PYTHON,
        "app_base_url": host.base_url,
        "deploy_root": str(host.deploy_root),
    }


def opsbook_env_for(env: str) -> str:
    """opsbook_env for an inventory named env: itself when it is a real one, else local."""
    return env if env in OPSBOOK_ENVS else "local"


def _dump(path: Path, data: Mapping[str, Any], comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)
    path.write_text(f"---\n# {comment}\n{text}")


def write_inventory(
    path_dir: Path | str,
    app_hosts: Sequence[AppHost],
    key: SshKeyPair | None,
    known_hosts_file: Path | str | None = None,
    database_url: str | None = None,
    backup_storage_url: str | None = None,
    extra_vars: Mapping[str, Any] | None = None,
    env: str = "test",
    s3_endpoint_url: str | None = None,
) -> Path:
    """Write an inventory directory for app_hosts; return path_dir.

    key is the private key Ansible uses (None: each host's own SshHost.key).
    known_hosts_file defaults to <path_dir>/known_hosts and is (re)written with
    the host key of every app host. opsbook_env is env when env is local,
    staging or production, else local (a "test" inventory behaves like the
    sandbox); extra_vars may override it and anything else.
    """
    path_dir = Path(path_dir).absolute()
    known_hosts = Path(known_hosts_file) if known_hosts_file else path_dir / "known_hosts"
    write_known_hosts(known_hosts, list(app_hosts))
    hosts = {host.name: app_host_vars(host, key, known_hosts) for host in app_hosts}
    inventory = {
        "all": {
            "children": {
                "app": {"hosts": hosts},
                "dbadmin": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                        }
                    }
                },
            }
        }
    }
    _dump(path_dir / "hosts.yml", inventory, f"opsbook lab inventory ({env}), generated")
    group_vars: dict[str, Any] = {"opsbook_env": opsbook_env_for(env), "deploy_target": "hosts"}
    if database_url is not None:
        group_vars["database_url"] = database_url
    if backup_storage_url is not None:
        group_vars["backup_storage_url"] = backup_storage_url
    if s3_endpoint_url is not None:
        group_vars["s3_endpoint_url"] = s3_endpoint_url
    group_vars.update(extra_vars or {})
    _dump(path_dir / "group_vars" / "all" / "vars.yml", group_vars, "the inventory contract")
    return path_dir
