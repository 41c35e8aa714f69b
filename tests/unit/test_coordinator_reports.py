"""How the coordinator takes worker reports, without Ray or a broker.

The coordinator is a threaded Ray actor (max_concurrency > 1), and Ray runs the calls of such an
actor out of order: two reports a worker sends back to back can be handled in either order. A
worker ending a bounded run sends a "running" report after its last commit and a "finished" one
right after; when the coordinator handled them the other way round it kept "running" for good,
the worker sent nothing more, and the watchdog restarted the worker after stall_timeout_ms.
"""

from __future__ import annotations

import dataclasses

import raystream as rs
from raystream._runtime.coordinator import Coordinator
from raystream._runtime.messages import WorkerReport
from raystream.config import KafkaConfig, RuntimeConfig


def coordinator(workers: int = 2, bounded: bool = True) -> Coordinator:
    app = rs.App("reports", brokers="127.0.0.1:1")
    app.stream("in").to("out")
    c = Coordinator(
        "reports",
        app.plan(),
        KafkaConfig("127.0.0.1:1"),
        RuntimeConfig(checkpoints="file:///tmp/unused", metrics_port=None, ray_metrics=False),
        workers,
        bounded,
    )
    c._workers = {slot: object() for slot in range(workers)}  # what start() would create
    c._state = "running"
    return c


def report(slot: int, attempt: int, seq: int, state: str, records_in: int) -> WorkerReport:
    return WorkerReport(
        slot,
        attempt,
        pid=1000 + slot + 10 * attempt,
        node_id="n",
        state=state,
        records_in=records_in,
        records_out=records_in // 2,
        committed_at=100.0 + seq,
        seq=seq,
    )


def test_a_report_handled_after_a_newer_one_does_not_replace_it() -> None:
    c = coordinator()
    c.worker_report(report(0, 0, 3, "running", 40))
    # Slot 1's last two reports, handled in the wrong order.
    c.worker_report(report(1, 0, 8, "finished", 60))
    c.worker_report(report(1, 0, 7, "running", 60))
    c.worker_report(report(0, 0, 4, "finished", 40))

    assert c.wait(0.2) == "finished"
    assert c._reports[1].state == "finished"


def test_a_late_report_of_a_replaced_attempt_is_ignored() -> None:
    c = coordinator(workers=1)
    c.worker_report(report(0, 1, 1, "running", 5))
    c.worker_report(report(0, 0, 9, "running", 30))  # the previous process, seen late
    assert c._reports[0].attempt == 1


def counts(report_: WorkerReport, **tasks: tuple[int, int, int]) -> WorkerReport:
    """``report_`` carrying committed task counts: task=(generation, epoch, records_in)."""
    return dataclasses.replace(
        report_,
        task_counts={t: (g, e, n, n // 2, 0) for t, (g, e, n) in tasks.items()},
    )


def test_run_totals_are_what_the_newest_attempt_of_each_task_committed() -> None:
    """Each task commits its counts with its offsets and a new attempt starts from them, so
    the newest attempt's report says what the task has done, however often it restarted."""
    c = coordinator(workers=2)
    c.worker_report(counts(report(0, 0, 1, "running", 10), t0=(1, 1, 10)))
    c.worker_report(counts(report(0, 0, 2, "running", 25), t0=(1, 2, 25)))  # then it dies
    # Its successor starts from the epoch Kafka holds: the broker took epoch 2 back (the
    # embedded broker can, see raystream._runtime.epochs), so it redoes the last 15 records.
    c.worker_report(counts(report(0, 1, 1, "running", 3), t0=(2, 1, 10)))
    c.worker_report(counts(report(0, 1, 2, "finished", 15), t0=(2, 3, 25)))
    c.worker_report(counts(report(1, 0, 5, "finished", 60), t1=(1, 4, 60)))
    c.worker_report(counts(report(0, 0, 1, "running", 10), t0=(1, 2, 25)))  # late: ignored

    totals = c.totals()  # what status()["totals"] and RunResult show
    assert totals["records_in"] == 25 + 60
    assert totals["records_out"] == 12 + 30
    assert totals["dead_letters"] == 0


def test_a_late_report_of_an_older_attempt_does_not_replace_a_newer_ones_counts() -> None:
    c = coordinator(workers=1)
    c.worker_report(counts(report(0, 1, 1, "running", 4), t0=(7, 3, 40)))
    c.worker_report(counts(report(0, 0, 9, "running", 50), t0=(6, 9, 50)))  # the zombie
    assert c.totals()["records_in"] == 40


def test_run_totals_leave_out_what_was_committed_before_the_run() -> None:
    c = coordinator(workers=1)
    c._counted_before = {"t0": (100, 50, 0)}  # what start() reads from Kafka
    c.worker_report(counts(report(0, 0, 1, "finished", 30), t0=(3, 8, 130)))
    assert c.totals() == {"records_in": 30, "records_out": 15, "dead_letters": 0}


def test_a_stale_report_does_not_count_a_restarted_slot_twice_in_the_metrics() -> None:
    c = coordinator(workers=1)
    snap = {"raystream_epochs_committed": {("reports", "0"): 2.0}}
    first = dataclasses.replace(report(0, 0, 2, "running", 10), metrics=snap)
    late = dataclasses.replace(report(0, 0, 1, "running", 5), metrics=snap)
    again = {"raystream_epochs_committed": {("reports", "0"): 1.0}}
    restarted = dataclasses.replace(report(0, 1, 1, "running", 1), metrics=again)
    c.worker_report(first)
    c.worker_report(restarted)
    c.worker_report(late)  # from the dead process, handled after its successor's
    merged = c.metrics.merged()["raystream_epochs_committed"]
    assert merged[("reports", "0")] == 3.0
