"""The worker actor: owns tasks, and runs the data path for them.

    fetch (manual assign) -> group by partition -> TaskRunner.process (decode, operators, produce)
      -> every commit interval: flush outputs, then commit input offsets -> report

The loop runs in a thread started by the constructor, so a worker that Ray restarts after a crash
resumes by itself: it asks the coordinator for its tasks and seeks to the committed offsets.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ray
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import KafkaException as _RdKafkaException

from raystream._kafka import headers as hdr
from raystream._kafka.admin import end_offsets
from raystream._kafka.clients import consumer as make_consumer
from raystream._runtime.messages import Assignment, WorkerReport
from raystream._runtime.output import OutputSink
from raystream._runtime.task import Incoming, TaskRunner
from raystream.config import KafkaConfig, RuntimeConfig
from raystream.errors import OperatorContractError, RaystreamError, UserFunctionError
from raystream.topology.nodes import SourceSpec
from raystream.topology.plan import Plan

log = logging.getLogger("raystream.worker")

_OFFSET_BEGINNING = -2
_OFFSET_END = -1


class Worker:
    """A Ray actor holding a set of tasks. Created by the coordinator, never by users."""

    def __init__(
        self,
        app: str,
        slot: int,
        plan: Plan,
        kafka: KafkaConfig,
        runtime: RuntimeConfig,
        coordinator: Any,
    ) -> None:
        self.app = app
        self.slot = slot
        self.plan = plan
        self.kafka = kafka
        self.runtime = runtime
        self.coordinator = coordinator
        self._stop = threading.Event()
        self._report = WorkerReport(slot, -1, os.getpid(), _node_id(), "starting")
        self._thread = threading.Thread(
            target=self._main, name=f"raystream-worker-{slot}", daemon=True
        )
        self._thread.start()

    # -- actor methods -----------------------------------------------------------------------
    def report(self) -> WorkerReport:
        """The worker's latest state."""
        return self._report

    def stop(self, timeout: float = 60.0) -> WorkerReport:
        """Drain: finish the current batch, commit, and stop the loop."""
        self._stop.set()
        self._thread.join(timeout)
        return self._report

    def pid(self) -> int:
        """The worker's process id (for tests and ``raystream status``)."""
        return os.getpid()

    # -- the loop ----------------------------------------------------------------------------
    def _main(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                assignment: Assignment = ray.get(self.coordinator.assignment.remote(self.slot))
                done = self._run(assignment)
                self._report.state = "finished" if done else "stopped"
                self._send_report()
                return
            except (OperatorContractError, UserFunctionError) as exc:
                # Retrying would fail on the same records forever: stop the app and say why.
                self._fail(exc, fatal=True)
                return
            except Exception as exc:  # a broker outage, a failed delivery: retry from committed
                self._fail(exc, fatal=False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _fail(self, exc: BaseException, fatal: bool) -> None:
        log.error("worker %d: %s", self.slot, "".join(traceback.format_exception(exc)))
        self._report.state = "failed" if fatal else "retrying"
        self._report.last_error = f"{type(exc).__name__}: {exc}"
        self._report.fatal = fatal
        self._send_report()

    def _run(self, a: Assignment) -> bool:
        """Process the assignment until stopped (False) or, in bounded mode, done (True)."""
        self._report.attempt = a.attempt
        epoch = 0
        out = OutputSink(self.kafka)
        consumer = make_consumer(self.kafka, group_id=self.app)
        try:
            tasks, routes = self._build_tasks(a, out, lambda: epoch)
            owned = [tp for tp in routes if tp[0] not in self._global_topics(a)]
            positions = self._start_positions(consumer, owned, routes)
            global_positions = {tp: 0 for tp in routes if tp not in positions}
            self._report.state = "bootstrapping"
            self._bootstrap(consumer, routes, positions, global_positions)
            _assign(consumer, {**positions, **global_positions})
            ends = dict(a.end_offsets) if a.end_offsets is not None else None
            partitions_of = _partitions_by_task(routes, owned)
            self._report.state = "running"
            last_commit = last_ends = time.monotonic()
            interval = self.runtime.commit_interval_ms / 1000.0
            idle_timeout = self.runtime.idle_timeout_ms
            while True:
                if ends is not None:
                    if time.monotonic() - last_ends >= 0.2 and len(ends) < len(owned):
                        missing = [tp for tp in owned if tp not in ends]
                        ends.update(ray.get(self.coordinator.known_ends.remote(missing)))
                        last_ends = time.monotonic()
                    for task, tps in partitions_of.items():
                        if not task.finished and all(
                            tp in ends and positions[tp] >= ends[tp] for tp in tps
                        ):
                            task.finish()
                    if all(t.finished for t in tasks):
                        self._commit(consumer, out, positions, epoch)
                        self._update_report(tasks, positions, consumer, epoch)
                        return True
                if self._stop.is_set():
                    self._commit(consumer, out, positions, epoch)
                    self._update_report(tasks, positions, consumer, epoch)
                    return False
                msgs = consumer.consume(
                    self.runtime.max_batch_records, self.runtime.poll_timeout_ms / 1000.0
                )
                if msgs:
                    _dispatch(msgs, routes, positions, global_positions)
                    out.poll()
                elif ends is not None:
                    _skip_control_records(consumer, positions)
                if idle_timeout is not None:
                    for task in tasks:
                        task.check_idle(idle_timeout)
                if time.monotonic() - last_commit >= interval:
                    self._commit(consumer, out, positions, epoch)
                    self._update_report(tasks, positions, consumer, epoch)
                    epoch += 1
                    last_commit = time.monotonic()
        finally:
            consumer.close()

    def _global_topics(self, a: Assignment) -> set[str]:
        subs = {t.subtopology for t in a.tasks}
        return {g for st in self.plan.subtopologies if st.id in subs for g in st.global_topics}

    def _changelog_topics(self) -> set[str]:
        return {
            s.topic
            for s in self.plan.graph.nodes.values()
            if isinstance(s, SourceSpec) and s.changelog
        }

    def _build_tasks(
        self, a: Assignment, out: OutputSink, epoch: Callable[[], int]
    ) -> tuple[list[TaskRunner], dict[tuple[str, int], list[TaskRunner]]]:
        """The assignment's tasks, and which of them each fetched partition feeds: a
        co-partitioned source partition feeds its task, a global table's partition every task
        whose sub-topology reads it."""
        tasks: list[TaskRunner] = []
        routes: dict[tuple[str, int], list[TaskRunner]] = defaultdict(list)
        dlq = self.runtime.dlq_topic
        for task_id in a.tasks:
            tag = str(task_id)
            runner = TaskRunner(
                self.app,
                task_id,
                self.plan,
                out,
                dlq_topic=lambda topic: dlq.format(topic=topic),
                provenance=_provenance(tag, epoch, a.attempt),
            )
            tasks.append(runner)
            st = self.plan.subtopologies[task_id.subtopology]
            for topic in st.source_topics:
                routes[(topic, task_id.partition)].append(runner)
            for topic in st.global_topics:
                if topic not in a.partitions:
                    raise RaystreamError(f"no partition count for global table topic {topic!r}")
                for p in range(a.partitions[topic]):
                    routes[(topic, p)].append(runner)
        return tasks, dict(routes)

    def _start_positions(
        self,
        consumer: Consumer,
        owned: list[tuple[str, int]],
        routes: dict[tuple[str, int], list[TaskRunner]],
    ) -> dict[tuple[str, int], int]:
        """Where each owned partition starts: a stream at its committed offset, a table at its
        beginning (its state is rebuilt by reading it again; the records below the committed
        offset were reported already, so they are not dead-lettered twice)."""
        tps = [TopicPartition(t, p) for t, p in owned]
        try:
            committed = consumer.committed(tps, timeout=30) if tps else []
        except _RdKafkaException as exc:
            raise RaystreamError(f"cannot read committed offsets: {exc}") from exc
        tables = self._changelog_topics()
        reset = 0 if self.runtime.auto_offset_reset == "earliest" else _OFFSET_END
        positions: dict[tuple[str, int], int] = {}
        for tp in committed:
            key = (tp.topic, tp.partition)
            if tp.topic in tables:
                positions[key] = 0
                if tp.offset > 0:
                    for runner in routes[key]:
                        runner.replayed_below[key] = tp.offset
            else:
                positions[key] = tp.offset if tp.offset >= 0 else reset
        if any(off == _OFFSET_END for off in positions.values()):
            ends = end_offsets(self.kafka, [tp for tp, off in positions.items() if off < 0])
            positions.update(ends)
        return positions

    def _bootstrap(
        self,
        consumer: Consumer,
        routes: dict[tuple[str, int], list[TaskRunner]],
        positions: dict[tuple[str, int], int],
        global_positions: dict[tuple[str, int], int],
    ) -> None:
        """Load every table partition (co-partitioned and global) to its current end before
        any stream record is processed."""
        tables = self._changelog_topics()
        boot = {tp: off for tp, off in positions.items() if tp[0] in tables}
        boot.update(global_positions)
        if not boot:
            return
        ends = end_offsets(self.kafka, list(boot))
        _assign(consumer, boot)
        started = time.monotonic()
        while not self._stop.is_set():
            if all(
                max(positions.get(tp, 0), global_positions.get(tp, 0)) >= end
                for tp, end in ends.items()
            ):
                break
            msgs = consumer.consume(
                self.runtime.max_batch_records, self.runtime.poll_timeout_ms / 1000.0
            )
            if msgs:
                _dispatch(msgs, routes, positions, global_positions)
            else:
                _skip_control_records(consumer, positions)
                _skip_control_records(consumer, global_positions)
        log.info(
            "worker %d: loaded %d table partition(s) in %.2fs",
            self.slot,
            len(ends),
            time.monotonic() - started,
        )

    def _commit(
        self,
        consumer: Consumer,
        out: OutputSink,
        positions: dict[tuple[str, int], int],
        epoch: int,
    ) -> None:
        """At-least-once commit: every output acknowledged, then the input offsets."""
        out.flush()
        offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items() if off > 0]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except _RdKafkaException as exc:
                raise RaystreamError(f"offset commit failed: {exc}") from exc
        self._report.committed_at = time.time()
        self._report.epoch = epoch

    def _update_report(
        self,
        tasks: list[TaskRunner],
        positions: dict[tuple[str, int], int],
        consumer: Consumer,
        epoch: int,
    ) -> None:
        r = self._report
        r.records_in = sum(t.counters.records_in for t in tasks)
        r.records_out = sum(t.counters.records_out for t in tasks)
        r.dead_letters = sum(t.counters.dead_letters for t in tasks)
        r.done_tasks = [str(t.task) for t in tasks if t.finished]
        r.positions = {f"{t}[{p}]": off for (t, p), off in positions.items()}
        lag: dict[str, int] = {}
        for (t, p), off in positions.items():
            _, high = consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            if high >= 0:
                lag[f"{t}[{p}]"] = max(high - off, 0)
        r.lag = lag
        self._send_report()

    def _send_report(self) -> None:
        try:
            self.coordinator.worker_report.remote(self._report)
        except Exception:  # the coordinator is gone: the app is stopping
            log.debug("worker %d: coordinator unreachable", self.slot)


def _group(msgs: list[Any]) -> dict[tuple[str, int], Incoming]:
    """Split fetched messages by partition, in offset order, skipping error events."""
    groups: dict[tuple[str, int], Incoming] = {}
    parts: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for m in msgs:
        if m.error() is not None:
            log.warning("fetch error on %s[%s]: %s", m.topic(), m.partition(), m.error())
            continue
        parts[(m.topic(), m.partition())].append(m)
    for tp, ms in parts.items():
        groups[tp] = Incoming(
            tp[0],
            [m.value() for m in ms],
            [m.key() for m in ms],
            [m.timestamp()[1] for m in ms],
            [m.offset() for m in ms],
            tp[1],
        )
    return groups


def _dispatch(
    msgs: list[Any],
    routes: dict[tuple[str, int], list[TaskRunner]],
    positions: dict[tuple[str, int], int],
    global_positions: dict[tuple[str, int], int],
) -> None:
    """Run fetched messages through the tasks they feed; advance the positions."""
    for tp, incoming in _group(msgs).items():
        for runner in routes[tp]:
            runner.process(incoming)
        nxt = incoming.offsets[-1] + 1
        if tp in positions:
            positions[tp] = nxt
        else:
            global_positions[tp] = nxt


def _assign(consumer: Consumer, positions: dict[tuple[str, int], int]) -> None:
    """Fetch exactly ``positions`` (replacing the previous assignment). Position 0 means the
    beginning, wherever the log starts now (retention or compaction may have removed offset 0)."""
    consumer.assign(
        [
            TopicPartition(t, p, off if off > 0 else _OFFSET_BEGINNING)
            for (t, p), off in positions.items()
        ]
    )


def _provenance(task: str, epoch: Callable[[], int], attempt: int) -> Callable[[], hdr.Headers]:
    """Headers for a task's outputs, naming the epoch current when each record is written."""
    return lambda: hdr.provenance(task, epoch(), attempt)


def _partitions_by_task(
    routes: dict[tuple[str, int], list[TaskRunner]], owned: list[tuple[str, int]]
) -> dict[TaskRunner, list[tuple[str, int]]]:
    out: dict[TaskRunner, list[tuple[str, int]]] = defaultdict(list)
    for tp in owned:
        for task in routes[tp]:
            out[task].append(tp)
    return dict(out)


def _skip_control_records(consumer: Consumer, positions: dict[tuple[str, int], int]) -> None:
    """Move positions past transaction markers: nothing is pending, so the consumer's own position
    (which steps over control records) is where processing stands."""
    tps = [TopicPartition(t, p) for t, p in positions]
    for tp in consumer.position(tps):
        key = (tp.topic, tp.partition)
        if tp.offset > positions[key]:
            positions[key] = tp.offset


def _node_id() -> str:
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return "?"
