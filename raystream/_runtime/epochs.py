"""Where a task's committed epoch lives: offsets of the internal ``<app>-epochs`` topic.

Kafka's commit is the commit point. So that recovery knows exactly which checkpoint epoch went
with the committed offsets, each task's epoch number and attempt are committed as the group's
offsets of two partitions of an (empty) internal topic, in the same commit as its input offsets
(the same transaction in exactly-once mode). Three more partitions per task hold its records in,
out and dead-lettered since the app first ran, as of that epoch: the run's totals come from
them, so they are exact whatever restarts, and whatever commits the broker takes back.

Offset commit metadata would be the natural place for these numbers, but the embedded broker
does not return it (measured: ``committed()`` answers ``metadata=None``).

The only records in that topic are empty ones that pad record-less transactions (the embedded
broker drops their offsets otherwise): never read.
"""

from __future__ import annotations

#: Partitions of the epochs topic per task: epoch, attempt, records in, out, dead-lettered.
PARTITIONS_PER_TASK = 5


def epochs_topic(app: str) -> str:
    """The internal topic whose committed offsets record each task's epoch."""
    return f"{app}-epochs"


def marker_partitions(task_index: int) -> tuple[int, int]:
    """The partitions holding task ``task_index``'s epoch and attempt."""
    base = PARTITIONS_PER_TASK * task_index
    return base, base + 1


def count_partitions(task_index: int) -> tuple[int, int, int]:
    """The partitions holding task ``task_index``'s records in, out and dead-lettered."""
    base = PARTITIONS_PER_TASK * task_index
    return base + 2, base + 3, base + 4


def epochs_partitions(tasks: int) -> int:
    """Partitions the epochs topic needs for ``tasks`` tasks."""
    return PARTITIONS_PER_TASK * max(tasks, 1)
