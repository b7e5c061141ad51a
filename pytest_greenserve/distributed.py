"""pytest-xdist: one device per worker, one run whatever the number of workers. No pytest here.

``plugin.py`` calls these from its xdist hooks; this module holds the decisions:

* **GPUs.** The controller lists the GPUs to hand out (:func:`gpu_pool`: ``--greenserve-gpus``,
  else its ``CUDA_VISIBLE_DEVICES``, else every GPU NVML sees) and gives each worker one of its
  own (:class:`GpuAssigner`; a worker that replaces a crashed one gets the GPU that was freed).
  The worker sets ``CUDA_VISIBLE_DEVICES`` to it in ``pytest_configure``, before anything starts
  CUDA, and ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` unless set, so that CUDA's index and NVML's (the
  meters', nvidia-smi's) name the same card. More workers than GPUs, with CUDA configurations
  selected, is refused (:func:`too_many_workers`): two workers on one card would each be charged
  the other's energy.
* **Grouping.** Every item of one (model, configuration) carries one ``xdist_group``
  (:func:`group_name`), so its load, warm-up and repetitions run on one worker.
* **CPU windows.** :class:`WorkerCoordinator` is a cross-process reader-writer lock (``flock``) in
  a directory the controller creates: an item of a CPU configuration holds it exclusively from
  its setup to its teardown (load, reference, warm-up, idle window, sample), every other item
  holds it shared, so no two workers' items ever run beside a CPU item (a waiting CPU item
  blocks new shared holders, so it is not starved). With ``--greenserve-cpu-overlap=yes`` CPU
  items hold it shared too. Either way every sample records the workers that were busy during
  its item (``concurrent_with``), read from per-worker state files, and a CPU sample with any is
  flagged ``concurrent``; RAPL and wall-meter energy, which cover the whole socket or machine,
  get the source suffix ``:shared`` when another worker was busy (the CPU-time estimate is per
  process tree and stays as it is).
* **One run.** Every worker writes its samples into the controller's run directory (the run id
  travels in ``workerinput``; :class:`~pytest_greenserve.results.ResultsStore` appends under a
  file lock); the controller reads them all at session end, so its reports, statistics, gate
  and baseline see every sample, those of a worker that crashed included.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

#: workerinput keys (the controller sets them in pytest_configure_node)
RUN_ID_KEY = "greenserve_run_id"
GPU_KEY = "greenserve_gpu"  # a CUDA_VISIBLE_DEVICES entry, or None: leave the environment alone
COORD_KEY = "greenserve_coord_dir"
#: workeroutput key (the worker sets it at session end)
OUTPUT_KEY = "greenserve"
#: energy sources that cover the whole socket or machine, not the process tree
SHARED_SOURCE_FIELDS = ("energy_cpu_source", "energy_wall_source")
SHARED_SUFFIX = ":shared"


# ---------------------------------------------------------------- the controller: GPUs per worker

def parse_gpu_list(text: str) -> tuple[str, ...] | None:
    """``--greenserve-gpus``: ``0,1`` (NVML/nvidia-smi indices) or ``GPU-``/``MIG-`` UUIDs; empty: None."""
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        return None
    bad = [t for t in items if not (t.isdigit() or t.upper().startswith(("GPU-", "MIG-")))]
    if bad:
        raise ValueError(f"expected GPU indices or GPU-/MIG- UUIDs, e.g. 0,1 (not {bad[0]!r})")
    if len(set(items)) != len(items):
        raise ValueError("a GPU is listed twice")
    return items


def gpu_pool(chosen: Sequence[str] | None, cuda_visible_devices: str | None, nvml_count: int | None) -> list[str]:
    """The GPUs the workers share out: ``chosen`` (--greenserve-gpus), else the controller's
    ``CUDA_VISIBLE_DEVICES`` entries, else every GPU NVML counts (0..n-1), else none."""
    if chosen:
        return list(chosen)
    if cuda_visible_devices is not None:
        from .meters.nvml import parse_cuda_visible_devices

        return parse_cuda_visible_devices(cuda_visible_devices) or []
    return [str(i) for i in range(nvml_count or 0)]


def too_many_workers(workers: int, gpus: Sequence[str], uses_cuda: bool) -> str | None:
    """Why ``workers`` cannot each have a GPU of their own, or None."""
    if not uses_cuda or not gpus or workers <= len(gpus):
        return None
    return (f"greenserve: -n {workers} starts {workers} workers but {len(gpus)} GPU(s) are given "
            f"({','.join(gpus)}); each worker measures a GPU of its own: use -n {len(gpus)} (or -n auto), "
            f"--greenserve-gpus, or --greenserve-configs without cuda")


def auto_workers(gpus: Sequence[str], uses_cuda: bool) -> int:
    """``-n auto``: one worker per GPU when CUDA configurations are selected, else one (CPU items
    never run beside each other: more workers would only wait)."""
    return max(1, len(gpus)) if uses_cuda else 1


class GpuAssigner:
    """Which worker holds which GPU; a worker that goes down frees its GPU for its replacement."""

    def __init__(self, gpus: Sequence[str]):
        self.gpus = list(gpus)
        self.holder: dict[str, str] = {}  # gpu -> worker id

    def take(self, worker: str) -> str | None:
        for gpu, holder in self.holder.items():
            if holder == worker:
                return gpu
        free = [g for g in self.gpus if g not in self.holder]
        if not free:
            return None
        self.holder[free[0]] = worker
        return free[0]

    def release(self, worker: str) -> None:
        self.holder = {g: w for g, w in self.holder.items() if w != worker}


def worker_environment(gpu: str | None, environ: dict) -> dict:
    """What a worker sets in its environment before CUDA starts (nothing without a GPU)."""
    if gpu is None:
        return {}
    env = {"CUDA_VISIBLE_DEVICES": gpu}
    if gpu.isdigit() and not environ.get("CUDA_DEVICE_ORDER"):
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's index = NVML's = nvidia-smi's
    return env


def group_name(model: str, config_name: str) -> str:
    """The ``xdist_group`` of every item of one (model, configuration)."""
    return f"greenserve:{model}:{config_name}"


def case_id_in(nodeid: str, ids) -> str | None:
    """The greenserve case id (one of ``ids``) inside a collected node id
    (``...[mini-gpt2-torch-cpu-r1]``, beside any parameter of the user's own, with or without
    xdist's ``@group`` suffix), or None; the longest wins (``llamacpp-cpu:q8_0`` before
    ``llamacpp-cpu``)."""
    inside = nodeid[nodeid.find("[") + 1: nodeid.rfind("]")] if "[" in nodeid else ""
    found = [i for i in ids if i == inside or inside.startswith(i + "-") or inside.endswith("-" + i)
             or f"-{i}-" in inside]
    return max(found, key=len) if found else None


def item_group(nodeid: str, groups: dict[str, str]) -> str | None:
    """The group of a collected greenserve item, or None: ``groups`` maps each case id
    (``mini-gpt2-torch-cpu-r1``) to its :func:`group_name`. Read from the item's parameter id,
    not from xdist's ``loadgroup`` suffix (``...]@group``), which pytest 9.2's structured node
    ids drop silently (pytest-dev/pytest-xdist#1386)."""
    case = case_id_in(nodeid, groups)
    return groups[case] if case is not None else None


def dist_given(args: Sequence[str]) -> bool:
    """Whether the command line names a ``--dist`` mode itself (then it is left as given)."""
    return any(a == "--dist" or a.startswith("--dist=") or a in ("-d", "--distload") for a in args)


def make_coord_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="greenserve-xdist-"))


