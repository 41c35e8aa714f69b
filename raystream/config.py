"""Typed, frozen configuration objects. Environment variables are read only in :meth:`from_env`."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, fields, replace
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
    #: exactly_once only: commit an epoch's transaction in the background while the next epoch
    #: is processed (two transactional producers per worker taking turns). False: the loop
    #: waits for every commit, with one producer.
    overlap_commits: bool = True
    #: Also end an epoch as soon as the worker has caught up (no record is ready right after
    #: it processed some), not only every ``commit_interval_ms``: at light load each record's
    #: output is committed, so readable, one epoch sooner; at full load a record is always
    #: ready and epochs end on the interval alone. Costs a commit per burst of input.
    commit_when_caught_up: bool = False
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
    #: How often the view server reads the latest committed epochs of the views.
    view_refresh_ms: int = 500
    #: SQL over views: statement timeout and the most rows a result may have.
    sql_timeout_ms: int = 10_000
    sql_max_rows: int = 100_000
    #: HTTP endpoint of the view server (GET/POST /sql, GET /views): port 0 picks a free one,
    #: None turns it off. Bound anywhere but loopback it needs ``http_token``.
    http_host: str = "127.0.0.1"
    http_port: int | None = 0
    http_token: str | None = None
    #: Most records fetched per poll of a worker (all its tasks together).
    max_batch_records: int = 10_000
    #: How long a poll waits for records when none are ready.
    poll_timeout_ms: int = 50
    #: Partitions given to output topics raystream creates (None: as many as the source topic).
    default_partitions: int | None = None
    #: Before an epoch commits, read again the offsets the broker skipped in what it handed
    #: the worker, and start the epoch again from the last commit if a record was there: a
    #: guard against brokers that let a consumer pass over a batch (Tansu, the embedded
    #: broker, when several producers write one partition at once; see
    #: raystream._runtime.gaps). None: on when the broker is Tansu (by its cluster id), off on
    #: any other.
    check_gaps: bool | None = None
    #: Where to start a partition that has no committed offset: "earliest" or "latest". (A
    #: position that falls outside the log, e.g. deleted by retention, always moves to the
    #: oldest record kept: see raystream._kafka.clients.consumer_config.)
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
    #: The app's Prometheus endpoint, served by its coordinator: port 0 picks a free one (see
    #: ``raystream status``), None turns it off. Loopback by default; "0.0.0.0" for all.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0
    #: Also record every metric through ``ray.util.metrics`` (the Ray dashboard shows them).
    ray_metrics: bool = True
    #: Log level and format ("text" or "json") of raystream's loggers in worker processes;
    #: every record carries the app, worker and task it concerns.
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        _check_types(self)
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
        if self.view_refresh_ms <= 0 or self.sql_timeout_ms <= 0 or self.sql_max_rows <= 0:
            raise ConfigError("view_refresh_ms, sql_timeout_ms and sql_max_rows must be positive")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ConfigError("http_port: must be 0..65535 (0: a free port) or None (no HTTP)")
        _check_http_token(self)
        if "{topic}" not in self.dlq_topic:
            raise ConfigError("dlq_topic: must contain '{topic}', e.g. '{topic}.dlq'")
        _check_observability(self)

    def with_(self, **changes: Any) -> RuntimeConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    type(None): (type(None),),
}


def _check_types(cfg: RuntimeConfig) -> None:
    """Refuse a value of the wrong type, naming the field (``commit_interval_ms="200"``)."""
    import typing

    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        hint = hints.get(f.name)
        options = typing.get_args(hint) if typing.get_args(hint) else (hint,)
        if not all(o in _SIMPLE_TYPES for o in options):
            continue  # enums and the like check themselves
        allowed = tuple(t for o in options for t in _SIMPLE_TYPES[o])
        wrong_bool = isinstance(value, bool) and bool not in options
        if wrong_bool or not isinstance(value, allowed):
            want = " or ".join("None" if o is type(None) else o.__name__ for o in options)
            raise ConfigError(f"{f.name}: must be {want}, got {value!r} ({type(value).__name__})")


def _check_http_token(cfg: RuntimeConfig) -> None:
    """SQL over HTTP beyond this machine needs a bearer token."""
    from raystream.views.http import is_loopback

    if cfg.http_port is not None and not is_loopback(cfg.http_host) and not cfg.http_token:
        raise ConfigError(
            f"http_token: required when http_host ({cfg.http_host!r}) is not a loopback "
            "address, as the view server's SQL endpoint would be open to the network; set "
            "http_token='<a long random secret>' (clients send 'Authorization: Bearer <token>'), "
            "bind http_host='127.0.0.1', or turn HTTP off with http_port=None"
        )


def _check_observability(cfg: RuntimeConfig) -> None:
    import ipaddress
    import re

    if cfg.metrics_port is not None and not 0 <= cfg.metrics_port <= 65535:
        raise ConfigError(
            "metrics_port: must be 0..65535 (0: a free port) or None (no Prometheus endpoint)"
        )
    host = cfg.metrics_host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
            raise ConfigError(
                f"metrics_host: {host!r} is not an IP address or host name; e.g. '127.0.0.1' "
                "(this machine only) or '0.0.0.0' (every interface)"
            ) from None
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"log_level: {cfg.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: must be 'text' or 'json', got {cfg.log_format!r}")


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
