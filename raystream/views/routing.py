"""Point lookups: ``app.get(view, key)`` asks the worker that owns the key's task.

Which task holds a key is the partition its records were in. raystream's producers partition by
``murmur2(key bytes)`` (the Java client's default; see :mod:`raystream._kafka.partitioner`), so
the task is computed, not searched for: one call to one worker. That is certain when the view's
records came through topics raystream wrote (a ``group_by`` repartition topic). When they come
straight from an input topic, another producer may have partitioned differently (librdkafka's
default is CRC32-based), so a miss there asks the workers of the view's other tasks too, in
parallel: a hit stays one call, an unknown key costs one call per worker.

What a lookup may see: the key's rows in the owning worker's memory after its last processed
batch, i.e. fresher than any committed epoch (SQL's snapshots), and per key only (two lookups
are not a snapshot of each other). Those rows may include records whose epoch is not committed
yet: after a failure the task restarts from its last committed epoch and may answer an older
value until it has processed that input again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from raystream._kafka.partitioner import partition_for
from raystream.errors import RuntimeStateError, ViewQueryError
from raystream.serde import encode_key
from raystream.topology.nodes import SourceSpec
from raystream.topology.plan import Plan

#: Seconds a lookup waits for the coordinator or a worker.
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ViewRoute:
    """Where one view's rows live: its tasks (task ``i`` reads partition ``i``), and whether the
    key's partition is certain (every input of its sub-topology written by raystream)."""

    tasks: tuple[str, ...]
    certain: bool

    def owner_task(self, key: Any) -> str:
        """The task that holds ``key`` when its records were partitioned with murmur2."""
        raw = encode_key(key[0] if isinstance(key, tuple) else key)
        if raw is None:
            raise ViewQueryError("a point lookup needs a key (records with a null key are kept)")
        return self.tasks[partition_for(raw, len(self.tasks))]


def routes(plan: Plan, view_tasks: dict[str, tuple[str, ...]]) -> dict[str, ViewRoute]:
    """The route of every view of ``plan`` (``view_tasks``: a view's tasks, in partition order)."""
    certain: dict[str, bool] = {}
    for st in plan.subtopologies:
        sources = [
            s
            for n in st.node_ids
            if isinstance(s := plan.graph.nodes[n], SourceSpec) and s.topic in st.source_topics
        ]
        internal = bool(sources) and all(s.internal for s in sources)
        for n in st.node_ids:
            spec = plan.graph.nodes[n]
            if getattr(spec, "kind", "") == "view":
                certain[spec.view] = internal  # type: ignore[union-attr]
    out = {}
    for view, tasks in view_tasks.items():
        ordered = tuple(sorted(tasks, key=lambda t: int(t.rsplit("_", 1)[1])))
        out[view] = ViewRoute(ordered, certain.get(view, False))
    return out


def lookup(app: str, view: str, route: ViewRoute, key: Any) -> list[dict[str, Any]]:
    """The rows of ``key`` in ``view`` of the running ``app`` (see the module doc)."""
    if not isinstance(key, Hashable):
        raise ViewQueryError(f"a view key is a scalar (str, int...), got {type(key).__name__}")
    first = route.owner_task(key)
    owners = _owners(app)
    answer = _ask(app, owners, view, key, [first])
    if first in answer["rows"]:
        return list(answer["rows"][first])
    recovering = [] if first in answer["held"] else [first]
    rest = [t for t in route.tasks if t != first]
    if route.certain or not rest:
        return _none_or_recovering(app, view, recovering)
    by_slot: dict[int, list[str]] = defaultdict(list)
    for t in rest:
        by_slot[_owner(owners, t)].append(t)
    refs = {
        slot: _worker(app, slot).get_view_rows.remote(view, key, tasks)
        for slot, tasks in by_slot.items()
    }
    rows: list[dict[str, Any]] = []
    for slot, ref in refs.items():
        got = _get(ref, f"worker {slot} of {app!r}")
        recovering += [t for t in by_slot[slot] if t not in got["held"]]
        for t in sorted(got["rows"]):
            rows.extend(got["rows"][t])
    if rows:
        return rows
    return _none_or_recovering(app, view, recovering)


def _none_or_recovering(app: str, view: str, recovering: Sequence[str]) -> list[dict[str, Any]]:
    if recovering:
        raise RuntimeStateError(
            f"{app!r}: task(s) {', '.join(sorted(recovering))} of view {view!r} are recovering "
            "or moving between workers; retry the lookup in a moment"
        )
    return []


def _owners(app: str) -> dict[str, int]:
    import ray

    from raystream._runtime.coordinator import coordinator_name
    from raystream._runtime.driver import NAMESPACE

    try:
        coord = ray.get_actor(coordinator_name(app), namespace=NAMESPACE)
    except ValueError as exc:
        raise RuntimeStateError(f"app {app!r} is not running (no coordinator)") from exc
    status = _get(coord.status.remote(), f"the coordinator of {app!r}")
    return {task: int(slot) for slot, tasks in status["assignments"].items() for task in tasks}


def _owner(owners: dict[str, int], task: str) -> int:
    if task not in owners:
        raise RuntimeStateError(f"task {task} has no worker right now (rescaling?); retry")
    return owners[task]


def _worker(app: str, slot: int) -> Any:
    import ray

    from raystream._runtime.coordinator import worker_name
    from raystream._runtime.driver import NAMESPACE

    try:
        return ray.get_actor(worker_name(app, slot), namespace=NAMESPACE)
    except ValueError as exc:
        raise RuntimeStateError(f"worker {slot} of {app!r} is gone (stopping?)") from exc


def _ask(app: str, owners: dict[str, int], view: str, key: Any, tasks: list[str]) -> Any:
    slot = _owner(owners, tasks[0])
    return _get(_worker(app, slot).get_view_rows.remote(view, key, tasks), f"worker {slot}")


def _get(ref: Any, who: str) -> Any:
    import ray

    try:
        return ray.get(ref, timeout=TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as exc:
        raise RuntimeStateError(
            f"{who} did not answer within {TIMEOUT_S:.0f}s (restarting?); retry the lookup"
        ) from exc
    except ray.exceptions.RayActorError as exc:
        raise RuntimeStateError(f"{who} is gone or restarting: {exc}; retry the lookup") from exc
