"""A fake /sys/class/powercap tree under tmp_path, and a hand-driven clock."""

from __future__ import annotations

from pathlib import Path


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def write_zone(root: Path, dirname: str, name: str, energy_uj: int, max_uj: int = 262_143_328_850) -> Path:
    """One powercap zone laid out as in sysfs (flat: subzones also at the top level)."""
    zone = root / dirname
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def set_energy(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


def make_powercap(root: Path) -> Path:
    """package-0 with core and dram subzones, plus psys and an mmio duplicate (both ignored)."""
    write_zone(root, "intel-rapl:0", "package-0", 1_000_000)
    write_zone(root, "intel-rapl:0:0", "core", 500_000)
    write_zone(root, "intel-rapl:0:1", "dram", 2_000_000, max_uj=65_712_999_613)
    write_zone(root, "intel-rapl:1", "psys", 9_000_000)
    write_zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)
    return root
