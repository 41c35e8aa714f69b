"""What a keyed process function is given: :class:`ProcessFunction` and :class:`ProcessContext`.

A process function handles one record (or one timer) of one key at a time, with the key's state
(:class:`KeyState`, a dict of named values), its timers (:class:`Timers`) and ``emit``. Everything a
call does (state changes, timers, emitted records) takes effect only when it returns: if it
raises, the record is dead-lettered and the key is left as it was before the call.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from raystream.errors import OperatorContractError
from raystream.operators.timers import TimeDomain

Row = dict[str, Any]

#: ``emit(...)`` without ``key=``: the record's (or timer's) own key.
_SAME_KEY: Any = object()


class ProcessFunction:
    """Base class of keyed process functions (Flink's ``KeyedProcessFunction``).

    Subclass it and override :meth:`process` (required) and :meth:`on_timer` (when you register
    timers). Each task gets its own instance; keep what must survive a restart in ``ctx.state``
    and timers, not in attributes (those are not checkpointed)::

        class Timeout(rs.ProcessFunction):
            def process(self, ctx, key, value):
                ctx.state["last"] = value
                ctx.timers.register_event_time(ctx.timestamp + 60_000)

            def on_timer(self, ctx, key, timestamp, domain):
                ctx.emit({"id": key, "expired": ctx.state["last"]})
    """

    def process(self, ctx: ProcessContext, key: Any, value: Row) -> None:
        """Handle one record of ``key`` (its value as a dict); emit with ``ctx.emit``."""
        raise NotImplementedError(
            f"{type(self).__name__} must override process(self, ctx, key, value)"
        )

    def on_timer(self, ctx: ProcessContext, key: Any, timestamp: int, domain: TimeDomain) -> None:
        """A timer of ``key`` registered for ``timestamp`` in ``domain`` fired."""
        raise OperatorContractError(
            f"{type(self).__name__} registered a timer but does not override "
            "on_timer(self, ctx, key, timestamp, domain)"
        )

    @property
    def handles_timers(self) -> bool:
        """Whether :meth:`on_timer` is overridden (registering a timer requires it)."""
        return type(self).on_timer is not ProcessFunction.on_timer


class FunctionProcess(ProcessFunction):
    """A process function made of plain functions: ``fn(ctx, key, value)`` and optionally
    ``on_timer(ctx, key, timestamp, domain)``."""

    def __init__(
        self,
        fn: Callable[[ProcessContext, Any, Row], Any],
        on_timer: Callable[[ProcessContext, Any, int, TimeDomain], Any] | None = None,
    ) -> None:
        self.fn = fn
        self.timer_fn = on_timer

    def process(self, ctx: ProcessContext, key: Any, value: Row) -> None:
        _returned_none(self.fn(ctx, key, value), "the process function")

    def on_timer(self, ctx: ProcessContext, key: Any, timestamp: int, domain: TimeDomain) -> None:
        if self.timer_fn is None:
            super().on_timer(ctx, key, timestamp, domain)
        else:
            _returned_none(self.timer_fn(ctx, key, timestamp, domain), "the on_timer function")

    @property
    def handles_timers(self) -> bool:
        return self.timer_fn is not None


def _returned_none(result: Any, what: str) -> None:
    if result is not None:
        raise OperatorContractError(
            f"{what} returned a {type(result).__name__}; send records with ctx.emit(value) and "
            "return None"
        )


class KeyState(MutableMapping[str, Any]):
    """The current key's state: a dict of named values, saved when the call returns.

    Values may be any picklable Python objects and may be changed in place
    (``ctx.state["items"].append(x)``): the call works on a private copy, which replaces the
    stored state when the call returns without raising. Assigning or deleting every name empties
    the key's state (``ctx.state.clear()`` forgets the key).
    """

    def __init__(self, stored: Mapping[str, Any] | None) -> None:
        self._stored = stored
        self._data: dict[str, Any] = _copy(dict(stored)) if stored else {}

    def __getitem__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(
                f"no state named {name!r} for this key; use ctx.state.get({name!r}, default)"
            ) from None

    def __setitem__(self, name: str, value: Any) -> None:
        self._data[name] = value

    def __delitem__(self, name: str) -> None:
        del self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"KeyState({self._data!r})"


class Timers:
    """Register and delete the current key's timers (times in ms since the epoch).

    Event-time timers fire when the task's watermark reaches their time; processing-time timers
    when the processing clock does. A key has at most one timer per (time, domain): registering
    it again is a no-op.
    """

    def __init__(self, ops: list[tuple[bool, TimeDomain, int]], allowed: bool) -> None:
        self._ops = ops
        self._allowed = allowed

    def register_event_time(self, timestamp: int) -> None:
        """Fire ``on_timer`` once the watermark is at or past ``timestamp``."""
        self._add(True, TimeDomain.EVENT_TIME, timestamp)

    def register_processing_time(self, timestamp: int) -> None:
        """Fire ``on_timer`` once the processing clock is at or past ``timestamp``."""
        self._add(True, TimeDomain.PROCESSING_TIME, timestamp)

    def delete_event_time(self, timestamp: int) -> None:
        """Cancel the key's event-time timer at ``timestamp`` (nothing if there is none)."""
        self._add(False, TimeDomain.EVENT_TIME, timestamp)

    def delete_processing_time(self, timestamp: int) -> None:
        """Cancel the key's processing-time timer at ``timestamp`` (nothing if there is none)."""
        self._add(False, TimeDomain.PROCESSING_TIME, timestamp)

    def _add(self, register: bool, domain: TimeDomain, timestamp: int) -> None:
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise OperatorContractError(
                f"timer times are int milliseconds since the epoch, got {timestamp!r}; "
                "e.g. ctx.timestamp + 60_000"
            )
        if register and not self._allowed:
            raise OperatorContractError(
                "this process function registered a timer but has no timer callback: override "
                "on_timer(self, ctx, key, timestamp, domain), or pass on_timer= to process()"
            )
        self._ops.append((register, domain, timestamp))


class ProcessContext:
    """What a process function sees during one call (one record, or one timer), for one key.

    - ``key``: the key; ``timestamp``: the record's event time (in ``on_timer``: the timer's time);
    - ``watermark``: the task's event-time watermark before this record (``MIN_TIME``, a very
      negative number, before any record); ``processing_time``: the processing clock (ms);
    - ``state``: the key's :class:`KeyState`; ``timers``: its :class:`Timers`;
    - ``emit(value, key=, timestamp=, to=)``: send a record to an output;
    - ``outputs``: the output names given to ``stream.process(..., outputs=...)``.
    """

    __slots__ = (
        "_emits",
        "_state",
        "_stored",
        "_timers",
        "key",
        "outputs",
        "processing_time",
        "timestamp",
        "watermark",
    )

    def __init__(
        self,
        *,
        key: Any,
        timestamp: int,
        watermark: int,
        processing_time: int,
        outputs: tuple[str, ...],
        stored: Mapping[str, Any] | None,
        emits: list[tuple[int, Row, Any, int]],
        timer_ops: list[tuple[bool, TimeDomain, int]],
        timers_allowed: bool,
    ) -> None:
        self.key = key
        self.timestamp = timestamp
        self.watermark = watermark
        self.processing_time = processing_time
        self.outputs = outputs
        self._stored = stored
        self._state: KeyState | None = None
        self._emits = emits
        self._timers = Timers(timer_ops, timers_allowed)

    @property
    def state(self) -> KeyState:
        """The key's state (loaded on first use)."""
        if self._state is None:
            self._state = KeyState(self._stored)
        return self._state

    @property
    def timers(self) -> Timers:
        """The key's timers."""
        return self._timers

    def emit(
        self,
        value: Mapping[str, Any],
        *,
        key: Any = _SAME_KEY,
        timestamp: int | None = None,
        to: str | int | None = None,
    ) -> None:
        """Send ``value`` (a dict) downstream, keyed by ``key`` (default: this key) with event
        time ``timestamp`` (default: ``ctx.timestamp``), to output ``to`` (a name of
        ``outputs=``, or its index; leave it out when there is a single output)."""
        if not isinstance(value, Mapping):
            raise OperatorContractError(f"ctx.emit takes a dict value, got {type(value).__name__}")
        if timestamp is None:
            timestamp = self.timestamp
        elif isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise OperatorContractError(
                f"ctx.emit(timestamp=) takes int milliseconds since the epoch, got {timestamp!r}"
            )
        if key is _SAME_KEY:
            key = self.key
        elif isinstance(key, list | dict | set):
            raise OperatorContractError(
                f"ctx.emit(key=) takes a scalar key (str, int, bytes...), got {type(key).__name__}"
            )
        self._emits.append((self._port(to), dict(value), key, timestamp))

    def _port(self, to: str | int | None) -> int:
        names = self.outputs
        if to is None:
            if len(names) > 1:
                raise OperatorContractError(
                    f"this process function has outputs {list(names)}: say which one with "
                    "ctx.emit(value, to=<name>)"
                )
            return 0
        if isinstance(to, str):
            if to in names:
                return names.index(to)
        elif isinstance(to, int) and not isinstance(to, bool) and 0 <= to < max(len(names), 1):
            return to
        raise OperatorContractError(
            f"ctx.emit(to={to!r}): no such output; the outputs are {list(names) or [0]} "
            "(declare them with stream.process(..., outputs=(...)))"
        )


def state_changes(ctx: ProcessContext) -> tuple[bool, dict[str, Any] | None]:
    """Whether the call behind ``ctx`` changed its key's state, and the new state to store (a
    copy the store owns; None when the state was emptied)."""
    state = ctx._state
    if state is None:
        return False, None
    old = dict(state._stored) if state._stored else {}
    try:
        same = bool(state._data == old)
    except Exception:  # values whose == is not a bool (arrays): assume a change
        same = False
    if same:
        return False, None
    # The call's copy becomes the stored state: nothing else refers to it once the call is over.
    return True, state._data or None


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a key's state. State must be picklable (checkpoints pickle it), and a
    pickle round trip copies plain data several times faster than ``copy.deepcopy``."""
    try:
        copied: dict[str, Any] = pickle.loads(pickle.dumps(data, protocol=5))
    except Exception:  # not picklable: checkpointing will say so; copy as before meanwhile
        return copy.deepcopy(data)
    return copied
