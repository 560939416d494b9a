"""Drift statistics: pure functions on numpy arrays.

Binned divergences take two aligned 1-d arrays of non-negative weights, the reference
first: counts or proportions alike, as each is divided by its sum. The tests and the
Wasserstein distance are scipy's (:func:`scipy.stats.ks_2samp`,
:func:`scipy.stats.wasserstein_distance`, :func:`scipy.stats.chisquare`,
:func:`scipy.stats.chi2_contingency`); KS and Wasserstein are computed together from one
merge of the two sorted samples (:func:`sample_distances`), with scipy's values.

Empty-bin smoothing: PSI and KL divide by proportions and take their logarithms, so an
empty bin on either side would make them infinite. They add ``eps`` (default
:data:`DEFAULT_EPS` = 1e-4) to every bin's proportion of both distributions and
renormalise: ``p_i <- (p_i + eps) / (1 + k * eps)`` for ``k`` bins. A bin holding one
value in 10,000 is then still told apart from an empty one, while an empty bin costs at
most ``p * ln(p / eps)`` instead of infinity. Jensen-Shannon, Hellinger and total
variation are bounded and finite with empty bins, so they are computed on the unsmoothed
proportions.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special, stats

DEFAULT_EPS = 1e-4
"""Pseudo-proportion added to every bin by :func:`psi` and :func:`kl_divergence`."""

ChiSquareMethod = Literal["goodness_of_fit", "two_sample"]


def _proportions(weights: npt.ArrayLike, eps: float = 0.0) -> npt.NDArray[np.float64]:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError("expected a non-empty 1-d array of bin weights")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("bin weights must be finite and non-negative")
    total = w.sum()
    if total <= 0:
        raise ValueError("bin weights sum to zero: the distribution is empty")
    p: npt.NDArray[np.float64] = w / total
    if eps > 0:
        p = (p + eps) / (1.0 + eps * p.size)
    return p


def _pair(
    reference: npt.ArrayLike, current: npt.ArrayLike, eps: float = 0.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    p = _proportions(reference, eps)
    q = _proportions(current, eps)
    if p.shape != q.shape:
        raise ValueError(f"reference has {p.size} bins but current has {q.size}")
    return p, q


def psi(reference: npt.ArrayLike, current: npt.ArrayLike, *, eps: float = DEFAULT_EPS) -> float:
    """Population stability index ``sum((q - p) * ln(q / p))`` of current ``q`` against ``p``.

    Symmetric, >= 0, in nats; it equals ``KL(q || p) + KL(p || q)``. Rule of thumb: < 0.1
    stable, 0.1-0.2 moderate, > 0.2 significant shift (on about 10 quantile bins).

    Parameters
    ----------
    reference
        Reference counts or proportions per bin.
    current
        Current counts or proportions on the same bins.
    eps
        Empty-bin smoothing (see the module docstring).

    Examples
    --------
    >>> round(psi([0.5, 0.5], [40, 60]), 4)
    0.0405
    >>> psi([1, 1], [1, 1])
    0.0

    """
    p, q = _pair(reference, current, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def kl_divergence(reference: npt.ArrayLike, current: npt.ArrayLike, *, eps: float = DEFAULT_EPS) -> float:
    """Kullback-Leibler divergence ``KL(current || reference) = sum(q * ln(q / p))``, in nats.

    The direction is the information lost when the reference describes the current data;
    >= 0 and not symmetric.

    Parameters
    ----------
    reference
        Reference counts or proportions per bin (``p``).
    current
        Current counts or proportions on the same bins (``q``).
    eps
        Empty-bin smoothing (see the module docstring).

    Examples
    --------
    >>> round(kl_divergence([0.5, 0.5], [40, 60]), 4)
    0.0201

    """
    p, q = _pair(reference, current, eps)
    return float(np.sum(special.rel_entr(q, p)))


def js_distance(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Jensen-Shannon DISTANCE, base 2: the square root of the JS divergence, in [0, 1].

    ``sqrt((KL(p || m) + KL(q || m)) / 2)`` with ``m = (p + q) / 2`` and base-2 logarithms,
    as :func:`scipy.spatial.distance.jensenshannon` with ``base=2``. Square it for the
    divergence (also in [0, 1]). 0 for identical distributions, 1 for disjoint ones; finite
    with empty bins, so no smoothing.

    Parameters
    ----------
    reference
        Reference counts or proportions per bin.
    current
        Current counts or proportions on the same bins.

    Examples
    --------
    >>> js_distance([1, 0], [0, 1])
    1.0
    >>> round(js_distance([0.5, 0.5], [40, 60]), 4)
    0.0854

    """
    p, q = _pair(reference, current)
    m = (p + q) / 2.0
    divergence = (np.sum(special.rel_entr(p, m)) + np.sum(special.rel_entr(q, m))) / (2.0 * math.log(2.0))
    return float(math.sqrt(min(1.0, max(0.0, float(divergence)))))


