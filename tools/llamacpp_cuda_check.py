"""Does a CUDA build of llama-cpp-python offload, and give the CPU's greedy tokens?

    LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib python tools/llamacpp_cuda_check.py MODEL.gguf

Loads the GGUF twice, every layer offloaded (``n_gpu_layers=-1``, its log names the CUDA
buffers) and none (``0``), generates 32 greedy tokens from the same prompt with each, and
prints both texts and whether they are equal. Exit status 0 when equal, 1 when not, 2 when
the build cannot offload here (no CUDA in it, or no driver): then there is nothing to compare.
"""
from __future__ import annotations

import sys
import time


def main(path: str) -> int:
    import llama_cpp
    from llama_cpp import Llama

    offload = llama_cpp.llama_supports_gpu_offload()
    print("llama_cpp", llama_cpp.__version__, "GPU offload supported:", offload)
    if not offload:
        print("cannot tell: this build cannot offload here (no CUDA in it, or no driver)")
        return 2
    texts = {}
    for layers in (-1, 0):
        started = time.perf_counter()
        model = Llama(path, n_ctx=256, n_gpu_layers=layers, verbose=layers == -1, seed=0)
        texts[layers] = model("hello world", max_tokens=32, temperature=0)["choices"][0]["text"]
        print(f"n_gpu_layers={layers}: {time.perf_counter() - started:.2f} s, text {texts[layers]!r}", flush=True)
        del model
    same = texts[-1] == texts[0]
    print("offloaded and CPU greedy texts equal:", same)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
