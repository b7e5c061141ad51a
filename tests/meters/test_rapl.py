from __future__ import annotations

import os

import pytest
from fake_powercap import set_energy, write_zone

from pytest_greenserve.meters import MeterSet, MeterSettings
from pytest_greenserve.meters.rapl import (RaplMeter, explain_read_error, find_zones, is_available,
                                           unavailable_reason, wrap_delta_uj)


def test_rapl_finds_package_and_dram_but_not_core_psys_or_mmio(powercap):
    zones = find_zones(powercap)
    assert [(z.path.name, z.name) for z in zones] == [("intel-rapl:0", "package-0"), ("intel-rapl:0:1", "dram")]
    assert is_available(powercap)


def test_rapl_meter_reads_package_plus_dram_energy(powercap):
    meter = RaplMeter(powercap)
    assert meter.unavailable_reason() is None
    meter.start()
    set_energy(powercap / "intel-rapl:0", 1_000_000 + 12_500_000)   # +12.5 J
    set_energy(powercap / "intel-rapl:0:1", 2_000_000 + 1_500_000)  # +1.5 J
    set_energy(powercap / "intel-rapl:0:0", 999_999_999)            # core: part of package, ignored
    [reading] = meter.stop()
    assert reading.field == "energy_cpu_j"
    assert reading.value == pytest.approx(14.0)
    assert reading.unit == "J"
    assert reading.source == "rapl-package+dram"
    assert not reading.estimated


def test_rapl_meter_without_dram_says_package_only(tmp_path):
    root = tmp_path / "pc"
    write_zone(root, "intel-rapl:0", "package-0", 10)
    meter = RaplMeter(root)
    meter.start()
    set_energy(root / "intel-rapl:0", 3_000_010)
    [reading] = meter.stop()
    assert (reading.value, reading.source) == (pytest.approx(3.0), "rapl-package")


def test_rapl_meter_survives_counter_wraparound(tmp_path):
    root = tmp_path / "pc"
    zone = write_zone(root, "intel-rapl:0", "package-0", 999_000, max_uj=1_000_000)
    meter = RaplMeter(root)
    meter.start()
    set_energy(zone, 500)  # wrapped: 1000 uJ to the top, then 500
    [reading] = meter.stop()
    assert reading.value == pytest.approx(1500 / 1e6)
    assert wrap_delta_uj(999_000, 500, 1_000_000) == 1500
    assert wrap_delta_uj(10, 500, 1_000_000) == 490


def test_rapl_meter_counts_several_wraps_when_polled_between_them(tmp_path):
    root = tmp_path / "pc"
    zone = write_zone(root, "intel-rapl:0", "package-0", 900_000, max_uj=1_000_000)
    meter = RaplMeter(root)
    meter.start()
    set_energy(zone, 800_000)  # +900_000 (wrapped once)
    meter.poll()               # what the sampler thread does about once a second
    set_energy(zone, 700_000)  # +900_000 (wrapped again)
    [reading] = meter.stop()
    assert reading.value == pytest.approx(1.8)
    assert [p.period_s for p in meter.probes()] == [1.0]


def test_rapl_absent_gives_reason(tmp_path):
    reason = unavailable_reason(tmp_path / "nope")
    assert reason == f"no RAPL ({tmp_path / 'nope'} absent)"
    assert RaplMeter(tmp_path / "nope").unavailable_reason() == reason


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_rapl_permission_error_explains_the_fix(powercap):
    (powercap / "intel-rapl:0" / "energy_uj").chmod(0o200)
    reason = unavailable_reason(powercap)
    assert "permission denied" in reason
    assert "run as root" in reason and "chmod o+r" in reason


def test_rapl_permission_reason_names_fix_and_file(tmp_path):
    path = tmp_path / "intel-rapl:0" / "energy_uj"
    reason = explain_read_error(path, PermissionError(13, "Permission denied", str(path)))
    assert str(path) in reason and "permission denied" in reason
    assert f"sudo chmod o+r {tmp_path}/intel-rapl:*/energy_uj" in reason
    assert "run as root" in reason


def test_rapl_unreadable_counter_gives_reason_and_meterset_falls_back_to_labelled_estimate(powercap):
    # a counter that cannot be read (here: a directory where the file should be, which even
    # root cannot read) -> RAPL unavailable, with the reason, and the CPU figure estimated
    energy = powercap / "intel-rapl:0:1" / "energy_uj"
    energy.unlink()
    energy.mkdir()
    reason = unavailable_reason(powercap)
    assert reason.startswith("RAPL counter not readable") and str(energy) in reason
    ms = MeterSet(MeterSettings(powercap_root=powercap, gpu_indices=(), nvml=_no_nvml()))
    try:
        assert any(n.startswith("cpu energy: RAPL counter not readable") and "estimated from CPU time" in n
                   for n in ms.notes())
        ms.start()
        fields = ms.stop()
        assert fields["energy_cpu_source"] == "estimated-cpu-time"
    finally:
        ms.close()


def test_meterset_uses_rapl_when_present(powercap):
    ms = MeterSet(MeterSettings(powercap_root=powercap, nvml=_no_nvml()))
    try:
        assert not any(n.startswith("cpu energy") for n in ms.notes())
        ms.start()
        set_energy(powercap / "intel-rapl:0", 1_000_000 + 5_000_000)
        fields = ms.stop()
        assert fields["energy_cpu_j"] == pytest.approx(5.0)
        assert fields["energy_cpu_source"] == "rapl-package+dram"
        assert fields["energy_total_j"] == pytest.approx(5.0)
        assert fields["energy_total_source"] == "rapl-package+dram"
    finally:
        ms.close()


def _no_nvml():
    from fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml

    return FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
