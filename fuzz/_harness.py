"""What every target shares: how it starts libFuzzer, and how it reads its input's mode."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import atheris


def structured(data: bytes) -> tuple[bool, int, bytes]:
    """Split an input: bit 0 of its first byte (structured or raw), the other bits, and the rest."""
    if not data:
        return False, 0, b""
    return bool(data[0] & 1), data[0] >> 1, data[1:]


def instrument(include: Sequence[str], *, dataflow: bool = False) -> Any:
    """:func:`atheris.instrument_imports` of ``include``, comparisons traced only with ``dataflow``.

    atheris 3.0 leaks the result of every traced comparison that is not a small int or bool:
    where the code compares numpy arrays (extraction, label batches) a run grows by about
    10 MB per thousand inputs until libFuzzer's RSS limit stops it, an out-of-memory that is
    the harness's, not the collector's. Edge coverage, which guides libFuzzer, is unaffected.
    """
    if dataflow:
        return atheris.instrument_imports(include=list(include))
    try:
        from atheris.import_hook import HookManager

        packages = {name.split(".")[0] for name in include}
        return HookManager(packages, set(), enable_loader_override=True, trace_dataflow=False)
    except (ImportError, TypeError):  # another atheris: its own defaults
        return atheris.instrument_imports(include=list(include))


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under libFuzzer with this process's arguments (libFuzzer flags,
    corpus directories, or files to replay)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
