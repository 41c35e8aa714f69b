"""The local development stack: an embedded broker and a Ray head that outlive the CLI.

``raystream dev up`` starts both and records them in ``<home>/dev.json``; ``dev status`` checks
them; ``dev down`` stops them by PID. The runtime finds the stack with :func:`dev_addresses`
when the user gives no broker address. ``home`` is always passed in explicitly: only the CLI
reads ``RAYSTREAM_HOME``.

Files under ``home``: ``dev.json`` (state), ``dev.lock`` (serialises up/down),
``broker.log``, ``ray-head.log`` (the ``ray start`` launcher) and ``ray-auth-token`` (the Ray
token clients need: the head listens on loopback only, and requires token authentication so that
other users of the machine cannot run code in it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raystream.dev.broker import EmbeddedBroker, pid_alive, stop_pid, wait_for_metadata
from raystream.dev.ray_head import (
    LocalRayHead,
    RayHeadInfo,
    head_healthy,
    http_ok,
    process_start_ticks,
    ray_client_env,
    same_process,
    session_processes,
    stop_ray_head,
)
from raystream.errors import DevStackError

STATE_FILE = "dev.json"
STATE_VERSION = 1

#: Environment variable naming the brokers, printed by ``dev up`` for the user's shell.
BROKERS_ENV = "RAYSTREAM_BROKERS"

Notify = Callable[[str], None]


@dataclass(frozen=True)
class DevState:
    """A running dev stack, as recorded in ``<home>/dev.json``."""

    broker_bootstrap: str
    broker_pid: int
    broker_start_ticks: int
    broker_log: str
    ray: RayHeadInfo
    ray_log: str
    auth_token_path: str
    started_at: str

    @property
    def ray_address(self) -> str:
        """The Ray GCS address (``RAY_ADDRESS``)."""
        return self.ray.gcs_address

    @property
    def dashboard_url(self) -> str:
        """The Ray dashboard URL (also the Jobs API address)."""
        return self.ray.dashboard_url

    def environment(self) -> dict[str, str]:
        """The variables a shell or the runtime needs to use this stack."""
        return {
            BROKERS_ENV: self.broker_bootstrap,
            **ray_client_env(self.ray_address, Path(self.auth_token_path)),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to the state file."""
        return {
            "version": STATE_VERSION,
            "started_at": self.started_at,
            "broker": {
                "bootstrap": self.broker_bootstrap,
                "pid": self.broker_pid,
                "start_ticks": self.broker_start_ticks,
                "log": self.broker_log,
            },
            "ray": {**self.ray.to_dict(), "log": self.ray_log},
            "auth_token_path": self.auth_token_path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DevState:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError`` on a malformed file."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {data.get('version')!r}")
        broker = data["broker"]
        return cls(
            broker_bootstrap=str(broker["bootstrap"]),
            broker_pid=int(broker["pid"]),
            broker_start_ticks=int(broker["start_ticks"]),
            broker_log=str(broker["log"]),
            ray=RayHeadInfo.from_dict(data["ray"]),
            ray_log=str(data["ray"]["log"]),
            auth_token_path=str(data["auth_token_path"]),
            started_at=str(data["started_at"]),
        )


