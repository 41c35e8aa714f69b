"""The view server: one Ray actor per app (``raystream:<app>:views``) answering SQL over views.

A thread refreshes the snapshot every ``view_refresh_ms``: it reads the committed epochs from
Kafka and the checkpoint files (never the workers), so queries never block processing. Each
query runs on the latest snapshot, or on a time-travel snapshot built for it. Point lookups
(:meth:`ViewServer.get`) are the exception: they ask the worker owning the key (see
:mod:`raystream.views.routing`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import pyarrow as pa

from raystream.config import KafkaConfig, RuntimeConfig
from raystream.errors import RaystreamError, ViewQueryError
from raystream.state.checkpoint import CheckpointStore
from raystream.topology.plan import Plan, TaskId
from raystream.views.engine import SqlEngine, SqlLimits
from raystream.views.http import HttpServer
from raystream.views.routing import lookup, routes
from raystream.views.snapshot import (
    EPOCHS_TABLE,
    OFFSETS_TABLE,
    Snapshot,
    SnapshotLoader,
    ViewCatalog,
    committed_heads,
)

log = logging.getLogger("raystream.views")

_SERVER = re.compile(r"^raystream:(?P<app>.+):views$")


def view_server_name(app: str) -> str:
    """The Ray actor name of an app's view server."""
    return f"raystream:{app}:views"


class ViewServer:
    """Serves SQL over one app's views (a Ray actor; see the module doc)."""

    def __init__(
        self,
        app: str,
        plan: Plan,
        tasks: list[TaskId],
        kafka: KafkaConfig,
        runtime: RuntimeConfig,
    ) -> None:
        self.app = app
        self.kafka = kafka
        self.runtime = runtime
        self.catalog = ViewCatalog.of(plan, tasks)
        self.routes = routes(plan, self.catalog.views)
        self.store = CheckpointStore(runtime.checkpoints or "", app)
        self.loader = SnapshotLoader(self.store, self.catalog)
        self.limits = SqlLimits(
            timeout_s=runtime.sql_timeout_ms / 1000.0, max_rows=runtime.sql_max_rows
        )
        self.engine = SqlEngine(self.limits)
        self.snapshot: Snapshot | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="views-refresh", daemon=True)
        self._thread.start()
        self.http: HttpServer | None = None
        if runtime.http_port is not None:
            self.http = HttpServer(
                self, runtime.http_host, runtime.http_port, runtime.http_token
            ).start()

    # -- refreshing --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.runtime.view_refresh_ms / 1000.0):
            try:
                self.refresh()
            except Exception as exc:  # the broker or storage is away: keep the last snapshot
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("view refresh failed: %s", exc)

    def refresh(self) -> Snapshot:
        """Read the committed epochs now and publish them to the SQL engine."""
        with self._lock:
            heads = committed_heads(self.kafka, self.app, self.catalog.tasks)
            snap = self.loader.load(heads)
            self.engine.publish(snap.tables)
            self.snapshot = snap
            self.last_error = None
            return snap

    # -- queries -----------------------------------------------------------------------------
    def sql(self, query: str, as_of: float | None = None, max_rows: int | None = None) -> pa.Table:
        """Run ``query`` on the latest snapshot, or on the committed state at ``as_of``."""
        if as_of is None:
            return self.engine.query(query, max_rows)
        with self._lock:
            heads = committed_heads(self.kafka, self.app, self.catalog.tasks)
            snap = SnapshotLoader(self.store, self.catalog).load(heads, as_of=as_of)
        engine = SqlEngine(self.limits)
        try:
            engine.publish(snap.tables)
            return engine.query(query, max_rows)
        finally:
            engine.close()

    def get(self, view: str, key: Any) -> list[dict[str, Any]]:
        """Point lookup: the rows of ``key`` in ``view`` from the worker that owns the key, as
        of its last processed batch (see :mod:`raystream.views.routing` for what it may see)."""
        route = self.routes.get(view)
        if route is None:
            known = ", ".join(sorted(self.routes)) or "none"
            raise ViewQueryError(f"no view named {view!r} (views: {known})")
        return lookup(self.app, view, route, key)

    def views(self) -> list[dict[str, Any]]:
        """Every view: name, columns, rows, the epochs it holds and how fresh it is."""
        snap = self.snapshot
        if snap is None:
            return []
        out = []
        now = time.time()
        for name, tasks in self.catalog.views.items():
            table = snap.tables[name]
            held = [snap.epochs[t] for t in tasks if t in snap.epochs]
            newest = max((m.created_at for m in held), default=None)
            out.append(
                {
                    "name": name,
                    "columns": [f"{f.name} {f.type}" for f in table.schema],
                    "rows": table.num_rows,
                    "tasks": len(tasks),
                    "tasks_committed": len(held),
                    "epochs": {m.task: m.epoch for m in held},
                    "freshness_s": None if newest is None else round(now - newest, 3),
                }
            )
        for name in (EPOCHS_TABLE, OFFSETS_TABLE):
            t = snap.tables[name]
            out.append(
                {
                    "name": name,
                    "columns": [f"{f.name} {f.type}" for f in t.schema],
                    "rows": t.num_rows,
                    "system": True,
                }
            )
        return out

    def info(self) -> dict[str, Any]:
        """Where the HTTP endpoint is, and the last refresh error."""
        return {
            "app": self.app,
            "http": None if self.http is None else self.http.url,
            "last_error": self.last_error,
            "snapshot_at": None if self.snapshot is None else self.snapshot.taken_at,
        }

    def close(self) -> None:
        """Stop refreshing and serving."""
        self._stop.set()
        if self.http is not None:
            self.http.stop()
        self.engine.close()


