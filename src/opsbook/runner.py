"""Run a runbook over ansible-runner: the one wrapper behind ``opsbook run`` and
``opsbook.run()``.

Every run gets a fresh private data directory ``<runs dir>/<ident>`` (runs dir:
``$OPSBOOK_RUNS_DIR`` or ``<project>/.opsbook/runs``; the last ``keep_runs`` are
kept). ansible-playbook runs from the project root, so ``ansible.cfg`` applies,
against ``playbooks/<runbook>.yml`` and ``<inventory root>/<env>/``.

How secrets are kept off disk (see also :mod:`opsbook.secrets`):

- runner's env files are never written (``suppress_env_files``); extra vars go
  to ``env/extravars``, created 0600, read by ansible-playbook through
  ``-e @file`` (never on the command line, so never in ``ps`` or in the
  ``command`` artifact) and deleted as soon as the playbook starts;
- the process environment is the caller's reduced to an allow-list;
  runner's ``command`` artifact (which records it) is redacted before
  ansible-playbook even starts;
- every runner event is redacted in place before runner writes it to
  ``job_events/``; the ``stdout`` artifact is rebuilt from the redacted events;
- afterwards ``env/`` is removed and every file under the private data
  directory is redacted, then scanned again: a file still holding a secret is
  deleted;
- what is redacted: values under secret names (the rules shared with the
  operation log), DSN passwords, the vault password, and every value of the
  vault data the run reads (the inventory's, ``-e @file``'s), decrypted in
  memory with the vault password file, never written anywhere.

Where opsbook corrects ansible-runner's defaults: this interpreter's bin dir
leads PATH (ansible-playbook of the same install); a project's own
``callback_plugins`` directory is given back (runner's ANSIBLE_CALLBACK_PLUGINS
hides it; opsbook's operation log is the collection's callback, enabled by its
FQCN, which runner does not hide); runner's forced
``ANSIBLE_HOST_KEY_CHECKING=False`` is dropped (ansible.cfg decides); facts are
not cached to disk; on timeout or cancel every process carrying
``OPSBOOK_RUN_ID=<ident>`` is killed (ansible-core's workers run in sessions of
their own, out of reach of runner's process-group kill).
"""

from __future__ import annotations

import configparser
import contextlib
import getpass
import json
import logging
import math
import os
import re
import secrets as _random
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from opsbook import _vault_file
from opsbook import project as _project
from opsbook._secret_names import is_awx_own_var
from opsbook.exitcodes import OpsbookInputError, exit_code_for, worst_verdict
from opsbook.secrets import (
    Decrypt,
    Scrubber,
    secrets_in_env,
    secrets_in_inventory,
    secrets_in_vars,
    secrets_in_vars_file,
)

if TYPE_CHECKING:
    from opsbook.handle import RunHandle

log = logging.getLogger("opsbook")

EventHandler = Callable[[dict[str, Any]], Any]
CancelCallback = Callable[[], bool]
#: receives {"status": "starting" | "running", "runner_ident": ident} as runner reports them
StatusHandler = Callable[[Mapping[str, Any]], Any]

DEFAULT_KEEP_RUNS = 20
# How often runner's loop wakes up without output: bounds the reaction time to
# a timeout or a cancel (runner's default is 5 s).
POLL_INTERVAL_S = 0.5
# A timeout or a cancel sends ansible-playbook SIGTERM (it forwards it to its workers and
# their modules, which abort uploads, drop scratch databases and stop their children), waits
# this long for every process of the run to end, then SIGKILLs what is left.
STOP_GRACE_S = 10.0

# --- environment allow-list ----------------------------------------------------------
ENV_ALLOW_NAMES = frozenset(
    {
        # the basics of a login session
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
        "NO_COLOR",
        # ssh agent and Kerberos
        "SSH_AUTH_SOCK", "SSH_AGENT_PID", "KRB5CCNAME", "KRB5_CONFIG",
        # proxies and CA bundles for S3 and platform APIs
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
        "http_proxy", "https_proxy", "no_proxy", "all_proxy",
        "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE",
    }
)  # fmt: skip
# LC_* locale, AWS_* credential chain (keys, session token, profile, region,
# endpoint, web identity, container credentials), ANSIBLE_* configuration
# (ANSIBLE_VAULT_PASSWORD_FILE, ANSIBLE_CONFIG...), OPSBOOK_*, and libpq's PG*
# (PGPASSFILE, PGSERVICEFILE, PGSSLROOTCERT...).
ENV_ALLOW_PREFIXES = ("LC_", "AWS_", "ANSIBLE_", "OPSBOOK_", "PG")
# Comma-separated extra names (or prefixes ending in '*') to pass through,
# e.g. OPSBOOK_ENV_PASSTHROUGH="VERCEL_TOKEN,STRIPE_*".
ENV_PASSTHROUGH_VAR = "OPSBOOK_ENV_PASSTHROUGH"

VAULT_FILE_VARS = ("OPSBOOK_VAULT_PASSWORD_FILE", "ANSIBLE_VAULT_PASSWORD_FILE")

_IDENT_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENT_ID_KEYS = ("event", "uuid", "counter", "parent_uuid", "runner_ident", "created")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# runner stats key -> RunResult.stats key
_STAT_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


