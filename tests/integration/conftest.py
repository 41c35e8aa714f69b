"""Session fixtures: one embedded broker and one local Ray for all integration tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import ray

from raystream.dev.broker import EmbeddedBroker
from raystream.dev.stack import DevState, dev_down, dev_up

_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker().start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    ray.init(
        address="local",  # our own Ray, never a cluster someone started with `ray start`
        num_cpus=4,
        include_dashboard=False,
        namespace="raystream",
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def unique() -> str:
    """A fresh name for topics and apps, so tests never share state on the session broker."""
    return f"t{next(_names)}"


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevState]:
    """A `raystream dev up` stack of the test module's own (stopped by PID after it)."""
    home = tmp_path_factory.mktemp("devhome")
    state = dev_up(home)
    try:
        yield state
    finally:
        dev_down(home)
