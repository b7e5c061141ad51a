"""Do two saved runs reach the same conclusions? The check behind the default run's prompt count.

    python tools/compare_conclusions.py reports/run-164 reports/run-100
    python tools/compare_conclusions.py reports/run-164 --first 100   # the same run cut to its first 100 prompts

For each model: the fastest configuration (median ``time_s``) and the cheapest (median net
energy, else gross), and the significant pairs of the post-hoc tests (Games-Howell or Dunn)
for energy and time, as ``greenserve report`` computes them. Prints both sides and the
differences; exit status 0 when the conclusions agree, 1 when they differ.

``--first N`` derives the second run from the first: every sample keeps its first N requests
(the first N prompts are the same prompts whatever N, see prompts.make_prompts), its time is
the sum of their latencies, and its energies are scaled by the share of time kept. The energy
so derived is an approximation of a shorter window (a fixed cost per request is assumed), so
a check on a real run with ``--greenserve-prompts=N`` is the one to trust.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_greenserve.report import run_metrics  # noqa: E402
from pytest_greenserve.results import mark_error_prone, read_run, samples_frame  # noqa: E402
from pytest_greenserve.stats import analyze  # noqa: E402

ENERGY_FIELDS = ("energy_cpu_j", "energy_gpu_j", "energy_total_j", "energy_idle_j", "energy_net_j",
                 "energy_wall_j", "energy_wall_idle_j", "energy_wall_net_j", "energy_gpu_power_j")


def first_prompts(rows: list[dict], n: int) -> list[dict]:
    out = []
    for r in rows:
        lat = r.get("latencies_s") or []
        if len(lat) < n or not r.get("time_s"):
            raise SystemExit(f"{r.get('model')} {r.get('config')} r{r.get('repetition')}: {len(lat)} requests, "
                             f"fewer than {n}")
        kept = sum(lat[:n]) / sum(lat)
        time_s = r["time_s"] * kept
        d = dict(r, requests=n, latencies_s=lat[:n], ttfts_s=(r.get("ttfts_s") or [])[:n], time_s=time_s,
                 tokens_generated=round((r.get("tokens_generated") or 0) * n / len(lat)))
        for f in ENERGY_FIELDS:
            if d.get(f) is not None:
                d[f] = d[f] * kept
        tokens = d["tokens_generated"]
        d["ms_per_token"] = 1000 * time_s / tokens if tokens else None
        d["j_per_token"] = d["energy_total_j"] / tokens if tokens and d.get("energy_total_j") is not None else None
        out.append(d)
    return out


def conclusions(rows: list[dict], meta: dict) -> dict:
    metrics = run_metrics(meta)
    mark_error_prone(rows)
    a = analyze(samples_frame(rows, metrics), metrics)
    s = a.summary[~a.summary["error_prone"]]
    best = {}
    for (machine, model), g in s.groupby(["machine", "model"]):
        gi = g.set_index("config")
        best[(machine, model)] = {"fastest": gi["time_s"].idxmin(),
                                  "cheapest": gi[a.energy_metric].idxmin() if gi[a.energy_metric].notna().any() else None}
    st = a.stats
    sig = st[st["test"].isin(["games_howell", "dunn"]) & (st["significant"] == True)  # noqa: E712
             & st["metric"].isin([a.energy_metric, "time_s"])]
    pairs = {(r["machine"], r["model"], r["metric"], *sorted([r["config_a"], r["config_b"]]))
             for r in sig.to_dict("records")}
    return {"best": best, "pairs": pairs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a")
    ap.add_argument("run_b", nargs="?")
    ap.add_argument("--first", type=int, help="derive the second run from the first: its first N prompts")
    args = ap.parse_args(argv)
    rows_a, meta_a = read_run(Path(args.run_a))
    if args.first:
        rows_b, meta_b, label_b = first_prompts(rows_a, args.first), meta_a, f"first {args.first} prompts"
    elif args.run_b:
        (rows_b, meta_b), label_b = read_run(Path(args.run_b)), args.run_b
    else:
        ap.error("give a second run or --first N")
    a, b = conclusions(rows_a, meta_a), conclusions(rows_b, meta_b)
    same = True
    # machines differ between two runs' labels only by name: compare per model
    by_model = lambda d: {model: v for (_, model), v in d.items()}  # noqa: E731
    for model in sorted(set(by_model(a["best"])) | set(by_model(b["best"]))):
        x, y = by_model(a["best"]).get(model), by_model(b["best"]).get(model)
        agree = x == y
        same &= agree
        print(f"{model}: {args.run_a}: {x}; {label_b}: {y}" + ("" if agree else "   <-- differs"))
    pa = {p[1:] for p in a["pairs"]}
    pb = {p[1:] for p in b["pairs"]}
    print(f"significant pairs (energy and time): {len(pa)} in {args.run_a}, {len(pb)} in {label_b}, {len(pa & pb)} in both")
    for p in sorted(pa - pb):
        print(f"  only in {args.run_a}: {p}")
    for p in sorted(pb - pa):
        print(f"  only in {label_b}: {p}")
    same &= pa == pb
    print("same conclusions" if same else "conclusions differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
