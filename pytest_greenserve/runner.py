"""The runner: one target at a time, from load to close.

It owns what happens around the measured windows of one (model, configuration): loading the
target, the warm-up requests, the idle baseline, the cool-down before the next
configuration, and closing. A configuration that cannot be loaded is remembered, so its later
repetitions fail at once with the same one-line reason instead of loading again.

It knows nothing of pytest, reports or how a sample is built: the session hands it a target
factory, the warm-up prompts and the meters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from .engines.base import EngineError
from .targets import Target


@dataclass
class Loaded:
    key: Hashable  # (model, configuration)
    target: Target
    idle: object = None  # the meters' IdleBaseline for this key, or None


def one_line_failure(what: str, exc: BaseException) -> str:
    """``what: Type: first line of the message`` — how a failure reaches the user."""
    if isinstance(exc, EngineError):
        return str(exc).splitlines()[0] if str(exc) else what
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{what}: {type(exc).__name__}: {first}".rstrip(": ")


class Runner:
    def __init__(self, *, warmup: int, new_tokens: int, idle_s: float, cooldown_s: float,
                 progress: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep):
        self.warmup = warmup
        self.new_tokens = new_tokens
        self.idle_s = idle_s
        self.cooldown_s = cooldown_s
        self.progress = progress
        self._sleep = sleep
        self.loaded: Loaded | None = None
        self._failed: dict[Hashable, str] = {}
        self._idles: dict[Hashable, object] = {}
        self._ever_loaded = False

    def ensure(self, key: Hashable, label: str, make_target: Callable[[], Target],
               warmup_prompts: Sequence[Sequence[int]], meters=None) -> Loaded:
        """The loaded, warmed-up target for ``key``, loading it (and closing another) if needed.

        Raises :class:`EngineError` with a one-line reason when the target cannot be loaded
        or warmed up, now or at an earlier attempt.
        """
        if self.loaded is not None and self.loaded.key == key:
            return self.loaded
        if key in self._failed:
            raise EngineError(self._failed[key])
        self.close()
        if self._ever_loaded and self.cooldown_s > 0:
            self.progress(f"greenserve: cooling down {self.cooldown_s:g} s between configurations")
            self._sleep(self.cooldown_s)
        self.progress(f"greenserve: loading {label}")
        target = make_target()
        self._ever_loaded = True
        try:
            target.load()
            for ids in list(warmup_prompts)[: self.warmup]:
                target.generate(ids, self.new_tokens)
        except Exception as exc:  # an engine's library failing: still one line for the user
            _close_quietly(target)
            self._failed[key] = one_line_failure(f"{label} could not be served", exc)
            raise EngineError(self._failed[key]) from exc
        self.loaded = Loaded(key, target, self._idle_baseline(key, label, meters))
        return self.loaded

    def _idle_baseline(self, key: Hashable, label: str, meters):
        """Idle power with this configuration loaded, measured at its first load.

        In the shuffled order a configuration is loaded again and again; measuring idle at
        every load would multiply the idle time by the repetitions for little gain, so the
        baseline of the first load is reused (it is stored with every sample).
        """
        if key not in self._idles:
            idle = None
            if meters is not None and self.idle_s > 0:
                self.progress(f"greenserve: measuring idle power for {self.idle_s:g} s ({label} loaded)")
                idle = meters.measure_idle(self.idle_s, progress=self.progress)
            self._idles[key] = idle
        return self._idles[key]

    def discard(self) -> None:
        """Close the loaded target after it failed mid-sample: its state (device memory, a
        half-finished generation) cannot be trusted, so the next sample loads it afresh."""
        self.close()

    def close(self) -> None:
        if self.loaded is not None:
            loaded, self.loaded = self.loaded, None
            _close_quietly(loaded.target)


def _close_quietly(target: Target) -> None:
    try:
        target.close()
    except Exception:  # closing a broken target must not hide why it broke
        pass
