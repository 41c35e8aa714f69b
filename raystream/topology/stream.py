"""The builder objects users chain: ``Stream`` and its stateless operations."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from raystream.errors import TopologyError
from raystream.operators.base import OperatorSpec, Row
from raystream.operators.rekey import KeyBySpec
from raystream.operators.stateless import (
    BranchSpec,
    FilterSpec,
    FlatMapSpec,
    MapBatchesSpec,
    MapSpec,
)
from raystream.serde import JSON, Serde
from raystream.topology.grouped import GroupedStream
from raystream.topology.nodes import Graph, SinkSpec, SourceSpec

if TYPE_CHECKING:
    from raystream.app import App


class Stream:
    """A stream of keyed, timestamped records: the output port of one node of the app's graph."""

    def __init__(self, app: App, node: int, port: int = 0, key_field: str | None = None) -> None:
        self._app = app
        self._node = node
        self._port = port
        #: The value field the key was taken from (None: the raw Kafka key, or unknown).
        self._key_field = key_field

    @property
    def _graph(self) -> Graph:
        return self._app._graph

    def _then(self, spec: OperatorSpec, name: str | None) -> Stream:
        if name is not None and name in self._graph.names.values():
            raise TopologyError(f"operator name {name!r} is used twice: names must be unique")
        node = self._graph.add(spec, (self._node, self._port), name)
        key_name = getattr(spec, "key_name", None)
        return Stream(self._app, node, 0, key_name or self._key_field)

    def map(self, fn: Callable[[Row], Row], *, name: str | None = None) -> Stream:
        """Replace each value (a dict) by ``fn(value)``; key and time stay. Row-wise (slow path)."""
        _check_callable(fn, "map")
        return self._then(MapSpec(fn), name)

    def map_batches(
        self, fn: Callable[[pa.RecordBatch], Any], *, name: str | None = None
    ) -> Stream:
        """Replace the values of each micro-batch by ``fn(record_batch)`` (Arrow in, Arrow out).

        The function must return one row per input row (a RecordBatch, Table or dict of columns).
        """
        _check_callable(fn, "map_batches")
        return self._then(MapBatchesSpec(fn), name)

    def filter(self, fn: Callable[[Row], Any], *, name: str | None = None) -> Stream:
        """Keep the records whose value makes ``fn`` truthy."""
        _check_callable(fn, "filter")
        return self._then(FilterSpec(fn), name)

    def flat_map(self, fn: Callable[[Row], Iterable[Row]], *, name: str | None = None) -> Stream:
        """Replace each value by the dicts ``fn(value)`` returns (zero or more; same key, time)."""
        _check_callable(fn, "flat_map")
        return self._then(FlatMapSpec(fn), name)

    def branch(
        self, *predicates: Callable[[Row], Any], default: bool = True, name: str | None = None
    ) -> tuple[Stream, ...]:
        """Split into one stream per predicate: each record goes to the first that holds.

        With ``default=True`` (the default) one more stream, last, receives the records no
        predicate took; with ``default=False`` those records are dropped on purpose.
        """
        if not predicates:
            raise TopologyError("branch needs at least one predicate")
        for p in predicates:
            _check_callable(p, "branch")
        spec = BranchSpec(tuple(predicates), default)
        node = self._then(spec, name)._node
        return tuple(Stream(self._app, node, port, self._key_field) for port in range(spec.ports))

    def group_by(
        self, field: str | None = None, *, partitions: int | None = None, name: str | None = None
    ) -> GroupedStream:
        """Group by the value of ``field`` (default: the current key) for aggregation.

        When ``field`` is not already the key, records are re-keyed and written to an internal
        repartition topic ``<app>-<name>-repartition`` (with ``partitions``, default: as many as
        the input), so every record of a key reaches the same task, as in Kafka Streams.
        """
        if field is None or field == self._key_field:
            return GroupedStream(self, field or self._key_field or "key")
        if not isinstance(field, str) or not field:
            raise TopologyError("group_by(field): field must be a non-empty string")
        if partitions is not None and partitions <= 0:
            raise TopologyError("group_by: partitions must be positive")
        keyed = self._then(KeyBySpec(field), name)
        topic = f"{self._app.name}-{self._graph.names[keyed._node]}-repartition"
        self._graph.add(SinkSpec(topic, JSON(), partitions, internal=True), (keyed._node, 0))
        source = self._graph.add(SourceSpec(topic, JSON(), key_field=field, internal=True))
        return GroupedStream(Stream(self._app, source, 0, field), field)

    def to(self, topic: str, *, value: Serde | None = None, partitions: int | None = None) -> None:
        """Write the stream to ``topic`` (created with ``partitions`` when missing).

        Values are encoded with ``value`` (JSON by default); the record's key becomes the Kafka key
        and its event time the Kafka timestamp.
        """
        if not topic or not isinstance(topic, str):
            raise TopologyError("to(topic): topic must be a non-empty string")
        if partitions is not None and partitions <= 0:
            raise TopologyError(f"to({topic!r}): partitions must be positive")
        self._graph.add(SinkSpec(topic, value or JSON(), partitions), (self._node, self._port))


def _check_callable(fn: Any, op: str) -> None:
    if not callable(fn):
        raise TopologyError(f"{op}: expected a function, got {type(fn).__name__}")
