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


def sleeping_engine_conftest(name: str, sleep_s: float) -> str:
    """A conftest for a pytester session: registers engine ``name``, the null engine answering
    each request after ``sleep_s`` seconds (a server that takes a known time per request)."""
    cls = name.capitalize()
    return f'''
import time

from pytest_greenserve.serving.null import NullEngine


class {cls}(NullEngine):
    name = "{name}"

    def generate(self, input_ids, new_tokens):
        time.sleep({sleep_s!r})
        return super().generate(input_ids, new_tokens)


def pytest_greenserve_register_engines(registry):
    registry["{name}"] = {cls}
'''
