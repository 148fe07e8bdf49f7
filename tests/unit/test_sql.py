"""module_utils/opsbook_sql.py: the one SQL splitter of pg_migrate and pg_datafix - the union of
both modules' former splitter tests, run against it."""

from __future__ import annotations

import re

import pytest

from tests.loaders import load_module_utils

sql_utils = load_module_utils("opsbook_sql")
split_sql = sql_utils.split_sql


def texts(sql: str) -> list[str]:
    return [s.text for s in split_sql(sql)]


# ------------------------------------------------------------------ where statements end


def test_split_plain_statements_and_lines() -> None:
    sql = "-- header\nCREATE TABLE a (id int);\n\nINSERT INTO a VALUES (1);\nSELECT 1"
    statements = split_sql(sql)
    assert [s.text for s in statements] == [
        "-- header\nCREATE TABLE a (id int)",
        "INSERT INTO a VALUES (1)",
        "SELECT 1",
    ]
    assert [s.line for s in statements] == [2, 4, 5]
    assert [s.index for s in statements] == [1, 2, 3]
    assert statements[0].text_line == 1
    assert statements[0].code == "CREATE TABLE a (id int)"


def test_split_on_semicolons_outside_quotes_identifiers_dollars_and_comments() -> None:
    sql = (
        "-- header; not a statement\n"
        "UPDATE t SET a = 'x;y', b = 'it''s; fine' WHERE c = E'a\\'b;c';\n"
        'SELECT "we;ird" FROM "t""q;";\n'
        "/* block ; /* nested ; */ still ; */ DO $body$ BEGIN PERFORM 1; END $body$;\n"
        "SELECT $$a;b$$, $1, foo$bar;\n"
        "SELECT 1"
    )
    assert texts(sql) == [
        "-- header; not a statement\n"
        "UPDATE t SET a = 'x;y', b = 'it''s; fine' WHERE c = E'a\\'b;c'",
        'SELECT "we;ird" FROM "t""q;"',
        "/* block ; /* nested ; */ still ; */ DO $body$ BEGIN PERFORM 1; END $body$",
        "SELECT $$a;b$$, $1, foo$bar",
        "SELECT 1",
    ]


def test_split_ignores_semicolons_in_strings_identifiers_and_comments() -> None:
    sql = (
        "INSERT INTO t VALUES ('a;b', 'it''s; fine');\n"
        'CREATE TABLE "we;ird" (x int); -- trailing; comment\n'
        "/* block; /* nested; */ still comment; */ SELECT E'back\\'slash;';\n"
        "SELECT 'x'"
    )
    assert texts(sql) == [
        "INSERT INTO t VALUES ('a;b', 'it''s; fine')",
        'CREATE TABLE "we;ird" (x int)',
        "-- trailing; comment\n/* block; /* nested; */ still comment; */ SELECT E'back\\'slash;'",
        "SELECT 'x'",
    ]


def test_a_backslash_escapes_only_in_an_e_string() -> None:
    # 'a\' is a whole string (standard strings take no backslash escapes): the ; ends it
    assert texts("SELECT 'a\\'; SELECT 2") == ["SELECT 'a\\'", "SELECT 2"]
    # ...and so is a string after an identifier ending in e: WHERE'...' is no E'' string
    assert texts("SELECT 1 WHERE'a\\'; SELECT 2") == ["SELECT 1 WHERE'a\\'", "SELECT 2"]
    assert texts("SELECT e'a\\';b'; SELECT 2") == ["SELECT e'a\\';b'", "SELECT 2"]


def test_split_dollar_quotes_with_and_without_tags() -> None:
    sql = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END; $$;\n"
        "DO $body$ BEGIN PERFORM 'a;$$'; END $body$;\n"
        "SELECT $1abc"  # not a dollar quote: $1 is a parameter
    )
    statements = texts(sql)
    assert len(statements) == 3
    assert statements[0].endswith("$$")
    assert statements[1].startswith("DO $body$")


def test_split_sql_standard_function_body() -> None:
    sql = (
        "CREATE OR REPLACE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN a > 0 THEN a + b ELSE b END;\n  SELECT 1;\nEND;\n"
        "SELECT add(1, 2);"
    )
    statements = texts(sql)
    assert len(statements) == 2
    assert statements[0].endswith("END")
    assert statements[1] == "SELECT add(1, 2)"


