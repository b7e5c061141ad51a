"""A per-token roofline for GPU samples: how far each configuration is from the card's limits, and why.

Two floors under the time per generated token (batch of one, greedy decoding):

* the **memory floor**: every generated token reads the model's weights and the KV cache once,
  so it cannot take less than those bytes divided by the card's memory bandwidth;
* the **launch floor**: every generated token launches kernels, and each launch costs the host
  a fixed time, so it cannot take less than the launches per token times that latency.

``ms_per_token`` far above both floors while the GPU is mostly idle means the host (Python,
the framework, the engine's own work between kernels) is what decides the time.

The arithmetic is pure (:class:`ModelGeometry`, the floors, :func:`count_events`,
:func:`bound_by`); the measurements (:func:`measure_bandwidth_gb_s`,
:func:`measure_launch_latency_us`, :func:`count_launches`) need a CUDA device and raise
:class:`RooflineUnavailable` (one line) without one. torch and transformers are imported
inside the functions that need them. No pytest here.

Units: MB and GB are decimal here (10^6 and 10^9 bytes), as bandwidths are quoted; the
meters' ``*_mb`` memory fields are MiB.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["ModelGeometry", "LaunchCount", "RooflineUnavailable", "ROOFLINE_FIELDS", "bytes_per_element",
           "geometry_from_config", "geometry_from_pretrained", "mean_context_len", "memory_floor_ms_per_token",
           "launch_floor_ms_per_token", "roofline_fields", "count_events", "bound_by", "measure_bandwidth_gb_s",
           "measure_launch_latency_us", "count_launches"]

MB = 1e6
GB = 1e9

#: The fields :func:`roofline_fields` fills (the metric registry's roofline entries, less the
#: ratios it derives: ``x_memory_floor``, ``x_launch_floor``); None where not measured, never 0.
ROOFLINE_FIELDS = ("bandwidth_gb_s", "launch_latency_us", "weight_mb_per_token", "kv_mb_per_token",
                   "memory_floor_ms_per_token", "kernels_per_token", "launches_per_token",
                   "launch_floor_ms_per_token", "gpu_busy_ms_per_token", "gpu_busy_pct_profiled")


class RooflineUnavailable(RuntimeError):
    """A roofline measurement cannot be made here (no CUDA device, nothing profiled); one line."""


# ---------------------------------------------------------------- the model's bytes per token

_BYTES_PER_ELEMENT = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}


def bytes_per_element(dtype: str | None) -> int:
    """Bytes of one weight or KV-cache element in ``dtype`` (``fp32``: 4, ``bf16``/``fp16``: 2)."""
    return _BYTES_PER_ELEMENT.get(str(dtype or "fp32").lower(), 4)


@dataclass(frozen=True)
class ModelGeometry:
    """What one generated token reads from memory, per the model's configuration.

    ``weight_params_per_token``: parameters read to generate one token: every parameter once,
    except lookup tables (the input embedding, gpt2's position embedding ``wpe``), of which
    only one row is read. A tied lm_head reads the whole shared matrix once (as the lm_head).
    """

    layers: int
    kv_heads: int  # key/value heads per layer: all heads (MHA), fewer (GQA), 1 (MQA)
    head_dim: int
    bytes_per_element: int  # of a weight and of a KV-cache element, unless set apart below
    params: int  # distinct parameters (tied matrices once)
    weight_params_per_token: int
    #: an engine's own weight format (a GGUF quantisation): bytes per weight, fractional for
    #: block formats; None: ``bytes_per_element``
    weight_bytes_per_param: float | None = None

    @property
    def weight_bytes_per_token(self) -> float:
        per_param = self.weight_bytes_per_param if self.weight_bytes_per_param is not None else self.bytes_per_element
        return self.weight_params_per_token * per_param

    def kv_bytes_per_token(self, context_len: float) -> float:
        """Bytes of KV cache read to generate one token with ``context_len`` tokens before it:
        K and V, every layer, every key/value head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * context_len * self.bytes_per_element


def _text_config(config):
    """The language model's configuration (multimodal configs nest it; text-only ones are it)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def attention_shape(config) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from a transformers config, read through the generic names
    (configs alias their own: gpt2's ``n_layer`` is ``num_hidden_layers``)."""
    text = _text_config(config)
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv_heads = getattr(text, "num_key_value_heads", None)
    if getattr(text, "multi_query", False):  # gpt_bigcode: one K/V head shared by all query heads
        kv_heads = 1
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads  # gemma sets head_dim itself
    return layers, int(kv_heads or heads), int(head_dim)


def count_weight_params(model) -> tuple[int, int]:
    """(distinct parameters, parameters read per generated token) of a transformers model
    (built on the meta device: shapes only).

    ``model.parameters()`` yields a tied matrix once. Every ``nn.Embedding`` (the input
    embedding, a learned position embedding) is a lookup: one row read per token, unless it
    is also the output projection (tied), which reads all of it.
    """
    import torch

    params = sum(p.numel() for p in model.parameters())
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_weight = getattr(out, "weight", None)
    per_token = params
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, torch.nn.Embedding) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        if module.weight is out_weight:  # tied: read whole, as the lm_head
            continue
        per_token -= module.weight.numel() - module.embedding_dim
    return params, per_token