def remove_coord_dir(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the workers: who runs beside whom

def _flock():
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, every sample is checked for overlap all the same
        return None
    return fcntl


class WorkerCoordinator:
    """One worker's side of the cross-process lock and of the busy registry (see the module)."""

    def __init__(self, directory: Path, worker: str, cpu_overlap: bool = False):
        self.directory = Path(directory)
        self.worker = worker
        self.cpu_overlap = cpu_overlap
        self.directory.mkdir(parents=True, exist_ok=True)
        self._episodes = 0
        self._others_at_start: dict[str, tuple[bool, int]] | None = None
        self._write_state(busy=False)

    # -- the state files: "<worker>.json" = {"pid", "busy", "episodes"} -------------------------
    def _write_state(self, busy: bool) -> None:
        path = self.directory / f"{self.worker}.json"
        tmp = self.directory / f".{self.worker}.json.tmp"
        tmp.write_text(json.dumps({"pid": os.getpid(), "busy": busy, "episodes": self._episodes}))
        os.replace(tmp, path)

    def others(self) -> dict[str, tuple[bool, int]]:
        """Every other live worker: (busy now, busy episodes so far). A dead worker's file is ignored."""
        out = {}
        for path in self.directory.glob("*.json"):
            name = path.stem
            if name == self.worker:
                continue
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            busy = bool(state.get("busy")) and _alive(state.get("pid"))
            out[name] = (busy, int(state.get("episodes") or 0))
        return out

    # -- one item -----------------------------------------------------------------------------
    @contextmanager
    def item(self, provider: str) -> Iterator[None]:
        """Hold the lock for one item: exclusive for a CPU configuration (unless cpu_overlap),
        shared otherwise; the item counts as busy for the others while it runs."""
        exclusive = provider == "cpu" and not self.cpu_overlap
        with self._locked(exclusive):
            self._episodes += 1
            self._write_state(busy=True)
            self._others_at_start = self.others()
            try:
                yield
            finally:
                self._write_state(busy=False)

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        fcntl = _flock()
        if fcntl is None:
            yield
            return
        with open(self.directory / "turnstile.lock", "a+") as turnstile, \
                open(self.directory / "items.lock", "a+") as items:
            # the turnstile orders the waiters: a CPU item waiting for the exclusive lock holds it,
            # so no new shared holder slips in ahead of it (flock itself prefers no one)
            fcntl.flock(turnstile, fcntl.LOCK_EX)
            try:
                fcntl.flock(items, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            try:
                yield
            finally:
                fcntl.flock(items, fcntl.LOCK_UN)

    def concurrent_with(self) -> list[str]:
        """The other workers busy at any moment of the current item: busy when it began, busy
        now, or busy in between (their episode count moved)."""
        start = self._others_at_start or {}
        now = self.others()
        busy = set()
        for name in set(start) | set(now):
            b0, e0 = start.get(name, (False, 0))
            b1, e1 = now.get(name, (False, e0))
            if b0 or b1 or e1 != e0:
                busy.add(name)
        return sorted(busy)

    def annotate(self, sample: dict) -> None:
        """The worker's marks on a sample, just before it is saved."""
        others = self.concurrent_with()
        annotate_sample(sample, self.worker, others)


def annotate_sample(sample: dict, worker: str, others: Sequence[str]) -> None:
    """``worker``, ``concurrent_with`` (comma-separated ids, '' when none), the ``concurrent``
    flag (a CPU configuration's sample measured while another worker was busy), and the
    ``:shared`` suffix on whole-socket and whole-machine energy sources when others were busy."""
    sample["worker"] = worker
    sample["concurrent_with"] = ",".join(others)
    sample["concurrent"] = bool(others) if sample.get("provider") == "cpu" else False
    if not others:
        return
    total = sample.get("energy_total_source")
    for key in SHARED_SOURCE_FIELDS:
        src = sample.get(key)
        if not src or str(src).startswith("estimated") or str(src).endswith(SHARED_SUFFIX):
            continue
        sample[key] = f"{src}{SHARED_SUFFIX}"
        if key == "energy_cpu_source" and total and str(total).startswith(str(src)):
            sample["energy_total_source"] = f"{src}{SHARED_SUFFIX}{str(total)[len(str(src)):]}"
    sample["meter_notes"] = list(sample.get("meter_notes") or []) + [
        f"xdist: measured while worker(s) {', '.join(others)} were busy; whole-socket energy (RAPL) and "
        f"whole-machine figures (wall energy, system CPU %) include their work"]


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the controller: one run

def worker_output(samples: Sequence[dict], meter_notes: Sequence[str], overrides: dict) -> dict:
    """What a worker hands the controller at its end (workeroutput: plain JSON-able values)."""
    return {"samples": len(samples), "meter_notes": list(meter_notes),
            "overrides": {f"{m}\t{c}": fail for (m, c), fail in overrides.items()}}


def merged_meter_notes(outputs: Sequence[dict], samples: Sequence[dict]) -> list[str]:
    """Every worker's meter notes, once each, in order (from workeroutput, else the samples)."""
    notes: list[str] = []
    for out in outputs:
        notes += out.get("meter_notes") or []
    if not outputs:
        for s in samples:
            notes += [n for n in s.get("meter_notes") or [] if not n.startswith("xdist:")]
    return list(dict.fromkeys(notes))


def worker_overrides(outputs: Sequence[dict]) -> dict[tuple[str, str], str]:
    """The (model, configuration) -> ``greenserve(fail=...)`` markers the workers collected."""
    out: dict[tuple[str, str], str] = {}
    for o in outputs:
        for key, fail in (o.get("overrides") or {}).items():
            model, _, config = key.partition("\t")
            out.setdefault((model, config), fail)
    return out


def workers_summary(samples: Sequence[dict]) -> dict:
    """run.json's ``workers``: per worker, its samples and the GPU(s) they were measured on."""
    out: dict[str, dict] = {}
    for s in samples:
        w = s.get("worker")
        if not w:
            continue
        entry = out.setdefault(w, {"samples": 0, "gpus": []})
        entry["samples"] += 1
        dev = {k: s.get(k) for k in ("gpu_index", "gpu_uuid", "gpu_name") if s.get(k) is not None}
        if dev and dev not in entry["gpus"]:
            entry["gpus"].append(dev)
    return out