@dataclass(frozen=True)
class DevStatus:
    """What ``dev status`` found: each part's process and whether it answers."""

    state: DevState | None
    broker_process: bool = False
    broker_answers: bool = False
    ray_process: bool = False
    ray_healthy: bool = False
    dashboard_answers: bool = False

    @property
    def up(self) -> bool:
        """True when every part runs and answers."""
        return self.state is not None and all(
            (
                self.broker_process,
                self.broker_answers,
                self.ray_process,
                self.ray_healthy,
                self.dashboard_answers,
            )
        )

    def problems(self) -> list[str]:
        """Human-readable reasons why the stack is not fully up (empty when it is)."""
        if self.state is None:
            return ["no dev stack is recorded: run `raystream dev up`"]
        checks = [
            (self.broker_process, f"broker process {self.state.broker_pid} is not running"),
            (self.broker_answers, f"broker {self.state.broker_bootstrap} does not answer"),
            (self.ray_process, f"Ray launcher {self.state.ray.launcher_pid} is not running"),
            (self.ray_healthy, f"Ray GCS/raylet at {self.state.ray_address} is not healthy"),
            (self.dashboard_answers, f"dashboard {self.state.dashboard_url} does not answer"),
        ]
        return [message for ok, message in checks if not ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``dev status --json``."""
        return {
            "up": self.up,
            "broker": {
                "process": self.broker_process,
                "answers": self.broker_answers,
            },
            "ray": {"process": self.ray_process, "healthy": self.ray_healthy},
            "dashboard": {"answers": self.dashboard_answers},
            "problems": self.problems(),
            "state": self.state.to_dict() if self.state else None,
            "environment": self.state.environment() if self.state else None,
        }


def read_state(home: Path) -> DevState | None:
    """The recorded stack, or None when there is none. A malformed file raises DevStackError."""
    path = home / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DevStackError(
            f"cannot read {path}: {exc}; check for leftover processes, then delete the file"
        ) from exc
    try:
        return DevState.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DevStackError(
            f"{path} is not a raystream dev state file ({exc!r}); check for leftover "
            "processes, then delete the file"
        ) from exc


def _write_state(home: Path, state: DevState) -> None:
    path = home / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise ``dev up``/``dev down`` on one home across processes."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "dev.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _broker_answers(bootstrap: str, timeout: float) -> bool:
    try:
        wait_for_metadata(bootstrap, timeout)
    except DevStackError:
        return False
    return True


def _probe(state: DevState, timeout: float = 2.0) -> DevStatus:
    broker_process = same_process(state.broker_pid, state.broker_start_ticks)
    ray_process = same_process(state.ray.launcher_pid, state.ray.launcher_start_ticks)
    return DevStatus(
        state=state,
        broker_process=broker_process,
        broker_answers=broker_process and _broker_answers(state.broker_bootstrap, timeout),
        ray_process=ray_process,
        ray_healthy=ray_process and head_healthy(state.ray, timeout),
        dashboard_answers=ray_process and http_ok(state.dashboard_url, timeout),
    )


def _stop(state: DevState, timeout: float, keep_logs: bool) -> None:
    """Stop both parts of a recorded stack by PID; verify nothing of theirs remains."""
    errors: list[str] = []
    try:
        stop_ray_head(state.ray, timeout, keep_temp_dir=keep_logs)
    except DevStackError as exc:
        errors.append(str(exc))
    if same_process(state.broker_pid, state.broker_start_ticks):
        stop_pid(state.broker_pid, timeout)
    leftovers = session_processes(state.broker_pid, state.broker_start_ticks)
    for pid in leftovers:
        stop_pid(pid, 2.0)
    if still := [pid for pid in leftovers if pid_alive(pid)]:
        errors.append(f"broker processes {still} did not stop; stop them by hand")
    if errors:
        raise DevStackError("; ".join(errors))


def dev_up(
    home: Path,
    *,
    num_cpus: int | None = None,
    timeout: float = 60.0,
    notify: Notify | None = None,
) -> DevState:
    """Start the dev stack under ``home`` and return its state; idempotent.

    When the recorded stack is up, returns it unchanged. When the state file is stale (a part is
    dead or does not answer), stops what is left of it and starts afresh. ``notify`` receives a
    line for each of these decisions. The broker and the Ray head outlive this process.
    """
    say = notify or (lambda _message: None)
    with _locked(home):
        old = read_state(home)
        if old is not None:
            status = _probe(old)
            if status.up:
                say("the raystream dev stack is already up")
                return old
            say("found a stale dev stack (" + "; ".join(status.problems()) + "): cleaning it up")
            _stop(old, timeout=10.0, keep_logs=False)
            (home / STATE_FILE).unlink(missing_ok=True)
        return _start(home, num_cpus, timeout)


def _start(home: Path, num_cpus: int | None, timeout: float) -> DevState:
    broker = EmbeddedBroker(log_path=home / "broker.log")
    head = LocalRayHead(
        num_cpus=num_cpus,
        log_path=home / "ray-head.log",
        auth_token_path=home / "ray-auth-token",
    )
    try:
        broker.start(timeout=min(timeout, 30.0))
        assert broker.pid is not None
        # Jobs submitted to this head find the dev broker without being told.
        head.env = {BROKERS_ENV: broker.bootstrap, "RAYSTREAM_HOME": str(home)}
        head.start(timeout=timeout)
        assert head.info is not None and head.auth_token_path is not None
        state = DevState(
            broker_bootstrap=broker.bootstrap,
            broker_pid=broker.pid,
            broker_start_ticks=process_start_ticks(broker.pid) or 0,
            broker_log=str(broker.log_path),
            ray=head.info,
            ray_log=str(head.log_path),
            auth_token_path=str(head.auth_token_path),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write_state(home, state)
    except BaseException:
        head.stop()
        broker.stop()
        raise
    return state


def dev_status(home: Path, timeout: float = 2.0) -> DevStatus:
    """Check the recorded stack: each process alive, the broker answers, Ray is healthy."""
    state = read_state(home)
    return DevStatus(state=None) if state is None else _probe(state, timeout)


def dev_down(home: Path, *, timeout: float = 20.0, keep_logs: bool = False) -> DevState | None:
    """Stop the recorded stack and remove its state file; returns what was stopped (or None).

    Nothing recorded is not an error. The Ray temp dir (Ray's logs) is removed unless
    ``keep_logs``. When a process cannot be stopped the state file stays, so a retry finds it.
    """
    with _locked(home):
        state = read_state(home)
        if state is None:
            return None
        _stop(state, timeout, keep_logs)
        (home / STATE_FILE).unlink(missing_ok=True)
        return state


def dev_addresses(home: Path) -> tuple[str, str] | None:
    """``(broker bootstrap, Ray address)`` of the running dev stack, or None when it is not up.

    Cheap (no network): checks that both recorded processes are alive.
    """
    state = _running_state(home)
    return (state.broker_bootstrap, state.ray_address) if state else None


def dev_environment(home: Path) -> dict[str, str] | None:
    """The environment (brokers, ``RAY_ADDRESS``, Ray auth) of the running dev stack, or None.

    A client must set the Ray variables before ``ray.init()``: the head requires its token.
    """
    state = _running_state(home)
    return state.environment() if state else None


def _running_state(home: Path) -> DevState | None:
    try:
        state = read_state(home)
    except DevStackError:
        return None
    if state is None:
        return None
    alive = same_process(state.broker_pid, state.broker_start_ticks) and same_process(
        state.ray.launcher_pid, state.ray.launcher_start_ticks
    )
    return state if alive else None


def uptime_seconds(state: DevState) -> float:
    """Seconds since the stack was started."""
    started = datetime.fromisoformat(state.started_at)
    return max(0.0, time.time() - started.timestamp())
