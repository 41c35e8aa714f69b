"""The SQL sandbox over views: what runs, what is refused and why (DuckDB alone, no Ray)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raystream.errors import ViewQueryError
from raystream.views.engine import DENIED_FUNCTIONS, SqlEngine, SqlLimits


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside any view snapshot that a query must never read."""
    path = tmp_path / "secret.csv"
    path.write_text("password\nhunter2\n")
    pq.write_table(pa.table({"password": ["hunter2"]}), tmp_path / "secret.parquet")
    return path


@pytest.fixture
def engine() -> Iterator[SqlEngine]:
    e = SqlEngine(SqlLimits(timeout_s=1.0, max_rows=1_000, memory_limit="64MB", threads=1))
    e.publish(
        {
            "totals": pa.table({"customer": ["a", "b", "c"], "n": [1, 2, 3]}),
            "per_minute": pa.table({"customer": ["a", "a"], "window_start": [0, 60_000]}),
        }
    )
    try:
        yield e
    finally:
        e.close()


def refused(engine: SqlEngine, sql: str, reason: str) -> str:
    with pytest.raises(ViewQueryError, match=reason) as err:
        engine.query(sql)
    message = str(err.value)
    assert "Traceback" not in message and "\n" not in message, message
    return message


def test_publish_then_query(engine: SqlEngine) -> None:
    got = engine.query("SELECT customer, n FROM totals WHERE n >= 2 ORDER BY customer")
    assert got.to_pylist() == [{"customer": "b", "n": 2}, {"customer": "c", "n": 3}]
    joined = engine.query(
        "SELECT t.customer, count(*) AS w FROM totals t JOIN per_minute p USING (customer) "
        "GROUP BY ALL"
    )
    assert joined.to_pylist() == [{"customer": "a", "w": 2}]
    for ok in ("FROM totals", "DESCRIBE totals", "SHOW TABLES", "EXPLAIN SELECT * FROM totals"):
        assert engine.query(ok).num_rows > 0, ok
    assert engine.query("WITH x AS (SELECT 1 AS one) SELECT * FROM x;").to_pylist() == [{"one": 1}]


def test_publish_replaces_the_whole_set_at_once(engine: SqlEngine) -> None:
    engine.publish({"totals": pa.table({"customer": ["z"], "n": [9]})})
    assert engine.query("SELECT * FROM totals").to_pylist() == [{"customer": "z", "n": 9}]
    refused(engine, "SELECT * FROM per_minute", "per_minute does not exist")


def test_queries_see_the_old_or_the_new_set_never_a_mix() -> None:
    e = SqlEngine()
    e.publish({"a": pa.table({"v": [0]}), "b": pa.table({"v": [0]})})
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            row = e.query("SELECT (SELECT v FROM a) AS a, (SELECT v FROM b) AS b").to_pylist()[0]
            seen.add((row["a"], row["b"]))

    t = threading.Thread(target=ask)
    t.start()
    try:
        for i in range(1, 200):
            e.publish({"a": pa.table({"v": [i]}), "b": pa.table({"v": [i]})})
    finally:
        stop.set()
        t.join()
        e.close()
    assert seen and all(a == b for a, b in seen), sorted(seen)[:5]


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM read_csv('{csv}')",
        "SELECT * FROM read_csv_auto('{csv}')",
        "SELECT * FROM '{csv}'",
        "SELECT * FROM read_parquet('{parquet}')",
        "SELECT * FROM '{parquet}'",
        "SELECT * FROM read_text('{csv}')",
        "SELECT * FROM read_blob('{csv}')",
        "SELECT * FROM read_json_auto('{csv}')",
        "SELECT * FROM sniff_csv('{csv}')",
        "SELECT * FROM glob('{dir}/*')",
        "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
        "SELECT * FROM 'https://example.com/data.parquet'",
    ],
)
def test_no_file_or_url_can_be_read(engine: SqlEngine, secret: Path, template: str) -> None:
    sql = template.format(csv=secret, parquet=secret.with_suffix(".parquet"), dir=secret.parent)
    message = refused(engine, sql, "not allowed")
    assert "cannot read files or URLs" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("COPY totals TO '/tmp/raystream-stolen.csv'", "COPY"),
        ("EXPORT DATABASE '/tmp/raystream-export'", "EXPORT"),
        ("ATTACH '/tmp/raystream-other.db' AS other", "ATTACH"),
        ("DETACH memory", "DETACH"),
        ("INSTALL httpfs", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
        ("CREATE MACRO m(a) AS a", "CREATE"),
        ("CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')", "CREATE"),
        ("INSERT INTO totals VALUES ('d', 4)", "INSERT"),
        ("DELETE FROM totals", "DELETE"),
        ("UPDATE totals SET n = 0", "UPDATE"),
        ("DROP TABLE totals", "DROP"),
        ("ALTER TABLE totals RENAME TO x", "ALTER"),
        ("SET enable_external_access = true", "SET"),
        ("RESET memory_limit", "SET"),
        ("SET memory_limit = '100GB'", "SET"),
        ("USE memory", "SET"),
        ("PRAGMA database_list", "PRAGMA"),
        ("CALL pragma_database_list()", "CALL"),
        ("CHECKPOINT", "CALL"),
        ("VACUUM", "VACUUM"),
        ("BEGIN TRANSACTION", "TRANSACTION"),
    ],
)
def test_only_select_runs(engine: SqlEngine, sql: str, kind: str) -> None:
    message = refused(engine, sql, "only SELECT queries run on views")
    assert kind in message
    assert engine.query("SELECT count(*) AS c FROM totals").to_pylist() == [{"c": 3}]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DROP TABLE totals",
        "SELECT 1; SELECT 2",
        "SELECT * FROM totals; COPY totals TO '/tmp/raystream-x.csv'",
        "SELECT 1; SET enable_external_access = true",
    ],
)
def test_one_statement_only(engine: SqlEngine, sql: str) -> None:
    refused(engine, sql, "exactly one statement, got 2")
    assert engine.query("SELECT count(*) AS c FROM totals").to_pylist() == [{"c": 3}]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT current_setting('temp_directory')",
        "SELECT 'memory_limit'.current_setting()",  # method-call syntax
        "SELECT \"CURRENT_SETTING\"('threads')",  # quoted, other case
        "SELECT * FROM totals WHERE customer = current_setting('home_directory')",
        "SELECT list_transform([1], x -> current_setting('secret_directory'))",
        "SELECT * FROM duckdb_settings()",
        "SELECT getenv('HOME')",
        "SELECT * FROM query('SELECT 1')",
        "SELECT * FROM query('COPY totals TO ''/tmp/raystream-q.csv''')",
        "SELECT * FROM query_table('totals')",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM pragma_database_list",  # a table function without parentheses
        "WITH s AS (SELECT current_setting('threads') AS v) SELECT * FROM s",
        "EXPLAIN SELECT current_setting('threads')",
    ],
)
def test_functions_that_reveal_the_server_or_run_strings_are_refused(
    engine: SqlEngine, sql: str
) -> None:
    message = refused(engine, sql, "not allowed")
    assert "()" in message


