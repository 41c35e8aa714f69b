"""The tools around views on a real app: point lookups (routed by key, fresher than SQL), the
``raystream sql`` / ``raystream views`` CLI, the HTTP bearer token, and plain DuckDB over the
checkpoint directory of a stopped app."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from confluent_kafka import Producer

import raystream as rs
from raystream._kafka.admin import Topics
from raystream._kafka.partitioner import partition_for
from raystream.cli.main import main
from raystream.dev.broker import EmbeddedBroker
from raystream.views.offline import attach_sql
from raystream.views.snapshot import committed_heads

from .kafka_helpers import create_topic, produce_json, read_all

T0 = 1_767_225_600_000
PARTITIONS = 4
TOKEN = "s3cret-token"


def events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "customer": f"c{rng.randrange(60)}",
            "merchant": f"m{rng.randrange(9)}",
            "amount": rng.randint(1, 100),
            "ts": T0 + i * 37,
        }
        for i in range(n)
    ]


def produce_crc32(bootstrap: str, topic: str, rows: list[dict[str, Any]]) -> None:
    """Keyed by customer, partitioned by librdkafka's default (CRC32), not murmur2."""
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "consistent_random"})
    for r in rows:
        p.produce(topic, key=r["customer"].encode(), value=json.dumps(r).encode())
        p.poll(0)
    assert p.flush(30) == 0


