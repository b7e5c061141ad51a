"""pytest-benchmark's terminal tables appear only when the user asked pytest-benchmark for them."""

from __future__ import annotations

import pytest

from pytest_greenserve.benchmark_interop import asked_for_tables

pytest.importorskip("pytest_benchmark")

TEST = """
def test_fast(benchmark):
    benchmark(lambda: None)
"""


def test_any_benchmark_option_is_asking():
    assert asked_for_tables(["benchmarks", "--benchmark-autosave"])
    assert asked_for_tables(["--benchmark-columns=min,max"])
    assert not asked_for_tables(["benchmarks", "-k", "mini-gpt2", "--greenserve-runs=3"])


@pytest.mark.parametrize("args, shown", [((), False), (("--benchmark-columns=min,max",), True)])
def test_the_tables_are_shown_only_when_asked(pytester, monkeypatch, args, shown):
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makepyfile(test_b=TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert ("benchmark: 1 tests" in out) == shown, out[-2000:]


def test_an_ini_addopts_option_is_asking(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makepyfile(test_b=TEST)
    pytester.makeini("[pytest]\naddopts = --benchmark-columns=min\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert "benchmark: 1 tests" in result.stdout.str()
