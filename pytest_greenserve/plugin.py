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
from .gate import EXIT_REGRESSION, EXIT_UNDECIDED
from .models import DEFAULT_MODELS, REGISTRY, WeightsUnavailable
from .options import OPTIONS, OptionError, Settings, option, read_settings
from .session import GreenserveSession, plan, run_options

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
    _xdist_configure(config, config.stash[SESSION_KEY])
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
        _xdist_group(config, item, case)
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
    side_a = session.ab_config(greenserve_case.config) if session.settings.ab is not None else None
    if side_a is not None and side_a != greenserve_case.config:
        reason = session.unavailable_reason(side_a)
        if reason:
            pytest.skip(f"{greenserve_case.config}: its A side {side_a} (--greenserve-ab): {reason}")
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
    if _xdist_worker_end(session, gs):
        return  # the controller writes the run's reports, gate and baseline
    _xdist_gather(session.config, gs)
    end = session.config.stash[END_KEY] = SessionEnd()
    if not gs.samples:  # nothing measured: no reports, but a gate asked for must still answer
        _gate_and_save(session, gs, end, exitstatus)
        return
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
    _gate_and_save(session, gs, end, exitstatus)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    gs = config.stash.get(SESSION_KEY, None)
    end = config.stash.get(END_KEY, None)
    if gs is None or end is None:
        return
    from .report import terminal_summary

    terminalreporter.section("greenserve")
    if not end.rows and not end.report_error:  # nothing measured: only the gate has something to say
        _write_gate(terminalreporter, config)
        return
    if end.report_error:
        terminalreporter.write_line(end.report_error, red=True)
        _write_gate(terminalreporter, config)
        return
    for line in terminal_summary(end.rows, report_path=end.report_paths.get("html")):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"greenserve samples: {gs.store.samples_path}")
    _write_gate(terminalreporter, config)


# ---------------------------------------------------------------- the CI energy gate (gate.py, baselines.py)

#: The gate's exit statuses are gate.EXIT_* (pytest's own codes are 0-5, so CI can tell them
#: apart); a session whose tests failed keeps pytest's 1.
GATE_FAILED_EXIT = EXIT_REGRESSION  # the name earlier versions exported


@dataclass
class GateState:
    """The gate's inputs, read once at configure time, and what it found at session end."""

    thresholds: tuple = ()
    baseline: dict | None = None  # baselines.load's document
    overrides: dict = field(default_factory=dict)  # (model, config label) -> thresholds from the marker
    decided: dict = field(default_factory=dict)  # (model, config label) -> repetitions used (runs=auto)
    auto_cap: dict = field(default_factory=dict)  # (model, config label) -> repetitions its spread needs
    family_size: int = 0  # comparisons the session's gate will make (Holm's family)
    runs_auto: bool = False  # --greenserve-runs=auto with a baseline: stop an item once decided
    result: object = None  # gate.GateResult
    lines: list = field(default_factory=list)  # (text, markup) for the terminal summary


GATE_KEY = pytest.StashKey[GateState]()


def _gate_setup(settings: Settings, metrics: dict) -> GateState:
    """Thresholds parsed against the registry, and the baseline loaded and checked (hardware,
    workload), before anything is measured: each refusal is a one-line usage error (exit 4)."""
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
            baselines.check_workload(doc, run_options(settings))
        except baselines.BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None
        state.baseline = doc
    return state


def _case_key(item):
    """(model, the configuration's label as its samples carry it: ``torch-cpu:bf16``, ``@http``)."""
    case = getattr(item, "callspec", None) and item.callspec.params.get(CASE_FIXTURE)
    if case is None:
        return None
    return case.model, item.config.stash[SESSION_KEY].label(case.config)


def pytest_collection_finish(session):
    """Per-item thresholds from the ``greenserve`` marker (the test's own marker wins over the
    bare one added at collection), a baseline without any item of this session refused, and
    ``--greenserve-runs=auto``'s cap per item for the session's family of comparisons."""
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
    if session.config.stash[SESSION_KEY].settings.ab is not None:  # interleaved: every item is its own pair
        state.family_size = sum(len(state.overrides.get(k) or state.thresholds) for k in keys)
        return
    if state.baseline is None or not keys:
        return
    try:
        common = baselines.check_matching(state.baseline, keys)
    except baselines.BaselineError as exc:
        if _is_worker(session.config):  # xdist: the controller refuses it
            return
        raise pytest.UsageError(str(exc)) from None
    state.family_size = sum(len(state.overrides.get(k) or state.thresholds) for k in common)
    if state.runs_auto:
        for key in common:
            state.auto_cap[key] = gate.auto_runs(_baseline_rows(state, key), state.overrides.get(key) or state.thresholds,
                                                 state.family_size, metrics=metrics)


