"""Docs that exist: every Markdown file the repository names is in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# summary.md is what every run writes into its report directory, not a file of the repository;
# the shipped model configs' list of sources cites paths inside the upstream repositories
GENERATED = {"summary.md"}
UPSTREAM_CITATIONS = ("pytest_greenserve/data/",)
MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")


def repository_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's files cannot be listed")
    return [ROOT / f for f in listed
            if f.endswith((".py", ".md", ".sh", ".toml", ".ini", ".yml", ".cfg")) and (ROOT / f).is_file()]


def test_every_markdown_file_named_in_the_repository_exists():
    missing = []
    for f in repository_files():
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith(UPSTREAM_CITATIONS):
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for ref in MD_NAME.findall(line):
                if ref in GENERATED or (ROOT / ref).exists() or (f.parent / ref).exists():
                    continue
                missing.append(f"{rel}:{n}: {ref}")
    assert not missing, "named but absent: " + "; ".join(missing)


def test_the_architecture_page_names_every_hook():
    page = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    hooks = re.findall(r"^def (pytest_greenserve_\w+)", (ROOT / "pytest_greenserve/hookspecs.py").read_text(),
                       re.MULTILINE)
    assert hooks and [h for h in hooks if h not in page] == []
