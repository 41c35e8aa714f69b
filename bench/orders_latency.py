"""End-to-end latency of the order saga at a steady order rate (the seed's floor: 10,000 orders
per minute, sub-second).

    python -m bench.orders_latency                       # 10,000 orders/min for 60 s
    python -m bench.orders_latency --rate 20000 --duration 120 --out bench/results/x.json
    python -m bench.orders_latency --system loop          # the same flow as hand-written loops

Starts an embedded broker (or uses ``--bootstrap``) and a local Ray, runs ``order-processing``
(the saga and the ``orders`` projection) and its simulated services, exactly-once, then writes
``OrderCreated`` events at ``--rate`` orders per minute with ``ts`` = the wall-clock time each is
produced. A read_committed consumer of ``order.events`` notes when each order's terminal event
(OrderCompleted / OrderCancelled) becomes readable; latency = that moment - the order's ``ts``
(carried in every event as ``created_ts``). Every order's terminal state is checked against its
fate; a run with a wrong or missing order fails (exit status 1).

``--system loop`` runs the saga and the services as the simplest confluent-kafka loops instead
(``bench/orders_loop.py``), with the same settings, publisher, reader and checks.

Latency includes the waits the simulated shipping service injects (its fated delay, and for
"timeout" fates the saga's timeout), so figures are given per path: ``no_shipping_wait`` (orders
cancelled before shipping), ``shipping_ok`` (confirmed after 0-10% of the timeout), and for all
orders ``minus_injected_wait`` (the processing time the system itself added).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from jobs.order_services import LOW_LATENCY
from raystream._kafka.fetch import fetch_ready
from raystream.generate.orders import OrdersSpec, expected_outcome, fate

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Arrivals:
    """Terminal events seen by the reader: order id -> (latency ms, state, reason)."""

    seen: dict[str, tuple[int, str, str | None]] = field(default_factory=dict)
    #: (order id, event type) -> the saga's processing time when it decided the event.
    steps: dict[tuple[str, str], int] = field(default_factory=dict)
    #: order id -> when its terminal event became readable (ms) and its created_ts.
    times: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def read_terminals(
    bootstrap: str, topic: str, partitions: int, out: Arrivals, stop: threading.Event
) -> None:
    """Follow ``topic`` from the start with read_committed; note each order's terminal event."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{time.monotonic_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    try:
        while not stop.is_set():
            # Stamp records when they become readable: fetch_ready returns as soon as one is
            # (consume(n, t) alone waits out t for n records).
            msgs = fetch_ready(c, 10_000, 0.05)
            now = int(time.time() * 1000)
            for m in msgs:
                if m.error() is not None or m.value() is None:
                    continue
                e = json.loads(m.value())
                out.steps.setdefault((e["order_id"], e["type"]), int(e["ts"]))
                if e["type"] in ("OrderCompleted", "OrderCancelled"):
                    out.times.setdefault(e["order_id"], (now, int(e["created_ts"])))
                    with out.lock:
                        out.seen.setdefault(
                            e["order_id"], (now - int(e["created_ts"]), e["type"], e["reason"])
                        )
    finally:
        c.close()


def _from_start(
    bootstrap: str, tps: list[TopicPartition] | None, isolation: str, prefix: str = ""
) -> Iterator[Any]:
    """Every record of ``tps`` (None: every partition of the topics named ``prefix...``), read
    from offset 0 with ``isolation`` until each partition reports its end (at most 120 s)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reread-{time.monotonic_ns()}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        if tps is None:
            meta = c.list_topics(timeout=10)
            topics = [t for t in meta.topics if t.startswith(prefix)]
            tps = [TopicPartition(t, p, 0) for t in topics for p in meta.topics[t].partitions]
        c.assign(tps)
        left = {(tp.topic, tp.partition) for tp in tps}
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error() is not None:
                    left.discard((m.topic(), m.partition()))
                    continue
                yield m
    finally:
        c.close()


def terminals_in_log(
    bootstrap: str, topic: str, partitions: int, ids: set[str]
) -> dict[str, tuple[str, str | None]]:
    """The terminal events of orders ``ids`` in ``topic``, read from the start at rest
    (read_committed): tells an order whose end the live reader passed over (the embedded broker
    can let a follower skip a batch, see bench.broker_probe) from one that never ended."""
    found: dict[str, tuple[str, str | None]] = {}
    if not ids:
        return found
    tps = [TopicPartition(topic, p, 0) for p in range(partitions)]
    for m in _from_start(bootstrap, tps, "read_committed"):
        e = json.loads(m.value())
        if e["order_id"] in ids and e["type"] in ("OrderCompleted", "OrderCancelled"):
            found.setdefault(e["order_id"], (e["type"], e["reason"]))
    return found


def trace_orders(bootstrap: str, prefix: str, ids: list[str]) -> list[dict[str, Any]]:
    """Every record of the topics named ``prefix...`` (the flow's, their dead-letter and
    internal topics; read_uncommitted, from the start) that names one of ``ids``: tells a
    missing order's record that never reached the log from one no app processed."""
    if not ids:
        return []
    wanted = [b'"%s"' % i.encode() for i in ids]  # the id as a JSON string, not a prefix
    found: list[dict[str, Any]] = []
    for m in _from_start(bootstrap, None, "read_uncommitted", prefix):
        v = m.value() or b""
        if any(w in v for w in wanted):
            found.append(
                {
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "timestamp": m.timestamp()[1],
                    "value": v.decode(errors="replace")[:200],
                }
            )
    return found


