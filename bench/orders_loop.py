"""The order saga and its services as the simplest hand-written confluent-kafka loops: the
baseline of ``bench.orders_latency --system loop``.

Two processes, as raystream runs two apps: the saga (``jobs.order_saga.OrderSaga`` over the
inbox) and the services (payment and inventory replies, ``jobs.order_services.ShippingService``
with its delays). Each is one loop: ``consume()`` (waiting at most the poll timeout), then per
record ``json.loads``, the same process function as the jobs' with a dict for its key's state and
a heap for its processing-time timers, ``json.dumps`` and ``produce`` of what it emits (keyed by
order id); due timers fire between batches. Every ``commit_interval_ms`` a transaction commits
the outputs with the input offsets (inputs read ``read_committed``), as the apps do with the
same settings, so both pay the same broker hops. The loops keep no checkpoint and no read
model: they measure what the broker's hops alone cost the saga at this rate.
"""

from __future__ import annotations

import heapq
import json
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

import raystream as rs
from jobs.order_saga import OrderSaga
from jobs.order_services import ShippingService, inventory_reply, payment_reply
from raystream.generate.orders import OrdersSpec


@dataclass(frozen=True)
class LoopSettings:
    """What both loops share with the apps they stand for (``bench.orders_latency``'s options)."""

    bootstrap: str
    partitions: int
    commit_interval_ms: int
    poll_timeout_ms: int
    fetch_wait_ms: int
    linger_ms: int


class _Timers:
    """A key's processing-time timers, kept in the loop's heap (deleted ones are skipped)."""

    __slots__ = ("heap", "key", "live")

    def __init__(self, heap: list[tuple[int, str]], live: set[tuple[int, str]], key: str) -> None:
        self.heap, self.live, self.key = heap, live, key

    def register_processing_time(self, timestamp: int) -> None:
        if (timestamp, self.key) not in self.live:
            self.live.add((timestamp, self.key))
            heapq.heappush(self.heap, (timestamp, self.key))

    def delete_processing_time(self, timestamp: int) -> None:
        self.live.discard((timestamp, self.key))


class _Context:
    """The part of ``rs.ProcessContext`` the saga and the services use."""

    __slots__ = ("emits", "key", "processing_time", "state", "timers", "timestamp")

    def __init__(
        self, key: str, state: dict[str, Any], timestamp: int, timers: _Timers, emits: list[Any]
    ) -> None:
        self.key, self.state, self.timestamp, self.timers = key, state, timestamp, timers
        self.processing_time = int(time.time() * 1000)
        self.emits = emits

    def emit(
        self, value: dict[str, Any], *, timestamp: int | None = None, to: str | None = None
    ) -> None:
        self.emits.append((to, value, self.timestamp if timestamp is None else timestamp))


#: ``handler(ctx, value)`` for one input record.
Handler = Callable[[_Context, dict[str, Any]], None]
#: ``on_timer(ctx, timestamp)`` for a due timer.
OnTimer = Callable[[_Context, int], None]


def run_loop(
    name: str,
    cfg: LoopSettings,
    handlers: dict[str, Handler],
    on_timer: OnTimer,
    routes: dict[str | None, str],
    ready: Event,
    stop: Event,
    conn: Connection,
) -> None:
    """Consume ``handlers``' topics, run each record through its handler, write what it emits to
    ``routes[to]``, fire due timers, commit a transaction every ``commit_interval_ms``; until
    ``stop``. Sends its counters (or the error) on ``conn``."""
    consumer = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap,
            "group.id": f"bench-loop-{name}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",  # never skip ahead silently
            "fetch.wait.max.ms": cfg.fetch_wait_ms,
            "log_level": 3,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": cfg.bootstrap,
            "transactional.id": f"bench-loop-{name}-{time.time_ns()}",
            "linger.ms": cfg.linger_ms,
            "partitioner": "murmur2_random",
            "log_level": 3,
        }
    )
    counts = {"records": 0, "emitted": 0, "commits": 0, "timers": 0}
    try:
        tps = [TopicPartition(t, p) for t in handlers for p in range(cfg.partitions)]
        consumer.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in tps])
        producer.init_transactions(30)
        producer.begin_transaction()
        states: dict[str, dict[str, Any]] = {}
        heap: list[tuple[int, str]] = []
        live: set[tuple[int, str]] = set()
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        interval, wait = cfg.commit_interval_ms / 1000, cfg.poll_timeout_ms / 1000
        ready.set()
        last_commit = time.monotonic()
        while not stop.is_set():
            emits: list[Any] = []
            keys: list[str] = []
            for m in consumer.consume(10_000, wait):
                if m.error() is not None:
                    raise KafkaException(m.error())
                key = (m.key() or b"").decode()
                ctx = _Context(
                    key,
                    states.setdefault(key, {}),
                    m.timestamp()[1],
                    _Timers(heap, live, key),
                    emits,
                )
                handlers[m.topic()](ctx, json.loads(m.value()))  # type: ignore[arg-type,index]
                keys.extend([key] * (len(emits) - len(keys)))
                counts["records"] += 1
            now = int(time.time() * 1000)
            while heap and heap[0][0] <= now:
                ts, key = heapq.heappop(heap)
                if (ts, key) not in live:
                    continue
                live.discard((ts, key))
                state = states.setdefault(key, {})
                on_timer(_Context(key, state, ts, _Timers(heap, live, key), emits), ts)
                keys.extend([key] * (len(emits) - len(keys)))
                counts["timers"] += 1
            for (to, value, ts), key in zip(emits, keys, strict=True):
                producer.produce(
                    routes[to], dumps(value).encode(), key.encode(), -1, None, None, ts
                )
            counts["emitted"] += len(emits)
            producer.poll(0)
            if time.monotonic() - last_commit >= interval:
                offsets = [tp for tp in consumer.position(tps) if tp.offset >= 0]
                producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), 30
                )
                producer.commit_transaction(30)
                producer.begin_transaction()
                counts["commits"] += 1
                last_commit = time.monotonic()
        conn.send(counts)
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}", **counts})
        raise
    finally:
        consumer.close()
        conn.close()


