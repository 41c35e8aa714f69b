"""Where a run's CPU went, per process and for the whole machine over a run's timed span; and
a process's memory.

A throughput figure alone cannot say whether a system was short of CPU or waiting. On a
2-core machine that also runs the embedded broker, the question that decides what a faster
worker can gain is how much of the machine the run used, and how much of it was the broker's.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Any

from raystream.dev.ray_head import _stat_field

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None when it is gone)."""
    utime, stime = _stat_field(pid, 14), _stat_field(pid, 15)  # fields of proc(5)
    if utime is None or stime is None:
        return None
    return (utime + stime) / _TICK


def proc_mib(pid: int, field: str = "VmHWM") -> float | None:
    """``field`` (VmHWM: peak RSS, VmRSS: current) of process ``pid`` in MiB, None if gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (``/proc/stat``; iowait counts as idle)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICK


class CpuShares:
    """CPU each of some processes takes from now on (per cent of one core; the machine has
    ``os.cpu_count()``): shows which process a latency run's time went to."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.t0 = time.monotonic()
        self.start = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}

    def shares(self) -> dict[str, float]:
        """Per cent of one core each process used since construction (gone processes left out)."""
        wall = time.monotonic() - self.t0
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, now = self.start[name], proc_cpu_s(pid)
            if before is not None and now is not None and wall > 0:
                out[name] = round(100 * (now - before) / wall, 1)
        return out


class CpuSampler:
    """Samples the machine's busy CPU and the broker's CPU every ``period_s`` in a thread, so
    that the CPU of a span known only afterwards (a run's first record to its last commit,
    reported by the run itself) can be read off: :meth:`span`."""

    def __init__(self, broker_pid: int | None, period_s: float = 0.25) -> None:
        self.broker_pid = broker_pid
        self.period_s = period_s
        self._times: list[float] = []
        self._machine: list[float] = []
        self._procs: list[dict[int, float]] = []
        self._names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        self._times.append(time.time())
        self._machine.append(machine_busy_s())
        self._procs.append(self._all_procs())

    def _all_procs(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            cpu = proc_cpu_s(pid)
            if cpu is None:
                continue
            out[pid] = cpu
            # Ray sets an actor's title once it runs: look again until it has one.
            name = self._names.get(pid)
            untitled = name is not None and (name == "ray::IDLE" or not name.startswith("ray::"))
            if name is None or (untitled and len(self._procs) % 8 == 0):
                self._names[pid] = _proc_name(pid)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def span(self, t0: float, t1: float, records: int) -> dict[str, Any] | None:
        """CPU between wall times ``t0`` and ``t1`` (to the nearest samples inside): cores the
        machine and the broker kept busy, and CPU microseconds per record of ``records``."""
        i = bisect.bisect_left(self._times, t0)
        j = bisect.bisect_right(self._times, t1) - 1
        if j <= i or records <= 0:
            return None
        wall = self._times[j] - self._times[i]
        machine = self._machine[j] - self._machine[i]
        out: dict[str, Any] = {
            "cores_machine": round(machine / wall, 2),
            "us_per_record_machine": round(1e6 * machine * (t1 - t0) / wall / records, 2),
        }
        p0, p1 = self._procs[i], self._procs[j]
        by_name: dict[str, float] = {}
        for pid, c1 in p1.items():
            name = self._names.get(pid, "?")
            by_name[name] = by_name.get(name, 0.0) + (c1 - p0.get(pid, 0.0)) / wall
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
        out["cores_by_process"] = {k: round(v, 2) for k, v in top if v >= 0.01}
        b0 = p0.get(self.broker_pid) if self.broker_pid else None
        b1 = p1.get(self.broker_pid) if self.broker_pid else None
        if b0 is not None and b1 is not None:
            out["cores_broker"] = round((b1 - b0) / wall, 2)
            out["us_per_record_broker"] = round(1e6 * (b1 - b0) * (t1 - t0) / wall / records, 2)
        return out


def _proc_name(pid: int) -> str:
    """A short name for ``pid``: Ray's process title (``ray::Worker``), else the program and
    the module or script it runs."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    prog = os.path.basename(argv[0])
    if argv[1:2] == ["-c"] and "multiprocessing" in " ".join(argv[2:3]):
        return f"{prog} (a spawned benchmark process)"
    rest = [a for a in argv[1:] if not a.startswith("-")][:1]
    if "-m" in argv[1:3]:
        rest = [argv[argv.index("-m") + 1]] if argv.index("-m") + 1 < len(argv) else []
    return " ".join([prog, *[os.path.basename(r) for r in rest]])[:60]
