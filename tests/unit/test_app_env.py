"""library/app_env.py on tmp dirs: the env file's parse/render round trip, every input error,
compare-and-set, check mode, symbolic links, the mode, owner, stale temporary files, the
masked diff, and the module run as the host runs it (a jsonargs script on the host's Python).

No test lets a value reach a message: CANARY is set, removed and mis-set, and every result and
message is searched for it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.plugins.loader import action_loader

from opsbook.lab.sampleapp.app import parse_env as app_parse_env
from tests.loaders import PROJECT_ROOT, load_library, load_path

ae = load_library("app_env")

HOST_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
JSONARGS = "<<INCLUDE_ANSIBLE_MODULE_JSON_ARGS>>"
CANARY = "canary-app-env-7f3a9c1e5b"  # a secret value: must never appear in a result


def fp(value: str) -> str:
    """The design's fingerprint rule, written out independently of the module."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def params(root: Path, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {k: v.get("default") for k, v in ae.argument_spec().items()}
    base.update(deploy_root=str(root), lock_timeout_s=2.0)
    base.update(kw)
    return base


def run(root: Path, check: bool = False, diff: bool = False, **kw: Any) -> dict[str, Any]:
    result = ae.execute(params(root, **kw), check, diff)
    assert CANARY not in json.dumps({k: v for k, v in result.items() if k != "values"})
    return result


def fail(root: Path, **kw: Any) -> str:
    """The error message of a run that must fail (checked for the canary)."""
    with pytest.raises(ae.EnvFileError) as caught:
        ae.execute(params(root, **kw), False, True)
    message = str(caught.value)
    assert CANARY not in message
    return message


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "app" / "shared").mkdir(parents=True)
    return tmp_path / "app"


def env_file(root: Path) -> Path:
    return root / "shared" / ".env"


def write(root: Path, text: str, mode: int = 0o600) -> Path:
    path = env_file(root)
    path.write_bytes(text.encode())
    path.chmod(mode)
    return path


def snapshot(path: Path) -> tuple[bytes, int, int]:
    info = path.stat()
    return path.read_bytes(), stat.S_IMODE(info.st_mode), info.st_mtime_ns


MESSY = (
    "# app settings\r\n"
    "\r\n"
    "export JWT_SECRET=abc123 # rotated by opsbook\n"
    "  NEXTAUTH_SECRET = 'single quoted $HOME'  \n"
    'DATABASE_URL="postgres://u:p@h/db?x=\\"y\\"&z=\\\\w\\n"\n'
    "EMPTY=\n"
    "SPACED=a b c  # comment\n"
    "HASHED=a#b\n"
    "NOTE_ONLY= # empty, with a note\n"
    "#JWT_SECRET_OLD=commented-out\n"
    "\t# indented comment\n"
    "DUP=first\n"
    "DUP=second\n"
    'UNICODE="caf\u00e9"\n'
    "LAST=no-final-newline"
)


# ============================================================================ the format


def test_fingerprint_is_the_design_rule() -> None:
    assert ae.fingerprint("abc") == "sha256:ba7816bf8f01"  # SHA-256("abc"), a known vector
    for value in ("", CANARY, "caf\u00e9", 'with "quotes" and \\'):
        assert ae.fingerprint(value) == fp(value)
        assert len(ae.fingerprint(value)) == len("sha256:") + 12


def test_round_trip_is_byte_identical_and_values_are_read_as_the_app_reads_them() -> None:
    lines = ae.parse_env(MESSY)
    assert ae.render_env(lines) == MESSY
    assert ae.env_values(lines) == {
        "JWT_SECRET": "abc123",
        "NEXTAUTH_SECRET": "single quoted $HOME",
        "DATABASE_URL": 'postgres://u:p@h/db?x="y"&z=\\w\\n',  # unknown escape kept as is
        "EMPTY": "",
        "SPACED": "a b c",
        "HASHED": "a#b",
        "NOTE_ONLY": "",
        "DUP": "second",  # the last one wins
        "UNICODE": "caf\u00e9",
        "LAST": "no-final-newline",
    }
    assert ae.render_env(ae.parse_env("")) == ""
    assert ae.render_env(ae.parse_env("\n\n")) == "\n\n"


