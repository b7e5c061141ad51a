"""The pytest side of pytest-greenserve: options, parametrisation, fixtures, session end.

This is the only module that imports pytest. One test item is made per (model, engine,
provider, repetition), with ids like ``test_autocomplete[phi2-onnx-cuda-r3]``, so ``-k``
selects models and configurations as a pytest user expects.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import hookspecs, options
from .engines.base import EngineError
from .models import DEFAULT_MODELS, REGISTRY, WeightsUnavailable
from .options import OPTIONS, OptionError, Settings, option, read_settings
from .session import GreenserveSession, plan

SESSION_KEY = pytest.StashKey["GreenserveSession"]()
CASE_FIXTURE = "greenserve_case"


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser):
    group = parser.getgroup("greenserve", "serving-configuration energy benchmarks (pytest-greenserve)")
    for opt in OPTIONS:  # options.py holds every default, check and help text
        metavar = opt.metavar.strip("[]") if opt.const is not None else opt.metavar  # argparse adds [ ]
        group.addoption(opt.flag, metavar=metavar, default=None,
                        help=f"{opt.help} (default: {opt.shown_default}; ini: {opt.ini})".replace("%", "%%"),
                        **({"nargs": "?", "const": opt.const} if opt.const is not None else {}))
        parser.addini(opt.ini, opt.help, default=None)


def _raw(config, name: str) -> str | None:
    """What the user gave for option ``name``: the command line's value, else the ini's, else None."""
    opt = option(name)
    cli = config.getoption(opt.flag)
    if cli is not None:
        return cli
    ini = config.getini(opt.ini)
    return ini if ini not in (None, "", []) else None


def _models_chosen(config) -> bool:
    """Whether --greenserve-models (or its ini key) names models."""
    return bool(_raw(config, "models"))


def _settings(config, engines: dict, models: dict) -> Settings:
    try:
        return read_settings(lambda name: _raw(config, name), engines=engines, models=models,
                             rootpath=Path(config.rootpath))
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None


def _meter_set(config, meter_settings):
    """Every meter registered through the hook, the built-ins first (meters/builtin.py)."""
    from .meters import MeterSet

    meters: list = []
    config.hook.pytest_greenserve_register_meters(settings=meter_settings, meters=meters)
    return MeterSet(meter_settings, meters=meters)


def _register_builtins(config) -> None:
    """The built-in engines, meters and metrics register through the hooks users implement."""
    from . import engines, metrics
    from .meters import builtin as meters

    for name, module in (("engines", engines), ("meters", meters), ("metrics", metrics)):
        if not config.pluginmanager.is_registered(module):
            config.pluginmanager.register(module, f"greenserve-builtin-{name}")


def _progress_writer(config):
    def progress(message: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capman = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            print(message, file=sys.stderr, flush=True)
            return
        if capman is not None:
            with capman.global_and_fixture_disabled():
                reporter.write_line(message)
        else:
            reporter.write_line(message)

    return progress


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "greenserve(fail=None): a pytest-greenserve serving benchmark item; "
                            "fail='energy:3%' overrides --greenserve-fail for its items")
    _register_builtins(config)
    engines: dict = {}
    config.hook.pytest_greenserve_register_engines(registry=engines)
    models = dict(REGISTRY)
    config.hook.pytest_greenserve_register_models(registry=models)
    metrics: dict = {}
    config.hook.pytest_greenserve_register_metrics(registry=metrics)
    settings = _settings(config, engines, models)
    meter_settings = options.meter_settings(settings)
    # Meters are created lazily (first measured sample) so that plain test runs pay nothing.
    config.stash[SESSION_KEY] = GreenserveSession(
        settings, engines, models, progress=_progress_writer(config), metrics=metrics,
        meters_factory=lambda: _meter_set(config, meter_settings))
    config.stash[GATE_KEY] = _gate_setup(settings, metrics)
    config.stash[GATE_KEY].runs_auto = bool(settings.compare) and str(_raw(config, "runs")).strip().lower() == "auto"
    if config.pluginmanager.has_plugin("benchmark") or config.pluginmanager.has_plugin("pytest_benchmark"):
        config.pluginmanager.register(_BenchmarkBridge(config), "greenserve-benchmark-bridge")


def pytest_generate_tests(metafunc):
    if CASE_FIXTURE in metafunc.fixturenames:
        session = metafunc.config.stash[SESSION_KEY]
        cases = plan(session.settings)
        metafunc.parametrize(CASE_FIXTURE, cases, ids=[c.id for c in cases])


def _named_by_keyword(config, model: str) -> bool:
    return model in (config.option.keyword or "") or model in (config.option.markexpr or "")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark greenserve items; without --greenserve-models, keep only the embedded defaults and
    the models a -k expression names, so a bare `pytest benchmarks` never downloads a model."""
    explicit = _models_chosen(config)
    keep, dropped = [], []
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get(CASE_FIXTURE)
        if case is None:
            keep.append(item)
            continue
        item.add_marker(pytest.mark.greenserve)
        if explicit or case.model in DEFAULT_MODELS or _named_by_keyword(config, case.model):
            keep.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


