"""The README's demo command, as a user runs it: `raystream demo` on a fresh home: the fraud job
on generated payments, its alerts by SQL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from raystream.dev.stack import dev_down, read_state


def test_demo_runs_the_fraud_job_and_prints_its_top_alerts(tmp_path: Path) -> None:
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
    assert "dead letters   0" in out
    # 5,000 payments: 5 injected instances of each of the 5 patterns, each alerted once.
    assert "alerts         25 for 25 injected instances" in out
    assert "SQL> SELECT rule, alerts" in out
    for rule in ("velocity", "amount_spike", "country_mismatch", "many_merchants", "card_testing"):
        assert re.search(rf"^  {rule} +5 alerts", out, re.MULTILINE), rule
    assert "SQL> SELECT customer_id, alerts, round(risk, 3)" in out
    assert len(re.findall(r"^  c\d{6}  risk ", out, re.MULTILINE)) == 5
    assert "Ray dashboard: http://127.0.0.1:" in out
    assert "dev stack stopped" in out
    assert read_state(home) is None


def test_a_terminated_demo_still_stops_the_dev_stack(tmp_path: Path) -> None:
    home = tmp_path / "home"
    raystream_bin = str(Path(sys.executable).parent / "raystream")
    proc = subprocess.Popen(
        [raystream_bin, "--home", str(home), "demo", "--payments", "200000", "--down"],
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # terminate it while it generates payments
            if line.startswith("2/4"):
                break
        assert read_state(home) is not None
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=120)[0]
        assert proc.returncode == 128 + signal.SIGTERM
        assert "dev stack stopped" in rest
        assert read_state(home) is None
    finally:
        if proc.poll() is None:
            proc.kill()
        dev_down(home)
