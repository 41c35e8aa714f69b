"""A worker's metrics: read from its tasks' counters at every report, timed around commits.

The data path keeps plain counters (:class:`~raystream._runtime.task.TaskCounters`, cheap to
bump); :class:`WorkerMetrics` turns them into metric series at each report (every commit), so the
per-record path never touches a metrics library. Counters of a worker process only grow, across
the attempts it runs; the coordinator carries them over when Ray restarts the process.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from raystream.metrics import catalog as m
from raystream.metrics.recorder import Recorder, Snapshot

if TYPE_CHECKING:
    from raystream._runtime.task import TaskRunner

log = logging.getLogger("raystream.metrics")

#: librdkafka errors that mean the broker cannot be reached (by ``KafkaError.name()``).
CONNECTION_ERRORS = frozenset(
    {
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_TIMED_OUT",
        "_RESOLVE",
        "_MSG_TIMED_OUT",
        "_AUTHENTICATION",
    }
)
#: librdkafka client settings that feed :meth:`WorkerMetrics.kafka_stats` (broker state).
STATS_INTERVAL_MS = 2000


class WorkerMetrics:
    """Metrics of one worker actor (one slot), for all the attempts its process runs."""

    #: Seconds between two state-size measurements: ``approx_bytes`` walks the whole store.
    state_every_s = 5.0

    def __init__(
        self,
        app: str,
        slot: int,
        ray_export: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.recorder = Recorder(ray_export)
        self.app = app
        self.worker = str(slot)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        #: Counter values last read from each runner (runners are replaced on every attempt).
        self._seen: dict[Any, dict[tuple[str, ...], int]] = {}
        self._state_at = -float("inf")
        self._last_commit: float | None = None
        #: The latest client error while the broker looks unreachable (None when it works).
        self.broker_error: str | None = None
        self._broker_up = True
        #: A Kafka call waited too long: only a call that then goes through clears it (a frozen
        #: broker keeps its TCP connections up, so librdkafka's statistics still say UP).
        self._silent = False

    def _w(self) -> dict[str, str]:
        return {"app": self.app, "worker": self.worker}

    # -- hooks for librdkafka (served inside consume/poll, on the worker's thread) ------------
    def client_config(self) -> dict[str, Any]:
        """Settings that wire a librdkafka client's errors and statistics to these metrics."""
        return {
            "error_cb": self.kafka_error,
            "stats_cb": self.kafka_stats,
            "statistics.interval.ms": STATS_INTERVAL_MS,
        }

    def kafka_error(self, err: Any) -> None:
        """librdkafka's ``error_cb``: count the error; a connection error marks the broker down."""
        name = err.name() if hasattr(err, "name") else type(err).__name__
        text = err.str() if hasattr(err, "str") else str(err)
        self.recorder.inc(m.KAFKA_ERRORS, {**self._w(), "error": name})
        log.warning("worker %s: Kafka client error %s: %s", self.worker, name, text)
        if name in CONNECTION_ERRORS:
            with self._lock:
                self._broker_up = False
                self.broker_error = f"{name}: {text}"

    def kafka_stats(self, stats_json: str) -> None:
        """librdkafka's ``stats_cb``: the broker is up when a connection to it is up."""
        try:
            brokers = json.loads(stats_json).get("brokers", {}).values()
        except (ValueError, AttributeError):
            return
        up = any(b.get("state") == "UP" for b in brokers)
        with self._lock:
            if up and self._silent:
                return
            if up:
                self._broker_up, self.broker_error = True, None
            else:
                self._broker_up = False
                self.broker_error = self.broker_error or "no connection to any broker"

    def kafka_ok(self) -> None:
        """A fetch or commit went through: the broker works."""
        with self._lock:
            self._broker_up, self.broker_error, self._silent = True, None, False

    def broker_silent(self, reason: str) -> None:
        """A Kafka call has been waiting for an answer too long (a frozen or cut-off broker)."""
        with self._lock:
            if self._broker_up:
                log.warning("worker %s: broker looks down: %s", self.worker, reason)
            self._broker_up, self._silent = False, True
            self.broker_error = reason

    # -- hooks for the worker loop -----------------------------------------------------------
    def retrying(self) -> None:
        """The loop failed with a recoverable error and starts again after a backoff."""
        self.recorder.inc(m.WORKER_RETRIES, self._w())

    def committed(self, stamps: Mapping[TaskRunner, list[list[int]]], seconds: float) -> None:
        """An epoch was committed (taking ``seconds``): its records (``stamps``: their Kafka
        timestamps by task, as :func:`take_stamps` drained them when the epoch ended) get their
        end-to-end latency."""
        now, wall_ms = self._clock(), self._wall() * 1000.0
        w = self._w()
        self.recorder.observe(m.COMMIT_SECONDS, w, seconds)
        if self._last_commit is not None:
            self.recorder.observe(m.EPOCH_SECONDS, w, now - self._last_commit)
        self._last_commit = now
        self.recorder.inc(m.EPOCHS_COMMITTED, w)
        self.recorder.set(m.LAST_COMMIT, w, wall_ms / 1000.0)
        for r, batches in stamps.items():
            if not batches:
                continue
            # int64 first: ~3x faster than converting Python ints straight to float64
            ts = np.concatenate([np.array(b, dtype=np.int64) for b in batches])
            latency = np.maximum(wall_ms - ts, 0.0) / 1000.0
            self.recorder.observe(
                m.END_TO_END_SECONDS, {"app": self.app, "task": str(r.task)}, latency
            )
        self.kafka_ok()

    @staticmethod
    def take_stamps(runners: Iterable[TaskRunner]) -> dict[TaskRunner, list[list[int]]]:
        """The timestamps of the records the runners processed since the last call (drained):
        an epoch's, taken when it ends, for :meth:`committed` once it is confirmed."""
        out: dict[TaskRunner, list[list[int]]] = {}
        for r in runners:
            out[r], r.counters.timestamps = r.counters.timestamps, []
        return out

    def observe(self, runners: list[TaskRunner], lag: Mapping[str, int], state: str) -> Snapshot:
        """Read the runners' counters and the lag into the metrics; returns the snapshot that
        goes into the worker's report."""
        rec, app = self.recorder, self.app
        live = set(runners)
        self._seen = {r: v for r, v in self._seen.items() if r in live}
        fetched = False
        for r in runners:
            task = str(r.task)
            t = {"app": app, "task": task}
            seen = self._seen.setdefault(r, {})
            c = r.counters
            fetched |= self._delta(seen, ("in",), c.records_in, m.TASK_RECORDS_IN, t)
            self._delta(seen, ("out",), c.records_out, m.TASK_RECORDS_OUT, t)
            for op, n in list(c.by_operator_in.items()):
                self._delta(seen, ("op_in", op), n, m.OPERATOR_RECORDS_IN, {**t, "operator": op})
            for op, n in list(c.by_operator_out.items()):
                self._delta(seen, ("op_out", op), n, m.OPERATOR_RECORDS_OUT, {**t, "operator": op})
            for (op, err), n in list(c.dead_by.items()):
                labels = {**t, "operator": op, "error": err}
                self._delta(seen, ("dead", op, err), n, m.DEAD_LETTERS, labels)
            for op, n in list(c.late_by.items()):
                self._delta(seen, ("late", op), n, m.LATE_RECORDS, {**t, "operator": op})
            batches, c.batch_seconds = c.batch_seconds, []
            rec.observe(m.BATCH_SECONDS, t, batches)
        if fetched:
            self.kafka_ok()
        rec.replace_gauge(m.CONSUMER_LAG, _partition_lag(app, lag))
        rec.replace_gauge(m.TASK_LAG, _task_lag(app, runners, lag))
        rec.replace_gauge(
            m.TASK_EPOCH, [({"app": app, "task": str(r.task)}, r.epoch) for r in runners]
        )
        if self._clock() - self._state_at >= self.state_every_s:
            self._state_at = self._clock()
            keys, size = _state_sizes(app, runners)
            rec.replace_gauge(m.STATE_KEYS, keys)
            rec.replace_gauge(m.STATE_BYTES, size)
        return self.snapshot(state)

    def snapshot(self, state: str) -> Snapshot:
        """Set the worker's state and broker gauges; the snapshot that goes into its report."""
        rec = self.recorder
        rec.replace_gauge(m.WORKER_STATE, [({**self._w(), "state": state}, 1.0)])
        with self._lock:
            up = self._broker_up
        rec.set(m.BROKER_UP, self._w(), 1.0 if up else 0.0)
        return rec.snapshot()

    def _delta(
        self,
        seen: dict[tuple[str, ...], int],
        key: tuple[str, ...],
        now: int,
        spec: m.MetricSpec,
        labels: Mapping[str, str],
    ) -> bool:
        before = seen.get(key, 0)
        seen[key] = now
        if now > before:
            self.recorder.inc(spec, labels, now - before)
            return True
        return False


