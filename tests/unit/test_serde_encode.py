"""JSON.encode's columnar path writes the very bytes the row-by-row json.JSONEncoder writes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream import serde
from raystream.serde import JSON, _encode_json_columns, encode_keys


def _rowwise(data: pa.RecordBatch) -> list[bytes]:
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    return [dumps(row).encode() for row in data.to_pylist()]


_COLUMNS: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "i64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "u8": (pa.uint8(), st.integers(0, 255)),
    "f64": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "f32": (pa.float32(), st.floats(width=32, allow_nan=False, allow_infinity=False)),
    "str": (pa.string(), st.text()),
    "ascii": (pa.string(), st.text(st.characters(min_codepoint=32, max_codepoint=126))),
    "bool": (pa.bool_(), st.booleans()),
}


@st.composite
def batches(draw: st.DrawFn) -> pa.RecordBatch:
    n = draw(st.integers(0, 12))
    names = draw(st.lists(st.sampled_from(sorted(_COLUMNS)), min_size=0, max_size=5))
    cols: dict[str, pa.Array] = {}
    for j, kind in enumerate(names):
        typ, values = _COLUMNS[kind]
        vals = draw(st.lists(st.none() | values, min_size=n, max_size=n))
        name = draw(st.sampled_from([f"{kind}{j}", f'q"{j}', f"é{j}", f"k\n{j}"]))
        cols[name] = pa.array(vals, typ)
    if not cols:
        return pa.RecordBatch.from_pydict({})
    return pa.RecordBatch.from_pydict(cols)


@settings(max_examples=300, deadline=None)
@given(batches())
def test_columnar_encoding_is_byte_identical_to_the_row_path(data: pa.RecordBatch) -> None:
    # JSON.encode takes the row path under SMALL_BATCH rows: test the columnar path directly.
    columnar = _encode_json_columns(data)
    assert columnar is None or columnar == _rowwise(data)
    assert JSON().encode(data) == _rowwise(data)


def test_batches_from_small_batch_rows_take_the_columnar_path(monkeypatch: Any) -> None:
    calls: list[int] = []

    def spy(data: pa.RecordBatch) -> list[bytes] | None:
        calls.append(data.num_rows)
        return _encode_json_columns(data)

    monkeypatch.setattr(serde, "_encode_json_columns", spy)
    for n in (JSON.SMALL_BATCH - 1, JSON.SMALL_BATCH):
        data = pa.RecordBatch.from_pydict({"id": [f"c{i}" for i in range(n)], "x": [0.5] * n})
        assert JSON().encode(data) == _rowwise(data)
    assert calls == [JSON.SMALL_BATCH]


def test_the_columnar_path_takes_the_common_types_and_declines_the_rest() -> None:
    plain = pa.RecordBatch.from_pydict(
        {"id": ["c1", None], "n": [1, None], "total": [0.1, 1e20], "ok": [True, None]}
    )
    assert _encode_json_columns(plain) == [
        b'{"id":"c1","n":1,"total":0.1,"ok":true}',
        b'{"id":null,"n":null,"total":1e+20,"ok":null}',
    ]
    nan = pa.RecordBatch.from_pydict({"x": [math.nan]})
    assert _encode_json_columns(nan) is None and JSON().encode(nan) == [b'{"x":NaN}']
    when = pa.RecordBatch.from_pydict({"t": pa.array([datetime(2026, 1, 1)], pa.timestamp("ms"))})
    assert _encode_json_columns(when) is None
    assert JSON().encode(when) == [b'{"t":"2026-01-01T00:00:00"}']


def test_string_keys_encode_as_utf8() -> None:
    assert encode_keys(pa.array(["a", None, "é"])) == [b"a", None, "é".encode()]


_PLAIN = st.one_of(
    st.floats(1e-4, 1e10, exclude_max=True),
    st.floats(-1e10, -1e-4, exclude_min=True),
    st.integers(-(10**9), 10**9).map(float),  # integral: "3.0", not Arrow's "3"
    st.sampled_from([0.0, -0.0, 1e-4, 9999999999.999998]),
    st.decimals(0, 10**6, places=2, allow_nan=False).map(float),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(_PLAIN, st.none()), min_size=1, max_size=64),
    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
)
def test_long_float_columns_written_by_arrow_match_repr(
    drawn: list[float | None], odd_one: float | None
) -> None:
    values = (drawn * (serde._ARROW_FLOATS // len(drawn) + 1))[: serde._ARROW_FLOATS + 3]
    if odd_one is not None:
        values = [*values, odd_one]  # any finite float: outside the range, the repr path
    data = pa.RecordBatch.from_pydict({"x": pa.array(values, pa.float64())})
    assert _encode_json_columns(data) == _rowwise(data)


def test_arrow_writes_long_float_columns_only_in_the_plain_decimal_range() -> None:
    n = serde._ARROW_FLOATS
    assert serde._plain_decimal_range(np.array([1.5, 3.0, 0.0, -0.0, 1e-4] * n))
    for outside in (1e10, 9.9e-5, -2e15, 5e-324):
        assert not serde._plain_decimal_range(np.array([1.5] * n + [outside]))
        col = pa.array([1.5, None] * n + [outside], pa.float64())
        data = pa.RecordBatch.from_pydict({"x": col})
        assert _encode_json_columns(data) == _rowwise(data)
    assert serde._plain_decimal_range(np.array([], np.float64))  # a column of nulls
