"""The reference store's files (issue 19): the fp32 reference with its log-probabilities, the
native path of another dtype, the NLL cache of other continuations; atomic writes, keyed by the
model handle's key, and a torn or corrupt file rebuilt with a one-line note. Fake targets: these
run in milliseconds."""

from __future__ import annotations

import json

import pytest

from pytest_greenserve.engines.base import Generation
from pytest_greenserve.references import FORMAT, ReferenceStore, write_atomically

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
TEXTS = ["a", "b", "c"]
KEY = "mini-gpt2@replica-1"


class FakeTorch:
    """Echoes the last prompt id + 1..n (+ ``shift``); reports margins and log-probabilities when
    asked, and scores a continuation as log p = -0.5 per token that departs from its own greedy
    choice (-0.1 per token otherwise)."""

    def __init__(self, log: list, dtype: str, shift: int = 0):
        self.log, self.dtype, self.shift = log, dtype, shift
        self.keep_margins = False

    def load(self):
        self.log.append(("load", self.dtype))

    def generate(self, input_ids, new_tokens):
        ids = [input_ids[-1] + k + self.shift for k in range(1, new_tokens + 1)]
        if not self.keep_margins:
            return Generation(ids)
        return Generation(ids, margins=[1.0] * new_tokens, logprobs=[-0.1] * new_tokens)

    def continuation_logprobs(self, input_ids, continuation):
        self.log.append(("score", tuple(continuation)))
        own = [input_ids[-1] + k for k in range(1, len(continuation) + 1)]
        return [-0.1 if a == b else -0.5 for a, b in zip(continuation, own)]

    def close(self):
        self.log.append(("close", self.dtype))

    def versions(self):
        return {}


def store(tmp_path, notes=None, dtype="fp32", new_tokens=2):
    return ReferenceStore(tmp_path, new_tokens, progress=(notes.append if notes is not None else lambda m: None),
                          dtype=dtype)


def maker(log, shift_in={"bf16": 1}):
    return lambda dtype: FakeTorch(log, dtype, shift_in.get(dtype, 0))


def test_the_reference_keeps_log_probabilities_and_its_own_nll(tmp_path):
    log = []
    ref = store(tmp_path).get("m", "cpu", KEY, TEXTS, PROMPTS, maker(log))
    assert ref == [[4, 5], [6, 7], [10, 11]] and ref.logprobs == [[-0.1, -0.1]] * 3
    assert ref.nll == pytest.approx([0.1] * 3)
    (path,) = (tmp_path / "reference").glob("*.json")
    data = json.loads(path.read_text())
    assert (data["format"], data["key"], data["dtype"]) == (FORMAT, KEY, "fp32")
    assert not list((tmp_path / "reference").glob(".*tmp"))  # the temporary file was renamed


@pytest.mark.parametrize("content", ['{"format": 3, "key": "mini-gpt2@replica-1", "token_ids": [[4',  # torn
                                     "\x00\x01not json", "[1, 2]", '{"format": 3, "key": "other@replica-9", '
                                     '"token_ids": [[0, 0], [0, 0], [0, 0]]}'],
                         ids=["torn", "garbage", "not-an-object", "other-weights"])
def test_a_torn_corrupt_or_foreign_reference_file_is_rebuilt_with_one_line(tmp_path, content):
    log, notes = [], []
    path = store(tmp_path).path("m", "cpu", KEY, TEXTS)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    ref = store(tmp_path, notes).get("m", "cpu", KEY, TEXTS, PROMPTS, maker(log))
    assert ref == [[4, 5], [6, 7], [10, 11]] and ("load", "fp32") in log  # recomputed
    assert len(notes) == 2, notes  # the note, then "computing ..."
    assert notes[0].startswith(f"greenserve: {path} cannot be read (") and notes[0].endswith("; rebuilding it")
    assert all("\n" not in n for n in notes)
    assert json.loads(path.read_text())["token_ids"] == ref  # and the file is whole again
    again = store(tmp_path, notes).get("m", "cpu", KEY, TEXTS, PROMPTS, maker(log))
    assert again == ref and len(notes) == 2  # read back without a word


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "reference" / "x.json"
    write_atomically(path, {"token_ids": [[1]]})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    import os

    monkeypatch.setattr(os, "fsync", boom)  # interrupted after the temporary file was written
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, {"token_ids": [[2]]})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"token_ids": [[1]]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left behind


