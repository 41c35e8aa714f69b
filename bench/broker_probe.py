"""Three behaviours of the embedded broker (Tansu 0.6.0, memory storage) that shape every figure
measured on it, each on a fresh broker of its own, with plain confluent-kafka clients (no
raystream runtime):

    python -m bench.broker_probe                         # all three, ~3 min
    python -m bench.broker_probe --probe tail --producers 4 --pause-ms 1
    python -m bench.broker_probe --probe growth --seconds 120 --out F.json

``tail``: several producers write one partition at once (transactions of ``--per-txn`` records,
``--pause-ms`` between them) while a ``read_committed`` consumer follows it; afterwards a second
consumer reads the partition from offset 0. Every record the second one reads below the
follower's last offset and the follower never saw was *passed over* by the follower: it is in
the log, yet a consumer tailing the partition skipped it.

``growth``: one transactional producer writes a steady load into two partitions while a
consumer follows them; per 10 s, the broker's CPU and the produce-to-read latency. On Apache
Kafka both stay flat; on the embedded broker each fetch lists every batch the partition holds,
so both grow with the log. With ``--no-follower`` nothing reads, and the broker's CPU stays
flat: the growth is the reads'.

``fetch-cost``: why. One partition is written one batch at a time; after each step a consumer
reads its last record ``--reads`` times, each from a fresh assignment, and the broker's CPU per
read is noted. Tansu's ``fetch`` (``tansu-storage/src/dynostore.rs``) lists every stored batch
object of the partition whenever the position is below the high watermark (the last stable
offset for ``read_committed``), so a read costs more the more batches (and transaction
markers) the partition holds, whatever the position. A fetch at the end of the log lists
nothing and stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from raystream._kafka.admin import Topics
from raystream.config import KafkaConfig
from raystream.dev.broker import EmbeddedBroker

_TICK = os.sysconf("SC_CLK_TCK")


@contextmanager
def _fresh_broker(topics: dict[str, int]) -> Iterator[tuple[str, int]]:
    """A broker of the probe's own with ``topics`` created: its bootstrap address and pid.
    Stopped on leaving."""
    with EmbeddedBroker() as broker:
        Topics(KafkaConfig(broker.bootstrap)).ensure(topics)
        assert broker.pid is not None
        yield broker.bootstrap, broker.pid


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _consumer(bootstrap: str, group: str, fetch_wait_ms: int) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
            "auto.offset.reset": "error",
        }
    )


def _read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, bytes]:
    """Every record of ``topic`` (partition 0), offset -> value, read from offset 0 at rest."""
    c = _consumer(bootstrap, f"probe-reread-{time.monotonic_ns()}", 100)
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: dict[int, bytes] = {}
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < 3.0:
            msgs = c.consume(10_000, 0.5)
            for m in msgs:
                if m.error() is None:
                    out[m.offset()] = m.value()
            if msgs:
                quiet_since = time.monotonic()
    finally:
        c.close()
    return out


def tail_probe(producers: int, seconds: float, per_txn: int, pause_ms: float) -> dict[str, Any]:
    """Several transactional producers into one partition; what a follower of it misses."""
    with _fresh_broker({"t": 1}) as (bs, _pid):
        sent = [0] * producers
        seen: dict[int, bytes] = {}
        errors: list[str] = []
        stop = threading.Event()

        def produce(i: int) -> None:
            p = Producer({"bootstrap.servers": bs, "transactional.id": f"probe{i}", "linger.ms": 1})
            p.init_transactions(10)
            end, n = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                p.begin_transaction()
                for _ in range(per_txn):
                    p.produce("t", b"%d-%d" % (i, n))
                    n += 1
                p.commit_transaction(30)
                if pause_ms:
                    time.sleep(pause_ms / 1000)
            sent[i] = n

        def follow() -> None:
            c = _consumer(bs, "probe-tail", 5)
            c.assign([TopicPartition("t", 0, 0)])
            try:
                while not stop.is_set():
                    for m in c.consume(1000, 0.01):
                        if m.error() is None:
                            seen[m.offset()] = m.value()
                        else:
                            errors.append(f"{m.error()} at offset {m.offset()}")
            finally:
                c.close()

        follower = threading.Thread(target=follow)
        follower.start()
        writers = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
        total = sum(sent)
        # The follower may lag far behind (each of its fetches returns a few batches): let it
        # reach the end before judging what it passed over.
        deadline = time.monotonic() + 120
        progress = []
        while len(seen) < total and time.monotonic() < deadline:
            before = len(seen)
            time.sleep(2.0)
            progress.append(len(seen))
            if len(seen) == before and len(progress) >= 5 and progress[-5] == len(seen):
                break
        stop.set()
        follower.join()
        log = _read_all(bs, "t", 1)
        last = max(seen) if seen else -1
        passed = sorted(o for o in log if o < last and o not in seen)
        return {
            "producers": producers,
            "seconds": seconds,
            "records_per_transaction": per_txn,
            "pause_ms": pause_ms,
            "sent": total,
            "in_log": len(log),
            "follower_saw": len(seen),
            "passed_over": len(passed),
            "passed_over_offsets": passed[:20],
            "follower_last_offset": last,
            "follower_errors": errors[:5],
            "unread_beyond_follower": sum(1 for o in log if o > last),
            "follower_progress_every_2s": progress,
        }


def growth_probe(
    seconds: float, txn_per_s: float, per_txn: int, follower: bool = True
) -> dict[str, Any]:
    """A steady transactional load into 2 partitions: broker CPU and latency per 10 s. Without
    ``follower`` nothing reads, which tells the cost of writing from the cost of reading."""
    with _fresh_broker({"g": 2}) as (bs, pid):
        lat: dict[int, list[float]] = {}
        stop = threading.Event()
        start = time.time()

        def follow() -> None:
            c = _consumer(bs, "probe-growth", 25)
            c.assign([TopicPartition("g", p, 0) for p in range(2)])
            try:
                while not stop.is_set():
                    for m in c.consume(1000, 0.002):  # return at once: stamp on arrival
                        if m.error() is None:
                            t0 = float(m.value()[:20])
                            lat.setdefault(int((t0 - start) // 10), []).append(
                                (time.time() - t0) * 1000
                            )
            finally:
                c.close()

        reader = threading.Thread(target=follow)
        if follower:
            reader.start()
        p = Producer({"bootstrap.servers": bs, "transactional.id": "probe-g", "linger.ms": 5})
        p.init_transactions(10)
        pad = b"x" * 150
        cpu = [_cpu_seconds(pid)]
        n, next_mark = 0, start + 10
        while time.time() - start < seconds:
            due = start + n / txn_per_s
            if due > time.time():
                time.sleep(due - time.time())
            p.begin_transaction()
            now = time.time()
            for i in range(per_txn):
                p.produce("g", b"%20.6f" % now + pad, b"%d" % i)
            p.commit_transaction(30)
            n += 1
            if time.time() >= next_mark:
                cpu.append(_cpu_seconds(pid))
                next_mark += 10
        time.sleep(1.0)
        stop.set()
        if follower:
            reader.join()
        windows = []
        for k in range(len(cpu) - 1):
            w: dict[str, Any] = {
                "from_s": k * 10,
                "broker_cpu_pct": round((cpu[k + 1] - cpu[k]) * 10, 1),
            }
            xs = sorted(lat.get(k, []))
            if len(xs) >= 10:
                w["p50_ms"] = round(statistics.median(xs), 1)
                w["p99_ms"] = round(xs[int(len(xs) * 0.99) - 1], 1)
            windows.append(w)
        return {
            "follower": follower,
            "seconds": seconds,
            "transactions_per_s": txn_per_s,
            "records_per_transaction": per_txn,
            "by_10s": windows,
        }


def fetch_cost_probe(steps: list[int], reads: int) -> list[dict[str, Any]]:
    """Broker CPU per read of a partition's last record, by how many batches it holds."""
    with _fresh_broker({"f": 1}) as (bs, pid):
        p = Producer({"bootstrap.servers": bs, "linger.ms": 0})
        c = _consumer(bs, "probe-fetch-cost", 5)
        out: list[dict[str, Any]] = []
        held = 0
        try:
            for target in steps:
                while held < target:
                    p.produce("f", b"x" * 50, b"k", partition=0)
                    p.flush()  # one request, so one stored batch
                    held += 1
                before, t0 = _cpu_seconds(pid), time.monotonic()
                for _ in range(reads):
                    c.assign([TopicPartition("f", 0, held - 1)])
                    while (m := c.poll(5.0)) is None or m.error() is not None:
                        pass
                    c.unassign()
                cpu_ms = (_cpu_seconds(pid) - before) / reads * 1e3
                out.append(
                    {
                        "batches": held,
                        "broker_cpu_ms_per_read": round(cpu_ms, 2),
                        "wall_ms_per_read": round((time.monotonic() - t0) / reads * 1e3, 1),
                    }
                )
        finally:
            c.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", choices=["tail", "growth", "fetch-cost", "all"], default="all")
    ap.add_argument("--producers", type=int, default=4, help="tail: producers of one partition")
    ap.add_argument("--per-txn", type=int, default=5, help="records per transaction")
    ap.add_argument("--pause-ms", type=float, nargs="+", default=[10.0, 1.0])
    ap.add_argument("--seconds", type=float, default=None, help="tail 15 s, growth 90 s")
    ap.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[500, 1000, 2000, 3000, 4000, 5000],
        help="fetch-cost: batches the partition holds at each step",
    )
    ap.add_argument("--reads", type=int, default=30, help="fetch-cost: reads per step")
    ap.add_argument("--no-follower", action="store_true", help="growth: write only, never read")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.probe in ("tail", "all"):
        result["tail"] = []
        for pause in args.pause_ms:
            r = tail_probe(args.producers, args.seconds or 15.0, args.per_txn, pause)
            result["tail"].append(r)
            print(
                f"tail: {r['producers']} producers, {r['records_per_transaction']} records a "
                f"transaction, {r['pause_ms']} ms apart: {r['sent']} sent, {r['in_log']} in the "
                f"log, the follower saw {r['follower_saw']}, passed over {r['passed_over']} "
                f"(e.g. offsets {r['passed_over_offsets'][:5]}), "
                f"{r['unread_beyond_follower']} unread beyond it",
                flush=True,
            )
    if args.probe in ("growth", "all"):
        g = growth_probe(args.seconds or 90.0, 25.0, 20, follower=not args.no_follower)
        result["growth"] = g
        for w in g["by_10s"]:
            latency = f", latency p50 {w['p50_ms']} / p99 {w['p99_ms']} ms" if "p50_ms" in w else ""
            print(
                f"growth: {w['from_s']:>3}-{w['from_s'] + 10} s broker {w['broker_cpu_pct']}% "
                f"of a core{latency}",
                flush=True,
            )
    if args.probe in ("fetch-cost", "all"):
        result["fetch_cost"] = fetch_cost_probe(args.batches, args.reads)
        for row in result["fetch_cost"]:
            print(
                f"fetch-cost: {row['batches']:>6} batches in the partition: a read costs the "
                f"broker {row['broker_cpu_ms_per_read']} ms of CPU ({row['wall_ms_per_read']} "
                f"ms wall)",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
