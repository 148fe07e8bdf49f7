# Copyright: opsbook contributors
# Apache-2.0 (see pyproject.toml)
"""opsbook operation log: one redacted JSON line per playbook run (the audit trail)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: opsbook_oplog
type: aggregate
short_description: Append one JSON line per playbook run to the opsbook operation log; notify
description:
  - The audit trail of opsbook. At the end of every playbook run it appends exactly one JSON
    object, on one line, to the operation log, whoever started the run (C(ansible-playbook),
    C(opsbook run), ansible-runner, AWX).
  - "It fills the runbooks' Operation Logs Template: Date/Time = C(started)/C(finished),
    Operation = C(playbook) (+ C(env), C(limit), C(check_mode)), Reason = C(reason),
    Impact = C(hosts) (per-host ok/changed/failed/...), Duration = C(duration_s),
    Issues = C(status) and C(failures), Follow-up = C(outputs) (the run's set_stats data)."
  - "Record fields: C(id) (env E(OPSBOOK_RUN_ID), else a UUID4), C(started), C(finished)
    (ISO 8601, UTC), C(duration_s), C(operator) (the AWX user who launched the job, else env
    E(OPSBOOK_OPERATOR), else the login name),
    C(playbook) (file stem), C(env) (variable C(opsbook_env)), C(reason) (variable
    C(opsbook_reason), normally given with C(-e)), C(check_mode), C(limit), C(extra_var_keys)
    (names only, never values), C(status) (successful, failed or unreachable; failed wins
    when both happen; canceled or timeout for a run stopped by a signal), C(interrupted) (the
    signal that stopped it, or null), C(hosts), C(failures) (list of C(host), C(task),
    C(msg)) and C(outputs)."
  - "B(Under AWX) (the extra var C(awx_job_id) or C(tower_job_id) is set, as AWX sets it for
    every job, B(and) the environment's E(JOB_ID), which AWX sets in the job's process, is
    that id) the record also has C(awx_job_id), C(awx_job_template_name) and, for a
    scheduled job, C(awx_schedule_name), after C(limit); C(operator) is C(awx_user_name) (a
    scheduled job - C(schedule:<name>)); AWX's own extra vars (C(awx_job_*), C(awx_user_*),
    C(awx_inventory_*), C(awx_project_*), C(awx_schedule_*), C(awx_workflow_*), ... and
    their C(tower_*) twins; not users' inputs such as C(awx_setup_*)) are left out of
    C(extra_var_keys); notifications carry an C(awx job) field. AWX runs the job in a
    copy of the project that it throws away, so the default file is not written there: the
    record is printed in the job output (option O(stdout), on by default under AWX) and sent to
    the webhook, and goes to a file only when one is configured (O(path) or the variable
    C(opsbook_oplog_path)) - a warning says so once per run when none is, and when the one
    configured is inside the job's copy of the project (a relative C(opsbook_oplog_path))."
  - "Extra vars are anyone's: a run that is not an AWX job (no E(JOB_ID), or another job's)
    whose extra vars claim one (C(-e awx_job_id=1 -e awx_user_name=mallory)) is recorded as
    any other run - C(operator) from E(OPSBOOK_OPERATOR) or the login - with what they claim
    under C(awx_claimed) (after C(limit)). C(opsbook run) refuses AWX's extra vars."
  - "B(Where the record goes.) A file - O(path) (E(OPSBOOK_OPLOG), ansible.cfg), else the
    variable C(opsbook_oplog_path) (the inventory, the job template's extra vars; relative to
    the project), else C(<project>/.opsbook/oplog.jsonl) (not under AWX). The run's output -
    with O(stdout) (else the variable C(opsbook_oplog_stdout)) the same line, prefixed
    C(OPSBOOK_OPLOG ), printed through Ansible's display when the record is written, so it
    lands in AWX's job output and ansible-runner's C(stdout) artifact. The webhook - see
    B(Notifications). All three carry the same redacted record."
  - "B(Host keys.) ansible-runner, and AWX through it, set E(ANSIBLE_HOST_KEY_CHECKING=False)
    unless the environment has it. When that leaves SSH host keys unchecked in a run (no
    C(-o StrictHostKeyChecking=yes) in the ssh connection's C(ssh_args), which ssh reads before
    Ansible's C(StrictHostKeyChecking=no)) and a play reaches a host over SSH, one warning says
    so in the run's output."
  - "Secrets never reach the log. Only the names of extra vars are kept. Values under secret
    names become C(***) - the rules of C(module_utils/opsbook_secret_names.py), shared with
    C(opsbook run)'s own scrubber (password, passphrase, secret, token, api_key, private_key,
    credential, dsn, database_url, webhook_url, ... and vault_*; not names ending in _file,
    _id, _name, ...). Passwords in URLs (C(scheme://user:secret@host)) and the values in
    C(name=value) and C(name: value) text under a secret name become C(***); the values of
    secret variables and every vaulted value are scrubbed from messages (decrypted in memory
    only). A failure of a C(no_log) task is recorded with the censored marker only."
  - Failure messages are redacted, then cut to 500 characters. Failures of tasks with
    C(ignore_errors) and ignored unreachable hosts are not listed; failures later handled by
    a C(rescue) section are listed (the run status still says successful).
  - The line is appended with O_APPEND in a single write call, so concurrent runs sharing a
    log do not interleave. The file is created with mode 0600, missing parent directories
    with mode 0700.
  - The plugin never changes the outcome of a run. Any error of its own (for example an
    unwritable log path) is shown as a warning and the playbook result is unchanged.
  - "B(Notifications.) Every runbook's run is announced - C(success) or C(failure) when its
    record is written (a stopped run is a failure), C(start) (off by default) when its first
    play starts - to a Slack-compatible webhook (variable C(opsbook_notify_webhook_url)) and/or
    a file (C(opsbook_notify_file)). Nothing is sent when neither is set. The notification is a
    rendering of the record (module_utils/opsbook_notify.py, shared with the notify_webhook
    module): a title (C(backup succeeded on production), C(deploy FAILED on staging),
    C(health_check succeeded on production - verdict warn)), the fields runbook, environment,
    operator, reason, duration, status (and the worst C(verdict) published), check mode, limit
    and C(opsbook_notify_fields); then the runbook's summary lines - each output's C(summary)
    (a list of lines, or text), else its C(lines), else one line of its scalar fields
    (verdict, status, ok, version, release_id, backup_id, ...) - and, for a run that did not
    succeed, its failures first (host, task, message; at most three - the first ones and the
    last, which is often the runbook's own verdict). At most 12 lines of 300
    characters each. It is built from the redacted record: what the record masks, the
    notification never shows."
  - "The settings are the variables of the run's first play that has a host (the inventory,
    play vars, C(-e)), as C(opsbook_env) and C(opsbook_reason) are: C(opsbook_notify_webhook_url)
    (a secret: keep it in the vault; never printed, in no warning, scrubbed from the record),
    C(opsbook_notify_file) (a path, relative to the project - the parent of C(playbooks/); one
    JSON line appended per notification - time, event, run_id, runbook, env, title, fields,
    lines - file mode 0600, missing directories 0700),
    C(opsbook_notify_start) (bool, default false), C(opsbook_notify_on) (the events to send,
    a list or names separated by commas; default C(start, success, failure), C(start) still
    needs C(opsbook_notify_start)), C(opsbook_notify_fields) (name -> value shown in every
    notification of the run, templated: a runbook names what its start notification says -
    deploy.yml, the version - or an inventory adds a field; redacted like the record). The
    options below (E(OPSBOOK_NOTIFY_*), for cron) win over the variables."
  - "Delivery never fails a run nor stops the record being written: the webhook gets 5 s an
    attempt, and one more attempt after a connection error, a timeout, HTTP 429 or 5xx (a
    C(Retry-After) honoured up to 10 s); what is not delivered is one warning naming the
    webhook's scheme and host only. A run stopped by a signal sends its failure notification
    once, waiting at most 2 s. With C(-vv) a delivery is shown."
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
requirements:
  - C(module_utils/opsbook_secret_names.py) in the C(module_utils) directory beside this
    plugin's directory (or in a configured module_utils path); without it no record is written
    (a warning says so). C(module_utils/opsbook_notify.py) beside it, for the notifications.
  - "enabled in C(ansible.cfg): C(callbacks_enabled = opsbook.runbooks.opsbook_oplog), the
    collection found through C(collections_path) or the C(collections) directory beside the
    playbooks - which also works under ansible-runner, AWX and ansible-navigator, whatever they
    set E(ANSIBLE_CALLBACK_PLUGINS) and E(ANSIBLE_COLLECTIONS_PATH) to."
options:
  path:
    description:
      - File the operation log is appended to (JSON lines).
      - When not set, the variable C(opsbook_oplog_path) (relative to C(<project>)), else
        C(<project>/.opsbook/oplog.jsonl), where C(<project>) is the parent of the playbook's
        directory when that directory is named C(playbooks), else the playbook's directory.
      - Under AWX, when neither this nor C(opsbook_oplog_path) is set, no file is written (the
        project is AWX's throw-away copy); a warning says where the record went.
    type: path
    env:
      - name: OPSBOOK_OPLOG
    ini:
      - section: callback_opsbook_oplog
        key: path
  stdout:
    description:
      - Also print the record, as one line C(OPSBOOK_OPLOG {...}), in the run's output (AWX's job
        output, ansible-runner's C(stdout) artifact) - redacted like the file's.
      - When not set, the variable C(opsbook_oplog_stdout); when neither is set, on under AWX
        and off otherwise.
    type: bool
    env:
      - name: OPSBOOK_OPLOG_STDOUT
    ini:
      - section: callback_opsbook_oplog
        key: stdout
  notify_webhook_url:
    description:
      - The Slack-compatible incoming webhook every run is announced to; wins over the variable
        C(opsbook_notify_webhook_url). A secret.
    type: str
    env:
      - name: OPSBOOK_NOTIFY_WEBHOOK_URL
  notify_file:
    description:
      - File the notifications are appended to (JSON lines); wins over C(opsbook_notify_file).
    type: path
    env:
      - name: OPSBOOK_NOTIFY_FILE
    ini:
      - section: callback_opsbook_oplog
        key: notify_file
  notify_start:
    description:
      - Announce the start of each run too; wins over C(opsbook_notify_start) (default false).
    type: bool
    env:
      - name: OPSBOOK_NOTIFY_START
  notify_on:
    description:
      - The events sent (C(start), C(success), C(failure)); wins over C(opsbook_notify_on).
    type: list
    elements: str
    env:
      - name: OPSBOOK_NOTIFY_ON
notes:
  - "Example record (one line in the file):
    {\"id\": \"8f0c...\", \"started\": \"2025-11-19T14:30:05.120Z\",
    \"finished\": \"2025-11-19T14:31:02.004Z\", \"duration_s\": 56.884, \"operator\": \"alice\",
    \"playbook\": \"deploy\", \"env\": \"production\", \"reason\": \"release 1.4.2\",
    \"check_mode\": false, \"limit\": null, \"extra_var_keys\": [\"opsbook_reason\"],
    \"status\": \"successful\", \"hosts\": {\"web1\": {\"ok\": 12, \"changed\": 3, \"failed\": 0,
    \"unreachable\": 0, \"skipped\": 1, \"rescued\": 0, \"ignored\": 0}}, \"failures\": [],
    \"outputs\": {}}"
  - C(outputs) holds the run-wide set_stats data (C(per_host=false)) at its top level, as AWX
    shows artifacts; per-host set_stats data, if any, is under C(outputs._hosts).
  - With several playbooks on one C(ansible-playbook) command line, one record is written per
    playbook; its host counts cover that playbook only, its C(outputs) the set_stats keys that
    playbook published (new, or changed since the previous playbook's record).
  - "A run stopped by SIGTERM or SIGINT (an AWX cancel, Ctrl-C, C(opsbook run --timeout) or a
    cancel) writes its record at once, before Ansible forwards the signal and ends: C(status)
    C(canceled) - C(timeout) when C(opsbook run) stopped it for its C(--timeout), which it says
    in the file E(OPSBOOK_STOP_REASON_FILE) names - and C(interrupted) the signal's name, with
    what the run had done so far. A run that never starts its playbook (a syntax error) or is
    SIGKILLed writes no record."
"""

