"""llama.cpp through llama-cpp-python (``llamacpp``): what local code assistants run on laptops.

The model is converted to GGUF by llama.cpp's own converter (``convert_hf_to_gguf.py``, run in
a child process by :mod:`.gguf_convert`) in f16, and the q8_0 file is quantised from that f16
file by llama.cpp's quantiser (``llama_model_quantize``), so both come from the same weights.
Each is a configuration of its own: ``llamacpp-cpu:f16`` and ``llamacpp-cpu:q8_0`` (a bare
``llamacpp-cpu`` is f16). Both files are cached and keyed like every export.

The converter is not in the llama-cpp-python wheel: it is found in ``$GREENSERVE_LLAMA_CPP``
(a llama.cpp source tree), else in ``<cache dir>/llama.cpp``, where ``tools/install_llamacpp.sh``
copies it from the llama-cpp-python sdist it builds.

Tokens: greedy argmax over the last position's logits with every EOS id masked, one
``Llama.eval`` per token, as the torch engine does. f16 weights round the fp32 ones, so
tokens may differ from torch's where the top two scores are close; q8_0 is a different
(quantised) model: its match rate is a quality figure, not an exactness check.
On CUDA every layer is offloaded (``n_gpu_layers=-1``) where the build has GPU offload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .base import Engine, EngineError, Generation, cuda_unavailable_reason, missing_module_reason
from .exports import cached_export, export_dir

#: the context the model is loaded with (KV cache and llama-cpp-python's logits table are
#: allocated for it), or the model's trained context where that is shorter
MAX_CONTEXT = 2048
#: the converter's source tree, where not in <cache dir>/llama.cpp
CONVERTER_ENV = "GREENSERVE_LLAMA_CPP"
CONVERTER_HINT = (f"run tools/install_llamacpp.sh (copies it from the llama-cpp-python sdist) or set "
                  f"{CONVERTER_ENV} to a llama.cpp source tree")


def converter_dir(cache_dir: Path) -> Path | None:
    """Where llama.cpp's ``convert_hf_to_gguf.py`` is, or None."""
    for candidate in (os.environ.get(CONVERTER_ENV), cache_dir / "llama.cpp"):
        if candidate and (Path(candidate) / "convert_hf_to_gguf.py").is_file():
            return Path(candidate)
    return None


