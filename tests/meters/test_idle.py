from __future__ import annotations

import pytest

from pytest_greenserve.meters import MeterSet, MeterSettings
from pytest_greenserve.meters.idle import IdleBaseline, idle_from_energy, subtract_idle, total_energy

IDLE = IdleBaseline(10.0, {"energy_cpu_j": 20.0, "energy_gpu_j": 60.0},
                    {"energy_cpu_j": "rapl-package", "energy_gpu_j": "nvml-counter"})


def sample(cpu=None, gpu=None, cpu_src="rapl-package", gpu_src="nvml-counter"):
    f = {"energy_cpu_j": cpu, "energy_gpu_j": gpu,
         "energy_cpu_source": cpu_src if cpu is not None else None,
         "energy_gpu_source": gpu_src if gpu is not None else None}
    f["energy_total_j"], f["energy_total_source"] = total_energy(f)
    return f


def test_idle_power_from_idle_energy():
    idle = idle_from_energy({"energy_cpu_j": 200.0, "energy_gpu_j": None}, {"energy_cpu_j": "rapl-package"}, 10.0)
    assert idle.power_w == {"energy_cpu_j": 20.0, "energy_gpu_j": None}


def test_idle_subtraction_on_known_numbers():
    out, notes = subtract_idle(sample(cpu=300.0, gpu=900.0), IDLE, time_s=5.0)
    assert out["energy_idle_j"] == pytest.approx((20 + 60) * 5)       # 400 J
    assert out["energy_net_j"] == pytest.approx(1200 - 400)
    assert notes == []


def test_negative_net_is_kept_and_noted():
    out, notes = subtract_idle(sample(cpu=50.0, gpu=200.0), IDLE, time_s=5.0)
    assert out["energy_net_j"] == pytest.approx(250 - 400)
    assert any("energy_net_j is negative" in n and "not clamped" in n for n in notes)


def test_total_is_the_measured_part_when_the_other_is_missing():
    f = sample(cpu=300.0)
    assert (f["energy_total_j"], f["energy_total_source"]) == (300.0, "rapl-package")
    out, _ = subtract_idle(f, IDLE, time_s=5.0)
    assert out["energy_idle_j"] == pytest.approx(20 * 5)  # only the CPU's idle power
    assert total_energy(sample()) == (None, None)


def test_idle_from_another_source_is_not_subtracted():
    out, notes = subtract_idle(sample(cpu=300.0, cpu_src="estimated-cpu-time"), IDLE, time_s=5.0)
    assert out["energy_idle_j"] is None and out["energy_net_j"] is None
    assert any("measured by rapl-package" in n for n in notes)


def test_no_idle_baseline_leaves_idle_and_net_empty():
    out, notes = subtract_idle(sample(cpu=300.0), None, time_s=5.0)
    assert out == {"energy_idle_j": None, "energy_net_j": None}


def test_wall_energy_gets_its_own_idle_and_net():
    idle = IdleBaseline(10.0, {"energy_wall_j": 80.0}, {"energy_wall_j": "wattmeter-netio-load"})
    out, _ = subtract_idle({"energy_wall_j": 1000.0, "energy_total_j": None}, idle, time_s=10.0)
    assert out["energy_wall_idle_j"] == 800.0 and out["energy_wall_net_j"] == 200.0


def test_measure_idle_reports_progress_and_returns_power(tmp_path):
    from fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml

    ms = MeterSet(MeterSettings(powercap_root=tmp_path / "none", gpu_indices=(),
                                nvml=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND),
                                cpu_watts_per_core=10.0, cpu_idle_watts=20.0))
    seen = []
    try:
        idle = ms.measure_idle(0.3, progress=seen.append)
        assert seen[0] == "idle baseline: 0.3/0.3 s"
        assert seen[-1].startswith("idle over 0.3 s: cpu ")
        # estimated CPU at idle: 20 W plus 10 W per busy core of our own (tiny) CPU use
        assert 19.0 <= idle.power_w["energy_cpu_j"] < 25.0  # windows differ by ms under load
        assert idle.sources["energy_cpu_j"] == "estimated-cpu-time"
        assert idle.power_w["energy_gpu_j"] is None
        ms.start()
        fields = ms.stop(idle)
        assert fields["energy_idle_j"] == pytest.approx(idle.power_w["energy_cpu_j"] * fields["meter_time_s"])
        assert fields["energy_net_j"] == pytest.approx(fields["energy_total_j"] - fields["energy_idle_j"])
    finally:
        ms.close()
