"""The quality rule (issue 19) on numbers alone: per-prompt NLL excess, the paired bootstrap bound
against the native path, and the verdict. Engines: tests/engines/test_quality.py."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_greenserve.quality import bootstrap_lower_bound, excess_per_prompt, judge, mean_nll
from pytest_greenserve.references import Reference
from pytest_greenserve.samples import quality_fields


def test_excess_is_zero_where_the_output_matches_tie_aware_and_none_where_unscored():
    assert excess_per_prompt([1.5, 2.0, None, 1.0], [1.0, 1.0, 1.0, None], [False, True, False, False]) == \
        [0.5, 0.0, None, None]
    assert mean_nll([-0.5, -1.5]) == 1.0 and mean_nll([]) is None


def test_the_native_path_itself_is_matched():
    v = judge([0.0, 0.3, -0.2, 0.1], [0.0, 0.3, -0.2, 0.1])
    assert v.matched is True and v.vs_native_nats_per_token == 0.0 and v.vs_native_low_nats_per_token == 0.0


def test_worse_on_every_prompt_is_not_matched_and_noise_of_either_sign_is():
    rng = np.random.default_rng(0)
    native = list(rng.normal(0.0, 0.2, 64))
    noisy = [n + d for n, d in zip(native, rng.normal(0.0, 0.2, 64))]  # as good, differently
    assert judge(noisy, native).matched is True
    worse = [n + 0.5 + d for n, d in zip(native, rng.normal(0.0, 0.2, 64))]
    v = judge(worse, native)
    assert v.matched is False and v.vs_native_low_nats_per_token > 0.3
    assert v.vs_native_nats_per_token == pytest.approx(np.mean(worse) - np.mean(native))


def test_one_bad_prompt_in_many_is_within_the_bound_five_are_not():
    native = [0.0] * 100
    assert judge([2.0] + [0.0] * 99, native).matched is True  # 1 in 100: e^-1 of resamples miss it
    assert judge([2.0] * 5 + [0.0] * 95, native).matched is False  # 5 in 100: e^-5 < 1% miss them all


def test_the_bound_is_seeded_and_unjudgeable_input_says_so():
    diffs = list(np.random.default_rng(3).normal(0.1, 1.0, 40))
    assert bootstrap_lower_bound(diffs) == bootstrap_lower_bound(diffs)
    assert bootstrap_lower_bound([]) is None and bootstrap_lower_bound([None]) is None
    v = judge([None, None], [0.0, 0.0])
    assert v.matched is None and v.excess_nats_per_token is None


def test_quality_fields_of_a_sample():
    ref = Reference([[1, 2, 3], [4, 5, 6]], margins=[[1.0, 1e-5, 1.0], [1.0, 1.0, 1.0]],
                    logprobs=[[-0.1, -0.1, -0.1], [-0.2, -0.2, -0.2]])
    # prompt 0 departs at a near-tie (counts as the reference's), prompt 1 at a wide margin
    outputs = [[1, 9, 9], [4, 7, 7]]
    q = quality_fields(outputs, ref, nll=[0.9, 1.2], native_outputs=[[1, 2, 3], [4, 5, 6]], native_nll=[0.1, 0.2])
    assert q["ref_nll_nats_per_token"] == pytest.approx(1.05) and q["ref_nll_per_prompt_nats"] == [0.9, 1.2]
    assert q["nll_excess_nats_per_token"] == pytest.approx(0.5)  # (0 + 1.0) / 2
    assert q["native_nll_excess_nats_per_token"] == 0.0
    assert q["nll_vs_native_nats_per_token"] == pytest.approx(0.5) and q["quality_matched"] in (True, False)
    nothing = quality_fields(outputs, ref, None, None, None)
    assert nothing["quality_matched"] is None and nothing["ref_nll_nats_per_token"] is None
    no_native = quality_fields(outputs, ref, [0.9, 1.2], None, None)
    assert no_native["nll_excess_nats_per_token"] == pytest.approx(0.5) and no_native["quality_matched"] is None


def build(dtype, nll=None, native_nll=None, outputs=((1, 2, 3), (4, 7, 7))):
    from pytest_greenserve.configs import ServingConfig
    from pytest_greenserve.measure import Measurement
    from pytest_greenserve.metrics import builtin_metrics
    from pytest_greenserve.samples import build_sample

    ref = Reference([[1, 2, 3], [4, 5, 6]], margins=[[1.0] * 3] * 2, logprobs=[[-0.1] * 3, [-0.2] * 3])
    m = Measurement(outputs=[list(o) for o in outputs], latencies_s=[0.1, 0.1], ttfts_s=[0.01, 0.01], time_s=0.2)
    return build_sample(run_id="r", machine="m", model="tiny", category=None, weights="replica",
                        config=ServingConfig("compile", "cpu"), repetition=1, order=1, new_tokens=3,
                        prompt_ids=[[1], [2]], measurement=m, reference=ref, versions={}, metrics=builtin_metrics(),
                        dtype=dtype, nll=nll, native_outputs=[[1, 2, 3], [4, 5, 6]] if native_nll else None,
                        native_nll=native_nll)


def test_a_sample_is_error_prone_by_quality_where_scored_and_cannot_be_told_in_bf16_where_not():
    scored = build("bf16", nll=[0.1, 0.2], native_nll=[0.1, 0.2], outputs=((1, 2, 3), (4, 5, 6)))
    assert scored["quality_matched"] is True and scored["error_prone"] is False
    worse = build("bf16", nll=[3.1, 3.2], native_nll=[0.1, 0.2], outputs=((9, 9, 9), (8, 8, 8)))
    assert worse["quality_matched"] is False and worse["error_prone"] is True
    assert worse["match_rate"] == 0.0 and worse["nll_excess_nats_per_token"] == pytest.approx(3.0)
    unscored_bf16 = build("bf16")
    assert unscored_bf16["quality_matched"] is None and unscored_bf16["error_prone"] is None
    unscored_fp32 = build("fp32")  # exact tokens, near-ties allowed: prompt 1 departs at a wide margin
    assert unscored_fp32["error_prone"] is True


def test_mark_error_prone_follows_quality_over_exact_tokens():
    from pytest_greenserve.results import mark_error_prone

    base = {"machine": "m", "model": "tiny", "match_rate": 0.1, "match_rate_tie_aware": 0.12}
    matched = dict(base, config="compile-cuda:bf16", dtype="bf16", quality_matched=True, error_prone=False)
    worse = dict(base, config="onnx-cuda", dtype="fp32", quality_matched=False, error_prone=True)
    unscored = dict(base, config="jit-cuda:bf16", dtype="bf16", quality_matched=None, error_prone=None)
    old = dict(base, config="jit-cuda")  # a run saved before quality scores: exact tokens decide
    rows = mark_error_prone([matched, dict(matched, repetition=2), worse, unscored, old])
    assert [r.get("error_prone") for r in rows] == [False, False, True, None, True]
