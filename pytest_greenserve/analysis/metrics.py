"""The metrics analysed per machine, model and configuration."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # column in the samples
    label: str  # words, e.g. "net energy"
    unit: str
    kind: str  # energy | time | use
    source: str | None = None  # cpu | gpu | total: which energy sources feed it


METRICS: list[Metric] = [
    Metric("energy_net_j", "net energy", "J", "energy", "total"),
    Metric("energy_total_j", "gross energy", "J", "energy", "total"),
    Metric("energy_cpu_j", "gross CPU energy", "J", "energy", "cpu"),
    Metric("energy_gpu_j", "gross GPU energy", "J", "energy", "gpu"),
    Metric("time_s", "time", "s", "time"),
    Metric("j_per_token", "energy per token", "J/token", "energy", "total"),
    Metric("ms_per_token", "time per token", "ms/token", "time"),
    Metric("ttft_mean_s", "time to first token", "s", "time"),
    Metric("cpu_pct", "CPU use", "%", "use"),
    Metric("ram_pct", "RAM use", "%", "use"),
    Metric("gpu_pct", "GPU use", "%", "use"),
    Metric("gpu_mem_util_pct", "GPU memory utilisation", "%", "use"),
    Metric("gpu_mem_used_pct", "GPU memory used", "%", "use"),
]
METRIC_BY_NAME = {m.name: m for m in METRICS}
# Resource metrics behind the resource-constrained guideline (lower is better).
RESOURCE_METRICS = ["ram_pct", "cpu_pct", "gpu_mem_used_pct"]
