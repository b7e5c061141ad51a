"""Run by tests/engines/test_fused_decoder.py in a fresh process with TRITON_INTERPRET=1 (Triton
reads it when its kernels are defined): the fused decode step against the static decoder's own,
step by step, on a tiny model.

    TRITON_INTERPRET=1 python tests/engines/fused_interpreted.py MODEL_DIR DTYPE STEPS [PROMPT_TOKENS]

The token the eager greedy choice would take first is forbidden (as EOS is in the engine), so
the fused greedy choice must skip it. Prints one JSON line: the fused prefill of the same prompt
against the eager one (the last token's largest logit difference, the largest difference in
the cache it wrote, both greedy tokens, the position it left and whether it wrote its token
there); then per step, the largest logit difference (forbidden token left out), both greedy
tokens, and whether the fused step moved the position on by one and wrote its token at it.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM

from pytest_greenserve.engines import fused_kernels
from pytest_greenserve.engines.fused_decoder import FusedDecoder
from pytest_greenserve.engines.static_decoder import StaticDecoder


def main(model_dir: str, dtype: str, steps: int, prompt_tokens: int = 11) -> None:
    torch.manual_seed(0)
    # the prompt's 11 positions and the steps' span several of attention's tiles: the first
    # (read before the wait for the projection) and those read after
    fused_kernels.ATTENTION_BLOCK_T = 4
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[(7 * i + 3) % vocab for i in range(prompt_tokens)]])
    capacity = 64 if prompt_tokens + steps < 64 else 128
    static = StaticDecoder(model, capacity)
    n = prompt.shape[1]
    out = []
    with torch.no_grad():
        logits = static(prompt, torch.arange(n))[0].float()  # prefill: the eager decoder fills the cache
        forbidden = int(logits.argmax())
        bias = torch.zeros(vocab)
        bias[forbidden] = float("-inf")
        fused = FusedDecoder(static, logit_bias=bias)

        def choice(row):
            row = row.clone()
            row[forbidden] = float("-inf")
            return int(row.argmax())

        # the fused prefill over the same prompt, into a cleared cache: the last token's logits,
        # the cache it leaves, and its greedy choice, against the eager prefill's
        cache = [t.clone() for t in (*static.keys, *static.values)]
        for t in (*static.keys, *static.values):
            t.zero_()
        tok, pos = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        generated = torch.zeros(capacity, dtype=torch.long)
        fused.prefill(prompt[0], tok, pos, generated)
        keep = torch.arange(vocab) != forbidden
        cache_diff = max((got[..., :n, :].float() - want[..., :n, :].float()).abs().max().item()
                         for got, want in zip((*static.keys, *static.values), cache))
        prefill = {"max_abs_diff": (fused.logits[keep] - logits[keep]).abs().max().item(),
                   "scale": logits.abs().max().item(), "cache_max_abs_diff": cache_diff,
                   "cache_scale": max(t[..., :n, :].float().abs().max().item() for t in cache),
                   "fused_token": int(tok), "static_token": choice(logits),
                   "position": int(pos), "token_written": int(generated[n]) == int(tok)}
        for got, want in zip((*static.keys, *static.values), cache):
            got.copy_(want)  # the steps below start from the eager prefill's cache
        tok = torch.tensor([[choice(logits)]])
        pos = torch.tensor([n])
        for step in range(steps):
            here, token = n + step, tok.clone()
            # the fused step first (it writes the cache at pos); the eager step then rewrites the
            # same slot from the same token, and reads what both agree the cache holds
            fused.step(tok, pos, generated)
            got = fused.logits.clone()
            want = static(token, torch.tensor([here]))[0].float()
            keep = torch.arange(vocab) != forbidden
            out.append({"max_abs_diff": (got[keep] - want[keep]).abs().max().item(), "scale": want.abs().max().item(),
                        "forbidden_logit": got[forbidden].item(),
                        "fused_token": int(tok), "static_token": choice(want),
                        "position_advanced": int(pos) == here + 1, "token_written": int(generated[here + 1]) == int(tok)})
    print(json.dumps({"prefill": prefill, "steps": out}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:5]))