def test_the_sample_app_reads_the_same_values() -> None:
    """The design: the app and the module parse alike (the app skips the lines the module
    refuses). `KEY= # note` is left out: the app reads "# note" there, the module ""."""
    text = MESSY.replace("NOTE_ONLY= # empty, with a note\n", "")
    assert app_parse_env(text) == ae.env_values(ae.parse_env(text))


@pytest.mark.parametrize(
    "value",
    ["", "plain", "a/b+c=d,e:f@g.h-i_j", "two words", 'say "hi"', "back\\slash", "#hash",
     "$HOME", "'single'", "tab\there", "caf\u00e9", " lead and trail "],
)  # fmt: skip
def test_quote_then_parse_gives_the_value_back(value: str) -> None:
    text = f"KEY={ae.quote(value)}\n"
    assert ae.env_values(ae.parse_env(text)) == {"KEY": value}
    assert app_parse_env(text) == {"KEY": value}  # and the app reads what was written
    safe = all((c.isalnum() and c.isascii()) or c in "_./:@+=,-" for c in value)
    assert (ae.quote(value) == value) is safe  # unquoted exactly when the design allows it


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("JUST_TEXT", "line 2 is not KEY=value"),
        ("1BAD=x", "line 2 is not KEY=value"),
        ("KEY WITH SPACE=x", "line 2 is not KEY=value"),
        (f'OPEN="{CANARY}', "line 2 (OPEN): the double-quoted value is not closed"),
        (f"OPEN='{CANARY}", "line 2 (OPEN): the single-quoted value is not closed"),
        (f'AFTER="{CANARY}" trailing', "line 2 (AFTER): text after the closing quote"),
    ],
)
def test_a_malformed_line_fails_naming_its_number_never_its_text(
    root: Path, line: str, expected: str
) -> None:
    path = write(root, f"OK=1\n{line}\n")
    before = snapshot(path)
    message = fail(root, set={"OK": "2"})
    assert expected in message and str(path) in message
    assert CANARY not in message
    assert snapshot(path) == before


# ============================================================================ set / remove


def test_set_replaces_in_place_and_appends_keeping_every_other_byte(root: Path) -> None:
    path = write(root, MESSY)
    result = run(
        root,
        set={"JWT_SECRET": CANARY, "NEW_KEY": "new value", "DUP": "third"},
        remove=["EMPTY", "ABSENT_KEY"],
    )
    assert result["changed"] is True
    assert result["changed_keys"] == ["DUP", "EMPTY", "JWT_SECRET", "NEW_KEY"]
    assert result["fingerprints"] == {
        "JWT_SECRET": fp(CANARY), "NEW_KEY": fp("new value"), "DUP": fp("third"),
        "EMPTY": None, "ABSENT_KEY": None,
    }  # fmt: skip
    expected = (
        MESSY.replace("export JWT_SECRET=abc123 #", f"export JWT_SECRET={CANARY} #")
        .replace("EMPTY=\n", "")
        .replace("DUP=first\nDUP=second\n", "DUP=third\n")
        + '\nNEW_KEY="new value"\n'  # the last line got its newline; the new key follows
    )
    assert path.read_bytes().decode() == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in result["msg"] and CANARY not in result["msg"]


def test_appended_lines_follow_the_files_line_ending(root: Path) -> None:
    path = write(root, "A=1\r\nB=2\r\n")
    run(root, set={"C": "3"})
    assert path.read_bytes() == b"A=1\r\nB=2\r\nC=3\r\n"


def test_same_value_keeps_the_line_as_written(root: Path) -> None:
    """A value already there (whatever its quoting) is not rewritten: unchanged, same bytes."""
    path = write(root, "A='x'\nexport B=\"y\" # note\n")
    before = snapshot(path)
    result = run(root, set={"A": "x", "B": "y"}, remove=["C"])
    assert result["changed"] is False and result["changed_keys"] == []
    assert "already holds the requested values" in result["msg"]
    assert snapshot(path) == before


def test_second_run_is_unchanged(root: Path) -> None:
    write(root, "# keep\nA=1\n")
    first = run(root, set={"A": "2", "B": CANARY}, remove=["C"])
    assert first["changed"] is True
    path = env_file(root)
    before = snapshot(path)
    second = run(root, set={"A": "2", "B": CANARY}, remove=["C"])
    assert second["changed"] is False and second["changed_keys"] == []
    assert second["fingerprints"] == first["fingerprints"]
    assert snapshot(path) == before  # not even rewritten


