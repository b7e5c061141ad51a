"""The models: the paper's twelve, the embedded ``mini-*`` defaults, and where weights come from.

Weights come from one of three sources:

* ``hub``: ``from_pretrained(hub_id)`` (respects ``HF_HUB_OFFLINE`` and the local HF cache);
* ``local``: a directory given with ``--greenserve-models=name=/path`` (or a bare path);
* ``replica``: the same architecture and shapes built from the model's shipped config with
  random weights. With a fixed number of generated tokens a replica costs what the real
  model costs to run, so it is an honest stand-in for *cost*, never for *quality*.

``mini-*`` models are small replicas of different paper architectures, built offline in
seconds and cached; they are the embedded default.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .handle import ModelHandle
from .fsutil import build_dir_atomically, marker_problem, write_marker

DATA = resources.files("pytest_greenserve") / "data"


class ModelError(ValueError):
    """Unknown model or unusable model path; the message is one line meant for the user."""


class WeightsUnavailable(RuntimeError):
    """The weights cannot be had here (offline, no local copy); the message says how to proceed."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # transformers model_type
    hub_id: str | None = None
    params: str = ""  # as the paper labels it, e.g. "110M"
    category: int | None = None  # the paper's size category (1: <1B, 2: 1-1.5B, 3: 2-3B), by parameter count
    mini: bool = False

    @property
    def config_path(self):
        return DATA / "configs" / f"{self.name}.json"


PAPER_MODELS = [
    ModelSpec("codeparrot-small", "gpt2", "codeparrot/codeparrot-small", "110M", 1),
    ModelSpec("tiny-starcoder", "gpt_bigcode", "bigcode/tiny_starcoder_py", "164M", 1),
    ModelSpec("pythia-410m", "gpt_neox", "EleutherAI/pythia-410m", "410M", 1),
    ModelSpec("bloom-560m", "bloom", "bigscience/bloom-560m", "560M", 1),
    ModelSpec("starcoderbase-1b", "gpt_bigcode", "bigcode/starcoderbase-1b", "1B", 2),
    ModelSpec("bloomz-1b1", "bloom", "bigscience/bloomz-1b1", "1.1B", 2),
    ModelSpec("tinyllama", "llama", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "1.1B", 2),
    ModelSpec("pythia-1.4b", "gpt_neox", "EleutherAI/pythia-1.4b", "1.4B", 2),
    ModelSpec("codegemma-2b", "gemma", "google/codegemma-2b", "2B", 3),
    ModelSpec("phi2", "phi", "microsoft/phi-2", "2.7B", 3),
    ModelSpec("stablecode-3b", "gpt_neox", "stabilityai/stablecode-instruct-alpha-3b", "3B", 3),
    ModelSpec("stablecode-3b-completion", "gpt_neox", "stabilityai/stablecode-completion-alpha-3b-4k", "3B", 3),
]

# ~1 M parameters: the paper's size category 1 (under 1B), so Tables 4 and 5 place them there
MINI_MODELS = [
    ModelSpec("mini-gpt2", "gpt2", params="1M", category=1, mini=True),  # codeparrot-small's architecture
    ModelSpec("mini-starcoder", "gpt_bigcode", params="1M", category=1, mini=True),  # tiny-starcoder's
    ModelSpec("mini-pythia", "gpt_neox", params="1M", category=1, mini=True),  # pythia's
]

# Outside the default suite: for the ortgenai engine, whose model builder refuses the three
# above (it builds llama, gemma, phi). `-k mini-llama` or --greenserve-models=mini-llama runs it.
EXTRA_MINI_MODELS = [ModelSpec("mini-llama", "llama", params="1M", mini=True)]  # TinyLlama's

REGISTRY: dict[str, ModelSpec] = {m.name: m for m in MINI_MODELS + EXTRA_MINI_MODELS + PAPER_MODELS}
DEFAULT_MODELS = [m.name for m in MINI_MODELS]

