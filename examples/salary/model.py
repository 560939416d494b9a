"""A small salary regression model and the synthetic data it is trained and tested on.

The data follows a linear relationship (experience, education, role, location and
hours) plus gaussian noise. ``generate(..., shift=...)`` moves the experience
distribution (data drift); ``generate(..., concept_drift=True)`` changes the
relationship itself (concept drift), so a model trained before it is wrong after it.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

EDUCATION: Final = ("high_school", "bachelor", "master", "phd")
ROLES: Final = ("analyst", "engineer", "scientist", "manager")
LOCATIONS: Final = ("berlin", "london", "new_york", "remote")
CATEGORIES: Final[dict[str, tuple[str, ...]]] = {
    "education": EDUCATION,
    "role": ROLES,
    "location": LOCATIONS,
}
NUMERIC: Final = ("years_experience", "hours_per_week")
FEATURES: Final = ("years_experience", "education", "role", "location", "hours_per_week")

YEARS_RANGE: Final = (0.0, 40.0)
YEARS_CLIP: Final = (0.0, 50.0)
HOURS_RANGE: Final = (20, 60)
NOISE_SD: Final = 5_000.0
TRAINING_SEED: Final = 20240601
TRAINING_ROWS: Final = 5_000


class SalaryRelationship:
    """The generating coefficients: ``salary = base + per_year*years + premiums + noise``."""

    def __init__(
        self,
        *,
        base: float,
        per_year: float,
        per_hour_over_40: float,
        education: Mapping[str, float],
        role: Mapping[str, float],
        location: Mapping[str, float],
    ) -> None:
        self.base = base
        self.per_year = per_year
        self.per_hour_over_40 = per_hour_over_40
        self.premiums: dict[str, Mapping[str, float]] = {
            "education": education,
            "role": role,
            "location": location,
        }

    def salary(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The noise-free salary of each row, from column arrays."""
        value = (
            self.base
            + self.per_year * columns["years_experience"]
            + self.per_hour_over_40 * (columns["hours_per_week"] - 40)
        )
        for feature, premium in self.premiums.items():
            value = value + np.vectorize(premium.__getitem__, otypes=[float])(columns[feature])
        return value


BASELINE: Final = SalaryRelationship(
    base=35_000.0,
    per_year=2_000.0,
    per_hour_over_40=400.0,
    education={"high_school": 0.0, "bachelor": 8_000.0, "master": 15_000.0, "phd": 22_000.0},
    role={"analyst": 0.0, "engineer": 12_000.0, "scientist": 18_000.0, "manager": 25_000.0},
    location={"berlin": 0.0, "london": 8_000.0, "new_york": 20_000.0, "remote": -5_000.0},
)
"""The relationship the model is trained on."""

CONCEPT_DRIFTED: Final = SalaryRelationship(
    base=35_000.0,
    per_year=1_000.0,  # experience pays half as much
    per_hour_over_40=400.0,
    education={"high_school": 0.0, "bachelor": 8_000.0, "master": 15_000.0, "phd": 22_000.0},
    role={"analyst": 0.0, "engineer": 12_000.0, "scientist": 18_000.0, "manager": 25_000.0},
    # remote work now pays like London, New York's premium shrinks
    location={"berlin": 0.0, "london": 15_000.0, "new_york": 5_000.0, "remote": 15_000.0},
)
"""The relationship after concept drift."""


def generate(
    n: int, rng: np.random.Generator, *, shift: float = 0.0, concept_drift: bool = False
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """``n`` synthetic rows (plain Python values, JSON-ready) and their true salaries.

    Args:
        n: number of rows.
        rng: the random generator (the caller owns the seed).
        shift: years added to ``years_experience`` (data drift), clipped to 0-50.
        concept_drift: label the rows with :data:`CONCEPT_DRIFTED` instead of :data:`BASELINE`.
    """
    years = np.clip(rng.uniform(*YEARS_RANGE, size=n) + shift, *YEARS_CLIP).round(1)
    columns: dict[str, np.ndarray] = {
        "years_experience": years,
        "education": rng.choice(np.array(EDUCATION), size=n, p=[0.2, 0.4, 0.3, 0.1]),
        "role": rng.choice(np.array(ROLES), size=n),
        "location": rng.choice(np.array(LOCATIONS), size=n),
        "hours_per_week": rng.integers(HOURS_RANGE[0], HOURS_RANGE[1] + 1, size=n),
    }
    relationship = CONCEPT_DRIFTED if concept_drift else BASELINE
    salaries = relationship.salary(columns) + rng.normal(0.0, NOISE_SD, size=n)
    rows = [
        {
            "years_experience": float(columns["years_experience"][i]),
            "education": str(columns["education"][i]),
            "role": str(columns["role"][i]),
            "location": str(columns["location"][i]),
            "hours_per_week": int(columns["hours_per_week"][i]),
        }
        for i in range(n)
    ]
    return rows, salaries


def design_matrix(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Intercept, numeric features, then one-hot categoricals (first category dropped).

    Raises:
        ValueError: a row lacks a feature, has a non-numeric number or an unknown category.
    """
    for i, row in enumerate(rows):
        missing = [name for name in FEATURES if name not in row]
        if missing:
            raise ValueError(f"row {i}: missing feature(s) {', '.join(missing)}")
    blocks = [np.ones((len(rows), 1))]
    for name in NUMERIC:
        values = [row[name] for row in rows]
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"row {i}: {name} must be a number, not {value!r}")
        column = np.asarray(values, dtype=float)
        if not np.isfinite(column).all():
            raise ValueError(f"{name} must be finite")
        blocks.append(column[:, None])
    for name, categories in CATEGORIES.items():
        labels = np.asarray([row[name] for row in rows], dtype=object)
        known = np.isin(labels, categories)
        if not known.all():
            i = int(np.argmin(known))
            raise ValueError(
                f"row {i}: unknown {name} {labels[i]!r}; expected one of {', '.join(categories)}"
            )
        blocks.append((labels[:, None] == np.asarray(categories[1:], dtype=object)).astype(float))
    return np.hstack(blocks)


class LinearRegressionService:
    """Ordinary least squares on one-hot features, trained on construction (deterministic)."""

    def __init__(self, *, seed: int = TRAINING_SEED, rows: int = TRAINING_ROWS) -> None:
        features, salaries = generate(rows, np.random.default_rng(seed))
        coefficients, *_ = np.linalg.lstsq(design_matrix(features), salaries, rcond=None)
        self._coefficients: np.ndarray = coefficients
        self._version = hashlib.sha256(coefficients.tobytes()).hexdigest()[:12]

    @property
    def coefficients(self) -> np.ndarray:
        """A copy of the fitted coefficients, in :func:`design_matrix` column order."""
        return self._coefficients.copy()

    @property
    def artifact_version(self) -> str:
        """The artefact's version: the first 12 hex digits of the coefficients' SHA-256."""
        return self._version

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[float]:
        """Predicted salaries, one per row (``ValueError`` on invalid rows)."""
        if not rows:
            return []
        return (design_matrix(rows) @ self._coefficients).tolist()
