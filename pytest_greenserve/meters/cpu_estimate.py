"""CPU energy *estimated* from the process tree's CPU time, for machines without RAPL.

The power model (every figure it gives is labelled ``estimated-cpu-time``)::

    energy_cpu_j = cpu_idle_w * wall_s + cpu_w_per_core * busy_core_s

* ``busy_core_s``: CPU seconds (user + system) used by this process and its children,
  recursively, during the sample (one busy logical CPU for one second = 1 s).
* ``cpu_w_per_core`` (default 10 W): the extra power of one busy logical CPU. A server CPU's
  TDP over its cores is about 8-12 W (e.g. 205 W / 20 cores); hyper-threads share a core, so
  this overstates the cost of a busy sibling thread.
* ``cpu_idle_w`` (default 20 W): the package's power with nothing running, counted for the
  whole sample so that gross energy grows with time as it does on a real machine. The idle
  power of this model is this constant (:meth:`CpuEstimateMeter.modelled_idle`): no idle window
  is measured for it (one would only read the constant back), and net energy is
  ``cpu_w_per_core * busy_core_s``, the harness' own sampling thread included (well under 1%
  of a core, see ``sampler_overhead_pct``).

Set both from ``--greenserve-cpu-watts=PER_CORE[,IDLE]`` (see :func:`parse_cpu_watts`);
``off`` disables the estimate. This is a model, not a measurement: compare estimated figures
only with estimated figures of the same model and watts, and never silently with RAPL.
"""

from __future__ import annotations

import time
from typing import Callable

from .base import Meter, Reading
from .proctree import tree_cpu_time_s

DEFAULT_CPU_W_PER_CORE = 10.0
DEFAULT_CPU_IDLE_W = 20.0
SOURCE = "estimated-cpu-time"


def estimate_cpu_energy_j(busy_core_s: float, wall_s: float, cpu_w_per_core: float, cpu_idle_w: float) -> float:
    """The documented power model. Units: s, s, W, W -> J."""
    return cpu_idle_w * wall_s + cpu_w_per_core * busy_core_s


def parse_cpu_watts(text: str) -> tuple[float, float] | None:
    """``"10"`` -> (10, default idle); ``"10,20"`` -> (10, 20); ``"off"`` -> None (no estimate)."""
    text = text.strip().lower()
    if text in ("off", "none", "no", "0,0"):
        return None
    parts = [p.strip() for p in text.split(",")]
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"expected PER_CORE_W[,IDLE_W] or 'off', got {text!r}")
    try:
        per_core = float(parts[0])
        idle = float(parts[1]) if len(parts) == 2 else DEFAULT_CPU_IDLE_W
    except ValueError:
        raise ValueError(f"expected PER_CORE_W[,IDLE_W] in watts or 'off', got {text!r}") from None
    if per_core < 0 or idle < 0:
        raise ValueError(f"watts must be >= 0, got {text!r}")
    return per_core, idle


def describe(cpu_w_per_core: float, cpu_idle_w: float) -> str:
    return f"estimated from CPU time at {cpu_w_per_core:g} W/core + {cpu_idle_w:g} W idle"


class CpuEstimateMeter(Meter):
    """Estimated CPU energy. Field ``energy_cpu_j``, source ``estimated-cpu-time``."""

    name = "cpu energy"
    field = "energy_cpu_j"
    source = SOURCE
    reads_power = False  # its idle is cpu_idle_w, a constant of the model

    def __init__(
        self,
        cpu_w_per_core: float = DEFAULT_CPU_W_PER_CORE,
        cpu_idle_w: float = DEFAULT_CPU_IDLE_W,
        cpu_time_s: Callable[[], float] = tree_cpu_time_s,
        clock: Callable[[], float] = time.monotonic,
        why_estimated: str | None = None,
    ):
        self.why_estimated = why_estimated  # e.g. why RAPL could not be read
        self.cpu_w_per_core = cpu_w_per_core
        self.cpu_idle_w = cpu_idle_w
        self.cpu_time_s = cpu_time_s
        self.clock = clock
        self._start: tuple[float, float] | None = None

    def notes(self) -> list[str]:
        how = describe(self.cpu_w_per_core, self.cpu_idle_w)
        return [f"cpu energy: {self.why_estimated}; {how}" if self.why_estimated else f"cpu energy: {how}"]

    def modelled_idle(self) -> list[Reading]:
        return [Reading(self.field, self.cpu_idle_w, "W", self.source)]

    def start(self) -> None:
        self._start = (self.cpu_time_s(), self.clock())

    def stop(self) -> list[Reading]:
        if self._start is None:
            return [Reading(self.field, None, "J", self.source)]
        cpu0, t0 = self._start
        busy_core_s = max(self.cpu_time_s() - cpu0, 0.0)
        wall_s = self.clock() - t0
        self._start = None
        value = estimate_cpu_energy_j(busy_core_s, wall_s, self.cpu_w_per_core, self.cpu_idle_w)
        return [Reading(self.field, value, "J", self.source)]


def unavailable_reason() -> str | None:
    """The estimate needs only psutil's CPU times, which every supported platform has."""
    return None


def is_available() -> bool:
    return True
