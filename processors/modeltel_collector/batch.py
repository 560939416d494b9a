"""Columnar batches: what extraction produces and every processor consumes.

One OTLP request becomes at most one :class:`PredictionBatch` per (model, version)
and one :class:`LabelBatch` per model. Features are numpy columns, so processors work
on whole batches; the only per-record Python code is extraction's single pass over
attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PredictionBatch:
    """Predictions of one model version, one row per ``ml.prediction`` event.

    A feature that arrived as a number in any row is in ``numeric`` (float64, NaN where
    a row lacks it or had a non-number); one that arrived as a string or bool is in
    ``categorical`` (object array of ``str``, ``None`` where absent; bools as
    ``"true"``/``"false"``). A feature whose type varied is in both.
    """

    model: str
    version: str
    time_unix_nano: np.ndarray
    """int64, event time of each row (else its observed time, else when it was received)."""
    prediction_ids: np.ndarray
    """object array of ``str``."""
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    prediction: np.ndarray = field(default_factory=lambda: np.empty(0))
    """float64 numeric prediction, NaN where it was not a number."""
    prediction_class: np.ndarray | None = None
    """object array of the prediction as a string, for classifiers: None unless some row sent
    a string or bool (``"true"``/``"false"``); numbers in the other rows are written ``"1"``
    when integral, else ``repr``; None where absent."""
    score: np.ndarray = field(default_factory=lambda: np.empty(0))
    """float64 ``ml.prediction.score``, NaN where absent."""

    def __len__(self) -> int:
        return int(self.time_unix_nano.size)


@dataclass(frozen=True)
class LabelBatch:
    """Ground-truth labels of one model, one row per ``ml.label`` event (or imported row)."""

    model: str
    time_unix_nano: np.ndarray
    """int64, the label event's time (else its observed time, else when it was received)."""
    prediction_ids: np.ndarray
    """object array of ``str``."""
    value: np.ndarray
    """float64 label, NaN where it was not a number."""
    value_class: np.ndarray | None = None
    """object array of the label as a string, for classifiers: as ``prediction_class``."""

    def __len__(self) -> int:
        return int(self.time_unix_nano.size)
