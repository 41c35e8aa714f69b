"""A local Ray head (GCS, raylet, dashboard) that raystream starts, owns and stops by PID.

The head runs as ``ray start --head --block ...`` in a new session: the launcher stays in the
foreground and stops every process it started when it receives SIGTERM. Every port is chosen free
on this machine, and the Ray temp dir is private to this head, so several heads (other sessions,
tests) can share a machine. :func:`stop_ray_head` finds leftovers by the launcher's session, a
marker in their environment (``RAYSTREAM_DEV_TOKEN``) and the temp dir, never by name: it touches
nothing else. ``ray stop`` is never used: it stops every Ray on the machine.

Authentication is always explicit: Ray (2.60 at least) turns token authentication on by itself when
``~/.ray/auth_token`` exists, which would make clients fail or succeed depending on that file.

Everything listens on loopback only. On Linux Ray replaces a loopback ``--node-ip-address`` by the
machine's address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which the head and its clients
therefore get (:func:`ray_client_env`). Ray's two fixed metrics ports (``DASHBOARD_METRIC_PORT``,
``AUTOSCALER_METRIC_PORT``) are moved to free ports too.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from raystream.dev.broker import pid_alive
from raystream.errors import DevStackError

#: Environment variable set on the launcher; every process of the head inherits it.
TOKEN_ENV = "RAYSTREAM_DEV_TOKEN"

#: Keeps Ray's node address on 127.0.0.1 (a head and its clients must agree).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

#: Every head's temp dir is ``<tmp>/raystream-<uid>-<gcs port>``.
TEMP_DIR_PREFIX = "raystream-"

#: Longest temp dir Ray accepts here: its plasma socket path must stay under ~107 characters.
MAX_TEMP_DIR_LEN = 44


@dataclass(frozen=True)
class RayHeadInfo:
    """What is needed to reach, check and stop a running head (serialisable to JSON)."""

    gcs_address: str
    dashboard_url: str
    launcher_pid: int
    launcher_start_ticks: int
    temp_dir: str
    token: str
    agent_url: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for a state file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RayHeadInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports free on ``host`` (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _stat_field(pid: int, field: int) -> int | None:
    """Numeric field ``field`` (1-based, as in proc(5)) of /proc/<pid>/stat; None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after the last ')', at field 3.
    return int(stat[stat.rfind(")") + 2 :].split()[field - 3])


def process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (None when it does not exist).

    A PID plus its start time names a process unambiguously, even after the PID is reused.
    """
    return _stat_field(pid, 22)


def same_process(pid: int, start_ticks: int) -> bool:
    """True when ``pid`` is alive and is the process that started at ``start_ticks``."""
    return pid_alive(pid) and process_start_ticks(pid) == start_ticks


def _read_proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def session_processes(leader_pid: int, leader_start_ticks: int) -> list[int]:
    """Live processes of the session led by ``leader_pid``, when that session is provably ours.

    A process started with ``start_new_session`` leads a session whose id is its PID. Members
    belong to it while the leader is the recorded process, or once the leader is gone (a new
    process reusing the PID would lead a new session only when it is alive itself).
    """
    ours = same_process(leader_pid, leader_start_ticks) or not pid_alive(leader_pid)
    if not ours:
        return []
    return [pid for pid in _all_pids() if _stat_field(pid, 6) == leader_pid and pid_alive(pid)]


def _all_pids() -> list[int]:
    me = os.getpid()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me]


def head_processes(info: RayHeadInfo) -> list[int]:
    """PIDs of the live processes of this head, never this process and never anything else.

    A process belongs to the head when it is in the launcher's session (see
    :func:`session_processes`), or its environment carries the head's token, or its command line
    names the head's temp dir. Ray renames some processes (setproctitle), which can blank their
    environment and command line: the session test catches those.
    """
    marker = f"{TOKEN_ENV}={info.token}".encode()
    needle = info.temp_dir.encode() if info.temp_dir else None
    found = set(session_processes(info.launcher_pid, info.launcher_start_ticks))
    for pid in _all_pids():
        if pid in found:
            continue
        if (
            marker in _read_proc(pid, "environ").split(b"\0")
            or bool(needle and needle in _read_proc(pid, "cmdline"))
        ) and pid_alive(pid):
            found.add(pid)
    return sorted(found)


class _StartClash(DevStackError):
    """A starting head lost a port to another process (worth a new try on other ports)."""


#: What a Ray process logs when a port it was given is taken.
_PORT_CLASH = re.compile(
    r"Failed to start the grpc server|Failed to bind to port|because it's already occupied"
)

#: Tries at starting a head before giving up (each on new ports).
_START_ATTEMPTS = 3


def _http_get(url: str, timeout: float) -> tuple[int, str] | None:
    """Status and body of ``url``; None when nothing answers; :class:`_StartClash` when a
    non-HTTP server (a gRPC port of some other process, say) answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except http.client.BadStatusLine as exc:
        if isinstance(exc, http.client.RemoteDisconnected):
            return None  # a server that closed the connection: starting up or going away
        raise _StartClash(f"{url} answered with something that is not HTTP") from exc
    except (OSError, urllib.error.URLError, ValueError, http.client.HTTPException):
        return None


