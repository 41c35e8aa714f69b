"""Join specs refuse bad configuration up front, with messages naming the field."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from raystream.errors import ConfigError
from raystream.operators.joins_base import BinaryOperator, BinaryOperatorSpec
from raystream.operators.joins_stream import StreamStreamJoinSpec
from raystream.operators.joins_table import GlobalTableJoinSpec, StreamTableJoinSpec, TableSpec
from raystream.operators.joins_table_table import TableTableJoinSpec
from raystream.operators.joins_versioned import VersionedTableJoinSpec


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: StreamTableJoinSpec(how="outer"), "stream-table join: how must be one of"),
        (lambda: StreamTableJoinSpec(how="right"), "'inner', 'left'"),
        (lambda: GlobalTableJoinSpec("m", how="full"), "stream-global-table join: how"),
        (lambda: VersionedTableJoinSpec(10, how="outer"), "versioned stream-table join: how"),
        (lambda: TableTableJoinSpec("cross"), "'inner', 'left', 'outer'"),
        (lambda: StreamStreamJoinSpec(1, 1, how="semi"), "stream-stream join: how"),
    ],
)
def test_bad_how(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: StreamStreamJoinSpec(-1, 5), "join window before must be a non-negative"),
        (lambda: StreamStreamJoinSpec(5, -1), "join window after"),
        (lambda: StreamStreamJoinSpec(5, 5, grace_ms=-1), "grace"),
        (lambda: StreamStreamJoinSpec(5, 5, out_of_orderness_ms=-2), "out_of_orderness"),
        (lambda: StreamStreamJoinSpec(True, 5), "join window before"),
        (lambda: StreamStreamJoinSpec.of("-5m"), "join window must not be negative"),
        (lambda: StreamStreamJoinSpec.of("5 parsecs"), "join window must be a duration"),
        (lambda: StreamStreamJoinSpec.of(), "needs a window"),
        (lambda: StreamStreamJoinSpec.of(before="1m"), "both before= and after="),
        (lambda: VersionedTableJoinSpec(-1), "history_retention must be a non-negative"),
        (lambda: VersionedTableJoinSpec.of("-1h"), "history_retention must not be negative"),
    ],
)
def test_bad_durations(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: StreamTableJoinSpec(right_prefix=""), "right_prefix must be a non-empty str"),
        (lambda: StreamStreamJoinSpec(1, 1, right_prefix=None), "right_prefix"),  # type: ignore[arg-type]
        (lambda: StreamTableJoinSpec(right_schema={"a": "int"}), "right_schema must be a pyarrow"),
        (
            lambda: TableTableJoinSpec(left_schema=pa.schema([("__tombstone", pa.bool_())])),
            "it is implied",
        ),
        (lambda: TableSpec(value_schema=[("a", pa.int64())]), "value_schema"),
        (lambda: GlobalTableJoinSpec(""), "on must be the name of a stream field"),
        (lambda: GlobalTableJoinSpec(42), "on must be"),  # type: ignore[arg-type]
    ],
)
def test_bad_names_and_schemas(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_durations_are_parsed_and_window_sets_both_bounds() -> None:
    spec = StreamStreamJoinSpec.of("30m", grace="10s", out_of_orderness=500)
    assert (spec.before_ms, spec.after_ms, spec.grace_ms, spec.out_of_orderness_ms) == (
        1_800_000,
        1_800_000,
        10_000,
        500,
    )
    spec = StreamStreamJoinSpec.of("30m", after=0)
    assert (spec.before_ms, spec.after_ms) == (1_800_000, 0)
    spec = StreamStreamJoinSpec.of(before="1s", after="2s")
    assert (spec.before_ms, spec.after_ms) == (1_000, 2_000)
    assert VersionedTableJoinSpec.of("1h").history_retention_ms == 3_600_000


@pytest.mark.parametrize(
    "spec",
    [
        StreamTableJoinSpec(),
        GlobalTableJoinSpec("merchant_id"),
        VersionedTableJoinSpec(1),
        TableTableJoinSpec(),
        StreamStreamJoinSpec(1, 1),
    ],
)
def test_join_specs_build_binary_operators(spec: BinaryOperatorSpec) -> None:
    assert spec.inputs == 2
    op = spec.build("j")
    assert isinstance(op, BinaryOperator)
    assert op.ports == spec.ports
    assert spec.kind.endswith("_join")
