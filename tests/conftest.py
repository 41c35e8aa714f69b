"""Shared test settings: keep raystream away from the user's dev stack and environment."""

from __future__ import annotations

import os
import tempfile

# Tests must never attach to a developer's `raystream dev up` or a stray RAYSTREAM_BROKERS.
os.environ.pop("RAYSTREAM_BROKERS", None)
# Keep Ray on loopback: on Linux Ray otherwise advertises the machine's own address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAYSTREAM_HOME", tempfile.mkdtemp(prefix="raystream-test-home-"))
