"""The energy-against-load table of a sweep run (``--greenserve-load=sweep``): per configuration
and offered rate, the median over repetitions of J/token, of the median request latency, of
the achieved request rate, and the achieved share of the offered requests. Where a GPU was
metered (NVML), its share of J/token is a column of its own: that part is measured, while the
CPU part on a machine without RAPL is the power model's estimate (and labels the total so).

    python tools/load_curve.py REPORT_DIR/latest/samples.jsonl[.gz]
"""
from __future__ import annotations

import gzip
import json
import statistics as st
import sys


def main(path: str) -> int:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["model"], r["config"].split("/")[0], r.get("offered_rate_rps") or 0.0), []).append(r)
    gpu = any(r.get("energy_gpu_j") is not None for r in rows)
    print("| model | configuration | load | runs | J/token |" + (" GPU J/token (NVML) |" if gpu else "")
          + " latency p50 (ms) | achieved req/s | achieved % of offered |")
    print("| --- " * (8 + gpu) + "|")
    for (model, config, rate), rs in sorted(groups.items()):
        jt = st.median(r["j_per_token"] for r in rs)
        est = " (estimated)" if any(str(r.get("energy_total_source", "")).startswith("estimated") for r in rs) else ""
        gpu_cell = ""
        if gpu:
            per_token = [r["energy_gpu_j"] / r["tokens_generated"] for r in rs
                         if r.get("energy_gpu_j") is not None and r.get("tokens_generated")]
            gpu_cell = f" {st.median(per_token):.4f} |" if per_token else " - |"
        lat = st.median(st.median(r["latencies_s"]) for r in rs) * 1e3
        rps = st.median(r["requests_per_s"] for r in rs)
        pct = [r.get("achieved_rate_pct") for r in rs if r.get("achieved_rate_pct") is not None]
        load = "poisson:%g" % rate if rate else "closed:1"
        print(f"| {model} | {config} | {load} | {len(rs)} | {jt:.4f}{est} |{gpu_cell} {lat:.1f} | {rps:.2f} | "
              + (f"{st.median(pct):.0f}% |" if pct else "- |"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
