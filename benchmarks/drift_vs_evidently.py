"""Data drift of 100,000 rows x 20 features: modeltel's drift path against Evidently's DataDriftPreset.

The data (fixed seed): a reference and a current table of ``--rows`` rows each, 14 numeric
features (normal, log-normal, uniform, integer counts; some shifted in the current data)
and 6 categorical ones (3 to 12 categories; one with shifted proportions, one with a
category unseen in the reference). Both tools get exactly the same values.

**modeltel** runs what the drift processor runs: a
:class:`~modeltel_collector.drift.profile.ModelProfileBuilder` over the reference (fed in
chunks of ``--chunk`` rows, as ``modeltel reference build`` reads a file), one
:class:`~modeltel_collector.drift.window.FeatureWindow` per feature fed the current data
in batches of ``--batch`` rows (as the processor gets them from extraction), then
:func:`~modeltel_collector.drift.detector.compare` for every feature (``n_features=20``).
Timed end to end (profile + window + compare), in two configurations:

- ``modeltel (exact)``: ``sample_size`` = ``--rows`` for the builder and the windows, so the
  reference sample and the window reservoir hold every value: KS and Wasserstein then see
  the same data as Evidently (this is the configuration compared value by value);
- ``modeltel (default)``: the processor's defaults (10,000-value reservoirs).

**Evidently** (``evidently.Report([DataDriftPreset(...)])`` run on ``evidently.Dataset`` s
built from pandas DataFrames with an explicit ``DataDefinition``; building the DataFrames
is not timed) in two configurations:

- ``evidently (default)``: ``DataDriftPreset()``. At this size (reference > 1,000 rows)
  Evidently does **not** use KS: it picks the normalised Wasserstein distance for numeric
  columns with more than 5 distinct values, and Jensen-Shannon for categorical ones and
  numeric ones with at most 5 values;
- ``evidently (KS)``: ``DataDriftPreset(num_method="ks")``, which reports the KS p-value of
  every numeric column (Evidently exposes the p-value only, not the statistic).

Evidently runs in a subprocess (``--evidently-python``, default ``.venv-evidently/bin/python``
when it exists, else this interpreter), because evidently 0.7.23 does not import with
pandas 3 (``pandas.core.dtypes.common.infer_dtype_from_object`` is gone) while the project
pins pandas 3.1.1; the data is handed over in an ``.npz`` file. Every configuration is run
once as warm-up, then ``--repeats`` times; the figure is the median.

Equality checks, numeric features: modeltel's KS p-value against Evidently's (``num_method="ks"``),
modeltel's KS statistic and p-value against ``scipy.stats.ks_2samp`` on the full columns,
modeltel's normalised Wasserstein against Evidently's default (Evidently divides by the
population standard deviation of the reference, modeltel by the sample one, ``ddof=1``:
a relative difference of about ``1 / (2 n)``). Categorical and few-valued numeric features:
modeltel's Jensen-Shannon distance (base 2, on the reference categories plus one bucket for
unseen ones, or on the reference quantile bins) next to Evidently's (natural log), shown
converted to base 2 (divided by ``sqrt(ln 2)``): the binnings differ, so these are shown,
not checked.

Run from the repository root (after ``python -m venv .venv-evidently &&
.venv-evidently/bin/pip install -r benchmarks/requirements.txt``)::

    python benchmarks/drift_vs_evidently.py --rows 100000 --repeats 5

Results go to ``benchmarks/results/drift_vs_evidently.json``. Exit code 1 if a KS check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "drift_vs_evidently.json"
DEFAULT_EVIDENTLY_PYTHON = ROOT / ".venv-evidently" / "bin" / "python"
TARGET = 20.0
KS_TOLERANCE = 1e-9
"""Relative tolerance of the KS checks (same data, same scipy function: equal up to rounding)."""
SHIFTED = {
    "n_normal_shift": "mean +0.2 sd",
    "n_lognormal_scale": "x1.15",
    "n_uniform_tiny": "+0.01 (0.03 sd)",
    "n_count_shift": "Poisson mean 2 -> 2.4",
    "n_normal_var": "sd x1.3",
    "c_city_mix": "proportions tilted",
    "c_channel_new": "8% in a new category",
}


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def make_data(rows: int, seed: int = 7) -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
    """Reference and current columns (numpy arrays), and the numeric and categorical names."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def numeric(current: bool) -> dict[str, Any]:
        n = rows
        return {
            "n_normal": rng.normal(10.0, 2.0, n),
            "n_normal_shift": rng.normal(10.0 + (0.4 if current else 0.0), 2.0, n),
            "n_normal_var": rng.normal(0.0, 1.3 if current else 1.0, n),
            "n_lognormal": rng.lognormal(10.0, 0.5, n),
            "n_lognormal_scale": rng.lognormal(10.0, 0.5, n) * (1.15 if current else 1.0),
            "n_uniform": rng.uniform(0.0, 1.0, n),
            "n_uniform_tiny": rng.uniform(0.0, 1.0, n) + (0.01 if current else 0.0),
            "n_exponential": rng.exponential(3.0, n),
            "n_count": rng.poisson(2.0, n).astype(np.float64),
            "n_count_shift": rng.poisson(2.4 if current else 2.0, n).astype(np.float64),
            "n_children": rng.choice(5, n, p=[0.3, 0.3, 0.2, 0.15, 0.05]).astype(np.float64),
            "n_age": np.round(rng.normal(40.0, 12.0, n)),
            "n_gamma": rng.gamma(2.0, 2.0, n),
            "n_beta": rng.beta(2.0, 5.0, n),
        }

    def categorical(current: bool) -> dict[str, Any]:
        n = rows

        def draw(names: list[str], weights: list[float]) -> Any:
            p = np.asarray(weights, dtype=np.float64)
            return np.asarray(names, dtype=object)[rng.choice(len(names), n, p=p / p.sum())]

        cities = [f"city_{i}" for i in range(12)]
        city_weights = [12.0 - i for i in range(12)]
        channel = draw(["web", "app", "store"], [5, 3, 2])
        if current:  # 8% of rows in a channel the reference never saw
            channel[rng.random(n) < 0.08] = "partner"
        return {
            "c_city": draw(cities, city_weights),
            "c_city_mix": draw(cities, city_weights[::-1] if current else city_weights),
            "c_channel_new": channel,
            "c_level": draw(["junior", "mid", "senior"], [4, 4, 2]),
            "c_plan": draw(["free", "pro", "team", "enterprise"], [6, 2, 1.5, 0.5]),
            "c_region": draw(["north", "south", "east", "west", "centre"], [1, 1, 1, 1, 1]),
        }

    reference = {**numeric(False), **categorical(False)}
    current = {**numeric(True), **categorical(True)}
    numeric_names = [name for name in reference if name.startswith("n_")]
    categorical_names = [name for name in reference if name.startswith("c_")]
    return reference, current, numeric_names, categorical_names