def saga_loop(
    cfg: LoopSettings,
    topics: Any,
    shipping_timeout_ms: int,
    ready: Event,
    stop: Event,
    conn: Connection,
) -> None:
    """The saga: ``OrderSaga`` over the inbox, writing the event log and the three commands."""
    saga = OrderSaga(shipping_timeout_ms=shipping_timeout_ms)
    routes: dict[str | None, str] = {
        "events": topics.events,
        "payment": topics.payment,
        "inventory": topics.inventory,
        "shipping": topics.shipping,
    }
    run_loop(
        "saga",
        cfg,
        {topics.inbox: lambda ctx, v: saga.process(ctx, ctx.key, v)},  # type: ignore[arg-type]
        lambda ctx, ts: saga.on_timer(ctx, ctx.key, ts, rs.TimeDomain.PROCESSING_TIME),  # type: ignore[arg-type]
        routes,
        ready,
        stop,
        conn,
    )


def services_loop(
    cfg: LoopSettings,
    topics: Any,
    spec: OrdersSpec,
    ready: Event,
    stop: Event,
    conn: Connection,
) -> None:
    """The services: payment and inventory answer at once, shipping after the fated delay."""
    shipping = ShippingService(spec)
    run_loop(
        "services",
        cfg,
        {
            topics.payment: lambda ctx, v: ctx.emit(payment_reply(spec, v)),
            topics.inventory: lambda ctx, v: ctx.emit(inventory_reply(spec, v)),
            topics.shipping: lambda ctx, v: shipping.process(ctx, ctx.key, v),  # type: ignore[arg-type]
        },
        lambda ctx, ts: shipping.on_timer(ctx, ctx.key, ts, rs.TimeDomain.PROCESSING_TIME),  # type: ignore[arg-type]
        {None: topics.inbox},
        ready,
        stop,
        conn,
    )


class LoopSystem:
    """The two loops in spawned processes, with ``bench.orders_latency``'s settings."""

    def __init__(self, args: Any, bootstrap: str, topics: Any, spec: OrdersSpec) -> None:
        from jobs.order_processing import ensure_topics
        from raystream.config import KafkaConfig

        ensure_topics(KafkaConfig(bootstrap), topics)
        cfg = LoopSettings(
            bootstrap,
            args.partitions,
            args.commit_interval_ms,
            args.poll_timeout_ms,
            args.fetch_wait_ms,
            args.linger_ms,
        )
        mp = multiprocessing.get_context("spawn")
        self.stopping = mp.Event()
        self.loops: dict[str, tuple[Any, Any, Connection]] = {}
        for name, target, extra in (
            ("saga", saga_loop, spec.shipping_timeout_ms),
            ("services", services_loop, spec),
        ):
            ready = mp.Event()
            parent, child = mp.Pipe(duplex=False)
            proc = mp.Process(
                target=target,
                args=(cfg, topics, extra, ready, self.stopping, child),
                name=f"bench:orders-{name}-loop",
            )
            proc.start()
            child.close()
            self.loops[name] = (proc, ready, parent)

    def wait_running(self) -> None:
        """Until both loops have their clients ready (or one failed)."""
        for name, (proc, ready, _) in self.loops.items():
            if not ready.wait(60):
                raise TimeoutError(f"the {name} loop did not start (exit code {proc.exitcode})")

    def timings(self) -> dict[str, Any]:
        """The loops keep no epoch metrics."""
        return {}

    def stop(self) -> dict[str, Any]:
        """Stop both loops (each commits nothing more); what each processed, or its error."""
        self.stopping.set()
        out: dict[str, Any] = {}
        for name, (proc, _, conn) in self.loops.items():
            out[name] = conn.recv() if conn.poll(30) else {"error": "no report"}
            proc.join(10)
            if proc.is_alive():
                proc.kill()  # our own child, by its pid
                proc.join(5)
        return out
