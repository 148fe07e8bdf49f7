"""Read a playbook run's set_stats data and per-host stats in tests.

A tiny test-only callback plugin (written into the test's tmp dir, enabled next to the
operation log) dumps ``stats.custom`` and the per-host summary as JSON at the end of the run;
:func:`run_with_stats` runs a playbook through the ``run_playbook`` fixture with it enabled.
The same approach as tests/integration/test_health_check.py, shared for other tests.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CALLBACK_NAME = "opsbook_test_stats"
STATS_FILE_ENV = "OPSBOOK_TEST_STATS_FILE"

STATS_CALLBACK = f'''
import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Test only: dump the run's custom stats (set_stats) and per-host stats as JSON."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "{CALLBACK_NAME}"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_stats(self, stats):
        hosts = {{host: stats.summarize(host) for host in sorted(stats.processed)}}
        with open(os.environ["{STATS_FILE_ENV}"], "w") as handle:
            json.dump({{"custom": stats.custom, "hosts": hosts}}, handle, default=str)
'''

_counter = itertools.count(1)


@dataclass
class StatsRun:
    """One playbook run: exit status, output, set_stats data and per-host stats."""

    rc: int
    stdout: str
    stderr: str
    data: dict[str, Any]

    @property
    def stats(self) -> dict[str, Any]:
        """The aggregate set_stats data (per_host: false)."""
        return dict(self.data.get("custom", {}).get("_run", {}))

    @property
    def hosts(self) -> dict[str, dict[str, int]]:
        return dict(self.data.get("hosts", {}))

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def failed_hosts(self) -> set[str]:
        return {h for h, s in self.hosts.items() if s["failures"] or s["unreachable"]}


def stats_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment enabling the stats callback, and the JSON file it will write."""
    cb_dir = tmp_path / "stats_callback"
    cb_dir.mkdir(exist_ok=True)
    (cb_dir / f"{CALLBACK_NAME}.py").write_text(STATS_CALLBACK)
    stats_file = tmp_path / f"stats-{next(_counter)}.json"
    env = {
        "ANSIBLE_CALLBACK_PLUGINS": f"{PROJECT_ROOT / 'callback_plugins'}:{cb_dir}",
        "ANSIBLE_CALLBACKS_ENABLED": f"opsbook.runbooks.opsbook_oplog,{CALLBACK_NAME}",
        STATS_FILE_ENV: str(stats_file),
    }
    return env, stats_file


# Ad hoc playbooks hand their registered results back through the stats callback: a last
# task publishes them with set_stats (no module process; a copy to a file costs two).
RESULTS_KEY = "opsbook_test_results"


def results_task(expression: str, name: str = "Publish the results for the test") -> dict[str, Any]:
    """The task that publishes ``{{ expression }}`` (registered results) as JSON text, read back
    by :func:`read_results` from the file the stats callback writes (:func:`stats_env`)."""
    return {
        "name": name,
        "ansible.builtin.set_stats": {"data": {RESULTS_KEY: "{{ " + expression + " | to_json }}"}},
        "check_mode": False,
    }


def read_results(stats_file: Path) -> Any:
    """What :func:`results_task` published in the run that wrote stats_file."""
    custom = json.loads(stats_file.read_text())["custom"]
    assert RESULTS_KEY in custom.get("_run", {}), f"the run published no results: {custom}"
    value = custom["_run"][RESULTS_KEY]
    return json.loads(value) if isinstance(value, str) else value


def run_with_stats(
    run_playbook: Any,
    tmp_path: Path,
    name: str,
    inventory: Path,
    extravars: Mapping[str, Any] | None = None,
    check: bool = False,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> StatsRun:
    """Run playbooks/<name>.yml with the ``run_playbook`` fixture; return its stats."""
    cb_env, stats_file = stats_env(tmp_path)
    proc = run_playbook(
        name,
        inventory,
        extravars=extravars,
        check=check,
        env={**cb_env, **(env or {})},
        args=tuple(args),
    )
    assert stats_file.exists(), proc.stdout + proc.stderr
    return StatsRun(proc.returncode, proc.stdout, proc.stderr, json.loads(stats_file.read_text()))