def _baseline_rows(state: GateState, key) -> list:
    return [s for s in state.baseline["samples"] if (s.get("model"), s.get("config")) == key]


def pytest_runtest_setup(item):
    """--greenserve-runs=auto: skip the repetitions past the item's need, and those left once
    the item is decided (Pinpoint)."""
    state = item.config.stash.get(GATE_KEY, None)
    key = _case_key(item)
    if state is None or key is None:
        return
    if key in state.decided:
        pytest.skip(f"greenserve: {key[0]} {key[1]} decided against the baseline after {state.decided[key]} "
                    f"repetitions (--greenserve-runs=auto)")
    cap = state.auto_cap.get(key)
    case = item.callspec.params[CASE_FIXTURE]
    if cap is not None and case.repetition > cap:
        pytest.skip(f"greenserve: {key[0]} {key[1]} needs {cap} repetitions for its threshold at the baseline's "
                    f"spread across {state.family_size} comparisons (--greenserve-runs=auto)")


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
                        metrics=gs.metrics, family_size=state.family_size):
            state.decided[key] = len(now)
    except Exception:  # deciding early is an optimisation: the gate at session end decides anyway
        pass


def _gate_and_save(session, gs, end, exitstatus) -> None:
    """After the reports: the gate (--greenserve-compare) sets the exit status; then the
    baseline (--greenserve-save) is saved only from a clean session."""
    state = session.config.stash.get(GATE_KEY, None)
    if state is None:
        return
    gate_status = _gate(session, gs, end, state)
    if gs.settings.save:
        _save(session, gs, end, state, exitstatus, gate_status)


def _gate(session, gs, end, state) -> int:
    """Compare with the baseline, or A with B in an interleaved session (--greenserve-ab);
    returns the gate's exit status (0 when there is nothing to gate against)."""
    settings = gs.settings
    if state.baseline is None and settings.ab is None:
        return 0
    from . import gate
    from .results import mark_error_prone

    rows = end.rows or list(gs.samples)
    try:
        now = mark_error_prone([dict(r) for r in rows])
        if settings.ab is not None:
            name = f"A = {settings.ab} (interleaved in this session)"
            result = state.result = gate.compare_interleaved(now, state.thresholds, overrides=state.overrides,
                                                             metrics=gs.metrics, family_size=state.family_size)
        else:
            name = state.baseline.get("path") or settings.compare
            base = mark_error_prone([dict(r) for r in state.baseline["samples"]])
            result = state.result = gate.compare(base, now, state.thresholds, overrides=state.overrides,
                                                 metrics=gs.metrics, family_size=state.family_size)
    except Exception as exc:  # never a traceback: say so, and fail the gate
        first = (str(exc).splitlines() or [""])[0]
        state.lines.append((f"greenserve gate not run ({type(exc).__name__}: {first})", {"red": True}))
        _set_exit(session, EXIT_UNDECIDED)
        return EXIT_UNDECIDED
    why_nothing = None
    if not result.comparisons:
        why_nothing = (f"no item of this session was measured ({len(session.items)} collected; skipped ones "
                       f"say why with -rs)" if not rows else
                       f"nothing of this session's samples matches baseline {name}")
    status = result.exit_status(settings.undecided)
    for line in gate.table_lines(result) if result.comparisons else []:
        state.lines.append((line, {}))
    if result.unmatched_now:
        state.lines.append(("not in the baseline (not gated): " + ", ".join(f"{m} {c}" for m, c in result.unmatched_now),
                            {"yellow": True}))
    if result.unmatched_base:
        state.lines.append(("in the baseline, not measured in this session: "
                            + ", ".join(f"{m} {c}" for m, c in sorted(result.unmatched_base)), {"yellow": True}))
    if why_nothing:
        state.lines.append((f"greenserve gate could not judge: {why_nothing}", {"red": status != 0, "yellow": status == 0}))
    state.lines.append((gate.summary_line(result, name, settings.undecided), {"red": True} if status else {"green": True}))
    if status == EXIT_UNDECIDED:
        state.lines.append((f"greenserve: exit status {status} (the gate could not judge; the reasons above say what "
                            f"to change; --greenserve-undecided=pass accepts it)", {"red": True}))
    elif status:
        what = "energy gate failed" if status == EXIT_REGRESSION else "outputs changed"
        state.lines.append((f"greenserve: exit status {status} ({what})", {"red": True}))
    _write_gate_json(gs, result, name, settings.undecided, status, why_nothing, state)
    _set_exit(session, status)
    return status


