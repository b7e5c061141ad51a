"""The CI energy gate: is this session worse than a baseline, per (model, configuration, metric)?

Pure: no pytest; ``plugin.py`` feeds it the baseline's and this session's samples.

**Thresholds** (``--greenserve-fail=energy:5%,time:10%``, or the ``greenserve`` marker's
``fail=``): a gateable registry metric (``Metric.gateable``) or an alias — ``energy`` is
``energy_total_j`` (gross: CPU + GPU energy over the sample; net energy is ``energy_net_j:3%``),
``time`` is ``time_s`` — with a relative threshold (``5%``) or an absolute one in the metric's
unit or a scaled one (``20J``, ``0.5ms`` for ``ms_per_token``, ``200ms`` for ``time_s``).

**The decision**, per (model, configuration, metric), asv- and Perfherder-style, two keys:

1. the change of the median (now against baseline) is beyond the threshold in the metric's
   worse direction (``Metric.better``), **and**
2. a one-sided test on the repetitions rejects "not worse" at ``alpha`` after Holm's
   family-wise correction across every compared (model, configuration, metric).

Then the verdict is ``regression``; the mirror image is ``improved``; otherwise ``same``.
``undecided`` (Pinpoint's "unknown — add repetitions"), with the reason, when either side has
fewer than :data:`MIN_RUNS` usable samples, when so few repetitions cannot reach ``alpha`` at
all (Mann-Whitney's smallest p-value for 3 against 3 is 0.05), or when a side's samples are
error-prone (outputs differ from the torch reference). Samples flagged ``unsteady`` or
``low_resolution`` (the metric registry's sample checks) are left out, and named in the reason
when too few are left.

**Why Mann-Whitney U, alpha 0.01, minimum 3, cap 10, threshold 3%** (tools/calibrate_gate.py;
numbers in docs/gate.md): on the 2-core VM shared with other work, samples of the same work
had a median within-session CV of 65% (3 s to 75 s for one sample): the spread is heavy-tailed,
a t-test (Welch) is pulled by one outlier, ranks are not; neither test flagged an A/A trial
there, and neither caught even a planted 20% (the honest answer on such a machine is
"undecided" or "same", never a false alarm). The default threshold is 3%, below the 5% to be
caught: a true 5% regression shows a median change scattered around 5%, so a 5% threshold
would catch it about half the time however many repetitions. The change-of-median
key guards against the rank test flagging a 0.3% difference on a quiet GPU. Alpha 0.01 (before
Holm) keeps A/A false alarms under the 5% goal even with the sequential looks of
``--greenserve-runs=auto`` (every look from the 3rd repetition to the cap is a chance to cry
wolf); with 5 against 5 repetitions Mann-Whitney reaches p = 0.004, so a clear regression is
caught by the 5th repetition. Welch stays available (``test="welch"``) for calibration.

**Why ``energy`` is gross energy, not net:** on the lent H100 (compile-cuda, 3.3 s samples),
the planted 5% was caught in 10 of 10 trials on gross energy and in 3 of 10 on net energy, with
no A/A false alarm on either. Net energy subtracts an idle window of 2 s read from NVML's
counter, which steps every ~100 ms: that window's error (idle power CV 1-4%) became most of net
energy's noise (CV 2.7% against gross 0.8%). Gross energy is also what MLPerf Power, ML.ENERGY
and AI Energy Score report. On the 2-core VM the two behave alike (CPU energy estimated there).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .metrics import Metric, metrics_or_builtin

#: Fewer usable samples than this on either side: "undecided".
MIN_RUNS = 3
#: ``--greenserve-runs=auto`` collects at most this many repetitions of a (model, configuration).
AUTO_RUNS_CAP = 10
#: ``--greenserve-runs=auto`` without ``--greenserve-compare``: the plain default.
AUTO_RUNS_WITHOUT_BASELINE = 3
DEFAULT_TEST = "mwu"
DEFAULT_ALPHA = 0.01
DEFAULT_FAIL = "energy:3%"  # below the 5% to catch: a true 5% change has a median change near 5%
TESTS = ("mwu", "welch")
FLAGS = ("unsteady", "low_resolution")

ALIASES: dict[str, tuple[str, ...]] = {"energy": ("energy_total_j",), "time": ("time_s",)}

#: Units a threshold may be written in, per metric unit: name -> factor to the metric's unit.
_UNITS: dict[str, dict[str, float]] = {
    "J": {"J": 1.0, "kJ": 1e3, "mJ": 1e-3, "Wh": 3600.0},
    "s": {"s": 1.0, "ms": 1e-3, "us": 1e-6},
    "ms/token": {"ms/token": 1.0, "ms": 1.0, "s/token": 1e3, "s": 1e3},
    "J/token": {"J/token": 1.0, "J": 1.0, "mJ/token": 1e-3, "mJ": 1e-3},
    "%": {"%": 1.0},
}


class GateError(ValueError):
    """A malformed threshold; the message is one line."""


@dataclass(frozen=True)
class Threshold:
    """One ``metric:value`` of ``--greenserve-fail``: ``metric`` is an alias or a registry name."""

    metric: str
    value: float
    relative: bool  # True: value is a percentage of the baseline's median
    text: str = ""

    def describe(self, unit: str = "") -> str:
        return f"{self.value:g}%" if self.relative else f"{self.value:g} {unit}".strip()


def _gateable(metrics: Mapping[str, Metric]) -> list[str]:
    return [m.name for m in metrics.values() if m.gateable and m.better in ("lower", "higher")]


def parse_thresholds(text: str, metrics: Mapping[str, Metric] | None = None,
                     flag: str = "--greenserve-fail") -> tuple[Threshold, ...]:
    """``energy:5%,time:10%`` -> thresholds; GateError with one line when malformed."""
    registry = metrics_or_builtin(metrics)
    allowed = _gateable(registry)
    out: list[Threshold] = []
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise GateError(f"{flag}={text!r}: empty; give e.g. energy:5%,time:10%")
    for item in items:
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip().replace(" ", "")
        if not sep or not value:
            raise GateError(f"{flag}={text!r}: {item!r} is not METRIC:THRESHOLD (e.g. energy:5% or energy:20J)")
        if name not in ALIASES and name not in allowed:
            why = "is not gateable" if name in registry else "is not a metric"
            raise GateError(f"{flag}={text!r}: {name!r} {why}; choose from energy, time, {', '.join(allowed)}")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(.*)", value)
        if not m:
            raise GateError(f"{flag}={text!r}: {value!r} is not a number with % or a unit")
        number, unit = float(m.group(1)), m.group(2)
        if not math.isfinite(number):
            raise GateError(f"{flag}={text!r}: {value!r} is not finite")
        if unit == "%":
            out.append(Threshold(name, number, True, item))
            continue
        metric_unit = registry[ALIASES[name][0] if name in ALIASES else name].unit
        factors = _UNITS.get(metric_unit, {metric_unit: 1.0} if metric_unit else {})
        if unit not in factors:
            choices = ", ".join(["%"] + list(factors)) if factors else "%"
            raise GateError(f"{flag}={text!r}: {item!r} needs a unit: {choices}")
        out.append(Threshold(name, number * factors[unit], False, item))
    return tuple(out)


# ---------------------------------------------------------------- tests

def _mwu_p(worse: Sequence[float], other: Sequence[float], alternative: str) -> float:
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(worse, other, alternative=alternative, method="auto").pvalue)


def _welch_p(x: Sequence[float], y: Sequence[float], alternative: str) -> float:
    from scipy.stats import ttest_ind

    if statistics.pstdev(x) == 0 and statistics.pstdev(y) == 0:
        mx, my = statistics.fmean(x), statistics.fmean(y)
        if alternative == "greater":
            return 0.0 if mx > my else 1.0
        return 0.0 if mx < my else 1.0
    p = float(ttest_ind(x, y, equal_var=False, alternative=alternative).pvalue)
    return 1.0 if math.isnan(p) else p


def one_sided_p(x: Sequence[float], y: Sequence[float], alternative: str, test: str = DEFAULT_TEST) -> float:
    """p-value of the one-sided test that ``x`` is ``alternative`` ('greater' | 'less') than ``y``."""
    if test == "mwu":
        return _mwu_p(x, y, alternative)
    if test == "welch":
        return _welch_p(x, y, alternative)
    raise ValueError(f"unknown test {test!r}; choose from {', '.join(TESTS)}")


def smallest_p(n: int, m: int, test: str = DEFAULT_TEST) -> float:
    """The smallest one-sided p-value the test can give with n and m samples (exact Mann-Whitney:
    1 / C(n+m, n); Welch can reach any)."""
    return 1.0 / math.comb(n + m, n) if test == "mwu" else 0.0


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    k = len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


# ---------------------------------------------------------------- the comparison

@dataclass
class Comparison:
    model: str
    config: str
    metric: str
    unit: str
    better: str
    threshold: Threshold
    n_base: int
    n_now: int
    base_median: float | None = None
    now_median: float | None = None
    change_pct: float | None = None
    p_worse: float | None = None  # raw one-sided p-value of "now is worse"
    p_better: float | None = None
    p_within: float | None = None  # raw p-value of "now is worse than the threshold allows" (for stopping)
    p_value: float | None = None  # Holm-adjusted p of "worse" (or of "better" for an improvement)
    verdict: str = "same"  # regression | improved | same | undecided
    reason: str = ""
    source: str | None = None  # how an energy metric was obtained, e.g. estimated-cpu-time+nvml-counter

    @property
    def item(self) -> str:
        return f"{self.model} {self.config}"

    def beyond(self, direction: str) -> bool:
        """Whether the median moved beyond the threshold in ``direction`` ('worse' | 'better')."""
        if self.base_median is None or self.now_median is None:
            return False
        delta = self.now_median - self.base_median
        if self.better == "higher":
            delta = -delta
        if direction == "better":
            delta = -delta
        if self.threshold.relative:
            if self.base_median == 0:
                return delta > 0
            return delta / abs(self.base_median) * 100 > self.threshold.value
        return delta > self.threshold.value


@dataclass
class GateResult:
    comparisons: list[Comparison] = field(default_factory=list)
    unmatched_now: list[tuple[str, str]] = field(default_factory=list)  # items the baseline lacks
    unmatched_base: list[tuple[str, str]] = field(default_factory=list)
    test: str = DEFAULT_TEST
    alpha: float = DEFAULT_ALPHA

    @property
    def failed(self) -> bool:
        return any(c.verdict == "regression" for c in self.comparisons)

    def verdicts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.comparisons:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out


def _key(row: Mapping[str, Any]) -> tuple[str, str]:
    return str(row.get("model")), str(row.get("config"))


def group(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    out: dict[tuple[str, str], list] = {}
    for r in rows:
        out.setdefault(_key(r), []).append(r)
    return out


def resolve_metric(name: str, base: Sequence[Mapping], now: Sequence[Mapping]) -> str:
    """An alias's registry metric for these samples: the first candidate both sides have."""
    for candidate in ALIASES.get(name, (name,)):
        if any(r.get(candidate) is not None for r in base) and any(r.get(candidate) is not None for r in now):
            return candidate
    return ALIASES.get(name, (name,))[0]


