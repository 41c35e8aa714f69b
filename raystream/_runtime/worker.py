"""The worker actor: owns tasks, and runs the data path for them.

    fetch (manual assign) -> group by partition -> TaskRunner.process (decode, operators, produce)
      -> every commit interval: flush outputs, then commit input offsets -> report

The loop runs in a thread started by the constructor, so a worker that Ray restarts after a crash
resumes by itself: it asks the coordinator for its tasks and seeks to the committed offsets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import KafkaException as _RdKafkaException

from raystream._kafka import headers as hdr
from raystream._kafka.admin import end_offsets, wait_committed
from raystream._kafka.clients import consumer as make_consumer
from raystream._kafka.fetch import fetch_ready
from raystream._runtime.checkpointing import TaskCheckpointer
from raystream._runtime.collector import CheckpointCollector
from raystream._runtime.epochs import count_partitions, epochs_topic, marker_partitions
from raystream._runtime.gaps import GapAudit, broker_may_pass_over
from raystream._runtime.messages import Assignment, WorkerReport
from raystream._runtime.output import OutputSink
from raystream._runtime.pipeline import PipelinedOutput
from raystream._runtime.task import Incoming, TaskRunner
from raystream.config import Guarantee, KafkaConfig, RuntimeConfig
from raystream.errors import (
    CheckpointError,
    OperatorContractError,
    ProducerFencedError,
    RaystreamError,
    RuntimeStateError,
    UserFunctionError,
)
from raystream.metrics import logcontext
from raystream.metrics.worker import WorkerMetrics
from raystream.operators.view import ViewOperator
from raystream.state.checkpoint import CheckpointStore
from raystream.topology.nodes import SourceSpec
from raystream.topology.plan import Plan

log = logging.getLogger("raystream.worker")

#: Garbage-collect a task's old checkpoint epochs every this many epochs, and no more often
#: than every _GC_MIN_S seconds (GC lists and reads the task's manifests: with short epochs,
#: every 20 epochs would be every second).
_GC_EVERY = 20
_GC_MIN_S = 10.0
#: Send the coordinator a report at most this often (besides the final ones): with short
#: commit intervals, a report per commit would cost more than the commits.
_REPORT_EVERY_S = 0.25
#: A call to Kafka (a commit, starting an attempt) blocked this long means the broker does not
#: answer: the worker says so in its report and metrics while it keeps waiting.
BROKER_SILENT_S = 5.0
#: In exactly-once mode, check this often that the commits confirmed by the previous check read
#: back (see Worker._make_readable).
_READABLE_CHECK_S = 1.0
#: Waits before a failed attempt is retried: the first, the most, and how long an attempt must
#: have run for its failure to start again from the first wait.
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 10.0
_HEALTHY_ATTEMPT_S = 60.0
_OFFSET_BEGINNING = -2
_OFFSET_END = -1


@dataclass
class _Task:
    """One task of a worker attempt, with its checkpointer and commit bookkeeping."""

    runner: TaskRunner
    checkpointer: TaskCheckpointer
    #: The co-partitioned (topic, partition)s it owns.
    partitions: list[tuple[str, int]]
    #: Its index among the app's tasks (which epoch-marker partitions it commits).
    index: int
    #: Table partitions it loads from their beginning before processing.
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    #: Positions and output count as of its last committed epoch.
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    produced: int = 0
    #: Its epoch when the attempt started (restored from Kafka).
    recovered_epoch: int = 0
    #: Its records in, out and dead-lettered since the app first ran, as of the epoch it was
    #: recovered from (restored from Kafka; this attempt's counters add to these).
    counted_before: tuple[int, int, int] = (0, 0, 0)
    #: When its checkpoints were last garbage-collected (monotonic seconds).
    gc_at: float = 0.0


@dataclass
class _Epoch:
    """An epoch whose commit was started: what to record and report once it is confirmed."""

    tasks: list[_Task]
    #: The worker's epoch number (its tasks' highest) once this epoch is committed.
    number: int
    #: The attempt's records in, out and dead-lettered as of the epoch's end.
    counts: tuple[int, int, int]
    #: By task written: its epoch number and its counts since the app first ran (committed).
    task_counts: dict[str, tuple[int, tuple[int, int, int]]]
    #: Kafka timestamps of the epoch's records, by task (the end-to-end latency metric).
    stamps: dict[TaskRunner, list[list[int]]]
    started: float
    #: Tasks at the end of their input when the epoch ended: done once it is confirmed.
    finished: list[str]
    #: What it committed: input offsets, epoch markers and counts.
    offsets: dict[tuple[str, int], int]


Output = OutputSink | PipelinedOutput


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
        #: The tasks whose state is loaded and processing (for point lookups), by task id.
        self._live: dict[str, TaskRunner] = {}
        self._report = WorkerReport(slot, -1, os.getpid(), _node_id(), "starting")
        logcontext.install(runtime.log_level, runtime.log_format)
        self.metrics = WorkerMetrics(app, slot, ray_export=runtime.ray_metrics)
        #: When the loop entered a blocking Kafka call (and which), None outside one.
        self._kafka_wait: tuple[float, str] | None = None
        #: The number of the last report sent (see :meth:`_send_report`).
        self._seq = 0
        self._seq_lock = threading.Lock()
        #: The epoch whose commit runs in the background (overlapped commits), if any.
        self._unconfirmed: _Epoch | None = None
        #: This attempt's guard against records the broker let the consumer pass over.
        self._audit: GapAudit | None = None
        #: Tasks of a bounded run whose every output is committed (reported as done_tasks).
        self._done: set[str] = set()
        #: The attempt's counts as of its last confirmed epoch (what reports carry).
        self._counts = (0, 0, 0)
        #: By task: its committed epoch and counts since the app first ran (see _Epoch).
        self._task_counts: dict[str, tuple[int, tuple[int, int, int]]] = {}
        self._generation = 0
        #: Every offset the attempt's confirmed commits wrote (the newest of each partition),
        #: and a copy of it as of the last check that they read back.
        self._confirmed: dict[tuple[str, int], int] = {}
        self._confirmed_checked: dict[tuple[str, int], int] = {}
        self._last_report = 0.0
        self._collector = CheckpointCollector(f"raystream-gc-{slot}")
        self._thread = threading.Thread(
            target=self._main, name=f"raystream-worker-{slot}", daemon=True
        )
        self._thread.start()
        threading.Thread(
            target=self._watch_broker, name=f"raystream-broker-watch-{slot}", daemon=True
        ).start()

    # -- actor methods -----------------------------------------------------------------------
    def report(self) -> WorkerReport:
        """The worker's latest state."""
        return self._report

    def get_view_rows(self, view: str, key: Any, tasks: list[str]) -> dict[str, Any]:
        """Point lookup: the rows of ``key`` in view ``view`` held by those of ``tasks`` this
        worker runs, as ``{"held": [task...], "rows": {task: [row...]}}``. The rows are the
        latest processed state, fresher than the last committed epoch (see ViewOperator.get);
        a task still recovering is not in ``held``."""
        live = self._live  # replaced whole by the loop, never mutated: a consistent view
        held = [t for t in tasks if t in live]
        rows: dict[str, Any] = {}
        for t in held:
            for op in live[t].operators.values():
                if isinstance(op, ViewOperator) and op.view == view:
                    found = op.get(key)
                    if found:
                        rows[t] = found
        return {"held": held, "rows": rows}

    def stop(self, timeout: float = 60.0) -> WorkerReport:
        """Drain: finish the current batch, commit, and stop the loop."""
        self._stop.set()
        self._thread.join(timeout)
        return self._report

    def resume(self) -> None:
        """Start the loop again after :meth:`stop` (a rescale): ask for the new assignment."""
        if self._thread.is_alive():
            raise RuntimeStateError(f"worker {self.slot} is still running: stop it first")
        self._stop.clear()
        self._report = WorkerReport(self.slot, -1, os.getpid(), _node_id(), "starting")
        self._thread = threading.Thread(
            target=self._main, name=f"raystream-worker-{self.slot}", daemon=True
        )
        self._thread.start()

    def pid(self) -> int:
        """The worker's process id (for tests and ``raystream status``)."""
        return os.getpid()

    # -- the loop ----------------------------------------------------------------------------
    def _main(self) -> None:
        logcontext.bind(app=self.app, worker=self.slot)
        backoff = _FIRST_BACKOFF_S
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                assignment: Assignment = ray.get(self.coordinator.assignment.remote(self.slot))
                done = self._run(assignment)
                self._report.state = "finished" if done else "stopped"
                self._report.metrics = self.metrics.snapshot(self._report.state)
                self._send_report()
                return
            except ProducerFencedError as exc:
                # A newer instance of this slot runs the tasks now: this one is a zombie.
                log.warning("worker %d: %s", self.slot, exc)
                self._report.state = "fenced"
                self._report.metrics = self.metrics.snapshot(self._report.state)
                self._send_report()
                return
            except (OperatorContractError, UserFunctionError, CheckpointError) as exc:
                # Retrying would fail on the same records forever: stop the app and say why.
                self._fail(exc, fatal=True)
                return
            except Exception as exc:  # a broker outage, a failed delivery: retry from committed
                self.metrics.retrying()
                self._fail(exc, fatal=False)
                wait = _retry_wait(backoff, time.monotonic() - began)
                self._stop.wait(wait)
                backoff = min(wait * 2, _MAX_BACKOFF_S)

    def _fail(self, exc: BaseException, fatal: bool) -> None:
        log.error("worker %d: %s", self.slot, "".join(traceback.format_exception(exc)))
        self._report.state = "failed" if fatal else "retrying"
        self._report.last_error = f"{type(exc).__name__}: {exc}"
        self._report.fatal = fatal
        self._report.metrics = self.metrics.snapshot(self._report.state)
        self._report.broker_error = self.metrics.broker_error
        self._send_report()

    def _watch_broker(self) -> None:
        """While the loop is stuck in a Kafka call (a frozen or unreachable broker), say so:
        broker down in the metrics, and a report with the reason, every second."""
        while True:
            time.sleep(1.0)
            wait = self._kafka_wait
            if wait is None:
                continue
            since, what = wait
            silent = time.monotonic() - since
            if silent < BROKER_SILENT_S or self._kafka_wait is not wait:
                continue
            self.metrics.broker_silent(f"no answer from Kafka for {silent:.0f}s ({what})")
            report = dataclasses.replace(
                self._report,
                metrics=self.metrics.snapshot(self._report.state),
                broker_error=self.metrics.broker_error,
            )
            self._send_report(report)

    @contextlib.contextmanager
    def _waiting_on_kafka(self, what: str) -> Iterator[None]:
        self._kafka_wait = (time.monotonic(), what)
        try:
            yield
        finally:
            self._kafka_wait = None

    def _run(self, a: Assignment) -> bool:
        """Process the assignment until stopped (False) or, in bounded mode, done (True)."""
        self._live = {}
        self._report.attempt = a.attempt
        exactly_once = self.runtime.guarantee is Guarantee.EXACTLY_ONCE
        self._unconfirmed, self._counts, self._done = None, (0, 0, 0), set()
        self._task_counts, self._generation = {}, a.generation
        self._confirmed, self._confirmed_checked = {}, {}
        out = self._output(exactly_once)
        consumer = make_consumer(self.kafka, group_id=self.app, **self.metrics.client_config())
        self._audit = None
        try:
            with self._waiting_on_kafka("starting the attempt"):
                started = time.monotonic()
                self._audit = self._gap_audit(consumer)
                if exactly_once:
                    out.start_transactions()
                fenced = time.monotonic()
                store = CheckpointStore(self.runtime.checkpoints or "", self.app)
                tasks, routes = self._build_tasks(a, out, store)
                owned = [tp for tp in routes if tp[0] not in self._global_topics(a)]
                positions = self._recover(consumer, tasks, owned, routes, a)
                self._task_counts = {
                    str(t.runner.task): (t.recovered_epoch, t.counted_before) for t in tasks
                }
                self._live = {str(t.runner.task): t.runner for t in tasks}
                log.info(
                    "worker %d attempt %d: %d task(s) ready in %.2fs (transactions %.2fs, "
                    "restore %.2fs)",
                    self.slot,
                    a.attempt,
                    len(tasks),
                    time.monotonic() - started,
                    fenced - started,
                    time.monotonic() - fenced,
                )
            global_positions = {tp: 0 for tp in routes if tp not in positions}
            self._report.state = "bootstrapping"
            self._bootstrap(consumer, tasks, routes, positions, global_positions)
            _assign(consumer, {**positions, **global_positions})
            ends = dict(a.end_offsets) if a.end_offsets is not None else None
            runners = [t.runner for t in tasks]
            self._report.state = "running"
            last_commit = last_ends = self._last_report = time.monotonic()
            readable_at = last_commit + _READABLE_CHECK_S
            interval = self.runtime.commit_interval_ms / 1000.0
            poll_wait = self.runtime.poll_timeout_ms / 1000.0
            idle_timeout = self.runtime.idle_timeout_ms
            eager, owed = self.runtime.commit_when_caught_up, False
            report = functools.partial(self._update_report, runners, positions, consumer)
            commit = functools.partial(self._commit, consumer, out, tasks, positions, a, report)
            settle = functools.partial(self._settle, out, report)
            while True:
                if ends is not None:
                    if time.monotonic() - last_ends >= 0.2 and len(ends) < len(owned):
                        missing = [tp for tp in owned if tp not in ends]
                        ends.update(ray.get(self.coordinator.known_ends.remote(missing)))
                        last_ends = time.monotonic()
                    for t in tasks:
                        if not t.runner.finished and all(
                            tp in ends and positions[tp] >= ends[tp] for tp in t.partitions
                        ):
                            t.runner.finish()
                    if all(r.finished for r in runners):
                        commit()
                        settle()
                        self._await_committed(consumer, tasks, a)
                        report()
                        return True
                if self._stop.is_set():
                    commit()
                    settle()
                    self._await_committed(consumer, tasks, a)
                    report()
                    return False
                # Wait for records no longer than the poll timeout, nor past the commit due;
                # not at all when an epoch ends as soon as none are ready.
                wait = min(poll_wait, last_commit + interval - time.monotonic())
                msgs = fetch_ready(consumer, self.runtime.max_batch_records, 0 if owed else wait)
                if msgs:
                    _dispatch(msgs, routes, positions, global_positions, self._audit)
                    out.poll()
                    owed = eager
                elif ends is not None:
                    _skip_control_records(consumer, positions, self._audit)
                for r in runners:
                    if idle_timeout is not None:
                        r.check_idle(idle_timeout)
                    r.tick()  # processing-time timers
                if time.monotonic() - last_commit >= interval or (owed and not msgs):
                    commit()
                    last_commit, owed = time.monotonic(), False
                elif isinstance(out, PipelinedOutput) and out.committing and out.done():
                    settle()
                if exactly_once and time.monotonic() >= readable_at:
                    readable_at = time.monotonic() + _READABLE_CHECK_S
                    if not (isinstance(out, PipelinedOutput) and out.committing):
                        self._make_readable(consumer)
        except BaseException:
            self._live = {}
            self._unconfirmed = None
            out.abort()
            raise
        finally:
            consumer.close()
            if self._audit is not None:
                self._audit.close()
            if isinstance(out, PipelinedOutput):
                out.close()

    def _gap_audit(self, consumer: Consumer) -> GapAudit | None:
        """The guard against records the broker lets the consumer pass over, when it is on
        (``RuntimeConfig.check_gaps``; by default on Tansu only)."""
        on = self.runtime.check_gaps
        if on is None:
            on = broker_may_pass_over(consumer, epochs_topic(self.app))
        if not on:
            return None
        return GapAudit(
            lambda: make_consumer(self.kafka, group_id=self.app, **{"fetch.wait.max.ms": 5})
        )

    def _output(self, exactly_once: bool) -> Output:
        """The attempt's producer(s): one at-least-once; in exactly-once mode one transactional
        id per worker slot (so a newer instance fences this one), two producers taking turns
        when commits overlap processing (see raystream._runtime.pipeline)."""
        hooks = self.metrics.client_config()
        pad = epochs_topic(self.app) if exactly_once else None

        def make(txn_id: str | None) -> OutputSink:
            return OutputSink(self.kafka, transactional_id=txn_id, pad_topic=pad, **hooks)

        txn_id = f"{self.app}-{self.slot}"
        if exactly_once and self.runtime.overlap_commits:
            return PipelinedOutput(make, txn_id)
        return make(txn_id if exactly_once else None)

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
        self, a: Assignment, out: Output, store: CheckpointStore
    ) -> tuple[list[_Task], dict[tuple[str, int], list[TaskRunner]]]:
        """The assignment's tasks, and which of them each fetched partition feeds: a
        co-partitioned source partition feeds its task, a global table's partition every task
        whose sub-topology reads it."""
        tasks: list[_Task] = []
        routes: dict[tuple[str, int], list[TaskRunner]] = defaultdict(list)
        dlq = self.runtime.dlq_topic
        for task_id in a.tasks:
            runner = TaskRunner(
                self.app,
                task_id,
                self.plan,
                out,
                dlq_topic=lambda topic: dlq.format(topic=topic),
                provenance=lambda: [],
            )
            runner.provenance = _provenance(runner, a.generation)
            st = self.plan.subtopologies[task_id.subtopology]
            own = [(topic, task_id.partition) for topic in st.source_topics]
            for tp in own:
                routes[tp].append(runner)
            for topic in st.global_topics:
                if topic not in a.partitions:
                    raise RaystreamError(f"no partition count for global table topic {topic!r}")
                for p in range(a.partitions[topic]):
                    routes[(topic, p)].append(runner)
            ck = TaskCheckpointer(store, runner, self.runtime.checkpoint_compact_every)
            tasks.append(_Task(runner, ck, own, a.task_index[task_id]))
        return tasks, dict(routes)

    def _recover(
        self,
        consumer: Consumer,
        tasks: list[_Task],
        owned: list[tuple[str, int]],
        routes: dict[tuple[str, int], list[TaskRunner]],
        a: Assignment,
    ) -> dict[tuple[str, int], int]:
        """Restore each task from the epoch Kafka committed for it and return where every owned
        partition starts. Without a committed epoch: streams start at their committed offset,
        tables at their beginning (loaded again; records below the committed offset were
        reported already, so they are not dead-lettered twice)."""
        topic = epochs_topic(self.app)
        markers = [
            TopicPartition(topic, p)
            for t in tasks
            for p in (*marker_partitions(t.index), *count_partitions(t.index))
        ]
        tps = [TopicPartition(t, p) for t, p in owned] + markers
        try:
            got = consumer.committed(tps, timeout=30) if tps else []
        except _RdKafkaException as exc:
            raise RaystreamError(f"cannot read committed offsets: {exc}") from exc
        committed = {(tp.topic, tp.partition): tp.offset for tp in got}
        tables = self._changelog_topics()
        reset = 0 if self.runtime.auto_offset_reset == "earliest" else _OFFSET_END
        positions: dict[tuple[str, int], int] = {}
        for t in tasks:
            e_part, a_part = marker_partitions(t.index)
            epoch, attempt = committed.get((topic, e_part), -1), committed.get((topic, a_part), -1)
            if epoch > 0 and t.checkpointer.stateful:
                manifest = t.checkpointer.restore((epoch, attempt))
                self._check_offsets(t, manifest.offsets, committed)
            t.runner.epoch = t.recovered_epoch = max(epoch, 0)
            if epoch > 0:
                n_in, n_out, n_dead = (
                    max(committed.get((topic, p), 0), 0) for p in count_partitions(t.index)
                )
                t.counted_before = (n_in, n_out, n_dead)
            for tp in t.partitions:
                off = committed.get(tp, -1)
                if tp[0] in tables and not (epoch > 0 and t.checkpointer.stateful):
                    positions[tp] = 0
                    t.bootstrap.append(tp)
                    if off > 0:
                        for runner in routes[tp]:
                            runner.replayed_below[tp] = off
                else:
                    positions[tp] = off if off >= 0 else reset
            t.committed = {tp: positions[tp] for tp in t.partitions}
        if any(off == _OFFSET_END for off in positions.values()):
            ends = end_offsets(self.kafka, [tp for tp, off in positions.items() if off < 0])
            positions.update(ends)
        return positions

    @staticmethod
    def _check_offsets(
        t: _Task, saved: dict[str, int], committed: dict[tuple[str, int], int]
    ) -> None:
        for tp in t.partitions:
            want = saved.get(_tp_name(tp), 0)
            got = max(committed.get(tp, -1), 0)
            if want != got:
                raise CheckpointError(
                    f"task {t.runner.task}: the committed epoch's checkpoint says {tp[0]}[{tp[1]}] "
                    f"is at {want} but Kafka's committed offset is {got}; were the group's offsets "
                    "reset by hand? Reset the checkpoints too, or run the app under a new name"
                )

    def _bootstrap(
        self,
        consumer: Consumer,
        tasks: list[_Task],
        routes: dict[tuple[str, int], list[TaskRunner]],
        positions: dict[tuple[str, int], int],
        global_positions: dict[tuple[str, int], int],
    ) -> None:
        """Load the table partitions that start from their beginning (and every global-table
        partition) to their current end before any stream record is processed."""
        boot = {tp: positions[tp] for t in tasks for tp in t.bootstrap}
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
                _dispatch(msgs, routes, positions, global_positions, self._audit)
            else:
                _skip_control_records(consumer, positions, self._audit)
                _skip_control_records(consumer, global_positions, self._audit)
        log.info(
            "worker %d: loaded %d table partition(s) in %.2fs",
            self.slot,
            len(ends),
            time.monotonic() - started,
        )

    def _commit(
        self,
        consumer: Consumer,
        out: Output,
        tasks: list[_Task],
        positions: dict[tuple[str, int], int],
        a: Assignment,
        report: Callable[[], None],
    ) -> None:
        """End the epoch of every task that did something: checkpoint its state, then commit
        outputs, input offsets and the tasks' (epoch, attempt) together (one Kafka transaction
        in exactly-once mode; flush then commit in at-least-once mode).

        With overlapped commits the transaction is committed in the background: the previous
        one is settled first, and this one is confirmed (recorded and reported) by the next
        :meth:`_settle`. Otherwise it is confirmed here."""
        with self._waiting_on_kafka("committing an epoch"):
            self._settle(out, report)
            started = time.monotonic()
            written, offsets = self._commit_tasks(consumer, out, tasks, positions, a)
        finished = [str(t.runner.task) for t in tasks if t.runner.finished]
        if not written:  # the loop is alive and nothing is owed: that counts as committed
            self._done.update(finished)
            self._report.committed_at = time.time()
            if time.monotonic() - self._last_report >= _REPORT_EVERY_S:
                self._last_report = time.monotonic()
                report()
            return
        runners = [t.runner for t in tasks]
        epoch = _Epoch(
            written,
            max(r.epoch for r in runners),
            (
                sum(r.counters.records_in for r in runners),
                sum(r.counters.records_out for r in runners),
                sum(r.counters.dead_letters for r in runners),
            ),
            {str(t.runner.task): (t.runner.epoch, _counted(t)) for t in written},
            self.metrics.take_stamps(t.runner for t in written),
            started,
            finished,
            {(tp.topic, tp.partition): tp.offset for tp in offsets},
        )
        if isinstance(out, PipelinedOutput):
            self._unconfirmed = epoch
        else:
            self._confirm(epoch, report)

    def _settle(self, out: Output, report: Callable[[], None]) -> None:
        """Wait for the epoch committing in the background, if any, and confirm it; a failed
        commit raises here (the attempt then restarts from the last confirmed epoch)."""
        if self._unconfirmed is None or not isinstance(out, PipelinedOutput):
            return
        with self._waiting_on_kafka("committing an epoch"):
            out.settle()
        epoch, self._unconfirmed = self._unconfirmed, None
        self._confirm(epoch, report)

    def _confirm(self, epoch: _Epoch, report: Callable[[], None]) -> None:
        """An epoch is committed: record it, collect old checkpoints, tell the coordinator the
        counts it committed (a light report, or a full one every _REPORT_EVERY_S). The run's
        totals come from the tasks' committed counts (see Coordinator.totals)."""
        now = time.monotonic()
        self._counts = epoch.counts
        self._task_counts.update(epoch.task_counts)
        self._confirmed.update(epoch.offsets)
        self._done.update(epoch.finished)
        self._report.committed_at = time.time()
        self._report.epoch = epoch.number
        self.metrics.committed(epoch.stamps, now - epoch.started)
        for t in epoch.tasks:
            if (
                t.checkpointer.head is not None
                and t.runner.epoch % _GC_EVERY == 0
                and now - t.gc_at >= _GC_MIN_S
            ):
                t.gc_at = now
                self._collector.submit(
                    t.checkpointer.store,
                    str(t.runner.task),
                    t.checkpointer.head.ref,
                    self.runtime.checkpoint_retain,
                )
        if now - self._last_report >= _REPORT_EVERY_S:
            self._last_report = now
            report()
        else:
            self._set_counts(self._report)
            self._send_report(dataclasses.replace(self._report, metrics={}))

    def _commit_tasks(
        self,
        consumer: Consumer,
        out: Output,
        tasks: list[_Task],
        positions: dict[tuple[str, int], int],
        a: Assignment,
    ) -> tuple[list[_Task], list[TopicPartition]]:
        """The body of :meth:`_commit`; returns the tasks whose epoch was committed, and the
        offsets committed.

        Checkpoints are written before the outputs are flushed: librdkafka sends the epoch's
        records meanwhile, so the two waits overlap. A checkpoint of an epoch that then fails
        to commit is never read (recovery loads the epoch Kafka committed). The tasks' epoch
        numbers advance here, when the epoch ends (the next epoch's outputs name the next
        number), even if the commit is confirmed later."""
        topic = epochs_topic(self.app)
        offsets: list[TopicPartition] = []
        written: list[_Task] = []
        for t in tasks:
            now = {tp: positions[tp] for tp in t.partitions}
            produced = t.runner.counters.records_out + t.runner.counters.dead_letters
            if now == t.committed and produced == t.produced and not t.checkpointer.dirty():
                continue
            epoch = t.runner.epoch + 1
            if t.checkpointer.stateful:
                t.checkpointer.write(
                    (epoch, a.generation), {_tp_name(tp): o for tp, o in now.items()}
                )
            e_part, a_part = marker_partitions(t.index)
            offsets += [
                TopicPartition(topic, e_part, epoch),
                TopicPartition(topic, a_part, a.generation),
            ]
            offsets += [
                TopicPartition(topic, p, n)
                for p, n in zip(count_partitions(t.index), _counted(t), strict=True)
            ]
            offsets += [TopicPartition(tp[0], tp[1], o) for tp, o in now.items() if o > 0]
            written.append(t)
        if self._audit is not None:
            # A record the broker let the consumer pass over fails the attempt here, before
            # the commit (this epoch's checkpoints are then never read: see above), and the
            # next attempt reads again from the last commit.
            self._audit.check()
        out.flush()
        if offsets:
            if out.transactional:
                out.commit_epoch(offsets, consumer.consumer_group_metadata())
            else:
                _commit_offsets(consumer, offsets)
        for t in written:
            t.runner.epoch += 1
            t.committed = {tp: positions[tp] for tp in t.partitions}
            t.produced = t.runner.counters.records_out + t.runner.counters.dead_letters
        return written, offsets

    def _await_committed(self, consumer: Consumer, tasks: list[_Task], a: Assignment) -> None:
        """Wait until Kafka answers this attempt's last commit to a reader: every task's
        offsets and epoch markers (see wait_committed). Whoever reads them once the attempt
        has drained (the next attempt's recovery, the view server, ``wait_for_views``) must
        see the whole last epoch: half of one would make recovery refuse the checkpoint, or
        the views miss the final answer of a bounded run. A commit still unreadable after a second
        is written again, as a plain offset commit of the same offsets (the embedded broker can
        leave a transaction's offsets behind: see wait_committed). That changes nothing in
        Kafka's state: the transaction that committed them has returned."""
        topic = epochs_topic(self.app)
        want: dict[tuple[str, int], int] = {}
        for t in tasks:
            if t.runner.epoch == 0:
                continue  # never committed
            e_part, a_part = marker_partitions(t.index)
            want[(topic, e_part)] = t.runner.epoch
            if t.runner.epoch > t.recovered_epoch:
                want[(topic, a_part)] = a.generation
            want.update({tp: o for tp, o in t.committed.items() if o > 0})
            if t.runner.epoch > t.recovered_epoch:
                counts = zip(count_partitions(t.index), _counted(t), strict=True)
                want.update({(topic, p): n for p, n in counts})

        again = [TopicPartition(t, p, o) for (t, p), o in want.items()]
        with self._waiting_on_kafka("reading back the last commit"):
            wait_committed(
                consumer,
                want,
                what=f"worker {self.slot}'s last commit",
                nudge=functools.partial(_commit_offsets, consumer, again),
            )

    def _make_readable(self, consumer: Consumer) -> None:
        """Check that the commits confirmed by the previous call (a second or more ago) read
        back; if not, write the offsets of every commit confirmed since the attempt started
        again (a plain offset commit).

        The embedded broker applies a transaction's offsets only once every overlapping open
        transaction has ended, and can leave them behind for as long as the job runs (see
        wait_committed): the views, which read the committed epochs, then stand still. On
        Apache Kafka a commit reads back within milliseconds, so this only costs one offset
        fetch a second. Writing confirmed offsets again changes nothing in Kafka's state: the
        transactions that committed them have returned. Called between commits only, so no
        commit of this worker can land in between and be undone; a newer attempt's commit
        (this worker is then a zombie) is never written over."""
        want, old = self._confirmed, self._confirmed_checked
        self._confirmed_checked = dict(want)
        if not old:
            return
        try:
            got = consumer.committed([TopicPartition(t, p) for t, p in old], timeout=10)
        except _RdKafkaException as exc:
            log.warning("worker %d: cannot read committed offsets back: %s", self.slot, exc)
            return
        behind = [tp for tp in got if tp.offset < old[(tp.topic, tp.partition)]]
        if not behind or any(tp.offset > want[(tp.topic, tp.partition)] for tp in got):
            return
        log.info(
            "worker %d: a commit confirmed a second ago is not readable (%s[%d] at %d, not %d): "
            "writing the confirmed offsets again",
            self.slot,
            behind[0].topic,
            behind[0].partition,
            behind[0].offset,
            old[(behind[0].topic, behind[0].partition)],
        )
        try:
            _commit_offsets(consumer, [TopicPartition(t, p, o) for (t, p), o in want.items()])
        except RaystreamError as exc:
            log.warning("worker %d: writing offsets again failed: %s", self.slot, exc)

    def _update_report(
        self,
        tasks: list[TaskRunner],
        positions: dict[tuple[str, int], int],
        consumer: Consumer,
    ) -> None:
        r = self._report
        self._set_counts(r)
        # Only once committed: the coordinator then reads the ends of the topics they write
        # (Coordinator.known_ends), which must hold their last records.
        r.done_tasks = [str(t.task) for t in tasks if str(t.task) in self._done]
        r.positions = {f"{t}[{p}]": off for (t, p), off in positions.items()}
        lag: dict[str, int] = {}
        for (t, p), off in positions.items():
            _, high = consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            if high >= 0:
                lag[f"{t}[{p}]"] = max(high - off, 0)
        r.lag = lag
        r.metrics = self.metrics.observe(tasks, lag, r.state)
        r.broker_error = self.metrics.broker_error
        self._send_report()

    def _set_counts(self, report: WorkerReport) -> None:
        """The attempt's records in, out and dead-lettered, and every task's committed
        counts, as of the last confirmed epoch."""
        report.records_in, report.records_out, report.dead_letters = self._counts
        g = self._generation
        report.task_counts = {
            task: (g, epoch, *counts) for task, (epoch, counts) in self._task_counts.items()
        }

    def _send_report(self, report: WorkerReport | None = None) -> None:
        """Send ``report`` (default: the worker's own) with the next sequence number. The
        coordinator runs calls out of order, so the number is how it knows the newest."""
        with self._seq_lock:
            self._seq += 1
            if report is None:
                report = self._report
                report.seq = self._seq  # what stop() returns is then the last report sent
            else:
                report = dataclasses.replace(report, seq=self._seq)
            try:
                self.coordinator.worker_report.remote(report)
            except Exception:  # the coordinator is gone: the app is stopping
                log.debug("worker %d: coordinator unreachable", self.slot)


