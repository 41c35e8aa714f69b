"""What the coordinator and workers tell each other (plain, picklable dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raystream.topology.plan import TaskId


@dataclass(frozen=True)
class Assignment:
    """The tasks of one worker slot, and where to stop in bounded mode."""

    slot: int
    attempt: int
    tasks: tuple[TaskId, ...]
    #: (topic, partition) -> end offset; None when unbounded.
    end_offsets: dict[tuple[str, int], int] | None = None
    #: Partition count of every topic the app reads (global tables are read whole).
    partitions: dict[str, int] = field(default_factory=dict)
    #: Each task's index among the app's tasks (its epoch-marker partitions).
    task_index: dict[TaskId, int] = field(default_factory=dict)
    #: A number unique to this attempt across the app's runs, increasing: names checkpoint
    #: epochs and is the ``rs.attempt`` header of outputs.
    generation: int = 0


@dataclass
class WorkerReport:
    """A worker's state, sent to the coordinator after every commit.

    The coordinator handles its calls out of order (it is a threaded actor), so a report may
    arrive after a newer one: ``(attempt, seq)`` orders them and the coordinator keeps the
    newest. ``records_in``/``records_out``/``dead_letters`` are those of this attempt alone, as
    of its last commit; ``task_counts`` are what Kafka holds committed for each task.
    """

    slot: int
    attempt: int
    pid: int
    node_id: str
    state: str  # "starting" | "running" | "finished" | "stopped" | "failed"
    epoch: int = 0
    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    #: Tasks that reached their end offsets and flushed (bounded runs), as of the last commit.
    done_tasks: list[str] = field(default_factory=list)
    last_error: str | None = None
    fatal: bool = False
    committed_at: float = 0.0
    #: The worker's metric series, cumulative (a ``raystream.metrics.recorder.Snapshot``).
    metrics: dict[str, Any] = field(default_factory=dict)
    #: The latest Kafka client error while the broker looks unreachable (None: it works).
    broker_error: str | None = None
    #: Increases with every report the worker process sends (0: never sent).
    seq: int = 0
    #: By task: (generation, epoch, records in, out, dead-lettered) as committed with its
    #: epoch, counted since the app first ran (see raystream._runtime.epochs).
    task_counts: dict[str, tuple[int, int, int, int, int]] = field(default_factory=dict)
