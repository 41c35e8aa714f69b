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
)
from raystream.serde import JSON, Bytes, Serde, String
from raystream.topology.stream import Stream

__version__ = "0.1.0"

__all__ = [
    "JSON",
    "App",
    "Bytes",
    "ConfigError",
    "DevStackError",
    "Guarantee",
    "KafkaConfig",
    "KafkaError",
    "OperatorContractError",
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
    "TopicNotFoundError",
    "TopologyError",
    "UserFunctionError",
    "__version__",
]
