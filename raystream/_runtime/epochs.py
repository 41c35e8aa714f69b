"""Where a task's committed epoch lives: two offsets of the internal ``<app>-epochs`` topic.

Kafka's commit is the commit point. So that recovery knows exactly which checkpoint epoch went
with the committed offsets, each task's epoch number and attempt are committed as the group's
offsets of two partitions of an (empty) internal topic, in the same commit as its input offsets
(the same transaction in exactly-once mode). The only records in that topic are empty ones that
pad record-less transactions (the embedded broker drops their offsets otherwise): never read.
"""

from __future__ import annotations


def epochs_topic(app: str) -> str:
    """The internal topic whose committed offsets record each task's epoch."""
    return f"{app}-epochs"


def marker_partitions(task_index: int) -> tuple[int, int]:
    """The partitions holding task ``task_index``'s epoch and attempt."""
    return 2 * task_index, 2 * task_index + 1


def epochs_partitions(tasks: int) -> int:
    """Partitions the epochs topic needs for ``tasks`` tasks."""
    return 2 * max(tasks, 1)
