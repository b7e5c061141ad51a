"""Energy and utilisation meters behind one interface, and :class:`MeterSet`, which runs them.

Built-in meters (one module each; each says why it cannot run, once, and then leaves its
fields None, never 0):

* CPU energy: :mod:`.rapl` (measured) or, without RAPL, :mod:`.cpu_estimate` (labelled
  ``estimated-cpu-time``; the note says why RAPL was not used, e.g. permissions, and how to fix).
* GPU energy and utilisation: :mod:`.nvml` (``nvml-counter`` or ``nvml-power``).
* Wall energy: :mod:`.wattmeter` (NETIO JSON API), when a URL is given.
* Utilisation: :mod:`.sampler`, one background thread for every sampled quantity.

Built-in meters register through ``pytest_greenserve_register_meters`` (:mod:`.builtin`), as a
user's do. Fields of :meth:`MeterSet.stop` (what was measured; the metric registry,
``pytest_greenserve.metrics``, names the columns every sample has):

``energy_cpu_j, energy_gpu_j, energy_total_j, energy_idle_j, energy_net_j`` (J; total = the
parts measured, see :mod:`.idle`), ``energy_cpu_source, energy_gpu_source`` and the extras
``energy_total_source`` and ``energy_idle_source`` (``idle-window`` or ``model-constant``);
``cpu_pct`` (system, % of all CPUs), ``ram_pct`` (system),
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

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .base import Meter, MeterUnavailable, Probe, Reading
from .builtin import builtin_meters
from .cpu_estimate import DEFAULT_CPU_IDLE_W, DEFAULT_CPU_W_PER_CORE, parse_cpu_watts
from .idle import TOTAL_PARTS, IdleBaseline, idle_from_energy, modelled_idle, source_key, subtract_idle, total_energy
from .sampler import CpuPercent, Sampler, SystemMemoryProbe

__all__ = [
    "IdleBaseline", "Meter", "MeterSet", "MeterSettings", "MeterUnavailable", "Probe", "Reading", "Tracked",
    "builtin_meters", "parse_cpu_watts",
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


class MeterSet:
    """All meters of a session, run around each sample by :meth:`track`.

    ``meters`` are the meters in priority order (None: :func:`~.builtin.builtin_meters`, what
    the plugin gets through ``pytest_greenserve_register_meters``); ``extra_meters`` follow
    them. A meter that cannot run here is noted once (``name: reason``) and never started.
    """

    def __init__(self, settings: MeterSettings, meters: Sequence[Meter] | None = None,
                 extra_meters: Sequence[Meter] = (), clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self._sleep = time.sleep
        self._notes: list[str] = []
        self._sample_notes: list[str] = []
        self._t0: float | None = None
        candidates = list(builtin_meters(settings) if meters is None else meters) + list(extra_meters)
        self.all_meters: list[Meter] = candidates  # closed at the end, usable or not
        self.meters: list[Meter] = []
        for m in candidates:
            try:
                reason = m.unavailable_reason()
                self._notes += m.notes()
            except Exception as exc:  # a user's meter must not take the session down
                reason = f"{type(exc).__name__}: {exc}"
            if reason is None:
                self.meters.append(m)
            else:
                self._notes.append(f"{m.name}: {reason}")
        if self.meters and not self.reads_power():
            constants = ", ".join(f"{r.field} {r.value:g} W ({r.source})" for r in self._modelled_readings())
            self._notes.append("idle: no meter here reads power (RAPL, NVML or a wattmeter), so no idle window is "
                               "taken; idle power is the power model's constant" + (f": {constants}" if constants else ""))
        probes: list[Probe] = [SystemMemoryProbe().probe()]
        for m in self.meters:
            probes += m.probes()
        self.sampler = Sampler(probes, settings.sampler_hz)
        self.cpu_pct = CpuPercent()
        self._running: list[Meter] = []

    def notes(self) -> list[str]:
        """One line per meter that cannot run (and how the CPU figure is obtained instead)."""
        return list(self._notes)

    # -- idle -------------------------------------------------------------------------------
    def reads_power(self) -> bool:
        """Whether any usable meter reads power (RAPL, NVML, a wattmeter): only then does an idle
        window tell anything; the CPU-time estimate's idle is its model's constant."""
        return any(getattr(m, "reads_power", True) for m in self.meters)

    def _modelled_readings(self) -> list[Reading]:
        out: list[Reading] = []
        for m in self.meters:
            try:
                readings = m.modelled_idle() if hasattr(m, "modelled_idle") else []
            except Exception as exc:  # a user's meter must not take the session down
                self._sample_notes.append(f"{m.name}: modelled_idle failed ({type(exc).__name__}: {exc})")
                continue
            out += [r for r in readings if r.value is not None and r.field not in {o.field for o in out}]
        return out

    def modelled_idle(self, measured: IdleBaseline | None = None) -> IdleBaseline:
        """The meters' model constants as idle power (no window, no time), over ``measured``'s
        readings of the same fields where a window was measured too."""
        readings = self._modelled_readings()
        return modelled_idle({r.field: r.value for r in readings}, {r.field: r.source for r in readings}, measured)

    # -- samples --------------------------------------------------------------------------
    @contextmanager
    def track(self, idle: IdleBaseline | None = None) -> Iterator[Tracked]:
        """Measure the block: ``with meters.track(idle) as tracked: ...``; then ``tracked.fields``.

        The meters are stopped however the block ends, so an engine that raises mid-sample
        leaves no sampler thread running; its exception then goes on up, and the fields of
        the broken window are still in ``tracked.fields`` for whoever wants them.
        """
        tracked = Tracked()
        self.start()
        try:
            yield tracked
        finally:
            tracked.fields = self.stop(idle)

    def start(self) -> None:
        if self._t0 is not None:  # a window left open (a caller that did not use track()): close it
            self.stop()
        self._sample_notes = []
        self._running = []
        self._t0 = self.clock()
        for m in self.meters:
            try:
                m.start()
                self._running.append(m)
            except Exception as exc:
                self._sample_notes.append(f"{m.name}: failed to start ({type(exc).__name__}: {exc})")
        self.cpu_pct.start()
        self.sampler.start()

    def stop(self, idle: IdleBaseline | None = None) -> dict:
        """End the sample; the fields listed in this module's docstring (only what was measured,
        plus the meter notes; the sample builder adds every other column as None)."""
        if self._t0 is None:
            raise RuntimeError("MeterSet.stop() without start()")
        res = self.sampler.stop()
        fields: dict = {}
        notes = list(self._sample_notes)
        for m in self._running:  # in priority order: the first meter to measure a field keeps it
            try:
                readings = m.stop()
            except Exception as exc:
                notes.append(f"{m.name}: failed to stop ({type(exc).__name__}: {exc})")
                continue
            notes += m.sample_notes()
            try:
                fields.update(m.sample_info())
            except Exception as exc:  # a user's meter must not cost the sample
                notes.append(f"{m.name}: no sample info ({type(exc).__name__}: {exc})")
            for r in readings:
                if fields.get(r.field) is not None:
                    if r.value is not None:
                        notes.append(f"{m.name}: {r.field} ignored, already measured by "
                                     f"{fields.get(source_key(r.field))}")
                    continue
                fields[r.field] = r.value
                fields[source_key(r.field)] = r.source if r.value is not None else None
        t1 = self.clock()
        fields.update(self.cpu_pct.stop())
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
        """Measure idle power for ``seconds`` with nothing else running; a meter whose idle is
        its model's constant (the CPU-time estimate) gets that constant, not what it read.

        ``progress(line)`` gets a progress line about once a second
        (``"idle baseline: 2/5 s"``) and a last one with the result.
        """
        if seconds <= 0:
            raise ValueError("idle duration must be > 0 s")
        with self.track() as tracked:
            t0 = self.clock()
            while True:
                elapsed = self.clock() - t0
                if elapsed >= seconds:
                    break
                self._sleep(min(1.0, seconds - elapsed))
                if progress is not None:
                    progress(f"idle baseline: {min(self.clock() - t0, seconds):.1f}/{seconds:g} s")
        fields = tracked.fields
        energy = {p: None for p in TOTAL_PARTS}  # the parts of the total: known, if only as None
        energy.update({k: v for k, v in fields.items()
                       if k.startswith("energy_") and k.endswith("_j")
                       and k not in ("energy_total_j", "energy_idle_j", "energy_net_j",
                                     "energy_wall_idle_j", "energy_wall_net_j")})
        sources = {k: fields.get(source_key(k)) for k in energy}
        idle = self.modelled_idle(idle_from_energy(energy, sources, fields["meter_time_s"]))
        if progress is not None:
            progress(idle.describe())
        return idle

    def close(self) -> None:
        if self._t0 is not None:
            self.stop()
        for m in self.all_meters:
            try:
                m.close()
            except Exception:
                pass


@dataclass
class Tracked:
    """What :meth:`MeterSet.track` measured; ``fields`` is filled when the block ends."""

    fields: dict = field(default_factory=dict)
