"""The per-token roofline of GPU samples (issue 10): the arithmetic on known numbers, the
profile's counting on a fake event list, the sample fields, the session's caching with the
card faked at its boundary, and the report's table. The measurements on the card itself skip
without CUDA."""

from __future__ import annotations

import pytest

from pytest_greenserve import roofline
from pytest_greenserve.configs import ServingConfig
from pytest_greenserve.handle import ModelHandle
from pytest_greenserve.measure import Measurement
from pytest_greenserve.metrics import builtin_metrics
from pytest_greenserve.options import Settings
from pytest_greenserve.results import sample_columns
from pytest_greenserve.roofline import LaunchCount, ModelGeometry, RooflineUnavailable
from pytest_greenserve.samples import build_sample

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device visible to torch: the card cannot be measured here")
NUMERIC = [name for name in roofline.ROOFLINE_FIELDS] + ["x_memory_floor", "x_launch_floor"]


def tiny_gpt2_config(**kw):
    return transformers.GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=50, n_positions=16, **kw)


# ------------------------------------------------------------------ geometry

def test_a_tied_gpt2s_weights_read_per_token_by_hand():
    g = roofline.geometry_from_config(tiny_gpt2_config())  # tie_word_embeddings defaults to True
    # wte 50x8, wpe 16x8; a layer: ln_1 16, c_attn 8x24+24, attn c_proj 8x8+8, ln_2 16, c_fc 8x32+32,
    # mlp c_proj 32x8+8 = 872; ln_f 16
    layer = 16 + (8 * 24 + 24) + (8 * 8 + 8) + 16 + (8 * 32 + 32) + (32 * 8 + 8)
    assert g.params == 50 * 8 + 16 * 8 + 2 * layer + 16 == 2288
    # the tied lm_head reads all of wte; wpe is a lookup: one row
    assert g.weight_params_per_token == 50 * 8 + 8 + 2 * layer + 16 == 2168
    assert g.weight_bytes_per_token == 4 * 2168
    assert (g.layers, g.kv_heads, g.head_dim, g.bytes_per_element) == (2, 2, 4, 4)


def test_an_untied_lm_head_is_read_whole_and_the_input_embedding_one_row():
    g = roofline.geometry_from_config(tiny_gpt2_config(tie_word_embeddings=False), bytes_per_element=2)
    layer = 872
    assert g.params == 2288 + 50 * 8  # the lm_head has its own matrix (no bias)
    assert g.weight_params_per_token == 50 * 8 + 8 + 8 + 2 * layer + 16  # lm_head, a wte row, a wpe row
    assert g.weight_bytes_per_token == 2 * g.weight_params_per_token


@pytest.mark.parametrize("architecture,kv_heads", [("gpt2", 4), ("gpt_bigcode", 1), ("gpt_neox", 4)])
def test_the_mini_models_geometry(architecture, kv_heads):
    from pytest_greenserve.models import MINI_SCALE, tiny_config_dict

    cfg = tiny_config_dict(architecture, 1000, MINI_SCALE[architecture])
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    g = roofline.geometry_from_config(config)
    assert (g.layers, g.kv_heads, g.head_dim) == (4, kv_heads, 32)  # 128 wide, 4 heads, 4 layers
    # untied (VARIED_INIT): the input embedding (and a learned position table) read one row each
    lookups = (1000 - 1) * 128 + ((512 - 1) * 128 if architecture != "gpt_neox" else 0)
    assert g.params - g.weight_params_per_token == lookups


def test_grouped_query_heads_and_an_explicit_head_dim_are_read_from_the_config():
    llama = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=8,
                                     num_key_value_heads=2, intermediate_size=128, vocab_size=100)
    assert roofline.attention_shape(llama) == (3, 2, 8)
    gemma = transformers.GemmaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=1, head_dim=32, intermediate_size=128, vocab_size=100)
    assert roofline.attention_shape(gemma) == (2, 1, 32)


def test_kv_bytes_multi_query_against_multi_head():
    mha = ModelGeometry(layers=4, kv_heads=4, head_dim=32, bytes_per_element=4, params=0, weight_params_per_token=0)
    mqa = ModelGeometry(layers=4, kv_heads=1, head_dim=32, bytes_per_element=4, params=0, weight_params_per_token=0)
    assert mha.kv_bytes_per_token(100) == 2 * 4 * 4 * 32 * 100 * 4 == 409_600
    assert mqa.kv_bytes_per_token(100) == mha.kv_bytes_per_token(100) / 4


