"""The public surface is what __all__ says, and nothing leaks in by accident."""

import raystream

EXPECTED = [
    "JSON",
    "Aggregation",
    "App",
    "Bytes",
    "ConfigError",
    "DevStackError",
    "ErrorPolicy",
    "GlobalTable",
    "GroupedStream",
    "Guarantee",
    "KafkaConfig",
    "KafkaError",
    "OperatorContractError",
    "ProcessContext",
    "ProcessFunction",
    "ProducerFencedError",
    "RaystreamError",
    "RunResult",
    "RunningApp",
    "RuntimeConfig",
    "RuntimeStateError",
    "Serde",
    "SerdeError",
    "Stream",
    "String",
    "Table",
    "TimeDomain",
    "TopicNotFoundError",
    "TopologyError",
    "UserFunctionError",
    "ViewQueryError",
    "WindowedStream",
    "__version__",
    "collect",
    "count",
    "count_distinct",
    "custom",
    "first",
    "get",
    "hopping",
    "last",
    "max",
    "mean",
    "min",
    "session",
    "sliding",
    "sql",
    "sum",
    "tumbling",
]


def test_all_is_pinned() -> None:
    assert sorted(raystream.__all__) == sorted(EXPECTED)
    for name in raystream.__all__:
        assert hasattr(raystream, name), name


def test_errors_share_one_root() -> None:
    for name in raystream.__all__:
        obj = getattr(raystream, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, raystream.RaystreamError), name