# --------------------------------------------------------------------------------------
# modeltel
# --------------------------------------------------------------------------------------
def run_modeltel(
    reference: dict[str, Any], current: dict[str, Any], *, sample_size: int | None, chunk: int, batch: int
) -> dict[str, Any]:
    """The drift processor's path: reference profile, windows fed in batches, compare."""
    from modeltel_collector.drift.detector import compare
    from modeltel_collector.drift.profile import ModelProfileBuilder
    from modeltel_collector.drift.window import FeatureWindow

    options: dict[str, Any] = {} if sample_size is None else {"sample_size": sample_size}
    rows = len(next(iter(reference.values())))
    builder = ModelProfileBuilder("bench", "1", **options)
    for start in range(0, rows, chunk):
        builder.update({name: values[start : start + chunk] for name, values in reference.items()})
    profile = builder.build()
    windows = {name: FeatureWindow(feature, **options) for name, feature in profile.features.items()}
    rows = len(next(iter(current.values())))
    for start in range(0, rows, batch):
        for name, window in windows.items():
            window.update(current[name][start : start + batch])
    n_features = len(windows)
    return {
        name: compare(profile.features[name], window, n_features=n_features)
        for name, window in windows.items()
    }


def time_modeltel(
    reference: dict[str, Any], current: dict[str, Any], sample_size: int | None, args: argparse.Namespace
) -> tuple[list[float], dict[str, Any]]:
    result = run_modeltel(
        reference, current, sample_size=sample_size, chunk=args.chunk, batch=args.batch
    )  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run_modeltel(reference, current, sample_size=sample_size, chunk=args.chunk, batch=args.batch)
        times.append(time.perf_counter() - start)
    return times, result


