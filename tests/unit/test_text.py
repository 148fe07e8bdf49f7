"""module_utils/opsbook_text.py (one byte formatter, one typed-confirmation rule), the filters
that call it, and the DSN parsing shared by the modules and the filters (opsbook_pg)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.loaders import PROJECT_ROOT, VENV_BIN, load_library, load_module_utils, load_plugin

text = load_module_utils("opsbook_text")
pg_utils = load_module_utils("opsbook_pg")
flt = load_plugin("filter_plugins", "opsbook_filters")

# ------------------------------------------------------------------------- bytes


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (48_234_496, "46.0 MiB"),
        (194_500_000, "185.5 MiB"),
        (1024**3 * 1.25, "1.2 GiB"),
        (5 * 1024**4, "5.0 TiB"),
        (3 * 1024**6, "3072.0 PiB"),
    ],
)
def test_human_bytes_is_binary_and_says_so(count: float, shown: str) -> None:
    assert text.human_bytes(count) == shown
    assert flt.opsbook_bytes(count) == shown


def test_one_byte_formatter_for_the_modules_and_the_roles() -> None:
    assert load_library("pg_backup").human_bytes is text.human_bytes
    assert load_library("pg_restore").human_bytes is text.human_bytes
    assert flt.opsbook_text is text and flt.opsbook_pg() is pg_utils
    assert flt.opsbook_bytes("2048") == "2.0 KiB" and flt.opsbook_bytes(None) == "0 B"


def test_no_role_prints_a_size_with_another_formatter() -> None:
    found = [
        str(path.relative_to(PROJECT_ROOT))
        for path in (PROJECT_ROOT / "roles").rglob("*.yml")
        if "human_readable" in path.read_text() or "filesizeformat" in path.read_text()
    ]
    assert found == []


# ------------------------------------------------------------------- confirmation

NEEDED = "opsbook_env is production: down on database app needs the typed confirmation"

RULE = [
    # confirm, needed, allowed
    (None, "", True),
    ("", None, True),
    ("app", "", True),
    ("app", NEEDED, True),
    ("other", "", False),  # names another database: always refused
    ("other", NEEDED, False),
    ("APP", NEEDED, False),  # exact, case-sensitive like database names
    ("app ", NEEDED, False),
    (None, NEEDED, False),
    ("", NEEDED, False),
]


@pytest.mark.parametrize(("confirm", "needed", "allowed"), RULE)
def test_typed_confirmation_rule(confirm: str | None, needed: str | None, allowed: bool) -> None:
    problem = text.typed_confirmation_problem("app", confirm, needed)
    assert (problem is None) is allowed, problem
    assert (flt.opsbook_confirmation(confirm, "app", needed) == "") is allowed


def test_confirmation_messages_say_which_input_what_is_wrong_and_how_to_go_ahead() -> None:
    assert flt.opsbook_confirmation("", "app", NEEDED) == (
        f"{NEEDED}: re-run with -e confirm=app to go ahead"
    )
    assert flt.opsbook_confirmation("ap", "app", "", "the target database") == (
        "confirm (ap) does not equal the name of the target database (app): "
        "re-run with -e confirm=app to go ahead"
    )
    quoted = text.typed_confirmation_problem(
        "app", "ap", None, go_ahead="set confirm to 'app'", quote=True
    )
    assert quoted == (
        "confirm ('ap') does not equal the name of the database ('app'): set confirm to 'app'"
    )


def test_pg_database_drops_by_the_same_rule() -> None:
    refusal = load_library("pg_database").drop_refusal
    prefixes = ["opsbook_drill_"]
    assert refusal("opsbook_drill_1", prefixes, None) is None  # a scratch database needs none
    assert refusal("app", prefixes, "app") is None
    assert refusal("app", prefixes, None) == (
        "'app' is not a scratch database (scratch name prefixes: 'opsbook_drill_'): "
        "set confirm to 'app' to drop it"
    )
    # A confirmation naming another database is refused, scratch or not.
    assert refusal("opsbook_drill_1", prefixes, "app") == (
        "confirm ('app') does not equal the name of the database ('opsbook_drill_1'): "
        "set confirm to 'opsbook_drill_1' to drop it"
    )
    assert "system database" in refusal("postgres", prefixes, "postgres")


PREFLIGHTS = ["pg_restore", "db_datafix", "db_maintenance", "db_health", "db_migrate"]


@pytest.mark.parametrize("role", PREFLIGHTS)
def test_every_preflight_applies_the_one_rule(role: str) -> None:
    preflight = (PROJECT_ROOT / "roles" / role / "tasks" / "preflight.yml").read_text()
    assert "| opsbook.runbooks.opsbook_confirmation(" in preflight
    assert "does not equal" not in preflight  # the rule's wording lives in opsbook_text only


# ------------------------------------------------------------------------- DSNs

DSNS = [
    "postgresql://u:p@h:5432/app",
    "postgres://u@h/my%20db",
    "postgresql://u:p@h/app?dbname=other&sslmode=require",
    "postgresql://alice:p@h",
    "postgresql://h/?user=bob",
    "postgresql://u:p%20w@h/db?password=q",
    "host=h port=5432 dbname=app user=u password='p w'",
    "host=h dbname='it\\'s' user=u",
    "host=h user=carol password=x",
    "host=h password=sec\\ ret dbname = app",
    "",
]


@pytest.mark.parametrize("dsn", DSNS)
def test_the_fallback_parser_reads_dsns_as_libpq_does(dsn: str) -> None:
    keys = ("dbname", "user", "password")
    libpq = pg_utils.dsn_settings(dsn)
    assert pg_utils.HAS_PSYCOPG
    assert {k: libpq[k] for k in keys if k in libpq} == {
        k: v for k, v in pg_utils._parse_dsn(dsn).items() if k in keys
    }


def test_a_dsn_libpq_refuses_is_still_read() -> None:
    assert pg_utils.dsn_database("host=h dbname=app sslmode=nonsense junk") == "app"


def test_redaction_covers_a_backslash_escaped_password() -> None:
    dsn = "host=h password=sec\\ ret dbname=app"
    assert flt.dsn_redact(dsn) == "host=h password=******** dbname=app"
    assert "sec ret" in pg_utils.dsn_passwords(dsn)


# ------------------------------------------------- the filters from another directory


@pytest.mark.parametrize("how", ["ansible.cfg", "collections path only"])
def test_the_filters_find_module_utils_from_anywhere(how: str, tmp_path: Path) -> None:
    """ansible-playbook run from another directory: with the project's ansible.cfg, or with
    only the project's collections/ configured (module_utils found in the collection)."""
    playbook = tmp_path / "p.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.debug:\n"
        "        msg: \"{{ 1536 | opsbook.runbooks.opsbook_bytes }}"
        " {{ 'postgresql://u:pw@h/db' | opsbook.runbooks.dsn_database }}\""
        "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["HOME"] = str(tmp_path)
    if how == "ansible.cfg":
        env["ANSIBLE_CONFIG"] = str(PROJECT_ROOT / "ansible.cfg")
    else:
        env["ANSIBLE_CONFIG"] = str(tmp_path / "none.cfg")
        env["ANSIBLE_COLLECTIONS_PATH"] = str(PROJECT_ROOT / "collections")
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1.5 KiB db" in proc.stdout
