"""The pytest side of pytest-greenserve: options, parametrisation, fixtures, session end.

This is the only module that imports pytest. One test item is made per (model, engine,
provider, repetition), with ids like ``test_autocomplete[phi2-onnx-cuda-r3]``, so ``-k``
selects models and configurations as a pytest user expects.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from . import hookspecs
from .configs import ConfigError, parse_config_list
from .engines.base import EngineError
from .models import DEFAULT_MODELS, REGISTRY, ModelError, WeightsUnavailable, default_cache_dir, parse_model_list, spec_for
from .session import GreenserveSession, Settings, plan

SESSION_KEY = pytest.StashKey["GreenserveSession"]()
CASE_FIXTURE = "greenserve_case"

# (option suffix, ini/metavar, default, help). Every option is also an ini key greenserve_<name>.
OPTIONS = [
    ("models", "NAMES", ",".join(DEFAULT_MODELS),
     "comma-separated model names, name=/local/path, bare paths, 'paper' or 'all' "
     "(unset: the embedded mini models, or any model that -k names)"),
    ("configs", "CONFIGS", "all", "serving configurations ENGINE-PROVIDER, e.g. torch-cpu,onnx-cpu; 'all'"),
    ("runs", "N", "3", "repetitions of every model x configuration"),
    ("prompts", "N", "164", "first N of HumanEval's 164 short prompts"),
    ("new-tokens", "N", "32", "tokens generated per request (greedy, EOS ignored)"),
    ("seed", "N", "0", "seed for prompt windows, replica weights and run order"),
    ("weights", "auto|hub|replica", "auto", "where weights come from; replica = random weights, same shapes"),
    ("report-dir", "DIR", "reports", "where run reports are written (relative to rootdir)"),
    ("cache-dir", "DIR", "", "cache of replicas, exports and reference tokens (default $GREENSERVE_CACHE or "
                              "~/.cache/pytest-greenserve)"),
    ("warmup", "N", "2", "requests sent after each load, before measuring"),
    ("idle", "SECONDS", "5", "idle-power baseline measured before each configuration (the paper used 300)"),
    ("cooldown", "SECONDS", "0", "rest between configurations"),
    ("sampler-hz", "HZ", "10", "utilisation sampling rate"),
    ("cpu-watts", "W_PER_CORE[,IDLE_W]", "", "power model for estimated CPU energy where RAPL is absent"),
    ("wattmeter", "URL", "", "wall-socket meter with a NETIO-style JSON API, e.g. http://10.0.0.5/netio.json"),
    ("openvino-precision", "f32|bf16|default", "f32",
     "OpenVINO inference precision (its bf16 CPU default changes greedy tokens)"),
    ("threads", "N", "", "CPU threads for the engines (default: library default)"),
]


def pytest_addhooks(pluginmanager):
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser):
    group = parser.getgroup("greenserve", "serving-configuration energy benchmarks (pytest-greenserve)")
    for name, metavar, default, help_text in OPTIONS:
        group.addoption(f"--greenserve-{name}", metavar=metavar, default=None,
                        help=f"{help_text} (default: {default or 'unset'}; ini: greenserve_{name.replace('-', '_')})")
        parser.addini(f"greenserve_{name.replace('-', '_')}", help_text, default=None)


def _value(config, name: str, default: str) -> str:
    cli = config.getoption(f"--greenserve-{name}")
    if cli is not None:
        return cli
    ini = config.getini(f"greenserve_{name.replace('-', '_')}")
    return ini if ini not in (None, "", []) else default


def _int(config, name, default, low=1, high=None) -> int:
    raw = _value(config, name, default)
    try:
        value = int(raw)
    except ValueError:
        raise pytest.UsageError(f"--greenserve-{name}={raw!r}: expected a whole number") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise pytest.UsageError(f"--greenserve-{name}={value}: must be {bound}")
    return value


def _float(config, name, default, low=0.0) -> float:
    raw = _value(config, name, default)
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"--greenserve-{name}={raw!r}: expected a number") from None
    if value < low:
        raise pytest.UsageError(f"--greenserve-{name}={value}: must be at least {low}")
    return value


def _settings(config, engines: dict, models: dict) -> Settings:
    defaults = {name: default for name, _, default, _ in OPTIONS}
    chosen = _value(config, "models", "")
    try:
        if chosen:
            names, paths = parse_model_list(chosen)
        else:
            # Every registered model gets items, so that `-k phi2` reaches phi2; only the
            # embedded defaults run unless -k names another (see pytest_collection_modifyitems).
            names, paths = list(DEFAULT_MODELS) + [m for m in models if m not in DEFAULT_MODELS], {}
        for name in names:
            if name not in models:
                spec = spec_for(name, paths.get(name))
                models[name] = spec
        configs = parse_config_list(_value(config, "configs", defaults["configs"]), engines)
    except (ModelError, ConfigError) as exc:
        raise pytest.UsageError(str(exc)) from None
    weights = _value(config, "weights", "auto")
    if weights not in ("auto", "hub", "replica"):
        raise pytest.UsageError(f"--greenserve-weights={weights!r}: expected auto, hub or replica")
    precision = _value(config, "openvino-precision", "f32")
    if precision not in ("f32", "bf16", "f16", "default"):
        raise pytest.UsageError(f"--greenserve-openvino-precision={precision!r}: expected f32, bf16, f16 or default")
    threads = _value(config, "threads", "")
    cache = _value(config, "cache-dir", "")
    report_dir = Path(_value(config, "report-dir", "reports"))
    if not report_dir.is_absolute():
        report_dir = Path(config.rootpath) / report_dir
    return Settings(
        models=tuple(names), local_paths=paths, configs=tuple(configs),
        runs=_int(config, "runs", "3"),
        prompts=_int(config, "prompts", "164", high=164),
        new_tokens=_int(config, "new-tokens", "32"),
        seed=_int(config, "seed", "0", low=0),
        weights=weights, report_dir=report_dir,
        cache_dir=Path(cache).expanduser() if cache else default_cache_dir(),
        warmup=_int(config, "warmup", "2", low=0),
        idle_s=_float(config, "idle", "5"),
        cooldown_s=_float(config, "cooldown", "0"),
        threads=int(threads) if threads else None,
        openvino_precision=precision,
    )


def _meter_settings(config):
    from .meters import MeterSettings, parse_cpu_watts

    kwargs = {}
    watts = _value(config, "cpu-watts", "")
    if watts:
        try:
            parsed = parse_cpu_watts(watts)
        except ValueError as exc:
            raise pytest.UsageError(f"--greenserve-cpu-watts: {exc}") from None
        kwargs["cpu_watts_per_core"] = parsed[0] if parsed else None
        if parsed:
            kwargs["cpu_idle_watts"] = parsed[1]
    url = _value(config, "wattmeter", "")
    if url and not url.startswith(("http://", "https://")):
        raise pytest.UsageError(f"--greenserve-wattmeter={url!r}: expected an http:// or https:// URL")
    return MeterSettings(sampler_hz=_float(config, "sampler-hz", "10", low=0.1), wattmeter_url=url or None, **kwargs)


def _meter_set(config, meter_settings):
    from .meters import MeterSet

    extra: list = []
    config.hook.pytest_greenserve_register_meters(settings=meter_settings, meters=extra)
    return MeterSet(meter_settings, extra_meters=extra)


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
    from . import engines as builtin_engines

    config.addinivalue_line("markers", "greenserve: a pytest-greenserve serving benchmark item")
    if not config.pluginmanager.is_registered(builtin_engines):
        config.pluginmanager.register(builtin_engines, "greenserve-builtin-engines")
    engines: dict = {}
    config.hook.pytest_greenserve_register_engines(registry=engines)
    models = dict(REGISTRY)
    config.hook.pytest_greenserve_register_models(registry=models)
    settings = _settings(config, engines, models)
    meter_settings = _meter_settings(config)
    # Meters are created lazily (first measured sample) so that plain test runs pay nothing.
    session = GreenserveSession(settings, engines, models, meters=None, progress=_progress_writer(config))
    session.meter_factory = lambda: _meter_set(config, meter_settings)
    config.stash[SESSION_KEY] = session


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
    explicit = bool(_value(config, "models", ""))
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
        self.session.ensure_meters()
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


def pytest_sessionfinish(session, exitstatus):
    gs = session.config.stash.get(SESSION_KEY, None)
    if gs is None:
        return
    gs.close()
    if gs.samples:
        try:
            gs.report_paths = gs.write_reports()
        except Exception as exc:  # the samples are safe on disk; say how to render them later
            gs.report_error = (f"greenserve: reports not written ({type(exc).__name__}: {exc}); the samples are in "
                               f"{gs.store.samples_path}; render them with: greenserve report {gs.store.run_dir}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    gs = config.stash.get(SESSION_KEY, None)
    if gs is None or not gs.samples:
        return
    terminalreporter.section("greenserve")
    if getattr(gs, "report_error", None):
        terminalreporter.write_line(gs.report_error.splitlines()[0], red=True)
        return
    for line in gs.summary_lines():
        terminalreporter.write_line(line)
