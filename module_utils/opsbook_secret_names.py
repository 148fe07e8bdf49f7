# Copyright: opsbook contributors
# Apache-2.0
"""Which variable names hold secrets: the one list of rules opsbook's scrubbers share.

Two scrubbers keep secrets out of what a run leaves behind, in two processes that cannot
import each other:

* the runner's (``src/opsbook/secrets.py``, in the ``opsbook`` process): it collects the
  values stored under these names - in extra vars, the inventory (vault files decrypted in
  memory), the environment - and redacts them from the runner's artifacts;
* the operation log's (``callback_plugins/opsbook_oplog.py``, in ansible-playbook, where the
  ``opsbook`` package may not be installed - AWX): it masks values under these names in the
  record and scrubs their values and ``name=value`` / ``name: value`` text from messages.

This file is the single source of both, and of the names AWX reserves for its jobs
(:func:`is_awx_own_var`: the operation log trusts them under AWX, ``opsbook run`` refuses
them). Python standard library only, no Ansible, so that
each side can load it: the callback by path (``../module_utils/`` from its own file, the same
in this project and in a collection's ``plugins/``), the ``opsbook`` package as
``opsbook._secret_names`` (a symlink to this file, so a built wheel carries a copy of it).

A name is secret when one of :data:`SECRET_NAME_RULES` matches it and it does not end in one
of :data:`NOT_SECRET_SUFFIXES` (a name that is only *about* a secret: its file, its id, its
length...). Names are compared in lower case, with ``-`` and ``.`` read as ``_``
(``DB-PASSWORD``, ``db.password`` and ``db_password`` are one name).
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: (pattern, what it is for): searched in the normalized name (lower case, ``-``/``.`` -> ``_``).
SECRET_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"passw(?:or)?d", "password, passwd: db_password, PGPASSWORD, ansible_password"),
    (r"passphrase", "passphrase: ssh_passphrase"),
    (r"(?:^|_)pass(?:$|_)", "pass as a word: ansible_become_pass, smtp_pass"),
    (r"secret", "secret: *_secret, client_secret, AWS_SECRET_ACCESS_KEY"),
    (r"token", "token: *_token, github_token, AWS_SESSION_TOKEN"),
    (r"api_?key", "api key: *_api_key, apikey, X-Api-Key"),
    (r"private_?key", "private key: ssh_private_key, tls_privatekey"),
    (
        r"(?:^|_)(?:ssh|signing|encryption|master|hmac)_?keys?(?:$|_)",
        "a key that is itself secret: ssh_key, signing_key, encryption_key (a plain *_key is "
        "not: in opsbook it is most often an S3 object key)",
    ),
    (r"credential", "credential: aws_credentials, db_credentials"),
    (r"authorization", "an HTTP Authorization header"),
    (r"dsn", "a DSN: sentry_dsn, pg_dsn (it holds the password)"),
    (r"database_?url", "database_url: a DSN, password included"),
    (r"webhook_?url", "*webhook_url: whoever has a webhook URL can post to the channel"),
    (r"^vault_", "vault_*: the inventory contract keeps the values of vault.yml under vault_"),
)

#: A name ending in ``_<one of these>`` is only about a secret, not the secret itself.
NOT_SECRET_SUFFIXES: tuple[str, ...] = (
    "file", "path", "dir", "id", "name", "names", "length", "len", "size", "bits", "type",
    "mode", "enabled", "ttl", "count", "format", "algorithm", "policy", "expiry", "expires",
    "age", "logging", "label",
)  # fmt: skip

#: Names that match a rule but hold no secret: the rotation runbook's inputs and reports name
#: secrets, they never hold one (``secrets=jwt,nextauth``; the values it rotates live under
#: their own names - JWT_SECRET, vault_*, secret_values).
# Names about secrets that hold none: which secrets to rotate, the catalog of where each lives
# and how it is proven (stores, test paths, commands: opsbook_secrets), report switches.
NOT_SECRET_NAMES: frozenset[str] = frozenset(
    {"secrets", "secrets_report_fail_on", "opsbook_secrets", "tour_secrets"}
)

_SECRET_RE = re.compile("|".join(f"(?:{pattern})" for pattern, _why in SECRET_NAME_RULES))
_NOT_SECRET_RE = re.compile(r"_(?:" + "|".join(NOT_SECRET_SUFFIXES) + r")$")

# name = value, name: value, "name": "value", --name=value: the name as a word of its own, the
# value (looked ahead at, so that a name that is not secret consumes nothing) up to a blank, a
# quote or a separator. The name is judged by is_secret_name().
_ASSIGNMENT_RE = re.compile(
    r"(?P<name>(?<!\w)[A-Za-z_][\w.\-]*)(?P<sep>[\"']?\s*[=:]\s*[\"']?)"
    r"(?=(?P<value>[^\s\"',;&}\]]+))"
)


def normalize(name: str) -> str:
    """A name as the rules see it: lower case, ``-`` and ``.`` read as ``_``."""
    return name.lower().replace("-", "_").replace(".", "_")


def is_secret_name(name: object) -> bool:
    """True when a variable, environment variable or mapping key called ``name`` holds a
    secret.

    >>> is_secret_name("database_url"), is_secret_name("opsbook_notify_webhook_url")
    (True, True)
    >>> is_secret_name("ansible_ssh_private_key_file"), is_secret_name("monkey")
    (False, False)
    """
    if not isinstance(name, str):
        return False
    plain = normalize(name)
    if plain in NOT_SECRET_NAMES:
        return False
    return bool(_SECRET_RE.search(plain)) and not _NOT_SECRET_RE.search(plain)


def matching_rules(name: str) -> list[str]:
    """The patterns of :data:`SECRET_NAME_RULES` that match ``name`` (to explain a verdict)."""
    plain = normalize(name)
    return [pattern for pattern, _why in SECRET_NAME_RULES if re.search(pattern, plain)]


def redact_assignments(text: str, mask: str | Callable[[str], str]) -> str:
    """``text`` with the value of every ``name=value`` / ``name: value`` whose name is secret
    replaced by ``mask`` (a string, or a function of the value). A value already masked is
    left as it is.

    >>> redact_assignments('token=abc123 user=bob {"api_key": "k-1"}', "***")
    'token=*** user=bob {"api_key": "***"}'
    """

    parts: list[str] = []
    done = 0  # text before this index is already in parts
    for match in _ASSIGNMENT_RE.finditer(text):
        if match.start() < done or not is_secret_name(match.group("name")):
            continue  # inside a value already masked, or a name that is not secret
        value = match.group("value")
        masked = mask(value) if callable(mask) else mask
        if value == masked or (not callable(mask) and value.startswith(mask)):
            continue
        parts += [text[done : match.end()], masked]
        done = match.end() + len(value)
    return "".join([*parts, text[done:]])


# --------------------------------------------------------------------------- AWX's own names
# The extra vars AWX gives every job (and their older tower_* names): the operation log takes
# the job and the launching user from them, so `opsbook run` refuses them. Other awx_* names
# (awx_setup_*) are users' inputs.
AWX_OWN_VARS = frozenset(
    f"{prefix}_{name}"
    for prefix in ("awx", "tower")
    for name in (
        "job_id", "job_template_id", "job_template_name", "job_launch_type", "user_id",
        "user_name", "user_email", "user_first_name", "user_last_name", "inventory_id",
        "inventory_name", "project_revision", "project_scm_branch", "job_scm_branch",
        "execution_node", "host", "schedule_id", "schedule_name",
    )
)  # fmt: skip
AWX_OWN_PREFIXES = ("awx_workflow_", "tower_workflow_")


def is_awx_own_var(name: str) -> bool:
    """True for an extra var AWX itself gives a job (:data:`AWX_OWN_VARS`, awx_workflow_*)."""
    return name in AWX_OWN_VARS or name.startswith(AWX_OWN_PREFIXES)