# --- result --------------------------------------------------------------------------
@dataclass
class RunResult:
    """The outcome of one runbook run.

    ``status`` is one of successful, failed, unreachable, timeout, canceled;
    ``rc`` is the matching ``opsbook`` exit code (0, 1, 3, 4, 4; 5 for a successful run
    that published ``verdict: warn``). ``stats`` holds
    per-host counters ``{host: {ok, changed, failed, unreachable, skipped, rescued,
    ignored}}``; ``outputs`` what the playbook published with
    ``ansible.builtin.set_stats``; ``failures`` one ``{host, task, msg}`` per failed
    or unreachable host result; ``errors`` Ansible's own error lines (a playbook
    that does not parse, a --limit matching no host...).
    """

    runbook: str
    env: str
    ident: str
    status: str
    rc: int
    stats: dict[str, dict[str, int]]
    duration_s: float
    outputs: dict[str, Any]
    artifacts_dir: Path
    failures: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    check: bool = False
    limit: str | None = None
    private_data_dir: Path | None = None
    ansible_rc: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the run succeeded."""
        return self.status == "successful"

    @property
    def verdict(self) -> str | None:
        """The worst ``verdict`` the runbook published (ok, warn, fail), or None."""
        return worst_verdict(self.outputs)


@dataclass(frozen=True)
class RunPlan:
    """A validated run, ready to execute (built by :meth:`RunbookRunner.plan`)."""

    runbook: _project.Runbook
    env: str
    inventory: Path
    extravars: dict[str, Any]
    check: bool
    limit: str | None
    timeout: int | None
    vault_password_file: Path | None
    #: every value to keep out of artifacts (never in the plan's repr)
    secrets: frozenset[str] = field(repr=False)
    envvars: dict[str, str]
    verbosity: int
    #: -e names the runbook does not declare, with the closest declared name (warned, not
    #: refused); vault data opsbook could not decrypt (its secrets unknown to the scrubber)
    warnings: tuple[str, ...] = ()
    #: vars files (-e @file) passed to ansible-playbook as they are: they hold vault data
    extravars_files: tuple[Path, ...] = ()


# --- pure helpers --------------------------------------------------------------------
def new_ident(now: datetime | None = None) -> str:
    """A run id: UTC timestamp plus a short random suffix, sortable by time."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{_random.token_hex(3)}"


def env_allowed(name: str, extra: Iterable[str] = ()) -> bool:
    """True when the caller's environment variable ``name`` may reach Ansible."""
    if name in ENV_ALLOW_NAMES or name.startswith(ENV_ALLOW_PREFIXES):
        return True
    for pattern in extra:
        pattern = pattern.strip()
        if pattern and (
            name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1]))
        ):
            return True
    return False


def passthrough_patterns(environ: Mapping[str, str]) -> list[str]:
    """Extra allow-list entries from ``$OPSBOOK_ENV_PASSTHROUGH``."""
    return [p for p in environ.get(ENV_PASSTHROUGH_VAR, "").split(",") if p.strip()]


def restrict_environment(
    env: Mapping[str, str],
    inherited: Mapping[str, str],
    extra: Iterable[str] = (),
    drop: Iterable[str] = (),
) -> dict[str, str]:
    """The environment for ansible-playbook: of what came from the caller
    (``inherited``), only allow-listed names; what runner or opsbook set is kept,
    except runner's forced ``ANSIBLE_HOST_KEY_CHECKING=False`` (ansible.cfg
    decides); names in ``drop`` never pass."""
    extra = list(extra)
    dropped = set(drop)
    kept: dict[str, str] = {}
    for name, value in env.items():
        from_caller = name in inherited and inherited[name] == value
        if name in dropped or (name == "ANSIBLE_HOST_KEY_CHECKING" and name not in inherited):
            continue
        if not from_caller or env_allowed(name, extra):
            kept[name] = value
    return kept


def validate_extravars(extravars: Mapping[str, Any] | None) -> dict[str, Any]:
    """Extra vars as a plain dict; OpsbookInputError unless every key is a variable name and
    none is one of AWX's own (is_awx_own_var: the operation log trusts them under AWX)."""
    if extravars is None:
        return {}
    if not isinstance(extravars, Mapping):
        raise OpsbookInputError(
            "-e", f"extra vars must be a mapping, got {type(extravars).__name__}"
        )
    for key in extravars:
        if not isinstance(key, str) or not key:
            raise OpsbookInputError("-e", "empty variable name")
        if not _VAR_NAME_RE.match(key):
            raise OpsbookInputError("-e", f"{key!r} is not a valid variable name")
        if is_awx_own_var(key):
            raise OpsbookInputError(
                "-e", f"{key!r} is reserved for AWX (it sets it for its jobs): not accepted"
            )
    return dict(extravars)


def validate_extravars_files(files: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    """Vars files for ``-e @file``, as absolute paths; OpsbookInputError unless each is a file."""
    if isinstance(files, str | os.PathLike):
        raise OpsbookInputError("-e", "extra vars files must be a list of paths, not one path")
    paths = []
    for item in files:
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            raise OpsbookInputError("-e", f"vars file {path} does not exist")
        paths.append(path)
    return tuple(paths)


def validate_timeout(timeout: float | None) -> int | None:
    """Whole seconds (rounded up), or None for no timeout."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise OpsbookInputError(
            "--timeout", f"must be a positive number of seconds, got {timeout!r}"
        )
    if math.isinf(timeout):
        return None
    return math.ceil(timeout)


def validate_limit(limit: str | None) -> str | None:
    """A host pattern, or None."""
    if limit is None:
        return None
    if not isinstance(limit, str) or not limit.strip() or "\n" in limit:
        raise OpsbookInputError("--limit", f"must be a host pattern, got {limit!r}")
    return limit.strip()


def resolve_vault_password_file(
    given: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> Path | None:
    """The vault password file: ``given``, else $OPSBOOK_VAULT_PASSWORD_FILE, else
    $ANSIBLE_VAULT_PASSWORD_FILE; OpsbookInputError when it does not exist."""
    name = "vault_password_file"
    value: str | os.PathLike[str] | None = given
    if value is None:
        for var in VAULT_FILE_VARS:
            if environ.get(var):
                name, value = var, environ[var]
                break
    if value is None:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise OpsbookInputError(name, f"vault password file {path} does not exist")
    return path


def vault_password(path: Path | None) -> set[str]:
    """The vault password itself (a plain file, not a script), to be redacted."""
    if path is None or os.access(path, os.X_OK):
        return set()
    try:
        if path.stat().st_size > 4096:
            return set()
        value = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return set()
    return {value} if value else set()


def configured_vault_password_file(project: Path, environ: Mapping[str, str]) -> Path | None:
    """``vault_password_file`` of the project's ansible.cfg ([defaults]), when it exists:
    ansible-playbook reads it by itself, opsbook reads it to know the vault's secrets."""
    cfg_path = Path(environ.get("ANSIBLE_CONFIG") or project / "ansible.cfg")
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, inline_comment_prefixes=(";",)
    )
    try:
        parser.read(cfg_path, encoding="utf-8")
        value = parser.get("defaults", "vault_password_file", fallback="").strip()
    except (configparser.Error, OSError):
        return None
    if not value:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else cfg_path.parent / path
    return path.resolve() if path.is_file() else None


