"""The README's demo command, as a user runs it: `raystream demo` on a fresh home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from raystream.dev.stack import dev_down, read_state


def test_demo_runs_a_real_job_and_reports_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    raystream_bin = str(Path(sys.executable).parent / "raystream")
    try:
        proc = subprocess.run(
            [raystream_bin, "--home", str(home), "demo", "--payments", "5000", "--down"],
            env={k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        dev_down(home)  # whatever happened, leave nothing running
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "state          finished" in out
    assert "payments read  5,000" in out
    assert "records out    5,000" in out
    assert "Ray dashboard: http://127.0.0.1:" in out
    assert "dev stack stopped" in out
    assert read_state(home) is None
