"""The results store and the one reader of saved runs (results.read_run / read_samples)."""

from __future__ import annotations

import json

import pytest

from pytest_greenserve.results import (SCHEMA_VERSION, ResultsStore, SamplesError, read_meta, read_run, read_sample_file,
                                       read_samples)

A = {"model": "mini-gpt2", "config": "torch-cpu", "repetition": 0, "time_s": 1.5}
B = {"model": "mini-gpt2", "config": "onnx-cpu", "repetition": 0, "time_s": 1.2}


def write_lines(path, *lines: str, newline_at_end: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""), encoding="utf-8")
    return path


def test_round_trip_stamps_the_schema_version(tmp_path):
    store = ResultsStore(tmp_path, "run-1")
    store.append(A)
    store.append({**B, "schema_version": 0})   # a version already there is kept
    store.write_meta({"run_id": "run-1"})
    assert "schema_version" not in A            # the caller's dict is left as it was
    rows, meta = read_run(store.run_dir)
    assert rows == [{**A, "schema_version": SCHEMA_VERSION}, {**B, "schema_version": 0}]
    assert meta == {"schema_version": SCHEMA_VERSION, "run_id": "run-1"}
    first = store.samples_path.read_text().splitlines()[0]
    assert json.loads(first)["schema_version"] == SCHEMA_VERSION
    # the session's call: a list of run directories (or samples.jsonl files), rows only
    assert read_samples([store.run_dir, store.samples_path]) == rows + rows


def test_a_torn_last_line_is_skipped_with_a_note(tmp_path):
    f = write_lines(tmp_path / "run" / "samples.jsonl", json.dumps(A), "", json.dumps(B)[:17],
                    newline_at_end=False)
    notes = []
    assert read_samples([f.parent], note=notes.append) == [A]
    assert notes == [f"{f}:3: skipping a torn last line (an interrupted session)"]


def test_a_torn_multibyte_character_at_the_end_is_a_torn_line(tmp_path):
    f = tmp_path / "samples.jsonl"
    f.write_bytes(json.dumps(A).encode() + b'\n{"model": "caf\xc3')
    notes = []
    assert read_samples([f], note=notes.append) == [A]
    assert len(notes) == 1 and ":2: skipping a torn last line" in notes[0]


def test_the_default_note_goes_to_stderr(tmp_path, capsys):
    f = write_lines(tmp_path / "samples.jsonl", json.dumps(A), '{"model": "mi', newline_at_end=False)
    assert read_samples([f]) == [A]
    assert capsys.readouterr().err == f"greenserve: {f}:2: skipping a torn last line (an interrupted session)\n"


def test_a_corrupt_middle_line_is_refused_with_its_line_number(tmp_path):
    f = write_lines(tmp_path / "samples.jsonl", json.dumps(A), "", "{not json", json.dumps(B))
    with pytest.raises(SamplesError) as exc:
        read_samples([f])
    message = str(exc.value)
    assert message.startswith(f"{f}:3: corrupt sample line (")
    assert "\n" not in message
    assert isinstance(exc.value, ValueError)


def test_invalid_utf8_in_a_middle_line_is_refused(tmp_path):
    f = tmp_path / "samples.jsonl"
    f.write_bytes(b'{"model": "\xff"}\n' + json.dumps(A).encode() + b"\n")
    with pytest.raises(SamplesError, match=r"samples\.jsonl:1: corrupt sample line \(not UTF-8\)"):
        read_samples([f])


@pytest.mark.parametrize("line", ["[1, 2, 3]", '{"model": "mini-gpt2"}', '"text"'])
def test_a_line_that_is_not_a_sample_is_refused_even_last(tmp_path, line):
    f = write_lines(tmp_path / "samples.jsonl", json.dumps(A), line)
    with pytest.raises(SamplesError, match=r"samples\.jsonl:2: not a greenserve sample"):
        read_samples([f])


def test_engine_stands_in_for_config(tmp_path):
    row = {"model": "mini-gpt2", "engine": "torch", "provider": "cpu"}
    f = write_lines(tmp_path / "samples.jsonl", json.dumps(row))
    assert read_samples([f]) == [row]


def test_a_newer_schema_is_refused(tmp_path):
    newer = {**B, "schema_version": SCHEMA_VERSION + 1}
    f = write_lines(tmp_path / "samples.jsonl", json.dumps(A), json.dumps(newer))
    with pytest.raises(SamplesError) as exc:
        read_samples([f])
    assert str(exc.value) == (f"{f}:2: schema_version {SCHEMA_VERSION + 1} is newer than this pytest-greenserve "
                              f"reads ({SCHEMA_VERSION}); upgrade pytest-greenserve")


