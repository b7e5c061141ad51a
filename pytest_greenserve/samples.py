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
from .load import LoadShape, closed
from .measure import Measurement
from .metrics import DEFAULT_MIN_SAMPLE_S, Metric, derive_fields
from .quality import excess_per_prompt, judge
from .results import SCHEMA_VERSION, sample_columns
from .roofline import bound_by


#: A divergence from the reference at a step whose reference top-2 score gap is below this
#: (absolute, in logits) is a near-tie, not an error. fp32 kernels differ by ~1e-5..1e-4
#: relative on logits; random-weight replicas' logits are O(1..10), so two engines' top-2 gaps
#: can differ by up to ~1e-3 and flip an argmax whose gap is smaller. A broken engine diverges
#: at wide gaps (typically >0.01), which stay errors.
DEFAULT_TIE_TOLERANCE = 1e-3


def match_rate(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]] | None) -> float | None:
    """Share of requests whose generated ids equal the reference's; None without a reference."""
    if reference is None or not outputs:
        return None
    return sum(list(a) == list(b) for a, b in zip(outputs, reference)) / len(outputs)


def first_divergence(output: Sequence[int], reference: Sequence[int]) -> int | None:
    """The first step at which ``output`` departs from ``reference``; None when they are equal."""
    if list(output) == list(reference):
        return None
    return next((i for i, (a, b) in enumerate(zip(output, reference)) if a != b), min(len(output), len(reference)))


def is_near_tie(output: Sequence[int], reference: Sequence[int], margins: Sequence[float] | None,
                tolerance: float = DEFAULT_TIE_TOLERANCE) -> bool:
    """Whether ``output`` equals ``reference`` up to its first divergence and the reference's
    top-2 gap at that step is below ``tolerance`` (after a tie the continuations legitimately
    differ, so nothing after the first divergence is compared)."""
    step = first_divergence(output, reference)
    if step is None or margins is None or step >= len(margins) or step >= min(len(output), len(reference)):
        return False
    return margins[step] < tolerance


def match_rate_tie_aware(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]] | None,
                         tolerance: float = DEFAULT_TIE_TOLERANCE) -> float | None:
    """Share of requests that equal the reference or first depart from it at a near-tie step;
    None without a reference or without the reference's margins (``reference.margins``)."""
    margins = getattr(reference, "margins", None)
    if reference is None or margins is None or not outputs:
        return None
    ok = sum(list(a) == list(b) or is_near_tie(a, b, m, tolerance) for a, b, m in zip(outputs, reference, margins))
    return ok / len(outputs)


def tie_matched(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]],
                tolerance: float = DEFAULT_TIE_TOLERANCE) -> list[bool]:
    """Per prompt: equal to the reference, or first departing from it at a near-tie."""
    margins = getattr(reference, "margins", None) or [None] * len(reference)
    return [list(a) == list(b) or is_near_tie(a, b, m, tolerance) for a, b, m in zip(outputs, reference, margins)]


def quality_fields(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]] | None,
                   nll: Sequence[float | None] | None, native_outputs: Sequence[Sequence[int]] | None,
                   native_nll: Sequence[float | None] | None,
                   tolerance: float = DEFAULT_TIE_TOLERANCE) -> dict:
    """The sample's quality figures against the fp32 reference (see ``quality.py``): the
    reference's mean NLL of the outputs, their excess over the reference's own, the native
    path's excess, the paired difference and its bootstrap bound, and ``quality_matched``;
    None where the reference, its log-probabilities or the scores are missing."""
    ref_nll = getattr(reference, "nll", None)
    empty = {"ref_nll_nats_per_token": None, "nll_excess_nats_per_token": None,
             "native_nll_excess_nats_per_token": None, "nll_vs_native_nats_per_token": None,
             "nll_vs_native_low_nats_per_token": None, "quality_matched": None, "ref_nll_per_prompt_nats": None}
    if reference is None or ref_nll is None or nll is None:
        return empty
    scored = [v for v in nll if v is not None]
    out = dict(empty, ref_nll_nats_per_token=statistics.fmean(scored) if scored else None,
               ref_nll_per_prompt_nats=list(nll))
    excess = excess_per_prompt(nll, ref_nll, tie_matched(outputs, reference, tolerance))
    if native_outputs is None or native_nll is None:
        mine = [e for e in excess if e is not None]
        out["nll_excess_nats_per_token"] = statistics.fmean(mine) if mine else None
        return out
    native = excess_per_prompt(native_nll, ref_nll, tie_matched(native_outputs, reference, tolerance))
    v = judge(excess, native)
    out.update(nll_excess_nats_per_token=v.excess_nats_per_token,
               native_nll_excess_nats_per_token=v.native_excess_nats_per_token,
               nll_vs_native_nats_per_token=v.vs_native_nats_per_token,
               nll_vs_native_low_nats_per_token=v.vs_native_low_nats_per_token, quality_matched=v.matched)
    return out


