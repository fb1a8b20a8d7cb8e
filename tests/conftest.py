"""Shared fixtures: real SQLite files in temporary directories, a frozen clock, the demo catalog."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.clock import FrozenClock
from appliance.config import Config
from appliance.ledger import Ledger
from appliance.till import Till, open_ledger
from drivers.payment import SimulatedTerminal


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_error_logs: the test expects ERROR log records")


@pytest.fixture(autouse=True)
def _fail_on_error_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A logged error is a test failure unless the test says it expects one."""
    yield
    if request.node.get_closest_marker("allow_error_logs"):
        return
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    if errors:
        pytest.fail("unexpected error logged: " + "; ".join(r.getMessage() for r in errors))


@pytest.fixture
def config() -> Config:
    return Config.defaults()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))


@pytest.fixture
def ledger(tmp_path: Path, config: Config) -> Iterator[Ledger]:
    with open_ledger(config, tmp_path) as led:
        yield led


@pytest.fixture
def till(ledger: Ledger, config: Config, clock: FrozenClock) -> Till:
    return Till(config, ledger, clock=clock, terminal=SimulatedTerminal(), fast_hash=True)


def open_shift(till: Till, float_amount: int = 10_000, actor: str = "ann") -> None:
    """Open a shift as ``actor`` (a cashier may open a shift)."""
    from datetime import timedelta

    from appliance.staff import Action, Approval

    now = till.clock.now()
    till.shifts.open(float_amount, Approval(Action.OPEN_SHIFT, actor, None, now + timedelta(minutes=1)), now)


@pytest.fixture
def demo_till(till: Till, tmp_path: Path) -> Till:
    """A till with the demo catalog and promotions loaded, and a shift open."""
    from appliance.demo import seed

    seed(till, tmp_path)
    open_shift(till)
    return till
