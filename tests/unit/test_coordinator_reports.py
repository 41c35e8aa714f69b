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


def test_run_totals_add_up_every_attempt_of_a_slot() -> None:
    """A worker restarted by Ray (or the watchdog) starts its counters at 0: the totals carry
    what each earlier attempt had committed."""
    c = coordinator(workers=2)
    c.worker_report(report(0, 0, 1, "running", 10))
    c.worker_report(report(0, 0, 2, "running", 25))  # then the process dies
    c.worker_report(report(0, 1, 1, "running", 3))
    c.worker_report(report(0, 1, 2, "finished", 15))
    c.worker_report(report(1, 0, 5, "finished", 60))
    c.worker_report(report(0, 0, 1, "running", 10))  # a late duplicate changes nothing

    totals = c.totals()  # what status()["totals"] and RunResult show
    assert totals["records_in"] == 25 + 15 + 60
    assert totals["records_out"] == 12 + 7 + 30
    assert totals["dead_letters"] == 0


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
