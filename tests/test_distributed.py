"""distributed.py's decisions without pytest-xdist: GPUs per worker, the cross-process lock
between workers' items, and the marks a sample gets (see tests/test_xdist.py for -n 2 runs)."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from pytest_greenserve import distributed as dist


def test_gpu_pool_from_the_option_then_cuda_visible_devices_then_nvml():
    assert dist.gpu_pool(("2", "3"), "0,1", 8) == ["2", "3"]
    assert dist.gpu_pool(None, "1,0", 8) == ["1", "0"]
    assert dist.gpu_pool(None, "", 8) == []  # CUDA_VISIBLE_DEVICES='' hides every GPU
    assert dist.gpu_pool(None, None, 2) == ["0", "1"]
    assert dist.gpu_pool(None, None, None) == []


@pytest.mark.parametrize("text, expected", [("0,1", ("0", "1")), (" GPU-ab ,3", ("GPU-ab", "3")), ("", None)])
def test_gpu_list_parses(text, expected):
    assert dist.parse_gpu_list(text) == expected


@pytest.mark.parametrize("text", ["cuda:0", "0,0", "-1"])
def test_bad_gpu_list_is_refused(text):
    with pytest.raises(ValueError):
        dist.parse_gpu_list(text)


def test_each_worker_gets_a_gpu_of_its_own_and_a_replacement_the_freed_one():
    a = dist.GpuAssigner(["0", "1"])
    assert (a.take("gw0"), a.take("gw1"), a.take("gw0")) == ("0", "1", "0")
    assert a.take("gw2") is None  # no GPU left: never a shared one
    a.release("gw1")  # gw1 crashed
    assert a.take("gw2") == "1"


def test_more_workers_than_gpus_is_refused_only_with_cuda_configurations():
    why = dist.too_many_workers(4, ["0", "1"], uses_cuda=True)
    assert why and "-n 4" in why and "use -n 2" in why and "\n" not in why
    assert dist.too_many_workers(2, ["0", "1"], uses_cuda=True) is None
    assert dist.too_many_workers(4, ["0", "1"], uses_cuda=False) is None
    assert dist.too_many_workers(4, [], uses_cuda=True) is None  # no GPU: cuda items skip with the reason
    assert dist.auto_workers(["0", "1", "2"], uses_cuda=True) == 3
    assert dist.auto_workers(["0", "1"], uses_cuda=False) == 1


def test_worker_environment_pins_the_device_and_the_order():
    assert dist.worker_environment("1", {}) == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert dist.worker_environment("1", {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert dist.worker_environment("GPU-ab", {}) == {"CUDA_VISIBLE_DEVICES": "GPU-ab"}
    assert dist.worker_environment(None, {}) == {}


def test_dist_given_on_the_command_line():
    assert dist.dist_given(["-n", "2", "--dist", "load"]) and dist.dist_given(["--dist=each"])
    assert not dist.dist_given(["-n", "2", "benchmarks"])


# ------------------------------------------------------------------ the lock between workers' items

def _hold(directory, worker, provider, seconds, log, overlap=False):
    coord = dist.WorkerCoordinator(directory, worker, cpu_overlap=overlap)
    with coord.item(provider):
        t0 = time.time()
        time.sleep(seconds)
        others = coord.concurrent_with()
        log.put((worker, provider, t0, time.time(), others))


def _run(tmp_path, jobs, overlap=False):
    ctx = multiprocessing.get_context("fork")
    log = ctx.Queue()
    procs = []
    for i, (provider, delay, seconds) in enumerate(jobs):
        p = ctx.Process(target=lambda i=i, provider=provider, delay=delay, seconds=seconds:
                        (time.sleep(delay), _hold(tmp_path, f"gw{i}", provider, seconds, log, overlap)))
        p.start()
        procs.append(p)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return sorted((log.get(timeout=5) for _ in jobs), key=lambda r: r[2])


def _overlap(a, b):
    return a[2] < b[3] and b[2] < a[3]


def test_a_cpu_item_never_runs_beside_another_workers_item(tmp_path):
    rows = _run(tmp_path, [("cuda", 0.0, 0.4), ("cpu", 0.1, 0.3), ("cuda", 0.2, 0.3)])
    cpu = next(r for r in rows if r[1] == "cpu")
    assert not any(_overlap(cpu, r) for r in rows if r is not cpu)
    assert cpu[4] == []  # nothing ran beside it
    # the CPU item waited for the first GPU item, and the later GPU item waited for it (no starvation)
    assert [r[1] for r in rows] == ["cuda", "cpu", "cuda"]


def test_gpu_items_run_side_by_side_and_name_each_other(tmp_path):
    rows = _run(tmp_path, [("cuda", 0.0, 0.5), ("cuda", 0.1, 0.5)])
    assert _overlap(rows[0], rows[1])
    assert rows[0][4] == ["gw1"] and rows[1][4] == ["gw0"]


def test_cpu_overlap_lets_cpu_items_run_together_and_says_so(tmp_path):
    rows = _run(tmp_path, [("cpu", 0.0, 0.5), ("cpu", 0.1, 0.5)], overlap=True)
    assert _overlap(rows[0], rows[1])
    assert rows[0][4] == ["gw1"] and rows[1][4] == ["gw0"]


def test_a_dead_workers_busy_state_is_ignored(tmp_path):
    (tmp_path / "gw9.json").write_text('{"pid": 999999999, "busy": true, "episodes": 3}')
    coord = dist.WorkerCoordinator(tmp_path, "gw0")
    with coord.item("cpu"):
        assert coord.concurrent_with() == []


# ------------------------------------------------------------------ the marks on a sample

def test_a_cpu_sample_beside_another_worker_is_concurrent_and_its_rapl_shared():
    s = {"provider": "cpu", "energy_cpu_source": "rapl-package+dram", "energy_wall_source": "netio",
         "energy_total_source": "rapl-package+dram+nvml-counter", "meter_notes": []}
    dist.annotate_sample(s, "gw0", ["gw1"])
    assert s["worker"] == "gw0" and s["concurrent_with"] == "gw1" and s["concurrent"] is True
    assert s["energy_cpu_source"] == "rapl-package+dram:shared"
    assert s["energy_wall_source"] == "netio:shared"
    assert s["energy_total_source"] == "rapl-package+dram:shared+nvml-counter"
    assert any("gw1" in n for n in s["meter_notes"])


def test_estimated_energy_stays_per_process_tree_and_a_lone_sample_is_not_marked():
    s = {"provider": "cuda", "energy_cpu_source": "estimated-cpu-time", "energy_total_source": "estimated-cpu-time"}
    dist.annotate_sample(s, "gw0", ["gw1"])
    assert s["energy_cpu_source"] == "estimated-cpu-time" and s["concurrent"] is False  # a GPU item
    lone = {"provider": "cpu", "energy_cpu_source": "rapl-package"}
    dist.annotate_sample(lone, "gw1", [])
    assert lone["concurrent"] is False and lone["concurrent_with"] == "" and lone["energy_cpu_source"] == "rapl-package"


def test_controller_merges_worker_outputs():
    outs = [dist.worker_output([{}], ["cpu energy: estimated"], {("m", "torch-cpu"): "time:5%"}),
            dist.worker_output([], ["cpu energy: estimated", "gpu: x"], {})]
    assert dist.merged_meter_notes(outs, []) == ["cpu energy: estimated", "gpu: x"]
    assert dist.worker_overrides(outs) == {("m", "torch-cpu"): "time:5%"}
    rows = [{"worker": "gw0", "gpu_index": "0", "gpu_uuid": "GPU-a", "gpu_name": "H200"},
            {"worker": "gw0", "gpu_index": "0", "gpu_uuid": "GPU-a", "gpu_name": "H200"}, {"worker": None}]
    assert dist.workers_summary(rows) == {"gw0": {"samples": 2, "gpus": [
        {"gpu_index": "0", "gpu_uuid": "GPU-a", "gpu_name": "H200"}]}}


def test_an_items_group_is_read_from_its_case_id_whatever_pytest_does_to_node_ids():
    groups = {f"{m}-{c}-r{k}": dist.group_name(m, c) for m in ("mini-gpt2", "mini-llama")
              for c in ("torch-cpu", "llamacpp-cpu", "llamacpp-cpu:q8_0") for k in range(1, 13)}
    group = dist.item_group
    assert group("t.py::test_autocomplete[mini-gpt2-torch-cpu-r3]", groups) == "greenserve:mini-gpt2:torch-cpu"
    # the loadgroup suffix of older pytest, and a user's own parameter beside the case
    assert group("t.py::test_x[mini-llama-torch-cpu-r12]@greenserve:mini-llama:torch-cpu", groups) == \
        "greenserve:mini-llama:torch-cpu"
    assert group("t.py::test_x[short-mini-gpt2-torch-cpu-r1]", groups) == "greenserve:mini-gpt2:torch-cpu"
    # the longest stem wins: a weight variant is its own configuration
    assert group("t.py::t[mini-gpt2-llamacpp-cpu:q8_0-r1]", groups) == "greenserve:mini-gpt2:llamacpp-cpu:q8_0"
    assert group("t.py::t[mini-gpt2-llamacpp-cpu-r1]", groups) == "greenserve:mini-gpt2:llamacpp-cpu"
    # not a greenserve item: no group (balanced one by one)
    assert group("t.py::test_plain", groups) is None
    assert group("t.py::test_p[mini-gpt2-torch-cpu]", groups) is None
