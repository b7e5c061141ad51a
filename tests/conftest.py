import os
from pathlib import Path

import pytest

# The plugin's session end imports its reports (numpy, scipy, pandas). Imported here first, so
# that pytester, which drops every module first imported during its test from sys.modules,
# never drops numpy's C extensions: they cannot be loaded twice in one process, and the
# session end of a file run alone would fail with "cannot load module more than once".
import pytest_greenserve.report  # noqa: E402,F401

pytest_plugins = ["pytester"]

FAMILIES = ["gpt2", "gpt_bigcode", "gpt_neox", "bloom", "llama", "gemma", "phi", "stablelm"]


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory) -> Path:
    # Tiny models are cached across test sessions (building eight takes ~10 s), keyed by the
    # library versions inside models.build_tiny_model's fingerprint-free path; set
    # GREENSERVE_TEST_CACHE to share them between runs.
    root = os.environ.get("GREENSERVE_TEST_CACHE")
    return Path(root) if root else tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_root):
    """``tiny_model("llama")`` -> directory of a ~0.35 M-parameter random llama with varied tokens."""
    from pytest_greenserve.models import build_tiny_model

    def get(family: str) -> Path:
        out = tiny_model_root / family
        if not (out / "greenserve.json").is_file():
            build_tiny_model(family, out)
        return out

    return get


@pytest.fixture(scope="session")
def tiny_handle(tiny_model, tmp_path_factory):
    """``tiny_handle("gpt2")`` -> a ModelHandle engines can load (export cache in a temp dir)."""
    from pytest_greenserve.models import ModelSpec, resolve

    cache = tmp_path_factory.mktemp("greenserve-cache")

    def get(family: str):
        path = tiny_model(family)
        return resolve(ModelSpec(f"tiny-{family}", family), "auto", str(path), cache)

    return get
