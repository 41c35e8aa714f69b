"""``raystream dlq list|show|replay``: inspect dead-letter topics and write their records back.

``list`` counts dead letters per topic, error class and operator; ``show`` prints records with
their headers; ``replay`` writes records back to their source topic and partition (with an
``rs.replayed.from`` header) once the cause is fixed, so the app processes them again.
Filters: ``--error-class`` (full name or the class name alone), ``--operator``, ``--partition``,
``--from-offset`` / ``--to-offset`` (offsets of the dead-letter topic, inclusive).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections import Counter
from typing import Any


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``dlq`` group and its actions."""
    group = subparsers.add_parser(
        "dlq",
        parents=[common],
        help="inspect and replay dead-letter topics",
        description="Dead-letter topics hold records an app could not process, with their "
        "original bytes and headers naming the error and the source record.",
    )
    group.set_defaults(group_parser=group)
    actions = group.add_subparsers(title="actions", metavar="ACTION")

    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--brokers", help="Kafka bootstrap (default: RAYSTREAM_BROKERS or dev stack)")
    conn.add_argument("--json", action="store_true", help="machine-readable output")

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("topic", help="the dead-letter topic, e.g. payments.dlq")
    filters.add_argument("--error-class", help="only this error class (e.g. ValueError)")
    filters.add_argument("--operator", help="only records refused by this operator")
    filters.add_argument("--partition", type=int, help="only this partition of the DLQ topic")
    filters.add_argument("--from-offset", type=int, default=0, help="first DLQ offset (incl.)")
    filters.add_argument("--to-offset", type=int, help="last DLQ offset (inclusive)")

    ls = actions.add_parser(
        "list", parents=[common, conn], help="count dead letters per topic and error class"
    )
    ls.add_argument("topics", nargs="*", help="DLQ topics (default: every one on the broker)")
    ls.add_argument(
        "--dlq-format",
        default="{topic}.dlq",
        help="how DLQ topics are named (RuntimeConfig.dlq_topic; default '{topic}.dlq')",
    )
    ls.set_defaults(handler=_list)

    show = actions.add_parser(
        "show", parents=[common, conn, filters], help="print dead letters with their headers"
    )
    show.add_argument("--limit", type=int, default=20, help="most records to print (default 20)")
    show.set_defaults(handler=_show)

    replay = actions.add_parser(
        "replay",
        parents=[common, conn, filters],
        help="write dead letters back to their source topic (after a fix)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed, write nothing"
    )
    replay.add_argument("--to", dest="to_topic", help="write to this topic instead of the source")
    replay.set_defaults(handler=_replay)


def _kafka(args: argparse.Namespace) -> Any:
    from raystream.config import KafkaConfig, brokers_from_env

    return KafkaConfig(brokers=args.brokers or brokers_from_env() or "")


def _filter(args: argparse.Namespace) -> Any:
    from raystream._kafka.deadletters import Filter

    return Filter(
        error_class=args.error_class,
        operator=args.operator,
        partition=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
    )


def _list(args: argparse.Namespace) -> int:
    from raystream._kafka import deadletters

    cfg = _kafka(args)
    topics = args.topics or list(deadletters.dead_letter_topics(cfg, args.dlq_format))
    counts: Counter[tuple[str, str, str]] = Counter()
    for topic in topics:
        for d in deadletters.read(cfg, topic):
            counts[(topic, d.error_class, d.operator)] += 1
    if args.json:
        rows = [
            {"topic": t, "error_class": e, "operator": o, "count": n}
            for (t, e, o), n in sorted(counts.items())
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not counts:
        print("no dead letters" + (f" in {', '.join(topics)}" if topics else " (no DLQ topics)"))
        return 0
    header = ("TOPIC", "ERROR CLASS", "OPERATOR", "COUNT")
    table = [header] + [(t, e, o, f"{n:,}") for (t, e, o), n in sorted(counts.items())]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print(
            "  ".join(c.rjust(widths[i]) if i == 3 else c.ljust(widths[i]) for i, c in enumerate(r))
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from raystream._kafka import deadletters

    letters = list(deadletters.read(_kafka(args), args.topic, _filter(args), limit=args.limit))
    if args.json:
        print(json.dumps([_as_json(d) for d in letters], indent=2))
        return 0
    for d in letters:
        print(f"{d.where}  {d.error_class}  (operator {d.operator})")
        for k, v in sorted(d.headers.items()):
            print(f"    {k}: {v}")
        print(f"    key:   {_preview(d.key)}")
        print(f"    value: {_preview(d.value)}")
    if not letters:
        print(f"no dead letters in {args.topic} match")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from raystream._kafka import deadletters

    cfg = _kafka(args)
    letters = list(deadletters.read(cfg, args.topic, _filter(args)))
    ok = [d for d in letters if d.replayable]
    skipped = len(letters) - len(ok)
    targets = Counter(args.to_topic or (d.source or ("?",))[0] for d in ok)
    summary = {
        "matched": len(letters),
        "replayable": len(ok),
        "skipped": skipped,
        "targets": dict(targets),
        "next_offset": {str(p): o + 1 for p, o in _last_offsets(letters).items()},
    }
    if args.dry_run or not ok:
        summary["replayed"] = 0
        _report(args, summary, dry_run=args.dry_run)
        return 0
    progress = _Progress(len(ok))
    summary["replayed"] = deadletters.replay(cfg, ok, progress.update, to_topic=args.to_topic)
    progress.done()
    _report(args, summary, dry_run=False)
    return 0


def _last_offsets(letters: list[Any]) -> dict[int, int]:
    last: dict[int, int] = {}
    for d in letters:
        last[d.partition] = max(last.get(d.partition, -1), d.offset)
    return last


def _report(args: argparse.Namespace, summary: dict[str, Any], dry_run: bool) -> None:
    if args.json:
        print(json.dumps({**summary, "dry_run": dry_run}, indent=2))
        return
    verb = "would replay" if dry_run else "replayed"
    count = summary["replayable"] if dry_run else summary["replayed"]
    where = ", ".join(f"{t} ({n:,})" for t, n in sorted(summary["targets"].items())) or "-"
    print(f"{verb} {count:,} of {summary['matched']:,} matching dead letters to {where}")
    if summary["skipped"]:
        print(
            f"skipped {summary['skipped']:,} without their original bytes or source headers "
            "(see `raystream dlq show`)"
        )
    if summary["next_offset"] and not dry_run:
        nxt = " ".join(f"{p}:{o}" for p, o in summary["next_offset"].items())
        print(f"to skip these next time, start from the DLQ offsets after them ({nxt})")


class _Progress:
    """A progress line on stderr for long replays (rewritten in place on a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self._last = -1

    def update(self, done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if self.tty:
            sys.stderr.write(f"\rreplaying {done:,}/{total:,} ({pct}%)")
        elif pct // 10 != self._last // 10:
            sys.stderr.write(f"replaying {done:,}/{total:,} ({pct}%)\n")
        self._last = pct
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _preview(data: bytes | None, width: int = 200) -> str:
    if data is None:
        return "(none)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data)} bytes, not UTF-8: {data[:width]!r}"
    return text if len(text) <= width else f"{text[:width]}... ({len(data)} bytes)"


def _as_json(d: Any) -> dict[str, Any]:
    def b64(v: bytes | None) -> str | None:
        return None if v is None else base64.b64encode(v).decode()

    return {
        "topic": d.topic,
        "partition": d.partition,
        "offset": d.offset,
        "timestamp": d.timestamp,
        "headers": d.headers,
        "key_base64": b64(d.key),
        "value_base64": b64(d.value),
    }
