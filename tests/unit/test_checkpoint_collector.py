"""Checkpoint GC on the worker's collector thread (real files, no broker, no Ray)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from raystream._runtime.collector import CheckpointCollector
from raystream.state.checkpoint import CheckpointStore, EpochRef
from tests.unit.test_checkpoint_store import content, rows, write_history


class SlowStore(CheckpointStore):
    """A real store whose collections wait until the test lets them go."""

    def __init__(self, uri: str, app: str) -> None:
        super().__init__(uri, app)
        self.go = threading.Event()
        self.started = threading.Event()

    def gc(self, task: str, head: EpochRef, keep: int) -> list[EpochRef]:
        self.started.set()
        assert self.go.wait(10)
        return super().gc(task, head, keep)


def test_submit_returns_at_once_and_the_collection_runs_behind(tmp_path: Path) -> None:
    store = SlowStore(str(tmp_path), "app")
    write_history(store)
    collector = CheckpointCollector("gc-test")
    collector.submit(store, "0_0", (6, 2), 2)  # returns while the collection waits
    assert store.started.wait(5)
    assert not collector.idle(0.05)
    # The loop goes on writing epochs while the collection runs: a newer epoch is kept.
    head = store.manifest("0_0", (6, 2))
    store.write_epoch("0_0", (7, 2), {"in[0]": 70}, {"counts": rows({"f": 4})}, parent=head,
                      full=False)  # fmt: skip
    store.go.set()
    assert collector.idle(5)
    assert collector.runs == 1 and collector.deleted == 4
    assert [m.ref for m in store.manifests("0_0")] == [(4, 1), (5, 1), (6, 2), (7, 2)]
    assert content(store, "0_0", (7, 2)) == {"a": 5, "c": 8, "d": 2, "e": 3, "f": 4}


def test_a_newer_request_replaces_the_pending_one(tmp_path: Path) -> None:
    busy = SlowStore(str(tmp_path / "busy"), "app")
    write_history(busy)
    store = CheckpointStore(str(tmp_path / "other"), "app")
    write_history(store)
    collector = CheckpointCollector("gc-test")
    collector.submit(busy, "0_0", (6, 2), 2)
    assert busy.started.wait(5)
    # Same task name, another store (app): its own request. Then a newer one replaces it.
    collector.submit(store, "0_0", (5, 1), 1)
    collector.submit(store, "0_0", (6, 2), 2)
    busy.go.set()
    assert collector.idle(5)
    assert collector.runs == 2  # busy's, then other's newest
    assert [m.ref for m in store.manifests("0_0")] == [(4, 1), (5, 1), (6, 2)]
    assert [m.ref for m in busy.manifests("0_0")] == [(4, 1), (5, 1), (6, 2)]


def test_a_failed_collection_is_logged_and_the_next_one_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    write_history(store)
    collector = CheckpointCollector("gc-test")
    with caplog.at_level(logging.WARNING, logger="raystream.worker"):
        collector.submit(store, "0_0", (9, 9), 2)  # no such head: gc raises
        assert collector.idle(5)
    assert "checkpoint GC of task 0_0 failed" in caplog.text
    collector.submit(store, "0_0", (6, 2), 2)
    assert collector.idle(5)
    assert collector.runs == 1 and collector.deleted == 4