def test_a_gguf_configuration_reads_its_own_bytes_per_weight_and_an_f16_cache():
    """llamacpp's floor is that of the file it reads: q8_0 is 34 bytes per block of 32 weights,
    f16 two; its KV cache is f16 whatever the session's dtype. Other engines keep the geometry."""
    from pytest_greenserve.engines.llamacpp import LlamaCppEngine
    from pytest_greenserve.engines.torch_eager import TorchEngine
    from pytest_greenserve.session import engine_geometry

    fp32 = ModelGeometry(layers=2, kv_heads=2, head_dim=8, bytes_per_element=4, params=0, weight_params_per_token=3200)
    q8 = engine_geometry(fp32, LlamaCppEngine, "q8_0")
    assert q8.weight_bytes_per_token == 3200 * 34 / 32 == 3400
    assert q8.kv_bytes_per_token(10) == fp32.kv_bytes_per_token(10) / 2
    assert engine_geometry(fp32, LlamaCppEngine, "f16").weight_bytes_per_token == 6400
    assert engine_geometry(fp32, TorchEngine, "") is fp32
    assert roofline.memory_floor_ms_per_token(q8, 0, 1) < roofline.memory_floor_ms_per_token(fp32, 0, 1) / 3


def test_bytes_per_element_follow_the_dtype():
    assert [roofline.bytes_per_element(d) for d in ("fp32", "bf16", "fp16", None, "unknown")] == [4, 2, 2, 4, 4]


# ------------------------------------------------------------------ the floors

def test_the_memory_floor_on_known_numbers():
    # 444 MB of weights (111 M fp32 parameters), no KV cache, at 3,350 GB/s: 0.1325 ms
    g = ModelGeometry(layers=0, kv_heads=0, head_dim=0, bytes_per_element=4, params=111_000_000,
                      weight_params_per_token=111_000_000)
    assert roofline.memory_floor_ms_per_token(g, 100, 3350) == pytest.approx(444e6 / 3350e9 * 1000)
    assert roofline.memory_floor_ms_per_token(g, 100, 3350) == pytest.approx(0.13254, abs=1e-5)
    # and the KV cache adds its bytes: 12 layers x 12 heads x 64 x 2 (K, V) x 4 B = 73,728 B per context token
    g_kv = ModelGeometry(layers=12, kv_heads=12, head_dim=64, bytes_per_element=4, params=0,
                         weight_params_per_token=111_000_000)
    assert roofline.memory_floor_ms_per_token(g_kv, 1000, 1000) == pytest.approx((444e6 + 73_728_000) / 1e12 * 1000)


def test_the_launch_floor_on_known_numbers():
    assert roofline.launch_floor_ms_per_token(500, 5.0) == pytest.approx(2.5)


def test_the_mean_context_is_the_prompt_plus_half_the_new_tokens():
    assert roofline.mean_context_len([[1] * 10, [1] * 14], 32) == 12 + 16
    assert roofline.mean_context_len([], 32) is None


# ------------------------------------------------------------------ counting a profile

FAKE_PROFILE = [
    ("aten::mm", "cpu_op", 40.0),
    ("cudaLaunchKernel", "cuda_runtime", 5.0),
    ("ampere_sgemm_32x32", "kernel", 10.0),
    ("cudaLaunchKernel_ptsz", "cuda_runtime", 5.0),
    ("elementwise_kernel", "kernel", 2.0),
    ("cuLaunchKernel", "cuda_driver", 4.0),  # a Triton kernel, launched through the driver
    ("triton_poi_fused_add", "kernel", 3.0),
    ("cudaGraphLaunch", "cuda_runtime", 6.0),  # one call, three kernels
    ("graph_kernel_a", "kernel", 1.0), ("graph_kernel_b", "kernel", 1.0), ("graph_kernel_c", "kernel", 1.0),
    ("Memcpy DtoH (Device -> Pageable)", "gpu_memcpy", 2.0),
    ("cudaMemcpyAsync", "cuda_runtime", 8.0),  # a host API call, not a launch
    ("cudaStreamSynchronize", "cuda_runtime", 30.0),
    ("cudaLaunchKernel", "cpu_op", 1.0),  # the name alone does not make a launch
]