def not_fully_on_cuda(provider: str, placement: Mapping | None) -> bool | None:
    """True when a CUDA configuration's placement audit found compute nodes on the CPU;
    None when there is no audit (the engine keeps none, or it is not a CUDA configuration)."""
    if provider != "cuda" or placement is None:
        return None
    return bool(placement.get("compute_on_cpu"))


def inter_token_latencies(token_times_s: Sequence[Sequence[float] | None]) -> dict:
    """ITL percentiles over every gap between consecutive tokens of every request, where each
    request's tokens were stamped; all None when any request's were not (a partial set would
    describe some requests only)."""
    none = {"itl_p50_s": None, "itl_p95_s": None, "itl_p99_s": None}
    if not token_times_s or any(t is None for t in token_times_s):
        return none
    gaps = [b - a for times in token_times_s for a, b in zip(times, times[1:])]
    if not gaps:
        return none
    if len(gaps) == 1:
        return dict.fromkeys(none, gaps[0])
    cuts = statistics.quantiles(gaps, n=100, method="inclusive")
    return {"itl_p50_s": cuts[49], "itl_p95_s": cuts[94], "itl_p99_s": cuts[98]}


def config_label(config: ServingConfig, transport: str = "inproc", concurrency: int = 1, dtype: str = "fp32",
                 stream: bool = False, load: LoadShape | None = None) -> str:
    """The ``config`` reports group by: ``torch-cpu``; in bf16 ``torch-cpu:bf16`` (so reports,
    statistics and the gate never mix dtypes; fp32 labels carry none, as before the option);
    over HTTP ``torch-cpu@http``; with concurrent clients ``torch-cpu:bf16@http/c4`` (their
    latencies include queueing, so they are not comparable with one client's); streamed
    (server-sent events) ``torch-cpu@http+stream``: an event per token is more work than one answer.
    ``load`` (``--greenserve-load``, default closed:``concurrency``): an open loop's suffix is its
    shape and rate, ``torch-cpu@http/poisson2.5`` (``LoadShape.label_suffix``)."""
    name = config.name if dtype == "fp32" else f"{config.name}:{dtype}"
    label = name if transport == "inproc" else f"{name}@{transport}" + ("+stream" if stream else "")
    return label + (load if load is not None else closed(max(1, concurrency))).label_suffix()


