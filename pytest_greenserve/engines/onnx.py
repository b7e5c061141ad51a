"""ONNX Runtime through Optimum's ONNX integration (``onnx``), with the KV cache.

The export (``text-generation-with-past``) is cached on disk. On CUDA, inputs and outputs
stay on the device through IOBinding, and ONNX Runtime's warnings about nodes placed on the
CPU or copies added between devices (the paper's ONNX-CUDA slowdown) are kept for the report.
"""

from __future__ import annotations

from typing import Sequence

from .base import Engine, EngineError, Generation, cuda_unavailable_reason, hf_generate, missing_module_reason
from .exports import cached_export, export_dir

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxEngine(Engine):
    name = "onnx"
    libraries = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu")

    @classmethod
    def unavailable_reason(cls, provider):
        reason = missing_module_reason("onnxruntime", "optimum.onnxruntime", extra="onnx")
        if reason is None and provider == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
            reason = cuda_unavailable_reason()
        return reason

    def _export(self, tmp):
        from optimum.exporters.onnx import main_export

        main_export(self.model.ref, output=tmp, task="text-generation-with-past", device="cpu", do_validation=False)

    def load(self):
        from optimum.onnxruntime import ORTModelForCausalLM

        target = export_dir(self.model, self.name, self.versions())
        try:
            cached_export(target, self._export, self.options.progress)
        except Exception as exc:  # exporters raise many types; the user needs one line
            raise EngineError(f"onnx export of {self.model.name} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        cuda = self.provider == "cuda"
        import onnxruntime

        so = onnxruntime.SessionOptions()
        if self.options.threads and not cuda:
            so.intra_op_num_threads = self.options.threads
        self.ort_model = ORTModelForCausalLM.from_pretrained(
            target, provider=PROVIDER_NAMES[self.provider], session_options=so,
            use_cache=True, use_io_binding=cuda,
        )
        self.device = "cuda" if cuda else "cpu"
        wanted = PROVIDER_NAMES[self.provider]
        active = list(getattr(self.ort_model, "providers", [wanted]))
        if active[:1] != [wanted]:
            # ONNX Runtime silently falls back to the CPU when a provider cannot start;
            # measuring that as "onnx-cuda" would be a lie.
            raise EngineError(f"onnxruntime did not start {wanted} for {self.model.name} (active: {', '.join(active)})")

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        return hf_generate(self.ort_model, input_ids, new_tokens, self.model, device=self.device)

    def close(self):
        self.ort_model = None