def test_begin_atomic_bodies_of_procedures_and_the_same_line() -> None:
    sql = (
        "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT f()"
    )
    assert [s.words[:2] for s in split_sql(sql)] == [
        ["CREATE", "PROCEDURE"],
        ["CREATE", "FUNCTION"],
        ["SELECT", "F"],
    ]


def test_a_begin_outside_a_routine_is_transaction_control() -> None:
    assert texts("BEGIN; UPDATE t SET a = 1; END;") == ["BEGIN", "UPDATE t SET a = 1", "END"]


def test_split_records_the_line_of_the_first_code_character_and_drops_empty_statements() -> None:
    sql = (
        "\n-- comment\n\nSELECT 1;;\n  ;\n/* c */\nUPDATE t\nSET a = 1;\n-- trailing comment only\n"
    )
    statements = split_sql(sql)
    assert [(s.index, s.line) for s in statements] == [(1, 4), (2, 7)]
    assert statements[1].preview == "UPDATE t SET a = 1"
    assert statements[1].words[:2] == ["UPDATE", "T"]


def test_lines_are_counted_through_multi_line_literals_and_comments() -> None:
    sql = "SELECT 'a\nb', $$c\nd$$, \"e\nf\" /* g\nh */;\nSELECT 2;"
    assert [(s.line, s.text_line) for s in split_sql(sql)] == [(1, 1), (6, 6)]


def test_split_only_comments_is_empty() -> None:
    assert split_sql("-- nothing here\n/* nor here */\n;;\n") == []


def test_a_byte_order_mark_is_not_code() -> None:
    (stmt,) = split_sql("\ufeffBEGIN;")
    assert stmt.words == ["BEGIN"] and stmt.code == "BEGIN"


def test_skeleton_hides_literals_from_keyword_checks() -> None:
    (stmt,) = split_sql("UPDATE t SET note = 'VACUUM; COMMIT' WHERE \"COMMIT\" = $$BEGIN$$")
    assert "VACUUM" not in stmt.words and "COMMIT" not in stmt.words and "BEGIN" not in stmt.words
    assert stmt.skeleton == "UPDATE t SET note = '' WHERE \"\" = $$ $$"
    assert stmt.code == "UPDATE t SET note = 'VACUUM; COMMIT' WHERE \"COMMIT\" = $$BEGIN$$"


def test_comments_are_reported_with_where_they_stand() -> None:
    script = sql_utils.parse_sql("-- a\nSELECT 1;\n-- b\nUPDATE t -- c\nSET a = 1;\n-- d")
    assert [(c.line, c.text, c.after, c.inside) for c in script.comments] == [
        (1, "-- a", 0, False),
        (3, "-- b", 1, False),
        (4, "-- c", 1, True),
        (6, "-- d", 2, False),
    ]


# ------------------------------------------------------------------ what cannot be split


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT 'open", "line 1: unterminated quoted string"),
        ('SELECT 1;\nSELECT "open', "line 2: unterminated quoted identifier"),
        ("SELECT $x$ never closed", "line 1: unterminated dollar-quoted string $x$"),
        ("DO $x$ BEGIN", "line 1: unterminated dollar-quoted string $x$"),
        ("SELECT 1; /* open /* nested */", "line 1: unterminated /* comment"),
        ("SELECT 1 /* open", "line 1: unterminated /* comment"),
        ("SELECT 1;\n\n/* a\nb */ SELECT 'x\ny", "line 4: unterminated quoted string"),
        ("SELECT 1;\n\\set x 1\n", "line 2: psql meta-command '\\\\set x 1' is not SQL"),
        ("SELECT 1\n  \\i other.sql", "line 2: psql meta-command"),
    ],
)
def test_split_errors_name_the_line(sql: str, fragment: str) -> None:
    with pytest.raises(sql_utils.SqlParseError, match=re.escape(fragment)):
        split_sql(sql)


def test_a_backslash_inside_a_statement_is_not_a_meta_command() -> None:
    assert texts("SELECT 'a' \\\n;") == ["SELECT 'a' \\"]
    assert texts("SELECT E'a\n\\\\b';") == ["SELECT E'a\n\\\\b'"]


def test_one_splitter_for_both_modules() -> None:
    from tests.loaders import load_library

    for name in ("pg_datafix", "pg_migrate"):
        module = load_library(name)
        assert module.split_sql is split_sql and module.SqlParseError is sql_utils.SqlParseError
