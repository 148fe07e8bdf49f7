# Copyright: opsbook contributors
# Apache-2.0
"""Split SQL text into statements the way psql does: the one splitter of every opsbook module
(pg_migrate's migration files, pg_datafix's fix files and verify queries).

A semicolon ends a statement, except inside ``'...'`` strings (``''`` escapes a quote;
``E'...'`` also takes backslash escapes), ``"..."`` identifiers, dollar quotes (``$$...$$``,
``$tag$...$tag$``), ``--`` comments, nested ``/* */`` comments and the ``BEGIN ATOMIC ... END``
body of a SQL-standard ``CREATE FUNCTION`` / ``CREATE PROCEDURE``. A line that starts with a
backslash is a psql meta-command (``\\set``, ``\\i``, ...): only psql runs it, so it is an
error here, as an unterminated quote or comment is.

What a module does with the statements - refusing transaction control, counting rows,
running a file outside a transaction - is that module's policy, built on this output.

Modules import it as
``ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_sql``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# an identifier or keyword ($ may follow the first character: foo$bar is one word)
_WORD_RE = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*")
_DOLLAR_TAG_RE = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_IDENT_CHAR_RE = re.compile(r"[\w$]")
PREVIEW_CHARS = 120


class SqlParseError(ValueError):
    """The text cannot be split into statements (an unterminated quote or comment, a psql
    meta-command); the message starts with the line: ``line 3: unterminated quoted string``."""


def preview(text: str, width: int = PREVIEW_CHARS) -> str:
    """One line, whitespace collapsed, truncated to ``width`` characters (with an ellipsis)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "\u2026"


def line_at(text: str, pos: int) -> int:
    """The line (from 1) of offset ``pos`` in ``text``."""
    return text.count("\n", 0, pos) + 1


@dataclass(frozen=True)
class Statement:
    """One statement: its text as written and two one-line views of it."""

    index: int  # its number in the text, from 1
    line: int  # line of its first code character (comments before it not counted)
    text_line: int  # line where ``text`` (which may open with comments) starts
    text: str  # as written, stripped, without the semicolon that ends it
    code: str  # comments removed, whitespace collapsed to one line; literals kept
    skeleton: str  # ``code`` with the contents of literals, quoted identifiers and
    # dollar quotes removed ('', "", $$ $$): what keyword checks look at

    @property
    def words(self) -> list[str]:
        """Its keywords and identifiers, upper case, never a word inside a literal."""
        return [w.upper() for w in _WORD_RE.findall(self.skeleton)]

    @property
    def preview(self) -> str:
        return preview(self.code)


@dataclass(frozen=True)
class Comment:
    """A ``--`` comment and where it stands."""

    line: int
    text: str  # stripped, ``--`` included
    after: int  # how many statements ended before it
    inside: bool  # it stands inside a statement (after the statement's first code character)


@dataclass
class SqlScript:
    """What splitting found: the statements, and every ``--`` comment."""

    statements: list[Statement] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)


def split_sql(text: str) -> list[Statement]:
    """The statements of ``text`` (empty ones dropped); raises SqlParseError."""
    return parse_sql(text).statements


def parse_sql(text: str) -> SqlScript:
    """The statements and the ``--`` comments of ``text``; raises SqlParseError."""
    return _Splitter(text).run()


def _is_routine(words: list[str]) -> bool:
    """CREATE [OR REPLACE] FUNCTION|PROCEDURE: its SQL-standard body may hold semicolons."""
    if words[:1] != ["CREATE"]:
        return False
    rest = words[3:4] if words[1:3] == ["OR", "REPLACE"] else words[1:2]
    return rest in (["FUNCTION"], ["PROCEDURE"])


