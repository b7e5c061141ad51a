"""The pytest side of pytest-greenserve: options, parametrisation, fixtures, session end.

This is the only module that imports pytest. One test item is made per (model, engine,
provider, repetition), with ids like ``test_autocomplete[phi2-onnx-cuda-r3]``, so ``-k``
selects models and configurations as a pytest user expects.
"""

from __future__ import annotations

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
        group.addoption(opt.flag, metavar=opt.metavar, default=None,
                        help=f"{opt.help} (default: {opt.shown_default}; ini: {opt.ini})")
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
    config.addinivalue_line("markers", "greenserve: a pytest-greenserve serving benchmark item")
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
            pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def greenserve(request, greenserve_case) -> Greenserve:
    """Measure one (model, configuration, repetition); skips what cannot run here, with the reason."""
    session = request.config.stash[SESSION_KEY]
    reason = session.unavailable_reason(greenserve_case.config)
    if reason:
        pytest.skip(f"{greenserve_case.config}: {reason}")
    try:
        session.handle(greenserve_case.model)
    except WeightsUnavailable as exc:
        pytest.skip(str(exc))
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


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    gs = config.stash.get(SESSION_KEY, None)
    end = config.stash.get(END_KEY, None)
    if gs is None or end is None:
        return
    from .report import terminal_summary

    terminalreporter.section("greenserve")
    if end.report_error:
        terminalreporter.write_line(end.report_error, red=True)
        return
    for line in terminal_summary(end.rows, report_path=end.report_paths.get("html")):
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"greenserve samples: {gs.store.samples_path}")
