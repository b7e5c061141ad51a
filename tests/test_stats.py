"""stats.analyze against independent computations (scipy / statsmodels / textbook formulas)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss

from pytest_greenserve.results import samples_frame
from pytest_greenserve.stats import analyze, epsilon_squared_kw, omega_squared_welch
from report.synth import make_rows, sample

# Fixed data: three configurations, roughly normal, unequal variances (time_s, seconds).
NORMAL = {
    "torch-cpu": [30.1, 29.4, 31.2, 30.8, 29.9, 30.5, 28.9, 30.2, 31.0, 29.7],
    "onnx-cpu": [22.3, 21.8, 22.9, 21.5, 22.1, 23.0, 22.6, 21.9, 22.4, 22.2],
    "openvino-cpu": [14.8, 13.2, 15.9, 14.1, 16.3, 13.7, 15.2, 14.5, 12.9, 15.6],
}
# Fixed skewed data with ties: not normal in at least one configuration.
SKEWED = {
    "torch-cpu": [10.0, 10.2, 10.1, 10.0, 10.3, 10.1, 19.5, 10.2, 10.0, 25.0],
    "onnx-cpu": [9.1, 9.0, 9.3, 9.2, 9.0, 9.1, 9.4, 15.0, 9.2, 9.0],
    "openvino-cpu": [8.0, 8.1, 8.0, 8.2, 8.1, 8.3, 8.0, 8.1, 12.5, 8.2],
}


def frame(groups: dict, metric: str = "time_s", model: str = "mini-gpt2", **kw) -> pd.DataFrame:
    rows = []
    for config, values in groups.items():
        for rep, v in enumerate(values):
            r = sample(model, config, rep, time_s=v if metric == "time_s" else 10.0, energy_j=1000.0, **kw)
            r[metric] = v
            rows.append(r)
    return samples_frame(rows)


@pytest.fixture(scope="module")
def normal_analysis():
    return analyze(frame(NORMAL))


@pytest.fixture(scope="module")
def skewed_analysis():
    return analyze(frame(SKEWED))


def rows_of(analysis, metric="time_s", test=None, model="mini-gpt2"):
    st = analysis.stats
    st = st[(st["metric"] == metric) & (st["model"] == model)]
    return st if test is None else st[st["test"] == test]


# ---------------------------------------------------------------- Welch's ANOVA + Games-Howell

def welch_by_hand(groups):
    k = len(groups)
    n = np.array([len(g) for g in groups], float)
    m = np.array([np.mean(g) for g in groups])
    v = np.array([np.var(g, ddof=1) for g in groups])
    w = n / v
    W = w.sum()
    mw = (w * m).sum() / W
    a = (w * (m - mw) ** 2).sum() / (k - 1)
    lam = ((1 - w / W) ** 2 / (n - 1)).sum()
    F = a / (1 + 2 * (k - 2) / (k ** 2 - 1) * lam)
    df2 = (k ** 2 - 1) / (3 * lam)
    return F, k - 1, df2, ss.f.sf(F, k - 1, df2)


def test_normal_data_takes_welch_path_and_matches_textbook_formula(normal_analysis):
    a = normal_analysis
    d = a.decision("mini-gpt2", "time_s")
    assert d.path == "welch+games-howell"
    assert "normal" in d.reason
    row = rows_of(a, test="welch_anova").iloc[0]
    F, df1, df2, p = welch_by_hand([np.array(v) for v in NORMAL.values()])
    assert row["statistic"] == pytest.approx(F, abs=1e-6)
    assert row["df1"] == pytest.approx(df1, abs=1e-6)
    assert row["df2"] == pytest.approx(df2, abs=1e-6)
    assert row["p_value"] == pytest.approx(p, abs=1e-6)
    n = sum(len(v) for v in NORMAL.values())
    assert row["effect_size"] == pytest.approx(max(0, df1 * (F - 1) / (df1 * (F - 1) + n)), abs=1e-6)
    assert row["effect_size"] == pytest.approx(omega_squared_welch(F, df1, n), abs=1e-12)


def test_games_howell_pair_matches_hand_computation(normal_analysis):
    a = normal_analysis
    gh = rows_of(a, test="games_howell")
    assert len(gh) == 3
    r = gh[(gh["config_a"].isin(["torch-cpu", "openvino-cpu"])) & (gh["config_b"].isin(["torch-cpu", "openvino-cpu"]))].iloc[0]
    x, y = np.array(NORMAL[r["config_a"]]), np.array(NORMAL[r["config_b"]])
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    t = (x.mean() - y.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    p = ss.studentized_range.sf(abs(t) * math.sqrt(2), 3, df)
    assert r["statistic"] == pytest.approx(t, abs=1e-6)
    assert r["df1"] == pytest.approx(df, abs=1e-6)
    assert r["p_value"] == pytest.approx(p, abs=1e-6)
    # Hedges' g by hand
    sp = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2))
    g = (x.mean() - y.mean()) / sp * (1 - 3 / (4 * (len(x) + len(y)) - 9))
    assert r["effect_size"] == pytest.approx(g, abs=1e-6)


# ---------------------------------------------------------------- Kruskal-Wallis + Dunn (Holm)

def test_skewed_data_takes_kruskal_path_and_matches_scipy(skewed_analysis):
    a = skewed_analysis
    d = a.decision("mini-gpt2", "time_s")
    assert d.path == "kruskal+dunn-holm"
    assert "not normal" in d.reason
    row = rows_of(a, test="kruskal").iloc[0]
    H, p = ss.kruskal(*SKEWED.values())
    assert row["statistic"] == pytest.approx(H, abs=1e-6)
    assert row["p_value"] == pytest.approx(p, abs=1e-6)
    assert row["effect_size"] == pytest.approx(H / (30 - 1), abs=1e-6)
    assert row["effect_size"] == pytest.approx(epsilon_squared_kw(H, 30), abs=1e-12)


def dunn_holm_by_hand(groups: dict) -> dict:
    names = list(groups)
    values = np.concatenate([groups[n] for n in names])
    ranks = ss.rankdata(values)
    N = len(values)
    _, counts = np.unique(values, return_counts=True)
    tie = (counts ** 3 - counts).sum() / (12 * (N - 1))
    mean_rank, n, start = {}, {}, 0
    for name in names:
        k = len(groups[name])
        mean_rank[name], n[name] = ranks[start:start + k].mean(), k
        start += k
    pairs, raw = [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            z = (mean_rank[a] - mean_rank[b]) / math.sqrt((N * (N + 1) / 12 - tie) * (1 / n[a] + 1 / n[b]))
            pairs.append((a, b))
            raw.append(2 * ss.norm.sf(abs(z)))
    # Holm step-down by hand
    order = np.argsort(raw)
    m = len(raw)
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[idx]))
        adj[idx] = running
    from statsmodels.stats.multitest import multipletests

    assert np.allclose(adj, multipletests(raw, method="holm")[1])
    return {frozenset(p): v for p, v in zip(pairs, adj)}


def test_dunn_holm_matches_hand_computation(skewed_analysis):
    a = skewed_analysis
    dunn = rows_of(a, test="dunn")
    expected = dunn_holm_by_hand({k: np.array(v) for k, v in SKEWED.items()})
    assert len(dunn) == 3
    for r in dunn.to_dict("records"):
        assert r["p_adjust"] == "holm"
        assert r["p_value"] == pytest.approx(expected[frozenset((r["config_a"], r["config_b"]))], abs=1e-6)


def test_shapiro_and_levene_rows_match_scipy(normal_analysis):
    a = normal_analysis
    sh = rows_of(a, test="shapiro")
    for r in sh.to_dict("records"):
        W, p = ss.shapiro(NORMAL[r["config_a"]])
        assert r["statistic"] == pytest.approx(W, abs=1e-6)
        assert r["p_value"] == pytest.approx(p, abs=1e-6)
    lev = rows_of(a, test="levene").iloc[0]
    W, p = ss.levene(*NORMAL.values())
    assert lev["statistic"] == pytest.approx(W, abs=1e-6)
    assert lev["p_value"] == pytest.approx(p, abs=1e-6)


# ---------------------------------------------------------------- the path decision on synthetic data

def test_path_decision_on_normal_vs_skewed_synthetic_data():
    rng = np.random.default_rng(7)
    normal = {c: list(rng.normal(mu, 1.0, 25)) for c, mu in [("torch-cpu", 30), ("onnx-cpu", 25)]}
    skewed = {c: list(mu + rng.exponential(3.0, 25)) for c, mu in [("torch-cpu", 30), ("onnx-cpu", 25)]}
    assert analyze(frame(normal)).decision("mini-gpt2", "time_s").path == "welch+games-howell"
    assert analyze(frame(skewed)).decision("mini-gpt2", "time_s").path == "kruskal+dunn-holm"


# ---------------------------------------------------------------- edge cases: clear words, no crash, no NaN

def test_fewer_than_three_repetitions_is_not_applicable_with_reason(tmp_path):
    df = samples_frame(make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=2))
    a = analyze(df)
    om = rows_of(a, test="omnibus")
    assert len(om) == 1 and om["applicable"].iloc[0] is False
    assert "at least 3" in om["reason"].iloc[0]
    assert a.decision("mini-gpt2", "time_s").path == "not applicable"
    a.stats.to_csv(tmp_path / "stats.csv", index=False)
    csv = pd.read_csv(tmp_path / "stats.csv", keep_default_na=False, dtype=str)
    na = csv[csv["applicable"] == "False"]
    assert len(na) > 0
    assert (na["p_value"] == "").all()
    assert "nan" not in (tmp_path / "stats.csv").read_text().lower()


def test_one_small_configuration_is_left_out_and_the_rest_compared():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu", "openvino-cpu"), reps=6)
    rows = [r for r in rows if not (r["config"] == "openvino-cpu" and r["repetition"] >= 2)]
    a = analyze(samples_frame(rows))
    st = rows_of(a)
    na = st[(st["test"] == "shapiro") & (st["config_a"] == "openvino-cpu")].iloc[0]
    assert na["applicable"] is False and "2 repetition" in na["reason"] and na["p_value"] is None
    omni = st[st["test"].isin(["welch_anova", "kruskal"])].iloc[0]
    assert "openvino-cpu (n=2)" in omni["note"]


def test_single_configuration_says_nothing_to_compare():
    a = analyze(samples_frame(make_rows(models=("mini-gpt2",), configs=("torch-cpu",), reps=5)))
    om = rows_of(a, test="omnibus").iloc[0]
    assert "only one configuration (torch-cpu)" in om["reason"]
    assert om["p_value"] is None
    assert a.savings.empty
    energy = next(g for g in a.guidelines if g.shape == "energy-constrained")
    assert energy.best_config == "torch-cpu"
    assert any("only configuration measured" in e for e in energy.evidence)


def test_model_with_every_configuration_error_prone_is_reported_not_compared():
    rows = make_rows(models=("mini-gpt2", "phi2"), configs=("torch-cpu", "onnx-cpu"), reps=4)
    for r in rows:
        if r["model"] == "phi2":
            r["error_prone"] = True
    a = analyze(samples_frame(rows))
    st = rows_of(a, model="phi2")
    assert set(st["test"]) == {"omnibus"}
    assert st["reason"].str.contains("every configuration of this model was error-prone").all()
    assert {(e.model, e.config) for e in a.exclusions} == {("phi2", "torch-cpu"), ("phi2", "onnx-cpu")}
    assert "phi2" not in next(g for g in a.guidelines if g.shape == "latency-constrained").per_model
    assert any("error-prone" in w for w in a.findings[("box-a", "phi2")])


def test_error_prone_configuration_is_excluded_from_tests():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu", "openvino-cpu"), reps=5)
    for r in rows:
        r["error_prone"] = r["config"] == "openvino-cpu"
    a = analyze(samples_frame(rows))
    st = rows_of(a)
    assert "openvino-cpu" not in set(st["config_a"].dropna()) | set(st["config_b"].dropna())
    assert [e.config for e in a.exclusions] == ["openvino-cpu"]


def test_all_error_prone_everywhere_gives_no_guidelines_and_no_crash():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3, error_prone=True)
    a = analyze(samples_frame(rows))
    assert a.guidelines == []
    assert any("error-prone" in n for n in a.notes)


def test_estimated_vs_measured_note_when_sources_differ():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu",), reps=5, cpu_source="rapl")
    rows += make_rows(models=("mini-gpt2",), configs=("onnx-cpu",), reps=5, cpu_source="estimated-cpu-time", seed=1)
    a = analyze(samples_frame(rows))
    energy = rows_of(a, metric="energy_net_j")
    assert energy["note"].str.contains("energy sources differ").all()
    assert energy["note"].str.contains("estimated").all()
    assert any("sources differ" in w for w in a.findings[("box-a", "mini-gpt2")] if "net energy" in w)
    assert not rows_of(a, metric="time_s")["note"].fillna("").str.contains("energy sources").any()
    sav = a.savings[a.savings["metric"] == "energy_net_j"]
    assert sav["note"].str.contains("differ").all()


def test_same_measured_source_has_no_note():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=5, cpu_source="rapl")
    a = analyze(samples_frame(rows))
    assert rows_of(a, metric="energy_net_j")["note"].isna().all()


def test_slower_configuration_is_detected_and_named_in_words():
    rng = np.random.default_rng(3)
    groups = {"torch-cpu": list(rng.normal(20, 0.5, 8)), "onnx-cpu": list(rng.normal(30, 0.5, 8)),
              "openvino-cpu": list(rng.normal(20, 0.5, 8))}
    a = analyze(frame(groups))
    pair = rows_of(a)
    pair = pair[pair["test"].isin(["games_howell", "dunn"])]
    slow = pair[(pair["config_a"] == "onnx-cpu") | (pair["config_b"] == "onnx-cpu")]
    assert slow["significant"].all()
    words = " ".join(a.findings[("box-a", "mini-gpt2")])
    assert "onnx-cpu is significantly slower than torch-cpu" in words
    assert "onnx-cpu is significantly slower than openvino-cpu" in words
    latency = next(g for g in a.guidelines if g.shape == "latency-constrained")
    assert latency.best_config in ("torch-cpu", "openvino-cpu")


def test_two_identical_configurations_are_not_significant():
    values = [20.1, 19.8, 20.4, 20.0, 19.7, 20.3, 20.2, 19.9]
    a = analyze(frame({"torch-cpu": values, "onnx-cpu": list(reversed(values))}))
    st = rows_of(a)
    omni = st[st["test"].isin(["welch_anova", "kruskal"])].iloc[0]
    assert omni["significant"] is False and omni["p_value"] == pytest.approx(1.0)
    assert not st[st["test"].isin(["games_howell", "dunn"])]["significant"].any()
    assert any("no significant difference" in w for w in a.findings[("box-a", "mini-gpt2")] if w.startswith("time:"))


def test_metric_never_recorded_is_skipped_with_reason_not_zero():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=4)  # CPU only: no GPU metrics
    a = analyze(samples_frame(rows))
    gpu = rows_of(a, metric="gpu_pct")
    assert len(gpu) == 1 and gpu["test"].iloc[0] == "omnibus"
    assert "no GPU use values were recorded" in gpu["reason"].iloc[0]
    assert a.summary["gpu_pct"].isna().all()
    assert any("gpu_pct" in n for n in a.notes)


def test_savings_range_and_category_medians():
    rows = make_rows(models=("mini-gpt2", "phi2", "tinyllama"), configs=("torch-cpu", "torch-cuda"), reps=4)
    a = analyze(samples_frame(rows))
    s = a.savings[(a.savings["metric"] == "energy_net_j") & (a.savings["config"] == "torch-cuda")
                  & (a.savings["other"] == "torch-cpu")].iloc[0]
    per_model = []
    for model in ("mini-gpt2", "phi2", "tinyllama"):
        m = a.summary[a.summary["model"] == model].set_index("config")["energy_net_j"]
        per_model.append((m["torch-cpu"] - m["torch-cuda"]) / m["torch-cpu"] * 100)
    assert s["min_pct"] == pytest.approx(min(per_model)) and s["max_pct"] == pytest.approx(max(per_model))
    assert s["text"].startswith("torch-cuda uses from") and "less estimated energy than torch-cpu" in s["text"]
    cat = a.category_medians
    assert set(cat["category"]) == {"category 1 (under 1B parameters)", "category 2 (1-1.5B parameters)",
                                    "category 3 (2-3B parameters)"}  # the embedded mini-gpt2 is under 1B
    phi = samples_frame([r for r in rows if r["model"] == "phi2" and r["config"] == "torch-cpu"])
    row = cat[(cat["category"] == "category 3 (2-3B parameters)") & (cat["config"] == "torch-cpu")].iloc[0]
    assert row["time_s"] == pytest.approx(phi["time_s"].median())


def test_size_category_comes_from_the_samples_not_the_model_registry():
    rows = make_rows(models=("my-model", "phi2"), configs=("torch-cpu", "onnx-cpu"), reps=3, category=None)
    for r in rows:
        if r["model"] == "my-model":  # unknown to the model registry: the sample says category 1
            r["category"] = 1
    a = analyze(samples_frame(rows))
    assert set(a.category_medians["category"]) == {"category 1 (under 1B parameters)", "uncategorised"}  # phi2's say nothing
    assert a.summary.set_index("model")["category"].isna().to_dict() == {"my-model": False, "phi2": True}


def test_several_machines_are_analysed_apart():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=4, machine="box-a")
    rows += make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=4, machine="box-b", seed=5)
    a = analyze(samples_frame(rows))
    assert set(a.stats["machine"]) == {"box-a", "box-b"}
    assert {g.machine for g in a.guidelines} == {"box-a", "box-b"}
    assert len(a.summary) == 4


def test_the_notes_say_which_energy_the_statistics_use_and_how_steady_idle_was():
    rows = [sample("codeparrot-small", c, r, time_s=10.0 + r, energy_j=1000.0) for c in ("torch-cpu", "onnx-cpu")
            for r in range(1, 4)]
    for i, row in enumerate(rows):
        row["idle_power_w"] = 20.0 + i  # idle windows next to each sample: 20..25 W
    notes = analyze(samples_frame(rows)).notes
    [note] = [n for n in notes if n.startswith("net energy (gross minus the idle power")]
    assert "subtract no idle" in note and "idle power ranged 20–25 W across 6 samples" in note


# ---------------------------------------------------------------- post-hoc claims need a significant omnibus

def test_no_pair_is_claimed_significant_when_the_omnibus_test_is_not(monkeypatch):
    from pytest_greenserve.analysis import hypothesis

    real = hypothesis._omnibus

    def not_significant(*args, **kw):  # the same data, but an omnibus p of 0.2
        omni, p, stat_text, eff_text = real(*args, **kw)
        omni.update(p_value=0.2, significant=False)
        return omni, 0.2, stat_text, eff_text

    monkeypatch.setattr(hypothesis, "_omnibus", not_significant)
    a = analyze(frame(NORMAL))
    pairs = a.rows(model="mini-gpt2", metric="time_s", test="games_howell")
    assert len(pairs) == 3 and (pairs["p_value"] < 0.001).all()  # the p-values are kept...
    assert not pairs["significant"].any()  # ...but no pair is claimed different
    assert pairs["reason"].str.contains("omnibus test is not significant").all()
    words = " ".join(a.findings[("box-a", "mini-gpt2")])
    assert "significantly slower" not in words
    latency = next(g for g in a.guidelines if g.shape == "latency-constrained")
    assert "not significantly different" in " ".join(latency.evidence)
    assert "significantly lower" not in " ".join(latency.evidence)


def test_pairs_stay_significant_when_the_omnibus_is():
    a = analyze(frame(NORMAL))
    assert a.rows(model="mini-gpt2", metric="time_s", test="games_howell")["significant"].all()


# ---------------------------------------------------------------- flagged samples are never silent

def test_an_unsteady_sample_is_flagged_in_stats_csv_and_on_the_rows_comparing_it(tmp_path):
    from pytest_greenserve.report import write_reports

    rows = make_rows(models=("mini-gpt2",), reps=5)
    for r in rows:
        r.update(unsteady=False, low_resolution=False)
    jit = next(r for r in rows if r["config"] == "onnx-cpu" and r["repetition"] == 1)
    jit.update(unsteady=True, slowest_over_median=35.2, drift_pct=-70.0)
    short = next(r for r in rows if r["config"] == "torch-cpu" and r["repetition"] == 2)
    short.update(low_resolution=True, time_s=0.42, min_sample_s=1.0)
    a = analyze(samples_frame(rows))
    flag = a.rows(test="unsteady")
    assert list(flag["config_a"]) == ["onnx-cpu"] and "1 of 5" in flag["reason"].iloc[0]
    assert "35.2x the median" in flag["reason"].iloc[0]
    assert list(a.rows(test="low_resolution")["config_a"]) == ["torch-cpu"]
    pair = a.rows(metric="time_s").dropna(subset=["config_b"])
    onnx_pairs = pair[(pair["config_a"] == "onnx-cpu") | (pair["config_b"] == "onnx-cpu")]
    assert onnx_pairs["note"].str.contains("onnx-cpu 1/5 unsteady").all()
    assert any(n.startswith("box-a / mini-gpt2: onnx-cpu unsteady") and "in 1 of 5 sample(s)" in n for n in a.notes)

    paths = write_reports(rows, tmp_path)
    stats_csv = pd.read_csv(paths["stats"])
    assert set(stats_csv.loc[stats_csv["test"] == "unsteady", "config_a"]) == {"onnx-cpu"}
    md = paths["summary"].read_text()
    assert "onnx-cpu (flagged: 1/5 unsteady)" in md and "torch-cpu (flagged: 1/5 low-resolution)" in md
    assert "0.42 s < 1 s" in md
    html = paths["html"].read_text()
    assert "1/5 unsteady" in html and "in 1 of 5 sample(s)" in html


def test_steady_samples_raise_no_flag():
    rows = make_rows(models=("mini-gpt2",), reps=5)
    for r in rows:
        r.update(unsteady=False, low_resolution=False)
    a = analyze(samples_frame(rows))
    assert a.rows(test="unsteady").empty and a.flags == []
    assert not any("flagged" in str(n) for n in a.stats["note"])


# ---------------------------------------------------------------- the resource guideline ranks the process tree

def test_the_resource_guideline_ranks_process_tree_figures_with_system_wide_as_context():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=5)
    for r in rows:
        # system-wide: torch-cpu looks lighter (a neighbour was busy during onnx-cpu's samples)...
        r["cpu_pct"], r["ram_pct"] = (50.0, 20.0) if r["config"] == "torch-cpu" else (90.0, 40.0)
        # ...but the process tree says onnx-cpu is the lighter engine
        r["proc_cpu_pct"], r["proc_ram_pct"] = (180.0, 9.0) if r["config"] == "torch-cpu" else (60.0, 4.0)
    a = analyze(samples_frame(rows))
    g = next(g for g in a.guidelines if g.shape == "resource-constrained")
    assert g.best_config == "onnx-cpu"
    text = " ".join(g.evidence)
    assert "process-tree" in text and "system-wide, other processes included (context, not ranked)" in text
    # without process-tree figures, the system-wide ones are ranked, as before
    for r in rows:
        r["proc_cpu_pct"] = r["proc_ram_pct"] = None
    g = next(g for g in analyze(samples_frame(rows)).guidelines if g.shape == "resource-constrained")
    assert g.best_config == "torch-cpu" and "context, not ranked" not in " ".join(g.evidence)


def test_configurations_are_compared_only_under_the_same_load():
    """A Poisson rate's samples last as long as the offered rate makes them (a quarter of the
    closed-loop rate: four times as long, on purpose): comparing them with closed:1, or with
    another rate, would name a 'faster' rate. Each rate is its own comparison unit; two
    configurations at the same rate are compared with each other."""
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=5)
    slow_rate = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=5, seed=1)
    for r in slow_rate:  # a rate at which both configurations idle between arrivals: 10x the time
        r["config"] += "@http/poisson2"
        r["time_s"] *= 10
    fast_rate = make_rows(models=("mini-gpt2",), configs=("torch-cpu",), reps=5, seed=2)
    for r in fast_rate:
        r["config"] += "@http/poisson8"
    a = analyze(samples_frame(rows + slow_rate + fast_rate))
    units = set(a.summary["model"])
    assert units == {"mini-gpt2", "mini-gpt2 under poisson2", "mini-gpt2 under poisson8"}
    pairs = a.stats[a.stats["test"].isin(["games_howell", "dunn"])]
    compared = {frozenset((r.config_a, r.config_b)) for r in pairs.itertuples()}
    assert frozenset(("torch-cpu", "onnx-cpu")) in compared
    assert frozenset(("torch-cpu@http/poisson2", "onnx-cpu@http/poisson2")) in compared
    for pair in compared:  # never a closed:1 configuration against a rate, nor two rates
        assert len({c.partition("/")[2] for c in pair}) == 1, pair
    for r in a.savings.itertuples():
        assert r.config.partition("/")[2] == r.other.partition("/")[2], (r.config, r.other)
    assert not any("poisson8" in line and "poisson2" in line for g in a.guidelines for line in g.evidence)
    energy = next(g for g in a.guidelines if g.shape == "energy-constrained")
    # a load with one configuration beats nothing: it is named, not counted as a win
    assert "mini-gpt2 under poisson8" not in energy.per_model
    assert any("mini-gpt2 under poisson8: torch-cpu@http/poisson8 is the only configuration measured" in e
               for e in energy.evidence)


def test_runs_of_different_workloads_are_not_compared_and_a_note_says_why():
    """Merged runs whose samples hold different prompt counts: a sample's time and energy are
    totals over its requests, so the 48-prompt configuration would 'win' by having less to do."""
    small = make_rows(models=("mini-gpt2",), configs=("torch-cpu",), reps=5)
    for r in small:
        r["requests"] = 48
        r["time_s"] *= 48 / 164
    full = make_rows(models=("mini-gpt2",), configs=("onnx-cpu", "openvino-cpu"), reps=5, seed=1)
    a = analyze(samples_frame(small + full))
    assert set(a.summary["model"]) == {"mini-gpt2 (48 prompts x 16 tokens)", "mini-gpt2 (164 prompts x 16 tokens)"}
    pairs = a.stats[a.stats["test"].isin(["games_howell", "dunn"])]
    assert "torch-cpu" not in set(pairs["config_a"]) | set(pairs["config_b"])
    assert not pairs.empty  # onnx-cpu and openvino-cpu share a workload and are compared
    assert any("different workloads (164 prompts x 16 tokens, 48 prompts x 16 tokens)" in n for n in a.notes)
    assert a.savings.empty or "torch-cpu" not in set(a.savings["config"]) | set(a.savings["other"])