def _write_gate_json(gs, result, name, undecided, status, why_nothing, state) -> None:
    import json

    from . import gate

    try:
        from .fsutil import write_text_atomically

        path = gs.store.run_dir / "gate.json"
        write_text_atomically(path, json.dumps(gate.gate_json(result, name, undecided, exit_status=status,
                                                              why_nothing=why_nothing), indent=1, default=str))
        state.lines.append((f"greenserve gate: {path}", {}))
    except OSError as exc:
        state.lines.append((f"greenserve gate.json not written: {exc}", {"yellow": True}))


def _set_exit(session, status: int) -> None:
    if status and session.exitstatus in (0, 5):
        session.exitstatus = status


def _save(session, gs, end, state, exitstatus, gate_status) -> None:
    """Save the baseline only when every item that ran passed, the session was not interrupted
    and the gate (if any) passed; otherwise leave the old baseline untouched and say why."""
    from . import baselines, gate
    from .results import machine_label

    settings = gs.settings
    why_not = []
    if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop:
        why_not.append("the session was interrupted")
    if session.testsfailed:
        why_not.append(f"{session.testsfailed} item{'s' * (session.testsfailed != 1)} failed")
    if gate_status:
        why_not.append(f"the gate did not pass (exit status {gate_status})")
    rows = end.rows or list(gs.samples)
    if not rows:
        why_not.append("nothing was measured")
    if why_not:
        state.lines.append((f"greenserve baseline not saved: {'; '.join(why_not)}; "
                            f"{settings.save} is left as it was", {"red": True}))
        _set_exit(session, gate_status or EXIT_UNDECIDED)
        return
    try:
        meta = gs.meta()
        path = baselines.save(settings.report_dir, settings.save, rows, meta, machine_label(meta["machine_info"]))
    except (OSError, ValueError, baselines.BaselineError) as exc:
        state.lines.append((f"greenserve baseline not saved: {exc}", {"red": True}))
        _set_exit(session, EXIT_UNDECIDED)
        return
    state.lines.append((f"greenserve baseline saved: {path} ({len(rows)} samples)", {"green": True}))
    groups = gate.group(rows)
    family = sum(len(state.thresholds) for _ in groups)
    need = max((gate.auto_runs(r, state.thresholds, family, metrics=gs.metrics) for r in groups.values()), default=0)
    have = min(len(r) for r in groups.values())
    state.lines.append((f"greenserve: a later compare of these {len(groups)} items at --greenserve-fail={settings.fail} "
                        f"needs up to {need} runs per item at this spread ({family} comparisons, alpha "
                        f"{gate.DEFAULT_ALPHA:g} with Holm; --greenserve-runs=auto goes up to it, at most "
                        f"{gate.AUTO_RUNS_MAX})" + (f"; this baseline has {have}: save with at least {need} for "
                                                  f"its side to keep up" if have < need else ""), {}))


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


# ---------------------------------------------------------------- pytest-xdist (distributed.py)
# One GPU per worker, one (model, configuration) per worker, CPU items alone, and one run: the
# workers write into the controller's run directory and the controller's session end reports,
# gates and saves the baseline over every sample.

COORD_KEY = pytest.StashKey[object]()  # a worker's distributed.WorkerCoordinator
CONTROLLER_KEY = pytest.StashKey[object]()  # the controller's _XdistController
GROUP_KEY = "greenserve_group"  # workerinput: group the items by (model, configuration)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _is_controller(config) -> bool:
    return (not _is_worker(config) and config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))
            and not config.getoption("collectonly", False))


def _uses_cuda(settings: Settings) -> bool:
    return any(c.provider == "cuda" for c in settings.configs)