import contextlib
import copy
import functools
import getpass
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ansible import constants as C
from ansible import context
from ansible.plugins.callback import CallbackBase

try:
    from ansible.parsing.vault import VaultHelper
except ImportError:  # ansible-core < 2.19: vaulted values are only EncryptedString objects
    VaultHelper = None
try:  # where a value was loaded from (ansible-core's data tagging, 2.19+; no public accessor)
    from ansible._internal._datatag._tags import Origin as _Origin
except ImportError:
    _Origin = None

MASK = "***"
MSG_LIMIT = 500
MAX_FAILURES = 100
MAX_DEPTH = 32
MIN_SECRET_LEN = 4
COUNT_FIELDS = ("ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored")
CENSORED_KEY = "censored"
CENSORED_MARKER = (
    "the output has been hidden due to the fact that 'no_log: true' was specified for this result"
)

# scheme://user:password@host -> the password runs to the last '@' of the word, so unencoded
# '@' or '/' in a password (AWS secret keys have '/') cannot leak a tail of it.
_URL_PASSWORD_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/?#@\"']*):([^\s\"']*)@")
SECRET_NAMES_FILE = "opsbook_secret_names.py"
NOTIFY_FILE = "opsbook_notify.py"
MISSING_RULES = (
    f"{SECRET_NAMES_FILE} (the secret-name rules) is neither in the module_utils directory"
    " beside this plugin's directory nor in a configured module_utils path"
)


