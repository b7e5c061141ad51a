"""The one small interface every runtime engine implements.

An engine is loaded for one model on one provider, generates exactly ``new_tokens`` greedy
tokens per request (EOS is ignored, so every engine does the same amount of work), and is
closed before the next model or configuration is loaded. Engines import their libraries
lazily, inside ``load``/``unavailable_reason``, so the plugin imports without them.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence


from ..handle import ModelHandle  # what an engine loads; re-exported for engines written against 0.1

__all__ = ["Engine", "EngineError", "EngineOptions", "Generation", "ModelHandle", "library_versions"]


class EngineError(RuntimeError):
    """A model could not be loaded, exported or run by an engine; the message is one line."""


def failure_line(what: str, exc: BaseException) -> str:
    """``what: Type: first line of the message``: how an exception reaches the user, in one line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{what}: {type(exc).__name__}: {first}".rstrip(": ")


@dataclass
class Generation:
    """One request's result: the generated ids (prompt excluded) and time to first token.

    ``margins``: when asked for (the torch reference), the gap between the largest and the
    second-largest score at each generated step, one per token; None otherwise.
    ``logprobs``: asked for with the margins: the natural-log probability the model gave each
    token it chose (after the logits processors, so with EOS suppressed), one per token.
    """

    token_ids: list[int]
    ttft_s: float | None = None
    margins: list[float] | None = None
    #: seconds from the request's start until each generated token existed, where the engine
    #: stamps every token (transformers-generate engines: torch, onnx, openvino); None elsewhere
    token_times_s: list[float] | None = None
    logprobs: list[float] | None = None


@dataclass
class EngineOptions:
    """Tuning knobs shared by engines; each engine reads what it understands."""

    threads: int | None = None
    openvino_precision: str = "f32"
    #: ONNX Runtime's intra-/inter-op threads spin between operators (its default); False: they sleep
    ort_spinning: bool = True
    #: weights and activations: "fp32" or "bf16"; an engine serves only its ``Engine.dtypes``
    dtype: str = "fp32"
    #: how the compile engine captures its decode step (engines/compile.py MODES)
    compile_mode: str = "auto"
    #: the weight format of an engine with ``Engine.variants`` (``q8_0`` in ``llamacpp-cpu:q8_0``)
    variant: str = ""
    #: called with one-line messages about long work (exports, traces)
    progress: Callable[[str], None] | None = None
    extra: dict = field(default_factory=dict)


class Engine(ABC):
    """Base class of runtime engines (see ``engines/torch_eager.py`` for the simplest one)."""

    #: name used in configuration strings (``onnx`` in ``onnx-cpu``)
    name: ClassVar[str]
    #: providers this engine can serve on
    providers: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: distribution names whose versions key export caches and reports
    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    #: the dtypes (``EngineOptions.dtype``) this engine can serve in; the session skips the
    #: others with a reason, so an engine that ignores the option never passes for bf16
    dtypes: ClassVar[tuple[str, ...]] = ("fp32",)
    #: weight formats this engine serves, each its own configuration (``llamacpp-cpu:f16`` and
    #: ``llamacpp-cpu:q8_0``); the first is the default; empty: one configuration per provider
    variants: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: ModelHandle, provider: str, options: EngineOptions | None = None):
        self.model = model
        self.provider = provider
        self.options = options or EngineOptions()

    @classmethod
    def unavailable_reason(cls, provider: str) -> str | None:
        """Why this engine cannot serve on ``provider`` here, or None if it can."""
        return None

    @classmethod
    def model_unavailable_reason(cls, architecture: str) -> str | None:
        """Why this engine cannot serve models of ``architecture`` (a transformers
        ``model_type``), or None if it can; such cases are skipped with this reason."""
        return None

    @abstractmethod
    def load(self) -> None:
        """Load (exporting first if needed) the model for ``self.provider``."""

    @abstractmethod
    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        """Greedy-generate exactly ``new_tokens`` tokens after ``input_ids`` (batch of one)."""

    def thread_settings(self) -> dict:
        """The CPU thread settings this engine runs with, recorded in every sample (``threads``).

        The default is torch's (intra-op and inter-op pools) and the OpenMP environment; an
        engine with its own pools (ONNX Runtime, OpenVINO) adds them. Values are what the
        libraries report, or, where they cannot tell, what was configured (None: the default).
        """
        out: dict = {"requested": self.options.threads, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
        try:
            import torch

            out["torch_intra_op"] = torch.get_num_threads()
            out["torch_inter_op"] = torch.get_num_interop_threads()
        except ImportError:
            pass
        return out

    def close(self) -> None:
        """Release the model and any device memory."""

    def placement(self) -> dict | None:
        """Where the runtime put the model's operators (nodes per device, copies, operator types
        that fell back to the CPU), for the sample; None when the engine does not audit it."""
        return None

    def versions(self) -> dict[str, str]:
        return library_versions(self.libraries)


def library_versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def missing_module_reason(*modules: str, extra: str) -> str | None:
    """A skip reason naming the pip extra to install when a module is absent."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'pytest-greenserve[{extra}]')"
    return None


def torch_unavailable_reason(provider: str, *modules: str, extra: str) -> str | None:
    """Why an engine that runs PyTorch itself cannot serve on ``provider``: a missing module
    (``torch``, ``transformers`` and any in ``modules``; ``extra`` names the pip extra), or on
    ``cuda`` no CUDA device; None when it can."""
    reason = missing_module_reason("torch", "transformers", *modules, extra=extra)
    if reason is None and provider == "cuda":
        reason = cuda_unavailable_reason()
    return reason


def engine_dtypes(cls) -> tuple[str, ...]:
    """The dtypes an engine class serves in (``Engine.dtypes``); engines written before the
    option have none and serve fp32."""
    return getattr(cls, "dtypes", ("fp32",))


def cuda_unavailable_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    return None


def hold_cuda_context() -> str | None:
    """Create this process's CUDA context now (one small allocation; it lives until the process
    ends); None when done, else why not."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        return reason
    import torch

    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    return None