def serving_apps() -> list[str]:
    """The apps with a view server running on the connected Ray cluster, sorted."""
    import ray

    from raystream._runtime.driver import NAMESPACE

    apps = set()
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if isinstance(entry, dict):
            if entry.get("namespace") != NAMESPACE:
                continue
            name = str(entry.get("name", ""))
        else:
            name = str(entry)
        match = _SERVER.match(name)
        if match:
            apps.add(match["app"])
    return sorted(apps)


def connect(app: str | None) -> Any:
    """The view server actor of a running app (Ray must be initialised); with ``app`` None,
    the only one running."""
    import ray

    from raystream._runtime.driver import NAMESPACE

    if app is None:
        apps = serving_apps()
        if len(apps) != 1:
            listed = ", ".join(apps) if apps else "none"
            raise RaystreamError(
                f"{len(apps)} apps serve views on this Ray cluster ({listed}): name one with "
                "--app (or RAY_ADDRESS for another cluster)"
            )
        app = apps[0]
    try:
        return ray.get_actor(view_server_name(app), namespace=NAMESPACE)
    except ValueError as exc:
        listed = ", ".join(serving_apps()) or "none"
        raise RaystreamError(
            f"app {app!r} has no view server running (apps serving views: {listed}): is it "
            "started (app.start / ray job submit), and does it materialize a view?"
        ) from exc


def call(server: Any, method: str, *args: Any) -> Any:
    """Call a view-server method and wait; raystream errors raised there are raised here."""
    import ray

    try:
        return ray.get(getattr(server, method).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RaystreamError):
            raise exc.cause from None
        raise
    except ray.exceptions.RayActorError as exc:
        raise RaystreamError(f"the view server stopped: {exc}") from exc


def sql(app: str, query: str, *, as_of: float | None = None) -> pa.Table:
    """Run ``query`` over the views of the running app ``app`` (from any Ray driver)."""
    from raystream._runtime.driver import ensure_ray

    ensure_ray(None)
    result: pa.Table = call(connect(app), "sql", query, as_of)
    return result


def get(app: str, view: str, key: Any) -> list[dict[str, Any]]:
    """Point lookup in view ``view`` of the running app ``app`` (from any Ray driver): the rows
    of ``key`` (one, or one per window; ``[]`` when unknown) as the worker owning the key holds
    them now. Fresher than SQL, but may include records of an epoch not yet committed (see
    :meth:`raystream.App.get`)."""
    from raystream._runtime.driver import ensure_ray

    ensure_ray(None)
    rows: list[dict[str, Any]] = call(connect(app), "get", view, key)
    return rows