def http_ok(url: str, timeout: float = 2.0, expect: str | None = None) -> bool:
    """True when ``url`` answers HTTP 200 (and its body contains ``expect`` when given)."""
    try:
        return _answered(_http_get(url, timeout), expect)
    except _StartClash:
        return False


def _answered(answer: tuple[int, str] | None, expect: str | None) -> bool:
    """Whether ``answer`` (of :func:`_http_get`) is a 200 whose body holds ``expect``."""
    return answer is not None and answer[0] == 200 and (expect is None or expect in answer[1])


def head_healthy(info: RayHeadInfo, timeout: float = 2.0) -> bool:
    """True when the launcher is alive, the GCS answers and the raylet is healthy.

    Uses the health endpoints KubeRay probes: the dashboard's ``/api/gcs_healthz`` (asks the GCS)
    and the dashboard agent's ``/api/local_raylet_healthz``.
    """
    try:
        return _healthy_or_clash(info, timeout)
    except _StartClash:
        return False


def _healthy_or_clash(info: RayHeadInfo, timeout: float) -> bool:
    """:func:`head_healthy` for a starting head, raising :class:`_StartClash` on a port clash."""
    if not same_process(info.launcher_pid, info.launcher_start_ticks):
        return False
    urls = (f"{info.dashboard_url}/api/gcs_healthz", f"{info.agent_url}/api/local_raylet_healthz")
    return all(_answered(_http_get(url, timeout), "success") for url in urls)


def _port_clash(temp_dir: Path, launcher_log: Path, log_from: int) -> str | None:
    """The first line where a process of a starting head says a port it was given is taken.

    The launcher's log may be shared with earlier heads (``raystream dev up`` appends to one
    file): only what this head wrote, from byte ``log_from`` on, counts."""
    logs = [(launcher_log, log_from)]
    logs += [(p, 0) for p in (temp_dir / "session_latest" / "logs").glob("*.[eol][ruo][rtg]")]
    for path, start_at in logs:
        try:
            with open(path, "rb") as fh:
                fh.seek(start_at)
                text = fh.read().decode(errors="replace")
        except OSError:
            continue
        if found := _PORT_CLASH.search(text):
            start = text.rfind("\n", 0, found.start()) + 1
            end = text.find("\n", found.end())
            return f"{path.name}: {text[start : end if end >= 0 else None][:400]}"
    return None


