"""The sample schema and the results store.

One *sample* is one run of all prompts against one model in one serving configuration.
Each finished sample is appended at once to ``reports/<run-id>/samples.jsonl`` (flushed and
fsynced), so an interrupted session keeps every finished sample.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Iterable

# Columns of samples.csv, in order. Units are in the names. Values that could not be
# measured are empty (None), never 0.
SAMPLE_COLUMNS = [
    "run_id", "machine", "model", "weights", "engine", "provider", "config", "repetition", "order",
    "requests", "new_tokens", "tokens_generated", "prompt_tokens_mean",
    "time_s", "latency_mean_s", "latency_p50_s", "latency_p95_s", "ttft_mean_s", "ms_per_token",
    "match_rate", "error_prone",
    # energy (issue 3): joules over the whole sample; per-token is derived by division
    "energy_cpu_j", "energy_gpu_j", "energy_total_j", "energy_idle_j", "energy_net_j",
    "energy_cpu_source", "energy_gpu_source", "energy_total_source", "j_per_token",
    # cross-check of the GPU counter: NVML power sampled by the sampler and integrated
    "energy_gpu_power_j",
    # optional wall-socket meter (never added to the total)
    "energy_wall_j", "energy_wall_source", "energy_wall_idle_j", "energy_wall_net_j",
    # utilisation: means over the sample
    "cpu_pct", "ram_pct", "proc_cpu_pct", "proc_ram_pct", "gpu_pct", "gpu_mem_util_pct", "gpu_mem_used_pct",
    "rss_peak_mb", "gpu_mem_peak_mb", "sampler_hz", "sampler_overhead_pct",
    "meter_time_s", "started_at", "finished_at",
]
# Fields kept only in samples.jsonl (lists and nested objects).
JSON_ONLY = ["latencies_s", "ttfts_s", "token_ids_digest", "versions", "machine_info", "meter_notes"]


def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{socket.gethostname().split('.')[0]}-{os.getpid()}"


def machine_info() -> dict:
    import psutil

    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def machine_label(info: dict) -> str:
    """How a machine is named in reports: hostnames alone collide (every VM here is 'vm')."""
    hardware = info.get("gpu") or f"{info.get('cpu_count')} CPUs"
    return f"{info.get('hostname')} ({hardware})"


class ResultsStore:
    """Append-only store of samples for one run, in ``<report_dir>/<run_id>/``."""

    def __init__(self, report_dir: Path, run_id: str):
        self.report_dir = Path(report_dir)
        self.run_id = run_id
        self.run_dir = self.report_dir / run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.samples_path = self.run_dir / "samples.jsonl"
        self._point_latest()

    def _point_latest(self):
        latest = self.report_dir / "latest"
        tmp = self.report_dir / f".latest-{os.getpid()}"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(self.run_id, target_is_directory=True)
            os.replace(tmp, latest)
        except OSError:  # file systems without symlinks: a text file naming the run
            (self.report_dir / "LATEST").write_text(self.run_id + "\n")

    def append(self, sample: dict) -> None:
        line = json.dumps(sample, default=_json_default, allow_nan=False)
        with open(self.samples_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_meta(self, meta: dict) -> None:
        (self.run_dir / "run.json").write_text(json.dumps(meta, indent=2, default=_json_default))


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_samples(paths: Iterable[Path]) -> list[dict]:
    """Read samples from run directories or samples.jsonl files; a torn last line is skipped."""
    rows = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "samples.jsonl"
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    # a session killed mid-write leaves at most one torn line at the end
                    continue
    return rows


def mark_error_prone(rows: list[dict]) -> list[dict]:
    """A configuration whose outputs ever disagreed with torch's is error-prone for that model.

    Every sample of such a (machine, model, configuration) is marked, in place, so the
    analysis excludes the configuration as a whole (the paper dropped JIT for producing
    wrong completions). A sample already marked stays marked; samples without a match rate
    (no reference) and no mark are left as they are.
    """
    def key(r):
        return r.get("machine"), r["model"], r["config"]

    bad = {key(r) for r in rows
           if r.get("error_prone") is True or (r.get("match_rate") is not None and r["match_rate"] < 1.0)}
    for r in rows:
        if key(r) in bad:
            r["error_prone"] = True
        elif r.get("match_rate") is not None:
            r["error_prone"] = False
    return rows


def samples_frame(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows)
    for col in SAMPLE_COLUMNS:
        if col not in df.columns:
            df[col] = None
    return df


def write_csv(rows: list[dict], path: Path) -> None:
    df = samples_frame(rows)
    df[SAMPLE_COLUMNS].to_csv(path, index=False)