def _usable(rows: Sequence[Mapping], metric: str) -> tuple[list[float], dict[str, int]]:
    values, dropped = [], {}
    for r in rows:
        flags = [f for f in FLAGS if r.get(f) is True]
        if flags:
            for f in flags:
                dropped[f] = dropped.get(f, 0) + 1
            continue
        v = r.get(metric)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            dropped["not measured"] = dropped.get("not measured", 0) + 1
            continue
        values.append(float(v))
    return values, dropped


def _energy_source(metric: Metric, rows: Sequence[Mapping]) -> str | None:
    """The energy source labels of both sides' samples ('estimated-cpu-time+nvml-counter'; two
    labels joined with ' / '), or None for a metric that is not an energy."""
    if not metric.energy_source:
        return None
    from .analysis.sources import row_energy_source

    labels = sorted({s for s in (row_energy_source(r, metric.energy_source) for r in rows) if s})
    return " / ".join(labels) or None


def _compare_one(model, config, threshold, base_rows, now_rows, registry, test, alpha, min_runs) -> Comparison:
    name = resolve_metric(threshold.metric, base_rows, now_rows)
    metric = registry.get(name) or Metric(name, "", name)
    base, base_dropped = _usable(base_rows, name)
    now, now_dropped = _usable(now_rows, name)
    c = Comparison(model, config, name, metric.unit, metric.better or "lower", threshold, len(base), len(now),
                   source=_energy_source(metric, [*base_rows, *now_rows]))
    if base:
        c.base_median = statistics.median(base)
    if now:
        c.now_median = statistics.median(now)
    if c.base_median and c.now_median is not None:
        c.change_pct = (c.now_median - c.base_median) / abs(c.base_median) * 100
    prone = [side for side, rows in (("baseline", base_rows), ("this run", now_rows))
             if any(r.get("error_prone") is True for r in rows)]
    if prone:
        c.verdict, c.reason = "undecided", f"error-prone outputs in {' and '.join(prone)} (match rate < 1)"
        return c
    for side, values, dropped, total in (("baseline", base, base_dropped, len(base_rows)),
                                         ("this run", now, now_dropped, len(now_rows))):
        if len(values) < min_runs:
            why = ", ".join(f"{k}: {v}" for k, v in dropped.items())
            c.verdict = "undecided"
            c.reason = (f"{side} has {len(values)} usable of {total} samples (needs {min_runs}"
                        + (f"; left out: {why})" if why else ")") + ": add repetitions")
            return c
    if smallest_p(len(base), len(now), test) >= alpha:
        c.verdict = "undecided"
        c.reason = (f"{len(base)} against {len(now)} repetitions cannot reach p < {alpha:g} "
                    f"(smallest possible p = {smallest_p(len(base), len(now), test):.3g}): add repetitions")
        return c
    worse, better = ("greater", "less") if c.better == "lower" else ("less", "greater")
    c.p_worse = one_sided_p(now, base, worse, test)
    c.p_better = one_sided_p(now, base, better, test)
    # "worse than the threshold allows": now against the baseline moved by the threshold
    sign = 1 if c.better == "lower" else -1
    if threshold.relative:
        limit = [b * (1 + sign * threshold.value / 100) for b in base]
    else:
        limit = [b + sign * threshold.value for b in base]
    c.p_within = one_sided_p(now, limit, better, test)
    return c


