"""The fp32 torch reference every configuration is checked against, cached on disk.

The reference of a model on a provider is the ``torch`` engine's greedy output in fp32 for the
session's prompts, whatever ``--greenserve-dtype`` is. It is computed on demand (also when
torch is not among the selected configurations, so every configuration is checked) and kept
under ``<cache>/reference/<model>-<provider>-<digest>.json``; the digest covers the model
handle's key (``ModelHandle.key``: which weights), the prompts, the number of new tokens, the
torch/transformers versions and the file format, and the file repeats the key, which is checked
when it is read.

The file holds, per prompt, the token ids, the reference's top-2 score gap ("margin") at each
generated step (a configuration that departs from the reference where the reference itself
nearly tied is not wrong: ``samples.match_rate_tie_aware``) and the log-probability of each
token it chose (its own negative log-likelihood, for the quality score: ``quality.py``).

Beside it, in the same directory:

* ``...-<digest>.nll.json``: the reference model's mean NLL (nats per token) of other
  continuations of the same prompts, teacher-forced once per distinct continuation;
* ``<model>-<provider>-<dtype>-native-<digest>.json``: the native path's token ids (torch eager
  in a dtype other than fp32), the yardstick a configuration in that dtype is judged against.

Every file is written atomically (a temporary file, then a rename). A file that cannot be read
(torn, corrupt, another key) is rebuilt, with a one-line note, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

from .engines.base import library_versions
from .fsutil import write_text_atomically
from .quality import mean_nll
from .targets import Target

#: bumped when a file's layout changes, so older files are never misread (2: ids and margins;
#: 3: fp32 whatever the session's dtype, chosen tokens' log-probabilities, the handle key inside)
FORMAT = 3

#: makes the reference (or native) torch engine in a dtype, or None when torch cannot serve here
MakeTorch = Callable[[str], "Target | None"]


class Reference(list):
    """The reference token ids per prompt (a list of lists, as before), with ``margins`` (per
    prompt, the top-2 score gap at each generated step) and ``logprobs`` (per prompt, the
    log-probability of each chosen token); either is None when not recorded."""

    def __init__(self, token_ids=(), margins: list[list[float]] | None = None,
                 logprobs: list[list[float]] | None = None):
        super().__init__(list(ids) for ids in token_ids)
        self.margins = margins
        self.logprobs = logprobs

    @property
    def nll(self) -> list[float | None] | None:
        """Per prompt, the reference's mean negative log-likelihood of its own continuation."""
        return None if self.logprobs is None else [mean_nll(lp) for lp in self.logprobs]


def write_atomically(path: Path, data) -> None:
    """``path`` holds all of ``data`` as JSON or keeps what it held: never a torn file."""
    write_text_atomically(path, json.dumps(data))


def continuation_key(prompt: Sequence[int], continuation: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([list(prompt), list(continuation)]).encode()).hexdigest()[:24]


