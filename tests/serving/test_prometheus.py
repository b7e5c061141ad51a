"""``GET /metrics``'s text: counters, the estimated CPU energy labelled as such, GPU energy
per device only where NVML read it."""

from pytest_greenserve.serving.prometheus import ServerCounters, render


class FakeGpu:
    def __init__(self, readings):
        self.readings = readings

    def read(self):
        return self.readings


def samples(text: str) -> dict:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_render_counts_and_labels_estimates_and_devices():
    c = ServerCounters()
    c.answered(12, 32, 0.25)
    c.answered(10, 32, 0.5)
    c.failed()
    text = render(c, model='m"1', config="torch-cuda", gpu=FakeGpu({"0": 12.5, "1": 3.0}), cpu_s=2.0)
    got = samples(text)
    labels = 'model="m\\"1",config="torch-cuda"'  # a quote in a label value is escaped
    assert got[f"greenserve_requests_total{{{labels}}}"] == 2
    assert got[f"greenserve_request_errors_total{{{labels}}}"] == 1
    assert got[f"greenserve_completion_tokens_total{{{labels}}}"] == 64
    assert got[f"greenserve_prompt_tokens_total{{{labels}}}"] == 22
    assert got[f"greenserve_generation_seconds_total{{{labels}}}"] == 0.75
    assert got[f'greenserve_cpu_energy_estimated_joules_total{{{labels},source="estimated-cpu-time"}}'] == 20.0
    assert got[f'greenserve_gpu_energy_joules_total{{{labels},device="0",source="nvml-counter"}}'] == 12.5
    assert got[f'greenserve_gpu_energy_joules_total{{{labels},device="1",source="nvml-counter"}}'] == 3.0
    assert "ESTIMATED CPU energy" in text
    # no NVML reading: the GPU metric is absent, never 0
    assert "greenserve_gpu_energy_joules_total" not in render(c, model="m", config="c", gpu=FakeGpu({}), cpu_s=1.0)
