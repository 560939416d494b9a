"""The atheris fuzz targets (``fuzz/``), each run for a bounded number of cases (issue 5).

Each target runs in a subprocess under libFuzzer with a fixed seed (reproducible), from its
generated seed corpus; a crash, a contract violation, or an input slower than the per-input
timeout fails the test with libFuzzer's summary, the Python traceback and the reproducer.
The cases tried per target are added to the JSON file named by ``MODELTEL_FUZZ_COUNTS``, if
set (keys ``atheris: <target>``), as ``test_hostile_input.py`` does for hypothesis.

Also here: the runner reports crashes and hangs (a toy target), the seeds are what they claim
to be, and regression tests for the configuration loader's bugs that the fuzzer found.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from fuzz import TARGETS
from fuzz._inputs import ml_records
from fuzz.runner import count_key, record_counts, run_target
from fuzz.seeds import seeds
from modeltel_collector.config import ConfigError, load_config, parse_config

pytestmark = pytest.mark.timeout(180)

RUNS = {"extract": 5000, "otlp-json": 5000, "http": 5000, "labels": 10_000, "config": 3000}
"""Cases per target: about 40 s for all five on a 2-core machine, startup included (the
configuration loader's is the slowest: YAML's parser is instrumented too)."""

CASES: Counter[str] = Counter()


@pytest.fixture(scope="session", autouse=True)
def _write_counts() -> Iterator[None]:
    """Merged in at the end of the session: after ``test_hostile_input.py`` has written its own."""
    yield
    record_counts(dict(sorted(CASES.items())))


@pytest.mark.parametrize("target", list(TARGETS))
def test_target_survives_fuzzing(target: str, tmp_path: Path) -> None:
    result = run_target(target, tmp_path, [f"-runs={RUNS[target]}", "-seed=1"])
    CASES[count_key(target)] += result.cases
    print(result.report())
    assert result.ok, result.report()
    assert result.cases >= RUNS[target], result.report()


# --------------------------------------------------------------------------------------
# The runner itself
# --------------------------------------------------------------------------------------
TOY = """
import sys, time
import atheris

def test_one_input(data: bytes) -> None:
    if data.startswith(b"crash"):
        raise ValueError("a contract violated")
    if data.startswith(b"hang"):
        time.sleep(30)

atheris.Setup(sys.argv, test_one_input)
atheris.Fuzz()
"""


@pytest.mark.parametrize(
    ("seed", "failure", "details"),
    [
        (b"crash", "fuzz target exited", "ValueError: a contract violated"),
        (b"hang", "timeout", ""),
    ],
)
def test_runner_reports_a_failure_with_its_reproducer(
    tmp_path: Path, seed: bytes, failure: str, details: str
) -> None:
    (tmp_path / "toy_target.py").write_text(TOY)
    result = run_target(
        "extract",
        tmp_path,
        ["-runs=100"],
        timeout=1,
        module="toy_target",
        seeds=[seed],
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert not result.ok
    assert result.failure.startswith(failure), result.report()
    assert details in result.details
    assert result.reproducer is not None and result.reproducer.read_bytes() == seed
    report = result.report()
    assert (
        "FAILED" in report and str(result.reproducer) in report and "replay: python -m fuzz.extract" in report
    )


def test_runner_counts_cases_and_writes_them(tmp_path: Path) -> None:
    (tmp_path / "toy_target.py").write_text(TOY)
    result = run_target(
        "labels",
        tmp_path,
        ["-runs=250"],
        module="toy_target",
        seeds=[b"ok"],
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.ok and result.cases == 250, result.report()
    counts = tmp_path / "counts.json"
    counts.write_text('{"extract: random bytes": 400}')
    record_counts({count_key("labels"): result.cases}, str(counts))
    assert counts.read_text() == '{\n  "atheris: labels": 250,\n  "extract: random bytes": 400\n}\n'


def test_cli_runs_a_target_and_fails_on_bad_flags(tmp_path: Path) -> None:
    import subprocess

    ok = subprocess.run(
        [sys.executable, "-m", "fuzz", "labels", "-runs=200", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert ok.returncode == 0 and "labels: 200 cases in" in ok.stdout, ok.stdout + ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "fuzz", "labels", "runs=5"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert bad.returncode == 2 and "not libFuzzer flags" in bad.stderr


# --------------------------------------------------------------------------------------
# The seeds
# --------------------------------------------------------------------------------------
def test_extract_seeds_are_sdk_requests_with_ml_records() -> None:
    raw = [data[1:] for data in seeds("extract") if data[0] % 2 == 0]
    assert len(raw) >= 5
    messages = [ExportLogsServiceRequest.FromString(payload) for payload in raw]
    assert all(m.resource_logs[0].resource.attributes for m in messages)  # the SDK's resource
    assert ml_records(messages[0]) == 6  # all the records together: 4 predictions, 2 labels
    assert sum(ml_records(m) for m in messages[1:]) == 6


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_has_seeds_of_both_modes(target: str) -> None:
    inputs = seeds(target)
    assert len(inputs) == len(set(inputs)) >= 4
    if target != "http":  # the HTTP target has a header instead (see fuzz.http_body)
        assert {data[0] % 2 for data in inputs} == {0, 1}


def test_http_seeds_decode() -> None:
    from fuzz.seeds import HTTP_CONTENT_TYPES, HTTP_PATHS

    logs = [d for d in seeds("http") if HTTP_PATHS[d[0] % len(HTTP_PATHS)] == "/v1/logs" and d[3] == 0]
    protobuf = [d[6:] for d in logs if HTTP_CONTENT_TYPES[d[1]] == "application/x-protobuf" and d[2] == 0]
    assert protobuf and all(ml_records(ExportLogsServiceRequest.FromString(body)) == 6 for body in protobuf)


# --------------------------------------------------------------------------------------
# Bugs the config target found in config.py (fixed there; regression tests)
# --------------------------------------------------------------------------------------
def _alias_bomb(levels: int) -> str:
    """A tiny YAML document whose ``data_dir`` is 10**levels values, by aliases."""
    lines = ["anchors:", "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join([*lines, f"data_dir: *a{levels - 1}", ""])


CONFIG_BUGS: dict[str, bytes] = {
    "not UTF-8": b"\xff: 1\n",
    "nested deeper than the recursion limit": b"[" * 1000,
    "an integer of 5000 digits": b"data_dir: " + b"9" * 5000 + b"\n",
    "an invalid date": b"data_dir: 2001-13-45\n",
}


@pytest.mark.parametrize("content", list(CONFIG_BUGS.values()), ids=list(CONFIG_BUGS))
def test_config_file_that_cannot_be_read_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "collector.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"collector\.yaml"):
        load_config(path)


def test_config_huge_integer_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data_dir"):
        parse_config({"data_dir": 10**5000})


def test_config_alias_bomb_gives_a_bounded_error(tmp_path: Path) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(_alias_bomb(9))  # 10**9 values from 700 bytes: hours and ~50 GB, when whole
    assert path.stat().st_size < 800
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert len(str(error.value)) < 10_000, f"{len(str(error.value))} characters"
    assert time.monotonic() - started < 1
