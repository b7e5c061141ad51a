"""Calibrate the gate's two designs against each other on one machine: sequential (a baseline
recorded earlier, then the candidate) and interleaved A/B (``--greenserve-ab``: back-to-back
pairs in a balanced ABBA order, a paired test).

One pytest session per configuration under test, with ``--greenserve-ab=CONFIG`` and two
items: ``CONFIG`` itself (A/A: both sides are the same loaded engine) and ``slow5`` (the same
engine serving one request in twenty twice: a planted 5% of its own work; tools/calibrate_gate.py's
``--plant repeat``). Each item gets ``--runs`` pairs, in the plugin's shuffled order. The pairs are
cut, in the order they were measured, into blocks of ``--block`` pairs; block j is one trial:

- interleaved A/A and planted: the block's pairs of each item, judged by
  :func:`pytest_greenserve.gate.compare_interleaved`;
- sequential A/A and planted: the A side's samples of block j (the "baseline", measured earlier)
  against the B side's samples of block j+1 of each item, judged by
  :func:`pytest_greenserve.gate.compare` (Welch's t on log values).

Both at the gate's defaults (alpha 0.01, a family of one, ``--specs``), with the median
detectable change each design reports. The sequential trials here are minutes apart inside one
process, not a baseline of another day: a lower bound on what drift does to them.

    python tools/calibrate_ab.py --model mini-gpt2 --config torch-cpu --runs 40 --block 5 --out /tmp/ab
    python tools/calibrate_ab.py --analyse-only --out /tmp/ab --config torch-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from calibrate_gate import CONFTEST, TEST  # noqa: E402  (the slowed copies of an engine)


def run_session(args, workdir: Path) -> list[dict]:
    engine, provider = args.config.split("-", 1)
    report_dir = args.out / "reports"
    cmd = [sys.executable, "-m", "pytest", str(workdir), "-q", "-p", "no:cacheprovider", "-p", "no:greenserve",
           "-p", "pytest_greenserve.plugin", f"--greenserve-models={args.model}",
           f"--greenserve-configs={args.config},slow5-{provider}", f"--greenserve-ab={args.config}",
           f"--greenserve-runs={args.runs}", f"--greenserve-prompts={args.prompts}", "--greenserve-idle=0",
           "--greenserve-settle=0", "--greenserve-roofline=off", f"--greenserve-report-dir={report_dir}",
           "--greenserve-undecided=pass", *args.pytest_args.split()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               GREENSERVE_CALIBRATION_ENGINE=engine, GREENSERVE_CALIBRATION_SLOWDOWNS="0.05",
               GREENSERVE_CALIBRATION_PLANT="repeat")
    start = time.perf_counter()
    log = open(args.out / "session.log", "w")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        proc.wait(timeout=args.cap_s)
    except subprocess.TimeoutExpired:  # pytest ends cleanly on SIGINT; finished samples are on disk
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()
    rows = []
    for path in sorted(report_dir.glob("*/samples.jsonl")):
        if path.parent.name != "latest":
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"session rc={proc.returncode} {len(rows)} samples in {time.perf_counter() - start:.0f} s", flush=True)
    if proc.returncode not in (0, 2, 6, 7, 8):
        print((args.out / "session.log").read_text()[-3000:])
    return rows


def blocks(rows: list[dict], candidate: str, size: int) -> list[list[dict]]:
    """The pairs of one item (both samples of each), in the order measured, cut into blocks."""
    pairs: dict[int, list[dict]] = {}
    for r in rows:
        if r.get("ab_candidate") == candidate:
            pairs.setdefault(r["ab_pair"], []).append(r)
    ordered = sorted((p for p in pairs.values() if len(p) == 2), key=lambda p: min(r["order"] for r in p))
    return [sum(ordered[i:i + size], []) for i in range(0, len(ordered) - size + 1, size)]


def analyse(args, rows: list[dict]) -> dict:
    from pytest_greenserve import gate

    provider = args.config.split("-", 1)[1]
    same, planted = blocks(rows, args.config, args.block), blocks(rows, f"slow5-{provider}", args.block)
    out = {}
    for spec in args.specs:
        thresholds = gate.parse_thresholds(spec)
        trials = {"interleaved A/A": [], "interleaved planted 5%": [], "sequential A/A": [], "sequential planted 5%": []}
        for kind, blk in (("A/A", same), ("planted 5%", planted)):
            for b in blk:
                result = gate.compare_interleaved(b, thresholds)
                trials[f"interleaved {kind}"] += result.comparisons
            for earlier, later in zip(same, blk[1:]):  # the baseline: A's samples of an earlier block
                base = [dict(r, config="x") for r in earlier if r["ab_role"] == "A"]
                now = [dict(r, config="x") for r in later if r["ab_role"] == "B"]
                trials[f"sequential {kind}"] += gate.compare(base, now, thresholds).comparisons
        out[spec] = {
            name: {"trials": len(cs),
                   "regression": sum(c.verdict == "regression" for c in cs),
                   "undecided": sum(c.verdict == "undecided" for c in cs),
                   "same": sum(c.verdict == "same" for c in cs),
                   "median_change_pct": _median([c.change_pct for c in cs]),
                   "median_detectable_pct": _median([c.detectable_pct for c in cs]),
                   "median_spread_pct": _median([c.spread_now_pct for c in cs])}
            for name, cs in trials.items()}
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{value}%"


def _median(values):
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini-gpt2")
    p.add_argument("--config", default="torch-cpu")
    p.add_argument("--runs", type=int, default=40, help="pairs per item")
    p.add_argument("--block", type=int, default=5, help="pairs per trial")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--specs", default="energy:3%;time:3%")
    p.add_argument("--pytest-args", default="")
    p.add_argument("--cap-s", type=float, default=None, help="stop the session (SIGINT) after this many seconds")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--analyse-only", action="store_true")
    args = p.parse_args(argv)
    args.specs = [s for s in args.specs.split(";") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "samples.json"
    if args.analyse_only:
        rows = json.loads(raw.read_text())
    else:
        workdir = args.out / "suite"
        workdir.mkdir(exist_ok=True)
        (workdir / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (workdir / "test_calibration.py").write_text(textwrap.dedent(TEST))
        rows = run_session(args, workdir)
        raw.write_text(json.dumps(rows))
    table = analyse(args, rows)
    for spec, kinds in table.items():
        print(f"\n{args.model} {args.config}, {spec}, blocks of {args.block} pairs")
        print(f"{'design':<26}{'trials':>7}{'regression':>11}{'undecided':>10}{'same':>6}{'change':>9}"
              f"{'detectable':>11}{'spread':>8}")
        for name, r in kinds.items():
            print(f"{name:<26}{r['trials']:>7}{r['regression']:>11}{r['undecided']:>10}{r['same']:>6}"
                  f"{_pct(r['median_change_pct']):>9}{_pct(r['median_detectable_pct']):>11}{_pct(r['median_spread_pct']):>8}")
    (args.out / "calibration_ab.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                              "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
