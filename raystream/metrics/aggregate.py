"""The coordinator's view of an app's metrics: every worker's snapshot merged into one.

Why here: workers are Ray actors in other processes, maybe on other nodes, and Ray restarts them
in new processes. A Prometheus endpoint per worker would change port with every restart and need
service discovery. Instead each worker sends its snapshot with the report it already sends after
every commit, and the coordinator (one per app, next to the driver) serves the merged metrics on
one address that stays put for the app's life (:mod:`raystream.metrics.server`). Per-process
detail is still in Ray's own metrics export (``ray.util.metrics``).

Merging: counters and histograms are summed over worker slots; a slot whose process changed
(a restart) has its last values carried over, so totals never go down. Within one process,
counters only grow, so of two reports handled out of order the larger value wins. A gauge
series takes the value of the freshest report that has it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from raystream.metrics import catalog as m
from raystream.metrics.recorder import HistogramValue, Labels, Snapshot, Value

#: Rates shown by ``raystream status`` are averaged over this many seconds.
RATE_WINDOW_S = 10.0


@dataclass
class _Slot:
    pid: int
    snapshot: Snapshot
    at: float


@dataclass
class _Totals:
    """A task's cumulative in/out counts over time, for rates."""

    points: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=256))


class AppMetrics:
    """Merges worker snapshots (thread-safe) and exposes them to prometheus-client."""

    def __init__(self, app: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        #: Counters and histograms of processes that are gone (restarted or retired slots).
        self._carried: Snapshot = {}
        self._restarts: dict[int, int] = {}
        self._totals: dict[str, _Totals] = {}

    # -- input -------------------------------------------------------------------------------
    def update(self, slot: int, pid: int, snapshot: Snapshot) -> None:
        """Take a worker's report: its process id and metric snapshot."""
        now = self._clock()
        with self._lock:
            old = self._slots.get(slot)
            self._restarts.setdefault(slot, 0)
            if old is not None and old.pid != pid:
                self._carry(old.snapshot)
                self._restarts[slot] += 1
                old = None
            if old is None:
                self._slots[slot] = _Slot(pid, snapshot, now)
            elif snapshot:
                old.snapshot = _newest(old.snapshot, snapshot)
                old.at = now
            merged = self._merged()
            self._record_totals(merged, now)

    def retire(self, slots: Iterable[int]) -> None:
        """Slots that no longer exist (a rescale down): keep their counts, drop their gauges."""
        with self._lock:
            for slot in slots:
                old = self._slots.pop(slot, None)
                if old is not None:
                    self._carry(old.snapshot)

    def _carry(self, snapshot: Snapshot) -> None:
        for name, series in snapshot.items():
            if m.BY_NAME[name].kind is m.Kind.GAUGE:
                continue
            into = self._carried.setdefault(name, {})
            for key, v in series.items():
                into[key] = _add(into.get(key), v)

    # -- output ------------------------------------------------------------------------------
    def merged(self) -> Snapshot:
        """Every series of the app, merged over its workers."""
        with self._lock:
            return self._merged()

    def _merged(self) -> Snapshot:
        out: Snapshot = {}
        for name, series in self._carried.items():
            out[name] = dict(series)
        for slot in sorted(self._slots, key=lambda s: self._slots[s].at):
            for name, series in self._slots[slot].snapshot.items():
                gauge = m.BY_NAME[name].kind is m.Kind.GAUGE
                into = out.setdefault(name, {})
                for key, v in series.items():
                    if gauge:
                        into[key] = v  # slots in report order: the freshest wins
                    else:
                        into[key] = _add(into.get(key), v)
        out[m.WORKER_RESTARTS.name] = {
            (self.app, str(slot)): float(n) for slot, n in self._restarts.items()
        }
        return out

    def _record_totals(self, merged: Snapshot, now: float) -> None:
        ins = merged.get(m.TASK_RECORDS_IN.name, {})
        outs = merged.get(m.TASK_RECORDS_OUT.name, {})
        for key, v in ins.items():
            task = key[1]
            out_v = outs.get(key, 0.0)
            pts = self._totals.setdefault(task, _Totals()).points
            pts.append((now, float(v), float(out_v)))  # type: ignore[arg-type]
            while len(pts) > 2 and now - pts[1][0] >= RATE_WINDOW_S:
                pts.popleft()

    def task_summary(self) -> dict[str, dict[str, float]]:
        """Per task: records in/out, their rates (per second, over the last ~10 s), lag, epoch
        and dead letters."""
        with self._lock:
            merged = self._merged()
            now = self._clock()
            rows: dict[str, dict[str, float]] = {}

            def row(task: str) -> dict[str, float]:
                return rows.setdefault(
                    task,
                    {
                        "records_in": 0.0,
                        "records_out": 0.0,
                        "in_per_s": 0.0,
                        "out_per_s": 0.0,
                        "lag": 0.0,
                        "epoch": 0.0,
                        "dead_letters": 0.0,
                    },
                )

            for spec, column in (
                (m.TASK_RECORDS_IN, "records_in"),
                (m.TASK_RECORDS_OUT, "records_out"),
                (m.TASK_LAG, "lag"),
                (m.TASK_EPOCH, "epoch"),
            ):
                for key, v in merged.get(spec.name, {}).items():
                    row(key[1])[column] = float(v)  # type: ignore[arg-type]
            for key, v in merged.get(m.DEAD_LETTERS.name, {}).items():
                row(key[1])["dead_letters"] += float(v)  # type: ignore[arg-type]
            for task, totals in self._totals.items():
                pts = totals.points
                if len(pts) < 2:
                    continue
                (t0, in0, out0), (t1, in1, out1) = pts[0], pts[-1]
                span = max(now, t1) - t0
                if span > 0:
                    row(task)["in_per_s"] = (in1 - in0) / span
                    row(task)["out_per_s"] = (out1 - out0) / span
            return rows

    def describe(self) -> Iterator[Metric]:
        """Nothing to describe up front (prometheus-client then calls :meth:`collect` lazily)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The merged metrics as prometheus-client families (the Collector protocol)."""
        merged = self.merged()
        for spec in m.METRICS:
            yield family(spec, merged.get(spec.name, {}))


def family(spec: m.MetricSpec, series: dict[Labels, Value]) -> Metric:
    """One metric's series as a prometheus-client metric family."""
    labels = list(spec.labels)
    fam: Any
    if spec.kind is m.Kind.COUNTER:
        fam = CounterMetricFamily(spec.name, spec.help, labels=labels)
        for key, v in sorted(series.items()):
            fam.add_metric(list(key), float(v))  # type: ignore[arg-type]
    elif spec.kind is m.Kind.GAUGE:
        fam = GaugeMetricFamily(spec.name, spec.help, labels=labels)
        for key, v in sorted(series.items()):
            fam.add_metric(list(key), float(v))  # type: ignore[arg-type]
    else:
        fam = HistogramMetricFamily(spec.name, spec.help, labels=labels)
        for key, v in sorted(series.items()):
            assert isinstance(v, HistogramValue)
            cumulative, buckets = 0, []
            for bound, n in zip([*spec.buckets, float("inf")], v.counts, strict=True):
                cumulative += n
                buckets.append((_le(bound), float(cumulative)))
            fam.add_metric(list(key), buckets, v.sum)
    return fam


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _add(a: Value | None, b: Value) -> Value:
    if a is None:
        return b
    if isinstance(a, HistogramValue) and isinstance(b, HistogramValue):
        return a.add(b)
    return float(a) + float(b)  # type: ignore[arg-type]


def _newest(old: Snapshot, new: Snapshot) -> Snapshot:
    """Two snapshots of one process: gauges from ``new``; counters and histograms only grow,
    so the larger of each wins (reports may be handled out of order)."""
    out: Snapshot = {}
    for name in old.keys() | new.keys():
        if m.BY_NAME[name].kind is m.Kind.GAUGE:
            out[name] = new.get(name, old.get(name, {}))
            continue
        a, b = old.get(name, {}), new.get(name, {})
        merged: dict[Labels, Value] = {}
        for key in a.keys() | b.keys():
            merged[key] = _larger(a.get(key), b.get(key))
        out[name] = merged
    return out


def _larger(a: Value | None, b: Value | None) -> Value:
    if a is None:
        assert b is not None
        return b
    if b is None:
        return a
    if isinstance(a, HistogramValue) and isinstance(b, HistogramValue):
        return a if a.count() >= b.count() else b
    return max(float(a), float(b))  # type: ignore[arg-type]
