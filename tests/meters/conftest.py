from __future__ import annotations

import pytest
from fake_nvml import FakeGpu, FakeNvml
from fake_powercap import FakeClock, make_powercap


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def powercap(tmp_path):
    return make_powercap(tmp_path / "powercap")


@pytest.fixture
def no_cuda_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


@pytest.fixture
def fake_nvml():
    return FakeNvml([FakeGpu()])
