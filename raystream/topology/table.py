"""The builder objects for tables: ``Table`` (co-partitioned) and ``GlobalTable`` (everywhere).

A table node's output is a *changelog*: one row per upsert, and tombstones (rows whose
``__tombstone`` column is true) for deletions. See :mod:`raystream.operators.joins_base`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from raystream.errors import TopologyError
from raystream.operators.joins_base import DEFAULT_RIGHT_PREFIX
from raystream.operators.joins_table_table import TableTableJoinSpec
from raystream.operators.view import ViewSpec, check_view_name
from raystream.serde import JSON, Serde
from raystream.topology.nodes import Graph, SinkSpec, SourceSpec

if TYPE_CHECKING:
    from raystream.app import App


class Table:
    """The latest value per key of a changelog, partitioned like the streams it enriches.

    Build one with ``app.table(topic, key=...)``; join a stream with it (``stream.join(table)``)
    or join it with another table (``table.join(other)``).
    """

    #: Whether every task holds all of it (a global table).
    _replicated = False

    def __init__(
        self,
        app: App,
        node: int,
        port: int,
        key_field: str | None,
        schema: pa.Schema | None,
    ) -> None:
        self._app = app
        self._node = node
        self._port = port
        self._key_field = key_field
        #: The declared value columns (None: learned from the records).
        self._schema = schema

    @property
    def _graph(self) -> Graph:
        return self._app._graph

    def join(
        self,
        other: Table,
        *,
        how: str = "inner",
        right_prefix: str = DEFAULT_RIGHT_PREFIX,
        name: str | None = None,
    ) -> Table:
        """Join with another co-partitioned table by key: a table that changes whenever either
        side does (``how``: ``inner``, ``left`` or ``outer``)."""
        if isinstance(other, GlobalTable) or not isinstance(other, Table):
            raise TopologyError(
                f"table.join expects a Table from app.table(...), got {type(other).__name__}"
            )
        same_app(self._app, other._app)
        if name is not None and name in self._graph.names.values():
            raise TopologyError(f"operator name {name!r} is used twice: names must be unique")
        spec = TableTableJoinSpec(how, right_prefix, self._schema, other._schema)
        node = self._graph.add(
            spec, (self._node, self._port), name, right=(other._node, other._port)
        )
        return Table(self._app, node, 0, self._key_field, None)

    def to(self, topic: str, *, value: Serde | None = None, partitions: int | None = None) -> None:
        """Write the table's changelog to ``topic``: upserts as values, deletions as tombstones
        (null values), keyed by the table key."""
        if not topic or not isinstance(topic, str):
            raise TopologyError("to(topic): topic must be a non-empty string")
        if partitions is not None and partitions <= 0:
            raise TopologyError(f"to({topic!r}): partitions must be positive")
        self._graph.add(SinkSpec(topic, value or JSON(), partitions), (self._node, self._port))

    def materialize(self, view: str, *, name: str | None = None) -> Table:
        """Make the table queryable with SQL as view ``view`` (its rows at every committed
        epoch). Returns this table."""
        if name is not None and name in self._graph.names.values():
            raise TopologyError(f"operator name {name!r} is used twice: names must be unique")
        spec = ViewSpec(
            check_view_name(view), self._key_field or "key", replicated=self._replicated
        )
        node = self._graph.add(spec, (self._node, self._port), name)
        return type(self)(self._app, node, 0, self._key_field, self._schema)


class GlobalTable(Table):
    """A small table copied whole into every task: joined by a field of the stream record
    (``stream.join(global_table, on="merchant_id")``), no co-partitioning needed."""

    _replicated = True

    def join(self, other: Table, **kwargs: object) -> Table:
        raise TopologyError(
            "a global table cannot be joined with a table; join streams with it: "
            "stream.join(global_table, on=field)"
        )


def source_spec(
    topic: str, value: Serde | None, key: str | None, time: str | None, global_table: bool
) -> SourceSpec:
    """The source node of a table topic (checks the arguments)."""
    if not topic or not isinstance(topic, str):
        kind = "global_table" if global_table else "table"
        raise TopologyError(f"{kind}(topic): topic must be a non-empty string")
    return SourceSpec(topic, value or JSON(), key, time, changelog=True, global_table=global_table)


def declared_schema(serde: Serde) -> pa.Schema | None:
    """The value columns a serde declares, if it declares them."""
    schema = getattr(serde, "schema", None)
    return schema if isinstance(schema, pa.Schema) else None


def same_app(a: App, b: App) -> None:
    """Refuse to connect nodes of two different apps."""
    if a is not b:
        raise TopologyError("cannot join streams or tables of two different apps")
