"""A fake NVML module, injected where pynvml would be (MeterSettings.nvml / NvmlGpus(nvml=...)).

It mimics the parts of nvidia-ml-py's pynvml the meters call: NVMLError with ``.value``,
the NVML_ERROR_* codes, and the device functions, for a list of :class:`FakeGpu`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15

_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return _TEXT.get(self.value, f"Unknown Error {self.value}")


@dataclass
class FakeGpu:
    uuid: str = "GPU-00000000-aaaa"
    name: str = "Fake GPU 80GB"
    energy_mj: int | None = 1_000_000   # None: the counter is NOT_SUPPORTED (pre-Volta)
    power_mw: int = 50_000
    util_gpu: int = 40
    util_mem: int = 20
    mem_used_b: int = 2 * 1024**3
    mem_total_b: int = 8 * 1024**3


class FakeNvml:
    """``FakeNvml([FakeGpu()])``; ``FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)``."""

    NVMLError = NVMLError
    NVML_ERROR_UNINITIALIZED = NVML_ERROR_UNINITIALIZED
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = NVML_ERROR_NO_PERMISSION
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST

    def __init__(self, gpus=(), init_error: int | None = None):
        self.gpus = list(gpus)
        self.init_error = init_error
        self.init_count = 0

    def nvmlInit(self):
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.init_count += 1

    def nvmlShutdown(self):
        if self.init_count <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        self.init_count -= 1

    def _check(self):
        if self.init_count <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def nvmlDeviceGetCount(self):
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        self._check()
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self._check()
        for g in self.gpus:
            if g.uuid == uuid:
                return g
        raise NVMLError(13)

    def nvmlDeviceGetUUID(self, h):
        return h.uuid

    def nvmlDeviceGetName(self, h):
        return h.name

    def nvmlDeviceGetIndex(self, h):
        self._check()
        return next(i for i, g in enumerate(self.gpus) if g is h)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._check()
        if h.energy_mj is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return h.energy_mj

    def nvmlDeviceGetPowerUsage(self, h):
        self._check()
        return h.power_mw

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=h.util_gpu, memory=h.util_mem)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=h.mem_used_b, total=h.mem_total_b, free=h.mem_total_b - h.mem_used_b)
