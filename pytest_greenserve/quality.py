"""Output quality against the fp32 reference, and whether a configuration is quality-matched.

Exact tokens are the wrong question once dtypes differ: on the mini models torch itself in bf16
gives the fp32 reference's 32 tokens on about one prompt in ten, and ``compile`` in bf16 gives
torch-bf16's tokens on about one in ten too, while both continuations are as likely under the
fp32 model as the reference's own. So every engine's output is scored by the fp32 reference
model (torch eager, fp32, same provider):

* per prompt, the reference's mean negative log-likelihood of the engine's continuation, in
  nats per token (teacher-forced on the reference model, outside the meters; see references.py);
* its *excess*: that minus the reference's NLL of its own greedy continuation. A continuation
  equal to the reference's has excess 0, and so does one that first departs from it at a
  near-tie (reference top-2 gap below the tie tolerance): after a tie either path is the
  reference's, and the rest of the continuation says nothing about the engine;
* the *native path* at the sample's precision, torch eager in the same dtype, scored the same
  way (in fp32 it is the reference itself: excess 0 everywhere).

A configuration is **quality-matched** unless its excess is worse than the native path's by
more than a bootstrap bound: the paired per-prompt differences (engine − native) are resampled
(:data:`BOOTSTRAP_RESAMPLES` times, seeded), and the configuration is error-prone when the
one-sided lower bound at :data:`QUALITY_ALPHA` of their mean is above zero, i.e. when it is
worse than torch at that precision beyond what the prompts' spread explains.

Pure: no torch, no pytest; the numbers come in as lists.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

#: one-sided level of the bootstrap bound (the CI gate's alpha too): about 1 in 100 good
#: configurations whose prompts happen to fall badly would be called error-prone
QUALITY_ALPHA = 0.01
#: resamples of the prompts; the 1% tail then holds 40 of them
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0


def mean_nll(logprobs: Sequence[float]) -> float | None:
    """Mean negative log-likelihood (nats per token) from per-token natural-log probabilities."""
    return -statistics.fmean(logprobs) if logprobs else None


def excess_per_prompt(nll: Sequence[float | None], reference_nll: Sequence[float | None],
                      tie_matched: Sequence[bool]) -> list[float | None]:
    """Per prompt: the continuation's NLL minus the reference's own, 0 where the continuation
    matches the reference tie-aware (equal, or first departing at a near-tie); None where
    either NLL is missing."""
    out: list[float | None] = []
    for value, ref, tied in zip(nll, reference_nll, tie_matched):
        if tied:
            out.append(0.0)
        elif value is None or ref is None:
            out.append(None)
        else:
            out.append(value - ref)
    return out


def bootstrap_lower_bound(diffs: Sequence[float], alpha: float = QUALITY_ALPHA,
                          resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> float | None:
    """One-sided lower bound at ``alpha`` of the mean of ``diffs`` (percentile bootstrap over
    the prompts, seeded so a saved run always gets the same verdict); None without values."""
    import numpy as np

    values = np.asarray([d for d in diffs if d is not None], dtype=float)
    if values.size == 0:
        return None
    if np.all(values == values[0]):  # every resample has this mean
        return float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    return float(np.quantile(means, alpha))


@dataclass(frozen=True)
class Verdict:
    """The quality fields of one sample (see :func:`judge`)."""

    excess_nats_per_token: float | None  # engine's mean excess NLL over the reference's own
    native_excess_nats_per_token: float | None  # torch eager in the same dtype: the same figure
    vs_native_nats_per_token: float | None  # mean paired difference, engine − native
    vs_native_low_nats_per_token: float | None  # its one-sided lower bootstrap bound
    matched: bool | None  # None: no figures to judge by


def judge(excess: Sequence[float | None], native_excess: Sequence[float | None]) -> Verdict:
    """Whether an engine's per-prompt excess NLL is no worse than the native path's beyond the
    bootstrap bound (prompts where either is missing are left out of the pairing)."""
    pairs = [(e, n) for e, n in zip(excess, native_excess) if e is not None and n is not None]
    mine = [e for e in excess if e is not None]
    native = [n for n in native_excess if n is not None]
    if not pairs:
        return Verdict(statistics.fmean(mine) if mine else None, statistics.fmean(native) if native else None,
                       None, None, None)
    diffs = [e - n for e, n in pairs]
    low = bootstrap_lower_bound(diffs)
    return Verdict(statistics.fmean(mine), statistics.fmean(native), statistics.fmean(diffs), low,
                   matched=not (low is not None and low > 0))
