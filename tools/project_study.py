"""A measured projection of a long study's wall time from a short probe run of the same items.

The probe runs every (model, configuration) once on few prompts (``--greenserve-runs=1
--greenserve-prompts=8``), with the workers the study will have. From its timeline each item
gives two measured figures:

* **seconds per prompt**: the sample's ``time_s`` over the probe's prompts;
* **set-up seconds**: the gap on its worker between the previous item's end (or the session's
  start, read from the run id) and this sample's start, less the probe's idle window and
  settling. That is building the replica, loading, compiling, the reference tokens, warm-up,
  and the roofline profile.

The study's item then takes ``set-up + runs x (prompts x seconds per prompt + idle + settle)``,
and the first item of each (model, provider) computes the reference tokens of the prompts the
probe did not have: that provider's torch sample time per prompt, times the missing prompts.
Items are handed, in plan order, to the worker that frees first (how the pull scheduler of
``-n N`` hands out groups). An item the probe did not reach is **estimated** from the measured
item of the same configuration nearest in parameter count, scaled by the parameter ratio, and
labelled so in every line it appears in, with the estimated share of the total.

    python tools/project_study.py PROBE/samples.jsonl[.gz] --prompts 164 --runs 3 --workers 2 \\
        --models paper --configs torch-cuda,compile-cuda
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import heapq
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass
class Item:
    model: str
    config: str
    params: float  # parameters, as the paper labels the model (110M -> 1.1e8)
    prompt_s: float  # seconds per prompt of one sample
    setup_s: float  # set-up before the item's first sample
    estimated_from: str | None = None  # the measured model it was scaled from, where not measured


def params_of(label: str) -> float:
    """'110M' -> 1.1e8, '2.7B' -> 2.7e9."""
    scale = {"M": 1e6, "B": 1e9}[label[-1].upper()]
    return float(label[:-1]) * scale


def run_start(run_id: str) -> float:
    """The session's start, from its run id (``YYYYmmdd-HHMMSS-host-pid``). The id is in the
    measuring machine's local time: read it under the same time zone (the lent machines and
    the VM both run in UTC)."""
    stamp = "-".join(run_id.split("-")[:2])
    return dt.datetime.strptime(stamp, "%Y%m%d-%H%M%S").timestamp()


def probe_items(samples: list[dict], params: dict[str, float], start_s: float, idle_s: float,
                settle_s: float) -> dict[tuple[str, str], Item]:
    """The measured items of a probe run: seconds per prompt and set-up seconds from its timeline."""
    items: dict[tuple[str, str], Item] = {}
    by_worker: dict[str, list[dict]] = {}
    for s in samples:
        by_worker.setdefault(s.get("worker") or "main", []).append(s)
    for rows in by_worker.values():
        rows.sort(key=lambda s: s["started_at"])
        previous_end = start_s
        for s in rows:
            setup = max(0.0, s["started_at"] - previous_end - idle_s - settle_s)
            prompts = s["requests"]
            items[(s["model"], s["config"])] = Item(s["model"], s["config"], params[s["model"]],
                                                    s["time_s"] / prompts, setup)
            previous_end = s["finished_at"]
    return items


def estimate(model: str, config: str, params: float, measured: dict[tuple[str, str], Item]) -> Item | None:
    """An item the probe did not reach: the same configuration's measured item nearest in
    parameters, its times scaled by the parameter ratio. None when the configuration has none."""
    same = [it for (m, c), it in measured.items() if c == config]
    if not same:
        return None
    near = min(same, key=lambda it: abs(it.params - params))
    ratio = params / near.params
    return Item(model, config, params, near.prompt_s * ratio, near.setup_s * ratio, estimated_from=near.model)


def item_seconds(item: Item, prompts: int, runs: int, idle_s: float, settle_s: float) -> float:
    return item.setup_s + runs * (prompts * item.prompt_s + idle_s + settle_s)


def schedule(durations: list[float], workers: int) -> list[float]:
    """Each worker's busy seconds when items go, in order, to the worker that frees first."""
    heap = [(0.0, w) for w in range(workers)]
    busy = [0.0] * workers
    for d in durations:
        t, w = heapq.heappop(heap)
        busy[w] = t + d
        heapq.heappush(heap, (busy[w], w))
    return busy


