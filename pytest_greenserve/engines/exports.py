"""On-disk cache of exported models, keyed by model weights, engine and library versions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..fsutil import cached_dir
from ..handle import ModelHandle


def export_dir(model: ModelHandle, engine: str, versions: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps([model.key, engine, versions], sort_keys=True).encode()).hexdigest()[:12]
    safe = model.key.replace("/", "_").replace("@", "-")
    return model.cache_dir / "exports" / engine / f"{safe}-{key}"


def cached_export(target: Path, build: Callable[[Path], None], progress: Callable[[str], None] | None = None) -> Path:
    """Return ``target``, building it with ``build(tmpdir)`` first unless a complete export is there.

    The export is written to a temporary sibling and renamed into place, with a marker listing
    its files written last (``fsutil.cached_dir``): an interrupted export never leaves a
    half-written cache entry behind, and one torn later (a file truncated or deleted, a torn
    marker) is rebuilt with a one-line note.
    """
    return cached_dir(target, build, "export", progress)
