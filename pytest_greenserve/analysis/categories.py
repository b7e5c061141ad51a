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


#: the paper's size categories, by parameter count
CATEGORY_RANGES = {1: "under 1B parameters", 2: "1-1.5B parameters", 3: "2-3B parameters"}


def category_label(cat) -> str:
    """``"category 1 (under 1B parameters)"``; a model registered without one is ``"uncategorised"``."""
    if _missing(cat):
        return "uncategorised"
    cat = int(cat)
    return f"category {cat} ({CATEGORY_RANGES[cat]})" if cat in CATEGORY_RANGES else f"category {cat}"
