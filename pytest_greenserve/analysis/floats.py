"""Values as floats: ``None`` (not NaN) for what is missing, so stats.csv stays free of NaN."""

from __future__ import annotations

import math

import pandas as pd


def as_float(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def as_numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)
