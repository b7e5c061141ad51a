from __future__ import annotations

import time

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
    assert out == {"energy_idle_j": None, "energy_net_j": None, "energy_idle_source": None}


def test_wall_energy_gets_its_own_idle_and_net():
    idle = IdleBaseline(10.0, {"energy_wall_j": 80.0}, {"energy_wall_j": "wattmeter-netio-load"})
    out, _ = subtract_idle({"energy_wall_j": 1000.0, "energy_total_j": None}, idle, time_s=10.0)
    assert out["energy_wall_idle_j"] == 800.0 and out["energy_wall_net_j"] == 200.0


def estimate_only(tmp_path, **kw):
    """The meters of a machine without RAPL, GPU or wattmeter: the CPU-time estimate alone."""
    from fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml

    return MeterSet(MeterSettings(powercap_root=tmp_path / "none", gpu_indices=(),
                                  nvml=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND),
                                  cpu_watts_per_core=10.0, cpu_idle_watts=20.0, **kw))


def test_measure_idle_reports_progress_and_gives_the_estimate_its_constant(tmp_path):
    ms = estimate_only(tmp_path)
    seen = []
    try:
        idle = ms.measure_idle(0.3, progress=seen.append)
        assert seen[0] == "idle baseline: 0.3/0.3 s"
        assert seen[-1].startswith("idle over 0.3 s: cpu 20.00 W (the estimated-cpu-time model's constant)")
        # the estimate's idle is its model's 20 W, not what the window read (20 W + our own CPU time)
        assert idle.power_w["energy_cpu_j"] == 20.0 and idle.modelled == {"energy_cpu_j"}
        assert idle.sources["energy_cpu_j"] == "estimated-cpu-time"
        assert idle.power_w["energy_gpu_j"] is None
        ms.start()
        fields = ms.stop(idle)
        assert fields["energy_idle_j"] == pytest.approx(20.0 * fields["meter_time_s"])
        assert fields["energy_net_j"] == pytest.approx(fields["energy_total_j"] - fields["energy_idle_j"])
    finally:
        ms.close()


def test_no_idle_window_is_taken_when_no_meter_reads_power(tmp_path):
    from pytest_greenserve.runner import Runner

    ms = estimate_only(tmp_path)
    slept = []
    ms.measure_idle = lambda *a, **k: pytest.fail("an idle window was measured")
    runner = Runner(warmup=0, new_tokens=1, idle_s=5.0, settle_s=1.0, cooldown_s=0.0, progress=slept.append,
                    sleep=slept.append)
    try:
        assert not ms.reads_power()
        assert any(n.startswith("idle: no meter here reads power") and "energy_cpu_j 20 W (estimated-cpu-time)" in n
                   for n in ms.notes())
        idle = runner.idle_baseline("m on torch-cpu", ms)
        assert slept == []  # no settling and no progress line: no time
        assert idle.duration_s == 0 and idle.power_w == {"energy_cpu_j": 20.0}
        assert "model's constant" in idle.describe()
        ms.start()
        time.sleep(0.05)
        fields = ms.stop(idle)
        # net energy still computed, from the model's constant, and labelled estimated
        assert fields["energy_idle_source"] == "model-constant"
        assert fields["energy_total_source"] == "estimated-cpu-time"
        assert fields["energy_idle_j"] == pytest.approx(20.0 * fields["meter_time_s"])
        assert fields["energy_net_j"] == pytest.approx(fields["energy_total_j"] - 20.0 * fields["meter_time_s"])
    finally:
        ms.close()


def test_an_idle_window_is_still_measured_where_rapl_reads_power(tmp_path, powercap, clock):
    from pytest_greenserve.runner import Runner

    ms = MeterSet(MeterSettings(powercap_root=powercap, gpu_indices=(), nvml=None, cpu_watts_per_core=None))
    measured = []
    ms.measure_idle = lambda seconds, progress=None: measured.append(seconds) or "measured"
    runner = Runner(warmup=0, new_tokens=1, idle_s=5.0, settle_s=1.0, cooldown_s=0.0, progress=lambda m: None,
                    sleep=lambda s: None)
    try:
        assert ms.reads_power()
        assert runner.idle_baseline("m on torch-cpu", ms) == "measured" and measured == [5.0]
    finally:
        ms.close()


def test_a_measured_gpu_idle_and_a_modelled_cpu_idle_are_named_apart():
    idle = IdleBaseline(10.0, {"energy_cpu_j": 20.0, "energy_gpu_j": 60.0},
                        {"energy_cpu_j": "estimated-cpu-time", "energy_gpu_j": "nvml-counter"},
                        modelled=frozenset({"energy_cpu_j"}))
    out, _ = subtract_idle(sample(cpu=300.0, gpu=900.0, cpu_src="estimated-cpu-time"), idle, time_s=5.0)
    assert out["energy_idle_j"] == pytest.approx(400.0)
    assert out["energy_idle_source"] == "model-constant+idle-window"
