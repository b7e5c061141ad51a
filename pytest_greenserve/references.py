"""Reference token ids for the output-consistency check, cached on disk.

The reference of a model on a provider is the ``torch`` engine's greedy output for the
session's prompts. It is computed on demand (also when torch is not among the selected
configurations, so every configuration is checked) and kept under
``<cache>/reference/<model>-<provider>-<digest>.json``; the digest covers the weights, the
prompts, the number of new tokens, the torch/transformers versions, the file format and, for
bf16, the dtype (the bf16 reference is the torch engine in bf16; the session builds it with
the same engine options as every configuration).

The file holds, per prompt, the token ids and the reference's top-2 score gap ("margin") at
each generated step: a configuration that departs from the reference where the reference
itself nearly tied is not wrong (see ``samples.match_rate_tie_aware``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

from .engines.base import library_versions
from .targets import Target

#: bumped when the file's layout changes, so older files are never misread (2: ids and margins)
FORMAT = 2


class Reference(list):
    """The reference token ids per prompt (a list of lists, as before), with ``margins``:
    per prompt, the top-2 score gap at each generated step, or None when not recorded."""

    def __init__(self, token_ids=(), margins: list[list[float]] | None = None):
        super().__init__(list(ids) for ids in token_ids)
        self.margins = margins


class ReferenceStore:
    def __init__(self, cache_dir: Path, new_tokens: int, progress: Callable[[str], None] = print,
                 dtype: str = "fp32"):
        self.cache_dir = Path(cache_dir)
        self.new_tokens = new_tokens
        self.progress = progress
        self.dtype = dtype
        self._known: dict[tuple[str, str], Reference | None] = {}

    def path(self, model: str, provider: str, weights_key: str, texts: Sequence[str]) -> Path:
        parts = [weights_key, provider, list(texts), self.new_tokens, library_versions(("torch", "transformers")),
                 FORMAT]
        if self.dtype != "fp32":  # only then: fp32 references keep the digests (and files) they had
            parts.append(self.dtype)
        key = json.dumps(parts, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.cache_dir / "reference" / f"{model}-{provider}-{digest}.json"

    def get(self, model: str, provider: str, weights_key: str, texts: Sequence[str],
            prompt_ids: Sequence[Sequence[int]], make_reference: Callable[[], Target | None],
            before_compute: Callable[[], None] = lambda: None) -> Reference | None:
        """The reference token ids (and margins), from memory, disk or computed now; None when
        there is no reference engine for ``provider`` (``make_reference`` returns None)."""
        key = (model, provider)
        if key in self._known:
            return self._known[key]
        path = self.path(model, provider, weights_key, texts)
        if path.is_file():
            data = json.loads(path.read_text())
            self._known[key] = Reference(data["token_ids"], data.get("margins"))
            return self._known[key]
        target = make_reference()
        if target is None:
            return None
        before_compute()  # e.g. close the loaded target: at most one model in memory
        dtype = "" if self.dtype == "fp32" else f" ({self.dtype})"
        self.progress(f"greenserve: computing torch-{provider}{dtype} reference tokens for {model}")
        if hasattr(target, "keep_margins"):  # the torch engine: ask for each step's top-2 gap
            target.keep_margins = True
        target.load()
        try:
            gens = [target.generate(p, self.new_tokens) for p in prompt_ids]
        finally:
            target.close()
        margins = [list(g.margins) for g in gens] if all(g.margins is not None for g in gens) else None
        ref = Reference([g.token_ids for g in gens], margins)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": FORMAT, "token_ids": ref, "margins": margins}))
        self._known[key] = ref
        return ref
