"""The opsbook lab: real servers on this machine, started and torn down by the sandbox
(``opsbook sandbox``) and by the tests.

- :class:`PostgresCluster` (postgres.py): a throwaway PostgreSQL cluster (initdb),
  with the sample app schema (:func:`load_app_schema`);
- :class:`SshKeyPair`, :class:`SshHost` (sshd.py): sshd processes on 127.0.10.N;
- :class:`AppHost` (hosts.py): an SSH host running the sample app from
  ``<deploy_root>/current``; :func:`start_app_hosts`;
- :func:`build_release`, :func:`sha256_file` (sampleapp): versioned release artifacts.

What only the tests need (moto's S3 server, inventories, pgbench data, the whole-lab
``Lab``) is in ``tests/lab/``. Every process the lab starts is tracked (pid files) and
torn down by stop().
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
from opsbook.lab.hosts import AppHost, HttpAnswer, http_get, start_app_hosts, stop_all
from opsbook.lab.postgres import PostgresCluster, load_app_schema
from opsbook.lab.sampleapp import build_release, sha256_file
from opsbook.lab.sshd import SshHost, SshKeyPair, host_address, write_known_hosts

__all__ = [
    "AppHost",
    "HttpAnswer",
    "LabError",
    "PostgresCluster",
    "SshHost",
    "SshKeyPair",
    "build_release",
    "free_port",
    "host_address",
    "http_get",
    "load_app_schema",
    "make_lab_dir",
    "pid_alive",
    "port_is_open",
    "processes_referencing",
    "sha256_file",
    "start_app_hosts",
    "stop_all",
    "sweep",
    "write_known_hosts",
]
