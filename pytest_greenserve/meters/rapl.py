"""CPU energy from Intel/AMD RAPL counters through Linux powercap (``/sys/class/powercap``).

Zones used: every ``package-N`` zone and every ``dram`` zone (top level or a package's
subzone). ``core``/``uncore`` are parts of the package and ``psys`` covers the whole
platform (it would double count), so they are left out; so are the ``intel-rapl-mmio``
duplicates of the package zones.

Each zone's ``energy_uj`` counter wraps at ``max_energy_range_uj`` (about 262 kJ, so every
~20 minutes at 200 W). The meter reads the counters at start and stop and, through the
sampler, about once a second in between, adding up wrap-corrected deltas: any number of
wraps within a sample is counted as long as no two happen between two reads.

Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694). The reason this meter
gives says how to allow it.

Units: counters in uJ (``_uj``), results in J.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from .base import Meter, MeterUnavailable, Probe, Reading

DEFAULT_ROOT = Path("/sys/class/powercap")
_ZONE_DIR = re.compile(r"^intel-rapl:\d+(:\d+)?$")


@dataclass(frozen=True)
class RaplZone:
    path: Path
    name: str  # "package-0", "dram"
    max_energy_range_uj: int

    @property
    def domain(self) -> str:
        return "dram" if self.name.startswith("dram") else "package"

    def read_energy_uj(self) -> int:
        return _read_int(self.path / "energy_uj")


def _read_int(path: Path) -> int:
    with open(path, encoding="ascii") as fh:
        return int(fh.read().strip())


def explain_read_error(path: Path, exc: OSError) -> str:
    """One line saying why a RAPL file cannot be read and how to fix it."""
    if isinstance(exc, PermissionError):
        return (
            f"RAPL counter not readable ({path}: permission denied; root-only since Linux 5.10); "
            f"fix: run as root, or `sudo chmod o+r {path.parent.parent}/intel-rapl:*/energy_uj "
            f"{path.parent.parent}/intel-rapl:*:*/energy_uj` (until reboot)"
        )
    return f"RAPL counter not readable ({path}: {exc.strerror or exc})"


def find_zones(root: Path = DEFAULT_ROOT) -> list[RaplZone]:
    """The package and DRAM zones under ``root``; raises MeterUnavailable with the reason."""
    root = Path(root)
    if not root.is_dir():
        raise MeterUnavailable(f"no RAPL ({root} absent)")
    dirs = {p.name: p for p in root.iterdir() if _ZONE_DIR.match(p.name)}
    # real sysfs lists subzones at the top level too; a nested tree (intel-rapl:0/intel-rapl:0:0) also works
    for p in list(dirs.values()):
        for sub in p.iterdir() if p.is_dir() else ():
            if _ZONE_DIR.match(sub.name):
                dirs.setdefault(sub.name, sub)
    zones = []
    for dirname in sorted(dirs):
        path = dirs[dirname]
        try:
            name = (path / "name").read_text(encoding="ascii").strip()
        except OSError:
            continue
        if not (name.startswith("package") or name.startswith("dram")):
            continue
        try:
            max_uj = _read_int(path / "max_energy_range_uj")
            _read_int(path / "energy_uj")
        except OSError as exc:
            raise MeterUnavailable(explain_read_error(Path(exc.filename or path / "energy_uj"), exc)) from exc
        except ValueError as exc:
            raise MeterUnavailable(f"RAPL zone {path} has an unreadable counter ({exc})") from exc
        zones.append(RaplZone(path, name, max_uj))
    if not any(z.domain == "package" for z in zones):
        raise MeterUnavailable(f"no RAPL package zone under {root}")
    return zones


def unavailable_reason(root: Path = DEFAULT_ROOT) -> str | None:
    try:
        find_zones(root)
    except MeterUnavailable as exc:
        return str(exc)
    return None


def is_available(root: Path = DEFAULT_ROOT) -> bool:
    return unavailable_reason(root) is None


def wrap_delta_uj(before_uj: int, after_uj: int, max_energy_range_uj: int) -> int:
    """Energy between two reads of a counter that wraps at ``max_energy_range_uj``. Units: uJ."""
    delta = after_uj - before_uj
    if delta < 0:
        delta += max_energy_range_uj
    return delta


class RaplMeter(Meter):
    """CPU energy (package + DRAM where present) from RAPL. Field ``energy_cpu_j``."""

    name = "cpu energy"
    field = "energy_cpu_j"

    def __init__(self, root: Path = DEFAULT_ROOT, poll_period_s: float = 1.0):
        self.root = Path(root)
        self.poll_period_s = poll_period_s
        self._reason = None
        self.zones: list[RaplZone] = []
        try:
            self.zones = find_zones(self.root)
        except MeterUnavailable as exc:
            self._reason = str(exc)
        self._lock = threading.Lock()
        self._last_uj: list[int] | None = None
        self._acc_uj: list[int] = []
        self._error: str | None = None

    @property
    def source(self) -> str:
        domains = sorted({z.domain for z in self.zones}, key=["package", "dram"].index)
        return "rapl-" + "+".join(domains)

    def unavailable_reason(self) -> str | None:
        return self._reason

    def start(self) -> None:
        with self._lock:
            self._error = None
            self._acc_uj = [0] * len(self.zones)
            try:
                self._last_uj = [z.read_energy_uj() for z in self.zones]
            except OSError as exc:
                self._last_uj = None
                self._error = explain_read_error(Path(exc.filename or self.root), exc)

    def poll(self) -> None:
        """Fold the counters' progress since the last read into the sample (wrap-safe)."""
        with self._lock:
            if self._last_uj is None:
                return
            try:
                now = [z.read_energy_uj() for z in self.zones]
            except OSError as exc:
                self._error = explain_read_error(Path(exc.filename or self.root), exc)
                self._last_uj = None
                return
            for i, z in enumerate(self.zones):
                self._acc_uj[i] += wrap_delta_uj(self._last_uj[i], now[i], z.max_energy_range_uj)
            self._last_uj = now

    def _poll_probe(self) -> dict:
        self.poll()
        return {}

    def probes(self) -> list[Probe]:
        return [Probe(read=self._poll_probe, period_s=self.poll_period_s, name="rapl poll")]

    def stop(self) -> list[Reading]:
        self.poll()
        with self._lock:
            ok = self._last_uj is not None and self._error is None
            value = sum(self._acc_uj) / 1e6 if ok else None
            self._last_uj = None
        return [Reading(self.field, value, "J", self.source)]

    def sample_notes(self) -> list[str]:
        return [f"cpu energy: {self._error}"] if self._error else []
