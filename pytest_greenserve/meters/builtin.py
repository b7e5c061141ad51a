"""The built-in meters, registered through ``pytest_greenserve_register_meters`` like a user's.

The plugin registers this module as a pytest plugin (pluggy's host-registers-its-own-defaults
pattern, as ``engines/__init__.py`` does for engines). Its hook implementation runs first and
puts the built-ins at the front of the list, so where a user's meter reports the same field
(``energy_cpu_j``, say) the built-in reading wins when it measured something, and the user's
fills the slot when it did not (see :meth:`MeterSet.stop`).
"""

from __future__ import annotations

import os

import pluggy

from .base import Meter, UnavailableMeter
from .cpu_estimate import CpuEstimateMeter
from .nvml import GpuEnergyMeter, GpuUtilisation, NvmlGpus
from .rapl import RaplMeter
from .wattmeter import NetioWattmeter

hookimpl = pluggy.HookimplMarker("pytest")


def cpu_energy_meter(settings) -> Meter:
    """RAPL where it can be read; otherwise the labelled estimate, or nothing if turned off."""
    rapl = RaplMeter(settings.powercap_root)
    reason = rapl.unavailable_reason()
    if reason is None:
        return rapl
    if settings.cpu_watts_per_core is not None:
        return CpuEstimateMeter(settings.cpu_watts_per_core, settings.cpu_idle_watts, why_estimated=reason)
    return UnavailableMeter("cpu energy", f"{reason}; estimate turned off")


def gpu_meters(settings) -> list[Meter]:
    """GPU energy and utilisation of the GPUs this process may use (CUDA_VISIBLE_DEVICES)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES") if settings.gpu_indices is None else None
    gpus = NvmlGpus(settings.nvml, settings.gpu_indices, cvd, os.environ.get("CUDA_DEVICE_ORDER"))
    if gpus.reason is not None:
        gpus.close()
        return [UnavailableMeter("gpu energy and utilisation", gpus.reason)]
    energy = GpuEnergyMeter(gpus)
    return [energy, GpuUtilisation(gpus)]


def builtin_meters(settings) -> list[Meter]:
    """Every built-in meter for ``settings`` (a :class:`~pytest_greenserve.meters.MeterSettings`)."""
    meters = [cpu_energy_meter(settings)] + gpu_meters(settings)
    if settings.wattmeter_url:
        meters.append(NetioWattmeter(settings.wattmeter_url, settings.wattmeter_output,
                                     poll_period_s=settings.wattmeter_poll_s))
    return meters


@hookimpl(tryfirst=True)
def pytest_greenserve_register_meters(settings, meters: list) -> None:
    meters[:0] = builtin_meters(settings)