def test_kernels_launches_and_busy_time_are_counted_per_token():
    c = roofline.count_events(FAKE_PROFILE, tokens=2, wall_us=100.0)
    assert c.kernels_per_token == 6 / 2  # device kernels, graph kernels included, copies not
    assert c.launches_per_token == 4 / 2  # two runtime launches, one driver launch, one graph launch
    assert c.gpu_busy_ms_per_token == pytest.approx((10 + 2 + 3 + 3 + 2) / 1000 / 2)  # kernels and the copy
    assert c.gpu_busy_pct == pytest.approx(20.0)


def test_a_profile_without_kernels_counts_nothing_and_never_zero():
    c = roofline.count_events([("aten::add", "cpu_op", 3.0)], tokens=4, wall_us=50.0)
    assert c == LaunchCount(None, None, None, None)


def test_a_chrome_trace_becomes_events():
    trace = {"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "dur": 2.5, "ts": 100.25},
                             {"ph": "f", "cat": "ac2g", "name": "flow"}, {"ph": "X", "cat": "cpu_op", "name": "a"}]}
    assert roofline.trace_events(trace) == [("k", "kernel", 2.5, 100.25), ("a", "cpu_op", 0.0, None)]


def test_kernels_that_overlap_are_busy_time_once():
    """Under programmatic dependent launch a kernel starts while the one before it finishes:
    the GPU is busy for the time covered, not the durations' sum (which exceeded the wall time)."""
    events = [("gemv_a", "kernel", 10.0, 0.0), ("gemv_b", "kernel", 10.0, 6.0),  # b starts early: 0-16 busy
              ("attention", "kernel", 2.0, 8.0),  # inside both
              ("gemv_c", "kernel", 4.0, 20.0),  # after a gap of 4
              ("Memcpy DtoH (Device -> Pageable)", "gpu_memcpy", 1.0, None)]  # no start: its duration
    c = roofline.count_events(events, tokens=1, wall_us=40.0)
    assert c.gpu_busy_ms_per_token == pytest.approx((16 + 4 + 1) / 1000)
    assert c.gpu_busy_pct == pytest.approx(100 * 21 / 40)
    assert c.kernels_per_token == 4


# ------------------------------------------------------------------ the sample's fields

GEOMETRY = ModelGeometry(layers=2, kv_heads=2, head_dim=4, bytes_per_element=4, params=2288,
                         weight_params_per_token=2168)
LAUNCHES = LaunchCount(kernels_per_token=120.0, launches_per_token=100.0, gpu_busy_ms_per_token=0.4,
                       gpu_busy_pct=10.0)


def fields(**kw):
    given = dict(geometry=GEOMETRY, mean_context_len=20.0, bandwidth_gb_s=2000.0, launch_latency_us=5.0,
                 launches=LAUNCHES)
    return roofline.roofline_fields(**{**given, **kw})


def test_the_fields_on_known_numbers():
    f = fields()
    assert f["weight_mb_per_token"] == pytest.approx(2168 * 4 / 1e6)
    assert f["kv_mb_per_token"] == pytest.approx(2 * 2 * 2 * 4 * 20 * 4 / 1e6)
    assert f["memory_floor_ms_per_token"] == pytest.approx((8672 + 2560) / 2000e9 * 1000)
    assert f["launch_floor_ms_per_token"] == pytest.approx(100 * 5 / 1000)  # launches, not kernels
    assert (f["kernels_per_token"], f["launches_per_token"], f["gpu_busy_pct_profiled"]) == (120.0, 100.0, 10.0)


def test_a_missing_input_leaves_its_fields_none_never_zero():
    f = fields(bandwidth_gb_s=None, launches=None)
    assert f["weight_mb_per_token"] is not None
    for name in ("memory_floor_ms_per_token", "kernels_per_token", "launches_per_token", "launch_floor_ms_per_token",
                 "gpu_busy_pct_profiled", "bandwidth_gb_s"):
        assert f[name] is None, name
    assert all(v is None for k, v in roofline.roofline_fields().items())
    # no launch call in the profile: the kernels stand in for them
    only_kernels = fields(launches=LaunchCount(120.0, None, 0.4, 10.0))
    assert only_kernels["launch_floor_ms_per_token"] == pytest.approx(120 * 5 / 1000)


