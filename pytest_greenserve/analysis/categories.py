"""The model size categories (Tables 4 and 5 of the paper)."""

from __future__ import annotations

import math


def model_category(model: str):
    from ..models import REGISTRY

    spec = REGISTRY.get(model)
    return spec.category if spec else None


def category_label(cat) -> str:
    return f"category {int(cat)}" if cat is not None and not (isinstance(cat, float) and math.isnan(cat)) \
        else "uncategorised"
