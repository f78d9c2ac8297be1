"""Every module of the package imports on its own, whatever was imported before: no
import cycle that only works in the order the server happens to load things (a tool or
a benchmark importing a storage module first once met one)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest

import dispatch

MODULES = sorted(info.name for info in pkgutil.walk_packages(dispatch.__path__, "dispatch."))


@pytest.fixture
def fresh_package() -> object:
    """The package's modules forgotten before the test and restored after it, so the
    module under test is the first of them imported."""
    saved = {name: module for name, module in sys.modules.items()
             if name == "dispatch" or name.startswith("dispatch.")}
    for name in saved:
        del sys.modules[name]
    yield None
    for name in [n for n in sys.modules if n == "dispatch" or n.startswith("dispatch.")]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.mark.parametrize("name", MODULES)
def test_a_module_imports_first(name: str, fresh_package: object) -> None:
    importlib.import_module(name)
    assert name in sys.modules


def test_the_walk_found_every_layer() -> None:
    layers = {name.split(".")[1] for name in MODULES}
    assert {"domain", "service", "storage", "http", "runtime", "tools", "config", "ui",
            "engine", "bootstrap", "cli", "app"} <= layers
