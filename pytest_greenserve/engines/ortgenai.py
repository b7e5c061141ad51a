"""ONNX Runtime GenAI (``ortgenai``): the generation loop that replaced optimum's export loop.

Its model builder (``python -m onnxruntime_genai.models.builder``, run in a child process)
writes an ONNX model with the attention fused (GroupQueryAttention) and a static KV buffer
(``past_present_share_buffer``: the cache is allocated once at its full length, so shapes do
not grow per step, which is what lets ONNX Runtime capture CUDA graphs). The build is cached
on disk per provider, keyed like every export (``exports.export_dir``). On CUDA the build asks
for CUDA graphs (``enable_cuda_graph=1``).

Dtypes: fp32, and bf16 (the builder's ``-p bf16``: bf16 weights and activations) on CUDA only:
ONNX Runtime's CPU provider cannot load the builder's bf16 model ("Could not find an
implementation for Where(16) node", onnxruntime 1.32, tried on the tests' tiny llama).

The builder knows a list of architectures (its ``builder.py`` dispatches on the model's
``architectures[0]``): of the paper's models it builds llama (TinyLlama), gemma (codegemma) and
phi (phi-2), and refuses gpt2 (codeparrot), gpt_bigcode (starcoder), gpt_neox (pythia,
stablecode) and bloom; those are skipped with the reason.

Version: onnxruntime-genai 0.16 and later import transformers 5 classes in the builder
(``Qwen3_5ForConditionalGeneration``), while optimum-onnx 0.1 (the ``onnx`` engine) needs
transformers below 4.58; 0.15 is the newest whose builder runs next to the other engines.

A built model is checked before ONNX Runtime loads it: every graph output must be produced by
some node (:func:`unproduced_outputs`). The builder's fp32 CUDA model fails that check (its
fp32 ``Attention`` nodes leave the ``present.*`` KV-cache outputs unproduced: seen with 0.15.2
and 0.18.0), so ``ortgenai-cuda`` in fp32 stops with that reason in one line; bf16 builds
``GroupQueryAttention`` and runs.

Tokens: greedy (``do_sample=False``), ``min_length`` = prompt + new tokens, which masks EOS at
every step exactly as the torch engine's ``min_new_tokens`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Sequence

from .base import Engine, EngineError, Generation, cuda_unavailable_reason, missing_module_reason
from .exports import cached_export, export_dir

#: transformers model_types whose architecture the model builder of onnxruntime-genai 0.15 builds
BUILDER_ARCHITECTURES = frozenset({
    "chatglm", "ernie4_5", "gemma", "gemma2", "gemma3_text", "gemma3", "gpt_oss", "granite", "hunyuan_v1_dense",
    "internlm2", "lfm2", "llama", "mistral", "nemotron", "olmo", "phi", "phi3", "phimoe", "phi3small", "qwen2",
    "qwen3", "smollm3",
})
#: onnxruntime-genai's name of each provider, for the builder (-e) and the runtime config
GENAI_PROVIDERS = {"cpu": "cpu", "cuda": "cuda"}


def unproduced_outputs(model_path) -> list[str]:
    """The ONNX model's graph outputs that no node, graph input or initializer produces (an
    invalid model, which ONNX Runtime refuses with a long message); the weights are not read."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    made = {name for node in graph.node for name in node.output}
    made |= {i.name for i in graph.input} | {t.name for t in graph.initializer}
    return [o.name for o in graph.output if o.name not in made]


