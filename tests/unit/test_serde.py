"""Serdes: whole micro-batches in and out, bad values reported, never raised."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pytest

from raystream.errors import ConfigError, SerdeError
from raystream.serde import JSON, Bytes, String, encode_key, encode_keys, schema_of


@dataclass
class Payment:
    id: int
    amount: float
    customer: str | None


def test_json_fast_path_decodes_a_clean_batch() -> None:
    vals = [json.dumps({"id": i, "amount": i / 2, "customer": f"c{i}"}).encode() for i in range(50)]
    d = JSON(Payment).decode(vals)
    assert d.good == list(range(50)) and d.bad == []
    assert d.data.schema == schema_of(Payment)
    assert d.data.to_pylist()[3] == {"id": 3, "amount": 1.5, "customer": "c3"}


def test_json_reports_each_bad_value_and_keeps_the_rest() -> None:
    vals = [
        b'{"id": 1, "amount": 2.5, "customer": "a"}',
        b"{not json",
        b'{"id": "x", "amount": 1}',
        b"[1, 2]",
        None,
        b"",
        b'{"id": 3, "amount": 1, "extra": true}',
    ]
    d = JSON(Payment).decode(vals)
    assert d.good == [0, 6]
    assert d.data.to_pylist() == [
        {"id": 1, "amount": 2.5, "customer": "a"},
        {"id": 3, "amount": 1.0, "customer": None},
    ]
    assert [i for i, _ in d.bad] == [1, 2, 3, 4, 5]
    assert all(isinstance(e, SerdeError) for _, e in d.bad)
    assert "schema" in str(d.bad[1][1]) and "not an object" in str(d.bad[2][1])


def test_json_without_schema_infers_and_tolerates_missing_fields() -> None:
    d = JSON().decode([b'{"a": 1}', b'{"a": 2, "b": "x"}'])
    assert d.data.to_pylist() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_json_values_with_newlines_take_the_slow_path() -> None:
    d = JSON().decode([b'{"a":\n 1}', b'{"a": 2}'])
    assert d.data.column("a").to_pylist() == [1, 2]


def test_json_round_trip() -> None:
    rb = pa.RecordBatch.from_pylist([{"a": 1, "b": "x"}, {"a": None, "b": "y"}])
    enc = JSON().encode(rb)
    assert [json.loads(v) for v in enc] == rb.to_pylist()
    assert JSON().decode(enc).data.to_pylist() == rb.to_pylist()


def test_string_and_bytes() -> None:
    d = String().decode([b"hello", b"\xff\xfe", None])
    assert d.data.to_pylist() == [{"value": "hello"}]
    assert [i for i, _ in d.bad] == [1, 2]
    assert String().encode(d.data) == [b"hello"]
    b = Bytes().decode([b"\x00\x01", None])
    assert b.good == [0] and Bytes().encode(b.data) == [b"\x00\x01"]


def test_single_column_encoders_refuse_many_columns() -> None:
    rb = pa.RecordBatch.from_pylist([{"a": "1", "b": "2"}])
    with pytest.raises(SerdeError, match="select"):
        String().encode(rb)


def test_schema_of_rejects_unknown_types() -> None:
    class Weird:
        pass

    with pytest.raises(ConfigError, match="field 'w'"):
        schema_of({"w": Weird})
    with pytest.raises(ConfigError, match="not supported"):
        schema_of(42)


def test_key_encoding() -> None:
    assert encode_key("c1") == b"c1" and encode_key(7) == b"7" and encode_key(None) is None
    assert encode_keys(pa.array(["a", None])) == [b"a", None]
    assert encode_keys(pa.array([b"x"], pa.binary())) == [b"x"]
    assert encode_keys(pa.array([1, 2])) == [b"1", b"2"]


def test_small_and_large_batches_and_batches_with_a_bad_value_agree_on_fields_and_types() -> None:
    rows = [{"id": i, "day": f"2026-01-{i % 28 + 1:02d}"} for i in range(200)]
    rows[5]["note"] = "only some values have it"
    values = [json.dumps(r).encode() for r in rows]
    serde = JSON()
    large = serde.decode(values).data
    small = JSON().decode(values[:10]).data
    bad = JSON().decode([b"{broken", *values]).data
    for batch in (large, small, bad):
        assert batch.schema.field("day").type == pa.string()  # not a timestamp: it is a string
        assert batch.schema.field("id").type == pa.int64()
        assert "note" in batch.schema.names  # the first value lacks it; it is still there
    assert large.column("day").to_pylist() == [r["day"] for r in rows]
    assert small.column("note").to_pylist()[5] == "only some values have it"
    assert serde.decode(values).data.schema.field("day").type == pa.string()  # and it stays so


def test_timestamp_strings_inside_structs_and_lists_stay_strings() -> None:
    values = [
        json.dumps({"e": {"at": "2026-01-01T00:00:00", "n": i}, "l": ["2026-01-02"]}).encode()
        for i in range(100)
    ]
    batch = JSON().decode(values).data
    assert batch.schema.field("e").type == pa.struct([("at", pa.string()), ("n", pa.int64())])
    assert batch.schema.field("l").type == pa.list_(pa.string())
    assert batch.column("e").to_pylist()[3] == {"at": "2026-01-01T00:00:00", "n": 3}


def test_event_times_from_iso_strings_with_and_without_zones() -> None:
    from raystream._runtime.task import _event_time

    naive = pa.array(["2026-01-01T00:00:00", "2026-01-01"])
    zoned = pa.array(["2026-01-01 10:00:00Z", "2026-01-01T10:00:00+02:00"])
    mixed = pa.array(["2026-01-01T00:00:00", "2026-01-01T00:00:00.123Z", "not a time", None])
    assert _event_time(naive, 2).to_pylist() == [1767225600000, 1767225600000]
    assert _event_time(zoned, 2).to_pylist() == [1767261600000, 1767254400000]
    assert _event_time(mixed, 4).to_pylist() == [1767225600000, 1767225600123, None, None]
