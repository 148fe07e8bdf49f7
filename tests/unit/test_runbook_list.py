"""`opsbook list` on this project: every runbook the README names, each with its one-line
description (a playbook's first line, `# <description>`: what `opsbook list` shows)."""

from __future__ import annotations

import re

import pytest

from opsbook import cli
from tests.loaders import PROJECT_ROOT

# The README's runbook table: "| `name` | what it does |" rows under "## Runbooks".
_README_ROW = re.compile(r"^\| `([a-z_]+)` \|", re.MULTILINE)


def readme_runbooks() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("\n## Runbooks\n", 1)[1].split("\n## ", 1)[0]
    return _README_ROW.findall(section)


def test_opsbook_list_shows_every_runbook_with_its_description(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPSBOOK_PROJECT_DIR", str(PROJECT_ROOT))
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = dict(line.split(maxsplit=1) if " " in line else (line, "") for line in lines)
    assert sorted(listed) == sorted(readme_runbooks())
    assert len(listed) == len(lines) >= 12
    # A description is a sentence (not a YAML line, not empty: a playbook whose first line
    # is "---" or "- name: ..." is listed bare), on one line.
    bad = {name: text for name, text in listed.items() if not re.match(r"^[A-Z][a-z]+ \S", text)}
    assert bad == {}
    assert listed["maintenance_mode"].startswith(
        "Switch maintenance mode on or off on the app hosts"
    )
