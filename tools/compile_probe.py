"""Issue 10 probe on the GPU machine: does each compile mode capture, match torch's tokens, and how
fast is it per token? Outside the plugin's meters (a quick check before the measured session).

    python tools/compile_probe.py MODEL [MODES...] --prompts 16 --new-tokens 32 --cache DIR --out FILE.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("modes", nargs="*", default=["graph", "inductor+graph"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--cache", default="/tmp/gscache")
    ap.add_argument("--provider", default="cuda")
    ap.add_argument("--out", default=None)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    a = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from pytest_greenserve.engines.base import EngineOptions
    from pytest_greenserve.engines.compile import CompileEngine
    from pytest_greenserve.engines.torch_eager import TorchEngine
    from pytest_greenserve.models import REGISTRY, resolve
    from pytest_greenserve.prompts import make_prompts

    handle = resolve(REGISTRY[a.model], "replica", None, Path(a.cache), 0, progress=print)
    tok = AutoTokenizer.from_pretrained(handle.ref)
    prompts = [tok(p.text, add_special_tokens=False)["input_ids"] for p in make_prompts(tok, a.prompts, 0)]
    sync = torch.cuda.synchronize if a.provider == "cuda" else (lambda: None)

    def run(engine):
        for p in prompts[:2] + [q for q in prompts if len(q) not in {len(x) for x in prompts[:2]}]:
            engine.generate(p, a.new_tokens)  # warm-up, every prompt length
        outs, times = [], []
        for p in prompts:
            sync(); t = time.perf_counter()
            outs.append(engine.generate(p, a.new_tokens).token_ids)
            sync(); times.append(time.perf_counter() - t)
        return outs, 1e3 * statistics.median(times) / a.new_tokens

    result = {"model": a.model, "provider": a.provider, "prompts": a.prompts, "new_tokens": a.new_tokens,
              "device": torch.cuda.get_device_name() if a.provider == "cuda" else "cpu", "modes": {}}
    opts = EngineOptions(progress=print, dtype=a.dtype)
    result["dtype"] = a.dtype
    ref = TorchEngine(handle, a.provider, opts); ref.load()
    ref_out, ref_ms = run(ref)
    ref.close()
    result["torch_ms_per_token"] = ref_ms
    print(f"torch-{a.provider}: {ref_ms:.3f} ms/token (median request / new tokens)", flush=True)
    for mode in a.modes:
        opts = EngineOptions(progress=print, dtype=a.dtype, compile_mode=mode)
        eng = CompileEngine(handle, a.provider, opts)
        try:
            eng.load()
            outs, ms = run(eng)
            same = sum(x == y for x, y in zip(outs, ref_out))  # exact; bf16 near-ties may differ
            info = eng.load_info()
            result["modes"][mode] = {"ms_per_token": ms, "speedup_vs_torch": ref_ms / ms,
                                     "exact_match": f"{same}/{len(outs)}", **info}
            print(f"compile-{a.provider} {mode}: {ms:.3f} ms/token, x{ref_ms / ms:.2f} vs torch, "
                  f"match {same}/{len(outs)}, {info}", flush=True)
        except Exception as exc:  # report and go on with the next mode
            import traceback

            traceback.print_exc(limit=-6)
            result["modes"][mode] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            print(f"compile-{a.provider} {mode}: FAILED {result['modes'][mode]['error']}", flush=True)
        finally:
            try:
                eng.close()
            except Exception:  # a CUDA error poisons the context: nothing more can run
                return 1
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
