"""What one request goes to: the :class:`Target` protocol.

A target is loaded once per (model, configuration), answers requests of exactly
``new_tokens`` greedy tokens, and is closed before the next one is loaded. Every runtime
engine (:class:`~pytest_greenserve.engines.base.Engine`) is a target: it serves in the
pytest process. An HTTP client of a model served by ``greenserve serve`` is the next one; its
``generate`` sends one request over loopback.

The runner and the measure step talk to targets only through this protocol, so they never
know which kind they measure.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from .engines.base import Generation


@runtime_checkable
class Target(Protocol):
    def load(self) -> None:
        """Make the model ready to answer (export, load, start a server); not measured."""

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        """One request: greedy-generate exactly ``new_tokens`` tokens after ``input_ids``."""

    def close(self) -> None:
        """Release the model, its memory and any process started for it."""

    def versions(self) -> dict[str, str]:
        """Library versions that produced this target's numbers (stored with every sample)."""
