"""Compare a window with its reference: every drift statistic, and the drift decision.

Default decision (``method="default"``): a feature has drifted when its change is both

- significant: the KS p-value (numeric) or the two-sample chi-square p-value
  (categorical) is below ``alpha / n_features``, a Bonferroni correction, so that across
  all features of a model a stable window raises a false alarm with probability at most
  ``alpha``; and
- material: an effect size exceeds a floor, the normalised Wasserstein distance
  (numeric, :data:`DEFAULT_WASSERSTEIN_FLOOR`) or the total-variation distance
  (categorical, :data:`DEFAULT_TV_FLOOR`).

p-values alone flag every tiny real shift once windows are large; effect sizes alone
false-alarm on small windows, where their sampling noise is large. The Wasserstein
distance is used rather than PSI because PSI on reference-quantile bins cannot see a
shift that keeps values inside their bins, as shifts of low-cardinality features often
do (a count of 0-4 gets 4 bins, and adding 0.6 to it leaves every value in its bin),
and it grows with the mean shift in every feature alike.

Floors, measured with a fixed seed: 1,000 windows per feature and size against a
20,000-row reference (default 10,000-value sample) of a normal feature, a count of 0-4
(children) and a 5-category feature; ``tests/collector/drift/test_drift_detector.py``
re-measures smaller runs, and river's bundled Shuttle and SolarFlare data, and asserts.

- Noise: on stable 1,000-row windows the 99th percentile of the normalised Wasserstein
  distance is 0.088 (normal) and 0.087 (count), that of the total variation 0.050
  (categories); on 100-row windows their medians are 0.122, 0.095 and 0.073.
- Floors of 0.1 (a tenth of a reference standard deviation of transport; a tenth of the
  rows changing category) sit above that noise at 1,000 rows: alone they would flag
  0.4%, 0.1% and 0% of stable windows there, but 71%, 46% and 20% at 100 rows, so
  the significance test is what keeps small windows quiet.
- The rule flags 1.0% of stable (feature, window) pairs at 100 rows (normal 1.8%, count
  0.3%, categories 0.9%; Bonferroni bounds each by 0.05 / 3) and 0.1% at 1,000 rows.
- 0.5-sd mean shifts (Wasserstein about 0.5, five times the floor) at 1,000 rows are
  flagged in 100% of windows for the normal feature, for the count with 0.5 sd added,
  and for the count tilted over 0-4 to a 0.5-sd higher mean; PSI > 0.2 flags 91%, 0% and
  80% (at 100 rows: rule 96%, 100%, 91%; PSI 88%, 0%, 70%).
- A 0.05-sd shift in 100,000-row windows is KS-significant in about half of them (the
  compared samples hold 10,000 values) and never flagged; a 5-category shift of total
  variation 0.05 at 1,000 rows is chi-square significant in every window and never
  flagged, one of 0.2 always.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy.typing as npt

from modeltel_collector.drift import statistics
from modeltel_collector.drift.profile import ReferenceProfile
from modeltel_collector.drift.window import FeatureWindow

Method = Literal["default", "psi", "kl", "js", "hellinger", "tv", "wasserstein", "ks", "chi2"]

DEFAULT_ALPHA = 0.05
DEFAULT_WASSERSTEIN_FLOOR = 0.1
"""Materiality floor of the normalised Wasserstein distance (numeric features)."""
DEFAULT_TV_FLOOR = 0.1
"""Materiality floor of the total-variation distance (categorical features)."""
DEFAULT_MIN_SAMPLES = 30
"""Windows with fewer present values are reported but never flagged."""
DEFAULT_THRESHOLDS: dict[str, float] = {
    "psi": 0.2,
    "kl": 0.1,
    "js": 0.1,
    "hellinger": 0.1,
    "tv": DEFAULT_TV_FLOOR,
    "wasserstein": DEFAULT_WASSERSTEIN_FLOOR,
}
"""Thresholds of the single-statistic rules (``statistic > threshold``): PSI's customary 0.2,
the floors above for ``tv`` and ``wasserstein``, and conventional (unmeasured) 0.1 otherwise."""

_NAN = math.nan


@dataclass(frozen=True)
class FeatureDrift:
    """Drift statistics of one feature in one window, and the decision.

    Statistics that do not apply to the feature's kind, or cannot be computed (empty
    reference or window), are NaN: KS, Wasserstein for categorical features; chi-square
    for numeric ones. Binned statistics use the reference quantile bins (numeric) or the
    reference categories plus one bucket for all others (categorical).

    Parameters
    ----------
    feature
        Feature name.
    n
        Present values in the window.
    missing_share
        Share of missing values in the window.
    psi
        Population stability index.
    kl
        ``KL(current || reference)``, nats.
    js
        Jensen-Shannon distance (square root of the divergence), base 2.
    hellinger
        Hellinger distance.
    ks_statistic
        Two-sample KS statistic (numeric).
    ks_pvalue
        Its p-value.
    wasserstein
        Wasserstein distance over the reference standard deviation (numeric).
    chi2_statistic
        Two-sample chi-square statistic (categorical).
    chi2_pvalue
        Its p-value.
    tv
        Total-variation distance.
    drifted
        The decision.

    Examples
    --------
    >>> result = FeatureDrift("x", 10, 0.0, *[math.nan] * 9, 0.25, drifted=False)
    >>> result.gauges()
    {'tv': 0.25, 'missing_share': 0.0, 'detected': 0.0}

    """

    feature: str
    n: int
    missing_share: float
    psi: float
    kl: float
    js: float
    hellinger: float
    ks_statistic: float
    ks_pvalue: float
    wasserstein: float
    chi2_statistic: float
    chi2_pvalue: float
    tv: float
    drifted: bool

    def gauges(self) -> dict[str, float]:
        """The finite statistics keyed by ``ml.drift.<key>`` metric suffix, and ``detected`` (0/1)."""
        names = {
            "psi": "psi",
            "kl": "kl",
            "js": "js",
            "hellinger": "hellinger",
            "ks_statistic": "ks.statistic",
            "ks_pvalue": "ks.pvalue",
            "wasserstein": "wasserstein",
            "chi2_statistic": "chi2.statistic",
            "chi2_pvalue": "chi2.pvalue",
            "tv": "tv",
            "missing_share": "missing_share",
        }
        values = asdict(self)
        result = {names[key]: float(values[key]) for key in names if math.isfinite(values[key])}
        result["detected"] = 1.0 if self.drifted else 0.0
        return result


def compare(
    profile: ReferenceProfile,
    window: FeatureWindow,
    *,
    n_features: int,
    alpha: float = DEFAULT_ALPHA,
    effect_floor: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    method: Method = "default",
    threshold: float | None = None,
) -> FeatureDrift:
    """Every drift statistic of ``window`` against ``profile``, and whether the feature drifted.

    KS and Wasserstein compare the reference sample with the window's reservoir, which
    holds every value of a window of up to ``sample_size`` values and a uniform sample of
    a larger one (so a huge window does not make every tiny shift significant).

    Parameters
    ----------
    profile
        The feature's reference profile.
    window
        The window, accumulated against ``profile``.
    n_features
        Number of features of the model tested together (the Bonferroni divisor).
    alpha
        Family-wise false-alarm rate per window across the ``n_features`` features.
    effect_floor
        Materiality floor of the default rule; ``None`` for :data:`DEFAULT_WASSERSTEIN_FLOOR`
        (numeric) or :data:`DEFAULT_TV_FLOOR` (categorical).
    min_samples
        Windows with fewer present values are never flagged (statistics still reported).
    method
        ``"default"`` (significant and material), or a single-statistic rule: ``"psi"``,
        ``"kl"``, ``"js"``, ``"hellinger"``, ``"tv"``, ``"wasserstein"`` (numeric) flag when
        the statistic exceeds ``threshold``; ``"ks"`` (numeric) and ``"chi2"``
        (categorical) when the p-value is below it.
    threshold
        Threshold of a single-statistic rule; ``None`` for :data:`DEFAULT_THRESHOLDS`
        (``alpha / n_features`` for the p-value rules).

    Examples
    --------
    >>> import numpy as np
    >>> from modeltel_collector.drift.profile import ProfileBuilder
    >>> rng = np.random.default_rng(0)
    >>> builder = ProfileBuilder("income")
    >>> builder.update(rng.normal(50.0, 10.0, 20_000))
    >>> profile = builder.build()
    >>> stable, shifted = FeatureWindow(profile), FeatureWindow(profile)
    >>> stable.update(rng.normal(50.0, 10.0, 1000))
    >>> shifted.update(rng.normal(55.0, 10.0, 1000))
    >>> compare(profile, stable, n_features=3).drifted
    False
    >>> result = compare(profile, shifted, n_features=3)
    >>> result.drifted, round(result.wasserstein, 1), result.ks_pvalue < 1e-10
    (True, 0.5, True)
    >>> compare(profile, shifted, n_features=3, method="psi", threshold=0.5).drifted
    False

    """
    if window.profile is not profile and window.profile.content_hash() != profile.content_hash():
        raise ValueError(f"window of feature {window.profile.name!r} was built against another profile")
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    numeric = profile.kind == "numeric"
    psi = kl = js = hell = ks_stat = ks_p = wass = chi2_stat = chi2_p = tv = _NAN
    if profile.count > 0 and window.n > 0:
        reference: npt.NDArray[Any]
        current: npt.NDArray[Any]
        if numeric:
            reference, current = profile.proportions, window.bin_counts
            ks_stat, ks_p, wass = statistics.sample_distances(
                profile.sample, window.reservoir.sample, profile.scale
            )
        else:
            reference, current = profile.category_weights(), window.category_weights()
            chi2_stat, chi2_p = statistics.chi_square_test(reference, current, method="two_sample")
        psi = statistics.psi(reference, current)
        kl = statistics.kl_divergence(reference, current)
        js = statistics.js_distance(reference, current)
        hell = statistics.hellinger(reference, current)
        tv = statistics.total_variation(reference, current)

    values = {"psi": psi, "kl": kl, "js": js, "hellinger": hell, "tv": tv, "wasserstein": wass}
    significance = alpha / n_features
    if method == "default":
        pvalue, effect = (ks_p, wass) if numeric else (chi2_p, tv)
        floor = effect_floor
        if floor is None:
            floor = DEFAULT_WASSERSTEIN_FLOOR if numeric else DEFAULT_TV_FLOOR
        decision = pvalue < significance and effect > floor
    elif method in ("ks", "chi2"):
        if (method == "ks") != numeric:
            raise ValueError(f"method {method!r} does not apply to {profile.kind} feature {profile.name!r}")
        pvalue = ks_p if numeric else chi2_p
        decision = pvalue < (significance if threshold is None else threshold)
    elif method in values:
        if method == "wasserstein" and not numeric:
            raise ValueError(f"method 'wasserstein' does not apply to categorical feature {profile.name!r}")
        limit = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
        decision = values[method] > limit
    else:
        raise ValueError(f"unknown drift method {method!r}")
    drifted = bool(decision) and window.n >= min_samples

    return FeatureDrift(
        feature=profile.name,
        n=window.n,
        missing_share=window.missing_share,
        psi=psi,
        kl=kl,
        js=js,
        hellinger=hell,
        ks_statistic=ks_stat,
        ks_pvalue=ks_p,
        wasserstein=wass,
        chi2_statistic=chi2_stat,
        chi2_pvalue=chi2_p,
        tv=tv,
        drifted=drifted,
    )
