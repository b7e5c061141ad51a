"""The paper's model registry, its shipped configs and ``--greenserve-models`` parsing.

Replicas are built from ``pytest_greenserve/data/configs/<name>.json``: those must hold the real
models' shapes, or a replica would not cost what the real model costs. Models are built on the
meta device, so no memory is allocated and the whole file runs in seconds.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pytest_greenserve.models import (
    PAPER_MODELS,
    REGISTRY,
    ModelError,
    load_project_tokenizer,
    parse_model_list,
    replica_config_dict,
)

PAPER = {m.name: m for m in PAPER_MODELS}

# The paper's labels are rounded names, not counts. A band of -20% / +30% around the label passes
# every true shape (codegemma-2b, labelled "2B", really has 2.51B parameters, as Gemma-2B does) and
# fails on a wrong one (a wrong width, depth or vocabulary moves the count far more).
LOW, HIGH = 0.8, 1.3


def parse_size(label: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([MB])", label)
    assert m, label
    return float(m.group(1)) * (1e6 if m.group(2) == "M" else 1e9)


def load_config(name: str):
    cfg = dict(json.loads(PAPER[name].config_path.read_text()))
    model_type = cfg.pop("model_type")
    return model_type, AutoConfig.for_model(model_type, **cfg)


def meta_param_count(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # Count shared (tied) tensors once, as the hub's numbers do.
    return sum(p.numel() for p in model.parameters())


def test_twelve_paper_models():
    assert len(PAPER_MODELS) == 12
    assert all(m.hub_id and m.params and m.category in (1, 2, 3) for m in PAPER_MODELS)


@pytest.mark.parametrize("name", list(PAPER))
def test_shipped_config_matches_registry(name):
    spec = PAPER[name]
    raw = json.loads(spec.config_path.read_text())
    assert raw["model_type"] == spec.architecture
    model_type, config = load_config(name)
    assert config.model_type == spec.architecture
    assert replica_config_dict(spec, 2048) == raw


@pytest.mark.parametrize("name", list(PAPER))
def test_replica_parameter_count_matches_paper_size(name):
    spec = PAPER[name]
    _, config = load_config(name)
    n = meta_param_count(config)
    expected = parse_size(spec.params)
    print(f"{name}: {n:,} parameters (paper: {spec.params})")
    assert LOW * expected <= n <= HIGH * expected, f"{name}: {n:,} parameters, paper says {spec.params}"


@pytest.mark.parametrize("name", list(PAPER))
def test_project_tokenizer_fits_every_paper_vocab(name):
    tok = load_project_tokenizer()
    _, config = load_config(name)
    assert len(tok) == 2048
    ids = tok("def f(x):\n    return x + 1\n")["input_ids"]
    assert ids and max(ids) < len(tok) <= config.vocab_size
    assert tok.eos_token_id < config.vocab_size and tok.pad_token_id < config.vocab_size


def test_size_categories_follow_the_paper():
    for m in PAPER_MODELS:
        size = parse_size(m.params)
        assert m.category == (1 if size < 1e9 else 2 if size <= 1.5e9 else 3), m.name


# --- parse_model_list ---------------------------------------------------------------------------


def test_unknown_model_is_a_one_line_error_naming_known_models():
    with pytest.raises(ModelError) as err:
        parse_model_list("no-such-model")
    msg = str(err.value)
    assert "\n" not in msg
    assert "no-such-model" in msg
    assert "codeparrot-small" in msg and "mini-gpt2" in msg


def test_named_path_must_be_a_directory(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        parse_model_list(f"mymodel={f}")
    with pytest.raises(ModelError, match="not a directory"):
        parse_model_list(f"mymodel={tmp_path / 'missing'}")


def test_bare_path_to_model_dir(tmp_path):
    d = tmp_path / "my-local-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    names, paths = parse_model_list(str(d))
    assert names == ["my-local-model"]
    assert paths == {"my-local-model": str(d)}


def test_bare_path_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        parse_model_list(str(tmp_path))


def test_named_path_and_registry_names(tmp_path):
    names, paths = parse_model_list(f"mini-gpt2, mine={tmp_path}, mini-gpt2")
    assert names == ["mini-gpt2", "mine"]
    assert paths == {"mine": str(tmp_path)}


def test_paper_and_all_keywords():
    names, paths = parse_model_list("paper")
    assert names == [m.name for m in PAPER_MODELS] and paths == {}
    names, _ = parse_model_list("all")
    assert names == list(REGISTRY)


def test_empty_list_is_an_error():
    with pytest.raises(ModelError):
        parse_model_list(" , ")