def _xdist_configure(config, gs: GreenserveSession) -> None:
    """Worker: its GPU (before anything starts CUDA), the controller's run id, the lock. Controller:
    the GPUs to share out, refused when there are fewer than workers. One process: --greenserve-gpus'
    first GPU."""
    import os

    from . import distributed as dist
    from .meters.nvml import host_gpus

    settings = gs.settings
    if _is_worker(config):
        wi = config.workerinput
        if wi.get(dist.RUN_ID_KEY):
            gs.run_id = wi[dist.RUN_ID_KEY]  # one run directory for every worker
        os.environ.update(dist.worker_environment(wi.get(dist.GPU_KEY), dict(os.environ)))
        if wi.get(GROUP_KEY):
            config.option.loadgroup = True  # xdist then suffixes node ids with the xdist_group
        if wi.get(dist.COORD_KEY):
            coord = dist.WorkerCoordinator(Path(wi[dist.COORD_KEY]), wi["workerid"], settings.cpu_overlap)
            config.stash[COORD_KEY] = coord
            gs.annotate = coord.annotate
        return
    if not _is_controller(config):
        if settings.gpus:
            os.environ.update(dist.worker_environment(settings.gpus[0], dict(os.environ)))
        return
    pool = dist.gpu_pool(settings.gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), len(host_gpus()))
    workers = len(config.getoption("tx"))
    why = dist.too_many_workers(workers, pool, _uses_cuda(settings))
    if why:
        raise pytest.UsageError(why)
    controller = _XdistController(config, gs, dist.GpuAssigner(pool), dist.make_coord_dir())
    config.stash[CONTROLLER_KEY] = controller
    config.add_cleanup(lambda: dist.remove_coord_dir(controller.coord_dir))
    config.pluginmanager.register(controller, "greenserve-xdist-controller")


class _XdistController:
    """The controller's xdist hooks: what each worker is given, and what it hands back."""

    def __init__(self, config, gs, assigner, coord_dir):
        self.config, self.gs, self.assigner, self.coord_dir = config, gs, assigner, coord_dir
        self.outputs: list[dict] = []
        self.checked = False  # the baseline's items, against the first worker's collection

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):
        from . import distributed as dist

        worker = node.workerinput["workerid"]
        node.workerinput[dist.RUN_ID_KEY] = self.gs.run_id
        node.workerinput[dist.GPU_KEY] = self.assigner.take(worker)
        node.workerinput[dist.COORD_KEY] = str(self.coord_dir)
        node.workerinput[GROUP_KEY] = self.config.getoption("dist") in GROUPED_DIST

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        from . import distributed as dist

        self.assigner.release(node.workerinput["workerid"])
        out = (getattr(node, "workeroutput", None) or {}).get(dist.OUTPUT_KEY)
        if out:
            self.outputs.append(out)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        """A baseline without any item of this session is refused here, once, as without xdist (the
        controller collects nothing itself; a worker's usage error would be an xdist internal error)."""
        state = self.config.stash.get(GATE_KEY, None)
        if state is None or state.baseline is None or self.checked:
            return
        self.checked = True
        from . import baselines

        from .distributed import case_id_in

        by_id = {c.id: (c.model, c.config.name) for c in plan(self.gs.settings)}
        keys = {by_id[i] for i in (case_id_in(n, by_id) for n in ids) if i is not None}
        if keys:
            try:
                baselines.check_matching(state.baseline, keys)
            except baselines.BaselineError as exc:
                raise pytest.UsageError(str(exc)) from None

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem, report, sched):
        """The crashed item fails with xdist's reason, plus where its worker's finished samples are."""
        path = self.gs.settings.report_dir / self.gs.run_id / "samples.jsonl"
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)
        kept = 0
        if path.is_file():
            from .results import read_sample_file

            try:
                kept = sum(1 for s in read_sample_file(path, note=lambda _: None) if s.get("worker") == worker)
            except Exception:
                kept = 0
        report.longrepr = (f"{report.longrepr}\ngreenserve: worker {worker} died mid-item (killed, or out of memory); "
                           f"the {kept} sample(s) it finished are kept in {path}")


#: the --dist modes under which every (model, configuration) stays on one worker
GROUPED_DIST = ("load", "loadgroup")


