"""Synthetic samples for the statistics, report and CLI tests (import as ``report.synth``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pytest_greenserve.models import REGISTRY

# config -> (median time s, energy J); CUDA runs are faster and cheaper, as in the paper.
BASE = {"torch-cpu": (30.0, 2600.0), "onnx-cpu": (22.0, 2000.0), "openvino-cpu": (14.0, 2200.0),
        "torch-cuda": (2.0, 360.0), "onnx-cuda": (5.5, 800.0)}


def sample(model: str, config: str, rep: int, *, time_s: float, energy_j: float, machine: str = "box-a",
           run_id: str = "run-a", cpu_source: str | None = "estimated-cpu-time", gpu_source: str | None = None,
           error_prone: bool = False, gpu: bool | None = None, tokens: int = 164 * 16,
           category: int | None = -1) -> dict:
    """One sample; ``category`` -1 (the default): the model's size category from the model registry."""
    engine, _, provider = config.rpartition("-")
    if category == -1:
        category = REGISTRY[model].category if model in REGISTRY else None
    gpu = (provider == "cuda") if gpu is None else gpu
    cpu_j = energy_j * (0.3 if gpu else 1.0)
    gpu_j = energy_j - cpu_j if gpu else None
    idle = 0.1 * energy_j
    return dict(
        run_id=run_id, machine=machine, model=model, category=category, weights="replica", engine=engine,
        provider=provider, config=config, repetition=rep, order=rep, requests=164, new_tokens=16,
        tokens_generated=tokens,
        time_s=time_s, ms_per_token=time_s / tokens * 1000, ttft_mean_s=time_s / 164 / 4,
        match_rate=0.4 if error_prone else 1.0, error_prone=error_prone,
        energy_cpu_j=cpu_j, energy_gpu_j=gpu_j, energy_total_j=energy_j, energy_idle_j=idle,
        energy_net_j=energy_j - idle, energy_cpu_source=cpu_source,
        energy_gpu_source=(gpu_source or "nvml-counter") if gpu else None,
        j_per_token=(energy_j - idle) / tokens,
        cpu_pct=80.0 - 60 * gpu + rep % 3, ram_pct=20.0 + 2 * (engine != "torch") + 0.1 * rep,
        gpu_pct=(70.0 + rep % 4) if gpu else None, gpu_mem_util_pct=(30.0 + rep % 2) if gpu else None,
        gpu_mem_used_pct=(12.0 + 0.1 * rep) if gpu else None, rss_peak_mb=900.0, gpu_mem_peak_mb=None,
        versions={"pandas": "3.1.1"}, machine_info={"hostname": machine, "cpu_count": 2},
    )


def make_rows(models=("mini-gpt2", "phi2"), configs=("torch-cpu", "onnx-cpu", "openvino-cpu"), reps: int = 10,
              seed: int = 0, skew: bool = False, machine: str = "box-a", run_id: str = "run-a", **kw) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for mi, model in enumerate(models):
        scale = 1.0 + mi
        for config in configs:
            t, e = BASE.get(config, (10.0, 1000.0))
            for rep in range(reps):
                if skew:
                    ft, fe = rng.lognormal(0, 0.6), rng.lognormal(0, 0.6)
                else:
                    ft, fe = rng.normal(1, 0.04), rng.normal(1, 0.04)
                rows.append(sample(model, config, rep, time_s=t * scale * ft, energy_j=e * scale * fe,
                                   machine=machine, run_id=run_id, **kw))
    return rows


def write_run(report_dir: Path, rows: list[dict], run_id: str) -> Path:
    from pytest_greenserve.results import ResultsStore

    store = ResultsStore(report_dir, run_id)
    for r in rows:
        store.append(r)
    return store.run_dir
