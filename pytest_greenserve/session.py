"""One greenserve session: the plan of cases, the session's caches, and one sample at a time.

No pytest here, and no reports: ``plugin.py`` turns options into :class:`Settings`, asks
:func:`plan` for the cases to parametrize, calls :meth:`GreenserveSession.measure` from the
test's fixture, and renders the reports at session end from :meth:`saved_samples`.

The arrows run one way: session (plan, model handles, prompts, what can run) → runner (load,
warm-up, idle baseline, close) → measure step (meters around the requests) → targets and
meters; the sample builder and the results store take what the measure step returns.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

from .configs import ServingConfig
from .engines.base import (Engine, EngineError, EngineOptions, engine_dtypes, failure_line, hold_cuda_context,
                           library_versions)
from .handle import ModelHandle
from .measure import measure_prompts
from .metrics import Metric, builtin_metrics, metrics_to_json
from .models import ModelSpec, WeightsUnavailable, resolve
from .options import Settings  # re-exported: `from .session import Settings` still works
from .prompts import make_prompts
from .references import ReferenceStore
from .results import ResultsStore, machine_info, machine_label, new_run_id, read_samples
from . import roofline
from .launch_profile import profile_in_child
from .load import CLOSED_1, MAX_IN_FLIGHT, LoadShape, poisson, run_sweep, sweep_rates
from .runner import Runner
from .samples import build_sample, config_label

__all__ = ["Case", "GreenserveSession", "LIBRARIES", "Settings", "plan", "run_options"]

LIBRARIES = ("pytest-greenserve", "torch", "transformers", "optimum", "optimum-onnx", "optimum-intel",
             "onnxruntime", "onnxruntime-gpu", "openvino", "psutil", "nvidia-ml-py", "pingouin")
REFERENCE_ENGINE = "torch"


@dataclass(frozen=True)
class Case:
    model: str
    config: ServingConfig
    repetition: int

    @property
    def id(self) -> str:
        variant = f":{self.config.variant}" if self.config.variant else ""  # llamacpp-cpu:q8_0
        return f"{self.model}-{self.config.engine}-{self.config.provider}{variant}-r{self.repetition}"


def plan(settings: Settings) -> list[Case]:
    """Every (model, configuration, repetition), models in the given order.

    Within a model, repetitions × configurations run in a seeded shuffled order (the paper's
    fixed order was a named threat to validity); keeping models contiguous means at most
    one model is loaded at a time.
    """
    cases = []
    for model in settings.models:
        block = [Case(model, cfg, rep) for cfg in settings.configs for rep in range(1, settings.runs + 1)]
        random.Random(f"{settings.seed}:{model}").shuffle(block)
        cases += block
    return cases


def run_options(s: Settings) -> dict:
    """The options run.json and a baseline record (the gate compares baselines.WORKLOAD_KEYS of them)."""
    return {"models": list(s.models), "configs": [c.name for c in s.configs], "runs": s.runs,
            "prompts": s.prompts, "new_tokens": s.new_tokens, "seed": s.seed, "weights": s.weights,
            "warmup": s.warmup, "idle_s": s.idle_s, "settle_s": s.settle_s, "cooldown_s": s.cooldown_s,
            "transport": s.transport, "concurrency": s.concurrency, "load": str(s.load),
            "load_warmup_frac": s.load_warmup_frac, "load_cooldown_frac": s.load_cooldown_frac,
            "dtype": s.dtype, "stream": s.stream,
            "slo": s.slo, "threads": s.threads, "openvino_precision": s.openvino_precision,
            "ort_spinning": s.ort_spinning, "compile_mode": s.compile_mode}


def ab_order(seed: int, model: str, config: str, repetition: int) -> str:
    """The order of an A/B pair: repetitions come in blocks of two, ``AB`` then ``BA`` (ABBA),
    and each block's orientation is drawn from the seed, so over the session every side goes
    first as often as second and a drift inside a block cancels in the pair's ratio."""
    block = (repetition - 1) // 2
    first = random.Random(f"{seed}:{model}:{config}:ab{block}").random() < 0.5
    orders = ("AB", "BA") if first else ("BA", "AB")
    return orders[(repetition - 1) % 2]


