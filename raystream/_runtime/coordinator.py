"""The coordinator actor: plans tasks, creates workers, hands out assignments, follows progress.

One per app, named ``raystream:<app>:coordinator`` in the ``raystream`` namespace. There is no
consumer-group rebalancing: the coordinator owns the task -> worker mapping.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

import ray

from raystream._kafka.admin import Topics, end_offsets
from raystream._runtime.assignment import assign
from raystream._runtime.driver import NAMESPACE
from raystream._runtime.messages import Assignment, WorkerReport
from raystream._runtime.worker import Worker
from raystream.config import KafkaConfig, RuntimeConfig
from raystream.errors import RuntimeStateError
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
        self._state = "created"
        self._started_at = 0.0

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
        if self.bounded:
            self._ends = end_offsets(
                self.kafka, [(t, p) for t in external for p in range(partitions[t])]
            )
        self._assignments = assign(tasks, self.n_workers)
        me = ray.get_runtime_context().current_actor
        for slot in range(self.n_workers):
            self._workers[slot] = (
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
        self._state = "running"
        self._started_at = time.time()
        return {"tasks": [str(t) for t in tasks], "workers": self.n_workers}

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
        return Assignment(slot, attempt, tasks, ends, dict(self._partitions))

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
        """Record a worker's state."""
        with self._lock:
            self._reports[report.slot] = report
            if report.fatal and self._state == "running":
                self._state = "failed"

    # -- called by the driver ----------------------------------------------------------------
    def wait(self, timeout: float) -> str:
        """Block up to ``timeout`` seconds; returns the app state (running/finished/failed/...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if (
                    self._state == "running"
                    and self.bounded
                    and len(self._reports) == len(self._workers)
                    and all(r.state == "finished" for r in self._reports.values())
                ):
                    self._state = "finished"
                if self._state != "running":
                    return self._state
            time.sleep(0.05)
        return self._state

    def status(self) -> dict[str, Any]:
        """The app's state, task ownership and every worker's latest report."""
        with self._lock:
            return {
                "app": self.app,
                "state": self._state,
                "bounded": self.bounded,
                "started_at": self._started_at,
                "assignments": {s: [str(t) for t in ts] for s, ts in self._assignments.items()},
                "attempts": dict(self._attempts),
                "workers": {s: asdict(r) for s, r in self._reports.items()},
            }

    def worker_pids(self) -> dict[int, int]:
        """Process id of every worker (asks each worker; for tests and status)."""
        refs = {slot: w.pid.remote() for slot, w in self._workers.items()}
        return {slot: ray.get(ref, timeout=30) for slot, ref in refs.items()}

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Drain every worker (finish the batch, commit), then end them."""
        if self._state == "created":
            raise RuntimeStateError("the app was never started")
        refs = [w.stop.remote(timeout) for w in self._workers.values()]
        try:
            ray.get(refs, timeout=timeout + 5)
        except Exception as exc:  # a worker that cannot drain is killed below; nothing committed
            log.warning("draining workers failed: %s", exc)
        for w in self._workers.values():
            ray.kill(w, no_restart=True)
        with self._lock:
            if self._state == "running":
                self._state = "stopped"
        return self.status()
