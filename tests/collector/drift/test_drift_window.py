"""Window state: bin counts, missing values, unseen categories, bounded memory, checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from modeltel_collector.drift import FeatureWindow, ProfileBuilder, ReferenceProfile, compare


def numeric_profile(seed: int = 0) -> ReferenceProfile:
    builder = ProfileBuilder("x")
    builder.update(np.random.default_rng(seed).normal(10.0, 2.0, 30_000))
    return builder.build()


def categorical_profile() -> ReferenceProfile:
    builder = ProfileBuilder("c")
    builder.update(np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20, dtype=object))
    return builder.build()


def test_bin_counts_equal_a_histogram_on_the_reference_edges() -> None:
    profile = numeric_profile()
    values = np.random.default_rng(1).normal(11.0, 3.0, 5_000)
    values[:5] = [-1e9, 1e9, profile.edges[0], profile.edges[-1], np.nextafter(profile.edges[3], -np.inf)]
    window = FeatureWindow(profile)
    for chunk in np.array_split(values, 11):
        window.update(chunk)
    # np.histogram bins are [a, b) (the last one closed), as the window's; open-ended end bins.
    edges = np.concatenate([[-np.inf], profile.edges, [np.inf]])
    np.testing.assert_array_equal(window.bin_counts, np.histogram(values, bins=edges)[0])
    assert window.bin_counts[0] >= 1 and window.bin_counts[-1] >= 1
    assert window.bin_counts.sum() == window.n == values.size
    # Values of +-1e9 among ones near 10: a sum with cancellation, so compare with the exact
    # mean at 1e-11 (np.mean itself is 2e-12 off here).
    assert window.moments.mean == pytest.approx(math.fsum(values) / values.size, rel=1e-11)


def test_missing_share_counts_nan_inf_and_none() -> None:
    window = FeatureWindow(numeric_profile())
    window.update(np.array([1.0, np.nan, np.inf, 2.0]))
    window.update(np.array([3.0, None, 4.0], dtype=object))
    assert (window.n, window.missing) == (4, 3)
    assert window.missing_share == pytest.approx(3 / 7)
    empty = FeatureWindow(numeric_profile())
    empty.update(np.array([np.nan, np.nan]))
    result = compare(empty.profile, empty, n_features=1)
    assert result.missing_share == 1.0 and np.isnan(result.psi) and not result.drifted

    categorical = FeatureWindow(categorical_profile())
    categorical.update(np.array(["a", None, float("nan"), "b"], dtype=object))
    assert (categorical.n, categorical.missing) == (2, 2)


def test_unseen_categories_are_counted_and_capped() -> None:
    profile = categorical_profile()
    window = FeatureWindow(profile, max_unseen=3)
    window.update(np.array(["a", "b", "x", "y", "x"], dtype=object))
    window.update(np.array([f"new{i}" for i in range(10)] + ["c", "a"], dtype=object))
    assert profile.categories == ("a", "b", "c")
    np.testing.assert_array_equal(window.category_counts, [2, 1, 1])
    assert window.unseen.categories.size == 3
    assert window.unseen.total == 13  # x, y, x and ten new ones (seven of them pooled)
    np.testing.assert_array_equal(window.category_weights(), [2, 1, 1, 13])
    result = compare(profile, window, n_features=1)
    assert result.tv == pytest.approx(13 / 17)
    assert not result.drifted  # 17 values: below min_samples
    assert compare(profile, window, n_features=1, min_samples=10).drifted


def test_a_few_unseen_values_are_significant_but_not_material() -> None:
    rng = np.random.default_rng(2)
    names = np.array(["a", "b", "c"], dtype=object)
    builder = ProfileBuilder("c")
    builder.update(names[rng.integers(0, 3, 20_000)])
    profile = builder.build()
    window = FeatureWindow(profile)
    window.update(np.append(names[rng.integers(0, 3, 2_000)], ["brand-new"] * 5))
    result = compare(profile, window, n_features=1)
    assert result.chi2_pvalue < 1e-3
    assert result.tv < 0.03  # sampling noise and 5 rows in 2,005: far below the 0.1 floor
    assert not result.drifted


def test_window_memory_is_bounded_whatever_the_traffic() -> None:
    rng = np.random.default_rng(3)
    numeric = FeatureWindow(numeric_profile(), sample_size=1_000)
    categorical = FeatureWindow(categorical_profile(), max_unseen=100)
    for _ in range(20):
        numeric.update(rng.normal(10.0, 2.0, 50_000))
        categorical.update(rng.integers(0, 100_000, 50_000).astype(str).astype(object))
    assert numeric.n == 1_000_000 and numeric.reservoir.sample.size == 1_000
    assert numeric.bin_counts.size == numeric.profile.edges.size + 1
    assert categorical.unseen.categories.size == 100
    assert categorical.unseen.total == 1_000_000


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_checkpoint_round_trip_gives_identical_results(kind: str) -> None:
    rng = np.random.default_rng(4)
    profile = numeric_profile() if kind == "numeric" else categorical_profile()

    def batch() -> np.ndarray:
        if kind == "numeric":
            values = rng.normal(10.5, 2.0, 3_000)
            values[rng.random(values.size) < 0.1] = np.nan
            return values
        return np.array(["a", "b", "c", "d", None], dtype=object)[rng.integers(0, 5, 3_000)]

    original = FeatureWindow(profile, sample_size=2_000, seed=9)
    original.update(batch())
    restored = FeatureWindow.from_dict(json.loads(json.dumps(original.to_dict(), allow_nan=False)), profile)
    assert restored.to_dict() == original.to_dict()
    assert repr(compare(profile, restored, n_features=2)) == repr(compare(profile, original, n_features=2))
    # Both continue identically: same reservoir replacements, same counts.
    more = batch()
    original.update(more)
    restored.update(more)
    assert restored.to_dict() == original.to_dict()
    assert repr(compare(profile, restored, n_features=2)) == repr(compare(profile, original, n_features=2))


def test_restoring_against_another_profile_is_refused() -> None:
    window = FeatureWindow(numeric_profile(0))
    window.update(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="profile"):
        FeatureWindow.from_dict(window.to_dict(), numeric_profile(1))


def test_pending_values_are_checkpointed_and_cut_points_change_nothing_but_draws() -> None:
    profile = numeric_profile()
    rng = np.random.default_rng(5)
    batches = [rng.normal(10.0, 2.0, size) for size in (500, 3, 1_200, 4_000, 500, 9_000, 70)]
    original = FeatureWindow(profile, seed=3)
    eager = FeatureWindow(profile, seed=3, pending=1)  # processes every batch at once
    for batch in batches[:3]:
        original.update(batch)
        eager.update(batch)
    state = json.loads(json.dumps(original.to_dict(), allow_nan=False))
    assert len(state["pending"]) == 1_703 and state["reservoir"]["seen"] == 0  # all still held
    restored = FeatureWindow.from_dict(state, profile)
    assert restored.to_dict() == original.to_dict()
    for batch in batches[3:]:
        for window in (original, restored, eager):
            window.update(batch)
        assert restored.to_dict() == original.to_dict()
    assert repr(compare(profile, restored, n_features=1)) == repr(compare(profile, original, n_features=1))
    values = np.concatenate(batches)
    for window in (original, eager):
        np.testing.assert_array_equal(
            window.bin_counts, np.histogram(values, np.r_[-np.inf, profile.edges, np.inf])[0]
        )
        assert window.moments.count == window.n == window.reservoir.seen == values.size
        assert window.moments.mean == pytest.approx(values.mean(), rel=1e-12)
        assert window.moments.variance() == pytest.approx(values.var(ddof=1), rel=1e-12)
        assert window.reservoir.sample.size == 10_000
    assert original.to_dict()["pending"] == []  # reading the state processed what was held
    # A checkpoint written before windows held values (no "pending") still loads.
    legacy = {key: value for key, value in original.to_dict().items() if not key.startswith("pending")}
    assert FeatureWindow.from_dict(legacy, profile).to_dict() == original.to_dict()


@pytest.mark.parametrize("bins", [2, 10, 33, 100])  # comparisons up to 32 cut points, a search beyond
def test_bin_counts_equal_the_bins_of_searchsorted(bins: int) -> None:
    rng = np.random.default_rng(7)
    builder = ProfileBuilder("x", bins=bins)
    builder.update(rng.integers(0, 200, 5_000).astype(float))  # ties: cut points are data values
    profile = builder.build()
    values = np.concatenate([rng.integers(-10, 210, 3_000).astype(float), profile.edges, [-1e300, 1e300]])
    expected = np.bincount(
        np.searchsorted(profile.edges, values, side="right"), minlength=profile.edges.size + 1
    )
    counts = profile.bin_counts(values)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(profile.bin_counts(values[:0]), np.zeros(profile.edges.size + 1))
