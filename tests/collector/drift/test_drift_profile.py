"""Reference profiles: chunked merging, bounded memory, a uniform reservoir, bins, storage."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from modeltel_collector.drift import ModelProfile, ModelProfileBuilder, ProfileBuilder, ReferenceProfile
from modeltel_collector.drift import reservoir as reservoir_module
from modeltel_collector.drift.columns import CategoryCounter
from modeltel_collector.drift.moments import Moments
from modeltel_collector.drift.profile import quantile_edges
from modeltel_collector.drift.reservoir import Reservoir


def test_many_chunks_give_numpy_moments_on_the_whole_data() -> None:
    rng = np.random.default_rng(1)
    data = rng.lognormal(3.0, 1.0, 200_000)
    data[rng.random(data.size) < 0.05] = np.nan
    builder = ProfileBuilder("x")
    for chunk in np.array_split(data, 137):
        builder.update(chunk)
    profile = builder.build()
    present = data[~np.isnan(data)]
    assert profile.count == present.size
    assert profile.missing == data.size - present.size
    assert np.allclose(profile.moments.mean, present.mean(), rtol=1e-12)
    assert np.allclose(profile.moments.variance(), present.var(ddof=1), rtol=1e-10)
    assert (profile.moments.min, profile.moments.max) == (present.min(), present.max())


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=0, max_size=30), min_size=1, max_size=10
    )
)
def test_moments_in_any_chunking(chunks: list[list[float]]) -> None:
    moments = Moments()
    for chunk in chunks:
        moments.update(np.array(chunk, dtype=np.float64))
    data = np.array([value for chunk in chunks for value in chunk])
    assert moments.count == data.size
    if data.size:
        assert moments.mean == pytest.approx(data.mean(), rel=1e-9, abs=1e-6)
        assert moments.variance(ddof=0) == pytest.approx(data.var(), rel=1e-7, abs=1e-3)
        assert (moments.min, moments.max) == (data.min(), data.max())


def test_reservoir_never_exceeds_its_size_on_a_million_values() -> None:
    rng = np.random.default_rng(2)
    reservoir = Reservoir(size=10_000, seed=3)
    for size in rng.integers(1, 30_000, 30):
        reservoir.update(rng.random(size))
        assert reservoir.sample.size <= 10_000
    reservoir.update(rng.random(1_000_000 - reservoir.seen))
    assert reservoir.seen == 1_000_000
    assert reservoir.sample.size == 10_000
    assert reservoir.sample.nbytes == 80_000


def test_profile_memory_is_bounded_whatever_the_data_size() -> None:
    rng = np.random.default_rng(4)
    numeric, categorical = ProfileBuilder("x"), ProfileBuilder("c", max_categories=50)
    for _ in range(20):
        numeric.update(rng.normal(size=50_000))
        categorical.update(rng.integers(0, 5_000, 50_000).astype(str).astype(object))
    assert numeric.reservoir.sample.size == 10_000
    assert numeric.count == 1_000_000
    assert categorical.counter.categories.size == 50
    assert categorical.counter.total == categorical.count == 1_000_000


def test_reservoir_is_uniform() -> None:
    """A stream 0..N-1 in chunks: every position is equally likely to be kept."""
    n, size = 1_000_000, 10_000
    reservoir = Reservoir(size=size, seed=5)
    for chunk in np.array_split(np.arange(n, dtype=np.float64), 97):
        reservoir.update(chunk)
    sample = reservoir.sample
    assert np.unique(sample).size == size  # no value kept twice
    standard_error = n / np.sqrt(12 * size)
    assert abs(sample.mean() - (n - 1) / 2) < 4 * standard_error
    assert stats.kstest(sample / n, "uniform").pvalue > 1e-3
    # Early, middle and late parts of the stream are all represented about equally.
    thirds = np.bincount((sample * 3 // n).astype(int), minlength=3)
    assert np.all(np.abs(thirds - size / 3) < 5 * np.sqrt(size / 3))


CHUNKINGS = {
    "one at a time": [1] * 10,
    "crossing the fill": [2, 4, 4],
    "fill, then one chunk": [3, 7],
    "all at once": [10],
    "uneven": [1, 3, 2, 4],
}


@pytest.mark.parametrize("algorithm", ["hypergeometric", "algorithm R"])
@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_reservoir_keeps_every_subset_equally_often(
    algorithm: str, chunking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joint uniformity: over many seeds, each of the 120 subsets of 3 out of 10 is equally likely.

    Whatever the chunks, and for both merges: hypergeometric, and vectorised Algorithm R
    (used beyond 10**9 values, forced here by lowering the limit to 0). Pearson's
    chi-square over the 120 subsets.
    """
    if algorithm == "algorithm R":
        monkeypatch.setattr(reservoir_module, "_HYPERGEOMETRIC_LIMIT", 0)
    n, size, seeds = 10, 3, 6_000
    stream = np.arange(n, dtype=np.float64)
    bounds = np.cumsum([0, *CHUNKINGS[chunking]])
    assert bounds[-1] == n
    subsets = {subset: i for i, subset in enumerate(itertools.combinations(range(n), size))}
    counts = np.zeros(len(subsets), dtype=np.int64)
    for seed in range(seeds):
        reservoir = Reservoir(size=size, seed=seed)
        for start, stop in itertools.pairwise(bounds):
            reservoir.update(stream[start:stop])
        assert reservoir.seen == n and reservoir.sample.size == size
        counts[subsets[tuple(sorted(reservoir.sample.astype(int).tolist()))]] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("bounds", [[0, 30, 31, 90, 250, 251, 252, 400, 600], [0, 600]])
