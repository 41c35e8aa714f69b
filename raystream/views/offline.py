"""Plain ``duckdb`` over an app's checkpoint directory, with the app stopped.

A view's rows are Parquet files of the epoch checkpoints (see :mod:`raystream.state.checkpoint`)::

    <root>/<app>/<task>/<epoch:012d>-<attempt>/view.<name>.parquet   rows changed in that epoch
    <root>/<app>/<task>/<epoch:012d>-<attempt>.manifest.json         the epoch's record

Each file holds ``__key`` (the primary key, serialized), ``__deleted`` (a tombstone) and the view's
columns. A task's state at an epoch is its last *full* epoch plus every delta after it up to that
epoch, the last write per key winning, deleted keys removed. :func:`attach_sql` writes that rule
down as DuckDB SQL: one ``CREATE VIEW`` per view over ``read_parquet([...])`` of exactly the
files of each task's chosen epoch, plus ``raystream_epochs`` and ``raystream_offsets`` saying
which epochs those are.

Which epoch is *committed* is recorded in Kafka, not in the directory. With a broker reachable,
each task's epoch is the newest one whose input positions equal the app's committed offsets
(the rule recovery applies: an aborted epoch's positions differ) and whose ``(epoch, attempt)``
is among those committed in the app's ``<app>-epochs`` markers (which tell epochs with equal
positions apart, e.g. one that only closed windows). Without a broker, it is the newest published
epoch of each task, which may be an epoch whose Kafka commit never happened (the last one
before a crash); the SQL says which rule chose it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from raystream._runtime.checkpointing import view_store
from raystream.config import KafkaConfig
from raystream.errors import CheckpointError, KafkaError
from raystream.state.checkpoint import DELETED, KEY, CheckpointStore, EpochManifest, epoch_name

log = logging.getLogger("raystream.views.offline")

#: How a task's epoch was chosen.
BY_KAFKA = "committed offsets in Kafka"
BY_NEWEST = "newest published (no broker: may be uncommitted)"

_VIEW_PREFIX = view_store("")


@dataclass(frozen=True)
class TaskEpoch:
    """The epoch chosen for one task, and the files of each view it holds."""

    manifest: EpochManifest
    chosen_by: str
    #: view name -> the Parquet files of its chain, oldest first
    files: dict[str, list[str]]


def task_names(store: CheckpointStore) -> list[str]:
    """The tasks that wrote checkpoints under the store's app directory."""
    sel = pafs.FileSelector(store.root, allow_not_found=True)
    return sorted(
        info.base_name
        for info in store.fs.get_file_info(sel)
        if info.type == pafs.FileType.Directory
    )


def choose_epochs(
    store: CheckpointStore, app: str, kafka: KafkaConfig | None = None
) -> dict[str, TaskEpoch]:
    """Each task's epoch to read (see the module doc for the rule), with its views' files."""
    published = {task: store.manifests(task) for task in task_names(store)}
    published = {task: ms for task, ms in published.items() if ms}
    committed = _committed_inputs(kafka, app, published) if kafka is not None else None
    markers = _committed_markers(kafka, app) if kafka is not None else set()
    out: dict[str, TaskEpoch] = {}
    for task, manifests in sorted(published.items()):
        if committed is None:
            head, how = manifests[-1], BY_NEWEST
        else:
            matching = [m for m in manifests if _matches(m, committed)]
            marked = [m for m in matching if m.ref in markers]
            matching = marked or matching
            if not matching:
                log.warning("task %s: no published epoch matches Kafka's offsets", task)
                continue
            head, how = matching[-1], BY_KAFKA
        out[task] = TaskEpoch(head, how, _view_files(store, task, head))
    return out


def _committed_inputs(
    kafka: KafkaConfig, app: str, published: dict[str, list[EpochManifest]]
) -> dict[tuple[str, int], int]:
    from raystream._kafka.admin import committed_offsets

    parts: set[tuple[str, int]] = set()
    for manifests in published.values():
        for m in manifests:
            parts.update(_parse_tp(name) for name in m.offsets)
    got = committed_offsets(kafka, app, sorted(parts), timeout=10.0)
    return {tp: max(off if off is not None else 0, 0) for tp, off in got.items()}


