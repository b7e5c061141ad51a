"""The decode step of a :class:`~.static_decoder.StaticDecoder` as hand-fused Triton kernels.

inductor makes 130-150 kernels of one decode step of codeparrot-small (12 layers): layer
norms, GEMVs, bias adds, cache writes and attention each stay separate around cuBLAS calls,
and at one token the step costs the kernels' count, not their bytes. Here each layer is five
kernels (:mod:`.fused_kernels`): the layer norms and the GELU run inside the GEMVs that read
their output, the bias and the residual add inside the GEMVs that write them, and attention
reads the cache only up to the current position. 5 × layers + 3 kernels per token (the
embedding, the final GEMV, which also folds the greedy choice into one atomic maximum, and the
kernel that turns that choice into the next token and position): 63 on codeparrot-small.

Families:
- gpt2 (codeparrot) and multi-query gpt_bigcode (starcoder, santacoder): a sequential
  residual, layer norms, a learned position table and a GELU MLP;
- gpt_neox (pythia, stablecode) and phi (phi-2): layer norms, partial rotary positions and a
  parallel residual, x + attn(ln_1(x)) + mlp(ln_2(x)) (phi: one layer norm for both), so the
  MLP's first GEMV runs before attention's output projection adds to x;
- llama (TinyLlama) and gemma (codegemma): RMS norms (gemma's scaled by 1 + weight),
  rotary positions, grouped-query attention and a gated MLP, whose gate and up projections one
  GEMV reads together; gemma's embedding scaled by the square root of the hidden size.
  ``compile``'s ``auto`` picks the fused step for the families measured on a card
  (:data:`MEASURED_FAMILIES`: all six, in fp32 and bf16).
Rotary positions are applied to q and k inside attention, from transformers' own cos and sin
table. Others are refused with the reason (:func:`unsupported_reason`); the ``compile`` engine
then uses inductor.

The weights are the transformers model's own tensors, except gpt2's Conv1D matrices, stored
(K, N), which are copied once transposed to (N, K), the layout the kernels read row by row;
llama's, gemma's and phi's q, k and v matrices, copied once into one; and gpt_neox's q/k/v matrix,
laid out per head (q, k, v of head 0, then of head 1...), copied once as all q, then k, then v.
The KV cache is the static decoder's, so the eager decoder's prefill (the engine's with
``compile.FUSED_PREFILL`` off) fills the same one.
:meth:`FusedDecoder.prefill` runs a prompt through the same kinds of kernels, all its tokens at
once, each weight read once for all of them (the engine's prefill: ``compile.FUSED_PREFILL``).
Activations are fp32 in every dtype, so bf16 reads bf16 weights and cache but
rounds nothing else. A layer norm's bias and its weights' row sums are folded once at load
(fp32 vectors, one float per output row), so the GEMV after it reads its input once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


#: The families with a fused step
FAMILIES = ("gpt2", "gpt_bigcode", "gpt_neox", "phi", "llama", "gemma")
#: Those whose fused step was measured on a card with the fp32 reference's tokens: ``auto``
#: picks fused+graph for them (the others get inductor+graph unless fused+graph is asked for)
#: (gemma: codegemma-2b's replica in fp32 on an H200, 16 prompts, docs/measurements.md)
MEASURED_FAMILIES = ("gpt2", "gpt_bigcode", "gpt_neox", "phi", "llama", "gemma")


def unsupported_reason(config) -> str | None:
    """Why the fused step cannot run a model of this transformers ``config``, or None."""
    family = config.model_type
    if family not in FAMILIES:
        return f"the fused decode step serves {', '.join(FAMILIES)}, not {family}"
    if family == "gpt_bigcode" and not config.multi_query:
        return "the fused decode step serves multi-query gpt_bigcode only"
    if family == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        return "the fused decode step serves llama without attention or MLP biases"
    if family == "phi" and getattr(config, "qk_layernorm", False):
        return "the fused decode step serves phi without qk_layernorm"
    from .fused_kernels import ACTIVATIONS

    activation = config.activation_function if family in ("gpt2", "gpt_bigcode") else config.hidden_act
    if activation not in ACTIVATIONS:
        return f"the fused decode step has no {activation!r} activation"
    return None


@dataclass
class _Layer:
    norm_1: dict  # how gemv folds the attention's input norm: {"ln": (weight, rowsum, eps)} or {"rms": (weight, eps)}
    qkv_w: torch.Tensor  # (q + 2 kv, hidden), rows of K contiguous
    qkv_b: torch.Tensor | None  # fp32, with a layer norm's bias folded in; None: no bias
    out_w: torch.Tensor
    out_b: torch.Tensor | None
    norm_2: dict
    fc_w: torch.Tensor  # the MLP's first matrix (llama: its gate)
    fc_b: torch.Tensor | None
    up_w: torch.Tensor | None  # a gated MLP's up projection (llama), else None
    proj_w: torch.Tensor
    proj_b: torch.Tensor | None
    scaling: float


def _folded(norm, weight, bias=None) -> tuple:
    """({"ln": (norm's weight, rowsum, eps)}, the folded bias): a layer norm ``norm`` applied
    inside the GEMV by ``weight`` (see fused_kernels.fold_layer_norm)."""
    from .fused_kernels import fold_layer_norm

    rowsum, folded_bias = fold_layer_norm(weight, norm.weight.detach(), norm.bias.detach(), bias)
    return {"ln": (norm.weight, rowsum, norm.eps)}, folded_bias


def _rms(norm) -> dict:
    """An RMS norm applied inside the GEMV after it (it has no bias to fold). Gemma's scales by
    1 + its weight (kept as an fp32 copy, as it computes it)."""
    if hasattr(norm, "variance_epsilon"):
        return {"rms": (norm.weight, norm.variance_epsilon)}
    return {"rms": (1.0 + norm.weight.detach().float(), norm.eps)}


def _gpt_layer(block, rows, scaling: float) -> _Layer:
    attn, mlp = block.attn, block.mlp
    qkv_w, fc_w = rows(attn.c_attn), rows(mlp.c_fc)
    norm_1, qkv_b = _folded(block.ln_1, qkv_w, attn.c_attn.bias)
    norm_2, fc_b = _folded(block.ln_2, fc_w, mlp.c_fc.bias)
    return _Layer(norm_1, qkv_w, qkv_b, rows(attn.c_proj), attn.c_proj.bias, norm_2, fc_w, fc_b, None,
                  rows(mlp.c_proj), mlp.c_proj.bias, scaling)


def _neox_layer(block, heads: int, head_dim: int, scaling: float) -> _Layer:
    attn, mlp = block.attention, block.mlp

    def by_kind(t):  # rows per head as [q_h | k_h | v_h] -> all q, then all k, then all v
        return t.detach().view(heads, 3, head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()

    qkv_w = by_kind(attn.query_key_value.weight)
    norm_1, qkv_b = _folded(block.input_layernorm, qkv_w, by_kind(attn.query_key_value.bias))
    fc_w = mlp.dense_h_to_4h.weight.detach()
    norm_2, fc_b = _folded(block.post_attention_layernorm, fc_w, mlp.dense_h_to_4h.bias)
    return _Layer(norm_1, qkv_w, qkv_b, attn.dense.weight.detach(), attn.dense.bias, norm_2, fc_w, fc_b, None,
                  mlp.dense_4h_to_h.weight.detach(), mlp.dense_4h_to_h.bias, scaling)


def _phi_layer(block, scaling: float) -> _Layer:
    attn, mlp = block.self_attn, block.mlp
    qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    qkv_b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach()
    norm_1, qkv_b = _folded(block.input_layernorm, qkv_w, qkv_b)
    fc_w = mlp.fc1.weight.detach()
    norm_2, fc_b = _folded(block.input_layernorm, fc_w, mlp.fc1.bias)  # the same norm feeds the MLP
    return _Layer(norm_1, qkv_w, qkv_b, attn.dense.weight.detach(), attn.dense.bias, norm_2, fc_w, fc_b, None,
                  mlp.fc2.weight.detach(), mlp.fc2.bias, scaling)


def _llama_layer(block, scaling: float) -> _Layer:
    attn, mlp = block.self_attn, block.mlp
    # q, k and v are three matrices: one copy, concatenated, is read by one GEMV
    qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    return _Layer(_rms(block.input_layernorm), qkv_w, None, attn.o_proj.weight.detach(), None,
                  _rms(block.post_attention_layernorm), mlp.gate_proj.weight.detach(), None,
                  mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach(), None, scaling)


class FusedDecoder:
    """``decoder_step(tok (1, 1), pos (1,))`` -> logits (1, vocab) fp32, writing the step's key
    and value into ``decoder``'s cache at ``pos``; :meth:`step` also makes the greedy choice.
    ``logit_bias``: an fp32 vector added to the logits (the engine's EOS bias: -inf where a
    token may never be chosen). ``tuning_cache``: the folder that keeps the GEMVs' tuned launch
    configurations (fused_tuning.tuned); None: tuned at every load. ``progress``: told in one
    line before a tuning. Raises ValueError for a model it cannot run."""

    def __init__(self, decoder, logit_bias=None, tuning_cache=None, progress=None):
        from . import fused_kernels

        self.kernels = fused_kernels
        model = decoder.model
        cfg = model.config
        reason = unsupported_reason(cfg)
        if reason:
            raise ValueError(reason)
        family = cfg.model_type
        w = decoder.w
        self.heads, self.kv_heads, self.head_dim = w.heads, w.kv_heads, w.head_dim
        self.keys, self.values = decoder.keys, decoder.values
        #: (vocab, hidden); tied to the embedding in gpt2
        self.lm_head = model.get_output_embeddings().weight
        #: x + attn(ln_1(x)) + mlp(ln_2(x)) (gpt_neox, phi) rather than one after the other
        self.parallel = family == "phi" or (family == "gpt_neox" and cfg.use_parallel_residual)
        #: what the embedding is multiplied by (gemma: the square root of the hidden size, as a
        #: number of the model's dtype, as GemmaModel.forward takes it)
        self.embed_scale = 1.0
        if family in ("llama", "gemma", "gpt_neox", "phi"):
            self.act = fused_kernels.ACTIVATIONS[cfg.hidden_act]
            # transformers' own cos and sin table (rope scaling included), as fp32
            self.rotary = (decoder.cos.float().contiguous(), decoder.sin.float().contiguous())
            if family == "gpt_neox":
                base = model.gpt_neox
                self.layers = [_neox_layer(b, self.heads, self.head_dim, layer.scaling)
                               for b, layer in zip(base.layers, w.layers)]
                self.wte, self.wpe = base.embed_in.weight, None
                self.norm_f, self.lm_bias = _folded(base.final_layer_norm, self.lm_head.detach())
            elif family == "phi":
                base = model.model
                self.layers = [_phi_layer(b, layer.scaling) for b, layer in zip(base.layers, w.layers)]
                self.wte, self.wpe = base.embed_tokens.weight, None
                self.norm_f, self.lm_bias = _folded(base.final_layernorm, self.lm_head.detach(), model.lm_head.bias)
            else:
                base = model.model
                self.layers = [_llama_layer(b, layer.scaling) for b, layer in zip(base.layers, w.layers)]
                self.wte, self.wpe = base.embed_tokens.weight, None
                self.norm_f, self.lm_bias = _rms(base.norm), None
                if family == "gemma":
                    self.embed_scale = float(torch.tensor(cfg.hidden_size ** 0.5, dtype=self.wte.dtype))
            #: bytes of weight copies made for the step (device memory beyond the model's own)
            self.copied_weight_bytes = sum(_bytes(layer.qkv_w) for layer in self.layers)
        else:
            gpt2 = family == "gpt2"
            base = model.transformer

            def rows(linear) -> torch.Tensor:  # (N, K): nn.Linear as it is, gpt2's Conv1D transposed once
                return linear.weight.detach().t().contiguous() if gpt2 else linear.weight.detach()

            self.act = fused_kernels.ACTIVATIONS[cfg.activation_function]
            self.layers = [_gpt_layer(b, rows, layer.scaling) for b, layer in zip(base.h, w.layers)]
            self.wte, self.wpe = base.wte.weight, base.wpe.weight
            self.norm_f, self.lm_bias = _folded(base.ln_f, self.lm_head.detach())
            self.rotary = None
            self.copied_weight_bytes = sum(_bytes(t) for layer in self.layers
                                           for t in (layer.qkv_w, layer.out_w, layer.fc_w, layer.proj_w)) if gpt2 else 0
        device = self.wte.device
        if logit_bias is not None:  # folded into the last GEMV's bias
            bias = logit_bias.to(device=device, dtype=torch.float32)
            self.lm_bias = bias.clone() if self.lm_bias is None else self.lm_bias + bias
        #: a gated MLP (llama): its first GEMV reads the gate and up projections at once
        self.gated = self.layers[0].up_w is not None
        hidden = cfg.hidden_size
        qkv_size = (self.heads + 2 * self.kv_heads) * self.head_dim

        def buffer(n):  # the step's activations: fp32, fixed addresses (a CUDA graph reads them)
            return torch.zeros(n, device=device, dtype=torch.float32)

        self.x, self.qkv, self.attn = buffer(hidden), buffer(qkv_size), buffer(self.heads * self.head_dim)
        self.mlp = buffer(self.layers[0].fc_w.shape[0])
        self.logits = buffer(self.lm_head.shape[0])
        self.rows = None  # prefill's activations (made by its first call)
        self.first_position = torch.zeros(1, dtype=torch.long, device=device)  # where a prompt starts
        # what GEMVs that split K across programs share (they run one after another)
        self.scratch = fused_kernels.GemvScratch(max(self.logits.numel(), self.mlp.numel(), qkv_size), device)
        # the greedy choice, packed (fused_kernels.gemv's ``best``); consumed and reset each step
        self.best = torch.full((1,), fused_kernels.NO_BEST, dtype=torch.long, device=device)
        self.pos = None  # the step's position (a device tensor), from the first call on
        from .fused_tuning import site_shapes, tuned

        #: each GEMV site's launch configuration (fused_tuning.SITES), tuned on CUDA
        self.configs = {site: fused_kernels.default_config(n, k) for site, (n, k) in site_shapes(self).items()}
        #: how the configurations were chosen (fused_tuning.tuned), or None where not tuned
        self.tuning = (tuned(self, tuning_cache, progress=progress)
                       if device.type == "cuda" and not fused_kernels.INTERPRETED else None)

    @torch.no_grad()
    def step(self, tok, pos, generated) -> None:
        """One decode step on the device state: ``tok`` (1, 1) at ``pos`` (1,) in; the greedy
        next token out, as ``pos += 1; generated[pos] = tok = choice`` (no host involved)."""
        self(tok, pos, best=self.best)
        self.kernels.greedy_advance(self.best, tok, pos, generated)

    @torch.no_grad()
    def __call__(self, tok, pos, best=None):
        self.pos = pos
        self.kernels.embed(tok, pos, self.wte, self.wpe, self.x, scale=self.embed_scale)
        for i in range(len(self.layers)):
            self._layer(i)
        self.lm_head_gemv(best)
        return self.logits.view(1, -1)

    def attention(self, i: int) -> None:
        """Layer ``i``'s attention at the step's position (a kernel of its own)."""
        self.kernels.decode_attention(self.qkv, self.keys[i], self.values[i], self.pos, self.attn, heads=self.heads,
                                      kv_heads=self.kv_heads, head_dim=self.head_dim, scale=self.layers[i].scaling,
                                      rotary=self.rotary)

    def _layer(self, i: int, attention: bool = True) -> None:
        """Layer ``i`` of a decode step: its four GEMVs, and (``attention``) its attention."""
        def project(site, x, w, y, **epilogue):
            self.kernels.gemv(x, w, y, scratch=self.scratch, config=self.configs[site], **epilogue)

        self._layer_kernels(self.layers[i], project, self.x, self.qkv, self.attn, self.mlp,
                            (lambda: self.attention(i)) if attention else None)

    def _layer_kernels(self, layer: _Layer, project, x, qkv, attn, mlp, attention) -> None:
        """One layer's four projections (``project(site, x, w, y, **epilogue)``) over the
        activations ``x``, ``qkv``, ``attn`` and ``mlp``, with ``attention()`` between the first
        two. With a parallel residual, the MLP's first projection reads x before attention's
        output is added to it."""
        project("qkv", x, layer.qkv_w, qkv, bias=layer.qkv_b, **layer.norm_1)
        if attention is not None:
            attention()
        if not self.parallel:
            project("out", attn, layer.out_w, x, bias=layer.out_b, residual=True)
        project("fc", x, layer.fc_w, mlp, bias=layer.fc_b, **layer.norm_2, act=self.act, up=layer.up_w)
        if self.parallel:
            project("out", attn, layer.out_w, x, bias=layer.out_b, residual=True)
        project("proj", mlp, layer.proj_w, x, bias=layer.proj_b, residual=True)

    @torch.no_grad()
    def prefill(self, ids, tok, pos, generated) -> None:
        """A prompt ``ids`` (n,) at positions 0 to n - 1: every layer over all its tokens at
        once (each weight read once, not once per token), its keys and values written into the
        cache, and the greedy choice after its last token, as :meth:`step` makes it: ``pos =
        n; generated[n] = tok = choice``."""
        k, n = self.kernels, ids.numel()
        if self.rows is None:  # one row per position, up to the cache's capacity
            capacity = self.keys[0].shape[2]
            self.rows = {name: torch.zeros(capacity, v.numel(), device=v.device, dtype=torch.float32)
                         for name, v in (("x", self.x), ("qkv", self.qkv), ("attn", self.attn), ("mlp", self.mlp))}
            self.rows_scratch = k.RowsScratch(max(self.mlp.numel(), self.qkv.numel(), self.x.numel()), self.x.device)
        k.embed(ids, self.first_position, self.wte, self.wpe, self.rows["x"][:n], scale=self.embed_scale)
        self.prefill_layers(n)
        self.lm_head_gemv(self.best, x=self.rows["x"][n - 1])  # the last token only
        pos.fill_(n - 1)
        k.greedy_advance(self.best, tok, pos, generated)

    def prefill_layers(self, n: int, attention: bool = True) -> None:
        """Every layer of :meth:`prefill` over the first ``n`` positions' activations (after a
        first prefill made them); ``attention`` False: the GEMMs alone (what
        tools/compile_variants.py times apart)."""
        x, qkv, attn, mlp = (self.rows[name][:n] for name in ("x", "qkv", "attn", "mlp"))

        def project(site, x, w, y, **epilogue):
            self.kernels.rows_gemm(x, w, y, scratch=self.rows_scratch, **epilogue)

        for i, layer in enumerate(self.layers):
            self._layer_kernels(layer, project, x, qkv, attn, mlp,
                                (lambda i=i: self.prefill_attention(i, n)) if attention else None)

    def prefill_attention(self, i: int, n: int) -> None:
        """Layer ``i``'s attention over the first ``n`` positions of :meth:`prefill`'s q, k and v."""
        self.kernels.prefill_attention(self.rows["qkv"][:n], self.keys[i], self.values[i], self.rows["attn"][:n],
                                       heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim,
                                       scale=self.layers[i].scaling, rotary=self.rotary)

    def layers_at(self, pos, attention: bool = True) -> None:
        """Every layer at position ``pos`` (what fused_tuning times), without the embedding and
        the vocabulary GEMV; ``attention`` False: the GEMVs alone. They leave the activations
        and the cache's slot at ``pos`` as the step never would: the step rebuilds the first
        from the embedding, and rewrites the slot before any later position reads it."""
        self.pos = pos
        for i in range(len(self.layers)):
            self._layer(i, attention)

    def lm_head_gemv(self, best=None, x=None) -> None:
        """The vocabulary GEMV (final norm folded in) of ``x`` (by default the step's
        activations); with ``best``, the greedy choice."""
        self.kernels.gemv(self.x if x is None else x, self.lm_head, self.logits, bias=self.lm_bias, **self.norm_f,
                          best=best, scratch=self.scratch, config=self.configs["lm_head"])

    def reset_greedy_choice(self) -> None:
        self.best.fill_(self.kernels.NO_BEST)


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
