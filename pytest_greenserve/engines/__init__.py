"""Built-in runtime engines, registered through the same hook users implement.

This module is registered as a pytest plugin by ``plugin.py`` (pluggy's host-registers-its-
own-defaults pattern), so a ``conftest.py`` can add engines or replace a built-in one.
"""

from __future__ import annotations

from .compile import CompileEngine
from .jit import JitEngine
from .llamacpp import LlamaCppEngine
from .onnx import OnnxEngine
from .openvino import OpenVinoEngine
from .ortgenai import OrtGenaiEngine
from .ovgenai import OvGenaiEngine
from .torch_eager import TorchEngine

BUILTIN = (TorchEngine, OnnxEngine, OpenVinoEngine, JitEngine, CompileEngine, OrtGenaiEngine, OvGenaiEngine,
           LlamaCppEngine)


def pytest_greenserve_register_engines(registry: dict) -> None:
    for engine in BUILTIN:
        registry.setdefault(engine.name, engine)
