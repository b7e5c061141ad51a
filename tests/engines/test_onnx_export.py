"""The ONNX export of a model past protobuf's 2 GiB: optimum's post-processing (deduplicating a
tied embedding and vocabulary matrix) loads the exported model whole and fails there, so the
export skips it for such models and keeps it for the others."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from pytest_greenserve.engines.onnx import dedupes_tied_weights  # noqa: E402

CONFIGS = Path(__file__).parents[2] / "pytest_greenserve" / "data" / "configs"


@pytest.mark.parametrize("model,dedupes", [
    ("tiny-starcoder", True),  # 164 M parameters: 0.66 GB in fp32
    ("codeparrot-small", True),
    ("pythia-410m", True),  # 1.6 GB in fp32, just under
    ("starcoderbase-1b", False),  # 1.1 B parameters, its vocabulary matrix tied: 4.6 GB (its export failed)
    ("phi2", False),
])
def test_models_past_protobufs_limit_are_exported_without_deduplicating_tied_weights(model, dedupes):
    assert dedupes_tied_weights(CONFIGS / f"{model}.json") is dedupes
