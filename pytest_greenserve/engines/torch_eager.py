"""PyTorch eager through Transformers: the paper's baseline (``torch``)."""

from __future__ import annotations

from typing import Sequence

from .base import (Engine, Generation, hf_continuation_logprobs, hf_generate, load_torch_model,
                   torch_unavailable_reason)


class TorchEngine(Engine):
    name = "torch"
    libraries = ("torch", "transformers")
    dtypes = ("fp32", "bf16")  # load_torch_model loads in EngineOptions.dtype
    #: set by the reference store: also return each step's top-2 score gap and the chosen
    #: token's log-probability (Generation.margins, Generation.logprobs)
    keep_margins: bool = False

    @classmethod
    def unavailable_reason(cls, provider):
        return torch_unavailable_reason(provider, extra="torch")

    def load(self):
        self.device = "cuda" if self.provider == "cuda" else "cpu"
        self.torch_model = load_torch_model(self)

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        import torch

        with torch.inference_mode():
            return hf_generate(self.torch_model, input_ids, new_tokens, self.model, device=self.device,
                               margins=self.keep_margins)

    def continuation_logprobs(self, input_ids: Sequence[int], continuation: Sequence[int]) -> list[float]:
        """This model's log-probability of each token of ``continuation`` after ``input_ids``,
        teacher-forced: how the fp32 reference scores another engine's output (references.py)."""
        import torch

        with torch.inference_mode():
            return hf_continuation_logprobs(self.torch_model, input_ids, continuation, self.model, device=self.device)

    def close(self):
        import gc

        self.torch_model = None
        gc.collect()
        if self.provider == "cuda":
            import torch

            torch.cuda.empty_cache()
