"""Effect sizes: omega² (Welch's ANOVA), epsilon² (Kruskal-Wallis), Hedges' g (pairs)."""

from __future__ import annotations

import math

import numpy as np


def omega_squared_welch(F: float, df1: float, n_total: int) -> float:
    """Estimated omega² for Welch's ANOVA: df1(F-1) / (df1(F-1) + N), floored at 0."""
    num = df1 * (F - 1.0)
    return max(0.0, num / (num + n_total)) if (num + n_total) > 0 else 0.0


def epsilon_squared_kw(H: float, n_total: int) -> float:
    """Epsilon² for Kruskal-Wallis: H / ((N² - 1) / (N + 1)) = H / (N - 1)."""
    return H / (n_total - 1) if n_total > 1 else float("nan")


def hedges_g(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return None
    pooled = math.sqrt(((nx - 1) * x.var(ddof=1) + (ny - 1) * y.var(ddof=1)) / (nx + ny - 2))
    if pooled == 0:
        return None
    d = (x.mean() - y.mean()) / pooled
    return float(d * (1 - 3 / (4 * (nx + ny) - 9)))
