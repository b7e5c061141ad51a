"""The ``greenserve`` command: report (merge runs from several machines) and models."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from pytest_greenserve.cli import main
from pytest_greenserve.results import SCHEMA_VERSION
from report.synth import make_rows, write_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    a = write_run(reports, make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3,
                                     machine="box-a", run_id="run-a"), "run-a")
    b = write_run(reports, make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3,
                                     machine="box-b", run_id="run-b", seed=9), "run-b")
    return reports, a, b


def test_report_merges_runs_from_two_machines(two_runs, tmp_path, capsys):
    _, a, b = two_runs
    out = tmp_path / "merged"
    assert main(["report", str(a), str(b / "samples.jsonl"), "--out", str(out)]) == 0
    stats = pd.read_csv(out / "stats.csv")
    assert set(stats["machine"]) == {"box-a", "box-b"}
    samples = pd.read_csv(out / "samples.csv")
    assert len(samples) == 12 and set(samples["run_id"]) == {"run-a", "run-b"}
    html = (out / "report.html").read_text()
    assert "box-a" in html and "box-b" in html and "several machines" in html
    text = capsys.readouterr().out
    assert "greenserve medians on box-a" in text and "greenserve medians on box-b" in text
    assert str(out / "report.html") in text


def test_report_default_output_is_a_merged_dir_beside_the_first_run(two_runs, capsys):
    reports, a, _ = two_runs
    assert main(["report", str(a)]) == 0
    merged = [p for p in reports.iterdir() if p.name.startswith("merged-")]
    assert len(merged) == 1 and (merged[0] / "report.html").is_file()


def test_corrupt_file_exits_2_with_one_line(tmp_path, capsys):
    run = tmp_path / "run-x"
    run.mkdir()
    (run / "samples.jsonl").write_text('{"model": "mini-gpt2", "config": "torch-cpu"}\n{not json\n'
                                       '{"model": "mini-gpt2", "config": "torch-cpu"}\n')
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt" in err and "samples.jsonl:2" in err


def small_rows(run_id: str) -> list[dict]:
    return make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3, run_id=run_id)


def test_torn_last_line_is_skipped_with_a_note(tmp_path, capsys):
    run = write_run(tmp_path, small_rows("run-t"), "run-t")
    with open(run / "samples.jsonl", "a") as fh:
        fh.write('{"model": "mini-gpt2", "conf')   # a session killed mid-write
    out = tmp_path / "out"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "samples.jsonl:7: skipping a torn last line" in capsys.readouterr().err
    assert len(pd.read_csv(out / "samples.csv")) == 6


def test_newer_schema_exits_2_with_one_line(tmp_path, capsys):
    run = write_run(tmp_path, small_rows("run-n"), "run-n")
    with open(run / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"model": "mini-gpt2", "config": "torch-cpu", "schema_version": SCHEMA_VERSION + 1}) + "\n")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "samples.jsonl:7: schema_version" in err and "newer" in err
    assert not (tmp_path / "out").exists()


def test_old_run_without_schema_version_is_reported(tmp_path, capsys):
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in small_rows("old-run")))
    out = tmp_path / "out"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "samples.csv")) == 6 and (out / "report.html").is_file()


def test_file_without_samples_exits_2(tmp_path, capsys):
    f = tmp_path / "samples.jsonl"
    f.write_text("\n")
    assert main(["report", str(f)]) == 2
    assert capsys.readouterr().err.strip() == f"greenserve: {f}: no samples"


def test_missing_path_exits_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pytest_greenserve.cli", "report", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no such file" in done.stderr


def test_not_a_sample_file_exits_2(tmp_path, capsys):
    f = tmp_path / "samples.jsonl"
    f.write_text('[1, 2, 3]\n')
    assert main(["report", str(f)]) == 2
    assert "not a greenserve sample" in capsys.readouterr().err


def test_no_subcommand_and_bad_option_exit_2(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["report"])
    assert exc.value.code == 2


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "phi2" in out and "microsoft/phi-2" in out and "2.7B" in out and "mini-gpt2" in out
    line = next(l for l in out.splitlines() if l.startswith("codegemma-2b"))
    assert " 3 " in line and "gemma" in line


def test_report_fills_the_size_category_of_old_runs_from_the_model_registry(tmp_path, capsys):
    rows = make_rows(models=("mini-gpt2", "phi2"), configs=("torch-cpu", "onnx-cpu"), reps=3)
    for r in rows:
        del r["category"]  # written before samples carried their model's category
    run = write_run(tmp_path / "reports", rows, "run-old")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    assert (samples.loc[samples["model"] == "phi2", "category"] == 3).all()
    assert (samples.loc[samples["model"] == "mini-gpt2", "category"] == 1).all()  # ~1 M parameters: under 1B
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| category 3 (2-3B parameters) |" in summary and "uncategorised" not in summary
