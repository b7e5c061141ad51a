"""The meter interface: start, stop -> readings with value, unit and source.

A meter that cannot run here says why once (``unavailable_reason``) and its fields stay
missing (None), never 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Mapping


class MeterUnavailable(Exception):
    """A meter cannot measure here; ``str(exc)`` is the one-line reason shown to the user."""


@dataclass(frozen=True)
class Reading:
    """One measured quantity over one sample.

    ``field`` is the sample column it fills (``energy_gpu_j``), ``unit`` its unit (``J``),
    ``source`` how it was obtained (``rapl``, ``nvml-counter``, ``nvml-power``,
    ``estimated-cpu-time``, ``psutil``...). ``value`` is None when it could not be measured.
    """

    field: str
    value: float | None
    unit: str
    source: str

    @property
    def estimated(self) -> bool:
        return self.source.startswith("estimated")


@dataclass(frozen=True)
class Probe:
    """A callable the one background sampler thread reads periodically.

    ``read()`` returns ``{series_name: value}``; a None value (or a missing name) is a
    missing point, never 0. ``period_s`` None means every tick of the sampler; otherwise
    the probe is read about every ``period_s`` seconds (at least once per tick interval).
    """

    read: Callable[[], Mapping[str, float | None]]
    period_s: float | None = None
    name: str = "probe"


class Meter(ABC):
    #: short name shown in the session header
    name: str = "meter"
    #: True for a meter that reads power or energy from hardware (RAPL, NVML, a wattmeter): an
    #: idle window next to each sample then tells it the machine's idle power. False for one whose
    #: idle power is its model's constant (:meth:`modelled_idle`, the CPU-time estimate), or that
    #: reads no energy at all: an idle window would only measure that constant. A user's meter
    #: is taken to read power unless it says otherwise (an idle window costs time, never truth).
    reads_power: bool = True

    def unavailable_reason(self) -> str | None:
        """Why this meter cannot measure here, or None when it can."""
        return None

    @abstractmethod
    def start(self) -> None:
        """Begin measuring one sample."""

    @abstractmethod
    def stop(self) -> list[Reading]:
        """End the sample and return its readings."""

    def modelled_idle(self) -> list[Reading]:
        """The idle power its model assumes, per energy field (unit ``W``), for a meter whose idle
        is a constant rather than a measurement (the CPU-time estimate); [] for the others."""
        return []

    def probes(self) -> list[Probe]:
        """Callables the shared sampler thread should read while a sample runs (optional)."""
        return []

    def sample_notes(self) -> list[str]:
        """Lines about the last sample (a failed read, a figure to treat with care); optional."""
        return []

    def notes(self) -> list[str]:
        """Lines about the whole session, shown once (how a figure is obtained instead); optional."""
        return []

    def sample_info(self) -> dict:
        """Words, not readings, every sample of this meter records (which GPU it read); optional."""
        return {}

    def close(self) -> None:
        """Release resources (threads, NVML handles)."""


class UnavailableMeter(Meter):
    """A built-in meter that cannot run here: it only says why (``name: reason``), once."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def unavailable_reason(self) -> str | None:
        return self.reason

    def start(self) -> None:
        raise MeterUnavailable(self.reason)

    def stop(self) -> list[Reading]:
        raise MeterUnavailable(self.reason)
