"""Energy and utilisation meters behind one interface, and :class:`MeterSet`, which runs them.

Built-in meters (one module each; each says why it cannot run, once, and then leaves its
fields None, never 0):

* CPU energy: :mod:`.rapl` (measured) or, without RAPL, :mod:`.cpu_estimate` (labelled
  ``estimated-cpu-time``; the note says why RAPL was not used, e.g. permissions, and how to fix).
* GPU energy and utilisation: :mod:`.nvml` (``nvml-counter`` or ``nvml-power``).
* Wall energy: :mod:`.wattmeter` (NETIO JSON API), when a URL is given.
* Utilisation: :mod:`.sampler`, one background thread for every sampled quantity.

Fields of :meth:`MeterSet.stop` (see ``results.SAMPLE_COLUMNS``) and the extra ones:

``energy_cpu_j, energy_gpu_j, energy_total_j, energy_idle_j, energy_net_j`` (J; total = the
parts measured, see :mod:`.idle`), ``energy_cpu_source, energy_gpu_source`` and the extra
``energy_total_source``; ``cpu_pct`` (system, % of all CPUs), ``ram_pct`` (system),
``proc_cpu_pct`` (process tree, % of one core), the extra ``proc_ram_pct`` (tree RSS / RAM),
``gpu_pct, gpu_mem_util_pct, gpu_mem_used_pct`` (means), ``rss_peak_mb, gpu_mem_peak_mb``
(sampled peaks), ``sampler_hz`` (rate achieved), ``sampler_overhead_pct`` (the sampler
thread's CPU time / wall time, % of one core), the extra ``meter_time_s`` (the window the
idle power is multiplied by) and ``meter_notes`` (list of lines). With a wattmeter:
``energy_wall_j, energy_wall_source, energy_wall_idle_j, energy_wall_net_j``. Extra meters
add their readings' fields and ``<field without _j>_source``; an extra meter's
``energy_cpu_j``/``energy_gpu_j`` fills the slot when the built-in meter measured nothing
there (and then counts in the total), and is ignored with a note otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .base import Meter, MeterUnavailable, Probe, Reading
from .cpu_estimate import (DEFAULT_CPU_IDLE_W, DEFAULT_CPU_W_PER_CORE, CpuEstimateMeter, describe,
                           parse_cpu_watts)
from .idle import IdleBaseline, idle_from_energy, source_key, subtract_idle, total_energy
from .nvml import GpuEnergyMeter, GpuUtilisation, NvmlGpus
from .rapl import RaplMeter
from .sampler import CpuPercent, Sampler, SamplerResult, SystemMemoryProbe
from .wattmeter import NetioWattmeter

__all__ = [
    "IdleBaseline", "Meter", "MeterSet", "MeterSettings", "MeterUnavailable", "Probe", "Reading",
    "parse_cpu_watts",
]


@dataclass(frozen=True)
class MeterSettings:
    """What to measure and how. ``cpu_watts_per_core=None`` turns the CPU estimate off."""

    sampler_hz: float = 10.0
    cpu_watts_per_core: float | None = DEFAULT_CPU_W_PER_CORE  # W per busy logical CPU (estimate only)
    cpu_idle_watts: float = DEFAULT_CPU_IDLE_W                 # W with nothing running (estimate only)
    wattmeter_url: str | None = None
    powercap_root: Path = Path("/sys/class/powercap")
    gpu_indices: tuple[int, ...] | None = None   # None: from CUDA_VISIBLE_DEVICES / all visible
    nvml: object | None = None                  # injectable pynvml-like module (tests); None -> import pynvml
    wattmeter_output: int | None = None          # NETIO output ID; None: the whole device
    wattmeter_poll_s: float = 1.0                # NETIO refreshes its measures about once a second


_BASE_FIELDS = [
    "energy_cpu_j", "energy_gpu_j", "energy_total_j", "energy_idle_j", "energy_net_j",
    "energy_cpu_source", "energy_gpu_source", "energy_total_source", "energy_gpu_power_j",
    "cpu_pct", "ram_pct", "proc_cpu_pct", "proc_ram_pct", "gpu_pct", "gpu_mem_util_pct",
    "gpu_mem_used_pct", "rss_peak_mb", "gpu_mem_peak_mb", "sampler_hz", "sampler_overhead_pct",
    "meter_time_s",
]
_WALL_FIELDS = ["energy_wall_j", "energy_wall_source", "energy_wall_idle_j", "energy_wall_net_j"]


class MeterSet:
    """All meters of a session: ``start()`` / ``stop(idle)`` around each sample."""

    def __init__(self, settings: MeterSettings, extra_meters: Sequence[Meter] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.settings = s = settings
        self.clock = clock
        self._sleep = time.sleep
        self._notes: list[str] = []
        self._sample_notes: list[str] = []
        self.last_sampler_result: SamplerResult | None = None
        self._t0: float | None = None

        # CPU energy: RAPL, else an estimate that says so
        self.cpu_meter: Meter | None = None
        rapl = RaplMeter(s.powercap_root)
        reason = rapl.unavailable_reason()
        if reason is None:
            self.cpu_meter = rapl
        elif s.cpu_watts_per_core is not None:
            self.cpu_meter = CpuEstimateMeter(s.cpu_watts_per_core, s.cpu_idle_watts)
            self._notes.append(f"cpu energy: {reason}; {describe(s.cpu_watts_per_core, s.cpu_idle_watts)}")
        else:
            self._notes.append(f"cpu energy: {reason}; estimate turned off")

        # GPU energy and utilisation
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES") if s.gpu_indices is None else None
        self.gpus = NvmlGpus(s.nvml, s.gpu_indices, cvd, os.environ.get("CUDA_DEVICE_ORDER"))
        self.gpu_meter: GpuEnergyMeter | None = None
        self.gpu_util: GpuUtilisation | None = None
        if self.gpus.reason is not None:
            self._notes.append(f"gpu energy and utilisation: {self.gpus.reason}")
        else:
            self._notes.extend(self.gpus.notes)
            gm = GpuEnergyMeter(self.gpus)
            if gm.unavailable_reason() is None:
                self.gpu_meter = gm
            else:
                self._notes.append(f"gpu energy: {gm.unavailable_reason()}")
            self.gpu_util = GpuUtilisation(self.gpus)
            if self.gpu_util.reason is not None:
                self._notes.append(self.gpu_util.reason)

        # wall energy
        self.wattmeter: NetioWattmeter | None = None
        if s.wattmeter_url:
            wm = NetioWattmeter(s.wattmeter_url, s.wattmeter_output, poll_period_s=s.wattmeter_poll_s)
            if wm.unavailable_reason() is None:
                self.wattmeter = wm
            else:
                self._notes.append(f"wattmeter: {wm.unavailable_reason()}")

        # user meters
        self.extra_meters: list[Meter] = []
        for m in extra_meters:
            try:
                r = m.unavailable_reason()
            except Exception as exc:
                r = f"{type(exc).__name__}: {exc}"
            if r is None:
                self.extra_meters.append(m)
            else:
                self._notes.append(f"{m.name}: {r}")

        probes: list[Probe] = [SystemMemoryProbe().probe()]
        if self.gpu_util is not None:
            probes += self.gpu_util.probes()
        for m in self._meters():
            probes += m.probes()
        self.sampler = Sampler(probes, s.sampler_hz)
        self.cpu_pct = CpuPercent()
        self._running: list[Meter] = []

    def _meters(self) -> list[Meter]:
        builtin = [self.cpu_meter, self.gpu_meter, self.wattmeter]
        return [m for m in builtin if m is not None] + self.extra_meters

    def notes(self) -> list[str]:
        """One line per meter that cannot run (and how the CPU figure is obtained instead)."""
        return list(self._notes)

    # -- samples --------------------------------------------------------------------------
    def start(self) -> None:
        self._sample_notes = []
        self._running = []
        self._t0 = self.clock()
        for m in self._meters():
            try:
                m.start()
                self._running.append(m)
            except Exception as exc:
                self._sample_notes.append(f"{m.name}: failed to start ({type(exc).__name__}: {exc})")
        self.cpu_pct.start()
        self.sampler.start()

    def stop(self, idle: IdleBaseline | None = None) -> dict:
        """End the sample; the fields listed in this module's docstring."""
        if self._t0 is None:
            raise RuntimeError("MeterSet.stop() without start()")
        res = self.last_sampler_result = self.sampler.stop()
        # every column is present in every sample (None when not measured), wall ones included
        fields: dict = {k: None for k in _BASE_FIELDS + _WALL_FIELDS}
        notes = list(self._sample_notes)
        builtin = {id(m) for m in (self.cpu_meter, self.gpu_meter, self.wattmeter) if m is not None}
        extra_readings: list[tuple[Meter, Reading]] = []
        for m in self._running:
            try:
                readings = m.stop()
            except Exception as exc:
                notes.append(f"{m.name}: failed to stop ({type(exc).__name__}: {exc})")
                continue
            notes += m.sample_notes()
            if id(m) not in builtin:
                extra_readings += [(m, r) for r in readings]
                continue
            for r in readings:
                fields[r.field] = r.value
                fields[source_key(r.field)] = r.source if r.value is not None else None
        t1 = self.clock()
        fields.update(self.cpu_pct.stop())
        for m, r in extra_readings:
            if fields.get(r.field) is not None:
                notes.append(f"{m.name}: {r.field} ignored, already measured by "
                             f"{fields.get(source_key(r.field))}")
                continue
            fields[r.field] = r.value
            fields[source_key(r.field)] = r.source if r.value is not None else None
        if isinstance(self.cpu_meter, RaplMeter) and self.cpu_meter.last_error:
            notes.append(f"cpu energy: {self.cpu_meter.last_error}")
        fields["energy_total_j"], fields["energy_total_source"] = total_energy(fields)
        time_s = t1 - self._t0
        fields["meter_time_s"] = time_s
        idle_fields, idle_notes = subtract_idle(fields, idle, time_s)
        fields.update(idle_fields)
        notes += idle_notes
        for name in ("ram_pct", "proc_ram_pct", "gpu_pct", "gpu_mem_util_pct", "gpu_mem_used_pct"):
            fields[name] = res.mean(name)
        fields["rss_peak_mb"] = res.max("rss_mb")
        fields["gpu_mem_peak_mb"] = res.max("gpu_mem_used_mb")
        fields["sampler_hz"] = res.hz_achieved
        fields["sampler_overhead_pct"] = res.overhead_pct
        notes += [f"sampler: {e}" for e in res.errors]
        fields["meter_notes"] = self.notes() + notes
        self._t0 = None
        self._running = []
        return fields

    def measure_idle(self, seconds: float, progress: Callable[[str], None] | None = None) -> IdleBaseline:
        """Measure idle power for ``seconds`` with nothing else running.

        ``progress(line)`` gets a progress line about once a second
        (``"idle baseline: 2/5 s"``) and a last one with the result.
        """
        if seconds <= 0:
            raise ValueError("idle duration must be > 0 s")
        self.start()
        t0 = self.clock()
        try:
            while True:
                elapsed = self.clock() - t0
                if elapsed >= seconds:
                    break
                self._sleep(min(1.0, seconds - elapsed))
                if progress is not None:
                    progress(f"idle baseline: {min(self.clock() - t0, seconds):.1f}/{seconds:g} s")
        finally:
            fields = self.stop()
        energy = {k: v for k, v in fields.items()
                  if k.startswith("energy_") and k.endswith("_j")
                  and k not in ("energy_total_j", "energy_idle_j", "energy_net_j",
                                "energy_wall_idle_j", "energy_wall_net_j")}
        sources = {k: fields.get(source_key(k)) for k in energy}
        idle = idle_from_energy(energy, sources, fields["meter_time_s"])
        if progress is not None:
            progress(idle.describe())
        return idle

    def close(self) -> None:
        if self.sampler._thread is not None:
            self.sampler.stop()
        for m in self._meters():
            try:
                m.close()
            except Exception:
                pass
        self.gpus.close()
