"""Metric values of one process, kept cumulative and mirrored to ``ray.util.metrics``.

A :class:`Recorder` holds every series it was given (counters and histograms only grow; gauges
are set) and hands out a :data:`Snapshot`: plain, picklable data that a worker sends to its
coordinator inside its report. With ``ray_export=True`` every change is also recorded through
``ray.util.metrics``, so Ray's dashboard (and Ray's own Prometheus export, which prefixes names
with ``ray_``) shows the same metrics per worker process. Ray histograms get a sample of at most
:data:`RAY_SAMPLES` observations per call: observing every record through Ray costs microseconds
each. The Prometheus endpoint of raystream counts every record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from raystream.metrics.catalog import Kind, MetricSpec

log = logging.getLogger("raystream.metrics")

Labels = tuple[str, ...]

#: Most values a single :meth:`Recorder.observe` passes on to a Ray histogram.
RAY_SAMPLES = 16


@dataclass
class HistogramValue:
    """A histogram series: a count per bucket (the last one is +Inf, not cumulative) and the sum
    of the observed values."""

    counts: list[int]
    sum: float = 0.0

    def count(self) -> int:
        """Number of observations."""
        return int(sum(self.counts))

    def add(self, other: HistogramValue) -> HistogramValue:
        """The two histograms merged."""
        return HistogramValue(
            [a + b for a, b in zip(self.counts, other.counts, strict=True)], self.sum + other.sum
        )


Value = float | HistogramValue
#: metric name -> label values (in the metric's label order) -> value.
Snapshot = dict[str, dict[Labels, Value]]


def label_values(spec: MetricSpec, labels: Mapping[str, Any]) -> Labels:
    """The values of ``labels`` in ``spec``'s order; raises ValueError unless exactly the
    declared labels are given (labels stay bounded by declaration)."""
    if len(labels) != len(spec.labels) or any(k not in labels for k in spec.labels):
        raise ValueError(
            f"metric {spec.name} takes labels {list(spec.labels)}, got {sorted(labels)}"
        )
    return tuple(str(labels[k]) for k in spec.labels)


class Recorder:
    """Cumulative metric values of one process (thread-safe)."""

    def __init__(self, ray_export: bool = False) -> None:
        self._values: Snapshot = {}
        self._lock = threading.Lock()
        self._ray = _RayExport() if ray_export else None

    def inc(self, spec: MetricSpec, labels: Mapping[str, Any], value: float = 1.0) -> None:
        """Add ``value`` (> 0; smaller values are ignored) to a counter."""
        _check_kind(spec, Kind.COUNTER)
        if value <= 0:
            return
        key = label_values(spec, labels)
        with self._lock:
            series = self._values.setdefault(spec.name, {})
            series[key] = float(series.get(key, 0.0)) + value  # type: ignore[arg-type]
        if self._ray is not None:
            self._ray.inc(spec, key, value)

    def set(self, spec: MetricSpec, labels: Mapping[str, Any], value: float) -> None:
        """Set a gauge."""
        _check_kind(spec, Kind.GAUGE)
        key = label_values(spec, labels)
        with self._lock:
            self._values.setdefault(spec.name, {})[key] = float(value)
        if self._ray is not None:
            self._ray.set(spec, key, value)

    def replace_gauge(
        self, spec: MetricSpec, values: Iterable[tuple[Mapping[str, Any], float]]
    ) -> None:
        """Set a gauge's whole set of series: those not in ``values`` disappear."""
        _check_kind(spec, Kind.GAUGE)
        new = {label_values(spec, labels): float(v) for labels, v in values}
        with self._lock:
            old = self._values.get(spec.name, {})
            self._values[spec.name] = dict(new)
        if self._ray is not None:
            for key in old.keys() - new.keys():  # Ray keeps a gauge's last value: zero it
                self._ray.set(spec, key, 0.0)
            for key, v in new.items():
                self._ray.set(spec, key, v)

    def observe(self, spec: MetricSpec, labels: Mapping[str, Any], values: Any) -> None:
        """Add observations (a number or an array of numbers) to a histogram, vectorised."""
        _check_kind(spec, Kind.HISTOGRAM)
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        key = label_values(spec, labels)
        idx = np.searchsorted(np.asarray(spec.buckets), arr, side="left")
        counts = np.bincount(idx, minlength=len(spec.buckets) + 1).tolist()
        total = float(arr.sum())
        with self._lock:
            series = self._values.setdefault(spec.name, {})
            old = series.get(key)
            new = HistogramValue(counts, total)
            series[key] = old.add(new) if isinstance(old, HistogramValue) else new
        if self._ray is not None:
            step = max(arr.size // RAY_SAMPLES, 1)
            self._ray.observe(spec, key, arr[::step][:RAY_SAMPLES].tolist())

    def get(self, spec: MetricSpec, labels: Mapping[str, Any]) -> Value | None:
        """One series' current value (None when never recorded)."""
        with self._lock:
            return self._values.get(spec.name, {}).get(label_values(spec, labels))

    def snapshot(self) -> Snapshot:
        """A copy of every series."""
        with self._lock:
            return {
                name: {
                    k: (
                        HistogramValue(list(v.counts), v.sum)
                        if isinstance(v, HistogramValue)
                        else v
                    )
                    for k, v in series.items()
                }
                for name, series in self._values.items()
            }


def _check_kind(spec: MetricSpec, kind: Kind) -> None:
    if spec.kind is not kind:
        raise ValueError(f"metric {spec.name} is a {spec.kind}, not a {kind}")


#: ray.util.metrics objects of this process, by name: Ray wants each metric created once.
_RAY_METRICS: dict[str, Any] = {}
_RAY_LOCK = threading.Lock()


class _RayExport:
    """Mirrors recorder changes to ``ray.util.metrics``; turns itself off if Ray refuses."""

    def __init__(self) -> None:
        self.enabled = True

    def _metric(self, spec: MetricSpec) -> Any:
        with _RAY_LOCK:
            m = _RAY_METRICS.get(spec.name)
            if m is None:
                from ray.util import metrics as rm

                if spec.kind is Kind.COUNTER:
                    m = rm.Counter(spec.name, spec.help, tag_keys=spec.labels)
                elif spec.kind is Kind.GAUGE:
                    m = rm.Gauge(spec.name, spec.help, tag_keys=spec.labels)
                else:
                    m = rm.Histogram(
                        spec.name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels
                    )
                _RAY_METRICS[spec.name] = m
            return m

    def _call(self, spec: MetricSpec, method: str, key: Labels, values: list[float]) -> None:
        if not self.enabled:
            return
        try:
            m = self._metric(spec)
            tags = dict(zip(spec.labels, key, strict=True))
            fn = getattr(m, method)
            for v in values:
                fn(v, tags=tags)
        except Exception as exc:  # no Ray, or Ray's metrics agent refused: keep Prometheus
            log.warning("ray.util.metrics export off for this process: %s", exc)
            self.enabled = False

    def inc(self, spec: MetricSpec, key: Labels, value: float) -> None:
        self._call(spec, "inc", key, [value])

    def set(self, spec: MetricSpec, key: Labels, value: float) -> None:
        self._call(spec, "set", key, [value])

    def observe(self, spec: MetricSpec, key: Labels, values: list[float]) -> None:
        self._call(spec, "observe", key, values)
