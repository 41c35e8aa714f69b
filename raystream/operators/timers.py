"""Per-key timers in two time domains, checkpointable as a keyed store.

A timer is ``(key, timestamp, domain)``: registering one that exists is a no-op, so timers are
deduplicated. Every live timer is one entry of a :class:`~raystream.state.base.KeyedStore`
(state key ``(domain, timestamp, key)``, value: its registration number), so a checkpoint writes
only the timers registered or removed in the epoch. One min-heap per domain, kept in memory and
rebuilt from the store on restore, orders them by ``(timestamp, registration number)``: timers
fire in timestamp order, ties in the order they were registered. Deleting a timer removes its store
entry; its heap entry goes stale and is skipped (a timer deleted and registered again gets a new
number, so its old heap entry stays stale).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Iterator
from enum import StrEnum
from typing import Any, cast

from raystream.state.memory import MemoryStore


class TimeDomain(StrEnum):
    """Which clock a timer follows: the task's watermark or the processing (wall) clock."""

    EVENT_TIME = "event_time"
    PROCESSING_TIME = "processing_time"


#: One heap entry: ``(timestamp, registration number, key)``; the number is unique, so keys are
#: never compared.
_Entry = tuple[int, int, Any]

#: Rebuild the heaps once more than this many deleted timers linger in them (and they outnumber
#: the live ones), so that registering and deleting timeouts does not grow memory.
_COMPACT_AFTER = 1024


class TimerQueue:
    """One task's timers: a keyed store (for checkpoints) plus a heap per domain (for firing)."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.next_number = 0
        self._heaps: dict[TimeDomain, list[_Entry]] = {d: [] for d in TimeDomain}
        #: Heap entries of deleted timers not yet skipped (rebuilt away when they pile up).
        self._stale = 0
        self._draining = False

    def register(self, key: Any, timestamp: int, domain: TimeDomain) -> None:
        """Add the timer unless it exists."""
        skey = (domain.value, timestamp, key)
        if skey in self.store:
            return
        number = self.next_number
        self.next_number += 1
        self.store.put(skey, number)
        heapq.heappush(self._heaps[domain], (timestamp, number, key))

    def delete(self, key: Any, timestamp: int, domain: TimeDomain) -> None:
        """Remove the timer if it exists."""
        skey = (domain.value, timestamp, key)
        if skey in self.store:
            self.store.delete(skey)
            self._stale += 1
            if (
                not self._draining
                and self._stale > _COMPACT_AFTER
                and self._stale > len(self.store)
            ):
                self._rebuild()

    def due(self, domain: TimeDomain, limit: int) -> Iterator[tuple[int, Any]]:
        """Remove and yield ``(timestamp, key)`` of every timer of ``domain`` at or before
        ``limit``, in order.

        Timers registered while the iteration runs (by the callbacks of the timers it yields) are
        not yielded, even when due: they wait for the next call, so that a callback re-registering
        a timer that is already due cannot loop forever.
        """
        heap = self._heaps[domain]
        registered_before = self.next_number
        deferred: list[_Entry] = []
        self._draining = True
        try:
            while heap and heap[0][0] <= limit:
                entry = heapq.heappop(heap)
                ts, number, key = entry
                skey = (domain.value, ts, key)
                if self.store.get(skey) != number:
                    self._stale = max(self._stale - 1, 0)
                    continue  # deleted (or deleted and registered again: a newer entry exists)
                if number >= registered_before:
                    deferred.append(entry)
                    continue
                self.store.delete(skey)
                yield ts, key
        finally:
            self._draining = False
            for entry in deferred:
                heapq.heappush(heap, entry)

    def pending(self, domain: TimeDomain) -> list[tuple[int, Any]]:
        """Every live timer of ``domain`` as ``(timestamp, key)``, in firing order."""
        live = []
        for skey, number in self.store.items():
            d, ts, key = cast(tuple[str, int, Any], skey)
            if d == domain.value:
                live.append((ts, number, key))
        return [(ts, key) for ts, _, key in sorted(live, key=lambda e: (e[0], e[1]))]

    def load(self, items: Iterable[tuple[Hashable, Any]], next_number: int) -> None:
        """Replace every timer by restored store ``items`` and rebuild the heaps."""
        self.store.load(items)
        self.next_number = next_number
        self._rebuild()

    def _rebuild(self) -> None:
        heaps: dict[TimeDomain, list[_Entry]] = {d: [] for d in TimeDomain}
        for skey, number in self.store.items():
            domain, ts, key = cast(tuple[str, int, Any], skey)
            heaps[TimeDomain(domain)].append((ts, number, key))
            self.next_number = max(self.next_number, number + 1)
        for heap in heaps.values():
            heapq.heapify(heap)
        self._heaps = heaps
        self._stale = 0

    def __len__(self) -> int:
        return len(self.store)