def _child(args: list[str], what: str) -> None:
    """Run ``python -m pytest_greenserve.engines.gguf_convert ARGS``; EngineError with its last line."""
    done = subprocess.run([sys.executable, "-m", "pytest_greenserve.engines.gguf_convert", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
        raise EngineError(f"{what} exited {done.returncode}: {lines[-1] if lines else 'no output'}")


class LlamaCppEngine(Engine):
    name = "llamacpp"
    libraries = ("llama-cpp-python", "torch", "transformers")
    variants = ("f16", "q8_0")
    #: bytes read per weight in each variant (q8_0: blocks of 32 int8 weights and one fp16
    #: scale) and per KV-cache element (llama.cpp's default cache type, f16): the roofline's
    #: memory floor of a GGUF configuration
    weight_bytes_per_param = {"f16": 2.0, "q8_0": 34 / 32}
    kv_bytes_per_element = 2

    @classmethod
    def unavailable_reason(cls, provider):
        reason = missing_module_reason("llama_cpp", "transformers", extra="llamacpp")
        if reason:
            return reason + "; llama-cpp-python builds from source: tools/install_llamacpp.sh"
        if provider == "cuda":
            import llama_cpp

            if not llama_cpp.llama_supports_gpu_offload():
                return "this llama-cpp-python build has no GPU offload (rebuild with CMAKE_ARGS=-DGGML_CUDA=on)"
            return cuda_unavailable_reason()
        return None

    @property
    def variant(self) -> str:
        return self.options.variant or self.variants[0]

    def _gguf(self, variant: str) -> Path:
        """The cached GGUF file of ``variant`` (converted, or quantised from the f16 one)."""
        converter = converter_dir(self.model.cache_dir)
        if converter is None:
            raise EngineError(f"llama.cpp's convert_hf_to_gguf.py not found: {CONVERTER_HINT}")
        key = {**self.versions(), "converter": str(converter.resolve())}
        target = export_dir(self.model, f"{self.name}-{variant}", key)
        if variant == "f16":
            if not os.path.isdir(self.model.ref):
                raise EngineError(f"llamacpp converts a local model directory; {self.model.ref} is not one "
                                  f"(pass --greenserve-models={self.model.name}=/local/path)")
            build = lambda tmp: _child([str(converter), self.model.ref, str(tmp / "model.gguf"), "f16"],
                                       "convert_hf_to_gguf")
        else:
            source = self._gguf("f16")
            build = lambda tmp: _child(["quantize", str(source), str(tmp / "model.gguf"), variant], "llama_model_quantize")
        try:
            cached_export(target, build, self.options.progress)
        except EngineError as exc:
            raise EngineError(f"llamacpp {variant} export of {self.model.name} failed: {exc}") from exc
        return target / "model.gguf"

    def load(self):
        from llama_cpp import Llama

        if self.variant not in self.variants:
            raise EngineError(f"llamacpp: unknown variant {self.variant!r}; choose {', '.join(self.variants)}")
        path = self._gguf(self.variant)
        threads = self.options.threads
        kwargs = dict(model_path=str(path), n_gpu_layers=-1 if self.provider == "cuda" else 0, logits_all=False,
                      verbose=False, **({"n_threads": threads, "n_threads_batch": threads} if threads else {}))
        try:
            llm = Llama(n_ctx=0, **kwargs)  # 0: the model's trained context (learned positions stop there)
            if llm.n_ctx() > MAX_CONTEXT:
                llm.close()
                llm = Llama(n_ctx=MAX_CONTEXT, **kwargs)
        except Exception as exc:  # ValueError: "Failed to load model from file"
            raise EngineError(f"llamacpp could not load {path.name} of {self.model.name}: {exc}".splitlines()[0]) from exc
        self.llm = llm
        self.gguf_path = path

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        import llama_cpp
        import numpy as np

        llm = self.llm
        n_vocab = llm.n_vocab()
        if len(input_ids) + new_tokens > llm.n_ctx():
            raise EngineError(f"prompt + new tokens ({len(input_ids)} + {new_tokens}) exceed the context ({llm.n_ctx()})")
        eos = [i for i in self.model.eos_token_ids if 0 <= i < n_vocab]
        start = time.perf_counter()
        llm.reset()  # position 0: eval() drops the KV cache beyond it
        llm.eval(list(input_ids))  # prefill
        tokens: list[int] = []
        ttft = None
        while True:
            # the last position's logits, straight from the context (Llama.eval keeps none unless
            # logits_all, which would compute every prompt position's): a copy, EOS masked below
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()
            logits[eos] = -np.inf  # EOS never chosen, as torch's min_new_tokens does
            tokens.append(int(logits.argmax()))
            if ttft is None:
                ttft = time.perf_counter() - start
            if len(tokens) == new_tokens:
                return Generation(token_ids=tokens, ttft_s=ttft)
            llm.eval([tokens[-1]])

    def thread_settings(self) -> dict:
        """The base's, plus llama.cpp's decode and batch (prefill) threads as the context has them."""
        out = super().thread_settings()
        llm = getattr(self, "llm", None)
        if llm is not None:
            out["llamacpp_threads"] = llm.context_params.n_threads
            out["llamacpp_threads_batch"] = llm.context_params.n_threads_batch
        return out

    def load_info(self) -> dict:
        """The GGUF file served (its weight format is the configuration's variant) and its size."""
        path = getattr(self, "gguf_path", None)
        return {"gguf": path.name if path else None, "gguf_variant": self.variant,
                "gguf_bytes": path.stat().st_size if path else None}

    def close(self):
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
        self.llm = None
