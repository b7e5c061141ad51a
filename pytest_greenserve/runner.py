"""The runner: one target at a time, from load to close.

It owns what happens around the measured windows of one (model, configuration): loading the
target, the warm-up requests, the cool-down before the next configuration, the idle window
next to each sample (after the machine has settled, with the target loaded: the sample's own
device state; only where a meter reads power), and closing. A configuration that cannot be loaded is remembered, so its later
repetitions fail at once with the same one-line reason instead of loading again.

It knows nothing of pytest, reports or how a sample is built: the session hands it a target
factory, the warm-up prompts and the meters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from .engines.base import EngineError, failure_line
from .targets import Target


@dataclass
class Loaded:
    key: Hashable  # (model, configuration)
    target: Target
    #: seconds ``target.load()`` took (exports, traces, compilation: never inside a sample)
    load_s: float | None = None


def one_line_failure(what: str, exc: BaseException) -> str:
    """``what: Type: first line of the message`` — how a failure reaches the user."""
    if isinstance(exc, EngineError):
        return str(exc).splitlines()[0] if str(exc) else what
    return failure_line(what, exc)


class Runner:
    def __init__(self, *, warmup: int, new_tokens: int, idle_s: float, cooldown_s: float, settle_s: float = 0.0,
                 progress: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep):
        self.warmup = warmup
        self.new_tokens = new_tokens
        self.idle_s = idle_s
        self.cooldown_s = cooldown_s
        self.settle_s = settle_s
        self.progress = progress
        self._sleep = sleep
        self.loaded: Loaded | None = None  # the target of the latest ensure()
        #: targets kept loaded at once: 1, or 2 for an interleaved A/B session (both sides stay
        #: loaded, so that alternating between them never reloads)
        self.capacity = 1
        self._held: dict[Hashable, Loaded] = {}  # oldest first
        self._failed: dict[Hashable, str] = {}
        self._ever_loaded = False

    def failures(self) -> list[str]:
        """One line per target that could not be loaded or warmed up, in the order they failed."""
        return list(self._failed.values())

    def ensure(self, key: Hashable, label: str, make_target: Callable[[], Target],
               warmup_prompts: Sequence[Sequence[int]]) -> Loaded:
        """The loaded, warmed-up target for ``key``, loading it (and closing another) if needed.

        Raises :class:`EngineError` with a one-line reason when the target cannot be loaded
        or warmed up, now or at an earlier attempt.
        """
        if key in self._held:
            self.loaded = self._held[key]
            return self.loaded
        if key in self._failed:
            raise EngineError(self._failed[key])
        while len(self._held) >= self.capacity:
            _close_quietly(self._held.pop(next(iter(self._held))).target)
        self.loaded = None
        if self._ever_loaded and self.cooldown_s > 0:
            self.progress(f"greenserve: cooling down {self.cooldown_s:g} s between configurations")
            self._sleep(self.cooldown_s)
        self.progress(f"greenserve: loading {label}")
        target = make_target()
        self._ever_loaded = True
        try:
            started = time.perf_counter()
            target.load()
            load_s = time.perf_counter() - started
            for ids in warmup_requests(warmup_prompts, self.warmup):
                target.generate(ids, self.new_tokens)
        except Exception as exc:  # an engine's library failing: still one line for the user
            _close_quietly(target)
            self._failed[key] = one_line_failure(f"{label} could not be served", exc)
            raise EngineError(self._failed[key]) from exc
        self.loaded = self._held[key] = Loaded(key, target, load_s)
        return self.loaded

    def idle_baseline(self, label: str, meters):
        """Idle power measured now, right before a sample, with its target loaded.

        The machine first rests ``settle_s`` (a GPU reads higher just after work), then the
        meters read ``idle_s`` seconds of idle. Measured next to every sample, not once per
        configuration: a baseline taken in another device state (before a CUDA context
        existed, say) would leave a constant offset in every later sample's net energy, which
        looks like a real, significant difference. None without meters or with ``idle_s`` 0.

        Where no meter reads power (only the CPU-time estimate: most VMs and CI), the idle power
        is the model's constant, returned at once: no settling, no window (on the 2-core VM
        those were 6 s of 15 for every sample, and read back 20.0-20.1 W for a 20 W constant).
        """
        if meters is None:
            return None
        if not getattr(meters, "reads_power", lambda: True)():
            return meters.modelled_idle()
        if self.idle_s <= 0:
            return None
        if self.settle_s > 0:
            self._sleep(self.settle_s)
        self.progress(f"greenserve: idle power for {self.idle_s:g} s ({label} loaded)")
        return meters.measure_idle(self.idle_s, progress=self.progress)

    def discard(self) -> None:
        """Close the latest target after it failed mid-sample: its state (device memory, a
        half-finished generation) cannot be trusted, so the next sample loads it afresh."""
        if self.loaded is not None:
            loaded, self.loaded = self.loaded, None
            self._held.pop(loaded.key, None)
            _close_quietly(loaded.target)

    def close(self) -> None:
        self.loaded = None
        while self._held:
            _close_quietly(self._held.pop(next(iter(self._held))).target)


def warmup_requests(prompts: Sequence[Sequence[int]], warmup: int) -> list[Sequence[int]]:
    """The warm-up requests: the first ``warmup`` prompts, then one prompt of every other
    distinct length among ``prompts``.

    Engines that specialise or compile per input shape (TorchScript's profiling executor,
    OpenVINO's dynamic shapes) would otherwise do it inside a measured window the first time a
    new prompt length arrives. The prompts are 10-15 tokens, so this adds at most a handful of
    requests per load, whatever the engine.
    """
    prompts = list(prompts)
    chosen = prompts[:warmup]
    seen = {len(p) for p in chosen}
    for p in prompts[warmup:]:
        if len(p) not in seen:
            seen.add(len(p))
            chosen.append(p)
    return chosen


def _close_quietly(target: Target) -> None:
    try:
        target.close()
    except Exception:  # closing a broken target must not hide why it broke
        pass
