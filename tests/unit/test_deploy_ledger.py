"""The deploy ledger without servers: recording (append-only, idempotent, check mode, the
by-version index), queries (sha256 matching, other artifacts, newest entries) on file://
storage, and library/deploy_ledger.py's pure parts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.loaders import load_library, load_module_utils

st = load_module_utils("opsbook_storage")
ds = load_module_utils("opsbook_deploy_state")
dg = load_library("deploy_ledger")

SHA_A = "a" * 64
SHA_B = "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def storage(tmp_path: Path) -> Any:
    return st.open_storage(f"file://{tmp_path / 'state'}")


def ledger(storage: Any, env: str = "staging", clock: Clock | None = None) -> Any:
    return ds.Ledger(storage, env, clock=clock or Clock())


def fields(**kw: Any) -> dict[str, Any]:
    base = {
        "version": "2.1.0",
        "artifact_sha256": SHA_A,
        "release_id": "20240501T120000Z-2.1.0",
        "status": "succeeded",
        "run_id": "run-1",
        "operator": "alice",
        "reason": "release 2.1.0",
        "playbook": "deploy",
        "hosts": ["app2", "app1", "app1"],
        "details": {"git_sha": "3f2a9c1"},
    }
    base.update(kw)
    return base


def test_record_writes_one_entry_and_its_index_copy(storage: Any, tmp_path: Path) -> None:
    result = ledger(storage).record(fields(hotfix=True))
    assert result["changed"]
    entry = result["entry"]
    assert entry["hosts"] == ["app1", "app2"] and entry["hotfix"] is True
    assert entry["env"] == "staging" and entry["format_version"] == 1
    assert entry["recorded_at"] == "2024-05-01T12:00:01.000000Z"
    name = "20240501T120001.000000Z-20240501T120000Z-2.1.0.json"
    assert result["key"].endswith(f"/ledger/staging/{name}")
    stored = json.loads(storage.get_bytes(f"ledger/staging/{name}"))
    assert stored == entry
    assert json.loads(storage.get_bytes(f"ledger-index/staging/2.1.0/{name}")) == entry
    assert "staging 2.1.0 (hotfix) release 20240501T120000Z-2.1.0 succeeded" in result["msg"]


def test_record_is_idempotent_and_repairs_a_missing_index(storage: Any) -> None:
    book = ledger(storage)
    first = book.record(fields())
    again = book.record(fields())
    assert not again["changed"] and again["entry"] == first["entry"]
    assert again["msg"].startswith("already recorded")
    assert len(storage.list("ledger/staging/")) == 1
    index = storage.list("ledger-index/staging/")
    storage.delete(index[0].key)
    book.record(fields())
    assert [i.key for i in storage.list("ledger-index/staging/")] == [index[0].key]
    # another status, or another run, of the same release is a new entry
    assert book.record(fields(status="rolled_back"))["changed"]
    assert book.record(fields(run_id="run-2"))["changed"]
    assert len(storage.list("ledger/staging/")) == 3


def test_entries_are_never_overwritten(storage: Any) -> None:
    fixed = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    book = ds.Ledger(storage, "staging", clock=lambda: fixed)
    book.record(fields(run_id="run-1"))
    second = book.record(fields(run_id="run-2"))  # same microsecond, same release id
    assert second["key"].endswith("20240501T120000.000001Z-20240501T120000Z-2.1.0.json")
    runs = sorted(json.loads(storage.get_bytes(i.key))["run_id"] for i in storage.list("ledger/"))
    assert runs == ["run-1", "run-2"]


def test_record_in_check_mode_writes_nothing(storage: Any, tmp_path: Path) -> None:
    result = ledger(storage).record(fields(), check_mode=True)
    assert result["changed"] and result["msg"].startswith("would record")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"version": ""}, "version must not be empty"),
        ({"release_id": "../x"}, "release_id must be"),
        ({"release_id": "a/b"}, "release_id must be"),
        ({"artifact_sha256": "XYZ"}, "artifact_sha256 must be 64"),
        ({"status": "started"}, "status must be one of"),
    ],
)
def test_record_refuses_bad_entries(storage: Any, bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ds.DeployStateError, match=message):
        ledger(storage).record(fields(**bad))
    assert storage.list("") == []


def test_query_succeeded_by_version_and_artifact(storage: Any) -> None:
    book = ledger(storage)
    assert book.query("2.1.0")["succeeded"] is False
    assert (
        book.query("2.1.0")["msg"]
        == "2.1.0 never succeeded in staging (no entry of 2.1.0 in staging)"
    )
    book.record(fields(status="failed", release_id="r1", run_id="run-1"))
    book.record(fields(status="rolled_back", release_id="r1", run_id="run-1"))
    failed = book.query("2.1.0", SHA_A)
    assert failed["succeeded"] is False and failed["count"] == 2
    assert "entries of 2.1.0 in staging: 1 failed, 1 rolled_back" in failed["msg"]
    book.record(fields(release_id="r2", run_id="run-2"))
    ok = book.query("2.1.0", SHA_A)
    assert ok["succeeded"] and ok["succeeded_count"] == 1 and ok["count"] == 3
    assert ok["last_succeeded"]["release_id"] == "r2" and ok["latest"]["release_id"] == "r2"
    assert [e["status"] for e in ok["entries"]] == ["failed", "rolled_back", "succeeded"]
    assert "2.1.0 (artifact sha256 aaaaaaaaaaaa...) succeeded in staging (once;" in ok["msg"]
    rebuilt = book.query("2.1.0", SHA_B)
    assert rebuilt["succeeded"] is False and rebuilt["succeeded_other_sha256"] == [SHA_A]
    assert "it succeeded with another artifact (sha256 aaaaaaaaaaaa...)" in rebuilt["msg"]
    assert book.query("2.1.0")["succeeded"]  # any artifact
    assert book.query("2.2.0")["succeeded"] is False


def test_query_is_per_environment_and_versions_need_no_escaping_tricks(storage: Any) -> None:
    ledger(storage, "staging").record(fields(version="2.1.0+build.5/x"))
    assert ledger(storage, "staging").query("2.1.0+build.5/x")["succeeded"]
    assert ledger(storage, "staging").query("2.1.0+build.5")["succeeded"] is False
    assert ledger(storage, "production").query("2.1.0+build.5/x")["succeeded"] is False
    [index] = storage.list("ledger-index/")
    assert index.key.startswith("ledger-index/staging/2.1.0%2Bbuild.5%2Fx/")


def test_query_without_version_returns_the_newest_entries(storage: Any) -> None:
    book = ledger(storage)
    for i in range(5):
        book.record(fields(version=f"1.{i}.0", release_id=f"r{i}", run_id=f"run-{i}"))
    recent = book.query(None, limit=3)
    assert [e["version"] for e in recent["entries"]] == ["1.2.0", "1.3.0", "1.4.0"]
    assert recent["succeeded"] is None and recent["last_succeeded"]["version"] == "1.4.0"
    assert book.query(None, limit=0)["entries"] == []


def test_unreadable_entries_are_skipped(storage: Any) -> None:
    book = ledger(storage)
    book.record(fields())
    storage.put_bytes("ledger-index/staging/2.1.0/20240501T000000.000000Z-bad.json", b"{oops")
    assert book.query("2.1.0")["count"] == 1


def test_query_refuses_a_bad_sha(storage: Any) -> None:
    with pytest.raises(ds.DeployStateError, match="sha256 must be"):
        ledger(storage).query("2.1.0", "nothex")


# ===================================================================== module


def params(**kw: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in dg.argument_spec().items()}
    values.update(url="file:///srv/state", env="staging")
    values.update(kw)
    return values


def test_validate_params() -> None:
    assert dg.validate_params(params()) == []
    record = params(state="record", version="1", release_id="r1", status="succeeded")
    assert dg.validate_params(record) == []
    missing = dg.validate_params(params(state="record", version="1"))
    assert missing == ["state=record needs release_id, status"]
    assert any("release_id is only used" in e for e in dg.validate_params(params(release_id="r")))
    assert any("needs version" in e for e in dg.validate_params(params(artifact_sha256=SHA_A)))
    bad_sha = params(version="1", artifact_sha256="zz")
    assert any("64 lowercase hex" in e for e in dg.validate_params(bad_sha))
    assert any("limit" in e for e in dg.validate_params(params(limit=-1)))
    assert any("env must be" in e for e in dg.validate_params(params(env="")))


def test_fill_defaults() -> None:
    filled = dg.fill_defaults(
        params(artifact_sha256=" " + SHA_A.upper() + " "),
        {"OPSBOOK_RUN_ID": "r-7", "OPSBOOK_OPERATOR": "dave"},
    )
    assert filled["run_id"] == "r-7" and filled["operator"] == "dave"
    assert filled["artifact_sha256"] == SHA_A


def test_module_run_record_then_query(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    recorded = dg.run(
        params(
            url=url,
            state="record",
            version="3.0.0",
            release_id="r3",
            status="succeeded",
            artifact_sha256=SHA_A,
            run_id="x",
            operator="eve",
        ),
        check_mode=False,
    )
    assert recorded["changed"] and recorded["entry"]["operator"] == "eve"
    asked = dg.run(params(url=url, version="3.0.0", artifact_sha256=SHA_A), check_mode=True)
    assert asked["succeeded"] and not asked["changed"]
