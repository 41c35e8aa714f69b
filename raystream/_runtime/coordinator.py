"""The coordinator actor: plans tasks, creates workers, hands out assignments, follows progress.

One per app, named ``raystream:<app>:coordinator`` in the ``raystream`` namespace. There is no
consumer-group rebalancing: the coordinator owns the task -> worker mapping.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import ray

from raystream._kafka.admin import Topics, committed_offsets, end_offsets
from raystream._runtime.assignment import assign
from raystream._runtime.driver import NAMESPACE
from raystream._runtime.epochs import (
    PARTITIONS_PER_TASK,
    count_partitions,
    epochs_partitions,
    epochs_topic,
)
from raystream._runtime.messages import Assignment, WorkerReport
from raystream._runtime.worker import Worker
from raystream.config import KafkaConfig, RuntimeConfig
from raystream.errors import ConfigError, RuntimeStateError, TopologyError
from raystream.metrics import logcontext
from raystream.metrics.aggregate import AppMetrics
from raystream.metrics.server import MetricsServer
from raystream.topology.nodes import SinkSpec
from raystream.topology.plan import Plan, TaskId

log = logging.getLogger("raystream.coordinator")


def coordinator_name(app: str) -> str:
    """The Ray actor name of an app's coordinator."""
    return f"raystream:{app}:coordinator"


def worker_name(app: str, slot: int) -> str:
    """The Ray actor name of an app's worker in ``slot``."""
    return f"raystream:{app}:worker-{slot}"


