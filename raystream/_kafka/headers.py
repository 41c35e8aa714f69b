"""Record headers raystream writes: provenance of outputs and the reasons of dead letters."""

from __future__ import annotations

Headers = list[tuple[str, str | bytes | None]]

TASK = "rs.task"
EPOCH = "rs.epoch"
ATTEMPT = "rs.attempt"

DLQ_ERROR_CLASS = "rs.error.class"
DLQ_ERROR_MESSAGE = "rs.error.message"
DLQ_TRACEBACK = "rs.error.traceback"
DLQ_TOPIC = "rs.source.topic"
DLQ_PARTITION = "rs.source.partition"
DLQ_OFFSET = "rs.source.offset"
DLQ_TIMESTAMP = "rs.source.timestamp"
DLQ_APP = "rs.app"
DLQ_OPERATOR = "rs.operator"
#: On a dead letter whose original value was too large to write again (the reason).
DLQ_VALUE_OMITTED = "rs.value.omitted"
#: On a record ``raystream dlq replay`` wrote back: ``<dlq topic>[<partition>]@<offset>``.
REPLAYED_FROM = "rs.replayed.from"
LATE_REASON = "rs.late.reason"


def provenance(task: str, epoch: int, attempt: int) -> Headers:
    """Headers naming the task, epoch and attempt that produced an output record."""
    return [(TASK, task.encode()), (EPOCH, str(epoch).encode()), (ATTEMPT, str(attempt).encode())]


def as_dict(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Headers as a str -> str dict (the last value of a repeated header wins)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers or []}
