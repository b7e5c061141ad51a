"""The sample builder: one measured window, plus what it ran, becomes one sample (a flat dict).

Fields come from three places: who and what was measured (model, configuration, repetition,
machine), the :class:`~pytest_greenserve.measure.Measurement` (timings, outputs, the meters'
fields), and the metric registry (:mod:`pytest_greenserve.metrics`), whose derived metrics
(``ms_per_token``, ``j_per_token``, latency quantiles...) are computed here. Every column of
``results.sample_columns`` is present in every sample; what could not be measured is None,
never 0.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from typing import Mapping, Sequence

from .configs import ServingConfig
from .measure import Measurement
from .metrics import Metric, derive_fields
from .results import SCHEMA_VERSION, sample_columns


def match_rate(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]] | None) -> float | None:
    """Share of requests whose generated ids equal the reference's; None without a reference."""
    if reference is None or not outputs:
        return None
    return sum(list(a) == list(b) for a, b in zip(outputs, reference)) / len(outputs)


def build_sample(*, run_id: str, machine: str, model: str, category: int | None, weights: str,
                 config: ServingConfig, repetition: int, order: int, new_tokens: int,
                 prompt_ids: Sequence[Sequence[int]], measurement: Measurement,
                 reference: Sequence[Sequence[int]] | None, versions: Mapping[str, str],
                 metrics: Mapping[str, Metric]) -> dict:
    m = measurement
    rate = match_rate(m.outputs, reference)
    sample = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "machine": machine,
        "model": model,
        "category": category,  # the paper's size category, so the analysis needs no model registry
        "weights": weights,
        "engine": config.engine,
        "provider": config.provider,
        "config": config.name,
        "repetition": repetition,
        "order": order,
        "requests": len(m.outputs),
        "new_tokens": new_tokens,
        "tokens_generated": sum(len(o) for o in m.outputs),
        "prompt_tokens_mean": statistics.fmean(len(p) for p in prompt_ids) if prompt_ids else None,
        "time_s": m.time_s,
        "match_rate": rate,
        "error_prone": None if rate is None else rate < 1.0,
        **{k: v for k, v in m.meter_fields.items() if k != "meter_notes"},
        "latencies_s": list(m.latencies_s),
        "ttfts_s": list(m.ttfts_s),
        "token_ids_digest": hashlib.sha256(json.dumps(m.outputs).encode()).hexdigest()[:16],
        "versions": dict(versions),
        "meter_notes": list(m.meter_fields.get("meter_notes", [])),
        "started_at": m.started_at,
        "finished_at": m.finished_at,
    }
    derive_fields(sample, metrics)
    for column in sample_columns(metrics):
        sample.setdefault(column, None)
    return sample
