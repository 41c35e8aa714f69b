"""Typed, frozen configuration objects. Environment variables are read only in :meth:`from_env`."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from raystream.errors import ConfigError


class Guarantee(StrEnum):
    """Processing guarantee of an app."""

    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


@dataclass(frozen=True)
class KafkaConfig:
    """How to reach Kafka, and librdkafka settings passed through unchanged."""

    brokers: str
    consumer: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)
    admin: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.brokers or not isinstance(self.brokers, str):
            raise ConfigError(
                "brokers: give the Kafka bootstrap address, e.g. App(..., brokers='host:9092'), "
                "set RAYSTREAM_BROKERS, or start the dev stack with `raystream dev up`"
            )


@dataclass(frozen=True)
class RuntimeConfig:
    """How the runtime processes: batch sizes, commit interval, guarantee, new topics."""

    #: exactly_once: outputs, state checkpoint and input offsets commit atomically (a Kafka
    #: transaction per epoch); at_least_once: the same without the transaction.
    guarantee: Guarantee = Guarantee.EXACTLY_ONCE
    #: Epoch length: outputs are flushed and input offsets committed this often.
    commit_interval_ms: int = 200
    #: Where state checkpoints go: ``file:///path``, a path, or ``s3://bucket/prefix`` (S3
    #: options as URI query, e.g. ``?endpoint_override=...``). None: ``<RAYSTREAM_HOME or
    #: ~/.raystream>/checkpoints`` on the machine of each worker (one-machine setups only).
    checkpoints: str | None = None
    #: Every this many epochs a task writes its whole state (a full epoch); the others hold
    #: only the keys changed. Bounds what recovery and views read.
    checkpoint_compact_every: int = 50
    #: Published epochs kept per task (older ones are deleted): the window for time travel.
    checkpoint_retain: int = 20
    #: A worker that has not committed for this long while running is replaced.
    stall_timeout_ms: int = 120_000
    #: Most records fetched per poll of a worker (all its tasks together).
    max_batch_records: int = 10_000
    #: How long a poll waits for records when none are ready.
    poll_timeout_ms: int = 50
    #: Partitions given to output topics raystream creates (None: as many as the source topic).
    default_partitions: int | None = None
    #: Where to start a partition that has no committed offset: "earliest" or "latest".
    auto_offset_reset: str = "earliest"
    #: CPUs reserved per worker actor (fractional so several fit on one node).
    worker_num_cpus: float = 0.25
    #: Dead-letter topic: "{topic}" is replaced by the source topic.
    dlq_topic: str = "{topic}.dlq"
    #: Default topic for late records of windowed aggregations: "{app}" is the app id.
    late_topic: str = "{app}.late"
    #: After this long without input, a task's watermark advances with processing time from the
    #: last event time seen, so an idle partition's windows still close. None: never.
    idle_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.guarantee, Guarantee):
            try:
                object.__setattr__(self, "guarantee", Guarantee(self.guarantee))
            except ValueError:
                raise ConfigError(
                    f"guarantee: {self.guarantee!r} is not one of {[g.value for g in Guarantee]}"
                ) from None
        if self.commit_interval_ms <= 0:
            raise ConfigError("commit_interval_ms: must be a positive number of milliseconds")
        if self.max_batch_records <= 0:
            raise ConfigError("max_batch_records: must be positive")
        if self.poll_timeout_ms < 0:
            raise ConfigError("poll_timeout_ms: must be >= 0")
        if self.default_partitions is not None and self.default_partitions <= 0:
            raise ConfigError("default_partitions: must be positive (or None)")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError("auto_offset_reset: must be 'earliest' or 'latest'")
        if not 0 < self.worker_num_cpus <= 64:
            raise ConfigError("worker_num_cpus: must be in (0, 64]")
        if self.idle_timeout_ms is not None and self.idle_timeout_ms <= 0:
            raise ConfigError("idle_timeout_ms: must be positive, or None to disable")
        if self.checkpoint_compact_every < 1:
            raise ConfigError("checkpoint_compact_every: must be >= 1 (1: every epoch is full)")
        if self.checkpoint_retain < 1:
            raise ConfigError("checkpoint_retain: must be >= 1")
        if self.stall_timeout_ms < 10 * self.commit_interval_ms:
            raise ConfigError(
                "stall_timeout_ms: must be at least 10 x commit_interval_ms, or healthy workers "
                "would be replaced"
            )
        if "{topic}" not in self.dlq_topic:
            raise ConfigError("dlq_topic: must contain '{topic}', e.g. '{topic}.dlq'")

    def with_(self, **changes: Any) -> RuntimeConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def dev_stack_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The variables of a running ``raystream dev up`` (brokers, RAY_ADDRESS, Ray auth), if any.

    The dev stack's home is RAYSTREAM_HOME, else ``~/.raystream``.
    """
    from pathlib import Path

    from raystream.dev.stack import dev_environment

    env = os.environ if environ is None else environ
    home = Path(env.get("RAYSTREAM_HOME") or Path.home() / ".raystream")
    return dev_environment(home)


def default_checkpoints(environ: Mapping[str, str] | None = None) -> str:
    """``<RAYSTREAM_HOME or ~/.raystream>/checkpoints`` as a ``file://`` URI."""
    from pathlib import Path

    env = os.environ if environ is None else environ
    home = Path(env.get("RAYSTREAM_HOME") or Path.home() / ".raystream")
    return (home / "checkpoints").resolve().as_uri()


def brokers_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The broker address from RAYSTREAM_BROKERS, else from a running ``raystream dev up``."""
    env = os.environ if environ is None else environ
    if env.get("RAYSTREAM_BROKERS"):
        return env["RAYSTREAM_BROKERS"]
    dev = dev_stack_environment(env)
    return dev.get("RAYSTREAM_BROKERS") if dev else None


def ray_address_from_env(environ: MutableMapping[str, str] | None = None) -> str | None:
    """RAY_ADDRESS, else the Ray head of a running ``raystream dev up`` (whose auth variables are
    then set in ``environ``, as Ray clients read them from there); None: Ray decides."""
    env = os.environ if environ is None else environ
    if env.get("RAY_ADDRESS"):
        return env["RAY_ADDRESS"]
    dev = dev_stack_environment(env)
    if not dev or "RAY_ADDRESS" not in dev:
        return None
    env.update({k: v for k, v in dev.items() if k.startswith("RAY_")})
    return dev["RAY_ADDRESS"]
