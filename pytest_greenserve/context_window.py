"""A model's context window: the most positions (prompt plus generated tokens) it was built for.

One place for the fact, read by the server (a request over it gets a 400 naming the limit) and
by the ``compile`` engine (its KV cache never grows past it). Families name it differently in
config.json; ALiBi models (bloom) have no fixed window, and then the answer is None: no limit
is known, so none is enforced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

#: config.json keys that hold the window, in the order they are trusted
WINDOW_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length", "max_seq_len")


def context_window(config: Mapping[str, Any] | Any) -> int | None:
    """The window of a config (a dict or a transformers config object), or None where it has none."""
    for key in WINDOW_KEYS:
        value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def context_window_of(ref: str) -> int | None:
    """The window of the model at ``ref`` (a local directory, or a hub id already in the local
    cache); None when its config cannot be read here or names no window."""
    path = Path(ref) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, "config.json")
        except Exception:
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return context_window(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
