"""Live progress and the final summary of ``opsbook run``, from runner events.

One line per task and per host result (ok / changed / failed / unreachable /
skipped, with the failure message). On a terminal, a status line under them
shows "hosts done/total" of the current task and its elapsed time; elsewhere
(cron, AWX, CI logs) only plain lines are written, plus a "still running" line
every minute of a long task. Every text shown passes through ``redact``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import yaml

from opsbook.runner import RunResult, result_message, strip_ansi

Redact = Callable[[str], str]

_COLORS = {
    "ok": "32",
    "changed": "33",
    "failed": "31",
    "unreachable": "31;1",
    "skipped": "36",
    "ignored": "35",
    "retrying": "33",
}
_BAR_WIDTH = 20
_MAX_MESSAGE = 400
_STILL_RUNNING_EVERY_S = 60.0
SUMMARY_COLUMNS = ("ok", "changed", "failed", "unreachable", "skipped")


_DEBUG_ACTIONS = frozenset({"debug", "ansible.builtin.debug", "ansible.legacy.debug"})


def _identity(text: str) -> str:
    return text


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """First lines of a message folded into one, truncated."""
    flat = " ".join(part.strip() for part in strip_ansi(text).splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Progress:
    """A runner event handler that renders progress to ``stream``.

    Use the instance as ``event_handler`` and its :meth:`tick` as
    ``cancel_callback`` (it is polled about twice a second and never cancels).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        color: bool | None = None,
        redact: Redact | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.color = (self.tty and "NO_COLOR" not in os.environ) if color is None else color
        self.redact = redact or _identity
        self.clock = clock
        self.task: str | None = None
        self.task_started = 0.0
        self.hosts_started = 0
        self.hosts_done = 0
        self.last_notice = 0.0
        self._bar_text = ""

    # event handler -------------------------------------------------------------------
    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = str(event.get("event") or "")
        data = event.get("event_data") or {}
        handler = getattr(self, "_on_" + kind, None)
        if handler is not None:
            handler(data, event)
        self._draw_bar()

    def _on_playbook_on_play_start(self, data: Mapping[str, Any], _event: Any) -> None:
        name = data.get("name") or data.get("play") or data.get("pattern") or ""
        self._line("")
        self._line(f"PLAY {self._text(name)}")
        self.task = None

    def _on_playbook_on_task_start(self, data: Mapping[str, Any], _event: Any) -> None:
        self.task = self._text(data.get("task") or data.get("name") or "")
        self.task_started = self.last_notice = self.clock()
        self.hosts_started = self.hosts_done = 0
        kind = "HANDLER" if data.get("is_conditional") else "TASK"  # runner flags handlers so
        self._line(f"{kind} {self.task}")

    def _on_runner_on_start(self, _data: Mapping[str, Any], _event: Any) -> None:
        self.hosts_started += 1

    def _on_runner_on_ok(self, data: Mapping[str, Any], _event: Any) -> None:
        res = data.get("res") or {}
        changed = isinstance(res, Mapping) and res.get("changed")
        self._host_result("changed" if changed else "ok", data)
        if data.get("task_action") in _DEBUG_ACTIONS and isinstance(res, Mapping):
            self._show_message(res.get("msg"))

    def _show_message(self, msg: Any) -> None:
        """What a debug task prints (a runbook's report), line by line, indented."""
        lines = msg if isinstance(msg, list) else str(msg or "").splitlines()
        for line in lines:
            self._line("      " + self._text(str(line)))

    def _on_runner_on_failed(self, data: Mapping[str, Any], _event: Any) -> None:
        status = "ignored" if data.get("ignore_errors") else "failed"
        self._host_result(status, data, result_message(data.get("res")))

    def _on_runner_on_unreachable(self, data: Mapping[str, Any], _event: Any) -> None:
        self._host_result("unreachable", data, result_message(data.get("res")))

    def _on_runner_on_skipped(self, data: Mapping[str, Any], _event: Any) -> None:
        self._host_result("skipped", data)

    def _on_runner_retry(self, data: Mapping[str, Any], _event: Any) -> None:
        res = data.get("res") or {}
        attempt = (
            f"{res.get('attempts', '?')}/{res.get('retries', '?')}"
            if isinstance(res, Mapping)
            else ""
        )
        self._line(
            f"  {self._status('retrying')} {self._text(data.get('host', ''))} (attempt {attempt})"
        )

    def _on_playbook_on_no_hosts_matched(self, _data: Mapping[str, Any], _event: Any) -> None:
        self._line("  no hosts matched")

    def _on_verbose(self, _data: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        for line in strip_ansi(str(event.get("stdout") or "")).splitlines():
            line = line.strip()
            if line.startswith(("[ERROR]", "ERROR!", "[WARNING]", "[DEPRECATION WARNING]")):
                self._line(self._text(_one_line(line)))

    def _host_result(self, status: str, data: Mapping[str, Any], message: str = "") -> None:
        self.hosts_done += 1
        line = f"  {self._status(status)} {self._text(data.get('host', ''))}"
        if message:
            line += ": " + self._text(_one_line(message))
        self._line(line)

    # terminal ------------------------------------------------------------------------
    def tick(self) -> bool:
        """Refresh the status line (TTY) or say a long task is still running (plain)."""
        if self.tty:
            self._draw_bar()
        elif self.task is not None and self.hosts_done < self.hosts_started:
            now = self.clock()
            if now - self.last_notice >= _STILL_RUNNING_EVERY_S:
                self.last_notice = now
                elapsed = int(now - self.task_started)
                self._line(
                    f"  ... still running: {self.task} ({elapsed}s, "
                    f"{self.hosts_done}/{self.hosts_started} hosts done)"
                )
        return False

    def finish(self) -> None:
        """Clear the status line."""
        self._clear_bar()
        self.stream.flush()

    def bar_text(self) -> str:
        """The status line: a bar of hosts done/total for the current task."""
        total = max(self.hosts_started, 1)
        filled = round(_BAR_WIDTH * self.hosts_done / total)
        elapsed = int(self.clock() - self.task_started)
        return (
            f"  [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] "
            f"{self.hosts_done}/{self.hosts_started} hosts done  {elapsed}s  {self.task}"
        )

    def _draw_bar(self) -> None:
        if not self.tty:
            return
        text = (
            self.bar_text()
            if self.task is not None and self.hosts_done < self.hosts_started
            else ""
        )
        if text == self._bar_text:
            return
        self._clear_bar()
        if text:
            self.stream.write(text)
            self._bar_text = text
        self.stream.flush()

    def _clear_bar(self) -> None:
        if self._bar_text:
            self.stream.write("\r\x1b[K")
            self._bar_text = ""

    def _line(self, text: str) -> None:
        self._clear_bar()
        self.stream.write(text + "\n")
        if not self.tty:
            self.stream.flush()

    def _status(self, status: str) -> str:
        label = f"{status:<11}"
        return (
            f"\x1b[{_COLORS[status]}m{label}\x1b[0m" if self.color and status in _COLORS else label
        )

    def _text(self, value: Any) -> str:
        return self.redact(strip_ansi(str(value)))


# --- summary -------------------------------------------------------------------------
def render_table(stats: Mapping[str, Mapping[str, int]]) -> str:
    """The per-host summary table: host | ok | changed | failed | unreachable | skipped."""
    header = ["host", *SUMMARY_COLUMNS]
    rows = [
        [host, *(str(counts.get(col, 0)) for col in SUMMARY_COLUMNS)]
        for host, counts in stats.items()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(row))]
        return " | ".join(cells).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(row) for row in rows)])


