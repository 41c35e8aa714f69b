"""The SQL surface over views: one DuckDB connection, read-only and sandboxed.

Views are Arrow tables registered into the connection (the engine never reads files itself), so
the connection runs with ``enable_external_access = false`` and a locked configuration: no file
or URL reads (``read_csv('/etc/passwd')``), no ``COPY``, ``ATTACH``, ``INSTALL`` or ``LOAD``.
Only single ``SELECT`` (and ``EXPLAIN``/``DESCRIBE``-style) statements run; a statement timeout
interrupts long queries; results are capped in rows; DuckDB's memory is capped.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from raystream.errors import ViewQueryError

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


@dataclass(frozen=True)
class SqlLimits:
    """What one query may use."""

    timeout_s: float = 10.0
    max_rows: int = 100_000
    memory_limit: str = "512MB"
    threads: int = 2


class SqlEngine:
    """Runs read-only SQL over the tables it was given (see the module doc)."""

    def __init__(self, limits: SqlLimits | None = None) -> None:
        self.limits = limits or SqlLimits()
        self._con = duckdb.connect(":memory:")
        self._con.execute(f"SET memory_limit = '{self.limits.memory_limit}'")
        self._con.execute(f"SET threads = {int(self.limits.threads)}")
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")
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

    def query(self, sql: str, max_rows: int | None = None) -> pa.Table:
        """Run one read-only statement; raises :class:`ViewQueryError` with a readable reason."""
        limit = self.limits.max_rows if max_rows is None else min(max_rows, self.limits.max_rows)
        with self._lock:
            cur = self._con.cursor()
        try:
            statement = _check(cur, sql)
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
            rows = 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                if rows > limit:
                    raise ViewQueryError(
                        f"the result has more than {limit} rows: aggregate, filter or add "
                        "LIMIT (the row limit protects the view server)"
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


def _check(cur: duckdb.DuckDBPyConnection, sql: str) -> str:
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
    return sql


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