class _Splitter:
    """One pass over the text; ``run()`` returns the SqlScript."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1
        self.line_has_code = False  # a code character since the last newline
        self.script = SqlScript()
        self._begin(0)

    def _begin(self, start: int) -> None:
        self.start = start  # offset of the current statement's raw text
        self.start_line = self.line
        self.first_line: int | None = None  # line of its first code character
        self.code: list[str] = []
        self.skel: list[str] = []
        self.words: list[str] = []
        self.depth = 0  # BEGIN ATOMIC ... END nesting

    def run(self) -> SqlScript:
        text, n = self.text, len(self.text)
        while self.i < n:
            c = text[self.i]
            if c.isspace() or c == "\ufeff":  # a byte order mark is no code either
                self._space(c)
            elif c == "-" and text.startswith("--", self.i):
                self._line_comment()
            elif c == "/" and text.startswith("/*", self.i):
                self._block_comment()
            elif c == "\\" and not self.line_has_code:
                self._meta_command()
            elif c == ";" and self.depth == 0:
                self._finish(self.i)
                self.i += 1
                self._begin(self.i)
            else:
                self._code(c)
        self._finish(n)
        return self.script

    # -------------------------------------------------------------- what is not code

    def _space(self, c: str) -> None:
        if c == "\n":
            self.line += 1
            self.line_has_code = False
        kept = c if c.isspace() else " "
        self._keep(kept, kept)
        self.i += 1

    def _line_comment(self) -> None:
        end = self.text.find("\n", self.i)
        end = len(self.text) if end < 0 else end
        self.script.comments.append(
            Comment(
                line=self.line,
                text=self.text[self.i : end].strip(),
                after=len(self.script.statements),
                inside=self.first_line is not None,
            )
        )
        self._keep(" ", " ")
        self.i = end

    def _block_comment(self) -> None:
        text, n = self.text, len(self.text)
        depth, j = 1, self.i + 2
        while depth and j < n:
            if text.startswith("/*", j):
                depth, j = depth + 1, j + 2
            elif text.startswith("*/", j):
                depth, j = depth - 1, j + 2
            else:
                j += 1
        if depth:
            raise SqlParseError(f"line {self.line}: unterminated /* comment")
        self._skip_to(j)
        self._keep(" ", " ")

    def _meta_command(self) -> None:
        end = self.text.find("\n", self.i)
        command = self.text[self.i : len(self.text) if end < 0 else end].strip()
        raise SqlParseError(
            f"line {self.line}: psql meta-command {preview(command, 40)!r} is not SQL "
            "(only psql runs it); the file must hold SQL statements only"
        )

    # -------------------------------------------------------------- code

    def _code(self, c: str) -> None:
        if self.first_line is None:
            self.first_line = self.line
        self.line_has_code = True
        if c == "'":
            self._quoted("'", "string", backslash=self._escape_string())
        elif c == '"':
            self._quoted('"', "identifier", backslash=False)
        elif c == "$" and not self._after_ident(self.i) and self._dollar_quoted():
            return
        elif _WORD_RE.match(c):
            self._word()
        else:
            self._keep(c, c)
            self.i += 1

    def _after_ident(self, pos: int) -> bool:
        return pos > 0 and bool(_IDENT_CHAR_RE.match(self.text[pos - 1]))

    def _escape_string(self) -> bool:
        """E'...' (a lone E or e right before the quote): backslashes escape."""
        i = self.i
        return i > 0 and self.text[i - 1] in "eE" and not self._after_ident(i - 1)

    def _quoted(self, quote: str, kind: str, backslash: bool) -> None:
        text, n, start, j = self.text, len(self.text), self.i, self.i + 1
        while True:
            if j >= n:
                raise SqlParseError(f"line {self.line}: unterminated quoted {kind}")
            ch = text[j]
            if (backslash and ch == "\\") or text.startswith(quote * 2, j):
                j += 2  # an escaped character, or a doubled quote
            elif ch == quote:
                break
            else:
                j += 1
        self._keep(text[start : j + 1], quote * 2)
        self._skip_to(j + 1)

    def _dollar_quoted(self) -> bool:
        match = _DOLLAR_TAG_RE.match(self.text, self.i)
        if not match:
            return False
        tag = match.group(0)
        end = self.text.find(tag, match.end())
        if end < 0:
            raise SqlParseError(f"line {self.line}: unterminated dollar-quoted string {tag}")
        self._keep(self.text[self.i : end + len(tag)], "$$ $$")
        self._skip_to(end + len(tag))
        return True

    def _word(self) -> None:
        match = _WORD_RE.match(self.text, self.i)
        if match is None:
            raise AssertionError("match is not None")
        word = match.group(0)
        self.words.append(word.upper())
        if _is_routine(self.words):
            upper = self.words[-1]
            if upper == "BEGIN" or (upper == "CASE" and self.depth > 0):
                self.depth += 1
            elif upper == "END" and self.depth > 0:
                self.depth -= 1
        self._keep(word, word)
        self.i = match.end()

    # -------------------------------------------------------------- bookkeeping

    def _keep(self, code: str, skeleton: str) -> None:
        self.code.append(code)
        self.skel.append(skeleton)

    def _skip_to(self, j: int) -> None:
        """Move past text[i:j], counting its newlines."""
        self.line += self.text.count("\n", self.i, j)
        self.i = j

    def _finish(self, end: int) -> None:
        if self.first_line is None:
            return
        raw = self.text[self.start : end]
        lead = raw[: len(raw) - len(raw.lstrip())]
        statements = self.script.statements
        statements.append(
            Statement(
                index=len(statements) + 1,
                line=self.first_line,
                text_line=self.start_line + lead.count("\n"),
                text=raw.strip(),
                code=" ".join("".join(self.code).split()),
                skeleton=" ".join("".join(self.skel).split()),
            )
        )
