"""The TopologyTestDriver runs the worker's task code in-process."""

from __future__ import annotations

import raystream as rs
from raystream.testing import TopologyTestDriver


def build() -> rs.App:
    app = rs.App("drv", brokers="unused:1")
    big, rest = app.stream("payments", key="customer", time="ts").branch(
        lambda r: r["amount"] >= 100
    )
    big.map(lambda r: {**r, "review": True}).to("review")
    rest.flat_map(lambda r: [r, r] if r["amount"] == 0 else [r]).to("ok")
    return app


def test_records_flow_to_their_sinks_with_key_and_event_time() -> None:
    d = TopologyTestDriver(build())
    d.pipe(
        "payments",
        [
            {"customer": "a", "amount": 150, "ts": 1000},
            {"customer": "b", "amount": 5, "ts": 2000},
            {"customer": "c", "amount": 0, "ts": 3000},
        ],
    )
    review = d.read("review")
    assert [(r.key, r.timestamp, r.json()) for r in review] == [
        (b"a", 1000, {"customer": "a", "amount": 150, "ts": 1000, "review": True})
    ]
    assert review[0].headers["rs.task"] == "0_0"
    assert [r.json()["customer"] for r in d.read("ok")] == ["b", "c", "c"]
    assert d.read("ok") == []  # read consumes


def test_bad_records_go_to_the_dead_letter_topic_with_headers() -> None:
    d = TopologyTestDriver(build())
    d.pipe(
        "payments",
        [b"{oops", {"customer": "x", "ts": 5}, {"customer": "y", "amount": 1}],
    )
    dlq = sorted(d.read("payments.dlq"), key=lambda r: int(r.headers["rs.source.offset"]))
    assert [r.headers["rs.source.offset"] for r in dlq] == ["0", "1", "2"]
    assert dlq[0].value == b"{oops"
    assert [r.headers["rs.operator"] for r in dlq] == ["decode", "branch-1", "decode"]
    # A field some values of the batch lack is null in those (as pyarrow.json reads batches):
    # "amount" is None in record 1, and the branch's comparison raises.
    assert dlq[1].headers["rs.error.class"] == "builtins.TypeError"
    assert dlq[1].value == b'{"customer":"x","ts":5}'
    assert "event-time field 'ts'" in dlq[2].headers["rs.error.message"]
    assert {r.headers["rs.source.topic"] for r in dlq} == {"payments"}
    assert d.read("review") == [] and d.read("ok") == []
