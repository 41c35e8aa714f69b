"""Materialized views served with SQL while a job runs: consistent answers under load, exact final
contents, time travel, the HTTP endpoint, and the sandbox."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import raystream as rs
from raystream.dev.broker import EmbeddedBroker

from .kafka_helpers import Msg, create_topic, produce_json, read_all

T0 = 1_767_225_600_000
PARTITIONS = 4


def build(app: rs.App, src: str, customers: str) -> None:
    events = app.stream(src, key="customer", time="ts")
    events.group_by("customer").agg(n=rs.count(), total=rs.sum("amount")).materialize("totals")
    (
        events.group_by("customer")
        .window(rs.tumbling("1m"))
        .agg(n=rs.count(), emit="update")
        .materialize("per_minute")
    )
    app.table(customers, key="customer").materialize("customers")


def totals_of(msgs: list[Msg], below: dict[int, int] | None = None) -> dict[str, tuple[int, int]]:
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for m in msgs:
        if below is not None and m.offset >= below.get(m.partition, 0):
            continue
        v = m.json()
        acc[v["customer"]][0] += 1
        acc[v["customer"]][1] += v["amount"]
    return {c: (n, t) for c, (n, t) in acc.items()}


def as_dict(table: pa.Table) -> dict[str, tuple[int, int]]:
    return {r["customer"]: (r["n"], r["total"]) for r in table.to_pylist()}


@pytest.fixture
def job(broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    bs = broker.bootstrap
    src, customers = f"{unique}.events", f"{unique}.customers"
    create_topic(bs, src, PARTITIONS)
    create_topic(bs, customers, PARTITIONS)
    produce_json(
        bs, customers, ((f"c{i}", {"customer": f"c{i}", "tier": i % 3}) for i in range(50))
    )
    rng = random.Random(1)
    rows = [
        {"customer": f"c{rng.randrange(500)}", "amount": rng.randint(1, 100), "ts": T0 + i}
        for i in range(300_000)
    ]
    produce_json(bs, src, ((r["customer"], r) for r in rows))
    app = rs.App(
        unique,
        brokers=bs,
        checkpoints=(tmp_path / "ck").as_uri(),
        checkpoint_retain=10_000,
        view_refresh_ms=100,
        max_batch_records=2_000,  # many small epochs: more snapshots for the queries to see
    )
    build(app, src, customers)
    return app, src


def test_views_answer_consistently_under_load_and_exactly_at_the_end(job) -> None:  # type: ignore[no-untyped-def]
    app, src = job
    running = app.start(workers=2, bounded=True)
    try:  # a failed check must not leave the app serving views to the tests after it
        _check_views_under_load(app, src, running)
    finally:
        running.stop()


def _check_views_under_load(app: rs.App, src: str, running: Any) -> None:
    answers: list[tuple[int, int]] = []
    failures: list[str] = []
    done = threading.Event()
    marks: list[tuple[float, dict[int, int]]] = []

    def ask() -> None:
        q = (
            "SELECT (SELECT coalesce(sum(n), 0) FROM totals) AS counted, "
            f"(SELECT coalesce(sum(\"offset\"), 0) FROM raystream_offsets WHERE topic = '{src}') "
            "AS consumed"
        )
        # A view has columns once its tasks committed a first epoch.
        while app.sql("SELECT count(*) AS c FROM raystream_epochs").to_pylist()[0]["c"] < 8:
            if done.is_set():
                failures.append("the views never showed a committed epoch of all 8 tasks")
                return
            time.sleep(0.05)
        while not done.is_set():
            try:
                counted, consumed = app.sql(q).to_pylist()[0].values()
            except Exception as exc:
                failures.append(repr(exc))
                return
            answers.append((counted, consumed))
            if counted != consumed:
                failures.append(f"sum(n)={counted} but {consumed} records committed")

    askers = [threading.Thread(target=ask) for _ in range(3)]
    for t in askers:
        t.start()
    try:
        while running.wait(timeout=0.5) == "running":
            offsets = app.sql(
                f"SELECT partition, \"offset\" FROM raystream_offsets WHERE topic = '{src}'"
            ).to_pylist()
            # Time travel needs every task of the stream to have committed by the mark (the
            # workers' first commits can be a second apart on a loaded machine).
            if len(offsets) == PARTITIONS:
                marks.append((time.time(), {r["partition"]: r["offset"] for r in offsets}))
        assert running.wait(timeout=300) == "finished"
        time.sleep(0.5)  # one more refresh after the last commit
    finally:
        done.set()
        for t in askers:
            t.join()
    assert not failures, failures[:5]
    msgs = read_all(app.kafka_config().brokers, src)
    # Answered during the run, not only at its end (the job may finish in a few refreshes).
    progressing = {c for c, _ in answers}
    assert len(answers) > 20 and min(progressing) < len(msgs), (len(answers), progressing)
    final = as_dict(app.sql("SELECT customer, n, total FROM totals"))
    assert final == totals_of(msgs)
    windows = app.sql("SELECT sum(n) AS n, count(*) AS w FROM per_minute").to_pylist()[0]
    assert windows["n"] == len(msgs)
    assert app.sql("SELECT count(*) AS c FROM customers").to_pylist()[0]["c"] == 50

    # Time travel: the committed state at an earlier moment equals the reference computed over
    # exactly the input the snapshot says was consumed then.
    mid_time, _ = marks[len(marks) // 2]
    then = app.sql(
        f"SELECT partition, \"offset\" FROM raystream_offsets WHERE topic = '{src}'", as_of=mid_time
    ).to_pylist()
    below = {r["partition"]: r["offset"] for r in then}
    old = as_dict(app.sql("SELECT customer, n, total FROM totals", as_of=mid_time))
    assert old == totals_of(msgs, below)
    assert sum(n for n, _ in old.values()) < len(msgs)

    info = {v["name"]: v for v in app.views()}
    assert info["totals"]["rows"] == len(final) and info["totals"]["tasks_committed"] == 4


def test_sql_is_read_only_sandboxed_and_served_over_http(job) -> None:  # type: ignore[no-untyped-def]
    app, _ = job
    running = app.start(workers=1, bounded=True)
    try:
        assert running.wait(timeout=300) == "finished"
        time.sleep(0.5)
        for bad, why in [
            ("SELECT * FROM read_csv('/etc/passwd')", "not allowed"),
            ("COPY totals TO '/tmp/stolen.csv'", "only SELECT"),
            ("ATTACH '/tmp/other.db'", "only SELECT"),
            ("INSTALL httpfs", "only SELECT"),
            ("CREATE TABLE t AS SELECT 1", "only SELECT"),
            ("DELETE FROM totals", "only SELECT"),
            ("SET enable_external_access = true", "only SELECT"),
            ("SELECT count(*) FROM range(100000000000) a, range(100) b", "timeout"),
            ("SELECT * FROM range(1000000)", "more than"),
            ("SELEC 1", "syntax error"),
        ]:
            with pytest.raises(rs.ViewQueryError, match=why):
                app.sql(bad)
        # Any driver on the cluster can query by app name.
        assert rs.sql(app.name, "SELECT count(*) AS c FROM customers").to_pylist() == [{"c": 50}]

        url = running.view_info()["http"]
        assert url.startswith("http://127.0.0.1:")
        views = json.load(urllib.request.urlopen(f"{url}/views"))
        assert {"totals", "per_minute", "customers"} <= {v["name"] for v in views["views"]}
        body = json.dumps({"sql": "SELECT count(*) AS c FROM customers"}).encode()
        req = urllib.request.Request(
            f"{url}/sql", body, headers={"Content-Type": "application/json"}
        )
        assert json.load(urllib.request.urlopen(req)) == {"columns": ["c"], "rows": [[50]]}
        arrow = urllib.request.urlopen(
            urllib.request.Request(
                f"{url}/sql?q=SELECT%20sum(n)%20AS%20n%20FROM%20totals",
                headers={"Accept": "application/vnd.apache.arrow.stream"},
            )
        ).read()
        assert pa.ipc.open_stream(arrow).read_all().to_pylist() == [{"n": 300_000}]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/sql?q=DROP%20TABLE%20totals")
        assert err.value.code == 400
        doc = json.loads(err.value.read())
        assert "only SELECT" in doc["error"] and "Traceback" not in doc["error"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/nope")
        assert err.value.code == 404
    finally:
        running.stop()
