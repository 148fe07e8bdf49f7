"""`opsbook schedule install | list | remove` against the real crontab program (Debian's cron).

The crontab is a throwaway unprivileged user's, made for this file (useradd) and removed after
it with its crontab: never root's own. It holds a line that is not opsbook's before the first
install; every step checks that the line is still there, as it was.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from opsbook import cli
from tests.loaders import PROJECT_ROOT

pytestmark = pytest.mark.integration

FOREIGN = 'MAILTO=""\n17 3 * * * /usr/bin/true # not opsbook\'s\n'
ENTRIES = [
    {"name": "nightly-backup", "runbook": "backup", "cron": "0 2 * * *",
     "envs": ["staging", "production"], "reason": "nightly backup", "timeout": 3600},
    {"name": "weekly-secrets-report", "runbook": "secrets_report", "cron": "0 7 * * mon",
     "envs": ["staging"], "reason": "100% of the week's secrets", "timeout": 900,
     "extra_vars": {"secrets_report_fail_on": "due"}},
]  # fmt: skip


@pytest.fixture(scope="module")
def cron_user() -> Iterator[str]:
    """An unprivileged account made for these tests; its crontab holds FOREIGN."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("crontab") is None:
        pytest.skip("needs root, useradd and crontab (scripts/setup.sh installs cron)")
    name = f"opsbook-cron-{os.getpid()}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    try:
        subprocess.run(["crontab", "-u", name, "-"], input=FOREIGN, text=True, check=True)
        yield name
    finally:
        subprocess.run(["crontab", "-u", name, "-r"], capture_output=True, check=False)
        subprocess.run(["userdel", name], check=True)


def crontab_of(user: str) -> str:
    return subprocess.run(
        ["crontab", "-u", user, "-l"], capture_output=True, text=True, check=True
    ).stdout


def schedule(
    capsys: pytest.CaptureFixture[str], action: str, user: str, *args: str
) -> tuple[int, str, str]:
    rc = cli.main(["schedule", action, "--env", "staging", "--user", user, *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("OPSBOOK_PROJECT_DIR", str(PROJECT_ROOT))
    (tmp_path / "schedules.yml").write_text(yaml.safe_dump({"schedules": ENTRIES}))
    return ["--file", str(tmp_path / "schedules.yml"), "--log-dir", str(tmp_path / "logs")]


def test_install_list_and_remove_touch_only_opsbook_s_lines(
    cron_user: str, options: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = schedule(capsys, "install", cron_user, "--dry-run", *options)
    assert rc == 0 and "# schedule: weekly-secrets-report" in out and "nothing was written" in out
    assert crontab_of(cron_user) == FOREIGN

    rc, out, _ = schedule(capsys, "install", cron_user, *options)
    assert rc == 0, out
    installed = crontab_of(cron_user)
    assert installed.startswith(FOREIGN)
    block = installed[len(FOREIGN) :]
    begin = f"# BEGIN opsbook schedule env=staging project={PROJECT_ROOT}"
    assert block.startswith(f"\n{begin}\n")
    assert block.endswith(f"# END opsbook schedule env=staging project={PROJECT_ROOT}\n")
    opsbook = Path(os.path.abspath(sys.executable)).parent / "opsbook"  # this .venv's
    assert opsbook.is_file()
    log = tmp_path / "logs" / "schedule-staging.log"
    assert (
        f"0 2 * * * cd {PROJECT_ROOT} && {opsbook} run backup --env staging --reason "
        f"'nightly backup' --timeout 3600 >>{log} 2>&1\n"
    ) in block
    assert (
        f"0 7 * * mon cd {PROJECT_ROOT} && {opsbook} run secrets_report --env staging --reason "
        "'100\\% of the week'\"'\"'s secrets' --timeout 900 "
        """-e '{"secrets_report_fail_on":"due"}'"""
    ) in block
    assert (tmp_path / "logs").stat().st_uid == pwd.getpwnam(cron_user).pw_uid

    rc, out, _ = schedule(capsys, "install", cron_user, *options)
    assert rc == 0 and "unchanged" in out
    assert crontab_of(cron_user) == installed

    rc, out, _ = schedule(capsys, "list", cron_user, *options)
    assert rc == 0
    assert [line.split()[:3] for line in out.splitlines()[:2]] == [
        ["nightly-backup", "in", "sync"],
        ["weekly-secrets-report", "in", "sync"],
    ]

    # the file changes: list says how the crontab differs (exit 1), install follows the file
    changed = [ENTRIES[0] | {"cron": "30 2 * * *"}]
    Path(options[1]).write_text(yaml.safe_dump({"schedules": changed}))
    rc, out, _ = schedule(capsys, "list", cron_user, *options)
    assert rc == 1
    assert out.splitlines()[0].split()[:2] == ["nightly-backup", "changed"]
    assert "weekly-secrets-report  stale" in out
    rc, out, _ = schedule(capsys, "install", cron_user, *options)
    assert rc == 0 and "installed 1 entries" in out
    assert crontab_of(cron_user).startswith(FOREIGN)
    assert "30 2 * * * cd" in crontab_of(cron_user)
    assert "secrets_report" not in crontab_of(cron_user)

    rc, out, _ = schedule(capsys, "remove", cron_user)
    assert rc == 0 and "removed 1 entries for staging" in out
    assert crontab_of(cron_user) == FOREIGN
    rc, out, _ = schedule(capsys, "remove", cron_user)
    assert rc == 0 and "nothing to remove" in out


def test_a_bad_file_is_refused_and_the_crontab_is_left_as_it_was(
    cron_user: str, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, _ = schedule(capsys, "install", cron_user, *options)
    assert rc == 0
    before = crontab_of(cron_user)
    bad = [ENTRIES[0] | {"runbook": "backups"}, ENTRIES[1] | {"cron": "0 7 * * monday"}]
    Path(options[1]).write_text(yaml.safe_dump({"schedules": bad}))
    rc, out, err = schedule(capsys, "install", cron_user, *options)
    assert rc == 2, out + err
    assert "runbook: unknown runbook 'backups'" in err
    assert "(weekly-secrets-report): cron: day of week: 'monday' is not a number 0-7" in err
    assert "nothing was changed in the crontab" in err
    assert crontab_of(cron_user) == before
    rc, _, _ = schedule(capsys, "remove", cron_user)
    assert rc == 0 and crontab_of(cron_user) == FOREIGN