class Greenserve:
    """What the ``greenserve`` fixture gives a test: its case and a way to measure it."""

    def __init__(self, session: GreenserveSession, case):
        self.session = session
        self.case = case

    def measure(self) -> dict:
        """Run all prompts once against the case; return the sample (also saved to disk)."""
        try:
            return self.session.measure(self.case)
        except EngineError as exc:
            reason = str(exc)
        pytest.fail(reason, pytrace=False)  # outside the except: one line, no chained tracebacks


@pytest.fixture
def greenserve(request, greenserve_case) -> Greenserve:
    """Measure one (model, configuration, repetition); skips what cannot run here, with the reason."""
    session = request.config.stash[SESSION_KEY]
    reason = session.unavailable_reason(greenserve_case.config)
    if reason:
        pytest.skip(f"{greenserve_case.config}: {reason}")
    try:
        reason = session.model_unavailable_reason(greenserve_case.model, greenserve_case.config)
    except WeightsUnavailable as exc:
        reason = str(exc)
    if reason:
        pytest.skip(reason)
    return Greenserve(session, greenserve_case)


def pytest_report_header(config):
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return None
    s = session.settings
    return [f"greenserve: models={','.join(s.models)} configs={','.join(c.name for c in s.configs)} "
            f"runs={s.runs} prompts={s.prompts} new_tokens={s.new_tokens} weights={s.weights} seed={s.seed}"]


@dataclass
class SessionEnd:
    """What session end produced, for the terminal summary."""

    rows: list = field(default_factory=list)  # the samples as saved
    report_paths: dict = field(default_factory=dict)
    report_error: str | None = None


END_KEY = pytest.StashKey[SessionEnd]()


def pytest_sessionfinish(session, exitstatus):
    """Reports first, from the samples as saved; the energy gate (which will set the exit
    status) comes after them, so a failing gate never costs the user the reports."""
    gs = session.config.stash.get(SESSION_KEY, None)
    if gs is None:
        return
    gs.close()
    if not gs.samples:
        return
    end = session.config.stash[END_KEY] = SessionEnd()
    try:
        from .report import write_reports

        end.rows = gs.saved_samples()
        meta = gs.meta()
        gs.store.write_meta(meta)
        end.report_paths = write_reports(end.rows, gs.store.run_dir, meta, metrics=gs.metrics)
    except Exception as exc:  # the samples are safe on disk; say how to render them later
        first = (str(exc).splitlines() or [""])[0]
        end.report_error = (f"greenserve: reports not written ({type(exc).__name__}: {first}); the samples are in "
                            f"{gs.store.samples_path}; render them with: greenserve report {gs.store.run_dir}")
    _save_and_gate(session, gs, end)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    gs = config.stash.get(SESSION_KEY, None)
    end = config.stash.get(END_KEY, None)
    if gs is None or end is None:
        return
    from .report import terminal_summary

    terminalreporter.section("greenserve")
    if end.report_error:
        terminalreporter.write_line(end.report_error, red=True)
        _write_gate(terminalreporter, config)
        return
    for line in terminal_summary(end.rows, report_path=end.report_paths.get("html")):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"greenserve samples: {gs.store.samples_path}")
    _write_gate(terminalreporter, config)


