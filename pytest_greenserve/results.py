"""The sample schema and the results store.

One *sample* is one run of all prompts against one model in one serving configuration.
Each finished sample is appended at once to ``reports/<run-id>/samples.jsonl`` (flushed and
fsynced), so an interrupted session keeps every finished sample.

Every sample and ``run.json`` carry ``schema_version`` (:data:`SCHEMA_VERSION`); samples
written before it existed have none and read as version 0. :func:`read_run` and
:func:`read_samples` are the one reader of saved runs, for the session and ``greenserve report``.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from .fsutil import write_text_atomically
from .metrics import Metric, metrics_or_builtin

# Version of the sample and run.json layout this code writes and understands. Bump it when a
# field changes meaning or unit (not when one is added), so that an older pytest-greenserve
# refuses runs it would misread.
SCHEMA_VERSION = 1

# Columns of samples.csv, in order: who and what was measured, the metrics (one column per
# registered metric, in the registry's order; see metrics.py), then where the numbers come from.
# Units are in the names. Values that could not be measured are empty (None), never 0.
CONTEXT_COLUMNS = [
    "run_id", "machine", "model", "category", "weights", "engine", "provider", "config", "transport", "concurrency",
    "stream", "dtype", "load", "repetition", "order",
    "requests", "requests_sent", "requests_offered", "new_tokens", "tokens_generated", "prompt_tokens_mean", "error_prone", "quality_matched",
]
# Words about the metrics, derived by the sample builder (roofline.bound_by: what limits a GPU sample).
VERDICT_COLUMNS = ["bound_by"]
# How the target was built, outside every sample: its load (exports, traces, compilation) in
# seconds, and for engines that compile (Engine.load_info) the mode and the compile/capture seconds.
SETUP_COLUMNS = ["load_s", "compile_mode", "compile_s", "capture_s"]
# Where the sample ran: the pytest-xdist worker (None in a one-process session), the other
# workers busy meanwhile (comma-separated; '' when none), and the GPU(s) it measured (NVML index,
# UUID, name; None without a GPU meter).
DEVICE_COLUMNS = ["worker", "concurrent_with", "gpu_index", "gpu_uuid", "gpu_name"]
PROVENANCE_COLUMNS = [
    "energy_cpu_source", "energy_gpu_source", "energy_total_source", "energy_idle_source", "energy_wall_source",
    "started_at", "finished_at",
]


def sample_columns(metrics: dict[str, Metric] | None = None) -> list[str]:
    """The columns of samples.csv for this metric registry (None: the built-in metrics)."""
    names = metrics_or_builtin(metrics)
    return list(dict.fromkeys([*CONTEXT_COLUMNS, *names, *VERDICT_COLUMNS, *SETUP_COLUMNS, *DEVICE_COLUMNS,
                                *PROVENANCE_COLUMNS]))



def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{socket.gethostname().split('.')[0]}-{os.getpid()}"


def machine_info(nvml=None) -> dict:
    """This machine: host, platform, CPUs, RAM, Python, ``gpu`` (the first GPU this process may
    use) and ``gpus`` (every GPU of the host; ``nvml``: an injected pynvml-like module, tests)."""
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
            info["gpu"] = torch.cuda.get_device_name(0)  # the first GPU this process may use
    except ImportError:
        pass
    from .meters.nvml import host_gpus

    gpus = host_gpus(nvml)
    if gpus:  # every GPU of the host, whatever CUDA_VISIBLE_DEVICES says: index, UUID, name
        info["gpus"] = gpus
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
        """Append one sample (stamped with ``schema_version`` unless it has one), flushed and fsynced.

        Several processes (pytest-xdist workers) may append to one run: each line is written under
        an exclusive file lock, and a line left torn by a writer killed mid-write (found at the
        end of the file, under the lock, so its writer is gone) is cut off first, so that it never
        ends up in the middle of the file."""
        if "schema_version" not in sample:
            sample = {"schema_version": SCHEMA_VERSION, **sample}
        data = (json.dumps(sample, default=_json_default, allow_nan=False) + "\n").encode("utf-8")
        fd = os.open(self.samples_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(fd)
            _cut_torn_tail(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def write_meta(self, meta: dict) -> None:
        if "schema_version" not in meta:
            meta = {"schema_version": SCHEMA_VERSION, **meta}
        # atomically: an interrupted write leaves the old run.json or the new one, never a torn one
        write_text_atomically(self.run_dir / "run.json", json.dumps(meta, indent=2, default=_json_default))


def _lock(fd: int) -> None:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
    except (ImportError, OSError):  # no flock here (not POSIX, some network file systems): one writer
        pass


def _cut_torn_tail(fd: int) -> None:
    """Truncate the file after its last newline (a torn last line of a writer that died)."""
    size = before = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    tail = 1 << 16
    pos = size
    while pos > 0:
        start = max(0, pos - tail)
        chunk = os.pread(fd, pos - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            break
        pos = start
    else:
        os.ftruncate(fd, 0)
    _stderr_note(f"samples.jsonl: cut a torn last line of {before - os.fstat(fd).st_size} bytes (its writer was "
                 f"killed mid-write; its item failed)")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class SamplesError(ValueError):
    """A saved run that cannot be read; the message is one line, ``file:line: reason``."""


# Keys every sample has (``engine`` stands in for ``config`` in hand-made files).
REQUIRED_KEYS = ("model", "config")


def _stderr_note(message: str) -> None:
    print(f"greenserve: {message}", file=sys.stderr)


def samples_file(path: Path) -> Path:
    """The samples.jsonl of a run directory, or the file itself; SamplesError if there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.is_file():
        raise SamplesError(f"{path}: no such file (give a run directory or a samples.jsonl file)")
    return path