# Tiny shapes per architecture family: small enough to build and run in well under a second.
# Random weights need care: with the default initializer_range (0.02) and tied embeddings a
# tiny model repeats one token, which proves nothing about output consistency. A wide init
# and untied embeddings give varied greedy tokens: with 0.02 and tied embeddings all eight families
# emitted one repeated token; with 0.3 and untied ones, 14-16 distinct tokens, the smallest top-1/top-2
# logit gap along the greedy path 0.0034 (stablelm) to 0.11 (docs/architecture.md, "Replicas").
TINY_FAMILIES: dict[str, dict] = {
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "gpt_bigcode": dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, multi_query=True),
    "gpt_neox": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                     rotary_pct=0.25, max_position_embeddings=512),
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4),
    "llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, max_position_embeddings=512),
    "gemma": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                  head_dim=16, intermediate_size=128, max_position_embeddings=512),
    "phi": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                partial_rotary_factor=0.4, max_position_embeddings=512),
    "stablelm": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     intermediate_size=128, partial_rotary_factor=0.25, max_position_embeddings=512),
}
VARIED_INIT = dict(initializer_range=0.3, tie_word_embeddings=False)
# mini-* are a little wider and deeper than the test models so that compute, not only
# framework overhead, shows in their numbers.
MINI_SCALE = {"gpt2": dict(n_embd=128, n_layer=4), "gpt_bigcode": dict(n_embd=128, n_layer=4),
              "gpt_neox": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=512),
              "llama": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=256)}


def tokenizer_dir() -> Path:
    """The project's byte-level BPE, trained offline on Python source (see tools/train_tokenizer.py)."""
    return Path(str(DATA / "tokenizer"))


def load_project_tokenizer():
    from transformers import PreTrainedTokenizerFast

    # model_input_names excludes token_type_ids, which generate() rejects for some families.
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir() / "tokenizer.json"),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_config_dict(architecture: str, vocab_size: int, scale: dict | None = None) -> dict:
    if architecture not in TINY_FAMILIES:
        raise ModelError(f"no tiny shape for architecture {architecture!r}; known: {', '.join(TINY_FAMILIES)}")
    return {"model_type": architecture, "vocab_size": vocab_size, **TINY_FAMILIES[architecture],
            **(scale or {}), **VARIED_INIT}


def replica_config_dict(spec: ModelSpec, vocab_size: int) -> dict:
    if spec.mini:
        return tiny_config_dict(spec.architecture, vocab_size, MINI_SCALE.get(spec.architecture))
    return json.loads(spec.config_path.read_text())