def test_missing_file_is_created_0600_and_its_directory_must_exist(root: Path) -> None:
    result = run(root, set={"A": "1"})
    path = env_file(root)
    assert result["changed"] is True and result["msg"].startswith(f"created {path}")
    assert path.read_text() == "A=1\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.unlink()
    result = run(root, remove=["A"])  # nothing to remove from a missing file: none created
    assert result["changed"] is False and result["fingerprints"] == {"A": None}
    assert not path.exists()
    message = fail(root, path="nowhere/.env", set={"A": "1"})
    assert f"the directory {root}/nowhere" in message and "does not exist" in message
    assert not (root / "nowhere").exists()


def test_read_only_reports_every_key_and_a_missing_file_as_empty(root: Path) -> None:
    result = run(root)
    assert result == {
        "changed": False, "path": str(env_file(root)), "changed_keys": [], "mode_fixed": False,
        "stale_removed": [], "fingerprints": {}, "msg": f"read {env_file(root)} (absent)",
    }  # fmt: skip
    assert not env_file(root).exists()
    write(root, f"A=1\nB={CANARY}\n")
    result = run(root)
    assert result["fingerprints"] == {"A": fp("1"), "B": fp(CANARY)}
    assert "values" not in result
    assert run(root, keys=["B", "NONE"])["fingerprints"] == {"B": fp(CANARY), "NONE": None}


def test_return_values_only_when_asked(root: Path) -> None:
    write(root, f"A=1\nB={CANARY}\n")
    result = ae.execute(params(root, keys=["B", "NONE"], return_values=True), False, False)
    assert result["values"] == {"B": CANARY, "NONE": None}
    result = ae.execute(params(root, set={"C": "3"}, return_values=True), False, False)
    assert result["values"] == {"C": "3"}  # by default the keys set and removed


# ============================================================================ input errors


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"set": {"BAD KEY": CANARY}}, "set: 'BAD KEY' is not a valid key name"),
        ({"set": {"9LIVES": CANARY}}, "set: '9LIVES' is not a valid key name"),
        ({"remove": ["A-B"]}, "remove: 'A-B' is not a valid key name"),
        ({"keys": [""]}, "keys: '' is not a valid key name"),
        ({"expect": {"a.b": ""}}, "expect: 'a.b' is not a valid key name"),
        ({"set": {"K": CANARY + "\n"}}, "set: the value of K contains LF"),
        ({"set": {"K": CANARY + "\r"}}, "set: the value of K contains CR"),
        ({"set": {"K": "\0" + CANARY}}, "set: the value of K contains NUL"),
        ({"set": {"K": 8080}}, "set: the value of K is a int, not a string"),
        ({"set": {"K": "\udcff" + CANARY}}, "set: the value of K is not valid Unicode text"),
        ({"set": {"A": CANARY}, "remove": ["A"]}, "A both in set and in remove"),
        ({"set": {"A": "x"}, "expect": {"A": CANARY}}, "expect: A must be a fingerprint"),
        ({"set": {"A": "x"}, "expect": {"A": "sha256:ABC"}}, "expect: A must be a fingerprint"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    root: Path, kw: dict[str, Any], expected: str
) -> None:
    path = write(root, "A=1\n", mode=0o644)
    (root / "shared" / ".env.app_env-0a1b.tmp").write_text("left over")
    before = snapshot(path)
    message = fail(root, **kw)
    assert expected in message, message
    assert snapshot(path) == before  # not even the mode was fixed
    assert (root / "shared" / ".env.app_env-0a1b.tmp").exists()


def test_deploy_root_must_be_an_absolute_directory(root: Path) -> None:
    assert "deploy_root must be absolute" in fail(root, deploy_root="relative/root")
    assert "is not a directory" in fail(root, deploy_root=str(root / "missing"))
    (root / "shared" / "dir.env").mkdir()
    assert "is not a regular file" in fail(root, path="shared/dir.env")


def test_a_file_that_is_not_utf8_is_refused(root: Path) -> None:
    env_file(root).write_bytes(b"A=\xff\xfe\n")
    assert "is not UTF-8 (byte 2)" in fail(root)


# ============================================================================ compare-and-set