def vault_decryptor(path: Path | None) -> tuple[Decrypt | None, set[str]]:
    """A function decrypting vault text with the vault password file ``path`` (a plain file
    or a password script, read the way ansible-playbook reads it), and the vault password
    itself (a secret too). Decryption happens in memory only; nothing is written.
    ``(None, set())`` without a file or when it cannot be read."""
    if path is None:
        return None, set()
    try:
        from ansible.parsing.dataloader import DataLoader  # here: `import opsbook` stays cheap
        from ansible.parsing.vault import VaultLib, get_file_vault_secret

        secret = get_file_vault_secret(filename=str(path), vault_id="default", loader=DataLoader())
        secret.load()
    except Exception:  # a missing file is refused earlier; a failing script: no decryption
        log.debug("opsbook: the vault password file %s could not be read", path)
        return None, set()
    vault = VaultLib([("default", secret)])
    password = (secret.bytes or b"").decode("utf-8", errors="replace").strip()

    def decrypt(vaulttext: bytes) -> bytes:
        return bytes(vault.decrypt(vaulttext))

    return decrypt, {password} if password else set()


def job_time_vault_files(
    project: Path, env: str, inventory: Path | None = None, problems: list[str] | None = None
) -> list[Path]:
    """The vault file the inventory names with ``opsbook_vault_file`` (read at job time by
    playbooks/_vault.yml), whose values the scrubber must know: the path the inventory gives
    (opsbook._vault_file), else ``vault/<env>.yml`` of the project; when it exists."""
    named, path = _vault_file.named_vault_file(project, inventory) if inventory else (False, None)
    if named and path is None and problems is not None:
        problems.append(
            f"{inventory}: opsbook_vault_file is a template opsbook cannot resolve: the vault"
            " file's secrets are unknown to opsbook's scrubber"
        )
    path = path or project / "vault" / f"{env}.yml"
    return [path] if path.is_file() else []


def configured_callback_dirs(project: Path, environ: Mapping[str, str]) -> list[str]:
    """``callback_plugins`` of the project's ansible.cfg, as absolute paths.

    runner points ANSIBLE_CALLBACK_PLUGINS at its own callback, which would hide
    the project's (the operation log): this gives them back.
    """
    cfg_path = Path(environ.get("ANSIBLE_CONFIG") or project / "ansible.cfg")
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, inline_comment_prefixes=(";",)
    )
    try:
        parser.read(cfg_path, encoding="utf-8")
        value = parser.get("defaults", "callback_plugins", fallback="")
    except (configparser.Error, OSError):
        return []
    dirs = []
    for entry in value.split(os.pathsep):
        entry = entry.strip()
        if entry:
            path = Path(entry).expanduser()
            dirs.append(str(path if path.is_absolute() else cfg_path.parent / path))
    return dirs


def classify(runner_status: str, stats: Mapping[str, Mapping[str, int]]) -> str:
    """RunResult.status from runner's status and the per-host stats."""
    if runner_status in ("canceled", "timeout"):
        return runner_status
    failed = any(s.get("failed", 0) for s in stats.values())
    unreachable = any(s.get("unreachable", 0) for s in stats.values())
    if runner_status == "successful" and not failed:
        return "successful"
    if unreachable and not failed:
        return "unreachable"
    return "failed"


def result_message(res: Any) -> str:
    """The human message of a failed or unreachable task result."""
    if not isinstance(res, Mapping):
        return str(res or "")
    if "censored" in res:
        return str(res["censored"])
    message = ""
    for key in ("msg", "message", "reason", "stderr", "module_stderr", "stdout"):
        if res.get(key):
            message = str(res[key]).strip()
            break
    items = res.get("results")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping) and item.get("failed"):
                detail = result_message(item)
                if detail and detail != message:
                    message = f"{message}: {detail}" if message else detail
                break
    return message


def strip_ansi(text: str) -> str:
    """``text`` without terminal color codes (Ansible colors its output on a pty)."""
    return _ANSI_RE.sub("", text)