class _OutputsDumper(yaml.SafeDumper):
    """YAML for people: multi-line strings as literal blocks."""


# A published text longer than this (a markdown report) is shown cut on the terminal; the whole
# text stays in RunResult.outputs, the operation log and the report file the runbook names.
OUTPUT_TEXT_LINES = 25
OUTPUT_TEXT_SHOWN = 12


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    lines = value.splitlines()
    if len(lines) > OUTPUT_TEXT_LINES:
        rest = len(lines) - OUTPUT_TEXT_SHOWN
        value = "\n".join([*lines[:OUTPUT_TEXT_SHOWN], f"[... {rest} more lines, not shown here]"])
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_OutputsDumper.add_representer(str, _str_representer)


def render_summary(result: RunResult, redact: Redact | None = None) -> str:
    """Summary table, outputs, failures and the verdict line of a run."""
    redact = redact or _identity
    parts = [""]
    parts.append(render_table(result.stats) if result.stats else "(no host result)")
    if result.outputs:
        dumped = yaml.dump(
            result.outputs,
            Dumper=_OutputsDumper,
            default_flow_style=False,
            sort_keys=False,
            allow_unicode=True,
        )
        parts += ["", "Outputs:", *("  " + line for line in redact(dumped).rstrip().splitlines())]
    if result.failures:
        parts += ["", "Failures:"]
        parts += [
            f"  {redact(f['host'])} | {redact(f['task'])} | {redact(_one_line(f['msg']))}"
            for f in result.failures
        ]
    if result.errors:
        parts += ["", "Ansible errors:", *("  " + redact(_one_line(e)) for e in result.errors)]
    for warning in result.warnings:
        parts.append(f"warning: {redact(warning)}")
    mode = " (check mode)" if result.check else ""
    parts += [
        "",
        f"Result: {result.status}{mode} (exit {result.rc}) in {result.duration_s:.1f}s"
        f" - run {result.ident}, artifacts in {result.artifacts_dir}",
    ]
    return "\n".join(parts)