def _committed_markers(kafka: KafkaConfig, app: str) -> set[tuple[int, int]]:
    """Every ``(epoch, attempt)`` committed in the app's epoch markers (which task each belongs
    to needs the app's plan, so only the set is returned)."""
    from raystream._kafka.admin import Topics, committed_offsets
    from raystream._runtime.epochs import PARTITIONS_PER_TASK, epochs_topic, marker_partitions

    topic = epochs_topic(app)
    count = Topics(kafka).partitions(timeout=10.0).get(topic, 0)
    got = committed_offsets(kafka, app, [(topic, p) for p in range(count)], timeout=10.0)
    pairs = set()
    for i in range(count // PARTITIONS_PER_TASK):
        epoch, attempt = (got.get((topic, p)) for p in marker_partitions(i))
        if epoch is not None and attempt is not None:
            pairs.add((epoch, attempt))
    return pairs


def _matches(m: EpochManifest, committed: dict[tuple[str, int], int]) -> bool:
    return all(committed.get(_parse_tp(name), 0) == off for name, off in m.offsets.items())


def _parse_tp(name: str) -> tuple[str, int]:
    topic, _, part = name.rpartition("[")
    return topic, int(part.rstrip("]"))


def _view_files(store: CheckpointStore, task: str, head: EpochManifest) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for m in store.chain(task, head.ref):
        for name in sorted(m.stores):
            if name.startswith(_VIEW_PREFIX):
                view = name[len(_VIEW_PREFIX) :]
                path = f"{store.root}/{task}/{epoch_name(m.ref)}/{name}.parquet"
                files.setdefault(view, []).append(_uri(store, path))
    return files


def _uri(store: CheckpointStore, path: str) -> str:
    if isinstance(store.fs, pafs.LocalFileSystem):
        return path
    return f"{store.fs.type_name}://{path}"


def attach_sql(
    checkpoints: str,
    app: str,
    kafka: KafkaConfig | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> str:
    """DuckDB SQL that creates every view of ``app`` (and ``raystream_epochs`` /
    ``raystream_offsets``) from the checkpoints under ``checkpoints``, as of each task's latest
    committed epoch when ``kafka`` is given (else its newest published one).

    Run it in any ``duckdb`` (the CLI, or ``duckdb.connect().execute(sql)``); for ``s3://``
    checkpoints load ``httpfs`` and create an S3 secret first.
    """
    store = CheckpointStore(checkpoints, app, filesystem)
    epochs = choose_epochs(store, app, kafka)
    if not epochs:
        raise CheckpointError(
            f"no published checkpoint epoch of app {app!r} under {store.root} (or none matching "
            "Kafka's committed offsets): check --checkpoints and --app (the app's "
            "`checkpoints=` setting and name)"
        )
    rules = sorted({e.chosen_by for e in epochs.values()})
    lines = [
        f"-- raystream views of app {app!r} from {checkpoints}",
        f"-- generated {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC; each task's "
        f"epoch chosen by: {', '.join(rules)}",
    ]
    if BY_NEWEST in rules:
        lines.append(
            "-- without a broker the newest published epoch of a task may be one whose Kafka "
            "commit never happened (a crash between checkpoint and commit)"
        )
    if not isinstance(store.fs, pafs.LocalFileSystem):
        lines.append("-- remote files: INSTALL httpfs; LOAD httpfs; CREATE SECRET (TYPE s3, ...);")
    views: dict[str, list[str]] = {}
    for e in epochs.values():
        for view, files in e.files.items():
            views.setdefault(view, []).extend(files)
    for view, files in sorted(views.items()):
        lines.append(_view_sql(view, files))
    lines.append(_epochs_sql(epochs))
    lines.append(_offsets_sql(epochs))
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _view_sql(view: str, files: list[str]) -> str:
    # Files of one task's chain sort by epoch (zero-padded in the path): the newest write of a
    # key in its task wins; the task is the path segment above the epoch directory.
    listed = ",\n    ".join(_quote(f) for f in files)
    task = r"regexp_extract(__file, '([^/]+)/[0-9]+-[0-9]+/[^/]+$', 1)"
    return (
        f"CREATE OR REPLACE VIEW {_ident(view)} AS\n"
        f"SELECT * EXCLUDE ({KEY}, {DELETED}, __file, __rn) FROM (\n"
        f"  SELECT *, row_number() OVER (PARTITION BY {task}, {KEY} ORDER BY __file DESC) AS __rn\n"
        f"  FROM read_parquet([\n    {listed}\n  ], filename = '__file', union_by_name = true)\n"
        f") WHERE __rn = 1 AND NOT {DELETED};"
    )


def _epochs_sql(epochs: dict[str, TaskEpoch]) -> str:
    rows = ",\n  ".join(
        f"({_quote(t)}, {e.manifest.epoch}, {e.manifest.attempt}, "
        f"to_timestamp({e.manifest.created_at!r}), {_quote(e.chosen_by)})"
        for t, e in sorted(epochs.items())
    )
    return (
        "CREATE OR REPLACE VIEW raystream_epochs AS SELECT * FROM (VALUES\n"
        f"  {rows}\n) AS e(task, epoch, attempt, committed_at, chosen_by);"
    )


def _offsets_sql(epochs: dict[str, TaskEpoch]) -> str:
    rows = [
        f"({_quote(t)}, {_quote(topic)}, {part}, {off})"
        for t, e in sorted(epochs.items())
        for topic, part, off in sorted(
            (*_parse_tp(name), off) for name, off in e.manifest.offsets.items()
        )
    ]
    if not rows:
        return (
            "CREATE OR REPLACE VIEW raystream_offsets AS SELECT NULL::VARCHAR AS task, "
            'NULL::VARCHAR AS topic, NULL::INTEGER AS "partition", NULL::BIGINT AS "offset" '
            "WHERE false;"
        )
    listed = ",\n  ".join(rows)
    return (
        "CREATE OR REPLACE VIEW raystream_offsets AS SELECT * FROM (VALUES\n"
        f'  {listed}\n) AS o(task, topic, "partition", "offset");'
    )


def kafka_or_none(brokers: str | None) -> KafkaConfig | None:
    """A :class:`KafkaConfig` for ``brokers`` if a broker answers there, else None (logged)."""
    if not brokers:
        return None
    from raystream._kafka.admin import Topics

    cfg = KafkaConfig(brokers=brokers, admin={"socket.timeout.ms": 3000})
    try:
        Topics(cfg).partitions(timeout=3.0)
    except KafkaError as exc:
        log.warning(
            "broker %s does not answer (%s): using the newest published epochs", brokers, exc
        )
        return None
    return cfg