def geometry_from_config(config, bytes_per_element: int = 4) -> ModelGeometry:
    """The geometry of the model ``config`` describes, built on the meta device (no weights
    are loaded or allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params, per_token = count_weight_params(model)
    layers, kv_heads, head_dim = attention_shape(config)
    return ModelGeometry(layers, kv_heads, head_dim, bytes_per_element, params, per_token)


def geometry_from_pretrained(ref: str, bytes_per_element: int = 4) -> ModelGeometry:
    """The geometry of the model at ``ref`` (a directory or hub id: ``ModelHandle.ref``)."""
    from transformers import AutoConfig

    return geometry_from_config(AutoConfig.from_pretrained(ref), bytes_per_element)


# ---------------------------------------------------------------- the floors

def mean_context_len(prompt_ids: Sequence[Sequence[int]], new_tokens: int) -> float | None:
    """The mean context a generated token attends to over a sample: prompt length plus half
    the new tokens, averaged over the prompts.

    An approximation: the k-th new token attends to the prompt and the k-1 tokens before it,
    and the mean of k-1 over 1..n is (n-1)/2; n/2 is within half a token of it. The prefill
    step (which reads no cache) is counted as a decode step.
    """
    if not prompt_ids:
        return None
    return statistics.fmean(len(p) for p in prompt_ids) + new_tokens / 2


def memory_floor_ms_per_token(geometry: ModelGeometry, mean_context_len: float, bandwidth_gb_s: float) -> float:
    """ms per token to read the weights and the KV cache once at ``bandwidth_gb_s`` (10^9 B/s)."""
    read_b = geometry.weight_bytes_per_token + geometry.kv_bytes_per_token(mean_context_len)
    return 1000 * read_b / (bandwidth_gb_s * GB)


def launch_floor_ms_per_token(launches_per_token: float, launch_latency_us: float) -> float:
    """ms per token to launch ``launches_per_token`` kernels at ``launch_latency_us`` each."""
    return launches_per_token * launch_latency_us / 1000


def _known(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def roofline_fields(*, geometry: ModelGeometry | None = None, mean_context_len: float | None = None,
                    bandwidth_gb_s: float | None = None, launch_latency_us: float | None = None,
                    launches: "LaunchCount | None" = None) -> dict[str, float | None]:
    """The sample's roofline fields (:data:`ROOFLINE_FIELDS`) from what was measured; each is
    None when an input is missing, never 0.

    The launch floor counts the host's launch calls (a CUDA graph launches many kernels in one
    call); where the profile showed no launch call, it counts the kernels.
    """
    out: dict[str, float | None] = dict.fromkeys(ROOFLINE_FIELDS)
    out["bandwidth_gb_s"] = bandwidth_gb_s
    out["launch_latency_us"] = launch_latency_us
    if geometry is not None:
        out["weight_mb_per_token"] = geometry.weight_bytes_per_token / MB
        if _known(mean_context_len):
            out["kv_mb_per_token"] = geometry.kv_bytes_per_token(mean_context_len) / MB
            if _known(bandwidth_gb_s) and bandwidth_gb_s > 0:
                out["memory_floor_ms_per_token"] = memory_floor_ms_per_token(geometry, mean_context_len,
                                                                             bandwidth_gb_s)
    if launches is not None:
        out["kernels_per_token"] = launches.kernels_per_token
        out["launches_per_token"] = launches.launches_per_token
        out["gpu_busy_ms_per_token"] = launches.gpu_busy_ms_per_token
        out["gpu_busy_pct_profiled"] = launches.gpu_busy_pct
        per_token = launches.launches_per_token or launches.kernels_per_token
        if per_token and _known(launch_latency_us):
            out["launch_floor_ms_per_token"] = launch_floor_ms_per_token(per_token, launch_latency_us)
    return out


#: Within this factor of its larger floor, a sample is bound by that floor; above it, neither
#: floor explains the time and the GPU's busy share says whether the host or the kernels do.
NEAR_FLOOR = 2.0
#: Below this GPU-busy share (%), a sample far above both floors waits on the host.
HOST_BUSY_PCT = 50.0


def bound_by(sample: Mapping[str, Any]) -> str | None:
    """What limits a GPU sample's time per token, in a word (None without a floor):

    * ``memory``: within :data:`NEAR_FLOOR` × the memory floor, which is the higher floor;
    * ``launches``: within :data:`NEAR_FLOOR` × the launch floor, which is the higher floor;
    * ``host``: far above both, and the GPU busy less than :data:`HOST_BUSY_PCT` % of the time
      (Python, the framework or the engine between kernels);
    * ``kernels``: far above both with the GPU busy: the kernels run slower than the
      bandwidth allows (small matrices, compute, poor kernels).

    The GPU's busy share is its kernel time per token (profiled) over ``ms_per_token``, else
    the profiled share, else NVML's ``gpu_pct``; without any, a sample far above both floors
    gets None.
    """
    ms = sample.get("ms_per_token")
    memory, launch = sample.get("memory_floor_ms_per_token"), sample.get("launch_floor_ms_per_token")
    floors = {word: f for word, f in (("memory", memory), ("launches", launch)) if _known(f) and f > 0}
    if not _known(ms) or not floors:
        return None
    word, floor = max(floors.items(), key=lambda kv: kv[1])
    if ms <= NEAR_FLOOR * floor:
        return word
    busy_ms = sample.get("gpu_busy_ms_per_token")
    if _known(busy_ms) and ms > 0:
        busy_pct = 100 * busy_ms / ms
    else:
        busy_pct = next((sample.get(k) for k in ("gpu_busy_pct_profiled", "gpu_pct") if _known(sample.get(k))), None)
    if busy_pct is None:
        return None
    return "host" if busy_pct < HOST_BUSY_PCT else "kernels"


# ---------------------------------------------------------------- profiled launches (pure part)

#: Host API calls that launch work on the GPU (the runtime's and the driver's; ``_ptsz`` and
#: ``_v2`` variants too). A graph launch is one call for all of the graph's kernels.
LAUNCH_CALLS = frozenset({
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel", "cudaLaunchCooperativeKernelMultiDevice",
    "cuLaunchKernel", "cuLaunchKernelEx", "cuLaunchCooperativeKernel", "cudaGraphLaunch", "cuGraphLaunch",
})
#: Trace categories (the profiler's ``cat``) of device activity, and of host API calls.
KERNEL_KINDS = frozenset({"kernel"})
DEVICE_KINDS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
HOST_API_KINDS = frozenset({"cuda_runtime", "cuda_driver", "runtime", "driver"})


def _launch_call(name: str) -> bool:
    base = name
    for suffix in ("_ptsz", "_ptds", "_v2", "_v3"):
        base = base.replace(suffix, "")
    return base in LAUNCH_CALLS


@dataclass(frozen=True)
class LaunchCount:
    """One profiled generation, per generated token."""

    kernels_per_token: float | None  # kernels the GPU executed
    launches_per_token: float | None  # host launch calls (None: the profile showed none)
    gpu_busy_ms_per_token: float | None  # device time (kernels, copies, memsets), overlaps counted once
    gpu_busy_pct: float | None  # that time over the profiled generation's wall time


def count_events(events: Iterable[tuple], tokens: int, wall_us: float | None = None) -> LaunchCount:
    """Count a profile's ``(name, kind, duration_us[, start_us])`` events per generated token.

    ``kind`` is the trace category: ``kernel`` (a kernel on the device), ``gpu_memcpy`` and
    ``gpu_memset`` (device busy, not kernels), ``cuda_runtime``/``cuda_driver`` (host API
    calls, of which those in :data:`LAUNCH_CALLS` are launches); others are ignored. Busy time
    is the time at least one device event runs: events that overlap are counted once (a
    kernel launched early under programmatic dependent launch runs while the one before it
    finishes, and waits for it: summed, compile-cuda's fused step was "busy" 1.8 times its
    wall time). An event without a start time adds its duration. The share is capped at 100%.
    ``wall_us``: the profiled generation's wall time (None: no share).
    """
    if tokens <= 0:
        raise ValueError("tokens must be positive")
    kernels = launches = 0
    intervals, unplaced_us = [], 0.0
    for name, kind, duration_us, *start in events:
        kind = str(kind).lower()
        if kind in DEVICE_KINDS:
            duration_us = float(duration_us or 0.0)
            if start and start[0] is not None:
                intervals.append((float(start[0]), float(start[0]) + duration_us))
            else:
                unplaced_us += duration_us
            kernels += kind in KERNEL_KINDS
        elif kind in HOST_API_KINDS and _launch_call(str(name)):
            launches += 1
    busy_us = _covered_us(intervals) + unplaced_us
    busy_pct = min(100.0, 100 * busy_us / wall_us) if (wall_us and kernels) else None
    return LaunchCount(kernels_per_token=kernels / tokens if kernels else None,
                       launches_per_token=launches / tokens if launches else None,
                       gpu_busy_ms_per_token=busy_us / 1000 / tokens if kernels else None,
                       gpu_busy_pct=busy_pct)


def _covered_us(intervals: list[tuple[float, float]]) -> float:
    """The time covered by at least one of the (start, end) ``intervals``."""
    covered, reached = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reached:
            covered += end - max(start, reached)
            reached = end
    return covered


# ---------------------------------------------------------------- measurements on the card

def _cuda_torch():
    """torch, with a CUDA device; RooflineUnavailable otherwise."""
    try:
        import torch
    except ImportError:
        raise RooflineUnavailable("torch not installed") from None
    if not torch.cuda.is_available():
        raise RooflineUnavailable("no CUDA device visible to torch")
    return torch


def measure_bandwidth_gb_s(size_b: int = 1 << 30, repeats: int = 10) -> float:
    """The card's achievable memory bandwidth in GB/s (10^9 B/s): the fastest of ``repeats``
    device-to-device copies of a ``size_b`` buffer (shrunk to fit a quarter of the free
    memory), timed with CUDA events, counting the bytes read and written.

    What a copy achieves, not the spec sheet: on an H100 80GB HBM3 (3.35 TB/s quoted) it
    measured 3.0 TB/s (torch 2.11), about what large streaming reads reach.
    """
    torch = _cuda_torch()
    free_b, _ = torch.cuda.mem_get_info()
    size_b = int(min(size_b, free_b // 4))
    if size_b < 1 << 20:
        raise RooflineUnavailable(f"too little free GPU memory for a copy ({free_b / MB:.0f} MB)")
    src = torch.empty(size_b, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    try:
        dst.copy_(src)  # the first copy pays for lazy initialisation
        best_ms = math.inf
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best_ms = min(best_ms, start.elapsed_time(end))
    finally:
        del src, dst
        torch.cuda.empty_cache()
    return 2 * size_b / (best_ms / 1000) / GB


def measure_launch_latency_us(launches: int = 2000, rounds: int = 3) -> float:
    """Host time per kernel launch in µs: ``launches`` back-to-back ``x.add_(1)`` on a
    one-element tensor, synchronised, the best of ``rounds``.

    Each launch goes through PyTorch's dispatcher and ``cudaLaunchKernel``; the kernel itself
    takes a few µs less than that, so the host's cost is what is timed. It is the cost of one
    eager operator, the floor for an engine that launches one kernel per operator: 7-10 µs on
    an H100 host (torch 2.11), varying between processes with the host's load.
    """
    torch = _cuda_torch()
    x = torch.zeros(1, device="cuda")
    for _ in range(100):  # warm-up: the kernel loaded, the allocator settled
        x.add_(1)
    torch.cuda.synchronize()
    best_s = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(launches):
            x.add_(1)
        torch.cuda.synchronize()
        best_s = min(best_s, time.perf_counter() - t0)
    return best_s / launches * 1e6


def trace_events(trace: Mapping) -> list[tuple[str, str, float, float | None]]:
    """``(name, kind, duration_us, start_us)`` of a Chrome trace's complete events (what the
    profiler exports; start None where the event has none)."""
    return [(str(e.get("name", "")), str(e.get("cat", "")), float(e.get("dur") or 0.0),
             float(e["ts"]) if isinstance(e.get("ts"), (int, float)) else None)
            for e in trace.get("traceEvents", []) if isinstance(e, Mapping) and e.get("ph") == "X"]


def count_launches(fn: Callable[[], Any], tokens: int) -> LaunchCount:
    """Run ``fn()`` (one generation of ``tokens`` tokens) under the PyTorch profiler (CPU and
    CUDA activity) and count its kernels and launch calls per token.

    The profiler's CUDA activity comes from CUPTI, which sees the whole process: kernels and
    launch calls of other libraries in it (ONNX Runtime's CUDA provider, a compiled engine)
    are counted too, which is what is wanted for one engine at a time. Raises
    RooflineUnavailable when the profile shows no kernel (no CUPTI, or an engine whose work
    the profiler cannot see). The profiler slows the host, so ``gpu_busy_pct`` is a lower
    bound; ``gpu_busy_ms_per_token`` (device time) is not affected.
    """
    import json
    import tempfile
    from pathlib import Path

    torch = _cuda_torch()
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    with tempfile.TemporaryDirectory(prefix="greenserve-roofline-") as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text(encoding="utf-8"))
    counted = count_events(trace_events(trace), tokens, wall_us)
    if counted.kernels_per_token is None:
        raise RooflineUnavailable("the profiler saw no CUDA kernel in one generation")
    return counted
