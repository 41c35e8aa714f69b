"""The benchmarks' CPU accounting reads real processes: a busy child shows up as busy."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.cpu import CpuSampler, machine_busy_s, proc_cpu_s

BURN = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\n"


def test_a_busy_process_and_the_machine_count_its_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        with CpuSampler(child.pid, period_s=0.05) as cpu:
            t0 = time.time()
            child.wait(30)
        # A span inside the child's life: once reaped, its CPU can no longer be read.
        span = cpu.span(t0, t0 + 1.2, records=1000)
    finally:
        if child.poll() is None:
            child.kill()  # our own child, by its pid
            child.wait(5)
    assert span is not None
    # One core, less whatever else this machine ran meanwhile.
    assert 0.3 <= span["cores_broker"] <= 1.2
    assert span["cores_machine"] >= span["cores_broker"] - 0.05
    assert span["us_per_record_broker"] > 0
    assert any(name.startswith("python") for name in span["cores_by_process"])


def test_gone_processes_and_empty_spans() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    assert proc_cpu_s(child.pid) is None
    assert machine_busy_s() > 0
    with CpuSampler(None) as cpu:
        pass
    assert cpu.span(0.0, 1.0, records=10) is None  # no samples inside the span