def test_reservoir_inclusion_frequencies_are_uniform_over_seeds(bounds: list[int]) -> None:
    """Each of 600 values is kept in a 50-value sample 50/600 of the time, over 2,000 seeds.

    The inclusion counts have covariance ``S p (1 - p) N / (N - 1) (I - 11'/N)`` (a sample
    without replacement), so the scaled sum of squares is chi-square with ``N - 1`` df.
    """
    n, size, seeds = 600, 50, 2_000
    stream = np.arange(n, dtype=np.float64)
    inclusion = np.zeros(n, dtype=np.int64)
    for seed in range(seeds):
        reservoir = Reservoir(size=size, seed=seed)
        for start, stop in itertools.pairwise(bounds):
            reservoir.update(stream[start:stop])
        inclusion[reservoir.sample.astype(int)] += 1
    p = size / n
    statistic = np.sum((inclusion - seeds * p) ** 2) * (n - 1) / (seeds * p * (1 - p) * n)
    assert stats.chi2.sf(statistic, n - 1) > 1e-3


def test_builder_holds_small_chunks_and_processes_them_together() -> None:
    rng = np.random.default_rng(6)
    data = rng.normal(size=20_000)
    one_by_one, together = ProfileBuilder("x"), ProfileBuilder("x")
    for chunk in np.array_split(data, 97):
        one_by_one.update(chunk)
        assert len(one_by_one._pending) <= 4_096  # bounded
    together.update(data)
    assert one_by_one.count == together.count == data.size
    assert one_by_one.moments.count == data.size  # reading the moments processes what is held
    assert one_by_one.moments.mean == pytest.approx(together.moments.mean, rel=1e-12)
    assert one_by_one.moments.variance() == pytest.approx(together.moments.variance(), rel=1e-12)
    assert one_by_one.reservoir.seen == data.size and len(one_by_one._pending) == 0


def test_quantile_bins_of_a_continuous_feature_hold_tenths() -> None:
    builder = ProfileBuilder("x")
    builder.update(np.random.default_rng(8).normal(size=100_000))
    profile = builder.build()
    assert profile.edges.size == 9
    assert np.allclose(profile.proportions, 0.1, atol=0.002)
    assert profile.proportions.sum() == pytest.approx(1.0)


def test_low_cardinality_bins_are_deduplicated_and_never_empty() -> None:
    rng = np.random.default_rng(9)
    children = rng.choice(5, 50_000, p=[0.35, 0.25, 0.22, 0.12, 0.06]).astype(float)
    builder = ProfileBuilder("children")
    builder.update(children)
    profile = builder.build()
    np.testing.assert_array_equal(profile.edges, [1.0, 2.0, 3.0])  # {0}, {1}, {2}, {3, 4}
    assert np.all(profile.proportions > 0)
    assert quantile_edges(np.full(10, 7.0)).size == 0  # constant: one bin
    assert quantile_edges(np.array([0.0, 1.0])).tolist() == [1.0]  # binary: two bins
    assert quantile_edges(np.empty(0)).size == 0


