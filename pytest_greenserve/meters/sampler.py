"""The one background sampler thread, and the utilisation probes it reads.

Design:

* One thread serves every sampled meter (RAM %, RSS, GPU utilisation and memory, GPU power
  where NVML has no energy counter, RAPL wrap-around polling, the wattmeter's load). Probes
  are plain callables (:class:`~pytest_greenserve.meters.base.Probe`) so tests feed known
  series; :meth:`Sampler.tick` can be driven by hand with an injected clock.
* CPU % is *not* polled: like ``psutil.cpu_percent(interval=None)`` it is a ratio of the
  kernel's cumulative CPU-time counters between two calls. :class:`CpuPercent` takes the two
  calls at the sample's start and stop, which is exactly the time-weighted mean of any
  sampled series over the window, with no aliasing, and it does not share psutil's
  module-global "last call" state with other code that calls ``psutil.cpu_percent()``.
* The sampler measures its own cost: the CPU time of its thread (``time.thread_time()``
  inside the thread, plus the first and last ticks taken in the caller's thread) over the
  sample's wall time, as ``sampler_overhead_pct`` (percent of one core).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import psutil

from .base import Probe
from .proctree import tree_cpu_time_s, tree_pids

MB = 1024 * 1024


@dataclass
class Series:
    """Points ``(t_s, value)`` of one sampled quantity within one sample."""

    points: list[tuple[float, float]] = field(default_factory=list)

    def mean(self) -> float | None:
        return sum(v for _, v in self.points) / len(self.points) if self.points else None

    def max(self) -> float | None:
        return max(v for _, v in self.points) if self.points else None

    def integral(self, t_start: float | None = None, t_stop: float | None = None) -> float | None:
        """Trapezoidal integral over time (W -> J). With ``t_start``/``t_stop`` the first and
        last values are held flat out to the window's edges. None with fewer than 2 points
        (or 1 point and no window)."""
        pts = self.points
        if not pts or (len(pts) < 2 and (t_start is None or t_stop is None)):
            return None
        total = 0.0
        for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
            total += (t1 - t0) * (v0 + v1) / 2.0
        if t_start is not None and pts[0][0] > t_start:
            total += (pts[0][0] - t_start) * pts[0][1]
        if t_stop is not None and t_stop > pts[-1][0]:
            total += (t_stop - pts[-1][0]) * pts[-1][1]
        return total


@dataclass
class SamplerResult:
    series: dict[str, Series]
    wall_s: float
    thread_cpu_s: float
    ticks: int
    thread_ticks: int = 0
    overruns: int = 0
    errors: list[str] = field(default_factory=list)

    def mean(self, name: str) -> float | None:
        s = self.series.get(name)
        return s.mean() if s else None

    def max(self, name: str) -> float | None:
        s = self.series.get(name)
        return s.max() if s else None

    @property
    def hz_achieved(self) -> float | None:
        """Ticks per second the thread actually took (the forced first and last ticks, which
        bound the window, not counted); None for a window shorter than one tick."""
        if self.thread_ticks < 1 or self.wall_s <= 0:
            return None
        return self.thread_ticks / self.wall_s

    @property
    def overhead_pct(self) -> float | None:
        """The sampler's own CPU time over wall time, in percent of one core."""
        if self.wall_s <= 0:
            return None
        return 100.0 * self.thread_cpu_s / self.wall_s


