from __future__ import annotations

import time

import pytest
from fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml

from pytest_greenserve.meters import Meter, MeterSet, MeterSettings, Reading

ENERGY = ["energy_cpu_j", "energy_gpu_j", "energy_total_j", "energy_idle_j", "energy_net_j",
          "energy_cpu_source", "energy_gpu_source", "energy_total_source"]


def nothing_here(tmp_path, **kw):
    return MeterSettings(powercap_root=tmp_path / "no-powercap", nvml=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND),
                         cpu_watts_per_core=None, **kw)


def test_with_nothing_available_every_energy_field_is_none_and_notes_say_why(tmp_path, no_cuda_env):
    ms = MeterSet(nothing_here(tmp_path))
    try:
        assert ms.notes() == [
            f"cpu energy: no RAPL ({tmp_path / 'no-powercap'} absent); estimate turned off",
            "gpu energy and utilisation: no NVIDIA GPU (NVML Shared Library Not Found)",
        ]
        idle = ms.measure_idle(0.2)
        assert all(v is None for v in idle.power_w.values())
        ms.start()
        time.sleep(0.2)  # CPU counters tick at 100 Hz: a window of a few ms has no CPU % to give
        fields = ms.stop(idle)
    finally:
        ms.close()
    for key in ENERGY + ["gpu_pct", "gpu_mem_util_pct", "gpu_mem_used_pct", "gpu_mem_peak_mb"]:
        assert fields.get(key) is None, key
    assert fields["meter_notes"][:2] == ms.notes()
    # what can still run does: psutil utilisation and the sampler's own numbers
    for key in ("cpu_pct", "ram_pct", "proc_cpu_pct", "rss_peak_mb", "sampler_overhead_pct"):
        assert fields[key] is not None, key


def test_a_sample_that_raises_inside_track_still_stops_the_meters(tmp_path, no_cuda_env):
    """An engine failing mid-sample (a CUDA out-of-memory, say) must not leave the sampler running."""
    ms = MeterSet(nothing_here(tmp_path))
    try:
        with pytest.raises(MemoryError):
            with ms.track() as tracked:
                raise MemoryError("CUDA out of memory")
        assert tracked.fields["meter_time_s"] >= 0  # the broken window was closed and read
        with ms.track() as tracked:  # the next sample measures normally ("sampler already running" before)
            time.sleep(0.3)
        assert tracked.fields["rss_peak_mb"] > 0
    finally:
        ms.close()


class FakeAmdGpuMeter(Meter):
    """A user's meter, as a pytest_greenserve_* hook would return it."""

    name = "amd gpu"

    def start(self):
        pass

    def stop(self):
        return [Reading("energy_gpu_j", 42.0, "J", "amdsmi-counter"), Reading("energy_fan_j", 1.5, "J", "fanmeter")]


class BrokenMeter(Meter):
    name = "broken"

    def unavailable_reason(self):
        return "sensor not found"

    def start(self):
        raise AssertionError("never started")

    def stop(self):
        raise AssertionError("never stopped")


def test_extra_meters_fill_missing_slots_and_add_fields(tmp_path, no_cuda_env):
    ms = MeterSet(nothing_here(tmp_path), extra_meters=[FakeAmdGpuMeter(), BrokenMeter()])
    try:
        assert "broken: sensor not found" in ms.notes()
        ms.start()
        fields = ms.stop()
    finally:
        ms.close()
    assert (fields["energy_gpu_j"], fields["energy_gpu_source"]) == (42.0, "amdsmi-counter")
    assert (fields["energy_total_j"], fields["energy_total_source"]) == (42.0, "amdsmi-counter")
    assert (fields["energy_fan_j"], fields["energy_fan_source"]) == (1.5, "fanmeter")


def test_an_extra_meter_does_not_override_a_measured_field(tmp_path, no_cuda_env):
    ms = MeterSet(MeterSettings(powercap_root=tmp_path / "none", nvml=FakeNvml(init_error=12), gpu_indices=()),
                  extra_meters=[type("CpuX", (FakeAmdGpuMeter,), {"stop": lambda self: [
                      Reading("energy_cpu_j", 1.0, "J", "x")]})()])
    try:
        ms.start()
        fields = ms.stop()
    finally:
        ms.close()
    assert fields["energy_cpu_source"] == "estimated-cpu-time"
    assert any("energy_cpu_j ignored, already measured by estimated-cpu-time" in n for n in fields["meter_notes"])


def test_stop_without_start_is_an_error(tmp_path):
    ms = MeterSet(nothing_here(tmp_path))
    with pytest.raises(RuntimeError):
        ms.stop()
    ms.close()
