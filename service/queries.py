"""Named SQL statements, loaded from `sql/` once at start-up and compiled for one dialect.

Files use the aiosql layout: `-- name: upsert_customer` above each statement, comment lines under it
as its docstring, parameters written `:email`. `sql/<domain>.sql` holds what both databases accept;
`sql/<domain>.<dialect>.sql` overrides a name (or adds one) where the dialects truly differ.

A comment line `-- plan: per call` marks a statement whose best plan depends on its values (a
report over a day or over a year): PostgreSQL plans it afresh each time, where every other
statement keeps one generic plan per connection (see `service.postgres_backend`). A comment line
`-- limit: report` marks a report that may read a whole range of rows: it runs under
REPORT_STATEMENT_TIMEOUT_MS instead of DB_STATEMENT_TIMEOUT_MS.

A statement that starts with SELECT (or WITH) and names no INSERT, UPDATE, DELETE or REPLACE is
`reads_only`: on SQLite it is queued on a read lane, and everything else takes the write lock (see
`service.sqlite_backend`). A read that looks like a write only costs it the shorter queue.

Compiling here, once, spares every request SQLAlchemy's `text()` parse and compile.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy.sql import ClauseElement

DIALECTS = ("sqlite", "postgresql")

_NAME_LINE = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)
_PLAN_PER_CALL = "plan: per call"
_REPORT_LIMIT = "limit: report"
_WRITING = re.compile(r"\b(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
# String literals, quoted identifiers and comments pass through untouched; `::` is a PostgreSQL cast.
_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|::|:([A-Za-z_][A-Za-z0-9_]*)""")


class Statement(ClauseElement):
    """One named statement, compiled for one dialect. `values()` binds it, as `databases` expects."""

    __visit_name__ = "named_statement"
    inherit_cache = False

    def __init__(
        self,
        name: str,
        doc: str,
        source: str,
        dialect: str,
        planned_per_call: bool = False,
        report: bool = False,
    ) -> None:
        self.name = name
        self.doc = doc
        self.source = source
        self.dialect = dialect
        self.planned_per_call = planned_per_call
        self.report = report
        self.parameters, self.sql = _compile(source, dialect)
        self.reads_only = _reads_only(source)

    def values(self, **values: Any) -> BoundStatement:
        missing = [name for name in self.parameters if name not in values]
        if missing:
            raise KeyError(f"statement {self.name} needs :{', :'.join(missing)}")
        if self.dialect == "postgresql":
            return BoundStatement(self, [values[name] for name in self.parameters])
        return BoundStatement(self, {name: values[name] for name in self.parameters})

    def __repr__(self) -> str:
        return f"<Statement {self.name} ({self.dialect})>"

    def __str__(self) -> str:
        # ClauseElement's own __str__ would ask SQLAlchemy to compile this; the SQL is already here.
        return self.sql


class BoundStatement(ClauseElement):
    """A statement with its arguments: a list for asyncpg's $n, a dict for sqlite3's :name."""

    __visit_name__ = "bound_named_statement"
    inherit_cache = False

    def __init__(self, statement: Statement, arguments: list[Any] | dict[str, Any]) -> None:
        self.statement = statement
        self.arguments = arguments
        self.name = statement.name

    def __str__(self) -> str:
        return self.statement.sql


def bound(query: ClauseElement) -> BoundStatement | None:
    """A named statement ready to send, or None for anything else (a plain string's TextClause).

    `databases` binds only when it is given values, so a statement without parameters arrives unbound.
    """
    if isinstance(query, BoundStatement):
        return query
    if isinstance(query, Statement):
        return query.values()
    return None


def _reads_only(source: str) -> bool:
    words = re.sub(r"--[^\n]*", "", source).split(None, 1)
    return bool(words) and words[0].upper() in ("SELECT", "WITH") and not _WRITING.search(source)


def _compile(source: str, dialect: str) -> tuple[tuple[str, ...], str]:
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)
        if name not in names:
            names.append(name)
        if dialect == "postgresql":
            return f"${names.index(name) + 1}"
        return f":{name}"

    compiled = _TOKENS.sub(replace, source)
    return tuple(names), compiled


@dataclass(frozen=True)
class _Source:
    name: str
    doc: str
    sql: str
    planned_per_call: bool
    report: bool


def parse_statements(text: str) -> Iterator[_Source]:
    """Split one .sql file into its named statements."""
    marks = list(_NAME_LINE.finditer(text))
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip("\n")
        doc_lines: list[str] = []
        sql_lines: list[str] = []
        for line in body.splitlines():
            if not sql_lines and line.lstrip().startswith("--"):
                doc_lines.append(line.lstrip()[2:].strip())
            else:
                sql_lines.append(line)
        sql = "\n".join(sql_lines).strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"statement {mark.group(1)} has no SQL")
        markers = {_PLAN_PER_CALL, _REPORT_LIMIT}
        doc = " ".join(line for line in doc_lines if line not in markers)
        yield _Source(mark.group(1), doc, sql, _PLAN_PER_CALL in doc_lines, _REPORT_LIMIT in doc_lines)


class Queries:
    """Every named statement for one dialect, reachable as attributes: `queries.upsert_customer`."""

    def __init__(self, statements: Mapping[str, Statement]) -> None:
        self._statements = dict(statements)

    def __getattr__(self, name: str) -> Statement:
        try:
            return self._statements[name]
        except KeyError:
            raise AttributeError(f"no SQL statement named {name!r} in sql/") from None

    def __contains__(self, name: str) -> bool:
        return name in self._statements

    def __iter__(self) -> Iterator[Statement]:
        return iter(self._statements.values())


def sql_directory() -> Path:
    """`sql/` beside the package in a checkout; `service/sql/` once installed from a wheel."""
    checkout = Path(__file__).resolve().parent.parent / "sql"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("service") / "sql"))


def load_queries(dialect: str, directory: Path | None = None) -> Queries:
    """Load sql/*.sql for `dialect`: shared files first, then that dialect's overrides."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    folder = directory or sql_directory()
    statements: dict[str, Statement] = {}
    files = sorted(folder.glob("*.sql"))
    shared = [path for path in files if path.suffixes == [".sql"]]
    overrides = [path for path in files if path.suffixes == [f".{dialect}", ".sql"]]
    for path in shared + overrides:
        seen_here: set[str] = set()
        for source in parse_statements(path.read_text(encoding="utf-8")):
            if source.name in seen_here:
                raise ValueError(f"{path.name}: statement {source.name} is defined twice")
            seen_here.add(source.name)
            statements[source.name] = Statement(
                source.name, source.doc, source.sql, dialect, source.planned_per_call, source.report
            )
    return Queries(statements)