def injected_wait(oid: str, spec: OrdersSpec) -> int:
    """The wait the simulated shipping service injects into ``oid`` on purpose, ms."""
    f = fate(oid, spec)
    if f.payment != "ok" or f.stock != "ok":
        return 0
    return spec.shipping_timeout_ms if f.shipping == "timeout" else f.shipping_delay_ms


def right_outcome(oid: str, spec: OrdersSpec, arrivals: Arrivals) -> bool:
    """Whether ``oid``'s terminal event is the one its fate implies."""
    _, kind, reason = arrivals.seen[oid]
    return (kind, reason) == _expected_end(oid, spec)


def _expected_end(oid: str, spec: OrdersSpec) -> tuple[str, str | None]:
    """The terminal event (type, reason) that ``oid``'s fate implies."""
    want = expected_outcome(oid, spec)
    return f"Order{want.state}", want.reason


def epoch_timings(url: str | None) -> dict[str, dict[str, float]]:
    """From an app's Prometheus endpoint: per worker, epochs committed and the median and p99
    (bucket upper bounds, ms) of its commit time and of the time between two commits."""
    import urllib.request

    if not url:
        return {}
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    hist: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for line in text.splitlines():
        for name in ("raystream_commit_seconds", "raystream_epoch_seconds"):
            if line.startswith(name + "_bucket{"):
                labels, value = line[len(name) + 8 :].rsplit("} ", 1)
                parts = dict(kv.split("=", 1) for kv in labels.split(","))
                le = parts["le"].strip('"')
                worker = parts["worker"].strip('"')
                bound = float("inf") if le == "+Inf" else float(le)
                hist.setdefault((name, worker), []).append((bound, float(value)))
    out: dict[str, dict[str, float]] = {}
    for (name, worker), buckets in sorted(hist.items()):
        buckets.sort()
        total = buckets[-1][1]
        short = "commit" if "commit" in name else "epoch"
        row = out.setdefault(f"worker {worker}", {})
        row["epochs"] = total
        for q in (0.5, 0.99):
            bound = next(b for b, c in buckets if c >= q * total) if total else 0.0
            row[f"{short}_p{int(q * 100)}_ms"] = bound * 1000
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p99 / max (ms) and the count of ``values``."""
    if not values:
        return {"n": 0}
    v = sorted(values)

    def at(q: float) -> float:
        return float(v[min(len(v) - 1, int(q * len(v)))])

    return {"n": len(v), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": float(v[-1])}


class RaystreamSystem:
    """The saga app (``order-processing``'s topology) and the services app, on a local Ray."""

    def __init__(
        self, args: argparse.Namespace, bootstrap: str, prefix: str, spec: OrdersSpec
    ) -> None:
        import ray

        import raystream as rs
        from jobs import order_services
        from jobs.order_processing import OrderTopics, build, ensure_topics

        ray.init(
            address=args.ray_address,
            num_cpus=args.num_cpus,
            include_dashboard=False,
            namespace="raystream",
            log_to_driver=False,
        )
        topics = OrderTopics(prefix)
        self.checkpoints = (Path(args.workdir) / f"{prefix}ck").resolve()
        self.keep_checkpoints: bool = args.keep_checkpoints
        settings: dict[str, Any] = {
            "brokers": bootstrap,
            "checkpoints": self.checkpoints.as_uri(),
            "commit_interval_ms": args.commit_interval_ms,
            "poll_timeout_ms": args.poll_timeout_ms,
            "consumer_config": {"fetch.wait.max.ms": args.fetch_wait_ms, **args.consumer_config},
            "producer_config": {"linger.ms": args.linger_ms},
            "view_refresh_ms": args.view_refresh_ms,
            "checkpoint_compact_every": args.compact_every,
            "metrics_port": 0,  # scraped at the end: commit and epoch durations per worker
            "overlap_commits": args.overlap_commits,
            "commit_when_caught_up": args.commit_when_caught_up,
            "check_gaps": {"auto": None, "on": True, "off": False}[args.check_gaps],
        }
        saga = rs.App(f"{prefix}orders", **{**settings, "guarantee": args.guarantee})
        build(saga, topics, shipping_timeout_ms=spec.shipping_timeout_ms)
        ensure_topics(saga.kafka_config(), topics)
        services = rs.App(f"{prefix}services", **{**settings, "guarantee": args.services_guarantee})
        order_services.build(services, spec, topics)
        self.helpers = services.start(workers=args.service_workers)
        self.running = saga.start(workers=args.workers)

    def wait_running(self) -> None:
        """Until every worker is past recovery and table loading."""
        for app_run in (self.running, self.helpers):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                states = [w["state"] for w in app_run.status()["workers"].values()]
                if states and all(s == "running" for s in states):
                    break
                time.sleep(0.2)

    def timings(self) -> dict[str, Any]:
        """Commit and epoch durations per worker, from each app's metrics."""
        return {
            "saga": epoch_timings(self.running.status().get("metrics_url")),
            "services": epoch_timings(self.helpers.status().get("metrics_url")),
        }

    def stop(self) -> dict[str, Any]:
        """Stop both apps and Ray; what each processed."""
        import ray

        try:
            saga, services = self.running.stop(), self.helpers.stop()
        finally:
            ray.shutdown()
            if not self.keep_checkpoints:
                shutil.rmtree(self.checkpoints, ignore_errors=True)
        return {
            name: {"state": r.state, "in": r.records_in, "dead_letters": r.dead_letters}
            for name, r in (("saga", saga), ("services", services))
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from jobs.order_processing import OrderTopics
    from raystream._kafka.admin import Topics
    from raystream.config import KafkaConfig
    from raystream.dev.broker import EmbeddedBroker
    from raystream.generate.publish import publish_orders

    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    count = int(args.rate / 60.0 * args.duration)
    spec = OrdersSpec(count=count, seed=args.seed, shipping_timeout_ms=args.shipping_timeout_ms)
    prefix = f"bench{int(time.time())}."
    topics = OrderTopics(prefix)
    Topics(KafkaConfig(bootstrap)).ensure({topics.inbox: args.partitions})
    system: Any = None
    arrivals = Arrivals()
    stop = threading.Event()
    reader = threading.Thread(
        target=read_terminals,
        args=(bootstrap, topics.events, args.partitions, arrivals, stop),
        daemon=True,
    )
    try:
        if args.system == "loop":
            from bench.orders_loop import LoopSystem

            system = LoopSystem(args, bootstrap, topics, spec)
        else:
            system = RaystreamSystem(args, bootstrap, prefix, spec)
        reader.start()
        system.wait_running()
        load = os.getloadavg()[0]
        started = time.monotonic()
        published = publish_orders(
            bootstrap,
            spec,
            topic=topics.inbox,
            partitions=args.partitions,
            rate=args.rate / 60.0,
            live_time=True,
            linger_ms=args.publisher_linger_ms,
        )
        produced_s = time.monotonic() - started
        deadline = time.monotonic() + 60 + 4 * spec.shipping_timeout_ms / 1000
        while time.monotonic() < deadline and len(arrivals.seen) < published.count:
            time.sleep(0.2)
        drained_s = time.monotonic() - started
        absent = [f"o{i:09d}" for i in range(published.count) if f"o{i:09d}" not in arrivals.seen]
        # Ended, but the live reader never saw the end: judged from the log, timed by nothing.
        unseen_ends = terminals_in_log(bootstrap, topics.events, args.partitions, set(absent))
        absent = [o for o in absent if o not in unseen_ends]
        trace = trace_orders(bootstrap, prefix, absent[:5])
        # The slowest orders (system time: the injected wait taken off) and any wrong ones,
        # record by record with their timestamps: where a tail or a timeout came from.
        odd = sorted(arrivals.seen, key=lambda o: -(arrivals.seen[o][0] - injected_wait(o, spec)))
        wrong_ids = {o for o in arrivals.seen if not right_outcome(o, spec, arrivals)}
        odd = odd[:3] + [o for o in arrivals.seen if o in wrong_ids][:3]
        odd_trace = trace_orders(bootstrap, prefix, odd)
        timings = system.timings()
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(10)
        apps = system.stop() if system is not None else {}
        if broker is not None:
            broker.stop()

    wrong, missing = [], []
    overall: list[float] = []
    minus_wait: list[float] = []
    no_wait: list[float] = []
    ship_ok: list[float] = []
    by_time: dict[int, list[float]] = {}  # minus injected wait, by 10 s of the run
    for i in range(published.count):
        oid = f"o{i:09d}"
        got = arrivals.seen.get(oid)
        if got is None:
            if oid not in unseen_ends:
                missing.append(oid)
            elif unseen_ends[oid] != _expected_end(oid, spec):
                wrong.append(oid)
            continue
        latency = got[0]
        if oid in wrong_ids:
            wrong.append(oid)
        f = fate(oid, spec)
        waited = injected_wait(oid, spec)
        if f.payment == "ok" and f.stock == "ok":
            if f.shipping == "ok":
                ship_ok.append(latency)
        else:
            no_wait.append(latency)
        overall.append(latency)
        minus_wait.append(latency - waited)
        by_time.setdefault(int(i / (args.rate / 60.0) // 10) * 10, []).append(latency - waited)
    # Where the time goes, for orders that completed: each step is one hop from the saga to a
    # service and back (two epochs, two topics), except the first (inbox -> saga).
    names = ("inbox_to_saga", "payment", "inventory", "shipping_minus_delay", "log_to_reader")
    hops: dict[str, list[float]] = {k: [] for k in names}
    st = arrivals.steps
    for i in range(published.count):
        oid = f"o{i:09d}"
        if (oid, "OrderCompleted") not in st or oid not in arrivals.times:
            continue
        readable, created = arrivals.times[oid]
        hops["inbox_to_saga"].append(st[(oid, "OrderCreated")] - created)
        hops["payment"].append(st[(oid, "PaymentProcessed")] - st[(oid, "OrderCreated")])
        hops["inventory"].append(st[(oid, "InventoryReserved")] - st[(oid, "PaymentProcessed")])
        hops["shipping_minus_delay"].append(
            st[(oid, "ShipmentScheduled")]
            - st[(oid, "InventoryReserved")]
            - fate(oid, spec).shipping_delay_ms
        )
        hops["log_to_reader"].append(readable - st[(oid, "OrderCompleted")])
    return {
        "breakdown_completed": {k: percentiles(v) for k, v in hops.items()},
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_1m_before": round(load, 2),
            "python": platform.python_version(),
            "broker": "external" if args.bootstrap else "embedded (Tansu)",
        },
        "config": {
            "system": args.system,
            "rate_per_min": args.rate,
            "duration_s": args.duration,
            "partitions": args.partitions,
            "saga_workers": args.workers,
            "service_workers": args.service_workers,
            "commit_interval_ms": args.commit_interval_ms,
            "poll_timeout_ms": args.poll_timeout_ms,
            "fetch_wait_max_ms": args.fetch_wait_ms,
            "consumer_config": args.consumer_config,
            "linger_ms": args.linger_ms,
            "publisher_linger_ms": args.publisher_linger_ms,
            "view_refresh_ms": args.view_refresh_ms,
            "checkpoint_compact_every": args.compact_every,
            "shipping_timeout_ms": spec.shipping_timeout_ms,
            "guarantee": args.guarantee,
            "services_guarantee": args.services_guarantee,
            "overlap_commits": args.overlap_commits,
            "commit_when_caught_up": args.commit_when_caught_up,
            "check_gaps": args.check_gaps,
        },
        "orders": published.count,
        "produced_per_min": round(published.count / produced_s * 60, 1),
        "produce_seconds": round(produced_s, 2),
        "all_terminal_after_s": round(drained_s, 2),
        "terminal": len(arrivals.seen),
        "wrong": len(wrong),
        "missing": len(missing),
        # Orders whose end is in the log but the live reader never saw: no latency for them.
        "ends_unseen_by_reader": sorted(unseen_ends),
        "missing_ids": missing[:20],
        "missing_trace": trace,
        "odd_ids": odd,
        "odd_trace": odd_trace,
        "wrong_ids": wrong[:20],
        "latency": {
            "all": percentiles(overall),
            "no_shipping_wait": percentiles(no_wait),
            "shipping_ok": percentiles(ship_ok),
            "minus_injected_wait": percentiles(minus_wait),
        },
        "minus_injected_wait_by_10s": {f"{t}s": percentiles(v) for t, v in by_time.items()},
        "epochs": timings,
        "apps": apps,
    }


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--system",
        default="raystream",
        choices=["raystream", "loop"],
        help="the raystream apps, or the hand-written loops of bench/orders_loop.py",
    )
    parser.add_argument("--rate", type=float, default=10_000, help="orders per minute")
    parser.add_argument("--duration", type=float, default=60, help="seconds of orders")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="saga workers")
    parser.add_argument("--service-workers", type=int, default=1)
    parser.add_argument(
        "--commit-interval-ms",
        type=int,
        default=LOW_LATENCY["commit_interval_ms"],
        help="epoch length (default: the jobs' LOW_LATENCY tuning)",
    )
    parser.add_argument("--poll-timeout-ms", type=int, default=10, help="worker poll wait")
    parser.add_argument("--fetch-wait-ms", type=int, default=25, help="fetch.wait.max.ms")
    parser.add_argument("--linger-ms", type=int, default=5, help="the apps' producer linger.ms")
    parser.add_argument(
        "--consumer-config",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka setting for the apps' consumers (repeatable)",
    )
    parser.add_argument(
        "--publisher-linger-ms",
        type=int,
        default=50,
        help="linger.ms of the producer of OrderCreated, counted in the latency (default 50: "
        "with 5 it wrote one batch per order, and the embedded broker's fetches list every "
        "batch a partition holds; see bench/README.md)",
    )
    parser.add_argument("--shipping-timeout-ms", type=int, default=5_000)
    parser.add_argument(
        "--view-refresh-ms", type=int, default=5_000, help="how often the orders view refreshes"
    )
    parser.add_argument(
        "--compact-every", type=int, default=50, help="epochs between full checkpoints"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--overlap-commits",
        action="store_true",
        help="commit epochs in the background (off, as in the jobs' LOW_LATENCY tuning)",
    )
    parser.add_argument(
        "--commit-when-caught-up",
        action="store_true",
        help="also end an epoch as soon as a worker has caught up (RuntimeConfig)",
    )
    parser.add_argument(
        "--guarantee",
        default="exactly_once",
        choices=["exactly_once", "at_least_once"],
        help="the saga app's guarantee",
    )
    parser.add_argument(
        "--services-guarantee",
        default="exactly_once",
        choices=["exactly_once", "at_least_once"],
        help="the simulated services' guarantee",
    )
    parser.add_argument(
        "--check-gaps",
        default="off",
        choices=["auto", "on", "off"],
        help="RuntimeConfig.check_gaps of both apps (default off: the guard against the "
        "embedded broker's passed-over batches, which Apache Kafka never needs, cost ~300 ms "
        "of p50 here; every order's outcome is checked either way; auto: on for Tansu)",
    )
    parser.add_argument("--bootstrap", default=None, help="a fresh broker (default: embedded)")
    parser.add_argument("--ray-address", default="local", help="'local' starts a new Ray")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--workdir", default="/tmp", help="where checkpoints go")
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the run's checkpoint directory (removed at the end by default)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "orders_latency.json")
    args = parser.parse_args(argv)
    args.consumer_config = dict(args.consumer_config)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency"]
    print(
        f"{result['orders']:,} orders at {result['produced_per_min']:,.0f}/min; "
        f"{result['terminal']:,} terminal, {result['wrong']} wrong, {result['missing']} missing"
    )
    for name, p in lat.items():
        if p.get("n"):
            print(
                f"  {name:<20} n={p['n']:>6,}  p50 {p['p50_ms']:>7.0f} ms  "
                f"p99 {p['p99_ms']:>7.0f} ms  max {p['max_ms']:>7.0f} ms"
            )
    print("  minus injected wait, by when the order was created:")
    for name, p in result["minus_injected_wait_by_10s"].items():
        print(f"    from {name:<6} p50 {p['p50_ms']:>6.0f} ms  p99 {p['p99_ms']:>6.0f} ms")
    print("  where the time goes (completed orders):")
    for name, p in result["breakdown_completed"].items():
        if p.get("n"):
            print(f"    {name:<22} p50 {p['p50_ms']:>6.0f} ms  p99 {p['p99_ms']:>6.0f} ms")
    print("  epochs (bucket bounds): commit time, and time between commits")
    for app_name, workers in result["epochs"].items():
        for worker, t in workers.items():
            print(
                f"    {app_name:<8} {worker:<9} {t.get('epochs', 0):>6.0f} epochs  commit p50 "
                f"{t.get('commit_p50_ms', 0):>4.0f} p99 {t.get('commit_p99_ms', 0):>5.0f} ms  "
                f"between p50 {t.get('epoch_p50_ms', 0):>4.0f} "
                f"p99 {t.get('epoch_p99_ms', 0):>5.0f} ms"
            )
    print(f"written to {args.out}")
    return 0 if result["wrong"] == 0 and result["missing"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
