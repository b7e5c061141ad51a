"""The energy/time Pareto front of the configurations."""

from __future__ import annotations


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (energy, time) no other point beats on both (ties on both count as not beaten)."""
    front = []
    for name, (e, t) in points.items():
        dominated = any(
            (e2 <= e and t2 <= t) and (e2 < e or t2 < t)
            for other, (e2, t2) in points.items() if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])