@pytest.mark.parametrize("bad", ["1", 1.0, -1, True, None])
def test_a_malformed_schema_version_is_refused(tmp_path, bad):
    f = write_lines(tmp_path / "samples.jsonl", json.dumps({**A, "schema_version": bad}))
    with pytest.raises(SamplesError, match=r"samples\.jsonl:1: bad schema_version"):
        read_samples([f])


def test_an_old_run_without_schema_version_is_accepted(tmp_path):
    run = tmp_path / "old-run"
    write_lines(run / "samples.jsonl", json.dumps(A), json.dumps(B))
    (run / "run.json").write_text(json.dumps({"run_id": "old-run", "versions": {"pandas": "2.2.0"}}))
    rows, meta = read_run(run)
    assert rows == [A, B] and all("schema_version" not in r for r in rows)
    assert meta["run_id"] == "old-run"


def test_run_json_newer_is_refused_and_unreadable_is_ignored(tmp_path):
    run = tmp_path / "run"
    write_lines(run / "samples.jsonl", json.dumps(A))
    (run / "run.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(SamplesError, match=r"run\.json: schema_version .* is newer"):
        read_run(run)
    (run / "run.json").write_text("{torn")
    notes = []
    assert read_meta(run / "samples.jsonl", note=notes.append) == {}
    assert notes == [f"{run / 'run.json'}: unreadable, ignored"]
    (run / "run.json").unlink()
    assert read_run(run, note=notes.append) == ([A], {})


def test_a_missing_run_is_refused(tmp_path):
    with pytest.raises(SamplesError, match="no such file"):
        read_samples([tmp_path])
    with pytest.raises(SamplesError, match="no such file"):
        read_run(tmp_path / "nope" / "samples.jsonl")


def test_an_empty_file_has_no_samples(tmp_path):
    f = write_lines(tmp_path / "samples.jsonl", "", "")
    assert read_samples([f]) == []


def test_a_writer_killed_mid_line_never_leaves_a_torn_line_inside_the_run(tmp_path, capsys):
    """pytest-xdist workers append to one samples.jsonl: a line torn by a writer killed mid-write
    is cut off by the next append (under the file lock), so the run stays readable."""
    store = ResultsStore(tmp_path, "run")
    store.append({"model": "m", "config": "torch-cpu", "worker": "gw0"})
    torn = b'{"model": "m", "config": "onnx-cpu", "wor'  # gw1, killed mid-write
    with open(store.samples_path, "ab") as fh:
        fh.write(torn)
    store.append({"model": "m", "config": "torch-cpu", "worker": "gw0"})
    rows = read_run(store.run_dir, note=pytest.fail)[0]
    assert [r["config"] for r in rows] == ["torch-cpu", "torch-cpu"]
    assert f"cut a torn last line of {len(torn)} bytes" in capsys.readouterr().err


def test_appends_from_several_processes_stay_whole_lines(tmp_path):
    import multiprocessing

    store = ResultsStore(tmp_path, "run")
    big = "x" * 300_000  # a sample larger than a pipe buffer or a page: written in several pieces

    def write(worker):
        for i in range(20):
            store.append({"model": "m", "config": "torch-cpu", "worker": worker, "i": i, "pad": big})

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=write, args=(f"gw{k}",)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    rows = read_run(store.run_dir, note=pytest.fail)[0]
    assert sorted((r["worker"], r["i"]) for r in rows) == [(f"gw{k}", i) for k in range(3) for i in range(20)]


def test_a_gzipped_samples_file_reads_as_the_plain_one(tmp_path):
    """Measurements kept compressed (docs/data/*.samples.jsonl.gz) read directly; a cut one is
    one line naming the file, not a traceback."""
    import gzip

    lines = [json.dumps({"model": "m", "config": "torch-cpu", "repetition": r, "time_s": 1.0 + r}) for r in range(3)]
    plain = tmp_path / "samples.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "kept.samples.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_sample_file(packed) == read_sample_file(plain) and len(read_sample_file(packed)) == 3
    cut = tmp_path / "cut.samples.jsonl.gz"
    cut.write_bytes(packed.read_bytes()[:-12])
    with pytest.raises(SamplesError, match="cut.samples.jsonl.gz: cannot read"):
        read_sample_file(cut)
