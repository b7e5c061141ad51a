"""Calibrate the CI energy gate: A/A trials and planted regressions, on this machine.

Every *session* is one ``python -m pytest -p pytest_greenserve.plugin`` run of one model with
the configuration under test (``--config``, e.g. torch-cpu) and, beside it in the same
shuffled order, one copy of that engine per planted slowdown (``slow5-cpu`` for 5%). With
``--plant repeat`` (the default) the copy serves one request in twenty twice (for 5%), so it
does 5% more of the engine's own work and every meter follows. With ``--plant burn`` (how the
CPU trials of the second session ran), the copy stays busy after each request for 5% of that
request's time. Sessions are independent processes, like a baseline run and a pull request's run.

Trial *i* compares session *i* (the baseline) with session *i+1*:

- A/A: ``--config`` in session i against ``--config`` in session i+1 (nothing changed);
- planted x%: ``--config`` in session i against ``slowX`` in session i+1 (the change).

Each is judged by :func:`pytest_greenserve.gate.compare` for several tests, alphas,
thresholds and repetition counts (the first k repetitions of each side, and the sequential
``--greenserve-runs=auto`` rule), and the table of false-alarm and detection rates is printed
and written with every session's samples to ``--out``/calibration.json.

    python tools/calibrate_gate.py --model mini-gpt2 --config torch-cpu --trials 20 \\
        --prompts 40 --runs 8 --slowdown 0.05,0.10,0.20 --out /tmp/calib
    python tools/calibrate_gate.py --analyse-only --out /tmp/calib     # re-judge saved sessions

The plugin need not be pip-installed: the sessions run with ``PYTHONPATH`` set to this
checkout and ``-p no:greenserve -p pytest_greenserve.plugin`` (this checkout's plugin even where
another is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = '''
import os, time

SLOWDOWNS = [float(s) for s in os.environ.get("GREENSERVE_CALIBRATION_SLOWDOWNS", "").split(",") if s]
BASE = os.environ["GREENSERVE_CALIBRATION_ENGINE"]
PLANT = os.environ.get("GREENSERVE_CALIBRATION_PLANT", "repeat")


def _burner(provider):
    """``--plant burn``: one short slice of busy work. CPU: a small matrix product. CUDA: a
    memory-bound matrix-vector product, about 0.1 ms on an H100, like a decode step's kernels (a
    small matrix product would leave the GPU near idle power between launches: time, no energy)."""
    import torch

    if provider != "cuda":
        a = torch.randn(192, 192)
        return lambda: a @ a
    w = torch.randn(8192, 8192, device="cuda")
    x = torch.randn(8192, device="cuda")

    def burn():
        torch.mv(w, x)
        torch.cuda.synchronize()
    return burn


def _slow(base, fraction):
    class Slow(base):
        name = f"slow{round(fraction * 100)}"

        def generate(self, input_ids, new_tokens):
            if PLANT == "repeat":
                # the engine's own request again, once every 1/fraction requests: exactly
                # `fraction` more of the same work, so time and energy (of every meter) follow
                out = base.generate(self, input_ids, new_tokens)
                done = getattr(self, "_requests", 0)
                self._requests = done + 1
                if int((done + 1) * fraction) > int(done * fraction):
                    base.generate(self, input_ids, new_tokens)
                return out
            start = time.perf_counter()
            out = base.generate(self, input_ids, new_tokens)
            took = time.perf_counter() - start
            burn = getattr(self, "_burn", None)
            if burn is None:
                burn = self._burn = _burner(self.provider)
            end = time.perf_counter() + fraction * took
            while time.perf_counter() < end:
                burn()
            return out
    Slow.__name__ = f"Slow{round(fraction * 100)}"
    return Slow


def pytest_greenserve_register_engines(registry):
    from pytest_greenserve import engines
    engines.pytest_greenserve_register_engines(registry)
    for fraction in SLOWDOWNS:
        cls = _slow(registry[BASE], fraction)
        registry[cls.name] = cls
'''

TEST = '''
def test_autocomplete(greenserve):
    greenserve.measure()
'''


def slow_name(fraction: float) -> str:
    return f"slow{round(fraction * 100)}"


def run_session(args, index: int, workdir: Path) -> dict:
    engine, provider = args.config.split("-", 1)
    configs = [args.config] + [f"{slow_name(f)}-{provider}" for f in args.slowdowns]
    report_dir = args.out / "sessions" / f"s{index:03d}"
    cmd = [sys.executable, "-m", "pytest", str(workdir), "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           f"--greenserve-models={args.model}", f"--greenserve-configs={','.join(configs)}",
           f"--greenserve-runs={args.runs}", f"--greenserve-prompts={args.prompts}",
           f"--greenserve-idle={args.idle}", f"--greenserve-settle={args.settle}",
           f"--greenserve-seed={index}", f"--greenserve-report-dir={report_dir}",
           # the roofline's profiling child adds a load per configuration and is not what is gated
           "--greenserve-roofline=off", *shlex.split(args.pytest_args)]
    # this checkout's plugin, whether or not (some version of) it is pip-installed
    cmd[3:3] = ["-p", "no:greenserve", "-p", "pytest_greenserve.plugin"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               GREENSERVE_CALIBRATION_ENGINE=engine,
               GREENSERVE_CALIBRATION_SLOWDOWNS=",".join(str(f) for f in args.slowdowns),
               GREENSERVE_CALIBRATION_PLANT=args.plant)
    # a session cut by a time limit and run again starts from an empty report directory
    shutil.rmtree(report_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    samples = []
    for path in sorted(report_dir.glob("*/samples.jsonl")):
        if path.parent.is_symlink() or path.parent.name == "latest":
            continue
        samples += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] if proc.returncode else []
    print(f"session {index}: rc={proc.returncode} {len(samples)} samples {wall:.1f} s {' '.join(tail)}", flush=True)
    return {"index": index, "rc": proc.returncode, "wall_s": wall, "samples": samples}


def _series(session: dict, config: str) -> list[dict]:
    rows = [s for s in session["samples"] if s.get("config") == config]
    return sorted(rows, key=lambda s: s.get("order", 0))


def _rename(rows, config):
    return [dict(r, config=config, engine=config.split("-")[0]) for r in rows]


def _unflag(rows):
    return [{k: v for k, v in r.items() if k not in ("unsteady", "low_resolution")} for r in rows]


def judge(base_rows, now_rows, spec, *, test, alpha, runs, auto, min_runs, keep_flagged=False):
    """The gate's verdict ('regression', 'improved', 'same', 'undecided') and the repetitions
    of the 'now' side it used (sequential rule: stop once decided; else all ``runs``)."""
    from pytest_greenserve import gate

    thresholds = gate.parse_thresholds(spec)
    if keep_flagged:  # what the gate would say if it trusted unsteady / low-resolution samples
        base_rows, now_rows = _unflag(base_rows), _unflag(now_rows)
    base = base_rows[:runs]
    if not auto:
        now = now_rows[:runs]
        result = gate.compare(base, now, thresholds, test=test, alpha=alpha, min_runs=min_runs)
        return _overall(result), len(now)
    for k in range(min_runs, len(now_rows) + 1):
        now = now_rows[:k]
        if gate.decided(base, now, thresholds, test=test, alpha=alpha, min_runs=min_runs):
            break
    result = gate.compare(base, now, thresholds, test=test, alpha=alpha, min_runs=min_runs)
    return _overall(result), len(now)


def _overall(result) -> str:
    verdicts = [c.verdict for c in result.comparisons]
    for v in ("regression", "undecided", "improved"):
        if v in verdicts:
            return v
    return "same"


def analyse(args, sessions: list[dict]) -> list[dict]:
    engine, provider = args.config.split("-", 1)
    good = [s for s in sessions if s["samples"]]
    variants = [("A/A", 0.0, args.config)] + [(f"planted {f:.0%}", f, f"{slow_name(f)}-{provider}")
                                               for f in args.slowdowns]
    plans = []
    for spec in args.specs:
        for test in args.tests:
            for alpha in args.alphas:
                for runs in sorted({r for r in (3, 5, args.runs) if r <= args.runs}):
                    plans.append(dict(spec=spec, test=test, alpha=alpha, runs=runs, auto=False))
                plans.append(dict(spec=spec, test=test, alpha=alpha, runs=args.runs, auto=True))
    plans = [dict(p, keep_flagged=k) for p in plans for k in ((False, True) if args.keep_flagged else (False,))]
    table = []
    for plan in plans:
        for label, fraction, config in variants:
            verdicts, used = [], []
            for a, b in zip(good, good[1:]):
                base = _series(a, args.config)
                now = _rename(_series(b, config), args.config)
                if not base or not now:
                    continue
                v, n = judge(base, now, plan["spec"], test=plan["test"], alpha=plan["alpha"], runs=plan["runs"],
                             auto=plan["auto"], min_runs=args.min_runs, keep_flagged=plan["keep_flagged"])
                verdicts.append(v)
                used.append(n)
            if not verdicts:
                continue
            n = len(verdicts)
            table.append(dict(plan, variant=label, slowdown=fraction, trials=n,
                              regression_rate=verdicts.count("regression") / n,
                              undecided_rate=verdicts.count("undecided") / n,
                              mean_runs=sum(used) / n))
    return table


def noise(args, sessions) -> dict:
    """How noisy the configuration under test was: spread of time_s within and across sessions."""
    import statistics as st

    within, medians, flagged, total = [], [], 0, 0
    for s in sessions:
        t = [r["time_s"] for r in _series(s, args.config) if r.get("time_s")]
        if len(t) >= 2:
            within.append(st.stdev(t) / st.fmean(t) * 100)
            medians.append(st.median(t))
        for r in s["samples"]:
            total += 1
            flagged += bool(r.get("unsteady") or r.get("low_resolution"))
    return {"cv_within_session_pct_median": st.median(within) if within else None,
            "cv_of_session_medians_pct": st.stdev(medians) / st.fmean(medians) * 100 if len(medians) > 1 else None,
            "flagged_fraction": flagged / total if total else None}


def print_table(table, sessions, spread=None):
    walls = [s["wall_s"] for s in sessions]
    if spread:
        print(f"time_s spread of the configuration under test: median within-session CV "
              f"{spread['cv_within_session_pct_median']}%, CV of session medians {spread['cv_of_session_medians_pct']}%; "
              f"samples flagged unsteady/low_resolution: {spread['flagged_fraction']}")
    if walls:
        print(f"\n{len(walls)} sessions, wall time per session: median {sorted(walls)[len(walls) // 2]:.1f} s, "
              f"total {sum(walls) / 60:.1f} min")
    print(f"{'threshold':<14}{'test':<9}{'alpha':>7}{'runs':>7}{'flags':>6}  {'variant':<13}{'trials':>7}{'flagged':>9}"
          f"{'undecided':>10}{'mean runs':>10}")
    for r in table:
        runs = f"auto{r['runs']}" if r["auto"] else str(r["runs"])
        flags = "kept" if r.get("keep_flagged") else "out"
        print(f"{r['spec']:<14}{r['test']:<9}{r['alpha']:>7g}{runs:>7}{flags:>6}  {r['variant']:<13}{r['trials']:>7}"
              f"{r['regression_rate']:>9.0%}{r['undecided_rate']:>10.0%}{r['mean_runs']:>10.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mini-gpt2")
    p.add_argument("--config", default="torch-cpu")
    p.add_argument("--trials", type=int, default=20, help="trials of each kind (sessions: trials + 1)")
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--runs", type=int, default=8, help="repetitions per configuration and session (the cap)")
    p.add_argument("--slowdown", default="0.05,0.10,0.20", help="planted slowdowns, comma-separated fractions")
    p.add_argument("--plant", choices=("repeat", "burn"), default="repeat",
                   help="how a slowed copy slows: repeat one request in 1/fraction (the engine's own work: energy "
                        "follows time on every meter), or burn busy work for that fraction of each request's time "
                        "(the CPU calibration's way; on a GPU its power differs from the engine's)")
    p.add_argument("--idle", default="1")
    p.add_argument("--settle", default="0")
    p.add_argument("--out", type=Path, required=True, help="directory for the sessions and calibration.json")
    p.add_argument("--specs", default="energy:3%;energy_net_j:3%;energy:5%;time:3%", help="thresholds to judge, ';'-separated")
    p.add_argument("--tests", default="mwu,welch")
    p.add_argument("--alphas", default="0.01,0.05")
    p.add_argument("--min-runs", type=int, default=3)
    p.add_argument("--analyse-only", action="store_true", help="judge the sessions already in --out")
    p.add_argument("--resume", action="store_true",
                   help="keep the sessions already in --out and run only the missing ones (a run cut by a time limit)")
    p.add_argument("--pytest-args", default="",
                   help="more options for every session, e.g. --pytest-args='--greenserve-weights=replica' (with '=': the value starts with --)")
    p.add_argument("--keep-flagged", action="store_true",
                   help="also judge as if unsteady / low-resolution samples were trusted (the gate leaves them out)")
    args = p.parse_args(argv)
    args.slowdowns = [float(s) for s in args.slowdown.split(",") if s.strip()]
    args.specs = [s for s in args.specs.split(";") if s]
    args.tests = args.tests.split(",")
    args.alphas = [float(a) for a in args.alphas.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / "sessions.json"
    if args.analyse_only:
        sessions = json.loads(raw.read_text())
    else:
        workdir = args.out / "suite"
        workdir.mkdir(exist_ok=True)
        (workdir / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (workdir / "test_calibration.py").write_text(textwrap.dedent(TEST))
        sessions = json.loads(raw.read_text()) if args.resume and raw.is_file() else []
        for i in range(len(sessions), args.trials + 1):
            sessions.append(run_session(args, i, workdir))
            raw.write_text(json.dumps(sessions))
    table = analyse(args, sessions)
    spread = noise(args, sessions)
    print_table(table, sessions, spread)
    (args.out / "calibration.json").write_text(json.dumps(
        {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "sessions": [{k: v for k, v in s.items() if k != "samples"} for s in sessions], "noise": spread,
         "table": table},
        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
