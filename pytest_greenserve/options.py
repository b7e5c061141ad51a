"""The options, once: their names, defaults, checks and help, and the :class:`Settings` they make.

No pytest here. ``plugin.py`` turns :data:`OPTIONS` into command-line options and ini keys
(``--greenserve-new-tokens`` / ``greenserve_new_tokens``) and calls :func:`read_settings`
with a function that returns what the user gave for an option (command line first, then the
ini file, else None). Every default is written once, in :data:`OPTIONS`: the
:class:`Settings` field defaults are parsed from it, and a test holds the README's option
table to it.

A malformed value raises :class:`OptionError`, whose message is one line meant for the user
(``--greenserve-runs='x': expected a whole number``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .configs import ConfigError, ServingConfig, parse_config, parse_config_list
from .engines.compile import MODES as COMPILE_MODES
from .meters import MeterSettings, parse_cpu_watts
from .gate import DEFAULT_FAIL
from .metrics import DEFAULT_MIN_SAMPLE_S
from .models import DEFAULT_MODELS, ModelError, default_cache_dir, parse_model_list, spec_for
from .prompts import N_PROBLEMS

#: prompts per sample by default: the first 100 of HumanEval's 164 (see the prompts option)
DEFAULT_PROMPTS = 100
from .samples import DEFAULT_TIE_TOLERANCE

__all__ = ["OPTIONS", "Option", "OptionError", "Settings", "meter_settings", "option", "read_settings"]


class OptionError(ValueError):
    """A malformed option value; the message is one line meant for the user."""


# -- converters: the raw string -> the typed value, or ValueError saying what was expected ----

def whole(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}" if high is not None else f"must be at least {low}")
        return value

    return convert


def number(low: float = 0.0) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        if value < low:
            raise ValueError(f"must be at least {low:g}")
        return value

    return convert


def choice(*values: str) -> Callable[[str], str]:
    expected = ", ".join(values[:-1]) + f" or {values[-1]}"

    def convert(text: str) -> str:
        if text not in values:
            raise ValueError(f"expected {expected}")
        return text

    return convert


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Empty means None (the library's or the meter's own choice)."""
    return lambda text: None if not text.strip() else convert(text.strip())


def _model_list(text: str) -> str | None:
    """None (empty): every registered model, the embedded ones first. read_settings parses the
    list against the registered models, those added through the hook included."""
    return text.strip() or None


def _config_list(text: str) -> tuple[str, ...]:
    """The items as given; read_settings checks them against the registered engines."""
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise ConfigError("--greenserve-configs is empty; give e.g. torch-cpu,onnx-cpu or 'all'")
    return items


def _directory(text: str) -> Path:
    if not text.strip():
        raise ValueError("expected a directory")
    return Path(text).expanduser()


def _cache_dir(text: str) -> Path:
    return Path(text).expanduser() if text.strip() else default_cache_dir()


def _cpu_watts(text: str) -> tuple[float, float] | None:
    try:
        return parse_cpu_watts(text)
    except ValueError:
        raise ValueError("expected W_PER_BUSY_CORE[,IDLE_W] in watts (each at least 0), or 'off'") from None


def _runs(text: str) -> int | str:
    """A whole number of repetitions, or ``auto`` (read_settings resolves it: see gate.py)."""
    return "auto" if text.strip().lower() == "auto" else whole(1)(text)


def _baseline_name(text: str) -> str | None:
    text = text.strip()
    if text and ("/" in text or text in (".", "..", "latest")):
        raise ValueError("a baseline name is a plain file name other than 'latest' (saved under <report-dir>/baselines/)")
    return text or None


def _ab_spec(text: str) -> str | None:
    """``ENGINE-PROVIDER`` or ``python:PATH`` (read_settings checks the configuration and the path)."""
    text = text.strip()
    if text.startswith("python:") and not text[len("python:"):].strip():
        raise ValueError("python: needs the path of the other environment's interpreter, e.g. python:../main/.venv/bin/python")
    return text or None


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("", "0", "no", "false", "off"):
        return False
    if value in ("1", "yes", "true", "on"):
        return True
    raise ValueError("expected yes or no")


