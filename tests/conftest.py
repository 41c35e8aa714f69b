"""Shared test settings: keep raystream away from the user's dev stack and environment."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Tests must never attach to a developer's `raystream dev up` or a stray RAYSTREAM_BROKERS.
os.environ.pop("RAYSTREAM_BROKERS", None)
# Keep Ray on loopback: on Linux Ray otherwise advertises the machine's own address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
_HOME = None
if "RAYSTREAM_HOME" not in os.environ:
    _HOME = os.environ["RAYSTREAM_HOME"] = tempfile.mkdtemp(prefix="raystream-test-home-")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the home made for this session (its fixtures, and so its processes, are gone)."""
    if _HOME is not None:
        shutil.rmtree(_HOME, ignore_errors=True)
