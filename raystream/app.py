"""``App``: the entry point. Build a topology on it, then ``run()`` it on Ray."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

from raystream._runtime.driver import RunningApp, RunResult, ensure_ray
from raystream.config import KafkaConfig, RuntimeConfig, brokers_from_env, default_checkpoints
from raystream.errors import ConfigError, RuntimeStateError, TopologyError
from raystream.serde import JSON, Serde
from raystream.topology.nodes import Graph, SourceSpec
from raystream.topology.plan import Plan, plan
from raystream.topology.stream import Stream
from raystream.topology.table import GlobalTable, Table, declared_schema, source_spec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class App:
    """One streaming application: an id, how to reach Kafka, runtime settings and a topology.

    ``brokers`` defaults to RAYSTREAM_BROKERS, then to the broker of ``raystream dev up``.
    Runtime settings are the fields of :class:`RuntimeConfig` (``commit_interval_ms``,
    ``max_batch_records``, ``guarantee``...), given as keyword arguments or as ``config``.
    """

    def __init__(
        self,
        name: str,
        brokers: str | None = None,
        *,
        config: RuntimeConfig | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"name: {name!r} is not a valid app id; use letters, digits, '.', '_' or '-' "
                "(it names the consumer group, the transactional ids and the Ray actors)"
            )
        self.name = name
        self._brokers = brokers
        self._consumer_config = dict(consumer_config or {})
        self._producer_config = dict(producer_config or {})
        try:
            self.config = (config or RuntimeConfig()).with_(**settings)
        except TypeError as exc:
            raise ConfigError(f"unknown setting: {exc}; see raystream.RuntimeConfig") from exc
        if self.config.checkpoints is None:
            self.config = self.config.with_(checkpoints=default_checkpoints())
        self._graph = Graph()
        self._running: RunningApp | None = None

    def stream(
        self,
        topic: str,
        *,
        value: Serde | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> Stream:
        """Read ``topic`` as a stream.

        ``value``: how values are decoded (JSON by default). ``key``: the value field that is the
        record key (default: the Kafka key). ``time``: the value field holding event time in ms
        since the epoch or as a timestamp (default: the Kafka timestamp).
        """
        if not topic or not isinstance(topic, str):
            raise TopologyError("stream(topic): topic must be a non-empty string")
        node = self._graph.add(SourceSpec(topic, value or JSON(), key, time))
        return Stream(self, node, 0, key)

    def table(
        self,
        topic: str,
        *,
        value: Serde | None = None,
        key: str | None = None,
        time: str | None = None,
    ) -> Table:
        """Read ``topic`` (usually compacted) as a table: the latest value per key.

        The table is partitioned like the streams it enriches: its topic must have their
        partition count, and its records must be keyed (Kafka key) like theirs. ``key``: the
        value field holding the key (a tombstone, having no value, uses the Kafka key, read as
        that field's type). A null value deletes its key. Before a task processes its streams,
        it loads its tables' partitions to their end.
        """
        spec = source_spec(topic, value, key, time, global_table=False)
        node = self._graph.add(spec)
        return Table(self, node, 0, key, declared_schema(spec.serde))

    def global_table(
        self,
        topic: str,
        *,
        value: Serde | None = None,
        key: str | None = None,
    ) -> GlobalTable:
        """Read ``topic`` as a global table: every task holds all of it (for small tables such
        as merchants or currencies). Joined with ``stream.join(table, on=field)``, loaded to
        its end before the streams are processed, then kept up to date."""
        spec = source_spec(topic, value, key, None, global_table=True)
        node = self._graph.add(spec)
        return GlobalTable(self, node, 0, key, declared_schema(spec.serde))

    def plan(self) -> Plan:
        """The sub-topologies this app runs (checks the topology)."""
        return plan(self._graph)

    def kafka_config(self) -> KafkaConfig:
        """Where Kafka is, resolved now."""
        brokers = self._brokers or brokers_from_env()
        return KafkaConfig(
            brokers=brokers or "",
            consumer=self._consumer_config,
            producer=self._producer_config,
        )

    def start(
        self, workers: int = 1, *, bounded: bool = False, ray_address: str | None = None
    ) -> RunningApp:
        """Start the app on Ray with ``workers`` worker actors and return at once.

        ``bounded=True`` processes up to the end offsets seen at start, then finishes.
        """
        if self._running is not None and not self._running._ended:
            raise RuntimeStateError(f"app {self.name!r} is already running: stop it first")
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers: must be a positive integer, got {workers!r}")
        the_plan = self.plan()
        kafka = self.kafka_config()
        ensure_ray(ray_address)
        self._running = RunningApp(self.name, the_plan, kafka, self.config, workers, bounded)
        return self._running

    def sql(self, query: str, *, as_of: float | None = None) -> Any:
        """Run one read-only SQL query over the running app's views; a ``pyarrow.Table``.

        Every answer holds, for every task, one whole committed epoch. ``as_of`` (unix seconds):
        the committed state at that moment, within the retained epochs (time travel). Besides
        the views, ``raystream_epochs`` and ``raystream_offsets`` describe the snapshot.
        """
        return self._require_running().sql(query, as_of)

    def get(self, view: str, key: Any) -> list[dict[str, Any]]:
        """Point lookup: the rows of ``key`` in view ``view`` (one row, or one per window for a
        window aggregate; ``[]`` for an unknown key), answered by the worker that owns the key.

        It sees the latest *processed* state, fresher than SQL's committed epochs: it may
        include records whose epoch is not committed yet, which a failure rolls back (the task
        then answers from its last committed epoch until it has caught up). It is consistent
        per key only: two lookups are not one snapshot. For consistent reads use :meth:`sql`.
        From another driver: ``raystream.get(app_name, view, key)``.
        """
        return self._require_running().get(view, key)

    def views(self) -> list[dict[str, Any]]:
        """The running app's views: name, columns, rows, epochs, freshness."""
        return self._require_running().views()

    def _require_running(self) -> RunningApp:
        if self._running is None or self._running._ended:
            raise RuntimeStateError(
                f"app {self.name!r} is not running here: start it (app.start), or query a running "
                "app from any driver with raystream.sql(app_name, query)"
            )
        return self._running

    def run(
        self,
        workers: int = 1,
        *,
        bounded: bool = False,
        timeout: float | None = None,
        ray_address: str | None = None,
    ) -> RunResult:
        """Run the app until it finishes (bounded), fails, ``timeout`` passes or Ctrl-C; then
        drain, commit and stop. Returns the totals."""
        running = self.start(workers, bounded=bounded, ray_address=ray_address)
        with contextlib.suppress(KeyboardInterrupt):
            running.wait(timeout)
        return running.stop()
