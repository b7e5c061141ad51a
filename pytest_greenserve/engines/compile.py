"""``compile``: the decode step captured whole, over a static KV cache.

Eager PyTorch (the paper's best GPU configuration) launches every kernel of every layer from
Python, one token at a time; on an H100 the card then waits on the host most of the time.
This engine runs the model as a :class:`~.static_decoder.StaticDecoder` (fixed shapes, a
preallocated KV cache, the current position in a device tensor) and captures one decode step,
greedy choice included, as one unit:

* ``graph`` (CUDA): the eager step recorded once as a CUDA graph and replayed per token: one
  launch per token instead of hundreds;
* ``inductor`` (CPU or CUDA): the whole step, greedy choice and state updates included,
  compiled by ``torch.compile(fullgraph=True, dynamic=False)``, which fuses its operators
  (C++ on CPU, Triton on CUDA);
* ``inductor+graph`` (CUDA): the decoder's forward compiled, then the whole step captured as
  a CUDA graph (what gpt-fast's ``mode="reduce-overhead"`` does, captured by hand so the step's
  state stays on the device);
* ``fused+graph`` (CUDA; gpt2, multi-query gpt_bigcode, gpt_neox, phi, llama, gemma): the decode step as hand-fused
  Triton kernels, five per layer (:mod:`.fused_decoder`), captured as a CUDA graph; prefill
  by the same kinds of kernels over the prompt's tokens at once, captured per prompt length
  (:data:`FUSED_PREFILL`);
* ``eager``: the static decoder without capture (a diagnostic: what the static cache alone gives);
* ``auto`` (the default): on CUDA with Triton installed, ``fused+graph`` for the families it
  serves that were measured on a card (``fused_decoder.MEASURED_FAMILIES``)
  and ``inductor+graph`` for the others; ``graph`` without Triton; on CPU ``inductor``
  when a C++ compiler is found, else ``eager``. If compiling fails, ``auto``
  falls back to the uncompiled mode and says so; a mode asked for by name fails instead.

Prefill runs the same decoder over the prompt. On CUDA it is captured once per prompt length
(the runner's warm-up sends one prompt of every length, so capture never happens inside a
measured request); on CPU it runs uncompiled, so 10-15-token prompts never recompile. The
prefill graphs kept are bounded (:data:`PREFILL_GRAPHS_MAX`, least recently used dropped), so
a server's clients cannot grow device memory by sending prompts of ever new lengths.

Everything built at load (the decoder, compilation, captures) is timed and reported by
:meth:`CompileEngine.load_info` (``compile_s``), apart from the measured samples. A request
longer than the cache grows it (and captures again) and says so in ``load_info``; the cache
never grows past the model's context window, and a request over the window is refused with
:class:`EngineError` naming it (a position past it could trip a device-side assert on CUDA that
breaks every later request).

Tokens: greedy argmax with EOS forbidden at every step, as the other engines; they equal the
``torch`` engine's up to fp32 kernel differences (the tie-aware consistency rule).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from typing import Sequence

from collections import OrderedDict

from ..context_window import context_window
from .base import Engine, EngineError, Generation, failure_line, load_torch_model, torch_unavailable_reason

MODES = ("auto", "eager", "graph", "inductor", "inductor+graph", "fused+graph")
#: KV cache positions allocated at load: prompt (10-15 tokens) + 32 new tokens fit with room
INITIAL_CAPACITY = 64
#: the prompt of the generation run at load, which compiles/captures before any request
LOAD_PROMPT_LEN = 8
#: eager warm-up runs before a CUDA graph capture (cuBLAS/cuDNN initialise their workspaces)
CAPTURE_WARMUP = 3
#: prefill graphs kept, one per prompt length, least recently used dropped past this: the
#: benchmark's prompts have 6 lengths (10-15 tokens), a server's clients any number
PREFILL_GRAPHS_MAX = 32


#: fused+graph's prefill runs the fused kernels (:meth:`.fused_decoder.FusedDecoder.prefill`,
#: captured) instead of the eager decoder, captured: on starcoderbase-1b in bf16 on an H200 its
#: graph runs in 1.34 ms against the eager one's 1.9-2.0 (docs/measurements.md). Read when a
#: prompt length's prefill is captured, so tools/compile_variants.py (variant
#: fused-eagerprefill) can compare both.
FUSED_PREFILL = True
#: What ``auto`` falls back to, in order, where its mode fails to build: the next fastest, down
#: to the uncompiled step (which still captures on CUDA, or runs the static decoder on CPU)
FALLBACKS = {"fused+graph": ["inductor+graph", "graph"], "inductor+graph": ["graph"], "inductor": ["eager"]}


def resolve_mode(mode: str, provider: str) -> str:
    """The concrete mode for ``mode`` on ``provider`` (``auto`` resolved); raises EngineError."""
    if mode not in MODES:
        raise EngineError(f"compile: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        if provider == "cuda":
            return "inductor+graph" if importlib.util.find_spec("triton") is not None else "graph"
        return "inductor" if _cxx_compiler() else "eager"
    if "graph" in mode and provider != "cuda":
        raise EngineError(f"compile: mode {mode!r} needs CUDA (CUDA graphs); on cpu use inductor or eager")
    if mode == "fused+graph" and importlib.util.find_spec("triton") is None:
        raise EngineError("compile: mode 'fused+graph' needs Triton (pip install triton)")
    return mode


def _cxx_compiler() -> str | None:
    """A C++ compiler for inductor's CPU code, as it looks for one ($CXX, then the usual names)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")