def test_expect_matching_writes(root: Path) -> None:
    path = write(root, "JWT_SECRET=old-value\n")
    result = run(
        root,
        set={"JWT_SECRET": CANARY, "JWT_SECRET_PREVIOUS": "old-value"},
        expect={"JWT_SECRET": fp("old-value"), "JWT_SECRET_PREVIOUS": ""},
    )
    assert result["changed"] is True
    assert path.read_text() == f"JWT_SECRET={CANARY}\nJWT_SECRET_PREVIOUS=old-value\n"


def test_expect_mismatch_fails_naming_the_key_and_both_fingerprints(root: Path) -> None:
    path = write(root, "JWT_SECRET=someone-else\nX=1\n", mode=0o644)
    before = snapshot(path)
    message = fail(
        root,
        set={"JWT_SECRET": CANARY},
        expect={"JWT_SECRET": fp("old-value"), "X": fp("1"), "GONE": ""},
    )
    assert f"JWT_SECRET is {fp('someone-else')}, expected {fp('old-value')}" in message
    assert "X is" not in message and "GONE" not in message  # only the keys that differ
    assert "someone-else" not in message and "old-value" not in message
    assert snapshot(path) == before

    message = fail(root, set={"Y": "2"}, expect={"X": ""})
    assert f"X is {fp('1')}, expected absent" in message
    message = fail(root, set={"Y": "2"}, expect={"Y": fp("anything")})
    assert f"Y is absent, expected {fp('anything')}" in message
    assert snapshot(path) == before


def test_expect_mismatch_is_ok_when_the_change_is_already_there(root: Path) -> None:
    """An interrupted run wrote the file, then died: the re-run finds its own result."""
    change = {
        "set": {"JWT_SECRET": CANARY, "JWT_SECRET_PREVIOUS": "old-value"},
        "remove": ["JWT_SECRET_PENDING"],
        "expect": {"JWT_SECRET": fp("old-value"), "JWT_SECRET_PENDING": fp(CANARY)},
    }
    write(root, f"JWT_SECRET=old-value\nJWT_SECRET_PENDING={CANARY}\n")
    assert run(root, **change)["changed"] is True
    path = env_file(root)
    before = snapshot(path)
    again = run(root, **change)
    assert again["changed"] is False and snapshot(path) == before
    assert "an earlier run applied them" in again["msg"]
    # Half-applied (not what set/remove produce): refused, not finished blindly.
    write(root, f"JWT_SECRET={CANARY}\n")
    assert "JWT_SECRET is" in fail(root, **change)


def test_expect_on_a_read_is_a_check(root: Path) -> None:
    write(root, "A=1\n")
    assert run(root, expect={"A": fp("1"), "B": ""})["changed"] is False
    assert f"A is {fp('1')}, expected {fp('2')}" in fail(root, expect={"A": fp("2")})


# ============================================================================ check mode, diff


def test_check_mode_reports_the_change_and_writes_nothing(root: Path) -> None:
    path = write(root, "A=1\nB=2\n", mode=0o644)
    stale = root / "shared" / ".env.app_env-deadbeef.tmp"
    stale.write_text("partial")
    before = snapshot(path)
    result = run(root, check=True, set={"A": CANARY}, remove=["B"])
    assert result["changed"] is True and result["changed_keys"] == ["A", "B"]
    assert result["fingerprints"] == {"A": fp(CANARY), "B": None}  # as it would be
    assert result["mode_fixed"] is True and result["stale_removed"] == [str(stale)]
    assert result["msg"].startswith(f"would update {path}")
    assert "would be set to 0600" in result["msg"] and "would remove 1" in result["msg"]
    assert snapshot(path) == before and stale.exists()
    missing = run(root, check=True, path="shared/new.env", set={"A": "1"})
    assert missing["changed"] is True and not (root / "shared" / "new.env").exists()


def test_diff_masks_every_value_with_its_fingerprint(root: Path) -> None:
    write(root, f"# header\nexport A={CANARY} # note\n#OLD={CANARY}\nB='{CANARY}'\n")
    result = run(root, diff=True, set={"A": "new-" + CANARY}, remove=["B"])
    diff = result["diff"]
    assert CANARY not in json.dumps(diff)
    assert diff["before"] == (
        f"# header\nexport A=******** ({fp(CANARY)}) # note\n#OLD=********\n"
        f"B=******** ({fp(CANARY)})\n"
    )
    assert diff["after"] == (
        f"# header\nexport A=******** ({fp('new-' + CANARY)}) # note\n#OLD=********\n"
    )
    assert diff["before_header"] == diff["after_header"] == str(env_file(root))
    assert "diff" not in run(root, diff=True, set={"A": "new-" + CANARY})  # unchanged: none
    assert "diff" not in run(root, set={"A": "other"})  # not asked for


