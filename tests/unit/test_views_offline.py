"""Plain DuckDB over a checkpoint directory, the murmur2 partitioner, point-lookup routing and
the CLI's table rendering: no Ray, no Kafka."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from raystream._kafka.partitioner import murmur2, partition_for
from raystream.cli.sql import render
from raystream.errors import CheckpointError, ConfigError
from raystream.operators.base import Batch
from raystream.operators.view import ViewOperator, ViewSpec
from raystream.state.checkpoint import CheckpointStore
from raystream.views.offline import BY_NEWEST, attach_sql, choose_epochs
from raystream.views.routing import ViewRoute


def rows(keys: list[str], deleted: list[bool], n: list[int | None]) -> pa.Table:
    return pa.table(
        {
            "__key": pa.array([pickle.dumps(k) for k in keys], pa.binary()),
            "__deleted": pa.array(deleted, pa.bool_()),
            "customer": pa.array(keys, pa.string()),
            "n": pa.array(n, pa.int64()),
        }
    )


def test_attach_sql_rebuilds_each_tasks_newest_epoch(tmp_path: Path) -> None:
    uri = tmp_path.as_uri()
    store = CheckpointStore(uri, "shop")
    view = "view.totals"
    # Task 0_0: a full epoch, a delta (update a, delete b, add c), then a newer full epoch chain.
    e1 = store.write_epoch(
        "0_0",
        (1, 7),
        {"t[0]": 2},
        {view: rows(["a", "b"], [False, False], [1, 1])},
        parent=None,
        full=True,
    )
    e2 = store.write_epoch(
        "0_0",
        (2, 7),
        {"t[0]": 5},
        {view: rows(["a", "b", "c"], [False, True, False], [3, None, 1])},
        parent=e1,
        full=False,
    )
    store.write_epoch(
        "0_0", (3, 7), {"t[0]": 6}, {view: rows(["a"], [False], [4])}, parent=e2, full=False
    )
    # Task 0_1 holds the same key name "a": keys are per task, rows of both tasks are kept.
    store.write_epoch(
        "0_1",
        (1, 7),
        {"t[1]": 1},
        {view: rows(["a", "d"], [False, False], [10, 2])},
        parent=None,
        full=True,
    )
    sql = attach_sql(uri, "shop")
    assert BY_NEWEST in sql and "may be uncommitted" in sql
    con = duckdb.connect()
    con.execute(sql)
    got = con.sql("SELECT customer, n FROM totals ORDER BY n").fetchall()
    assert got == [("c", 1), ("d", 2), ("a", 4), ("a", 10)]
    assert con.sql("SELECT * FROM totals").columns == ["customer", "n"]
    epochs = con.sql("SELECT task, epoch, attempt FROM raystream_epochs ORDER BY task").fetchall()
    assert epochs == [("0_0", 3, 7), ("0_1", 1, 7)]
    offsets = con.sql('SELECT task, topic, "partition", "offset" FROM raystream_offsets').fetchall()
    assert sorted(offsets) == [("0_0", "t", 0, 6), ("0_1", "t", 1, 1)]
    # The same as raystream's own reader of the same epoch.
    mine = store.load("0_0", (3, 7), view).to_pylist()
    assert sorted((r["customer"], r["n"]) for r in mine) == [("a", 4), ("c", 1)]


def test_choose_epochs_lists_only_the_chain_of_the_chosen_epoch(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path.as_uri(), "shop")
    full = store.write_epoch(
        "0_0", (1, 1), {}, {"view.v": rows(["a"], [False], [1])}, parent=None, full=True
    )
    store.write_epoch(
        "0_0", (2, 1), {}, {"view.v": rows(["a"], [False], [2])}, parent=full, full=False
    )
    chosen = choose_epochs(store, "shop")["0_0"]
    assert chosen.manifest.ref == (2, 1)
    assert [Path(f).parent.name for f in chosen.files["v"]] == ["000000000001-1", "000000000002-1"]


def test_attach_sql_says_when_there_is_nothing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no published checkpoint epoch of app 'shop'"):
        attach_sql(tmp_path.as_uri(), "shop")


def test_murmur2_is_kafkas() -> None:
    # Vectors from Apache Kafka's UtilsTest (Java client's default partitioner).
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536
    assert murmur2(b"a-little-bit-longer-string") == -1486304829
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == -58897971
    assert murmur2(b"abc") == 479470107
    assert partition_for(b"foobar", 4) == (-790332482 & 0x7FFFFFFF) % 4
    with pytest.raises(ValueError):
        partition_for(b"x", 0)


def test_a_route_names_the_task_of_the_keys_partition() -> None:
    route = ViewRoute(("2_0", "2_1", "2_2"), certain=True)
    assert route.owner_task("foobar") == f"2_{partition_for(b'foobar', 3)}"
    assert route.owner_task(("foobar", 60_000)) == route.owner_task("foobar")  # one window
    assert route.owner_task(21) == f"2_{partition_for(b'21', 3)}"  # ints as their digits


def test_view_lookups_see_whole_batches_while_batches_are_applied() -> None:
    op = ViewOperator("v", ViewSpec("v"))
    starts = [i * 60_000 for i in range(200)]

    def batch(n: int) -> Batch:
        data = [{"window_start": w, "window_end": w + 60_000, "n": n} for w in starts]
        return Batch.from_rows(data, keys=["k"] * len(starts), timestamps=starts)

    op.process(batch(0))
    seen: list[set[int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append({r["n"] for r in op.get("k")})

    t = threading.Thread(target=read)
    t.start()
    try:
        for n in range(1, 300):
            op.process(batch(n))  # 200 rows of one key per batch, all with the same n
    finally:
        stop.set()
        t.join()
    assert seen and all(len(s) == 1 for s in seen), [s for s in seen if len(s) != 1][:3]
    assert [r["window_start"] for r in op.get("k")] == starts
    assert op.get(("k", 60_000)) == [{"window_start": 60_000, "window_end": 120_000, "n": 299}]
    assert op.get("other") == []


def test_render_is_a_readable_table() -> None:
    text = render(
        ["customer", "n", "note"],
        [{"customer": "a", "n": 5, "note": None}, {"customer": "bb", "n": 12345, "note": "x" * 80}],
    ).splitlines()
    assert text[0] == "customer      n  note"
    assert text[2].startswith("a             5  NULL")
    assert text[3].endswith("...") and len(text[3]) < 80
    assert text[-1] == "(2 rows)"
    assert render(["x"], []).splitlines()[-1] == "(0 rows)"


def test_non_loopback_http_needs_a_token() -> None:
    from raystream.config import RuntimeConfig

    with pytest.raises(ConfigError, match="http_token"):
        RuntimeConfig(http_host="0.0.0.0")
    RuntimeConfig(http_host="127.0.0.1")
    RuntimeConfig(http_host="::1")
    RuntimeConfig(http_host="0.0.0.0", http_token="t")