def _xdist_group(config, item, case) -> None:
    if _is_worker(config):
        from .distributed import group_name

        item.add_marker(pytest.mark.xdist_group(name=group_name(case.model, case.config.name)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A worker's item holds the cross-process lock from setup to teardown: alone for a CPU
    configuration, beside other items otherwise (GPU configurations, tests that are no
    greenserve item), so nothing of another worker runs beside a CPU configuration's item
    (distributed.WorkerCoordinator)."""
    coord = item.config.stash.get(COORD_KEY, None)
    if coord is None:
        return (yield)
    case = getattr(item, "callspec", None) and item.callspec.params.get(CASE_FIXTURE)
    with coord.item(case.config.provider if case is not None else "other"):
        return (yield)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """-n auto: one worker per GPU when CUDA configurations are selected, else one."""
    import os

    from . import distributed as dist
    from .meters.nvml import host_gpus

    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own reading of it
    try:
        gpus = dist.parse_gpu_list(_raw(config, "gpus") or "")
    except ValueError:
        return None  # the usage error comes at configure time
    configs = (_raw(config, "configs") or "all").lower()
    uses_cuda = configs.strip() == "all" or "cuda" in configs
    return dist.auto_workers(dist.gpu_pool(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"), len(host_gpus())), uses_cuda)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist load (what -n N gives) and loadgroup: every (model, configuration) on one worker."""
    if config.getoption("dist") not in GROUPED_DIST:
        return None
    return _grouped_scheduling(config, log)


def _grouped_scheduling(config, log):
    from xdist.scheduler import LoadGroupScheduling

    from .distributed import group_name, item_group

    groups = {c.id: group_name(c.model, c.config.name) for c in plan(config.stash[SESSION_KEY].settings)}

    class GreenserveScheduling(LoadGroupScheduling):
        """loadgroup whose greenserve items are grouped by (model, configuration) read from their
        ids, whose other items are balanced one by one (as --dist load) unless marked
        xdist_group, and whose crashed item is not run again on another worker (xdist's
        loadscope puts it back)."""

        def _split_scope(self, nodeid):
            group = item_group(nodeid, groups)
            if group is not None:
                return group
            if nodeid.rfind("@") > nodeid.rfind("]"):
                return nodeid.split("@")[-1]
            return nodeid

        def remove_node(self, node):
            workload = self.assigned_work.get(node) or {}
            crashed = next((nid for unit in workload.values() for nid, done in unit.items() if not done), None)
            if crashed is not None:
                for unit in workload.values():
                    if crashed in unit:
                        unit[crashed] = True  # reported failed by xdist; never measured twice
            for scope in [k for k, unit in workload.items() if all(unit.values())]:
                if crashed is not None and crashed in workload[scope]:
                    workload.pop(scope)  # nothing of it is left to run elsewhere
            super().remove_node(node)
            return crashed

    return GreenserveScheduling(config, log)


def _xdist_worker_end(session, gs) -> bool:
    """A worker hands the controller its meter notes and its items' greenserve(fail=...) markers
    (the controller collects no items); it writes no report itself."""
    config = session.config
    if not _is_worker(config):
        return False
    from .distributed import OUTPUT_KEY, worker_output

    fails = {}
    for item in session.items:
        key = _case_key(item)
        fail = next((m.kwargs["fail"] for m in item.iter_markers("greenserve") if m.kwargs.get("fail")), None)
        if key is not None and fail:
            fails.setdefault(key, fail)
    config.workeroutput[OUTPUT_KEY] = worker_output(gs.samples, gs.meters.notes() if gs.meters else [], fails)
    return True


def _xdist_gather(config, gs) -> None:
    """The controller: every worker's samples (on disk, in the one run directory) become this
    session's, with the workers in run.json and the workers' greenserve(fail=...) markers in the gate."""
    controller = config.stash.get(CONTROLLER_KEY, None)
    if controller is None:
        return
    from . import distributed as dist
    from .results import read_samples

    path = gs.settings.report_dir / gs.run_id / "samples.jsonl"
    if not path.is_file():
        return
    gs.samples = read_samples([path])
    gs.meta_extra = {"meter_notes": dist.merged_meter_notes(controller.outputs, gs.samples),
                     "workers": dist.workers_summary(gs.samples)}
    state = config.stash.get(GATE_KEY, None)
    if state is not None:
        from . import gate

        for key, fail in dist.worker_overrides(controller.outputs).items():
            try:
                state.overrides.setdefault(key, gate.parse_thresholds(fail, gs.metrics))
            except gate.GateError:
                pass  # each worker refused it at collection already
