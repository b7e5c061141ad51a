"""Reference token ids for the output-consistency check, cached on disk.

The reference of a model on a provider is the ``torch`` engine's greedy output for the
session's prompts. It is computed on demand (also when torch is not among the selected
configurations, so every configuration is checked) and kept under
``<cache>/reference/<model>-<provider>-<digest>.json``; the digest covers the weights, the
prompts, the number of new tokens and the torch/transformers versions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

from .engines.base import library_versions
from .targets import Target


class ReferenceStore:
    def __init__(self, cache_dir: Path, new_tokens: int, progress: Callable[[str], None] = print):
        self.cache_dir = Path(cache_dir)
        self.new_tokens = new_tokens
        self.progress = progress
        self._known: dict[tuple[str, str], list[list[int]] | None] = {}

    def path(self, model: str, provider: str, weights_key: str, texts: Sequence[str]) -> Path:
        key = json.dumps([weights_key, provider, list(texts), self.new_tokens,
                          library_versions(("torch", "transformers"))], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.cache_dir / "reference" / f"{model}-{provider}-{digest}.json"

    def get(self, model: str, provider: str, weights_key: str, texts: Sequence[str],
            prompt_ids: Sequence[Sequence[int]], make_reference: Callable[[], Target | None],
            before_compute: Callable[[], None] = lambda: None) -> list[list[int]] | None:
        """The reference token ids, from memory, disk or computed now; None when there is no
        reference engine for ``provider`` (``make_reference`` returns None)."""
        key = (model, provider)
        if key in self._known:
            return self._known[key]
        path = self.path(model, provider, weights_key, texts)
        if path.is_file():
            self._known[key] = json.loads(path.read_text())
            return self._known[key]
        target = make_reference()
        if target is None:
            return None
        before_compute()  # e.g. close the loaded target: at most one model in memory
        self.progress(f"greenserve: computing torch-{provider} reference tokens for {model}")
        target.load()
        try:
            ref = [list(target.generate(p, self.new_tokens).token_ids) for p in prompt_ids]
        finally:
            target.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ref))
        self._known[key] = ref
        return ref
