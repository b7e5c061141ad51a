"""The measure step: every prompt once against a loaded target, inside the meters' window.

The meters run in ``with meters.track(idle)``, so they stop however the block ends: a target
that raises on its third request fails this sample only (:class:`RequestFailed`, one line),
and the next sample starts with no sampler thread left running.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

from .engines.base import EngineError, failure_line
from .load import MAX_IN_FLIGHT, LoadShape, arrival_times, measured_window
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
    #: the load shape that sent the requests (load.py), as given: ``closed:1``, ``poisson:2.5``
    load: str = "closed:1"
    #: an open loop's scheduled rate (requests/s); None for a closed loop
    offered_rate_rps: float | None = None
    #: per request, whether it counts for the sample's figures (an open loop: it completed inside
    #: the measured window); None: every request counts (a closed loop measures them all)
    measured: list[bool] | None = None
    #: an open loop's window: warm-up and cool-down fractions, the window's start and end in
    #: seconds after the first arrival (as it ran), and how many arrivals the schedule put inside
    #: it; None for a closed loop
    window: dict | None = None


def measure_prompts(target: Target, prompt_ids: Sequence[Sequence[int]], new_tokens: int,
                    meters=None, idle=None, concurrency: int = 1, load: LoadShape | None = None,
                    seed: int = 0, repetition: int = 1, warmup: float = 0.0, cooldown: float = 0.0) -> Measurement:
    """Send every prompt once, in order, batch of one; time each request and the whole window.

    ``concurrency`` > 1 (or ``load`` closed:N): that many client threads send the prompts (an
    HTTP target's server queues them); each request's latency is timed in its thread, results
    keep prompt order. ``load`` poisson:RATE or constant:RATE: an open loop
    (:func:`measure_open_loop`; ``seed``, ``repetition``, ``warmup`` and ``cooldown`` are its)."""
    if load is not None and load.open_loop:
        return measure_open_loop(target, prompt_ids, new_tokens, load, meters, idle, seed=seed,
                                 repetition=repetition, warmup=warmup, cooldown=cooldown)
    if load is not None and load.kind == "closed":
        concurrency = load.clients
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
                       started_at, time.time(), [getattr(g, "token_times_s", None) for _, g in results],
                       load=f"closed:{concurrency}")


#: seconds between scheduling the open loop and its first arrival, so that every client thread
#: has started before the first release
_LEAD_S = 0.05


def measure_open_loop(target: Target, prompt_ids, new_tokens: int, shape: LoadShape, meters=None, idle=None, *,
                      seed: int = 0, repetition: int = 1, warmup: float = 0.0, cooldown: float = 0.0,
                      clock=time.perf_counter) -> Measurement:
    """An open loop: prompt i is released at its scheduled arrival (``load.arrival_times``),
    whether or not earlier requests are answered; overlapping requests run on their own client
    threads (the target must queue them: HTTP).

    The meters' window opens ``warmup`` of the arrival span after the first arrival and closes
    ``cooldown`` of it before the last one (``load.measured_window``), while requests keep
    being released and answered; requests completing inside the window are ``measured``, the
    others are answered (their outputs are checked like every output) but not counted.

    Each request's latency runs from its *scheduled* arrival, not from when a thread got to
    send it, so a client falling behind its schedule shows as latency rather than vanishing
    (coordinated omission); its TTFT and token times are shifted by the same lag.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    n = len(prompt_ids)
    arrivals = arrival_times(shape, n, seed, repetition)
    try:
        start_s, end_s = measured_window(arrivals, warmup, cooldown)
    except ValueError as exc:
        raise RequestFailed(str(exc)) from None
    results: list = [None] * n
    stop = threading.Event()

    def one(i: int):
        release = t0 + arrivals[i]
        if stop.wait(max(0.0, release - clock())):
            return  # another request failed: the sample is abandoned
        sent = clock()
        gen = target.generate(prompt_ids[i], new_tokens)
        results[i] = (release, sent, clock(), gen)

    def fail(futures):
        """Raise the first failed request's error, the others' releases called off."""
        for i, fut in enumerate(futures, 1):
            if fut.done() and fut.exception() is not None:
                stop.set()
                exc = fut.exception()
                raise RequestFailed(failure_line(f"request {i} of {n} failed", exc)) from exc

    window = meters.track(idle) if meters is not None else nullcontext(None)
    with ThreadPoolExecutor(max_workers=max(1, min(n, MAX_IN_FLIGHT)), thread_name_prefix="greenserve-open") as pool:
        t0 = clock() + _LEAD_S
        futures = [pool.submit(one, i) for i in range(n)]
        try:
            # before the window: the warm-up's requests are released and answered, unmetered
            wait(futures, timeout=max(0.0, t0 + start_s - clock()), return_when=FIRST_EXCEPTION)
            fail(futures)
            with window as tracked:
                w0, started_at = clock(), time.time()
                wait(futures, timeout=max(0.0, t0 + end_s - clock()), return_when=FIRST_EXCEPTION)
                fail(futures)
                w1, finished_at = clock(), time.time()
            wait(futures, return_when=FIRST_EXCEPTION)  # the cool-down and the drain: answered, not measured
            fail(futures)
        finally:
            stop.set()
    latencies, ttfts, token_times, measured = [], [], [], []
    for release, sent, done, gen in results:
        lag = sent - release
        latencies.append(done - release)
        ttfts.append(gen.ttft_s + lag if gen.ttft_s is not None else None)
        times = getattr(gen, "token_times_s", None)
        token_times.append([t + lag for t in times] if times is not None else None)
        measured.append(w0 <= done <= w1)
    return Measurement([list(r[3].token_ids) for r in results], latencies, ttfts, w1 - w0,
                       tracked.fields if tracked is not None else {}, started_at, finished_at, token_times,
                       load=str(shape), offered_rate_rps=shape.rate_rps, measured=measured,
                       window={"warmup": warmup, "cooldown": cooldown, "start_s": w0 - t0, "end_s": w1 - t0,
                               "arrivals": sum(w0 <= t0 + a <= w1 for a in arrivals)})
