"""The parts behind :func:`pytest_greenserve.stats.analyze`, one job per module.

* ``metrics``: the analysed metrics, read from the metric registry (``pytest_greenserve.metrics``);
* ``ordering``: the order configurations are listed in;
* ``sources``: energy-source labels (measured or estimated) and the notes they call for;
* ``floats``: turning values into floats (``None`` for NaN/inf), never NaN;
* ``formatting``: p-values, values and percentages as words;
* ``effect_sizes``: omega², epsilon², Hedges' g;
* ``pareto``: the energy/time Pareto front;
* ``categories``: the model size categories of Tables 4 and 5;
* ``hypothesis``: the tests for one (machine, model, metric) and the path decision;
* ``summaries``: per-configuration medians, savings ranges and per-category medians;
* ``guidelines``: the energy-, latency- and resource-constrained guidelines.

Import the public names from :mod:`pytest_greenserve.stats`; these modules import nothing from it.
"""
