"""Run a target in a subprocess for a bounded time or number of runs, and read what libFuzzer says.

Each run gets a work directory: ``corpus/<target>`` (seeded, then grown by libFuzzer),
``artifacts/<target>`` (crash, timeout and OOM reproducers) and ``<target>.log``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fuzz import TARGETS
from fuzz.seeds import REPO, write_seeds

DEFAULT_TIMEOUT = 10
"""Seconds one input may take (libFuzzer's ``-timeout``): past it, a hang is reported."""
COUNTS_ENV = "MODELTEL_FUZZ_COUNTS"
"""A JSON file that collects the cases tried per target (as ``tests/collector/test_hostile_input.py``)."""

_EXECUTED = re.compile(r"^stat::number_of_executed_units:\s*(\d+)", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_SUMMARY = re.compile(r"SUMMARY: libFuzzer: (.+)")
_PYTHON_ERROR = re.compile(r"=== Uncaught Python exception: ===\n(.*?)\n==\d+== ERROR", re.DOTALL)


@dataclass(frozen=True)
class Result:
    """How one run of a target went."""

    target: str
    cases: int
    """Inputs executed (libFuzzer's ``number_of_executed_units``), seeds included."""
    seconds: float
    returncode: int
    log: Path
    failure: str = ""
    """libFuzzer's summary of a crash, timeout or OOM (empty when none)."""
    reproducer: Path | None = None
    details: str = ""
    """The uncaught Python exception, with its traceback, when there is one."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failure and self.reproducer is None

    def report(self) -> str:
        """One line when all went well; otherwise the failure, the reproducer and how to replay it."""
        line = f"{self.target}: {self.cases} cases in {self.seconds:.1f} s"
        if self.ok:
            return f"{line}: ok"
        out = [f"{line}: FAILED ({self.failure or f'exit status {self.returncode}'})"]
        if self.details:
            out.append(self.details)
        if self.reproducer is not None:
            out.append(f"reproducer: {self.reproducer} (base64: {_base64(self.reproducer)})")
            out.append(f"replay: python -m {TARGETS[self.target]} {self.reproducer}")
        out.append(f"log: {self.log}")
        return "\n".join(out)


def _base64(path: Path) -> str:
    import base64

    data = path.read_bytes() if path.exists() else b""
    text = base64.b64encode(data[:3000]).decode()
    return text if len(data) <= 3000 else f"{text}... ({len(data)} bytes)"


def run_target(
    target: str,
    workdir: Path,
    libfuzzer_args: Sequence[str] = (),
    *,
    timeout: int = DEFAULT_TIMEOUT,
    module: str | None = None,
    seeds: Sequence[bytes] | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Fuzz ``target`` in a subprocess with ``libfuzzer_args`` (e.g. ``-runs=1000``,
    ``-max_total_time=60``, ``-seed=1``); its corpus, artifacts and log under ``workdir``.

    ``module`` and ``seeds`` replace the target's own (the runner's tests use a toy target).
    """
    corpus = workdir / "corpus" / target
    artifacts = workdir / "artifacts" / target
    artifacts.mkdir(parents=True, exist_ok=True)
    if seeds is None:
        write_seeds(target, corpus)
    else:
        corpus.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(seeds):
            (corpus / f"seed-{i}").write_bytes(data)
    log = workdir / f"{target}.log"
    command = [
        sys.executable,
        "-m",
        module or TARGETS[target],
        f"-timeout={timeout}",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        *libfuzzer_args,
        str(corpus),
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.run(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    executed = _EXECUTED.findall(text)
    artifact = _ARTIFACT.search(text)
    summary = _SUMMARY.search(text)
    python_error = _PYTHON_ERROR.search(text)
    return Result(
        target=target,
        cases=int(executed[-1]) if executed else 0,
        seconds=seconds,
        returncode=process.returncode,
        log=log,
        failure=summary.group(1).strip() if summary else "",
        reproducer=Path(artifact.group(1)) if artifact else None,
        details=python_error.group(1).strip() if python_error else "",
    )


def record_counts(counts: Mapping[str, int], path: str | None = None) -> None:
    """Add ``counts`` (cases per target) to the JSON file named by ``MODELTEL_FUZZ_COUNTS``, if set.

    The file is merged into, not replaced: the hypothesis tests write theirs there too.
    """
    path = path or os.environ.get(COUNTS_ENV)
    if not path or not counts:
        return
    file = Path(path)
    existing: dict[str, int] = {}
    if file.exists():
        try:
            existing = json.loads(file.read_text())
        except ValueError:
            existing = {}
    merged = {**existing, **counts}
    file.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")


def count_key(target: str) -> str:
    """The key of a target's count in the counts file."""
    return f"atheris: {target}"
