"""Serving configurations: a runtime engine paired with an execution provider.

Pure data and parsing; nothing here imports an engine's library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

PROVIDERS = ("cpu", "cuda")


class ConfigError(ValueError):
    """A malformed configuration string; the message is one line meant for the user."""


@dataclass(frozen=True, order=True)
class ServingConfig:
    engine: str
    provider: str

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.provider}"

    def __str__(self) -> str:
        return self.name


def parse_config(text: str, engines: dict) -> ServingConfig:
    """Parse ``"onnx-cpu"`` against the registered ``engines`` (name -> engine class)."""
    text = text.strip()
    engine, sep, provider = text.rpartition("-")
    if not sep or not engine:
        raise ConfigError(f"bad configuration {text!r}: expected ENGINE-PROVIDER, e.g. onnx-cpu")
    if engine not in engines:
        raise ConfigError(f"unknown engine {engine!r} in {text!r}; known engines: {', '.join(sorted(engines))}")
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r} in {text!r}; known providers: {', '.join(PROVIDERS)}")
    supported = getattr(engines[engine], "providers", PROVIDERS)
    if provider not in supported:
        raise ConfigError(
            f"{text!r} does not exist: engine {engine!r} serves only on {', '.join(supported)}"
        )
    return ServingConfig(engine, provider)


def parse_config_list(text: str | Iterable[str], engines: dict) -> list[ServingConfig]:
    """Parse ``"torch-cpu,onnx-cpu"`` (or ``"all"``) into a list without duplicates, in the given order."""
    items = [t for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ConfigError("--greenserve-configs is empty; give e.g. torch-cpu,onnx-cpu or 'all'")
    if [t.strip() for t in items] == ["all"]:
        return all_configs(engines)
    out: list[ServingConfig] = []
    for item in items:
        cfg = parse_config(item, engines)
        if cfg not in out:
            out.append(cfg)
    return out


def all_configs(engines: dict) -> list[ServingConfig]:
    """Every configuration that exists (e.g. 7 for the paper's engines: openvino-cuda does not exist)."""
    return [
        ServingConfig(name, provider)
        for name, cls in engines.items()
        for provider in PROVIDERS
        if provider in getattr(cls, "providers", PROVIDERS)
    ]
