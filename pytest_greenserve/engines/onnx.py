"""ONNX Runtime through Optimum's ONNX integration (``onnx``), with the KV cache.

The export (``text-generation-with-past``) is cached on disk. On CUDA, inputs and outputs
stay on the device through IOBinding.

Placement audit: the session is created with ONNX Runtime's VERBOSE log, which lists the
nodes each execution provider took ("Node placements", from ``session_state.cc``
``VerifyEachNodeIsAssignedToAnEp``); the log is read from file descriptor 2 while the
session loads, parsed by :func:`placement_from_log` and exposed by :meth:`OnnxEngine.placement`
for the sample: nodes per provider, Memcpy nodes, and the operator types left on the CPU
(the paper's ONNX-CUDA slowdown). Other lines of that stretch of stderr are passed through.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from .base import Engine, EngineError, Generation, cuda_unavailable_reason, hf_generate, missing_module_reason
from .exports import cached_export, export_dir

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
CPU_EP = "CPUExecutionProvider"

#: operator types that do the model's arithmetic: one of these on the CPU in a CUDA session
#: means the configuration is not fully on CUDA. Everything else (Shape, Gather, Slice,
#: Concat, Unsqueeze, Reshape, Cast, Range...: shape arithmetic ONNX Runtime deliberately
#: keeps on the CPU) is counted, not blamed.
COMPUTE_OPS = frozenset({
    "MatMul", "Gemm", "FusedMatMul", "MatMulNBits", "MatMulInteger", "QLinearMatMul", "Einsum",
    "Conv", "ConvTranspose", "FusedConv", "Attention", "MultiHeadAttention", "GroupQueryAttention",
    "PackedAttention", "QAttention", "RotaryEmbedding", "Softmax", "LayerNormalization",
    "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
    "EmbedLayerNormalization", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "LSTM", "GRU", "RNN",
})
#: a line of ONNX Runtime's default log sink: ``<time> [V:onnxruntime:<logid>, <file>:<line> <function>] <message>``
_LOG_LINE = re.compile(r"\[[VIWEF]:onnxruntime:[^,\]]*,\s*\S+\s+([^\]\s]+)\]\s?(.*)$")
_ALL_ON = re.compile(r"All nodes placed on \[(\w+)\]\. Number of nodes: (\d+)")
_SOME_ON = re.compile(r"Node\(s\) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_NODE = re.compile(r"(\S+) \((.*)\)$")
_MEMCPY_WARNING = re.compile(r"(\d+) Memcpy nodes are added to the graph")


@dataclass
class Placement:
    """Where ONNX Runtime put a session's nodes, from its VERBOSE log.

    ``nodes_per_provider``: execution provider -> node count. ``memcpy``: Memcpy nodes
    (MemcpyFromHost/MemcpyToHost) added between devices. ``fallback_ops``: operator type ->
    count of nodes left on the CPU provider while another provider took nodes.
    ``ops_per_provider``: provider -> operator type -> count (ONNX Runtime lists the nodes only
    when more than one provider took some). ``found``: the log held a placement.
    """

    nodes_per_provider: dict[str, int] = field(default_factory=dict)
    memcpy: int = 0
    fallback_ops: dict[str, int] = field(default_factory=dict)
    ops_per_provider: dict[str, dict[str, int]] = field(default_factory=dict)
    found: bool = False

    def compute_on_cpu(self, wanted: str) -> dict[str, int]:
        """Compute operator types (:data:`COMPUTE_OPS`) left on the CPU although ``wanted`` is
        another provider; ``{"(all nodes)": n}`` when every node went to the CPU."""
        if wanted == CPU_EP or not self.nodes_per_provider.get(CPU_EP):
            return {}
        if set(self.nodes_per_provider) == {CPU_EP}:
            return {"(all nodes)": self.nodes_per_provider[CPU_EP]}
        return {op: n for op, n in sorted(self.fallback_ops.items()) if op in COMPUTE_OPS}

    def to_dict(self, wanted: str) -> dict:
        """JSON for the sample: the counts above (less ``found`` and the per-provider lists),
        plus ``compute_on_cpu``."""
        return {"nodes_per_provider": dict(self.nodes_per_provider), "memcpy": self.memcpy,
                "fallback_ops": dict(self.fallback_ops), "compute_on_cpu": self.compute_on_cpu(wanted)}


def placement_from_log(text: str) -> Placement:
    """The node placement in ONNX Runtime's VERBOSE session log ``text`` (several sessions'
    placements add up). Pure; lines that are not ONNX Runtime's are ignored."""
    nodes: Counter = Counter()
    ops: dict[str, Counter] = {}
    memcpy_listed, memcpy_warned, found = 0, 0, False
    current = None  # the provider whose node list is being read
    for raw in text.splitlines():
        line = _LOG_LINE.search(raw)
        if line is None:
            current = None
            continue
        function, message = line.group(1), line.group(2).strip()
        if (m := _MEMCPY_WARNING.search(message)) is not None:
            memcpy_warned += int(m.group(1))
        if not function.endswith("VerifyEachNodeIsAssignedToAnEp"):  # also onnxruntime::VerifyEach...
            current = None
            continue
        if (m := _ALL_ON.search(message)) is not None:
            nodes[m.group(1)] += int(m.group(2))
            found, current = True, None
        elif (m := _SOME_ON.search(message)) is not None:
            current = m.group(1)
            nodes[current] += int(m.group(2))
            ops.setdefault(current, Counter())
            found = True
        elif current is not None and (m := _NODE.match(message)) is not None:
            ops[current][m.group(1)] += 1
            if m.group(1).startswith("Memcpy"):
                memcpy_listed += 1
        else:
            current = None  # "Node placements" heads a new list
    others = [p for p in nodes if p != CPU_EP]
    fallback = dict(sorted(ops.get(CPU_EP, Counter()).items())) if others else {}
    return Placement(nodes_per_provider=dict(nodes), memcpy=max(memcpy_listed, memcpy_warned),
                     fallback_ops=fallback, ops_per_provider={p: dict(sorted(c.items())) for p, c in ops.items()},
                     found=found)


