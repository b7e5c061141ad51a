"""Hooks through which users (and the built-ins) extend pytest-greenserve.

Implement them in a ``conftest.py`` or a plugin. The built-in engines register through the
same hook, so a user's engine is a peer of ``torch`` and ``onnx``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_greenserve_register_engines(registry: dict) -> None:
    """Add runtime engines to ``registry`` (engine name -> :class:`~pytest_greenserve.engines.base.Engine` subclass).

    Example: a torch engine that sleeps after every request, in a ``conftest.py``::

        import time
        from pytest_greenserve.engines.torch_eager import TorchEngine

        class SlowTorch(TorchEngine):
            name = "slowtorch"
            def generate(self, input_ids, new_tokens):
                result = super().generate(input_ids, new_tokens)
                time.sleep(0.002 * new_tokens)
                return result

        def pytest_greenserve_register_engines(registry):
            registry["slowtorch"] = SlowTorch

    then ``pytest benchmarks --greenserve-configs=torch-cpu,slowtorch-cpu``.

    .. versionadded:: 0.1
    """


@hookspec
def pytest_greenserve_register_meters(settings, meters: list) -> None:
    """Append :class:`~pytest_greenserve.meters.base.Meter` objects to ``meters``.

    ``settings`` is the session's :class:`~pytest_greenserve.meters.MeterSettings`. The
    built-in meters (CPU energy from RAPL or the labelled estimate, NVML GPU energy and
    utilisation, the optional wattmeter) register through this same hook and are put at the
    front of the list, so a meter of yours that reports a field they already measured is
    ignored with a note, and fills the field where they measured nothing. Example::

        from pytest_greenserve.meters.base import Meter, Reading

        class SocketMeter(Meter):
            name = "socket"
            def start(self): self.t0 = read_my_meter_wh()
            def stop(self):
                return [Reading("energy_wall_j", (read_my_meter_wh() - self.t0) * 3600, "J", "my-socket")]

        def pytest_greenserve_register_meters(settings, meters):
            meters.append(SocketMeter())

    .. versionadded:: 0.1
    """


@hookspec
def pytest_greenserve_register_models(registry: dict) -> None:
    """Add models to ``registry`` (name -> :class:`~pytest_greenserve.models.ModelSpec`).

    Example::

        from pytest_greenserve.models import ModelSpec

        def pytest_greenserve_register_models(registry):
            registry["santacoder"] = ModelSpec("santacoder", "gpt2", "bigcode/santacoder", "1.1B", 2)

    .. versionadded:: 0.1
    """


@hookspec
def pytest_greenserve_register_metrics(registry: dict) -> None:
    """Add metrics to ``registry`` (name -> :class:`~pytest_greenserve.metrics.Metric`), or replace one.

    One entry is all a metric needs: the sample builder computes a metric with ``derive`` (or
    a meter fills its field), and samples.csv, stats.csv (``analysed``), report.html
    (``plotted``) and summary.md pick it up. ``derive`` gets the sample (a dict of its other
    fields) and must return None, never 0, when an input is missing. The built-ins come first
    in the registry's order. Example: throughput, in a ``conftest.py``::

        from pytest_greenserve.metrics import Metric

        def tokens_per_s(sample):
            tokens, time_s = sample.get("tokens_generated"), sample.get("time_s")
            return tokens / time_s if tokens is not None and time_s else None

        def pytest_greenserve_register_metrics(registry):
            registry["tokens_per_s"] = Metric("tokens_per_s", "tokens/s", "throughput", better="higher",
                                              kind="time", analysed=True, plotted=True, derive=tokens_per_s)

    then ``pytest benchmarks``: samples.csv gets a ``tokens_per_s`` column, stats.csv its tests
    and report.html a box plot per model.

    .. versionadded:: 0.2
    """
