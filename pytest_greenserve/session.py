"""One greenserve session: the plan of cases, and the measurement of one sample.

No pytest here: ``plugin.py`` turns options into :class:`Settings`, asks :meth:`plan` for
the cases to parametrize, and calls :meth:`measure` from the test's fixture.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .configs import ServingConfig
from .engines.base import Engine, EngineError, EngineOptions, ModelHandle, library_versions
from .models import ModelSpec, WeightsUnavailable, resolve
from .prompts import make_prompts
from .results import ResultsStore, machine_info, machine_label, new_run_id

LIBRARIES = ("pytest-greenserve", "torch", "transformers", "optimum", "optimum-onnx", "optimum-intel",
             "onnxruntime", "onnxruntime-gpu", "openvino", "psutil", "nvidia-ml-py", "pingouin")


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    local_paths: dict
    configs: tuple[ServingConfig, ...]
    runs: int = 3
    prompts: int | None = None  # None: all 164
    new_tokens: int = 32
    seed: int = 0
    weights: str = "auto"  # auto | hub | replica
    report_dir: Path = Path("reports")
    cache_dir: Path = Path(".cache")
    warmup: int = 2  # requests sent after each load, before measuring
    idle_s: float = 5.0  # idle baseline before each configuration
    cooldown_s: float = 0.0  # rest between configurations
    threads: int | None = None
    openvino_precision: str = "f32"


@dataclass(frozen=True)
class Case:
    model: str
    config: ServingConfig
    repetition: int

    @property
    def id(self) -> str:
        return f"{self.model}-{self.config.engine}-{self.config.provider}-r{self.repetition}"


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


@dataclass
class _Loaded:
    model: str
    config: ServingConfig
    engine: Engine
    idle: object = None  # meters' IdleBaseline for this load


class GreenserveSession:
    def __init__(self, settings: Settings, engines: dict[str, type[Engine]], models: dict[str, ModelSpec],
                 meters, progress: Callable[[str], None] = print):
        self.settings = settings
        self.engines = engines
        self.models = models
        self.meters = meters
        self.progress = progress
        self.run_id = new_run_id()
        self.samples: list[dict] = []
        self._store: ResultsStore | None = None
        self._handles: dict[str, ModelHandle | Exception] = {}
        self._prompts: dict[str, tuple[list[str], list[list[int]]]] = {}
        self._references: dict[tuple[str, str], list[list[int]]] = {}
        self._unavailable: dict[ServingConfig, str | None] = {}
        self._failed: dict[tuple[str, ServingConfig], str] = {}
        self._idles: dict[tuple[str, ServingConfig], object] = {}
        self._loaded: _Loaded | None = None
        self._order = 0
        self._machine = None
        self.final_rows: list[dict] = []  # the saved samples, read back once at session end

    # -- what can run -------------------------------------------------------------------
    def unavailable_reason(self, config: ServingConfig) -> str | None:
        if config not in self._unavailable:
            cls = self.engines[config.engine]
            self._unavailable[config] = cls.unavailable_reason(config.provider)
        return self._unavailable[config]

    def handle(self, model: str) -> ModelHandle:
        """Resolve (building a replica if needed) the model's weights; raises WeightsUnavailable."""
        if model not in self._handles:
            if self._loaded is not None and self._loaded.model != model:
                self._close_loaded()  # resolving may build a replica: keep one model in memory
            spec = self.models[model]
            try:
                self._handles[model] = resolve(spec, self.settings.weights, self.settings.local_paths.get(model),
                                               self.settings.cache_dir, self.settings.seed, progress=self.progress)
            except WeightsUnavailable as exc:
                self._handles[model] = exc
        found = self._handles[model]
        if isinstance(found, Exception):
            raise found
        return found

    # -- results --------------------------------------------------------------------------
    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(self.settings.report_dir, self.run_id)
            self._machine = machine_info()
            self._store.write_meta(self.meta())
        return self._store

    def meta(self) -> dict:
        s = self.settings
        return {
            "run_id": self.run_id,
            "machine_info": self._machine or machine_info(),
            "versions": library_versions(LIBRARIES),
            "options": {"models": list(s.models), "configs": [c.name for c in s.configs], "runs": s.runs,
                        "prompts": s.prompts, "new_tokens": s.new_tokens, "seed": s.seed, "weights": s.weights,
                        "warmup": s.warmup, "idle_s": s.idle_s, "cooldown_s": s.cooldown_s},
            "meter_notes": self.meters.notes() if self.meters is not None else [],
        }

    # -- measurement ----------------------------------------------------------------------
    def prompts_for(self, model: str) -> tuple[list[str], list[list[int]]]:
        if model not in self._prompts:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.handle(model).ref)
            prompts = make_prompts(tok, self.settings.prompts, self.settings.seed)
            texts = [p.text for p in prompts]
            ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            self._prompts[model] = (texts, ids)
        return self._prompts[model]

    def _engine_options(self) -> EngineOptions:
        return EngineOptions(threads=self.settings.threads, openvino_precision=self.settings.openvino_precision,
                             progress=self.progress)

    def _close_loaded(self):
        if self._loaded is not None:
            self._loaded.engine.close()
            self._loaded = None

    def _reference_path(self, model: str, provider: str) -> Path:
        texts, _ = self.prompts_for(model)
        key = json.dumps([self.handle(model).key, provider, texts, self.settings.new_tokens,
                          library_versions(("torch", "transformers"))], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.settings.cache_dir / "reference" / f"{model}-{provider}-{digest}.json"

    def reference(self, model: str, provider: str) -> list[list[int]] | None:
        """The torch engine's token ids for this model's prompts on ``provider`` (cached on disk).

        Computed on demand when torch is not among the selected configurations, so every
        configuration's output is checked. None when torch cannot run on that provider.
        """
        key = (model, provider)
        if key in self._references:
            return self._references[key]
        path = self._reference_path(model, provider)
        if path.is_file():
            self._references[key] = json.loads(path.read_text())
            return self._references[key]
        if "torch" not in self.engines or self.engines["torch"].unavailable_reason(provider):
            return None
        self._close_loaded()  # at most one model in memory
        self.progress(f"greenserve: computing torch-{provider} reference tokens for {model}")
        engine = self.engines["torch"](self.handle(model), provider, self._engine_options())
        engine.load()
        try:
            _, ids = self.prompts_for(model)
            ref = [engine.generate(p, self.settings.new_tokens).token_ids for p in ids]
        finally:
            engine.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ref))
        self._references[key] = ref
        return ref

    def _ensure_loaded(self, case: Case) -> _Loaded:
        loaded = self._loaded
        if loaded and loaded.model == case.model and loaded.config == case.config:
            return loaded
        key = (case.model, case.config)
        if key in self._failed:
            raise EngineError(self._failed[key])
        self._close_loaded()
        if loaded is not None and self.settings.cooldown_s > 0:
            self.progress(f"greenserve: cooling down {self.settings.cooldown_s:g} s between configurations")
            time.sleep(self.settings.cooldown_s)
        self.reference(case.model, case.config.provider)
        handle = self.handle(case.model)
        engine = self.engines[case.config.engine](handle, case.config.provider, self._engine_options())
        self.progress(f"greenserve: loading {case.model} on {case.config}")
        try:
            engine.load()
            _, ids = self.prompts_for(case.model)
            for p in ids[: self.settings.warmup]:
                engine.generate(p, self.settings.new_tokens)
        except EngineError as exc:
            engine.close()
            self._failed[key] = str(exc)
            raise
        except Exception as exc:  # an engine's library failing: still one line for the user
            engine.close()
            msg = f"{case.config} could not serve {case.model}: {type(exc).__name__}: {exc}".splitlines()[0]
            self._failed[key] = msg
            raise EngineError(msg) from exc
        self._loaded = _Loaded(case.model, case.config, engine, self._idle_baseline(case))
        return self._loaded

    def _idle_baseline(self, case: Case):
        """Idle power with this configuration loaded, measured at its first load.

        In the shuffled order a configuration is loaded again and again; measuring idle at
        every load would multiply the idle time by the repetitions for little gain, so the
        baseline of the first load is reused (it is stored with every sample).
        """
        key = (case.model, case.config)
        if key not in self._idles:
            idle = None
            if self.meters is not None and self.settings.idle_s > 0:
                self.progress(f"greenserve: measuring idle power for {self.settings.idle_s:g} s "
                              f"({case.model} on {case.config} loaded)")
                idle = self.meters.measure_idle(self.settings.idle_s, progress=self.progress)
            self._idles[key] = idle
        return self._idles[key]

    def measure(self, case: Case) -> dict:
        """Run every prompt once against ``case``'s model and configuration: one sample."""
        store = self.store  # creates the run directory and records the machine first
        loaded = self._ensure_loaded(case)
        texts, prompt_ids = self.prompts_for(case.model)
        n_new = self.settings.new_tokens
        latencies, ttfts, outputs = [], [], []
        started_at = time.time()
        if self.meters is not None:
            self.meters.start()
        t0 = time.perf_counter()
        for ids in prompt_ids:
            t = time.perf_counter()
            gen = loaded.engine.generate(ids, n_new)
            latencies.append(time.perf_counter() - t)
            ttfts.append(gen.ttft_s)
            outputs.append(gen.token_ids)
        time_s = time.perf_counter() - t0
        energy = self.meters.stop(idle=loaded.idle) if self.meters is not None else {}
        sample = self._sample(case, texts, prompt_ids, outputs, latencies, ttfts, time_s, energy, started_at)
        store.append(sample)
        self.samples.append(sample)
        return sample

    def _sample(self, case, texts, prompt_ids, outputs, latencies, ttfts, time_s, energy, started_at) -> dict:
        handle = self.handle(case.model)
        n_new = self.settings.new_tokens
        tokens = sum(len(o) for o in outputs)
        reference = self.reference(case.model, case.config.provider)
        if reference is not None:
            match_rate = sum(a == b for a, b in zip(outputs, reference)) / len(outputs)
        else:
            match_rate = None
        lat_sorted = sorted(latencies)
        known_ttfts = [t for t in ttfts if t is not None]
        self._order += 1
        sample = {
            "run_id": self.run_id,
            "machine": machine_label(self._machine or machine_info()),
            "model": case.model,
            "weights": handle.weights,
            "engine": case.config.engine,
            "provider": case.config.provider,
            "config": case.config.name,
            "repetition": case.repetition,
            "order": self._order,
            "requests": len(outputs),
            "new_tokens": n_new,
            "tokens_generated": tokens,
            "prompt_tokens_mean": statistics.fmean(len(p) for p in prompt_ids),
            "time_s": time_s,
            "latency_mean_s": statistics.fmean(latencies),
            "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": lat_sorted[min(len(lat_sorted) - 1, int(0.95 * len(lat_sorted)))],
            "ttft_mean_s": statistics.fmean(known_ttfts) if known_ttfts else None,
            "ms_per_token": 1000 * time_s / tokens if tokens else None,
            "match_rate": match_rate,
            "error_prone": None if match_rate is None else match_rate < 1.0,
            **{k: v for k, v in energy.items() if k != "meter_notes"},
            "latencies_s": latencies,
            "ttfts_s": ttfts,
            "token_ids_digest": hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16],
            "versions": self._loaded.engine.versions() if self._loaded else {},
            "meter_notes": energy.get("meter_notes", []),
            "started_at": started_at,
            "finished_at": time.time(),
        }
        # gross energy per generated token, derived by division (meters read whole samples)
        energy_j = sample.get("energy_total_j")
        sample["j_per_token"] = energy_j / tokens if (energy_j is not None and tokens) else None
        return sample

    def close(self):
        self._close_loaded()
        if self.meters is not None:
            self.meters.close()

    # -- session end ----------------------------------------------------------------------
    meter_factory: Callable[[], object] | None = None
    report_paths: dict | None = None

    def ensure_meters(self):
        """Create the meters on first use, and say once why any of them cannot measure here."""
        if self.meters is None and self.meter_factory is not None:
            self.meters = self.meter_factory()
            for note in self.meters.notes():
                self.progress(f"greenserve meters: {note}")

    def write_reports(self) -> dict:
        """Read this run's samples back as saved, once, and render every report from them."""
        from .report import write_reports
        from .results import read_samples

        self.final_rows = read_samples([self.store.run_dir])
        meta = self.meta()
        self.store.write_meta(meta)
        return write_reports(self.final_rows, self.store.run_dir, meta)

    def summary_lines(self) -> list[str]:
        from .report import terminal_summary

        html = (self.report_paths or {}).get("html")
        lines = terminal_summary(self.final_rows, report_path=html)
        lines.append(f"greenserve samples: {self.store.samples_path}")
        return lines