def compare(base_rows: Iterable[Mapping], now_rows: Iterable[Mapping], thresholds: Sequence[Threshold], *,
            overrides: Mapping[tuple[str, str], Sequence[Threshold]] | None = None,
            metrics: Mapping[str, Metric] | None = None, test: str = DEFAULT_TEST,
            alpha: float = DEFAULT_ALPHA, min_runs: int = MIN_RUNS) -> GateResult:
    """Every (model, configuration) of this session that the baseline has, for every threshold
    (``overrides`` per item replace ``thresholds`` for that item), with Holm's correction across
    all of them."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose from {', '.join(TESTS)}")
    registry = metrics_or_builtin(metrics)
    base_groups, now_groups = group(base_rows), group(now_rows)
    result = GateResult(test=test, alpha=alpha)
    result.unmatched_now = [k for k in now_groups if k not in base_groups]
    result.unmatched_base = [k for k in base_groups if k not in now_groups]
    for key, now in now_groups.items():
        if key not in base_groups:
            continue
        chosen = (overrides or {}).get(key) or thresholds
        for t in chosen:
            result.comparisons.append(_compare_one(*key, t, base_groups[key], now, registry, test, alpha, min_runs))
    tested = [c for c in result.comparisons if c.p_worse is not None]
    for attr, adj in (("p_worse", holm([c.p_worse for c in tested])), ("p_better", holm([c.p_better for c in tested]))):
        for c, p in zip(tested, adj):
            if attr == "p_worse":
                c.p_value = p
                if p < alpha and c.beyond("worse"):
                    c.verdict = "regression"
            elif c.verdict != "regression" and p < alpha and c.beyond("better"):
                c.verdict, c.p_value = "improved", p
    return result


def decided(base_rows, now_rows, thresholds, *, test: str = DEFAULT_TEST, alpha: float = DEFAULT_ALPHA,
            min_runs: int = MIN_RUNS, metrics=None) -> bool:
    """Whether one (model, configuration)'s answer is clear, so that ``--greenserve-runs=auto``
    may stop adding repetitions: every threshold gives a regression or an improvement, or the
    change is significantly within the threshold (``p_within`` < alpha). Undecided, or a change
    not yet significant either way: not decided."""
    result = compare(base_rows, now_rows, thresholds, test=test, alpha=alpha, min_runs=min_runs, metrics=metrics)
    if not result.comparisons:
        return False
    return all(c.verdict in ("regression", "improved") or (c.p_within is not None and c.p_within < alpha)
               for c in result.comparisons)


# ---------------------------------------------------------------- words

def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


def table_lines(result: GateResult) -> list[str]:
    """item | metric | baseline -> now | change % | p-value | verdict, one row per comparison."""
    rows = [("item", "metric", "baseline -> now", "change", "p-value", "verdict")]
    for c in result.comparisons:
        unit = f" {c.unit}" if c.unit else ""
        change = "-" if c.change_pct is None else f"{c.change_pct:+.1f}%"
        verdict = c.verdict + (f" ({c.reason})" if c.reason else "")
        source = f" [{c.source}]" if c.source else ""  # says "estimated" where a part was
        rows.append((c.item, f"{c.metric}{source} (fail {c.threshold.describe(c.unit)})",
                     f"{_fmt(c.base_median)} -> {_fmt(c.now_median)}{unit}", change,
                     "-" if c.p_value is None else f"{c.p_value:.3g}", verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]


def summary_line(result: GateResult, baseline: str) -> str:
    items = {(c.model, c.config) for c in result.comparisons}
    counts = ", ".join(f"{n} {v}" for v, n in sorted(result.verdicts().items()))
    head = "FAILED" if result.failed else "passed"
    test = "Mann-Whitney U" if result.test == "mwu" else "Welch's t"
    n = len(result.comparisons)
    return (f"greenserve gate {head}: {len(items)} (model, configuration) item{'s' * (len(items) != 1)}, "
            f"{n} comparison{'s' * (n != 1)} against baseline {baseline}: {counts} "
            f"(one-sided {test}, Holm across comparisons, alpha {result.alpha:g})")
