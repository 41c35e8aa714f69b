"""The SQL surface over views: one DuckDB connection, read-only and sandboxed.

Views are Arrow tables copied into an in-memory database (the engine never reads files itself),
so the connection runs with ``enable_external_access = false``, no temporary directory (nothing
spills to disk), no extension auto-install or auto-load, and a locked configuration: no file or
URL reads (``read_csv('/etc/passwd')``, ``SELECT * FROM 'x.csv'``, ``glob``), no ``COPY``,
``ATTACH``, ``INSTALL``, ``LOAD`` or ``SET``. Only single ``SELECT`` (and ``EXPLAIN``/
``DESCRIBE``-style) statements run, and functions that reveal the server's settings or run SQL
from a string (``current_setting``, ``duckdb_settings``, ``query``...) are refused by name after
parsing (DuckDB's own parser: quoting or method-call syntax does not hide them). A statement
timeout interrupts long queries; results are capped in rows and bytes; DuckDB's memory is capped.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from raystream.errors import ViewQueryError

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALYZE)?\s+", re.IGNORECASE)

#: Functions a view query may not call: they show the server's settings, files or secrets, or
#: run SQL given as a string (which would escape the statement checks). Reading files is refused
#: by DuckDB itself (``enable_external_access = false``).
DENIED_FUNCTIONS = frozenset(
    {
        "current_setting",
        "duckdb_settings",
        "getenv",
        "query",
        "query_table",
        "duckdb_secrets",
        "which_secret",
        "duckdb_extensions",
        "duckdb_temporary_files",
        "duckdb_databases",
        "pragma_database_list",
        "pragma_database_size",
        "pragma_platform",
        "pragma_user_agent",
        "pragma_metadata_info",
        "pragma_storage_info",
    }
)

#: Settings applied before the configuration is locked (order matters: the lock is last).
_SANDBOX = (
    ("temp_directory", "''"),
    ("autoinstall_known_extensions", "false"),
    ("autoload_known_extensions", "false"),
    ("allow_community_extensions", "false"),
    ("enable_external_access", "false"),
    ("lock_configuration", "true"),
)


@dataclass(frozen=True)
class SqlLimits:
    """What one query may use."""

    timeout_s: float = 10.0
    max_rows: int = 100_000
    #: Most bytes of Arrow data a result may hold.
    max_bytes: int = 256 * 1024 * 1024
    memory_limit: str = "512MB"
    threads: int = 2


class SqlEngine:
    """Runs read-only SQL over the tables it was given (see the module doc)."""

    def __init__(self, limits: SqlLimits | None = None) -> None:
        self.limits = limits or SqlLimits()
        self._con = duckdb.connect(":memory:")
        if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", self.limits.memory_limit, re.I):
            raise ViewQueryError(
                f"memory_limit: {self.limits.memory_limit!r} is not a size like '512MB'"
            )
        self._con.execute(f"SET memory_limit = '{self.limits.memory_limit}'")
        self._con.execute(f"SET threads = {int(self.limits.threads)}")
        for name, value in _SANDBOX:
            self._con.execute(f"SET {name} = {value}")
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def publish(self, tables: Mapping[str, pa.Table]) -> None:
        """Make ``tables`` the queryable set, all at once: they are copied into DuckDB in one
        transaction, so a query sees the whole old set or the whole new one."""
        with self._lock:
            con = self._con
            con.execute("BEGIN TRANSACTION")
            try:
                for name, table in tables.items():
                    con.register("__incoming", table)
                    con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM __incoming')
                    con.unregister("__incoming")
                for gone in self._names - set(tables):
                    con.execute(f'DROP TABLE IF EXISTS "{gone}"')
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            self._names = set(tables)

    def settings(self) -> dict[str, str]:
        """The sandbox settings in force (memory limit, threads, external access, lock...)."""
        names = ["memory_limit", "threads", "temp_directory"] + [n for n, _ in _SANDBOX]
        with self._lock:
            rows = self._con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE list_contains(?, name)", [names]
            ).fetchall()
        return {str(n): str(v) for n, v in rows}

    def query(self, sql: str, max_rows: int | None = None) -> pa.Table:
        """Run one read-only statement; raises :class:`ViewQueryError` with a readable reason."""
        limit = self.limits.max_rows if max_rows is None else min(max_rows, self.limits.max_rows)
        with self._lock:
            cur = self._con.cursor()
        try:
            statement = _check(cur, sql, self._names)
        except BaseException:
            cur.close()
            raise
        timer = threading.Timer(self.limits.timeout_s, cur.interrupt)
        timer.start()
        try:
            relation = cur.sql(statement)
            if relation is None:
                raise ViewQueryError("the statement returned no result set")
            reader: pa.RecordBatchReader = relation.to_arrow_reader(min(limit + 1, 65_536))
            batches: list[pa.RecordBatch] = []
            rows = nbytes = 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                nbytes += batch.nbytes
                if rows > limit:
                    raise ViewQueryError(
                        f"the result has more than {limit} rows: aggregate, filter or add "
                        "LIMIT (the row limit protects the view server)"
                    )
                if nbytes > self.limits.max_bytes:
                    raise ViewQueryError(
                        f"the result is larger than {self.limits.max_bytes} bytes: select fewer "
                        "or smaller columns, filter or add LIMIT (the size limit protects the "
                        "view server)"
                    )
            return pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise ViewQueryError(
                f"the query ran longer than the {self.limits.timeout_s:g}s statement timeout "
                "and was stopped"
            ) from exc
        except duckdb.PermissionException as exc:
            raise ViewQueryError(
                f"not allowed: {_first_line(exc)} (SQL over views cannot read files or URLs)"
            ) from exc
        except duckdb.OutOfMemoryException as exc:
            raise ViewQueryError(
                f"the query needs more than the {self.limits.memory_limit} memory limit"
            ) from exc
        except duckdb.Error as exc:
            raise ViewQueryError(_first_line(exc)) from exc
        finally:
            timer.cancel()
            cur.close()

    def close(self) -> None:
        """Release DuckDB."""
        self._con.close()


def _check(cur: duckdb.DuckDBPyConnection, sql: str, tables: set[str]) -> str:
    if not isinstance(sql, str) or not sql.strip():
        raise ViewQueryError("empty query: give one SELECT statement")
    try:
        statements = cur.extract_statements(sql)
    except duckdb.Error as exc:
        raise ViewQueryError(_first_line(exc)) from exc
    if len(statements) != 1:
        raise ViewQueryError(f"give exactly one statement, got {len(statements)}")
    st = statements[0]
    if st.type not in _ALLOWED:
        kind = str(st.type).rsplit(".", 1)[-1]
        raise ViewQueryError(
            f"only SELECT queries run on views (read-only); this is a {kind} statement"
        )
    inner = _EXPLAIN.sub("", sql, count=1) if st.type == duckdb.StatementType.EXPLAIN else sql
    published = {t.lower() for t in tables}
    denied = sorted((set(_functions(cur, inner)) & DENIED_FUNCTIONS) - published)
    if denied:
        raise ViewQueryError(
            f"not allowed: {', '.join(denied)}() (SQL over views may not read the server's "
            "settings or run SQL from a string)"
        )
    return sql


def _functions(cur: duckdb.DuckDBPyConnection, sql: str) -> Iterator[str]:
    """The lower-cased name of every function ``sql`` calls (and every table it names), from
    DuckDB's parse tree."""
    try:
        (doc,) = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0]
    except duckdb.Error as exc:
        raise ViewQueryError(_first_line(exc)) from exc
    tree = json.loads(doc)
    if tree.get("error"):
        raise ViewQueryError(
            f"cannot check this query: {tree.get('error_message') or 'it does not parse'}"
        )
    yield from _walk(tree)


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        name = node.get("function_name")
        if isinstance(name, str):
            yield name.lower()
        if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
            yield node["table_name"].lower()  # a table function named without parentheses
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