def _gpu_list(text: str) -> tuple[str, ...] | None:
    from .distributed import parse_gpu_list

    return parse_gpu_list(text)


def _slo(text: str) -> dict:
    from .slo import parse_slo

    return parse_slo(text)


def _load(text: str):
    from .load import parse_load

    return parse_load(text)


def _fraction(text: str) -> float:
    value = number(0)(text)
    if value >= 1:
        raise ValueError("expected a fraction from 0 up to (not including) 1")
    return value


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return text


# -- the table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One ``--greenserve-<name>`` option, also the ini key ``greenserve_<name with _>``.

    ``default`` is what a user would type; ``convert`` turns such a string into the typed
    value or raises ValueError (ModelError and ConfigError pass through with their own
    words). ``readme_default`` says in words what an empty default means, as the README's
    table shows it. ``dest`` is the :class:`Settings` field (default: the name with ``_``).
    """

    name: str
    metavar: str
    default: str
    help: str
    convert: Callable[[str], Any]
    readme_default: str = ""
    dest: str = ""
    const: str | None = None  # the bare flag's value (--greenserve-compare-any-machine); metavar then "[...]"

    def __post_init__(self):
        if self.readme_default and self.default:
            raise ValueError(f"option {self.name!r}: readme_default is only for an empty default")
        if not self.dest:
            object.__setattr__(self, "dest", self.name.replace("-", "_"))

    @property
    def flag(self) -> str:
        return f"--greenserve-{self.name}"

    @property
    def ini(self) -> str:
        return f"greenserve_{self.name.replace('-', '_')}"

    @property
    def shown_default(self) -> str:
        """The default as ``--help`` and the README show it."""
        return self.readme_default.replace("`", "") if self.readme_default else self.default

    def parse(self, text: str) -> Any:
        """The typed value of ``text``; OptionError with a one-line message if it is malformed."""
        try:
            return self.convert(text)
        except (ModelError, ConfigError) as exc:  # already name the option's item
            raise OptionError(str(exc)) from None
        except ValueError as exc:
            raise OptionError(f"{self.flag}={text!r}: {exc}") from None


OPTIONS: tuple[Option, ...] = (
    Option("models", "NAMES", "",
           "comma-separated model names, name=/local/path, bare paths, 'paper' or 'all' "
           "(while unset, -k can also pick any registered model)",
           _model_list, readme_default="the `mini-*` models"),
    Option("configs", "CONFIGS", "all", "serving configurations ENGINE-PROVIDER, e.g. torch-cpu,onnx-cpu; 'all'",
           _config_list),
    Option("runs", "N|auto", "3", "repetitions of every model x configuration; auto: with --greenserve-compare, "
           "as many as the baseline's spread needs for the threshold across the session's comparisons (at most "
           "20), stopping once the item is decided (else 3)", _runs),
    # 100, not all 164: the default run then answers in about 5 minutes on a 2-core VM (README);
    # the first N prompts are the same whatever N, so --greenserve-prompts=164 adds to them
    Option("prompts", "N", str(DEFAULT_PROMPTS), f"first N of HumanEval's {N_PROBLEMS} short prompts "
           f"(the paper: {N_PROBLEMS})", whole(1, N_PROBLEMS)),
    Option("new-tokens", "N", "32", "tokens generated per request (greedy, EOS ignored)", whole(1)),
    Option("seed", "N", "0", "seed for prompt windows, replica weights and run order", whole(0)),
    Option("weights", "auto|hub|replica", "auto",
           "where weights come from: auto (local path, else hub), hub, replica (random weights, same shapes)",
           choice("auto", "hub", "replica")),
    Option("report-dir", "DIR", "reports", "where run reports are written (relative to rootdir)", _directory),
    Option("cache-dir", "DIR", "",
           "cache of replicas, exports and reference tokens ($GREENSERVE_CACHE overrides the default)",
           _cache_dir, readme_default="`~/.cache/pytest-greenserve`"),
    Option("warmup", "N", "2", "requests sent after each load, before measuring; one prompt of every other "
           "prompt length follows, so that no engine compiles for a new shape inside a measured window", whole(0)),
    Option("tie-tolerance", "LOGITS", f"{DEFAULT_TIE_TOLERANCE:g}",
           "a token differing from torch's where torch's top-2 logits were closer than this is a near-tie, "
           "not an error", number(0)),
    Option("min-sample-s", "SECONDS", f"{DEFAULT_MIN_SAMPLE_S:g}",
           "a sample shorter than this is flagged low_resolution (NVML's energy counter steps every ~100 ms)",
           number(0)),
    Option("idle", "SECONDS", "5", "idle-power window measured next to each sample, with its target loaded "
           "(the paper: 300 s once); 0: no idle baseline, no net energy", number(0), dest="idle_s"),
    Option("settle", "SECONDS", "1", "rest before each idle window, so the machine settles after the last sample",
           number(0), dest="settle_s"),
    Option("cooldown", "SECONDS", "0", "rest between configurations", number(0), dest="cooldown_s"),
    Option("sampler-hz", "HZ", "10", "utilisation sampling rate", number(0.1)),
    Option("cpu-watts", "W_PER_CORE[,IDLE_W]|off", "10,20",
           "power model for estimated CPU energy, used only where RAPL is absent; 'off': no estimate",
           _cpu_watts),
    Option("wattmeter", "URL", "", "wall-socket meter with a NETIO-style JSON API, e.g. http://10.0.0.5/netio.json",
           _optional(_url), readme_default="unset"),
    Option("openvino-precision", "f32|bf16|f16|default", "f32",
           "OpenVINO inference precision (its bf16 CPU default changes greedy tokens)",
           choice("f32", "bf16", "f16", "default")),
    Option("dtype", "fp32|bf16", "fp32",
           "the engines' weights and activations; bf16 only for engines that support it (torch, jit, compile; the "
           "others are skipped with the reason, openvino has --greenserve-openvino-precision); "
           "a bf16 sample's config is e.g. torch-cuda:bf16",
           choice("fp32", "bf16")),
    Option("compile-mode", "|".join(COMPILE_MODES), "auto",
           "how the compile engine captures its decode step: CUDA graph, torch.compile (inductor), both, "
           "or neither; fused+graph: hand-fused Triton kernels captured (CUDA; gpt2, gpt_bigcode, gpt_neox, phi, llama, "
           "gemma); "
           "auto: on CUDA with Triton fused+graph (gpt2, gpt_bigcode, gpt_neox, phi, llama) or inductor+graph, "
           "on CPU inductor with a C++ compiler",
           choice(*COMPILE_MODES)),
    Option("threads", "N", "", "CPU threads for the engines", _optional(whole(1)), readme_default="library default"),
    Option("ort-spinning", "on|off", "on",
           "ONNX Runtime's CPU thread pools spin between operators (its default); 'off' lets them sleep",
           choice("on", "off")),
    Option("transport", "inproc|http", "inproc",
           "how prompts reach the model: inproc (the engine in the pytest process) or http "
           "(greenserve serve in a child process, FastAPI + uvicorn on loopback; the serve extra)",
           choice("inproc", "http")),
    Option("concurrency", "N", "1", "client threads sending the prompts at once (the paper: 1); the same as "
           "--greenserve-load=closed:N", whole(1, 256)),
    Option("load", "closed:N|poisson:RATE|constant:RATE|sweep[:R1,...]", "closed:1",
           "how requests are released: closed:N (N clients, each sending when answered; closed:1 is the paper's "
           "one at a time), poisson:RATE or constant:RATE (an open loop, RATE requests/s, Poisson arrivals drawn "
           "from --greenserve-seed), sweep (Poisson rates up to saturation, one sample each, after a closed:1 "
           "sample); anything but closed:1 needs --greenserve-transport=http", _load),
    Option("load-warmup", "FRACTION", "0.1", "open loop: the first FRACTION of the arrival schedule's span is "
           "not measured (requests are sent, the meters wait)", _fraction, dest="load_warmup_frac"),
    Option("load-cooldown", "FRACTION", "0.1", "open loop: the last FRACTION of the arrival schedule's span is "
           "not measured (nor is the drain after the last arrival)", _fraction, dest="load_cooldown_frac"),
    Option("stream", "on|off", "off",
           "HTTP requests as server-sent events, each token's arrival stamped at the client: time to "
           "first token and inter-token latency measured as the field's load generators do (needs http)",
           choice("on", "off")),
    Option("slo", "OBJECTIVE:VALUE,...", "",
           "latency objectives for goodput (requests/s meeting all of them): ttft, tpot, e2e in ms or s, "
           "e.g. ttft:200ms,tpot:50ms", _slo, readme_default="unset"),
    Option("roofline", "on|off", "on",
           "GPU samples: measure the card's copy bandwidth and launch latency once, profile one generation "
           "per configuration, and report ms/token against the memory and launch floors", choice("on", "off")),
    Option("save", "NAME", "", "save this session as baseline NAME (<report-dir>/baselines/NAME.json) for the gate",
           _baseline_name, readme_default="unset"),
    Option("compare", "NAME|PATH|latest", "",
           "gate this session against a saved baseline, per (model, configuration)",
           _optional(str), readme_default="unset"),
    Option("fail", "METRIC:THRESHOLD,...", DEFAULT_FAIL,
           "the gate's thresholds: a gateable metric (or energy: gross energy_total_j; time: time_s) with a change in % or in units, "
           "e.g. energy:5%,time:10% or ms_per_token:0.5ms", lambda text: text.strip()),
    Option("ab", "CONFIG|python:PATH", "",
           "interleaved A/B in one session, decided with a paired test (the design that cancels drift): "
           "A is the configuration CONFIG (in this process), or the same configuration served by another Python "
           "environment's interpreter PATH (needs --greenserve-transport=http); B is each selected configuration; "
           "every repetition measures A and B back to back in a balanced, seeded ABBA order",
           _ab_spec, readme_default="unset"),
    Option("undecided", "fail|pass", "fail",
           "what the gate does when it could not judge an item (too few or too noisy repetitions, nothing "
           "compared): fail (exit status 7, with the reason) or pass (exit 0, the reason printed)",
           choice("fail", "pass")),
    Option("compare-any-machine", "[yes|no]", "no", "compare with a baseline measured on other hardware",
           _yes_no, const="yes"),
    Option("gpus", "INDICES|UUIDS", "",
           "with pytest-xdist (-n N): the GPUs the workers share out, one each, e.g. 0,1 (nvidia-smi's "
           "indices) or GPU- UUIDs; unset: CUDA_VISIBLE_DEVICES, else every GPU", _gpu_list,
           readme_default="the visible GPUs"),
    Option("cpu-overlap", "[yes|no]", "no",
           "with pytest-xdist: let CPU configurations run beside other workers' items (their samples are "
           "flagged concurrent); no: every other worker waits while a CPU configuration's item runs",
           _yes_no, const="yes"),
)

_BY_NAME = {o.name: o for o in OPTIONS}


def option(name: str) -> Option:
    """The option called ``name`` (``"new-tokens"``)."""
    return _BY_NAME[name]


def _default(name: str) -> Any:
    opt = option(name)
    return opt.parse(opt.default)


# -- what the options make --------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Every option's value for one session; the defaults are those of :data:`OPTIONS`."""

    models: tuple[str, ...]
    local_paths: dict
    configs: tuple[ServingConfig, ...]
    runs: int = _default("runs")
    prompts: int | None = _default("prompts")  # None: all
    new_tokens: int = _default("new-tokens")
    seed: int = _default("seed")
    weights: str = _default("weights")  # auto | hub | replica
    report_dir: Path = _default("report-dir")
    cache_dir: Path = field(default_factory=lambda: _default("cache-dir"))  # reads $GREENSERVE_CACHE
    warmup: int = _default("warmup")  # requests sent after each load, before measuring
    tie_tolerance: float = _default("tie-tolerance")  # logits: a smaller top-2 margin is a near-tie
    min_sample_s: float = _default("min-sample-s")  # shorter samples are flagged low_resolution
    idle_s: float = _default("idle")  # idle window next to each sample
    settle_s: float = _default("settle")  # rest before each idle window
    cooldown_s: float = _default("cooldown")  # rest between configurations
    threads: int | None = _default("threads")  # None: the library's default
    ort_spinning: str = _default("ort-spinning")  # on (ONNX Runtime's default) | off
    openvino_precision: str = _default("openvino-precision")
    dtype: str = _default("dtype")  # fp32 | bf16 (engines whose Engine.dtypes include it)
    compile_mode: str = _default("compile-mode")  # the compile engine's capture (engines/compile.py)
    sampler_hz: float = _default("sampler-hz")
    cpu_watts: tuple[float, float] | None = _default("cpu-watts")  # (W per busy core, idle W); None: off
    wattmeter: str | None = _default("wattmeter")  # URL
    transport: str = _default("transport")  # inproc | http
    #: closed-loop client threads (--greenserve-concurrency, or N of --greenserve-load=closed:N);
    #: None when the load is an open loop or a sweep, which have no fixed number of clients
    concurrency: int | None = _default("concurrency")
    load: Any = _default("load")  # load.LoadShape; read_settings makes it agree with concurrency
    load_warmup_frac: float = _default("load-warmup")  # open loop: unmeasured head of the arrival span
    load_cooldown_frac: float = _default("load-cooldown")  # open loop: unmeasured tail of the arrival span
    stream: str = _default("stream")  # on | off: HTTP requests streamed (SSE), TTFT/ITL at the client
    slo: dict = field(default_factory=lambda: _default("slo"))  # {"ttft_s": 0.2, ...}; {}: no goodput
    roofline: str = _default("roofline")  # on | off: the per-token roofline of GPU samples (roofline.py)
    save: str | None = _default("save")  # baseline name to save this session under
    compare: str | None = _default("compare")  # baseline NAME|PATH|latest to gate against
    fail: str = _default("fail")  # the gate's thresholds, parsed by plugin.py against the metric registry
    ab: str | None = _default("ab")  # interleaved A/B: the A side, a configuration or python:PATH
    undecided: str = _default("undecided")  # fail | pass: the gate's answer when it could not judge
    compare_any_machine: bool = _default("compare-any-machine")
    gpus: tuple[str, ...] | None = _default("gpus")  # pytest-xdist: the GPUs shared out, one per worker
    cpu_overlap: bool = _default("cpu-overlap")  # pytest-xdist: CPU items beside other workers' items