class CompileEngine(Engine):
    name = "compile"
    libraries = ("torch", "transformers")
    dtypes = ("fp32", "bf16")

    @classmethod
    def unavailable_reason(cls, provider):
        return torch_unavailable_reason(provider, extra="torch")

    @classmethod
    def model_unavailable_reason(cls, architecture: str) -> str | None:
        from .static_decoder import unsupported_reason

        return unsupported_reason(architecture)

    # -- load ---------------------------------------------------------------------------------
    def load(self):
        import torch

        started = time.perf_counter()
        self.device = "cuda" if self.provider == "cuda" else "cpu"
        asked = self.options.compile_mode
        self.mode = resolve_mode(asked, self.provider)
        self.fallback: str | None = None
        self.captures = 0
        self.capture_s = 0.0  # CUDA graph captures after load (new prompt lengths, a grown cache)
        self._loading = True
        self.torch_model = load_torch_model(self)
        text_config = self.torch_model.config.get_text_config()
        vocab = text_config.vocab_size
        self.context_tokens = context_window(text_config)  # None: no fixed window known
        if asked == "auto" and self.mode == "inductor+graph":
            from .fused_decoder import MEASURED_FAMILIES
            from .fused_decoder import unsupported_reason as fused_unsupported

            config = self.torch_model.config
            if fused_unsupported(config) is None and config.model_type in MEASURED_FAMILIES:
                self.mode = "fused+graph"  # 1.4-1.8x faster than inductor+graph on an H200 (docs/measurements.md)
        self.prefill_graphs_dropped = 0
        # EOS may never win (generate's min_new_tokens processor): -inf added before the argmax
        self.eos_bias = torch.zeros(vocab, device=self.device)
        eos = [i for i in self.model.eos_token_ids if 0 <= i < vocab]
        if eos:
            self.eos_bias[eos] = float("-inf")
        # auto: a mode that fails to build (a Triton kernel the card refuses, inductor's
        # compiler) falls back to the next, and says why in ``compile_fallback``
        modes = [self.mode] + (FALLBACKS.get(self.mode, []) if asked == "auto" else [])
        for i, mode in enumerate(modes):
            self.mode = mode
            try:
                try:
                    self._build(INITIAL_CAPACITY)
                except ValueError as exc:  # a configuration the static decoder does not wire
                    raise EngineError(str(exc)) from exc
                self._say(f"compiling {self.model.name} for {self.name}-{self.provider} ({self.mode}; "
                          "outside the measured samples)")
                self.compile_s = self._first_generation(vocab)
                break
            except EngineError:
                raise
            except Exception as exc:
                if i == len(modes) - 1:
                    raise EngineError(failure_line(f"compile could not build {self.model.name} ({mode})", exc)) from exc
                reason = failure_line(f"{mode} failed", exc)
                self.fallback = reason if self.fallback is None else f"{self.fallback}; {reason}"
                self._say(f"compile: {reason}; falling back to {modes[i + 1]}")
        self.load_s = time.perf_counter() - started
        self._loading = False

    def _first_generation(self, vocab: int) -> float:
        """One short generation, which compiles (inductor) and captures (CUDA graphs) the decode
        step and this prompt length's prefill; returns its seconds."""
        started = time.perf_counter()
        self._prepare()
        self.generate([1 + i % (vocab - 1) for i in range(LOAD_PROMPT_LEN)], 4)
        return time.perf_counter() - started

    def _say(self, message: str) -> None:
        if self.options.progress:
            self.options.progress(f"greenserve: {message}")

    def _build(self, capacity: int) -> None:
        """The decoder with a ``capacity``-position cache, its state tensors, and the decode
        callable of this mode (compiled and captured by :meth:`_prepare`; prefill graphs are
        captured at the first request of each prompt length)."""
        import torch

        from .static_decoder import StaticDecoder

        self.decoder = StaticDecoder(self.torch_model, capacity)
        self.capacity = capacity
        dev = self.device
        # the step's state lives on the device, so a captured step needs no host input:
        self.tok = torch.zeros(1, 1, dtype=torch.long, device=dev)  # the last token
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # its position
        self.generated = torch.zeros(capacity, dtype=torch.long, device=dev)  # tokens by position
        forward, step = self.decoder.forward, self._eager_decode_step
        self.fused = None
        if self.mode == "fused+graph":
            from .fused_decoder import FusedDecoder

            # ValueError for a family it cannot run; its step makes the greedy choice itself
            self.fused = FusedDecoder(self.decoder, logit_bias=self.eos_bias,
                                      tuning_cache=self.model.cache_dir / "fused-tuning", progress=self._say)
            step = lambda: self.fused.step(self.tok, self.pos, self.generated)  # noqa: E731
        if "inductor" in self.mode:
            torch._dynamo.reset()  # a rebuilt decoder must not reuse graphs guarded on the old one
            if "graph" in self.mode:
                # the CUDA graph holds the whole step (choice and state updates included) anyway
                forward = torch.compile(forward, fullgraph=True, dynamic=False)
            else:
                # no graph: compile the whole step, so the choice and the state updates are not
                # eager operators launched one by one (on CPU: 0.66 against 0.73 ms/token, mini-gpt2)
                step = torch.compile(step, fullgraph=True, dynamic=False)
        self._decode_forward = forward
        self._decode_step = step
        self._decode_graph = None
        # prompt length -> (graph, its input tensors), most recently used last (PREFILL_GRAPHS_MAX)
        self._prefill_graphs: OrderedDict[int, tuple] = OrderedDict()

    def _advance(self, logits, last_position) -> None:
        """Greedy choice (EOS forbidden), written to the device state: the token at
        ``last_position + 1``."""
        nxt = (logits.float() + self.eos_bias).argmax(dim=-1)  # (1,)
        self.pos.copy_(last_position + 1)
        self.generated.index_copy_(0, self.pos, nxt)
        self.tok.copy_(nxt.view(1, 1))

    def _eager_decode_step(self) -> None:
        """One decode step on the device state (``_build`` makes ``_decode_step`` of it)."""
        self._advance(self._decode_forward(self.tok, self.pos), self.pos)

    def _capture(self, fn):
        """``fn`` recorded as a CUDA graph (after eager warm-up runs on a side stream)."""
        import torch

        started = time.perf_counter()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(CAPTURE_WARMUP):
                self.pos.zero_()  # warm-up steps advance the position; keep it inside the cache
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        self.captures += 1
        if not self._loading:
            self.capture_s += time.perf_counter() - started
        return graph

    # -- requests -----------------------------------------------------------------------------
    def _prefill(self, input_ids: Sequence[int]) -> None:
        import torch

        n = len(input_ids)
        if "graph" not in self.mode:
            ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.device)
            positions = torch.arange(n, device=self.device)
            self._advance(self.decoder(ids, positions), positions[-1:])
            return
        if n in self._prefill_graphs:
            self._prefill_graphs.move_to_end(n)
        else:
            while len(self._prefill_graphs) >= PREFILL_GRAPHS_MAX:
                self._prefill_graphs.popitem(last=False)  # its memory pool is freed with it
                self.prefill_graphs_dropped += 1
            ids = torch.zeros(1, n, dtype=torch.long, device=self.device)
            positions = torch.arange(n, device=self.device)
            if self.fused is not None and FUSED_PREFILL:
                # every layer over the prompt's tokens at once, each weight read once for all
                graph = self._capture(lambda: self.fused.prefill(ids[0], self.tok, self.pos, self.generated))
            else:
                # the eager decoder (inductor would compile once per prompt length)
                graph = self._capture(lambda: self._advance(self.decoder(ids, positions), positions[-1:]))
            # a graph reads its inputs by address: keep them alive as long as the graph
            self._prefill_graphs[n] = (graph, ids, positions)
        graph, ids, _ = self._prefill_graphs[n]
        ids.copy_(torch.tensor([list(input_ids)], dtype=torch.long))
        graph.replay()

    def _decode(self) -> None:
        if self._decode_graph is None:
            self._decode_step()
        else:
            self._decode_graph.replay()

    def _prepare(self) -> None:
        """Compile (inductor) and capture (CUDA graphs) the decode step now, before any request:
        capture's warm-up runs move the step's state, which must not happen mid-generation."""
        import torch

        with torch.no_grad():
            if "graph" in self.mode:
                self._decode_graph = self._capture(self._decode_step)
            elif "inductor" in self.mode:
                self._decode_step()  # the first call compiles

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        import torch

        if new_tokens <= 0:
            return Generation(token_ids=[], ttft_s=None)
        n = len(input_ids)
        if self.context_tokens is not None and n + new_tokens > self.context_tokens:
            raise EngineError(f"compile: a {n}-token prompt plus {new_tokens} new tokens exceed "
                              f"{self.model.name}'s context window of {self.context_tokens} tokens")
        if n + new_tokens > self.capacity:
            capacity = 1 << (n + new_tokens - 1).bit_length()
            if self.context_tokens is not None:
                capacity = min(capacity, self.context_tokens)
            self._say(f"compile: growing the KV cache of {self.model.name} to {capacity} positions (captures again)")
            started, self._loading = time.perf_counter(), True  # counted whole, below
            self._build(capacity)
            self._prepare()
            self._loading = False
            self.capture_s += time.perf_counter() - started
        with torch.no_grad():
            start = time.perf_counter()
            self._prefill(input_ids)
            self.tok.item()  # the first new token exists now (.item() synchronises a CUDA device)
            ttft = time.perf_counter() - start
            for _ in range(new_tokens - 1):
                self._decode()
            out = self.generated[n:n + new_tokens].tolist()  # .tolist() synchronises
        return Generation(token_ids=out, ttft_s=ttft)

    # -- reports ------------------------------------------------------------------------------
    def load_info(self) -> dict:
        """What load built, for the sample: the mode; ``load_s``, the whole load; ``compile_s``,
        its first generation, which compiles (inductor) and captures (CUDA graphs) the decode
        step; ``capture_s``, CUDA graph captures since (one per new prompt length, in the
        runner's warm-up, never inside a measured request); the cache size; the graphs (captured
        in all, prefill graphs held now, and dropped as least recently used); the fused step's
        weight copies, GEMV configurations and whether its prefill is fused."""
        return {"compile_mode": self.mode, "load_s": getattr(self, "load_s", None),
                "compile_s": getattr(self, "compile_s", None),
                "capture_s": self.capture_s,
                "compile_fallback": self.fallback, "kv_capacity": self.capacity,
                "cuda_graphs_captured": self.captures, "prefill_graphs_held": len(self._prefill_graphs),
                "prefill_graphs_dropped": self.prefill_graphs_dropped, "context_tokens": self.context_tokens,
                # fused+graph: device memory of weight copies (gpt2's transposed, llama's and phi's q/k/v joined,
                # gpt_neox's reordered), MiB
                "fused_weight_copy_mib": self.fused.copied_weight_bytes / 2**20 if self.fused else None,
                # fused+graph: each GEMV site's launch configuration, as chosen in the step's sequence
                "fused_gemv_tuning": self.fused.tuning if self.fused else None,
                # fused+graph: whether prefill runs the fused kernels (else the decoder, captured)
                "fused_prefill": FUSED_PREFILL if self.fused else None}

    def close(self):
        import gc

        self.decoder = self.torch_model = self.fused = None
        self._decode_graph = None
        self._prefill_graphs = OrderedDict()
        self._decode_forward = self._decode_step = None
        gc.collect()
        if self.provider == "cuda":
            import torch

            torch.cuda.empty_cache()
