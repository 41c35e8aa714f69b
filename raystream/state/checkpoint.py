"""Epoch checkpoints on ``pyarrow.fs`` (local paths or S3): the files recovery and views read.

Layout, per app and task::

    <root>/<app>/<task>/<epoch:012d>/<store>.parquet      changed rows of that store in the epoch
    <root>/<app>/<task>/<epoch:012d>.manifest.json        the epoch's commit record, written last

A store's rows carry a ``__key`` column (binary or string) and a ``__deleted`` flag (tombstones).
An epoch is either *full* (every key) or a *delta* (keys changed since the previous epoch) on top
of its ``base``, the latest full epoch before it. The manifest, written after every Parquet file
of the epoch, is the publish point: readers only ever see epochs whose manifest exists, so no
reader sees half an epoch (a rename on local disks; a single PUT on S3). The manifest records the
input offsets the epoch ends at; recovery loads the epoch whose offsets equal Kafka's committed
offsets, so the checkpoint of an aborted epoch is never used.
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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raystream.errors import CheckpointError

KEY = "__key"
DELETED = "__deleted"
_MANIFEST = ".manifest.json"


@dataclass(frozen=True)
class EpochManifest:
    """What one committed epoch of one task wrote."""

    task: str
    epoch: int
    #: Input positions the epoch ends at, ``"topic[partition]" -> offset``.
    offsets: dict[str, int]
    #: Store name -> rows written in this epoch.
    stores: dict[str, int]
    full: bool
    #: The full epoch this one builds on (itself when full).
    base: int
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        """The manifest file's content."""
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @staticmethod
    def from_json(data: bytes) -> EpochManifest:
        """Parse a manifest file."""
        d = json.loads(data)
        return EpochManifest(
            task=d["task"],
            epoch=int(d["epoch"]),
            offsets={k: int(v) for k, v in d["offsets"].items()},
            stores={k: int(v) for k, v in d["stores"].items()},
            full=bool(d["full"]),
            base=int(d["base"]),
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
        epoch: int,
        offsets: Mapping[str, int],
        stores: Mapping[str, pa.Table],
        *,
        full: bool,
        base: int | None = None,
    ) -> EpochManifest:
        """Write one epoch's store tables, then publish it with its manifest.

        A delta (``full=False``) names the full epoch it builds on in ``base``.
        """
        if full:
            base = epoch
        elif base is None:
            raise CheckpointError("a delta epoch needs the epoch of its full base")
        for name, table in stores.items():
            missing = {KEY, DELETED} - set(table.schema.names)
            if missing:
                raise CheckpointError(f"store {name!r} rows lack the columns {sorted(missing)}")
        epoch_dir = f"{self.root}/{task}/{epoch:012d}"
        self.fs.create_dir(epoch_dir, recursive=True)
        for name, table in stores.items():
            pq.write_table(table, f"{epoch_dir}/{name}.parquet", filesystem=self.fs)
        manifest = EpochManifest(
            task=task,
            epoch=epoch,
            offsets=dict(offsets),
            stores={n: t.num_rows for n, t in stores.items()},
            full=full,
            base=base,
        )
        final = f"{self.root}/{task}/{epoch:012d}{_MANIFEST}"
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
        """Every published epoch of ``task``, oldest first."""
        sel = pafs.FileSelector(f"{self.root}/{task}", allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.File and info.base_name.endswith(_MANIFEST):
                with self.fs.open_input_stream(info.path) as fh:
                    out.append(EpochManifest.from_json(fh.read()))
        return sorted(out, key=lambda m: m.epoch)

    def committed(self, task: str, offsets: Mapping[str, int]) -> EpochManifest | None:
        """The latest epoch whose offsets equal ``offsets`` (Kafka's committed offsets)."""
        want = dict(offsets)
        for m in reversed(self.manifests(task)):
            if m.offsets == want:
                return m
        return None

    def load(self, task: str, epoch: int, store: str) -> pa.Table:
        """The rows of ``store`` as of ``epoch``: its full base plus every delta up to it, last
        write per key winning, tombstones removed."""
        chain = self._chain(task, epoch)
        tables = []
        for seq, m in enumerate(chain):
            if store not in m.stores:
                continue
            path = f"{self.root}/{task}/{m.epoch:012d}/{store}.parquet"
            t = pq.read_table(path, filesystem=self.fs)
            tables.append(t.append_column("__seq", pa.array([seq] * t.num_rows, pa.int32())))
        if not tables:
            raise CheckpointError(f"task {task} epoch {epoch} has no store {store!r}")
        rows = pa.concat_tables(tables, promote_options="default")
        con = duckdb.connect()
        try:
            con.register("rows", rows)
            return con.sql(
                f"SELECT * EXCLUDE (__seq, __rn) FROM ("
                f" SELECT *, row_number() OVER (PARTITION BY {KEY} ORDER BY __seq DESC) AS __rn"
                f" FROM rows) WHERE __rn = 1 AND NOT {DELETED} ORDER BY {KEY}"
            ).to_arrow_table()
        finally:
            con.close()

    def _chain(self, task: str, epoch: int) -> list[EpochManifest]:
        by_epoch = {m.epoch: m for m in self.manifests(task)}
        if epoch not in by_epoch:
            raise CheckpointError(f"task {task} has no published epoch {epoch}")
        top = by_epoch[epoch]
        chain = [m for e, m in sorted(by_epoch.items()) if top.base <= e <= epoch]
        if not chain or not chain[0].full:
            raise CheckpointError(f"task {task} epoch {epoch}: its full base {top.base} is gone")
        return chain

    # -- housekeeping ------------------------------------------------------------------------
    def gc(self, task: str, keep: int) -> list[int]:
        """Delete epochs that none of the latest ``keep`` epochs needs; returns the deleted."""
        ms = self.manifests(task)
        if len(ms) <= keep:
            return []
        oldest_needed = min(m.base for m in ms[-keep:])
        deleted = []
        for m in ms:
            if m.epoch >= oldest_needed:
                break
            # The manifest goes first: from then on no reader considers the epoch.
            self.fs.delete_file(f"{self.root}/{task}/{m.epoch:012d}{_MANIFEST}")
            self.fs.delete_dir(f"{self.root}/{task}/{m.epoch:012d}")
            deleted.append(m.epoch)
        return deleted


def rows_table(keys: list[Any], deleted: list[bool], columns: Mapping[str, list[Any]]) -> pa.Table:
    """A store-rows table from Python lists (``__key``, ``__deleted`` and value columns)."""
    return pa.table({KEY: keys, DELETED: pa.array(deleted, pa.bool_()), **columns})
