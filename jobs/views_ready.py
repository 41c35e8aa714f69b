"""Wait until an app's views show every task's last committed epoch (after a bounded run, or
before reading a final answer), instead of sleeping and hoping the view server refreshed."""

from __future__ import annotations

import time

import raystream as rs
from raystream._kafka.admin import Topics
from raystream.errors import RuntimeStateError
from raystream.views.snapshot import committed_heads


def wait_for_views(app: rs.App, timeout: float = 60.0) -> None:
    """Block until ``app``'s view server answers from the epochs Kafka says are committed now."""
    plan = app.plan()
    kafka = app.kafka_config()
    partitions = plan.resolve_partitions(Topics(kafka).require(plan.external_source_topics()))
    tasks = tuple(plan.tasks(partitions))
    heads = committed_heads(kafka, app.name, tasks)
    deadline = time.monotonic() + timeout
    while True:
        rows = app.sql("SELECT task, epoch, attempt FROM raystream_epochs").to_pylist()
        shown = {r["task"]: (r["epoch"], r["attempt"]) for r in rows}
        if all(shown.get(task) == head for task, head in heads.items()):
            return
        if time.monotonic() > deadline:
            behind = sorted(t for t, h in heads.items() if shown.get(t) != h)
            raise RuntimeStateError(
                f"the views of {app.name!r} still miss the last committed epoch of tasks "
                f"{behind[:5]} after {timeout:.0f}s; is the view server refreshing? "
                "(see view_refresh_ms)"
            )
        time.sleep(0.1)
