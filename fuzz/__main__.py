"""``python -m fuzz TARGET|all [libFuzzer flags] [--workdir DIR] [--timeout S]``.

Seeds a corpus, runs each target in a subprocess under libFuzzer (``-runs=N``,
``-max_total_time=S``, ``-seed=N`` and any other libFuzzer flag are passed on; without
``-runs`` or ``-max_total_time``, each target runs for 60 seconds), prints the cases tried and
any crash with its reproducer, adds the counts to ``$MODELTEL_FUZZ_COUNTS`` if set, and exits
non-zero if any target failed. ``--workdir`` keeps the corpus (it grows) across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from fuzz import TARGETS
from fuzz.runner import DEFAULT_TIMEOUT, count_key, record_counts, run_target


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__, allow_abbrev=False)
    parser.add_argument("target", choices=[*TARGETS, "all"])
    parser.add_argument("--workdir", type=Path, help="corpus, artifacts, logs (default: a new temporary one)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds one input may take")
    args, libfuzzer_args = parser.parse_known_args(argv)
    unknown = [a for a in libfuzzer_args if not (a.startswith("-") and not a.startswith("--") and "=" in a)]
    if unknown:
        parser.error(f"not libFuzzer flags (-name=value): {' '.join(unknown)}")
    if not any(a.startswith(("-runs=", "-max_total_time=")) for a in libfuzzer_args):
        libfuzzer_args.append("-max_total_time=60")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modeltel-fuzz-"))
    targets = list(TARGETS) if args.target == "all" else [args.target]
    print(f"work directory: {workdir}", flush=True)
    failed = False
    for target in targets:
        result = run_target(target, workdir, libfuzzer_args, timeout=args.timeout)
        print(result.report(), flush=True)
        record_counts({count_key(target): result.cases})
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