def read_settings(raw: Callable[[str], str | None], *, engines: dict, models: dict, rootpath: Path) -> Settings:
    """The settings from what the user gave: ``raw("runs")`` is the command line's value, else
    the ini file's, else None (the table's default).

    Models named but not registered (local paths) are added to ``models``. Without
    --greenserve-models every registered model is listed, the embedded ones first, so that
    ``-k phi2`` reaches phi2; plugin.py deselects the others. Raises OptionError.
    """
    values = {}
    for opt in OPTIONS:
        given = raw(opt.name)
        values[opt.dest] = opt.parse(opt.default if given is None else given)
    _resolve_load(values, load_given=raw("load") is not None, concurrency_given=raw("concurrency") is not None)

    chosen = values.pop("models")
    try:
        if chosen is None:
            names, paths = tuple(DEFAULT_MODELS) + tuple(m for m in models if m not in DEFAULT_MODELS), {}
        else:
            names, paths = parse_model_list(chosen, models)
        for name in names:
            if name not in models or name in paths:  # a local path is checked even for a known name
                models.setdefault(name, spec_for(name, paths.get(name)))
        configs = parse_config_list(values.pop("configs"), engines)
    except (ModelError, ConfigError) as exc:
        raise OptionError(str(exc)) from None

    if values["ab"] is not None:
        _check_ab(values, engines)
    if values["load"].concurrent and values["transport"] != "http":
        flag = (f"--greenserve-load={values['load']}" if raw("load") is not None
                else "--greenserve-concurrency above 1")
        raise OptionError(f"{flag} needs --greenserve-transport=http (in-process engines serve one request at a "
                          "time: overlapping requests would only queue in this process)")
    if values["stream"] == "on" and values["transport"] != "http":
        raise OptionError("--greenserve-stream=on needs --greenserve-transport=http "
                          "(in-process engines stamp their tokens themselves)")
    if values["runs"] == "auto":  # gate.py: a cap with a baseline to decide against, else the default
        from .gate import AUTO_RUNS_MAX, AUTO_RUNS_WITHOUT_BASELINE

        # with a baseline, items are collected up to the most any item may need; plugin.py skips
        # the repetitions past each item's own need (gate.auto_runs) and those after its answer
        values["runs"] = AUTO_RUNS_MAX if values["compare"] is not None else AUTO_RUNS_WITHOUT_BASELINE
    report_dir = values.pop("report_dir")
    if not report_dir.is_absolute():
        report_dir = Path(rootpath) / report_dir
    return Settings(models=tuple(names), local_paths=paths, configs=tuple(configs), report_dir=report_dir, **values)


