"""Baselines for the CI energy gate: a session's samples saved under a name, and read back.

``<report-dir>/baselines/NAME.json`` (written atomically: a temporary sibling, then a rename)::

    {"kind": "greenserve-baseline", "schema_version": 1, "name": ..., "saved_at": ...,
     "run_id": ..., "machine_info": {...}, "machine": "vm (2 CPUs)", "fingerprint": {...},
     "versions": {...}, "options": {...}, "samples": [...]}

The *fingerprint* is what makes two machines the same hardware for the gate: architecture,
CPU model, CPU count and GPU name (never the hostname: CI runners get a new one every job),
and ``gpus``, the name of every GPU of the host. Each sample is measured on one GPU of its own,
so two hosts with the same GPU models are alike whatever their number of GPUs: the gate compares
the set of GPU models, and only where both sides list them (baselines saved before ``gpus``
existed compare ``gpu`` alone, as they did).
Every refusal is a :class:`BaselineError` whose message is one line. Pure: no pytest.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

BASELINE_KIND = "greenserve-baseline"
BASELINE_SCHEMA = 1
FINGERPRINT_KEYS = ("arch", "cpu_model", "cpu_count", "gpu")
#: The options (run.json's ``options``) that make two sessions the same workload: a change in
#: any of them changes what a request costs, so a comparison across it would read as a
#: regression or an improvement of the serving. Repetitions, models and configurations may differ.
WORKLOAD_KEYS = ("prompts", "new_tokens", "seed", "weights", "dtype", "transport", "load", "load_warmup_frac",
                 "load_cooldown_frac", "concurrency", "threads", "openvino_precision", "ort_spinning", "compile_mode")
#: the option of a workload key whose name is not the key's (``--greenserve-<key with ->``)
_FLAGS = {"load_warmup_frac": "load-warmup", "load_cooldown_frac": "load-cooldown"}


class BaselineError(Exception):
    """A baseline that cannot be used; the message is one line."""


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def fingerprint(machine_info: Mapping[str, Any]) -> dict:
    """The hardware identity of ``machine_info`` (results.machine_info) plus this CPU's model."""
    gpus = machine_info.get("gpus")
    return {"arch": platform.machine(), "cpu_model": machine_info.get("cpu_model") or cpu_model(),
            "cpu_count": machine_info.get("cpu_count"), "gpu": machine_info.get("gpu"),
            "gpus": [g.get("name") for g in gpus] if gpus else None}


def gpu_models(fp: Mapping[str, Any]) -> list[str] | None:
    """The distinct GPU models a fingerprint lists (None: it lists none, e.g. an older baseline)."""
    gpus = fp.get("gpus")
    return sorted({str(g) for g in gpus}) if gpus else None


def baseline_dir(report_dir: Path) -> Path:
    return Path(report_dir) / "baselines"