class ReferenceStore:
    """The session's references, native paths and NLL scores: from memory, disk, or computed.

    ``dtype``: the session's (``--greenserve-dtype``); the reference is fp32 regardless, and
    the native path is torch in this dtype.
    """

    def __init__(self, cache_dir: Path, new_tokens: int, progress: Callable[[str], None] = print,
                 dtype: str = "fp32"):
        self.cache_dir = Path(cache_dir)
        self.new_tokens = new_tokens
        self.progress = progress
        self.dtype = dtype
        self._known: dict[tuple[str, str], Reference | None] = {}
        self._native: dict[tuple[str, str], list[list[int]] | None] = {}
        self._nll: dict[Path, dict[str, float]] = {}

    # -- files ------------------------------------------------------------------------
    def path(self, model: str, provider: str, weights_key: str, texts: Sequence[str]) -> Path:
        parts = [weights_key, provider, list(texts), self.new_tokens, library_versions(("torch", "transformers")),
                 FORMAT]
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / "reference" / f"{model}-{provider}-{digest}.json"

    def native_path(self, model: str, provider: str, weights_key: str, texts: Sequence[str]) -> Path:
        ref = self.path(model, provider, weights_key, texts)
        return ref.with_name(f"{model}-{provider}-{self.dtype}-native-{ref.stem.rsplit('-', 1)[1]}.json")

    def _read(self, path: Path, weights_key: str, fields: tuple[str, ...]) -> dict | None:
        """The file's JSON when it is whole, of this format and key, and has ``fields``; else None,
        saying why (once, one line) when the file exists but cannot be used."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("format") != FORMAT or data.get("key") != weights_key:
                raise ValueError(f"format {data.get('format')!r}, key {data.get('key')!r}")
            missing = [f for f in fields if f not in data]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            return data
        except (OSError, ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            first = (str(exc).splitlines() or [""])[0]
            self.progress(f"greenserve: {path} cannot be read ({type(exc).__name__}: {first}); rebuilding it")
            return None

    # -- the fp32 reference -----------------------------------------------------------
    def get(self, model: str, provider: str, weights_key: str, texts: Sequence[str],
            prompt_ids: Sequence[Sequence[int]], make_reference: MakeTorch,
            before_compute: Callable[[], None] = lambda: None) -> Reference | None:
        """The fp32 reference token ids (with margins and log-probabilities), from memory, disk
        or computed now; None when there is no reference engine for ``provider``
        (``make_reference`` returns None)."""
        key = (model, provider)
        if key in self._known:
            return self._known[key]
        path = self.path(model, provider, weights_key, texts)
        data = self._read(path, weights_key, ("token_ids",))
        if data is not None and len(data["token_ids"]) == len(prompt_ids):
            self._known[key] = Reference(data["token_ids"], data.get("margins"), data.get("logprobs"))
            return self._known[key]
        target = make_reference("fp32")
        if target is None:
            return None
        before_compute()  # e.g. close the loaded target: at most one model in memory
        self.progress(f"greenserve: computing torch-{provider} fp32 reference tokens for {model}")
        gens = self._generate(target, prompt_ids, keep_scores=True)
        margins = [list(g.margins) for g in gens] if all(g.margins is not None for g in gens) else None
        logprobs = ([list(g.logprobs) for g in gens]
                    if all(getattr(g, "logprobs", None) is not None for g in gens) else None)
        ref = Reference([g.token_ids for g in gens], margins, logprobs)
        write_atomically(path, {"format": FORMAT, "key": weights_key, "dtype": "fp32", "token_ids": ref,
                                "margins": margins, "logprobs": logprobs})
        self._known[key] = ref
        return ref

    def _generate(self, target: Target, prompt_ids, keep_scores: bool = False):
        if keep_scores and hasattr(target, "keep_margins"):  # the torch engine: margins and log-probs
            target.keep_margins = True
        target.load()
        try:
            return [target.generate(p, self.new_tokens) for p in prompt_ids]
        finally:
            target.close()

    # -- the native path ----------------------------------------------------------------
    def native(self, model: str, provider: str, weights_key: str, texts: Sequence[str],
               prompt_ids: Sequence[Sequence[int]], make_reference: MakeTorch,
               before_compute: Callable[[], None] = lambda: None) -> list[list[int]] | None:
        """Torch eager's token ids in the session's dtype: the fp32 reference itself in fp32,
        else computed once and cached; None when torch cannot serve here."""
        if self.dtype == "fp32":
            ref = self.get(model, provider, weights_key, texts, prompt_ids, make_reference, before_compute)
            return None if ref is None else [list(ids) for ids in ref]
        key = (model, provider)
        if key in self._native:
            return self._native[key]
        path = self.native_path(model, provider, weights_key, texts)
        data = self._read(path, weights_key, ("token_ids",))
        if data is not None and len(data["token_ids"]) == len(prompt_ids):
            self._native[key] = data["token_ids"]
            return self._native[key]
        target = make_reference(self.dtype)
        if target is None:
            return None
        before_compute()
        self.progress(f"greenserve: computing torch-{provider} {self.dtype} tokens for {model} "
                      f"(the native path its {self.dtype} configurations are judged against)")
        ids = [g.token_ids for g in self._generate(target, prompt_ids)]
        write_atomically(path, {"format": FORMAT, "key": weights_key, "dtype": self.dtype, "token_ids": ids})
        self._native[key] = ids
        return ids

    # -- NLL of other continuations ---------------------------------------------------------
    def nll(self, model: str, provider: str, weights_key: str, texts: Sequence[str],
            prompt_ids: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
            make_reference: MakeTorch, before_compute: Callable[[], None] = lambda: None
            ) -> list[float | None] | None:
        """Per prompt, the fp32 reference model's mean NLL (nats per token) of ``continuations``.

        A continuation equal to the reference's takes the reference's own log-probabilities; the
        others are teacher-forced on the fp32 reference model, once per distinct (prompt,
        continuation) ever (cached on disk beside the reference). None without a reference or its
        log-probabilities; an entry is None for an empty continuation."""
        ref = self.get(model, provider, weights_key, texts, prompt_ids, make_reference, before_compute)
        if ref is None or ref.logprobs is None:
            return None
        path = self.path(model, provider, weights_key, texts).with_suffix(".nll.json")
        cache = self._nll_cache(path, weights_key)
        own = ref.nll
        todo = [(p, c) for p, c, r in zip(prompt_ids, continuations, ref)
                if list(c) != list(r) and c and continuation_key(p, c) not in cache]
        if todo:
            scorer = make_reference("fp32")
            if scorer is None or not hasattr(scorer, "continuation_logprobs"):
                return None
            before_compute()
            self.progress(f"greenserve: scoring {len(todo)} continuation(s) of {model} on the torch-{provider} "
                          f"fp32 reference (outside the measurements)")
            scorer.load()
            try:
                for p, c in todo:
                    cache[continuation_key(p, c)] = mean_nll(scorer.continuation_logprobs(p, c))
            finally:
                scorer.close()
            write_atomically(path, {"format": FORMAT, "key": weights_key, "nll": cache})
        out: list[float | None] = []
        for p, c, r, mine in zip(prompt_ids, continuations, ref, own):
            out.append(mine if list(c) == list(r) else cache.get(continuation_key(p, c)) if c else None)
        return out

    def _nll_cache(self, path: Path, weights_key: str) -> dict[str, float]:
        if path not in self._nll:
            data = self._read(path, weights_key, ("nll",))
            self._nll[path] = dict(data["nll"]) if data is not None and isinstance(data["nll"], dict) else {}
        return self._nll[path]
