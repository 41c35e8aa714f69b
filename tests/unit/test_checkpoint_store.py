"""The epoch checkpoint store on a local directory (real files, no broker, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raystream.errors import CheckpointError
from raystream.state.checkpoint import CheckpointStore, rows_table


def rows(d: dict[str, int | None]):
    return rows_table(list(d), [v is None for v in d.values()], {"n": [v or 0 for v in d.values()]})


def content(store: CheckpointStore, task: str, epoch: int) -> dict[str, int]:
    t = store.load(task, epoch, "counts")
    return dict(zip(t.column("__key").to_pylist(), t.column("n").to_pylist(), strict=True))


def write_history(store: CheckpointStore) -> None:
    store.write_epoch("0_0", 0, {"in[0]": 10}, {"counts": rows({"a": 1, "b": 2})}, full=True)
    store.write_epoch("0_0", 1, {"in[0]": 20}, {"counts": rows({"a": 5})}, full=False, base=0)
    store.write_epoch("0_0", 2, {"in[0]": 30}, {"counts": rows({"b": None, "c": 7})}, full=False,
                      base=0)  # fmt: skip
    store.write_epoch("0_0", 3, {"in[0]": 40}, {"counts": rows({"a": 5, "c": 8, "d": 1})},
                      full=True)  # fmt: skip
    store.write_epoch("0_0", 4, {"in[0]": 50}, {"counts": rows({"d": 2})}, full=False, base=3)


def test_deltas_apply_on_their_full_base_with_tombstones(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}", "app")
    write_history(store)
    assert content(store, "0_0", 0) == {"a": 1, "b": 2}
    assert content(store, "0_0", 1) == {"a": 5, "b": 2}
    assert content(store, "0_0", 2) == {"a": 5, "c": 7}  # b deleted
    assert content(store, "0_0", 4) == {"a": 5, "c": 8, "d": 2}
    assert [m.epoch for m in store.manifests("0_0")] == [0, 1, 2, 3, 4]


def test_recovery_finds_the_epoch_whose_offsets_kafka_committed(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    write_history(store)
    # Epoch 5 was written but its transaction aborted: Kafka still says 50.
    store.write_epoch("0_0", 5, {"in[0]": 61}, {"counts": rows({"a": 99})}, full=False, base=3)
    found = store.committed("0_0", {"in[0]": 50})
    assert found is not None and found.epoch == 4
    assert store.committed("0_0", {"in[0]": 45}) is None


def test_an_epoch_without_its_manifest_is_invisible(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    write_history(store)
    # A writer that died after its Parquet files but before publishing the manifest.
    half = tmp_path / "app" / "0_0" / f"{5:012d}"
    half.mkdir()
    pq.write_table(rows({"a": 1000}), half / "counts.parquet")
    assert [m.epoch for m in store.manifests("0_0")] == [0, 1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="no published epoch 5"):
        store.load("0_0", 5, "counts")
    assert not list((tmp_path / "app" / "0_0").glob("*.tmp"))


def test_gc_keeps_what_the_latest_epochs_need(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    write_history(store)
    assert store.gc("0_0", keep=2) == [0, 1, 2]  # epochs 3 and 4 need only base 3
    assert content(store, "0_0", 4) == {"a": 5, "c": 8, "d": 2}
    with pytest.raises(CheckpointError, match="no published epoch 1"):
        store.load("0_0", 1, "counts")
    assert store.gc("0_0", keep=2) == []
    assert sorted(p.name for p in (tmp_path / "app" / "0_0").iterdir()) == [
        f"{3:012d}",
        f"{3:012d}.manifest.json",
        f"{4:012d}",
        f"{4:012d}.manifest.json",
    ]


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    with pytest.raises(CheckpointError, match="full base"):
        store.write_epoch("0_0", 1, {}, {"counts": rows({"a": 1})}, full=False)
    with pytest.raises(CheckpointError, match="__deleted"):
        import pyarrow as pa

        store.write_epoch("0_0", 0, {}, {"counts": pa.table({"__key": ["a"]})}, full=True)
    with pytest.raises(CheckpointError, match="cannot open"):
        CheckpointStore("nosuchscheme://x", "app")
    assert isinstance(store.fs, pafs.LocalFileSystem)
