"""From the logical graph to a plan: sub-topologies (connected parts), their source and sink topics.

A task is partition *p* of every source topic of one sub-topology (Kafka Streams' tasks); task ids
are ``"<sub-topology>_<partition>"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from raystream.errors import TopologyError
from raystream.topology.nodes import Graph, SinkSpec, SourceSpec


@dataclass(frozen=True)
class SubTopology:
    """A connected part of the graph: its node ids (parents first) and source/sink topics.

    ``source_topics`` are co-partitioned (task *p* reads partition *p* of each);
    ``global_topics`` (global tables) are read whole by every task.
    """

    id: int
    node_ids: tuple[int, ...]
    source_topics: tuple[str, ...]
    sink_topics: tuple[str, ...]
    global_topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskId:
    """Partition ``partition`` of sub-topology ``subtopology``."""

    subtopology: int
    partition: int

    def __str__(self) -> str:
        return f"{self.subtopology}_{self.partition}"


@dataclass(frozen=True)
class Plan:
    """The sub-topologies of an app's graph."""

    graph: Graph
    subtopologies: tuple[SubTopology, ...]

    def tasks(self, partitions: dict[str, int]) -> list[TaskId]:
        """Every task, given the partition count of each source topic."""
        out: list[TaskId] = []
        for st in self.subtopologies:
            counts = {t: partitions[t] for t in st.source_topics}
            if len(set(counts.values())) > 1:
                listed = " and ".join(f"{t!r} ({n} partitions)" for t, n in counts.items())
                raise TopologyError(
                    f"topics {listed} are joined (or merged) but not co-partitioned: they need "
                    "the same partition count so that a key's records meet in one task. Re-key "
                    "one side through a repartition topic with stream.repartition(partitions=N), "
                    "or recreate a topic with the other's partition count"
                )
            n = next(iter(counts.values()))
            out.extend(TaskId(st.id, p) for p in range(n))
        return out

    def source_topics(self) -> list[str]:
        """Every topic the app reads (global tables included)."""
        return sorted(
            {t for st in self.subtopologies for t in (*st.source_topics, *st.global_topics)}
        )

    def external_source_topics(self) -> list[str]:
        """The topics the app reads that it does not own (they must exist)."""
        internal = self.internal_topics()
        return [t for t in self.source_topics() if t not in internal]

    def internal_topics(self) -> dict[str, int | None]:
        """Repartition topics the app owns, with their requested partition counts."""
        return {
            s.topic: s.partitions
            for s in self.graph.nodes.values()
            if isinstance(s, SinkSpec) and s.internal
        }

    def writers(self, topic: str) -> list[SubTopology]:
        """The sub-topologies that write ``topic``."""
        return [st for st in self.subtopologies if topic in st.sink_topics]

    def resolve_partitions(self, external: dict[str, int]) -> dict[str, int]:
        """Partition counts of every source topic: internal topics get their requested count,
        else as many as the sub-topology that writes them reads."""
        counts = dict(external)
        pending = dict(self.internal_topics())
        while pending:
            progressed = False
            for topic, wanted in list(pending.items()):
                upstream = [
                    c
                    for st in self.writers(topic)
                    for t in st.source_topics
                    if (c := counts.get(t)) is not None
                ]
                if wanted is None and len(upstream) < sum(
                    len(st.source_topics) for st in self.writers(topic)
                ):
                    continue
                counts[topic] = wanted or max(upstream, default=1)
                del pending[topic]
                progressed = True
            if not progressed:
                raise TopologyError(f"cannot size repartition topics {sorted(pending)}: a cycle?")
        return counts

    def sink_topics(self) -> list[str]:
        """Every topic the app writes."""
        return sorted({t for st in self.subtopologies for t in st.sink_topics})


def plan(graph: Graph) -> Plan:
    """Split ``graph`` into sub-topologies and check it can run."""
    if not graph.nodes:
        raise TopologyError("the app has no streams: add one with app.stream(topic)")
    adjacency: dict[int, set[int]] = {n: set() for n in graph.nodes}
    for e in graph.edges:
        adjacency[e.src].add(e.dst)
        adjacency[e.dst].add(e.src)
    seen: set[int] = set()
    subs: list[SubTopology] = []
    for start in graph.nodes:
        if start in seen:
            continue
        stack, part = [start], set()
        while stack:
            n = stack.pop()
            if n in part:
                continue
            part.add(n)
            stack.extend(adjacency[n] - part)
        seen |= part
        ids = tuple(sorted(part))
        inputs = [s for i in ids if isinstance(s := graph.nodes[i], SourceSpec)]
        sources = tuple(sorted({s.topic for s in inputs if not s.global_table}))
        globals_ = tuple(sorted({s.topic for s in inputs if s.global_table}))
        if not sources:
            raise TopologyError(
                f"global table(s) {list(globals_)} are not joined to any stream: join them with "
                "stream.join(global_table, on=field)"
            )
        sinks = tuple(sorted({s.topic for i in ids if isinstance(s := graph.nodes[i], SinkSpec)}))
        views = [i for i in ids if getattr(graph.nodes[i], "kind", "") == "view"]
        if not sinks and not views:
            raise TopologyError(
                f"stream(s) from {list(sources)} lead nowhere: end them with .to(topic) or "
                ".materialize(view)"
            )
        overlap = (set(sources) | set(globals_)) & set(sinks)
        if overlap:
            raise TopologyError(f"topic(s) {sorted(overlap)} are both read and written by one flow")
        subs.append(SubTopology(len(subs), ids, sources, sinks, globals_))
    return Plan(graph, tuple(subs))