class EventCollector:
    """Folds runner events into what RunResult reports (cheap, per event)."""

    def __init__(self) -> None:
        self.stats_data: Mapping[str, Any] | None = None
        self.failures: list[dict[str, str]] = []
        self.errors: list[str] = []
        # counted from host results, for runs stopped before Ansible's recap
        self.counted: dict[str, dict[str, int]] = {}

    def add(self, event: Mapping[str, Any]) -> None:
        """Record one (already redacted) runner event."""
        kind = str(event.get("event") or "")
        data = event.get("event_data") or {}
        if kind.startswith("runner_on_") and data.get("host"):
            self._count(kind, data)
        failed = kind == "runner_on_failed" and not data.get("ignore_errors")
        if failed or kind == "runner_on_unreachable":
            self._failure(data)
        elif kind == "playbook_on_stats":
            self.stats_data = data
        elif kind == "verbose":
            self._error_line(str(event.get("stdout") or ""))

    def _count(self, kind: str, data: Mapping[str, Any]) -> None:
        res = data.get("res")
        changed = isinstance(res, Mapping) and bool(res.get("changed"))
        keys = {
            "runner_on_ok": ["ok", "changed"] if changed else ["ok"],
            "runner_on_failed": ["ok", "ignored"] if data.get("ignore_errors") else ["failed"],
            "runner_on_unreachable": ["unreachable"],
            "runner_on_skipped": ["skipped"],
        }.get(kind, [])
        if keys:
            counts = self.counted.setdefault(
                str(data["host"]), dict.fromkeys(_STAT_KEYS.values(), 0)
            )
            for key in keys:
                counts[key] += 1

    def _failure(self, data: Mapping[str, Any]) -> None:
        self.failures.append(
            {
                "host": str(data.get("host", "")),
                "task": str(data.get("task") or ""),
                "msg": result_message(data.get("res")),
            }
        )

    def _error_line(self, text: str) -> None:
        for line in strip_ansi(text).splitlines():
            line = line.strip()
            if line.startswith(("[ERROR]", "ERROR!")) and len(self.errors) < 20:
                self.errors.append(line)

    def host_stats(self) -> dict[str, dict[str, int]]:
        """``{host: {ok, changed, failed, unreachable, skipped, rescued, ignored}}``:
        Ansible's recap, or counted from host results when the run was stopped."""
        if self.stats_data is None:
            return {host: dict(counts) for host, counts in sorted(self.counted.items())}
        data = self.stats_data
        hosts: set[str] = set(data.get("processed") or {})
        for key in _STAT_KEYS:
            hosts |= set(data.get(key) or {})
        return {
            host: {
                ours: int((data.get(theirs) or {}).get(host, 0))
                for theirs, ours in _STAT_KEYS.items()
            }
            for host in sorted(hosts)
        }

    def outputs(self) -> dict[str, Any]:
        """What the playbook published with ``set_stats`` (runner's artifact_data)."""
        data = (self.stats_data or {}).get("artifact_data") or {}
        return dict(data) if isinstance(data, Mapping) else {}


