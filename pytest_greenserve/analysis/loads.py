"""Which samples are compared with which: only those measured under the same load.

A configuration measured under a load other than the paper's closed:1 carries its load in its
label (``load.LoadShape.label_suffix``): ``torch-cpu@http/poisson2.5``, ``torch-cpu/c4``. Its
time per sample and its energy are set by the offered load as much as by the configuration (a
Poisson sample at a quarter of the closed-loop rate lasts four times as long on purpose), so
comparing it with a closed:1 sample, or with another rate, says nothing about which
configuration to serve with. The statistics, savings and guidelines therefore compare
configurations within a *comparison unit*: the model under one load. closed:1 keeps the bare
model name (the paper's samples and reports are unchanged); any other load is
``"<model> under <load>"``. How one configuration's energy moves with the load is the
energy-against-load curve's job (report/plots.py), not the tests'.

The same holds for the workload: a sample's time and energy are totals over its requests, so
samples of one model measured on different prompt counts or token counts (runs merged by
``greenserve report``) are not compared either. Where a model's samples hold more than one
workload, the workload joins the unit's name (``"<model> (48 prompts x 32 tokens)"``).

Pure: no pandas, nothing else from the package.
"""

from __future__ import annotations

import re

#: the load part of a configuration label: a rate (``/poisson2.5``, ``/constant2``) or closed:N (``/c4``)
_LOAD_SUFFIX = re.compile(r"/((?:poisson|constant)[0-9.eE+-]+|c[0-9]+)$")
#: what separates the model from the load in a comparison unit's name
UNDER = " under "


def load_label(config: str) -> str:
    """The load a configuration label names (``poisson2.5``, ``c4``), or "" for closed:1."""
    m = _LOAD_SUFFIX.search(str(config))
    return m.group(1) if m else ""


def base_config(config: str) -> str:
    """The configuration without its load: ``torch-cpu@http`` for ``torch-cpu@http/poisson2.5``."""
    return _LOAD_SUFFIX.sub("", str(config))


def comparison_unit(model: str, config: str) -> str:
    """The model under the configuration's load: ``model`` for closed:1, else ``model under LOAD``."""
    load = load_label(config)
    return f"{model}{UNDER}{load}" if load else str(model)


def model_of_unit(unit: str) -> str:
    """The model a comparison unit belongs to (the inverse of :func:`comparison_units`' naming)."""
    return str(unit).split(UNDER, 1)[0].split(WORKLOAD, 1)[0]


#: what separates the model from its workload in a unit's name, where a model has several
WORKLOAD = " ("


def workload(requests, new_tokens) -> str:
    """A sample's workload in words: ``"48 prompts x 32 tokens"`` (missing parts: "?")."""
    def whole(x):
        try:
            return str(int(x))
        except (TypeError, ValueError):
            return "?"
    return f"{whole(requests)} prompts x {whole(new_tokens)} tokens"


def comparison_units(rows) -> list[str]:
    """The comparison unit of each ``(machine, model, config, workload)`` in ``rows``: the model
    under the configuration's load (:func:`comparison_unit`), and its workload too where the
    same machine and model hold samples of more than one workload."""
    rows = list(rows)
    seen: dict[tuple, set] = {}
    for machine, model, _config, load_words in rows:
        seen.setdefault((machine, model), set()).add(load_words)
    units = []
    for machine, model, config, load_words in rows:
        unit = comparison_unit(model, config)
        if len(seen[(machine, model)]) > 1:
            unit = f"{model}{WORKLOAD}{load_words})" + unit[len(str(model)):]
        units.append(unit)
    return units