# --------------------------------------------------------------------------------------
# Evidently (its own process)
# --------------------------------------------------------------------------------------
def evidently_main(argv: list[str]) -> int:
    """Load the data, run each preset once as warm-up and ``--repeats`` times; print JSON."""
    parser = argparse.ArgumentParser(prog="drift_vs_evidently.py _evidently")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    args = parser.parse_args(argv)

    import warnings

    import numpy as np
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    warnings.filterwarnings("ignore")
    data = np.load(args.data, allow_pickle=True)
    numeric = [str(name) for name in data["numeric"]]
    categorical = [str(name) for name in data["categorical"]]
    frames = {
        side: pd.DataFrame({name: data[f"{side}:{name}"] for name in numeric + categorical})
        for side in ("reference", "current")
    }
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)

    def run(preset_options: dict[str, Any]) -> Any:
        current = Dataset.from_pandas(frames["current"], data_definition=definition)
        reference = Dataset.from_pandas(frames["reference"], data_definition=definition)
        return Report([DataDriftPreset(**preset_options)]).run(current, reference)

    out: dict[str, Any] = {"versions": {}, "configurations": {}}
    for dist in ("evidently", "pandas", "numpy", "scipy"):
        out["versions"][dist] = metadata.version(dist)
    for name, options in (("default", {}), ("ks", {"num_method": "ks"})):
        snapshot = run(options)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            snapshot = run(options)
            times.append(time.perf_counter() - start)
        columns = {}
        for metric in snapshot.dict()["metrics"]:
            config = metric.get("config", {})
            if config.get("type", "").endswith("ValueDrift"):
                columns[config["column"]] = {
                    "method": config.get("method"),
                    "threshold": config.get("threshold"),
                    "value": metric["value"],
                }
        out["configurations"][name] = {"times_s": times, "columns": columns}
    print(json.dumps(out), flush=True)
    return 0


def run_evidently(python: str, path: Path, repeats: int) -> dict[str, Any]:
    completed = subprocess.run(
        [python, str(Path(__file__).resolve()), "_evidently", f"--data={path}", f"--repeats={repeats}"],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the Evidently run failed ({python}):\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------
# Comparison and report
# --------------------------------------------------------------------------------------
def relative(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), sys.float_info.min)


def compare_values(
    reference: dict[str, Any],
    current: dict[str, Any],
    numeric: list[str],
    categorical: list[str],
    exact: dict[str, Any],
    default: dict[str, Any],
    evidently: dict[str, Any],
) -> list[dict[str, Any]]:
    from scipy import stats

    ks_columns = evidently["configurations"]["ks"]["columns"]
    default_columns = evidently["configurations"]["default"]["columns"]
    rows = []
    for name in numeric + categorical:
        drift, drift_default = exact[name], default[name]
        row: dict[str, Any] = {
            "feature": name,
            "kind": "numeric" if name in numeric else "categorical",
            "shift": SHIFTED.get(name, ""),
            "modeltel_drifted": drift.drifted,
            "modeltel_default_drifted": drift_default.drifted,
            "evidently_default_method": default_columns[name]["method"],
            "evidently_default_value": default_columns[name]["value"],
            "evidently_default_threshold": default_columns[name]["threshold"],
        }
        if name in numeric:
            scipy_ks = stats.ks_2samp(reference[name], current[name])
            row.update(
                modeltel_ks_statistic=drift.ks_statistic,
                modeltel_ks_pvalue=drift.ks_pvalue,
                modeltel_default_ks_statistic=drift_default.ks_statistic,
                modeltel_default_ks_pvalue=drift_default.ks_pvalue,
                scipy_ks_statistic=float(scipy_ks.statistic),
                scipy_ks_pvalue=float(scipy_ks.pvalue),
                evidently_ks_pvalue=ks_columns[name]["value"],
                evidently_ks_method=ks_columns[name]["method"],
                modeltel_wasserstein=drift.wasserstein,
            )
            row["ks_statistic_rel_diff_scipy"] = relative(drift.ks_statistic, row["scipy_ks_statistic"])
            row["ks_pvalue_rel_diff_scipy"] = relative(drift.ks_pvalue, row["scipy_ks_pvalue"])
            row["ks_pvalue_rel_diff_evidently"] = relative(drift.ks_pvalue, row["evidently_ks_pvalue"])
        method = str(
            row["evidently_default_method"]
        ).lower()  # a display name, e.g. "Wasserstein distance (normed)"
        row["evidently_default_kind"] = (
            "wasserstein" if "wasserstein" in method else "jensenshannon" if "jensen" in method else method
        )
        if row["evidently_default_kind"] == "wasserstein":
            row["wasserstein_rel_diff_evidently"] = relative(
                drift.wasserstein, row["evidently_default_value"]
            )
        elif row["evidently_default_kind"] == "jensenshannon":
            row["modeltel_js_base2"] = drift.js
            row["evidently_js_base2"] = row["evidently_default_value"] / math.sqrt(math.log(2))
        rows.append(row)
    return rows


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("modeltel", "numpy", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
    }


def fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    config = result["config"]
    timing = Table(
        title=f"Data drift, {config['rows']:,} reference + {config['rows']:,} current rows x "
        f"{config['features']} features (median of {config['repeats']}, warm-up excluded)"
    )
    for column in ("run", "median s", "min s", "max s", "Evidently default / this"):
        timing.add_column(column, justify="left" if column == "run" else "right")
    base = result["timings"]["evidently (default)"]["median_s"]
    for name, figures in result["timings"].items():
        timing.add_row(
            name,
            f"{figures['median_s']:.3f}",
            f"{figures['min_s']:.3f}",
            f"{figures['max_s']:.3f}",
            f"{base / figures['median_s']:.1f}x",
        )
    console.print(timing)

    ks = Table(title="KS per numeric feature: modeltel (exact) vs Evidently (num_method='ks') and scipy")
    for column in (
        "feature",
        "shift",
        "KS stat modeltel",
        "KS stat scipy",
        "p modeltel",
        "p Evidently",
        "p scipy",
        "max rel diff",
        "KS stat (default reservoir)",
    ):
        ks.add_column(column, justify="left" if column in ("feature", "shift") else "right")
    for row in result["features"]:
        if row["kind"] != "numeric":
            continue
        worst = max(
            row["ks_statistic_rel_diff_scipy"],
            row["ks_pvalue_rel_diff_scipy"],
            row["ks_pvalue_rel_diff_evidently"],
        )
        ks.add_row(
            row["feature"],
            row["shift"],
            fmt(row["modeltel_ks_statistic"], ".6f"),
            fmt(row["scipy_ks_statistic"], ".6f"),
            fmt(row["modeltel_ks_pvalue"], ".6g"),
            fmt(row["evidently_ks_pvalue"], ".6g"),
            fmt(row["scipy_ks_pvalue"], ".6g"),
            fmt(worst, ".1e"),
            fmt(row["modeltel_default_ks_statistic"], ".4f"),
        )
    console.print(ks)

    default = Table(title="Evidently's default methods next to modeltel (exact) on the same features")
    for column in (
        "feature",
        "Evidently method",
        "Evidently value",
        "modeltel value",
        "rel diff",
        "drift E / m",
    ):
        default.add_column(column, justify="left" if column in ("feature", "Evidently method") else "right")
    for row in result["features"]:
        method = row["evidently_default_kind"]
        if method == "wasserstein":
            ours, theirs = row["modeltel_wasserstein"], row["evidently_default_value"]
            diff = fmt(row["wasserstein_rel_diff_evidently"], ".1e")
            label = "wasserstein (normed)"
        elif method == "jensenshannon":
            ours, theirs, diff = row["modeltel_js_base2"], row["evidently_js_base2"], "(binning differs)"
            label = "jensenshannon (base 2)"
        else:
            ours, theirs, diff, label = math.nan, row["evidently_default_value"], "-", str(method)
        evidently_drift = (
            theirs > row["evidently_default_threshold"]
            if method in ("wasserstein", "jensenshannon")
            else None
        )
        default.add_row(
            row["feature"],
            label,
            fmt(theirs, ".5f"),
            fmt(ours, ".5f"),
            diff,
            f"{'yes' if evidently_drift else 'no'} / {'yes' if row['modeltel_drifted'] else 'no'}",
        )
    console.print(default)
    speedup = result["speedup"]
    console.print(
        f"modeltel (default) is [bold]{speedup['default_vs_evidently_default']:.1f}x[/bold] faster than "
        f"Evidently's DataDriftPreset() and {speedup['exact_vs_evidently_ks']:.1f}x (exact) faster than "
        f"DataDriftPreset(num_method='ks'); target {TARGET:.0f}x. "
        f"KS equal (rel. tolerance {KS_TOLERANCE:g}): "
        + ("[green]yes[/green]" if result["ks_equal"] else "[red]NO[/red]")
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["_evidently"]:
        return evidently_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=100_000, help="rows of the reference and of the current data"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per configuration (median)")
    parser.add_argument("--batch", type=int, default=500, help="rows per window update (one request's batch)")
    parser.add_argument("--chunk", type=int, default=10_000, help="rows per reference profile update")
    parser.add_argument(
        "--evidently-python",
        default=str(DEFAULT_EVIDENTLY_PYTHON) if DEFAULT_EVIDENTLY_PYTHON.exists() else sys.executable,
        help="interpreter with evidently installed (default .venv-evidently/bin/python if present)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    import numpy as np

    started = time.time()
    reference, current, numeric, categorical = make_data(args.rows)
    with tempfile.TemporaryDirectory(prefix="modeltel-drift-bench-") as tmp:
        path = Path(tmp) / "data.npz"
        arrays = {f"reference:{k}": v for k, v in reference.items()}
        arrays.update({f"current:{k}": v for k, v in current.items()})
        np.savez(path, numeric=np.array(numeric), categorical=np.array(categorical), **arrays)
        evidently = run_evidently(args.evidently_python, path, args.repeats)
    exact_times, exact = time_modeltel(reference, current, args.rows, args)
    default_times, default = time_modeltel(reference, current, None, args)

    features = compare_values(reference, current, numeric, categorical, exact, default, evidently)
    ks_equal = all(
        max(
            row["ks_statistic_rel_diff_scipy"],
            row["ks_pvalue_rel_diff_scipy"],
            row["ks_pvalue_rel_diff_evidently"],
        )
        <= KS_TOLERANCE
        for row in features
        if row["kind"] == "numeric"
    )
    timings = {
        "modeltel (default, 10k reservoirs)": summary(default_times),
        f"modeltel (exact, {args.rows:,}-value samples)": summary(exact_times),
        "evidently (default)": summary(evidently["configurations"]["default"]["times_s"]),
        "evidently (KS)": summary(evidently["configurations"]["ks"]["times_s"]),
    }
    evidently_default = timings["evidently (default)"]["median_s"]
    speedup = {
        "default_vs_evidently_default": evidently_default
        / timings["modeltel (default, 10k reservoirs)"]["median_s"],
        "exact_vs_evidently_default": evidently_default
        / timings[f"modeltel (exact, {args.rows:,}-value samples)"]["median_s"],
        "exact_vs_evidently_ks": timings["evidently (KS)"]["median_s"]
        / timings[f"modeltel (exact, {args.rows:,}-value samples)"]["median_s"],
    }
    result: dict[str, Any] = {
        "benchmark": "drift_vs_evidently",
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": None,
        "config": {
            "rows": args.rows,
            "features": len(numeric) + len(categorical),
            "numeric": numeric,
            "categorical": categorical,
            "shifted": SHIFTED,
            "repeats": args.repeats,
            "window_batch": args.batch,
            "reference_chunk": args.chunk,
            "evidently_python": args.evidently_python,
            "evidently_presets": {"default": "DataDriftPreset()", "ks": "DataDriftPreset(num_method='ks')"},
        },
        "environment": {**environment(), "evidently_process": evidently["versions"]},
        "timings": timings,
        "speedup": speedup,
        "target": TARGET,
        "ks_tolerance": KS_TOLERANCE,
        "ks_equal": ks_equal,
        "meets_target": speedup["default_vs_evidently_default"] >= TARGET,
        "features": features,
    }
    result["duration_s"] = round(time.time() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    report(result)
    print(f"results: {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0 if ks_equal else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
