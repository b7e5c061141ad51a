"""Run by tests/engines/test_fused_decoder.py in a fresh process with TRITON_INTERPRET=1 (Triton
reads it when its kernels are defined): the fused decode step against the static decoder's own,
step by step, on a tiny model.

    TRITON_INTERPRET=1 python tests/engines/fused_interpreted.py MODEL_DIR DTYPE STEPS

Prints one JSON line: per step, the largest logit difference and both greedy tokens.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

from pytest_greenserve.engines.fused_decoder import FusedDecoder
from pytest_greenserve.engines.static_decoder import StaticDecoder


def main(model_dir: str, dtype: str, steps: int) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[(7 * i + 3) % vocab for i in range(11)]])
    static = StaticDecoder(model, 64)
    fused = FusedDecoder(static)
    out = []
    with torch.no_grad():
        n = prompt.shape[1]
        logits = static(prompt, torch.arange(n))  # prefill: the eager decoder fills the cache
        for step in range(steps):
            tok = logits.float().argmax(-1).view(1, 1)
            pos = torch.tensor([n + step])
            # the fused step first (it writes the cache at pos); the eager step then rewrites the
            # same slot from the same token, and reads what both agree the cache holds
            got = fused(tok, pos)[0].clone()
            logits = static(tok, pos)
            want = logits[0].float()
            out.append({"max_abs_diff": (got - want).abs().max().item(), "scale": want.abs().max().item(),
                        "fused_token": int(got.argmax()), "static_token": int(want.argmax())})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
