"""The ONNX placement audit: ONNX Runtime's VERBOSE log parsed into nodes per provider, Memcpy
nodes and the operator types left on the CPU (issue 8, §7).

A real CPU session whose placement is known (every node on the CPU, no copies), and recorded
log text for a CUDA session (the formats of ``session_state.cc`` VerifyEachNodeIsAssignedToAnEp
and ``transformer_memcpy.cc``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_greenserve.engines.base import Engine
from pytest_greenserve.engines.onnx import (COMPUTE_OPS, OnnxEngine, captured_stderr_fd, pass_through,
                                            placement_from_log)

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the export traces the model

CUDA_LOG = Path(__file__).parent / "data" / "ort_cuda_placement.log"


def _model():
    import numpy as np
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype="float32").tolist())
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Shape", ["m"], ["s"]),  # shape arithmetic: [b, 3] -> [b * 3]
        helper.make_node("ReduceProd", ["s"], ["n"], keepdims=1),
        helper.make_node("Reshape", ["m", "n"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "placement", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_real_cpu_session_puts_every_node_on_the_cpu_without_copies():
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    so = ort.SessionOptions()
    so.log_severity_level = 0
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the four nodes
    with captured_stderr_fd() as log:
        session = ort.InferenceSession(_model().SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((2, 4), "float32")})[0]
    assert out.shape == (6,)
    placement = placement_from_log(log[0])
    assert placement.found
    assert placement.nodes_per_provider == {"CPUExecutionProvider": 4}
    assert placement.memcpy == 0 and placement.fallback_ops == {}
    assert placement.to_dict("CPUExecutionProvider")["compute_on_cpu"] == {}
    # the same placement in a CUDA session would be a CPU fallback of everything
    assert placement.compute_on_cpu("CUDAExecutionProvider") == {"(all nodes)": 4}


def test_a_recorded_cuda_log_gives_counts_per_provider_memcpy_and_the_fallback_ops():
    placement = placement_from_log(CUDA_LOG.read_text())
    assert placement.found
    assert placement.nodes_per_provider == {"CUDAExecutionProvider": 9, "CPUExecutionProvider": 6}
    assert placement.memcpy == 2
    assert placement.fallback_ops == {"Concat": 1, "Gather": 2, "Shape": 1, "Slice": 1, "Unsqueeze": 1}
    assert placement.ops_per_provider["CUDAExecutionProvider"]["MatMul"] == 2
    # shape operators on the CPU are counted, not blamed
    assert placement.compute_on_cpu("CUDAExecutionProvider") == {}
    assert placement.to_dict("CUDAExecutionProvider") == {
        "nodes_per_provider": {"CUDAExecutionProvider": 9, "CPUExecutionProvider": 6}, "memcpy": 2,
        "fallback_ops": {"Concat": 1, "Gather": 2, "Shape": 1, "Slice": 1, "Unsqueeze": 1}, "compute_on_cpu": {}}


def test_a_matmul_on_the_cpu_of_a_cuda_session_is_blamed():
    text = CUDA_LOG.read_text().replace("   Slice (/transformer/Slice)", "   MatMul (/transformer/h.0/attn/c_proj/MatMul)")
    placement = placement_from_log(text)
    assert placement.compute_on_cpu("CUDAExecutionProvider") == {"MatMul": 1}
    assert "MatMul" in COMPUTE_OPS and "Gather" not in COMPUTE_OPS and "Shape" not in COMPUTE_OPS


def test_qualified_function_names_and_several_sessions_add_up():
    one = ("2025-01-01 00:00:00.1 [V:onnxruntime:, session_state.cc:1164 onnxruntime::VerifyEachNodeIsAssignedToAnEp]"
           " Node placements\n"
           "2025-01-01 00:00:00.2 [V:onnxruntime:, session_state.cc:1166 onnxruntime::VerifyEachNodeIsAssignedToAnEp]"
           "  All nodes placed on [CUDAExecutionProvider]. Number of nodes: 5\n")
    placement = placement_from_log("unrelated line\n" + one + one)
    assert placement.nodes_per_provider == {"CUDAExecutionProvider": 10}
    assert placement.memcpy == 0 and placement.compute_on_cpu("CUDAExecutionProvider") == {}


def test_no_placement_in_the_log():
    placement = placement_from_log("2025-01-01 [W:onnxruntime:, x.cc:1 F] something else\n")
    assert not placement.found and placement.nodes_per_provider == {}


def test_other_lines_of_the_captured_stderr_are_passed_through(capfd):
    pass_through("2025 [V:onnxruntime:, a.cc:1 F] noise\nA warning from someone else\n"
                 "2025 [W:onnxruntime:, b.cc:2 G] 1 Memcpy nodes are added\n")
    err = capfd.readouterr().err
    assert "A warning from someone else" in err and "Memcpy" in err and "noise" not in err


def test_engines_audit_nothing_by_default_and_onnx_before_loading(tiny_handle):
    assert Engine.placement(object()) is None
    assert OnnxEngine(tiny_handle("gpt2"), "cpu").placement() is None


def test_the_onnx_engine_records_its_placement_on_cpu(tiny_handle, capfd):
    pytest.importorskip("optimum.onnxruntime")
    engine = OnnxEngine(tiny_handle("gpt2"), "cpu")
    engine.load()
    try:
        placement = engine.placement()
        capfd.readouterr()
        gen = engine.generate([1, 2, 3], 4)
        # the verbose session log is read at load; requests (measured windows) log nothing
        assert len(gen.token_ids) == 4 and "onnxruntime:" not in capfd.readouterr().err
    finally:
        engine.close()
    assert placement is not None
    assert set(placement["nodes_per_provider"]) == {"CPUExecutionProvider"}
    assert placement["nodes_per_provider"]["CPUExecutionProvider"] > 0
    assert placement["memcpy"] == 0 and placement["compute_on_cpu"] == {}
