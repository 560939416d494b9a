"""Drift statistics equal their references (scipy, or numpy written out) on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import spatial, stats

from modeltel_collector.drift import FeatureWindow, ProfileBuilder, compare
from modeltel_collector.drift.statistics import (
    DEFAULT_EPS,
    ChiSquareMethod,
    _prob_outside_square,
    chi_square_test,
    hellinger,
    js_distance,
    kl_divergence,
    ks_test,
    normalised_wasserstein,
    psi,
    sample_distances,
    total_variation,
)

RNG_SEED = 7


def numeric_case(n_ref: int, n_cur: int, shift: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    return rng.normal(0.0, 1.0, n_ref), rng.normal(shift, 1.2, n_cur)


def smoothed(weights: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    p = weights / weights.sum()
    return (p + eps) / (1 + eps * p.size)


def test_ks_equals_scipy_when_window_fits_the_sample() -> None:
    reference, current = numeric_case(8_000, 3_000)
    builder = ProfileBuilder("x")
    builder.update(reference)
    profile = builder.build()
    window = FeatureWindow(profile)
    for chunk in np.array_split(current, 7):
        window.update(chunk)
    result = compare(profile, window, n_features=1)
    expected = stats.ks_2samp(reference, current)
    assert result.ks_statistic == expected.statistic
    assert result.ks_pvalue == expected.pvalue
    assert ks_test(reference, current) == (expected.statistic, expected.pvalue)


def test_ks_uses_the_reference_sample_beyond_the_bound() -> None:
    reference, current = numeric_case(50_000, 2_000)
    builder = ProfileBuilder("x", sample_size=5_000)
    builder.update(reference)
    profile = builder.build()
    window = FeatureWindow(profile)
    window.update(current)
    result = compare(profile, window, n_features=1)
    expected = stats.ks_2samp(profile.sample, current)
    assert (result.ks_statistic, result.ks_pvalue) == (expected.statistic, expected.pvalue)


def test_wasserstein_equals_scipy() -> None:
    reference, current = numeric_case(5_000, 1_000)
    builder = ProfileBuilder("x")
    builder.update(reference)
    profile = builder.build()
    window = FeatureWindow(profile)
    window.update(current)
    result = compare(profile, window, n_features=1)
    distance = stats.wasserstein_distance(reference, current)
    assert profile.scale == pytest.approx(np.std(reference, ddof=1), rel=1e-12)
    assert result.wasserstein == pytest.approx(distance / np.std(reference, ddof=1), rel=1e-12)
    # Same terms as scipy's integral, summed in another order.
    assert normalised_wasserstein(reference, current, 2.0) == pytest.approx(distance / 2.0, rel=1e-12)


def random_pair(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous, shifted, or tied (integer) samples, sizes ``n`` and ``m``."""
    kind = rng.integers(0, 3)
    if kind == 0:
        return rng.normal(size=n), rng.normal(size=m)
    if kind == 1:
        shift = rng.choice([0.02, 0.1, 0.3, 1.0, 5.0])
        return rng.normal(size=n), rng.normal(shift, 1.0 + 0.3 * rng.random(), m)
    return rng.integers(0, 5, n).astype(float), (rng.integers(0, 5, m) + rng.integers(0, 2)).astype(float)


@pytest.mark.parametrize("sizes", ["equal", "unequal"])
def test_ks_and_wasserstein_together_equal_scipy_bit_for_bit(sizes: str) -> None:
    """Equal sizes up to 10,000 take the truncated exact p-value; others call ks_2samp."""
    rng = np.random.default_rng(11)
    for _ in range(150):
        n = int(rng.choice([1, 2, 3, 8, 50, 333, 1_000, 10_000]))
        m = n if sizes == "equal" else int(rng.integers(1, 3_000))
        a, b = random_pair(rng, n, m)
        statistic, pvalue, wasserstein = sample_distances(a, rng.permutation(b), scale=2.0)
        expected = stats.ks_2samp(a, b)
        assert (statistic, pvalue) == (expected.statistic, expected.pvalue), (n, m)
        assert ks_test(a, b) == (statistic, pvalue)
        assert wasserstein == pytest.approx(stats.wasserstein_distance(a, b) / 2.0, rel=1e-12, abs=0)


def test_truncated_exact_ks_pvalue_equals_scipys_sum_for_every_h() -> None:
    """The truncated sum against scipy's own routine: all ``h`` for small ``n``, a grid at 10,000."""
    from scipy.stats import _stats_py

    # A private routine of the scipy that constraints.txt pins: if an upgrade removes it, compare
    # _prob_outside_square with the new one (the public ks_2samp comparison above still holds).
    reference = _stats_py._compute_prob_outside_square
    cases = [(n, h) for n in range(1, 61) for h in range(1, n + 1)]
    cases += [(10_000, h) for h in [*range(1, 200, 7), *range(200, 10_001, 613)]]
    for n, h in cases:
        assert _prob_outside_square(n, h) == reference(n, h), (n, h)


def test_wasserstein_zero_scale_is_guarded() -> None:
    assert normalised_wasserstein([3.0, 3.0], [3.0, 4.0], 0.0) == 0.5
    assert normalised_wasserstein([3.0], [4.0], math.nan) == 1.0
    builder = ProfileBuilder("constant")
    builder.update(np.full(100, 3.0))
    assert builder.build().scale == 1.0


