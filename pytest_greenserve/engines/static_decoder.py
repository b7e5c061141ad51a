"""A decoder with a static KV cache, built from a loaded transformers causal LM.

The ``compile`` engine captures one decode step whole (a CUDA graph, or one torch.compile
graph). That needs a step whose every tensor has a fixed shape and a fixed address: the KV
cache is preallocated for ``capacity`` positions, the step writes its key and value at the
position held in a device tensor, and attention reads the whole cache through a mask that
hides positions after the current one (so stale entries of an earlier request never count).
transformers' own forward cannot be captured that way in 4.57 for most of these families
(its caches grow, and its mask code branches on tensor values).

Only the wiring is written here: attention with the static cache, rotary positions, the
residual layout of each family. The numerics come from the model's own modules (layer norms,
MLPs, projections, embeddings, the rotary table), called as they are, so the weights are
shared with the transformers model (no copy) and every family keeps its activation functions
and norms. Greedy tokens then equal transformers' up to fp32 kernel differences, which the
tie-aware consistency check covers.

Families: gpt2, gpt_bigcode (multi-query or not), gpt_neox, phi, llama, gemma, stablelm.
Bloom (ALiBi attention) and others are refused with a one-line reason (:func:`unsupported_reason`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: families whose wiring is written below
FAMILIES = ("gpt2", "gpt_bigcode", "gpt_neox", "phi", "llama", "gemma", "stablelm")


def unsupported_reason(architecture: str) -> str | None:
    """Why the static decoder cannot run ``architecture`` (a transformers model_type), or None."""
    if architecture in FAMILIES:
        return None
    why = " (ALiBi attention)" if architecture == "bloom" else ""
    return f"compile has no static decoder for {architecture}{why}; it serves {', '.join(FAMILIES)}"


@dataclass
class Layer:
    """One transformer block, as the callables the static step needs.

    ``qkv(h)`` returns query, key, value as (batch, sequence, heads × head_dim);
    ``ln_mlp`` is None where the MLP reads the attention's input norm (phi, parallel stablelm).
    """

    ln_attn: Callable
    qkv: Callable
    out_proj: Callable
    ln_mlp: Callable | None
    mlp: Callable
    parallel: bool  # x + attn(ln(x)) + mlp(ln'(x)), else x + attn(...) then + mlp(...)
    scaling: float


@dataclass
class Wiring:
    embed: Callable  # (ids (1, n), positions (n,)) -> hidden (1, n, hidden)
    layers: list[Layer]
    final_norm: Callable
    lm_head: Callable
    heads: int
    kv_heads: int
    head_dim: int
    rotary: nn.Module | None  # transformers' rotary embedding module, for the cos/sin table
    rotary_dims: int  # leading dims of each head that rotate (partial rotary), 0 without rotary


def _split(sizes):
    return lambda proj: (lambda h: proj(h).split(sizes, dim=-1))


def wiring(model) -> Wiring:
    """Describe ``model`` (a transformers causal LM of one of :data:`FAMILIES`) for the step."""
    cfg = model.config
    family = cfg.model_type
    reason = unsupported_reason(family)
    if reason:
        raise ValueError(reason)
    hidden = cfg.hidden_size
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads

    if family in ("gpt2", "gpt_bigcode"):
        base = model.transformer
        mqa = family == "gpt_bigcode" and cfg.multi_query
        kv_heads = 1 if mqa else heads
        if family == "gpt2":
            qkv = _split([hidden, hidden, hidden])  # Conv1D: q | k | v
        elif mqa:
            qkv = _split([hidden, head_dim, head_dim])  # q | one key head | one value head
        else:
            qkv = _per_head_qkv(heads, head_dim)  # interleaved per head, as gpt_neox
        scale = head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
        # gpt2's scale_attn_by_inverse_layer_idx (codeparrot sets it) is applied by transformers'
        # eager attention only; its default SDPA path ignores it, so follow what the model runs.
        by_layer = family == "gpt2" and cfg.scale_attn_by_inverse_layer_idx and cfg._attn_implementation == "eager"
        layers = [Layer(b.ln_1, qkv(b.attn.c_attn), b.attn.c_proj, b.ln_2, b.mlp, False,
                        scale / (i + 1) if by_layer else scale) for i, b in enumerate(base.h)]

        def embed(ids, positions):
            return base.wte(ids) + base.wpe(positions)[None]

        return Wiring(embed, layers, base.ln_f, model.lm_head, heads, kv_heads, head_dim, None, 0)

    if family == "gpt_neox":
        base = model.gpt_neox
        layers = [Layer(b.input_layernorm, _per_head_qkv(heads, head_dim)(b.attention.query_key_value),
                        b.attention.dense, b.post_attention_layernorm, b.mlp, cfg.use_parallel_residual,
                        b.attention.scaling) for b in base.layers]
        rot = base.layers[0].attention.rotary_ndims
        return Wiring(lambda ids, positions: base.embed_in(ids), layers, base.final_layer_norm, model.embed_out,
                      heads, heads, head_dim, base.rotary_emb, rot)

    # phi, llama, gemma, stablelm: q_proj/k_proj/v_proj under self_attn, model.model
    base = model.model
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if getattr(cfg, "qk_layernorm", False):
        raise ValueError(f"compile: {family} with qk_layernorm is not supported")

    def qkv_of(attn):
        return lambda h: (attn.q_proj(h), attn.k_proj(h), attn.v_proj(h))

    layers = []
    for b in base.layers:
        attn = b.self_attn
        out = attn.dense if family == "phi" else attn.o_proj
        parallel = family == "phi" or bool(getattr(cfg, "use_parallel_residual", False))
        ln_mlp = None if family == "phi" else getattr(b, "post_attention_layernorm", None)
        layers.append(Layer(b.input_layernorm, qkv_of(attn), out, ln_mlp, b.mlp, parallel,
                            getattr(attn, "scaling", head_dim ** -0.5)))
    rot = int(head_dim * getattr(cfg, "partial_rotary_factor", 1.0))
    norm = base.final_layernorm if family == "phi" else base.norm
    if family == "gemma":
        normalizer = hidden ** 0.5

        def embed(ids, positions):
            h = base.embed_tokens(ids)
            return h * torch.tensor(normalizer, dtype=h.dtype)  # as GemmaModel.forward
    else:
        def embed(ids, positions):
            return base.embed_tokens(ids)
    return Wiring(embed, layers, norm, model.lm_head, heads, kv_heads, head_dim, base.rotary_emb, rot)


def _per_head_qkv(heads: int, head_dim: int):
    """gpt_neox (and non-multi-query gpt_bigcode): the fused projection is laid out per head as
    [q_h | k_h | v_h]; returns q, k, v as (batch, sequence, heads × head_dim)."""
    def wrap(proj):
        def qkv(h):
            b, n, _ = h.shape
            q, k, v = proj(h).view(b, n, heads, 3 * head_dim).chunk(3, dim=-1)
            return q.reshape(b, n, -1), k.reshape(b, n, -1), v.reshape(b, n, -1)
        return qkv
    return wrap


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticDecoder(nn.Module):
    """``forward(ids (1, n), positions (n,))`` -> logits of the last position (1, vocab).

    Writes the step's keys and values into the static cache at ``positions``; attention sees
    cache positions ``<=`` each query's position. ``positions`` must be a device tensor (a
    captured graph reads the current position from it, never from Python).
    """

    def __init__(self, model, capacity: int):
        super().__init__()
        self.model = model  # keeps the transformers modules (and their weights) alive
        self.w = wiring(model)
        self.capacity = capacity
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        w = self.w
        shape = (1, w.kv_heads, capacity, w.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in w.layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in w.layers]
        self.cache_positions = torch.arange(capacity, device=device)
        if w.rotary is not None:
            # transformers' own rotary module makes the table (rope scaling variants included)
            with torch.no_grad():
                cos, sin = w.rotary(torch.zeros(1, device=device, dtype=dtype), self.cache_positions[None])
            self.cos, self.sin = cos[0], sin[0]  # (capacity, rotary dims)

    @property
    def kv_cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def _attend(self, layer: Layer, index: int, h, positions, mask):
        w = self.w
        n = h.shape[1]
        q, k, v = layer.qkv(h)
        q = q.view(1, n, w.heads, w.head_dim).transpose(1, 2)
        k = k.view(1, n, w.kv_heads, w.head_dim).transpose(1, 2)
        v = v.view(1, n, w.kv_heads, w.head_dim).transpose(1, 2)
        if w.rotary is not None:
            r = w.rotary_dims
            cos, sin = self.cos[positions], self.sin[positions]  # (n, r), broadcast over heads
            q = torch.cat((q[..., :r] * cos + _rotate_half(q[..., :r]) * sin, q[..., r:]), dim=-1)
            k = torch.cat((k[..., :r] * cos + _rotate_half(k[..., :r]) * sin, k[..., r:]), dim=-1)
        self.keys[index].index_copy_(2, positions, k)
        self.values[index].index_copy_(2, positions, v)
        out = F.scaled_dot_product_attention(q, self.keys[index], self.values[index], attn_mask=mask,
                                             scale=layer.scaling, enable_gqa=w.kv_heads != w.heads)
        return layer.out_proj(out.transpose(1, 2).reshape(1, n, w.heads * w.head_dim))

    def forward(self, ids, positions):
        w = self.w
        mask = self.cache_positions[None, :] <= positions[:, None]  # (n, capacity): causal over the cache
        x = w.embed(ids, positions)
        for i, layer in enumerate(w.layers):
            h = layer.ln_attn(x)
            attn = self._attend(layer, i, h, positions, mask)
            if layer.parallel:
                x = x + attn + layer.mlp(h if layer.ln_mlp is None else layer.ln_mlp(x))
            else:
                x = x + attn
                x = x + layer.mlp(layer.ln_mlp(x))
        return w.lm_head(w.final_norm(x[:, -1:, :]))[:, 0, :]
