"""Write generated traffic to Kafka: the topics the jobs read, paced, with the ground truth.

* :func:`publish_payments`: customer profiles (a compacted table topic, co-partitioned with the
  payments), merchants (a one-partition compacted topic, read as a global table), then the
  payments of a :class:`~raystream.generate.fraud.FraudSpec`; the ground truth of every fraud
  instance whose payments were all written.
* :func:`publish_orders`: the ``OrderCreated`` events of an
  :class:`~raystream.generate.orders.OrdersSpec`; the truth is each written order's fate and
  expected outcome.

Truth files are JSON lines. This module loads the Kafka client; the generators do not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from raystream._kafka.admin import Topics
from raystream.config import KafkaConfig
from raystream.generate.fraud import FraudInstance, FraudSpec, fraud_payments
from raystream.generate.orders import OrdersSpec, expected_outcome, fate, order_events
from raystream.generate.pace import paced
from raystream.generate.payments import customer_profiles, encode_records, merchants
from raystream.generate.produce import produce_records

#: ``progress(records written so far, seconds elapsed)``.
Progress = Callable[[int, float], None]

_COMPACT = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class PaymentTopics:
    """Where :func:`publish_payments` writes."""

    payments: str = "payments"
    customers: str = "customers"
    merchants: str = "merchants"


@dataclass(frozen=True)
class Published:
    """What a publish call wrote: ``count`` records of the main topic in ``seconds``, and the
    ground truth of what it wrote (:class:`FraudInstance` s or order truth dicts)."""

    topic: str
    count: int
    seconds: float
    truth: list[Any] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Records per second actually achieved."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


def publish_payments(
    brokers: str,
    spec: FraudSpec,
    *,
    topics: PaymentTopics | None = None,
    partitions: int = 8,
    rate: float = 0.0,
    duration: float | None = None,
    truth: Path | None = None,
    progress: Progress | None = None,
) -> Published:
    """Write the customers and merchants tables, then ``spec``'s payments (keyed by
    ``customer_id``) at ``rate`` per second (0: as fast as possible) for ``spec.count`` records
    or ``duration`` seconds, whichever ends first. Returns the ground truth of the fraud
    instances written whole (and writes it to ``truth`` as JSON lines)."""
    names = topics or PaymentTopics()
    admin = Topics(KafkaConfig(brokers))
    admin.ensure({names.payments: partitions})
    admin.ensure({names.customers: partitions}, _COMPACT)
    admin.ensure({names.merchants: 1}, _COMPACT)
    base = spec.payments_spec()
    produce_records(
        brokers, names.customers, encode_records(customer_profiles(base), "customer_id")
    )
    produce_records(brokers, names.merchants, encode_records(merchants(base), "merchant_id"))

    stream, instances = fraud_payments(spec)
    injected = {pid for inst in instances for pid in inst.payment_ids}
    written: set[str] = set()

    def note(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            if row["payment_id"] in injected:
                written.add(row["payment_id"])
            yield row

    started = time.monotonic()
    rows = paced(stream, rate=rate, duration=duration, progress=progress)
    n = produce_records(brokers, names.payments, encode_records(note(rows), "customer_id"))
    seconds = time.monotonic() - started
    whole = [inst for inst in instances if all(p in written for p in inst.payment_ids)]
    if truth is not None:
        _write_lines(truth, (inst.to_dict() for inst in whole))
    return Published(names.payments, n, seconds, whole)


def publish_orders(
    brokers: str,
    spec: OrdersSpec,
    *,
    topic: str = "orders",
    partitions: int = 8,
    rate: float = 0.0,
    duration: float | None = None,
    live_time: bool = True,
    truth: Path | None = None,
    progress: Progress | None = None,
    linger_ms: int = 5,
) -> Published:
    """Write ``spec``'s ``OrderCreated`` events (keyed by ``order_id``) at ``rate`` per second
    (0: as fast as possible) for ``spec.count`` orders or ``duration`` seconds. With
    ``live_time`` each event's ``ts`` is the wall-clock time it is written (live traffic);
    otherwise the generator's own times. Returns, per written order, its fate and the outcome
    the saga must reach (also written to ``truth`` as JSON lines). ``linger_ms`` is the
    producer's batching wait, part of each order's time from ``ts``."""
    Topics(KafkaConfig(brokers)).ensure({topic: partitions})
    out: list[dict[str, Any]] = []

    def stamped(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for ev in events:
            if live_time:
                ev["ts"] = int(time.time() * 1000)
            out.append(order_truth(ev["order_id"], spec))
            yield ev

    started = time.monotonic()
    events = paced(order_events(spec), rate=rate, duration=duration, progress=progress)
    n = produce_records(
        brokers, topic, encode_records(stamped(events), "order_id"), linger_ms=linger_ms
    )
    seconds = time.monotonic() - started
    if truth is not None:
        _write_lines(truth, out)
    return Published(topic, n, seconds, out)


def order_truth(order_id: str, spec: OrdersSpec) -> dict[str, Any]:
    """One order's truth record: its fate (what the services answer) and expected outcome."""
    outcome = expected_outcome(order_id, spec)
    return {
        **asdict(fate(order_id, spec)),
        "state": outcome.state,
        "reason": outcome.reason,
        "compensations": list(outcome.compensations),
    }


def read_truth(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a truth file."""
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def instances_from_truth(rows: Iterable[dict[str, Any]]) -> list[FraudInstance]:
    """:class:`FraudInstance` s back from the dicts of a payments truth file."""
    return [FraudInstance(**{**r, "payment_ids": tuple(r["payment_ids"])}) for r in rows]


def _write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    f: IO[str]
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