class Coordinator:
    """Runs one app on a set of worker actors."""

    def __init__(
        self,
        app: str,
        plan: Plan,
        kafka: KafkaConfig,
        runtime: RuntimeConfig,
        workers: int,
        bounded: bool,
    ) -> None:
        self.app = app
        self.plan = plan
        self.kafka = kafka
        self.runtime = runtime
        self.n_workers = workers
        self.bounded = bounded
        self._lock = threading.Lock()
        self._assignments: dict[int, tuple[TaskId, ...]] = {}
        self._attempts: dict[int, int] = {}
        self._reports: dict[int, WorkerReport] = {}
        self._workers: dict[int, Any] = {}
        self._ends: dict[tuple[str, int], int] | None = None
        self._partitions: dict[str, int] = {}
        self._task_index: dict[TaskId, int] = {}
        self._last_generation = 0
        self._state = "created"
        self._started_at = 0.0
        self._watchdog: threading.Thread | None = None
        #: Slots being replaced or rescaled: the watchdog leaves them alone.
        self._quiet: set[int] = set()
        #: Per slot, the first attempt whose reports count: a rescale restarts every slot, and
        #: a report of an earlier attempt (a "finished" from before it) must not end the app.
        self._counts_from: dict[int, int] = {}
        #: Per slot, the (attempt, seq) of the newest report handled. Ray runs this actor's
        #: calls out of order (it is threaded), so a worker's reports can arrive in any order:
        #: an older one must not replace a newer one (a "running" handled after the "finished"
        #: sent just after it would leave the slot running forever, and the watchdog would
        #: restart a worker that had finished).
        self._newest: dict[int, tuple[int, int]] = {}
        #: By task: (generation, epoch, records in, out, dead-lettered) committed, from the
        #: newest attempt's latest report; and the counts committed before this run started.
        #: The run's totals are the difference (see totals()).
        self._task_counts: dict[str, tuple[int, int, int, int, int]] = {}
        self._counted_before: dict[str, tuple[int, int, int]] = {}
        #: Every worker's metrics merged, served on the app's Prometheus endpoint.
        self.metrics = AppMetrics(app)
        self._metrics_server: MetricsServer | None = None
        logcontext.install(runtime.log_level, runtime.log_format)
        logcontext.bind(app=app)

    def start(self) -> dict[str, Any]:
        """Check topics, create the missing output topics, assign tasks, start the workers."""
        topics = Topics(self.kafka)
        external = topics.require(self.plan.external_source_topics())
        partitions = self.plan.resolve_partitions(external)
        tasks = self.plan.tasks(partitions)
        self._partitions = partitions
        if self.n_workers > len(tasks):
            log.warning(
                "%d workers for %d tasks: %d will idle",
                self.n_workers,
                len(tasks),
                self.n_workers - len(tasks),
            )
        topics.ensure(self._output_topics(partitions))
        self._task_index = {t: i for i, t in enumerate(tasks)}
        self._ensure_epochs_topic(topics, len(tasks))
        self._counted_before = self._committed_counts()
        if self.bounded:
            # A topic the app also writes ends when its writers finish (as internal topics do;
            # see known_ends), not where it stood at start.
            written = set(self.plan.sink_topics())
            self._ends = end_offsets(
                self.kafka,
                [(t, p) for t in external if t not in written for p in range(partitions[t])],
            )
        self._assignments = assign(tasks, self.n_workers)
        if self.runtime.metrics_port is not None:
            self._metrics_server = MetricsServer(
                self.metrics, self.runtime.metrics_host, self.runtime.metrics_port
            )
            log.info("app %s: Prometheus metrics at %s", self.app, self._metrics_server.url)
        for slot in range(self.n_workers):
            self._workers[slot] = self._new_worker(slot)
        self._state = "running"
        self._started_at = time.time()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        return {
            "tasks": [str(t) for t in tasks],
            "workers": self.n_workers,
            "metrics_url": self.metrics_url(),
        }

    def metrics_url(self) -> str | None:
        """Where the app's Prometheus endpoint listens (None: turned off)."""
        return self._metrics_server.url if self._metrics_server is not None else None

    def _new_worker(self, slot: int) -> Any:
        me = ray.get_runtime_context().current_actor
        return (
            ray.remote(Worker)
            .options(
                name=worker_name(self.app, slot),
                namespace=NAMESPACE,
                num_cpus=self.runtime.worker_num_cpus,
                max_restarts=-1,
                max_task_retries=-1,
                max_concurrency=4,
            )
            .remote(self.app, slot, self.plan, self.kafka, self.runtime, me)
        )

    def _ensure_epochs_topic(self, topics: Topics, tasks: int) -> None:
        topic = epochs_topic(self.app)
        wanted = epochs_partitions(tasks)
        have = topics.partitions().get(topic)
        if have is None:
            topics.ensure({topic: wanted})
        elif have < wanted:
            raise TopologyError(
                f"the app now has {tasks} tasks but its epochs topic {topic!r} has room for "
                f"{have // PARTITIONS_PER_TASK}: input partition counts changed since the app "
                "last ran (or it last ran on an earlier build of raystream, whose epochs "
                "topic had 2 partitions per task). Start it under a new name (its state "
                "starts empty), or restore the partition counts"
            )

    def _committed_counts(self) -> dict[str, tuple[int, int, int]]:
        """Every task's records in, out and dead-lettered as committed before this run."""
        topic = epochs_topic(self.app)
        parts = {str(t): count_partitions(i) for t, i in self._task_index.items()}
        got = committed_offsets(
            self.kafka, self.app, [(topic, p) for ps in parts.values() for p in ps], timeout=30.0
        )
        counts: dict[str, tuple[int, int, int]] = {}
        for task, (p_in, p_out, p_dead) in parts.items():
            n_in, n_out, n_dead = (got.get((topic, p)) or 0 for p in (p_in, p_out, p_dead))
            counts[task] = (n_in, n_out, n_dead)
        return counts

    def _watch(self) -> None:
        """Replace workers that stopped committing (hung, or cut off) while running."""
        limit = self.runtime.stall_timeout_ms / 1000.0
        while self._state == "running":
            time.sleep(min(limit / 4, 5.0))
            now = time.time()
            with self._lock:
                stalled = [
                    slot
                    for slot, r in self._reports.items()
                    if slot not in self._quiet
                    and r.state in ("running", "bootstrapping")
                    and r.committed_at
                    and now - r.committed_at > limit
                ]
            for slot in stalled:
                log.warning("worker %d has not committed for %.0fs: restarting it", slot, limit)
                with self._lock:
                    self._reports.pop(slot, None)
                    restarted = self._attempts.get(slot, -1) + 1
                try:
                    ray.kill(self._workers[slot], no_restart=False)  # Ray starts it again
                except Exception as exc:
                    log.warning("could not restart worker %d: %s", slot, exc)
                    continue
                with self._lock:
                    # From now on only the restarted attempt's reports say how the slot is (a
                    # late one from the killed process would bring its old state back).
                    self._counts_from[slot] = max(self._counts_from.get(slot, -1), restarted)

    def _output_topics(self, partitions: dict[str, int]) -> dict[str, int]:
        wanted: dict[str, int] = {}
        default = self.runtime.default_partitions or max(partitions.values(), default=1)
        for spec in self.plan.graph.nodes.values():
            if isinstance(spec, SinkSpec):
                wanted[spec.topic] = partitions.get(spec.topic) or spec.partitions or default
        for topic in self.plan.source_topics():
            wanted.setdefault(self.runtime.dlq_topic.format(topic=topic), partitions[topic])
        return wanted

    # -- called by workers -------------------------------------------------------------------
    def assignment(self, slot: int) -> Assignment:
        """The tasks of ``slot``; every call is a new attempt (a restarted worker asks again)."""
        with self._lock:
            attempt = self._attempts.get(slot, -1) + 1
            self._attempts[slot] = attempt
            tasks = self._assignments.get(slot, ())
            ends = None
            if self._ends is not None:
                mine = {
                    (topic, t.partition)
                    for t in tasks
                    for topic in self.plan.subtopologies[t.subtopology].source_topics
                }
                ends = {tp: off for tp, off in self._ends.items() if tp in mine}
            generation = max(self._last_generation + 1, int(time.time() * 1000) * 1000)
            self._last_generation = generation
        return Assignment(
            slot, attempt, tasks, ends, dict(self._partitions), dict(self._task_index), generation
        )

    def task_order(self) -> list[TaskId]:
        """Every task, in the order that gives each its epoch-marker partitions."""
        return sorted(self._task_index, key=self._task_index.__getitem__)

    def known_ends(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """End offsets of ``partitions`` known so far in a bounded run. An internal topic's end
        becomes known once every task of every sub-topology writing it has finished."""
        if self._ends is None:
            return {}
        for topic in {t for t, _ in partitions if (t, 0) not in self._ends}:
            if self._writers_done(topic):
                ends = end_offsets(self.kafka, [(topic, p) for p in range(self._partitions[topic])])
                with self._lock:
                    self._ends.update(ends)
        return {tp: self._ends[tp] for tp in partitions if tp in self._ends}

    def _writers_done(self, topic: str) -> bool:
        with self._lock:
            done = {t for r in self._reports.values() for t in r.done_tasks}
        return all(
            f"{st.id}_{p}" in done
            for st in self.plan.writers(topic)
            for p in range(self._partitions[st.source_topics[0]])
        )

    def worker_report(self, report: WorkerReport) -> None:
        """Record a worker's state and metrics, unless a newer report of the slot was handled
        already (Ray runs these calls out of order)."""
        with self._lock:
            self._count(report)
            order = (report.attempt, report.seq)
            if order <= self._newest.get(report.slot, (-2, 0)):
                log.debug(
                    "worker %d: report %s is not newer than %s: ignored",
                    report.slot,
                    order,
                    self._newest[report.slot],
                )
                return
            self._newest[report.slot] = order
            if report.metrics:
                self.metrics.update(report.slot, report.pid, report.metrics)
            if report.slot not in self._workers or report.attempt < self._counts_from.get(
                report.slot, -1
            ):
                return  # sent by a slot or an attempt that a rescale or the watchdog ended
            self._reports[report.slot] = dataclasses.replace(report, metrics={})
            if report.fatal and self._state == "running":
                self._state = "failed"

    def _count(self, report: WorkerReport) -> None:
        """Take the report's committed counts of each task, unless a newer attempt's (a higher
        generation), or a later epoch of the same attempt, was taken already."""
        for task, counts in report.task_counts.items():
            if counts[:2] > self._task_counts.get(task, (-1, -1))[:2]:
                self._task_counts[task] = counts

    def totals(self) -> dict[str, int]:
        """The run's records in, out and dead-lettered, over every attempt of every slot.

        Each task commits its counts since the app first ran with its offsets (in the same
        transaction in exactly-once mode), and every attempt starts from what was committed:
        the totals are what the newest attempt of each task has committed, less what was
        committed before the run. Records an attempt processed but did not commit are counted
        once, by the attempt that processes them again, and a worker that dies before it
        reports a commit leaves it to its successor to report. For a bounded run over N input
        records this is N. (The Prometheus counters, like Kafka Streams' and Flink's, count
        every processing, reprocessing included.)
        """
        with self._lock:
            latest = {task: c[2:] for task, c in self._task_counts.items()}
            before = dict(self._counted_before)
        totals = [0, 0, 0]
        for task, counts in latest.items():
            base = before.get(task, (0, 0, 0))
            for i in range(3):
                totals[i] += counts[i] - base[i]
        return {"records_in": totals[0], "records_out": totals[1], "dead_letters": totals[2]}

    # -- called by the driver ----------------------------------------------------------------
    def wait(self, timeout: float) -> str:
        """Block up to ``timeout`` seconds; returns the app state (running/finished/failed/...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if (
                    self._state == "running"
                    and self.bounded
                    and set(self._reports) == set(self._workers)
                    and all(r.state == "finished" for r in self._reports.values())
                ):
                    self._state = "finished"
                if self._state != "running":
                    return self._state
            time.sleep(0.05)
        return self._state

    def status(self) -> dict[str, Any]:
        """The app's state, task ownership, every worker's latest report, per-task figures
        (counts, rates, lag, epoch, dead letters) and the metrics endpoint."""
        tasks = self.metrics.task_summary()
        totals = self.totals()
        with self._lock:
            return {
                "app": self.app,
                "state": self._state,
                "coordinator_node": ray.get_runtime_context().get_node_id(),
                "bounded": self.bounded,
                "started_at": self._started_at,
                "metrics_url": self.metrics_url(),
                "assignments": {s: [str(t) for t in ts] for s, ts in self._assignments.items()},
                "attempts": dict(self._attempts),
                "workers": {s: dataclasses.asdict(r) for s, r in self._reports.items()},
                "tasks": tasks,
                "totals": totals,
            }

    def worker_pids(self) -> dict[int, int]:
        """Process id of every worker (asks each worker; for tests and status)."""
        refs = {slot: w.pid.remote() for slot, w in self._workers.items()}
        return {slot: ray.get(ref, timeout=30) for slot, ref in refs.items()}

    def rescale(self, workers: int, timeout: float = 60.0) -> dict[str, Any]:
        """Run the app on ``workers`` workers from now on. Every worker first drains (finishes
        its batch and commits its epoch, state included), then tasks are spread anew and each
        worker recovers its tasks from their committed epochs: nothing is lost or doubled."""
        if workers < 1:
            raise ConfigError(f"workers: must be a positive integer, got {workers!r}")
        if self._state != "running":
            raise RuntimeStateError(f"cannot rescale an app that is {self._state}")
        old = self.n_workers
        with self._lock:
            self._quiet = set(range(max(old, workers)))
        try:
            drained = ray.get(
                [w.stop.remote(timeout) for w in self._workers.values()], timeout=timeout + 5
            )
            for last in drained:  # its report may still be on the way: counted here, once
                self.worker_report(last)
            with self._lock:
                self._assignments = assign(list(self._task_index), workers)
                # Every slot starts a new attempt: until it reports from that attempt, its
                # last report (maybe "finished" with its old tasks) says nothing of the new ones.
                self._counts_from = {s: self._attempts.get(s, -1) + 1 for s in range(workers)}
                self._reports = {}
            for slot in range(workers, old):
                ray.kill(self._workers.pop(slot), no_restart=True)
            self.metrics.retire(range(workers, old))
            ray.get([self._workers[s].resume.remote() for s in range(min(old, workers))])
            for slot in range(old, workers):
                self._workers[slot] = self._new_worker(slot)
            self.n_workers = workers
        finally:
            with self._lock:
                self._quiet = set()
        log.info("rescaled from %d to %d workers", old, workers)
        return self.status()

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Drain every worker (finish the batch, commit), then end them."""
        if self._state == "created":
            raise RuntimeStateError("the app was never started")
        refs = [w.stop.remote(timeout) for w in self._workers.values()]
        try:
            drained = ray.get(refs, timeout=timeout + 5)
        except Exception as exc:  # a worker that cannot drain is killed below; nothing committed
            log.warning("draining workers failed: %s", exc)
        else:
            # Each worker's last report may still be on the way (calls run out of order): take
            # it from stop()'s answer so the status below holds it.
            for last in drained:
                self.worker_report(last)
        for w in self._workers.values():
            ray.kill(w, no_restart=True)
        with self._lock:
            if self._state == "running":
                self._state = "stopped"
        status = self.status()
        if self._metrics_server is not None:
            self._metrics_server.close()
        return status
