"""The issue 10 table of docs/measurements.md from the unpacked report tarballs of tools/device_run.sh issue10
(tar xzf reports-*.tgz -C /tmp/i10/<name>); medians over repetitions per (replica, configuration)."""
import json,glob,statistics as st,os
seen={}
for f in glob.glob("/tmp/i10/*/*/*/samples.jsonl"):
    run=os.path.basename(os.path.dirname(f)); seen[run]=f
rows=[]
for f in seen.values():
    rows+= [json.loads(l) for l in open(f) if l.strip()]
groups={}
for r in rows: groups.setdefault((r["model"],r["config"]),[]).append(r)
def med(xs):
    xs=[x for x in xs if x is not None]; return st.median(xs) if xs else None
def f(x,p=3): return "—" if x is None else (f"{x:.{p}f}" if isinstance(x,float) else str(x))
order=["torch-cuda","jit-cuda","onnx-cuda","compile-cuda","torch-cpu","compile-cpu"]
print("| replica | config | n | ms/token median (range) | × vs torch-cuda | GPU J/token gross (NVML) | net J/token (GPU + CPU est.) | CPU J/token (estimated) | GPU % | memory floor ms | launch floor ms | kernels / launches per token | GPU busy ms/token | × memory floor | bound by | compile s | tie-aware match |")
print("|"+"---|"*17)
for model in ["codeparrot-small","starcoderbase-1b","phi2"]:
    base=med([r["ms_per_token"] for r in groups.get((model,"torch-cuda"),[])])
    for c in order:
        g=groups.get((model,c))
        if not g: continue
        tok=[r["tokens_generated"] for r in g]
        ms=[r["ms_per_token"] for r in g]
        gpu=med([r["energy_gpu_j"]/r["tokens_generated"] for r in g if r.get("energy_gpu_j") is not None])
        net=med([r["energy_net_j"]/r["tokens_generated"] for r in g if r.get("energy_net_j") is not None])
        cpu=med([r["energy_cpu_j"]/r["tokens_generated"] for r in g if r.get("energy_cpu_j") is not None])
        m=med(ms)
        print(f"| {model} | {c} | {len(g)} | {m:.3f} ({min(ms):.3f}–{max(ms):.3f}) | {f(base/m if base else None,2)} | {f(gpu)} | {f(net)} | {f(cpu)} | {f(med([r['gpu_pct'] for r in g]),0)} | {f(med([r['memory_floor_ms_per_token'] for r in g]))} | {f(med([r['launch_floor_ms_per_token'] for r in g]))} | {f(med([r['kernels_per_token'] for r in g]),0)} / {f(med([r['launches_per_token'] for r in g]),0)} | {f(med([r['gpu_busy_ms_per_token'] for r in g]))} | {f(med([r['x_memory_floor'] for r in g]),1)} | {g[0]['bound_by']} | {f(med([r['compile_s'] for r in g]),1)} | {f(med([r['match_rate_tie_aware'] for r in g]),2)} |")
print()
r=rows[0]; print("bandwidth", r["bandwidth_gb_s"], "launch latency", r["launch_latency_us"])
for (m,c),g in groups.items():
    notes=set(n for r in g for n in r["meter_notes"] if "roofline" in n)
    if notes: print(m,c,notes)
    print(m,c,"unsteady",sum(bool(r["unsteady"]) for r in g),"lowres",sum(bool(r["low_resolution"]) for r in g), "err",sum(bool(r["error_prone"]) for r in g), "match", [r["match_rate"] for r in g][:2], "bw",g[0].get("bandwidth_gb_s"), "lat", g[0].get("launch_latency_us"), "wt MB", g[0].get("weight_mb_per_token"), "compile", g[0].get("load_info"))
