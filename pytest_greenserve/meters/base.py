"""The meter interface: start, stop -> readings with value, unit and source.

A meter that cannot run here says why once (``unavailable_reason``) and its fields stay
missing (None), never 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


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


class Meter(ABC):
    #: short name shown in the session header
    name: str = "meter"

    def unavailable_reason(self) -> str | None:
        """Why this meter cannot measure here, or None when it can."""
        return None

    @abstractmethod
    def start(self) -> None:
        """Begin measuring one sample."""

    @abstractmethod
    def stop(self) -> list[Reading]:
        """End the sample and return its readings."""

    def close(self) -> None:
        """Release resources (threads, NVML handles)."""
