# Copyright: opsbook contributors
# Apache-2.0
"""Documentation of the connection options every opsbook Postgres module takes, and of psycopg
which they need (module_utils/opsbook_pg.py defines them in code):
extends_documentation_fragment: [opsbook.runbooks.opsbook_pg]."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
requirements:
  - psycopg >= 3.1 (psycopg 3) for the Python interpreter that runs the module
options:
  dsn:
    description:
      - libpq connection string, a URI (C(postgresql://user:password@host:5432/db)) or
        C(key=value) pairs.
      - Secret (C(no_log)); the password never appears in the output.
      - Shared by every opsbook Postgres module (C(module_utils/opsbook_pg.py)).
    type: str
    required: true
  connect_timeout:
    description:
      - Seconds to wait for a connection (libpq C(connect_timeout)); at least 1.
      - Shared by every opsbook Postgres module.
    type: int
    default: 10
  application_name:
    description:
      - C(application_name) of the module's sessions, as C(pg_stat_activity) shows them;
        overrides one set in O(dsn).
      - Shared by every opsbook Postgres module.
    type: str
    default: opsbook
"""