def reference_seconds(plan: list[Item], prompts: int, probe_prompts: int) -> dict[tuple[str, str], float]:
    """The reference tokens of the prompts the probe did not have, charged to the first item of
    each (model, provider): the torch configuration's seconds per prompt on that provider."""
    extra: dict[tuple[str, str], float] = {}
    seen = set()
    torch = {(it.model, it.config.split("-")[-1]): it.prompt_s for it in plan if it.config.startswith("torch-")}
    for it in plan:
        key = (it.model, it.config.split("-")[-1])
        if key in seen or key not in torch:
            continue
        seen.add(key)
        extra[(it.model, it.config)] = torch[key] * max(0, prompts - probe_prompts)
    return extra


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples")
    ap.add_argument("--prompts", type=int, default=164)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--idle", type=float, default=5.0, help="the study's idle window per sample, s")
    ap.add_argument("--settle", type=float, default=1.0, help="the study's settling per sample, s")
    ap.add_argument("--probe-idle", type=float, default=None, help="the probe's (default: its run.json)")
    ap.add_argument("--probe-settle", type=float, default=None)
    ap.add_argument("--models", default="paper")
    ap.add_argument("--configs", default="torch-cuda,compile-cuda")
    args = ap.parse_args(argv)

    from pytest_greenserve.engines.static_decoder import unsupported_reason
    from pytest_greenserve.models import PAPER_MODELS, spec_for

    path = Path(args.samples)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt") as fh:
        samples = [json.loads(line) for line in fh if line.strip()]
    opts = {}
    run_json = path.parent / "run.json"
    if run_json.exists():
        opts = json.loads(run_json.read_text()).get("options", {})
    probe_idle = args.probe_idle if args.probe_idle is not None else opts.get("idle_s", 0.0)
    probe_settle = args.probe_settle if args.probe_settle is not None else opts.get("settle_s", 0.0)
    probe_prompts = samples[0]["requests"]

    names = [s.name for s in PAPER_MODELS] if args.models == "paper" else args.models.split(",")
    specs = {n: spec_for(n) for n in names}
    params = {n: params_of(specs[n].params) for n in names}
    measured = probe_items(samples, params, run_start(samples[0]["run_id"]), probe_idle, probe_settle)

    plan: list[Item] = []
    cannot: list[str] = []
    for name in names:  # plan order: models, then configurations
        for config in args.configs.split(","):
            if config.startswith("compile-") and unsupported_reason(specs[name].architecture):
                cannot.append(f"{name} {config}")
                continue
            item = measured.get((name, config)) or estimate(name, config, params[name], measured)
            if item is None:
                cannot.append(f"{name} {config} (no measured item of this configuration)")
                continue
            plan.append(item)
    refs = reference_seconds(plan, args.prompts, probe_prompts)
    durations = [item_seconds(it, args.prompts, args.runs, args.idle, args.settle) + refs.get((it.model, it.config), 0.0)
                 for it in plan]

    print(f"projection: {args.prompts} prompts x {args.runs} runs, idle {args.idle:g} s + settle "
          f"{args.settle:g} s per sample; probe: {probe_prompts} prompts x 1 run ({len(measured)} items measured)")
    print("| model | configuration | s per prompt | set-up s | reference s | item s | source |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for it, d in zip(plan, durations):
        source = f"estimated (from {it.estimated_from}, x params)" if it.estimated_from else "measured"
        print(f"| {it.model} | {it.config} | {it.prompt_s:.3f} | {it.setup_s:.1f} | "
              f"{refs.get((it.model, it.config), 0.0):.1f} | {d:.0f} | {source} |")
    for line in cannot:
        print(f"not in the plan: {line}")
    total = sum(durations)
    est = sum(d for it, d in zip(plan, durations) if it.estimated_from)
    busy = schedule(durations, args.workers)
    print(f"one worker: {total:.0f} s ({total / 60:.1f} min); {args.workers} workers: {max(busy):.0f} s "
          f"({max(busy) / 60:.1f} min; per worker {', '.join(f'{b:.0f}' for b in busy)} s); "
          f"estimated share: {est / total:.0%} of the item seconds" if total else "nothing to project")
    return 0


if __name__ == "__main__":
    sys.exit(main())
