"""Read a benchmark's output topic back and compare it with the expected results.

Every run is verified: a fast wrong run is a failure. The checks are exact: every expected
result present once, nothing else, values equal (W1 sums within :data:`SUM_TOLERANCE`, so an
implementation may round them to cents).

Exactly-once output is read with ``read_committed``. The embedded broker does not hide aborted
transactional records from such readers (BROKER.md quirk 2): records of an aborted transaction
would show up here as duplicates or mismatches, so a clean EOS run must also report no aborted
transactions (the baseline counts its aborts in ``extra["aborted_transactions"]``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.registry import Verification
from bench.workload import WINDOW_MS, Expected, Workload, w2_digest
from raystream._kafka.admin import committed_offsets, end_offsets
from raystream.config import KafkaConfig

#: Largest accepted difference between a W1 sum and the expected one (rounding to cents).
SUM_TOLERANCE = 0.006
_SHOW = 5


def read_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    isolation: str = "read_committed",
    idle_s: float = 3.0,
) -> Iterator[bytes | None]:
    """Yield every record value of ``topic`` from the beginning to its current end.

    The end is the fetch high watermark (BROKER.md quirk 3). A partition whose position stops
    short of it (e.g. a trailing transaction marker) ends after ``idle_s`` without new records.
    """
    cfg = KafkaConfig(brokers=bootstrap)
    ends = end_offsets(cfg, [(topic, p) for p in range(partitions)])
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-verify-{topic}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "fetch.wait.max.ms": 50,
            "log_level": 3,
        }
    )
    tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
    try:
        c.assign(tps)
        last = time.monotonic()
        while True:
            msgs = c.consume(num_messages=10_000, timeout=0.2)
            for m in msgs:
                if m.error() is not None:
                    raise RuntimeError(f"reading {topic} back: {m.error()}")
                yield m.value()
            now = time.monotonic()
            if msgs:
                last = now
            pos = c.position([TopicPartition(topic, p) for p in range(partitions)])
            if all(tp.offset >= ends[(topic, tp.partition)] for tp in pos):
                return
            if now - last > idle_s:
                return
    finally:
        c.close()


def verify_w1(bootstrap: str, topic: str, exp: Expected, isolation: str) -> Verification:
    """Check W1 results: one per non-empty (customer, window), count exact, sum within tolerance.

    A result record is JSON with ``customer_id``, ``window_start``, ``window_end`` (exclusive),
    ``n`` and ``total``; other fields are ignored.
    """
    seen = bytearray(len(exp.w1_count))
    read = dup = unexpected = bad = 0
    details: list[str] = []
    for value in read_topic(bootstrap, topic, exp.spec.partitions, isolation):
        read += 1
        r = json.loads(value) if value is not None else {}
        slot = exp.w1_slot(str(r.get("customer_id")), r.get("window_start", -1))
        if slot is None or not exp.w1_count[slot]:
            unexpected += 1
            if len(details) < _SHOW:
                details.append(f"unexpected result {r}")
            continue
        if seen[slot]:
            dup += 1
            if len(details) < _SHOW:
                details.append(f"duplicate result {r}")
            continue
        seen[slot] = 1
        n, total = exp.w1_count[slot], exp.w1_sum[slot]
        if (
            r.get("n") != n
            or r.get("window_end") != r["window_start"] + WINDOW_MS
            or not isinstance(r.get("total"), int | float)
            or abs(r["total"] - total) > SUM_TOLERANCE
        ):
            bad += 1
            if len(details) < _SHOW:
                details.append(f"wrong result {r}: expected n={n} total={total:.2f}")
    expected = exp.w1_results
    missing = expected - sum(seen)
    if missing and len(details) < _SHOW:
        details.append(f"{missing} results missing")
    ok = not (missing or dup or unexpected or bad)
    return Verification(ok, expected, read, missing, dup, unexpected, bad, details)


def verify_w2(bootstrap: str, topic: str, exp: Expected, isolation: str) -> Verification:
    """Check W2 results: every payment once, with its profile fields (:data:`W2_FIELDS`)."""
    n = exp.spec.records
    seen = bytearray(n)
    read = dup = unexpected = bad = 0
    details: list[str] = []
    for value in read_topic(bootstrap, topic, exp.spec.partitions, isolation):
        read += 1
        r = json.loads(value) if value is not None else {}
        pid = r.get("payment_id")
        i = int(pid[1:]) if isinstance(pid, str) and pid[1:].isdigit() else -1
        if not 0 <= i < n:
            unexpected += 1
            if len(details) < _SHOW:
                details.append(f"unexpected record {r}")
            continue
        if seen[i]:
            dup += 1
            if len(details) < _SHOW:
                details.append(f"duplicate record {r}")
            continue
        seen[i] = 1
        if w2_digest(r) != exp.w2_digest[i]:
            bad += 1
            if len(details) < _SHOW:
                details.append(f"wrong record {r}")
    missing = n - sum(seen)
    if missing and len(details) < _SHOW:
        details.append(f"{missing} records missing")
    ok = not (missing or dup or unexpected or bad)
    return Verification(ok, n, read, missing, dup, unexpected, bad, details)


def offsets_problems(bootstrap: str, group_id: str, workload: Workload) -> list[str]:
    """Differences between the group's committed offsets on ``payments`` and its end offsets."""
    topic = workload.spec.payments_topic
    got = committed_offsets(
        KafkaConfig(brokers=bootstrap), group_id, [(topic, p) for p in workload.payments_end]
    )
    return [
        f"committed offset of {topic}[{p}] is {got[(topic, p)]}, end is {end}"
        for p, end in workload.payments_end.items()
        if got[(topic, p)] != end
    ]