def _split_tp(name: str) -> tuple[str, str]:
    topic, _, rest = name.rpartition("[")
    return topic, rest.rstrip("]")


def _partition_lag(app: str, lag: Mapping[str, int]) -> list[tuple[dict[str, str], float]]:
    out = []
    for name, n in lag.items():
        topic, partition = _split_tp(name)
        out.append(({"app": app, "topic": topic, "partition": partition}, float(n)))
    return out


def _task_lag(
    app: str, runners: list[TaskRunner], lag: Mapping[str, int]
) -> list[tuple[dict[str, str], float]]:
    out = []
    for r in runners:
        own = [t for t in r.sources if t not in r.global_topics]
        total = sum(lag.get(f"{t}[{r.task.partition}]", 0) for t in own)
        out.append(({"app": app, "task": str(r.task)}, float(total)))
    return out


def _state_sizes(
    app: str, runners: list[TaskRunner]
) -> tuple[list[tuple[dict[str, str], float]], list[tuple[dict[str, str], float]]]:
    keys: list[tuple[dict[str, str], float]] = []
    size: list[tuple[dict[str, str], float]] = []
    for r in runners:
        for node, op in r.operators.items():
            stores = list(op.state_stores())
            if not stores:
                continue
            labels = {"app": app, "task": str(r.task), "operator": r.names[node]}
            keys.append((labels, float(sum(len(s) for s in stores))))
            size.append((labels, float(sum(s.approx_bytes() for s in stores))))
    return keys, size