def torch_dtype(name: str):
    """The torch dtype of an ``EngineOptions.dtype`` name (``"bf16"`` -> ``torch.bfloat16``)."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if name not in dtypes:
        raise EngineError(f"unknown dtype {name!r}: expected {' or '.join(dtypes)}")
    return dtypes[name]


def load_torch_model(engine: "Engine"):
    """The engine's model as an eager transformers model in ``engine.options.dtype`` on its
    provider's device.

    Shared by the engines that run PyTorch themselves (``torch``, ``jit``); a model that
    cannot be loaded becomes a one-line EngineError.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if engine.options.threads and engine.provider == "cpu":
        torch.set_num_threads(engine.options.threads)
    dtype = torch_dtype(engine.options.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(engine.model.ref, dtype=dtype)
    except Exception as exc:  # OSError (no weights), ValueError/KeyError (unknown architecture), ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"{engine.name} could not load {engine.model.name}: {first}") from exc
    return model.to("cuda" if engine.provider == "cuda" else "cpu").eval()


_LISTENER = threading.local()


@contextmanager
def token_listener(on_token: Callable[[int], None]):
    """Within the block, engines that stamp each token (:class:`FirstTokenTimer`) also call
    ``on_token(token_id)`` the moment each token exists, on the generating thread: how the
    server streams tokens as they are made. Per thread, so nothing else sees it."""
    previous = getattr(_LISTENER, "fn", None)
    _LISTENER.fn = on_token
    try:
        yield
    finally:
        _LISTENER.fn = previous


class FirstTokenTimer:
    """A transformers StoppingCriteria that stamps each new token as it exists.

    ``generate`` calls stopping criteria once after each generated token, so the first call
    marks the time to first token, and every call one token's time (``times``). Each stamp
    waits for a CUDA device to finish the token (``generate`` synchronises at every step
    anyway, to check its stopping criteria). It never asks generation to stop. Inside
    :func:`token_listener` it also hands each token's id to the listener.
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.times: list[float] = []
        self.listener = getattr(_LISTENER, "fn", None)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        # CUDA runs asynchronously: the token exists once the device has finished
        if getattr(input_ids, "is_cuda", False):
            torch.cuda.synchronize(input_ids.device)
        self.times.append(time.perf_counter() - self.start)
        if self.listener is not None:
            self.listener(int(input_ids[0, -1]))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    @property
    def first(self) -> float | None:
        return self.start + self.times[0] if self.times else None

    @property
    def ttft_s(self) -> float | None:
        return self.times[0] if self.times else None


def hf_generate(model, input_ids: Sequence[int], new_tokens: int, handle: ModelHandle, device="cpu",
                margins: bool = False) -> Generation:
    """Run a transformers-style ``generate`` for exactly ``new_tokens`` greedy tokens.

    ``margins``: also return each step's top-2 score gap (the scores greedy search took its
    argmax of, after the logits processors), for the tie-aware consistency check, and the
    log-probability of each chosen token (the reference's own for the quality score). Off for
    measured requests: keeping the scores is extra work.
    """
    import torch
    from transformers import StoppingCriteriaList

    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    timer = FirstTokenTimer()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # suppresses EOS, so every engine does the same work
        eos_token_id=list(handle.eos_token_ids) or None,
        pad_token_id=handle.pad_token_id if handle.pad_token_id is not None else (handle.eos_token_ids or (0,))[0],
        stopping_criteria=StoppingCriteriaList([timer]),
        use_cache=True,
        **({"output_scores": True, "return_dict_in_generate": True} if margins else {}),
    )
    gaps = logprobs = None
    if margins:
        # generate() upcasts the last logits to fp32 before its processors, so a bf16 model's
        # scores are its bf16 logits exactly; .float() keeps the gap's subtraction in fp32 either way
        scores = torch.stack([s[0] for s in out.scores]).float()
        top2 = scores.topk(2, dim=-1).values
        gaps = (top2[:, 0] - top2[:, 1]).tolist()
        chosen = out.sequences[0, ids.shape[1]:]
        logprobs = scores.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
        out = out.sequences
    new = out[0, ids.shape[1]:].tolist()  # .tolist() synchronises a CUDA device
    return Generation(token_ids=new, ttft_s=timer.ttft_s, margins=gaps, logprobs=logprobs,
                      token_times_s=list(timer.times) if len(timer.times) == len(new) else None)


def hf_continuation_logprobs(model, input_ids: Sequence[int], continuation: Sequence[int], handle: ModelHandle,
                             device="cpu") -> list[float]:
    """The natural-log probability ``model`` gives each token of ``continuation`` after
    ``input_ids``, teacher-forced (one forward pass over prompt and continuation), with EOS
    suppressed as :func:`hf_generate` suppresses it; one value per continuation token.

    What the quality score asks the fp32 reference about another engine's output."""
    import torch

    if not continuation:
        return []
    ids = torch.tensor([list(input_ids) + list(continuation)[:-1]], dtype=torch.long, device=device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0].float()
    steps = logits[len(input_ids) - 1:]  # the scores that chose continuation[0], [1], ...
    eos = [t for t in handle.eos_token_ids if 0 <= t < steps.shape[-1]]
    if eos:  # min_new_tokens set these to -inf at every generated step
        steps[:, eos] = float("-inf")
    target = torch.tensor(list(continuation), dtype=torch.long, device=device)
    return steps.log_softmax(dim=-1).gather(1, target[:, None])[:, 0].tolist()