class Sampler:
    """Reads probes at ``hz`` in one daemon thread between :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        probes: Iterable[Probe],
        hz: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        thread_clock: Callable[[], float] = time.thread_time,
    ):
        if not hz > 0:
            raise ValueError(f"sampler rate must be > 0 Hz, got {hz}")
        self.probes = list(probes)
        self.hz = float(hz)
        self.clock = clock
        self.thread_clock = thread_clock
        self._thread: threading.Thread | None = None
        self._stop_evt = threading.Event()
        self._reset()

    def _reset(self):
        self.series: dict[str, Series] = {}
        self._next_due = [-math.inf] * len(self.probes)
        self._ticks = 0
        self._thread_ticks = 0
        self._thread_cpu_s = 0.0
        self._overruns = 0
        self._errors: dict[str, str] = {}
        self._t0 = self.clock()

    # -- ticking --------------------------------------------------------------------------
    def tick(self, force: bool = False) -> None:
        """Read every probe that is due (all of them with ``force``) and record the values."""
        now = self.clock()
        for i, probe in enumerate(self.probes):
            if not force and now < self._next_due[i]:
                continue
            if probe.period_s:
                # due again one period later, with half a tick of slack so that a 1 s
                # probe on a 10 Hz clock runs every 10th tick, not every 11th
                self._next_due[i] = now + probe.period_s - 0.5 / self.hz
            try:
                values = probe.read()
            except Exception as exc:  # a probe must never kill the thread
                self._errors.setdefault(probe.name, f"{probe.name}: {type(exc).__name__}: {exc}")
                continue
            t = self.clock()
            for name, value in (values or {}).items():
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                self.series.setdefault(name, Series()).points.append((t, float(value)))
        self._ticks += 1

    def _run(self) -> None:
        cpu0 = self.thread_clock()
        period = 1.0 / self.hz
        next_t = self.clock() + period
        try:
            while not self._stop_evt.wait(max(0.0, next_t - self.clock())):
                self.tick()
                self._thread_ticks += 1
                next_t += period
                now = self.clock()
                if next_t < now:  # a slow probe overran: skip the missed ticks, don't burst
                    self._overruns += 1
                    next_t = now + period
        finally:
            self._thread_cpu_s += self.thread_clock() - cpu0

    # -- sample boundaries ----------------------------------------------------------------
    def start(self, threaded: bool = True) -> None:
        if self._thread is not None:
            raise RuntimeError("sampler already running")
        self._reset()
        cpu0 = self.thread_clock()
        self.tick(force=True)
        self._thread_cpu_s += self.thread_clock() - cpu0
        if threaded:
            self._stop_evt.clear()
            self._thread = threading.Thread(target=self._run, name="greenserve-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> SamplerResult:
        if self._thread is not None:
            self._stop_evt.set()
            self._thread.join()
            self._thread = None
        cpu0 = self.thread_clock()
        self.tick(force=True)
        self._thread_cpu_s += self.thread_clock() - cpu0
        return SamplerResult(
            series=self.series,
            wall_s=self.clock() - self._t0,
            thread_cpu_s=self._thread_cpu_s,
            ticks=self._ticks,
            thread_ticks=self._thread_ticks,
            overruns=self._overruns,
            errors=list(self._errors.values()),
        )


# -- probes ---------------------------------------------------------------------------------
class SystemMemoryProbe:
    """System-wide RAM % (``psutil.virtual_memory().percent``) and the process tree's RSS.

    The tree (this process and its children, recursively) is re-listed about once a second;
    RSS is summed over it every tick. ``proc_ram_pct`` is that RSS over total RAM.
    """

    def __init__(self, root_pid: int | None = None, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root_pid = root_pid
        self.refresh_s = refresh_s
        self.clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._listed_at = -math.inf
        self._total_b = psutil.virtual_memory().total

    def _tree(self) -> list[psutil.Process]:
        now = self.clock()
        if now - self._listed_at >= self.refresh_s:
            pids = tree_pids(self.root_pid)
            procs = {}
            for pid in pids:
                p = self._procs.get(pid)
                if p is None:
                    try:
                        p = psutil.Process(pid)
                    except psutil.Error:
                        continue
                procs[pid] = p
            self._procs = procs
            self._listed_at = now
        return list(self._procs.values())

    def read(self) -> dict[str, float | None]:
        ram_pct = _ram_pct()
        rss_b = 0
        for p in self._tree():
            try:
                rss_b += p.memory_info().rss
            except psutil.Error:  # ended since the last listing
                continue
        return {
            "ram_pct": ram_pct,
            "rss_mb": rss_b / MB,
            "proc_ram_pct": 100.0 * rss_b / self._total_b if self._total_b else None,
        }

    def probe(self) -> Probe:
        return Probe(read=self.read, name="psutil memory")


def _ram_pct() -> float:
    """System RAM in use, % (psutil's formula; on Linux read straight from /proc/meminfo,
    which costs a fifth of ``psutil.virtual_memory()``, parsing every field)."""
    try:
        total = avail = None
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemTotal:"):
                    total = int(line.split()[1])
                elif line.startswith(b"MemAvailable:"):
                    avail = int(line.split()[1])
                    break
        if total and avail is not None:
            return 100.0 * (total - avail) / total
    except (OSError, ValueError, IndexError):
        pass
    return psutil.virtual_memory().percent


def _busy_total_s(t) -> tuple[float, float]:
    """(busy, total) CPU seconds from ``psutil.cpu_times()``, as psutil.cpu_percent does."""
    total = sum(t)
    # on Linux guest time is already counted in user/nice
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    busy = total - t.idle - getattr(t, "iowait", 0.0)
    return busy, total


class CpuPercent:
    """CPU % over a window from cumulative counters (exact time-weighted means).

    ``cpu_pct``: system-wide busy share of all CPUs (0-100, as ``psutil.cpu_percent``).
    ``proc_cpu_pct``: the process tree's CPU time over wall time, in percent of **one** core
    (may exceed 100, as ``psutil.Process.cpu_percent`` and ``top``).
    """

    def __init__(self, cpu_times=psutil.cpu_times, tree_cpu_s: Callable[[], float] = tree_cpu_time_s,
                 clock: Callable[[], float] = time.monotonic):
        self.cpu_times = cpu_times
        self.tree_cpu_s = tree_cpu_s
        self.clock = clock
        self._start = None

    def start(self) -> None:
        self._start = (_busy_total_s(self.cpu_times()), self.tree_cpu_s(), self.clock())

    def stop(self) -> dict[str, float | None]:
        if self._start is None:
            return {"cpu_pct": None, "proc_cpu_pct": None}
        (busy0, total0), tree0, t0 = self._start
        (busy1, total1), tree1, t1 = _busy_total_s(self.cpu_times()), self.tree_cpu_s(), self.clock()
        d_total, d_busy, wall = total1 - total0, busy1 - busy0, t1 - t0
        cpu = 100.0 * min(max(d_busy / d_total, 0.0), 1.0) if d_total > 0 else None
        proc = 100.0 * max(tree1 - tree0, 0.0) / wall if wall > 0 else None
        self._start = None
        return {"cpu_pct": cpu, "proc_cpu_pct": proc}
