"""How exactly-once tests read results: committed state from checkpoints, and output topics through
an explicit model of read_committed (the embedded broker shows aborted records: BROKER.md quirk 2).

An output record carries headers naming its task, epoch and attempt. A task's committed history is
the lineage of the epoch Kafka committed for it (its ``(epoch, attempt)`` in the committed offsets
of ``<app>-epochs``), followed through the checkpoint manifests' parent links. A record is
committed iff its ``(epoch, attempt)`` is in its task's committed history.
"""

from __future__ import annotations

import functools
from typing import Any

from confluent_kafka import Consumer, TopicPartition

import raystream as rs
from raystream._kafka import headers as hdr
from raystream._runtime.checkpointing import TaskCheckpointer
from raystream._runtime.epochs import epochs_topic, marker_partitions
from raystream._runtime.task import TaskRunner
from raystream.state.checkpoint import CheckpointStore, EpochRef
from raystream.topology.plan import TaskId

from .kafka_helpers import Msg


def committed_epochs(
    app: rs.App, bootstrap: str, partitions: dict[str, int]
) -> dict[str, EpochRef]:
    """Each task's committed ``(epoch, attempt)``, from Kafka."""
    tasks = app.plan().tasks(partitions)
    topic = epochs_topic(app.name)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": app.name})
    try:
        tps = [TopicPartition(topic, p) for i in range(len(tasks)) for p in marker_partitions(i)]
        got = {tp.partition: tp.offset for tp in c.committed(tps, timeout=30)}
    finally:
        c.close()
    out = {}
    for i, task in enumerate(tasks):
        e, a = marker_partitions(i)
        if got[e] > 0:
            out[str(task)] = (got[e], got[a])
    return out


def committed_records(app: rs.App, heads: dict[str, EpochRef], msgs: list[Msg]) -> list[Msg]:
    """The records of ``msgs`` that a read_committed consumer of real Kafka would see."""
    store = CheckpointStore(app.config.checkpoints or "", app.name)
    history = {task: {m.ref for m in store.lineage(task, head)} for task, head in heads.items()}
    kept = []
    for m in msgs:
        task = m.headers[hdr.TASK]
        ref = (int(m.headers[hdr.EPOCH]), int(m.headers[hdr.ATTEMPT]))
        if ref in history.get(task, set()):
            kept.append(m)
    return kept


def restored_operator(app: rs.App, task: str, head: EpochRef, operator: str) -> Any:
    """The named operator of ``task`` with the state of committed epoch ``head``."""
    plan = app.plan()
    st, p = (int(x) for x in task.split("_"))
    runner = TaskRunner(
        app.name,
        TaskId(st, p),
        plan,
        out=_Nowhere(),
        dlq_topic=lambda t: t,
        provenance=functools.partial(hdr.provenance, task, 0, 0),
    )
    store = CheckpointStore(app.config.checkpoints or "", app.name)
    TaskCheckpointer(store, runner, 1).restore(head)
    (node,) = [n for n, name in runner.names.items() if name == operator]
    return runner.operators[node]


class _Nowhere:
    def send(self, *args: Any) -> None:
        raise AssertionError("a restored operator emitted output")
