"""Engines record their thread settings; TTFT is stamped after CUDA has finished the token."""

from __future__ import annotations

import pytest

from pytest_greenserve.engines.base import EngineOptions, FirstTokenTimer
from pytest_greenserve.handle import ModelHandle

torch = pytest.importorskip("torch")


def _handle():
    return ModelHandle.__new__(ModelHandle)  # thread settings never touch the model


def test_every_engine_records_torchs_and_openmps_thread_settings(monkeypatch):
    from pytest_greenserve.engines.torch_eager import TorchEngine

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    t = TorchEngine(_handle(), "cpu", EngineOptions(threads=3)).thread_settings()
    assert t["requested"] == 3 and t["OMP_NUM_THREADS"] == "2"
    assert t["torch_intra_op"] == torch.get_num_threads()
    assert t["torch_inter_op"] == torch.get_num_interop_threads()


def test_onnx_records_its_pools_and_spinning_as_configured():
    ort = pytest.importorskip("onnxruntime")
    from pytest_greenserve.engines.onnx import OnnxEngine

    engine = OnnxEngine(_handle(), "cpu", EngineOptions(threads=2))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    engine._session_options = so
    t = engine.thread_settings()
    assert t["ort_intra_op"] == 2 and t["ort_inter_op"] == 0  # 0: ONNX Runtime's default
    assert t["ort_intra_op_spinning"] is True  # not disabled: ONNX Runtime spins by default
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    assert engine.thread_settings()["ort_intra_op_spinning"] is False
    assert "torch_intra_op" in t  # torch's pool is there too: one engine can pay for another's threads


def test_openvino_records_its_thread_count_as_configured_before_load():
    from pytest_greenserve.engines.openvino import OpenVinoEngine

    engine = OpenVinoEngine(_handle(), "cpu", EngineOptions(threads=4))
    engine.ov_model = None
    assert engine.thread_settings()["openvino_num_threads"] == "4"


class _CudaIds:
    """Looks like a CUDA tensor to the timer (is_cuda, device, shape)."""
    is_cuda = True
    device = "cuda:0"
    shape = (1, 5)


def test_ttft_is_stamped_after_cuda_synchronises(monkeypatch):
    order = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: order.append(("sync", device)))
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: order.append("zeros"))
    timer = FirstTokenTimer()
    real_clock = __import__("time").perf_counter
    monkeypatch.setattr("pytest_greenserve.engines.base.time.perf_counter",
                        lambda: (order.append("stamp"), real_clock())[1])
    timer(_CudaIds(), None)
    assert order[:2] == [("sync", "cuda:0"), "stamp"]  # the device finished the token, then the stamp
    timer(_CudaIds(), None)
    # every token is waited for, then stamped (its inter-token latency is the device's, not the launch's)
    assert order[2:] == ["zeros", ("sync", "cuda:0"), "stamp", "zeros"] and len(timer.times) == 2


def test_ttft_on_cpu_does_not_touch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: pytest.fail("synchronised on CPU"))
    timer = FirstTokenTimer()
    timer(torch.ones(1, 4, dtype=torch.long), None)
    assert timer.ttft_s is not None and timer.ttft_s >= 0


def test_transformers_engines_stamp_every_token_and_stream_them_to_a_listener(tiny_handle):
    """Per-token times (the in-process ITL) and the server's streaming hook: each token reaches
    the listener while generate still runs, in order, and the stamps rise."""
    from pytest_greenserve.engines.base import token_listener
    from pytest_greenserve.engines.torch_eager import TorchEngine

    engine = TorchEngine(tiny_handle("gpt2"), "cpu", EngineOptions(threads=1))
    engine.load()
    heard = []
    try:
        with token_listener(heard.append):
            gen = engine.generate([5, 6, 7, 8], 6)
        quiet = engine.generate([5, 6, 7, 8], 6)  # outside the block nothing is told
    finally:
        engine.close()
    assert heard == gen.token_ids and len(heard) == 6 and quiet.token_ids == gen.token_ids
    times = gen.token_times_s
    assert len(times) == 6 and times[0] == gen.ttft_s and all(b >= a for a, b in zip(times, times[1:]))


def test_onnx_with_spinning_off_sleeps_its_pools_and_generates_the_same_tokens(tiny_handle):
    """--greenserve-ort-spinning=off: the session really gets the setting, and greedy output is
    unchanged (spinning decides how idle threads wait, never what they compute)."""
    pytest.importorskip("onnxruntime")
    from pytest_greenserve.engines.onnx import OnnxEngine

    handle = tiny_handle("gpt2")
    tokens, spinning = [], []
    for spin in (True, False):
        engine = OnnxEngine(handle, "cpu", EngineOptions(threads=1, ort_spinning=spin))
        engine.load()
        try:
            tokens.append(engine.generate([5, 6, 7, 8, 9, 10], 8).token_ids)
            spinning.append(engine.thread_settings()["ort_intra_op_spinning"])
        finally:
            engine.close()
    assert spinning == [True, False]
    assert tokens[0] == tokens[1] and len(tokens[0]) == 8
