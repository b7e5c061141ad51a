"""Which metrics are analysed: read from the metric registry (:mod:`pytest_greenserve.metrics`).

Re-exported here for the analysis modules; the registry is the one place a metric is defined.
"""

from __future__ import annotations

from ..metrics import (SAMPLE_FLAGS, Metric, analysed, builtin_metrics, metrics_or_builtin, plotted,
                       process_tree_metrics, resource_metrics)

__all__ = ["SAMPLE_FLAGS", "Metric", "analysed", "builtin_metrics", "metrics_or_builtin", "plotted",
           "process_tree_metrics", "resource_metrics"]