def _commit_offsets(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """A plain (non-transactional) offset commit of the consumer's group, waited for."""
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except _RdKafkaException as exc:
        raise RaystreamError(f"offset commit failed: {exc}") from exc


def _retry_wait(backoff: float, ran_s: float) -> float:
    """The wait before the next attempt: ``backoff`` (doubled after every failure, up to
    _MAX_BACKOFF_S), or the first wait again after an attempt that ran a while: a rare error
    (say a batch the embedded broker let the consumer pass over) must not cost the longest
    wait for ever after."""
    return _FIRST_BACKOFF_S if ran_s >= _HEALTHY_ATTEMPT_S else backoff


def _counted(t: _Task) -> tuple[int, int, int]:
    """The task's records in, out and dead-lettered since the app first ran."""
    c, before = t.runner.counters, t.counted_before
    return before[0] + c.records_in, before[1] + c.records_out, before[2] + c.dead_letters


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
    audit: GapAudit | None = None,
) -> None:
    """Run fetched messages through the tasks they feed; advance the positions (noting the
    offsets skipped on the way in ``audit``, when given: a global table's too, since an update
    passed over would leave the table stale for the rest of the attempt)."""
    for tp, incoming in _group(msgs).items():
        for runner in routes[tp]:
            runner.process(incoming)
        at = positions if tp in positions else global_positions
        if audit is not None:
            audit.note(tp, at[tp], incoming.offsets)
        at[tp] = incoming.offsets[-1] + 1


