"""Cache keys and torn cache files: replaced weights are never taken for the old ones, and a
torn cache entry (a replica or export marker, run.json) is rebuilt or ignored with one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_greenserve.engines.exports import cached_export
from pytest_greenserve.fsutil import MARKER, marker_problem, write_text_atomically
from pytest_greenserve.models import hub_revision, weights_stamp


def model_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "gpt2"}')
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    return root


# ---------------------------------------------------------------- cache keys

def test_replacing_the_weights_changes_a_local_models_key_and_the_config_alone_is_not_enough(tmp_path):
    d = model_dir(tmp_path / "m")
    before = weights_stamp(d)
    assert weights_stamp(d) == before  # nothing changed: the same key, so caches are reused
    config_mtime = (d / "config.json").stat().st_mtime_ns
    (d / "model.safetensors").write_bytes(b"\1" * 80)  # new weights; config.json untouched
    assert (d / "config.json").stat().st_mtime_ns == config_mtime
    assert weights_stamp(d) != before


def test_the_same_size_weights_rewritten_change_the_key_by_their_modification_time(tmp_path):
    d = model_dir(tmp_path / "m")
    before = weights_stamp(d)
    st = (d / "model.safetensors").stat()
    (d / "model.safetensors").write_bytes(b"\2" * 64)
    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert weights_stamp(d) != before


def test_hidden_files_do_not_change_the_key(tmp_path):
    d = model_dir(tmp_path / "m")
    before = weights_stamp(d)
    (d / ".git").mkdir()
    (d / ".git" / "index").write_text("x")
    assert weights_stamp(d) == before


def test_a_hub_models_revision_is_read_from_the_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_revision("org/tiny") == sha
    assert hub_revision("org/absent") is None


# ---------------------------------------------------------------- torn cache entries

def test_a_complete_export_is_reused_and_a_torn_one_is_rebuilt_with_one_line(tmp_path):
    built, notes = [], []

    def build(tmp: Path) -> None:
        built.append(tmp)
        (tmp / "model.onnx").write_bytes(b"\0" * 100)

    target = tmp_path / "exports" / "onnx" / "m"
    cached_export(target, build, notes.append)
    assert len(built) == 1 and marker_problem(target) is None
    cached_export(target, build, notes.append)
    assert len(built) == 1  # complete: reused

    (target / MARKER).write_text('{"files": {"model.on')  # a torn marker
    cached_export(target, build, notes.append)
    assert len(built) == 2 and marker_problem(target) is None
    assert notes[-1] == (f"greenserve: export {target} is incomplete (torn completion marker (JSONDecodeError)); "
                         "rebuilding it")

    with open(target / "model.onnx", "r+b") as fh:  # a truncated export file
        fh.truncate(10)
    cached_export(target, build, notes.append)
    assert len(built) == 3 and (target / "model.onnx").stat().st_size == 100
    assert "model.onnx has 10 bytes, its marker says 100" in notes[-1] and len(notes[-1].splitlines()) == 1


def test_an_export_marker_from_an_older_version_is_rebuilt(tmp_path):
    target = tmp_path / "old"
    target.mkdir()
    (target / "model.onnx").write_bytes(b"x")
    (target / MARKER).write_text("ok")  # what exports wrote before markers listed their files
    notes = []
    cached_export(target, lambda tmp: (tmp / "model.onnx").write_bytes(b"y"), notes.append)
    assert marker_problem(target) is None and (target / "model.onnx").read_bytes() == b"y"
    assert len(notes) == 1 and "torn completion marker" in notes[0]


@pytest.mark.slow
def test_a_replica_with_a_torn_marker_is_rebuilt_with_a_note(tmp_path):
    pytest.importorskip("transformers")
    from pytest_greenserve.models import REGISTRY, resolve

    notes = []
    first = resolve(REGISTRY["mini-gpt2"], "auto", None, tmp_path, progress=notes.append)
    out = Path(first.ref)
    assert marker_problem(out) is None
    (out / MARKER).write_text("{")
    notes.clear()
    again = resolve(REGISTRY["mini-gpt2"], "auto", None, tmp_path, progress=notes.append)
    assert again.key == first.key and marker_problem(out) is None
    assert notes[0].startswith(f"greenserve: replica {out} is incomplete (torn completion marker")


def test_run_json_is_replaced_whole(tmp_path):
    from pytest_greenserve.results import ResultsStore, read_meta

    store = ResultsStore(tmp_path, "run-1")
    store.write_meta({"run_id": "run-1", "options": {"runs": 3}})
    store.write_meta({"run_id": "run-1", "options": {"runs": 4}})
    assert read_meta(store.run_dir)["options"] == {"runs": 4}
    assert [p.name for p in store.run_dir.iterdir()] == ["run.json"]  # no temporary file left behind


def test_write_text_atomically_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"old": true}')

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("disk full")

    with pytest.raises(TypeError):
        write_text_atomically(path, Unserialisable())  # the write itself fails
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_greenserve_report_on_a_torn_run_json_says_so_in_one_line(tmp_path, capsys):
    from pytest_greenserve.cli import main
    from report.synth import make_rows, write_run

    run = write_run(tmp_path, make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3), "run-t")
    (run / "run.json").write_text('{"run_id": "run-t", "machine_')  # torn
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"{run / 'run.json'}: unreadable, ignored" in err and "Traceback" not in err
    assert (tmp_path / "out" / "report.html").is_file()