def sample(provider="cuda", roof=None, time_s=0.4, tokens=100, gpu_pct=None):
    m = Measurement(outputs=[[1] * (tokens // 4)] * 4, latencies_s=[time_s / 4] * 4, ttfts_s=[0.01] * 4,
                    time_s=time_s, meter_fields={"gpu_pct": gpu_pct, "meter_notes": ["nvml: ok"]})
    return build_sample(run_id="r", machine="m", model="tiny", category=1, weights="replica",
                        config=ServingConfig("torch", provider), repetition=1, order=1, new_tokens=tokens // 4,
                        prompt_ids=[[1, 2]] * 4, measurement=m, reference=None, versions={},
                        metrics=builtin_metrics(), roofline=roof)


def test_a_gpu_sample_carries_the_fields_the_ratios_and_what_binds_it():
    roof = {**fields(), "notes": ["roofline: something was not measured"]}
    s = sample(roof=roof)  # 4 ms per token
    assert s["ms_per_token"] == pytest.approx(4.0)
    assert s["x_launch_floor"] == pytest.approx(4.0 / 0.5)
    assert s["x_memory_floor"] == pytest.approx(4.0 / roof["memory_floor_ms_per_token"])
    assert s["bound_by"] == "host"  # 8x the launch floor with the GPU busy 0.4 of 4 ms
    assert s["meter_notes"] == ["nvml: ok", "roofline: something was not measured"]
    assert "notes" not in s
    assert {*NUMERIC, "bound_by"} <= set(sample_columns(builtin_metrics()))


def test_a_cpu_sample_has_no_roofline():
    s = sample(provider="cpu")
    assert all(s[name] is None for name in NUMERIC) and s["bound_by"] is None


def test_the_roofline_metrics_are_informational():
    metrics = builtin_metrics()
    for name in NUMERIC:
        m = metrics[name]
        assert not (m.analysed or m.plotted or m.gateable) and m.better is None, name


@pytest.mark.parametrize("values,word", [
    (dict(ms_per_token=0.3, memory_floor_ms_per_token=0.2, launch_floor_ms_per_token=0.1), "memory"),
    (dict(ms_per_token=0.9, memory_floor_ms_per_token=0.2, launch_floor_ms_per_token=0.5), "launches"),
    (dict(ms_per_token=9.0, memory_floor_ms_per_token=0.2, launch_floor_ms_per_token=0.5,
          gpu_busy_ms_per_token=1.0), "host"),
    (dict(ms_per_token=9.0, memory_floor_ms_per_token=0.2, launch_floor_ms_per_token=0.5,
          gpu_busy_ms_per_token=8.0), "kernels"),
    (dict(ms_per_token=9.0, memory_floor_ms_per_token=0.2, gpu_pct=95.0), "kernels"),  # NVML's share stands in
    (dict(ms_per_token=9.0, memory_floor_ms_per_token=0.2), None),  # far from the floor, nothing says why
    (dict(ms_per_token=9.0), None),
    (dict(memory_floor_ms_per_token=0.2), None),
])
def test_what_binds_a_sample(values, word):
    assert roofline.bound_by(values) == word


# ------------------------------------------------------------------ the session (the card faked at its boundary)

class FakeTarget:
    def __init__(self):
        self.calls = 0

    def generate(self, ids, new_tokens):
        self.calls += 1


def session_and_handle(tmp_path, **settings):
    from pytest_greenserve.session import GreenserveSession

    tiny_gpt2_config().save_pretrained(tmp_path / "model")
    s = Settings(models=(), local_paths={}, configs=(), cache_dir=tmp_path, new_tokens=8, **settings)
    lines: list[str] = []
    session = GreenserveSession(s, {"torch": FakeTarget}, {}, progress=lines.append)  # the class the child loads
    handle = ModelHandle("tiny", str(tmp_path / "model"), "tiny@x", "gpt2", tmp_path)
    return session, handle, lines


def case(provider="cuda", rep=1):
    from pytest_greenserve.session import Case

    return Case("tiny", ServingConfig("torch", provider), rep)


def test_the_card_is_measured_once_and_each_configuration_profiled_once(tmp_path, monkeypatch):
    calls = {"bandwidth": 0, "latency": 0, "profiled": 0}

    def bandwidth():
        calls["bandwidth"] += 1
        return 2000.0

    def latency():
        calls["latency"] += 1
        return 5.0

    def profile_in_child(engine_cls, handle, provider, options, prompt_ids, new_tokens):
        calls["profiled"] += 1
        calls["asked"] = (provider, list(prompt_ids))
        return LAUNCHES

    import pytest_greenserve.session as session_module

    monkeypatch.setattr(roofline, "measure_bandwidth_gb_s", bandwidth)
    monkeypatch.setattr(roofline, "measure_launch_latency_us", latency)
    monkeypatch.setattr(session_module, "profile_in_child", profile_in_child)
    session, handle, lines = session_and_handle(tmp_path)
    target = FakeTarget()
    prompts = [[1] * 10, [1] * 14]
    for rep in (1, 2, 3):  # a new load of the same (model, configuration) reuses the count
        roof = session._roofline(case(rep=rep), handle, target, prompts, "tiny on torch-cuda")
    # the measuring process never profiles its own target (CUPTI would slow its later launches)
    assert calls == {"bandwidth": 1, "latency": 1, "profiled": 1, "asked": ("cuda", [1] * 10)}
    assert target.calls == 0
    assert lines.count("greenserve: measuring the card's copy bandwidth and launch latency (roofline)") == 1
    assert roof["notes"] == [] and roof["bandwidth_gb_s"] == 2000.0
    assert roof["weight_mb_per_token"] == pytest.approx(2168 * 4 / 1e6)
    assert roof["kv_mb_per_token"] == pytest.approx(2 * 2 * 2 * 4 * (12 + 4) * 4 / 1e6)
    assert roof["launch_floor_ms_per_token"] == pytest.approx(0.5)
    assert session._roofline(case("cpu"), handle, target, prompts, "tiny on torch-cpu") is None


def test_without_a_card_the_fields_stay_none_with_a_note_and_the_sample_goes_on(tmp_path, monkeypatch):
    def no_card(*args, **kwargs):
        raise RooflineUnavailable("no CUDA device visible to torch")

    import pytest_greenserve.session as session_module

    for name in ("measure_bandwidth_gb_s", "measure_launch_latency_us"):
        monkeypatch.setattr(roofline, name, no_card)
    monkeypatch.setattr(session_module, "profile_in_child", no_card)
    session, handle, _ = session_and_handle(tmp_path)
    roof = session._roofline(case(), handle, FakeTarget(), [[1] * 10], "tiny on torch-cuda")
    assert roof["memory_floor_ms_per_token"] is None and roof["launch_floor_ms_per_token"] is None
    assert roof["weight_mb_per_token"] is not None  # the geometry needs no card
    assert roof["notes"] == [
        "roofline: bandwidth_gb_s not measured: RooflineUnavailable: no CUDA device visible to torch",
        "roofline: launch_latency_us not measured: RooflineUnavailable: no CUDA device visible to torch",
        "roofline: launches not counted: RooflineUnavailable: no CUDA device visible to torch"]


def test_the_roofline_can_be_switched_off_and_is_not_profiled_over_http(tmp_path, monkeypatch):
    monkeypatch.setattr(roofline, "measure_bandwidth_gb_s", lambda: 2000.0)
    monkeypatch.setattr(roofline, "measure_launch_latency_us", lambda: 5.0)
    session, handle, _ = session_and_handle(tmp_path, roofline="off")
    assert session._roofline(case(), handle, FakeTarget(), [[1] * 10], "x") is None
    session, handle, _ = session_and_handle(tmp_path, transport="http")
    roof = session._roofline(case(), handle, FakeTarget(), [[1] * 10], "x")
    assert roof["memory_floor_ms_per_token"] is not None and roof["kernels_per_token"] is None
    assert roof["notes"] == ["roofline: launches not profiled (the engine runs in the server's process)"]


# ------------------------------------------------------------------ the report

def gpu_rows():
    from report.synth import make_rows

    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "torch-cuda", "onnx-cuda"), reps=3)
    for r in rows:
        if r["provider"] == "cuda":  # torch 4 ms/token, onnx 0.6, launch floor 0.5, GPU busy 0.4 ms/token
            r.update(fields(), ms_per_token={"torch": 4.0, "onnx": 0.6}[r["engine"]] + 0.01 * r["repetition"])
            r.update(x_memory_floor=r["ms_per_token"] / r["memory_floor_ms_per_token"],
                     x_launch_floor=r["ms_per_token"] / r["launch_floor_ms_per_token"])
    return rows


