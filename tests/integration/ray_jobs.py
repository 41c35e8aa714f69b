"""`ray job submit` against a `raystream dev up` stack, as a user runs jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from raystream.dev.stack import DevState

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def submit(stack: DevState, job_id: str, *entrypoint: str, wait_s: float = 300) -> str:
    """`ray job submit --working-dir <repo> -- python <entrypoint>` to the dev stack; waits until
    the job ends and asserts it succeeded. Returns the job's logs."""
    env = {**os.environ, **stack.environment()}
    address = ["--address", stack.dashboard_url]
    proc = subprocess.run(
        [RAY, "job", "submit", *address, "--no-wait", "--submission-id", job_id,
         "--working-dir", str(REPO), "--", "python", *entrypoint],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = ""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = subprocess.run(
            [RAY, "job", "status", *address, job_id],
            env=env, capture_output=True, text=True, timeout=60,
        ).stdout.lower()  # fmt: skip
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(1)
    logs = subprocess.run(
        [RAY, "job", "logs", *address, job_id], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "succeeded" in status, status[-2000:] + "\n--- job logs ---\n" + logs[-5000:]
    return logs
