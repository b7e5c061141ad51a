from __future__ import annotations

import time

import pytest
from fake_nvml import (NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIBRARY_NOT_FOUND,
                       NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_SUPPORTED, FakeGpu, FakeNvml, NVMLError)

from pytest_greenserve.meters import MeterSet, MeterSettings
from pytest_greenserve.meters.base import MeterUnavailable
from pytest_greenserve.meters.nvml import (GpuEnergyMeter, NvmlGpus, _handle_nvml_errors, nvml_reason,
                                           parse_cuda_visible_devices, unavailable_reason)
from pytest_greenserve.meters.sampler import Sampler

MB = 1024 * 1024


def settings(nvml, tmp_path, **kw):
    return MeterSettings(nvml=nvml, powercap_root=tmp_path / "no-powercap", **kw)


def test_gpu_energy_from_the_nvml_counter(tmp_path, no_cuda_env):
    gpu = FakeGpu(energy_mj=5_000_000, util_gpu=60, util_mem=30,
                  mem_used_b=3 * 1024**3, mem_total_b=12 * 1024**3)
    ms = MeterSet(settings(FakeNvml([gpu]), tmp_path))
    try:
        assert not any(n.startswith("gpu") for n in ms.notes())
        ms.start()
        time.sleep(0.25)
        gpu.energy_mj += 12_345  # mJ
        fields = ms.stop()
    finally:
        ms.close()
    assert fields["energy_gpu_j"] == pytest.approx(12.345)
    assert fields["energy_gpu_source"] == "nvml-counter"
    assert fields["gpu_pct"] == pytest.approx(60)
    assert fields["gpu_mem_util_pct"] == pytest.approx(30)
    assert fields["gpu_mem_used_pct"] == pytest.approx(25)
    assert fields["gpu_mem_peak_mb"] == pytest.approx(3 * 1024)
    # CPU estimated and GPU measured: the total says what it adds up
    assert fields["energy_total_j"] == pytest.approx(fields["energy_cpu_j"] + 12.345)
    assert fields["energy_total_source"] == "estimated-cpu-time+nvml-counter"
    # a quarter-second sample is short for a counter that moves every ~100 ms: say so
    assert any("advances about every 100 ms" in n for n in fields["meter_notes"])


def test_gpu_energy_integrates_power_when_counter_not_supported(clock):
    gpu = FakeGpu(energy_mj=None, power_mw=100_000)
    gpus = NvmlGpus(FakeNvml([gpu]), indices=(0,))
    meter = GpuEnergyMeter(gpus, clock=clock)
    assert meter.unavailable_reason() is None
    sampler = Sampler(meter.probes(), hz=10, clock=clock)
    meter.start()
    sampler.start(threaded=False)          # reads 100 W at t=0
    for power_w in (100, 200, 200):        # ticks at 0.1, 0.2, 0.3 s
        clock.advance(0.1)
        gpu.power_mw = power_w * 1000
        sampler.tick()
    clock.advance(0.1)
    gpu.power_mw = 100_000
    sampler.stop()                         # final reading at 0.4 s: 100 W
    [reading] = meter.stop()
    # trapezoids: 0.1*(100+100)/2 + 0.1*(100+200)/2 + 0.1*(200+200)/2 + 0.1*(200+100)/2
    assert reading.value == pytest.approx(10 + 15 + 20 + 15)
    assert reading.source == "nvml-power"
    gpus.close()


def test_gpu_power_integration_runs_in_the_sampler_thread(tmp_path, no_cuda_env):
    gpu = FakeGpu(energy_mj=None, power_mw=50_000)
    ms = MeterSet(settings(FakeNvml([gpu]), tmp_path, sampler_hz=20))
    try:
        ms.start()
        time.sleep(0.3)
        fields = ms.stop()
    finally:
        ms.close()
    assert fields["energy_gpu_source"] == "nvml-power"
    assert fields["energy_gpu_j"] == pytest.approx(50 * fields["meter_time_s"], rel=0.05)