def test_the_report_shows_the_distance_from_the_cards_limit(tmp_path):
    from pytest_greenserve.report import write_reports

    paths = write_reports(gpu_rows(), tmp_path)
    md = paths["summary"].read_text()
    assert "## Distance from the card's limit (GPU samples)" in md
    section = md.split("## Distance from the card's limit (GPU samples)")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| mini-gpt2")]
    assert [line.split(" | ")[1] for line in table] == ["torch-cuda", "onnx-cuda"]  # GPU samples only
    torch_cuda, onnx_cuda = (line.strip("| ").split(" | ") for line in table)
    memory_floor = fields()["memory_floor_ms_per_token"]
    assert torch_cuda[2:6] == ["3", "4.01", f"{memory_floor:.3g}", "0.5"]  # n, medians of ms/token and the floors
    assert torch_cuda[6] == f"{4.01 / memory_floor:,.0f}×" and torch_cuda[7:9] == ["120.0", "100.0"]
    assert torch_cuda[-1] == "host"  # 8x the launch floor, the GPU busy 10% of the time
    assert onnx_cuda[-1] == "launches"  # within 2x of the launch floor
    assert "2,000 GB/s" in section and "5 µs" in section
    html = paths["html"].read_text()
    assert "Distance from the card&#x27;s limit (GPU samples)" in html and "measured once per run" in html
    csv = (tmp_path / "samples.csv").read_text().splitlines()[0].split(",")
    assert {"memory_floor_ms_per_token", "x_memory_floor", "bound_by"} <= set(csv)


