"""Data drift: reference profiles, tumbling-window state and the drift statistics.

- :mod:`~modeltel_collector.drift.statistics`: PSI, KL, Jensen-Shannon, Hellinger, total
  variation, KS, normalised Wasserstein and chi-square, as pure functions on arrays.
- :mod:`~modeltel_collector.drift.profile`: :class:`ReferenceProfile`,
  :class:`ProfileBuilder`, :class:`ModelProfile` (bounded memory, content-hashed).
- :mod:`~modeltel_collector.drift.window`: :class:`FeatureWindow`, a window's state.
- :mod:`~modeltel_collector.drift.detector`: :func:`compare` and :class:`FeatureDrift`.
"""

from modeltel_collector.drift.detector import (
    DEFAULT_TV_FLOOR,
    DEFAULT_WASSERSTEIN_FLOOR,
    FeatureDrift,
    compare,
)
from modeltel_collector.drift.profile import (
    ModelProfile,
    ModelProfileBuilder,
    ProfileBuilder,
    ReferenceProfile,
)
from modeltel_collector.drift.reservoir import Reservoir
from modeltel_collector.drift.window import FeatureWindow

__all__ = [
    "DEFAULT_TV_FLOOR",
    "DEFAULT_WASSERSTEIN_FLOOR",
    "FeatureDrift",
    "FeatureWindow",
    "ModelProfile",
    "ModelProfileBuilder",
    "ProfileBuilder",
    "ReferenceProfile",
    "Reservoir",
    "compare",
]