def test_every_denied_function_exists_so_the_list_means_something() -> None:
    import duckdb

    con = duckdb.connect()  # a plain, trusted connection
    try:
        names = con.execute("SELECT DISTINCT lower(function_name) FROM duckdb_functions()")
        known = {n for (n,) in names.fetchall()} | {"getenv"}  # getenv: DuckDB's CLI only
        for bare in sorted(DENIED_FUNCTIONS - known):  # e.g. pragma_database_list
            con.execute(f"SELECT * FROM {bare}").fetchall()
    finally:
        con.close()


def test_a_view_may_be_named_like_a_denied_function() -> None:
    e = SqlEngine()
    try:
        e.publish({"query": pa.table({"v": [1]})})
        assert e.query('SELECT v FROM "query"').to_pylist() == [{"v": 1}]
    finally:
        e.close()


def test_extensions_are_never_installed_or_loaded_on_demand(engine: SqlEngine) -> None:
    # A function from a known but absent extension would be auto-installed by default.
    refused(engine, "SELECT * FROM iceberg_scan('/tmp')", "iceberg")
    settings = engine.settings()
    assert settings["autoinstall_known_extensions"] == "false"
    assert settings["autoload_known_extensions"] == "false"


def test_long_queries_time_out() -> None:
    e = SqlEngine(SqlLimits(timeout_s=0.3))
    try:
        message = refused(
            e, "SELECT count(*) FROM range(100000000000) a, range(100) b", "statement timeout"
        )
        assert "0.3s" in message
        assert e.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]  # still serving
    finally:
        e.close()


def test_results_are_capped_in_rows(engine: SqlEngine) -> None:
    assert engine.query("SELECT * FROM range(1000)").num_rows == 1000
    message = refused(engine, "SELECT * FROM range(1001)", "more than 1000 rows")
    assert "LIMIT" in message
    assert engine.query("SELECT * FROM range(100)", max_rows=100).num_rows == 100
    with pytest.raises(ViewQueryError, match="more than 10 rows"):
        engine.query("SELECT * FROM range(11)", max_rows=10)
    with pytest.raises(ViewQueryError, match="more than 1000 rows"):
        engine.query("SELECT * FROM range(1001)", max_rows=5_000)  # cannot raise the cap


def test_results_are_capped_in_bytes() -> None:
    e = SqlEngine(SqlLimits(max_bytes=1_000_000))
    try:
        assert e.query("SELECT repeat('x', 100000) AS s").num_rows == 1
        refused(e, "SELECT repeat('x', 2000000) AS s", "larger than 1000000 bytes")
    finally:
        e.close()


def test_memory_is_limited_and_nothing_spills_to_disk() -> None:
    e = SqlEngine(SqlLimits(memory_limit="40MB", threads=1, timeout_s=60))
    try:
        settings = e.settings()
        assert settings["memory_limit"] in ("38.1 MiB", "40.0 MB", "40MB"), settings
        assert settings["threads"] == "1"
        assert settings["temp_directory"] == ""
        assert settings["enable_external_access"] == "false"
        assert settings["lock_configuration"] == "true"
        message = refused(
            e,
            "SELECT count(*) FROM (SELECT DISTINCT i, md5(i::VARCHAR) FROM range(20000000) t(i))",
            "memory limit",
        )
        assert "40MB" in message
        assert e.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]
    finally:
        e.close()


def test_a_bad_memory_limit_is_refused() -> None:
    with pytest.raises(ViewQueryError, match="memory_limit"):
        SqlEngine(SqlLimits(memory_limit="1GB'; SET enable_external_access=true; --"))


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELEC 1", "syntax error"),
        ("", "empty query"),
        ("   ", "empty query"),
        ("SELECT nope FROM totals", "nope"),
        ("SELECT * FROM missing_view", "missing_view does not exist"),
        ("SELECT 'a'::INTEGER AS x", "Conversion Error"),
    ],
)
def test_bad_sql_gives_one_clear_line(engine: SqlEngine, sql: str, reason: str) -> None:
    refused(engine, sql, reason)
