"""The read models' SQL, written for SQLite, as PostgreSQL runs it.

Projections and their queries are written once, in the SQLite dialect they have always used; on
PostgreSQL each statement is translated once (then cached) into its equivalent there:

- `?` placeholders become psycopg's `%s` (and a literal `%` becomes `%%`);
- `INSERT OR IGNORE` becomes `ON CONFLICT DO NOTHING`; `INSERT OR REPLACE` becomes
  `ON CONFLICT (<primary key>) DO UPDATE SET` every other column (SQLite also deletes rows that
  clash on another unique index; no read model relies on that);
- in `ON CONFLICT ... DO UPDATE SET a = a + excluded.a` the bare `a` on the right is qualified
  with the table (PostgreSQL calls it ambiguous);
- two-argument `max(a, b)` / `min(a, b)` become `greatest` / `least`;
- `LIKE` becomes `ILIKE` (SQLite's LIKE ignores ASCII case);
- `ORDER BY` terms get SQLite's NULL order (`NULLS FIRST` ascending, `NULLS LAST` descending);
- DDL types: INTEGER -> bigint, REAL -> double precision, TEXT/JSON -> text in the "C" collation
  (SQLite's byte order, so sorted lists come out the same), BLOB -> bytea;
- PRAGMAs are dropped; `BEGIN IMMEDIATE` is the caller's to map (see kroma.projections.postgres).

Table metadata (columns in order, primary key) comes from a callback, since only the database
knows the tables of `INSERT OR REPLACE INTO t VALUES (...)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TableInfo:
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]


TableLookup = Callable[[str], TableInfo]

_DDL_TYPES = {
    "INTEGER": "bigint",
    "REAL": "double precision",
    "TEXT": 'text COLLATE "C"',
    "JSON": 'text COLLATE "C"',
    "BLOB": "bytea",
}
_DDL_TYPE = re.compile(r"\b(INTEGER|REAL|TEXT|JSON|BLOB)\b")
_INSERT_OR = re.compile(r"^\s*INSERT\s+OR\s+(REPLACE|IGNORE)\s+INTO\s+(\w+)\s*(\(([^)]*)\))?", re.I)
_PAIR_FUNC = re.compile(r"\b(max|min)\(([^(),]+),([^(),]+)\)", re.I)
_LIKE = re.compile(r"(?<![\w.])(NOT\s+)?LIKE\b", re.I)
_DO_UPDATE = re.compile(r"\bDO\s+UPDATE\s+SET\b", re.I)
_ON_CONFLICT = re.compile(r"\bON\s+CONFLICT\b", re.I)
_INSERT_INTO = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)", re.I)
_IDENT = re.compile(r"(?<![\w.\"'])([A-Za-z_]\w*)(?![\w.(])")
_CLAUSE_END = re.compile(r"\b(LIMIT|OFFSET|FOR|UNION|EXCEPT|INTERSECT)\b", re.I)
_ORDER_BY = re.compile(r"\bORDER\s+BY\b", re.I)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside parentheses and quotes."""
    parts, depth, start, quote = [], 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _placeholders(sql: str, escape_percent: bool) -> str:
    """`?` -> `%s` outside string literals; `%` -> `%%` when psycopg will interpolate."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
            out.append("%%" if ch == "%" and escape_percent else ch)
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%" and escape_percent:
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


def _ddl(sql: str) -> str:
    return _DDL_TYPE.sub(
        lambda m: _DDL_TYPES[m.group(1)], re.sub(r"\bWITHOUT\s+ROWID\b", "", sql, flags=re.I)
    )


def _insert_or(sql: str, tables: TableLookup) -> str:
    match = _INSERT_OR.match(sql)
    assert match is not None
    mode, table, columns = match.group(1).upper(), match.group(2), match.group(4)
    head = f"INSERT INTO {table}" + (f" ({columns})" if columns else "")
    rest = " " + sql[match.end() :].lstrip()
    if mode == "IGNORE":
        return f"{head}{rest} ON CONFLICT DO NOTHING"
    info = tables(table)
    names = [c.strip() for c in columns.split(",")] if columns else list(info.columns)
    updates = [c for c in names if c not in info.primary_key]
    action = "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in updates) if updates else "DO NOTHING"
    return f"{head}{rest} ON CONFLICT ({', '.join(info.primary_key)}) {action}"


def _qualify_upsert(sql: str, tables: TableLookup) -> str:
    """Qualify the target table's bare columns on the right of `DO UPDATE SET a = ...` (and in its
    WHERE), which PostgreSQL would call ambiguous beside `excluded`."""
    into = _INSERT_INTO.match(sql)
    found = _DO_UPDATE.search(sql)
    if into is None or found is None:
        return sql
    table = into.group(1)
    columns = set(tables(table).columns)
    body = sql[found.end() :]
    where = re.search(r"\bWHERE\b", body, re.I)
    sets, tail = (body[: where.start()], body[where.start() :]) if where else (body, "")

    def qualify(expr: str) -> str:
        return _IDENT.sub(lambda m: f"{table}.{m.group(1)}" if m.group(1) in columns else m.group(1), expr)

    assignments = []
    for part in _split_top(sets):
        lhs, _, rhs = part.partition("=")
        assignments.append(f"{lhs}={qualify(rhs)}")
    return sql[: found.end()] + ",".join(assignments) + qualify(tail)


def _null_order(sql: str) -> str:
    """Give every ORDER BY term SQLite's NULL placement."""
    out, pos = [], 0
    for match in _ORDER_BY.finditer(sql):
        if match.start() < pos:
            continue
        start = match.end()
        depth, end, quote = 0, len(sql), ""
        for i in range(start, len(sql)):
            ch = sql[i]
            if quote:
                if ch == quote:
                    quote = ""
                continue
            if ch in "'\"":
                quote = ch
            elif ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    end = i
                    break
                depth -= 1
            elif depth == 0 and _CLAUSE_END.match(sql, i) and (i == 0 or not sql[i - 1].isalnum()):
                end = i
                break
        terms = []
        for term in _split_top(sql[start:end]):
            term = _null_order(term) if _ORDER_BY.search(term) else term  # a subquery's own
            stripped = term.rstrip()
            if not stripped or re.search(r"\bNULLS\s+(FIRST|LAST)\s*$", stripped, re.I):
                terms.append(term)
                continue
            desc = re.search(r"\bDESC\s*$", stripped, re.I) is not None
            trailing = term[len(stripped) :]
            terms.append(f"{stripped} NULLS {'LAST' if desc else 'FIRST'}{trailing}")
        out.append(sql[pos:start])
        out.append(",".join(terms))
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def translate(sql: str, tables: TableLookup, *, with_params: bool = True) -> str | None:
    """The PostgreSQL form of one SQLite statement; None for one that has no meaning there (a
    PRAGMA). `with_params`: psycopg will interpolate parameters (so `%` must be doubled)."""
    text = sql.strip().rstrip(";")
    upper = text[:16].upper()
    if upper.startswith("PRAGMA"):
        return None
    if upper.startswith("CREATE TABLE"):
        return _ddl(text)
    if upper.startswith("INSERT"):
        if _INSERT_OR.match(text):
            text = _insert_or(text, tables)
        if _ON_CONFLICT.search(text):
            text = _qualify_upsert(text, tables)
    text = _PAIR_FUNC.sub(
        lambda m: f"{'greatest' if m.group(1).lower() == 'max' else 'least'}({m.group(2)},{m.group(3)})", text
    )
    text = _LIKE.sub(lambda m: f"{m.group(1) or ''}ILIKE", text)
    if _ORDER_BY.search(text):
        text = _null_order(text)
    return _placeholders(text, with_params)