def _fingerprint(cfg: dict, seed: int) -> str:
    import torch
    import transformers

    blob = json.dumps([cfg, seed, torch.__version__, transformers.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_model_dir(cfg: dict, out_dir: Path, seed: int = 0, progress=None) -> Path:
    """Build a random-weight causal LM from ``cfg`` with the project tokenizer; save atomically."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = load_project_tokenizer()
    cfg = dict(cfg)
    model_type = cfg.pop("model_type")
    if cfg.get("vocab_size", 0) < len(tok):
        raise ModelError(f"vocab_size {cfg.get('vocab_size')} is smaller than the project tokenizer ({len(tok)})")
    eos = tok.eos_token_id
    cfg.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    config = AutoConfig.for_model(model_type, **cfg)
    if progress:
        progress(f"building random-weight {model_type} replica in {out_dir}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "greenserve.json").write_text(json.dumps({"weights": "replica", "seed": seed}))
        write_marker(tmp)  # last: lists every file and its size (fsutil.marker_problem)

    build_dir_atomically(out_dir, save)
    return out_dir


def build_tiny_model(architecture: str, out_dir: Path, seed: int = 0) -> Path:
    """A ~0.35 M-parameter model of ``architecture`` with varied greedy tokens (for tests)."""
    return build_model_dir(tiny_config_dict(architecture, len(load_project_tokenizer())), out_dir, seed)


def default_cache_dir() -> Path:
    env = os.environ.get("GREENSERVE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-greenserve"


def parse_model_list(text: str, registry: dict[str, ModelSpec] | None = None) -> tuple[list[str], dict[str, str]]:
    """Parse ``--greenserve-models``: ``name``, ``name=/path`` or a bare path, comma-separated.

    Names are checked against ``registry`` (default: the built-in models; the plugin passes the
    models registered through ``pytest_greenserve_register_models`` too). Returns the model
    names in order and the local paths given for some of them.
    """
    registry = REGISTRY if registry is None else registry
    names: list[str] = []
    paths: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item == "all":
            names += [m for m in registry if m not in names]
            continue
        if item == "paper":
            names += [m.name for m in PAPER_MODELS if m.name not in names]
            continue
        name, sep, path = item.partition("=")
        if sep:
            if not Path(path).is_dir():
                raise ModelError(f"model path {path!r} for {name!r} is not a directory")
            paths[name] = path
        elif os.sep in item or Path(item).is_dir():
            if not (Path(item) / "config.json").is_file():
                raise ModelError(f"{item!r} is not a model directory (no config.json)")
            name = Path(item).resolve().name
            paths[name] = item
        elif name not in registry:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(registry)} (or name=/local/path)")
        if name not in names:
            names.append(name)
    if not names:
        raise ModelError("--greenserve-models is empty")
    return names, paths


def spec_for(name: str, local_path: str | None = None) -> ModelSpec:
    """The registered spec of ``name``, or one read from ``local_path``'s config.json.

    A local path is checked even for a registered name; raises ModelError (one line).
    """
    cfg = _local_config(name, local_path) if local_path is not None else None
    if name in REGISTRY:
        return REGISTRY[name]
    if cfg is None:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    return ModelSpec(name, str(cfg.get("model_type", "unknown")))


def _local_config(name: str, local_path: str) -> dict:
    """The config.json of a local model directory; ModelError if there is none to read."""
    path = Path(local_path) / "config.json"
    if not path.is_file():
        raise ModelError(f"model path {local_path!r} for {name!r} has no config.json "
                         f"(expected a Hugging Face model directory)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model path {local_path!r} for {name!r}: cannot read config.json "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"model path {local_path!r} for {name!r}: config.json is not a JSON object")
    return cfg


def _hub_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cached(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:
        return False


def resolve(spec: ModelSpec, weights: str, local_path: str | None, cache_dir: Path,
            seed: int = 0, progress=None) -> ModelHandle:
    """Find (or build) the weights for ``spec`` and return what an engine needs to load it.

    Raises WeightsUnavailable with a one-line way forward when the weights cannot be had here.
    """
    if local_path:
        ref, kind = str(Path(local_path).resolve()), "local"
        key = f"{spec.name}@local-{weights_stamp(Path(ref))}"
    elif spec.mini or weights == "replica":
        tok_len = len(load_project_tokenizer())
        cfg = replica_config_dict(spec, tok_len)
        fp = _fingerprint(cfg, seed)
        out = cache_dir / "models" / f"{spec.name}-replica-{fp}"
        problem = marker_problem(out) if out.exists() else "absent"
        if problem is not None:
            if problem != "absent" and progress:
                progress(f"greenserve: replica {out} is incomplete ({problem}); rebuilding it")
            build_model_dir(cfg, out, seed, progress=progress)
        ref, kind, key = str(out), "replica", f"{spec.name}@replica-{fp}"
    else:  # hub, or auto without a local path
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if not _hub_cached(spec.hub_id) and (offline or not _hub_reachable()):
            why = "HF_HUB_OFFLINE is set" if offline else "the model hub is unreachable"
            raise WeightsUnavailable(
                f"{spec.name}: weights for {spec.hub_id} are not cached and {why}; pass "
                f"--greenserve-models={spec.name}=/local/path, allow network access, "
                f"or use --greenserve-weights=replica for random weights of the same shape"
            )
        ref, kind, key = spec.hub_id, "hub", None  # keyed by its revision once config.json is in the cache
    return _handle(spec, ref, kind, key, cache_dir)


def weights_stamp(directory: Path) -> str:
    """What identifies a local model's weights: a digest of every file's name, size and
    modification time (hidden files and folders aside). Replacing the weights, the tokenizer
    or the config changes it, so exports and reference tokens made from the old ones are not
    reused; hashing the contents would cost seconds per gigabyte at every session."""
    entries = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        st = p.stat()
        entries.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:12]


def hub_revision(hub_id: str) -> str | None:
    """The commit of ``hub_id`` in the local hub cache (the snapshot that refs/main names), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # an unreadable hub cache: the revision is unknown, which is not an error
        return None
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _handle(spec: ModelSpec, ref: str, kind: str, key: str | None, cache_dir: Path) -> ModelHandle:
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(ref)  # a hub model's config.json lands in the hub cache here
    if key is None:  # a hub model: keyed by its revision, so a new upload never reuses older exports
        revision = hub_revision(ref)
        key = f"{spec.name}@hub-{revision[:12]}" if revision else f"{spec.name}@hub"
    eos = config.eos_token_id
    try:
        gen = GenerationConfig.from_pretrained(ref)
        eos = gen.eos_token_id if gen.eos_token_id is not None else eos
    except OSError:
        pass
    eos_ids = tuple(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
    pad = config.pad_token_id if config.pad_token_id is not None else (eos_ids[0] if eos_ids else None)
    return ModelHandle(name=spec.name, ref=ref, key=key, architecture=config.model_type,
                       cache_dir=cache_dir, eos_token_ids=eos_ids, pad_token_id=pad, weights=kind)
