"""On-disk cache of exported models, keyed by model weights, engine and library versions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..fsutil import build_dir_atomically
from ..handle import ModelHandle


def export_dir(model: ModelHandle, engine: str, versions: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps([model.key, engine, versions], sort_keys=True).encode()).hexdigest()[:12]
    safe = model.key.replace("/", "_").replace("@", "-")
    return model.cache_dir / "exports" / engine / f"{safe}-{key}"


def cached_export(target: Path, build: Callable[[Path], None], progress: Callable[[str], None] | None = None) -> Path:
    """Return ``target``, building it with ``build(tmpdir)`` first unless a finished export is there.

    The export is written to a temporary sibling and renamed into place (``fsutil``), so an
    interrupted export never leaves a half-written cache entry behind.
    """
    marker = target / ".greenserve-complete"
    if marker.is_file():
        return target
    if progress:
        progress(f"exporting to {target} (cached for later sessions)")

    def build_and_mark(tmp: Path) -> None:
        build(tmp)
        (tmp / ".greenserve-complete").write_text("ok")

    return build_dir_atomically(target, build_and_mark)
