"""The runbooks on a platform target, for the tests: an inventory whose app runs on Vercel,
Render or Fly.io played by a stand-in (tests/standins_<vendor>.py), and a way to run
deploy.yml, rollback.yml, maintenance_mode.yml and scale.yml on it and read their set_stats.

    inventory = platform_inventory(tmp_path, "render", standin.app.url,
                                   {"render_api_url": standin.url, "render_api_key": standin.token,
                                    "render_service_id": standin.service_id})
    run = run_runbook(run_playbook, tmp_path, "deploy", inventory, app_version="1.2.0")
    assert run.rc == 0 and run.stats["deploy"]["status"] == "succeeded"

The controller is the only host (the implicit localhost, on this Python); the deploy lock and the
ledger live under ``tmp_path/state``; the health gate is quick (3 retries, 0.2 s apart).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.integration.stats_helper import StatsRun, run_with_stats

QUICK_GATE = {
    "deploy_health_retries": 3,
    "deploy_health_delay_s": 0.2,
    "deploy_health_timeout_s": 2,
}


def platform_inventory(
    tmp_path: Path,
    target: str,
    app_url: str,
    vendor_vars: Mapping[str, Any],
    *,
    env: str = "staging",
    inventories: str = "inventory",
    **extra: Any,
) -> Path:
    """<inventories>/<env>/ for an app on ``target`` answering at ``app_url``."""
    root = tmp_path / inventories / env
    (root / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    variables = {
        "opsbook_env": env,
        "opsbook_state_url": f"file://{state}",
        "deploy_target": target,
        "app_base_url": app_url,
        **QUICK_GATE,
        **dict(vendor_vars),
        **extra,
    }
    (root / "group_vars" / "all" / "vars.yml").write_text(yaml.safe_dump(variables))
    hosts = {
        "all": {
            "hosts": {
                "localhost": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                }
            }
        }
    }
    (root / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return root


def run_runbook(
    run_playbook: Any,
    tmp_path: Path,
    name: str,
    inventory: Path,
    *,
    check: bool = False,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    **extravars: Any,
) -> StatsRun:
    """playbooks/<name>.yml on the platform inventory, with its set_stats (``run.stats``)."""
    return run_with_stats(
        run_playbook, tmp_path, name, inventory, extravars=extravars or None, check=check,
        args=args, env=env,
    )  # fmt: skip


def ledger(tmp_path: Path, env: str = "staging") -> list[dict[str, Any]]:
    """The deploy ledger entries of ``env`` (what the staging gate reads), oldest first."""
    folder = tmp_path / "state" / "ledger" / env
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
