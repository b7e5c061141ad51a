"""write_reports and terminal_summary: files, labels, robustness; report.html in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from pytest_greenserve.report import terminal_summary, write_reports
from pytest_greenserve.report.tables import plain
from report.synth import make_rows

CHROMIUM = "/usr/bin/chromium"
META = {"run_id": "run-a", "machine_info": {"hostname": "box-a", "cpu_count": 2},
        "versions": {"torch": "2.13.0"}, "options": {"reps": 4}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rows = make_rows(models=("mini-gpt2", "phi2"), configs=("torch-cpu", "onnx-cpu", "torch-cuda"), reps=4)
    for r in rows:  # one error-prone configuration
        if r["model"] == "phi2" and r["config"] == "onnx-cpu":
            r["error_prone"], r["match_rate"] = True, 0.25
    out = tmp_path_factory.mktemp("run-a")
    return rows, write_reports(rows, out, META)


def test_write_reports_writes_the_four_files(run):
    _, paths = run
    assert set(paths) == {"samples", "stats", "summary", "html"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    samples = pd.read_csv(paths["samples"])
    assert len(samples) == 2 * 3 * 4
    stats = pd.read_csv(paths["stats"], keep_default_na=False, dtype=str)
    assert {"welch_anova", "kruskal"} & set(stats["test"])
    assert {"games_howell", "dunn"} & set(stats["test"])
    assert "nan" not in paths["stats"].read_text().lower()


def test_summary_md_has_every_model_configuration_and_labels_estimates(run):
    _, paths = run
    md = paths["summary"].read_text()
    for model in ("mini-gpt2", "phi2"):
        for config in ("torch-cpu", "onnx-cpu", "torch-cuda"):
            assert re.search(rf"\| {model} \| {config}", md)
    assert "(estimated: estimated-cpu-time)" in md
    assert "onnx-cpu (error-prone: excluded)" in md
    assert "match rate" in md and "J/token" in md
    assert "energy-constrained" in md and "latency-constrained" in md and "resource-constrained" in md


def test_html_report_is_self_contained_and_complete(run):
    _, paths = run
    html = paths["html"].read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,', html)
    assert len(imgs) == 5  # the overview, then box plots + Pareto per model
    for needle in ("box-a", "torch", "2.13.0", "pingouin", "Pareto front", "energy-constrained",
                   "latency-constrained", "resource-constrained", "Significance, in words", "estimated",
                   "excluded as error-prone", "Table 4", "Table 5"):
        assert needle.lower() in html.lower(), needle


def test_terminal_summary_is_one_compact_table_with_the_report_path(run):
    rows, paths = run
    lines = terminal_summary(rows, paths["html"])
    text = "\n".join(lines)
    assert "mini-gpt2" in text and "torch-cuda" in text
    assert "estimated" in text and "!error-prone" in text
    assert lines[-1] == f"greenserve report: {paths['html']}"
    assert sum(1 for line in lines if line.startswith("model")) == 1


def assert_terminal_table(lines: list[str], rows: list[dict], report_path) -> None:
    """One row per model × configuration with its median time, error-prone marks, then the report's path."""
    table = [line.split() for line in lines[3:] if line.split() and line.split()[0] in {r["model"] for r in rows}]
    groups = {(r["model"], r["config"]) for r in rows}
    assert len(table) == len(groups)
    for model, config in groups:
        mine = [r for r in rows if (r["model"], r["config"]) == (model, config)]
        cells = next(c for c in table if c[:2] == [model, config])
        assert plain(float(pd.Series([r["time_s"] for r in mine]).median()), "s") in " ".join(cells)
        assert ("!error-prone" in cells) == any(r["error_prone"] for r in mine)
        if all(r["energy_net_j"] is None for r in mine):
            assert " ".join(cells[2:4]) == "not measured"
    assert (lines[-2] == "!error-prone: outputs disagreed with torch; excluded from the statistics") == \
        any(r["error_prone"] for r in rows)
    assert lines[-1] == f"greenserve report: {report_path}"


