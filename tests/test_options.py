"""The option table (``pytest_greenserve.options``): one place for every option's name,
default, check and help, feeding ``--help``, the ini keys, :class:`Settings` and the README."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from pytest_greenserve.configs import ServingConfig, all_configs
from pytest_greenserve.meters import MeterSettings
from pytest_greenserve.models import DEFAULT_MODELS, REGISTRY, ModelError, ModelSpec, spec_for
from pytest_greenserve.options import OPTIONS, Option, OptionError, Settings, meter_settings, option, read_settings

README = Path(__file__).resolve().parents[1] / "README.md"
ENGINES = {name: type(name, (), {}) for name in ("torch", "onnx", "jit")}
ENGINES["openvino"] = type("openvino", (), {"providers": ("cpu",)})


def read(given: dict | None = None, models: dict | None = None, rootpath: Path = Path("/root-dir")) -> Settings:
    given = given or {}
    return read_settings(given.get, engines=ENGINES, models=dict(REGISTRY) if models is None else models,
                         rootpath=rootpath)


def readme_options() -> list[tuple[str, str]]:
    """(option, default) of each row of the README's table under "### Options", backticks dropped."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### Options"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`--"):
            rows.append((cells[0].strip("`"), cells[1].replace("`", "")))
    return rows


# ------------------------------------------------------------------ the table

def test_the_table_names_each_option_once():
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names)) and {"models", "configs", "runs", "idle"} <= set(names)
    assert {o.flag for o in OPTIONS} == {f"--greenserve-{n}" for n in names}
    assert option("new-tokens").ini == "greenserve_new_tokens"


def test_readme_table_agrees_with_the_option_table():
    rows = readme_options()
    assert [flag for flag, _ in rows] == [o.flag for o in OPTIONS]
    assert {flag: default for flag, default in rows} == {o.flag: o.shown_default for o in OPTIONS}


def test_only_an_empty_default_is_described_in_words():
    # so that changing a default in the table changes what --help and the README must show
    for o in OPTIONS:
        assert not (o.default and o.readme_default), o.name
    with pytest.raises(ValueError, match="readme_default"):
        Option("x", "N", "1", "help", int, readme_default="one")


def test_every_default_parses():
    for o in OPTIONS:
        o.parse(o.default)


def test_settings_defaults_are_the_tables_parsed_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("GREENSERVE_CACHE", str(tmp_path))
    by_dest = {o.dest: o for o in OPTIONS}
    defaulted = [f for f in dataclasses.fields(Settings)
                 if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert {f.name for f in defaulted} == set(by_dest) - {"models", "configs"}
    for f in defaulted:
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert value == by_dest[f.name].parse(by_dest[f.name].default), f.name
    assert Settings(models=(), local_paths={}, configs=()).cache_dir == tmp_path  # read when made


def test_settings_is_still_importable_from_session():
    from pytest_greenserve import session

    assert session.Settings is Settings


def test_meter_defaults_agree_with_the_meters_own():
    made = meter_settings(read())
    plain = MeterSettings()
    assert (made.sampler_hz, made.cpu_watts_per_core, made.cpu_idle_watts, made.wattmeter_url) == \
        (plain.sampler_hz, plain.cpu_watts_per_core, plain.cpu_idle_watts, plain.wattmeter_url)


# ------------------------------------------------------------------ reading settings

def test_defaults_list_the_embedded_models_first_then_every_registered_one():
    extra = ModelSpec("my-model", "gpt2")
    s = read(models={**REGISTRY, "my-model": extra})
    assert s.models[:3] == tuple(DEFAULT_MODELS)
    assert set(s.models) == set(REGISTRY) | {"my-model"}
    assert s.configs == tuple(all_configs(ENGINES))
    assert s.report_dir == Path("/root-dir/reports")
    assert s.prompts == 100 and s.runs == 3 and s.threads is None and s.wattmeter is None


def test_given_values_are_typed():
    s = read({"models": "mini-gpt2", "configs": "onnx-cpu,torch-cpu", "runs": "2", "new-tokens": "7",
              "idle": "0.5", "threads": "4", "cpu-watts": "off", "wattmeter": "http://meter/netio.json",
              "report-dir": "/abs/reports", "cache-dir": "/abs/cache", "openvino-precision": "bf16"})
    assert s.models == ("mini-gpt2",) and s.local_paths == {}
    assert s.configs == (ServingConfig("onnx", "cpu"), ServingConfig("torch", "cpu"))
    assert (s.runs, s.new_tokens, s.idle_s, s.threads) == (2, 7, 0.5, 4)
    assert s.report_dir == Path("/abs/reports") and s.cache_dir == Path("/abs/cache")
    assert s.openvino_precision == "bf16" and s.cpu_watts is None
    m = meter_settings(s)
    assert m.cpu_watts_per_core is None and m.wattmeter_url == "http://meter/netio.json"
    assert meter_settings(read({"cpu-watts": "12,30"})).cpu_idle_watts == 30.0


def test_a_local_model_is_registered_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    models = dict(REGISTRY)
    s = read({"models": f"mine={tmp_path}"}, models=models)
    assert s.models == ("mine",) and s.local_paths == {"mine": str(tmp_path)}
    assert models["mine"] == ModelSpec("mine", "llama")


@pytest.mark.parametrize("name, text, message", [
    ("runs", "x", "--greenserve-runs='x': expected a whole number"),
    ("runs", "0", "--greenserve-runs='0': must be at least 1"),
    ("prompts", "165", "--greenserve-prompts='165': must be between 1 and 164"),
    ("seed", "-1", "--greenserve-seed='-1': must be at least 0"),
    ("idle", "soon", "--greenserve-idle='soon': expected a number"),
    ("idle", "nan", "--greenserve-idle='nan': expected a finite number"),
    ("sampler-hz", "0", "--greenserve-sampler-hz='0': must be at least 0.1"),
    ("weights", "cloud", "--greenserve-weights='cloud': expected auto, hub or replica"),
    ("openvino-precision", "int8", "--greenserve-openvino-precision='int8': expected f32, bf16, f16 or default"),
    ("threads", "many", "--greenserve-threads='many': expected a whole number"),
    ("cpu-watts", "lots", "--greenserve-cpu-watts='lots': expected W_PER_BUSY_CORE[,IDLE_W]"),
    ("wattmeter", "ftp://meter", "--greenserve-wattmeter='ftp://meter': expected an http:// or https:// URL"),
    ("report-dir", "", "--greenserve-report-dir='': expected a directory"),
    ("models", "gpt5", "unknown model 'gpt5'"),
    ("configs", "tensorrt-cpu", "unknown engine 'tensorrt'"),
    ("configs", ",", "--greenserve-configs is empty"),
])
def test_a_malformed_value_is_a_one_line_option_error(name, text, message):
    with pytest.raises(OptionError) as err:
        read({name: text})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_model_directory_without_config_json_is_an_option_error(tmp_path):
    with pytest.raises(OptionError) as err:
        read({"models": f"foo={tmp_path}"})
    assert str(err.value) == (f"model path {str(tmp_path)!r} for 'foo' has no config.json "
                              f"(expected a Hugging Face model directory)")
    with pytest.raises(OptionError, match="no config.json"):  # also for a registered name
        read({"models": f"phi2={tmp_path}"})


@pytest.mark.parametrize("content, words", [
    (None, "has no config.json"),
    ("{not json", "cannot read config.json (JSONDecodeError: "),
    ("[1, 2]", "config.json is not a JSON object"),
])
def test_spec_for_a_bad_model_directory_is_a_one_line_model_error(tmp_path, content, words):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelError) as err:
        spec_for("foo", str(tmp_path))
    assert words in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ through pytest

