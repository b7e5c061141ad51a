"""Latency objectives (``--greenserve-slo=ttft:200ms,tpot:50ms``) and the per-request figures
they judge: time to first token, time per output token, end-to-end latency.

Goodput, as the field counts it (vLLM's benchmark_serving, GuideLLM, AIPerf): the requests per
second of the window that met every objective. A request whose figure for a named objective is
unknown (an engine or transport that cannot time its first token) cannot be judged, so the
sample's goodput is None: "cannot tell", never counted as met or missed.

Pure: no pytest, nothing else from the package.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

#: objective name -> what it bounds, per request
OBJECTIVES = {"ttft": "time to first token", "tpot": "time per output token after the first",
              "e2e": "end-to-end latency"}

_ITEM = re.compile(r"^\s*(ttft|tpot|e2e)\s*:\s*([0-9]*\.?[0-9]+)\s*(ms|s)\s*$")


def parse_slo(text: str) -> dict[str, float]:
    """``ttft:200ms,tpot:50ms`` -> ``{"ttft_s": 0.2, "tpot_s": 0.05}``; empty -> {}. ValueError
    (one line) on anything else."""
    out: dict[str, float] = {}
    for item in (t for t in text.split(",") if t.strip()):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"expected OBJECTIVE:VALUE(ms|s) items, e.g. ttft:200ms,tpot:50ms, with OBJECTIVE "
                             f"one of {', '.join(OBJECTIVES)}; got {item.strip()!r}")
        name, value, unit = m.groups()
        out[f"{name}_s"] = float(value) / (1000 if unit == "ms" else 1)
    return out


def tpot_s(latency_s: float | None, ttft_s: float | None, tokens: int) -> float | None:
    """Time per output token after the first: (end-to-end - TTFT) / (tokens - 1); None when
    TTFT is unknown or there is one token only."""
    if latency_s is None or ttft_s is None or tokens < 2:
        return None
    return (latency_s - ttft_s) / (tokens - 1)


def requests_meeting(slo: Mapping[str, float], latencies_s: Sequence[float], ttfts_s: Sequence[float | None],
                     tokens: Sequence[int]) -> int | None:
    """How many requests met every objective of ``slo``; None when one cannot be judged."""
    met = 0
    for latency, ttft, n in zip(latencies_s, ttfts_s, tokens):
        figures = {"ttft_s": ttft, "tpot_s": tpot_s(latency, ttft, n), "e2e_s": latency}
        ok = True
        for key, bound in slo.items():
            value = figures.get(key)
            if value is None:
                if key == "tpot_s" and n < 2 and ttft is not None:
                    continue  # one token: no time per output token to bound
                return None
            ok = ok and value <= bound
        met += ok
    return met


def describe(slo: Mapping[str, float]) -> str:
    return ",".join(f"{k[:-2]}:{v * 1000:g}ms" for k, v in slo.items())
