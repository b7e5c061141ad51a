"""The launch configurations of the fused step's GEMVs, chosen where they run.

Triton's autotuner times one launch at a time on the same weights, with L2 flushed between
runs. At one token a GEMV of a few MB lasts 3-10 µs, so that timing is mostly the launch and
its ramp, and the choice changed from one process to the next. Chosen that way, the GEMVs of
one starcoderbase-1b step in bf16 took 787 µs on an H200; the fastest configuration of each
shape, timed as the step runs them, took 709 µs (tools/gemv_bench.py, docs/measurements.md).

So each GEMV site (q/k/v, attention output, MLP up, MLP down, vocabulary) is tuned in the
step's own sequence: every layer's four GEMVs on the model's own weights (each layer's from
memory, as in the step), chained by programmatic dependent launch where the card has it,
captured as one CUDA graph and replayed. One site at a time tries each candidate while the
others keep their current choice (coordinate descent, the sites in the step's order); the
vocabulary GEMV, one matrix larger than L2, is timed alone.
"""

from __future__ import annotations

import time

#: The step's GEMV sites, in its order
SITES = ("qkv", "out", "fc", "proj", "lm_head")
#: Replays of a candidate's graph timed (after two untimed)
REPLAYS = 10


def site_shapes(decoder) -> dict[str, tuple[int, int]]:
    """(rows, K) of each GEMV site of a :class:`~.fused_decoder.FusedDecoder`."""
    layer = decoder.layers[0]
    return {"qkv": tuple(layer.qkv_w.shape), "out": tuple(layer.out_w.shape), "fc": tuple(layer.fc_w.shape),
            "proj": tuple(layer.proj_w.shape), "lm_head": tuple(decoder.lm_head.shape)}


def _graph_us(launch) -> float:
    """µs per replay of ``launch()`` captured as a CUDA graph (run once before, to compile)."""
    import torch

    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    graph.replay()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / REPLAYS


def tune(decoder) -> dict:
    """Choose ``decoder.configs`` (one launch configuration per site) on its CUDA device.

    Returns what was chosen and how: per site the configuration, the candidates tried, and the
    µs per step of what its timing covers (every layer's four GEMVs, or the vocabulary GEMV)
    before the site was tuned and after; the seconds the tuning took."""
    from . import fused_kernels as fk

    started = time.perf_counter()
    shapes = site_shapes(decoder)
    timed = {}
    for site in SITES:
        n, k = shapes[site]
        launch = (lambda: decoder.lm_head_gemv(decoder.best)) if site == "lm_head" else decoder.layer_gemvs
        timed[site] = {"before_us": _graph_us(launch)}
        best_us, best = timed[site]["before_us"], decoder.configs[site]
        tried = 0
        for config in fk.candidate_configs():
            if not fk.fits(config, n, k) or (site == "fc" and decoder.gated and config["SPLIT_K"] > 1):
                continue  # a gated MLP's first GEMV (gate and up at once) never splits K
            decoder.configs[site] = config
            try:
                us = _graph_us(launch)
            except Exception:  # a configuration this card cannot run (resources): not a candidate
                continue
            tried += 1
            if us < best_us:
                best_us, best = us, config
        decoder.configs[site] = best
        timed[site].update(config=dict(best), us=best_us, candidates=tried)
    decoder.reset_greedy_choice()  # the vocabulary GEMV's timed launches left their maxima
    return {"sites": timed, "tuning_s": time.perf_counter() - started}
