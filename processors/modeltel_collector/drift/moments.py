"""Count, mean, variance, min and max of a numeric stream, merged chunk by chunk."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt


class Moments:
    """Streaming moments of the finite values of a feature, in constant memory.

    Each chunk's count, mean and sum of squared deviations (``m2``) are computed with
    numpy and merged with Chan, Golub and LeVeque's parallel formula

    ``mean = mean_a + delta * n_b / n`` and ``m2 = m2_a + m2_b + delta**2 * n_a * n_b / n``
    (``delta = mean_b - mean_a``),

    which is numerically stable, so the result matches ``numpy`` on the concatenated data
    up to rounding, whatever the chunking.

    Attributes
    ----------
    count
        Number of values.
    mean
        Their mean (0.0 when empty).
    m2
        Sum of squared deviations from the mean.
    min
        Smallest value (``+inf`` when empty).
    max
        Largest value (``-inf`` when empty).

    Examples
    --------
    >>> import numpy as np
    >>> moments = Moments()
    >>> moments.update(np.array([1.0, 2.0]))
    >>> moments.update(np.array([3.0, 4.0, 5.0]))
    >>> moments.count, moments.mean, moments.variance(), moments.min, moments.max
    (5, 3.0, 2.5, 1.0, 5.0)
    >>> Moments.from_dict(moments.to_dict()).std(ddof=0) == moments.std(ddof=0)
    True

    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def update(self, values: npt.NDArray[np.float64]) -> None:
        """Add a 1-d chunk of finite float values (filter NaN/inf out beforehand)."""
        n = int(values.size)
        if n == 0:
            return
        mean = float(np.add.reduce(values)) / n
        deviations = values - mean
        deviations *= deviations
        m2 = float(np.add.reduce(deviations))
        self._merge(n, mean, m2, float(np.minimum.reduce(values)), float(np.maximum.reduce(values)))

    def _merge(self, n_b: int, mean_b: float, m2_b: float, min_b: float, max_b: float) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n
        self.min = min(self.min, min_b)
        self.max = max(self.max, max_b)

    def variance(self, ddof: int = 1) -> float:
        """Variance with ``ddof`` delta degrees of freedom (NaN when ``count <= ddof``)."""
        return self.m2 / (self.count - ddof) if self.count > ddof else math.nan

    def std(self, ddof: int = 1) -> float:
        """Standard deviation with ``ddof`` delta degrees of freedom."""
        return math.sqrt(self.variance(ddof))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (``min``/``max`` are ``None`` when empty)."""
        empty = self.count == 0
        return {
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Moments:
        """Moments saved by :meth:`to_dict`."""
        moments = cls()
        moments.count = int(data["count"])
        moments.mean = float(data["mean"])
        moments.m2 = float(data["m2"])
        moments.min = math.inf if data["min"] is None else float(data["min"])
        moments.max = -math.inf if data["max"] is None else float(data["max"])
        return moments
