"""NVIDIA GPU energy and utilisation through NVML (``import pynvml``, from nvidia-ml-py).

Energy (field ``energy_gpu_j``):

* ``nvml-counter``: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded;
  Volta and newer), read at the start and stop of a sample. The counter advances about every
  100 ms, so energy is read per sample (all prompts of one run); per-request and per-token
  energy are that total divided, and named so by the runner.
* ``nvml-power``: where the counter is NOT_SUPPORTED, ``nvmlDeviceGetPowerUsage`` (mW) is read
  by the sampler thread at every tick and integrated (trapezoids; the end values held flat
  to the sample's edges).
* ``nvml-counter+power``: several GPUs, some of each kind.

Utilisation probes (read by the sampler, device-wide, across the GPUs used): ``gpu_pct``
(mean of ``nvmlDeviceGetUtilizationRates().gpu``), ``gpu_mem_util_pct`` (``.memory``, the
share of time the memory was being read or written), ``gpu_mem_used_pct`` (used / total
memory over all GPUs used) and ``gpu_mem_used_mb`` (whose peak is ``gpu_mem_peak_mb``).
NVML's memory figures are per device, not per process.

Which GPUs: only the ones this process was given, never the whole host: the entries of
``CUDA_VISIBLE_DEVICES`` (indices, or ``GPU-``/``MIG-`` UUIDs or prefixes; as CUDA does, the list
stops at the first invalid entry), or, when it is unset, GPU 0 alone (the device CUDA uses by
default; other tenants' work on the other GPUs is not this process's energy). Under pytest-xdist
each worker is given one GPU (``distributed.py``). Integer entries are NVML indices, which are
in PCI bus order; CUDA agrees only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (a note says so when it
matters). Every sample records the NVML index, UUID and name of the GPU(s) it measured
(``gpu_index``, ``gpu_uuid``, ``gpu_name``; comma-separated when several); :func:`host_gpus`
lists every GPU of the host for the machine's fingerprint.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Sequence

from .base import Meter, MeterUnavailable, Probe, Reading
from .sampler import Series

MB = 1024 * 1024
# below this sample length, the counter's ~100 ms steps are more than ~10% of the figure
COARSE_BELOW_S = 1.0


def load_nvml(nvml=None):
    """The injected NVML module, else ``pynvml``; raises MeterUnavailable when absent."""
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError:
        raise MeterUnavailable("no NVIDIA GPU (pynvml not installed: pip install nvidia-ml-py)") from None
    return pynvml


def nvml_reason(nvml, err: Exception) -> str:
    """One line explaining an ``NVMLError``."""
    value = getattr(err, "value", None)
    text = str(err)
    codes = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12): f"no NVIDIA GPU ({text})",
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9): f"no NVIDIA driver loaded ({text})",
        getattr(nvml, "NVML_ERROR_NO_PERMISSION", 4): (
            f"NVML permission denied ({text}); run as a user with access to /dev/nvidia*"),
        getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3): f"not supported by this GPU or driver ({text})",
        getattr(nvml, "NVML_ERROR_GPU_IS_LOST", 15): f"GPU is lost ({text}); the GPU needs a reset",
        getattr(nvml, "NVML_ERROR_INSUFFICIENT_POWER", 8): f"GPU power cables not attached ({text})",
    }
    return codes.get(value, f"NVML error ({text})")


@contextmanager
def _handle_nvml_errors(nvml, what: str = ""):
    """Turn an ``NVMLError`` into :class:`MeterUnavailable` with a one-line reason."""
    try:
        yield
    except nvml.NVMLError as err:
        reason = nvml_reason(nvml, err)
        raise MeterUnavailable(f"{what}: {reason}" if what else reason) from err


def is_not_supported(nvml, err: Exception) -> bool:
    return getattr(err, "value", None) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3)


def parse_cuda_visible_devices(value: str | None) -> list[str] | None:
    """Entries of ``CUDA_VISIBLE_DEVICES`` as CUDA reads them; None when unset (all GPUs)."""
    if value is None:
        return None
    out = []
    for entry in value.split(","):
        entry = entry.strip()
        if entry.isdigit() or entry.upper().startswith(("GPU-", "MIG-")):
            out.append(entry)
        else:  # CUDA ignores this entry and everything after it ("-1", "", typos)
            break
    return out


class NvmlGpus:
    """NVML initialised once, and handles for the GPUs this process uses.

    ``reason`` is None when usable, else why not. ``notes`` are informational lines.
    """

    def __init__(self, nvml=None, indices: Sequence[int] | None = None,
                 cuda_visible_devices: str | None = None, cuda_device_order: str | None = None):
        self.nvml = None
        self.handles: list = []
        self.labels: list[str] = []
        self.reason: str | None = None
        self.notes: list[str] = []
        self.devices: list[dict] = []  # {"index", "uuid", "name"} of each handle (device_info)
        self._inited = False
        try:
            self._open(nvml, indices, cuda_visible_devices, cuda_device_order)
        except MeterUnavailable as exc:
            self.reason = str(exc)
            self.handles = []

    def _open(self, nvml, indices, cvd, order):
        self.nvml = nv = load_nvml(nvml)
        with _handle_nvml_errors(nv):
            nv.nvmlInit()
        self._inited = True
        with _handle_nvml_errors(nv):
            count = nv.nvmlDeviceGetCount()
        if count == 0:
            raise MeterUnavailable("no NVIDIA GPU (NVML sees 0 devices)")
        if indices is not None:
            wanted = [str(i) for i in indices]
            origin = "gpu_indices"
        else:
            wanted = parse_cuda_visible_devices(cvd)
            origin = "CUDA_VISIBLE_DEVICES"
        if wanted is None:
            wanted = ["0"]
            if count > 1:
                self.notes.append(f"gpu: measuring GPU 0 only, the device CUDA uses by default (CUDA_VISIBLE_DEVICES "
                                  f"unset; the host has {count}); set CUDA_VISIBLE_DEVICES to choose")
        elif not wanted:
            raise MeterUnavailable(f"no GPU visible to this process ({origin}={cvd!r})")
        uuids = None
        for entry in wanted:
            if entry.isdigit():
                idx = int(entry)
                if idx >= count:
                    break  # as CUDA: stop at the first invalid entry
                with _handle_nvml_errors(nv, f"GPU {idx}"):
                    handle = nv.nvmlDeviceGetHandleByIndex(idx)
                self.handles.append(handle)
                self.labels.append(f"GPU {idx}")
            else:
                if uuids is None:
                    uuids = []
                    for i in range(count):
                        with _handle_nvml_errors(nv, f"GPU {i}"):
                            h = nv.nvmlDeviceGetHandleByIndex(i)
                            uuids.append((_text(nv.nvmlDeviceGetUUID(h)), h))
                match = [h for u, h in uuids if u.upper().startswith(entry.upper())]
                if len(match) != 1:
                    if entry.upper().startswith("MIG-"):  # MIG instances: resolve by NVML directly
                        with _handle_nvml_errors(nv, entry):
                            match = [nv.nvmlDeviceGetHandleByUUID(entry)]
                    else:
                        break
                self.handles.append(match[0])
                self.labels.append(entry)
        if not self.handles:
            raise MeterUnavailable(f"no GPU matches {origin}={','.join(wanted)!r} ({count} present)")
        self.devices = [device_info(nv, h) for h in self.handles]
        if (indices is None and cvd and count > 1 and any(e.isdigit() for e in wanted)
                and (order or "").upper() != "PCI_BUS_ID"):
            self.notes.append(
                "gpu: CUDA_VISIBLE_DEVICES indices are read in NVML's PCI bus order; "
                "set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA uses the same GPUs")

    def close(self) -> None:
        if self._inited and self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass
            self._inited = False


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def device_info(nv, handle) -> dict:
    """NVML's index (PCI bus order, as nvidia-smi), UUID and name of one GPU; None where NVML
    cannot say (a MIG instance has no index of its own)."""
    out = {}
    for key, call in (("index", "nvmlDeviceGetIndex"), ("uuid", "nvmlDeviceGetUUID"), ("name", "nvmlDeviceGetName")):
        try:
            value = getattr(nv, call)(handle)
        except Exception:  # NVMLError, or an NVML binding without the call
            value = None
        out[key] = value if value is None or key == "index" else _text(value)
    return out


def host_gpus(nvml=None) -> list[dict]:
    """Every GPU of this host (whatever CUDA_VISIBLE_DEVICES says), as :func:`device_info`; []
    without NVML or a GPU."""
    try:
        nv = load_nvml(nvml)
        nv.nvmlInit()
    except Exception:
        return []
    try:
        return [device_info(nv, nv.nvmlDeviceGetHandleByIndex(i)) for i in range(nv.nvmlDeviceGetCount())]
    except Exception:
        return []
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass


def unavailable_reason(nvml=None) -> str | None:
    gpus = NvmlGpus(nvml)
    gpus.close()
    return gpus.reason


def is_available(nvml=None) -> bool:
    return unavailable_reason(nvml) is None


class GpuEnergyMeter(Meter):
    """GPU energy over one sample, summed over the GPUs used. Field ``energy_gpu_j``."""

    name = "gpu energy"
    field = "energy_gpu_j"

    def __init__(self, gpus: NvmlGpus, clock: Callable[[], float] = time.monotonic):
        self.gpus = gpus
        self.clock = clock
        self.nvml = gpus.nvml
        self.counter_handles: list = []
        self.power_handles: list = []
        self._reason = gpus.reason
        self._lock = threading.Lock()
        self._power = Series()
        self._power_all = Series()
        self._start_mj: list[int] | None = None
        self._t0 = None
        self._notes: list[str] = []
        if self._reason is None:
            try:
                self._classify()
            except MeterUnavailable as exc:
                self._reason = str(exc)

    def _classify(self):
        nv = self.nvml
        for handle, label in zip(self.gpus.handles, self.gpus.labels):
            try:
                nv.nvmlDeviceGetTotalEnergyConsumption(handle)
                self.counter_handles.append(handle)
                continue
            except nv.NVMLError as err:
                if not is_not_supported(nv, err):
                    raise MeterUnavailable(f"{label}: {nvml_reason(nv, err)}") from err
            with _handle_nvml_errors(nv, f"{label}: no energy counter, and power reading"):
                nv.nvmlDeviceGetPowerUsage(handle)
            self.power_handles.append(handle)

    @property
    def source(self) -> str:
        if self.counter_handles and self.power_handles:
            return "nvml-counter+power"
        return "nvml-power" if self.power_handles else "nvml-counter"

    def unavailable_reason(self) -> str | None:
        return self._reason

    def start(self) -> None:
        self._notes = []
        with self._lock:
            self._power = Series()
            self._power_all = Series()
        self._t0 = self.clock()
        try:
            self._start_mj = [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.counter_handles]
        except self.nvml.NVMLError as err:
            self._start_mj = None
            self._notes.append(f"gpu energy: counter read failed at start: {nvml_reason(self.nvml, err)}")

    def read_power_w(self) -> dict:
        """Sampler probe: power of every GPU used. Units: W.

        Integrated over the sample, it is the energy of GPUs without a counter and, where
        the counter exists, an independent cross-check of it (``energy_gpu_power_j``).
        """
        now = self.clock()
        mw_counter = sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.counter_handles)
        mw_power = sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.power_handles)
        with self._lock:
            if self.power_handles:
                self._power.points.append((now, mw_power / 1000.0))
            self._power_all.points.append((now, (mw_counter + mw_power) / 1000.0))
        return {"gpu_power_w": (mw_counter + mw_power) / 1000.0}

    def probes(self) -> list[Probe]:
        return [Probe(read=self.read_power_w, name="nvml power")] if self.gpus.handles else []

    def stop(self) -> list[Reading]:
        t1 = self.clock()
        value: float | None = 0.0
        if self.counter_handles:
            try:
                end_mj = [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.counter_handles]
            except self.nvml.NVMLError as err:
                end_mj = None
                self._notes.append(f"gpu energy: counter read failed at stop: {nvml_reason(self.nvml, err)}")
            if end_mj is None or self._start_mj is None:
                value = None
            else:
                value += sum(e - s for s, e in zip(self._start_mj, end_mj)) / 1000.0
            if t1 - self._t0 < COARSE_BELOW_S:
                self._notes.append(
                    f"gpu energy: sample of {t1 - self._t0:.2f} s is short for NVML's counter, "
                    "which advances about every 100 ms; read energy over longer samples")
        if self.power_handles and value is not None:
            with self._lock:
                joules = self._power.integral(self._t0, t1)
            if joules is None:
                self._notes.append("gpu energy: no power readings in this sample (sampler not running?)")
                value = None
            else:
                value += joules
        self._start_mj = None
        readings = [Reading(self.field, value, "J", self.source)]
        if self.counter_handles:
            # cross-check of the counter: sampled power integrated over the same window
            with self._lock:
                check = self._power_all.integral(self._t0, t1)
            readings.append(Reading("energy_gpu_power_j", check, "J", "nvml-power"))
        return readings

    def notes(self) -> list[str]:
        return list(self.gpus.notes)

    def sample_notes(self) -> list[str]:
        return list(self._notes)

    def sample_info(self) -> dict:
        """Which GPU(s) the sample measured: NVML index, UUID and name (comma-separated when several)."""
        def joined(key):
            values = [d.get(key) for d in self.gpus.devices]
            return None if not values or any(v is None for v in values) else ",".join(str(v) for v in values)

        return {"gpu_index": joined("index"), "gpu_uuid": joined("uuid"), "gpu_name": joined("name")}

    def close(self) -> None:
        self.gpus.close()


class GpuUtilisation(Meter):
    """Sampler probe for GPU utilisation and memory across the GPUs used.

    A meter with nothing to read at start and stop: its probes feed the shared sampler, whose
    means become ``gpu_pct``, ``gpu_mem_util_pct`` and ``gpu_mem_used_pct``.
    """

    name = "gpu utilisation"

    def __init__(self, gpus: NvmlGpus):
        self.gpus = gpus
        self.nvml = gpus.nvml
        self.reason = gpus.reason
        self.has_util = self.has_mem = False
        if self.reason is None:
            nv, h = self.nvml, gpus.handles[0]
            try:
                nv.nvmlDeviceGetUtilizationRates(h)
                self.has_util = True
            except nv.NVMLError as err:
                self.reason = f"gpu utilisation: {nvml_reason(nv, err)}"
            try:
                nv.nvmlDeviceGetMemoryInfo(h)
                self.has_mem = True
            except nv.NVMLError as err:
                self.reason = f"gpu memory: {nvml_reason(nv, err)}"

    def read(self) -> dict[str, float | None]:
        nv, handles = self.nvml, self.gpus.handles
        out: dict[str, float | None] = {}
        if self.has_util:
            rates = [nv.nvmlDeviceGetUtilizationRates(h) for h in handles]
            out["gpu_pct"] = sum(r.gpu for r in rates) / len(rates)
            out["gpu_mem_util_pct"] = sum(r.memory for r in rates) / len(rates)
        if self.has_mem:
            mems = [nv.nvmlDeviceGetMemoryInfo(h) for h in handles]
            used = sum(m.used for m in mems)
            total = sum(m.total for m in mems)
            out["gpu_mem_used_pct"] = 100.0 * used / total if total else None
            out["gpu_mem_used_mb"] = used / MB
        return out

    def probes(self) -> list[Probe]:
        return [Probe(read=self.read, name="nvml utilisation")] if (self.has_util or self.has_mem) else []

    def start(self) -> None:
        pass

    def stop(self) -> list[Reading]:
        return []

    def notes(self) -> list[str]:
        return [self.reason] if self.reason is not None else []

    def close(self) -> None:
        self.gpus.close()
