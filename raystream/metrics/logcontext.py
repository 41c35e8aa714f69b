"""Log records with their app, worker and task: a context that the runtime binds, a filter
that stamps it on every record, and text or JSON formatting.

    with log_context(app="fraud", worker="1"):
        with log_context(task="0_3"):
            log.warning("...")   # -> ... [app=fraud worker=1 task=0_3] raystream.task: ...

The context lives in a :mod:`contextvars` variable, so each thread (a worker's loop) has its own.
:func:`install` puts a handler with the filter on the ``raystream`` logger of a Ray actor's
process (workers and coordinator call it); a user's own handlers can add
:class:`ContextFilter` to get the same fields (``rs_app``, ``rs_worker``, ``rs_task``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_CONTEXT: ContextVar[dict[str, str]] = ContextVar("raystream_log_context", default={})  # noqa: B039
FIELDS = ("app", "worker", "task")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(rs_context)s] %(name)s: %(message)s"


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` (app, worker, task) to the log context of this thread for the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: str(v) for k, v in fields.items()}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**fields: object) -> None:
    """Add ``fields`` to this thread's log context for good (a worker's loop thread)."""
    _CONTEXT.set({**_CONTEXT.get(), **{k: str(v) for k, v in fields.items()}})


def bind_task(task: str) -> Token[dict[str, str]]:
    """Set the task of this thread's log context (cheap: a task runner calls it per batch);
    give the token to :func:`unbind_task` afterwards."""
    return _CONTEXT.set({**_CONTEXT.get(), "task": task})


def unbind_task(token: Token[dict[str, str]]) -> None:
    """Restore the log context from before :func:`bind_task`."""
    _CONTEXT.reset(token)


def current() -> dict[str, str]:
    """This thread's log context."""
    return dict(_CONTEXT.get())


class ContextFilter(logging.Filter):
    """Stamps ``rs_app``, ``rs_worker``, ``rs_task`` and ``rs_context`` on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        for f in FIELDS:
            setattr(record, f"rs_{f}", ctx.get(f, ""))
        record.rs_context = " ".join(f"{f}={ctx[f]}" for f in FIELDS if f in ctx) or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, app, worker, task (and the
    exception text when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for f in FIELDS:
            value = getattr(record, f"rs_{f}", "")
            if value:
                doc[f] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


_HANDLER_NAME = "raystream-context"


def install(level: str = "INFO", fmt: str = "text") -> logging.Handler:
    """Give the ``raystream`` logger of this process one stderr handler with the context
    (idempotent; Ray forwards actors' stderr to the driver and keeps it in its log files)."""
    logger = logging.getLogger("raystream")
    for h in logger.handlers:
        if h.get_name() == _HANDLER_NAME:
            handler = h
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.addFilter(ContextFilter())
        logger.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logger.setLevel(level)
    logger.propagate = False
    return handler
