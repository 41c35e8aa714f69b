"""Planning: sub-topologies, tasks and the mistakes that must fail fast."""

from __future__ import annotations

import pytest

import raystream as rs
from raystream.errors import ConfigError, TopologyError
from raystream.topology.plan import TaskId


def test_independent_streams_are_separate_subtopologies() -> None:
    app = rs.App("t", brokers="x:1")
    app.stream("a").filter(lambda r: True).to("a.out")
    b1, b2 = app.stream("b").branch(lambda r: r["x"] > 1)
    b1.to("b.big")
    b2.to("b.rest")
    plan = app.plan()
    assert [st.source_topics for st in plan.subtopologies] == [("a",), ("b",)]
    assert plan.subtopologies[1].sink_topics == ("b.big", "b.rest")
    assert plan.tasks({"a": 2, "b": 3}) == [
        TaskId(0, 0),
        TaskId(0, 1),
        TaskId(1, 0),
        TaskId(1, 1),
        TaskId(1, 2),
    ]
    assert str(TaskId(1, 2)) == "1_2"


def test_a_stream_that_leads_nowhere_is_an_error() -> None:
    app = rs.App("t", brokers="x:1")
    app.stream("a").map(lambda r: r)
    with pytest.raises(TopologyError, match=r"lead nowhere.*\.to\(topic\)"):
        app.plan()


def test_empty_app_and_read_write_same_topic() -> None:
    with pytest.raises(TopologyError, match="no streams"):
        rs.App("t", brokers="x:1").plan()
    app = rs.App("t", brokers="x:1")
    app.stream("a").to("a")
    with pytest.raises(TopologyError, match="both read and written"):
        app.plan()


def test_builder_argument_errors() -> None:
    app = rs.App("t", brokers="x:1")
    s = app.stream("a")
    with pytest.raises(TopologyError, match="expected a function"):
        s.map(42)  # type: ignore[arg-type]
    with pytest.raises(TopologyError, match="at least one predicate"):
        s.branch()
    with pytest.raises(TopologyError, match="partitions must be positive"):
        s.to("b", partitions=0)
    s.map(lambda r: r, name="m")
    with pytest.raises(TopologyError, match="used twice"):
        s.map(lambda r: r, name="m")


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="name"):
        rs.App("bad name!", brokers="x:1")
    with pytest.raises(ConfigError, match="commit_interval_ms"):
        rs.App("t", brokers="x:1", commit_interval_ms=0)
    with pytest.raises(ConfigError, match="guarantee"):
        rs.App("t", brokers="x:1", guarantee="twice")
    with pytest.raises(ConfigError, match="unknown setting"):
        rs.App("t", brokers="x:1", comit_interval_ms=5)
    with pytest.raises(ConfigError, match="dlq_topic"):
        rs.App("t", brokers="x:1", dlq_topic="dead")


def test_missing_brokers_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("RAYSTREAM_BROKERS", raising=False)
    monkeypatch.setenv("RAYSTREAM_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="raystream dev up"):
        rs.App("t").kafka_config()
    monkeypatch.setenv("RAYSTREAM_BROKERS", "h:9")
    assert rs.App("t").kafka_config().brokers == "h:9"
