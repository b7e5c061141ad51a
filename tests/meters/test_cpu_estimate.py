from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_greenserve.meters.cpu_estimate import (CpuEstimateMeter, estimate_cpu_energy_j,
                                                   parse_cpu_watts)
from pytest_greenserve.meters.proctree import tree_cpu_time_s, tree_pids


def test_cpu_estimate_follows_the_documented_formula(clock):
    cpu_s = iter([100.0, 102.5])  # the process tree used 2.5 CPU-seconds
    meter = CpuEstimateMeter(cpu_w_per_core=12.0, cpu_idle_w=15.0, cpu_time_s=lambda: next(cpu_s), clock=clock)
    meter.start()
    clock.advance(4.0)            # over 4 s of wall time
    [reading] = meter.stop()
    assert reading.value == pytest.approx(15.0 * 4.0 + 12.0 * 2.5)  # 90 J
    assert reading.field == "energy_cpu_j" and reading.unit == "J"
    assert reading.source == "estimated-cpu-time"
    assert reading.estimated


def test_cpu_estimate_formula_function():
    assert estimate_cpu_energy_j(busy_core_s=3.0, wall_s=10.0, cpu_w_per_core=10.0, cpu_idle_w=20.0) == 230.0
    assert estimate_cpu_energy_j(0.0, 10.0, 10.0, 0.0) == 0.0


@pytest.mark.parametrize("text, expected", [
    ("10", (10.0, 20.0)), ("8.5,12", (8.5, 12.0)), (" 10 , 0 ", (10.0, 0.0)), ("off", None),
])
def test_parse_cpu_watts(text, expected):
    assert parse_cpu_watts(text) == expected


@pytest.mark.parametrize("text", ["", "a", "1,2,3", "-1"])
def test_parse_cpu_watts_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_cpu_watts(text)


def test_tree_cpu_time_counts_children_even_after_they_end():
    before = tree_cpu_time_s()
    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass"
    proc = subprocess.Popen([sys.executable, "-c", burn])
    assert proc.pid in tree_pids()
    proc.wait()
    used = tree_cpu_time_s() - before
    assert used >= 0.3  # the child's 0.3 s moved into our children_user/children_system
