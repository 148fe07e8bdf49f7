"""module_utils/opsbook_backup.py, library/pg_backup.py and library/pg_backup_info.py:
the pure parts (ids, manifests, selection, retention, pg_dump patterns and command lines),
the catalog and verification on a real file:// storage, the streaming pipeline with
stand-in producers (no database)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.loaders import load_library, load_module_utils

storage_mod = load_module_utils("opsbook_storage")
ob = load_module_utils("opsbook_backup")
pgb = load_library("pg_backup")
pbi = load_library("pg_backup_info")

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SHA_A = "a" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_for(
    backup_id: str = "app-20240501T120000Z-00aa",
    data: bytes = b"data",
    started: datetime = T0,
    database: str = "app",
    globals_data: bytes | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    globals_entry = None
    if globals_data is not None:
        globals_entry = ob.object_entry(
            ob.object_key(backup_id, ob.GLOBALS_OBJECT), len(globals_data), sha(globals_data)
        )
    manifest = ob.build_manifest(
        backup_id=backup_id,
        database=database,
        server_version="15.8",
        server_version_num=150008,
        pg_dump_version="15.8",
        compression_level=3,
        started=started,
        finished=started + timedelta(seconds=5),
        data=ob.object_entry(ob.object_key(backup_id, ob.DATA_OBJECT), len(data), sha(data)),
        uncompressed_bytes=len(data) * 4,
        table_counts={"public.users": 200, '"Odd Schema"."T.x"': 3},
        options={"globals": globals_data is not None},
        globals_object=globals_entry,
        env="test",
        reason="unit",
        labels={"k": "v"},
    )
    manifest.update(overrides)
    return manifest


# ----------------------------------------------------------------- ids, keys, times


def test_backup_id_shape_and_parse() -> None:
    bid = ob.make_backup_id("app", now=T0, token="3fa2")
    assert bid == "app-20240501T120000Z-3fa2"
    assert ob.parse_backup_id(bid) == ("app", T0)
    assert ob.backup_id_errors(bid) == []
    assert ob.parse_backup_id("hand-made") is None


def test_backup_id_random_token_and_time_order() -> None:
    ids = {ob.make_backup_id("app", now=T0) for _ in range(50)}
    assert len(ids) > 1 and all(len(i.rsplit("-", 1)[1]) == 4 for i in ids)
    later = ob.make_backup_id("app", now=T0 + timedelta(seconds=1), token="0000")
    assert max([ob.make_backup_id("app", now=T0, token="ffff"), later]) == later


def test_backup_id_makes_unsafe_database_names_key_safe() -> None:
    bid = ob.make_backup_id("my db/ü", now=T0, token="0001")
    assert ob.backup_id_errors(bid) == []
    assert "/" not in bid and " " not in bid
    assert ob.make_backup_id("///", now=T0, token="0001").startswith("db-")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "a..b", "x" * 201, "a b"])
def test_backup_id_errors(bad: str) -> None:
    assert ob.backup_id_errors(bad)


def test_times_roundtrip_and_formats() -> None:
    assert ob.format_time(T0) == "2024-05-01T12:00:00.000Z"
    assert ob.parse_time("2024-05-01T12:00:00Z") == T0
    assert ob.parse_time("2024-05-01T14:00:00+02:00") == T0
    assert ob.parse_time("2024-05-01 12:00") == T0
    assert ob.parse_time("2024-05-01") == T0.replace(hour=0)
    assert ob.parse_time(ob.format_time(T0 + timedelta(milliseconds=5))) == T0 + timedelta(
        milliseconds=5
    )
    with pytest.raises(ValueError, match="ISO 8601"):
        ob.parse_time("yesterday")


@pytest.mark.parametrize(
    ("schema", "name", "key"),
    [
        ("public", "users", "public.users"),
        ("Odd Schema", "T.x", '"Odd Schema"."T.x"'),
        ("public", 'q"uote', '"public"."q""uote"'.replace('"public"', "public")),
    ],
)
def test_table_keys_roundtrip(schema: str, name: str, key: str) -> None:
    assert ob.table_key(schema, name) == key
    assert ob.split_table_key(key) == (schema, name)


@pytest.mark.parametrize("bad", ["users", "a.b.c", '"open.x', ""])
def test_split_table_key_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        ob.split_table_key(bad)


# ----------------------------------------------------------------- manifest


def test_manifest_has_exactly_the_contract_fields_and_validates() -> None:
    manifest = manifest_for()
    assert list(manifest) == list(ob.MANIFEST_FIELDS)
    assert ob.validate_manifest(manifest) == []
    assert manifest["verified_at"] is None
    assert manifest["bytes"] == manifest["objects"]["data"]["bytes"] == 4
    assert manifest["compression"] == {"algorithm": "zstd", "level": 3}
    assert manifest["options"] == {
        "schemas": [],
        "exclude_schemas": [],
        "tables": [],
        "exclude_tables": [],
        "schema_only": False,
        "globals": False,
    }


def test_manifest_serialize_parse_roundtrip() -> None:
    manifest = manifest_for(globals_data=b"roles")
    data = ob.serialize_manifest(manifest)
    assert data.endswith(b"\n")
    assert ob.parse_manifest(data, "app-20240501T120000Z-00aa") == manifest


def _mutate(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    target = manifest
    for part in parents:
        target = target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return manifest


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("sha256", KeyError, "missing fields: sha256"),
        ("extra", 1, "unknown fields: extra"),
        ("format_version", 2, "format_version must be 1"),
        ("sha256", "XYZ", "sha256 must be 64"),
        ("bytes", 5, "must equal objects.data.bytes"),
        ("objects.data.key", "other/data.pgdump.zst", "objects.data.key must be"),
        ("objects.globals", {"key": "x", "bytes": 1, "sha256": SHA_A}, "objects.globals.key"),
        ("options.globals", True, "options.globals must be true exactly when"),
        ("table_counts", {"users": 1}, "not a schema.table key"),
        ("table_counts", {"public.users": -1}, "must be an integer >= 0"),
        ("compression", {"algorithm": "gzip", "level": 6}, "compression must be"),
        ("started", "noon", "started"),
        ("encryption", "rot13", "encryption must be"),
        ("labels", {"k": 1}, "labels must be an object of strings"),
        ("backup_id", "../escape", "backup_id"),
        ("duration_s", -1, "duration_s"),
        ("options.schemas", "public", "options.schemas must be a list"),
    ],
)
def test_manifest_validation_names_each_problem(path: str, value: Any, fragment: str) -> None:
    errors = ob.validate_manifest(_mutate(manifest_for(), path, value))
    assert any(fragment in e for e in errors), errors


def test_parse_manifest_errors() -> None:
    with pytest.raises(ob.ManifestError, match="not valid JSON"):
        ob.parse_manifest(b"{nope")
    with pytest.raises(ob.ManifestError, match="does not match its directory"):
        ob.parse_manifest(ob.serialize_manifest(manifest_for()), "app-20240501T120000Z-ffff")
    with pytest.raises(ob.ManifestError) as info:
        ob.parse_manifest(b"[]")
    assert info.value.errors == ["manifest must be a JSON object"]


def test_hash_stream_bounded_chunks() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)

    class Reader(io.BytesIO):
        def __init__(self, initial: bytes) -> None:
            super().__init__(initial)
            self.sizes: list[int] = []

        def read(self, size: int | None = -1) -> bytes:
            self.sizes.append(size if size is not None else -1)
            return super().read(size)

    reader = Reader(data)
    assert ob.hash_stream(reader, chunk_size=1024 * 1024) == (sha(data), len(data))
    assert max(reader.sizes) == 1024 * 1024


# ----------------------------------------------------------------- catalog on file://


def put_backup(
    storage: Any,
    backup_id: str,
    data: bytes = b"dump-bytes",
    started: datetime = T0,
    database: str = "app",
    globals_data: bytes | None = None,
) -> dict[str, Any]:
    manifest = manifest_for(backup_id, data, started, database, globals_data)
    storage.put_bytes(ob.object_key(backup_id, ob.DATA_OBJECT), data)
    if globals_data is not None:
        storage.put_bytes(ob.object_key(backup_id, ob.GLOBALS_OBJECT), globals_data)
    storage.put_bytes(ob.object_key(backup_id, ob.MANIFEST_OBJECT), ob.serialize_manifest(manifest))
    return manifest


@pytest.fixture
def storage(tmp_path: Path) -> Any:
    return storage_mod.open_storage(f"file://{tmp_path / 'store'}")


def bid(n: int, db: str = "app") -> str:
    return f"{db}-202405{n:02d}T120000Z-{n:04x}"


def test_catalog_lists_only_backups_with_a_valid_manifest(storage: Any) -> None:
    put_backup(storage, bid(1), started=T0)
    put_backup(storage, bid(2), started=T0 + timedelta(days=1), globals_data=b"roles")
    put_backup(storage, bid(3, "billing"), started=T0 + timedelta(days=2), database="billing")
    # an interrupted backup: data, no manifest
    storage.put_bytes(ob.object_key(bid(4), ob.DATA_OBJECT), b"partial")
    # a manifest whose data object is missing, and one that is not JSON
    manifest = manifest_for(bid(5))
    storage.put_bytes(ob.object_key(bid(5), ob.MANIFEST_OBJECT), ob.serialize_manifest(manifest))
    storage.put_bytes(ob.object_key(bid(6), ob.MANIFEST_OBJECT), b"{")
    storage.put_bytes(ob.object_key(bid(6), ob.DATA_OBJECT), b"x")
    # stray objects: top level, and an unknown file inside a listed backup
    storage.put_bytes("README", b"hi")
    storage.put_bytes(f"{bid(1)}/notes.txt", b"stray")

    catalog = ob.list_catalog(storage)
    assert [b.backup_id for b in catalog.backups] == [bid(3, "billing"), bid(2), bid(1)]
    assert {i["backup_id"] for i in catalog.invalid} == {bid(5), bid(6)}
    invalid5 = next(i for i in catalog.invalid if i["backup_id"] == bid(5))
    assert any("missing" in e for e in invalid5["errors"])
    orphans = {o["prefix"]: o["objects"] for o in catalog.orphans}
    assert orphans == {f"{bid(4)}/": 1, "": 1, f"{bid(1)}/": 1}
    assert catalog.orphan_objects == 3
    assert [b.backup_id for b in ob.list_catalog(storage, database="app").backups] == [
        bid(2),
        bid(1),
    ]
    summary = catalog.backups[1].summary()
    assert summary["globals"] is True and summary["verified"] is False
    assert summary["manifest"]["backup_id"] == bid(2)


def test_catalog_flags_a_data_object_of_another_size(storage: Any) -> None:
    put_backup(storage, bid(1), data=b"12345")
    storage.put_bytes(ob.object_key(bid(1), ob.DATA_OBJECT), b"123456")
    catalog = ob.list_catalog(storage)
    assert catalog.backups == []
    assert "6 bytes, the manifest says 5" in catalog.invalid[0]["errors"][0]


def test_load_backup_by_id(storage: Any) -> None:
    put_backup(storage, bid(1))
    assert ob.load_backup(storage, bid(1)).manifest["backup_id"] == bid(1)
    with pytest.raises(ob.SelectionError, match="no manifest"):
        ob.load_backup(storage, bid(2))
    storage.put_bytes(ob.object_key(bid(3), ob.MANIFEST_OBJECT), b"{}")
    with pytest.raises(ob.ManifestError, match="unusable"):
        ob.load_backup(storage, bid(3))
    with pytest.raises(ob.SelectionError):
        ob.load_backup(storage, "../etc")


def entry(n: int, days: float = 0, db: str = "app", verification: Any = None) -> Any:
    manifest = manifest_for(bid(n, db), started=T0 + timedelta(days=days), database=db)
    return ob.BackupEntry(bid(n, db), manifest, verification)


def test_select_latest_by_id_and_before() -> None:
    backups = ob.sort_newest_first([entry(1, 0), entry(2, 1), entry(3, 2), entry(4, 3, "other")])
    assert ob.select_backup(backups).backup_id == bid(4, "other")
    assert ob.select_backup(backups, database="app").backup_id == bid(3)
    assert ob.select_backup(backups, backup_id=bid(1)).backup_id == bid(1)
    # at or before: the boundary is inclusive
    assert ob.select_backup(backups, before=T0 + timedelta(days=1)).backup_id == bid(2)
    assert ob.select_backup(backups, before="2024-05-02T11:59:59Z").backup_id == bid(1)
    with pytest.raises(ob.SelectionError, match="at or before"):
        ob.select_backup(backups, before=T0 - timedelta(seconds=1))
    with pytest.raises(ob.SelectionError, match="no backup 'nope'"):
        ob.select_backup(backups, backup_id="nope")
    with pytest.raises(ob.SelectionError, match="of database 'none'"):
        ob.select_backup(backups, database="none")


def test_select_skips_backups_that_failed_verification() -> None:
    failed = {"ok": False, "objects": {}}
    backups = ob.sort_newest_first([entry(1, 0), entry(2, 1, verification=failed)])
    assert backups[0].verification_failed
    assert ob.select_backup(backups).backup_id == bid(1)
    assert ob.select_backup(backups, backup_id=bid(2)).backup_id == bid(2)
    assert ob.select_backup(backups, skip_failed=False).backup_id == bid(2)


def test_verify_ok_then_corrupted_then_missing(storage: Any) -> None:
    put_backup(storage, bid(1), data=b"A" * 5000, globals_data=b"roles")
    target = ob.load_backup(storage, bid(1))
    result = ob.verify_backup(storage, target, chunk_size=1000)
    assert result["ok"] is True and result["recorded"] is True and result["errors"] == []
    assert set(result["objects"]) == {"data", "globals"}
    record = json.loads(storage.get_bytes(ob.object_key(bid(1), ob.VERIFIED_OBJECT)))
    assert record["ok"] is True and "recorded" not in record
    assert ob.load_backup(storage, bid(1)).verified

    manifest_before = storage.get_bytes(ob.object_key(bid(1), ob.MANIFEST_OBJECT))
    storage.put_bytes(ob.object_key(bid(1), ob.DATA_OBJECT), b"A" * 4999 + b"B")  # same size
    result = ob.verify_backup(storage, target)
    assert result["ok"] is False and result["objects"]["data"]["ok"] is False
    assert result["objects"]["globals"]["ok"] is True
    assert "sha256" in result["errors"][0]
    reloaded = ob.load_backup(storage, bid(1))
    assert not reloaded.verified and reloaded.verification_failed
    # the manifest is never rewritten
    assert storage.get_bytes(ob.object_key(bid(1), ob.MANIFEST_OBJECT)) == manifest_before

    storage.delete(ob.object_key(bid(1), ob.GLOBALS_OBJECT))
    result = ob.verify_backup(storage, target, record=False)
    assert result["objects"]["globals"]["error"].endswith("is missing")
    assert result["recorded"] is False


def test_verify_unreadable_object_concludes_nothing(storage: Any, monkeypatch: Any) -> None:
    put_backup(storage, bid(1))
    target = ob.load_backup(storage, bid(1))

    def broken(key: str) -> Any:
        raise storage_mod.StorageError(f"{key}: connection reset")

    monkeypatch.setattr(storage, "open_reader", broken)
    result = ob.verify_backup(storage, target)
    assert result["ok"] is None and result["recorded"] is False
    assert "could not be read" in result["errors"][0]
    assert storage.head(ob.object_key(bid(1), ob.VERIFIED_OBJECT)) is None


def test_verification_of_other_bytes_does_not_count() -> None:
    record = {"ok": True, "objects": {"data": {"sha256": SHA_A, "bytes": 4}}}
    assert not entry(1, verification=record).verified  # the manifest's sha256 differs


def test_delete_backup_removes_the_manifest_first(storage: Any) -> None:
    put_backup(storage, bid(1))
    put_backup(storage, bid(11))  # shares the prefix "app-2024051" with bid(1)
    calls: list[tuple[str, str]] = []
    real_delete, real_prefix = storage.delete, storage.delete_prefix

    def spy_delete(key: str) -> None:
        calls.append(("delete", key))
        real_delete(key)

    def spy_prefix(prefix: str) -> int:
        calls.append(("delete_prefix", prefix))
        return real_prefix(prefix)

    storage.delete, storage.delete_prefix = spy_delete, spy_prefix
    ob.delete_backup(storage, bid(1))
    assert calls[0] == ("delete", ob.object_key(bid(1), ob.MANIFEST_OBJECT))
    assert calls[1] == ("delete_prefix", f"{bid(1)}/")
    assert storage.list(f"{bid(1)}/") == []
    assert [b.backup_id for b in ob.list_catalog(storage).backups] == [bid(11)]


def test_a_half_deleted_backup_is_never_listed(storage: Any) -> None:
    put_backup(storage, bid(1))
    storage.delete(ob.object_key(bid(1), ob.MANIFEST_OBJECT))  # interrupted after step 1
    catalog = ob.list_catalog(storage)
    assert catalog.backups == [] and catalog.orphans[0]["prefix"] == f"{bid(1)}/"


# ----------------------------------------------------------------- retention (pure)


def cand(n: int, at: datetime, verified: bool = False, failed: bool = False, db: str = "app"):
    return ob.RetentionCandidate(bid(n, db), db, at, verified=verified, failed=failed)


def kept(plan: Any) -> list[str]:
    return [row["backup_id"] for row in plan.keep]


def deleted(plan: Any) -> list[str]:
    return [row["backup_id"] for row in plan.delete]


def reasons(plan: Any, backup_id: str) -> list[str]:
    return next(row["reasons"] for row in plan.keep if row["backup_id"] == backup_id)


def test_retention_keep_last_with_the_newest_verified() -> None:
    backups = [cand(n, T0 + timedelta(hours=n), verified=(n == 5)) for n in range(1, 6)]
    plan = ob.plan_retention(backups, keep_last=2)
    assert kept(plan) == [bid(5), bid(4)]
    assert deleted(plan) == [bid(3), bid(2), bid(1)]
    assert reasons(plan, bid(5)) == ["last 1 of 2", "newest verified backup"]
    assert plan.newest_verified == {"app": bid(5)}
    assert "older than the newest verified backup" in plan.delete[0]["reason"]
    assert plan.warnings == []


def test_retention_never_deletes_the_newest_verified_backup() -> None:
    backups = [cand(n, T0 + timedelta(hours=n), verified=(n == 1)) for n in range(1, 6)]
    plan = ob.plan_retention(backups, keep_last=1)
    assert bid(1) in kept(plan)
    assert reasons(plan, bid(1)) == ["newest verified backup"]


def test_retention_keeps_everything_newer_than_the_newest_verified() -> None:
    # 1 and 3 verified; 4..6 are newer than the newest verified (3) and unverified
    backups = [cand(n, T0 + timedelta(hours=n), verified=n in (1, 3)) for n in range(1, 7)]
    plan = ob.plan_retention(backups, keep_last=1)
    assert kept(plan) == [bid(6), bid(5), bid(4), bid(3)]
    assert reasons(plan, bid(5)) == ["newer than the newest verified backup"]
    assert deleted(plan) == [bid(2), bid(1)]  # an older verified backup follows the policy


def test_retention_without_a_verified_backup_deletes_nothing() -> None:
    backups = [cand(n, T0 + timedelta(days=n)) for n in range(1, 5)]
    plan = ob.plan_retention(backups, keep_last=1)
    assert deleted(plan) == [] and len(kept(plan)) == 4
    assert reasons(plan, bid(1)) == ["no verified backup of this database yet"]
    assert "no verified backup" in plan.warnings[0]


def test_retention_periods_count_only_periods_with_backups() -> None:
    # two backups a day for 3 days, then a 10-day gap, then 2 more days
    times = []
    for day in (0, 1, 2, 13, 14):
        times += [T0 + timedelta(days=day, hours=1), T0 + timedelta(days=day, hours=5)]
    backups = [cand(n, at, verified=(n == len(times))) for n, at in enumerate(times, start=1)]
    plan = ob.plan_retention(backups, keep_daily=3)
    # the newest of each of the last 3 days that have backups: day 14, 13 and 2
    assert kept(plan) == [bid(10), bid(8), bid(6)]
    assert reasons(plan, bid(6)) == ["daily 2024-05-03"]
    assert len(deleted(plan)) == 7


def test_retention_weekly_uses_iso_weeks_and_monthly_months() -> None:
    # 2024-05-01 is a Wednesday of ISO week 18; one backup a day for 40 days
    backups = [cand(n, T0 + timedelta(days=n), verified=(n == 40)) for n in range(1, 41)]
    plan = ob.plan_retention(backups, keep_weekly=2, keep_monthly=3)
    weekly = [r for row in plan.keep for r in row["reasons"] if r.startswith("weekly")]
    monthly = [r for row in plan.keep for r in row["reasons"] if r.startswith("monthly")]
    assert weekly == ["weekly 2024-W24", "weekly 2024-W23"]
    assert monthly == ["monthly 2024-06", "monthly 2024-05"]  # only two months have backups
    # the newest backup of May is May 31st
    may = next(row for row in plan.keep if "monthly 2024-05" in row["reasons"])
    assert may["started"].startswith("2024-05-31")
    # a Sunday closes its ISO week: the newest backup of week 23 is Sunday June 9th
    w23 = next(row for row in plan.keep if "weekly 2024-W23" in row["reasons"])
    assert w23["started"].startswith("2024-06-09")


def test_retention_failed_backups_fill_no_slot() -> None:
    backups = [
        cand(1, T0, verified=True),
        cand(2, T0 + timedelta(hours=1)),
        cand(3, T0 + timedelta(hours=2), failed=True),
    ]
    plan = ob.plan_retention(backups, keep_last=1)
    # 3 is newer than the newest verified (1), so it stays (for investigation) but the
    # keep_last slot goes to 2
    assert reasons(plan, bid(2)) == ["last 1 of 1"]
    assert reasons(plan, bid(3)) == ["newer than the newest verified backup"]
    older_failed = [cand(1, T0, failed=True), cand(2, T0 + timedelta(hours=1), verified=True)]
    plan = ob.plan_retention(older_failed, keep_last=5)
    assert deleted(plan) == [bid(1)]
    assert plan.delete[0]["reason"].startswith("verification failed")


def test_retention_plans_each_database_on_its_own() -> None:
    backups = [cand(n, T0 + timedelta(hours=n), verified=True) for n in range(1, 4)]
    backups += [cand(n, T0 + timedelta(hours=n), verified=True, db="billing") for n in (7, 8)]
    plan = ob.plan_retention(backups, keep_last=1)
    assert kept(plan) == [bid(3), bid(8, "billing")]  # by database, newest first
    assert deleted(plan) == [bid(2), bid(1), bid(7, "billing")]
    assert plan.newest_verified == {"app": bid(3), "billing": bid(8, "billing")}


def test_retention_is_pure_and_order_independent() -> None:
    backups = [cand(n, T0 + timedelta(hours=n), verified=(n == 2)) for n in range(1, 6)]
    one = ob.plan_retention(backups, keep_last=2)
    two = ob.plan_retention(list(reversed(backups)), keep_last=2)
    assert one.as_dict() == two.as_dict()


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [({}, "at least one"), ({"keep_last": -1}, "keep_last must be >= 0")],
)
def test_retention_rejects_invalid_policies(policy: dict[str, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ob.plan_retention([], **policy)


def test_retention_candidates_from_entries() -> None:
    good = {"ok": True, "objects": {"data": {"sha256": sha(b"data"), "bytes": 4}}}
    candidate = ob.RetentionCandidate.from_entry(entry(1, verification=good))
    assert candidate.verified and not candidate.failed and candidate.started == T0


# ----------------------------------------------------------------- client tools


def test_client_conninfo_drops_the_password() -> None:
    conninfo, password = ob.client_conninfo(
        "postgresql://app:s%3Acret@db.internal:5433/app?sslmode=require", "opsbook-pg_dump"
    )
    assert password == "s:cret"
    assert "s:cret" not in conninfo and "password" not in conninfo
    assert "dbname=app" in conninfo and "port=5433" in conninfo
    assert "application_name=opsbook-pg_dump" in conninfo
    with pytest.raises(ValueError, match="not a valid"):
        ob.client_conninfo("host=x password='unterminated")


def test_find_pg_tool_prefers_the_server_major() -> None:
    present = {"/usr/lib/postgresql/16/bin/pg_dump", "/opt/pg_dump"}
    exists = present.__contains__
    assert ob.find_pg_tool("pg_dump", 16, exists=exists, which=lambda n: "/usr/bin/pg_dump") == (
        "/usr/lib/postgresql/16/bin/pg_dump"
    )
    assert ob.find_pg_tool("pg_dump", 15, exists=exists, which=lambda n: "/usr/bin/pg_dump") == (
        "/usr/bin/pg_dump"
    )
    assert ob.find_pg_tool("pg_dump", 15, "/opt/pg_dump", exists=exists) == "/opt/pg_dump"
    with pytest.raises(FileNotFoundError, match="PostgreSQL 15 client tools"):
        ob.find_pg_tool("pg_dump", 15, exists=exists, which=lambda n: None)
    with pytest.raises(FileNotFoundError, match="/nope"):
        ob.find_pg_tool("pg_dump", 15, "/nope", exists=exists)


def test_tool_version(tmp_path: Path) -> None:
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.8 (Debian 15.8-1)'\n")
    fake.chmod(0o755)
    assert ob.tool_version(str(fake)) == "15.8"
    assert ob.version_major("15.8") == 15
    fake.write_text("#!/bin/sh\necho nonsense\n")
    with pytest.raises(ValueError):
        ob.tool_version(str(fake))


# ----------------------------------------------------------------- pg_backup: pure parts


@pytest.mark.parametrize(
    ("pattern", "qualified", "expected"),
    [
        ("users", True, (None, "^(users)$", 0)),
        ("Users", True, (None, "^(users)$", 0)),
        ('"Users"', True, (None, "^(Users)$", 0)),
        ("public.*", True, ("^(public)$", "^(.*)$", 1)),
        ("app_?", True, (None, "^(app_.)$", 0)),
        ('"a.b"', True, (None, "^(a\\.b)$", 0)),
        ('"we""ird*"', True, (None, '^(we"ird\\*)$', 0)),
        ("cost$", True, (None, "^(cost\\$)$", 0)),
        ("int[]", True, (None, "^(int\\[])$", 0)),
        ("a.b.c", True, ("^(a)$", "^(b.c)$", 2)),
        ("sch.x", False, (None, "^(sch.x)$", 1)),
        ("(a|b)", True, (None, "^((a|b))$", 0)),
    ],
)
def test_pattern_to_regex_matches_pg_dump(
    pattern: str, qualified: bool, expected: tuple[Any, ...]
) -> None:
    assert pgb.pattern_to_regex(pattern, qualified) == expected


def test_pattern_errors() -> None:
    assert pgb.pattern_errors({"schemas": ["public", '"a.b"'], "tables": ["s.t"]}) == []
    errors = pgb.pattern_errors(
        {"schemas": ["db.public"], "tables": ["db.s.t"], "exclude_tables": [" "]}
    )
    assert len(errors) == 3


def test_pg_dump_argv_has_no_password_and_keeps_the_filters() -> None:
    argv = pgb.pg_dump_argv(
        "/usr/bin/pg_dump",
        "host=h dbname=app user=u",
        "00000003-0000001B-1",
        {"schemas": ["s1"], "exclude_tables": ["t*"], "schema_only": True},
    )
    assert argv[:4] == ["/usr/bin/pg_dump", "--format=custom", "--compress=0", "--no-password"]
    assert "--snapshot=00000003-0000001B-1" in argv
    assert "--schema=s1" in argv and "--exclude-table=t*" in argv and "--schema-only" in argv
    assert argv[-1] == "--dbname=host=h dbname=app user=u"
    assert pgb.pg_dumpall_argv("/x/pg_dumpall", "host=h", "app")[-1] == "--database=app"
    # one compression thread (zstd's default), never -T0
    assert pgb.zstd_argv("/usr/bin/zstd", 3) == ["/usr/bin/zstd", "-q", "-c", "-3"]


def test_classify_stderr() -> None:
    errors, others = pgb.classify_stderr(
        "pg_dump: warning: there are circular foreign-key constraints on this table:\n"
        "pg_dump: detail: t\n"
        'pg_dump: error: Dumping the contents of table "t" failed: PQgetResult() failed.\n'
        "pg_dump: detail: Error message from server: server closed the connection\n"
        "\n"
    )
    assert len(errors) == 1 and "server closed the connection" in errors[0]
    assert len(others) == 1 and others[0].startswith("pg_dump: warning:")
    assert pgb.classify_stderr("FATAL:  terminating connection\n")[0]
    assert pgb.classify_stderr("") == ([], [])


def params(**overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in pgb.argument_spec().items()}
    values.update(dsn="postgresql://u:pw@127.0.0.1/app", storage_url="file:///tmp/x")
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"compression_level": 0}, "compression_level must be between 1 and 19"),
        ({"compression_level": 22}, "compression_level"),
        ({"part_size_mb": 4}, "part_size_mb"),
        ({"upload_concurrency": 0}, "upload_concurrency"),
        ({"kms_key_id": "k"}, "kms_key_id needs sse=aws:kms"),
        ({"backup_id": "a/b"}, "backup_id"),
        ({"labels": {"x": {"nested": 1}}}, "labels.x"),
        ({"schemas": ["db.s"]}, "must not be qualified"),
        ({"storage_url": " "}, "storage_url must not be empty"),
        ({"dsn": ""}, "dsn must not be empty"),
    ],
)
def test_pg_backup_validate_params(overrides: dict[str, Any], fragment: str) -> None:
    errors = pgb.validate_params(params(**overrides))
    assert any(fragment in e for e in errors), errors


def test_pg_backup_defaults_are_valid_and_secrets_no_log() -> None:
    assert pgb.validate_params(params()) == []
    spec = pgb.argument_spec()
    assert spec["dsn"]["no_log"] is True
    assert spec["compression_level"]["default"] == 1
    assert spec["part_size_mb"]["default"] == 8
    assert spec["sse"]["choices"] == ["none", "AES256", "aws:kms"]
    assert pgb.labels_of({"a": 1, "b": True}) == ({"a": "1", "b": "True"}, [])
    assert pgb.throughput_mb_s(50_000_000, 2.0) == 25.0 and pgb.throughput_mb_s(1, 0) == 0.0


@pytest.mark.parametrize(
    ("database_bytes", "part_size_mb", "expected_mib"),
    [
        (0, 8, 8),
        (500 * 10**6, 8, 8),
        (70 * storage_mod.GiB, 8, 8),  # 8 MiB x 10,000 = 78 GiB, with the 10% margin
        (100 * storage_mod.GiB, 8, 12),  # raised to the smallest whole MiB that fits
        (100 * storage_mod.GiB, 16, 16),  # a larger configured size stays
        (1024 * storage_mod.GiB, 8, 116),
    ],
)
def test_pg_backup_raises_the_part_size_to_fit_10000_parts(
    database_bytes: int, part_size_mb: int, expected_mib: int
) -> None:
    storage = storage_mod.open_storage(
        "s3://bucket/prefix", region="us-east-1", part_size=part_size_mb * storage_mod.MiB
    )
    run = pgb.BackupRun.__new__(pgb.BackupRun)
    run.params, run.storage = params(part_size_mb=part_size_mb), storage
    size = run.fit_part_size(database_bytes)
    assert size == storage.part_size == expected_mib * storage_mod.MiB
    assert size * storage_mod.MAX_PARTS >= database_bytes
    assert f"part size {expected_mib} MiB" in storage.describe()
    files = storage_mod.open_storage("file:///tmp/backups")
    run.storage = files
    assert run.fit_part_size(10**15) is None


# ----------------------------------------------------------------- pg_backup: streaming


class MemoryWriter:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.state = "open"

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def commit(self) -> dict[str, Any]:
        self.state = "committed"
        return {"bytes": len(self.buffer)}

    def abort(self) -> None:
        self.state = "aborted"


ZSTD = pgb.zstd_argv("/usr/bin/zstd", 3)


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def test_stream_compressed_hashes_what_it_stores() -> None:
    writer = MemoryWriter()
    stats = pgb.stream_compressed(
        sh("printf PGDMP; head -c 3000000 /dev/zero"),
        ZSTD,
        dict(os.environ),
        writer,
        "pg_dump",
        magic=b"PGDMP",
    )
    assert stats.uncompressed_bytes == 3_000_005
    assert stats.bytes == len(writer.buffer) and stats.sha256 == sha(bytes(writer.buffer))
    plain = subprocess.run(
        ["/usr/bin/zstd", "-dc"], input=bytes(writer.buffer), capture_output=True, check=True
    ).stdout
    assert plain.startswith(b"PGDMP") and len(plain) == 3_000_005
    assert writer.state == "open"  # committing is the caller's decision


@pytest.mark.parametrize(
    ("script", "fragment"),
    [
        (
            "printf PGDMP; head -c 100000 /dev/zero; echo 'pg_dump: error: boom' >&2; exit 1",
            "pg_dump failed (exit status 1): pg_dump: error: boom",
        ),
        (
            "printf PGDMP; echo 'pg_dump: error: query failed' >&2; exit 0",
            "reported an error (exit status 0)",
        ),
        ("printf 'NOTADUMP'", "does not start like a pg_dump custom archive"),
        ("exit 0", "pg_dump wrote nothing"),
        ("echo 'pg_dump: error: connection refused' >&2; exit 1", "connection refused"),
    ],
)
def test_stream_compressed_failures(script: str, fragment: str) -> None:
    with pytest.raises(pgb.BackupFailed) as info:
        pgb.stream_compressed(
            sh(script), ZSTD, dict(os.environ), MemoryWriter(), "pg_dump", magic=b"PGDMP"
        )
    assert fragment in str(info.value)


def test_stream_compressed_without_splice_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_splice(*_args: Any) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(pgb.os, "splice", no_splice, raising=False)
    writer = MemoryWriter()
    stats = pgb.stream_compressed(
        sh("printf PGDMP; head -c 2500000 /dev/urandom"),
        ZSTD,
        dict(os.environ),
        writer,
        "pg_dump",
        magic=b"PGDMP",
    )
    assert stats.uncompressed_bytes == 2_500_005 and stats.sha256 == sha(bytes(writer.buffer))


def test_stream_compressed_warnings_are_returned() -> None:
    stats = pgb.stream_compressed(
        sh("printf PGDMP; echo 'pg_dump: warning: odd' >&2"),
        ZSTD,
        dict(os.environ),
        MemoryWriter(),
        "pg_dump",
        magic=b"PGDMP",
    )
    assert stats.warnings == ["pg_dump: warning: odd"]


def test_stream_compressed_storage_failure_kills_and_reaps_the_children() -> None:
    class FailingWriter(MemoryWriter):
        def write(self, data: bytes) -> int:
            raise storage_mod.StorageError("s3://b/k: upload of part 1 failed: boom")

    before = set(os.listdir("/proc"))
    with pytest.raises(storage_mod.StorageError, match="part 1"):
        pgb.stream_compressed(
            sh("printf PGDMP; exec cat /dev/urandom"),
            ZSTD,
            dict(os.environ),
            FailingWriter(),
            "pg_dump",
            magic=b"PGDMP",
        )
    children = [
        pid
        for pid in set(os.listdir("/proc")) - before
        if pid.isdigit() and _ppid(pid) == os.getpid()
    ]
    assert children == []


def _ppid(pid: str) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(text.rsplit(")", 1)[1].split()[1])


# ----------------------------------------------------------------- pg_backup_info params


def info_params(**overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in pbi.argument_spec().items()}
    values.update(storage_url="file:///tmp/x")
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"state": "retention"}, "at least one of keep_last"),
        ({"state": "list", "keep_last": 3}, "only used with state=retention"),
        ({"state": "select", "before": "soon"}, "before: not an ISO 8601 time"),
        ({"state": "list", "before": "2024-01-01"}, "before is only used with state=select"),
        ({"state": "list", "backup_id": "x"}, "backup_id is only used"),
        ({"state": "verify", "backup_id": "../x"}, "backup_id"),
        ({"state": "retention", "keep_daily": -2}, "keep_daily must be >= 0"),
    ],
)
def test_pg_backup_info_validate_params(overrides: dict[str, Any], fragment: str) -> None:
    errors = pbi.validate_params(info_params(**overrides))
    assert any(fragment in e for e in errors), errors


def test_pg_backup_info_takes_backup_id_or_before_not_both() -> None:
    """The rule is in the argument spec (ARGUMENT_RULES, which main() gives AnsibleModule)."""
    validator = ArgumentSpecValidator(pbi.argument_spec(), **pbi.ARGUMENT_RULES)
    both = {"storage_url": "file:///x", "state": "select", "before": "2024-01-01"}
    checked = validator.validate({**both, "backup_id": "x"})
    assert [str(m) for m in checked.error_messages] == [
        "parameters are mutually exclusive: backup_id|before"
    ]
    assert not validator.validate(both).error_messages


def test_pg_backup_info_states_on_file_storage(storage: Any, tmp_path: Path) -> None:
    put_backup(storage, bid(1), started=T0)
    put_backup(storage, bid(2), started=T0 + timedelta(days=1))
    url = f"file://{tmp_path / 'store'}"
    listed = pbi.run(info_params(storage_url=url), check_mode=False)
    assert [b["backup_id"] for b in listed["backups"]] == [bid(2), bid(1)]
    assert listed["changed"] is False and listed["orphans_count"] == 0

    verify = pbi.run(info_params(storage_url=url, state="verify", backup_id=bid(1)), True)
    assert verify["verification"]["ok"] is True and verify["verification"]["recorded"] is False
    verify = pbi.run(info_params(storage_url=url, state="verify", backup_id=bid(1)), False)
    assert verify["changed"] is True and verify["results"][0]["recorded"] is True

    plan = pbi.run(info_params(storage_url=url, state="retention", keep_last=1), True)
    # 2 is newer than the newest verified (1): both stay
    assert plan["would_delete"] == [] and plan["deleted"] == []
    pbi.run(info_params(storage_url=url, state="verify"), False)  # verifies the newest: 2
    plan = pbi.run(info_params(storage_url=url, state="retention", keep_last=1), True)
    assert plan["would_delete"] == [bid(1)] and plan["deleted"] == [] and plan["changed"]
    assert storage.head(ob.object_key(bid(1), ob.MANIFEST_OBJECT)) is not None
    done = pbi.run(info_params(storage_url=url, state="retention", keep_last=1), False)
    assert done["deleted"] == [bid(1)] and [b["backup_id"] for b in done["backups"]] == [bid(2)]
    assert storage.list(f"{bid(1)}/") == []

    with pytest.raises(pbi.InfoFailed, match="no backup 'nope'"):
        pbi.run(info_params(storage_url=url, state="select", backup_id="nope"), False)


# ----------------------------------------------------------------- fetching (pg_restore's)


class _BytesStorage:
    """A storage stand-in: open_reader returns the object's bytes, optionally failing."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.fail_after = fail_after

    def open_reader(self, key: str) -> Any:
        assert key == "b/data.pgdump.zst"
        if self.fail_after is None:
            return io.BytesIO(self.data)
        outer = self

        class Failing(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                if self.tell() >= outer.fail_after:  # type: ignore[operator]
                    raise storage_mod.StorageError("b/data.pgdump.zst: connection reset")
                return super().read(size)

        return Failing(self.data)


def _zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True,
                          check=True).stdout  # fmt: skip


