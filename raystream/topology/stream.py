"""The builder objects users chain: ``Stream`` and its stateless operations."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, overload

import pyarrow as pa

from raystream.errors import TopologyError
from raystream.operators.base import ErrorPolicy, OperatorSpec, Row
from raystream.operators.joins_base import DEFAULT_RIGHT_PREFIX
from raystream.operators.joins_stream import StreamStreamJoinSpec
from raystream.operators.joins_table import GlobalTableJoinSpec, StreamTableJoinSpec
from raystream.operators.joins_versioned import VersionedTableJoinSpec
from raystream.operators.process import ProcessSpec
from raystream.operators.rekey import KeyBySpec
from raystream.operators.stateless import (
    BranchSpec,
    FilterSpec,
    FlatMapSpec,
    MapBatchesSpec,
    MapSpec,
)
from raystream.operators.view import ViewSpec, check_view_name
from raystream.serde import JSON, Serde
from raystream.timeutil import Duration, parse_duration
from raystream.topology.grouped import GroupedStream
from raystream.topology.nodes import Graph, SinkSpec, SourceSpec
from raystream.topology.table import GlobalTable, Table, same_app

if TYPE_CHECKING:
    from raystream.app import App

#: ``on_error=``: an action name (``"dead_letter"``, ``"retry"``, ``"retry:N"``, ``"fail"``),
#: an :class:`ErrorPolicy`, or None for the default (dead-letter).
OnError = str | ErrorPolicy | None


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

    def map(
        self, fn: Callable[[Row], Row], *, on_error: OnError = None, name: str | None = None
    ) -> Stream:
        """Replace each value (a dict) by ``fn(value)``; key and time stay. Row-wise (slow path).

        ``on_error`` (here and on every operation with a user function): what happens when the
        function raises on a record: ``"dead_letter"`` (default: the record goes to the
        dead-letter topic, the rest go on), ``"retry"`` / ``"retry:N"`` (call it again with
        backoff, then dead-letter), ``"fail"`` (stop the app), or an
        :class:`~raystream.operators.base.ErrorPolicy`.
        """
        _check_callable(fn, "map")
        return self._then(MapSpec(fn, ErrorPolicy.of(on_error)), name)

    def map_batches(
        self,
        fn: Callable[[pa.RecordBatch], Any],
        *,
        on_error: OnError = None,
        name: str | None = None,
    ) -> Stream:
        """Replace the values of each micro-batch by ``fn(record_batch)`` (Arrow in, Arrow out).

        The function must return one row per input row (a RecordBatch, Table or dict of columns).
        When it raises, the batch is run again record by record and ``on_error`` applies to the
        records that fail.
        """
        _check_callable(fn, "map_batches")
        return self._then(MapBatchesSpec(fn, ErrorPolicy.of(on_error)), name)

    def filter(
        self, fn: Callable[[Row], Any], *, on_error: OnError = None, name: str | None = None
    ) -> Stream:
        """Keep the records whose value makes ``fn`` truthy."""
        _check_callable(fn, "filter")
        return self._then(FilterSpec(fn, ErrorPolicy.of(on_error)), name)

    def flat_map(
        self,
        fn: Callable[[Row], Iterable[Row]],
        *,
        on_error: OnError = None,
        name: str | None = None,
    ) -> Stream:
        """Replace each value by the dicts ``fn(value)`` returns (zero or more; same key, time)."""
        _check_callable(fn, "flat_map")
        return self._then(FlatMapSpec(fn, ErrorPolicy.of(on_error)), name)

    def branch(
        self,
        *predicates: Callable[[Row], Any],
        default: bool = True,
        on_error: OnError = None,
        name: str | None = None,
    ) -> tuple[Stream, ...]:
        """Split into one stream per predicate: each record goes to the first that holds.

        With ``default=True`` (the default) one more stream, last, receives the records no
        predicate took; with ``default=False`` those records are dropped on purpose.
        """
        if not predicates:
            raise TopologyError("branch needs at least one predicate")
        for p in predicates:
            _check_callable(p, "branch")
        spec = BranchSpec(tuple(predicates), default, ErrorPolicy.of(on_error))
        node = self._then(spec, name)._node
        return tuple(Stream(self._app, node, port, self._key_field) for port in range(spec.ports))

    @overload
    def process(
        self,
        function: Any,
        *,
        on_timer: Callable[..., Any] | None = None,
        outputs: None = None,
        out_of_orderness: Duration = 0,
        on_error: OnError = None,
        name: str | None = None,
    ) -> Stream: ...

    @overload
    def process(
        self,
        function: Any,
        *,
        on_timer: Callable[..., Any] | None = None,
        outputs: Sequence[str],
        out_of_orderness: Duration = 0,
        on_error: OnError = None,
        name: str | None = None,
    ) -> tuple[Stream, ...]: ...

    def process(
        self,
        function: Any,
        *,
        on_timer: Callable[..., Any] | None = None,
        outputs: Sequence[str] | None = None,
        out_of_orderness: Duration = 0,
        on_error: OnError = None,
        name: str | None = None,
    ) -> Stream | tuple[Stream, ...]:
        """Run a keyed process function: per-key state, event- and processing-time timers, and
        records emitted to one or several outputs (Flink's ``KeyedProcessFunction``).

        ``function`` is a :class:`raystream.ProcessFunction` subclass (one instance per task),
        an instance of one (deep-copied per task), or a plain ``fn(ctx, key, value)`` (with
        ``on_timer=fn(ctx, key, timestamp, domain)`` when it registers timers). Records are
        handled one by one, in order per key; a call that raises changes nothing and ``on_error``
        applies (as for :meth:`map`; by default the record goes to the dead-letter topic). The
        watermark is the largest event time seen minus ``out_of_orderness``. With
        ``outputs=("a", "b")`` it returns one stream per name (emit with
        ``ctx.emit(value, to="a")``); otherwise one stream. Output keys are what the
        function emits, so they are not assumed to be any field (``group_by`` re-keys).
        """
        spec = ProcessSpec.of(
            function,
            on_timer=on_timer,
            outputs=outputs,
            out_of_orderness=out_of_orderness,
            on_error=on_error,
        )
        node = self._then(spec, name)._node
        streams = tuple(Stream(self._app, node, port) for port in range(spec.ports))
        return streams if outputs is not None else streams[0]

    def join(
        self,
        other: Stream | Table,
        *,
        how: str = "inner",
        on: str | Callable[[Row], Any] | None = None,
        window: Duration | None = None,
        before: Duration | None = None,
        after: Duration | None = None,
        grace: Duration = 0,
        out_of_orderness: Duration = 0,
        versioned: Duration | None = None,
        right_prefix: str = DEFAULT_RIGHT_PREFIX,
        late_to: str | None = None,
        name: str | None = None,
    ) -> Stream:
        """Join this stream (left) with a table, a global table or another stream (right).

        - ``Table`` (``app.table``): each record gets the table's value for its key as of the
          moment it is processed; ``how="inner"`` drops records without a match, ``"left"``
          keeps them with null table columns. ``versioned="1h"``: join with the value that was
          valid at the record's *event time* instead (as-of join), looking back up to 1 h.
        - ``GlobalTable`` (``app.global_table``): the same, looking up ``on`` (a field of the
          record, or a function of the row) instead of the record's key.
        - ``Stream``: a windowed join (``how`` inner, left or outer): records of both streams
          with the same key whose event times are at most ``window`` apart (or ``before`` /
          ``after`` the left record); ``grace`` accepts late records, later ones go to
          ``late_to`` (default: the app's late topic).

        Both inputs must be co-partitioned (checked when the app starts). Result rows hold the
        left columns, then the right ones (a clashing right name gets ``right_prefix``).
        """
        if isinstance(other, GlobalTable):
            same_app(self._app, other._app)
            key = on if on is not None else self._key_field
            if key is None:
                raise TopologyError(
                    "join with a global table needs on=: the stream field (or a function of the "
                    "row) that holds the table key, e.g. on='merchant_id'"
                )
            _no_window("a global-table join", window, before, after, versioned)
            spec: OperatorSpec = GlobalTableJoinSpec(key, how, right_prefix, other._schema)
            return self._join(spec, other, name)
        if on is not None:
            raise TopologyError(
                "on= is for global tables only; a table or stream join matches records by key "
                "(re-key the stream with group_by or repartition(by=...) first)"
            )
        if isinstance(other, Table):
            same_app(self._app, other._app)
            _no_window("a stream-table join", window, before, after, None)
            if versioned is not None:
                spec = VersionedTableJoinSpec.of(
                    versioned, how=how, right_prefix=right_prefix, right_schema=other._schema
                )
            else:
                spec = StreamTableJoinSpec(how, right_prefix, other._schema)
            return self._join(spec, other, name)
        if isinstance(other, Stream):
            same_app(self._app, other._app)
            if versioned is not None:
                raise TopologyError("versioned= is for stream-table joins only")
            spec = StreamStreamJoinSpec.of(
                window,
                before=before,
                after=after,
                grace=grace,
                out_of_orderness=out_of_orderness,
                how=how,
                right_prefix=right_prefix,
            )
            result = self._join(spec, other, name)
            app = self._app
            late = late_to or app.config.late_topic.format(app=app.name)
            self._graph.add(SinkSpec(late, JSON(), late=True), (result._node, 1))
            return result
        raise TopologyError(
            f"join expects a Stream, a Table or a GlobalTable, got {type(other).__name__}"
        )

    def _join(self, spec: OperatorSpec, other: Stream | Table, name: str | None) -> Stream:
        if name is not None and name in self._graph.names.values():
            raise TopologyError(f"operator name {name!r} is used twice: names must be unique")
        node = self._graph.add(
            spec, (self._node, self._port), name, right=(other._node, other._port)
        )
        return Stream(self._app, node, 0, self._key_field)

    def repartition(
        self, by: str | None = None, *, partitions: int | None = None, name: str | None = None
    ) -> Stream:
        """Re-key by the value of ``by`` (default: keep the key) and write through an internal
        repartition topic with ``partitions`` partitions (default: as many as the input), so that
        the stream is co-partitioned with a table or stream it is joined with."""
        if partitions is not None and (not isinstance(partitions, int) or partitions <= 0):
            raise TopologyError("repartition: partitions must be a positive integer")
        field = by or self._key_field
        if by is not None and (not isinstance(by, str) or not by):
            raise TopologyError("repartition(by): by must be a non-empty field name")
        parent: Stream = self._then(KeyBySpec(by), name) if by is not None else self
        node_name = self._graph.names[parent._node]
        topic = f"{self._app.name}-{node_name}-repartition"
        self._graph.add(
            SinkSpec(topic, JSON(), partitions, internal=True), (parent._node, parent._port)
        )
        source = self._graph.add(SourceSpec(topic, JSON(), key_field=field, internal=True))
        return Stream(self._app, source, 0, field)

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

    def materialize(
        self, view: str, *, retention: Duration | None = None, name: str | None = None
    ) -> Stream:
        """Keep the latest row per key (per key and window for window aggregates) as view
        ``view``, queryable with SQL (``app.sql``, ``raystream sql``) at every committed epoch.

        ``retention``: for windowed rows, forget windows that ended that long before the
        watermark. Returns this stream, so the flow can go on.
        """
        spec = ViewSpec(
            check_view_name(view),
            self._key_field or "key",
            None if retention is None else parse_duration(retention, "retention"),
        )
        return self._then(spec, name)


def _no_window(join: str, *args: Any) -> None:
    if any(a is not None for a in args):
        raise TopologyError(
            f"{join} takes no window, before, after or (for global tables) versioned argument; "
            "those are for stream-stream (window) and stream-table (versioned) joins"
        )


def _check_callable(fn: Any, op: str) -> None:
    if not callable(fn):
        raise TopologyError(f"{op}: expected a function, got {type(fn).__name__}")
