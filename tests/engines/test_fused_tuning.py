"""The fused step's tuned GEMV launch configurations are kept on disk and reused: a second load
of the same shapes on the same card runs the same kernels without tuning again; anything else
(other shapes, a torn file, a configuration that no longer fits) is tuned again, never trusted.
The tuning itself needs CUDA graphs; here a stand-in chooses, so the cache is what is tested."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed: the fused step's modules cannot load", allow_module_level=True)

from pytest_greenserve.engines import fused_kernels as fk  # noqa: E402
from pytest_greenserve.engines import fused_tuning  # noqa: E402

CHOSEN = dict(BLOCK_N=4, BLOCK_K=16, num_warps=4, SPLIT_K=1)


def decoder(hidden=16, vocab=100):
    layer = SimpleNamespace(qkv_w=torch.empty(3 * hidden, hidden), out_w=torch.empty(hidden, hidden),
                            fc_w=torch.empty(4 * hidden, hidden), proj_w=torch.empty(hidden, 4 * hidden),
                            norm_1={"ln": None})
    d = SimpleNamespace(layers=[layer], lm_head=torch.empty(vocab, hidden), x=torch.zeros(hidden), gated=False)
    d.configs = {site: fk.default_config(n, k) for site, (n, k) in fused_tuning.site_shapes(d).items()}
    return d


class StandIn:
    """Chooses CHOSEN for every site, as fused_tuning.tune would, and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, d):
        self.calls += 1
        d.configs.update({site: dict(CHOSEN) for site in fused_tuning.SITES})
        return {"sites": {site: {"config": dict(CHOSEN), "us": 1.0} for site in fused_tuning.SITES},
                "tuning_s": 12.5}


def test_a_second_load_reuses_the_tuning_and_runs_the_same_configurations(tmp_path):
    tune, said = StandIn(), []
    first = fused_tuning.tuned(decoder(), tmp_path, tune, progress=said.append)
    again = decoder()
    second = fused_tuning.tuned(again, tmp_path, tune, progress=said.append)
    assert tune.calls == 1
    assert len(said) == 1 and said[0].startswith("tuning the fused step's GEMV") and "\n" not in said[0]
    assert first["cache"] == "stored" and second["cache"] == "hit" and second["file"] == first["file"]
    assert again.configs == {site: CHOSEN for site in fused_tuning.SITES}
    assert second["tuning_s"] == 12.5  # the original tuning's seconds, not the load's


def test_other_shapes_a_torn_file_or_a_configuration_that_no_longer_fits_are_tuned_again(tmp_path):
    tune = StandIn()
    fused_tuning.tuned(decoder(), tmp_path, tune)
    fused_tuning.tuned(decoder(hidden=32), tmp_path, tune)  # another model's shapes: its own entry
    assert tune.calls == 2 and len(list(tmp_path.glob("*.json"))) == 2
    (path,) = [p for p in tmp_path.glob("*.json") if json.loads(p.read_text())["key"]["shapes"]["out"] == [16, 16]]
    path.write_text(path.read_text()[:40])  # torn
    assert fused_tuning.tuned(decoder(), tmp_path, tune)["cache"] == "stored"
    kept = json.loads(path.read_text())
    kept["record"]["sites"]["out"]["config"]["BLOCK_K"] = 4096  # past the matrix: no longer fits
    path.write_text(json.dumps(kept))
    assert fused_tuning.tuned(decoder(), tmp_path, tune)["cache"] == "stored"
    assert tune.calls == 4


def test_changed_kernels_are_tuned_again(tmp_path, monkeypatch):
    """A tuning kept by an earlier version of the kernels is not reused: what was fastest for
    them need not be for these."""
    tune = StandIn()
    fused_tuning.tuned(decoder(), tmp_path, tune)
    assert fused_tuning.tuned(decoder(), tmp_path, tune)["cache"] == "hit"
    monkeypatch.setattr(fused_tuning, "kernels_digest", lambda: "0123456789ab")  # the kernels' source changed
    assert fused_tuning.tuned(decoder(), tmp_path, tune)["cache"] == "stored"
    assert tune.calls == 2


def test_without_a_folder_it_tunes_at_every_load():
    tune = StandIn()
    assert fused_tuning.tuned(decoder(), None, tune)["cache"] == "off"
    fused_tuning.tuned(decoder(), None, tune)
    assert tune.calls == 2


def test_every_candidate_fits_the_split_k_scratch_and_a_larger_split_is_refused():
    """GemvScratch holds MAX_SPLIT_K partial sums per row: no candidate asks for more, and a
    launch that does is refused in one line before anything runs."""
    assert max(c["SPLIT_K"] for c in fk.candidate_configs()) <= fk.MAX_SPLIT_K
    scratch = fk.GemvScratch(8, "cpu")
    config = dict(BLOCK_N=4, BLOCK_K=16, num_warps=4, SPLIT_K=2 * fk.MAX_SPLIT_K)
    with pytest.raises(ValueError, match=f"SPLIT_K is at most {fk.MAX_SPLIT_K}, not {2 * fk.MAX_SPLIT_K}"):
        fk.gemv(torch.zeros(16), torch.zeros(8, 16), torch.zeros(8), scratch=scratch, config=config)