def save(report_dir: Path, name: str, samples: list[dict], meta: Mapping[str, Any], machine: str,
         now: float | None = None) -> Path:
    """Write baseline ``name`` atomically; returns its path."""
    if not name or "/" in name or os.sep in name or name in (".", "..", "latest"):
        raise BaselineError(f"--greenserve-save={name!r}: a baseline name is a plain file name other than 'latest'")
    info = dict(meta.get("machine_info") or {})
    doc = {"kind": BASELINE_KIND, "schema_version": BASELINE_SCHEMA, "name": name,
           "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "run_id": meta.get("run_id"),
           "machine_info": info, "machine": machine, "fingerprint": fingerprint(info),
           "versions": meta.get("versions") or {}, "options": meta.get("options") or {}, "samples": samples}
    target = baseline_dir(report_dir) / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, default=str, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve(spec: str, report_dir: Path) -> Path:
    """``NAME`` (``<report-dir>/baselines/NAME.json``), ``latest`` (the newest there) or a PATH."""
    spec = spec.strip()
    if spec == "latest":
        found = sorted(baseline_dir(report_dir).glob("*.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise BaselineError(f"--greenserve-compare=latest: no baseline in {baseline_dir(report_dir)}; "
                                f"save one first with --greenserve-save=NAME")
        return found[-1]
    path = Path(spec).expanduser()
    if "/" in spec or os.sep in spec or spec.endswith(".json") or path.exists():
        return path
    return baseline_dir(report_dir) / f"{spec}.json"


def load(path: Path) -> dict:
    """The baseline at ``path``; BaselineError (one line) when missing, truncated or of another schema."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"greenserve baseline {path} does not exist; save one with --greenserve-save=NAME")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BaselineError(f"greenserve baseline {path} is not a JSON text file") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"greenserve baseline {path} is not valid JSON (truncated?): {exc.msg} at line "
                            f"{exc.lineno} column {exc.colno}") from None
    if not isinstance(doc, dict) or doc.get("kind") != BASELINE_KIND:
        raise BaselineError(f"greenserve baseline {path} is not a pytest-greenserve baseline "
                            f"(no \"kind\": \"{BASELINE_KIND}\")")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BaselineError(f"greenserve baseline {path}: bad schema_version {version!r}")
    if version > BASELINE_SCHEMA:
        raise BaselineError(f"greenserve baseline {path}: schema_version {version} is newer than this "
                            f"pytest-greenserve reads ({BASELINE_SCHEMA}); upgrade pytest-greenserve")
    samples = doc.get("samples")
    if not isinstance(samples, list) or not all(isinstance(s, dict) and "model" in s and "config" in s
                                                for s in samples):
        raise BaselineError(f"greenserve baseline {path}: \"samples\" is not a list of samples with model and config")
    if not samples:
        raise BaselineError(f"greenserve baseline {path} holds no samples")
    doc["path"] = str(path)
    return doc


def check_machine(doc: Mapping[str, Any], current: Mapping[str, Any], any_machine: bool = False) -> None:
    """Refuse a baseline measured on other hardware (unless ``any_machine``)."""
    if any_machine:
        return
    theirs = doc.get("fingerprint") or {}
    diff = [f"{k}: {theirs.get(k)!r} there, {current.get(k)!r} here" for k in FINGERPRINT_KEYS
            if theirs.get(k) != current.get(k)]
    there, here = gpu_models(theirs), gpu_models(current)
    if there is not None and here is not None and there != here:
        diff.append(f"GPU models: {', '.join(there)} there, {', '.join(here)} here")
    if diff:
        raise BaselineError(f"greenserve baseline {doc.get('path', doc.get('name'))} was measured on other hardware "
                            f"({'; '.join(diff)}); compare anyway with --greenserve-compare-any-machine")


def check_workload(doc: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """Refuse a baseline measured with another workload (:data:`WORKLOAD_KEYS`), naming the
    first option that differs. A key the baseline does not record (saved by an older version)
    is not compared."""
    theirs = doc.get("options") or {}
    for key in WORKLOAD_KEYS:
        if key in theirs and key in options and theirs[key] != options[key]:
            flag = "--greenserve-" + _FLAGS.get(key, key.replace("_", "-"))
            raise BaselineError(f"greenserve baseline {doc.get('path', doc.get('name'))} was measured with "
                                f"{flag}={_shown(theirs[key])}, this session has {flag}={_shown(options[key])}: "
                                f"compare the same workload, or save a new baseline")


def _shown(value: Any) -> str:
    return "(library default)" if value is None else str(value)


def items(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(str(s.get("model")), str(s.get("config"))) for s in doc.get("samples") or []}


def check_matching(doc: Mapping[str, Any], wanted: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (model, configuration) items both have; BaselineError when there are none."""
    have = items(doc)
    common = have & set(wanted)
    if wanted and not common:
        show = ", ".join(sorted(f"{m} {c}" for m, c in have)[:6])
        raise BaselineError(f"greenserve baseline {doc.get('path', doc.get('name'))} has no item of this session "
                            f"(it has: {show}); choose another baseline or other --greenserve-configs")
    return common
