"""``raystream status`` rendering, dead-letter filters and the worker -> app metrics path,
without Ray or a broker."""

from __future__ import annotations

import pytest

import raystream as rs
from raystream._kafka.deadletters import DeadLetter, Filter
from raystream.cli.main import build_parser
from raystream.cli.status import render
from raystream.errors import ConfigError
from raystream.metrics import catalog as m
from raystream.metrics.aggregate import AppMetrics
from raystream.metrics.worker import WorkerMetrics
from raystream.testing import TopologyTestDriver


def letter(offset: int, cls: str, op: str = "decode", **extra: str) -> DeadLetter:
    headers = {
        "rs.error.class": cls,
        "rs.operator": op,
        "rs.source.topic": "pay",
        "rs.source.partition": "1",
        "rs.source.offset": "7",
        **extra,
    }
    return DeadLetter("pay.dlq", 0, offset, b"k", b"v", 1, headers)


def test_filters_by_error_class_operator_and_offsets() -> None:
    d = letter(5, "builtins.ValueError", "enrich")
    assert Filter(error_class="ValueError").matches(d)
    assert Filter(error_class="builtins.ValueError").matches(d)
    assert not Filter(error_class="Error").matches(d)
    assert not Filter(operator="decode").matches(d)
    assert Filter(from_offset=5, to_offset=5).matches(d)
    assert not Filter(from_offset=6).matches(d)
    with pytest.raises(ConfigError, match="--to-offset"):
        Filter(from_offset=9, to_offset=3)
    assert d.source == ("pay", 1, 7) and d.replayable and d.where == "pay.dlq[0]@5"
    assert not letter(1, "x", **{"rs.value.omitted": "too big"}).replayable


def test_cli_parses_status_and_dlq_commands() -> None:
    p = build_parser()
    a = p.parse_args(["status", "--app", "fraud", "--json"])
    assert a.app == "fraud" and a.json and not a.watch
    a = p.parse_args(["dlq", "replay", "pay.dlq", "--error-class", "ValueError", "--dry-run"])
    assert a.topic == "pay.dlq" and a.dry_run and a.error_class == "ValueError"
    with pytest.raises(SystemExit):
        p.parse_args(["status", "--json", "--watch"])


def test_render_shows_tasks_owners_lag_rates_and_broker_trouble() -> None:
    status = {
        "app": "fraud",
        "state": "running",
        "bounded": False,
        "started_at": 1000.0,
        "metrics_url": "http://127.0.0.1:9464/metrics",
        "assignments": {0: ["0_0", "0_1"], 1: ["0_2"]},
        "workers": {
            0: {
                "pid": 11,
                "node_id": "abcdef123456",
                "state": "running",
                "attempt": 0,
                "epoch": 7,
                "committed_at": 1090.0,
                "done_tasks": [],
                "broker_error": None,
            },
            1: {
                "pid": 12,
                "node_id": "fedcba654321",
                "state": "retrying",
                "attempt": 2,
                "epoch": 5,
                "committed_at": 1080.0,
                "done_tasks": [],
                "broker_error": "no answer from Kafka for 7s (committing an epoch)",
                "last_error": "KafkaError: committing an epoch failed",
            },
        },
        "tasks": {
            "0_0": {
                "records_in": 12345,
                "records_out": 12000,
                "in_per_s": 1500.0,
                "out_per_s": 1400.0,
                "lag": 250,
                "epoch": 7,
                "dead_letters": 3,
            },
        },
    }
    text = render(status, now=1100.0)
    assert "app fraud  running  up 1m40s  epoch 7" in text
    assert "http://127.0.0.1:9464/metrics" in text
    assert "! broker: worker 1 cannot reach Kafka: no answer from Kafka for 7s" in text
    row = next(line for line in text.splitlines() if line.startswith("0_0"))
    assert row.split() == [
        "0_0",
        "0",
        "abcdef12",
        "running",
        "12,345",
        "1,500",
        "12,000",
        "1,400",
        "250",
        "7",
        "3",
    ]
    assert any(line.startswith("0_2") and " 1 " in line for line in text.splitlines())
    assert "last error: KafkaError: committing an epoch failed" in text


def test_worker_counters_reach_the_app_endpoint_and_survive_a_restart() -> None:
    def runner(good: int, bad: int):  # a real task runner, fed through the test driver
        app = rs.App("fraud", brokers="unused:9092")
        app.stream("pay").map(lambda r: r, name="m").to("out")
        driver = TopologyTestDriver(app)
        driver.pipe("pay", [{"i": i} for i in range(good)] + [b"{broken"] * bad)
        (task,) = driver._tasks.values()
        return task

    wm = WorkerMetrics("fraud", 0, ray_export=False)
    app = AppMetrics("fraud")
    app.update(0, 111, wm.observe([runner(90, 10)], {"pay[0]": 40}, "running"))
    wm2 = WorkerMetrics("fraud", 0, ray_export=False)  # a new process after a restart
    app.update(0, 222, wm2.observe([runner(5, 0)], {"pay[0]": 0}, "running"))
    merged = app.merged()
    assert merged[m.TASK_RECORDS_IN.name][("fraud", "0_0")] == 105
    assert merged[m.TASK_RECORDS_OUT.name][("fraud", "0_0")] == 95
    dead = ("fraud", "0_0", "decode", "raystream.errors.SerdeError")
    assert merged[m.DEAD_LETTERS.name][dead] == 10
    assert merged[m.OPERATOR_RECORDS_IN.name][("fraud", "0_0", "m")] == 95
    assert merged[m.CONSUMER_LAG.name] == {("fraud", "pay", "0"): 0.0}
    assert merged[m.WORKER_RESTARTS.name] == {("fraud", "0"): 1.0}
    assert merged[m.BROKER_UP.name] == {("fraud", "0"): 1.0}
    wm2.broker_silent("no answer from Kafka for 6s (committing an epoch)")
    wm2.kafka_stats('{"brokers": {"b": {"state": "UP"}}}')  # a frozen broker's socket is UP
    assert wm2.snapshot("running")[m.BROKER_UP.name] == {("fraud", "0"): 0.0}
    wm2.kafka_ok()
    assert wm2.snapshot("running")[m.BROKER_UP.name] == {("fraud", "0"): 1.0}