def build_sample(*, run_id: str, machine: str, model: str, category: int | None, weights: str,
                 config: ServingConfig, repetition: int, order: int, new_tokens: int,
                 prompt_ids: Sequence[Sequence[int]], measurement: Measurement,
                 reference: Sequence[Sequence[int]] | None, versions: Mapping[str, str],
                 metrics: Mapping[str, Metric], placement: Mapping | None = None,
                 tie_tolerance: float = DEFAULT_TIE_TOLERANCE, threads: Mapping | None = None,
                 min_sample_s: float | None = None, transport: str = "inproc", concurrency: int = 1,
                 dtype: str = "fp32", roofline: Mapping | None = None, load_s: float | None = None,
                 load_info: Mapping | None = None, stream: bool = False, slo: Mapping | None = None,
                 nll: Sequence[float | None] | None = None, load: LoadShape | None = None,
                 native_outputs: Sequence[Sequence[int]] | None = None,
                 native_nll: Sequence[float | None] | None = None) -> dict:
    """One sample. ``reference``: the fp32 torch ids per prompt, with ``.margins`` and
    ``.logprobs`` when recorded (references.Reference). ``nll``: per prompt, the reference
    model's mean NLL of this sample's outputs; ``native_outputs`` and ``native_nll``: the same
    for torch eager in the sample's dtype (in fp32, the reference itself). With them the sample
    is error-prone when its quality is worse than the native path's beyond the bootstrap bound
    (``quality_fields``); without them, in fp32, when a divergence is not a near-tie, and in
    another dtype it cannot be told (None). ``placement``: the engine's placement audit (``Engine.placement()``).
    ``threads``: the engine's ``thread_settings()`` (samples.jsonl only, not a samples.csv
    column). ``min_sample_s``: below it the window is ``low_resolution`` (None:
    ``metrics.DEFAULT_MIN_SAMPLE_S``). ``transport``: ``inproc`` or ``http``; an HTTP sample's
    ``config`` is ``<engine>-<provider>@http``, so every report tells it from the in-process one
    (``engine``, ``provider`` and ``transport`` stay separate columns). ``concurrency``: the
    client threads that sent the prompts. ``dtype``: ``fp32`` or ``bf16`` (``--greenserve-dtype``);
    a bf16 sample's ``config`` is ``<engine>-<provider>:bf16``. ``roofline``: a GPU sample's
    roofline fields (``roofline.roofline_fields``), and in ``notes`` why any are missing; the
    ratios to the floors and ``bound_by`` are derived here. ``load_s``: the seconds the target's
    load took (the runner's clock); ``load_info``: what an engine that compiles says about its
    build (``Engine.load_info()``: ``compile_mode``, ``compile_s``, ``capture_s``...), kept whole
    in samples.jsonl; both happened before any sample, never inside one. ``stream``: the HTTP
    requests were server-sent events (TTFT and ITL stamped at the client). ``slo``: the latency
    objectives goodput is judged by (``slo.parse_slo``), kept in the sample. ``load``: the shape
    that sent the requests (None: closed:``concurrency``); in an open loop only the requests the
    measurement marks ``measured`` (completed inside the meters' window) count for ``requests``,
    ``tokens_generated`` and every latency figure, so energy per token is the window's energy
    over the window's tokens; every output still counts for quality."""
    m = measurement
    load = load if load is not None else closed(max(1, concurrency))
    counted = (lambda xs: list(xs)) if m.measured is None else (lambda xs: [x for x, k in zip(xs, m.measured) if k])
    counted_outputs = counted(m.outputs)
    rate = match_rate(m.outputs, reference)
    rate_ties = match_rate_tie_aware(m.outputs, reference, tie_tolerance)
    decisive = rate_ties if rate_ties is not None else rate
    quality = quality_fields(m.outputs, reference, nll, native_outputs, native_nll, tie_tolerance)
    if quality["quality_matched"] is not None:
        error_prone = not quality["quality_matched"]
    elif dtype == "fp32" and decisive is not None:  # no scores: exact tokens, near-ties allowed
        error_prone = decisive < 1.0
    else:  # another dtype's tokens depart from fp32 by design: only the quality score can tell
        error_prone = None
    sample = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "machine": machine,
        "model": model,
        "category": category,  # the paper's size category, so the analysis needs no model registry
        "weights": weights,
        "engine": config.engine,
        "provider": config.provider,
        "config": config_label(config, transport, concurrency, dtype, stream, load),
        "transport": transport,
        "stream": stream,
        "slo": dict(slo) if slo else None,  # JSON only
        "concurrency": load.clients if load.kind == "closed" else None,  # an open loop has no fixed clients
        "dtype": dtype,
        "load": str(load),
        "offered_rate_rps": m.offered_rate_rps,
        "load_window": dict(m.window) if m.window is not None else None,  # JSON only
        "repetition": repetition,
        "order": order,
        "requests": len(counted_outputs),
        "requests_sent": len(m.outputs),
        # an open loop: the requests its schedule released inside the measured window
        "requests_offered": (m.window or {}).get("arrivals"),
        "new_tokens": new_tokens,
        "tokens_generated": sum(len(o) for o in counted_outputs),
        "prompt_tokens_mean": statistics.fmean(len(p) for p in prompt_ids) if prompt_ids else None,
        "time_s": m.time_s,
        "match_rate": rate,
        "match_rate_tie_aware": rate_ties,
        "error_prone": error_prone,
        **quality,
        **{k: v for k, v in m.meter_fields.items() if k != "meter_notes"},
        "latencies_s": counted(m.latencies_s),
        "ttfts_s": counted(m.ttfts_s),
        **inter_token_latencies(counted(m.token_times_s)),
        "token_ids_digest": hashlib.sha256(json.dumps(m.outputs).encode()).hexdigest()[:16],
        "versions": dict(versions),
        "threads": dict(threads) if threads is not None else None,
        "min_sample_s": min_sample_s if min_sample_s is not None else DEFAULT_MIN_SAMPLE_S,
        "meter_notes": list(m.meter_fields.get("meter_notes", [])),
        "placement": dict(placement) if placement is not None else None,  # JSON only
        "not_fully_on_cuda": not_fully_on_cuda(config.provider, placement),
        "started_at": m.started_at,
        "finished_at": m.finished_at,
        "load_s": load_s,
        "load_info": dict(load_info) if load_info is not None else None,  # JSON only
        **{k: (load_info or {}).get(k) for k in ("compile_mode", "compile_s", "capture_s")},
    }
    if roofline:
        sample.update({k: v for k, v in roofline.items() if k != "notes"})
        sample["meter_notes"] += list(roofline.get("notes", ()))
    derive_fields(sample, metrics)
    sample["bound_by"] = bound_by(sample)  # a word, not a metric: from ms_per_token and the floors
    for column in sample_columns(metrics):
        sample.setdefault(column, None)
    return sample
