"""An engine that answers at once: what is left of a request's time is the transport and harness.

Not registered among the built-in engines (it would join ``all``); the HTTP overhead
benchmark and the serving tests name it to ``greenserve serve`` with
``--engine-class pytest_greenserve.serving.null:NullEngine``.
"""

from __future__ import annotations

from typing import Sequence

from ..engines.base import Engine, Generation


class NullEngine(Engine):
    """Returns ``new_tokens`` token ids at once: the prompt's ids repeated (an echo), else zeros."""

    name = "null"
    libraries = ()

    def load(self) -> None:
        pass

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        ids = list(input_ids) or [0]
        return Generation([ids[i % len(ids)] for i in range(new_tokens)], ttft_s=0.0)
