"""The measure step: every prompt once against a loaded target, inside the meters' window.

The meters run in ``with meters.track(idle)``, so they stop however the block ends: a target
that raises on its third request fails this sample only (:class:`RequestFailed`, one line),
and the next sample starts with no sampler thread left running.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

from .engines.base import EngineError, failure_line
from .targets import Target


class RequestFailed(EngineError):
    """A request raised inside a measured window; the message is one line."""


@dataclass
class Measurement:
    """What one measured window gave, before any derived figure."""

    outputs: list[list[int]]  # generated token ids, per request
    latencies_s: list[float]  # wall time of each request
    ttfts_s: list[float | None]  # time to first token of each request, where the target knows it
    time_s: float  # wall time of the whole window (all requests)
    meter_fields: dict = field(default_factory=dict)  # what the meters measured, plus meter_notes
    started_at: float = 0.0  # Unix time
    finished_at: float = 0.0
    #: per request, seconds from its start until each token existed (engines that stamp every
    #: token, and streamed HTTP, where the client stamps each token's arrival); else None
    token_times_s: list[list[float] | None] = field(default_factory=list)


def measure_prompts(target: Target, prompt_ids: Sequence[Sequence[int]], new_tokens: int,
                    meters=None, idle=None, concurrency: int = 1) -> Measurement:
    """Send every prompt once, in order, batch of one; time each request and the whole window.

    ``concurrency`` > 1: that many client threads send the prompts (an HTTP target's server
    queues them); each request's latency is timed in its thread, results keep prompt order."""
    if concurrency > 1:
        return _measure_concurrently(target, prompt_ids, new_tokens, meters, idle, concurrency)
    latencies: list[float] = []
    ttfts: list[float | None] = []
    token_times: list[list[float] | None] = []
    outputs: list[list[int]] = []
    started_at = time.time()
    window = meters.track(idle) if meters is not None else nullcontext(None)
    with window as tracked:
        t0 = time.perf_counter()
        for i, ids in enumerate(prompt_ids, 1):
            t = time.perf_counter()
            try:
                gen = target.generate(ids, new_tokens)
            except Exception as exc:
                raise RequestFailed(failure_line(f"request {i} of {len(prompt_ids)} failed", exc)) from exc
            latencies.append(time.perf_counter() - t)
            ttfts.append(gen.ttft_s)
            token_times.append(getattr(gen, "token_times_s", None))
            outputs.append(list(gen.token_ids))
        time_s = time.perf_counter() - t0
    return Measurement(outputs, latencies, ttfts, time_s, tracked.fields if tracked is not None else {},
                       started_at, time.time(), token_times)


def _measure_concurrently(target: Target, prompt_ids, new_tokens: int, meters, idle, concurrency: int) -> Measurement:
    from concurrent.futures import ThreadPoolExecutor

    n = len(prompt_ids)
    results: list = [None] * n

    def one(i: int):
        t = time.perf_counter()
        gen = target.generate(prompt_ids[i], new_tokens)
        results[i] = (time.perf_counter() - t, gen)

    started_at = time.time()
    window = meters.track(idle) if meters is not None else nullcontext(None)
    with window as tracked:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="greenserve-client") as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            for i, fut in enumerate(futures, 1):
                exc = fut.exception()
                if exc is not None:
                    for f in futures:
                        f.cancel()
                    raise RequestFailed(failure_line(f"request {i} of {n} failed", exc)) from exc
        time_s = time.perf_counter() - t0
    return Measurement([list(g.token_ids) for _, g in results], [lat for lat, _ in results],
                       [g.ttft_s for _, g in results], time_s, tracked.fields if tracked is not None else {},
                       started_at, time.time(), [getattr(g, "token_times_s", None) for _, g in results])