@pytest.mark.parametrize("case", ["one-sample", "one-config", "all-error-prone", "no-energy", "no-samples"])
def test_reports_survive_degenerate_runs(tmp_path, case):
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3)
    if case == "one-sample":
        rows = rows[:1]
    elif case == "one-config":
        rows = [r for r in rows if r["config"] == "torch-cpu"]
    elif case == "all-error-prone":
        for r in rows:
            r["error_prone"] = True
    elif case == "no-energy":
        for r in rows:
            for k in ("energy_cpu_j", "energy_gpu_j", "energy_total_j", "energy_idle_j", "energy_net_j",
                      "energy_cpu_source", "energy_gpu_source", "j_per_token"):
                r[k] = None
    elif case == "no-samples":
        rows = []
    paths = write_reports(rows, tmp_path, {})
    md = paths["summary"].read_text()
    html = paths["html"].read_text()
    assert "nan" not in paths["stats"].read_text().lower()
    assert " 0 J" not in md and ">0 J" not in html
    lines = terminal_summary(rows, paths["html"])
    if case == "no-samples":
        assert lines == ["greenserve: no samples were recorded"]
    else:
        assert_terminal_table(lines, rows, paths["html"])
    if case == "no-energy":
        assert "not measured" in md
    if case == "all-error-prone":
        assert "Every configuration of this model was error-prone" in html
    if case in ("one-sample", "one-config"):
        stats = pd.read_csv(paths["stats"], keep_default_na=False, dtype=str)
        assert (stats["applicable"] == "False").any() and (stats["p_value"][stats["applicable"] == "False"] == "").all()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent")
def test_html_report_renders_in_headless_chromium(run, tmp_path):
    _, paths = run
    html = paths["html"]
    n_images = len(re.findall(r"<img ", html.read_text()))
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", html.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m, "the page's load handler did not run"
    assert int(m.group(2)) == n_images and m.group(1) == m.group(2), f"images rendered: {m.group(0)}"
    assert 'data-errors="0"' in dom
    shutil.rmtree(profile, ignore_errors=True)


# ---------------------------------------------------------------- estimated energy: the headline and the power model

POWER_NOTE = "cpu energy: no RAPL (/sys/class/powercap absent); estimated from CPU time at 10 W/core + 20 W idle"


def test_the_savings_headline_says_estimated_and_the_power_model_is_stated(tmp_path):
    rows = make_rows(models=("mini-gpt2", "phi2"), configs=("torch-cpu", "onnx-cpu", "openvino-cpu"), reps=4)
    paths = write_reports(rows, tmp_path, {**META, "meter_notes": [POWER_NOTE]})
    md = paths["summary"].read_text()
    savings = md.split("## Savings")[1].split("##")[0]
    energy_lines = [line for line in savings.splitlines() if "energy" in line]
    assert energy_lines and all("estimated energy" in line for line in energy_lines)
    assert re.search(r"uses from [\d.]+% up to [\d.]+% less estimated energy than the other configurations", savings)
    assert "10 W/core + 20 W idle" in md and "## Estimated CPU energy: the power model" in md
    html = paths["html"].read_text()
    assert "less estimated energy than the other configurations" in html
    assert "10 W/core + 20 W idle" in html


def test_measured_energy_is_not_called_estimated_and_needs_no_power_model(tmp_path):
    rows = make_rows(models=("mini-gpt2", "phi2"), configs=("torch-cpu", "onnx-cpu"), reps=4, cpu_source="rapl")
    paths = write_reports(rows, tmp_path, {**META, "meter_notes": []})
    md = paths["summary"].read_text()
    assert "less energy than" in md and "estimated energy" not in md
    assert "power model" not in md.split("Energy marked *estimated*")[0]


# ---------------------------------------------------------------- a report that leads with the answer (issue 18)

