"""Every error raystream raises, as one tree.

    RaystreamError
    ├── ConfigError                 a setting is missing or wrong (names the field)
    ├── TopologyError               the topology cannot be built or planned
    │   ├── OperatorContractError   a user function broke its operator's contract
    │   └── BinaryInputError        a join was fed through ``process``, not a sided method
    ├── SerdeError                  a payload cannot be encoded or decoded
    ├── KafkaError                  the broker refused or failed an operation
    │   ├── TopicNotFoundError      an input topic does not exist
    │   ├── RecordTooLargeError     the producer refused a record over message.max.bytes
    │   └── ProducerFencedError     another instance took over this worker slot
    ├── CheckpointError             checkpoints cannot be written, found or read
    ├── DevStackError               the embedded broker or local Ray could not start or stop
    ├── RuntimeStateError           the app is not in a state that allows the call
    ├── UserFunctionError           a user function raised (wraps the original)
    └── ViewQueryError              a SQL query over views was refused or failed

Kafka, Ray and DuckDB errors are translated where they enter raystream, with ``raise ... from exc``.
"""

from __future__ import annotations


class RaystreamError(Exception):
    """Root of every raystream error."""


class ConfigError(RaystreamError):
    """A configuration value is missing or invalid; the message names the field and the fix."""


class TopologyError(RaystreamError):
    """The topology is invalid (for example a stream with no sink, or a cycle)."""


class OperatorContractError(TopologyError):
    """A user function returned something its operator cannot use."""


class SerdeError(RaystreamError):
    """A payload could not be encoded or decoded."""


class KafkaError(RaystreamError):
    """The Kafka broker refused or failed an operation."""


class TopicNotFoundError(KafkaError):
    """An input topic does not exist on the broker."""


class RecordTooLargeError(KafkaError):
    """An output record is larger than the producer's ``message.max.bytes``: its input record
    goes to the dead-letter topic."""


class ProducerFencedError(KafkaError):
    """A newer instance of this worker slot fenced this one; it must stop."""


class DevStackError(RaystreamError):
    """The embedded development broker or the local Ray head failed to start or stop."""


class RuntimeStateError(RaystreamError):
    """The call is not allowed in the app's current state."""


class UserFunctionError(RaystreamError):
    """A user-supplied function raised; the original exception is the ``__cause__``."""


class BinaryInputError(TopologyError):
    """A two-input operator (a join) was fed through ``process`` instead of its sided methods."""


class CheckpointError(RaystreamError):
    """A checkpoint could not be written, found or read."""


class ViewQueryError(RaystreamError):
    """A SQL query over views was refused (not read-only, too big, too slow) or failed."""
