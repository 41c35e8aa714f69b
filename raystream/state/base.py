"""The keyed state store contract that stateful operators depend on.

A store holds one task's keyed state: a mapping from hashable state keys to values. Operators
treat stored values as immutable (they ``put`` a new value rather than mutate one in place), so a
store can hand out its values without copying. The store tracks which keys changed since the last
:meth:`KeyedStore.mark_clean`, so a checkpoint can write only the changes of an epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator
from typing import Any


class KeyedStore(ABC):
    """One task's keyed state: ``key -> value`` with change tracking for incremental checkpoints."""

    @abstractmethod
    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""

    @abstractmethod
    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key`` (replacing any previous value) and mark the key dirty."""

    @abstractmethod
    def delete(self, key: Hashable) -> None:
        """Remove ``key`` if present and mark it dirty (a checkpoint writes a tombstone)."""

    @abstractmethod
    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """Every ``(key, value)`` pair, in insertion order."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of keys stored."""

    @abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is stored."""

    @abstractmethod
    def dirty_keys(self) -> frozenset[Hashable]:
        """Keys put or deleted since the last :meth:`mark_clean` (deleted ones are absent now)."""

    @abstractmethod
    def mark_clean(self) -> None:
        """Forget the dirty set: call after the changes were written to a checkpoint."""

    @abstractmethod
    def load(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        """Replace the whole content by ``items`` (a restored checkpoint) and mark it clean."""

    @abstractmethod
    def approx_bytes(self) -> int:
        """An estimate of the memory the state takes, for the state-size metric."""

    def get_many(self, keys: Iterable[Hashable]) -> list[Any]:
        """The value of every key in ``keys`` (None where absent), in order."""
        return [self.get(k) for k in keys]

    def keys(self) -> Iterator[Hashable]:
        """Every key, in insertion order."""
        for key, _ in self.items():
            yield key