def _schema_version(obj: dict, where: str) -> int:
    version = obj.get("schema_version", 0)  # written before schema_version existed: version 0
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise SamplesError(f"{where}: bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise SamplesError(f"{where}: schema_version {version} is newer than this pytest-greenserve reads "
                           f"({SCHEMA_VERSION}); upgrade pytest-greenserve")
    return version


def read_sample_file(path: Path, note: Callable[[str], None] | None = None) -> list[dict]:
    """The samples of one run directory or samples.jsonl file, as saved (a ``.gz`` file, as the
    measurements in docs/data are kept, is read through gzip).

    Only a torn *last* line (a session interrupted mid-write) is tolerated: it is skipped
    and ``note`` (default: a line on stderr) says so. Any other line that is not a JSON
    object with ``model`` and ``config``, or whose ``schema_version`` is newer than
    :data:`SCHEMA_VERSION`, raises :class:`SamplesError` naming ``file:line``. Samples
    without ``schema_version`` (older runs) are accepted.
    """
    note = note or _stderr_note
    file = samples_file(path)
    try:
        data = file.read_bytes()
        if file.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as exc:  # gzip: BadGzipFile is an OSError, a cut file an EOFError
        raise SamplesError(f"{file}: cannot read ({exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc})") from None
    numbered = [(n, line.strip()) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    rows = []
    for i, (n, raw) in enumerate(numbered):
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if i == len(numbered) - 1:
                note(f"{file}:{n}: skipping a torn last line (an interrupted session)")
                continue
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise SamplesError(f"{file}:{n}: corrupt sample line ({why})") from None
        if not isinstance(row, dict) or any(k not in row and not (k == "config" and "engine" in row)
                                            for k in REQUIRED_KEYS):
            raise SamplesError(f"{file}:{n}: not a greenserve sample (needs {', '.join(REQUIRED_KEYS)})")
        _schema_version(row, f"{file}:{n}")
        rows.append(row)
    return rows


def read_meta(path: Path, note: Callable[[str], None] | None = None) -> dict:
    """run.json beside a run's samples ({} if absent; an unreadable one is noted and ignored)."""
    note = note or _stderr_note
    path = Path(path)
    run_json = (path if path.is_dir() else path.parent) / "run.json"
    if not run_json.is_file():
        return {}
    try:
        meta = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        note(f"{run_json}: unreadable, ignored")
        return {}
    if not isinstance(meta, dict):
        note(f"{run_json}: not a JSON object, ignored")
        return {}
    _schema_version(meta, str(run_json))
    return meta


def read_run(path: Path, note: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Samples (see :func:`read_sample_file`) and run.json metadata of one saved run."""
    return read_sample_file(path, note), read_meta(path, note)


def read_samples(paths: Iterable[Path], note: Callable[[str], None] | None = None) -> list[dict]:
    """The samples of several run directories or samples.jsonl files, in order (see :func:`read_sample_file`)."""
    rows = []
    for path in paths:
        rows += read_sample_file(path, note)
    return rows


def sample_error_prone(r: dict) -> bool | None:
    """One sample's verdict: not quality-matched (``quality.py``) where it was scored; else, for
    samples without a quality score (older runs, no reference log-probabilities), a mark it
    already carries or, in fp32, a tie-aware match rate below 1 (the strict ``match_rate`` where
    there is no tie-aware one). A sample of another dtype without a score cannot be told (None):
    its tokens depart from fp32 by design."""
    matched = r.get("quality_matched")
    if matched is not None:
        return not matched
    if r.get("error_prone") is True:
        return True
    if "quality_matched" in r and (r.get("dtype") or "fp32") != "fp32":
        return None
    tie_aware = r.get("match_rate_tie_aware")
    decisive = tie_aware if tie_aware is not None else r.get("match_rate")
    return None if decisive is None else decisive < 1.0


def mark_error_prone(rows: list[dict]) -> list[dict]:
    """A configuration is error-prone for a model when any of its samples is
    (:func:`sample_error_prone`: its output quality is worse than torch eager's in the same
    dtype beyond the bootstrap bound).

    Every sample of such a (machine, model, configuration) is marked, in place, so the
    analysis excludes the configuration as a whole (the paper dropped JIT for producing
    wrong completions); the others get False where any of their samples could be judged.
    Samples that cannot be judged (no reference) and no mark are left as they are.
    """
    def key(r):
        return r.get("machine"), r["model"], r["config"]

    verdicts: dict = {}
    for r in rows:
        v = sample_error_prone(r)
        if v is not None:
            verdicts[key(r)] = verdicts.get(key(r), False) or v
    for r in rows:
        if key(r) in verdicts:
            r["error_prone"] = verdicts[key(r)]
    return rows


def samples_frame(rows: list[dict], metrics: dict[str, Metric] | None = None):
    """The samples as a DataFrame with every column of :func:`sample_columns` (missing ones None)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    # samples written before --greenserve-dtype have no dtype: they were all fp32
    df["dtype"] = df["dtype"].fillna("fp32") if "dtype" in df.columns else "fp32"
    missing = [col for col in sample_columns(metrics) if col not in df.columns]
    if missing:  # added at once: one column at a time fragments the frame (pandas warns)
        df = pd.concat([df, pd.DataFrame({col: [None] * len(df) for col in missing}, index=df.index, dtype=object)],
                       axis=1)
    return df


def write_csv(rows: list[dict], path: Path, metrics: dict[str, Metric] | None = None) -> None:
    columns = sample_columns(metrics)
    samples_frame(rows, metrics)[columns].to_csv(path, index=False)
