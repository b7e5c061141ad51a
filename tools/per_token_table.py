"""The per-token table of saved runs: per (replica, configuration), medians over repetitions of
ms/token, GPU J/token (NVML, measured), CPU J/token (the CPU-time estimate where there is no
RAPL: labelled), the roofline (memory floor, how far above it, kernels and GPU busy time per
token) and quality against the fp32 reference (exact and tie-aware match, the reference's NLL
excess of the continuation, the native path's, the bootstrap lower bound, the verdict).

    python tools/per_token_table.py RUN/samples.jsonl[.gz] [MORE ...]
"""
from __future__ import annotations

import gzip
import json
import statistics as st
import sys


def med(values):
    values = [v for v in values if v is not None]
    return st.median(values) if values else None


def cell(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def main(paths) -> int:
    rows = []
    for path in paths:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["model"], r["config"]), []).append(r)
    torch_ms = {(m, c.split(":", 1)[1] if ":" in c else ""): med(r["ms_per_token"] for r in g)
                for (m, c), g in groups.items() if c.split(":")[0] == "torch-cuda"}
    print("| replica | configuration | n | ms/token median (range) | × vs torch-cuda | GPU J/token (NVML) | "
          "CPU J/token | memory floor ms/token | floor ÷ ms/token | kernels per token | GPU busy ms/token | "
          "bound by | match with fp32 exact / tie-aware | NLL excess (nats/token) | torch's in that dtype | "
          "lower bound of the difference | quality |")
    print("|" + " --- |" * 17)
    for (model, config), g in sorted(groups.items()):
        ms = [r["ms_per_token"] for r in g]
        m = med(ms)
        dtype = config.split(":", 1)[1] if ":" in config else ""
        base = torch_ms.get((model, dtype))
        gpu = med(r["energy_gpu_j"] / r["tokens_generated"] for r in g if r.get("energy_gpu_j") is not None)
        cpu = med(r["energy_cpu_j"] / r["tokens_generated"] for r in g if r.get("energy_cpu_j") is not None)
        cpu_est = any(str(r.get("energy_cpu_source", "")).startswith("estimated") for r in g)
        floor = med(r.get("memory_floor_ms_per_token") for r in g)
        verdict = ("matched" if all(r.get("quality_matched") for r in g) else
                   "not matched (error-prone)" if any(r.get("error_prone") for r in g) else "not matched")
        print(f"| {model} | {config} | {len(g)} | {m:.3f} ({min(ms):.3f}-{max(ms):.3f}) | "
              f"{cell(base / m if base else None, 2)} | {cell(gpu, 4)} | {cell(cpu, 4)}{' (estimated)' if cpu_est else ''} | "
              f"{cell(floor)} | {cell(floor / m if floor else None, 2)} | {cell(med(r.get('kernels_per_token') for r in g), 0)} | "
              f"{cell(med(r.get('gpu_busy_ms_per_token') for r in g))} | {g[0].get('bound_by') or '-'} | "
              f"{cell(med(r.get('match_rate') for r in g), 2)} / {cell(med(r.get('match_rate_tie_aware') for r in g), 2)} | "
              f"{cell(med(r.get('nll_excess_nats_per_token') for r in g), 4)} | "
              f"{cell(med(r.get('native_nll_excess_nats_per_token') for r in g), 4)} | "
              f"{cell(med(r.get('nll_vs_native_low_nats_per_token') for r in g), 4)} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
