"""``raystream dev up|status|down`` end to end, through the command line a user types.

One stack serves the module (a Ray head takes ~5 s to start); the crash test runs its own.
Every stack is torn down in a fixture, and any process of it that survives is killed by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raystream.dev.broker import pid_alive
from raystream.dev.stack import DevState, dev_addresses, dev_environment, read_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def cli(home: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m raystream.cli.main <args>`` with ``RAYSTREAM_HOME=home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYSTREAM_"))}
    env["RAYSTREAM_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "raystream.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[3])


def stack_processes(state: DevState) -> list[int]:
    """Live processes of a recorded stack, found independently of the code under test."""
    leaders = {state.broker_pid, state.ray.launcher_pid}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        ours = (
            pid in leaders
            or _session(pid) in leaders
            or state.ray.temp_dir.encode() in cmdline
            or f"RAYSTREAM_DEV_TOKEN={state.ray.token}".encode() in environ.split(b"\0")
        )
        if ours and pid_alive(pid):
            found.append(pid)
    return found


def listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the TCP sockets ``pids`` listen on."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


LOOPBACK_HEX = {
    "0100007F",  # 127.0.0.1
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
    "00000000000000000000000001000000",  # ::1
}


def kill_leftovers(state: DevState) -> list[int]:
    """SIGKILL whatever of ``state`` still runs; return what was found."""
    leftovers = stack_processes(state)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftovers


@pytest.fixture(scope="module")
def started(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """A home with a stack started by ``dev up``, and what ``dev up`` printed.

    ``dev down`` at the end must leave nothing behind.
    """
    path = tmp_path_factory.mktemp("home")
    up = cli(path, "dev", "up", "--num-cpus", "2")
    state = read_state(path)
    try:
        assert up.returncode == 0, up.stderr
        assert state is not None
        yield path, up
    finally:
        down = cli(path, "dev", "down")
        if state is not None:
            deadline = time.monotonic() + 5
            while stack_processes(state) and time.monotonic() < deadline:
                time.sleep(0.1)
            leftovers = kill_leftovers(state)
            assert down.returncode == 0, down.stderr
            assert not leftovers, f"dev down left processes behind: {leftovers}"
            assert not Path(state.ray.temp_dir).exists()
        assert read_state(path) is None


@pytest.fixture(scope="module")
def home(started: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    """The home of the module's stack."""
    return started[0]


@pytest.fixture(scope="module")
def state(home: Path) -> DevState:
    """The running stack's recorded state."""
    recorded = read_state(home)
    assert recorded is not None
    return recorded


def test_up_prints_addresses_and_exports(
    started: tuple[Path, subprocess.CompletedProcess[str]], state: DevState
) -> None:
    home, up = started
    assert state.broker_bootstrap.startswith("127.0.0.1:")
    assert state.ray_address.startswith("127.0.0.1:")
    assert state.dashboard_url.startswith("http://127.0.0.1:")
    for address in (state.broker_bootstrap, state.ray_address, state.dashboard_url):
        assert address in up.stdout
    exports = [line for line in up.stdout.splitlines() if line.startswith("export ")]
    assert len(exports) == 1
    assert f"RAYSTREAM_BROKERS={state.broker_bootstrap} " in exports[0]
    assert f"RAY_ADDRESS={state.ray_address} " in exports[0]
    assert f"RAY_AUTH_TOKEN_PATH={state.auth_token_path}" in exports[0]
    env = cli(home, "dev", "env")  # the same line, for eval "$(raystream dev env)"
    assert env.returncode == 0, env.stderr
    assert env.stdout.strip() == exports[0]


def test_every_port_of_the_stack_is_on_loopback(state: DevState) -> None:
    pids = stack_processes(state)
    assert len(pids) >= 5  # broker, launcher, GCS, raylet, dashboard at least
    addresses = listening_addresses(pids)
    assert len(addresses) >= 1
    assert addresses <= LOOPBACK_HEX, f"listening beyond loopback: {addresses - LOOPBACK_HEX}"