def rendered_cells(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", html, re.S)]


def flagged_run(tmp_path, **kw):
    """Three models, five CPU configurations; jit-cpu and compile-cpu alike (a tie); one
    configuration with an unsteady sample, one error-prone."""
    rows = make_rows(models=("mini-gpt2", "mini-pythia", "phi2"),
                     configs=("torch-cpu", "onnx-cpu", "openvino-cpu", "jit-cpu", "compile-cpu"), reps=3, **kw)
    for r in rows:
        r["unsteady"] = r["config"] == "onnx-cpu" and r["repetition"] == 1
        r["low_resolution"] = False
        if r["model"] == "phi2" and r["config"] == "openvino-cpu":
            r["error_prone"], r["match_rate"] = True, 0.5
    return rows, write_reports(rows, tmp_path, {**META, "meter_notes": [POWER_NOTE]})


def test_the_overview_chart_is_the_first_figure_and_the_guidelines_follow_it(tmp_path):
    _, paths = flagged_run(tmp_path)
    html = paths["html"].read_text()
    first = re.search(r"<img [^>]*>", html).group(0)
    assert 'alt="overview: net J/token (estimated) against ms per token for 3 model panel(s)' in first
    assert html.index(first) < html.index("<h2>Guidelines") < html.index("<h2>Summary per model")
    assert html.index("<h2>Guidelines") < html.index('<details class="notes">')


def test_the_notes_are_folded_under_one_line_saying_how_many_and_of_what_kind(tmp_path):
    _, paths = flagged_run(tmp_path)
    html = paths["html"].read_text()
    line = re.search(r'<details class="notes"><summary>([^<]*)</summary>', html).group(1)
    n = int(line.split()[0])
    inside = html.split('<details class="notes">')[1].split("</details>")[0]
    assert n == inside.count('<li class="note">') and n > 0
    assert "flagged samples" in line and "error-prone configurations" in line and "how energy is counted" in line
    assert '<li class="note">' not in html.replace(inside, "")  # no note outside the fold


def test_a_tie_is_named_as_a_tie_with_both_configurations(tmp_path):
    rows, paths = flagged_run(tmp_path)
    from pytest_greenserve.results import samples_frame
    from pytest_greenserve.stats import analyze

    latency = next(g for g in analyze(samples_frame(rows)).guidelines if g.shape == "latency-constrained")
    assert latency.best_config in ("jit-cpu", "compile-cpu")
    other = ({"jit-cpu", "compile-cpu"} - {latency.best_config}).pop()
    assert latency.tied_with == [other] and latency.tied_everywhere
    md = paths["summary"].read_text()
    head = next(line for line in md.splitlines() if line.startswith("- **latency-constrained**"))
    assert "tied" in head and "jit-cpu" in head and "compile-cpu" in head and "use " not in head
    assert re.search(r"(jit-cpu and compile-cpu|compile-cpu and jit-cpu) tied — median time", md)


def test_a_significant_winner_is_named_alone(tmp_path):
    rows = make_rows(models=("mini-gpt2", "phi2"), configs=("torch-cpu", "onnx-cpu", "openvino-cpu"), reps=6)
    paths = write_reports(rows, tmp_path, META)
    head = next(line for line in paths["summary"].read_text().splitlines()
                if line.startswith("- **latency-constrained**"))
    assert "use openvino-cpu" in head and "tied" not in head


def test_no_table_cell_says_nan(tmp_path):
    _, paths = flagged_run(tmp_path)
    html = paths["html"].read_text()
    cells = rendered_cells(html)
    assert cells and not [c for c in cells if re.search(r"\bnan\b", c, re.I)]
    md_cells = [c.strip() for line in paths["summary"].read_text().splitlines() if line.startswith("|")
                for c in line.strip("|").split("|")]
    assert not [c for c in md_cells if re.search(r"\bnan\b", c, re.I)]
    assert "(flagged: 1/3 unsteady)" in html and "flagged: nan" not in html


def test_the_embedded_models_have_a_size_category(tmp_path):
    _, paths = flagged_run(tmp_path)
    md = paths["summary"].read_text()
    assert "uncategorised" not in md and "category 1 (under 1B parameters)" in md


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent")
def test_a_saved_runs_report_leads_with_the_overview_in_headless_chromium(tmp_path):
    from pytest_greenserve.cli import main
    from report.synth import write_run

    rows = make_rows(models=("mini-gpt2", "mini-pythia"), configs=("torch-cpu", "jit-cpu", "compile-cpu"), reps=3)
    run = write_run(tmp_path / "reports", rows, "run-saved")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    page = tmp_path / "out" / "report.html"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-errors="0"' in dom
    m = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert m and m.group(1) == m.group(2)
    assert re.search(r"<img [^>]*>", dom).group(0).find('alt="overview') > 0
    assert not [c for c in rendered_cells(dom) if re.search(r"\bnan\b", c, re.I)]