# --- one run -------------------------------------------------------------------------
class _Run:
    """State and runner callbacks of one execution (private to RunbookRunner)."""

    def __init__(
        self,
        plan: RunPlan,
        ident: str,
        private_dir: Path,
        scrubber: Scrubber,
        event_handler: EventHandler | None,
        cancel_callback: CancelCallback | None,
        env_extra: list[str],
        status_handler: StatusHandler | None = None,
    ) -> None:
        self.plan = plan
        self.ident = ident
        self.private_dir = private_dir
        self.artifacts_dir = private_dir / "artifacts" / ident
        self.scrubber = scrubber
        self.user_handler = event_handler
        self.user_cancel = cancel_callback
        self.user_status = status_handler
        self.env_extra = env_extra
        self.env_drop: set[str] = set()
        self.inherited = dict(os.environ)
        self.collector = EventCollector()
        self.extravars_file = private_dir / "env" / "extravars"
        self.extravars_written_at: float | None = None
        self.signal_received: int | None = None
        self.deadline: float | None = None  # monotonic; set when ansible-playbook starts
        self.stop_reason: str | None = None  # "timeout" | "canceled" once stopping began
        self.stop_started: float | None = None
        self.stop_grace_s = STOP_GRACE_S
        self.stop_reason_file = private_dir / "stop_reason"
        self.stdout: IO[str] | None = None
        self.handler_failed = False
        self.warnings: list[str] = []

    # private files -------------------------------------------------------------------
    def write_private_files(self) -> None:
        """env/settings (runner's tuning, no secret) and env/extravars (0600)."""
        env_dir = self.private_dir / "env"
        env_dir.mkdir(mode=0o700, exist_ok=True)
        settings = {"suppress_output_file": True, "pexpect_timeout": POLL_INTERVAL_S}
        _write_private(env_dir / "settings", json.dumps(settings))
        if self.plan.extravars:
            _write_private(self.extravars_file, json.dumps(self.plan.extravars, default=str))
            self.extravars_written_at = time.monotonic()

    def remove_extravars(self) -> None:
        """Delete the extra vars file (once ansible-playbook has read it)."""
        if self.extravars_written_at is None:
            return
        self.extravars_file.unlink(missing_ok=True)
        log.debug("extravars file lived %.3fs", time.monotonic() - self.extravars_written_at)
        self.extravars_written_at = None

    # runner callbacks ----------------------------------------------------------------
    def on_status(self, data: Mapping[str, Any], runner_config: Any = None) -> None:
        """'starting': restrict the environment before runner records or uses it;
        'running': redact runner's ``command`` artifact before ansible-playbook starts."""
        status = data.get("status")
        if status == "starting" and runner_config is not None:
            runner_config.env = restrict_environment(
                runner_config.env, self.inherited, self.env_extra, self.env_drop
            )
        elif status == "running":
            command = self.artifacts_dir / "command"
            if command.is_file():
                self.scrubber.scrub_file(command)
        if self.user_status is not None and status in ("starting", "running"):
            try:
                self.user_status({"status": status, "runner_ident": self.ident})
            except Exception:
                log.exception("opsbook: the status handler raised; the run goes on")

    def on_event(self, event: dict[str, Any]) -> bool:
        """Redact the event in place (runner writes it to job_events afterwards),
        record it, pass it on. Never raises: an exception here would leave
        ansible-playbook running unattended."""
        try:
            if event.get("event") == "playbook_on_start":
                self.remove_extravars()
            clean = self.scrubber.redact_data(event)
            event.clear()
            event.update(clean)
        except Exception:
            log.exception("opsbook: could not redact a runner event; keeping only its ids")
            safe = {k: event.get(k) for k in _EVENT_ID_KEYS if k in event}
            event.clear()
            event.update(safe)
        try:
            self.collector.add(event)
            self._append_stdout(event)
        except Exception:
            log.exception("opsbook: failed to process a runner event")
        self._call_user_handler(event)
        return True

    def _append_stdout(self, event: Mapping[str, Any]) -> None:
        text = event.get("stdout")
        if not text:
            return
        if self.stdout is None:
            fd = os.open(
                self.artifacts_dir / "stdout", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
            self.stdout = os.fdopen(fd, "w", encoding="utf-8")
        self.stdout.write(str(text) + "\n")

    def _call_user_handler(self, event: dict[str, Any]) -> None:
        if self.user_handler is None:
            return
        try:
            self.user_handler(event)
        except Exception:
            if not self.handler_failed:
                log.exception("opsbook: the event handler raised; the run goes on")
                self.warnings.append("the event handler raised an exception (see the log)")
            self.handler_failed = True

    def should_cancel(self) -> bool:
        """runner asks this every loop (about twice a second, while ansible-playbook runs).

        A signal, the caller's callback or the timeout starts a graceful stop: SIGTERM to
        ansible-playbook, then True (runner SIGKILLs its process group) only once the grace
        period is over. Until then the run's processes clean up after themselves."""
        if self.stop_started is None:
            reason = self._stop_reason()
            if reason is None:
                return False
            self.begin_stop(reason)
        assert self.stop_started is not None
        return time.monotonic() - self.stop_started >= self.stop_grace_s

    def _stop_reason(self) -> str | None:
        if self.signal_received is not None:
            return "canceled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        if self.user_cancel is None:
            return None
        try:
            return "canceled" if self.user_cancel() else None
        except Exception:
            log.exception("opsbook: the cancel callback raised; canceling the run")
            return "canceled"

    def begin_stop(self, reason: str) -> None:
        """SIGTERM ansible-playbook (or, before it runs, every process of the run)."""
        self.stop_reason = reason
        self.stop_started = time.monotonic()
        with contextlib.suppress(OSError):  # the operation log says timeout or canceled
            _write_private(self.stop_reason_file, reason)
        targets = playbook_processes(self.ident) or find_run_processes(self.ident)
        log.debug("%s: SIGTERM to %s", reason, targets)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    def finish_stop(self) -> list[int]:
        """Wait what is left of the grace period for the run's processes (modules still
        cleaning up) to end, then SIGKILL the rest; returns the pids killed."""
        started = self.stop_started if self.stop_started is not None else time.monotonic()
        deadline = started + self.stop_grace_s
        while find_run_processes(self.ident) and time.monotonic() < deadline:
            reap_orphans()
            time.sleep(0.1)
        killed = kill_run_processes(self.ident)
        reap_orphans(wait_s=1.0 if killed else 0.0)
        return killed

    # signals -------------------------------------------------------------------------
    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM cancel the run cleanly (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signal_received = signum

    # cleanup -------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove env/, redact every artifact, verify; always called."""
        if self.stdout is not None:
            self.stdout.close()
            self.stdout = None
        self.remove_extravars()
        shutil.rmtree(self.private_dir / "env", ignore_errors=True)
        report = self.scrubber.scrub_tree(self.private_dir)
        for path in report.leaks_removed:
            self.warnings.append(f"removed {path}: it still held a secret after redaction")
        log.debug(
            "scrubbed %d files, %d redacted, %d removed",
            report.files_scanned,
            len(report.files_redacted),
            len(report.leaks_removed),
        )


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (it may hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


# --- the wrapper ---------------------------------------------------------------------
class RunbookRunner:
    """Runs the runbooks of one project over ansible-runner.

    ``project_dir``, ``inventory_root`` and ``runs_dir`` default as described in
    :mod:`opsbook.project`; ``keep_runs`` private data directories are kept;
    ``env_allow`` extends the environment allow-list (names, or prefixes ending
    in ``*``), as ``$OPSBOOK_ENV_PASSTHROUGH`` does.
    """

    def __init__(
        self,
        project_dir: str | os.PathLike[str] | None = None,
        *,
        inventory_root: str | os.PathLike[str] | None = None,
        runs_dir: str | os.PathLike[str] | None = None,
        keep_runs: int = DEFAULT_KEEP_RUNS,
        env_allow: Iterable[str] = (),
    ) -> None:
        if project_dir is not None:
            self.project_dir = Path(project_dir).expanduser().resolve()
            if not _project.is_project_root(self.project_dir):
                raise OpsbookInputError(
                    "project_dir", f"{self.project_dir} has no ansible.cfg and playbooks/"
                )
        else:
            self.project_dir = _project.find_project_root()
        self.inventory_root = (
            Path(inventory_root).expanduser().resolve()
            if inventory_root is not None
            else _project.inventory_root(self.project_dir)
        )
        self.runs_dir = (
            Path(runs_dir).expanduser().resolve()
            if runs_dir is not None
            else _project.runs_dir(self.project_dir)
        )
        if keep_runs < 1:
            raise OpsbookInputError("keep_runs", f"must be at least 1, got {keep_runs}")
        self.keep_runs = keep_runs
        self.env_allow = [*env_allow, *passthrough_patterns(os.environ)]

    # validation ----------------------------------------------------------------------
    def plan(
        self,
        runbook: str,
        env: str,
        extravars: Mapping[str, Any] | None = None,
        *,
        check: bool = False,
        limit: str | None = None,
        timeout: float | None = None,
        reason: str | None = None,
        secrets: Iterable[str] = (),
        vault_password_file: str | os.PathLike[str] | None = None,
        envvars: Mapping[str, str] | None = None,
        verbosity: int = 0,
        extravars_files: Iterable[str | os.PathLike[str]] = (),
    ) -> RunPlan:
        """Validate every input; raises OpsbookInputError. No side effect (a vault password
        script is run, as ansible-playbook will run it, to know the vault's secrets).

        ``extravars_files``: vars files passed to ansible-playbook as ``-e @file``, as they
        are - for vault-encrypted ones (decrypted by Ansible; opsbook decrypts them in memory
        only, to know their secrets). They come before ``extravars`` (which win)."""
        book = _project.resolve_runbook(self.project_dir, runbook)
        inventory = _project.resolve_env(self.inventory_root, env)
        variables = validate_extravars(extravars)
        if reason is not None:
            if not isinstance(reason, str) or not reason.strip():
                raise OpsbookInputError("--reason", "must be a non-empty text")
            variables["opsbook_reason"] = reason.strip()
        if isinstance(secrets, str):
            raise OpsbookInputError("secrets", "must be a list of values, not a single string")
        if not isinstance(verbosity, int) or not 0 <= verbosity <= 6:
            raise OpsbookInputError("verbosity", f"must be 0..6, got {verbosity!r}")
        vault_file = resolve_vault_password_file(vault_password_file, os.environ)
        extra_env = {str(k): str(v) for k, v in (envvars or {}).items()}
        warnings = _project.unknown_input_warnings(self.project_dir, book.name, variables)
        if _project.known_inputs(self.project_dir, book.name) is not None:
            # said here, before the run: the runbook's preflight need not say it again
            extra_env[_project.INPUT_WARNINGS_SHOWN_ENV] = "1"
        files = validate_extravars_files(extravars_files)
        decrypt, vault_secret = vault_decryptor(
            vault_file or configured_vault_password_file(self.project_dir, os.environ)
        )
        problems: list[str] = []
        known = (
            set(secrets)
            | secrets_in_vars(variables)
            | secrets_in_inventory(inventory, decrypt, problems)
            | secrets_in_env(extra_env)
            | vault_password(vault_file)
            | vault_secret
        )
        # the environment's vault file, read at job time (playbooks/_vault.yml; docs/awx.md)
        for path in [*files, *job_time_vault_files(self.project_dir, env, inventory, problems)]:
            known |= secrets_in_vars_file(path, decrypt, problems)
        warnings += problems
        return RunPlan(
            runbook=book,
            env=env,
            inventory=inventory,
            extravars=variables,
            check=bool(check),
            limit=validate_limit(limit),
            timeout=validate_timeout(timeout),
            vault_password_file=vault_file,
            secrets=frozenset(known),
            envvars=extra_env,
            verbosity=verbosity,
            warnings=tuple(warnings),
            extravars_files=files,
        )

    # execution -----------------------------------------------------------------------
    def run(
        self,
        runbook: str,
        env: str,
        extravars: Mapping[str, Any] | None = None,
        *,
        check: bool = False,
        limit: str | None = None,
        event_handler: EventHandler | None = None,
        timeout: float | None = None,
        reason: str | None = None,
        secrets: Iterable[str] = (),
        vault_password_file: str | os.PathLike[str] | None = None,
        cancel_callback: CancelCallback | None = None,
        envvars: Mapping[str, str] | None = None,
        verbosity: int = 0,
        extravars_files: Iterable[str | os.PathLike[str]] = (),
    ) -> RunResult:
        """Validate, then run ``playbooks/<runbook>.yml`` against environment ``env``.

        Raises OpsbookInputError (nothing run, nothing created) on bad input.
        ``event_handler`` receives every runner event, already redacted;
        ``cancel_callback`` is polled about twice a second and cancels the run
        when it returns True (so do SIGINT and SIGTERM in the main thread).
        The same run as :meth:`start`, in the calling thread.
        """
        plan = self.plan(
            runbook,
            env,
            extravars,
            check=check,
            limit=limit,
            timeout=timeout,
            reason=reason,
            secrets=secrets,
            vault_password_file=vault_password_file,
            envvars=envvars,
            verbosity=verbosity,
            extravars_files=extravars_files,
        )
        handle = self.handle(plan, event_handler=event_handler, cancel_callback=cancel_callback)
        return handle.run_here().wait()

    def start(
        self,
        runbook: str,
        env: str,
        extravars: Mapping[str, Any] | None = None,
        *,
        check: bool = False,
        limit: str | None = None,
        event_handler: EventHandler | None = None,
        timeout: float | None = None,
        reason: str | None = None,
        secrets: Iterable[str] = (),
        vault_password_file: str | os.PathLike[str] | None = None,
        cancel_callback: CancelCallback | None = None,
        envvars: Mapping[str, str] | None = None,
        verbosity: int = 0,
        extravars_files: Iterable[str | os.PathLike[str]] = (),
    ) -> RunHandle:
        """Validate (OpsbookInputError here, nothing run), then start the run in a thread of
        its own and return its :class:`opsbook.handle.RunHandle` at once: ``events()``,
        ``cancel()``, ``wait()``, ``status``. Arguments as for :meth:`run`; no signal handler
        is installed (the handle's ``cancel()`` stops the run)."""
        plan = self.plan(
            runbook,
            env,
            extravars,
            check=check,
            limit=limit,
            timeout=timeout,
            reason=reason,
            secrets=secrets,
            vault_password_file=vault_password_file,
            envvars=envvars,
            verbosity=verbosity,
            extravars_files=extravars_files,
        )
        handle = self.handle(plan, event_handler=event_handler, cancel_callback=cancel_callback)
        return handle.start()

    def handle(
        self,
        plan: RunPlan,
        *,
        event_handler: EventHandler | None = None,
        cancel_callback: CancelCallback | None = None,
    ) -> RunHandle:
        """A RunHandle for a validated plan, not started yet (``.start()`` or ``.run_here()``)."""
        from opsbook.handle import RunHandle  # the handle builds on this module

        return RunHandle.for_plan(
            self, plan, event_handler=event_handler, cancel_callback=cancel_callback
        )

    def execute(
        self,
        plan: RunPlan,
        *,
        event_handler: EventHandler | None = None,
        cancel_callback: CancelCallback | None = None,
        status_handler: StatusHandler | None = None,
    ) -> RunResult:
        """Run a validated plan in a fresh private data directory (the one engine behind
        ``opsbook.run``, ``opsbook.start`` and ``opsbook run``)."""
        ident, private_dir = self._new_private_dir()
        scrubber = self.scrubber(plan)
        state = _Run(
            plan, ident, private_dir, scrubber, event_handler, cancel_callback, self.env_allow,
            status_handler,
        )  # fmt: skip
        runner_status, ansible_rc = "failed", None
        returned = False
        started = time.monotonic()
        previous_handlers = state.install_signal_handlers()
        try:
            state.write_private_files()
            runner_status, ansible_rc = self._run_ansible(plan, state)
            returned = True
        except KeyboardInterrupt:
            runner_status = "canceled"
        finally:
            if state.stop_reason is not None:
                runner_status = state.stop_reason  # ansible-playbook ended on our SIGTERM
            if not returned or state.stop_reason is not None:
                killed = state.finish_stop()
                if killed:
                    log.debug("killed %d leftover processes of run %s", len(killed), ident)
            reap_orphans()
            state.cleanup()  # before restoring the handlers: Ctrl-C cannot cut it short
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        return self._result(plan, state, runner_status, ansible_rc, time.monotonic() - started)

    def scrubber(self, plan: RunPlan) -> Scrubber:
        """The scrubber of a run: the plan's secrets plus the secret-looking
        variables of the environment passed to Ansible."""
        passed = {k: v for k, v in os.environ.items() if env_allowed(k, self.env_allow)}
        return Scrubber(plan.secrets | secrets_in_env(passed))

    def _new_private_dir(self) -> tuple[str, Path]:
        self.runs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _attempt in range(5):
            ident = new_ident()
            private_dir = self.runs_dir / ident
            try:
                private_dir.mkdir(mode=0o700)
            except FileExistsError:
                continue
            self._rotate(ident)
            return ident, private_dir
        raise RuntimeError(f"could not create a fresh run directory under {self.runs_dir}")

    def _rotate(self, current: str) -> None:
        """Keep the newest ``keep_runs`` run directories (opsbook's own only), this run's always
        among them (two runs started in the same second sort by their random suffix)."""
        others = sorted(
            p
            for p in self.runs_dir.iterdir()
            if _IDENT_RE.match(p.name) and p.is_dir() and p.name != current
        )
        for old in others[: max(len(others) - max(self.keep_runs - 1, 0), 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def _envvars(self, plan: RunPlan, ident: str) -> dict[str, str]:
        envvars = dict(plan.envvars)
        envvars["OPSBOOK_RUN_ID"] = ident
        envvars["OPSBOOK_STOP_REASON_FILE"] = str(self.runs_dir / ident / "stop_reason")
        envvars["OPSBOOK_OPERATOR"] = os.environ.get("OPSBOOK_OPERATOR") or _login_name()
        bindir = Path(sys.executable).parent
        path = envvars.get("PATH", os.environ.get("PATH", os.defpath))
        if (bindir / "ansible-playbook").exists() and not path.startswith(f"{bindir}{os.pathsep}"):
            envvars["PATH"] = f"{bindir}{os.pathsep}{path}"
        if (
            "ANSIBLE_CALLBACK_PLUGINS" not in os.environ
            and "ANSIBLE_CALLBACK_PLUGINS" not in envvars
        ):
            dirs = configured_callback_dirs(self.project_dir, os.environ)
            if dirs:
                envvars["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(dirs)
        return envvars

    def _cmdline(self, plan: RunPlan) -> str | None:
        args = []
        if plan.check:
            args.append("--check")
        if plan.vault_password_file is not None:
            args += ["--vault-password-file", str(plan.vault_password_file)]
        for path in plan.extravars_files:  # before runner's -e @env/extravars: those win
            args += ["-e", f"@{path}"]
        return shlex.join(args) if args else None

    def _run_ansible(self, plan: RunPlan, run: _Run) -> tuple[str, int | None]:
        import ansible_runner  # imported here: `import opsbook` stays cheap

        envvars = self._envvars(plan, run.ident)
        if plan.vault_password_file is not None:
            # passed on the command line instead: both would make Ansible read it twice
            run.env_drop.add("ANSIBLE_VAULT_PASSWORD_FILE")
        if plan.timeout is not None:
            # opsbook's own deadline, not runner's: runner SIGKILLs at once, leaving modules
            # no chance to clean up (see _Run.should_cancel)
            run.deadline = time.monotonic() + plan.timeout
        runner = ansible_runner.run(
            private_data_dir=str(run.private_dir),
            ident=run.ident,
            project_dir=str(self.project_dir),
            playbook=str(plan.runbook.path),
            inventory=str(plan.inventory),
            limit=plan.limit,
            cmdline=self._cmdline(plan),
            envvars=envvars,
            verbosity=plan.verbosity or None,
            rotate_artifacts=self.keep_runs,
            fact_cache_type="memory",
            quiet=True,
            suppress_env_files=True,
            event_handler=run.on_event,
            status_handler=run.on_status,
            cancel_callback=run.should_cancel,
        )
        return str(runner.status), runner.rc

    def _result(
        self, plan: RunPlan, run: _Run, runner_status: str, ansible_rc: int | None, duration: float
    ) -> RunResult:
        stats = run.collector.host_stats()
        status = classify(runner_status, stats)
        outputs = run.collector.outputs()
        return RunResult(
            runbook=plan.runbook.name,
            env=plan.env,
            ident=run.ident,
            status=status,
            rc=int(exit_code_for(status, outputs)),
            stats=stats,
            duration_s=round(duration, 3),
            outputs=outputs,
            artifacts_dir=run.artifacts_dir,
            failures=run.collector.failures,
            errors=run.collector.errors,
            check=plan.check,
            limit=plan.limit,
            private_data_dir=run.private_dir,
            ansible_rc=ansible_rc,
            warnings=[*plan.warnings, *run.warnings],
        )


def find_run_processes(ident: str, proc: Path = Path("/proc")) -> list[int]:
    """Processes started by run ``ident``: they carry ``OPSBOOK_RUN_ID=<ident>``.

    ansible-core's workers run in sessions of their own, so killing
    ansible-playbook's process group (what runner does on timeout and cancel)
    leaves them and their modules running. Shared SSH ControlPersist masters
    are left alone: other runs use them too.
    """
    marker = f"OPSBOOK_RUN_ID={ident}".encode()
    me = os.getpid()
    found = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []  # no /proc: nothing more we can do
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and not cmdline.startswith(b"ssh: "):
            found.append(int(entry.name))
    return found


def playbook_processes(ident: str) -> list[int]:
    """The run's ansible-playbook itself: a process of the run whose parent is this process
    (runner starts it directly; its workers are its own children)."""
    me = str(os.getpid())
    found = []
    for pid in find_run_processes(ident):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[1] == me:
            found.append(pid)
    return found


# --- orphans: reaped by the CLI, which is their subreaper -----------------------------------
_PR_SET_CHILD_SUBREAPER = 36
_SUBREAPER = {"enabled": False}


def become_subreaper() -> bool:
    """Make this process the reaper of the run's orphans (Linux): a module SIGKILLed with
    its Ansible worker leaves children that end as zombies where PID 1 does not reap (a
    container). Only the ``opsbook`` command does this: a Python caller of ``opsbook.run``
    keeps its own children. Returns whether it took effect."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    _SUBREAPER["enabled"] = True
    return True


def reap_orphans(wait_s: float = 0.0) -> list[int]:
    """Reap the orphans reparented to this process (a no-op unless it is a subreaper).
    Call it only once runner has returned (runner's pexpect has then reaped ansible-playbook
    itself: every child left is an orphan of the run). Waits up to ``wait_s`` for the last
    of them to end; returns the pids reaped."""
    if not _SUBREAPER["enabled"]:
        return []
    reaped: list[int] = []
    deadline = time.monotonic() + wait_s
    while True:
        orphans = _children_of(os.getpid())
        for pid in orphans:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
        if not [p for p in orphans if p not in reaped] or time.monotonic() >= deadline:
            return reaped
        time.sleep(0.05)


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[1] == str(parent):
            found.append(int(entry.name))
    return found


def kill_run_processes(ident: str) -> list[int]:
    """SIGKILL whatever run ``ident`` left running; returns the pids."""
    killed = []
    for pid in find_run_processes(ident):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return killed


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def run(
    runbook: str,
    env: str,
    extravars: Mapping[str, Any] | None = None,
    check: bool = False,
    limit: str | None = None,
    event_handler: EventHandler | None = None,
    timeout: float | None = None,
    reason: str | None = None,
    *,
    secrets: Iterable[str] = (),
    vault_password_file: str | os.PathLike[str] | None = None,
    cancel_callback: CancelCallback | None = None,
    project_dir: str | os.PathLike[str] | None = None,
    inventory_root: str | os.PathLike[str] | None = None,
    envvars: Mapping[str, str] | None = None,
    verbosity: int = 0,
    extravars_files: Iterable[str | os.PathLike[str]] = (),
) -> RunResult:
    """Run runbook ``runbook`` against environment ``env`` and return a RunResult.

    >>> result = opsbook.run("health_check", "local")          # doctest: +SKIP
    >>> result.status, result.rc, result.outputs["health_check"]["verdict"]

    Bad input raises OpsbookInputError before anything runs. ``secrets`` lists
    extra values to keep out of artifacts and events (values of extra vars with
    secret-looking names, DSN passwords, inventory secrets - vault-encrypted ones
    decrypted in memory with the vault password file -, the vault password and
    secret-looking environment variables are found automatically).
    ``extravars_files`` are passed as ``-e @file`` (vault-encrypted vars files).
    """
    runner = RunbookRunner(project_dir, inventory_root=inventory_root)
    return runner.run(
        runbook,
        env,
        extravars,
        check=check,
        limit=limit,
        event_handler=event_handler,
        timeout=timeout,
        reason=reason,
        secrets=secrets,
        vault_password_file=vault_password_file,
        cancel_callback=cancel_callback,
        envvars=envvars,
        verbosity=verbosity,
        extravars_files=extravars_files,
    )