def test_status_reports_every_part_alive(home: Path, state: DevState) -> None:
    result = cli(home, "dev", "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["up"] is True
    assert status["broker"] == {"process": True, "answers": True}
    assert status["ray"] == {"process": True, "healthy": True}
    assert status["dashboard"] == {"answers": True}
    assert status["problems"] == []


def test_broker_creates_a_topic_and_round_trips_a_record(state: DevState) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"dev-stack-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": state.broker_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(timeout=10)
    assert topic in admin.list_topics(timeout=5).topics

    producer = Producer({"bootstrap.servers": state.broker_bootstrap})
    producer.produce(topic, key=b"k1", value=b"hello", partition=0)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": state.broker_bootstrap,
            "group.id": f"dev-stack-test-{topic}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 15
        message = None
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error():
                pytest.fail(f"consume error: {message.error()}")
        assert message is not None, "no record came back within 15 s"
        assert (message.key(), message.value()) == (b"k1", b"hello")
    finally:
        consumer.close()


def test_ray_accepts_a_driver_and_runs_a_task(state: DevState) -> None:
    code = (
        "import ray\n"
        "ray.init(log_to_driver=False)\n"
        "@ray.remote\n"
        "def square(x):\n"
        "    return x * x\n"
        "print(sum(ray.get([square.remote(i) for i in range(10)])))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(state.environment())
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "285"


def test_ray_token_file_is_private(state: DevState) -> None:
    token = Path(state.auth_token_path)
    assert token.stat().st_mode & 0o077 == 0, "the Ray token must be private to its owner"
    assert len(token.read_text().strip()) >= 32


def test_dashboard_answers_http_200(state: DevState) -> None:
    with urllib.request.urlopen(state.dashboard_url, timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"{state.dashboard_url}/api/gcs_healthz", timeout=10) as resp:
        assert resp.read().decode().strip() == "success"


def test_up_twice_is_idempotent(home: Path, state: DevState) -> None:
    result = cli(home, "dev", "up")
    assert result.returncode == 0, result.stderr
    assert "already up" in result.stderr
    assert state.broker_bootstrap in result.stdout and state.ray_address in result.stdout
    assert read_state(home) == state  # same processes, same addresses


def test_runtime_lookup_finds_the_stack(home: Path, state: DevState) -> None:
    assert dev_addresses(home) == (state.broker_bootstrap, state.ray_address)
    environment = dev_environment(home)
    assert environment is not None and environment["RAY_ADDRESS"] == state.ray_address


def test_a_head_that_cannot_start_reports_why_and_leaves_nothing_running() -> None:
    from raystream.dev.ray_head import LocalRayHead
    from raystream.errors import DevStackError

    with pytest.raises(DevStackError, match="Resource quantities must be nonnegative") as exc:
        LocalRayHead(num_cpus=-1).start(timeout=60)
    match = re.search(r"its log (\S+)/launcher\.log", str(exc.value))
    assert match, str(exc.value)
    temp_dir = match.group(1)
    try:
        left = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if temp_dir.encode() in _cmdline(pid) and pid_alive(pid)
        ]
        assert left == []
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def alien_server() -> Iterator[int]:
    """A loopback port held by a server that answers everything with bytes that are not HTTP."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    conn.recv(1024)
                    conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\xff\xfe not http\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.mark.parametrize("index, part", [(0, "GCS"), (3, "dashboard agent")])
def test_a_head_whose_port_is_taken_starts_again_on_new_ports(
    monkeypatch: pytest.MonkeyPatch, alien_server: int, index: int, part: str, tmp_path: Path
) -> None:
    """Ports are chosen free and released for Ray to bind: another process can take one first.

    The launcher's log is shared, as `raystream dev up` shares one across heads, and already
    holds an earlier head's port clash: only what this head writes may count."""
    from raystream.dev import ray_head

    log = tmp_path / "ray-head.log"
    log.write_text("... (gcs_server) Failed to start the grpc server. The specified port is 1\n")

    chosen: list[list[int]] = []
    real_free_ports = ray_head.free_ports

    def first_choice_taken(count: int, host: str = "127.0.0.1") -> list[int]:
        ports = real_free_ports(count, host)
        if not chosen:
            ports[index] = alien_server  # the port of the `part` is taken by another process
        chosen.append(ports)
        return ports

    monkeypatch.setattr(ray_head, "free_ports", first_choice_taken)
    head = ray_head.LocalRayHead(num_cpus=1, log_path=log).start(timeout=90)
    try:
        assert len(chosen) == 2, f"the head should have started again after losing its {part} port"
        assert head.info is not None and ray_head.head_healthy(head.info)
        assert str(alien_server) not in (head.address + head.info.agent_url)
        first_dir = ray_head.default_temp_dir(chosen[0][0])
        assert not first_dir.exists(), "the first try's temp dir should be gone"
        assert not [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if str(first_dir).encode() in _cmdline(pid) and pid_alive(pid)
        ]
    finally:
        head.stop()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def crash_home(tmp_path: Path) -> Iterator[Path]:
    """A home for the crash test; whatever it started is stopped and killed afterwards."""
    path = tmp_path / "home"
    try:
        yield path
    finally:
        current = read_state(path)
        if current is not None:
            cli(path, "dev", "down")
            kill_leftovers(current)


def test_crashed_stack_is_reported_and_replaced(crash_home: Path) -> None:
    up = cli(crash_home, "dev", "up", "--num-cpus", "1")
    assert up.returncode == 0, up.stderr
    first = read_state(crash_home)
    assert first is not None
    try:
        os.kill(first.ray.launcher_pid, signal.SIGKILL)  # a crash: no chance to clean up
        os.kill(first.broker_pid, signal.SIGKILL)

        status = cli(crash_home, "dev", "status")
        assert status.returncode == 3, status.stdout
        assert "DEGRADED" in status.stdout and "not running" in status.stdout
        assert dev_addresses(crash_home) is None

        again = cli(crash_home, "dev", "up", "--num-cpus", "1")
        assert again.returncode == 0, again.stderr
        assert "stale" in again.stderr
        second = read_state(crash_home)
        assert second is not None
        assert second.ray.launcher_pid != first.ray.launcher_pid
        assert second.ray.token != first.ray.token
        assert stack_processes(first) == [], "the crashed stack's processes were not cleaned up"
        assert cli(crash_home, "dev", "status").returncode == 0

        down = cli(crash_home, "dev", "down")
        assert down.returncode == 0, down.stderr
        time.sleep(0.2)
        assert stack_processes(second) == []
        assert not Path(second.ray.temp_dir).exists()
        assert read_state(crash_home) is None
        assert "nothing to stop" in cli(crash_home, "dev", "down").stdout
    finally:
        kill_leftovers(first)
