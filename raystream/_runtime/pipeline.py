"""Exactly-once outputs whose epoch commits overlap the next epoch's processing.

A Kafka transaction's commit is a few round trips to the broker (``AddOffsetsToTxn``,
``TxnOffsetCommit``, ``EndTxn``) during which its producer cannot take records: with one
producer the worker's loop would wait them out at every epoch (a quarter of its wall time in
W1, measured). So each worker has two transactional producers that take turns: at an epoch's
end the active one is flushed (every record of the epoch acknowledged, so the log holds the
epoch's records before any of the next's), then a background thread commits its transaction
while the loop goes on producing the next epoch into the other one.

Order and atomicity stay as with one producer: the next epoch's records land after this
epoch's in every partition (the flush), become readable only at their own commit, and that
commit starts only once this one is confirmed (:meth:`PipelinedOutput.settle`), so epochs
commit in order and offsets never go backwards. A failed commit is raised by the next
:meth:`settle`; the attempt then restarts from the last confirmed epoch, and the other
producer's open transaction is aborted by the next attempt's ``init_transactions`` (both
transactional ids are fenced at every start).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from raystream._kafka.headers import Headers
from raystream._runtime.output import OutputSink
from raystream.errors import RecordTooLargeError

#: Suffix of the second producer's transactional id.
SECOND_ID_SUFFIX = ".b"


class PipelinedOutput:
    """Two transactional :class:`OutputSink`\\ s taking turns, one epoch each.

    Has :class:`OutputSink`'s interface for the tasks (``send``, ``send_batch``, ``poll``),
    plus :meth:`commit_epoch` that returns as soon as the commit is under way and
    :meth:`settle` that waits for it.
    """

    transactional = True

    def __init__(self, make: Callable[[str], OutputSink], transactional_id: str) -> None:
        self._sinks = (make(transactional_id), make(transactional_id + SECOND_ID_SUFFIX))
        self._active = 0
        self._pending: Future[None] | None = None
        # One thread for the attempt's commits (they never overlap one another).
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="raystream-epoch-commit")

    @property
    def active(self) -> OutputSink:
        """The producer taking this epoch's records."""
        return self._sinks[self._active]

    def start_transactions(self, timeout: float = 60.0) -> None:
        """Fence older instances of both transactional ids and open a transaction on each."""
        for s in self._sinks:
            s.start_transactions(timeout)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        timestamp: int,
        headers: Headers | None,
    ) -> None:
        """Queue one record in the current epoch (see :meth:`OutputSink.send`)."""
        self.active.send(topic, value, key, timestamp, headers)

    def send_batch(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None],
        timestamps: Sequence[int],
        headers: Headers | None,
    ) -> list[tuple[int, RecordTooLargeError]]:
        """Queue records in the current epoch (see :meth:`OutputSink.send_batch`)."""
        return self.active.send_batch(topic, values, keys, timestamps, headers)

    def poll(self) -> None:
        """Serve both producers' delivery reports without blocking."""
        for s in self._sinks:
            s.poll()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the current epoch's records are acknowledged."""
        self.active.flush(timeout)

    def commit_epoch(self, offsets: list[Any], group_metadata: Any, timeout: float = 60.0) -> None:
        """Start committing the current epoch (its records flushed: see :meth:`flush`) with
        ``offsets``, in the background; later records go to the other producer. The previous
        commit must be settled."""
        if self._pending is not None:
            raise AssertionError("commit_epoch while the previous commit is unsettled")
        sink = self.active
        self._active ^= 1
        self._pending = self._committer.submit(sink.commit_epoch, offsets, group_metadata, timeout)

    @property
    def committing(self) -> bool:
        """Whether a commit is under way or done but not settled."""
        return self._pending is not None

    def done(self) -> bool:
        """Whether :meth:`settle` would return without waiting."""
        return self._pending is None or self._pending.done()

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the commit under way, if any; raise its failure."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result(timeout)

    def abort(self, timeout: float = 10.0) -> None:
        """Abort both producers' open transactions (best effort, as OutputSink.abort)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(BaseException):  # the attempt is failing already
                pending.result(timeout)
        for s in self._sinks:
            s.abort(timeout)
        self.close()

    def close(self) -> None:
        """End the commit thread (once the attempt is over)."""
        self._committer.shutdown(wait=False)
