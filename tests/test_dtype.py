"""--greenserve-dtype (issue 10): the option, what cannot serve bf16, the sample's label and
dtype field, and the reference cache keyed by dtype. No models here: these run in milliseconds
(engine behaviour in bf16 is tests/engines/test_bf16.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_greenserve.configs import ServingConfig
from pytest_greenserve.engines import BUILTIN
from pytest_greenserve.engines.base import library_versions
from pytest_greenserve.measure import Measurement
from pytest_greenserve.metrics import builtin_metrics
from pytest_greenserve.models import REGISTRY
from pytest_greenserve.options import OptionError, Settings, read_settings
from pytest_greenserve.references import FORMAT, ReferenceStore
from pytest_greenserve.results import sample_columns, samples_frame
from pytest_greenserve.samples import build_sample, config_label
from pytest_greenserve.session import GreenserveSession

ENGINES = {cls.name: cls for cls in BUILTIN}


def settings(**given) -> Settings:
    return read_settings(given.get, engines=ENGINES, models=dict(REGISTRY), rootpath=Path("/root-dir"))


def session(tmp_path, dtype: str, engines=None) -> GreenserveSession:
    s = Settings(models=(), local_paths={}, configs=(), cache_dir=tmp_path, dtype=dtype)
    return GreenserveSession(s, engines or ENGINES, {}, progress=lambda message: None)


# ------------------------------------------------------------------ the option

def test_the_dtype_option_takes_fp32_or_bf16():
    assert settings().dtype == "fp32"
    assert settings(dtype="bf16").dtype == "bf16"
    with pytest.raises(OptionError) as info:
        settings(dtype="fp16")
    assert str(info.value) == "--greenserve-dtype='fp16': expected fp32 or bf16"


# ------------------------------------------------------------------ engines that cannot serve bf16 are skipped

def test_an_engine_without_bf16_is_unavailable_in_bf16_with_one_line(tmp_path):
    reason = session(tmp_path, "bf16").unavailable_reason(ServingConfig("onnx", "cpu"))
    assert reason.startswith("onnx serves fp32 only; --greenserve-dtype=bf16 is for ")
    assert {"torch", "jit"} <= set(reason.split(" is for ")[1].split(", ")) and "onnx" not in reason.split(" is for ")[1]
    assert "\n" not in reason
    assert "openvino serves fp32 only" in session(tmp_path, "bf16").unavailable_reason(ServingConfig("openvino", "cpu"))


def test_torch_and_jit_serve_bf16_and_fp32_changes_nothing(tmp_path):
    pytest.importorskip("torch")
    bf16, fp32 = session(tmp_path, "bf16"), session(tmp_path, "fp32")
    for engine in ("torch", "jit"):
        config = ServingConfig(engine, "cpu")
        assert bf16.unavailable_reason(config) == ENGINES[engine].unavailable_reason("cpu")
    assert fp32.unavailable_reason(ServingConfig("onnx", "cpu")) == ENGINES["onnx"].unavailable_reason("cpu")
    assert bf16._engine_options().dtype == "bf16" and fp32._engine_options().dtype == "fp32"


def test_an_engine_class_without_dtypes_serves_fp32_only(tmp_path):
    class Old:  # an engine written before the option: no dtypes attribute
        @classmethod
        def unavailable_reason(cls, provider):
            return None

    engines = {**ENGINES, "old": Old}
    assert session(tmp_path, "fp32", engines).unavailable_reason(ServingConfig("old", "cpu")) is None
    assert session(tmp_path, "bf16", engines).unavailable_reason(ServingConfig("old", "cpu")).startswith(
        "old serves fp32 only; --greenserve-dtype=bf16 is for torch")


def test_the_served_command_refuses_a_dtype_its_engine_lacks():
    r = subprocess.run([sys.executable, "-m", "pytest_greenserve", "serve", "--model", "mini-gpt2",
                        "--config", "onnx-cpu", "--dtype", "bf16"], capture_output=True, text=True, timeout=120)
    if "not installed" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["greenserve: onnx-cpu serves fp32 only, not --dtype bf16"]


# ------------------------------------------------------------------ the sample

def sample(dtype: str | None, transport="inproc", concurrency=1) -> dict:
    m = Measurement(outputs=[[1, 2]], latencies_s=[0.1], ttfts_s=[0.01], time_s=0.1)
    kwargs = {} if dtype is None else {"dtype": dtype}
    return build_sample(run_id="r", machine="m", model="tiny", category=1, weights="w",
                        config=ServingConfig("torch", "cuda"), repetition=1, order=1, new_tokens=2,
                        prompt_ids=[[1]], measurement=m, reference=None, versions={}, metrics=builtin_metrics(),
                        transport=transport, concurrency=concurrency, **kwargs)


def test_a_bf16_sample_is_its_own_configuration_and_fp32_labels_are_unchanged():
    bf16 = sample("bf16")
    assert (bf16["config"], bf16["dtype"], bf16["engine"], bf16["provider"]) == ("torch-cuda:bf16", "bf16",
                                                                                 "torch", "cuda")
    assert sample("bf16", "http", 4)["config"] == "torch-cuda:bf16@http/c4"
    fp32 = sample(None)  # the default
    assert (fp32["config"], fp32["dtype"]) == ("torch-cuda", "fp32")
    assert sample("fp32", "http", 4)["config"] == "torch-cuda@http/c4"
    config = ServingConfig("onnx", "cpu")
    assert [config_label(config), config_label(config, "http"), config_label(config, "http", 2)] == \
        ["onnx-cpu", "onnx-cpu@http", "onnx-cpu@http/c2"]


def test_dtype_is_a_samples_column_and_older_samples_read_as_fp32():
    columns = sample_columns(builtin_metrics())
    # beside the other how-it-was-served columns: transport, concurrency, stream, dtype
    assert columns.index("dtype") == columns.index("stream") + 1 == columns.index("concurrency") + 2
    df = samples_frame([{"model": "m", "config": "torch-cpu"}, {"model": "m", "config": "torch-cpu:bf16",
                                                                 "dtype": "bf16"}])
    assert df["dtype"].tolist() == ["fp32", "bf16"]
    assert samples_frame([{"model": "m", "config": "torch-cpu"}])["dtype"].tolist() == ["fp32"]


def test_the_run_records_the_dtype(tmp_path):
    pytest.importorskip("psutil")
    assert session(tmp_path, "bf16").meta()["options"]["dtype"] == "bf16"


# ------------------------------------------------------------------ the reference is fp32; the native path is per dtype

def test_the_reference_is_fp32_in_every_dtype_and_the_native_path_has_its_own_file(tmp_path):
    args = ("mini-gpt2", "cpu", "mini-gpt2@replica-1", ["a", "b"])
    fp32 = ReferenceStore(tmp_path, 4, progress=lambda m: None)
    bf16 = ReferenceStore(tmp_path, 4, progress=lambda m: None, dtype="bf16")
    assert fp32.path(*args) == bf16.path(*args)  # one fp32 reference, shared by both sessions
    native = bf16.native_path(*args)
    assert native != bf16.path(*args) and native.parent == bf16.path(*args).parent
    assert native.name.startswith("mini-gpt2-cpu-bf16-native-")
    key = json.dumps(["mini-gpt2@replica-1", "cpu", ["a", "b"], 4, library_versions(("torch", "transformers")),
                      FORMAT], sort_keys=True)
    assert fp32.path(*args).name == f"mini-gpt2-cpu-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    assert session(tmp_path, "bf16").references.dtype == "bf16"
