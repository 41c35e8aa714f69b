"""Keyed and windowed streams: ``group_by(...)``, ``.window(...)`` and ``.agg(...)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raystream.errors import TopologyError
from raystream.operators.aggregations import Aggregation
from raystream.operators.aggregations_running import RunningAggregateSpec
from raystream.operators.windows import WindowDef, WindowedAggregateSpec
from raystream.serde import JSON
from raystream.timeutil import Duration
from raystream.topology.nodes import SinkSpec

if TYPE_CHECKING:
    from raystream.topology.stream import Stream


class GroupedStream:
    """A stream grouped by key: aggregate it as a running table, or window it first."""

    def __init__(self, stream: Stream, key_name: str) -> None:
        self._stream = stream
        self._key_name = key_name

    def window(
        self,
        window: WindowDef,
        *,
        grace: Duration = 0,
        out_of_orderness: Duration = 0,
    ) -> WindowedStream:
        """Event-time windows (``tumbling``, ``hopping``, ``sliding``, ``session``).

        A window closes when the watermark (the largest event time seen minus
        ``out_of_orderness``) reaches its end plus ``grace``; records for closed windows are late.
        """
        return WindowedStream(self, window, grace, out_of_orderness)

    def agg(self, *, name: str | None = None, **aggs: Aggregation) -> Stream:
        """A running aggregate per key (a table): after each micro-batch, one updated row per
        key it changed, with the key column and one column per aggregation."""
        if not aggs:
            raise TopologyError("agg() needs at least one aggregation, e.g. n=count()")
        spec = RunningAggregateSpec.of(aggs, key_name=self._key_name)
        return self._stream._then(spec, name)


class WindowedStream:
    """A grouped stream cut into event-time windows."""

    def __init__(
        self, grouped: GroupedStream, window: WindowDef, grace: Duration, ooo: Duration
    ) -> None:
        self._grouped = grouped
        self._window = window
        self._grace = grace
        self._ooo = ooo

    def agg(
        self,
        *,
        emit: str = "final",
        late_to: str | None = None,
        name: str | None = None,
        **aggs: Aggregation,
    ) -> Stream:
        """Aggregate every window: rows of key, ``window_start``, ``window_end`` (ms) and one
        column per aggregation.

        ``emit="final"``: one row per window when it closes; ``"update"``: a row per window each
        micro-batch changes. Late records go, unchanged, to ``late_to`` (default: the app's
        ``late_topic``, ``<app>.late``) with headers saying why.
        """
        if not aggs:
            raise TopologyError("agg() needs at least one aggregation, e.g. n=count()")
        stream = self._grouped._stream
        spec = WindowedAggregateSpec.of(
            self._window,
            dict(aggs),
            grace=self._grace,
            out_of_orderness=self._ooo,
            emit=emit,
            key_name=self._grouped._key_name,
        )
        result = stream._then(spec, name)
        app = stream._app
        late = late_to or app.config.late_topic.format(app=app.name)
        app._graph.add(SinkSpec(late, JSON(), late=True), (result._node, 1))
        return result
