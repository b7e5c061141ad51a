#!/usr/bin/env python
"""Within-session comparison on the saved calibration sessions: the configuration against its
5%-slowed copy measured interleaved in the same session (the gate's own compare())."""
import json, statistics as st, sys
from pytest_greenserve import gate
from pytest_greenserve.gate import parse_thresholds

def run(path, base_cfg, slow_cfg, metric_spec="energy:3%", k=None):
    sessions = json.load(open(path))
    out = []
    for s in sessions:
        rows = s["samples"]
        base = [dict(r, config="X") for r in rows if r["config"] == base_cfg][:k]
        now = [dict(r, config="X") for r in rows if r["config"] == slow_cfg][:k]
        if not base or not now:
            continue
        res = gate.compare(base, now, parse_thresholds(metric_spec))
        c = res.comparisons[0]
        out.append((c.verdict, c.change_pct, c.p_value, len(base), len(now)))
    return out

# usage: python tools/within_session.py SESSIONS.json BASE_CONFIG SLOW_CONFIG[,SLOW_CONFIG...]
# (the sessions.json that tools/calibrate_gate.py writes), e.g.
#     python tools/within_session.py /tmp/calib-gpu/sessions.json torch-cuda slow5-cuda
for path, base, slows in [(sys.argv[1], sys.argv[2], sys.argv[3].split(","))]:
    for slow in slows:
        for spec in ("energy:3%", "time:3%"):
            r = run(path, base, slow, spec)
            flagged = sum(v == "regression" for v, *_ in r)
            ch = [x[1] for x in r if x[1] is not None]
            print(f"{path.split('/')[-2]:10s} {slow:11s} {spec:10s} sessions {len(r):2d} flagged {flagged:2d}  "
                  f"median change {st.median(ch):+.1f}%  changes {[round(x,1) for x in ch]}  verdicts {[v for v,*_ in r]}")
