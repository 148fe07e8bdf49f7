"""What only the tests and benchmarks need on top of ``opsbook.lab`` (the parts the sandbox
shares with them: Postgres, SSH hosts, the sample app):

- :class:`MotoS3Server` (s3.py): an S3-compatible server (moto's server mode);
- :func:`write_inventory` (inventory.py): an inventory following the opsbook contract;
- :func:`load_pgbench`, :func:`app_table_checksums` (pgdata.py): more data, and row
  checksums to compare a database before and after an operation;
- :class:`Lab` (environment.py): all of the lab under one directory.
"""

from tests.lab.environment import DEFAULT_PG_SETTINGS, Lab
from tests.lab.inventory import write_inventory
from tests.lab.pgdata import app_table_checksums, load_pgbench
from tests.lab.s3 import S3_CREDENTIALS, MotoS3Server

__all__ = [
    "DEFAULT_PG_SETTINGS",
    "S3_CREDENTIALS",
    "Lab",
    "MotoS3Server",
    "app_table_checksums",
    "load_pgbench",
    "write_inventory",
]
