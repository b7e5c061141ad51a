"""The package's layering: only ``plugin.py`` knows about pytest (STYLE.md)."""

import ast
from pathlib import Path

import pytest_greenserve

PACKAGE = Path(pytest_greenserve.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (anywhere in the file, docstrings excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_plugin_module_imports_pytest():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in package_files()
                       if imported_modules(p) & {"pytest", "_pytest"})
    assert importers == ["plugin.py"]


def test_hookspecs_use_pluggy_not_pytest():
    imports = imported_modules(PACKAGE / "hookspecs.py")
    assert "pluggy" in imports
    assert not imports & {"pytest", "_pytest"}


def test_scan_sees_the_whole_package():
    # guard against a scan that silently finds nothing (e.g. a moved package)
    names = {str(p.relative_to(PACKAGE)) for p in package_files()}
    assert {"plugin.py", "session.py", "stats.py", "hookspecs.py", "prompts.py", "report/__init__.py"} <= names
