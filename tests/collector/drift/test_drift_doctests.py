"""The runnable examples in the drift modules' docstrings pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import modeltel_collector.drift as drift

MODULES = sorted(f"{drift.__name__}.{info.name}" for info in pkgutil.iter_modules(drift.__path__))


def test_modules_are_found() -> None:
    names = {module.rsplit(".")[-1] for module in MODULES}
    assert {"statistics", "profile", "window", "detector", "reservoir"} <= names


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