# ============================================================================ the file on disk


def test_symlink_is_followed_and_kept(root: Path) -> None:
    release = root / "releases" / "1.0.0"
    release.mkdir(parents=True)
    target = write(root, "A=1\n")
    link = release / ".env"
    link.symlink_to("../../shared/.env")
    result = run(root, path="releases/1.0.0/.env", set={"A": "2"})
    assert result["path"] == str(target)
    assert link.is_symlink() and os.readlink(link) == "../../shared/.env"
    assert target.read_text() == "A=2\n"
    # A dangling link: the file it names is created, the link stays.
    target.unlink()
    result = run(root, path="releases/1.0.0/.env", set={"A": "3"})
    assert link.is_symlink() and target.read_text() == "A=3\n"


def test_mode_is_tightened_on_a_read_and_on_a_write(root: Path) -> None:
    path = write(root, "A=1\n", mode=0o644)
    result = run(root)
    assert result["changed"] is True and result["mode_fixed"] is True
    assert "mode 0644 set to 0600" in result["msg"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run(root)["changed"] is False
    path.chmod(0o400)  # stricter is also not 0600: the app's user must read it, nothing more
    result = run(root, set={"A": "2"})
    assert result["mode_fixed"] is True and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_and_group_are_kept_and_a_new_file_gets_the_directorys(root: Path) -> None:
    path = write(root, "A=1\n")
    os.chown(path, 4321, 4322)
    run(root, set={"A": "2"})
    assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)
    os.chown(root / "shared", 5432, 5433)
    path.unlink()
    run(root, set={"A": "3"})
    assert (path.stat().st_uid, path.stat().st_gid) == (5432, 5433)


def test_stale_temporary_files_of_a_killed_run_are_removed(root: Path) -> None:
    write(root, "A=1\n")
    shared = root / "shared"
    stale = [shared / ".env.app_env-0123abcd.tmp", shared / ".env.app_env-ff.tmp"]
    others = [shared / ".env.app_env-xyz.tmp", shared / ".other.app_env-00.tmp", shared / "x.tmp"]
    for path in stale + others:
        path.write_text("left over")
    result = run(root)  # even a read sweeps them: they may hold secrets
    assert result["changed"] is True and result["stale_removed"] == [str(p) for p in stale]
    assert "removed 2 temporary file(s) of an interrupted run" in result["msg"]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)


def test_a_failed_write_leaves_the_file_and_no_temporary(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(root, "A=1\n")
    before = snapshot(path)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ae.os, "replace", broken_replace)
    with pytest.raises(OSError):
        ae.execute(params(root, set={"A": CANARY}), False, False)
    assert snapshot(path) == before
    assert sorted(p.name for p in (root / "shared").iterdir()) == [".env"]


