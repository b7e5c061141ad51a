"""--greenserve-load (load.py, measure.measure_open_loop): parsing, the seeded arrival schedule,
the measured window between warm-up and cool-down, the sweep's stop rule, labels and the
baseline's workload check. Fake targets with known latencies: no torch, no server."""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager

import pytest

from pytest_greenserve import load as L
from pytest_greenserve.baselines import BaselineError, check_workload
from pytest_greenserve.configs import ServingConfig
from pytest_greenserve.engines.base import Generation
from pytest_greenserve.measure import RequestFailed, measure_open_loop, measure_prompts
from pytest_greenserve.metrics import builtin_metrics
from pytest_greenserve.options import OptionError, option
from pytest_greenserve.samples import build_sample, config_label


# -- parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, shape", [
    ("closed:1", L.LoadShape()), ("closed:4", L.closed(4)), ("poisson:2.5", L.poisson(2.5)),
    ("constant:3", L.LoadShape("constant", rate_rps=3.0)), ("sweep", L.LoadShape("sweep")),
    ("sweep:1,2.5,4", L.LoadShape("sweep", rates_rps=(1.0, 2.5, 4.0))), (" Poisson:0.5 ", L.poisson(0.5)),
])
def test_load_shapes_parse_and_print_back(text, shape):
    assert L.parse_load(text) == shape
    assert L.parse_load(str(shape)) == shape


@pytest.mark.parametrize("text", ["", "open:2", "poisson", "poisson:", "poisson:-1", "poisson:0", "poisson:x",
                                  "poisson:nan", "constant:inf", "closed:0", "closed:1.5", "closed:999",
                                  "sweep:3,2", "sweep:1,,2", "closed:2:3"])
def test_bad_load_is_a_one_line_option_error(text):
    with pytest.raises(OptionError) as err:
        option("load").parse(text)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--greenserve-load={text!r}: expected closed:N")


def read(tmp_path, **given):
    from pytest_greenserve.engines import BUILTIN
    from pytest_greenserve.models import REGISTRY
    from pytest_greenserve.options import read_settings

    given = {k.replace("_", "-"): v for k, v in given.items()}
    return read_settings({"models": "mini-gpt2", "configs": "torch-cpu", **given}.get,
                         engines={e.name: e for e in BUILTIN}, models=dict(REGISTRY), rootpath=tmp_path)


def test_concurrency_is_closed_n_one_fact_two_names(tmp_path):
    assert read(tmp_path).load == L.CLOSED_1 and read(tmp_path).concurrency == 1
    s = read(tmp_path, concurrency="4", transport="http")
    assert (s.load, s.concurrency) == (L.closed(4), 4)
    s = read(tmp_path, load="closed:4", transport="http")
    assert (s.load, s.concurrency) == (L.closed(4), 4)
    assert read(tmp_path, load="closed:4", concurrency="4", transport="http").concurrency == 4
    s = read(tmp_path, load="poisson:2", transport="http")
    assert (s.load, s.concurrency) == (L.poisson(2), None)  # an open loop has no fixed clients
    with pytest.raises(OptionError, match=r"^--greenserve-concurrency=2 is --greenserve-load=closed:2, but "
                                          r"--greenserve-load=poisson:2 was given too: give one of them$"):
        read(tmp_path, load="poisson:2", concurrency="2", transport="http")


@pytest.mark.parametrize("given, words", [
    ({"load": "poisson:2"}, "--greenserve-load=poisson:2 needs --greenserve-transport=http"),
    ({"load": "closed:3"}, "--greenserve-load=closed:3 needs --greenserve-transport=http"),
    ({"load": "sweep", "transport": "http", "runs": "auto"}, "not with --greenserve-runs=auto"),
    ({"load": "sweep", "transport": "http", "ab": "onnx-cpu"}, "not with --greenserve-ab"),
    ({"load_warmup": "0.5", "load_cooldown": "0.5"}, "leave no measured window"),
    ({"load_warmup": "1"}, "expected a fraction"),
])
def test_loads_that_cannot_run_are_refused_in_one_line(tmp_path, given, words):
    with pytest.raises(OptionError) as err:
        read(tmp_path, **given)
    assert words in str(err.value) and "\n" not in str(err.value)


# -- the arrival schedule -------------------------------------------------------------------------

def test_poisson_arrivals_follow_the_seed_and_the_repetition():
    shape = L.poisson(4.0)
    a = L.arrival_times(shape, 50, seed=7, repetition=1)
    assert a == L.arrival_times(shape, 50, seed=7, repetition=1)  # reproducible
    assert a != L.arrival_times(shape, 50, seed=8, repetition=1)
    assert a != L.arrival_times(shape, 50, seed=7, repetition=2)  # each repetition its own draw
    assert a[0] == 0.0 and a == sorted(a)


