"""The order configurations are listed in: by provider (cpu, cuda), then engine, then name."""

from __future__ import annotations

_ENGINE_ORDER = {"torch": 0, "onnx": 1, "openvino": 2, "jit": 3}
_PROVIDER_ORDER = {"cpu": 0, "cuda": 1}


def config_sort_key(name: str):
    engine, _, provider = str(name).rpartition("-")
    provider = provider.split(":")[0].split("@")[0]  # torch-cpu:bf16@http/c4 sorts beside torch-cpu
    return (_PROVIDER_ORDER.get(provider, 9), _ENGINE_ORDER.get(engine, 9), str(name))


def sort_configs(names) -> list[str]:
    return sorted({str(n) for n in names}, key=config_sort_key)
