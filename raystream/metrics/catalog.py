"""Every raystream metric, declared once: name, kind, help text, labels and buckets.

Labels are bounded: the app, a worker slot, a task (one per input partition), an operator name
(from the topology), a topic and partition the app reads, an error class, a worker state, a
librdkafka error name. Never a record key or value. :class:`~raystream.metrics.recorder.Recorder`
refuses labels a metric did not declare.

Counter names are declared without the ``_total`` suffix that Prometheus adds when it exposes
them; :meth:`MetricSpec.exposed_names` gives the names a scrape shows (the ones dashboards use).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """The kind of a metric."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric's declaration."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    #: Upper bounds of a histogram's buckets (seconds), ascending; +Inf is implied.
    buckets: tuple[float, ...] = ()

    def exposed_names(self) -> tuple[str, ...]:
        """The sample names a Prometheus scrape shows for this metric."""
        if self.kind is Kind.COUNTER:
            return (f"{self.name}_total",)
        if self.kind is Kind.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


#: Latency buckets (seconds) from a millisecond to a minute.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_C, _G, _H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM

# -- per task --------------------------------------------------------------------------------
TASK_RECORDS_IN = MetricSpec(
    "raystream_task_records_in",
    _C,
    "Records fetched from Kafka and fed to the task (every source partition it reads).",
    ("app", "task"),
)
TASK_RECORDS_OUT = MetricSpec(
    "raystream_task_records_out",
    _C,
    "Records the task produced to output topics (dead letters not included).",
    ("app", "task"),
)
OPERATOR_RECORDS_IN = MetricSpec(
    "raystream_operator_records_in",
    _C,
    "Records that entered an operator or a sink of the topology.",
    ("app", "task", "operator"),
)
OPERATOR_RECORDS_OUT = MetricSpec(
    "raystream_operator_records_out",
    _C,
    "Records an operator emitted, all output ports together.",
    ("app", "task", "operator"),
)
DEAD_LETTERS = MetricSpec(
    "raystream_dead_letters",
    _C,
    "Records sent to a dead-letter topic, by the operator that refused them ('decode' for "
    "undecodable input) and the error class.",
    ("app", "task", "operator", "error"),
)
LATE_RECORDS = MetricSpec(
    "raystream_late_records",
    _C,
    "Records that arrived after their window closed and went to the late topic.",
    ("app", "task", "operator"),
)
BATCH_SECONDS = MetricSpec(
    "raystream_batch_seconds",
    _H,
    "Time a task took to decode, process and queue the output of one fetched micro-batch.",
    ("app", "task"),
    LATENCY_BUCKETS,
)
END_TO_END_SECONDS = MetricSpec(
    "raystream_end_to_end_seconds",
    _H,
    "From a record's Kafka timestamp (its produce time, unless the producer set it) to the "
    "commit of the epoch that processed it.",
    ("app", "task"),
    LATENCY_BUCKETS,
)
TASK_LAG = MetricSpec(
    "raystream_task_lag",
    _G,
    "Records behind the high watermark, summed over the task's own source partitions.",
    ("app", "task"),
)
TASK_EPOCH = MetricSpec(
    "raystream_task_epoch",
    _G,
    "The task's last committed epoch.",
    ("app", "task"),
)
STATE_KEYS = MetricSpec(
    "raystream_state_keys",
    _G,
    "Keys held in an operator's keyed state stores (refreshed every few seconds).",
    ("app", "task", "operator"),
)
STATE_BYTES = MetricSpec(
    "raystream_state_bytes",
    _G,
    "Approximate memory of an operator's keyed state stores (refreshed every few seconds).",
    ("app", "task", "operator"),
)
# -- per partition ---------------------------------------------------------------------------
CONSUMER_LAG = MetricSpec(
    "raystream_consumer_lag",
    _G,
    "Records between a partition's high watermark (from the latest fetch) and the position "
    "processing reached.",
    ("app", "topic", "partition"),
)
# -- per worker ------------------------------------------------------------------------------
COMMIT_SECONDS = MetricSpec(
    "raystream_commit_seconds",
    _H,
    "Time to end an epoch: flush outputs, write state checkpoints, commit offsets (and the "
    "transaction in exactly-once mode).",
    ("app", "worker"),
    LATENCY_BUCKETS,
)
EPOCH_SECONDS = MetricSpec(
    "raystream_epoch_seconds",
    _H,
    "Time from one committed epoch of a worker to its next.",
    ("app", "worker"),
    LATENCY_BUCKETS,
)
EPOCHS_COMMITTED = MetricSpec(
    "raystream_epochs_committed",
    _C,
    "Epochs a worker committed.",
    ("app", "worker"),
)
WORKER_RETRIES = MetricSpec(
    "raystream_worker_retries",
    _C,
    "Times a worker's loop failed with a recoverable error (a broker outage, a failed "
    "delivery) and started again from the last commit, after a backoff.",
    ("app", "worker"),
)
KAFKA_ERRORS = MetricSpec(
    "raystream_kafka_errors",
    _C,
    "Client-level errors librdkafka reported to a worker (e.g. _TRANSPORT, "
    "_ALL_BROKERS_DOWN), by error name.",
    ("app", "worker", "error"),
)
BROKER_UP = MetricSpec(
    "raystream_broker_up",
    _G,
    "1 while the worker's Kafka clients work, 0 after a connection error until the next "
    "successful fetch or commit.",
    ("app", "worker"),
)
WORKER_STATE = MetricSpec(
    "raystream_worker_state",
    _G,
    "1 for the worker's current state (starting, bootstrapping, running, retrying, failed, "
    "finished, stopped, fenced), absent otherwise.",
    ("app", "worker", "state"),
)
LAST_COMMIT = MetricSpec(
    "raystream_last_commit_timestamp_seconds",
    _G,
    "Unix time of the worker's last commit.",
    ("app", "worker"),
)
# -- per app (the coordinator) ---------------------------------------------------------------
WORKER_RESTARTS = MetricSpec(
    "raystream_worker_restarts",
    _C,
    "Times a worker slot came back in a new process (Ray restarted it after a crash, a kill "
    "or a stall).",
    ("app", "worker"),
)

#: Every metric, in the order the endpoint exposes them.
METRICS: tuple[MetricSpec, ...] = (
    TASK_RECORDS_IN,
    TASK_RECORDS_OUT,
    OPERATOR_RECORDS_IN,
    OPERATOR_RECORDS_OUT,
    DEAD_LETTERS,
    LATE_RECORDS,
    BATCH_SECONDS,
    END_TO_END_SECONDS,
    TASK_LAG,
    TASK_EPOCH,
    STATE_KEYS,
    STATE_BYTES,
    CONSUMER_LAG,
    COMMIT_SECONDS,
    EPOCH_SECONDS,
    EPOCHS_COMMITTED,
    WORKER_RETRIES,
    KAFKA_ERRORS,
    BROKER_UP,
    WORKER_STATE,
    LAST_COMMIT,
    WORKER_RESTARTS,
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}


def exposed_names() -> frozenset[str]:
    """Every sample name the Prometheus endpoint can show."""
    return frozenset(n for m in METRICS for n in m.exposed_names())
