"""Drift statistics: pure functions on numpy arrays.

Binned divergences take two aligned 1-d arrays of non-negative weights, the reference
first: counts or proportions alike, as each is divided by its sum. The tests and the
Wasserstein distance are scipy's (:func:`scipy.stats.ks_2samp`,
:func:`scipy.stats.wasserstein_distance`, :func:`scipy.stats.chisquare`,
:func:`scipy.stats.chi2_contingency`).

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
    a = np.asarray(reference_sample, dtype=np.float64)
    b = np.asarray(current_sample, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("the KS test needs two non-empty samples")
    result = stats.ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


def normalised_wasserstein(
    reference_sample: npt.ArrayLike, current_sample: npt.ArrayLike, scale: float
) -> float:
    """Wasserstein-1 (earth mover's) distance divided by ``scale``, the reference's spread.

    ``scipy.stats.wasserstein_distance(reference, current) / scale``. With ``scale`` the
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
    a = np.asarray(reference_sample, dtype=np.float64)
    b = np.asarray(current_sample, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("the Wasserstein distance needs two non-empty samples")
    divisor = scale if math.isfinite(scale) and scale > 0 else 1.0
    return float(stats.wasserstein_distance(a, b)) / divisor


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
