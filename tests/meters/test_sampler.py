from __future__ import annotations

import threading

import pytest

from pytest_greenserve.meters.base import Probe
from pytest_greenserve.meters.sampler import CpuPercent, Sampler, Series, SystemMemoryProbe


def series_probe(name, values):
    it = iter(values)
    return Probe(read=lambda: {name: next(it)}, name=name)


def test_sampler_means_and_peaks_of_a_known_series(clock):
    values = [10.0, 20.0, None, 30.0, 40.0, 100.0]  # None: a missing point, not a zero
    sampler = Sampler([series_probe("gpu_pct", values)], hz=10, clock=clock)
    sampler.start(threaded=False)
    for _ in range(4):
        clock.advance(0.1)
        sampler.tick()
    clock.advance(0.1)
    res = sampler.stop()
    assert res.mean("gpu_pct") == pytest.approx((10 + 20 + 30 + 40 + 100) / 5)
    assert res.max("gpu_pct") == 100.0
    assert res.ticks == 6
    assert res.wall_s == pytest.approx(0.5)
    assert res.mean("absent") is None


def test_sampler_reads_slow_probes_at_their_own_period(clock):
    fast, slow = [], []
    probes = [Probe(read=lambda: fast.append(1) or {}), Probe(read=lambda: slow.append(1) or {}, period_s=1.0)]
    sampler = Sampler(probes, hz=10, clock=clock)
    sampler.start(threaded=False)
    for _ in range(30):
        clock.advance(0.1)
        sampler.tick()
    sampler.stop()
    assert len(fast) == 32        # start, 30 ticks, stop
    assert len(slow) == 5         # start, at 1 s, 2 s, 3 s, and the forced final read


def test_a_failing_probe_is_reported_once_and_does_not_stop_the_others(clock):
    def boom():
        raise RuntimeError("sensor gone")
    sampler = Sampler([Probe(read=boom, name="bad"), series_probe("ram_pct", [1.0, 2.0, 3.0])], clock=clock)
    sampler.start(threaded=False)
    clock.advance(0.1)
    sampler.tick()
    res = sampler.stop()
    assert res.errors == ["bad: RuntimeError: sensor gone"]
    assert res.mean("ram_pct") == 2.0


def test_series_integral_trapezoids_and_holds_edges():
    s = Series([(1.0, 100.0), (2.0, 200.0), (4.0, 200.0)])
    assert s.integral() == pytest.approx(150 + 400)
    assert s.integral(0.5, 5.0) == pytest.approx(0.5 * 100 + 550 + 1.0 * 200)
    assert Series([(1.0, 5.0)]).integral() is None
    assert Series().integral(0, 1) is None


def test_cpu_percent_uses_cumulative_counters_over_the_window(clock):
    from collections import namedtuple

    T = namedtuple("scputimes", "user nice system idle iowait irq softirq steal guest guest_nice")
    times = iter([T(100, 0, 50, 800, 50, 0, 0, 0, 10, 0), T(130, 0, 60, 850, 60, 0, 0, 0, 20, 0)])
    tree = iter([5.0, 6.5])
    cp = CpuPercent(cpu_times=lambda: next(times), tree_cpu_s=lambda: next(tree), clock=clock)
    cp.start()
    clock.advance(2.0)
    out = cp.stop()
    # total delta = (30+10+50+10+10) - guest 10 = 100; busy = 100 - idle 50 - iowait 10 = 40
    assert out["cpu_pct"] == pytest.approx(40.0)
    assert out["proc_cpu_pct"] == pytest.approx(75.0)  # 1.5 CPU-s over 2 s, % of one core


def test_memory_probe_reads_ram_and_process_tree_rss():
    values = SystemMemoryProbe().read()
    assert 0 < values["ram_pct"] <= 100
    assert values["rss_mb"] > 1
    assert 0 < values["proc_ram_pct"] < 100


class CountingThreadClock:
    """A thread_time stand-in: each call is 1 ms of CPU later than the one before."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


def test_overhead_is_the_sampler_cpu_time_over_the_window(clock):
    sampler = Sampler([series_probe("ram_pct", [1.0, 2.0, 3.0])], hz=10, clock=clock,
                      thread_clock=CountingThreadClock())
    sampler.start(threaded=False)
    clock.advance(0.1)
    sampler.tick()
    clock.advance(0.1)
    res = sampler.stop()
    assert res.thread_cpu_s == pytest.approx(0.002)      # the forced first and last ticks, 1 ms each
    assert res.overhead_pct == pytest.approx(100 * 0.002 / 0.2)
    assert res.hz_achieved is None                       # no tick of the thread's own
    assert res.thread_ticks == 0 and res.ticks == 3


@pytest.mark.parametrize("read_s, overrun", [(0.004, False), (0.025, True)])
def test_threaded_sampler_bookkeeping_on_an_injected_clock(clock, read_s, overrun):
    """The real thread, timed by a fake clock that only the probe moves (each read takes
    ``read_s`` against a 10 ms period), so every figure follows from the tick count alone,
    however busy the machine is. The achieved rate on the real clock is measured by
    benchmarks/test_harness_overhead.py, not asserted."""
    reads = threading.Semaphore(0)

    def read():
        clock.advance(read_s)
        reads.release()
        return {"ram_pct": 50.0}

    sampler = Sampler([Probe(read=read, name="slow")], hz=100, clock=clock, thread_clock=CountingThreadClock())
    sampler.start()
    for _ in range(4):  # the forced first read, then three reads of the thread
        assert reads.acquire(timeout=60)
    res = sampler.stop()
    assert res.thread_ticks >= 3 and res.ticks == res.thread_ticks + 2
    assert res.overruns == (res.thread_ticks if overrun else 0)  # a slow probe skips ticks, never bursts
    assert res.wall_s == pytest.approx(read_s * res.ticks)
    assert res.hz_achieved == pytest.approx(res.thread_ticks / res.wall_s)
    assert res.thread_cpu_s == pytest.approx(0.003)     # start, thread, stop: 1 ms each on the fake clock
    assert res.overhead_pct == pytest.approx(100 * 0.003 / res.wall_s)
    assert len(res.series["ram_pct"].points) == res.ticks and res.mean("ram_pct") == 50.0
    assert res.errors == []