def totals(rows: list[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        acc[r[field]][0] += 1
        acc[r[field]][1] += r["amount"]
    return {k: {field: k, "n": n, "total": t} for k, (n, t) in acc.items()}


def minutes(rows: list[dict[str, Any]]) -> dict[str, dict[int, int]]:
    acc: dict[str, Counter[int]] = defaultdict(Counter)
    for r in rows:
        acc[r["customer"]][r["ts"] - r["ts"] % 60_000] += 1
    return {k: dict(v) for k, v in acc.items()}


@pytest.fixture(scope="module")
def finished(
    broker: EmbeddedBroker, ray_local: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[rs.App, rs.RunningApp, list[dict[str, Any]], list[dict[str, Any]], str]]:
    """A bounded app over two inputs (murmur2- and CRC32-partitioned), run to its end once for
    the module's tests; the last of them stops it."""
    bs = broker.bootstrap
    unique = f"tools{time.time_ns() % 10**9}"
    tmp_path = tmp_path_factory.mktemp(unique)
    murmur, crc = f"{unique}.murmur", f"{unique}.crc"
    create_topic(bs, murmur, PARTITIONS)
    create_topic(bs, crc, PARTITIONS)
    rows_m, rows_c = events(20_000, 1), events(5_000, 2)
    produce_json(bs, murmur, ((r["customer"], r) for r in rows_m))
    produce_crc32(bs, crc, rows_c)
    checkpoints = (tmp_path / "ck").as_uri()
    app = rs.App(
        unique,
        brokers=bs,
        checkpoints=checkpoints,
        view_refresh_ms=100,
        max_batch_records=1_000,
        checkpoint_compact_every=5,  # full epochs and delta chains both in the directory
        http_token=TOKEN,
    )
    m = app.stream(murmur, key="customer", time="ts")
    m.group_by("customer").agg(n=rs.count(), total=rs.sum("amount")).materialize("totals")
    m.group_by("merchant").agg(n=rs.count(), total=rs.sum("amount")).materialize("merchants")
    (
        m.group_by("customer")
        .window(rs.tumbling("1m"))
        .agg(n=rs.count(), emit="update")
        .materialize("per_minute")
    )
    c = app.stream(crc, key="customer", time="ts")
    c.group_by("customer").agg(n=rs.count(), total=rs.sum("amount")).materialize("crc_totals")
    running = app.start(workers=2, bounded=True)
    try:
        assert running.wait(timeout=300) == "finished"
        _wait_for_all_tasks(app)
        yield app, running, rows_m, rows_c, checkpoints
    finally:
        if not running._ended:
            running.stop()


def _wait_for_all_tasks(app: rs.App, timeout: float = 120.0) -> None:
    """Until the view server shows, for every task, the epoch Kafka says is committed."""
    plan = app.plan()
    kafka = app.kafka_config()
    partitions = plan.resolve_partitions(Topics(kafka).require(plan.external_source_topics()))
    heads = committed_heads(kafka, app.name, tuple(plan.tasks(partitions)))
    deadline = time.monotonic() + timeout
    shown: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        rows = app.sql("SELECT task, epoch, attempt FROM raystream_epochs").to_pylist()
        shown = {r["task"]: (r["epoch"], r["attempt"]) for r in rows}
        if shown == heads:
            return
        time.sleep(0.2)
    raise AssertionError(f"the views show {shown}, Kafka committed {heads}")


def test_point_lookups_route_to_the_owner_and_match_the_reference(finished) -> None:  # type: ignore[no-untyped-def]
    app, _, rows_m, rows_c, _ = finished
    bs = app.kafka_config().brokers
    # raystream's partitioner agrees with librdkafka's murmur2_random on every record.
    for msg in read_all(bs, f"{app.name}.murmur"):
        assert partition_for(msg.key or b"", PARTITIONS) == msg.partition

    want = totals(rows_m, "customer")
    started = time.perf_counter()
    for customer, row in want.items():
        assert app.get("totals", customer) == [row]
    per_lookup_ms = (time.perf_counter() - started) * 1000 / len(want)
    print(f"\npoint lookup, routed: {per_lookup_ms:.1f} ms per key over {len(want)} keys")

    # Through a repartition topic (written by raystream: the route is certain).
    for merchant, row in totals(rows_m, "merchant").items():
        assert app.get("merchants", merchant) == [row]
    # Input partitioned with CRC32: the computed task is often wrong, the lookup asks the others.
    crc = totals(rows_c, "customer")
    started = time.perf_counter()
    for customer, row in crc.items():
        assert app.get("crc_totals", customer) == [row]
    fanout_ms = (time.perf_counter() - started) * 1000 / len(crc)
    print(f"point lookup, CRC32-partitioned input: {fanout_ms:.1f} ms per key")

    # A window aggregate: one row per window, oldest first.
    for customer, per_window in list(minutes(rows_m).items())[:10]:
        got = app.get("per_minute", customer)
        assert [r["window_start"] for r in got] == sorted(per_window)
        assert {r["window_start"]: r["n"] for r in got} == per_window
        one = app.get("per_minute", (customer, min(per_window)))
        assert one == [got[0]]

    assert app.get("totals", "nobody") == []
    assert app.get("merchants", "nobody") == []
    assert rs.get(app.name, "totals", "c7") == [want["c7"]]  # from any driver, by app name
    with pytest.raises(rs.ViewQueryError, match="no view named 'nope'"):
        app.get("nope", "c1")
    # SQL (committed) and lookups (latest) agree once the run is over.
    sql = app.sql("SELECT customer, n, total FROM totals ORDER BY customer").to_pylist()
    assert sql == [want[c] for c in sorted(want)]


def test_cli_sql_and_views(finished, capsys) -> None:  # type: ignore[no-untyped-def]
    app, _, rows_m, _, _ = finished
    want = totals(rows_m, "customer")
    query = "SELECT customer, n, total FROM totals ORDER BY customer"

    assert main(["sql", "--app", app.name, query, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["columns"] == ["customer", "n", "total"]
    assert doc["rows"] == [[c, want[c]["n"], want[c]["total"]] for c in sorted(want)]

    assert main(["sql", query, "--format", "csv"]) == 0  # the only app serving views
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '"customer","n","total"' and len(lines) == len(want) + 1

    assert main(["sql", "--app", app.name, query]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["customer", "n", "total"] and text[-1] == f"({len(want)} rows)"
    first = min(want)
    assert text[2].split() == [first, str(want[first]["n"]), str(want[first]["total"])]

    now = str(time.time())
    assert main(["sql", "--app", app.name, query, "--format", "json", "--as-of", now]) == 0
    assert json.loads(capsys.readouterr().out) == doc  # time travel to now: the same answer
    assert main(["sql", "--app", app.name, "SELECT count(*) AS c FROM totals", "--as-of", "1"]) == 1
    assert "no epoch from that time" in capsys.readouterr().err

    assert main(["sql", "--app", app.name, "DROP TABLE totals"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: only SELECT") and "Traceback" not in err
    assert main(["sql", "--app", "nope", "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert "'nope' has no view server running" in err and app.name in err

    assert main(["views", "--app", app.name]) == 0
    out = capsys.readouterr().out
    assert "totals" in out and "per_minute" in out and "4/4 tasks" in out
    assert main(["views", "--app", app.name, "--json"]) == 0
    listed = {v["name"]: v for v in json.loads(capsys.readouterr().out)}
    assert listed["totals"]["rows"] == len(want) and listed["totals"]["tasks_committed"] == 4


def test_cli_sql_writes_arrow(finished, capsysbinary) -> None:  # type: ignore[no-untyped-def]
    app, _, rows_m, _, _ = finished
    q = "SELECT sum(n) AS n, count(*) AS c FROM totals"
    assert main(["sql", "--app", app.name, q, "--format", "arrow"]) == 0
    table = pa.ipc.open_stream(capsysbinary.readouterr().out).read_all()
    assert table.to_pylist() == [{"n": len(rows_m), "c": len(totals(rows_m, "customer"))}]


def test_http_needs_the_bearer_token(finished) -> None:  # type: ignore[no-untyped-def]
    _, running, rows_m, _, _ = finished
    url = running.view_info()["http"]
    assert url.startswith("http://127.0.0.1:")
    q = f"{url}/sql?q=SELECT%20sum(n)%20AS%20n%20FROM%20totals"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(q, headers=headers))
        assert err.value.code == 401, headers
        assert json.loads(err.value.read()) == {"error": "missing or wrong bearer token"}
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/views")
    assert err.value.code == 401
    ok = urllib.request.Request(q, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(ok) as resp:
        assert resp.status == 200
        assert json.load(resp) == {"columns": ["n"], "rows": [[len(rows_m)]]}


def test_point_lookups_over_http_match_the_python_api(finished) -> None:  # type: ignore[no-untyped-def]
    app, running, rows_m, _, _ = finished
    url = running.view_info()["http"]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def lookup(path: str) -> Any:
        with urllib.request.urlopen(urllib.request.Request(f"{url}{path}", headers=auth)) as r:
            return json.load(r)

    want = totals(rows_m, "customer")
    for customer in list(want)[:20]:
        got = lookup(f"/views/totals/rows?key={customer}")
        assert got == {"view": "totals", "key": customer, "rows": [want[customer]]}
    customer, per_window = next(iter(minutes(rows_m).items()))
    start = min(per_window)
    key = urllib.request.quote(json.dumps([customer, start]))
    got = lookup(f"/views/per_minute/rows?key={key}&key_type=json")
    assert got["rows"] == app.get("per_minute", (customer, start)) and len(got["rows"]) == 1
    assert lookup("/views/totals/rows?key=nobody")["rows"] == []
    for bad, why in [
        ("/views/nope/rows?key=c1", "no view named 'nope'"),
        ("/views/totals/rows", "needs ?key="),
        ("/views/totals/rows?key=x&key_type=int", "is not a int"),
        ("/views/totals/rows?key=x&key_type=uuid", "key_type must be"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as err:
            lookup(bad)
        assert err.value.code == 400 and why in json.loads(err.value.read())["error"], bad


def test_non_loopback_http_without_a_token_fails_fast() -> None:
    for host in ("0.0.0.0", "192.168.1.20", "example.com"):
        with pytest.raises(rs.ConfigError, match="http_token"):
            rs.App("x", http_host=host)
        rs.App("x", http_host=host, http_token=TOKEN)  # allowed with a token
        rs.App("x", http_host=host, http_port=None)  # or with HTTP off


def test_plain_duckdb_reads_the_stopped_apps_views(finished, capsys) -> None:  # type: ignore[no-untyped-def]
    app, running, rows_m, rows_c, checkpoints = finished
    queries = {
        "totals": "SELECT customer, n, total FROM totals ORDER BY customer",
        "merchants": "SELECT merchant, n, total FROM merchants ORDER BY merchant",
        "per_minute": "SELECT customer, window_start, n FROM per_minute ORDER BY ALL",
        "crc_totals": "SELECT customer, n, total FROM crc_totals ORDER BY customer",
        "epochs": "SELECT task, epoch, attempt FROM raystream_epochs ORDER BY task",
        "offsets": 'SELECT task, topic, "partition", "offset" FROM raystream_offsets ORDER BY ALL',
    }
    served = {name: app.sql(q).to_pylist() for name, q in queries.items()}
    running.stop()

    kafka = app.kafka_config()
    for with_kafka in (kafka, None):
        sql = attach_sql(checkpoints, app.name, with_kafka)
        assert ("committed offsets in Kafka" in sql) == (with_kafka is not None)
        con = duckdb.connect()
        con.execute(sql)
        offline = {name: con.sql(q).fetchall() for name, q in queries.items()}
        con.close()
        for name, rows in served.items():
            assert offline[name] == [tuple(r.values()) for r in rows], name

    want = totals(rows_m, "customer")
    assert served["totals"] == [want[c] for c in sorted(want)]
    assert sum(r["n"] for r in served["crc_totals"]) == len(rows_c)

    args = ["views", "attach-sql", "--checkpoints", checkpoints, "--app", app.name]
    assert main([*args, "--no-broker"]) == 0
    assert "newest published" in capsys.readouterr().out
    assert main([*args, "--brokers", kafka.brokers]) == 0
    printed = capsys.readouterr().out
    assert "committed offsets in Kafka" in printed
    con = duckdb.connect()
    con.execute(printed)
    assert con.sql(queries["totals"]).fetchall() == [tuple(want[c].values()) for c in sorted(want)]
    con.close()
    assert main(["views", "attach-sql", "--checkpoints", checkpoints, "--app", "nope"]) == 1
    assert "no published checkpoint epoch of app 'nope'" in capsys.readouterr().err


def test_lookups_see_processed_records_before_they_are_committed(
    broker: EmbeddedBroker, ray_local: None, unique: str, tmp_path: Path
) -> None:
    bs = broker.bootstrap
    src = f"{unique}.events"
    create_topic(bs, src, 2)
    rows = events(2_000, 3)
    produce_json(bs, src, ((r["customer"], r) for r in rows))
    app = rs.App(
        unique,
        brokers=bs,
        checkpoints=(tmp_path / "ck").as_uri(),
        view_refresh_ms=100,
        commit_interval_ms=300_000,  # no epoch commits during this test
        stall_timeout_ms=3_000_000,
        http_port=None,
    )
    app.stream(src, key="customer", time="ts").group_by("customer").agg(n=rs.count()).materialize(
        "counts"
    )
    want = Counter(r["customer"] for r in rows)
    running = app.start(workers=2)
    try:
        deadline = time.monotonic() + 120
        got: dict[str, list[dict[str, Any]]] = {}
        while time.monotonic() < deadline:
            try:
                got = {c: app.get("counts", c) for c in want}
            except rs.RuntimeStateError as exc:  # a task still starting: says so, try again
                assert "recovering" in str(exc)
            if got and all(got[c] and got[c][0]["n"] == n for c, n in want.items()):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"lookups never reached the input's counts: {got}")
        # Every record is processed and visible to lookups; none is committed, so SQL (whole
        # committed epochs only) still has nothing.
        assert app.sql("SELECT count(*) AS c FROM raystream_epochs").to_pylist() == [{"c": 0}]
        assert app.sql("SELECT count(*) AS c FROM counts").to_pylist() == [{"c": 0}]
    finally:
        running.stop()