def _log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n  " + "\n  ".join(text)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float, proc: subprocess.Popen[bytes] | None) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.poll()  # reap our own child so it does not linger as a zombie
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def stop_ray_head(
    info: RayHeadInfo,
    timeout: float = 20.0,
    *,
    keep_temp_dir: bool = False,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Stop the head: SIGTERM its launcher, wait ``timeout``, then kill every leftover process.

    Leftovers are found by :func:`head_processes`, never by name. Removes the temp dir unless
    ``keep_temp_dir``. Raises :class:`DevStackError` when a process survives SIGKILL.
    """
    if same_process(info.launcher_pid, info.launcher_start_ticks):
        _signal(info.launcher_pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        _signal(info.launcher_pid, signal.SIGTERM)
        if _wait_gone([info.launcher_pid], timeout, proc):
            _signal(info.launcher_pid, signal.SIGKILL)
            _wait_gone([info.launcher_pid], 5.0, proc)
    leftovers = head_processes(info)
    for pid in leftovers:
        _signal(pid, signal.SIGTERM)
    leftovers = _wait_gone(leftovers, 3.0, None)
    for pid in leftovers:
        _signal(pid, signal.SIGKILL)
    survivors = _wait_gone(leftovers, 5.0, None)
    if survivors:
        raise DevStackError(
            f"Ray head processes {survivors} survived SIGKILL; check them with `ps -p "
            f"{','.join(map(str, survivors))}` and stop them by hand"
        )
    if not keep_temp_dir and Path(info.temp_dir).name.startswith(TEMP_DIR_PREFIX):
        shutil.rmtree(info.temp_dir, ignore_errors=True)


def ensure_auth_token(path: Path) -> None:
    """Create a random Ray auth token at ``path`` (readable by its owner only) unless present."""
    if path.exists() and path.read_text().strip():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))


def ray_auth_env(auth_token_path: Path | None) -> dict[str, str]:
    """The Ray authentication variables for a head or client (token mode, or disabled)."""
    if auth_token_path is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(auth_token_path)}


def ray_client_env(address: str, auth_token_path: Path | None) -> dict[str, str]:
    """Everything a client needs to reach a head: ``RAY_ADDRESS``, loopback mode, authentication.

    Without ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` a driver takes the machine's address as its
    own, finds no raylet there and never connects.
    """
    return {"RAY_ADDRESS": address, **LOOPBACK_ENV, **ray_auth_env(auth_token_path)}


def default_temp_dir(gcs_port: int) -> Path:
    """A Ray temp dir private to one head, short enough for Ray's unix sockets."""
    path = Path(tempfile.gettempdir()) / f"{TEMP_DIR_PREFIX}{os.getuid()}-{gcs_port}"
    if len(str(path)) > MAX_TEMP_DIR_LEN:
        raise DevStackError(
            f"Ray temp dir {path} is longer than {MAX_TEMP_DIR_LEN} characters, too long for "
            "Ray's unix sockets; set TMPDIR to a shorter directory"
        )
    return path


def _ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    found = str(candidate) if candidate.exists() else shutil.which("ray")
    if not found:
        raise DevStackError(
            "cannot find the `ray` command next to this Python; install `ray[default]`"
        )
    return found


@dataclass
class LocalRayHead:
    """A Ray head with its dashboard, on free ports, in a process tree owned by raystream.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``log_path`` receives the
    launcher's output (``<temp dir>/launcher.log`` when None). With ``auth_token_path`` the head
    requires Ray token authentication with the token in that file (created when missing);
    without it authentication is disabled explicitly, whatever ``~/.ray/auth_token`` holds.
    Clients connect with the variables of :meth:`client_env`. ``env`` is added to the
    environment of the head, so of every job and actor it runs.
    """

    num_cpus: int | None = None
    log_path: Path | None = None
    auth_token_path: Path | None = None
    env: dict[str, str] | None = None
    info: RayHeadInfo | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The GCS address, for ``ray.init(address=...)`` and ``RAY_ADDRESS``."""
        return self._require().gcs_address

    @property
    def dashboard_url(self) -> str:
        """The dashboard's HTTP URL (also the Jobs API address for ``ray job submit``)."""
        return self._require().dashboard_url

    def client_env(self) -> dict[str, str]:
        """Environment variables a client (``ray.init``, ``ray job submit``) needs to connect."""
        return ray_client_env(self.address, self.auth_token_path)

    def _require(self) -> RayHeadInfo:
        if self.info is None:
            raise DevStackError("the Ray head is not started: call start() first")
        return self.info

    def start(self, timeout: float = 60.0) -> LocalRayHead:
        """Start the head and wait until the GCS, the raylet and the dashboard answer.

        Ports are chosen free, then released for Ray to bind, so another process can take one
        in between. A head that loses a port that way (a Ray process logs that its port is
        taken, or the port answers with something that is not HTTP) is stopped and started
        again on new ports."""
        if self.info is not None:
            return self
        deadline = time.monotonic() + timeout
        attempt = 1
        while True:
            try:
                last = attempt == _START_ATTEMPTS
                return self._start_once(max(deadline - time.monotonic(), 5.0), keep_logs=last)
            except _StartClash:
                if last or time.monotonic() >= deadline:
                    raise
                attempt += 1

    def _start_once(self, timeout: float, *, keep_logs: bool) -> LocalRayHead:
        for _ in range(5):  # never reuse a dir left by an earlier head (kept logs)
            ports = free_ports(11)
            temp_dir = default_temp_dir(ports[0])
            if not temp_dir.exists():
                break
        gcs, dash, client, agent_http, agent_grpc, env_agent, metrics, dash_m, scaler_m = ports[:9]
        node_manager, object_manager = ports[9:]
        temp_dir.mkdir(parents=True)
        log_path = self.log_path or temp_dir / "launcher.log"
        token = uuid.uuid4().hex
        if self.auth_token_path is not None:
            ensure_auth_token(self.auth_token_path)
        cmd = [
            _ray_executable(), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(gcs),
            "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dash),
            "--ray-client-server-port", str(client),
            "--dashboard-agent-listen-port", str(agent_http),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(env_agent),
            "--metrics-export-port", str(metrics),
            "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager),
            "--temp-dir", str(temp_dir),
            "--disable-usage-stats",
            "--log-style", "record",
        ]  # fmt: skip
        if self.num_cpus is not None:
            cmd += ["--num-cpus", str(self.num_cpus)]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # `ray job submit -- python job.py` runs `python` from the head's PATH: make it this
        # interpreter (the one with raystream and Ray installed), not whatever PATH finds first.
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            {
                "PATH": os.pathsep.join([bin_dir, env.get("PATH", "")]),
                TOKEN_ENV: token,
                "RAY_USAGE_STATS_ENABLED": "0",
                "DASHBOARD_METRIC_PORT": str(dash_m),
                "AUTOSCALER_METRIC_PORT": str(scaler_m),
                **LOOPBACK_ENV,
                **ray_auth_env(self.auth_token_path),
                **(self.env or {}),
            }
        )
        with open(log_path, "ab") as out:
            log_from = out.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        start_ticks = process_start_ticks(self._proc.pid) or 0
        try:
            self.info = self._wait_ready(
                temp_dir, token, start_ticks, dash, agent_http, (log_path, log_from), timeout
            )
        except BaseException as exc:
            # A launcher still starting its node ignores SIGTERM: give it little time. Keep the
            # logs of a head that failed for good; a lost port is retried and says nothing.
            pending = RayHeadInfo("", "", self._proc.pid, start_ticks, str(temp_dir), token, "")
            retried = isinstance(exc, _StartClash) and not keep_logs
            stop_ray_head(pending, timeout=3.0, keep_temp_dir=not retried, proc=self._proc)
            self._proc = None
            raise
        return self

    def _wait_ready(
        self,
        temp_dir: Path,
        token: str,
        start_ticks: int,
        dash_port: int,
        agent_port: int,
        log: tuple[Path, int],
        timeout: float,
    ) -> RayHeadInfo:
        assert self._proc is not None
        log_path, log_from = log
        address_file = temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + timeout
        next_log_scan = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            exited = self._proc.poll() is not None
            if exited or time.monotonic() >= next_log_scan:
                next_log_scan = time.monotonic() + 1.0
                if clash := _port_clash(temp_dir, log_path, log_from):
                    raise _StartClash(f"a port of the Ray head was taken: {clash}")
            if exited:
                raise DevStackError(
                    f"`ray start` exited with code {self._proc.returncode}; its log "
                    f"{log_path} ends with:{_log_tail(log_path)}"
                )
            if address_file.exists() and (gcs_address := address_file.read_text().strip()):
                node_ip = gcs_address.rsplit(":", 1)[0]
                info = RayHeadInfo(
                    gcs_address=gcs_address,
                    dashboard_url=f"http://127.0.0.1:{dash_port}",
                    launcher_pid=self._proc.pid,
                    launcher_start_ticks=start_ticks,
                    temp_dir=str(temp_dir),
                    token=token,
                    agent_url=f"http://{node_ip}:{agent_port}",
                )
                if _healthy_or_clash(info, timeout=1.0):
                    return info
            time.sleep(0.1)
        raise DevStackError(
            f"the Ray head did not become healthy in {timeout}s; see {log_path} and the logs "
            f"under {temp_dir}:{_log_tail(log_path)}"
        )

    def stop(self, timeout: float = 20.0, *, keep_temp_dir: bool = False) -> None:
        """Stop the head and every process it started (see :func:`stop_ray_head`)."""
        info, self.info = self.info, None
        proc, self._proc = self._proc, None
        if info is not None:
            stop_ray_head(info, timeout, keep_temp_dir=keep_temp_dir, proc=proc)

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
