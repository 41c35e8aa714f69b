"""Garbage collection of old checkpoint epochs, on a thread of the worker's own.

With short epochs one collection deletes hundreds of epoch directories (20 epochs a second
and a collection every 10 s: 200), which took the worker loop ~6% of its time in stalls of up
to a second in the order saga (bench/README.md). Collecting never has to happen before
anything else, and what it deletes no reader needs: epochs older than the task's committed head
and outside the chains of the epochs it keeps (``CheckpointStore.gc``). Epochs written later
are newer than that head, so the loop can go on writing while a collection runs.
"""

from __future__ import annotations

import logging
import threading

from raystream.state.checkpoint import CheckpointStore, EpochRef

log = logging.getLogger("raystream.worker")


class CheckpointCollector:
    """Runs ``CheckpointStore.gc`` requests one after the other on a daemon thread, started
    when there is work and ended when there is none; a task's newer request replaces its pending
    one. A failed collection is logged: the next one retries what it left."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        #: By (store root, task): the newest request.
        self._pending: dict[tuple[str, str], tuple[CheckpointStore, EpochRef, int]] = {}
        self._thread: threading.Thread | None = None
        #: Collections run and epochs deleted so far.
        self.runs = 0
        self.deleted = 0

    def submit(self, store: CheckpointStore, task: str, head: EpochRef, keep: int) -> None:
        """Collect ``task``'s epochs older than ``head``, keeping its last ``keep``."""
        with self._lock:
            self._pending[(store.root, task)] = (store, head, keep)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def idle(self, timeout: float) -> bool:
        """Wait until every submitted collection has run; False if still busy after
        ``timeout`` seconds."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                batch, self._pending = self._pending, {}
            for (_, task), (store, head, keep) in batch.items():
                try:
                    self.deleted += len(store.gc(task, head, keep))
                    self.runs += 1
                except Exception as exc:
                    log.warning("checkpoint GC of task %s failed (the next retries): %s", task, exc)
