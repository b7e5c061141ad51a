"""The model size categories (Tables 4 and 5 of the paper).

A model's category (1: <1B parameters, 2: 1-1.5B, 3: 2-3B) comes with its samples, in their
``category`` column; a sample without one is *uncategorised*. The analysis never looks models
up (``greenserve report`` fills the column of old runs from the model registry).
"""

from __future__ import annotations

import math

import pandas as pd


def _missing(cat) -> bool:
    return cat is None or (isinstance(cat, float) and math.isnan(cat))


def group_category(categories: pd.Series):
    """One model's category from its samples' ``category`` values: the first known one, else None."""
    known = [c for c in categories if not _missing(c)]
    return known[0] if known else None


def category_label(cat) -> str:
    return f"category {int(cat)}" if not _missing(cat) else "uncategorised"
