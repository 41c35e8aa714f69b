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


def content(store: CheckpointStore, task: str, ref: tuple[int, int]) -> dict[str, int]:
    t = store.load(task, ref, "counts")
    return dict(zip(t.column("__key").to_pylist(), t.column("n").to_pylist(), strict=True))


def write_history(store: CheckpointStore) -> None:
    """Attempt 1 writes epochs 1-5 (a full at 4); epoch 6 of attempt 1 is aborted, attempt 2
    redoes epoch 6 on top of epoch 5."""
    w = store.write_epoch
    e1 = w("0_0", (1, 1), {"in[0]": 10}, {"counts": rows({"a": 1, "b": 2})}, parent=None, full=True)
    e2 = w("0_0", (2, 1), {"in[0]": 20}, {"counts": rows({"a": 5})}, parent=e1, full=False)
    e3 = w("0_0", (3, 1), {"in[0]": 30}, {"counts": rows({"b": None, "c": 7})}, parent=e2,
           full=False)  # fmt: skip
    e4 = w("0_0", (4, 1), {"in[0]": 40}, {"counts": rows({"a": 5, "c": 8, "d": 1})}, parent=e3,
           full=True)  # fmt: skip
    e5 = w("0_0", (5, 1), {"in[0]": 50}, {"counts": rows({"d": 2})}, parent=e4, full=False)
    w("0_0", (6, 1), {"in[0]": 61}, {"counts": rows({"a": 99})}, parent=e5, full=False)
    w("0_0", (6, 2), {"in[0]": 58}, {"counts": rows({"e": 3})}, parent=e5, full=False)


def test_deltas_apply_on_their_full_base_with_tombstones(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}", "app")
    write_history(store)
    assert content(store, "0_0", (1, 1)) == {"a": 1, "b": 2}
    assert content(store, "0_0", (2, 1)) == {"a": 5, "b": 2}
    assert content(store, "0_0", (3, 1)) == {"a": 5, "c": 7}  # b deleted
    assert content(store, "0_0", (5, 1)) == {"a": 5, "c": 8, "d": 2}
    assert [m.ref for m in store.manifests("0_0")] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (6, 2)
    ]  # fmt: skip


def test_a_chain_follows_its_parents_never_an_aborted_sibling(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    write_history(store)
    # Epoch 6 of attempt 1 aborted (Kafka committed (6, 2)): its change to a is not seen.
    assert content(store, "0_0", (6, 2)) == {"a": 5, "c": 8, "d": 2, "e": 3}
    assert [m.ref for m in store.lineage("0_0", (6, 2))] == [
        (6, 2), (5, 1), (4, 1), (3, 1), (2, 1), (1, 1)
    ]  # fmt: skip
    m = store.manifest("0_0", (6, 2))
    assert m.offsets == {"in[0]": 58} and m.base == (4, 1) and m.parent == (5, 1)


def test_an_epoch_without_its_manifest_is_invisible(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    write_history(store)
    # A writer that died after its Parquet files but before publishing the manifest.
    half = tmp_path / "app" / "0_0" / f"{7:012d}-2"
    half.mkdir()
    pq.write_table(rows({"a": 1000}), half / "counts.parquet")
    assert (7, 2) not in [m.ref for m in store.manifests("0_0")]
    with pytest.raises(CheckpointError, match="no published epoch 7"):
        store.load("0_0", (7, 2), "counts")
    assert not list((tmp_path / "app" / "0_0").glob("*.tmp"))


def test_gc_keeps_what_the_latest_epochs_need_and_drops_aborted_ones(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    write_history(store)
    half = tmp_path / "app" / "0_0" / f"{3:012d}-9"  # never published, older than the head
    half.mkdir()
    deleted = store.gc("0_0", (6, 2), keep=2)
    assert deleted == [(1, 1), (2, 1), (3, 1), (6, 1)]  # (6, 2) and (5, 1) need only base 4
    assert content(store, "0_0", (6, 2)) == {"a": 5, "c": 8, "d": 2, "e": 3}
    with pytest.raises(CheckpointError, match="no published epoch 2"):
        store.load("0_0", (2, 1), "counts")
    assert store.gc("0_0", (6, 2), keep=2) == []
    names = [f"{4:012d}-1", f"{5:012d}-1", f"{6:012d}-2"]
    assert sorted(p.name for p in (tmp_path / "app" / "0_0").iterdir()) == sorted(
        [*names, *(n + ".manifest.json" for n in names)]
    )


@pytest.mark.parametrize("seed", range(12))
def test_gc_keeps_exactly_the_chains_of_the_kept_epochs(tmp_path: Path, seed: int) -> None:
    """Random histories (fulls every few epochs, aborted attempts, earlier collections): what
    survives a gc is the chains of the head's last ``keep`` epochs, each still loading as
    before."""
    import random

    rnd = random.Random(seed)
    store = CheckpointStore(str(tmp_path), "app")
    parent, attempt, head = None, 1, (0, 1)
    for epoch in range(1, rnd.randint(8, 40)):
        full = parent is None or rnd.random() < 0.2
        ref = (epoch, attempt)
        m = store.write_epoch("0_0", ref, {"in[0]": epoch}, {"counts": rows({f"k{epoch}": epoch})},
                              parent=parent, full=full)  # fmt: skip
        if rnd.random() < 0.15:  # aborted: the next attempt redoes the epoch on the same parent
            attempt += 1
            ref = (epoch, attempt)
            m = store.write_epoch("0_0", ref, {"in[0]": epoch}, {"counts": rows({f"r{epoch}": 1})},
                                  parent=parent, full=full)  # fmt: skip
        parent, head = m, ref
        if rnd.random() < 0.1:
            store.gc("0_0", head, rnd.randint(1, 6))
    keep = rnd.randint(1, 8)
    history = store.lineage("0_0", head)[:keep]
    want = {x.ref for m in history for x in store.chain("0_0", m.ref)}
    loads = {m.ref: content(store, "0_0", m.ref) for m in history}
    before = {m.ref for m in store.manifests("0_0")}
    deleted = store.gc("0_0", head, keep)
    assert {m.ref for m in store.manifests("0_0")} == want
    assert set(deleted) == before - want and deleted == sorted(deleted)
    assert {ref: content(store, "0_0", ref) for ref in loads} == loads
    assert sorted(p.name for p in (tmp_path / "app" / "0_0").iterdir() if p.is_dir()) == sorted(
        f"{r[0]:012d}-{r[1]}" for r in want
    )


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), "app")
    with pytest.raises(CheckpointError, match="needs its parent"):
        store.write_epoch("0_0", (1, 0), {}, {"counts": rows({"a": 1})}, parent=None, full=False)
    with pytest.raises(CheckpointError, match="__deleted"):
        import pyarrow as pa

        table = pa.table({"__key": ["a"]})
        store.write_epoch("0_0", (1, 0), {}, {"counts": table}, parent=None, full=True)
    with pytest.raises(CheckpointError, match="cannot open"):
        CheckpointStore("nosuchscheme://x", "app")
    assert isinstance(store.fs, pafs.LocalFileSystem)
