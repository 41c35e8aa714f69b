"""Epoch checkpoints on ``pyarrow.fs`` (local paths or S3): the files recovery and views read.

Layout, per app and task (an epoch is named by its number and the attempt that wrote it, so a
fenced zombie and its successor never write the same files)::

    <root>/<app>/<task>/<epoch:012d>-<attempt>/<store>.parquet    changed rows of that store
    <root>/<app>/<task>/<epoch:012d>-<attempt>.manifest.json      the epoch's record, written last

A store's rows carry a ``__key`` column and a ``__deleted`` flag (tombstones). An epoch is either
*full* (every key) or a *delta* (keys changed since its ``parent``, the epoch before it). Each
manifest names its parent and its ``base`` (the full epoch its delta chain starts from), so a
chain follows exactly the epochs that led to it, never an aborted attempt's epoch beside it.

The manifest, written after every Parquet file of the epoch, is the publish point: readers only
see epochs whose manifest exists, so no reader sees half an epoch (a rename on local disks; a
single PUT on S3). Which epoch is *committed* is not decided here: the worker commits the epoch's
``(epoch, attempt)`` to Kafka in the same transaction as its outputs and input offsets, and
recovery loads exactly that one (the manifest's offsets are checked against Kafka's).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raystream.errors import CheckpointError

KEY = "__key"
DELETED = "__deleted"
_MANIFEST = ".manifest.json"

#: An epoch as ``(epoch number, attempt)``.
EpochRef = tuple[int, int]


def epoch_name(ref: EpochRef) -> str:
    """The file-name stem of an epoch."""
    return f"{ref[0]:012d}-{ref[1]}"


@dataclass(frozen=True)
class EpochManifest:
    """What one published epoch of one task wrote."""

    task: str
    epoch: int
    attempt: int
    #: Input positions the epoch ends at, ``"topic[partition]" -> offset``.
    offsets: dict[str, int]
    #: Store name -> rows written in this epoch.
    stores: dict[str, int]
    full: bool
    #: The full epoch its delta chain starts from (itself when full).
    base: EpochRef
    #: The epoch before it in its history (None: the first).
    parent: EpochRef | None
    created_at: float = field(default_factory=time.time)

    @property
    def ref(self) -> EpochRef:
        """``(epoch, attempt)``."""
        return (self.epoch, self.attempt)

    def to_json(self) -> bytes:
        """The manifest file's content."""
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @staticmethod
    def from_json(data: bytes) -> EpochManifest:
        """Parse a manifest file."""
        d = json.loads(data)
        parent = d.get("parent")
        return EpochManifest(
            task=d["task"],
            epoch=int(d["epoch"]),
            attempt=int(d["attempt"]),
            offsets={k: int(v) for k, v in d["offsets"].items()},
            stores={k: int(v) for k, v in d["stores"].items()},
            full=bool(d["full"]),
            base=(int(d["base"][0]), int(d["base"][1])),
            parent=None if parent is None else (int(parent[0]), int(parent[1])),
            created_at=float(d["created_at"]),
        )


