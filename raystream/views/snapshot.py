"""Consistent snapshots of an app's views, read from its committed checkpoints.

A snapshot takes, for every task, the epoch Kafka committed for it (or, for time travel, the
newest epoch of that task's committed history published at or before a moment), and reads each
view's rows at that epoch: the same Parquet files recovery reads. So every answer holds whole
committed epochs, never part of one. Two system tables describe the snapshot:
``raystream_epochs`` (task, epoch, attempt, committed_at) and ``raystream_offsets`` (task,
topic, partition, offset: the input each task had consumed at that epoch).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from raystream._kafka.admin import committed_offsets
from raystream._runtime.checkpointing import view_store
from raystream._runtime.epochs import epochs_topic, marker_partitions
from raystream.config import KafkaConfig
from raystream.errors import CheckpointError, ViewQueryError
from raystream.state.checkpoint import DELETED, KEY, CheckpointStore, EpochManifest, EpochRef
from raystream.topology.plan import Plan, TaskId

EPOCHS_TABLE = "raystream_epochs"
OFFSETS_TABLE = "raystream_offsets"


@dataclass(frozen=True)
class ViewCatalog:
    """Which tasks hold each view, and every task in epoch-marker order."""

    views: dict[str, tuple[str, ...]]
    tasks: tuple[TaskId, ...]

    @staticmethod
    def of(plan: Plan, tasks: Iterable[TaskId]) -> ViewCatalog:
        """The views of ``plan`` over the app's ``tasks`` (ordered as the coordinator did)."""
        ordered = tuple(tasks)
        views: dict[str, tuple[str, ...]] = {}
        for st in plan.subtopologies:
            for n in st.node_ids:
                spec = plan.graph.nodes[n]
                if getattr(spec, "kind", "") == "view":
                    name = spec.view  # type: ignore[union-attr]
                    views[name] = tuple(str(t) for t in ordered if t.subtopology == st.id)
        return ViewCatalog(views, ordered)


def committed_heads(kafka: KafkaConfig, app: str, tasks: tuple[TaskId, ...]) -> dict[str, EpochRef]:
    """Each task's committed ``(epoch, attempt)``, read from Kafka (tasks with none left out)."""
    topic = epochs_topic(app)
    parts = [(topic, p) for i in range(len(tasks)) for p in marker_partitions(i)]
    got = committed_offsets(kafka, app, parts)
    heads: dict[str, EpochRef] = {}
    for i, task in enumerate(tasks):
        e, a = (got.get((topic, p)) for p in marker_partitions(i))
        if e is not None and a is not None and e > 0:
            heads[str(task)] = (e, a)
    return heads


@dataclass(frozen=True)
class Snapshot:
    """The tables one consistent read of the views gives, and the epochs they came from."""

    tables: dict[str, pa.Table]
    epochs: dict[str, EpochManifest]
    taken_at: float


class SnapshotLoader:
    """Builds :class:`Snapshot` objects; caches each task's rows per epoch (epochs never change
    once published)."""

    def __init__(self, store: CheckpointStore, catalog: ViewCatalog) -> None:
        self.store = store
        self.catalog = catalog
        self._cache: dict[tuple[str, str, EpochRef], pa.Table | None] = {}

    def load(self, heads: dict[str, EpochRef], as_of: float | None = None) -> Snapshot:
        """The views at ``heads`` (or, with ``as_of`` (unix seconds), at each task's newest
        committed epoch published by then)."""
        epochs: dict[str, EpochManifest] = {}
        for task, head in heads.items():
            m = self._pick(task, head, as_of)
            if m is not None:
                epochs[task] = m
        tables: dict[str, pa.Table] = {}
        live = set()
        for view, tasks in self.catalog.views.items():
            parts = []
            for task in tasks:
                m = epochs.get(task)
                if m is None:
                    continue
                key = (task, view, m.ref)
                live.add(key)
                if key not in self._cache:
                    self._cache[key] = self._read(task, m.ref, view)
                part = self._cache[key]
                if part is not None:
                    parts.append(part)
            tables[view] = _concat(parts)
        self._cache = {k: v for k, v in self._cache.items() if k in live}
        tables[EPOCHS_TABLE] = _epochs_table(epochs)
        tables[OFFSETS_TABLE] = _offsets_table(epochs)
        return Snapshot(tables, epochs, time.time())

    def _pick(self, task: str, head: EpochRef, as_of: float | None) -> EpochManifest | None:
        lineage = self.store.lineage(task, head)
        if as_of is None:
            return lineage[0]
        for m in lineage:
            if m.created_at <= as_of:
                return m
        oldest = lineage[-1].created_at
        raise ViewQueryError(
            f"task {task} keeps no epoch from that time (its oldest retained epoch is from "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(oldest))} UTC); raise "
            "checkpoint_retain to travel further back"
        )

    def _read(self, task: str, ref: EpochRef, view: str) -> pa.Table | None:
        try:
            table = self.store.load(task, ref, view_store(view))
        except CheckpointError:
            return None  # the view has no rows in this task yet
        return table.drop_columns([c for c in (KEY, DELETED) if c in table.column_names])


def _concat(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({"no_rows_yet": pa.array([], pa.null())})
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts, promote_options="permissive")


def _epochs_table(epochs: dict[str, EpochManifest]) -> pa.Table:
    ms = sorted(epochs.values(), key=lambda m: m.task)
    return pa.table(
        {
            "task": pa.array([m.task for m in ms], pa.string()),
            "epoch": pa.array([m.epoch for m in ms], pa.int64()),
            "attempt": pa.array([m.attempt for m in ms], pa.int64()),
            "committed_at": pa.array(
                [int(m.created_at * 1000) for m in ms], pa.timestamp("ms", tz="UTC")
            ),
        }
    )


def _offsets_table(epochs: dict[str, EpochManifest]) -> pa.Table:
    rows = []
    for m in sorted(epochs.values(), key=lambda m: m.task):
        for name, offset in sorted(m.offsets.items()):
            topic, _, part = name.rpartition("[")
            rows.append((m.task, topic, int(part.rstrip("]")), offset))
    return pa.table(
        {
            "task": pa.array([r[0] for r in rows], pa.string()),
            "topic": pa.array([r[1] for r in rows], pa.string()),
            "partition": pa.array([r[2] for r in rows], pa.int32()),
            "offset": pa.array([r[3] for r in rows], pa.int64()),
        }
    )
