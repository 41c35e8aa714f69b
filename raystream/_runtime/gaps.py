"""Catching records a broker let a consumer pass over, before the epoch that passed them commits.

A Kafka consumer reads a partition as a sequence of offsets; the offsets it is handed may skip
some (transaction markers, compacted or aborted records), and it moves on past them. On Apache
Kafka that is always right. Tansu (the embedded broker, 0.6.0) numbers a produced batch before
it stores it, and answers a fetch with the batches stored at or after the fetch position: when
several producers write one partition at once, a fetch can return a later batch while an
earlier one is still being stored, and the consumer moves past the earlier one for good (it is
in the log; a read from the start returns it). ``python -m bench.broker_probe --probe tail``
shows it.

So on such a broker the worker notes every skip in what it was handed (a *gap*), and before it
commits an epoch reads each gap again with a second consumer. A record found in a gap was
passed over: the epoch must not commit. :class:`PassedOverError` makes the attempt start again
from the last committed epoch, which reads the partition again in order; the passed-over record
is in the log by then.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from raystream._kafka.fetch import fetch_ready
from raystream.errors import KafkaError

TP = tuple[str, int]
#: How old a gap must be before it is read again: the broker stores a batch within
#: milliseconds of numbering it, so a batch a consumer passed over is in the log by then.
SETTLE_S = 0.01
#: Cluster ids that name a Tansu broker (its default is "tansu_cluster").
_TANSU = "tansu"


class PassedOverError(KafkaError):
    """The broker let this worker's consumer skip records that are in the log."""


def broker_may_pass_over(consumer: Consumer, topic: str, timeout: float = 10.0) -> bool:
    """Whether the broker is one known to hand consumers gaps that hide records: Tansu,
    recognised by its cluster id (``RuntimeConfig.check_gaps`` overrides the guess). Asks for
    the metadata of ``topic`` only: every topic's would be a large answer on a big cluster."""
    cluster_id = consumer.list_topics(topic, timeout=timeout).cluster_id or ""
    return _TANSU in cluster_id.lower()


def note_gaps(start: int, offsets: list[int], gaps: list[tuple[int, int]]) -> None:
    """Append to ``gaps`` every range ``[a, b)`` of offsets that ``offsets`` (ascending, what
    the consumer handed over after position ``start``) skips."""
    if not offsets:
        return
    if offsets[0] > start:
        gaps.append((start, offsets[0]))
    if offsets[-1] - offsets[0] == len(offsets) - 1:  # contiguous: the common case
        return
    prev = offsets[0]
    for o in offsets[1:]:
        if o > prev + 1:
            gaps.append((prev + 1, o))
        prev = o


class GapAudit:
    """The gaps a worker's consumer was handed since the last check, and the check itself.

    (Reading gaps back on a thread while the loop went on was tried: the last gaps of an epoch
    are always fresh when it ends, so the commit still waited, and reading back every few
    milliseconds cost the broker more fetches than one read per epoch.)"""

    def __init__(self, make_consumer: Callable[[], Consumer], timeout_s: float = 30.0) -> None:
        self._make = make_consumer
        self._consumer: Consumer | None = None
        self.timeout_s = timeout_s
        #: Gaps noted and not read again yet, per partition.
        self.gaps: dict[TP, list[tuple[int, int]]] = {}
        self._noted_at = 0.0
        self._error: KafkaError | None = None
        #: Gaps read again, and records found in them (over the audit's life).
        self.checked = 0
        self.found = 0

    def note(self, tp: TP, start: int, offsets: list[int]) -> None:
        """Record the gaps in ``offsets`` handed over for ``tp`` after position ``start``."""
        if offsets and offsets[-1] - start == len(offsets) - 1:
            return  # nothing skipped (checked here too: this runs for every fetched batch)
        note_gaps(start, offsets, self.gaps.setdefault(tp, []))
        self._noted_at = time.monotonic()

    def note_jump(self, tp: TP, start: int, end: int) -> None:
        """A position moved from ``start`` to ``end`` without any record handed over."""
        if end > start:
            self.gaps.setdefault(tp, []).append((start, end))
            self._noted_at = time.monotonic()

    def check(self) -> None:
        """Read every noted gap again; raise :class:`PassedOverError` if one holds a record (and
        keep raising it: the attempt is over). Clears the gaps when none does."""
        if self._error is not None:
            raise self._error
        gaps = {tp: g for tp, g in self.gaps.items() if g}
        if not gaps:
            return
        # A batch the broker was still storing when the consumer passed it is stored within
        # milliseconds: let the newest gap be SETTLE_S old before reading it.
        time.sleep(max(0.0, self._noted_at + SETTLE_S - time.monotonic()))
        try:
            self._read_back(gaps)
        except KafkaError as exc:
            self._error = exc
            raise
        self.gaps.clear()

    def _read_back(self, gaps: dict[TP, list[tuple[int, int]]]) -> None:
        """Read ``gaps`` (non-empty lists) again; raise :class:`PassedOverError` if one holds a
        record."""
        if self._consumer is None:
            self._consumer = self._make()
        c = self._consumer
        ends = {tp: max(b for _, b in g) for tp, g in gaps.items()}
        c.assign([TopicPartition(t, p, min(a for a, _ in g)) for (t, p), g in gaps.items()])
        found: dict[TP, list[int]] = {}
        left = set(gaps)
        deadline = time.monotonic() + self.timeout_s
        try:
            while left:
                if time.monotonic() > deadline:
                    raise KafkaError(
                        f"could not read back {len(left)} partition(s) to check the offsets "
                        f"the broker skipped (e.g. {sorted(left)[0]}) within {self.timeout_s}s"
                    )
                for m in fetch_ready(c, 10_000, 0.005):
                    if m.error() is not None:
                        continue
                    tp = (str(m.topic()), int(m.partition() or 0))
                    o = int(m.offset() or 0)
                    if tp in gaps and any(a <= o < b for a, b in gaps[tp]):
                        found.setdefault(tp, []).append(o)
                for pos in c.position([TopicPartition(t, p) for t, p in left]):
                    if pos.offset >= ends[(pos.topic, pos.partition)]:
                        left.discard((pos.topic, pos.partition))
        finally:
            c.unassign()
        self.checked += sum(len(g) for g in gaps.values())
        if found:
            self.found += sum(len(v) for v in found.values())
            tp, offs = next(iter(found.items()))
            raise PassedOverError(
                f"the broker let this worker skip {sum(len(v) for v in found.values())} "
                f"record(s) that are in the log (e.g. {tp[0]}[{tp[1]}] offsets {offs[:5]}): "
                "the epoch is not committed and the worker reads again from the last committed "
                "one. A known fault of the embedded broker (Tansu) when several producers write "
                "one partition at once; Apache Kafka does not do this."
            )

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
