"""Find the apps running on the connected Ray cluster, and ask their coordinators for status."""

from __future__ import annotations

import re
from typing import Any

from raystream._runtime.driver import NAMESPACE
from raystream.errors import RuntimeStateError

_COORDINATOR = re.compile(r"^raystream:(?P<app>.+):coordinator$")


def running_apps() -> list[str]:
    """Names of the apps whose coordinator actor is alive, sorted."""
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    apps = []
    for entry in names:
        if isinstance(entry, dict):
            if entry.get("namespace") != NAMESPACE:
                continue
            name = entry.get("name", "")
        else:
            name = str(entry)
        match = _COORDINATOR.match(name)
        if match:
            apps.append(match["app"])
    return sorted(set(apps))


def pick_app(app: str | None) -> str:
    """``app`` when it runs; the only running app when ``app`` is None; else a clear error."""
    apps = running_apps()
    if app is not None:
        if app not in apps:
            known = ", ".join(apps) or "none"
            raise RuntimeStateError(
                f"app {app!r} is not running on this Ray cluster (running: {known}); check "
                "the name, or RAY_ADDRESS / --address for the cluster it runs on"
            )
        return app
    if not apps:
        raise RuntimeStateError(
            "no raystream app is running on this Ray cluster; start one (app.run / ray job "
            "submit), or point RAY_ADDRESS / --address at the cluster it runs on"
        )
    if len(apps) > 1:
        raise RuntimeStateError(
            f"several apps are running ({', '.join(apps)}): pick one with --app"
        )
    return apps[0]


def app_status(app: str, timeout: float = 10.0) -> dict[str, Any]:
    """The coordinator's :meth:`~raystream._runtime.coordinator.Coordinator.status` of ``app``."""
    import ray

    from raystream._runtime.coordinator import coordinator_name

    try:
        coord = ray.get_actor(coordinator_name(app), namespace=NAMESPACE)
        got: Any = ray.get(coord.status.remote(), timeout=timeout)
    except (ValueError, ray.exceptions.RayActorError) as exc:
        raise RuntimeStateError(f"app {app!r} stopped or cannot be reached: {exc}") from exc
    except ray.exceptions.GetTimeoutError as exc:
        raise RuntimeStateError(
            f"app {app!r}: its coordinator did not answer within {timeout:.0f}s"
        ) from exc
    return dict(got)