def hellinger(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Hellinger distance ``sqrt(sum((sqrt(p) - sqrt(q))**2) / 2)``, in [0, 1].

    Equal to ``sqrt(1 - sum(sqrt(p * q)))``, computed in the first form, which does not
    lose precision for nearly equal distributions. Finite with empty bins, so no smoothing.

    Parameters
    ----------
    reference
        Reference counts or proportions per bin.
    current
        Current counts or proportions on the same bins.

    Examples
    --------
    >>> hellinger([1, 0], [0, 1])
    1.0
    >>> round(hellinger([0.5, 0.5], [40, 60]), 4)
    0.0712

    """
    p, q = _pair(reference, current)
    return float(math.sqrt(0.5 * float(np.sum(np.square(np.sqrt(p) - np.sqrt(q))))))


def total_variation(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Total-variation distance ``sum(|p - q|) / 2``, in [0, 1]: the share of mass that moved.

    For categories it reads directly: 0.1 means 10% of the rows would have to change
    category for the current distribution to match the reference.

    Parameters
    ----------
    reference
        Reference counts or proportions per category.
    current
        Current counts or proportions of the same categories.

    Examples
    --------
    >>> round(total_variation([0.5, 0.5], [40, 60]), 12)
    0.1

    """
    p, q = _pair(reference, current)
    return float(0.5 * np.sum(np.abs(p - q)))


def ks_test(reference_sample: npt.ArrayLike, current_sample: npt.ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: ``(statistic, pvalue)`` of :func:`scipy.stats.ks_2samp`.

    The statistic is the largest gap between the two empirical CDFs, in [0, 1]; scipy's
    default ``method="auto"`` (exact p-value for samples up to 10,000). With ties
    (low-cardinality features) the statistic is still exact and the p-value conservative.
    The result is scipy's, bit for bit; for two samples of the same size up to 10,000 it
    is computed here, faster (see :func:`sample_distances`).

    Parameters
    ----------
    reference_sample
        Reference values (1-d, no missing values).
    current_sample
        Current values (1-d, no missing values).

    Examples
    --------
    >>> ks_test([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    (0.0, 1.0)
    >>> statistic, pvalue = ks_test(np.arange(100.0), np.arange(100.0) + 50)
    >>> statistic, pvalue < 1e-10
    (0.5, True)

    """
    statistic, pvalue, _ = sample_distances(reference_sample, current_sample, scale=1.0)
    return statistic, pvalue


def normalised_wasserstein(
    reference_sample: npt.ArrayLike, current_sample: npt.ArrayLike, scale: float
) -> float:
    """Wasserstein-1 (earth mover's) distance divided by ``scale``, the reference's spread.

    ``scipy.stats.wasserstein_distance(reference, current) / scale`` (computed as in
    :func:`sample_distances`, equal up to rounding). With ``scale`` the
    reference standard deviation (what :attr:`ReferenceProfile.scale
    <modeltel_collector.drift.profile.ReferenceProfile.scale>` gives), a pure shift of the
    mean by ``d`` standard deviations gives ``d``, and any change that moves the mean by
    ``d`` sd in one direction gives at least ``d``, for continuous and for low-cardinality
    features alike (an interquartile range would be zero for a count that is mostly 0).
    A ``scale`` that is zero (a constant reference), negative or not finite is replaced by
    1, so the distance is then in the feature's own units rather than infinite.

    Parameters
    ----------
    reference_sample
        Reference values (1-d, no missing values).
    current_sample
        Current values (1-d, no missing values).
    scale
        Divisor, normally the reference standard deviation.

    Examples
    --------
    >>> normalised_wasserstein([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], scale=2.0)
    0.5
    >>> normalised_wasserstein([5.0, 5.0], [5.0, 6.0], scale=0.0)
    0.5

    """
    a, b = _sorted_samples(reference_sample, current_sample, "the Wasserstein distance")
    values, count_a, count_b = _pooled_counts(a, b)
    return _wasserstein(values, count_a / a.size, count_b / b.size) / _divisor(scale)


def sample_distances(
    reference_sample: npt.ArrayLike, current_sample: npt.ArrayLike, scale: float
) -> tuple[float, float, float]:
    """KS statistic, KS p-value and normalised Wasserstein distance of two samples, together.

    Equal to ``(*ks_test(a, b), normalised_wasserstein(a, b, scale))``, for the price of one
    sort of each sample (none for a sample already sorted, as a reference profile's is)
    and one merge of the two: both are functions of the two empirical CDFs at the
    distinct pooled values. The KS statistic and p-value are bit for bit those of
    :func:`scipy.stats.ks_2samp` (its statistic is a maximum over the same points); the
    Wasserstein distance equals :func:`scipy.stats.wasserstein_distance` up to the order of
    its sum (a relative difference of order 1e-16).

    For two samples of the same size ``n`` up to 10,000 (scipy's exact two-sided case,
    e.g. two full 10,000-value reservoirs), the exact p-value is computed here, with the
    same floating-point operations as scipy's ``_compute_prob_outside_square``:
    ``P = 2 A_0 (1 - A_1 (1 - A_2 (1 - ...)))``, where ``A_k`` is a product of ``h`` ratios
    (``h = round(D n)``). scipy evaluates every ``A_k`` up to ``k = n // h``, about ``n``
    Python steps; but once some ``A_k <= 2**-54`` with ``k >= 1``, the bracket it enters,
    ``1 - A_k (...)``, rounds to exactly 1.0, so the terms beyond cannot change the result
    and are not computed: about ``max(2 h, h + 6 sqrt(n))`` steps. Other sizes go to
    :func:`scipy.stats.ks_2samp`.

    Parameters
    ----------
    reference_sample
        Reference values (1-d, no missing values).
    current_sample
        Current values (1-d, no missing values).
    scale
        Divisor of the Wasserstein distance (see :func:`normalised_wasserstein`).

    Examples
    --------
    >>> sample_distances([0.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0], scale=2.0)
    (0.5, 0.7714285714285716, 1.0)

    """
    a, b = _sorted_samples(reference_sample, current_sample, "the KS test")
    values, count_a, count_b = _pooled_counts(a, b)
    n1, n2 = a.size, b.size
    cdf_a, cdf_b = count_a / n1, count_b / n2
    wasserstein = _wasserstein(values, cdf_a, cdf_b) / _divisor(scale)
    # As scipy: the largest gap each way, ``D`` the larger (the positive one on a tie).
    gaps = cdf_a - cdf_b
    above = float(gaps.max())
    below = float(np.clip(-gaps.min(), 0, 1))
    statistic = below if below > above else above
    if n1 == n2 <= _KS_EXACT_MAX_N:
        h = int(np.round(statistic * n1))
        if h == 0:
            return h * 1.0 / n1, 1.0, wasserstein
        pvalue = _prob_outside_square(n1, h)
        if 0.0 <= pvalue <= 1.0:
            return h * 1.0 / n1, pvalue, wasserstein
    result = stats.ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue), wasserstein


_KS_EXACT_MAX_N = 10_000
"""scipy's ``ks_2samp`` computes exact p-values (``method="auto"``) for samples up to this size."""

_NEGLIGIBLE = 2.0**-54
"""``1.0 - x`` rounds to exactly 1.0 for ``0 <= x <= 2**-54`` (round half to even)."""


def _prob_outside_square(n: int, h: int) -> float:
    """``Pr(D_{n,n} >= h / n)``, bit for bit as scipy's ``_compute_prob_outside_square(n, h)``.

    Same terms, same operations, same order; stops at the first negligible term (see
    :func:`sample_distances`).
    """
    last = int(np.floor(n / h))
    terms = []
    for k in range(last + 1):
        term = 1.0
        for j in range(h):
            term = (n - k * h - j) * term / (n + k * h + j + 1)
        if k >= 1 and term <= _NEGLIGIBLE:
            break  # scipy's P_k <= term: 1 - P_k is exactly 1.0, so P_{k-1} = A_{k-1}
        terms.append(term)
    total = 0.0
    for term in reversed(terms):
        total = term * (1.0 - total)
    return 2 * total


def _sorted_samples(
    reference_sample: npt.ArrayLike, current_sample: npt.ArrayLike, what: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    samples = []
    for sample in (reference_sample, current_sample):
        x = np.asarray(sample, dtype=np.float64).ravel()
        if x.size == 0:
            raise ValueError(f"{what} needs two non-empty samples")
        if x.size > 1 and not bool((x[1:] >= x[:-1]).all()):
            x = np.sort(x)
        samples.append(x)
    return samples[0], samples[1]


def _pooled_counts(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Distinct values of two sorted samples pooled, and how many of each sample are ``<=`` each.

    The counts ``np.searchsorted(a, values, side="right")`` and likewise for ``b``: a stable
    sort of the concatenation (a merge of two sorted runs) and a cumulative count of the
    values from ``a``, read at the last of each run of equal values.
    """
    pooled = np.concatenate([a, b])
    order = np.argsort(pooled, kind="stable")
    pooled = pooled[order]
    last = np.empty(pooled.size, dtype=np.bool_)
    np.not_equal(pooled[1:], pooled[:-1], out=last[:-1])
    last[-1] = True
    from_a = np.cumsum(order < a.size, dtype=np.intp)
    count_a = from_a[last]
    count_b = np.flatnonzero(last) + 1 - count_a
    return pooled[last], count_a, count_b


def _wasserstein(
    values: npt.NDArray[np.float64], cdf_a: npt.NDArray[np.float64], cdf_b: npt.NDArray[np.float64]
) -> float:
    """``integral |F_a - F_b|``: the CDFs are steps at the distinct pooled ``values``."""
    gaps = np.abs(cdf_a[:-1] - cdf_b[:-1])
    gaps *= np.diff(values)
    return float(np.add.reduce(gaps))  # not np.dot: OpenBLAS threads it beyond 10,000 values


def _divisor(scale: float) -> float:
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def chi_square_test(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    method: ChiSquareMethod = "goodness_of_fit",
    eps: float = DEFAULT_EPS,
) -> tuple[float, float]:
    """Pearson chi-square test of current category counts against the reference.

    Categories are aligned by position. A reference weight of 0 marks a category unseen
    in the reference: all unseen categories are pooled into one "unseen" bucket (so many
    rare new categories do not each make a cell with a tiny expected count), and
    categories empty on both sides are dropped. With fewer than two buckets left there is
    nothing to test and the result is ``(0.0, 1.0)``.

    ``method="goodness_of_fit"`` (:func:`scipy.stats.chisquare`) treats the reference
    proportions as exact: ``reference`` may be counts or proportions. The unseen bucket
    then gets the smoothed expected proportion ``eps`` and the seen ones ``p * (1 - eps)``,
    so its expected count is ``n * eps`` instead of 0 (one unseen value in 1,000 is already
    significant; whether it matters is the effect size's call). Use it when the reference
    is much larger than the window.

    ``method="two_sample"`` (:func:`scipy.stats.chi2_contingency` on the 2 x k table of
    counts, no continuity correction) also accounts for the reference's own sampling
    noise, and needs no smoothing: ``reference`` must be counts. Use it when the
    reference is not much larger than the window, e.g. a warm-up reference; a
    goodness-of-fit test against a 1,000-row reference false-alarms several times more
    often than ``alpha`` on 1,000-row windows.

    Parameters
    ----------
    reference
        Reference counts (or, for goodness of fit, proportions) per category.
    current
        Current counts of the same categories.
    method
        ``"goodness_of_fit"`` or ``"two_sample"``.
    eps
        Expected proportion of the pooled unseen bucket (goodness of fit only).

    Examples
    --------
    >>> statistic, pvalue = chi_square_test([0.5, 0.5], [50, 50])
    >>> statistic, pvalue
    (0.0, 1.0)
    >>> statistic, pvalue = chi_square_test([0.5, 0.5, 0.0], [45, 45, 10])
    >>> pvalue < 1e-10
    True
    >>> statistic, pvalue = chi_square_test([500, 500], [60, 40], method="two_sample")
    >>> round(statistic, 3), round(pvalue, 3)
    (3.638, 0.056)

    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ValueError("reference and current must be 1-d arrays of the same length")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cur))) or np.any(ref < 0) or np.any(cur < 0):
        raise ValueError("category weights must be finite and non-negative")
    if cur.sum() <= 0 or ref.sum() <= 0:
        raise ValueError("the chi-square test needs non-empty reference and current counts")
    seen = ref > 0
    unseen_count = float(cur[~seen].sum())
    if method == "two_sample":
        ref_cells, cur_cells = ref[seen], cur[seen]
        if unseen_count > 0:
            ref_cells, cur_cells = np.append(ref_cells, 0.0), np.append(cur_cells, unseen_count)
        if ref_cells.size < 2:
            return 0.0, 1.0
        result = stats.chi2_contingency(np.vstack([ref_cells, cur_cells]), correction=False)
        return float(result.statistic), float(result.pvalue)
    if method != "goodness_of_fit":
        raise ValueError(f"unknown chi-square method {method!r}")
    n = cur.sum()
    expected_p = ref[seen] / ref.sum()
    observed = cur[seen]
    if unseen_count > 0:
        expected_p = np.append(expected_p * (1.0 - eps), eps)
        observed = np.append(observed, unseen_count)
    if observed.size < 2:
        return 0.0, 1.0
    result = stats.chisquare(observed, n * expected_p)
    return float(result.statistic), float(result.pvalue)
