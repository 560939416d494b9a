"""The current tumbling window of one feature, accumulated batch by batch against its reference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from modeltel_collector.drift.columns import (
    DEFAULT_PENDING,
    CategoryCounter,
    ValueBuffer,
    count_categories,
    finite_values,
)
from modeltel_collector.drift.moments import Moments
from modeltel_collector.drift.profile import FORMAT, ReferenceProfile
from modeltel_collector.drift.reservoir import DEFAULT_SAMPLE_SIZE, Reservoir

DEFAULT_MAX_UNSEEN = 1000
"""Distinct unseen categories counted one by one in a window; more are pooled."""


class FeatureWindow:
    """State of one feature in the current window, against a :class:`ReferenceProfile`.

    Numeric features keep counts on the reference bins (:meth:`ReferenceProfile.bin_counts`
    on the reference cut points; values beyond the reference range land in the end bins),
    moments, and a uniform :class:`Reservoir` sample for the KS test and the Wasserstein
    distance. Categorical features keep counts of the reference's categories (exact,
    aligned with ``profile.categories``) and of categories outside them ("unseen": up to
    ``max_unseen`` distinct ones one by one, the rest pooled). Both count missing values.
    Memory is bounded by the number of bins, ``sample_size``, ``pending`` and ``max_unseen``
    whatever the traffic.

    :meth:`update` counts present and missing values at once. Numeric batches are then
    held in a :class:`~modeltel_collector.drift.columns.ValueBuffer` of up to ``pending``
    values, and binned, added to the moments and merged into the reservoir in bulk when it
    would overflow or when :attr:`bin_counts`, :attr:`moments` or :attr:`reservoir` is read:
    these whole-array numpy operations cost a few microseconds per call whatever the size,
    more than the rest of a 500-row batch's update. Where the batches were cut changes
    neither the bin counts, nor the moments (beyond rounding), nor the reservoir's
    distribution; only its particular draws. A categorical batch is counted with a
    ``collections.Counter`` and a dict lookup per distinct value.

    A categorical value outside the reference's counted categories is counted as unseen;
    if the reference itself pooled categories beyond its cap (``profile.other_count > 0``),
    such values are compared with that pooled ``"__other__"`` bucket, since they may be
    among them.

    Parameters
    ----------
    profile
        The reference profile of the feature.
    sample_size
        Reservoir size (numeric features).
    max_unseen
        Cap on distinct unseen categories counted one by one.
    seed
        Reservoir seed.
    pending
        Numeric values held before they are processed together.

    Attributes
    ----------
    n
        Number of present values.
    missing
        Number of missing values.
    bin_counts
        Numeric: int64 counts per reference bin (read-only; reading it processes the
        held values, as do :attr:`moments` and :attr:`reservoir`).
    moments
        Numeric: :class:`Moments` of the present values.
    reservoir
        Numeric: :class:`Reservoir` of the present values.
    category_counts
        Categorical: int64 counts aligned with ``profile.categories``.
    unseen
        Categorical: :class:`CategoryCounter` of values outside ``profile.categories``.

    Examples
    --------
    >>> from modeltel_collector.drift.profile import ProfileBuilder
    >>> builder = ProfileBuilder("age", bins=4)
    >>> builder.update(np.arange(100.0))
    >>> window = FeatureWindow(builder.build())
    >>> window.update(np.array([-5.0, 10.0, 60.0, np.nan, 500.0]))
    >>> window.n, window.missing_share, window.bin_counts
    (4, 0.2, array([2, 0, 1, 1]))
    >>> FeatureWindow.from_dict(window.to_dict(), window.profile).bin_counts
    array([2, 0, 1, 1])

    >>> builder = ProfileBuilder("city")
    >>> builder.update(np.array(["paris", "lyon", "paris"], dtype=object))
    >>> window = FeatureWindow(builder.build())
    >>> window.update(np.array(["lyon", "nice", None, "nice"], dtype=object))
    >>> window.category_counts, window.unseen.as_dict(), window.missing
    (array([0, 1]), {'nice': 2}, 1)

    """

    def __init__(
        self,
        profile: ReferenceProfile,
        *,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        max_unseen: int = DEFAULT_MAX_UNSEEN,
        seed: int | None = 0,
        pending: int = DEFAULT_PENDING,
    ) -> None:
        self.profile = profile
        self.n = 0
        self.missing = 0
        numeric = profile.kind == "numeric"
        self._numeric = numeric
        self._bin_counts: npt.NDArray[np.int64] = np.zeros(profile.edges.size + 1 if numeric else 0, np.int64)
        self._moments = Moments()
        self._reservoir = Reservoir(sample_size, seed)
        self._pending = ValueBuffer(pending)
        self.category_counts: npt.NDArray[np.int64] = np.zeros(len(profile.categories), np.int64)
        self.unseen = CategoryCounter(max_unseen)
        self._index = {name: i for i, name in enumerate(profile.categories)}

    @property
    def bin_counts(self) -> npt.NDArray[np.int64]:
        """Numeric: int64 counts per reference bin."""
        self._flush()
        return self._bin_counts

    @property
    def moments(self) -> Moments:
        """Numeric: :class:`Moments` of the present values."""
        self._flush()
        return self._moments

    @property
    def reservoir(self) -> Reservoir:
        """Numeric: :class:`Reservoir` of the present values."""
        self._flush()
        return self._reservoir

    @property
    def missing_share(self) -> float:
        """Share of missing values in the window (NaN when it is empty)."""
        total = self.n + self.missing
        return self.missing / total if total else math.nan

    def update(self, values: npt.ArrayLike) -> None:
        """Add a batch column: float64 with NaN, or object with None, where values are missing."""
        if self._numeric:
            present, missing = finite_values(values)
            if present.size:
                self.n += int(present.size)
                bulk = self._pending.push(present)
                if bulk is not None:
                    self._add(bulk)
        else:
            counts, missing = count_categories(values)
            index, category_counts = self._index, self.category_counts
            unseen: dict[str, int] = {}
            for name, count in counts.items():
                position = index.get(name)
                if position is None:
                    unseen[name] = count
                else:
                    category_counts[position] += count
                self.n += count
            if unseen:
                self.unseen.add(unseen)
        self.missing += missing

    def _add(self, values: npt.NDArray[np.float64]) -> None:
        """Bin, add to the moments and offer to the reservoir a chunk of present values."""
        self._bin_counts += self.profile.bin_counts(values)
        self._moments.update(values)
        self._reservoir.update(values)

    def _flush(self) -> None:
        if len(self._pending):
            self._add(self._pending.take())

    def category_weights(self) -> npt.NDArray[np.int64]:
        """Counts of the reference categories followed by the count of all other values.

        Aligned with :meth:`ReferenceProfile.category_weights`: the last entry is compared
        with the reference's pooled ``"__other__"`` count (0 if it pooled nothing, making it
        the bucket of categories unseen in the reference).
        """
        return np.append(self.category_counts, self.unseen.total).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints (tied to the profile's content hash).

        Held values are saved as they are (``"pending"``), not processed first, so that
        taking a checkpoint does not change what the window draws afterwards.
        """
        return {
            "format": FORMAT,
            "feature": self.profile.name,
            "profile_hash": self.profile.content_hash(),
            "n": self.n,
            "missing": self.missing,
            "bin_counts": self._bin_counts.tolist(),
            "moments": self._moments.to_dict(),
            "reservoir": self._reservoir.to_dict(),
            "pending": self._pending.tolist(),
            "pending_capacity": self._pending.capacity,
            "category_counts": self.category_counts.tolist(),
            "unseen": self.unseen.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], profile: ReferenceProfile) -> FeatureWindow:
        """Restore a window saved by :meth:`to_dict`; ``profile`` must be the same profile."""
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported window format {data.get('format')!r} (expected {FORMAT})")
        if data["profile_hash"] != profile.content_hash():
            raise ValueError(
                f"window of feature {data['feature']!r} was saved against profile "
                f"{data['profile_hash'][:12]}, not {profile.content_hash()[:12]}"
            )
        window = cls(profile, pending=int(data.get("pending_capacity", DEFAULT_PENDING)))
        window.n = int(data["n"])
        window.missing = int(data["missing"])
        window._bin_counts = np.asarray(data["bin_counts"], dtype=np.int64)
        window._moments = Moments.from_dict(data["moments"])
        window._reservoir = Reservoir.from_dict(data["reservoir"])
        pending = np.asarray(data.get("pending", []), dtype=np.float64)
        if pending.size > window._pending.capacity:
            raise ValueError(f"{pending.size} pending values exceed the capacity {window._pending.capacity}")
        window._pending.push(pending)
        window.category_counts = np.asarray(data["category_counts"], dtype=np.int64)
        window.unseen = CategoryCounter.from_dict(data["unseen"])
        return window
