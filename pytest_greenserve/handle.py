"""What an engine needs to load a model, resolved by ``models`` and handed down to ``engines``.

Its own module so that arrows run one way: ``models`` builds handles, ``engines`` consume
them, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelHandle:
    """What an engine needs to load a model.

    ``ref`` is what ``from_pretrained`` takes: a local directory or a hub id.
    ``key`` identifies the weights (it keys the export and reference-token caches):
    ``mini-gpt2@replica-<digest of its config, seed and library versions>``,
    ``phi2@local-<digest of every file's name, size and modification time>`` or
    ``phi2@hub-<the hub revision in the local cache>`` (``phi2@hub`` where it cannot be known).
    """

    name: str
    ref: str
    key: str
    architecture: str
    cache_dir: Path
    # Token ids the generation must not stop at (EOS); engines suppress them so that
    # exactly ``new_tokens`` tokens are generated.
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    weights: str = "replica"  # hub | local | replica