# ---------------------------------------------------------------- the CI energy gate (gate.py, baselines.py)

#: The exit status of a session whose gate found a regression (or could not run), when the
#: tests themselves passed: pytest's own codes are 0-5, so CI can tell a gate failure apart.
GATE_FAILED_EXIT = 6


@dataclass
class GateState:
    """The gate's inputs, read once at configure time, and what it found at session end."""

    thresholds: tuple = ()
    baseline: dict | None = None  # baselines.load's document
    overrides: dict = field(default_factory=dict)  # (model, config) -> thresholds from the marker
    decided: dict = field(default_factory=dict)  # (model, config) -> repetitions used (runs=auto)
    runs_auto: bool = False  # --greenserve-runs=auto with a baseline: stop an item once decided
    result: object = None  # gate.GateResult
    lines: list = field(default_factory=list)  # (text, markup) for the terminal summary


GATE_KEY = pytest.StashKey[GateState]()


def _gate_setup(settings: Settings, metrics: dict) -> GateState:
    """Thresholds parsed against the registry, and the baseline loaded and checked, before
    anything is measured: each refusal is a one-line usage error (exit status 4)."""
    from . import baselines, gate

    try:
        state = GateState(thresholds=gate.parse_thresholds(settings.fail, metrics))
    except gate.GateError as exc:
        raise pytest.UsageError(str(exc)) from None
    if settings.compare:
        try:
            doc = baselines.load(baselines.resolve(settings.compare, settings.report_dir))
            if not settings.compare_any_machine:
                from .results import machine_info

                baselines.check_machine(doc, baselines.fingerprint(machine_info()))
        except baselines.BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
        state.baseline = doc
    return state


def _case_key(item):
    case = getattr(item, "callspec", None) and item.callspec.params.get(CASE_FIXTURE)
    return None if case is None else (case.model, case.config.name)


def pytest_collection_finish(session):
    """Per-item thresholds from the ``greenserve`` marker (the test's own marker wins over the
    bare one added at collection), and a baseline without any item of this session refused."""
    state = session.config.stash.get(GATE_KEY, None)
    if state is None:
        return
    from . import baselines, gate

    metrics = session.config.stash[SESSION_KEY].metrics
    keys = set()
    for item in session.items:
        key = _case_key(item)
        if key is None:
            continue
        keys.add(key)
        fail = next((m.kwargs["fail"] for m in item.iter_markers("greenserve") if m.kwargs.get("fail")), None)
        if fail and key not in state.overrides:
            try:
                state.overrides[key] = gate.parse_thresholds(fail, metrics, flag=f"{item.nodeid}: greenserve(fail=...)")
            except gate.GateError as exc:
                raise pytest.UsageError(str(exc)) from None
    if state.baseline is not None and keys:
        try:
            baselines.check_matching(state.baseline, keys)
        except baselines.BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None


def _baseline_rows(state: GateState, key) -> list:
    return [s for s in state.baseline["samples"] if (s.get("model"), s.get("config")) == key]


def pytest_runtest_setup(item):
    """--greenserve-runs=auto: skip the repetitions left once the item is decided (Pinpoint)."""
    state = item.config.stash.get(GATE_KEY, None)
    key = _case_key(item)
    if state is None or key is None or key not in state.decided:
        return
    pytest.skip(f"greenserve: {key[0]} {key[1]} decided against the baseline after {state.decided[key]} "
                f"repetitions (--greenserve-runs=auto)")


def pytest_runtest_teardown(item):
    gs = item.config.stash.get(SESSION_KEY, None)
    state = item.config.stash.get(GATE_KEY, None)
    key = _case_key(item)
    if gs is None or state is None or key is None or state.baseline is None or not state.runs_auto:
        return
    if key in state.decided:
        return
    from . import gate

    now = [s for s in gs.samples if (s.get("model"), s.get("config")) == key]
    if len(now) < gate.MIN_RUNS:
        return
    try:
        if gate.decided(_baseline_rows(state, key), now, state.overrides.get(key) or state.thresholds,
                        metrics=gs.metrics):
            state.decided[key] = len(now)
    except Exception:  # deciding early is an optimisation: the gate at session end decides anyway
        pass


