"""The paper, side by side: its headline ratios against this run's, each with its noise.

The published figures live in ``data/paper.json`` (with the table or section each comes from);
this module reads them and sets each ratio — TORCH-CPU/TORCH-CUDA, ONNX-CPU/TORCH-CPU,
OV-CPU/TORCH-CPU, ONNX-CUDA/TORCH-CUDA, for energy and time — against the same ratio in a run:

* per machine and transport (``torch-cpu`` against ``torch-cuda``, ``torch-cpu@http`` against
  ``torch-cuda@http``), fp32 and one client only (the paper's setting);
* over all the run's models and per size category, on the models that ran both
  configurations (so both sides have the same model mix), and for a model the paper gives its
  own figures for (phi-2's time);
* the run's ratio is the median of A's samples over the median of B's (the paper summarises
  with medians); its 95% interval comes from a bootstrap that resamples each model's samples
  of each configuration (seeded);
* energy is gross energy, CPU + GPU (``energy_total_j``), as the paper's global energy is the
  meters' sum over the run; an estimated source is said so.

The paper publishes per-category medians for TORCH-CUDA only, so every ratio is the paper's
over all 12 models; a category row compares with that and says so. Verdicts: *agrees* (the
paper's ratio is inside the run's interval), *disagrees in size* (the paper's ratio is outside
the interval, which lies on the paper's side of 1, or spans 1: then no difference is shown here,
and one as large as the paper's is ruled out), *disagrees in direction*, or *cannot tell* (not
measured, or too few samples for an interval).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from .categories import category_label
from .sources import is_estimated

METRICS = {"energy": "energy_total_j", "time": "time_s"}
PAPER_KEYS = {"energy": "energy_j", "time": "time_s"}
WORDS = {"energy": ("costlier", "cheaper", "energy"), "time": ("slower", "faster", "time")}
RESAMPLES = 2000
SEED = 0
ENGINE_NAMES = {"torch": "TORCH", "onnx": "ONNX", "openvino": "OV", "jit": "JIT"}


def paper_facts() -> dict:
    """The published figures (``pytest_greenserve/data/paper.json``)."""
    return json.loads(resources.files("pytest_greenserve").joinpath("data/paper.json").read_text(encoding="utf-8"))


def config_name(config: str) -> str:
    """``onnx-cpu`` -> ``ONNX-CPU``, ``openvino-cpu`` -> ``OV-CPU`` (the paper's names)."""
    engine, _, provider = config.rpartition("-")
    return f"{ENGINE_NAMES.get(engine, engine.upper())}-{provider.upper()}"


@dataclass(frozen=True)
class PaperRow:
    machine: str
    transport: str  # "" (in-process) or "@http"
    scope: str  # "all models", "category 1", "phi2"
    ratio: str  # "TORCH-CPU/TORCH-CUDA"
    metric: str  # "energy" | "time"
    paper: float
    paper_scope: str  # what the paper's figure covers
    run: float | None
    low: float | None
    high: float | None
    models: int
    estimated: bool
    verdict: str  # agrees | disagrees in size | disagrees in direction | cannot tell
    words: str


def _ratio_ci(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float | None, float | None]:
    """Median of A's pooled samples over B's, and a 95% bootstrap interval resampling each
    model's samples of each side (None when a side has a model with a single sample)."""
    pool_a, pool_b = np.concatenate(list(a.values())), np.concatenate(list(b.values()))
    ratio = float(np.median(pool_a) / np.median(pool_b))
    if any(len(v) < 2 for v in (*a.values(), *b.values())):
        return ratio, None, None
    rng = np.random.default_rng(SEED)

    def resample(side):
        return np.concatenate([v[rng.integers(0, len(v), size=(RESAMPLES, len(v)))] for v in side.values()], axis=1)

    ratios = np.median(resample(a), axis=1) / np.median(resample(b), axis=1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return ratio, float(low), float(high)


def _times(x: float) -> str:
    return f"×{x:.3g}"


def verdict(paper: float, run: float | None, low: float | None, high: float | None, a: str, b: str,
            metric: str) -> tuple[str, str]:
    """(verdict, words) for one ratio A/B: the paper's against the run's and its interval."""
    more, less, _ = WORDS[metric]
    said = f"the paper: {a} {more if paper > 1 else less} than {b} ({_times(paper)})"
    if run is None or not math.isfinite(run):
        return "cannot tell", f"{said}; not measured here"
    interval = "" if low is None else f", 95% {low:.3g}–{high:.3g}"
    here = f"this run: {_times(run)}{interval}"
    if low is None:
        return "cannot tell", f"{said}; {here} (one sample on a side: no interval)"
    if low <= paper <= high:
        return "agrees", f"{said}; {here}"
    if low <= 1 <= high:
        return "disagrees in size", (f"{said}; {here}: no difference shown here, and one as large as the paper's "
                                     "is outside the interval")
    if (paper > 1) == (low > 1):
        gap = "a wider" if abs(math.log(run)) > abs(math.log(paper)) else "a narrower"
        return "disagrees in size", f"{said}; {here}: the same direction, {gap} gap than the paper's"
    return "disagrees in direction", f"{said}; {here}: {a} is {more if run > 1 else less} than {b} here"


def _prepare(rows) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    if df.empty or not {"engine", "provider", "config", "model"} <= set(df.columns):
        return pd.DataFrame()
    df = df.copy()
    dtype = df["dtype"].fillna("fp32") if "dtype" in df.columns else pd.Series("fp32", index=df.index)
    conc = pd.to_numeric(df["concurrency"], errors="coerce").fillna(1) if "concurrency" in df.columns else 1
    # the paper sent one request at a time: closed:1 (samples written before --greenserve-load have no load)
    load = df["load"].fillna("closed:1") if "load" in df.columns else pd.Series("closed:1", index=df.index)
    df = df.loc[(dtype == "fp32") & (conc <= 1) & (load == "closed:1")].copy()
    if df.empty:
        return df
    df["base"] = df["engine"].astype(str) + "-" + df["provider"].astype(str)
    df = df.loc[pd.Series([str(c).startswith(b) for c, b in zip(df["config"], df["base"])], index=df.index)].copy()
    if df.empty:
        return df
    df["transport"] = [str(c)[len(b):] for c, b in zip(df["config"], df["base"])]
    # what follows the base is the transport (compile-cuda@http) or a quantisation
    # (llamacpp-cpu:q8_0); the paper served unquantised weights, so only transports compare
    df = df.loc[[t == "" or t.startswith("@") for t in df["transport"]]].copy()
    if df.empty:
        return df
    df["machine"] = df["machine"].fillna("unknown").astype(str) if "machine" in df.columns else "unknown"
    if "category" not in df.columns:
        df["category"] = None
    for col in METRICS.values():
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else np.nan
    return df


def compare(rows, facts: dict | None = None) -> tuple[list[PaperRow], list[str]]:
    """The paper's headline ratios against the run's samples ``rows`` (dicts as saved).
    Returns the rows and notes (what could not be compared, and why)."""
    facts = facts or paper_facts()
    medians = facts["medians"]["configs"]
    df = _prepare(rows)
    out: list[PaperRow] = []
    notes: list[str] = []
    if df.empty:
        return out, ["no fp32, one-client samples: nothing to set against the paper"]
    for (machine, transport), g in df.groupby(["machine", "transport"], sort=True):
        present = set(g["base"])
        for a, b in facts["ratios"]:
            name = f"{config_name(a)}/{config_name(b)}"
            if not {a, b} <= present:
                missing = ", ".join(c + transport for c in (a, b) if c not in present)
                notes.append(f"{machine}: {name} not compared: {missing} not in this run")
                continue
            both = sorted(set(g.loc[g["base"] == a, "model"]) & set(g.loc[g["base"] == b, "model"]))
            if not both:
                notes.append(f"{machine}: {name} not compared: no model ran both {a}{transport} and {b}{transport}")
                continue
            scopes = [("all models", both)]
            cats = g[g["model"].isin(both)].groupby("model")["category"].first()
            for cat in sorted({c for c in cats if c is not None and not pd.isna(c)}):
                scopes.append((category_label(cat), [m for m in both if cats.get(m) == cat]))
            for metric, column in METRICS.items():
                paper = medians[a][PAPER_KEYS[metric]] / medians[b][PAPER_KEYS[metric]]
                for scope, models in scopes:
                    out.append(_row(g, machine, transport, scope, models, a, b, name, metric, column, paper,
                                    "all 12 models"))
                for model, figures in facts.get("models", {}).items():
                    if model in both and PAPER_KEYS[metric] in figures.get(a, {}) and \
                            PAPER_KEYS[metric] in figures.get(b, {}):
                        paper_model = figures[a][PAPER_KEYS[metric]] / figures[b][PAPER_KEYS[metric]]
                        out.append(_row(g, machine, transport, model, [model], a, b, name, metric, column,
                                        paper_model, model))
    return out, notes


def _row(g, machine, transport, scope, models, a, b, name, metric, column, paper, paper_scope) -> PaperRow:
    sides = []
    for config in (a, b):
        s = g[(g["base"] == config) & g["model"].isin(models)]
        sides.append({m: s.loc[s["model"] == m, column].dropna().to_numpy(dtype=float) for m in models})
    if any(len(v) == 0 for side in sides for v in side.values()):
        run = low = high = None
    else:
        run, low, high = _ratio_ci(*sides)
    estimated = metric == "energy" and any(
        is_estimated(src) for src in g.loc[g["base"].isin([a, b]), "energy_cpu_source"].dropna()
    ) if "energy_cpu_source" in g.columns else False
    v, words = verdict(paper, run, low, high, config_name(a), config_name(b), metric)
    return PaperRow(machine, transport, scope, name, metric, paper, paper_scope, run, low, high, len(models),
                    bool(estimated), v, words)


HEADERS = ["machine", "scope", "ratio", "metric", "paper", "this run (95% interval)", "verdict"]


def table_rows(rows: list[PaperRow]) -> list[list[str]]:
    out = []
    for r in rows:
        run = "not measured" if r.run is None else _times(r.run) + (
            "" if r.low is None else f" ({r.low:.3g}–{r.high:.3g})") + (" estimated" if r.estimated else "")
        out.append([r.machine + r.transport, f"{r.scope} ({r.models} model{'s' if r.models != 1 else ''})",
                    r.ratio, r.metric, f"{_times(r.paper)} ({r.paper_scope})", run, r.verdict])
    return out


def disagreements(rows: list[PaperRow]) -> list[str]:
    """One line per ratio where the run disagrees with the paper."""
    return [f"{r.machine}{r.transport}, {r.scope}: {r.ratio} {r.metric} — {r.verdict}: {r.words}"
            for r in rows if r.verdict.startswith("disagrees")]