def test_poisson_gaps_average_one_over_the_rate():
    times = L.arrival_times(L.poisson(2.5), 20001, seed=0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert statistics.fmean(gaps) == pytest.approx(1 / 2.5, rel=0.03)  # sd of the mean: 0.7%
    assert statistics.stdev(gaps) == pytest.approx(1 / 2.5, rel=0.05)  # exponential: sd = mean


def test_constant_arrivals_are_evenly_spaced_exactly():
    assert L.arrival_times(L.LoadShape("constant", rate_rps=4.0), 5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_the_window_is_the_span_less_warmup_and_cooldown():
    assert L.measured_window([0.0, 0.5, 1.0, 2.0], 0.1, 0.25) == pytest.approx((0.2, 1.5))
    with pytest.raises(ValueError, match="the measured window is empty"):
        L.measured_window([0.0], 0.1, 0.1)  # one request spans nothing


# -- the measured window, with a fake target --------------------------------------------------------

class Timed:
    """A target answering ``latency_of(prompt)`` seconds later, one request at a time at most
    when ``serial`` (a server's engine thread), with a TTFT of half its service time."""

    def __init__(self, latency_of, serial=False):
        self.latency_of, self.lock = latency_of, threading.Lock() if serial else None

    def generate(self, ids, new_tokens):
        @contextmanager
        def held():
            if self.lock is None:
                yield
            else:
                with self.lock:
                    yield

        with held():
            service = self.latency_of(ids)
            time.sleep(service)
        return Generation([ids[0]] * new_tokens, ttft_s=service / 2)


class Meters:
    """Records when its window opened and closed."""

    def __init__(self):
        self.opened = self.closed = None

    @contextmanager
    def track(self, idle):
        self.opened = time.perf_counter()
        tracked = type("Tracked", (), {"fields": {"energy_total_j": 10.0}})()
        yield tracked
        self.closed = time.perf_counter()


def sample_of(m, load, slo=None, new_tokens=2):
    return build_sample(run_id="r", machine="m", model="tiny", category=1, weights="w",
                        config=ServingConfig("null", "cpu"), repetition=1, order=1, new_tokens=new_tokens,
                        prompt_ids=[[i] for i in range(len(m.outputs))], measurement=m, reference=None,
                        versions={}, metrics=builtin_metrics(), transport="http", load=load, slo=slo)


def test_only_requests_completing_inside_the_window_count():
    # constant:10, 11 prompts: arrivals at 0.0, 0.1, ..., 1.0 s; the window [0.25, 0.75] s holds
    # the arrivals 0.3..0.7 (prompts 3..7), each answered in 10 ms; warm-up and cool-down
    # requests take 30 ms, so counting any of them would show in the latencies and the goodput
    shape = L.LoadShape("constant", rate_rps=10.0)
    inside = {3, 4, 5, 6, 7}
    meters = Meters()
    m = measure_open_loop(Timed(lambda ids: 0.01 if ids[0] in inside else 0.03), [[i] for i in range(11)], 2, shape,
                          meters, None, warmup=0.25, cooldown=0.25)
    assert m.measured == [i in inside for i in range(11)]
    assert m.outputs == [[i, i] for i in range(11)]  # every request answered, in prompt order
    assert m.time_s == pytest.approx(0.5, abs=0.05)
    assert meters.closed - meters.opened == pytest.approx(m.time_s, abs=0.01)  # the meters' window is this one
    assert meters.opened - m.window["start_s"] >= 0  # opened after the warm-up, not at the first arrival
    assert m.window["start_s"] == pytest.approx(0.25, abs=0.03) and m.window["end_s"] == pytest.approx(0.75, abs=0.05)
    s = sample_of(m, shape, slo={"e2e_s": 0.02})
    assert (s["requests"], s["requests_sent"], s["tokens_generated"]) == (5, 11, 10)
    assert len(s["latencies_s"]) == 5 and max(s["latencies_s"]) < 0.02
    assert s["slo_met_pct"] == 100.0 and s["goodput_rps"] == pytest.approx(5 / m.time_s)
    assert s["requests_per_s"] == pytest.approx(5 / m.time_s)
    assert s["j_per_token"] == pytest.approx(10.0 / 10)  # the window's energy over the window's tokens
    assert (s["load"], s["offered_rate_rps"], s["concurrency"]) == ("constant:10", 10.0, None)
    assert s["requests_offered"] == 5 and s["achieved_rate_pct"] == 100.0
    assert s["config"] == "null-cpu@http/constant10"


def test_goodput_is_judged_on_the_window_only():
    # inside the window every request misses a 20 ms objective; outside every one meets it
    shape = L.LoadShape("constant", rate_rps=10.0)
    m = measure_open_loop(Timed(lambda ids: 0.03 if 3 <= ids[0] <= 7 else 0.001), [[i] for i in range(11)], 2,
                          shape, None, None, warmup=0.25, cooldown=0.25)
    s = sample_of(m, shape, slo={"e2e_s": 0.02})
    assert s["requests"] == 5 and s["goodput_rps"] == 0.0 and s["slo_met_pct"] == 0.0


def test_latency_runs_from_the_scheduled_arrival_so_queueing_shows():
    # one request at a time, 50 ms each, released every 10 ms: each waits for those before it
    shape = L.LoadShape("constant", rate_rps=100.0)
    m = measure_open_loop(Timed(lambda ids: 0.05, serial=True), [[i] for i in range(6)], 2, shape, warmup=0.0,
                          cooldown=0.0)
    assert m.latencies_s[-1] > 0.2 and m.latencies_s == sorted(m.latencies_s)
    assert all(t >= 0.025 for t in m.ttfts_s)  # TTFT from the arrival too, not from the send


def test_a_failing_request_fails_the_sample_in_one_line():
    def boom(ids):
        if ids[0] == 2:
            raise RuntimeError("engine fell over")
        return 0.001

    with pytest.raises(RequestFailed, match=r"^request 3 of 6 failed: RuntimeError: engine fell over$"):
        measure_open_loop(Timed(boom), [[i] for i in range(6)], 2, L.LoadShape("constant", rate_rps=50.0))


def test_an_empty_window_is_one_line():
    with pytest.raises(RequestFailed, match="the measured window is empty"):
        measure_prompts(Timed(lambda ids: 0.0), [[1]], 2, load=L.poisson(5.0), warmup=0.1, cooldown=0.1)


def test_closed_loop_measures_every_request_as_before():
    m = measure_prompts(Timed(lambda ids: 0.001), [[1], [2], [3]], 2, load=L.closed(2))
    assert (m.measured, m.load, m.offered_rate_rps) == (None, "closed:2", None)
    s = sample_of(m, L.closed(2))
    assert (s["requests"], s["requests_sent"], s["concurrency"], s["config"]) == (3, 3, 2, "null-cpu@http/c2")
    assert s["offered_rate_rps"] is None and s["achieved_rate_pct"] is None  # no rate offered: not 0


# -- the sweep ----------------------------------------------------------------------------------------

def test_sweep_rates_come_from_closed_1_or_are_given():
    assert L.sweep_rates(L.LoadShape("sweep"), 4.0) == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert L.sweep_rates(L.LoadShape("sweep"), 3.0) == (0.75, 1.5, 2.25, 3.0, 3.75, 4.5)
    assert L.sweep_rates(L.LoadShape("sweep", rates_rps=(1.0, 9.0)), 4.0) == (1.0, 9.0)
    assert L.sweep_rates(L.LoadShape("sweep"), None) == ()


def test_the_sweep_stops_when_latency_runs_away():
    # a server that serves one request at a time in 20 ms saturates near 50 requests/s
    target = Timed(lambda ids: 0.02, serial=True)
    prompts = [[i] for i in range(12)]
    closed = sample_of(measure_prompts(target, prompts[:4], 2), L.CLOSED_1)
    measured = []

    def at(rate):
        measured.append(rate)
        return sample_of(measure_open_loop(target, prompts, 2, L.poisson(rate), warmup=0.1, cooldown=0.1), L.poisson(rate))

    ran, why = L.run_sweep((20.0, 400.0, 800.0), at, closed["latency_p50_s"])
    assert ran == measured == [20.0, 400.0], why  # 800 never offered
    assert why is not None  # 12 requests released in 30 ms, served in 240 ms: every reason holds


@pytest.mark.parametrize("p50, achieved, runs_away", [
    (0.1, 95.0, False), (0.5, 95.0, True), (0.1, 80.0, True), (None, None, True)])
def test_runaway_rule(p50, achieved, runs_away):
    assert (L.runaway(p50, 0.1, achieved, 10.0) is not None) is runs_away


# -- labels and the baseline -----------------------------------------------------------------------------

def test_each_rate_is_its_own_configuration_label():
    cfg = ServingConfig("torch", "cpu")
    assert config_label(cfg, "http", load=L.poisson(2.5)) == "torch-cpu@http/poisson2.5"
    assert config_label(cfg, "http", load=L.LoadShape("constant", rate_rps=2.0)) == "torch-cpu@http/constant2"
    assert config_label(cfg, "http", 4) == config_label(cfg, "http", load=L.closed(4)) == "torch-cpu@http/c4"
    assert config_label(cfg, "http", load=L.CLOSED_1) == "torch-cpu@http"  # the paper's label, unchanged


def test_a_baseline_with_another_load_is_refused():
    doc = {"name": "b", "options": {"load": "closed:1", "load_warmup_frac": 0.1}}
    check_workload(doc, {"load": "closed:1", "load_warmup_frac": 0.1})
    with pytest.raises(BaselineError, match=r"--greenserve-load=closed:1, this session has --greenserve-load=poisson:2"):
        check_workload(doc, {"load": "poisson:2", "load_warmup_frac": 0.1})
    with pytest.raises(BaselineError, match=r"--greenserve-load-warmup=0.1, this session has --greenserve-load-warmup=0.2"):
        check_workload(doc, {"load": "closed:1", "load_warmup_frac": 0.2})


def test_run_options_record_the_load(tmp_path):
    from pytest_greenserve.session import run_options

    opts = run_options(read(tmp_path, load="poisson:2", transport="http"))
    assert (opts["load"], opts["concurrency"], opts["load_warmup_frac"]) == ("poisson:2", None, 0.1)
