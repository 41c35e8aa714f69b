"""The driver side of a run: connect to Ray, start the coordinator, wait, stop, clean up."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from raystream.config import KafkaConfig, RuntimeConfig, ray_address_from_env
from raystream.errors import RaystreamError, RuntimeStateError
from raystream.topology.plan import Plan

log = logging.getLogger("raystream.driver")

# Ray is imported on first use, not with raystream: Ray reads its address, auth and loopback
# settings from the environment once, at import, and ensure_ray() may still have to set them.
NAMESPACE = "raystream"


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray: ``address``, else the cluster this process runs in (``ray job submit``,
    RAY_ADDRESS or a local ``ray start``), else a new local Ray."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    if address is None:
        address = ray_address_from_env()
    if address and address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        _stay_on_loopback()
    import ray

    ray.init(address=address, namespace=NAMESPACE, log_to_driver=True, configure_logging=False)


def _stay_on_loopback() -> None:
    """Connect to a loopback Ray head as it is: on Linux a Ray client otherwise replaces
    127.0.0.1 by the machine's address, where a loopback-only head does not listen. Ray reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once at import, so set both the variable (for processes
    this one starts) and the constant it was read into."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:  # imported already (by the user): fix the value it read
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


@dataclass
class RunResult:
    """How a run ended, with the run's totals over every worker attempt.

    ``records_in`` / ``records_out`` / ``dead_letters`` count the records whose processing was
    committed during the run, each once: a worker restarted after a crash (or by the stall
    watchdog) resumes from its last commit, and what it processes again counts once, so a
    bounded run over N input records reports ``records_in == N`` however often workers were
    restarted. They come from counts each task commits with its offsets. The Prometheus
    counters count every processing, reprocessing included (as Kafka Streams' and Flink's
    metrics do). ``status["workers"]`` holds each slot's latest report, whose counts are those
    of its current attempt only.
    """

    state: str
    records_in: int
    records_out: int
    dead_letters: int
    seconds: float
    status: dict[str, Any]


class RunningApp:
    """A handle on an app running on Ray: wait for it, look at it, stop it."""

    def __init__(
        self,
        app: str,
        plan: Plan,
        kafka: KafkaConfig,
        runtime: RuntimeConfig,
        workers: int,
        bounded: bool,
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from raystream._runtime.coordinator import Coordinator, coordinator_name

        self.app = app
        self._t0 = time.monotonic()
        actor: Any = ray.remote(Coordinator)
        self._coord: Any = actor.options(
            name=coordinator_name(app),
            namespace=NAMESPACE,
            num_cpus=0,
            max_concurrency=32,
            max_restarts=0,
            # Next to the driver (the head, usually): losing a worker node must not take it.
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=ray.get_runtime_context().get_node_id(), soft=True
            ),
        ).remote(app, plan, kafka, runtime, workers, bounded)
        try:
            started = ray.get(self._coord.start.remote())
        except ray.exceptions.RayTaskError as exc:
            self._kill()
            cause = exc.cause if isinstance(exc.cause, RaystreamError) else None
            if cause is not None:
                raise cause from None
            raise
        #: The app's Prometheus endpoint (None when ``metrics_port=None``).
        self.metrics_url: str | None = started.get("metrics_url")
        if self.metrics_url:
            log.info("app %s: Prometheus metrics at %s", app, self.metrics_url)
        self._views: Any = None
        if any(getattr(s, "kind", "") == "view" for s in plan.graph.nodes.values()):
            self._views = self._start_views(app, plan, kafka, runtime)
        self._ended = False

    def _start_views(self, app: str, plan: Plan, kafka: KafkaConfig, runtime: RuntimeConfig) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from raystream.views.server import ViewServer, view_server_name

        tasks = ray.get(self._coord.task_order.remote())
        actor: Any = ray.remote(ViewServer)
        server = actor.options(
            name=view_server_name(app),
            namespace=NAMESPACE,
            num_cpus=0,
            max_restarts=3,
            max_concurrency=16,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=ray.get_runtime_context().get_node_id(), soft=True
            ),
        ).remote(app, plan, tasks, kafka, runtime)
        try:
            ray.get(server.info.remote())
        except ray.exceptions.RayActorError as exc:
            self._kill()
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RaystreamError):
                raise cause from None
            raise
        return server

    def sql(self, query: str, as_of: float | None = None) -> Any:
        """Run SQL over the app's views (see :meth:`raystream.App.sql`)."""
        import ray

        from raystream.errors import ViewQueryError

        if self._views is None:
            raise RuntimeStateError("this app materializes no view: add .materialize(name)")
        try:
            return ray.get(self._views.sql.remote(query, as_of))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ViewQueryError):
                raise exc.cause from None
            raise

    def get(self, view: str, key: Any) -> list[dict[str, Any]]:
        """Point lookup in a view (see :meth:`raystream.App.get`)."""
        from raystream.views.server import call

        if self._views is None:
            raise RuntimeStateError("this app materializes no view: add .materialize(name)")
        rows: list[dict[str, Any]] = call(self._views, "get", view, key)
        return rows

    def views(self) -> list[dict[str, Any]]:
        """The app's views: name, columns, rows, epochs, freshness."""
        import ray

        if self._views is None:
            return []
        out: list[dict[str, Any]] = ray.get(self._views.views.remote())
        return out

    def view_info(self) -> dict[str, Any]:
        """Where the view server's HTTP endpoint listens (``http``), and its last error."""
        import ray

        if self._views is None:
            return {}
        info: dict[str, Any] = ray.get(self._views.info.remote())
        return info

    def wait(self, timeout: float | None = None) -> str:
        """Wait until the app finishes (bounded), fails or ``timeout`` passes; returns its state."""
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 1.0 if deadline is None else max(min(1.0, deadline - time.monotonic()), 0)
            state: str = ray.get(self._coord.wait.remote(step))
            if state != "running" or (deadline is not None and time.monotonic() >= deadline):
                return state

    def status(self) -> dict[str, Any]:
        """The coordinator's view: state, assignments and worker reports."""
        import ray

        status: dict[str, Any] = ray.get(self._coord.status.remote())
        return status

    def worker_pids(self) -> dict[int, int]:
        """Process id of each worker slot."""
        import ray

        pids: dict[int, int] = ray.get(self._coord.worker_pids.remote())
        return pids

    def rescale(self, workers: int, timeout: float = 60.0) -> dict[str, Any]:
        """Change the number of workers of the running app (tasks move with their state)."""
        import ray

        status: dict[str, Any] = ray.get(self._coord.rescale.remote(workers, timeout))
        return status

    def stop(self, timeout: float = 60.0) -> RunResult:
        """Drain and commit every worker, end the actors, and summarise the run."""
        import ray

        if self._ended:
            raise RuntimeStateError("this run has already been stopped")
        try:
            status: dict[str, Any] = ray.get(self._coord.stop.remote(timeout))
        finally:
            self._kill()
        totals = status["totals"]
        return RunResult(
            state=status["state"],
            records_in=totals["records_in"],
            records_out=totals["records_out"],
            dead_letters=totals["dead_letters"],
            seconds=time.monotonic() - self._t0,
            status=status,
        )

    def _kill(self) -> None:
        import ray

        self._ended = True
        views = getattr(self, "_views", None)
        if views is not None:
            try:
                ray.get(views.close.remote(), timeout=10)
            except Exception:  # gone already
                log.debug("view server of %s already gone", self.app)
            ray.kill(views, no_restart=True)
        try:
            ray.kill(self._coord, no_restart=True)
        except Exception:  # already gone
            log.debug("coordinator of %s already gone", self.app)
