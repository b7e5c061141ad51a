"""The launch configurations of the fused step's GEMVs, chosen where they run.

Triton's autotuner times one launch at a time on the same weights, with L2 flushed between
runs. At one token a GEMV of a few MB lasts 3-10 µs, so that timing is mostly the launch and
its ramp, and the choice changed from one process to the next. Chosen that way, the GEMVs of
one starcoderbase-1b step in bf16 took 787 µs on an H200; the fastest configuration of each
shape, timed as the step runs them, took 709 µs (tools/gemv_bench.py, docs/measurements.md).

So each GEMV site (q/k/v, attention output, MLP up, MLP down, vocabulary) is tuned in the
step's own sequence: every layer's four GEMVs and its attention on the model's own weights
(each layer's from memory, as in the step), chained by programmatic dependent launch where the
card has it, captured as one CUDA graph and replayed. One site at a time tries each candidate
while the others keep their current choice (coordinate descent, the sites in the step's
order); the vocabulary GEMV, one matrix larger than L2, is timed alone. The attention is timed
with the GEMVs because the best configurations depend on the kernel between them: timed
without it, the tuning chose others (q/k/v's K split four ways among them), and
starcoderbase-1b's bf16 step took 789 µs on an H200 against 772 µs (docs/measurements.md).

The choice is kept on disk (:func:`tuned`), keyed by everything it depends on (the card, the
sites' shapes and flags, the weights' dtype, the position timed at, the candidates, the
kernels' source, Triton's and torch's versions): a later load of the same shapes on the same
kind of card, the roofline's child process included, reuses it instead of tuning again, and
runs the same kernels. Delete the folder to tune again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..fsutil import write_text_atomically

#: The step's GEMV sites, in its order
SITES = ("qkv", "out", "fc", "proj", "lm_head")
#: Replays of a candidate's graph timed (after two untimed)
REPLAYS = 10
#: The position the layers are timed at: attention reads this many cached positions (a prompt's
#: 10-15 tokens and a few generated)
TUNING_POSITION = 16


def site_shapes(decoder) -> dict[str, tuple[int, int]]:
    """(rows, K) of each GEMV site of a :class:`~.fused_decoder.FusedDecoder`."""
    layer = decoder.layers[0]
    return {"qkv": tuple(layer.qkv_w.shape), "out": tuple(layer.out_w.shape), "fc": tuple(layer.fc_w.shape),
            "proj": tuple(layer.proj_w.shape), "lm_head": tuple(decoder.lm_head.shape)}


def graph_us(launch, replays: int = REPLAYS, warmup: int = 2) -> float:
    """µs per replay of ``launch()`` captured as a CUDA graph: run once before (to compile),
    ``warmup`` replays untimed, then ``replays`` timed with CUDA events (tools/gemv_bench.py
    and tools/compile_variants.py time the same way)."""
    import torch

    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    return replay_us(graph, replays, warmup)


def replay_us(graph, replays: int = REPLAYS, warmup: int = 2) -> float:
    """µs per replay of a captured CUDA ``graph``: ``warmup`` replays untimed, then ``replays``
    timed with CUDA events."""
    import torch

    for _ in range(warmup):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / replays


def tune(decoder) -> dict:
    """Choose ``decoder.configs`` (one launch configuration per site) on its CUDA device.

    Returns what was chosen and how: per site the configuration, the candidates tried, and the
    µs per step of what its timing covers (every layer, its attention included, at position
    :data:`TUNING_POSITION`; or the vocabulary GEMV) before the site was tuned and after; the
    seconds the tuning took."""
    import torch

    from . import fused_kernels as fk

    started = time.perf_counter()
    shapes = site_shapes(decoder)
    # the attention reads the cache up to here (its contents do not matter to the timing)
    pos = torch.full((1,), min(TUNING_POSITION, decoder.keys[0].shape[2] - 1), dtype=torch.long,
                     device=decoder.x.device)
    timed = {}
    for site in SITES:
        n, k = shapes[site]
        launch = (lambda: decoder.lm_head_gemv(decoder.best)) if site == "lm_head" else (
            lambda: decoder.layers_at(pos))
        timed[site] = {"before_us": graph_us(launch)}
        best_us, best = timed[site]["before_us"], decoder.configs[site]
        tried = 0
        for config in fk.candidate_configs():
            if not fk.fits(config, n, k) or (site == "fc" and decoder.gated and config["SPLIT_K"] > 1):
                continue  # a gated MLP's first GEMV (gate and up at once) never splits K
            decoder.configs[site] = config
            try:
                us = graph_us(launch)
            except Exception:  # a configuration this card cannot run (resources): not a candidate
                continue
            tried += 1
            if us < best_us:
                best_us, best = us, config
        decoder.configs[site] = best
        timed[site].update(config=dict(best), us=best_us, candidates=tried)
    decoder.reset_greedy_choice()  # the vocabulary GEMV's timed launches left their maxima
    return {"sites": timed, "tuning_s": time.perf_counter() - started}


def kernels_digest() -> str:
    """The kernels' source (engines/fused_kernels.py), hashed: the configurations fastest for
    one version of a kernel need not be for the next (when the GEMVs read their epilogue's
    constants before their wait, the tuning chose 16 rows for q/k/v instead of 4-8)."""
    from . import fused_kernels as fk

    return hashlib.sha256(Path(fk.__file__).read_bytes()).hexdigest()[:12]


def tuning_key(decoder) -> dict:
    """What a tuning result depends on: the card, the GEMV sites' shapes and flags (the norm
    folded in, a gated MLP), the weights' dtype, the launch mode, the position timed at, the
    candidates, the kernels' source, and the versions of Triton and torch."""
    import torch
    import triton

    from . import fused_kernels as fk

    device = decoder.x.device
    return {"card": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "shapes": {site: list(shape) for site, shape in site_shapes(decoder).items()},
            "norm": sorted(decoder.layers[0].norm_1), "gated": decoder.gated, "dtype": str(decoder.lm_head.dtype),
            "pdl": fk.USE_PDL, "tuning_position": TUNING_POSITION,
            "candidates": hashlib.sha256(json.dumps(fk.candidate_configs(), sort_keys=True).encode()).hexdigest()[:12],
            "kernels": kernels_digest(),
            "triton": triton.__version__, "torch": torch.__version__}