def test_categorical_profile_caps_categories_into_other() -> None:
    rng = np.random.default_rng(10)
    frequent = np.array([f"f{i}" for i in range(5)], dtype=object)
    rare = np.array([f"r{i}" for i in range(2_000)], dtype=object)
    builder = ProfileBuilder("c", max_categories=100)
    for _ in range(5):
        chunk = np.concatenate([frequent[rng.integers(0, 5, 5_000)], rare[rng.integers(0, 2_000, 500)]])
        builder.update(np.append(chunk, None))
    profile = builder.build()
    assert len(profile.categories) == 100
    assert set(profile.categories[:5]) == set(frequent)  # most frequent first
    assert profile.category_counts.sum() + profile.other_count == profile.count == 27_500
    assert profile.missing == 5
    assert profile.category_weights()[-1] == profile.other_count > 0


def test_category_counter_admits_the_most_frequent_new_categories() -> None:
    counter = CategoryCounter(max_categories=2)
    counter.update(np.array(["a", "b", "c"]), np.array([1, 9, 5]))
    assert counter.as_dict() == {"b": 9, "c": 5} and counter.other == 1
    assert CategoryCounter.from_dict(json.loads(json.dumps(counter.to_dict()))).as_dict() == counter.as_dict()


def test_kind_is_inferred_and_bools_match_extraction() -> None:
    builder = ProfileBuilder("flag")
    builder.update(np.array([True, False, True]))
    profile = builder.build()
    assert profile.kind == "categorical"
    assert profile.categories == ("true", "false")
    with pytest.raises(TypeError, match="not a number"):
        ProfileBuilder("x", "numeric").update(np.array(["a"], dtype=object))


def test_profiles_round_trip_through_json_with_stable_hashes() -> None:
    rng = np.random.default_rng(12)
    builder = ModelProfileBuilder("salary", "1.2.0")
    for _ in range(3):
        builder.update(
            {
                "years": np.where(rng.random(1_000) < 0.1, np.nan, rng.uniform(0, 40, 1_000)),
                "city": np.array(["paris", "lyon", None], dtype=object)[rng.integers(0, 3, 1_000)],
            }
        )
    model_profile = builder.build()
    text = json.dumps(model_profile.to_dict(), allow_nan=False)
    restored = ModelProfile.from_dict(json.loads(text))
    assert restored.content_hash() == model_profile.content_hash()
    for name, profile in model_profile.features.items():
        again = restored.features[name]
        assert again.content_hash() == profile.content_hash()
        assert again.to_dict() == profile.to_dict()
    assert len(model_profile.content_hash()) == 64

    # Any change of a feature's data changes its hash and the model's.
    builder.update({"years": np.array([100.0])})
    changed = builder.build()
    assert changed.features["years"].content_hash() != model_profile.features["years"].content_hash()
    assert changed.features["city"].content_hash() == model_profile.features["city"].content_hash()
    assert changed.content_hash() != model_profile.content_hash()
    assert (
        ModelProfile("salary", "1.2.1", model_profile.features).content_hash() != model_profile.content_hash()
    )


def test_profiles_are_reproducible_for_a_seed() -> None:
    data = np.random.default_rng(13).normal(size=50_000)
    hashes = set()
    for _ in range(2):
        builder = ProfileBuilder("x", seed=42)
        for chunk in np.array_split(data, 9):
            builder.update(chunk)
        hashes.add(builder.build().content_hash())
    assert len(hashes) == 1


def test_unknown_format_is_rejected() -> None:
    profile = ProfileBuilder("x", "numeric").build()
    data = profile.to_dict() | {"format": 99}
    with pytest.raises(ValueError, match="format"):
        ReferenceProfile.from_dict(data)
    assert profile.count == 0 and profile.proportions.tolist() == [0.0]