@pytest.mark.parametrize("code, text", [
    (NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA GPU (NVML Shared Library Not Found)"),
    (NVML_ERROR_DRIVER_NOT_LOADED, "no NVIDIA driver loaded (Driver Not Loaded)"),
])
def test_no_gpu_leaves_gpu_fields_empty_with_reason(tmp_path, no_cuda_env, code, text):
    ms = MeterSet(settings(FakeNvml(init_error=code), tmp_path))
    try:
        assert f"gpu energy and utilisation: {text}" in ms.notes()
        ms.start()
        fields = ms.stop()
    finally:
        ms.close()
    for key in ("energy_gpu_j", "energy_gpu_source", "gpu_pct", "gpu_mem_util_pct",
                "gpu_mem_used_pct", "gpu_mem_peak_mb"):
        assert fields.get(key) is None, key


def test_real_pynvml_here_reports_why_it_cannot_run():
    # this machine has nvidia-ml-py but no driver: the real library's error becomes the reason
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("an NVIDIA GPU is present")
    assert reason.startswith("no NVIDIA")


def test_gpu_without_counter_or_power_is_unavailable_with_reason(no_cuda_env):
    class NoPower(FakeNvml):
        def nvmlDeviceGetPowerUsage(self, h):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)

    gpus = NvmlGpus(NoPower([FakeGpu(energy_mj=None)]))
    reason = GpuEnergyMeter(gpus).unavailable_reason()
    assert reason.startswith("GPU 0: no energy counter, and power reading: not supported")


def test_nvml_errors_map_to_one_line_reasons():
    nv = FakeNvml()
    assert nvml_reason(nv, NVMLError(NVML_ERROR_NO_PERMISSION)).startswith("NVML permission denied")
    assert nvml_reason(nv, NVMLError(999)) == "NVML error (Unknown Error 999)"
    with pytest.raises(MeterUnavailable, match=r"^GPU 3: not supported by this GPU or driver \(Not Supported\)$"):
        with _handle_nvml_errors(nv, "GPU 3"):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", []), ("0,2", ["0", "2"]), (" 1 , 0", ["1", "0"]),
    ("0,-1,1", ["0"]), ("-1", []), ("GPU-abc,1", ["GPU-abc", "1"]), ("MIG-x", ["MIG-x"]),
])
def test_cuda_visible_devices_is_read_as_cuda_does(value, expected):
    assert parse_cuda_visible_devices(value) == expected


def test_only_the_gpus_in_cuda_visible_devices_are_measured(tmp_path, monkeypatch):
    gpus = [FakeGpu(uuid="GPU-0000", energy_mj=1000), FakeGpu(uuid="GPU-1111", energy_mj=1000)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    ms = MeterSet(settings(FakeNvml(gpus), tmp_path))
    try:
        assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in n for n in ms.notes())
        ms.start()
        gpus[0].energy_mj += 9_000_000
        gpus[1].energy_mj += 2_000
        fields = ms.stop()
    finally:
        ms.close()
    assert fields["energy_gpu_j"] == pytest.approx(2.0)


def test_gpu_uuid_prefix_and_empty_visible_devices(no_cuda_env):
    gpus = [FakeGpu(uuid="GPU-0000-aa"), FakeGpu(uuid="GPU-1111-bb")]
    g = NvmlGpus(FakeNvml(gpus), cuda_visible_devices="GPU-1111")
    assert g.handles == [gpus[1]] and g.reason is None
    g.close()
    g = NvmlGpus(FakeNvml(gpus), cuda_visible_devices="")
    assert g.reason == "no GPU visible to this process (CUDA_VISIBLE_DEVICES='')"
    g = NvmlGpus(FakeNvml(gpus), cuda_visible_devices="7")
    assert g.reason.startswith("no GPU matches CUDA_VISIBLE_DEVICES='7'")


def test_meterset_shuts_nvml_down_on_close(tmp_path, no_cuda_env):
    nv = FakeNvml([FakeGpu()])
    ms = MeterSet(settings(nv, tmp_path))
    assert nv.init_count == 1
    ms.close()
    assert nv.init_count == 0