def test_the_reference_is_keyed_by_the_handle_key(tmp_path):
    s = store(tmp_path)
    assert s.path("m", "cpu", KEY, TEXTS) != s.path("m", "cpu", "mini-gpt2@replica-2", TEXTS)


def test_other_continuations_are_scored_once_each_and_cached_on_disk(tmp_path):
    log = []
    s = store(tmp_path)
    same = [[4, 5], [6, 7], [10, 11]]
    assert s.nll("m", "cpu", KEY, TEXTS, PROMPTS, same, maker(log)) == pytest.approx([0.1] * 3)
    assert not [e for e in log if e[0] == "score"]  # the reference's own: its stored log-probabilities
    other = [[4, 5], [7, 7], [10, 12]]
    closed = []
    nll = s.nll("m", "cpu", KEY, TEXTS, PROMPTS, other, maker(log), before_compute=lambda: closed.append(1))
    assert nll == pytest.approx([0.1, 0.3, 0.3]) and closed == [1]
    assert sorted(e[1] for e in log if e[0] == "score") == [(7, 7), (10, 12)]
    # again, and in a new session: nothing is scored twice
    s.nll("m", "cpu", KEY, TEXTS, PROMPTS, other, maker(log))
    assert store(tmp_path).nll("m", "cpu", KEY, TEXTS, PROMPTS, other, maker(log)) == pytest.approx([0.1, 0.3, 0.3])
    assert len([e for e in log if e[0] == "score"]) == 2


def test_a_corrupt_nll_cache_is_rebuilt_with_one_line(tmp_path):
    log, notes = [], []
    s = store(tmp_path, notes)
    s.get("m", "cpu", KEY, TEXTS, PROMPTS, maker(log))
    cache = s.path("m", "cpu", KEY, TEXTS).with_suffix(".nll.json")
    cache.write_text('{"format": 3, "key": "mini-gpt2@replica-1", "nll": {"ab')
    nll = store(tmp_path, notes).nll("m", "cpu", KEY, TEXTS, PROMPTS, [[5, 5], [6, 7], [10, 11]], maker(log))
    assert nll == pytest.approx([0.3, 0.1, 0.1])
    assert sum("cannot be read" in n for n in notes) == 1


def test_the_native_path_is_the_reference_in_fp32_and_torch_in_the_dtype_otherwise(tmp_path):
    log = []
    assert store(tmp_path).native("m", "cpu", KEY, TEXTS, PROMPTS, maker(log)) == [[4, 5], [6, 7], [10, 11]]
    assert ("load", "bf16") not in log
    bf16 = store(tmp_path, dtype="bf16").native("m", "cpu", KEY, TEXTS, PROMPTS, maker(log))
    assert bf16 == [[5, 6], [7, 8], [11, 12]] and log.count(("load", "bf16")) == 1
    again = store(tmp_path, dtype="bf16").native("m", "cpu", KEY, TEXTS, PROMPTS, maker(log))
    assert again == bf16 and log.count(("load", "bf16")) == 1  # from disk


def test_no_torch_means_no_reference_no_native_and_no_scores(tmp_path):
    s = store(tmp_path, dtype="bf16")
    assert s.get("m", "cuda", KEY, TEXTS, PROMPTS, lambda dtype: None) is None
    assert s.native("m", "cuda", KEY, TEXTS, PROMPTS, lambda dtype: None) is None
    assert s.nll("m", "cuda", KEY, TEXTS, PROMPTS, [[1, 2]] * 3, lambda dtype: None) is None
