"""Which worker owns which task: a pure function, so it can be tested and reasoned about."""

from __future__ import annotations

from raystream.errors import ConfigError
from raystream.topology.plan import TaskId


def assign(tasks: list[TaskId], workers: int) -> dict[int, tuple[TaskId, ...]]:
    """Spread tasks over ``workers`` slots: the same partition of every sub-topology stays on one
    worker where possible, and no worker has more than one task more than another."""
    if workers <= 0:
        raise ConfigError(f"workers: must be at least 1, got {workers}")
    ordered = sorted(tasks, key=lambda t: (t.partition, t.subtopology))
    slots: dict[int, list[TaskId]] = {w: [] for w in range(workers)}
    for i, task in enumerate(ordered):
        slots[i % workers].append(task)
    return {w: tuple(ts) for w, ts in slots.items()}
