"""pytest-benchmark interoperability: greenserve samples as pytest-benchmark entries.

pytest-benchmark (the optional ``benchmark`` extra, imported here only) saves
``BenchmarkSession.benchmarks`` — :class:`pytest_benchmark.stats.Metadata` objects — in its
storage (``--benchmark-autosave``/``--benchmark-save``) and JSON (``--benchmark-json``), and
shows them in its table; it saves nothing when that list is empty. ``plugin.py`` calls
:func:`add_to_benchmark_session` just before pytest-benchmark's own session end, so every
(model, configuration) of the session becomes one entry:

- name ``test_greenserve[<model>-<engine>-<provider>]``, group ``greenserve <model>``;
- rounds: the samples' ``time_s`` (one round per repetition, one iteration each), so
  ``pytest-benchmark compare`` and ``--benchmark-compare-fail`` see the timing statistics;
- ``extra_info``: the medians of energy (net, gross, CPU, GPU, per token), tokens, requests,
  utilisation and memory, the energy sources, and each sample's energy, which
  pytest-benchmark stores but cannot gate on (the greenserve gate does).

Its terminal tables (one per group, ~200 columns wide, printed before greenserve's own
summary) are shown only when the user asked pytest-benchmark for something: any
``--benchmark-*`` option (:func:`asked_for_tables`). Otherwise the entries are still added,
so ``--benchmark-autosave`` and ``--benchmark-json`` given later in ini files keep working.
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

EXTRA_MEDIANS = ("energy_net_j", "energy_total_j", "energy_cpu_j", "energy_gpu_j", "j_per_token", "ms_per_token",
                 "tokens_generated", "requests", "cpu_pct", "proc_cpu_pct", "ram_pct", "gpu_pct", "gpu_mem_util_pct",
                 "gpu_mem_used_pct", "rss_peak_mb", "gpu_mem_peak_mb", "energy_idle_j")
EXTRA_LABELS = ("energy_cpu_source", "energy_gpu_source", "machine", "weights", "new_tokens")


def _median(values):
    known = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(known) if known else None


def entries(samples: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One dict per (model, configuration): name, group, params, rounds (time_s), extra_info."""
    groups: dict[tuple[str, str], list] = {}
    for s in samples:
        if s.get("time_s") is not None:
            groups.setdefault((s["model"], s["config"]), []).append(s)
    out = []
    for (model, config), rows in groups.items():
        rows = sorted(rows, key=lambda r: r.get("order") or 0)
        extra: dict[str, Any] = {"greenserve": True, "repetitions": len(rows)}
        for name in EXTRA_MEDIANS:
            extra[name] = _median(r.get(name) for r in rows)
        for name in EXTRA_LABELS:
            extra[name] = rows[0].get(name)
        extra["energy_net_j_per_repetition"] = [r.get("energy_net_j") for r in rows]
        extra["energy_total_j_per_repetition"] = [r.get("energy_total_j") for r in rows]
        param = f"{model}-{config}"
        out.append({"name": f"test_greenserve[{param}]", "fullname": f"greenserve::test_greenserve[{param}]",
                    "group": f"greenserve {model}", "param": param, "params": {"model": model, "config": config},
                    "rounds": [float(r["time_s"]) for r in rows], "extra_info": extra})
    return out


def asked_for_tables(args: Iterable[str]) -> bool:
    """Whether the session's arguments (command line, ``PYTEST_ADDOPTS``, the ini's ``addopts``)
    name any ``--benchmark-*`` option: only then does pytest-benchmark print its tables."""
    return any(str(a).startswith("--benchmark") for a in args)


def add_to_benchmark_session(bs, samples: Iterable[Mapping[str, Any]]) -> int:
    """Append one pytest-benchmark Metadata per (model, configuration) to ``bs.benchmarks``."""
    from pytest_benchmark.stats import Metadata

    added = 0
    for e in entries(samples):
        fixture = SimpleNamespace(name=e["name"], fullname=e["fullname"], group=e["group"], param=e["param"],
                                  params=e["params"], extra_info=e["extra_info"], cprofile_stats=None,
                                  has_error=False)
        options = {"disable_gc": False, "timer": "perf_counter", "min_rounds": len(e["rounds"]), "max_time": 0.0,
                   "min_time": 0.0, "warmup": False}
        meta = Metadata(fixture, iterations=1, options=options)
        for duration in e["rounds"]:
            meta.update(duration)
        bs.benchmarks.append(meta)
        added += 1
    return added
