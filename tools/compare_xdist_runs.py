"""Compare a one-worker and a two-worker run of the same items (issue 18's measurement).

    python tools/compare_xdist_runs.py RUN_N1 RUN_N2 [--wall-s N1_S N2_S]

Per (model, configuration): samples, the GPU(s) they ran on, median ms/token and GPU energy
(J) with each side's spread (min-max), and whether the two-worker median lies within the
one-worker run's spread. The wall times (the sessions as the shell timed them) give the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_greenserve.results import read_samples  # noqa: E402


def by_item(rows):
    out = {}
    for r in rows:
        out.setdefault((r["model"], r["config"]), []).append(r)
    return out


def spread(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt(s, digits=3):
    return "-" if s is None else f"{s[0]:.{digits}f} [{s[1]:.{digits}f}-{s[2]:.{digits}f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("one")
    ap.add_argument("two")
    ap.add_argument("--wall-s", nargs=2, type=float, metavar=("N1_S", "N2_S"))
    args = ap.parse_args(argv)
    one, two = by_item(read_samples([Path(args.one)])), by_item(read_samples([Path(args.two)]))
    print("model | config | n1/n2 | GPU n1 / n2 | ms/token n1 | ms/token n2 | within | GPU J n1 | GPU J n2 | within")
    for key in sorted(set(one) | set(two)):
        a, b = one.get(key, []), two.get(key, [])
        row = [key[0], key[1], f"{len(a)}/{len(b)}",
               f"{','.join(sorted({str(r.get('gpu_index')) for r in a}))} / "
               f"{','.join(sorted({str(r.get('gpu_index')) for r in b}))}"]
        for metric, digits in (("ms_per_token", 3), ("energy_gpu_j", 1)):
            sa, sb = spread(a, metric), spread(b, metric)
            within = "-" if sa is None or sb is None else ("yes" if sa[1] <= sb[0] <= sa[2] else "no")
            row += [fmt(sa, digits), fmt(sb, digits), within]
        print(" | ".join(row))
    if args.wall_s:
        n1, n2 = args.wall_s
        print(f"wall time: -n 1 {n1:.0f} s, -n 2 {n2:.0f} s: {n1 / n2:.2f}x faster on two GPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
