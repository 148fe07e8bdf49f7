"""The opsbook test lab: real servers, started and torn down by the harness.

- :class:`PostgresCluster` (postgres.py): a throwaway PostgreSQL cluster (initdb),
  with loaders :func:`load_app_schema` and :func:`load_pgbench`;
- :class:`MotoS3Server` (s3.py): an S3-compatible server (moto's server mode);
- :class:`SshKeyPair`, :class:`SshHost` (sshd.py): sshd processes on 127.0.10.N;
- :class:`AppHost` (hosts.py): an SSH host running the sample app from
  ``<deploy_root>/current``; :func:`start_app_hosts`;
- :func:`build_release`, :func:`sha256_file` (sampleapp): versioned release artifacts;
- :func:`write_inventory` (inventory.py): an inventory following the opsbook contract;
- :class:`Lab` (environment.py): all of the above under one directory.

Every process the lab starts is tracked (pid files) and torn down by stop().
"""

from opsbook.lab._proc import (
    LabError,
    free_port,
    make_lab_dir,
    pid_alive,
    port_is_open,
    processes_referencing,
    sweep,
)
from opsbook.lab.environment import DEFAULT_PG_SETTINGS, Lab
from opsbook.lab.hosts import AppHost, HttpAnswer, http_get, start_app_hosts, stop_all
from opsbook.lab.inventory import write_inventory
from opsbook.lab.postgres import (
    PostgresCluster,
    app_table_checksums,
    load_app_schema,
    load_pgbench,
)
from opsbook.lab.s3 import S3_CREDENTIALS, MotoS3Server
from opsbook.lab.sampleapp import build_release, sha256_file
from opsbook.lab.sshd import SshHost, SshKeyPair, host_address, write_known_hosts

__all__ = [
    "DEFAULT_PG_SETTINGS",
    "S3_CREDENTIALS",
    "AppHost",
    "HttpAnswer",
    "Lab",
    "LabError",
    "MotoS3Server",
    "PostgresCluster",
    "SshHost",
    "SshKeyPair",
    "app_table_checksums",
    "build_release",
    "free_port",
    "host_address",
    "http_get",
    "load_app_schema",
    "load_pgbench",
    "make_lab_dir",
    "pid_alive",
    "port_is_open",
    "processes_referencing",
    "sha256_file",
    "start_app_hosts",
    "stop_all",
    "sweep",
    "write_inventory",
    "write_known_hosts",
]