def test_fetch_object_hashes_what_it_writes_0600(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    dest = tmp_path / "obj"
    size, digest = ob.fetch_object(_BytesStorage(data), "b/data.pgdump.zst", dest, chunk_size=4096)
    assert (size, digest) == (len(data), sha(data))
    assert dest.read_bytes() == data and stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_fetch_decompress_one_pass(tmp_path: Path) -> None:
    plain = os.urandom(1024 * 1024) + b"opsbook " * 400_000  # incompressible + compressible
    stored = _zstd(plain)
    dest = tmp_path / "archive"
    got = ob.fetch_decompress(
        _BytesStorage(stored), "b/data.pgdump.zst", dest, ["zstd", "-dcq"], chunk_size=65536,
        queue_chunks=2,
    )  # fmt: skip
    assert got.ok and got.returncode == 0
    assert (got.bytes, got.sha256) == (len(stored), sha(stored))  # of the STORED bytes
    assert dest.read_bytes() == plain and stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert got.fetch_s >= 0 and got.drain_s >= 0


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_fetch_decompress_bad_frame_still_hashes_everything(tmp_path: Path, damage: str) -> None:
    # garbage: zstd stops at once (unknown header); the rest must still be read and hashed
    good = _zstd(os.urandom(3 * 1024 * 1024))
    stored = good[: len(good) // 2] if damage == "truncated" else os.urandom(4 * 1024 * 1024)
    dest = tmp_path / "archive"
    got = ob.fetch_decompress(
        _BytesStorage(stored), "b/data.pgdump.zst", dest, ["zstd", "-dcq"], chunk_size=65536
    )
    assert not got.ok and got.returncode != 0 and got.stderr.strip()
    assert (got.bytes, got.sha256) == (len(stored), sha(stored))
    assert not dest.exists()


def test_fetch_decompress_storage_error_propagates_and_cleans_up(tmp_path: Path) -> None:
    stored = _zstd(os.urandom(2 * 1024 * 1024))
    dest = tmp_path / "archive"
    with pytest.raises(storage_mod.StorageError, match="connection reset"):
        ob.fetch_decompress(
            _BytesStorage(stored, fail_after=256 * 1024), "b/data.pgdump.zst", dest,
            ["zstd", "-dcq"], chunk_size=65536,
        )  # fmt: skip
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
