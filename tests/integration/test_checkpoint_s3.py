"""The checkpoint store on S3: moto's server on loopback stands in for an S3 service."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest

from raystream.state.checkpoint import CheckpointStore, rows_table


@pytest.fixture(scope="module")
def s3() -> Iterator[pafs.S3FileSystem]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        fs = pafs.S3FileSystem(
            access_key="test",
            secret_key="test",
            region="us-east-1",
            endpoint_override=f"http://{host}:{port}",
            allow_bucket_creation=True,
        )
        fs.create_dir("checkpoints")
        yield fs
    finally:
        server.stop()


def t(d: dict[str, int | None]):
    return rows_table(list(d), [v is None for v in d.values()], {"n": [v or 0 for v in d.values()]})


def test_epochs_round_trip_on_s3_with_deltas_and_gc(s3: pafs.S3FileSystem) -> None:
    store = CheckpointStore("s3://checkpoints/prod", "fraud", filesystem=s3)
    store.write_epoch("1_3", 0, {"p[3]": 5}, {"w": t({"a": 1, "b": 1})}, full=True)
    store.write_epoch("1_3", 1, {"p[3]": 9}, {"w": t({"a": 2, "b": None})}, full=False, base=0)
    store.write_epoch("1_3", 2, {"p[3]": 12}, {"w": t({"a": 2, "c": 4})}, full=True)
    m = store.committed("1_3", {"p[3]": 9})
    assert m is not None and m.epoch == 1 and not m.full and m.base == 0
    got = store.load("1_3", 1, "w")
    assert dict(zip(got["__key"].to_pylist(), got["n"].to_pylist(), strict=True)) == {"a": 2}
    assert store.gc("1_3", keep=1) == [0, 1]
    assert [m.epoch for m in store.manifests("1_3")] == [2]
    names = {
        i.base_name for i in s3.get_file_info(pafs.FileSelector("checkpoints", recursive=True))
    }
    assert f"{2:012d}.manifest.json" in names and f"{0:012d}.manifest.json" not in names
