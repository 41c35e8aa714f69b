"""Shared test settings: keep raystream away from the user's dev stack and environment."""

from __future__ import annotations

import os
import tempfile

# Tests must never attach to a developer's `raystream dev up` or a stray RAYSTREAM_BROKERS.
os.environ.pop("RAYSTREAM_BROKERS", None)
os.environ.setdefault("RAYSTREAM_HOME", tempfile.mkdtemp(prefix="raystream-test-home-"))