class OrtGenaiEngine(Engine):
    name = "ortgenai"
    dtypes = ("fp32", "bf16")
    libraries = ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime", "onnx-ir", "torch", "transformers")

    @classmethod
    def unavailable_reason(cls, provider):
        reason = missing_module_reason("onnxruntime_genai", "onnx_ir", "transformers", extra="ortgenai")
        if reason is None and provider == "cuda":
            import onnxruntime_genai as og

            if not og.is_cuda_available():
                return "this onnxruntime-genai build has no CUDA (pip install onnxruntime-genai-cuda)"
            reason = cuda_unavailable_reason()
        return reason

    def _dtype_reason(self) -> str | None:
        if self.options.dtype == "bf16" and self.provider != "cuda":
            return "ortgenai serves bf16 on CUDA only (ONNX Runtime's CPU provider cannot run the builder's bf16 model)"
        return None

    @classmethod
    def model_unavailable_reason(cls, architecture):
        if architecture in BUILDER_ARCHITECTURES:
            return None
        return (f"onnxruntime-genai's model builder has no {architecture} architecture (of the paper's "
                f"models it builds llama, gemma and phi)")

    def _build(self, tmp):
        """Run the model builder in a child process (it imports torch and writes large files;
        a failure there must not take this process with it)."""
        source = ["-i", self.model.ref] if os.path.isdir(self.model.ref) else ["-m", self.model.ref]
        extra = ["--extra_options", "enable_cuda_graph=1"] if self.provider == "cuda" else []
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", *source, "-o", str(tmp), "-p", self.options.dtype,
               "-e", GENAI_PROVIDERS[self.provider], "-c", str(self.model.cache_dir / "ortgenai-builder"), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
            raise EngineError(f"model builder exited {done.returncode}: {lines[-1] if lines else 'no output'}")

    def load(self):
        import onnxruntime_genai as og

        why = self.model_unavailable_reason(self.model.architecture) or self._dtype_reason()
        if why:
            raise EngineError(why)
        suffix = "" if self.options.dtype == "fp32" else f"-{self.options.dtype}"  # fp32 builds keep their old key
        target = export_dir(self.model, f"{self.name}-{self.provider}{suffix}", self.versions())
        try:
            cached_export(target, self._build, self.options.progress)
        except EngineError as exc:
            raise EngineError(f"ortgenai build of {self.model.name} failed: {exc}") from exc
        except Exception as exc:
            raise EngineError(f"ortgenai build of {self.model.name} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self._check_built(target)
        if self.provider == "cuda":
            import onnxruntime

            # the CUDA and cuDNN libraries of pip's nvidia packages (torch's), for the CUDA provider
            getattr(onnxruntime, "preload_dlls", lambda: None)()
        config = og.Config(str(target))
        config.clear_providers()
        if self.provider == "cuda":
            config.append_provider("cuda")
            config.set_provider_option("cuda", "enable_cuda_graph", "1")
        if self.options.threads and self.provider == "cpu":
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.options.threads}}}}))
        self.target_dir = target
        self.og = og
        self.og_model = og.Model(config)

    def _check_built(self, target) -> None:
        """One line, instead of ONNX Runtime's load error, for a model the builder wrote invalid."""
        try:
            decoder = json.loads((target / "genai_config.json").read_text())["model"]["decoder"]["filename"]
        except (OSError, ValueError, KeyError, TypeError):
            decoder = "model.onnx"
        missing = unproduced_outputs(target / decoder)
        if missing:
            hint = ("; its fp32 CUDA attention drops the KV cache: use --greenserve-dtype=bf16"
                    if self.provider == "cuda" and self.options.dtype == "fp32" else "")
            raise EngineError(f"onnxruntime-genai's model builder wrote an invalid {self.options.dtype} "
                              f"{self.provider} model of {self.model.name}: no node produces its output "
                              f"{', '.join(missing[:2])}{' and others' if len(missing) > 2 else ''}{hint}")

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        og = self.og
        total = len(input_ids) + new_tokens
        params = og.GeneratorParams(self.og_model)
        params.set_search_options(do_sample=False, max_length=total, min_length=total, batch_size=1)
        start = time.perf_counter()
        generator = og.Generator(self.og_model, params)
        generator.append_tokens(list(input_ids))  # prefill
        tokens: list[int] = []
        ttft = None
        while len(tokens) < new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            if ttft is None:
                ttft = time.perf_counter() - start
        return Generation(token_ids=tokens, ttft_s=ttft)

    def thread_settings(self) -> dict:
        """The base's, plus ONNX Runtime's intra-op pool as configured in the GenAI session
        (None: its default, one thread per physical core)."""
        out = super().thread_settings()
        out["ort_intra_op"] = self.options.threads if self.provider == "cpu" else None
        return out

    def load_info(self) -> dict:
        """Whether the built model keeps its KV cache in one static buffer, and CUDA graphs."""
        try:
            cfg = json.loads((self.target_dir / "genai_config.json").read_text())
        except (AttributeError, OSError, ValueError):
            return {}
        return {"static_kv_buffer": cfg.get("search", {}).get("past_present_share_buffer"),
                "cuda_graphs": self.provider == "cuda"}

    def close(self):
        self.og_model = None