def _save_and_gate(session, gs, end) -> None:
    """After the reports: save the baseline (--greenserve-save), then run the gate
    (--greenserve-compare); a regression sets the exit status (GATE_FAILED_EXIT)."""
    state = session.config.stash.get(GATE_KEY, None)
    if state is None:
        return
    from . import baselines, gate
    from .results import machine_label, mark_error_prone

    rows = end.rows or list(gs.samples)
    settings = gs.settings
    if settings.save:
        try:
            meta = gs.meta()
            path = baselines.save(settings.report_dir, settings.save, rows, meta, machine_label(meta["machine_info"]))
            state.lines.append((f"greenserve baseline saved: {path} ({len(rows)} samples)", {"green": True}))
        except (OSError, ValueError, baselines.BaselineError) as exc:
            state.lines.append((f"greenserve baseline not saved: {exc}", {"red": True}))
            session.exitstatus = session.exitstatus or GATE_FAILED_EXIT
    if state.baseline is None:
        return
    name = state.baseline.get("path") or settings.compare
    try:
        base = mark_error_prone([dict(r) for r in state.baseline["samples"]])
        now = mark_error_prone([dict(r) for r in rows])
        result = state.result = gate.compare(base, now, state.thresholds, overrides=state.overrides,
                                             metrics=gs.metrics)
    except Exception as exc:  # never a traceback: say so, and fail the gate
        first = (str(exc).splitlines() or [""])[0]
        state.lines.append((f"greenserve gate not run ({type(exc).__name__}: {first})", {"red": True}))
        session.exitstatus = session.exitstatus or GATE_FAILED_EXIT
        return
    if not result.comparisons:
        state.lines.append((f"greenserve gate: nothing of this session's samples matches baseline {name}",
                            {"yellow": True}))
        return
    for line in gate.table_lines(result):
        state.lines.append((line, {}))
    if result.unmatched_now:
        state.lines.append(("not in the baseline (not gated): " + ", ".join(f"{m} {c}" for m, c in result.unmatched_now),
                            {"yellow": True}))
    state.lines.append((gate.summary_line(result, name), {"red": True} if result.failed else {"green": True}))
    if result.failed:
        state.lines.append((f"greenserve: exit status {GATE_FAILED_EXIT} (energy gate failed)", {"red": True}))
        if session.exitstatus in (0, 5):
            session.exitstatus = GATE_FAILED_EXIT


def _write_gate(terminalreporter, config) -> None:
    state = config.stash.get(GATE_KEY, None)
    if state is None:
        return
    for text, markup in state.lines:
        terminalreporter.write_line(text, **markup)


class _BenchmarkBridge:
    """pytest-benchmark interoperability: every (model, configuration) of this session becomes
    one pytest-benchmark entry (rounds: the samples' time_s; extra_info: energy, tokens, use),
    added before pytest-benchmark saves (--benchmark-autosave, --benchmark-json) and displays."""

    def __init__(self, config):
        self.config = config

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus):
        gs = self.config.stash.get(SESSION_KEY, None)
        bs = getattr(self.config, "_benchmarksession", None)
        if bs is not None:
            from .benchmark_interop import asked_for_tables

            args = [*self.config.invocation_params.args, *self.config.getini("addopts"),
                    *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
            if not asked_for_tables(args):  # its ~200-column tables came before greenserve's summary
                bs.quiet = True
        if gs is not None and bs is not None and gs.samples:
            try:
                from .benchmark_interop import add_to_benchmark_session

                add_to_benchmark_session(bs, gs.samples)
            except Exception as exc:  # interop must never cost the measurements
                print(f"greenserve: not added to pytest-benchmark ({type(exc).__name__}: {exc})", file=sys.stderr)
        yield
