"""The service's rule tests: DispatchService on each backend, no Flask, a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dispatch.config.settings import Settings
from dispatch.service import DispatchService
from tests.conftest import API_KEY
from tests.support.backends import Harness, durable_harness, harness

__all__ = ["durable_harness", "harness", "make_service"]


@pytest.fixture
def make_service(harness: Harness) -> Callable[..., DispatchService]:
    """A service on the harness's backend, with settings ``overrides``."""

    def make(**overrides: Any) -> DispatchService:
        settings = Settings(api_key=API_KEY, **overrides)
        return DispatchService(settings, harness.open(), harness.clock)

    return make