def run(pytester, *args):
    pytester.makepyfile(test_autocomplete="def test_autocomplete(greenserve):\n    pass\n")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)


def test_help_shows_every_option_with_its_default_and_ini_key(pytester):
    result = run(pytester, "--help")
    assert result.ret == 0
    text = "".join("\n".join(result.outlines).split())  # argparse wraps the help anywhere
    for o in OPTIONS:
        assert "".join(f"{o.flag}={o.metavar}".split()) in text, o.name
        assert "".join(f"{o.help} (default: {o.shown_default}; ini: {o.ini})".split()) in text, o.name


def header(result) -> str:
    return next(line for line in result.outlines if line.startswith("greenserve: "))


def test_an_ini_key_sets_a_value_and_the_command_line_overrides_it(pytester):
    pytester.makeini("[pytest]\ngreenserve_new_tokens = 7\ngreenserve_seed = 5\n")
    result = run(pytester, "--collect-only", "--greenserve-configs=torch-cpu")
    assert result.ret == 0
    assert "new_tokens=7" in header(result) and "seed=5" in header(result)
    result = run(pytester, "--collect-only", "--greenserve-configs=torch-cpu", "--greenserve-new-tokens=9")
    assert "new_tokens=9" in header(result) and "seed=5" in header(result)


def usage_errors(result) -> list[str]:
    assert result.ret == pytest.ExitCode.USAGE_ERROR == 4
    output = result.outlines + result.errlines
    assert "Traceback" not in "\n".join(output) and "INTERNALERROR" not in "\n".join(output)
    return [line for line in output if line.startswith("ERROR:")]


def test_a_malformed_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\ngreenserve_threads = many\n")
    assert usage_errors(run(pytester, "--collect-only")) == \
        ["ERROR: --greenserve-threads='many': expected a whole number"]


def test_a_model_directory_without_config_json_is_a_usage_error(pytester, tmp_path):
    errors = usage_errors(run(pytester, "--collect-only", f"--greenserve-models=foo={tmp_path}"))
    assert len(errors) == 1 and re.search(r"model path '.*' for 'foo' has no config\.json", errors[0]), errors


def test_a_model_registered_through_the_hook_can_be_named():
    from pytest_greenserve.models import ModelSpec

    registry = {**REGISTRY, "santacoder": ModelSpec("santacoder", "gpt2", "bigcode/santacoder", "1.1B", 2)}
    assert read({"models": "santacoder,mini-gpt2"}, models=registry).models == ("santacoder", "mini-gpt2")
    assert "santacoder" in read({"models": "all"}, models=registry).models
    with pytest.raises(OptionError, match="unknown model 'nosuchcoder'"):
        read({"models": "nosuchcoder"}, models=registry)
