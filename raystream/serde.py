"""Serialisation between Kafka payloads and Arrow batches, as pure functions on micro-batches.

A :class:`Serde` decodes a list of Kafka values into one ``pyarrow.RecordBatch`` (plus the indices
of the values it could not decode, with the reason) and encodes a RecordBatch into a list of values.
Payloads are never pickled.
"""

from __future__ import annotations

import dataclasses
import io
import json
import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from raystream.errors import ConfigError, SerdeError

_PY_TO_ARROW: dict[Any, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bool: pa.bool_(),
    bytes: pa.binary(),
    datetime: pa.timestamp("ms"),
    date: pa.date32(),
}


@dataclass(frozen=True)
class Decoded:
    """The result of decoding a micro-batch: the rows that decoded, and why the others did not."""

    data: pa.RecordBatch
    #: Indices (into the input values) of the rows in ``data``, in order.
    good: list[int]
    #: (index into the input values, error) for every value that could not be decoded.
    bad: list[tuple[int, SerdeError]] = field(default_factory=list)


class Serde(ABC):
    """Turns Kafka values into Arrow rows and back."""

    @abstractmethod
    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        """Decode values into one RecordBatch; undecodable values are reported, never raised."""

    @abstractmethod
    def encode(self, data: pa.RecordBatch) -> list[bytes]:
        """Encode every row of ``data`` into a Kafka value."""


def schema_of(spec: Any) -> pa.Schema | None:
    """An Arrow schema from a ``pa.Schema``, a dataclass, a TypedDict or a ``{name: type}`` dict."""
    if spec is None or isinstance(spec, pa.Schema):
        return spec
    if isinstance(spec, dict):
        return pa.schema([(name, _arrow_type(t, name)) for name, t in spec.items()])
    if dataclasses.is_dataclass(spec) and isinstance(spec, type):
        hints = typing.get_type_hints(spec)
        return pa.schema(
            [(f.name, _arrow_type(hints[f.name], f.name)) for f in dataclasses.fields(spec)]
        )
    if isinstance(spec, type) and hasattr(spec, "__annotations__"):
        hints = typing.get_type_hints(spec)
        return pa.schema([(name, _arrow_type(t, name)) for name, t in hints.items()])
    raise ConfigError(
        f"value schema {spec!r} is not supported: pass a pyarrow.Schema, a dataclass, a TypedDict "
        "or a dict of field name -> type"
    )


def _arrow_type(t: Any, name: str) -> pa.DataType:
    if isinstance(t, pa.DataType):
        return t
    origin = typing.get_origin(t)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _arrow_type(args[0], name)
    if origin is list and len(args) == 1:
        return pa.list_(_arrow_type(args[0], name))
    if t in _PY_TO_ARROW:
        return _PY_TO_ARROW[t]
    raise ConfigError(f"field {name!r}: type {t!r} has no Arrow equivalent; use a pyarrow type")