def test_binned_divergences_equal_numpy_on_the_same_bins() -> None:
    reference, current = numeric_case(10_000, 1_500)
    builder = ProfileBuilder("x")
    builder.update(reference)
    profile = builder.build()
    window = FeatureWindow(profile)
    window.update(current)
    result = compare(profile, window, n_features=1)

    edges = np.concatenate([[-np.inf], profile.edges, [np.inf]])
    ref_counts = np.histogram(reference, bins=edges)[0]
    cur_counts = np.histogram(current, bins=edges)[0]
    # The reference fits the sample, so its proportions are exact.
    np.testing.assert_allclose(profile.proportions, ref_counts / reference.size, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(window.bin_counts, cur_counts)

    p, q = smoothed(ref_counts.astype(float)), smoothed(cur_counts.astype(float))
    assert result.psi == pytest.approx(np.sum((q - p) * np.log(q / p)), rel=1e-12)
    assert result.kl == pytest.approx(np.sum(q * np.log(q / p)), rel=1e-12)
    p, q = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    m = (p + q) / 2
    js = np.sqrt((np.sum(p * np.log2(p / m)) + np.sum(q * np.log2(q / m))) / 2)
    assert result.js == pytest.approx(js, rel=1e-12)
    assert result.js == pytest.approx(spatial.distance.jensenshannon(p, q, base=2), rel=1e-9)
    assert result.hellinger == pytest.approx(np.sqrt(1 - np.sum(np.sqrt(p * q))), rel=1e-9)
    assert result.tv == pytest.approx(0.5 * np.abs(p - q).sum(), rel=1e-12)


def test_divergences_with_empty_bins_are_finite_and_bounded() -> None:
    reference, current = np.array([0.5, 0.5, 0.0]), np.array([0, 10, 10])
    assert math.isfinite(psi(reference, current)) and psi(reference, current) > 1
    assert math.isfinite(kl_divergence(reference, current))
    assert js_distance([1, 0], [0, 1]) == 1.0
    assert hellinger([1, 0], [0, 1]) == 1.0
    assert total_variation([1, 0], [0, 1]) == 1.0
    for function in (psi, kl_divergence, js_distance, hellinger, total_variation):
        assert function([3, 1, 0], [30, 10, 0]) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="bins"):
        psi([1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        psi([1, 1], [0, 0])


def test_chi_square_goodness_of_fit_equals_scipy() -> None:
    reference = np.array([0.5, 0.3, 0.2])
    current = np.array([40, 35, 25])
    expected = stats.chisquare(current, current.sum() * reference)
    assert chi_square_test(reference, current) == (expected.statistic, expected.pvalue)
    # Counts or proportions alike.
    assert chi_square_test(reference * 1234, current) == pytest.approx(chi_square_test(reference, current))


def test_chi_square_pools_unseen_categories_with_a_smoothed_expectation() -> None:
    reference = np.array([0.6, 0.4, 0.0, 0.0, 0.0])  # three categories unseen in the reference
    current = np.array([50, 40, 4, 5, 1])
    n = current.sum()
    observed = np.array([50, 40, 10])
    expected_p = np.array([0.6 * (1 - DEFAULT_EPS), 0.4 * (1 - DEFAULT_EPS), DEFAULT_EPS])
    expected = stats.chisquare(observed, n * expected_p)
    assert chi_square_test(reference, current) == (expected.statistic, expected.pvalue)
    # No unseen value in the window: no unseen bucket.
    assert chi_square_test(reference, [60, 40, 0, 0, 0]) == (0.0, 1.0)


def test_chi_square_two_sample_equals_chi2_contingency() -> None:
    reference = np.array([500, 300, 200, 0])
    current = np.array([40, 35, 20, 5])
    expected = stats.chi2_contingency(np.vstack([reference, current]), correction=False)
    assert chi_square_test(reference, current, method="two_sample") == (expected.statistic, expected.pvalue)
    # Two unseen categories are pooled into one column; categories empty on both sides dropped.
    pooled = stats.chi2_contingency(np.array([[500, 300, 0], [40, 35, 7]]), correction=False)
    assert chi_square_test([500, 300, 0, 0, 0], [40, 35, 3, 4, 0], method="two_sample") == (
        pooled.statistic,
        pooled.pvalue,
    )


def test_detector_chi_square_is_two_sample_on_profile_counts() -> None:
    rng = np.random.default_rng(RNG_SEED)
    names = np.array(["a", "b", "c"], dtype=object)
    builder = ProfileBuilder("c")
    builder.update(names[rng.choice(3, 2_000, p=[0.5, 0.3, 0.2])])
    profile = builder.build()
    window = FeatureWindow(profile)
    current = np.append(names[rng.choice(3, 300, p=[0.4, 0.4, 0.2])], ["z", "z", None])
    window.update(current)
    result = compare(profile, window, n_features=1)
    table = np.vstack([profile.category_weights()[:-1], window.category_weights()[:-1]])
    table = np.hstack([table, [[0], [2]]])  # the unseen "z" column
    expected = stats.chi2_contingency(table, correction=False)
    assert (result.chi2_statistic, result.chi2_pvalue) == (expected.statistic, expected.pvalue)
    assert result.missing_share == pytest.approx(1 / 303)


def test_two_sample_chi_square_holds_alpha_with_a_small_reference_where_goodness_of_fit_does_not() -> None:
    """With a 1,000-row (warm-up sized) reference and 1,000-row windows, measured at alpha = 0.05."""
    rng = np.random.default_rng(RNG_SEED)
    p = [0.4, 0.25, 0.15, 0.12, 0.08]
    trials = 400
    methods: tuple[ChiSquareMethod, ...] = ("goodness_of_fit", "two_sample")
    alarms = dict.fromkeys(methods, 0)
    for _ in range(trials):
        reference = np.bincount(rng.choice(5, 1_000, p=p), minlength=5)
        current = np.bincount(rng.choice(5, 1_000, p=p), minlength=5)
        for method in methods:
            alarms[method] += chi_square_test(reference, current, method=method)[1] < 0.05
    assert alarms["two_sample"] / trials < 0.08
    assert alarms["goodness_of_fit"] / trials > 0.2