class GreenserveSession:
    """The caches of one session (model handles, prompts, what cannot run) and its samples.

    ``meters`` is a ready :class:`~pytest_greenserve.meters.MeterSet`, or None with
    ``meters_factory`` to create one at the first measured sample (so ``pytest tests`` and
    ``--collect-only`` never touch NVML or sysfs), or None for no meters at all.
    """

    def __init__(self, settings: Settings, engines: dict[str, type[Engine]], models: dict[str, ModelSpec],
                 meters=None, progress: Callable[[str], None] = print,
                 meters_factory: Callable[[], object] | None = None,
                 metrics: dict[str, Metric] | None = None):
        self.settings = settings
        self.engines = engines
        self.models = models
        self.meters = meters
        self.meters_factory = meters_factory
        self.metrics = metrics if metrics is not None else builtin_metrics()
        self.progress = progress
        self.run_id = new_run_id()
        self.samples: list[dict] = []
        # pytest-xdist (distributed.py): marks a worker puts on each sample before it is saved,
        # and what the controller adds to run.json (its workers, their meter notes)
        self.annotate: Callable[[dict], None] | None = None
        self.meta_extra: dict = {}
        self.runner = Runner(warmup=settings.warmup, new_tokens=settings.new_tokens, idle_s=settings.idle_s,
                             cooldown_s=settings.cooldown_s, settle_s=settings.settle_s, progress=progress)
        self.references = ReferenceStore(settings.cache_dir, settings.new_tokens, progress, dtype=settings.dtype)
        self._store: ResultsStore | None = None
        self._machine: dict | None = None
        self._handles: dict[str, ModelHandle | WeightsUnavailable] = {}
        self._prompts: dict[str, tuple[list[str], list[list[int]]]] = {}
        self._unavailable: dict[ServingConfig, str | None] = {}
        # the roofline of GPU samples: the card (once per run), each model's geometry, each
        # (model, configuration)'s profiled launches; a string where it could not be had: why
        self._card: dict | None = None
        self._geometry: dict[str, roofline.ModelGeometry | str] = {}
        self._launches: dict[tuple[str, ServingConfig], roofline.LaunchCount | str] = {}
        # --greenserve-load=sweep: per (model, configuration), the rates its first repetition ran
        self._sweeps: dict[tuple[str, ServingConfig], tuple[float, ...]] = {}

    # -- what can run -------------------------------------------------------------------
    def unavailable_reason(self, config: ServingConfig) -> str | None:
        if config not in self._unavailable:
            reason = None
            if self.settings.transport == "http":
                from .serving import missing_serve_reason  # no fastapi import: find_spec only

                reason = missing_serve_reason()
            reason = reason or self._dtype_reason(config.engine)
            self._unavailable[config] = reason or self.engines[config.engine].unavailable_reason(config.provider)
        return self._unavailable[config]

    def _dtype_reason(self, engine: str) -> str | None:
        """Why ``engine`` cannot serve in --greenserve-dtype (its ``Engine.dtypes`` lack it), or None."""
        dtype = self.settings.dtype
        if dtype in engine_dtypes(self.engines[engine]):
            return None
        able = [name for name, cls in self.engines.items() if dtype in engine_dtypes(cls)]
        return (f"{engine} serves {', '.join(engine_dtypes(self.engines[engine]))} only; --greenserve-dtype={dtype} "
                f"is for {', '.join(able) or 'no registered engine'}")

    def model_unavailable_reason(self, model: str, config: ServingConfig) -> str | None:
        """Why ``config``'s engine cannot serve ``model``'s architecture (e.g. ``compile`` has
        no static decoder for bloom), or None; resolves the model's handle first."""
        cls = self.engines[config.engine]
        check = getattr(cls, "model_unavailable_reason", None)  # engines written against 0.1 lack it
        return check(self.handle(model).architecture) if check is not None else None

    def label(self, config: ServingConfig, load: LoadShape | None = None) -> str:
        """The ``config`` this session's samples of ``config`` carry (``torch-cpu:bf16``,
        ``torch-cpu@http``): what reports, statistics and the gate key items by. A sweep's
        item is its closed:1 sample's label; each of its rates has its own (``load``)."""
        s = self.settings
        load = load or (CLOSED_1 if s.load.sweep else s.load)
        return config_label(config, s.transport, 1, s.dtype, s.stream == "on", load)

    def handle(self, model: str) -> ModelHandle:
        """Resolve (building a replica if needed) the model's weights; raises WeightsUnavailable."""
        if model not in self._handles:
            loaded = self.runner.loaded
            if loaded is not None and loaded.key[0] != model:
                self.runner.close()  # resolving may build a replica: keep one model in memory
            try:
                self._handles[model] = resolve(self.models[model], self.settings.weights,
                                               self.settings.local_paths.get(model), self.settings.cache_dir,
                                               self.settings.seed, progress=self.progress)
            except WeightsUnavailable as exc:
                self._handles[model] = exc
        found = self._handles[model]
        if isinstance(found, WeightsUnavailable):
            raise found
        return found

    def prompts_for(self, model: str) -> tuple[list[str], list[list[int]]]:
        """The session's prompt texts for ``model`` and their token ids (its own tokenizer)."""
        if model not in self._prompts:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.handle(model).ref)
            texts = [p.text for p in make_prompts(tok, self.settings.prompts, self.settings.seed)]
            ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            self._prompts[model] = (texts, ids)
        return self._prompts[model]

    # -- results --------------------------------------------------------------------------
    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(self.settings.report_dir, self.run_id)
            self._machine = machine_info()
            self._store.write_meta(self.meta())
        return self._store

    def meta(self) -> dict:
        """run.json: machine, versions, options, meter notes and the metric registry."""
        s = self.settings
        return {
            "run_id": self.run_id,
            "machine_info": self._machine or machine_info(),
            "versions": library_versions(LIBRARIES),
            "options": run_options(s),
            "meter_notes": self.meters.notes() if self.meters is not None else [],
            # the configurations that ran no sample, and why (their samples are missing, not 0)
            "not_served": self.runner.failures(),
            "metrics": metrics_to_json(self.metrics),
            **self.meta_extra,
        }

    def saved_samples(self) -> list[dict]:
        """This run's samples as saved on disk (what the reports are rendered from)."""
        return read_samples([self.store.run_dir]) if self.samples else []

    # -- measurement ----------------------------------------------------------------------
    def ensure_meters(self):
        """Create the meters on first use, and say once why any of them cannot measure here.

        On a machine whose selected configurations use CUDA, the process's CUDA context is
        created first and held to the end, so that every sample and idle window, those of CPU
        configurations included, is measured in the same device state (an H100 idles at
        ~70 W without a context and ~120 W with one).
        """
        if self.meters is None and self.meters_factory is not None:
            if any(c.provider == "cuda" for c in self.settings.configs):
                why_not = hold_cuda_context()
                self.progress("greenserve: CUDA context held for the whole session (same device state for "
                              "every sample)" if why_not is None else f"greenserve: no CUDA context held: {why_not}")
            self.meters = self.meters_factory()
            for note in self.meters.notes():
                self.progress(f"greenserve meters: {note}")
        return self.meters

    def _engine_options(self, variant: str = "") -> EngineOptions:
        return EngineOptions(threads=self.settings.threads, openvino_precision=self.settings.openvino_precision,
                             ort_spinning=self.settings.ort_spinning == "on", dtype=self.settings.dtype,
                             compile_mode=self.settings.compile_mode, variant=variant,
                             progress=self.progress)

    def _make_target(self, case: Case, handle: ModelHandle, python: str | None = None):
        """What ``case``'s requests go to: the engine itself (``--greenserve-transport=inproc``), or
        an HTTP client of the same engine class served by ``greenserve serve`` in a child process
        (``http``), which the meters' process tree covers as a child of this process."""
        cls = self.engines[case.config.engine]
        if self.settings.transport == "http":
            from .serving.client import HttpTarget

            return HttpTarget(handle, case.config.provider, cls, self._engine_options(case.config.variant),
                              config_name=case.config.name,
                              new_tokens_max=max(self.settings.new_tokens, 512),
                              concurrency=self.settings.concurrency or MAX_IN_FLIGHT, stream=self.settings.stream == "on",
                              python=python)
        return cls(handle, case.config.provider, self._engine_options(case.config.variant))

    def _make_torch(self, model: str, provider: str):
        """``make(dtype)``: the torch engine for ``model`` on ``provider`` in ``dtype`` (the
        session's other engine options), or None when torch cannot run on that provider."""
        def make(dtype: str):
            cls = self.engines.get(REFERENCE_ENGINE)
            if cls is None or cls.unavailable_reason(provider):
                return None
            options = self._engine_options()
            options.dtype = dtype
            return cls(self.handle(model), provider, options)

        return make

    def _reference_args(self, model: str, provider: str) -> tuple:
        texts, ids = self.prompts_for(model)
        return model, provider, self.handle(model).key, texts, ids

    def reference(self, model: str, provider: str) -> list[list[int]] | None:
        """The fp32 torch engine's token ids for this model's prompts on ``provider`` (cached on
        disk), with margins and log-probabilities.

        Computed on demand when torch is not among the selected configurations, so every
        configuration's output is checked. None when torch cannot run on that provider.
        """
        return self.references.get(*self._reference_args(model, provider), self._make_torch(model, provider),
                                   before_compute=self.runner.close)

    def native(self, model: str, provider: str) -> list[list[int]] | None:
        """Torch eager's token ids in the session's dtype (the reference itself in fp32)."""
        try:
            return self.references.native(*self._reference_args(model, provider), self._make_torch(model, provider),
                                          before_compute=self.runner.close)
        except Exception as exc:  # no yardstick: samples in this dtype cannot be judged, but are kept
            self.progress(failure_line(f"greenserve: {model} on {provider}: no torch {self.settings.dtype} "
                                       "yardstick", exc))
            return None

    def scores(self, model: str, provider: str, outputs) -> list[float | None] | None:
        """Per prompt, the fp32 reference model's mean NLL of ``outputs`` (see ReferenceStore.nll).
        Scoring a new continuation loads the reference model, so the loaded target is closed
        first (at most one model in memory; the next sample of it loads it again)."""
        try:
            return self.references.nll(*self._reference_args(model, provider), outputs,
                                       self._make_torch(model, provider), before_compute=self.runner.close)
        except Exception as exc:  # the reference model failing to load or run: the sample is kept, unscored
            self.progress(failure_line(f"greenserve: {model} on {provider}: outputs not scored", exc))
            return None

    def measure(self, case: Case) -> dict:
        """Run every prompt once against ``case``'s model and configuration: one sample, saved
        at once. Raises EngineError (one line) when the configuration cannot be loaded or a
        request fails; the meters are stopped either way and later cases measure normally.

        With ``--greenserve-ab``, the case is a pair: its A side (the A configuration, or this
        configuration in the other environment) and its B side (this configuration) are
        measured back to back, in the order :func:`ab_order` gives; the B sample is returned."""
        if self.settings.ab is None:
            return self._measure_side(case, case.config, role=None)
        self.runner.capacity = 2  # both sides stay loaded: alternating never reloads
        samples = {}
        order = ab_order(self.settings.seed, case.model, case.config.name, case.repetition)
        for position, role in enumerate(order):
            config = self.ab_config(case.config) if role == "A" else case.config
            sample = samples[role] = self._measure_side(case, config, role=role, position=position,
                                                        candidate=case.config)
        return samples["B"]

    def ab_config(self, config: ServingConfig) -> ServingConfig:
        """The A side's configuration for B's ``config``: the --greenserve-ab configuration, or
        ``config`` itself when the A side is another environment (python:PATH)."""
        spec = self.settings.ab
        if spec is None or spec.startswith("python:"):
            return config
        from .configs import parse_config

        return parse_config(spec, self.engines)

    def _ab_python(self) -> str | None:
        spec = self.settings.ab
        return spec[len("python:"):].strip() if spec and spec.startswith("python:") else None

    def _measure_side(self, case: Case, config: ServingConfig, role: str | None, position: int = 0,
                      candidate: ServingConfig | None = None) -> dict:
        meters = self.ensure_meters()
        store = self.store  # creates the run directory and records the machine (and meter notes) first
        python = self._ab_python() if role == "A" else None
        side = Case(case.model, config, case.repetition)
        reference = self.reference(case.model, config.provider)
        native = self.native(case.model, config.provider)
        native_nll = self.scores(case.model, config.provider, native) if native is not None else None
        handle = self.handle(case.model)
        texts, prompt_ids = self.prompts_for(case.model)
        label = f"{case.model} on {config}" + (" (A, other environment)" if python else "")
        # scoring a sample's outputs may close the target (one model in memory): a sweep's next
        # rate loads it again through the same call
        def ensure():
            return self.runner.ensure((case.model, config, role if python else None), label,
                                      lambda: self._make_target(side, handle, python=python), prompt_ids)

        loaded = ensure()
        case = side
        roof = self._roofline(case, handle, loaded.target, prompt_ids, label)  # outside the window
        if not self.settings.load.sweep:
            return self._measure_load(case, self.settings.load, ensure, handle, label, meters, store, reference,
                                      native, native_nll, prompt_ids, roof, role, position, candidate, python)
        return self._sweep(case, ensure, handle, label, meters, store, reference, native, native_nll, prompt_ids,
                           roof)

    def _sweep(self, case: Case, ensure, handle, label: str, meters, store, reference, native, native_nll,
               prompt_ids, roof) -> dict:
        """``--greenserve-load=sweep``: a closed:1 sample, then one Poisson sample per rate.

        The first repetition of a (model, configuration) to run decides the rates (its own, or
        ``load.SWEEP_FACTORS`` times this closed:1 sample's requests/s) and where the sweep stops:
        at the first rate whose latency ran away (``load.runaway``: against this closed:1
        sample's median latency), that rate included. Every later repetition offers the same
        rates, all of them, so each rate's item has one sample per repetition and the same
        label. Returns the closed:1 sample."""
        args = (ensure, handle, label, meters, store, reference, native, native_nll, prompt_ids, roof)
        base = self._measure_load(case, CLOSED_1, *args)
        key = (case.model, case.config)
        known = self._sweeps.get(key)
        rates = known if known is not None else sweep_rates(self.settings.load, base.get("requests_per_s"))
        if not rates:
            self.progress(f"greenserve: {label}: no sweep (closed:1 gave no request rate)")
        ran, why = run_sweep(rates, lambda rate: self._measure_load(case, poisson(rate), *args),
                             base.get("latency_p50_s"), stop=known is None)
        if why is not None:
            self.progress(f"greenserve: {label}: sweep stops, latency ran away: {why}")
        if known is None:
            self._sweeps[key] = tuple(ran)
        return base

    def _measure_load(self, case: Case, load: LoadShape, ensure, handle, label: str, meters, store, reference,
                      native, native_nll, prompt_ids, roof, role: str | None = None, position: int = 0,
                      candidate: ServingConfig | None = None, python: str | None = None) -> dict:
        """One sample of ``case`` under ``load``: its idle window, the measured requests, the sample saved."""
        loaded = ensure()
        idle = self.runner.idle_baseline(label, meters)
        s = self.settings
        try:
            measurement = measure_prompts(loaded.target, prompt_ids, s.new_tokens, meters, idle, load=load,
                                          seed=s.seed, repetition=case.repetition, warmup=s.load_warmup_frac,
                                          cooldown=s.load_cooldown_frac)
        except EngineError as exc:
            self.runner.discard()
            raise EngineError(f"{label}: {exc}") from exc
        versions, threads = loaded.target.versions(), _optional_call(loaded.target, "thread_settings")
        placement, load_info = _optional_call(loaded.target, "placement"), _optional_call(loaded.target, "load_info")
        # after the window: scoring a new continuation may close the target (one model in memory)
        nll = self.scores(case.model, case.config.provider, measurement.outputs) if reference is not None else None
        sample = build_sample(
            run_id=self.run_id, machine=machine_label(self._machine or machine_info()), model=case.model,
            category=self.models[case.model].category, weights=handle.weights, config=case.config,
            repetition=case.repetition, order=len(self.samples) + 1, new_tokens=s.new_tokens,
            prompt_ids=prompt_ids, measurement=measurement, reference=reference,
            versions=versions, metrics=self.metrics, threads=threads, placement=placement,
            min_sample_s=s.min_sample_s, tie_tolerance=s.tie_tolerance,
            transport=s.transport, concurrency=load.clients, dtype=s.dtype, load=load,
            roofline=roof, load_s=loaded.load_s, load_info=load_info, stream=s.stream == "on",
            slo=s.slo, nll=nll, native_outputs=native, native_nll=native_nll)
        if role is not None:  # an interleaved A/B pair: which side, which pair, which came first
            sample.update(ab_role=role, ab_pair=case.repetition, ab_position=position,
                          ab_candidate=self.label(candidate or case.config), ab_environment=python)
            if python and sample["config"] == self.label(case.config):
                sample["config"] = f"{sample['config']}[A]"  # the other environment: its own label
        if self.annotate is not None:
            self.annotate(sample)
        store.append(sample)
        self.samples.append(sample)
        return sample

    def _roofline(self, case: Case, handle: ModelHandle, target, prompt_ids, label: str) -> dict | None:
        """A CUDA sample's roofline fields (``roofline.roofline_fields``), with ``notes`` saying
        why any is missing; None for a CPU sample or with --greenserve-roofline=off.

        Measured after the warm-up and before the idle window, never inside a sample's window:
        the card's copy bandwidth and launch latency once per run, the model's geometry once
        per model, one profiled generation of the first prompt once per (model, configuration),
        in a child process (``launch_profile``; later loads reuse the count). A failure leaves
        its fields None, never the sample. ``target`` is unused: the child loads its own.
        """
        if case.config.provider != "cuda" or self.settings.roofline != "on":
            return None
        notes: list[str] = []
        if self._card is None:
            self.progress("greenserve: measuring the card's copy bandwidth and launch latency (roofline)")
            self._card = {"notes": []}
            for name, measure in (("bandwidth_gb_s", roofline.measure_bandwidth_gb_s),
                                  ("launch_latency_us", roofline.measure_launch_latency_us)):
                try:
                    self._card[name] = measure()
                except Exception as exc:  # a CUDA error, out of memory: the floor it feeds stays None
                    self._card[name] = None
                    self._card["notes"].append(failure_line(f"roofline: {name} not measured", exc))
        notes += self._card["notes"]
        if case.model not in self._geometry:
            try:
                self._geometry[case.model] = roofline.geometry_from_pretrained(
                    handle.ref, roofline.bytes_per_element(self.settings.dtype))
            except Exception as exc:  # an architecture transformers cannot build from its config
                self._geometry[case.model] = failure_line("roofline: no memory floor, the model's geometry is unknown",
                                                          exc)
        key = (case.model, case.config)
        if key not in self._launches:
            new_tokens = self.settings.new_tokens
            if self.settings.transport != "inproc":
                self._launches[key] = "roofline: launches not profiled (the engine runs in the server's process)"
            elif not prompt_ids:
                self._launches[key] = "roofline: launches not profiled (no prompt)"
            else:
                # in a child process: CUPTI would slow every later launch of this one (launch_profile)
                self.progress(f"greenserve: profiling one generation of {label} in a child process (roofline)")
                try:
                    self._launches[key] = profile_in_child(self.engines[case.config.engine], handle,
                                                           case.config.provider,
                                                           self._engine_options(case.config.variant),
                                                           prompt_ids[0], new_tokens)
                except Exception as exc:  # no CUPTI, an engine the profiler cannot see, the child failing
                    self._launches[key] = failure_line("roofline: launches not counted", exc)
        geometry, launches = self._geometry[case.model], self._launches[key]
        if not isinstance(geometry, str):
            geometry = engine_geometry(geometry, self.engines[case.config.engine], case.config.variant)
        notes += [x for x in (geometry, launches) if isinstance(x, str)]
        fields = roofline.roofline_fields(
            geometry=None if isinstance(geometry, str) else geometry,
            mean_context_len=roofline.mean_context_len(prompt_ids, self.settings.new_tokens),
            bandwidth_gb_s=self._card["bandwidth_gb_s"], launch_latency_us=self._card["launch_latency_us"],
            launches=None if isinstance(launches, str) else launches)
        return {**fields, "notes": notes}

    def close(self):
        self.runner.close()
        if self.meters is not None:
            self.meters.close()


def engine_geometry(geometry: roofline.ModelGeometry, engine_cls, variant: str) -> roofline.ModelGeometry:
    """``geometry`` in the bytes an engine reads where it keeps the weights in its own format
    (``weight_bytes_per_param`` per variant, ``kv_bytes_per_element``: llamacpp's GGUF files),
    so a quantised configuration's memory floor is that of the bytes it reads."""
    per_param = getattr(engine_cls, "weight_bytes_per_param", {}).get(variant)
    kv_bytes = getattr(engine_cls, "kv_bytes_per_element", None)
    if per_param is None:
        return geometry
    return replace(geometry, weight_bytes_per_param=per_param,
                   bytes_per_element=kv_bytes or geometry.bytes_per_element)


def _optional_call(target, name: str):
    """What a target's optional method returns (an engine's thread settings, ONNX placement),
    or None for a target without it (an HTTP client reports what its server says, if anything)."""
    method = getattr(target, name, None)
    return method() if callable(method) else None