def _assign(consumer: Consumer, positions: dict[tuple[str, int], int]) -> None:
    """Fetch exactly ``positions`` (replacing the previous assignment). Position 0 means the
    beginning, wherever the log starts now (retention or compaction may have removed offset 0)."""
    consumer.assign(
        [
            TopicPartition(t, p, off if off > 0 else _OFFSET_BEGINNING)
            for (t, p), off in positions.items()
        ]
    )


def _provenance(runner: TaskRunner, generation: int) -> Callable[[], hdr.Headers]:
    """Headers for a task's outputs, naming the epoch they belong to (the one after the last
    committed) and the attempt that wrote them."""
    tag = str(runner.task)
    return lambda: hdr.provenance(tag, runner.epoch + 1, generation)


def _tp_name(tp: tuple[str, int]) -> str:
    return f"{tp[0]}[{tp[1]}]"


def _skip_control_records(
    consumer: Consumer, positions: dict[tuple[str, int], int], audit: GapAudit | None = None
) -> None:
    """Move positions past transaction markers: nothing is pending, so the consumer's own position
    (which steps over control records) is where processing stands. (``audit`` notes the offsets
    stepped over: a broker that passed over a batch would hide it here too.)"""
    tps = [TopicPartition(t, p) for t, p in positions]
    for tp in consumer.position(tps):
        key = (tp.topic, tp.partition)
        if tp.offset > positions[key]:
            if audit is not None:
                audit.note_jump(key, positions[key], tp.offset)
            positions[key] = tp.offset


def _node_id() -> str:
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return "?"
