"""Engines the serving tests hand to ``greenserve serve`` (importable by name from the child)."""

import time

from pytest_greenserve.serving.null import NullEngine


class NeverReady(NullEngine):
    """Loads forever: its server never becomes healthy."""

    name = "neverready"

    def load(self):
        print("neverready: loading, slowly", flush=True)
        time.sleep(3600)


class BrokenLoad(NullEngine):
    """Fails to load: its server exits before it is healthy."""

    name = "brokenload"

    def load(self):
        raise RuntimeError("weights are corrupt (planted)")


class Raising(NullEngine):
    """Raises on every request: the server answers 500 and keeps serving."""

    name = "raising"

    def generate(self, input_ids, new_tokens):
        raise RuntimeError("planted failure")