def _load_module_util(file_name: str, alias: str) -> Any:
    """A file of module_utils (opsbook_secret_names.py, the secret-name rules shared with
    opsbook run's scrubber; opsbook_notify.py, the notifications' payload and POST shared with
    the notify_webhook module): beside this plugin's directory (this project, or a collection's
    plugins/), else in a configured module_utils path. None when it is nowhere."""
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "module_utils"]
    with contextlib.suppress(Exception):
        configured = C.config.get_config_value("DEFAULT_MODULE_UTILS_PATH") or []
        if isinstance(configured, str):
            configured = configured.split(os.pathsep)
        candidates += [Path(os.path.expanduser(p)) for p in configured if p]
    for directory in candidates:
        path = directory / file_name
        if not path.is_file():
            continue
        spec = importlib.util.spec_from_file_location(alias, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        try:
            spec.loader.exec_module(module)
        except Exception:  # a broken file is a missing one: said by a warning, never a crash
            sys.modules.pop(alias, None)
            continue
        return module
    return None


_NAMES = _load_module_util(SECRET_NAMES_FILE, "_opsbook_oplog_secret_names")
_NOTIFY = _load_module_util(NOTIFY_FILE, "_opsbook_oplog_notify")


# ---------------------------------------------------------------------------
# Redaction (pure, never raises)
# ---------------------------------------------------------------------------


def looks_secret(key: object) -> bool:
    """True when a mapping key names something secret (the shared secret-name rules)."""
    if _NAMES is None:
        return True  # no rules: nothing is recorded anyway (see CallbackModule._write)
    return bool(_NAMES.is_secret_name(key))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask known secret values, URL passwords and the values of secret name=value /
    name: value pairs in free text."""
    try:
        for secret in sorted(set(secrets), key=len, reverse=True):
            if len(secret) >= MIN_SECRET_LEN:
                text = text.replace(secret, MASK)
        text = _URL_PASSWORD_RE.sub(rf"\1:{MASK}@", text)
        if _NAMES is None:
            return MASK
        return str(_NAMES.redact_assignments(text, MASK))
    except Exception:
        return MASK


def redact(value: Any, secrets: Iterable[str] = (), _depth: int = 0) -> Any:
    """Return a JSON-safe copy of value with every secret masked; never raises."""
    try:
        return _redact(value, frozenset(secrets), _depth)
    except Exception:
        return MASK


def _redact(value: Any, secrets: frozenset[str], depth: int) -> Any:
    if depth > MAX_DEPTH:
        return MASK
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(str(value), secrets)
    if isinstance(value, bytes):
        return redact_text(value.decode("utf-8", "replace"), secrets)
    if isinstance(value, Mapping):
        return {
            str(key): MASK if looks_secret(key) else _redact(item, secrets, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(item, secrets, depth + 1) for item in value]
    if "encrypt" in type(value).__name__.lower() or "vault" in type(value).__name__.lower():
        return MASK  # never str() a vaulted value: that would decrypt it
    return redact_text(str(value), secrets)


def secret_values(variables: Mapping[str, Any]) -> set[str]:
    """Literal secrets to scrub from messages: values of secret-looking keys, URL passwords."""
    found: set[str] = set()
    with contextlib.suppress(Exception):
        _collect_secrets(variables, False, found, 0)
    return {value for value in found if len(value) >= MIN_SECRET_LEN and "{{" not in value}


def _is_vaulted(value: Any) -> bool:
    """True for a value that came out of vault-encrypted data: a !vault value (Ansible tags it
    with its ciphertext), or any value of a vars file encrypted as a whole (its origin is that
    file: every value of an encrypted file is a secret, whatever its name)."""
    with contextlib.suppress(Exception):
        if VaultHelper is not None and VaultHelper.get_ciphertext(value, with_tags=False):
            return True
    with contextlib.suppress(Exception):
        origin = _Origin.get_tag(value) if _Origin is not None else None
        path = getattr(origin, "path", None)
        return bool(path) and _is_vault_file(str(path))
    return False


@functools.lru_cache(maxsize=256)
def _is_vault_file(path: str) -> bool:
    """True when the file at path is vault-encrypted as a whole."""
    header = b"$ANSIBLE_VAULT;"
    try:
        with open(path, "rb") as handle:
            return handle.read(len(header)) == header
    except OSError:
        return False


def _collect_secrets(value: Any, secret: bool, found: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        if secret or _is_vaulted(value):
            found.add(str(value))
        if "://" in value:
            found.update(_url_passwords(value))
    elif type(value).__name__ == "EncryptedString":
        with contextlib.suppress(Exception):  # decrypted in memory only, to scrub it
            found.add(str(value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _collect_secrets(item, secret or looks_secret(key), found, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_secrets(item, secret, found, depth + 1)


def _url_passwords(text: str) -> set[str]:
    passwords = set()
    for word in text.split():
        try:
            password = urlsplit(word).password
        except ValueError:
            continue
        if password:
            passwords.add(password)
    return passwords


def truncate(text: str, limit: int = MSG_LIMIT) -> str:
    """Cut text to at most limit characters, marking the cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..."


# ---------------------------------------------------------------------------
# Record building (pure)
# ---------------------------------------------------------------------------


@dataclass
class RunInfo:
    """What is known about a run when its playbook starts (plus the first play's variables)."""

    id: str
    started: datetime
    playbook: str
    operator: str
    check_mode: bool
    limit: str | None
    env: str | None = None
    reason: str | None = None
    extra_var_keys: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    #: the AWX job's fields (awx_job_id, awx_job_template_name, awx_schedule_name) when AWX
    #: started the run, in record order; empty otherwise
    awx: dict[str, Any] = field(default_factory=dict)
    #: those fields and awx_user_name when extra vars claim an AWX job but the process is not
    #: one (no JOB_ID, or another job's): recorded as claimed, trusted for nothing
    awx_claimed: dict[str, Any] = field(default_factory=dict)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def project_dir(playbook_path: str | os.PathLike[str]) -> Path:
    """The project a playbook belongs to: parent of `playbooks/`, else the playbook's directory."""
    directory = Path(os.path.abspath(playbook_path)).parent
    return directory.parent if directory.name == "playbooks" else directory


def default_log_path(playbook_path: str | os.PathLike[str]) -> Path:
    """<project>/.opsbook/oplog.jsonl."""
    return project_dir(playbook_path) / ".opsbook" / "oplog.jsonl"


def host_counts(summary: Mapping[str, int]) -> dict[str, int]:
    """AggregateStats.summarize() output in the record's vocabulary (failures -> failed)."""
    renamed = {"failed": summary.get("failures", 0)}
    return {name: int(renamed.get(name, summary.get(name, 0))) for name in COUNT_FIELDS}


def counts_delta(now: Mapping[str, int], before: Mapping[str, int] | None) -> dict[str, int]:
    """Per-host counts of one playbook when stats accumulate over several playbooks."""
    before = before or {}
    return {name: now.get(name, 0) - before.get(name, 0) for name in COUNT_FIELDS}


def run_status(hosts: Mapping[str, Mapping[str, int]]) -> str:
    """successful | failed | unreachable (a failure outranks an unreachable host)."""
    if any(counts.get("failed", 0) for counts in hosts.values()):
        return "failed"
    if any(counts.get("unreachable", 0) for counts in hosts.values()):
        return "unreachable"
    return "successful"


def failure_message(result: Mapping[str, Any], no_log: bool = False) -> str:
    """The message of a failed or unreachable result; only the censored marker under no_log."""
    if no_log or CENSORED_KEY in result or result.get("_ansible_no_log"):
        return CENSORED_MARKER  # the constant: nothing of a censored result is ever copied
    message = _first_text(result, ("msg", "reason"))
    stderr = _first_text(result, ("stderr", "module_stderr"))
    if message and stderr and stderr not in message:
        message = f"{message} (stderr: {stderr})"
    message = message or stderr
    if not message and result.get("rc") not in (None, 0):
        message = f"rc={result.get('rc')}"
    return _with_item_detail(message, result)


def _first_text(result: Mapping[str, Any], keys: Iterable[str]) -> str:
    for key in keys:
        text = result.get(key)
        if text:
            return str(text).strip()
    return ""


def _with_item_detail(message: str, result: Mapping[str, Any]) -> str:
    """Loops fail with 'One or more items failed': add the first failed item's message."""
    items = result.get("results")
    if not isinstance(items, list):
        return message
    for item in items:
        if isinstance(item, Mapping) and item.get("failed"):
            detail = failure_message(item)
            return f"{message}: {detail}" if message and detail else message or detail
    return message


def failure_entry(
    host: str,
    task: str,
    result: Mapping[str, Any],
    secrets: Iterable[str] = (),
    no_log: bool = False,
) -> dict[str, str]:
    """One item of the record's failures list: redacted first, then truncated."""
    message = failure_message(result, no_log)
    return {"host": host, "task": task, "msg": truncate(redact_text(message, secrets))}


def custom_delta(
    now: Mapping[str, Any], before: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """The set_stats data of one playbook when it accumulates over several: per scope (``_run``
    or a host), the keys new or changed since the previous playbook's record."""
    before = before or {}
    delta: dict[str, dict[str, Any]] = {}
    for scope, data in now.items():
        previous = before.get(scope) or {}
        changed = {
            key: value
            for key, value in (data or {}).items()
            if key not in previous or previous[key] != value
        }
        if changed:
            delta[scope] = changed
    return delta


def outputs_from_custom(custom: Mapping[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """set_stats data: run-wide keys at top level, per-host data under `_hosts`; redacted."""
    outputs: dict[str, Any] = dict(custom.get("_run") or {})
    per_host = {host: data for host, data in custom.items() if host != "_run" and data}
    if per_host:
        outputs["_hosts"] = per_host
    return redact(outputs, secrets)


KNOWN_AT_START = ("operator", "playbook", "env", "reason", "check_mode", "limit")


def start_record(run: RunInfo) -> dict[str, Any]:
    """The record's fields known when the run starts (what a start notification tells)."""
    return {
        "id": run.id,
        "started": iso_utc(run.started),
        "operator": run.operator,
        "playbook": run.playbook,
        "env": redact(run.env, run.secrets),
        "reason": redact(run.reason, run.secrets),
        "check_mode": run.check_mode,
        "limit": run.limit,
        "status": "started",
    }


def build_record(
    run: RunInfo,
    finished: datetime,
    duration_s: float,
    hosts: Mapping[str, Mapping[str, int]],
    failures: list[dict[str, str]],
    outputs: Mapping[str, Any],
    interrupted: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The operation log record, fields in contract order. ``interrupted``: (status, signal
    name) of a run stopped by a signal."""
    known = start_record(run)
    return {
        "id": known["id"],
        "started": known["started"],
        "finished": iso_utc(finished),
        "duration_s": round(max(duration_s, 0.0), 3),
        **{name: known[name] for name in KNOWN_AT_START},
        **redact(run.awx, run.secrets),
        **({"awx_claimed": redact(run.awx_claimed, run.secrets)} if run.awx_claimed else {}),
        "extra_var_keys": sorted(run.extra_var_keys),
        "status": interrupted[0] if interrupted else run_status(hosts),
        "interrupted": interrupted[1] if interrupted else None,
        "hosts": {host: dict(counts) for host, counts in sorted(hosts.items())},
        "failures": _capped(failures),
        "outputs": dict(outputs),
    }


def _capped(failures: list[dict[str, str]]) -> list[dict[str, str]]:
    if len(failures) <= MAX_FAILURES:
        return list(failures)
    dropped = len(failures) - MAX_FAILURES + 1
    note = {"host": "*", "task": "*", "msg": f"{dropped} more failures not recorded"}
    return [*failures[: MAX_FAILURES - 1], note]


def record_line(record: Mapping[str, Any]) -> bytes:
    """One JSON object, one line, ASCII-safe."""
    return (json.dumps(record, default=str, ensure_ascii=True) + "\n").encode("ascii")


def make_private_dirs(directory: Path) -> None:
    """mkdir -p where every directory created (not only the last) gets mode 0700."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir(mode=0o700)
        except FileExistsError:
            continue  # a concurrent run made it
        os.chmod(new, 0o700)  # exactly 0700, whatever the umask


def append_line(path: Path, line: bytes) -> None:
    """Append with O_APPEND in one write(): concurrent runs never interleave lines."""
    make_private_dirs(path.parent)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Environment of the run
# ---------------------------------------------------------------------------


def stop_reason() -> str | None:
    """Why opsbook run stopped this run (timeout or canceled), when it said so in the file
    E(OPSBOOK_STOP_REASON_FILE) names before sending SIGTERM."""
    path = os.environ.get("OPSBOOK_STOP_REASON_FILE")
    if not path:
        return None
    try:
        reason = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return reason if reason in ("timeout", "canceled") else None


def operator_name() -> str:
    """OPSBOOK_OPERATOR, else the login name."""
    name = os.environ.get("OPSBOOK_OPERATOR")
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def run_id() -> str:
    """OPSBOOK_RUN_ID, else a fresh UUID4."""
    return os.environ.get("OPSBOOK_RUN_ID") or str(uuid.uuid4())


def cli_args() -> Mapping[str, Any]:
    """ansible's parsed command line (empty when not started from a CLI)."""
    return context.CLIARGS or {}


#: the environment variable AWX sets in every job's process: the job's id
AWX_JOB_ID_ENV = "JOB_ID"
#: record field -> the AWX extra vars that give it, first found wins
AWX_FIELDS = {
    "awx_job_id": ("awx_job_id", "tower_job_id"),
    "awx_job_template_name": ("awx_job_template_name", "tower_job_template_name"),
    "awx_schedule_name": ("awx_schedule_name", "tower_schedule_name"),
}
AWX_USER = ("awx_user_name", "tower_user_name")


def _first_given(extra_vars: Mapping[str, Any], names: Iterable[str]) -> Any:
    for name in names:
        value = extra_vars.get(name)
        if value is not None and value != "" and isinstance(value, str | int):
            return value
    return None


def awx_meta(extra_vars: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the record's AWX fields, the launching user) from AWX's extra vars; ({}, None) when
    the run is not an AWX job (no awx_job_id / tower_job_id). awx_schedule_name only for a
    scheduled job; the job id as an integer when it is one."""
    job_id = _first_given(extra_vars, AWX_FIELDS["awx_job_id"])
    if job_id is None:
        return {}, None
    fields: dict[str, Any] = {}
    for name, sources in AWX_FIELDS.items():
        value = _first_given(extra_vars, sources)
        if isinstance(value, str) and value.strip().isdigit() and name == "awx_job_id":
            value = int(value)
        if value is not None or name != "awx_schedule_name":
            fields[name] = value
    user = _first_given(extra_vars, AWX_USER)
    if user is None and fields.get("awx_schedule_name"):
        user = f"schedule:{fields['awx_schedule_name']}"
    return fields, None if user is None else str(user)


def is_awx_own_var(name: str) -> bool:
    """True for the extra vars AWX itself gives a job: left out of extra_var_keys under AWX
    (the rule is in opsbook_secret_names.py, shared with `opsbook run`, which refuses them)."""
    return _NAMES is not None and bool(_NAMES.is_awx_own_var(name))


def awx_job(
    extra_vars: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """(the record's AWX fields, the launching user, what is only claimed). Extra vars are
    anyone's (-e awx_user_name=mallory): the AWX fields are trusted only in a process AWX
    started for that job - its environment's JOB_ID is the job id they give. Otherwise they
    are returned as claimed (with the claimed awx_user_name), the run is not an AWX job."""
    fields, user = awx_meta(extra_vars)
    if not fields:
        return {}, None, {}
    job_env = str(environ.get(AWX_JOB_ID_ENV) or "").strip()
    if job_env and job_env == str(fields["awx_job_id"]).strip():
        return fields, user, {}
    claimed = {name: value for name, value in fields.items() if value is not None}
    claimed_user = _first_given(extra_vars, AWX_USER)
    if claimed_user is not None:
        claimed["awx_user_name"] = claimed_user
    return {}, None, claimed


_STRICT_YES_RE = re.compile(r"(?i)StrictHostKeyChecking[= ]\s*(yes|true)\b")


def host_key_checking_off() -> bool:
    """True when SSH host keys go unchecked in this run: host_key_checking false (ansible-runner
    and AWX set ANSIBLE_HOST_KEY_CHECKING=False) and no StrictHostKeyChecking=yes in the ssh
    connection's ssh_args, which ssh reads before Ansible's StrictHostKeyChecking=no."""
    try:
        if C.config.get_config_value("HOST_KEY_CHECKING"):
            return False
        from ansible.plugins.loader import connection_loader

        connection_loader.get("ssh", class_only=True)  # its options are known once it is loaded
        ssh_args = C.config.get_config_value(
            "ssh_args", plugin_type="connection", plugin_name="ssh"
        )
    except Exception:
        return False
    return not _STRICT_YES_RE.search(str(ssh_args or ""))


# ---------------------------------------------------------------------------
# Notifications (the payload and the POST are module_utils/opsbook_notify.py's)
# ---------------------------------------------------------------------------

NOTIFY_EVENTS = ("start", "success", "failure")
NOTIFY_TIMEOUT_S = 5.0
NOTIFY_RETRIES = 1
NOTIFY_RETRY_DELAY_S = 0.5
#: a run stopped by a signal sends its notification once, waiting at most this long: opsbook
#: run SIGKILLs what is left 10 s after its SIGTERM
NOTIFY_STOPPED_TIMEOUT_S = 2.0
MISSING_NOTIFY = (
    f"{NOTIFY_FILE} is neither in the module_utils directory beside this plugin's directory"
    " nor in a configured module_utils path"
)


STDOUT_MARK = "OPSBOOK_OPLOG"


@dataclass
class LogSettings:
    """Where a run's record goes, from the first play's variables (the options win)."""

    path: str = ""
    stdout: bool | None = None


def awx_job_label(awx: Mapping[str, Any]) -> str:
    """AWX job 42 (opsbook-production-backup): the notifications' field."""
    label = str(awx.get("awx_job_id"))
    name = awx.get("awx_job_template_name")
    return f"{label} ({name})" if name else label


@dataclass
class NotifySettings:
    """Where and when a run's notifications go (the first play's variables, OPSBOOK_NOTIFY_*)."""

    webhook_url: str = ""
    file: str = ""
    start: bool = False
    events: tuple[str, ...] = NOTIFY_EVENTS
    fields: dict[str, Any] = field(default_factory=dict)
    unknown_events: list[str] = field(default_factory=list)

    def wants(self, event: str) -> bool:
        """True when event is to be sent somewhere."""
        if not (self.webhook_url or self.file) or event not in self.events:
            return False
        return event != "start" or self.start


def as_bool(value: Any) -> bool | None:
    """A boolean setting (true/false, yes/no, 1/0 as text too); None when unset or unreadable."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    return None


def as_events(value: Any) -> tuple[tuple[str, ...], list[str]]:
    """(events to send, unknown names) of opsbook_notify_on: a list, or names separated by
    commas; unset means every event."""
    if value is None or value == "":
        return NOTIFY_EVENTS, []
    names = value.split(",") if isinstance(value, str) else list(value)
    wanted = [str(name).strip() for name in names if str(name).strip()]
    known = tuple(name for name in NOTIFY_EVENTS if name in wanted)
    return known, [name for name in wanted if name not in NOTIFY_EVENTS]


def notification_entry(message: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """One line of the notification file: the message without its Slack dressing."""
    fields = message.get("fields") or {}
    return {
        "time": iso_utc(now),
        "event": message["event"],
        "run_id": message.get("run_id", ""),
        "runbook": fields.get("runbook"),
        "env": fields.get("environment"),
        "title": message["title"],
        "fields": dict(fields),
        "lines": list(message.get("lines") or []),
    }


def notify_fields(value: Any, secrets: Iterable[str]) -> dict[str, Any]:
    """opsbook_notify_fields, redacted: name -> a scalar or a list of scalars."""
    if not isinstance(value, Mapping):
        return {}
    kept = {
        str(name): item
        for name, item in value.items()
        if isinstance(item, str | int | float | bool | list)
    }
    return dict(redact(kept, secrets))


# ---------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Turn any exception of a callback method into a warning: the log never breaks a run."""

    @functools.wraps(method)
    def wrapper(self: CallbackModule, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:
            self._warn(method.__name__, exc)

    return wrapper


class CallbackModule(CallbackBase):
    """Append one JSON line per playbook run to the opsbook operation log."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "opsbook_oplog"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._run: RunInfo | None = None
        self._playbook_path: str | None = None
        self._clock = 0.0
        self._plays_seen: set[object] = set()
        self._failures: list[dict[str, str]] = []
        self._baseline: dict[str, dict[str, int]] = {}
        self._custom_baseline: dict[str, Any] = {}
        self._written = False
        self._notify = NotifySettings()
        self._notify_settled = False
        self._log = LogSettings()
        self._host_keys_checked = False

    def _warn(self, event: str, exc: Exception) -> None:
        effect = "not written" if event == "v2_playbook_on_stats" else "incomplete"
        secrets = self._run.secrets if self._run else ()
        if _NAMES is None:  # nothing can be judged: say only what is missing
            detail = MISSING_RULES
        else:
            detail = redact_text(f"{event}: {type(exc).__name__}: {exc}", secrets)
        self._display.warning(f"opsbook_oplog: operation log {effect}: {detail}")

    # -- events -------------------------------------------------------------

    @_guarded
    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._playbook_path = str(getattr(playbook, "_file_name", "") or "playbook")
        args = cli_args()
        self._run = RunInfo(
            id=run_id(),
            started=datetime.now(UTC),
            playbook=Path(self._playbook_path).stem,
            operator=operator_name(),
            check_mode=bool(args.get("check", False)),
            limit=_plain_limit(args.get("subset")),
        )
        self._clock = time.monotonic()
        self._plays_seen = set()
        self._failures = []
        self._written = False
        self._notify = NotifySettings()
        self._notify_settled = False
        self._log = LogSettings()
        self._host_keys_checked = False
        self._watch_stop_signals()

    @_guarded
    def v2_playbook_on_play_start(self, play: Any) -> None:
        play_id = getattr(play, "_uuid", None) or id(play)
        if self._run is None or play_id in self._plays_seen:
            return  # serial plays start once per batch: read their variables once
        self._plays_seen.add(play_id)
        manager = getattr(play, "_variable_manager", None)
        if manager is None:
            return
        extra_vars = dict(manager.extra_vars or {})
        host = _first_host(play, manager)
        variables = manager.get_vars(play=play, host=host, include_hostvars=False)
        run = self._run
        if not run.awx and not run.awx_claimed:
            run.awx, awx_user, run.awx_claimed = awx_job(extra_vars, os.environ)
            run.operator = awx_user or run.operator  # the user who launched the AWX job
        run.extra_var_keys = [
            str(key)
            for key in extra_vars
            if not (run.awx and is_awx_own_var(str(key)))  # AWX's own, every job
        ]
        run.secrets |= secret_values(extra_vars) | secret_values(variables)
        run.env = run.env or _text_var(variables, "opsbook_env", manager)
        run.reason = run.reason or _text_var(variables, "opsbook_reason", manager)
        if not self._notify_settled and not _loads_secrets(play):
            # the first play with a host sees the inventory's variables: settled there (not in
            # playbooks/_vault.yml's, whose secrets - a webhook URL - the next plays see)
            self._log = self._log_settings(variables, manager)
            self._notify = self._notify_settings(variables, manager)
            self._notify_settled = host is not None
            if self._notify_settled:
                self._notify_start()
        if not self._host_keys_checked and host is not None:
            self._host_keys_checked = True
            self._warn_unchecked_host_keys(play, manager)

    @_guarded
    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            self._add_failure(result)

    @_guarded
    def v2_runner_on_unreachable(self, result: Any) -> None:
        if not getattr(result.task, "ignore_unreachable", False):
            self._add_failure(result)

    @_guarded
    def v2_playbook_on_stats(self, stats: Any) -> None:
        if self._run is None or self._written:
            return
        custom = getattr(stats, "custom", {}) or {}
        outputs = custom_delta(custom, self._custom_baseline)
        self._custom_baseline = copy.deepcopy(dict(custom))
        self._write(self._host_counts(stats), outputs)

    # -- a run stopped by a signal ---------------------------------------------

    def _watch_stop_signals(self) -> None:
        """Write the record first when SIGTERM or SIGINT stops the run, then let Ansible's own
        handler (forwarding the signal to the workers) do what it does."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if getattr(previous, "_opsbook_oplog", False):
                continue  # already watched (several playbooks in one run)

            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                with contextlib.suppress(Exception):
                    self._interrupted(sig)
                if callable(previous):
                    previous(sig, frame)
                elif previous == signal.SIG_DFL:
                    signal.signal(sig, signal.SIG_DFL)
                    os.kill(os.getpid(), sig)

            handler._opsbook_oplog = True  # type: ignore[attr-defined]
            signal.signal(signum, handler)

    def _interrupted(self, signum: int) -> None:
        if self._run is None or self._written:
            return
        reason = stop_reason() or "canceled"
        # per-host counts are only summed up at the end: a stopped run records its failures
        self._write({}, {}, (reason, signal.Signals(signum).name))

    def _write(
        self,
        hosts: Mapping[str, Mapping[str, int]],
        custom: Mapping[str, Any],
        interrupted: tuple[str, str] | None = None,
    ) -> None:
        if self._run is None:
            raise AssertionError("the run was not started")
        if _NAMES is None:
            self._written = True  # said once
            raise RuntimeError(MISSING_RULES)
        record = build_record(
            self._run,
            datetime.now(UTC),
            time.monotonic() - self._clock,
            hosts,
            self._failures,
            outputs_from_custom(custom, self._run.secrets),
            interrupted,
        )
        self._written = True
        line = record_line(record)
        failed: Exception | None = None
        try:
            path = self._log_path()
            if path is None:
                self._warn_no_log_file()
            else:
                self._warn_log_in_project_copy(path)
                append_line(path, line)
        except Exception as exc:
            failed = exc  # said once the record is printed and announced
        if self._stdout_wanted():
            self._display.display(f"{STDOUT_MARK} {line.decode('ascii').rstrip()}")
        self._notify_end(record, stopped=interrupted is not None)
        if failed is not None:
            raise failed

    # -- where the record goes ------------------------------------------------

    def _log_settings(self, variables: Mapping[str, Any], manager: Any) -> LogSettings:
        """The variables opsbook_oplog_path and opsbook_oplog_stdout of the run's first play
        that has a host (the options, E(OPSBOOK_OPLOG) / E(OPSBOOK_OPLOG_STDOUT), win)."""
        path = _var(variables, "opsbook_oplog_path", manager)
        return LogSettings(
            path=str(path).strip() if isinstance(path, str) else "",
            stdout=as_bool(_var(variables, "opsbook_oplog_stdout", manager)),
        )

    def _log_path(self) -> Path | None:
        """The file the record is appended to: the option (E(OPSBOOK_OPLOG), ansible.cfg), else
        opsbook_oplog_path (relative to the project), else <project>/.opsbook/oplog.jsonl -
        except under AWX, where the project is a copy thrown away after the job: None."""
        configured = self._option("path")
        if configured:
            return Path(configured)
        playbook = self._playbook_path or "playbook.yml"
        if self._log.path:
            path = Path(os.path.expanduser(self._log.path))
            return path if path.is_absolute() else project_dir(playbook) / path
        if self._run is not None and self._run.awx:
            return None
        return default_log_path(playbook)

    def _stdout_wanted(self) -> bool:
        """Print the record as one line (OPSBOOK_OPLOG {json}) in the run's output: the option,
        else opsbook_oplog_stdout, else on under AWX (its job output is kept), off otherwise."""
        wanted = as_bool(self._option("stdout"))
        if wanted is None:
            wanted = self._log.stdout
        if wanted is None:
            wanted = self._run is not None and bool(self._run.awx)
        return wanted

    def _warn_no_log_file(self) -> None:
        if self._run is None:
            raise AssertionError("the run was not started")
        where = [
            name
            for name, wanted in (
                (f"the job output (the {STDOUT_MARK} line)", self._stdout_wanted()),
                ("the webhook", bool(self._notify.webhook_url)),
            )
            if wanted
        ]
        self._display.warning(
            f"opsbook_oplog: AWX job {self._run.awx.get('awx_job_id')}: no operation log file is"
            " configured (OPSBOOK_OPLOG, [callback_opsbook_oplog] path in ansible.cfg or the"
            " variable opsbook_oplog_path, outside the job's copy of the project, which AWX"
            " throws away): the record goes to "
            + (" and ".join(where) if where else "nowhere (opsbook_oplog_stdout is false)")
            + " only"
        )

    def _warn_log_in_project_copy(self, path: Path) -> None:
        """Under AWX, a log file inside the project (a relative opsbook_oplog_path) is in the
        job's copy of it, which AWX throws away after the job: say so."""
        if self._run is None or not self._run.awx:
            return
        project = project_dir(self._playbook_path or "playbook.yml")
        try:
            Path(os.path.realpath(path)).relative_to(os.path.realpath(project))
        except ValueError:
            return  # outside the project: it can outlive the job
        self._display.warning(
            f"opsbook_oplog: AWX job {self._run.awx.get('awx_job_id')}: the operation log file"
            f" {path} is inside the job's copy of the project ({project}), which AWX throws"
            " away after the job: the record written there will not survive it. Set"
            " opsbook_oplog_path (or OPSBOOK_OPLOG) to an absolute path outside the project"
            " (a volume mounted into the execution environment) - docs/awx.md"
        )

    def _warn_unchecked_host_keys(self, play: Any, manager: Any) -> None:
        """One warning, in the run's output, when SSH hosts are reached with host key checking
        off (what ansible-runner and AWX do unless ANSIBLE_HOST_KEY_CHECKING is set)."""
        if not host_key_checking_off():
            return
        host = _first_ssh_host(play, manager)
        if host is None:
            return
        self._display.warning(
            f"opsbook_oplog: SSH host key checking is off in this run (host {host}):"
            " ANSIBLE_HOST_KEY_CHECKING=False, which ansible-runner and AWX set when it is not"
            " set, and no -o StrictHostKeyChecking=yes in ansible.cfg's ssh_args - the hosts'"
            " identities are not verified. Set ANSIBLE_HOST_KEY_CHECKING=True (AWX: Settings >"
            " Jobs > Extra Environment Variables; ansible-runner: env/envvars) - docs/awx.md"
        )

    # -- notifications --------------------------------------------------------

    def _option(self, name: str) -> Any:
        return self.get_option(name) if self.has_option(name) else None

    def _notify_settings(self, variables: Mapping[str, Any], manager: Any) -> NotifySettings:
        """The options (E(OPSBOOK_NOTIFY_*)) win over the play's opsbook_notify_* variables."""
        if self._run is None:
            raise AssertionError("the run was not started")

        def setting(name: str) -> Any:
            value = self._option(f"notify_{name}")
            if value is None or value == "" or value == []:
                value = _var(variables, f"opsbook_notify_{name}", manager)
            return value

        url = setting("webhook_url")
        url = str(url).strip() if url else ""  # a vaulted value is decrypted here, in memory
        if len(url) >= MIN_SECRET_LEN:
            self._run.secrets.add(url)
        events, unknown = as_events(setting("on"))
        fields = notify_fields(setting("fields"), self._run.secrets)
        if self._run.awx:  # which AWX job, first
            fields = {"awx job": awx_job_label(self._run.awx), **fields}
        return NotifySettings(
            webhook_url=url,
            file=str(setting("file") or ""),
            start=bool(as_bool(setting("start"))),
            events=events,
            fields=fields,
            unknown_events=unknown,
        )

    def _notify_start(self) -> None:
        if self._run is None:
            raise AssertionError("the run was not started")
        if self._notify.unknown_events:
            names = ", ".join(self._notify.unknown_events)
            self._display.warning(
                f"opsbook_oplog: opsbook_notify_on: unknown event(s) {names} ignored"
                f" (known: {', '.join(NOTIFY_EVENTS)})"
            )
        if self._notify.wants("start"):
            self._notify_guarded(start_record(self._run), "start", stopped=False)

    def _notify_end(self, record: Mapping[str, Any], stopped: bool) -> None:
        event = "success" if record.get("status") == "successful" else "failure"
        if self._notify.wants(event):
            self._notify_guarded(record, event, stopped)

    def _notify_guarded(self, record: Mapping[str, Any], event: str, stopped: bool) -> None:
        """Send one notification; whatever goes wrong is one warning, never a failure."""
        try:
            if _NOTIFY is None:
                raise RuntimeError(MISSING_NOTIFY)
            message = _NOTIFY.record_message(record, event, self._notify.fields)
            if self._notify.file:
                self._notify_file(message)
            if self._notify.webhook_url:
                self._notify_webhook(message, stopped)
        except Exception as exc:
            secrets = self._run.secrets if self._run else ()
            detail = redact_text(f"{type(exc).__name__}: {exc}", secrets)
            self._display.warning(f"opsbook_oplog: notification ({event}) not sent: {detail}")

    def _notify_file(self, message: Mapping[str, Any]) -> None:
        path = Path(os.path.expanduser(self._notify.file))
        if not path.is_absolute():
            path = project_dir(self._playbook_path or "playbook.yml") / path
        try:
            append_line(path, record_line(notification_entry(message, datetime.now(UTC))))
        except OSError as exc:
            self._display.warning(
                f"opsbook_oplog: notification ({message['event']}) not written to {path}:"
                f" {exc.strerror or exc}"
            )

    def _notify_webhook(self, message: Mapping[str, Any], stopped: bool) -> None:
        if _NOTIFY is None or self._run is None:
            raise AssertionError("the run was not started")
        event, url = message["event"], self._notify.webhook_url
        if _NOTIFY.check_url(url):
            self._display.warning(
                f"opsbook_oplog: notification ({event}) not sent: opsbook_notify_webhook_url"
                " is not an http:// or https:// URL (value not shown: secret)"
            )
            return
        params = {
            "url": url,
            "timeout_s": NOTIFY_STOPPED_TIMEOUT_S if stopped else NOTIFY_TIMEOUT_S,
            "retries": 0 if stopped else NOTIFY_RETRIES,
            "retry_delay_s": NOTIFY_RETRY_DELAY_S,
        }
        payload = _NOTIFY.build_payload({**message, "username": "opsbook"})
        outcome = _NOTIFY.send(params, payload)
        line = redact_text(_NOTIFY.outcome_message(event, outcome), self._run.secrets)
        if outcome["delivered"]:
            self._display.vv(f"opsbook_oplog: {line}")
        else:
            self._display.warning(f"opsbook_oplog: {line} (the run's outcome is unchanged)")

    # -- helpers ------------------------------------------------------------

    def _add_failure(self, result: Any) -> None:
        secrets = self._run.secrets if self._run else set()
        no_log = getattr(result.task, "no_log", None) is True
        host = result.host.get_name()
        entry = failure_entry(host, result.task_name, result.result, secrets, no_log)
        self._failures.append(entry)

    def _host_counts(self, stats: Any) -> dict[str, dict[str, int]]:
        hosts: dict[str, dict[str, int]] = {}
        for host in stats.processed:
            totals = host_counts(stats.summarize(host))
            hosts[host] = counts_delta(totals, self._baseline.get(host))
            self._baseline[host] = totals
        return {host: counts for host, counts in hosts.items() if any(counts.values())}


def _plain_limit(subset: Any) -> str | None:
    if not subset:
        return None
    if isinstance(subset, list | tuple):
        return ",".join(str(item) for item in subset)
    return str(subset)


def _loads_secrets(play: Any) -> bool:
    """True for the play of playbooks/_vault.yml (play var opsbook_loads_secrets)."""
    play_vars = getattr(play, "vars", None)
    return (
        isinstance(play_vars, Mapping) and as_bool(play_vars.get("opsbook_loads_secrets")) is True
    )


def _first_ssh_host(play: Any, manager: Any, limit: int = 20) -> str | None:
    """The name of one of the play's first hosts reached over SSH (not ansible_connection
    local), or None."""
    inventory = getattr(manager, "_inventory", None)
    if inventory is None:
        return None
    for host in inventory.get_hosts(play.hosts)[:limit]:
        if getattr(host, "implicit", False):
            continue  # the implicit localhost: local
        variables = manager.get_vars(play=play, host=host, include_hostvars=False)
        connection = str(variables.get("ansible_connection") or "ssh").rsplit(".", 1)[-1]
        if connection in ("ssh", "paramiko", "paramiko_ssh", "smart"):
            return str(host.get_name())
    return None


def _first_host(play: Any, manager: Any) -> Any:
    """The play's first host, whose variables (inventory, group_vars, play vars, extra vars)
    are read; None when the play has no host."""
    inventory = getattr(manager, "_inventory", None)
    if inventory is None:
        return None
    hosts = inventory.get_hosts(play.hosts)
    return hosts[0] if hosts else None


def _text_var(variables: Mapping[str, Any], name: str, manager: Any) -> str | None:
    """A variable as text, templated when it is a template; None when unset or empty."""
    value = variables.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and "{{" in value:
        value = _template(value, variables, manager)
    return str(value) if isinstance(value, str | int | float | bool) else None


def _var(variables: Mapping[str, Any], name: str, manager: Any) -> Any | None:
    """A variable, templated (containers too); a vaulted value decrypted, in memory only.
    None when unset, or when its template cannot be resolved."""
    value = variables.get(name)
    if value is None:
        return None
    if type(value).__name__ == "EncryptedString":
        with contextlib.suppress(Exception):
            return str(value)
        return None
    if "{{" in repr(value) or "{%" in repr(value):
        return _template(value, variables, manager)
    return value


def _template(value: Any, variables: Mapping[str, Any], manager: Any) -> Any | None:
    from ansible.template import Templar

    try:
        templar = Templar(loader=getattr(manager, "_loader", None), variables=variables)
        return templar.template(value)
    except Exception:
        return None  # an unresolvable template is not recorded as if it were the value