def test_no_table_without_gpu_samples(tmp_path):
    from report.synth import make_rows

    from pytest_greenserve.report import write_reports

    paths = write_reports(make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3), tmp_path)
    assert "Distance from the card" not in paths["summary"].read_text()
    assert "Distance from the card" not in paths["html"].read_text()


# ------------------------------------------------------------------ the card itself (CUDA only)

@pytest.mark.skipif(CUDA, reason="checks the message given without a CUDA device")
def test_without_cuda_the_measurements_say_why():
    for measure in (roofline.measure_bandwidth_gb_s, roofline.measure_launch_latency_us,
                    lambda: roofline.count_launches(lambda: None, 1)):
        with pytest.raises(RooflineUnavailable, match="no CUDA device visible to torch"):
            measure()


@needs_cuda
def test_the_cards_bandwidth_and_launch_latency_are_plausible():
    assert 100 < roofline.measure_bandwidth_gb_s(size_b=256 << 20) < 20_000  # GB/s
    assert 0.5 < roofline.measure_launch_latency_us(launches=500) < 200  # µs


@needs_cuda
def test_one_launch_per_eager_kernel_and_one_per_cuda_graph():
    x = torch.zeros(1, device="cuda")
    eager = roofline.count_launches(lambda: [x.add_(1) for _ in range(50)], tokens=10)
    assert eager.kernels_per_token == pytest.approx(5, abs=0.5)  # no runtime call counted twice
    assert eager.launches_per_token == pytest.approx(5, abs=0.5)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up on a side stream, as graph capture wants
            x.add_(1)
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph):
        for _ in range(50):
            x.add_(1)
    replayed = roofline.count_launches(graph.replay, tokens=1)
    assert replayed.kernels_per_token == 50 and replayed.launches_per_token == pytest.approx(1)


def test_the_launch_profile_child_loads_the_engine_and_answers_in_one_line(tiny_handle):
    """The plumbing of launch_profile: the child gets the engine class, handle and options,
    loads and runs the engine, and its failure comes back as one line (here: no CUDA device,
    so the profile itself cannot be taken; on the GPU machine it returns the counts)."""
    from pytest_greenserve.engines.base import EngineOptions
    from pytest_greenserve.engines.torch_eager import TorchEngine
    from pytest_greenserve.launch_profile import profile_in_child

    if torch_cuda_available():
        pytest.skip("with CUDA the child returns counts (checked on the GPU machine)")
    with pytest.raises(RuntimeError) as info:
        profile_in_child(TorchEngine, tiny_handle("gpt2"), "cpu", EngineOptions(threads=1), [5, 6, 7, 8], 4)
    message = str(info.value)
    assert message.startswith("roofline: launches not counted: RooflineUnavailable: ") and "\n" not in message


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