def tuned(decoder, cache_dir: Path | None, tune_fn=None, progress=None) -> dict:
    """``decoder.configs`` from an earlier tuning of the same key in ``cache_dir``, else tuned
    now (``tune_fn``, by default :func:`tune`; ``progress`` told first, in one line) and kept
    there. Returns :func:`tune`'s record, with ``cache``: "hit" (reused; ``tuning_s`` is the
    original tuning's), "stored" or "off" (no ``cache_dir``), and the file. A file that cannot
    be read or no longer fits is tuned again, never trusted."""
    from . import fused_kernels as fk

    tune_fn = tune_fn or tune

    def tune_now():
        if progress is not None:
            progress("tuning the fused step's GEMV launch configurations on this card (once per model shape; "
                     "up to a minute or two, outside the measured samples)")
        return tune_fn(decoder)

    if cache_dir is None:
        return {**tune_now(), "cache": "off"}
    key = tuning_key(decoder)
    path = Path(cache_dir) / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json")
    try:
        kept = json.loads(path.read_text())
        shapes = site_shapes(decoder)
        configs = {site: kept["record"]["sites"][site]["config"] for site in SITES}
        if kept["key"] == key and all(fk.fits(configs[site], *shapes[site]) for site in SITES):
            decoder.configs.update(configs)
            return {**kept["record"], "cache": "hit", "file": str(path)}
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or torn: tune again
        pass
    record = tune_now()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps({"key": key, "record": record}, indent=1))
    return {**record, "cache": "stored", "file": str(path)}