def test_the_written_file_was_created_exclusively_and_is_whole(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is opened O_EXCL with mode 0600 from its first byte."""
    seen: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if ".app_env-" in str(path):
            seen.append((flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(ae.os, "open", spy)
    run(root, set={"A": "1"})
    assert len(seen) == 1
    flags, mode = seen[0]
    assert flags & os.O_EXCL and flags & os.O_CREAT and mode == 0o600


def test_a_writer_holding_the_directory_waits_out_another(root: Path) -> None:
    path = write(root, "A=1\n")
    before = snapshot(path)
    fd = os.open(root / "shared", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        message = fail(root, set={"A": "2"}, lock_timeout_s=0.2)
        assert "another run is writing in" in message and "waited 0.2 s" in message
        assert run(root, check=True, set={"A": "2"})["changed"] is True  # check mode: no lock
    finally:
        os.close(fd)
    assert snapshot(path) == before


# ============================================================================ as the host runs it


def host_run(args: dict[str, Any], checked: bool = True) -> tuple[int, dict[str, Any], str]:
    """The module file with its arguments substituted, on the host's Python (isolated, no
    site packages): what Ansible pipes to the app hosts."""
    source = (PROJECT_ROOT / "library" / "app_env.py").read_text()
    assert "module_utils" not in source and "ansible_collections" not in source
    assert JSONARGS in source
    if checked:
        args = {**args, "_opsbook_checked": True}
    done = subprocess.run(
        [HOST_PYTHON, "-I", "-S", "-"], input=source.replace(JSONARGS, json.dumps(args)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout), done.stdout + done.stderr


def test_the_module_runs_as_a_stdlib_jsonargs_script(root: Path) -> None:
    write(root, "A=1\n")
    args = {"deploy_root": str(root), "set": {"B": CANARY}, "_ansible_check_mode": True,
            "_ansible_diff": True}  # fmt: skip
    rc, out, text = host_run(args)
    assert rc == 0 and out["changed"] is True and out["fingerprints"] == {"B": fp(CANARY)}
    assert out["diff"]["after"] == f"A=******** ({fp('1')})\nB=******** ({fp(CANARY)})\n"
    assert env_file(root).read_text() == "A=1\n" and CANARY not in text

    rc, out, text = host_run({**args, "_ansible_check_mode": False})
    assert rc == 0 and out["changed"] is True and CANARY not in text
    assert env_file(root).read_text() == f"A=1\nB={CANARY}\n"

    rc, out, text = host_run({"deploy_root": str(root), "set": {"B": "x\n" + CANARY}})
    assert rc == 1 and out["failed"] is True and out["changed"] is False
    assert out["msg"] == (
        "app_env: set: the value of B contains LF (not allowed in an env file line); "
        "nothing was changed"
    )
    assert CANARY not in text


def test_the_module_refuses_to_run_without_its_action_plugin(root: Path) -> None:
    rc, out, _ = host_run({"deploy_root": str(root), "set": {"A": "1"}}, checked=False)
    assert rc == 1 and "runs through its action plugin" in out["msg"]
    assert not env_file(root).exists()


def in_process(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """main() on JSON arguments, in this process (so that a fault can be injected)."""
    rc = ae.main(json.dumps({**args, "_opsbook_checked": True}))
    out = capsys.readouterr().out
    assert CANARY not in out
    result = json.loads(out)
    assert rc == (1 if result.get("failed") else 0)
    return result


def test_a_failure_says_what_it_left(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(root, "A=1\n")
    stale = root / "shared" / ".env.app_env-0a.tmp"
    stale.write_text("left over")
    args = {"deploy_root": str(root), "set": {"A": CANARY}}

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ae.os, "replace", disk_full)
        result = in_process(args, capsys)
    assert result["failed"] is True and result["changed"] is True  # the stale file went
    assert result["msg"] == (
        f"app_env: [Errno 28] No space left on device; {path} was left as it was"
    )
    assert path.read_text() == "A=1\n" and not stale.exists()

    def broken_fsync(directory: str) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(ae, "fsync_directory", broken_fsync)
        result = in_process(args, capsys)
    assert result["changed"] is True and result["msg"].endswith(f"the new {path} is in place")

    def bug(*_: Any) -> None:
        raise ValueError(f"a bug whose message holds {CANARY}")

    with monkeypatch.context() as patch:
        patch.setattr(ae, "apply_changes", bug)
        result = in_process({**args, "set": {"A": "x"}}, capsys)
    assert result["changed"] is False
    assert result["msg"].startswith("app_env: unexpected error ValueError at line ")
    assert result["msg"].endswith("; nothing was changed")


# ============================================================================ the action plugin


def test_set_is_no_log_and_the_action_plugin_masks_it_in_free_text() -> None:
    """Defence in depth: the module puts no value in a message; were one to (a traceback in
    module_stderr), the controller masks the values of `set` - but never in `values`."""
    assert ae.argument_spec()["set"]["no_log"] is True
    action_loader.add_directory(str(PROJECT_ROOT / "action_plugins"))
    plugin = load_path(
        "opsbook_test_action_app_env", PROJECT_ROOT / "action_plugins" / "app_env.py"
    )
    result = plugin.scrubbed(
        {"msg": f"a {CANARY} b", "module_stderr": f"Traceback: {CANARY}", "stdout": CANARY,
         "values": {"A": CANARY}, "fingerprints": {"A": fp(CANARY)}},
        [CANARY, ""],
    )  # fmt: skip
    assert result["msg"] == "a ******** b" and CANARY not in result["module_stderr"]
    assert CANARY not in result["stdout"]
    assert result["values"] == {"A": CANARY} and result["fingerprints"] == {"A": fp(CANARY)}
