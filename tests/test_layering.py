"""The package's layering (the arrows run one way; a test holds each rule):

* only ``plugin.py`` knows about pytest (docs/architecture.md, "Rules the tests hold");
* ``engines/`` never imports ``models`` (models build handles, engines consume them);
* the measuring core (session, runner, measure step, sample builder) never imports ``report``;
* ``analysis`` never imports ``models`` (each sample carries its model's size category).
"""

import ast
from pathlib import Path

import pytest

import pytest_greenserve

PACKAGE = Path(pytest_greenserve.__file__).parent
CORE = ["session.py", "runner.py", "measure.py", "samples.py", "targets.py", "references.py"]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, as dotted names inside the package
    (``pytest_greenserve.models``) or top-level names outside it (``pytest``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ["pytest_greenserve", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name if alias.name.startswith("pytest_greenserve") else alias.name.split(".")[0]
                         for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                names.add(module if module.startswith("pytest_greenserve") else module.split(".")[0])
                continue
            base = package[: len(package) - node.level + 1]
            if node.module:
                names.add(".".join(base + [node.module]))
            else:  # from . import x, y: each name may be a module
                names.update(".".join(base + [alias.name]) for alias in node.names)
    return names


def package_files(under: str = "") -> list[Path]:
    root = PACKAGE / under
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def importers_of(target: str, files) -> list[str]:
    """Files (relative to the package) importing ``pytest_greenserve.<target>`` or below it."""
    full = f"pytest_greenserve.{target}"
    return sorted(str(p.relative_to(PACKAGE)) for p in files
                  if any(n == full or n.startswith(full + ".") for n in imported_modules(p)))


def test_only_plugin_module_imports_pytest():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in package_files()
                       if imported_modules(p) & {"pytest", "_pytest"})
    assert importers == ["plugin.py"]


def test_hookspecs_use_pluggy_not_pytest():
    imports = imported_modules(PACKAGE / "hookspecs.py")
    assert "pluggy" in imports
    assert not imports & {"pytest", "_pytest"}


def test_engines_never_import_models():
    assert importers_of("models", package_files("engines")) == []


@pytest.mark.parametrize("module", CORE)
def test_measuring_core_never_imports_report(module):
    assert importers_of("report", [PACKAGE / module]) == []


def test_analysis_never_imports_models():
    assert importers_of("models", package_files("analysis")) == []


def test_the_rules_see_relative_imports():
    # guard against a scan that silently finds nothing: models.py imports the handle module
    # relatively, and the plugin imports the session
    assert "pytest_greenserve.handle" in imported_modules(PACKAGE / "models.py")
    assert "pytest_greenserve.session" in imported_modules(PACKAGE / "plugin.py")
    assert "pytest_greenserve.engines.base" in imported_modules(PACKAGE / "engines" / "onnx.py")


def test_scan_sees_the_whole_package():
    names = {str(p.relative_to(PACKAGE)) for p in package_files()}
    assert {"plugin.py", "hookspecs.py", "prompts.py", "report/__init__.py", "analysis/categories.py",
            "engines/base.py", *CORE} <= names
