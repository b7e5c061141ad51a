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
    #: the engine's weight format where it has several (``Engine.variants``: ``q8_0`` in
    #: ``llamacpp-cpu:q8_0``); "" for engines without
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.provider}" + (f":{self.variant}" if self.variant else "")

    def __str__(self) -> str:
        return self.name


def parse_config(text: str, engines: dict) -> ServingConfig:
    """Parse ``"onnx-cpu"`` (or ``"llamacpp-cpu:q8_0"``: ``ENGINE-PROVIDER:VARIANT``) against the
    registered ``engines`` (name -> engine class). An engine with variants and none given gets
    its first (``llamacpp-cpu`` is ``llamacpp-cpu:f16``)."""
    text = text.strip()
    base, colon, variant = text.partition(":")
    engine, sep, provider = base.rpartition("-")
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
    variants = tuple(getattr(engines[engine], "variants", ()))
    if colon and variant not in variants:
        raise ConfigError(f"unknown variant {variant!r} in {text!r}; engine {engine!r} has "
                          + (", ".join(variants) if variants else "none"))
    return ServingConfig(engine, provider, variant if colon else (variants[0] if variants else ""))


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
    """Every configuration that exists (e.g. 7 for the paper's engines: openvino-cuda does not
    exist), one per variant of an engine that has several (``llamacpp-cpu:f16``, ``llamacpp-cpu:q8_0``)."""
    return [
        ServingConfig(name, provider, variant)
        for name, cls in engines.items()
        for provider in PROVIDERS
        if provider in getattr(cls, "providers", PROVIDERS)
        for variant in (tuple(getattr(cls, "variants", ())) or ("",))
    ]