def _resolve_load(values: dict, *, load_given: bool, concurrency_given: bool) -> None:
    """One fact, two names: --greenserve-concurrency=N is --greenserve-load=closed:N. Without
    --greenserve-load the load is closed:concurrency; with both, they must agree. Afterwards
    ``concurrency`` is the closed loop's clients, or None for an open loop or a sweep."""
    from .load import closed

    load, concurrency = values["load"], values["concurrency"]
    if not load_given:
        load = values["load"] = closed(concurrency)
    elif concurrency_given and not (load.kind == "closed" and load.clients == concurrency):
        raise OptionError(f"--greenserve-concurrency={concurrency} is --greenserve-load=closed:{concurrency}, "
                          f"but --greenserve-load={load} was given too: give one of them")
    values["concurrency"] = load.clients if load.kind == "closed" else None
    if values["load_warmup_frac"] + values["load_cooldown_frac"] >= 1:
        raise OptionError(f"--greenserve-load-warmup={values['load_warmup_frac']:g} and --greenserve-load-cooldown="
                          f"{values['load_cooldown_frac']:g} leave no measured window: together they must stay below 1")
    if load.sweep:
        for flag, given in (("ab", values["ab"] is not None), ("runs=auto", values["runs"] == "auto")):
            if given:
                raise OptionError(f"--greenserve-load={load} makes several samples per repetition, one per rate: "
                                  f"not with --greenserve-{flag}")