class JSON(Serde):
    """JSON objects, one per Kafka value.

    With a schema (a ``pa.Schema``, dataclass, TypedDict or dict of types), values are checked
    against it: a value whose fields have the wrong type is reported as undecodable; fields not
    in the schema are ignored. Without one, the schema is inferred per batch.
    """

    #: Batches smaller than this are decoded and encoded value by value: a pyarrow.json call
    #: and the column encoder each cost a fixed ~0.2-0.4 ms a batch, json ~3-5 us a value
    #: (measured: both cross near 100).
    SMALL_BATCH = 100

    def __init__(self, schema: Any = None) -> None:
        self.schema = schema_of(schema)
        #: Without a schema: fields pyarrow.json would read as timestamps, read as the strings
        #: they are instead (learned per stream, so every batch agrees).
        self._strings: dict[str, pa.DataType] = {}

    def __repr__(self) -> str:
        return f"JSON({self.schema})" if self.schema is not None else "JSON()"

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        if not values:
            return Decoded(_empty(self.schema), [])
        if len(values) >= self.SMALL_BATCH:
            fast = self._decode_fast(values)
            if fast is not None:
                return fast
        return self._decode_slow(values)

    def _decode_fast(self, values: Sequence[bytes | None]) -> Decoded | None:
        # One pyarrow.json call for the whole batch; any irregular value sends us to the slow path,
        # which finds exactly which values are bad.
        if not all(values):  # a None or an empty value
            return None
        buf = b"\n".join(values)  # type: ignore[arg-type]
        if buf.count(b"\n") != len(values) - 1:
            return None
        table = self._read(buf)
        if table is not None and self.schema is None:
            # pyarrow.json turns ISO-8601-looking strings into timestamps; json.loads (the
            # path of small batches and of batches with a bad value) keeps them as strings.
            # Strings they are: read those fields as strings from now on.
            found = {f.name: _no_timestamps(f.type) for f in table.schema}
            found = {n: t for n, t in found.items() if t is not None}
            if found:
                self._strings.update(found)
                table = self._read(buf)
        if table is None:
            return None
        if table.num_rows != len(values):
            return None
        if self.schema is None and any(pa.types.is_null(f.type) for f in table.schema):
            return None  # keep types stable: let the slow path decide all-null columns
        return Decoded(_one_batch(table), list(range(len(values))))

    def _read(self, buf: bytes) -> pa.Table | None:
        if self.schema is not None:
            schema, extra = self.schema, "ignore"
        else:
            schema = pa.schema(list(self._strings.items())) if self._strings else None
            extra = "infer"
        opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior=extra)
        try:
            return pajson.read_json(
                io.BytesIO(buf),
                # One block, so Arrow's thread pool has nothing to share out: handing it the
                # block anyway cost 3x the CPU of reading it here (1.5 vs 4.5 us a value).
                read_options=pajson.ReadOptions(
                    use_threads=False, block_size=max(len(buf) + 1, 1 << 20)
                ),
                parse_options=opts,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None

    def _decode_slow(self, values: Sequence[bytes | None]) -> Decoded:
        rows: list[dict[str, Any]] = []
        good: list[int] = []
        bad: list[tuple[int, SerdeError]] = []
        for i, v in enumerate(values):
            if v is None:
                bad.append((i, SerdeError("null value (tombstone) on a stream")))
                continue
            try:
                obj = json.loads(v)
            except (ValueError, UnicodeDecodeError) as exc:
                bad.append((i, SerdeError(f"invalid JSON: {exc}")))
                continue
            if not isinstance(obj, dict):
                bad.append((i, SerdeError(f"JSON value is a {type(obj).__name__}, not an object")))
                continue
            if self.schema is not None:
                obj = {f.name: obj.get(f.name) for f in self.schema}
            rows.append(obj)
            good.append(i)
        try:
            data = _from_rows(rows, self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            # Find the rows that break the schema one by one.
            keep_rows: list[dict[str, Any]] = []
            keep_idx: list[int] = []
            for i, row in zip(good, rows, strict=True):
                try:
                    _from_rows([row], self.schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as row_exc:
                    bad.append((i, SerdeError(f"value does not match the schema: {row_exc}")))
                    continue
                keep_rows.append(row)
                keep_idx.append(i)
            if len(keep_rows) == len(rows):
                raise SerdeError(f"rows decode alone but not together: {exc}") from exc
            rows, good = keep_rows, keep_idx
            data = _from_rows(rows, self.schema)
        bad.sort(key=lambda b: b[0])
        return Decoded(data, good, bad)

    def encode(self, data: pa.RecordBatch) -> list[bytes]:
        fast = _encode_json_columns(data) if data.num_rows >= self.SMALL_BATCH else None
        if fast is not None:
            return fast
        dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode
        return [dumps(row).encode() for row in data.to_pylist()]


class String(Serde):
    """UTF-8 text values, as one column ``value``."""

    def __init__(self, column: str = "value") -> None:
        self.column = column

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        out: list[str] = []
        good: list[int] = []
        bad: list[tuple[int, SerdeError]] = []
        for i, v in enumerate(values):
            if v is None:
                bad.append((i, SerdeError("null value (tombstone) on a stream")))
                continue
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad.append((i, SerdeError(f"invalid UTF-8: {exc}")))
                continue
            good.append(i)
        return Decoded(
            pa.RecordBatch.from_pydict({self.column: pa.array(out, pa.string())}), good, bad
        )

    def encode(self, data: pa.RecordBatch) -> list[bytes]:
        col = _single_column(data, self.column)
        return [b"" if s is None else str(s).encode("utf-8") for s in col.to_pylist()]


class Bytes(Serde):
    """Raw bytes values, as one column ``value``."""

    def __init__(self, column: str = "value") -> None:
        self.column = column

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        good = [i for i, v in enumerate(values) if v is not None]
        bad = [
            (i, SerdeError("null value (tombstone) on a stream"))
            for i, v in enumerate(values)
            if v is None
        ]
        arr = pa.array([values[i] for i in good], pa.binary())
        return Decoded(pa.RecordBatch.from_pydict({self.column: arr}), good, bad)

    def encode(self, data: pa.RecordBatch) -> list[bytes]:
        col = _single_column(data, self.column)
        return [b"" if v is None else bytes(v) for v in col.to_pylist()]


def encode_key(value: Any) -> bytes | None:
    """The Kafka key bytes for a key of any supported type (str, int, bytes, None)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool | int | float | Decimal):
        return str(value).encode("ascii")
    return json.dumps(value, separators=(",", ":"), default=_json_default).encode()


def encode_keys(keys: pa.Array) -> list[bytes | None]:
    """Kafka key bytes for every key of an Arrow array (fast paths for string and binary)."""
    if pa.types.is_binary(keys.type) or pa.types.is_large_binary(keys.type):
        return keys.to_pylist()
    if pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type):
        out: list[bytes | None] = keys.cast(pa.binary()).to_pylist()
        return out
    return [encode_key(k) for k in keys.to_pylist()]


#: A character ``json.dumps`` (``ensure_ascii``) would escape in a string, or might.
_NEEDS_ESCAPE = r"[^\x20\x21\x23-\x5b\x5d-\x7e]"
_NULL = pa.scalar("null", pa.string())
#: From this many values on, floats are written by Arrow's cast (measured: below it the
#: kernels' fixed cost makes ``repr`` per value cheaper).
_ARROW_FLOATS = 512


def _encode_json_columns(data: pa.RecordBatch) -> list[bytes] | None:
    """``JSON.encode`` column by column with Arrow kernels: the same bytes as encoding each row's
    dict with ``json.JSONEncoder(separators=(",", ":"))``, for batches whose columns are all
    integers, booleans, finite floats, strings or nulls; None for any other batch."""
    names = data.schema.names
    n = data.num_rows
    if n == 0:
        return []
    if len(set(names)) != len(names):
        return None  # to_pylist keeps one of the duplicates: let the row path decide
    if not names:
        return [b"{}"] * n
    # One join of every column's text between the literals around it. A string column that
    # json writes as is (no nulls, nothing to escape) goes in itself, its quotes in the literals.
    parts: list[pa.Array | pa.Scalar] = []
    literal = ""
    for j, name in enumerate(names):
        literal += ("{" if j == 0 else ",") + json.encoder.encode_basestring_ascii(name) + ":"
        col = data.column(j)
        if _verbatim_strings(col):
            parts += [pa.scalar(literal + '"'), col]
            literal = '"'
            continue
        text = _json_texts(col)
        if text is None:
            return None
        parts += [pa.scalar(literal), text]
        literal = ""
    parts += [pa.scalar(literal + "}"), pa.scalar("")]  # the last argument is the separator
    rows = pc.binary_join_element_wise(*parts)
    out: list[bytes] = rows.cast(pa.binary()).to_pylist()
    return out


#: Every byte json (``ensure_ascii``) writes as itself inside a string.
_UNESCAPED = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _verbatim_strings(col: pa.Array) -> bool:
    """Whether ``col`` is a string column without nulls whose values json writes unescaped."""
    if not pa.types.is_string(col.type) or col.null_count:
        return False
    _, offsets, chars = col.buffers()
    if chars is None or len(col) == 0:
        return True
    ends = np.frombuffer(offsets, np.int32, len(col) + 1, 4 * col.offset)
    first, last = int(ends[0]), int(ends[-1])
    # Deleting every byte that needs no escape leaves nothing: one pass in C, no per-value work.
    return not memoryview(chars)[first:last].tobytes().translate(None, _UNESCAPED)


def _json_texts(col: pa.Array) -> pa.Array | None:
    """The JSON text of every value of ``col`` (``null`` for nulls); None for other types."""
    t = col.type
    if pa.types.is_null(t):
        return pa.nulls(len(col), pa.string()).fill_null(_NULL)
    if pa.types.is_integer(t):
        ints = pc.cast(col, pa.string())
        return ints.fill_null(_NULL) if col.null_count else ints
    if pa.types.is_boolean(t):
        return pc.if_else(col, "true", "false").fill_null(_NULL)
    if pa.types.is_float64(t) or pa.types.is_float32(t):
        return _float_texts(col)
    if pa.types.is_string(t):
        if pc.any(pc.match_substring_regex(col, _NEEDS_ESCAPE)).as_py():
            esc = json.encoder.encode_basestring_ascii
            return pa.array(["null" if v is None else esc(v) for v in col.to_pylist()], pa.string())
        return pc.binary_join_element_wise('"', col, '"', "").fill_null(_NULL)
    return None


def _float_texts(col: pa.Array) -> pa.Array | None:
    """``repr`` of every float (``null`` for nulls); None when one is NaN or infinite."""
    every = col.to_numpy(zero_copy_only=False)  # NaN at nulls
    x = every
    if col.null_count:
        x = every[np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)]
    if not np.isfinite(x).all():
        return None  # NaN and infinities: json's own spelling, on the row path
    if pa.types.is_float64(col.type) and len(col) >= _ARROW_FLOATS and _plain_decimal_range(x):
        # Arrow writes the shortest round-trip digits, as repr does; in this range neither
        # uses an exponent, and only integral values differ ("3" against "3.0").
        text = pc.cast(col, pa.string())
        whole = np.asarray(every == np.trunc(every))  # False at nulls
        if whole.any():  # "3.0", where Arrow writes "3"; few, so repr is the cheaper pen
            reps = [float.__repr__(v) for v in every[whole].tolist()]
            text = pc.replace_with_mask(text, pa.array(whole), pa.array(reps, pa.string()))
        return text.fill_null(_NULL) if col.null_count else text
    rep = float.__repr__
    return pa.array(["null" if v is None else rep(v) for v in col.to_pylist()], pa.string())


def _plain_decimal_range(x: np.ndarray) -> bool:
    """Whether every value of the float64 values ``x`` (nulls left out) is zero or of magnitude in
    [1e-4, 1e10): where ``repr`` and Arrow's cast to string both write plain decimals
    (measured: they agree there, digit for digit; outside it they put exponents in different
    places)."""
    if not len(x):
        return True  # all null
    mag = np.abs(x)
    if mag.max() >= 1e10:
        return False
    if mag.min() >= 1e-4:
        return True
    return bool(((mag == 0.0) | (mag >= 1e-4)).all())  # zeros are fine too


def _single_column(data: pa.RecordBatch, column: str) -> pa.Array:
    if column in data.schema.names:
        return data.column(column)
    if data.num_columns == 1:
        return data.column(0)
    raise SerdeError(
        f"cannot encode rows with columns {data.schema.names} as one value: select the "
        f"{column!r} column first or use JSON()"
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _empty(schema: pa.Schema | None) -> pa.RecordBatch:
    return (
        pa.RecordBatch.from_pylist([], schema=schema)
        if schema is not None
        else pa.RecordBatch.from_pydict({})
    )


def _from_rows(rows: list[dict[str, Any]], schema: pa.Schema | None) -> pa.RecordBatch:
    if not rows:
        return _empty(schema)
    if schema is not None:
        return pa.RecordBatch.from_pylist(rows, schema=schema)
    # Every field any row has (from_pylist would take the first row's fields only), in the
    # order they first appear; a row without one has null there.
    names = list(dict.fromkeys(k for row in rows for k in row))
    return pa.RecordBatch.from_pydict({n: [row.get(n) for row in rows] for n in names})


def _no_timestamps(t: pa.DataType) -> pa.DataType | None:
    """``t`` with every timestamp in it made a string; None when it holds no timestamp."""
    if pa.types.is_timestamp(t):
        return pa.string()
    if pa.types.is_struct(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        changed = [_no_timestamps(f.type) for f in fields]
        if all(c is None for c in changed):
            return None
        return pa.struct(
            [f.with_type(c) if c is not None else f for f, c in zip(fields, changed, strict=True)]
        )
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _no_timestamps(t.value_type)
        if inner is None:
            return None
        return pa.large_list(inner) if pa.types.is_large_list(t) else pa.list_(inner)
    return None


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return batches[0]  # combine_chunks leaves exactly one chunk per column
