"""The metric registry: one entry per measured number, read by every part that handles metrics.

A :class:`Metric` says what a sample field is (unit, words for reports, which way is better,
its kind and energy source) and what is done with it: statistics per configuration
(``analysed``), a box plot per model (``plotted``), the CI energy gate (``gateable``), and,
for a field computed from the sample's other fields, how (``derive``). The sample builder,
samples.csv, stats.csv, summary.md and report.html all iterate the registry, so adding a metric
is one entry: a ``pytest_greenserve_register_metrics`` hook (see ``hookspecs.py``) or, in code,
an entry added to :func:`builtin_metrics`' dict.

Pure: no pytest, nothing else from the package. The built-ins register through the same hook
users implement (:func:`pytest_greenserve_register_metrics`, as ``engines/__init__.py`` does).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping

BETTER = ("lower", "higher", None)
KINDS = ("energy", "time", "use", "quality", "other")  # how reports group metrics


@dataclass(frozen=True)
class Metric:
    """One sample field and what the reports do with it.

    ``better``: ``"lower"``, ``"higher"`` or None (context only, never ranked). ``kind``:
    energy | time | use | quality | other. ``energy_source``: cpu | gpu | total | wall, the
    ``energy_<source>_source`` column that says whether the value is measured or estimated
    (``total`` joins the CPU and GPU sources). ``derive``: computed by the sample builder from
    the sample's other fields; it must return None (never 0) when an input is missing. None:
    a meter or the measure step fills the field.

    The resource-constrained guideline ranks the ``analysed`` metrics of kind ``use`` where
    lower is better (:func:`resource_metrics`), quoting the first of them in registry order.
    ``ranks_instead_of``: this metric is the process tree's share of that system-wide one
    (``proc_cpu_pct`` of ``cpu_pct``); where every configuration has it, the guideline ranks it
    in the system-wide one's place and quotes the system-wide one as context only, because the
    system-wide figure includes every other process on the machine.
    """

    name: str  # the sample field; unit in the name (energy_net_j)
    unit: str  # "J", "s", "ms/token", "J/token", "%", "MB", "Hz", "" ...
    label: str  # words in reports: "net energy"
    better: str | None = "lower"
    kind: str = "other"
    analysed: bool = False  # statistics per configuration (stats.csv rows, summary medians)
    plotted: bool = False  # a box plot per model in report.html
    gateable: bool = False  # may be named by the CI energy gate
    energy_source: str | None = None
    derive: Callable[[Mapping[str, Any]], float | None] | None = None
    ranks_instead_of: str | None = None

    def __post_init__(self):
        if self.better not in BETTER:
            raise ValueError(f"metric {self.name!r}: better must be 'lower', 'higher' or None, not {self.better!r}")
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


# ---------------------------------------------------------------- derivations (the sample builder's)

def _latencies(sample: Mapping[str, Any]) -> list[float] | None:
    values = sample.get("latencies_s")
    return list(values) if values else None


def _latency_mean(sample):
    lat = _latencies(sample)
    return statistics.fmean(lat) if lat else None


def _latency_p50(sample):
    lat = _latencies(sample)
    return statistics.median(lat) if lat else None


def _latency_p95(sample):
    """The 95th percentile by linear interpolation between order statistics (numpy's default,
    statistics' ``inclusive`` method): for 1, 2, ..., 20 it is 19.05, not the maximum."""
    lat = _latencies(sample)
    if not lat:
        return None
    if len(lat) == 1:
        return lat[0]
    return statistics.quantiles(lat, n=20, method="inclusive")[-1]


def _latency_p99(sample):
    """The 99th percentile, interpolated as the 95th is (for 1 request: that request)."""
    lat = _latencies(sample)
    if not lat:
        return None
    if len(lat) == 1:
        return lat[0]
    return statistics.quantiles(lat, n=100, method="inclusive")[-1]


def _requests_per_s(sample):
    """Requests answered per second of the window (with concurrent clients, their sum)."""
    time_s, requests = sample.get("time_s"), sample.get("requests")
    return requests / time_s if (time_s and requests is not None) else None


def _tokens_per_s(sample):
    time_s, tokens = sample.get("time_s"), sample.get("tokens_generated")
    return tokens / time_s if (time_s and tokens is not None) else None


# ---------------------------------------------------------------- sample checks (steady state, resolution)

#: A sample is *unsteady* when its slowest request took more than this many times its median
#: request. mini-pythia on a shared 2-core VM (32 prompts): steady torch-cpu and jit-cpu samples
#: gave 1.17-2.31 even with neighbours' load; samples with TorchScript compiling inside the
#: window, or a neighbour taking the CPU, gave 8-54.
UNSTEADY_SLOWEST_OVER_MEDIAN = 3.0
#: ... or when the median request of its last quarter differs from that of its first quarter
#: by more than this many percent (a drift: throttling, a neighbour starting or stopping).
#: The steady samples above drifted -27% to +2%; prompt lengths (10-15 tokens) alone move a
#: quarter's median by a few percent.
UNSTEADY_DRIFT_PCT = 50.0
#: A sample shorter than this (seconds) is *low-resolution*: NVML's energy counter steps about
#: every 100 ms, so a window of at least 1 s keeps its quantisation error near 1% or below (the
#: H100's 1 s windows had a CV of 0.4%, 0.1 s windows 34%). ``--greenserve-min-sample-s``
#: changes it; the sample records the threshold it was judged by (``min_sample_s``).
DEFAULT_MIN_SAMPLE_S = 1.0


def _slowest_over_median(sample):
    lat = _latencies(sample)
    if not lat:
        return None
    median = statistics.median(lat)
    return max(lat) / median if median > 0 else None


def _drift_pct(sample):
    """Median request of the last quarter against that of the first quarter, in percent (at
    least 8 requests, so each quarter has two)."""
    lat = _latencies(sample)
    if not lat or len(lat) < 8:
        return None
    q = len(lat) // 4
    first, last = statistics.median(lat[:q]), statistics.median(lat[-q:])
    return (last - first) / first * 100 if first > 0 else None


def _unsteady(sample):
    ratio, drift = _slowest_over_median(sample), _drift_pct(sample)
    if ratio is None and drift is None:
        return None
    return bool((ratio is not None and ratio > UNSTEADY_SLOWEST_OVER_MEDIAN)
                or (drift is not None and abs(drift) > UNSTEADY_DRIFT_PCT))


def min_sample_s(sample) -> float:
    value = sample.get("min_sample_s")
    return DEFAULT_MIN_SAMPLE_S if value is None else float(value)


#: Energy sources read from a coarse meter, to which ``low_resolution`` applies: NVML's energy
#: counter steps every ~100 ms, its power readings are sampled, a wall-socket meter reports
#: about once a second. RAPL (microjoules) and the CPU-time estimate are fine-grained, and time
#: is read from a nanosecond clock.
COARSE_ENERGY_SOURCES = ("nvml", "wattmeter", "wall")


def is_coarse_source(source) -> bool:
    """Whether an energy source label (``estimated-cpu-time+nvml-counter``) names a coarse meter."""
    return bool(source) and any(part.startswith(COARSE_ENERGY_SOURCES) for part in str(source).split("+"))


def _low_resolution(sample):
    """Shorter than --greenserve-min-sample-s while a coarse meter read its energy; a sample
    whose energy is all fine-grained (RAPL, the CPU-time estimate) is never low-resolution."""
    time_s = sample.get("time_s")
    if time_s is None:
        return None
    coarse = any(is_coarse_source(sample.get(f"energy_{which}_source")) for which in ("cpu", "gpu", "wall"))
    return bool(coarse and time_s < min_sample_s(sample))


#: The sample checks: a sample whose flag is True is named in stats.csv, summary.md and report.html.
SAMPLE_FLAGS = ("unsteady", "low_resolution", "concurrent")


def _ttft_mean(sample):
    known = [t for t in (sample.get("ttfts_s") or []) if t is not None]
    return statistics.fmean(known) if known else None


# ---------------------------------------------------------------- the field's serving metrics
# (vLLM's benchmark_serving, GuideLLM, AIPerf): per request, then percentiles over the sample

def _quantile(values: list[float], q: int) -> float:
    """The q-th percentile, interpolated as latency_p95_s is (for one value: that value)."""
    return values[0] if len(values) == 1 else statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _all_known(sample, field_name: str) -> list[float] | None:
    """The per-request values, or None when any request's is unknown ("cannot tell": a
    percentile over some requests only would describe other requests than the sample's)."""
    values = sample.get(field_name)
    if not values or any(v is None for v in values):
        return None
    return list(values)


def _ttft_quantile(q: int):
    def derive(sample):
        known = _all_known(sample, "ttfts_s")
        return _quantile(known, q) if known else None

    return derive


def _tpots(sample) -> list[float] | None:
    """Per request: (end-to-end - TTFT) / (tokens - 1), the field's TPOT (the first token excluded)."""
    from .slo import tpot_s

    ttfts, lat, n = _all_known(sample, "ttfts_s"), _latencies(sample), sample.get("new_tokens")
    if not ttfts or not lat or not n or n < 2:
        return None
    return [tpot_s(e2e, ttft, n) for e2e, ttft in zip(lat, ttfts)]


def _tpot_mean(sample):
    tpots = _tpots(sample)
    return statistics.fmean(tpots) if tpots else None


def _tpot_quantile(q: int):
    def derive(sample):
        tpots = _tpots(sample)
        return _quantile(tpots, q) if tpots else None

    return derive


def _goodput(sample):
    """Requests per second of the window that met every objective of the sample's ``slo``;
    None without objectives or when a request cannot be judged."""
    from .slo import requests_meeting

    slo, lat, time_s = sample.get("slo"), _latencies(sample), sample.get("time_s")
    if not slo or not lat or not time_s:
        return None
    ttfts = sample.get("ttfts_s") or [None] * len(lat)
    met = requests_meeting(slo, lat, ttfts, [sample.get("new_tokens") or 0] * len(lat))
    return None if met is None else met / time_s


def _slo_met_pct(sample):
    goodput, rate = _goodput(sample), _requests_per_s(sample)
    return 100 * goodput / rate if (goodput is not None and rate) else None


def _achieved_rate_pct(sample):
    """An open loop's requests completed inside the measured window, as a share of those its
    schedule released inside it (``requests_offered``): 100 when the target keeps up. Not of
    RATE × window: a Poisson draw puts more or fewer arrivals in a window by chance (about
    ±10% for 100), which would read as falling behind. None for a closed loop."""
    offered, done = sample.get("requests_offered"), sample.get("requests")
    return 100 * done / offered if (offered and done is not None) else None


def _ms_per_token(sample):
    time_s, tokens = sample.get("time_s"), sample.get("tokens_generated")
    return 1000 * time_s / tokens if (time_s is not None and tokens) else None


def _idle_power_w(sample):
    """The idle window's power (W): idle energy is that power times the sample's window."""
    idle_j, window_s = sample.get("energy_idle_j"), sample.get("meter_time_s")
    return idle_j / window_s if (idle_j is not None and window_s) else None


def _j_per_token(sample):
    energy_j, tokens = sample.get("energy_total_j"), sample.get("tokens_generated")
    return energy_j / tokens if (energy_j is not None and tokens) else None


def _over(floor: str):
    """``ms_per_token`` over a roofline floor (roofline.py): how many times the floor it takes."""
    def derive(sample):
        ms, floor_ms = sample.get("ms_per_token"), sample.get(floor)
        return ms / floor_ms if (ms is not None and floor_ms) else None

    return derive


# ---------------------------------------------------------------- the built-in metrics

def _builtin() -> list[Metric]:
    M = Metric
    return [
        # analysed, in the order stats.csv lists them (energy, then time, then use)
        M("energy_net_j", "J", "net energy", kind="energy", energy_source="total",
          analysed=True, plotted=True, gateable=True),
        M("energy_total_j", "J", "gross energy", kind="energy", energy_source="total", analysed=True, gateable=True),
        M("energy_cpu_j", "J", "gross CPU energy", kind="energy", energy_source="cpu",
          analysed=True, plotted=True, gateable=True),
        M("energy_gpu_j", "J", "gross GPU energy", kind="energy", energy_source="gpu",
          analysed=True, plotted=True, gateable=True),
        M("time_s", "s", "time", kind="time", analysed=True, plotted=True, gateable=True),
        M("j_per_token", "J/token", "energy per token", kind="energy", energy_source="total",
          analysed=True, gateable=True, derive=_j_per_token),
        M("ms_per_token", "ms/token", "time per token", kind="time", analysed=True, gateable=True,
          derive=_ms_per_token),
        M("ttft_mean_s", "s", "time to first token", kind="time", analysed=True, gateable=True, derive=_ttft_mean),
        M("ram_pct", "%", "RAM use", kind="use", analysed=True, plotted=True),
        M("cpu_pct", "%", "CPU use", kind="use", analysed=True, plotted=True),
        M("gpu_pct", "%", "GPU use", better=None, kind="use", analysed=True, plotted=True),
        M("gpu_mem_util_pct", "%", "GPU memory utilisation", better=None, kind="use", analysed=True, plotted=True),
        M("gpu_mem_used_pct", "%", "GPU memory used", kind="use", analysed=True, plotted=True),
        # recorded with every sample, not analysed
        M("latency_mean_s", "s", "mean request latency", kind="time", gateable=True, derive=_latency_mean),
        M("latency_p50_s", "s", "median request latency", kind="time", gateable=True, derive=_latency_p50),
        M("latency_p95_s", "s", "95th-percentile request latency", kind="time", gateable=True, derive=_latency_p95),
        M("latency_p99_s", "s", "99th-percentile request latency", kind="time", gateable=True, derive=_latency_p99),
        M("requests_per_s", "requests/s", "request throughput", better="higher", kind="time", gateable=True,
          derive=_requests_per_s),
        # the field's serving metrics: time to first token (at the client when streamed over HTTP,
        # the engine's own in-process), time per output token after the first, inter-token latency
        # (engines and streams that stamp every token), goodput under --greenserve-slo
        M("ttft_p50_s", "s", "median time to first token", kind="time", analysed=True, gateable=True,
          derive=_ttft_quantile(50)),
        M("ttft_p95_s", "s", "95th-percentile time to first token", kind="time", gateable=True,
          derive=_ttft_quantile(95)),
        M("ttft_p99_s", "s", "99th-percentile time to first token", kind="time", gateable=True,
          derive=_ttft_quantile(99)),
        M("tpot_mean_s", "s", "mean time per output token after the first", kind="time", analysed=True,
          gateable=True, derive=_tpot_mean),
        M("tpot_p50_s", "s", "median time per output token after the first", kind="time", gateable=True,
          derive=_tpot_quantile(50)),
        M("tpot_p99_s", "s", "99th-percentile time per output token after the first", kind="time", gateable=True,
          derive=_tpot_quantile(99)),
        M("itl_p50_s", "s", "median inter-token latency", kind="time", analysed=True, gateable=True),
        M("itl_p95_s", "s", "95th-percentile inter-token latency", kind="time", gateable=True),
        M("itl_p99_s", "s", "99th-percentile inter-token latency", kind="time", gateable=True),
        M("goodput_rps", "requests/s", "goodput (requests/s meeting every --greenserve-slo objective)",
          better="higher", kind="time", analysed=True, gateable=True, derive=_goodput),
        M("slo_met_pct", "%", "requests meeting every --greenserve-slo objective", better="higher", kind="time",
          derive=_slo_met_pct),
        # the load shape (load.py, --greenserve-load): an open loop's scheduled rate, and how much of it
        # was served inside the measured window (requests_per_s is that achieved rate)
        M("offered_rate_rps", "requests/s", "offered request rate (open loop)", better=None, kind="time"),
        M("achieved_rate_pct", "%", "requests completed in the measured window, of those released in it", better="higher", kind="time",
          derive=_achieved_rate_pct),
        # not "tokens_per_s": the README's and the tests' example of a user-registered metric
        M("gen_tokens_per_s", "tokens/s", "generated-token throughput", better="higher", kind="time",
          gateable=True, derive=_tokens_per_s),
        M("match_rate", "", "match rate with the torch reference", better="higher", kind="quality"),
        M("match_rate_tie_aware", "", "match rate with the torch reference, near-ties allowed",
          better="higher", kind="quality"),
        # output quality against the fp32 torch reference (quality.py): the reference model's mean
        # negative log-likelihood of the outputs, and how much it exceeds the reference's own
        M("ref_nll_nats_per_token", "nats/token", "fp32 reference's NLL of the output", kind="quality"),
        M("nll_excess_nats_per_token", "nats/token", "NLL excess over the fp32 reference's own output",
          kind="quality"),
        M("native_nll_excess_nats_per_token", "nats/token", "torch's NLL excess in the same dtype (the yardstick)",
          better=None, kind="quality"),
        M("nll_vs_native_nats_per_token", "nats/token", "NLL excess minus torch's in the same dtype", kind="quality"),
        M("nll_vs_native_low_nats_per_token", "nats/token",
          "lower bootstrap bound of the NLL excess minus torch's (above 0: error-prone)", kind="quality"),
        # the sample checks (SAMPLE_FLAGS): steady state and window length
        M("slowest_over_median", "", "slowest request over the median request", better=None, kind="quality",
          derive=_slowest_over_median),
        M("drift_pct", "%", "median request, last quarter against first quarter", better=None, kind="quality",
          derive=_drift_pct),
        M("unsteady", "", f"unsteady (slowest request > {UNSTEADY_SLOWEST_OVER_MEDIAN:g}x the median, or "
          f"drift > {UNSTEADY_DRIFT_PCT:g}%)", better=None, kind="quality", derive=_unsteady),
        M("low_resolution", "", "window shorter than --greenserve-min-sample-s (energy counter resolution)",
          better=None, kind="quality", derive=_low_resolution),
        # set by the pytest-xdist worker (distributed.py): a CPU configuration measured while another
        # worker was busy (--greenserve-cpu-overlap=yes); None in a one-process session
        M("concurrent", "", "CPU configuration measured while other pytest-xdist workers ran",
          better=None, kind="quality"),
        M("energy_idle_j", "J", "idle energy", better=None, kind="energy", energy_source="total"),
        # measured next to each sample: its spread across samples shows how steady idle was
        M("idle_power_w", "W", "idle power", better=None, kind="energy", energy_source="total",
          derive=_idle_power_w),
        M("energy_gpu_power_j", "J", "GPU energy from sampled power (cross-check)", better=None, kind="energy"),
        M("energy_wall_j", "J", "gross wall energy", kind="energy", energy_source="wall", gateable=True),
        M("energy_wall_idle_j", "J", "idle wall energy", better=None, kind="energy", energy_source="wall"),
        M("energy_wall_net_j", "J", "net wall energy", kind="energy", energy_source="wall", gateable=True),
        M("proc_cpu_pct", "%", "process-tree CPU use (of one core)", kind="use", analysed=True,
          ranks_instead_of="cpu_pct"),
        M("proc_ram_pct", "%", "process-tree RAM use", kind="use", analysed=True, ranks_instead_of="ram_pct"),
        M("rss_peak_mb", "MB", "peak process-tree memory", kind="use"),
        M("gpu_mem_peak_mb", "MB", "peak GPU memory", kind="use"),
        M("sampler_hz", "Hz", "sampling rate achieved", better=None),
        M("sampler_overhead_pct", "%", "sampler overhead (of one core)", better=None),
        M("meter_time_s", "s", "metered window", better=None),
        # the per-token roofline of GPU samples (roofline.py): informational, never analysed or gated;
        # MB and GB are 10^6 and 10^9 bytes here, as bandwidths are quoted
        M("bandwidth_gb_s", "GB/s", "the card's copy bandwidth, measured once per run", better=None),
        M("launch_latency_us", "us", "host time per kernel launch, measured once per run", better=None),
        M("weight_mb_per_token", "MB", "weights read per token", better=None),
        M("kv_mb_per_token", "MB", "KV cache read per token (mean context)", better=None),
        M("memory_floor_ms_per_token", "ms/token", "memory-bandwidth floor", better=None, kind="time"),
        M("kernels_per_token", "kernels/token", "CUDA kernels per token (profiled)", better=None),
        M("launches_per_token", "launches/token", "kernel launch calls per token (profiled)", better=None),
        M("launch_floor_ms_per_token", "ms/token", "launch floor", better=None, kind="time"),
        M("gpu_busy_ms_per_token", "ms/token", "GPU device time per token (profiled)", better=None, kind="time"),
        M("gpu_busy_pct_profiled", "%", "GPU busy during the profiled generation", better=None, kind="use"),
        M("x_memory_floor", "x", "time per token over the memory floor", better=None,
          derive=_over("memory_floor_ms_per_token")),
        M("x_launch_floor", "x", "time per token over the launch floor", better=None,
          derive=_over("launch_floor_ms_per_token")),
    ]


def builtin_metrics() -> dict[str, Metric]:
    """A fresh ordered dict name -> :class:`Metric` of the built-in metrics."""
    return {m.name: m for m in _builtin()}


def pytest_greenserve_register_metrics(registry: dict) -> None:
    """The built-ins, through the hook users implement: a metric already there is kept.

    The built-ins come first in the registry's order (then the others, in their order) whether
    this runs before or after a user's hook, so samples.csv and stats.csv start the same way.
    """
    builtins = builtin_metrics()
    ordered = {name: registry.get(name, m) for name, m in builtins.items()}
    ordered.update((name, m) for name, m in registry.items() if name not in builtins)
    registry.clear()
    registry.update(ordered)


# ---------------------------------------------------------------- readers' helpers

def metrics_or_builtin(metrics: Mapping[str, Metric] | None) -> dict[str, Metric]:
    """``metrics`` as a dict, or the built-ins for None."""
    return builtin_metrics() if metrics is None else dict(metrics)


def analysed(metrics: Mapping[str, Metric] | None = None) -> list[Metric]:
    return [m for m in metrics_or_builtin(metrics).values() if m.analysed]


def plotted(metrics: Mapping[str, Metric] | None = None) -> list[Metric]:
    return [m for m in metrics_or_builtin(metrics).values() if m.plotted]


def resource_metrics(metrics: Mapping[str, Metric] | None = None) -> list[Metric]:
    """Behind the resource-constrained guideline: analysed ``use`` metrics where lower is better."""
    return [m for m in analysed(metrics) if m.kind == "use" and m.better == "lower"]


def process_tree_metrics(metrics: Mapping[str, Metric] | None = None) -> dict[str, str]:
    """System-wide metric name -> the process-tree metric ranked in its place (``ranks_instead_of``)."""
    return {m.ranks_instead_of: m.name for m in metrics_or_builtin(metrics).values() if m.ranks_instead_of}


def derive_fields(sample: dict, registry: Mapping[str, Metric]) -> None:
    """In place: every derived metric computed (in registry order), every other missing one None."""
    for name, metric in registry.items():
        if metric.derive is not None:
            sample[name] = metric.derive(sample)
        elif name not in sample:
            sample[name] = None


# ---------------------------------------------------------------- run.json

_JSON_FIELDS = [f.name for f in fields(Metric) if f.name != "derive"]


def metrics_to_json(registry: Mapping[str, Metric]) -> list[dict]:
    """The registry for run.json: one object per metric, in order, without ``derive``."""
    return [{k: v for k, v in asdict(m).items() if k != "derive"} for m in registry.values()]


def metrics_from_json(items) -> dict[str, Metric]:
    """Rebuild a registry from run.json (derive None: the values are already in the samples).

    Unknown keys are ignored; an entry without a name, or with an unusable value, is skipped.
    """
    out: dict[str, Metric] = {}
    for item in items or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
            continue
        kw = {k: item[k] for k in _JSON_FIELDS if k in item}
        kw.setdefault("unit", "")
        kw.setdefault("label", kw["name"])
        try:
            out[kw["name"]] = Metric(**kw)
        except (TypeError, ValueError):
            continue
    return out
