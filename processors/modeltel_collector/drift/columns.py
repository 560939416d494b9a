"""Missing values and category counts of one column, without a Python loop over records.

A numeric column is float64 with NaN where a value is missing (as in
:class:`~modeltel_collector.batch.PredictionBatch`); ``+-inf`` also counts as missing, as
it has no place in moments or distances. A categorical column is an object array with
``None`` (or a float NaN) where a value is missing; categories are compared as strings,
and a bool array maps to ``"true"``/``"false"`` as extraction does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FeatureKind = Literal["numeric", "categorical"]

_NONE = np.array(None, dtype=object)


def infer_kind(values: npt.ArrayLike) -> FeatureKind:
    """``"numeric"`` for integer and float arrays, ``"categorical"`` for anything else.

    Parameters
    ----------
    values
        A column (its dtype decides).

    Examples
    --------
    >>> infer_kind(np.array([1, 2])), infer_kind(np.array(["a", None], dtype=object))
    ('numeric', 'categorical')
    >>> infer_kind(np.array([True, False]))
    'categorical'

    """
    return "numeric" if np.asarray(values).dtype.kind in "iuf" else "categorical"


def missing_mask(values: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where a value is missing: NaN/inf in numbers, ``None`` or NaN in object arrays.

    Parameters
    ----------
    values
        A numeric or categorical column.

    Examples
    --------
    >>> missing_mask(np.array([1.0, np.nan, np.inf]))
    array([False,  True,  True])
    >>> missing_mask(np.array(["a", None, float("nan")], dtype=object))
    array([False,  True,  True])

    """
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return np.zeros(array.shape, dtype=np.bool_)
    if array.dtype.kind == "f":
        finite: npt.NDArray[np.bool_] = np.isfinite(array)
        return ~finite
    if array.dtype.kind in "US":
        return np.zeros(array.shape, dtype=np.bool_)
    # Object arrays: None, and NaN (the only value not equal to itself).
    mask: npt.NDArray[np.bool_] = np.equal(array, _NONE) | np.not_equal(array, array)
    return mask.astype(np.bool_)


def finite_values(values: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], int]:
    """The present values of a numeric column as float64, and how many were missing.

    Object arrays (``None`` for missing) are converted too; a value that is not a number
    raises ``TypeError``. A 1-d float64 column is first summed (one pass, no temporary
    array): NaN and infinities propagate into the sum, so when it is finite nothing is
    missing and the column itself is returned, without a mask or a copy.

    Parameters
    ----------
    values
        A numeric column.

    Examples
    --------
    >>> finite_values(np.array([1.0, np.nan, 3.0]))
    (array([1., 3.]), 1)
    >>> finite_values(np.array([2, None], dtype=object))
    (array([2.]), 1)

    """
    array = np.asarray(values)
    if array.dtype == np.float64 and array.ndim == 1 and math.isfinite(np.add.reduce(array)):
        return array, 0
    missing = missing_mask(array)
    try:
        present = np.asarray(array[~missing], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"numeric column holds a value that is not a number: {error}") from None
    return present, int(missing.sum())


DEFAULT_PENDING = 4096
"""Values a :class:`ValueBuffer` holds before they are processed together."""


class ValueBuffer:
    """Numeric values held back so that per-chunk work runs on thousands of values at a time.

    A drift window gets a batch of a few hundred rows per request; binning, moments and
    the reservoir merge each cost a few microseconds per call whatever the size, so they
    run on the concatenated batches instead. :meth:`push` copies a batch in, or, when it
    would overflow the capacity, returns everything held followed by the batch, for the
    caller to process, and empties; :meth:`take` returns what is held and empties. The
    arrays returned are valid until the next :meth:`push`.

    Parameters
    ----------
    capacity
        Maximum number of values held.

    Examples
    --------
    >>> buffer = ValueBuffer(capacity=4)
    >>> buffer.push(np.array([1.0, 2.0])) is None, len(buffer)
    (True, 2)
    >>> buffer.push(np.array([3.0, 4.0, 5.0])), len(buffer)
    (array([1., 2., 3., 4., 5.]), 0)
    >>> buffer.push(np.array([6.0])); buffer.take()
    array([6.])

    """

    def __init__(self, capacity: int = DEFAULT_PENDING) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self._values: npt.NDArray[np.float64] | None = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
        """Hold ``values``; or, if they do not fit, return the held values and them, and empty."""
        size, m = self._size, values.size
        if size + m <= self.capacity:
            if self._values is None:
                self._values = np.empty(self.capacity, dtype=np.float64)
            self._values[size : size + m] = values
            self._size = size + m
            return None
        if size == 0:
            return values
        self._size = 0
        assert self._values is not None
        return np.concatenate([self._values[:size], values])

    def take(self) -> npt.NDArray[np.float64]:
        """The held values (a view, valid until the next :meth:`push`), emptying the buffer."""
        size, self._size = self._size, 0
        if self._values is None:
            return np.empty(0, dtype=np.float64)
        return self._values[:size]

    def tolist(self) -> list[float]:
        """The held values as a list (for checkpoints)."""
        return [] if self._values is None else self._values[: self._size].tolist()


