"""Idle baseline and its subtraction, as pure functions.

Next to each sample the session measures the machine with nothing running for N seconds and
keeps the idle *power* of each energy field (``energy_cpu_j`` -> W), but only where a meter
reads power (RAPL, NVML, a wattmeter). The CPU-time estimate's idle power is its model's
constant (``modelled``): it is taken as it is, with no window, since a window would only read
the constant back. A sample then gets:

* ``energy_total_j`` (gross) = ``energy_cpu_j + energy_gpu_j``. If one of the two is missing
  the total is the other one alone, and ``energy_total_source`` names only what it contains
  (``rapl-package+nvml-counter``, ``estimated-cpu-time``); with both missing it is None.
* ``energy_idle_j`` = the idle power of exactly those parts x the sample's time.
* ``energy_idle_source``: how that idle power was had, per part in the total's order:
  ``idle-window`` (measured) or ``model-constant`` (the estimate's constant), e.g.
  ``model-constant+idle-window`` for an estimated CPU beside an NVML-metered GPU.
* ``energy_net_j`` = ``energy_total_j - energy_idle_j``. A negative net is kept as it is (not
  clamped to 0) and noted: the load cost less than the idle noise, which is a finding.

The wattmeter, when enabled, gets the same three as ``energy_wall_j``, ``energy_wall_idle_j``
and ``energy_wall_net_j``; it measures the whole machine and is never added to the total.
A part whose idle power is unknown, or was measured by another source than the sample (RAPL
at idle, an estimate in the sample), leaves idle and net None, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

TOTAL_PARTS = ("energy_cpu_j", "energy_gpu_j")
WALL = "energy_wall_j"
MEASURED = "idle-window"      # energy_idle_source of a part whose idle power an idle window measured
MODELLED = "model-constant"   # ... of a part whose idle power is its meter's model constant


def source_key(energy_field: str) -> str:
    """``energy_cpu_j`` -> ``energy_cpu_source``."""
    stem = energy_field[:-2] if energy_field.endswith("_j") else energy_field
    return stem + "_source"


@dataclass(frozen=True)
class IdleBaseline:
    """Idle power per energy field, measured over ``duration_s`` (0: no window). Units: W.

    ``modelled``: the fields whose idle power is their meter's model constant, not measured.
    """

    duration_s: float
    power_w: Mapping[str, float | None] = field(default_factory=dict)
    sources: Mapping[str, str | None] = field(default_factory=dict)
    modelled: frozenset[str] = frozenset()

    def describe(self) -> str:
        parts = [f"{k.removeprefix('energy_').removesuffix('_j')} {v:.2f} W"
                 + (f" (the {self.sources.get(k)} model's constant)" if k in self.modelled else "")
                 for k, v in self.power_w.items() if v is not None]
        head = f"idle over {self.duration_s:.1f} s: " if self.duration_s > 0 else "idle, no window: "
        return head + (", ".join(parts) or "nothing measurable")


def modelled_idle(power_w: Mapping[str, float], sources: Mapping[str, str | None],
                  measured: IdleBaseline | None = None) -> IdleBaseline:
    """``measured`` (None: no window) with the model constants ``power_w`` in place of what the
    window read for those fields: a constant is the model's idle, whatever a window says."""
    base = measured or IdleBaseline(0.0)
    return IdleBaseline(base.duration_s, {**base.power_w, **power_w}, {**base.sources, **sources},
                        frozenset(base.modelled) | frozenset(power_w))


def idle_from_energy(energy_j: Mapping[str, float | None], sources: Mapping[str, str | None],
                     duration_s: float) -> IdleBaseline:
    """Idle power = energy measured while idle / the idle time."""
    if duration_s <= 0:
        raise ValueError("idle duration must be > 0 s")
    power = {k: (v / duration_s if v is not None else None) for k, v in energy_j.items()}
    return IdleBaseline(duration_s, power, {k: sources.get(k) for k in energy_j})


def total_energy(fields: Mapping) -> tuple[float | None, str | None]:
    """(energy_total_j, energy_total_source) from the CPU and GPU parts that were measured."""
    parts = [(fields.get(p), fields.get(source_key(p))) for p in TOTAL_PARTS]
    present = [(v, s) for v, s in parts if v is not None]
    if not present:
        return None, None
    return sum(v for v, _ in present), "+".join(s or "unknown" for _, s in present)


def _idle_of(parts: list[str], fields: Mapping, idle: IdleBaseline, time_s: float,
             notes: list[str]) -> float | None:
    """The idle energy of ``parts`` over ``time_s`` (J), or None with a note saying why."""
    total_w = 0.0
    for p in parts:
        w = idle.power_w.get(p)
        if w is None:
            notes.append(f"idle: no idle power for {p}; idle and net energy left empty")
            return None
        if idle.sources.get(p) != fields.get(source_key(p)):
            notes.append(f"idle: {p} idle was measured by {idle.sources.get(p)}, the sample by "
                         f"{fields.get(source_key(p))}; idle and net energy left empty")
            return None
        total_w += w
    return total_w * time_s


def subtract_idle(fields: Mapping, idle: IdleBaseline | None, time_s: float | None) -> tuple[dict, list[str]]:
    """Idle and net energy for a sample's fields. Returns (new fields, notes)."""
    out: dict = {"energy_idle_j": None, "energy_net_j": None, "energy_idle_source": None}
    notes: list[str] = []
    has_wall = WALL in fields
    if has_wall:
        out.update(energy_wall_idle_j=None, energy_wall_net_j=None)
    if idle is None or time_s is None:
        return out, notes
    total = fields.get("energy_total_j")
    if total is not None:
        parts = [p for p in TOTAL_PARTS if fields.get(p) is not None]
        idle_j = _idle_of(parts, fields, idle, time_s, notes)
        if idle_j is not None:
            out["energy_idle_j"] = idle_j
            out["energy_net_j"] = total - idle_j
            out["energy_idle_source"] = "+".join(MODELLED if p in idle.modelled else MEASURED for p in parts)
    if has_wall and fields.get(WALL) is not None:
        w = idle.power_w.get(WALL)
        if w is None:
            notes.append("idle: no idle power for energy_wall_j; wall idle and net left empty")
        else:  # counter vs load integration of the same meter measure the same thing
            out["energy_wall_idle_j"] = w * time_s
            out["energy_wall_net_j"] = fields[WALL] - w * time_s
    for key in ("energy_net_j", "energy_wall_net_j"):
        if out.get(key) is not None and out[key] < 0:
            notes.append(f"{key} is negative ({out[key]:.3g} J): the sample used less than the idle "
                         "baseline predicts, so idle noise exceeds the load's energy; kept, not clamped")
    return out, notes