class CheckpointStore:
    """Reads and writes the epochs of one app's tasks under ``uri``.

    ``uri``: ``file:///abs/path``, a plain absolute path, or ``s3://bucket/prefix``; pass
    ``filesystem`` to give an S3 endpoint or credentials (e.g. ``pyarrow.fs.S3FileSystem(...)``).
    """

    def __init__(self, uri: str, app: str, filesystem: pafs.FileSystem | None = None) -> None:
        try:
            if filesystem is not None:
                fs, root = filesystem, uri.split("://", 1)[-1]
            else:
                fs, root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CheckpointError(
                f"checkpoints: cannot open {uri!r}: {exc}; use file:///path or s3://bucket/prefix"
            ) from exc
        self.fs = fs
        self.root = f"{root.rstrip('/')}/{app}"
        self._local = isinstance(fs, pafs.LocalFileSystem)

    # -- writing -----------------------------------------------------------------------------
    def write_epoch(
        self,
        task: str,
        ref: EpochRef,
        offsets: Mapping[str, int],
        stores: Mapping[str, pa.Table],
        *,
        parent: EpochManifest | None,
        full: bool,
    ) -> EpochManifest:
        """Write one epoch's store tables, then publish it with its manifest.

        A delta (``full=False``) holds the changes since ``parent``, which must be given.
        """
        if not full and parent is None:
            raise CheckpointError("a delta epoch needs its parent epoch")
        for name, table in stores.items():
            missing = {KEY, DELETED} - set(table.schema.names)
            if missing:
                raise CheckpointError(f"store {name!r} rows lack the columns {sorted(missing)}")
        epoch_dir = f"{self.root}/{task}/{epoch_name(ref)}"
        self.fs.create_dir(epoch_dir, recursive=True)
        for name, table in stores.items():
            pq.write_table(table, f"{epoch_dir}/{name}.parquet", filesystem=self.fs)
        manifest = EpochManifest(
            task=task,
            epoch=ref[0],
            attempt=ref[1],
            offsets=dict(offsets),
            stores={n: t.num_rows for n, t in stores.items()},
            full=full,
            base=ref if full or parent is None else parent.base,
            parent=None if parent is None else parent.ref,
        )
        final = f"{self.root}/{task}/{epoch_name(ref)}{_MANIFEST}"
        if self._local:
            tmp = f"{final}.{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(tmp) as out:
                out.write(manifest.to_json())
            self.fs.move(tmp, final)  # atomic rename: the publish point
        else:
            with self.fs.open_output_stream(final) as out:  # one PUT: the publish point
                out.write(manifest.to_json())
        return manifest

    # -- reading -----------------------------------------------------------------------------
    def manifests(self, task: str) -> list[EpochManifest]:
        """Every published epoch of ``task`` (committed or not), oldest first."""
        sel = pafs.FileSelector(f"{self.root}/{task}", allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File and info.base_name.endswith(_MANIFEST):
                with self.fs.open_input_stream(info.path) as fh:
                    out.append(EpochManifest.from_json(fh.read()))
        return sorted(out, key=lambda m: m.ref)

    def manifest(self, task: str, ref: EpochRef) -> EpochManifest:
        """The manifest of one epoch; CheckpointError when it was never published (or gone)."""
        path = f"{self.root}/{task}/{epoch_name(ref)}{_MANIFEST}"
        try:
            with self.fs.open_input_stream(path) as fh:
                return EpochManifest.from_json(fh.read())
        except (FileNotFoundError, OSError) as exc:
            raise CheckpointError(
                f"task {task} has no published epoch {ref[0]} (attempt {ref[1]}) under "
                f"{self.root}: was the checkpoint directory changed or cleaned?"
            ) from exc

    def lineage(self, task: str, ref: EpochRef) -> list[EpochManifest]:
        """The epoch and its ancestors still stored, newest first (its committed history)."""
        out: list[EpochManifest] = []
        cur: EpochRef | None = ref
        while cur is not None:
            try:
                m = self.manifest(task, cur)
            except CheckpointError:
                if not out:
                    raise
                break
            out.append(m)
            cur = m.parent
        return out

    def read_epoch(self, task: str, ref: EpochRef, store: str) -> pa.Table:
        """The rows ``store`` holds in epoch ``ref``'s own file (a delta's changes, not the
        state as of that epoch: see :meth:`load`)."""
        path = f"{self.root}/{task}/{epoch_name(ref)}/{store}.parquet"
        try:
            return pq.read_table(path, filesystem=self.fs)
        except (FileNotFoundError, OSError) as exc:
            raise CheckpointError(
                f"task {task} epoch {ref[0]} (attempt {ref[1]}) has no readable {store!r}: {exc}"
            ) from exc

    def load(self, task: str, ref: EpochRef, store: str) -> pa.Table:
        """The rows of ``store`` as of epoch ``ref``: its full base plus every delta up to it,
        last write per key winning, tombstones removed."""
        chain = self._chain(task, ref)
        tables = []
        for seq, m in enumerate(chain):
            if store not in m.stores:
                continue
            path = f"{self.root}/{task}/{epoch_name(m.ref)}/{store}.parquet"
            t = pq.read_table(path, filesystem=self.fs)
            tables.append(t.append_column("__seq", pa.array([seq] * t.num_rows, pa.int32())))
        if not tables:
            raise CheckpointError(f"task {task} epoch {ref[0]} has no store {store!r}")
        rows = pa.concat_tables(tables, promote_options="default")
        if len(tables) == 1:
            keep = pc.invert(rows.column(DELETED))
            return rows.filter(keep).drop_columns(["__seq"])
        con = duckdb.connect()
        try:
            con.register("rows", rows)
            return con.sql(
                f"SELECT * EXCLUDE (__seq, __rn) FROM ("
                f" SELECT *, row_number() OVER (PARTITION BY {KEY} ORDER BY __seq DESC) AS __rn"
                f" FROM rows) WHERE __rn = 1 AND NOT {DELETED}"
            ).to_arrow_table()
        finally:
            con.close()

    def stores_of(self, task: str, ref: EpochRef) -> list[str]:
        """The store names that epoch ``ref``'s chain holds."""
        return sorted({name for m in self._chain(task, ref) for name in m.stores})

    def chain(self, task: str, ref: EpochRef) -> list[EpochManifest]:
        """The epochs whose files make up ``ref``'s state: its full base, then every delta up to
        it (what :meth:`load` reads, for readers outside raystream such as plain DuckDB)."""
        return self._chain(task, ref)

    def _chain(self, task: str, ref: EpochRef) -> list[EpochManifest]:
        """The epochs to read for ``ref``: its full base, then every delta up to it."""
        chain: list[EpochManifest] = []
        m = self.manifest(task, ref)
        while True:
            chain.append(m)
            if m.full:
                break
            if m.parent is None:
                raise CheckpointError(f"task {task} epoch {m.epoch}: a delta without a parent")
            try:
                m = self.manifest(task, m.parent)
            except CheckpointError as exc:
                raise CheckpointError(
                    f"task {task} epoch {ref[0]}: its full base {m.base[0]} is gone ({exc})"
                ) from exc
        chain.reverse()
        return chain

    # -- housekeeping ------------------------------------------------------------------------
    def gc(self, task: str, head: EpochRef, keep: int) -> list[EpochRef]:
        """Keep the last ``keep`` epochs of ``head``'s history (and the bases they need);
        delete every other epoch older than ``head`` (aborted attempts included). Returns the
        deleted epochs.

        Reads only the manifests it keeps: the kept epochs' chains are one walk back from
        ``head`` to the full base of the oldest kept epoch (each chain is a suffix of it), and
        the other epochs are known by their file names."""
        needed = {m.ref for m in self._kept(task, head, max(keep, 1))}
        published: set[EpochRef] = set()
        dirs: dict[EpochRef, str] = {}
        sel = pafs.FileSelector(f"{self.root}/{task}", allow_not_found=True)
        for info in self.fs.get_file_info(sel):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(_MANIFEST):
                ref = _parse_epoch_name(name[: -len(_MANIFEST)])
                if ref is not None:
                    published.add(ref)
            elif info.type == pafs.FileType.Directory:
                ref = _parse_epoch_name(name)
                if ref is not None:
                    dirs[ref] = info.path
        deleted: list[EpochRef] = []
        for ref in sorted(published):
            if ref in needed or ref >= head:
                continue
            # The manifest goes first: from then on no reader considers the epoch.
            self.fs.delete_file(f"{self.root}/{task}/{epoch_name(ref)}{_MANIFEST}")
            if ref in dirs:
                self.fs.delete_dir(dirs[ref])
            deleted.append(ref)
        for ref, path in dirs.items():  # epochs whose manifest never came
            if ref < head and ref not in needed and ref not in published:
                self.fs.delete_dir(path)
        return deleted

    def _kept(self, task: str, head: EpochRef, keep: int) -> list[EpochManifest]:
        """``head``'s last ``keep`` stored epochs and every epoch their chains read, newest
        first."""
        out: list[EpochManifest] = []
        m = self.manifest(task, head)
        while True:
            out.append(m)
            if m.full and len(out) >= keep:
                return out
            if m.parent is None:
                if m.full:
                    return out
                raise CheckpointError(f"task {task} epoch {m.epoch}: a delta without a parent")
            try:
                m = self.manifest(task, m.parent)
            except CheckpointError as exc:
                if m.full:  # older history was collected already
                    return out
                raise CheckpointError(
                    f"task {task} epoch {head[0]}: its full base {m.base[0]} is gone ({exc})"
                ) from exc


def _parse_epoch_name(stem: str) -> EpochRef | None:
    """The epoch a file or directory name stands for (None for other names)."""
    try:
        epoch, attempt = (int(x) for x in stem.split("-", 1))
    except ValueError:
        return None
    return (epoch, attempt)


def rows_table(keys: list[Any], deleted: list[bool], columns: Mapping[str, list[Any]]) -> pa.Table:
    """A store-rows table from Python lists (``__key``, ``__deleted`` and value columns)."""
    return pa.table({KEY: keys, DELETED: pa.array(deleted, pa.bool_()), **columns})
