"""Files and directories that appear whole or not at all (replicas, exports, run.json).

A cache directory is built in a temporary sibling and renamed into place, with a completion
marker written last that lists every file and its size (:func:`write_marker`). A directory
whose marker is missing, torn, or disagrees with the files on disk (a file deleted, truncated
or replaced by hand) is not trusted: :func:`marker_problem` says why in one line, and the
caller rebuilds it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MARKER = ".greenserve-complete"


def build_dir_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a temporary sibling of ``target``, then rename it into place.

    An interrupted build never leaves a half-written cache entry behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling of ``path``, fsync it, then rename it into place:
    a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _files(directory: Path) -> dict[str, int]:
    """Every file under ``directory`` but the marker: relative path -> size in bytes."""
    return {p.relative_to(directory).as_posix(): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MARKER}


def write_marker(directory: Path) -> None:
    """The completion marker: written last, it lists every file of ``directory`` and its size."""
    (Path(directory) / MARKER).write_text(json.dumps({"files": _files(Path(directory))}, sort_keys=True))


def marker_problem(directory: Path) -> str | None:
    """None when ``directory`` is complete as its marker lists it; otherwise why not (one line)."""
    directory = Path(directory)
    marker = directory / MARKER
    if not marker.is_file():
        return "no completion marker"
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise TypeError("files is not a mapping")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return f"torn completion marker ({type(exc).__name__})"
    found = _files(directory)
    for name, size in listed.items():
        if name not in found:
            return f"{name} is missing"
        if found[name] != size:
            return f"{name} has {found[name]} bytes, its marker says {size}"
    return None


def cached_dir(target: Path, build: Callable[[Path], None], what: str,
               progress: Callable[[str], None] | None = None) -> Path:
    """``target``, built with ``build(tmp)`` (atomically, then marked) unless it is complete.

    A directory there that is not complete (torn marker, a file missing or truncated) is
    rebuilt, and ``progress`` gets one line saying why.
    """
    target = Path(target)
    problem = marker_problem(target) if target.exists() else None
    if target.exists() and problem is None:
        return target
    if progress:
        progress(f"greenserve: {what} {target} is incomplete ({problem}); rebuilding it" if problem
                 else f"greenserve: building {what} {target} (cached for later sessions)")

    def build_and_mark(tmp: Path) -> None:
        build(tmp)
        write_marker(tmp)

    return build_dir_atomically(target, build_and_mark)