@contextlib.contextmanager
def captured_stderr_fd():
    """Collect what native code writes to file descriptor 2 (ONNX Runtime's log sink) inside
    the block; yields a list that holds the text afterwards (not echoed: see
    :func:`pass_through`). Python's sys.stderr is flushed on both sides."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            try:
                sys.stderr.flush()
            except Exception:
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def pass_through(text: str) -> None:
    """Write to stderr the captured lines that are not ONNX Runtime's VERBOSE/INFO log."""
    keep = [line for line in text.splitlines() if line.strip() and not re.search(r"\[[VI]:onnxruntime:", line)]
    if keep:
        sys.stderr.write("\n".join(keep) + "\n")


#: The most bytes one ONNX model may have when held in memory whole (protobuf's limit, 2 GiB)
PROTOBUF_LIMIT_BYTES = 2**31


def dedupes_tied_weights(model_ref) -> bool:
    """Whether optimum's export may post-process the model: it deduplicates tied weights (gpt2's
    and starcoder's embedding and vocabulary matrix) by loading the exported model whole, which
    fails past :data:`PROTOBUF_LIMIT_BYTES` (starcoderbase-1b's 4.6 GB in fp32). Past that, the
    export keeps both copies of a tied matrix instead. Counted on the meta device: no weights
    are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_ref))
    # every state-dict entry, tied ones twice: what the exported model holds before deduplication
    return sum(t.numel() * 4 for t in model.state_dict().values()) < PROTOBUF_LIMIT_BYTES


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

        main_export(self.model.ref, output=tmp, task="text-generation-with-past", device="cpu", do_validation=False,
                    no_post_process=not dedupes_tied_weights(self.model.ref))

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
        if not self.options.ort_spinning:  # spinning threads keep cores busy (and, estimated, cost energy)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session_options = so
        so.log_severity_level = 0  # VERBOSE: the session logs its node placement (the audit)
        self._placement = None
        with captured_stderr_fd() as log:
            self.ort_model = ORTModelForCausalLM.from_pretrained(
                target, provider=PROVIDER_NAMES[self.provider], session_options=so,
                use_cache=True, use_io_binding=cuda,
            )
        pass_through(log[0])
        found = placement_from_log(log[0])
        self._placement = found.to_dict(PROVIDER_NAMES[self.provider]) if found.found else None
        self.device = "cuda" if cuda else "cpu"
        wanted = PROVIDER_NAMES[self.provider]
        active = list(getattr(self.ort_model, "providers", [wanted]))
        if active[:1] != [wanted]:
            # ONNX Runtime silently falls back to the CPU when a provider cannot start;
            # measuring that as "onnx-cuda" would be a lie.
            raise EngineError(f"onnxruntime did not start {wanted} for {self.model.name} (active: {', '.join(active)})")

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        return hf_generate(self.ort_model, input_ids, new_tokens, self.model, device=self.device)

    def placement(self) -> dict | None:
        """The placement audit of the last load (:meth:`Placement.to_dict`); None when the
        log held no placement."""
        return getattr(self, "_placement", None)

    def thread_settings(self) -> dict:
        """torch's and OpenMP's (the base), plus ONNX Runtime's pools as configured: 0 threads is
        its default (one per physical core); spinning is on unless the session config says '0'."""
        out = super().thread_settings()
        so = getattr(self, "_session_options", None)
        if so is None:
            return out
        out["ort_intra_op"] = so.intra_op_num_threads
        out["ort_inter_op"] = so.inter_op_num_threads
        out["ort_execution_mode"] = str(so.execution_mode).rsplit(".", 1)[-1]
        for key, name in (("session.intra_op.allow_spinning", "ort_intra_op_spinning"),
                          ("session.inter_op.allow_spinning", "ort_inter_op_spinning")):
            try:
                value = so.get_session_config_entry(key)
            except Exception:  # not set: ONNX Runtime's default, spinning on
                value = ""
            out[name] = value != "0"
        return out

    def close(self):
        self.ort_model = None
