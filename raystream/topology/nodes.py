"""The logical graph that the topology API builds: sources, operators and sinks, and their edges."""

from __future__ import annotations

from dataclasses import dataclass, field

from raystream.operators.base import OperatorSpec
from raystream.serde import Serde


@dataclass(frozen=True)
class SourceSpec:
    """Read a topic as a stream of records."""

    topic: str
    serde: Serde
    #: Field of the value that is the record's key; None: the Kafka key bytes.
    key_field: str | None = None
    #: Field holding event time (ms since epoch, or a timestamp); None: the Kafka timestamp.
    time_field: str | None = None
    #: An internal (repartition) topic that raystream creates and owns.
    internal: bool = False
    #: Read as a table's changelog: a null value is a tombstone that deletes its key.
    changelog: bool = False
    #: A global table: every task reading it gets every partition (not co-partitioned).
    global_table: bool = False
    kind = "source"


@dataclass(frozen=True)
class SinkSpec:
    """Write records to a topic (created when missing)."""

    topic: str
    serde: Serde
    #: Partitions when raystream creates the topic; None: the app's default.
    partitions: int | None = None
    #: Receives an operator's late records (headers say why).
    late: bool = False
    #: An internal (repartition) topic that raystream creates and owns.
    internal: bool = False
    kind = "sink"


Spec = SourceSpec | SinkSpec | OperatorSpec


@dataclass(frozen=True)
class Edge:
    """Records leaving ``port`` of node ``src`` go to input ``input`` of node ``dst``.

    One-input nodes have input 0; joins have input 0 (left) and 1 (right).
    """

    src: int
    port: int
    dst: int
    input: int = 0


@dataclass
class Graph:
    """Nodes (by id, in creation order, so parents come before children) and edges."""

    nodes: dict[int, Spec] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(
        self,
        spec: Spec,
        parent: tuple[int, int] | None = None,
        name: str | None = None,
        *,
        right: tuple[int, int] | None = None,
    ) -> int:
        """Add a node fed by ``parent`` = (node id, port) (and, for a join, by ``right`` on its
        second input); returns the new node's id."""
        node_id = len(self.nodes)
        self.nodes[node_id] = spec
        kind = getattr(spec, "kind", "operator")
        self.names[node_id] = name or f"{kind}-{node_id}"
        if parent is not None:
            self.edges.append(Edge(parent[0], parent[1], node_id))
        if right is not None:
            self.edges.append(Edge(right[0], right[1], node_id, 1))
        return node_id

    def children(self, node_id: int) -> list[Edge]:
        """Edges leaving ``node_id``."""
        return [e for e in self.edges if e.src == node_id]

    def parents(self, node_id: int) -> list[Edge]:
        """Edges entering ``node_id``."""
        return [e for e in self.edges if e.dst == node_id]
