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
    raises ``TypeError``.

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
    missing = missing_mask(array)
    try:
        present = np.asarray(array[~missing], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"numeric column holds a value that is not a number: {error}") from None
    return present, int(missing.sum())


def category_counts(values: npt.ArrayLike) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.int64], int]:
    """Distinct present categories (sorted strings), their counts, and the missing count.

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
    array = np.asarray(values)
    if array.dtype.kind == "b":
        categories, counts = np.unique(np.where(array, "true", "false"), return_counts=True)
        return categories, counts.astype(np.int64), 0
    # Count with a dict (C speed) and convert only the distinct values: sorting a column
    # of Python strings (np.unique) costs several times more.
    missing = 0
    totals: dict[str, int] = {}
    for value, count in Counter(array.ravel().tolist()).items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            missing += count
        else:
            name = value if isinstance(value, str) else str(value)
            totals[name] = totals.get(name, 0) + count
    names = sorted(totals)
    return np.array(names, dtype=str), np.array([totals[n] for n in names], dtype=np.int64), missing


OTHER = "__other__"
"""Name under which categories beyond a cap are counted together."""


class CategoryCounter:
    """Counts per category for at most ``max_categories`` distinct categories, the rest pooled.

    Categories are admitted as they come; when a chunk brings more new categories than
    there are free slots, its most frequent new ones are admitted (ties by name) and the
    others are counted in :attr:`other` from then on. Updates are vectorised
    (``np.searchsorted`` on the sorted categories); memory is bounded by the cap.

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

    """

    def __init__(self, max_categories: int = 1000) -> None:
        if max_categories < 0:
            raise ValueError(f"max_categories must be >= 0, got {max_categories}")
        self.max_categories = int(max_categories)
        self.categories: npt.NDArray[np.str_] = np.empty(0, dtype=str)
        self.counts: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self.other = 0

    @property
    def total(self) -> int:
        """Number of values counted, pooled ones included."""
        return int(self.counts.sum()) + self.other

    def update(self, categories: npt.NDArray[np.str_], counts: npt.NDArray[np.int64]) -> None:
        """Add ``counts[i]`` values of ``categories[i]`` (distinct strings, from :func:`category_counts`)."""
        if categories.size == 0:
            return
        position = np.searchsorted(self.categories, categories)
        inside = position < self.categories.size
        known = np.zeros(categories.size, dtype=np.bool_)
        known[inside] = self.categories[position[inside]] == categories[inside]
        np.add.at(self.counts, position[known], counts[known])
        new_categories, new_counts = categories[~known], counts[~known]
        free = self.max_categories - self.categories.size
        if new_categories.size > free:
            by_count = np.lexsort((new_categories, -new_counts))
            admitted, pooled = by_count[:free], by_count[free:]
            self.other += int(new_counts[pooled].sum())
            new_categories, new_counts = new_categories[admitted], new_counts[admitted]
        if new_categories.size:
            merged = np.concatenate([self.categories, new_categories])
            order = np.argsort(merged, kind="stable")
            self.categories = merged[order]
            self.counts = np.concatenate([self.counts, new_counts.astype(np.int64)])[order]

    def as_dict(self) -> dict[str, int]:
        """``{category: count}`` of the categories counted one by one."""
        return dict(zip(self.categories.tolist(), self.counts.tolist(), strict=True))

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable state."""
        return {"max_categories": self.max_categories, "counts": self.as_dict(), "other": self.other}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CategoryCounter:
        """A counter saved by :meth:`to_dict`."""
        counter = cls(int(data["max_categories"]))
        counts: dict[str, int] = data["counts"]
        names = np.array(sorted(counts), dtype=str)
        counter.categories = names
        counter.counts = np.array([counts[name] for name in names.tolist()], dtype=np.int64)
        counter.other = int(data["other"])
        return counter