def _check_ab(values: dict, engines: dict) -> None:
    """--greenserve-ab: a known configuration, or an interpreter that exists with http; not with
    --greenserve-compare or --greenserve-save (the A side is measured in the session itself)."""
    spec = values["ab"]
    for other in ("compare", "save"):
        if values[other] is not None:
            raise OptionError(f"--greenserve-ab and --greenserve-{other} are two ways to gate: choose one")
    if spec.startswith("python:"):
        path = Path(spec[len("python:"):].strip()).expanduser()
        if not path.is_file():
            raise OptionError(f"--greenserve-ab={spec!r}: {path} is not a file (give the other environment's python)")
        if values["transport"] != "http":
            raise OptionError(f"--greenserve-ab={spec!r} serves both sides over HTTP: add --greenserve-transport=http")
        return
    try:
        parse_config(spec, engines)
    except ConfigError as exc:
        raise OptionError(f"--greenserve-ab: {exc}") from None


def meter_settings(settings: Settings) -> MeterSettings:
    """What the meters need from the settings."""
    kwargs: dict = {"cpu_watts_per_core": None}  # the CPU estimate is off
    if settings.cpu_watts is not None:
        kwargs = {"cpu_watts_per_core": settings.cpu_watts[0], "cpu_idle_watts": settings.cpu_watts[1]}
    return MeterSettings(sampler_hz=settings.sampler_hz, wattmeter_url=settings.wattmeter, **kwargs)
