"""The decode step of a :class:`~.static_decoder.StaticDecoder` as hand-fused Triton kernels.

inductor makes 130-150 kernels of one decode step of codeparrot-small (12 layers): layer
norms, GEMVs, bias adds, cache writes and attention each stay separate around cuBLAS calls,
and at one token the step costs the kernels' count, not their bytes. Here each layer is five
kernels (:mod:`.fused_kernels`): the layer norms and the GELU run inside the GEMVs that read
their output, the bias and the residual add inside the GEMVs that write them, and attention
reads the cache only up to the current position. 5 × layers + 3 kernels per token (the
embedding, the final GEMV, which also folds the greedy choice into one atomic maximum, and the
kernel that turns that choice into the next token and position): 63 on codeparrot-small.

Families: gpt2 (codeparrot) and multi-query gpt_bigcode (starcoder, santacoder): a sequential
residual, layer norms, a learned position table and a GELU MLP. Others are refused with the
reason (:func:`unsupported_reason`); the ``compile`` engine then uses inductor.

The weights are the transformers model's own tensors, except gpt2's Conv1D matrices, stored
(K, N), which are copied once transposed to (N, K), the layout the kernels read row by row.
The KV cache is the static decoder's, so prefill (the eager decoder, captured) and this step
share it. Activations are fp32 in every dtype, so bf16 reads bf16 weights and cache but
rounds nothing else. A layer norm's bias and its weights' row sums are folded once at load
(fp32 vectors, one float per output row), so the GEMV after it reads its input once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def unsupported_reason(config) -> str | None:
    """Why the fused step cannot run a model of this transformers ``config``, or None."""
    family = config.model_type
    if family not in ("gpt2", "gpt_bigcode"):
        return f"the fused decode step serves gpt2 and gpt_bigcode, not {family}"
    if family == "gpt_bigcode" and not config.multi_query:
        return "the fused decode step serves multi-query gpt_bigcode only"
    from .fused_kernels import GELUS

    if config.activation_function not in GELUS:
        return f"the fused decode step has no {config.activation_function!r} activation"
    return None


@dataclass
class _Layer:
    ln_1: tuple  # what gemv applies the layer norm with: (weight, rowsum of the folded matrix, eps)
    qkv_w: torch.Tensor  # (q + 2 kv, hidden), rows of K contiguous
    qkv_b: torch.Tensor  # fp32, with ln_1's bias folded in
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln_2: tuple
    fc_w: torch.Tensor
    fc_b: torch.Tensor  # fp32, with ln_2's bias folded in
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    scaling: float


def _folded(norm, weight, bias=None) -> tuple:
    """((norm's weight, rowsum, eps), the folded bias): a layer norm ``norm`` applied inside the
    GEMV by ``weight`` (see fused_kernels.fold_layer_norm)."""
    from .fused_kernels import fold_layer_norm

    rowsum, folded_bias = fold_layer_norm(weight, norm.weight.detach(), norm.bias.detach(), bias)
    return (norm.weight, rowsum, norm.eps), folded_bias


def _layer(block, rows, scaling: float) -> _Layer:
    attn, mlp = block.attn, block.mlp
    qkv_w, fc_w = rows(attn.c_attn), rows(mlp.c_fc)
    ln_1, qkv_b = _folded(block.ln_1, qkv_w, attn.c_attn.bias)
    ln_2, fc_b = _folded(block.ln_2, fc_w, mlp.c_fc.bias)
    return _Layer(ln_1, qkv_w, qkv_b, rows(attn.c_proj), attn.c_proj.bias, ln_2, fc_w, fc_b, rows(mlp.c_proj),
                  mlp.c_proj.bias, scaling)


class FusedDecoder:
    """``decoder_step(tok (1, 1), pos (1,))`` -> logits (1, vocab) fp32, writing the step's key
    and value into ``decoder``'s cache at ``pos``; :meth:`step` also makes the greedy choice.
    ``logit_bias``: an fp32 vector added to the logits (the engine's EOS bias: -inf where a
    token may never be chosen). Raises ValueError for a model it cannot run."""

    def __init__(self, decoder, logit_bias=None):
        from . import fused_kernels

        self.kernels = fused_kernels
        model = decoder.model
        cfg = model.config
        reason = unsupported_reason(cfg)
        if reason:
            raise ValueError(reason)
        gpt2 = cfg.model_type == "gpt2"
        base = model.transformer
        w = decoder.w
        self.heads, self.kv_heads, self.head_dim = w.heads, w.kv_heads, w.head_dim
        self.keys, self.values = decoder.keys, decoder.values
        self.gelu = fused_kernels.GELUS[cfg.activation_function]

        def rows(linear) -> torch.Tensor:  # (N, K): nn.Linear as it is, gpt2's Conv1D transposed once
            return linear.weight.detach().t().contiguous() if gpt2 else linear.weight.detach()

        self.layers = [_layer(b, rows, layer.scaling) for b, layer in zip(base.h, w.layers)]
        self.wte, self.wpe = base.wte.weight, base.wpe.weight
        self.lm_head = model.lm_head.weight  # (vocab, hidden); tied to wte in gpt2
        self.ln_f, self.lm_bias = _folded(base.ln_f, self.lm_head.detach())
        if logit_bias is not None:
            self.lm_bias += logit_bias.to(self.lm_bias)  # folded into the last GEMV's bias
        device = self.wte.device
        hidden = cfg.hidden_size
        qkv_size = (self.heads + 2 * self.kv_heads) * self.head_dim

        def buffer(n):  # the step's activations: fp32, fixed addresses (a CUDA graph reads them)
            return torch.zeros(n, device=device, dtype=torch.float32)

        self.x, self.qkv, self.attn = buffer(hidden), buffer(qkv_size), buffer(self.heads * self.head_dim)
        self.mlp = buffer(self.layers[0].fc_w.shape[0])
        self.logits = buffer(self.lm_head.shape[0])
        # what GEMVs that split K across programs share (they run one after another)
        self.scratch = fused_kernels.GemvScratch(max(self.logits.numel(), self.mlp.numel(), qkv_size), device)
        # the greedy choice, packed (fused_kernels.gemv's ``best``); consumed and reset each step
        self.best = torch.full((1,), fused_kernels.NO_BEST, dtype=torch.long, device=device)
        from .fused_tuning import site_shapes, tune

        #: each GEMV site's launch configuration (fused_tuning.SITES), tuned on CUDA
        self.configs = {site: fused_kernels.default_config(n, k) for site, (n, k) in site_shapes(self).items()}
        #: how the configurations were chosen (fused_tuning.tune), or None where not tuned
        self.tuning = tune(self) if device.type == "cuda" and not fused_kernels.INTERPRETED else None
        #: bytes of gpt2's transposed matrix copies (device memory beyond the model's own)
        self.copied_weight_bytes = sum(t.numel() * t.element_size() for layer in self.layers
                                       for t in (layer.qkv_w, layer.out_w, layer.fc_w, layer.proj_w)) if gpt2 else 0

    @torch.no_grad()
    def step(self, tok, pos, generated) -> None:
        """One decode step on the device state: ``tok`` (1, 1) at ``pos`` (1,) in; the greedy
        next token out, as ``pos += 1; generated[pos] = tok = choice`` (no host involved)."""
        self(tok, pos, best=self.best)
        self.kernels.greedy_advance(self.best, tok, pos, generated)

    @torch.no_grad()
    def __call__(self, tok, pos, best=None):
        k, x = self.kernels, self.x
        k.embed(tok, pos, self.wte, self.wpe, x)
        for i in range(len(self.layers)):
            self._layer_gemvs(i, attention=lambda: k.decode_attention(
                self.qkv, self.keys[i], self.values[i], pos, self.attn, heads=self.heads, kv_heads=self.kv_heads,
                head_dim=self.head_dim, scale=self.layers[i].scaling))
        self.lm_head_gemv(best)
        return self.logits.view(1, -1)

    def _layer_gemvs(self, i: int, attention=None) -> None:
        """Layer ``i``'s four GEMVs, with ``attention()`` between the first two."""
        k, x, layer, configs, scratch = self.kernels, self.x, self.layers[i], self.configs, self.scratch
        k.gemv(x, layer.qkv_w, self.qkv, bias=layer.qkv_b, ln=layer.ln_1, scratch=scratch, config=configs["qkv"])
        if attention is not None:
            attention()
        k.gemv(self.attn, layer.out_w, x, bias=layer.out_b, residual=True, scratch=scratch, config=configs["out"])
        k.gemv(x, layer.fc_w, self.mlp, bias=layer.fc_b, ln=layer.ln_2, gelu=self.gelu, scratch=scratch,
               config=configs["fc"])
        k.gemv(self.mlp, layer.proj_w, x, bias=layer.proj_b, residual=True, scratch=scratch, config=configs["proj"])

    def layer_gemvs(self) -> None:
        """Every layer's four GEMVs and nothing else (what fused_tuning times); they leave the
        activations as the step never would, which its next run rebuilds from the embedding."""
        for i in range(len(self.layers)):
            self._layer_gemvs(i)

    def lm_head_gemv(self, best=None) -> None:
        """The vocabulary GEMV (final layer norm folded in); with ``best``, the greedy choice."""
        self.kernels.gemv(self.x, self.lm_head, self.logits, bias=self.lm_bias, ln=self.ln_f, best=best,
                          scratch=self.scratch, config=self.configs["lm_head"])

    def reset_greedy_choice(self) -> None:
        self.best.fill_(self.kernels.NO_BEST)