def test_counter_is_cross_checked_by_integrated_power(clock):
    """With a counter, sampled power integrated over the same window is reported beside it,
    so a reader can see the two methods agree (they did within 2% on an H100)."""
    gpu = FakeGpu(energy_mj=1_000_000, power_mw=200_000)
    gpus = NvmlGpus(FakeNvml([gpu]), indices=(0,))
    meter = GpuEnergyMeter(gpus, clock=clock)
    sampler = Sampler(meter.probes(), hz=10, clock=clock)
    meter.start()
    sampler.start(threaded=False)           # 200 W at t=0
    for _ in range(10):                     # one second at a steady 200 W
        clock.advance(0.1)
        sampler.tick()
    gpu.energy_mj += 200_000                # the counter saw 200 J too
    readings = {r.field: r for r in meter.stop()}
    sampler.stop()
    assert readings["energy_gpu_j"].value == pytest.approx(200.0)
    assert readings["energy_gpu_j"].source == "nvml-counter"
    assert readings["energy_gpu_power_j"].value == pytest.approx(200.0)
    assert readings["energy_gpu_power_j"].source == "nvml-power"


# ------------------------------------------------------------------ energy per device (issue 18)

def test_only_the_given_device_of_two_is_read_and_the_fingerprint_lists_both(tmp_path, monkeypatch):
    """Two GPUs, CUDA_VISIBLE_DEVICES of one (as a pytest-xdist worker gets): the sample's energy
    is that device's alone, the sample names the device, and the machine lists both GPUs."""
    from pytest_greenserve.baselines import fingerprint
    from pytest_greenserve.results import machine_info

    gpus = [FakeGpu(uuid="GPU-0000-aa", name="Fake A", energy_mj=1000),
            FakeGpu(uuid="GPU-1111-bb", name="Fake B", energy_mj=1000)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    ms = MeterSet(settings(FakeNvml(gpus), tmp_path))
    try:
        ms.start()
        gpus[0].energy_mj += 7_000_000  # another worker (or tenant) busy on GPU 0
        gpus[1].energy_mj += 3_000
        fields = ms.stop()
    finally:
        ms.close()
    assert fields["energy_gpu_j"] == pytest.approx(3.0)
    assert (fields["gpu_index"], fields["gpu_uuid"], fields["gpu_name"]) == ("1", "GPU-1111-bb", "Fake B")

    info = machine_info(nvml=FakeNvml(gpus))
    assert info["gpus"] == [{"index": 0, "uuid": "GPU-0000-aa", "name": "Fake A"},
                            {"index": 1, "uuid": "GPU-1111-bb", "name": "Fake B"}]
    assert fingerprint(info)["gpus"] == ["Fake A", "Fake B"]


def test_without_cuda_visible_devices_only_gpu_0_is_read_never_the_host(tmp_path, no_cuda_env):
    gpus = [FakeGpu(uuid="GPU-0000", energy_mj=1000), FakeGpu(uuid="GPU-1111", energy_mj=1000)]
    ms = MeterSet(settings(FakeNvml(gpus), tmp_path))
    try:
        assert any("measuring GPU 0 only" in n and "the host has 2" in n for n in ms.notes())
        ms.start()
        gpus[0].energy_mj += 4_000
        gpus[1].energy_mj += 9_000_000  # another tenant's work is not this process's energy
        fields = ms.stop()
    finally:
        ms.close()
    assert fields["energy_gpu_j"] == pytest.approx(4.0)
    assert fields["gpu_index"] == "0" and fields["gpu_uuid"] == "GPU-0000"


def test_a_sample_without_a_gpu_meter_names_no_device(tmp_path, no_cuda_env):
    ms = MeterSet(settings(FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND), tmp_path))
    try:
        ms.start()
        fields = ms.stop()
    finally:
        ms.close()
    assert "gpu_index" not in fields and fields.get("energy_gpu_j") is None
