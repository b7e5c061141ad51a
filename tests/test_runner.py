"""The measuring core without models: the runner's load, warm-up, failure cache and idle windows;
the measure step's one-line failures; the reference store's disk cache. Fake targets and a fake
meter set stand in for engines and hardware, so these run in milliseconds."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from pytest_greenserve.engines.base import EngineError, Generation
from pytest_greenserve.measure import RequestFailed, measure_prompts
from pytest_greenserve.references import ReferenceStore
from pytest_greenserve.runner import Runner
from pytest_greenserve.targets import Target

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]


class FakeTarget:
    """Echoes the last prompt id + 1 .. + new_tokens; can fail at load or at a given request."""

    def __init__(self, fail_load=None, fail_at_request=None):
        self.fail_load = fail_load
        self.fail_at_request = fail_at_request
        self.loads = self.requests = self.closes = 0

    def load(self):
        self.loads += 1
        if self.fail_load:
            raise self.fail_load

    def generate(self, input_ids, new_tokens):
        self.requests += 1
        if self.requests == self.fail_at_request:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\n(long CUDA detail)")
        return Generation([input_ids[-1] + k for k in range(1, new_tokens + 1)], ttft_s=0.001)

    def close(self):
        self.closes += 1

    def versions(self):
        return {"fake": "1"}


class FakeMeters:
    """Counts idle measurements and tracked windows; records whether a window is open."""

    def __init__(self):
        self.idles = 0
        self.windows = 0
        self.open = False

    def measure_idle(self, seconds, progress=None):
        self.idles += 1
        return f"idle-{self.idles}"

    @contextmanager
    def track(self, idle=None):
        class Tracked:
            fields = {}
        tracked = Tracked()
        self.open = True
        self.windows += 1
        try:
            yield tracked
        finally:
            self.open = False
            tracked.fields = {"energy_cpu_j": 1.0, "idle_used": idle, "meter_notes": []}


def runner(**kw):
    return Runner(**{"warmup": 2, "new_tokens": 4, "idle_s": 1.0, "cooldown_s": 0.0, "progress": lambda m: None,
                     **kw})


def test_an_engine_is_a_target():
    assert isinstance(FakeTarget(), Target)


def test_the_runner_loads_and_warms_up_once_per_configuration():
    r, t = runner(), FakeTarget()
    first = r.ensure(("m", "torch-cpu"), "m on torch-cpu", lambda: t, PROMPTS)
    again = r.ensure(("m", "torch-cpu"), "m on torch-cpu", lambda: FakeTarget(), PROMPTS)
    assert again is first and t.loads == 1
    assert t.requests == 3  # the 2 warm-up prompts, then the one of another length, before anything is measured


def test_a_configuration_that_cannot_load_fails_once_and_is_not_loaded_again():
    r = runner()
    made = []

    def make():
        made.append(FakeTarget(fail_load=OSError("no such file: model.onnx\nmore detail")))
        return made[-1]

    for _ in range(3):
        with pytest.raises(EngineError) as err:
            r.ensure(("m", "onnx-cpu"), "m on onnx-cpu", make, PROMPTS)
        assert str(err.value) == "m on onnx-cpu could not be served: OSError: no such file: model.onnx"
    assert len(made) == 1 and made[0].closes == 1


def test_an_idle_window_is_measured_next_to_every_sample_after_settling():
    slept = []
    r, meters = runner(settle_s=2.0, sleep=slept.append), FakeMeters()
    r.ensure(("m", "torch-cpu"), "a", FakeTarget, PROMPTS)
    idles = [r.idle_baseline("a", meters) for _ in range(3)]  # three samples of the same load
    assert idles == ["idle-1", "idle-2", "idle-3"] and meters.idles == 3
    assert slept == [2.0, 2.0, 2.0]  # the machine rests before every idle window


def test_no_idle_window_without_meters_or_with_idle_zero():
    meters = FakeMeters()
    assert runner(idle_s=0.0).idle_baseline("a", meters) is None
    assert runner().idle_baseline("a", None) is None
    assert meters.idles == 0


def test_a_request_that_raises_fails_the_sample_in_one_line_and_closes_the_window():
    meters, target = FakeMeters(), FakeTarget(fail_at_request=3)
    with pytest.raises(RequestFailed) as err:
        measure_prompts(target, PROMPTS, 4, meters, idle="idle-1")
    assert str(err.value) == "request 3 of 3 failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert not meters.open
    # the next sample measures normally
    m = measure_prompts(FakeTarget(), PROMPTS, 4, meters, idle="idle-1")
    assert m.outputs == [[4, 5, 6, 7], [6, 7, 8, 9], [10, 11, 12, 13]]
    assert len(m.latencies_s) == 3 and m.meter_fields["idle_used"] == "idle-1"
    assert meters.windows == 2 and not meters.open


def test_discarding_a_broken_target_makes_the_next_sample_load_it_again():
    r = runner(warmup=0)
    first = r.ensure(("m", "torch-cuda"), "m", FakeTarget, PROMPTS)
    r.discard()
    assert first.target.closes == 1
    assert r.ensure(("m", "torch-cuda"), "m", FakeTarget, PROMPTS) is not first


def test_reference_tokens_are_computed_once_and_then_read_from_disk(tmp_path):
    computed = []

    def make(dtype):
        assert dtype == "fp32"  # the reference is fp32 whatever the session's dtype
        computed.append(FakeTarget())
        return computed[-1]

    args = ("mini-gpt2", "cpu", "mini-gpt2@replica-1", ["a", "b", "c"], PROMPTS)
    first = ReferenceStore(tmp_path, 4, progress=lambda m: None).get(*args, make)
    # a new session (new store object) finds the file: nothing is computed again
    second = ReferenceStore(tmp_path, 4, progress=lambda m: None).get(*args, make)
    assert first == second == [[4, 5, 6, 7], [6, 7, 8, 9], [10, 11, 12, 13]]
    assert len(computed) == 1 and computed[0].closes == 1
    # another number of new tokens is another reference
    third = ReferenceStore(tmp_path, 2, progress=lambda m: None).get(*args, make)
    assert third == [[4, 5], [6, 7], [10, 11]] and len(computed) == 2


def test_no_reference_engine_for_a_provider_means_no_reference(tmp_path):
    store = ReferenceStore(tmp_path, 4, progress=lambda m: None)
    assert store.get("m", "cuda", "k", ["a"], [[1]], lambda dtype: None) is None


# ---------------------------------------------------------------- warm-up covers every prompt length

def test_the_warm_up_sends_one_prompt_of_every_prompt_length_the_sample_will_meet():
    from pytest_greenserve.runner import warmup_requests

    prompts = [[1] * 12, [2] * 12, [3] * 10, [4] * 12, [5] * 15, [6] * 10, [7] * 11]
    sent = []

    class Recording(FakeTarget):
        def generate(self, input_ids, new_tokens):
            sent.append(list(input_ids))
            return super().generate(input_ids, new_tokens)

    r = runner(warmup=2)
    r.ensure(("m", "jit-cpu"), "m on jit-cpu", Recording, prompts)
    # the first 2 prompts (--greenserve-warmup keeps its meaning), then the first of each new length
    assert sent == [[1] * 12, [2] * 12, [3] * 10, [5] * 15, [7] * 11]
    assert {len(p) for p in sent} == {len(p) for p in prompts}
    assert warmup_requests(prompts, 0) == [[1] * 12, [3] * 10, [5] * 15, [7] * 11]
    assert warmup_requests([], 2) == []


class MarginTarget(FakeTarget):
    """A reference engine that reports each step's top-2 gap when asked (like TorchEngine)."""

    keep_margins = False

    def generate(self, input_ids, new_tokens):
        gen = super().generate(input_ids, new_tokens)
        if self.keep_margins:
            gen.margins = [0.5 + k for k in range(new_tokens)]
        return gen


