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
    e0 = store.write_epoch("1_3", (0, 1), {"p[3]": 5}, {"w": t({"a": 1, "b": 1})}, parent=None,
                           full=True)  # fmt: skip
    e1 = store.write_epoch("1_3", (1, 1), {"p[3]": 9}, {"w": t({"a": 2, "b": None})}, parent=e0,
                           full=False)  # fmt: skip
    store.write_epoch("1_3", (2, 1), {"p[3]": 12}, {"w": t({"a": 2, "c": 4})}, parent=e1,
                      full=True)  # fmt: skip
    m = store.manifest("1_3", (1, 1))
    assert m.offsets == {"p[3]": 9} and not m.full and m.base == (0, 1)
    got = store.load("1_3", (1, 1), "w")
    assert dict(zip(got["__key"].to_pylist(), got["n"].to_pylist(), strict=True)) == {"a": 2}
    assert store.gc("1_3", (2, 1), keep=1) == [(0, 1), (1, 1)]
    assert [m.ref for m in store.manifests("1_3")] == [(2, 1)]
    names = {
        i.base_name for i in s3.get_file_info(pafs.FileSelector("checkpoints", recursive=True))
    }
    assert f"{2:012d}-1.manifest.json" in names and f"{0:012d}-1.manifest.json" not in names
