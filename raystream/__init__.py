"""raystream: a distributed stream processor for event-driven microservices, on Ray and Kafka."""

from raystream._runtime.driver import RunningApp, RunResult
from raystream.app import App
from raystream.config import Guarantee, KafkaConfig, RuntimeConfig
from raystream.errors import (
    ConfigError,
    DevStackError,
    KafkaError,
    OperatorContractError,
    ProducerFencedError,
    RaystreamError,
    RuntimeStateError,
    SerdeError,
    TopicNotFoundError,
    TopologyError,
    UserFunctionError,
    ViewQueryError,
)
from raystream.operators.aggregations import (
    Aggregation,
    collect,
    count,
    count_distinct,
    custom,
    first,
    last,
    max,
    mean,
    min,
    sum,
)
from raystream.operators.base import ErrorPolicy
from raystream.operators.process_context import ProcessContext, ProcessFunction
from raystream.operators.timers import TimeDomain
from raystream.operators.windows import hopping, session, sliding, tumbling
from raystream.serde import JSON, Bytes, Serde, String
from raystream.topology.grouped import GroupedStream, WindowedStream
from raystream.topology.stream import Stream
from raystream.topology.table import GlobalTable, Table
from raystream.views.server import get, sql

__version__ = "0.1.0"

__all__ = [
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
