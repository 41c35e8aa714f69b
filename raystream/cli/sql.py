"""``raystream sql`` and ``raystream views``: query a running app's views from the shell.

    raystream sql --app NAME "SELECT ..." [--format table|csv|json|arrow] [--as-of TIME]
    raystream views --app NAME [--json]
    raystream views attach-sql --checkpoints DIR_OR_URI --app NAME [--no-broker]

``sql`` and ``views`` connect to the Ray cluster the app runs on (``--address``, else
RAY_ADDRESS, else the ``raystream dev up`` head, else a local ``ray start`` cluster; never a new
Ray) and ask its view server. ``--app`` may be left out when exactly one app serves views.
``attach-sql`` needs no Ray and no running app: it prints DuckDB SQL over the checkpoint files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

FORMATS = ("table", "csv", "json", "arrow")
#: The widest a cell is printed in ``--format table`` (longer values are cut with "...").
MAX_CELL = 48


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``sql`` and ``views`` commands."""
    sql = subparsers.add_parser(
        "sql",
        parents=[common],
        help="run a read-only SQL query over a running app's views",
        description="Run one read-only SELECT over the views of a running app (each answer holds "
        "one whole committed epoch of every task). Tables: the app's views, raystream_epochs "
        "and raystream_offsets.",
    )
    sql.add_argument("query", help='the SQL, e.g. "SELECT * FROM totals ORDER BY n DESC LIMIT 10"')
    _app_options(sql)
    sql.add_argument(
        "--format", choices=FORMATS, default="table", help="output format (default: table)"
    )
    sql.add_argument(
        "--as-of",
        type=_moment,
        metavar="TIME",
        help="time travel: the committed state at TIME (unix seconds, or ISO 8601 such as "
        "2026-01-01T12:00:00Z), within the retained epochs",
    )
    sql.set_defaults(handler=_sql)

    views = subparsers.add_parser(
        "views",
        parents=[common],
        help="list a running app's views, or print SQL for plain duckdb",
        description="List the views of a running app: name, columns, rows, committed epochs and "
        "freshness.",
    )
    views.set_defaults(handler=_views)
    _app_options(views)
    views.add_argument("--json", action="store_true", help="print the list as JSON")
    actions = views.add_subparsers(title="actions", metavar="ACTION")
    attach = actions.add_parser(
        "attach-sql",
        parents=[common],
        help="print DuckDB SQL that reads the views from the checkpoint directory",
        description="Print DuckDB SQL (CREATE VIEW ... FROM read_parquet([...])) reproducing "
        "each view of a stopped app from its checkpoints. Each task's epoch is the one Kafka "
        "committed when a broker answers (--brokers, RAYSTREAM_BROKERS or the dev stack), "
        "else its newest published epoch (which may be uncommitted after a crash).",
    )
    attach.add_argument(
        "--checkpoints",
        required=True,
        metavar="DIR_OR_URI",
        help="the app's checkpoints setting: a directory, file:///path or s3://bucket/prefix",
    )
    attach.add_argument("--app", required=True, help="the app's name")
    attach.add_argument("--brokers", help="Kafka bootstrap address (default: RAYSTREAM_BROKERS)")
    attach.add_argument(
        "--no-broker",
        action="store_true",
        help="do not ask Kafka: use each task's newest published epoch",
    )
    attach.set_defaults(handler=_attach)


def _app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app", default=None, help="the app's name (default: the only app serving views)"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="the Ray cluster (default: RAY_ADDRESS, the dev stack, or a local `ray start`)",
    )


def _moment(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither unix seconds nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _connect(args: argparse.Namespace) -> Any:
    """The view server of ``--app`` on the cluster, connecting this process to Ray first."""
    from raystream.config import ray_address_from_env
    from raystream.errors import RuntimeStateError
    from raystream.views.server import connect

    address = args.address or ray_address_from_env() or "auto"
    try:
        from raystream._runtime.driver import ensure_ray

        ensure_ray(address)
    except ConnectionError as exc:
        raise RuntimeStateError(
            f"no Ray cluster at {address!r}: {exc}; give --address or RAY_ADDRESS of the "
            "cluster the app runs on (or `raystream dev up`)"
        ) from exc
    return connect(args.app)


def _sql(args: argparse.Namespace) -> int:
    from raystream.views.server import call

    server = _connect(args)
    table = call(server, "sql", args.query, args.as_of)
    write_table(table, args.format)
    return 0


def write_table(table: Any, fmt: str) -> None:
    """Print a query result to stdout in ``fmt`` (one of :data:`FORMATS`)."""
    from raystream.views.http import table_arrow, table_json

    out = sys.stdout
    if fmt == "arrow":
        out.flush()
        out.buffer.write(table_arrow(table))
        out.buffer.flush()
    elif fmt == "json":
        out.write(table_json(table).decode() + "\n")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        out.flush()
        pacsv.write_csv(table, out.buffer)
        out.buffer.flush()
    else:
        out.write(render(table.column_names, table.to_pylist()) + "\n")


def render(columns: list[str], rows: list[dict[str, Any]], whole: tuple[str, ...] = ()) -> str:
    """A readable text table: a header, aligned columns (numbers to the right), a row count.
    Cells are cut at :data:`MAX_CELL` characters, except in the ``whole`` columns."""
    cells = [[_cell(r[c], c not in whole) for c in columns] for r in rows]
    numeric = [
        all(
            isinstance(r[c], int | float) and not isinstance(r[c], bool)
            for r in rows
            if r[c] is not None
        )
        and bool(rows)
        for c in columns
    ]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _cell(value: Any, cut: bool = True) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, datetime.datetime | datetime.date):
        text = value.isoformat()
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if not cut or len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def _views(args: argparse.Namespace) -> int:
    from raystream.views.server import call

    server = _connect(args)
    listed: list[dict[str, Any]] = call(server, "views")
    if args.json:
        print(json.dumps(listed, indent=2, default=str))
        return 0
    rows = []
    for v in listed:
        system = bool(v.get("system"))
        fresh = v.get("freshness_s")
        rows.append(
            {
                "view": v["name"],
                "rows": v["rows"],
                "epochs": "-"
                if system
                else f"{v['tasks_committed']}/{v['tasks']} tasks"
                + (
                    f", {min(v['epochs'].values())}..{max(v['epochs'].values())}"
                    if v["epochs"]
                    else ""
                ),
                "freshness": "-" if fresh is None else f"{fresh:.1f}s",
                "columns": ", ".join(v["columns"]),
            }
        )
    print(render(["view", "rows", "epochs", "freshness", "columns"], rows, whole=("columns",)))
    return 0


def _attach(args: argparse.Namespace) -> int:
    from raystream.config import brokers_from_env
    from raystream.views.offline import attach_sql, kafka_or_none

    kafka = None if args.no_broker else kafka_or_none(args.brokers or brokers_from_env())
    if kafka is None and not args.no_broker:
        print(
            "note: no broker answers: each task's newest published epoch is used (it may be "
            "one whose commit never happened)",
            file=sys.stderr,
        )
    sys.stdout.write(attach_sql(args.checkpoints, args.app, kafka))
    return 0
