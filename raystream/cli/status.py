"""``raystream status [--app NAME] [--json] [--watch]``: a running app's tasks, owners, lag,
rates, epochs and errors, from its coordinator.

Exit codes: 0 the app runs or finished; 1 error (no such app, Ray unreachable); 4 the app failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

#: Exit code when the app's state is ``failed``.
EXIT_FAILED = 4
#: ANSI: cursor home, clear to the end of the screen (``--watch`` redraws in place).
_REDRAW = "\x1b[H\x1b[J"


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``status`` command."""
    p = subparsers.add_parser(
        "status",
        parents=[common],
        help="show a running app's tasks, owners, lag, rates and errors",
        description="Ask a running app's coordinator for its state: one row per task (owning "
        "worker and node, records in/out and their rates, lag, epoch, dead letters), the "
        "workers' last errors, broker trouble and the Prometheus endpoint.",
    )
    p.add_argument("--app", help="the app's name (default: the only running app)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or the dev stack)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print the status once, as JSON")
    mode.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from raystream._runtime.driver import ensure_ray
    from raystream._runtime.lookup import app_status, pick_app

    ensure_ray(args.address)
    app = pick_app(args.app)
    if args.json:
        status = app_status(app)
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
        return _exit_code(status)
    if not args.watch:
        status = app_status(app)
        print(render(status))
        return _exit_code(status)
    tty = sys.stdout.isatty()
    try:
        while True:
            status = app_status(app)
            text = render(status)
            sys.stdout.write((_REDRAW if tty else "\n") + text + "\n")
            sys.stdout.flush()
            if status["state"] != "running":
                return _exit_code(status)
            time.sleep(max(args.interval, 0.2))
    except KeyboardInterrupt:
        return 0


def _exit_code(status: dict[str, Any]) -> int:
    return EXIT_FAILED if status.get("state") == "failed" else 0


def render(status: dict[str, Any], now: float | None = None) -> str:
    """The status as a terminal view: a header, broker trouble, a row per task, the workers."""
    now = time.time() if now is None else now
    workers: dict[int, dict[str, Any]] = {int(s): w for s, w in status.get("workers", {}).items()}
    owner = {t: int(s) for s, ts in status.get("assignments", {}).items() for t in ts}
    tasks: dict[str, dict[str, float]] = status.get("tasks", {})
    started = status.get("started_at") or now
    epoch = max((w.get("epoch", 0) for w in workers.values()), default=0)
    lines = [
        f"app {status['app']}  {status['state']}  up {_duration(now - started)}  "
        f"epoch {epoch}  workers {len(status.get('assignments', {}))}"
        + ("  (bounded)" if status.get("bounded") else ""),
        f"metrics {status.get('metrics_url') or 'off (metrics_port=None)'}",
    ]
    for slot, w in sorted(workers.items()):
        if w.get("broker_error"):
            lines.append(f"! broker: worker {slot} cannot reach Kafka: {w['broker_error']}")
    header = (
        "TASK",
        "WORKER",
        "NODE",
        "STATE",
        "IN",
        "IN/S",
        "OUT",
        "OUT/S",
        "LAG",
        "EPOCH",
        "DLQ",
    )
    rows: list[tuple[str, ...]] = [header]
    for task in sorted(set(owner) | set(tasks), key=_task_order):
        t = tasks.get(task, {})
        owned_by = owner.get(task)
        w = workers.get(owned_by, {}) if owned_by is not None else {}
        rows.append(
            (
                task,
                "-" if owned_by is None else str(owned_by),
                str(w.get("node_id", "-"))[:8],
                "done" if task in w.get("done_tasks", []) else str(w.get("state", "-")),
                _count(t.get("records_in", 0)),
                _rate(t.get("in_per_s", 0)),
                _count(t.get("records_out", 0)),
                _rate(t.get("out_per_s", 0)),
                _count(t.get("lag", 0)),
                str(int(t.get("epoch", 0))),
                _count(t.get("dead_letters", 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(widths[i]) if i < 4 else c.rjust(widths[i]) for i, c in enumerate(r)
            ).rstrip()
        )
    lines.append("")
    lines.append("WORKERS")
    for slot, w in sorted(workers.items()):
        ago = now - w["committed_at"] if w.get("committed_at") else None
        line = (
            f"  {slot}  pid {w.get('pid')}  node {str(w.get('node_id', '-'))[:8]}  "
            f"{w.get('state')}  attempt {w.get('attempt')}  "
            f"last commit {'never' if ago is None else _duration(ago) + ' ago'}"
        )
        lines.append(line)
        if w.get("last_error"):
            lines.append(f"     last error: {_one_line(w['last_error'])}")
    if not workers:
        lines.append("  (no worker has reported yet)")
    return "\n".join(lines)


def _task_order(task: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in task.split("_"))
    except ValueError:
        return (1 << 30,)


def _count(v: float) -> str:
    return f"{int(v):,}"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def _duration(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