def count_categories(values: npt.ArrayLike) -> tuple[dict[str, int], int]:
    """Counts of the present categories (a dict, in no particular order) and the missing count.

    Values are compared as strings (``str(value)`` for non-strings); ``None`` and float NaN
    are missing; a bool array maps to ``"true"``/``"false"``. Counting is a
    ``collections.Counter`` over the values (C speed) and a loop over the distinct ones
    only: sorting a column of Python strings (``np.unique``) costs several times more.

    Parameters
    ----------
    values
        A categorical column (object array with ``None`` for missing, strings, or bools).

    Examples
    --------
    >>> count_categories(np.array(["b", "a", None, "b", 3], dtype=object))
    ({'b': 2, 'a': 1, '3': 1}, 1)
    >>> count_categories(np.array([True, True, False]))
    ({'true': 2, 'false': 1}, 0)

    """
    array = np.asarray(values)
    if array.dtype.kind == "b":
        true = int(np.count_nonzero(array))
        false = array.size - true
        return {name: n for name, n in (("true", true), ("false", false)) if n}, 0
    missing = 0
    totals: dict[str, int] = {}
    for value, count in Counter(array.ravel().tolist()).items():
        if type(value) is str:
            totals[value] = totals.get(value, 0) + count
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            missing += count
        else:
            name = str(value)
            totals[name] = totals.get(name, 0) + count
    return totals, missing


def category_counts(values: npt.ArrayLike) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.int64], int]:
    """Distinct present categories (sorted strings), their counts, and the missing count.

    The arrays of :func:`count_categories`.

    Parameters
    ----------
    values
        A categorical column (object array with ``None`` for missing, strings, or bools).

    Examples
    --------
    >>> category_counts(np.array(["b", "a", None, "b"], dtype=object))
    (array(['a', 'b'], dtype='<U1'), array([1, 2]), 1)
    >>> category_counts(np.array([True, True, False]))
    (array(['false', 'true'], dtype='<U5'), array([1, 2]), 0)

    """
    totals, missing = count_categories(values)
    names = sorted(totals)
    return np.array(names, dtype=str), np.array([totals[n] for n in names], dtype=np.int64), missing


OTHER = "__other__"
"""Name under which categories beyond a cap are counted together."""


class CategoryCounter:
    """Counts per category for at most ``max_categories`` distinct categories, the rest pooled.

    Categories are admitted as they come; when a chunk brings more new categories than
    there are free slots, its most frequent new ones are admitted (ties by name) and the
    others are counted in :attr:`other` from then on. Counts live in a dict, so an update
    costs a lookup per distinct category of the chunk; memory is bounded by the cap.

    Parameters
    ----------
    max_categories
        Maximum number of distinct categories counted one by one.

    Attributes
    ----------
    categories
        Sorted array of the counted categories (``str``).
    counts
        int64 counts, aligned with :attr:`categories`.
    other
        Count of the values of categories beyond the cap.

    Examples
    --------
    >>> counter = CategoryCounter(max_categories=2)
    >>> counter.update(*category_counts(np.array(["a", "b", "b", "c"], dtype=object))[:2])
    >>> counter.as_dict(), counter.other
    ({'a': 1, 'b': 2}, 1)
    >>> counter.update(np.array(["a", "d"]), np.array([5, 1]))
    >>> counter.as_dict(), counter.other, counter.total
    ({'a': 6, 'b': 2}, 2, 10)
    >>> counter.add({"b": 1, "e": 4}); counter.categories, counter.counts, counter.other
    (array(['a', 'b'], dtype='<U1'), array([6, 3]), 6)

    """

    def __init__(self, max_categories: int = 1000) -> None:
        if max_categories < 0:
            raise ValueError(f"max_categories must be >= 0, got {max_categories}")
        self.max_categories = int(max_categories)
        self._counts: dict[str, int] = {}
        self.other = 0

    @property
    def categories(self) -> npt.NDArray[np.str_]:
        """Sorted array of the counted categories."""
        return np.array(sorted(self._counts), dtype=str)

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        """Counts aligned with :attr:`categories`."""
        return np.array([self._counts[name] for name in sorted(self._counts)], dtype=np.int64)

    @property
    def total(self) -> int:
        """Number of values counted, pooled ones included."""
        return sum(self._counts.values()) + self.other

    def update(self, categories: npt.NDArray[np.str_], counts: npt.NDArray[np.int64]) -> None:
        """Add ``counts[i]`` values of ``categories[i]`` (distinct strings, from :func:`category_counts`)."""
        self.add(dict(zip(categories.tolist(), counts.tolist(), strict=True)))

    def add(self, counts: Mapping[str, int]) -> None:
        """Add ``counts[name]`` values of each category ``name`` (from :func:`count_categories`)."""
        known = self._counts
        new: list[tuple[str, int]] = []
        for name, count in counts.items():
            if name in known:
                known[name] += int(count)
            else:
                new.append((name, int(count)))
        if not new:
            return
        free = self.max_categories - len(known)
        if len(new) > free:
            new.sort(key=lambda item: (-item[1], item[0]))
            self.other += sum(count for _, count in new[free:])
            new = new[:free]
        known.update(new)

    def as_dict(self) -> dict[str, int]:
        """``{category: count}`` of the categories counted one by one, sorted by name."""
        return {name: self._counts[name] for name in sorted(self._counts)}

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable state."""
        return {"max_categories": self.max_categories, "counts": self.as_dict(), "other": self.other}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CategoryCounter:
        """A counter saved by :meth:`to_dict`."""
        counter = cls(int(data["max_categories"]))
        counts: dict[str, int] = data["counts"]
        counter._counts = {str(name): int(counts[name]) for name in sorted(counts)}
        counter.other = int(data["other"])
        return counter