def test_the_reference_keeps_its_margins_on_disk(tmp_path):
    import json

    made = []

    def make(dtype):
        made.append(MarginTarget())
        return made[-1]

    args = ("mini-gpt2", "cpu", "mini-gpt2@replica-1", ["a", "b", "c"], PROMPTS)
    first = ReferenceStore(tmp_path, 3, progress=lambda m: None).get(*args, make)
    assert made[0].keep_margins  # the store asked for margins
    assert first == [[4, 5, 6], [6, 7, 8], [10, 11, 12]]
    assert first.margins == [[0.5, 1.5, 2.5]] * 3
    again = ReferenceStore(tmp_path, 3, progress=lambda m: None).get(*args, make)
    assert again.margins == first.margins and len(made) == 1
    (path,) = (tmp_path / "reference").glob("*.json")
    data = json.loads(path.read_text())
    assert data["format"] == 3 and data["token_ids"] == first and data["margins"] == first.margins
    assert data["key"] == "mini-gpt2@replica-1" and data["dtype"] == "fp32"


def test_a_reference_engine_without_margins_gives_none(tmp_path):
    args = ("mini-gpt2", "cpu", "k", ["a", "b", "c"], PROMPTS)
    ref = ReferenceStore(tmp_path, 2, progress=lambda m: None).get(*args, lambda dtype: FakeTarget())
    assert ref == [[4, 5], [6, 7], [10, 11]] and ref.margins is None


def test_reference_files_of_the_older_format_are_not_read(tmp_path):
    """Format 1 files (a bare list of ids) sit under another digest: never misread as format 2."""
    import hashlib
    import json

    from pytest_greenserve.engines.base import library_versions

    store = ReferenceStore(tmp_path, 2, progress=lambda m: None)
    texts = ["a", "b", "c"]
    old_key = json.dumps(["k", "cpu", texts, 2, library_versions(("torch", "transformers"))], sort_keys=True)
    old = tmp_path / "reference" / f"m-cpu-{hashlib.sha256(old_key.encode()).hexdigest()[:16]}.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps([[0, 0], [0, 0], [0, 0]]))
    assert store.path("m", "cpu", "k", texts) != old
    assert store.get("m", "cpu", "k", texts, PROMPTS, lambda dtype: MarginTarget()).margins == [[0.5, 1.5]] * 3
