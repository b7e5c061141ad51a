"""``GET /metrics``: the server's counters in Prometheus' text exposition format (0.0.4), so a
user with their own load generator can read requests, tokens, CPU and energy around a run and
divide (J/token over their window).

What it reports, every value cumulative since the server started:

- ``greenserve_requests_total`` (answered completions), ``greenserve_request_errors_total``,
  ``greenserve_prompt_tokens_total``, ``greenserve_completion_tokens_total``;
- ``greenserve_generation_seconds_total``: the engine's own time for those completions (the sum
  of each answer's ``generation_s``), so a scraper divides it by the requests' delta for the
  server's mean time per request and compares its own client-side latency with it;
- ``greenserve_process_cpu_seconds_total``: CPU time of the server's process tree (user +
  system, its children included; psutil);
- ``greenserve_cpu_energy_estimated_joules_total``: that CPU time times the power model's watts
  per busy core (10 W, the plugin's ``--greenserve-cpu-watts`` default): **an estimate**, and
  its busy part only (no idle watts: a scraper's window decides what idle to add);
- ``greenserve_gpu_energy_joules_total{device=...}``: NVML's energy counter of each GPU this
  server was given (``CUDA_VISIBLE_DEVICES``, else GPU 0), for a CUDA configuration only. Where
  NVML cannot read, the metric is absent, never 0.

Written by hand: the format is a few lines of text, and the values come from our own counters
and meters rather than a client library's registry.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from ..meters.cpu_estimate import DEFAULT_CPU_W_PER_CORE

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ServerCounters:
    """What the app counts as it answers; thread-safe (engine calls and the event loop)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generation_s: float = 0.0
    started_s: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answered(self, prompt_tokens: int, completion_tokens: int, generation_s: float = 0.0) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.generation_s += generation_s

    def failed(self) -> None:
        with self._lock:
            self.errors += 1


def process_tree_cpu_s() -> float | None:
    """User + system CPU seconds of this process and its children (None without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process(os.getpid())
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a child that ended between the listing and the read
            continue
    return total


class GpuEnergy:
    """NVML's energy counter (mJ since the driver loaded) of the server's GPUs, read relative to
    the server's start; ``read()`` is {device index: joules}, empty where NVML cannot read."""

    def __init__(self, provider: str | None):
        self._handles: dict[str, object] = {}
        self._start_mj: dict[str, int] = {}
        if provider != "cuda":
            return
        try:
            import pynvml as nv

            nv.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")
            for index in [v.strip() for v in visible if v.strip()]:
                handle = (nv.nvmlDeviceGetHandleByIndex(int(index)) if index.isdigit()
                          else nv.nvmlDeviceGetHandleByUUID(index))
                self._start_mj[index] = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._handles[index] = handle
            self._nv = nv
        except Exception:  # no NVML, no counter on this card: the metric is absent
            self._handles, self._start_mj = {}, {}

    def read(self) -> dict[str, float]:
        out = {}
        for index, handle in self._handles.items():
            try:
                out[index] = (self._nv.nvmlDeviceGetTotalEnergyConsumption(handle) - self._start_mj[index]) / 1000
            except Exception:
                continue
        return out


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(counters: ServerCounters, *, model: str, config: str, gpu: GpuEnergy | None = None,
           cpu_s: float | None = None) -> str:
    """The exposition text. ``cpu_s``: the process tree's CPU seconds (read now when None)."""
    labels = f'model="{_label(model)}",config="{_label(config)}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value, extra: str = "") -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{{{labels}{extra}}} {value}")

    metric("greenserve_requests_total", "counter", "Completions answered.", counters.requests)
    metric("greenserve_request_errors_total", "counter", "Completions the engine failed.", counters.errors)
    metric("greenserve_prompt_tokens_total", "counter", "Prompt tokens of answered completions.",
           counters.prompt_tokens)
    metric("greenserve_completion_tokens_total", "counter", "Tokens generated for answered completions.",
           counters.completion_tokens)
    metric("greenserve_generation_seconds_total", "counter",
           "Seconds the engine spent generating answered completions (server-side).", round(counters.generation_s, 6))
    metric("greenserve_uptime_seconds", "gauge", "Seconds since the server started.",
           round(time.time() - counters.started_s, 3))
    cpu_s = process_tree_cpu_s() if cpu_s is None else cpu_s
    if cpu_s is not None:
        metric("greenserve_process_cpu_seconds_total", "counter",
               "User and system CPU seconds of the server's process tree.", round(cpu_s, 6))
        metric("greenserve_cpu_energy_estimated_joules_total", "counter",
               f"ESTIMATED CPU energy: the process tree's CPU seconds times {DEFAULT_CPU_W_PER_CORE:g} W per busy "
               f"core (busy part only, no idle watts).", round(cpu_s * DEFAULT_CPU_W_PER_CORE, 6),
               ',source="estimated-cpu-time"')
    readings = gpu.read() if gpu is not None else {}
    if readings:
        lines.append("# HELP greenserve_gpu_energy_joules_total GPU energy since the server started "
                     "(NVML energy counter), per GPU this server was given.")
        lines.append("# TYPE greenserve_gpu_energy_joules_total counter")
        for index, joules in sorted(readings.items()):
            lines.append(f'greenserve_gpu_energy_joules_total{{{labels},device="{_label(index)}",'
                         f'source="nvml-counter"}} {round(joules, 3)}')
    return "\n".join(lines) + "\n"
