"""A bounded uniform random sample of a numeric stream, updated a whole chunk at a time.

Both the reference :class:`~modeltel_collector.drift.profile.ProfileBuilder` and the
current :class:`~modeltel_collector.drift.window.FeatureWindow` keep one, so the KS test
and the Wasserstein distance always compare two samples of at most ``size`` values,
whatever the traffic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_SAMPLE_SIZE = 10_000
"""Default reservoir size: KS and Wasserstein on 10k values take about a millisecond."""

_HYPERGEOMETRIC_LIMIT = 10**9
"""numpy's ``Generator.hypergeometric`` needs ``ngood`` and ``nbad`` below this."""


class Reservoir:
    """Uniform random sample of at most ``size`` values of a stream, merged chunk by chunk.

    After ``seen`` values, :attr:`sample` is a uniformly random subset of ``min(size, seen)``
    of them: every subset of that size is equally likely, so every value is kept with
    probability ``min(1, size / seen)``. The order of :attr:`sample` carries no meaning.

    The first ``size`` values fill the reservoir. Each later chunk is merged in one step:
    with ``t`` values merged so far and ``m`` new ones, a uniform ``size``-subset of all
    ``t + m`` holds ``J ~ Hypergeometric(m good, t bad, size drawn)`` new values, a uniform
    ``J``-subset of the chunk, and a uniform ``(size - J)``-subset of the ``t`` old ones.
    The current sample is a uniform ``size``-subset of the old values, so a uniform
    ``(size - J)``-subset of it is a uniform subset of the old values too: the merge draws
    ``J``, then ``J`` distinct slots and ``J`` distinct values of the chunk
    (``Generator.choice(replace=False)``: Floyd's algorithm, or a partial shuffle for large
    draws), and puts the values in the slots. That is about ``2 * size * m / (t + m)``
    random numbers per chunk, twice the number of replacements, instead of one per value
    for Algorithm R, and no pass over slots picked twice. Beyond ``10**9`` values (numpy's
    limit for the hypergeometric draw) a chunk is merged by vectorised Algorithm R, which
    keeps the same uniform distribution.

    The cost of a merge is mostly per call (about 15 µs), so callers with small batches
    (:class:`~modeltel_collector.drift.window.FeatureWindow`) offer a few thousand values
    at a time. State is ``size`` floats plus the generator state.

    Parameters
    ----------
    size
        Maximum number of values kept.
    seed
        Seed of the numpy ``PCG64`` generator, for reproducible samples.

    Attributes
    ----------
    sample
        float64 array of the kept values (length ``min(size, seen)``).
    seen
        Number of values offered so far.
    rng
        The ``numpy.random.Generator`` drawing the replacements.

    Examples
    --------
    >>> import numpy as np
    >>> reservoir = Reservoir(size=3, seed=0)
    >>> reservoir.update(np.array([1.0, 2.0]))
    >>> reservoir.sample
    array([1., 2.])
    >>> reservoir.update(np.arange(100.0))
    >>> reservoir.seen, reservoir.sample.size
    (102, 3)
    >>> restored = Reservoir.from_dict(reservoir.to_dict())
    >>> restored.update(np.arange(50.0)); reservoir.update(np.arange(50.0))
    >>> bool(np.array_equal(restored.sample, reservoir.sample))
    True

    """

    def __init__(self, size: int = DEFAULT_SAMPLE_SIZE, seed: int | None = 0) -> None:
        if size < 1:
            raise ValueError(f"reservoir size must be at least 1, got {size}")
        self.size = int(size)
        self.seen = 0
        self.sample: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)
        self.rng = np.random.default_rng(seed)

    def update(self, values: npt.ArrayLike) -> None:
        """Offer every value of ``values`` (a 1-d array, already free of missing values)."""
        x = np.asarray(values, dtype=np.float64).ravel()
        m = x.size
        if m == 0:
            return
        fill = min(self.size - self.sample.size, m)
        if fill > 0:
            self.sample = np.concatenate([self.sample, x[:fill]])
        if fill < m:
            self._merge(x[fill:], self.seen + fill)
        self.seen += m

    def _merge(self, x: npt.NDArray[np.float64], merged: int) -> None:
        """Merge ``x`` into the full sample, a uniform sample of the ``merged`` values before it."""
        m = x.size
        if merged < _HYPERGEOMETRIC_LIMIT and m < _HYPERGEOMETRIC_LIMIT:
            replaced = int(self.rng.hypergeometric(m, merged, self.size))
            if replaced:
                slots = self.rng.choice(self.size, replaced, replace=False, shuffle=False)
                picks = self.rng.choice(m, replaced, replace=False, shuffle=False)
                self.sample[slots] = x[picks]
            return
        # Algorithm R: the value at stream position t (counted from 1) replaces slot j ~ U{0..t-1}
        # when j < size; a later value wins a slot picked twice.
        positions = np.arange(merged + 1, merged + m + 1, dtype=np.int64)
        slots = self.rng.integers(0, positions)
        accepted = slots < self.size
        slots, kept = slots[accepted], x[accepted]
        last_slots, first_in_reversed = np.unique(slots[::-1], return_index=True)
        self.sample[last_slots] = kept[::-1][first_in_reversed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, generator included (see :meth:`from_dict`)."""
        return {
            "size": self.size,
            "seen": self.seen,
            "sample": self.sample.tolist(),
            "rng": rng_state_to_json(self.rng),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reservoir:
        """Restore a reservoir saved by :meth:`to_dict`; it continues exactly as the original."""
        reservoir = cls(size=int(data["size"]))
        reservoir.seen = int(data["seen"])
        reservoir.sample = np.asarray(data["sample"], dtype=np.float64)
        reservoir.rng = rng_from_json(data["rng"])
        return reservoir


def rng_state_to_json(rng: np.random.Generator) -> dict[str, Any]:
    """The state of a ``PCG64`` generator as JSON-safe values (128-bit integers as strings).

    Parameters
    ----------
    rng
        A generator made by ``np.random.default_rng``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> copy = rng_from_json(rng_state_to_json(rng))
    >>> bool(copy.random() == rng.random())
    True

    """
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise TypeError(f"only PCG64 generators are serialisable, got {state['bit_generator']}")
    return {
        "bit_generator": "PCG64",
        "state": str(state["state"]["state"]),
        "inc": str(state["state"]["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def rng_from_json(data: dict[str, Any]) -> np.random.Generator:
    """A generator in the state saved by :func:`rng_state_to_json`.

    Parameters
    ----------
    data
        The saved state.

    Examples
    --------
    >>> int(rng_from_json(rng_state_to_json(np.random.default_rng(7))).integers(0, 100))
    94

    """
    bit_generator = np.random.PCG64()
    bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(data["state"]), "inc": int(data["inc"])},
        "has_uint32": int(data["has_uint32"]),
        "uinteger": int(data["uinteger"]),
    }
    return np.random.Generator(bit_generator)
