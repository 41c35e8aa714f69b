"""Which offsets a consumer was handed skip: the ranges the gap audit reads again."""

from __future__ import annotations

import pytest

from raystream._runtime.gaps import GapAudit, note_gaps
from raystream.config import RuntimeConfig
from raystream.errors import ConfigError


def gaps_of(start: int, offsets: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    note_gaps(start, offsets, out)
    return out


def test_contiguous_offsets_from_the_position_skip_nothing() -> None:
    assert gaps_of(10, [10, 11, 12]) == []
    assert gaps_of(10, []) == []


def test_a_skip_before_the_first_offset() -> None:
    assert gaps_of(10, [13, 14]) == [(10, 13)]


def test_skips_between_offsets() -> None:
    assert gaps_of(0, [0, 1, 5, 6, 9]) == [(2, 5), (7, 9)]
    assert gaps_of(3, [4, 6]) == [(3, 4), (5, 6)]


def test_the_audit_keeps_gaps_per_partition() -> None:
    audit = GapAudit(lambda: pytest.fail("no consumer is needed"))  # type: ignore[arg-type,return-value]
    audit.note(("t", 0), 0, [0, 1, 2])  # nothing skipped
    audit.note(("t", 0), 3, [5, 6])
    audit.note(("t", 1), 7, [7, 9])
    audit.note_jump(("t", 1), 10, 12)
    audit.note_jump(("t", 1), 12, 12)  # no move
    assert audit.gaps == {("t", 0): [(3, 5)], ("t", 1): [(8, 9), (10, 12)]}


def test_no_gaps_check_needs_no_broker() -> None:
    audit = GapAudit(lambda: pytest.fail("no consumer is needed"))  # type: ignore[arg-type,return-value]
    audit.check()
    assert audit.checked == 0


def test_check_gaps_setting() -> None:
    assert RuntimeConfig().check_gaps is None
    assert RuntimeConfig(check_gaps=False).check_gaps is False
    with pytest.raises(ConfigError, match="check_gaps"):
        RuntimeConfig(check_gaps="yes")  # type: ignore[arg-type]


def test_dispatch_notes_skips_in_global_table_partitions_too() -> None:
    from confluent_kafka import Message

    from raystream._runtime.worker import _dispatch

    def msg(topic: str, offset: int) -> Message:
        return Message(topic=topic, partition=0, offset=offset, key=b"k", value=b"{}")

    audit = GapAudit(lambda: pytest.fail("no consumer is needed"))  # type: ignore[arg-type,return-value]
    positions = {("s", 0): 4}
    global_positions = {("g", 0): 0}
    routes: dict = {("s", 0): [], ("g", 0): []}
    _dispatch(
        [msg("s", 4), msg("s", 6), msg("g", 2), msg("g", 3)],
        routes,
        positions,
        global_positions,
        audit,
    )
    assert positions == {("s", 0): 7} and global_positions == {("g", 0): 4}
    # A passed-over table update would leave a global table stale: its skips are read back too.
    assert audit.gaps == {("s", 0): [(5, 6)], ("g", 0): [(0, 2)]}
