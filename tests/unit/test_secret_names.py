"""The secret-name rules (module_utils/opsbook_secret_names.py), one list for both scrubbers.

Every rule has names it must catch, and each is checked through both scrubbers as they use
the rules: the runner's (src/opsbook/secrets.py: the value is collected and redacted from
artifacts) and the operation log's (callback_plugins/opsbook_oplog.py: the value is masked
in the record, scrubbed from messages, and a ``name=value`` / ``name: value`` text is
masked).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from opsbook import _secret_names as names
from opsbook.secrets import REDACTED, Scrubber, is_secret_name, secrets_in_vars
from tests.loaders import PROJECT_ROOT, load_path, load_plugin

oplog = load_plugin("callback_plugins", "opsbook_oplog")

VALUE = "s3cr3t-Value-42x"

# Each rule of SECRET_NAME_RULES with names that only it catches (and a few more).
EXAMPLES: dict[str, list[str]] = {
    r"passw(?:or)?d": ["password", "DB_PASSWORD", "db_passwd", "ansible_password", "PGPASSWORD"],
    r"passphrase": ["ssh_passphrase", "gpg-passphrase"],
    r"(?:^|_)pass(?:$|_)": ["ansible_become_pass", "smtp_pass", "pass", "db.pass"],
    r"secret": ["client_secret", "stripe_secret", "AWS_SECRET_ACCESS_KEY", "secret"],
    r"token": ["github_token", "slack_token", "AWS_SESSION_TOKEN", "opsbook_api_token"],
    r"api_?key": ["sendgrid_api_key", "apikey", "X-Api-Key", "ApiKey"],
    r"private_?key": ["ssh_private_key", "tls_privatekey"],
    r"(?:^|_)(?:ssh|signing|encryption|master|hmac)_?keys?(?:$|_)": [
        "ssh_key",
        "signing_key",
        "encryption_keys",
        "hmac_key",
    ],
    r"credential": ["aws_credentials", "db_credential"],
    r"authorization": ["Authorization", "http_authorization"],
    r"dsn": ["sentry_dsn", "dsn", "pg_dsn"],
    r"database_?url": ["database_url", "DATABASE_URL", "app_databaseurl"],
    r"webhook_?url": [
        "opsbook_notify_webhook_url",
        "notify_webhook_url",
        "deploy_notify_webhook_url",
        "SLACK_WEBHOOK_URL",
        "webhookurl",
    ],
    r"^vault_": ["vault_stripe", "vault_db", "VAULT_RELEASE_CHANNEL"],
}
ALL_EXAMPLES = [(rule, name) for rule, examples in EXAMPLES.items() for name in examples]

NOT_SECRET = [
    # names only about a secret (NOT_SECRET_SUFFIXES)
    *(f"db_password_{suffix}" for suffix in names.NOT_SECRET_SUFFIXES),
    "ansible_ssh_private_key_file", "AWS_ACCESS_KEY_ID", "ANSIBLE_VAULT_PASSWORD_FILE",
    "vault_password_file", "token_ttl", "notify_webhook_url_label", "pg_backup_kms_key_id",
    # plain names that merely contain the letters
    "monkey", "keyboard", "passenger", "compass", "bypass_cache", "use_vault_", "webhook",
    "app_base_url", "backup_storage_url", "opsbook_state_url",
    # an S3 object key is not a secret: opsbook's results are full of them
    "key", "keys", "lock_key", "manifest_key",
]  # fmt: skip


def test_every_rule_has_examples_and_each_example_is_caught_by_its_rule() -> None:
    assert list(EXAMPLES) == [pattern for pattern, _why in names.SECRET_NAME_RULES]
    for rule, name in ALL_EXAMPLES:
        assert rule in names.matching_rules(name), (rule, name)


def test_both_scrubbers_read_the_one_rules_file() -> None:
    rules = PROJECT_ROOT / "module_utils" / "opsbook_secret_names.py"
    assert Path(names.__file__).resolve() == rules  # src/opsbook/_secret_names.py links to it
    assert Path(oplog._NAMES.__file__).resolve() == rules
    assert oplog._NAMES.SECRET_NAME_RULES == names.SECRET_NAME_RULES


@pytest.mark.parametrize(("rule", "name"), ALL_EXAMPLES)
def test_runner_scrubber_treats_the_name_as_secret(rule: str, name: str) -> None:
    assert is_secret_name(name)
    assert secrets_in_vars({name: VALUE}) == {VALUE}
    assert secrets_in_vars({"nested": [{name: {"deeper": VALUE}}]}) == {VALUE}
    scrubber = Scrubber(secrets_in_vars({name: VALUE}))
    assert scrubber.redact(f"{name} is {VALUE}!") == f"{name} is {REDACTED}!"


@pytest.mark.parametrize(("rule", "name"), ALL_EXAMPLES)
def test_oplog_scrubber_treats_the_name_as_secret(rule: str, name: str) -> None:
    assert oplog.looks_secret(name)
    assert oplog.redact({"outputs": {name: VALUE, "plain": "kept"}}) == {
        "outputs": {name: "***", "plain": "kept"}
    }
    assert oplog.secret_values({"group": {name: VALUE}}) == {VALUE}
    assert oplog.redact_text(f"failed with {name}={VALUE} (retry)") == (
        f"failed with {name}=*** (retry)"
    )
    assert oplog.redact_text(json.dumps({name: VALUE, "user": "bob"})) == (
        json.dumps({name: "***", "user": "bob"})
    )
    assert oplog.redact_text(f"{name}: {VALUE}") == f"{name}: ***"


@pytest.mark.parametrize("name", NOT_SECRET)
def test_names_about_a_secret_or_merely_alike_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)
    assert not oplog.looks_secret(name)
    assert secrets_in_vars({name: VALUE}) == set()
    assert oplog.redact({name: VALUE}) == {name: VALUE}
    assert oplog.redact_text(f"{name}={VALUE}") == f"{name}={VALUE}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("msg: password=pw-1234 ok", "msg: password=*** ok"),  # a plain name consumes nothing
        ("--db-password=hunter2 --verbose", "--db-password=*** --verbose"),
        ("token=a=b user=bob", "token=*** user=bob"),  # the value runs to the blank
        ("webhook_url: https://h/x?y=1 sent", "webhook_url: *** sent"),
        ('{"api_key": "***"}', '{"api_key": "***"}'),  # masked already: left as it is
        ('password authentication failed for user "app"',
         'password authentication failed for user "app"'),  # no separator: not an assignment
        ("mypassword=x1234", "mypassword=***"),
    ],
)  # fmt: skip
def test_redact_assignments(text: str, expected: str) -> None:
    assert names.redact_assignments(text, "***") == expected


def test_redact_assignments_with_a_function() -> None:
    assert names.redact_assignments("api_key=abcd1234", lambda v: f"<{len(v)}>") == "api_key=<8>"


def test_callback_finds_the_rules_beside_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection's plugins/callback + plugins/module_utils, or this project's layout."""
    (tmp_path / "callback").mkdir()
    (tmp_path / "module_utils").mkdir()
    plugin = tmp_path / "callback" / "opsbook_oplog.py"
    shutil.copy(PROJECT_ROOT / "callback_plugins" / "opsbook_oplog.py", plugin)
    rules = tmp_path / "module_utils" / "opsbook_secret_names.py"
    shutil.copy(PROJECT_ROOT / "module_utils" / "opsbook_secret_names.py", rules)
    monkeypatch.delitem(sys.modules, "_opsbook_oplog_secret_names")  # put back afterwards
    try:
        copy = load_path("opsbook_test_oplog_copy", plugin)
        assert Path(copy._NAMES.__file__) == rules
    finally:
        sys.modules.pop("opsbook_test_oplog_copy", None)


def test_callback_without_the_rules_writes_nothing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ansible.executor.stats import AggregateStats

    monkeypatch.setattr(oplog, "_NAMES", None)
    warnings: list[str] = []
    callback = oplog.CallbackModule()
    callback._display = SimpleNamespace(warning=warnings.append)
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(tmp_path / "playbooks/x.yml")))
    callback.v2_playbook_on_stats(AggregateStats())

    assert not (tmp_path / ".opsbook").exists()
    assert len(warnings) == 1
    assert "operation log not written" in warnings[0]
    assert "opsbook_secret_names.py" in warnings[0]
    assert oplog.redact_text("anything") == "***"  # nothing unjudged reaches any text


def test_callback_documentation_names_the_shared_rules() -> None:
    """ansible-doc parses DOCUMENTATION (YAML) when Ansible loads the plugin: a YAML error
    there stops every ansible-playbook run of the project."""
    import yaml

    doc = yaml.safe_load(oplog.DOCUMENTATION)
    assert doc["name"] == "opsbook_oplog"
    [secrets] = [d for d in doc["description"] if d.startswith("Secrets never reach the log")]
    assert "module_utils/opsbook_secret_names.py" in secrets and "webhook_url" in secrets
