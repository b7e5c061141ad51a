"""Wall-socket energy from a NETIO power meter (the paper used a NETIO PowerBOX) over HTTP.

NETIO's JSON API: ``GET http://<host>/netio.json`` returns::

    {"Agent": {...},
     "GlobalMeasure": {"Voltage": V, "TotalLoad": W, "TotalEnergy": Wh, "EnergyStart": ..., ...},
     "Outputs": [{"ID": 1, "Name": ..., "State": 1, "Load": W, "Energy": Wh, ...}, ...]}

The meter reads the whole device (``GlobalMeasure``) or one output (``output_id``). Energy
(field ``energy_wall_j``):

* ``wattmeter-netio-counter``: the difference of the cumulative energy counter between start
  and stop. NETIO counts whole watt-hours (3600 J), so the counter is used only when it moved
  by at least ``counter_min_wh`` (100 Wh: quantisation <= 1%), or when no load was sampled.
* ``wattmeter-netio-load``: otherwise, the load (W) read by the sampler thread about once a
  second (NETIO refreshes its measures about every second) and at start and stop, integrated
  over time (trapezoids).

The URL comes from an option; the meter never guesses a host.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from .base import Meter, Probe, Reading
from .sampler import Series

WH_TO_J = 3600.0


def netio_url(url: str) -> str:
    """``http://host`` -> ``http://host/netio.json``; a URL with a path is kept."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    path = parts.path if parts.path not in ("", "/") else "/netio.json"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def parse_netio(doc: dict, output_id: int | None = None) -> tuple[float | None, float | None]:
    """(load_w, energy_wh) from a netio.json document; None for what it lacks."""
    if output_id is not None:
        for out in doc.get("Outputs") or []:
            if out.get("ID") == output_id:
                return _num(out.get("Load")), _num(out.get("Energy"))
        raise ValueError(f"netio.json has no output with ID {output_id}")
    gm = doc.get("GlobalMeasure") or {}
    load, energy = _num(gm.get("TotalLoad")), _num(gm.get("TotalEnergy"))
    outputs = doc.get("Outputs") or []
    if load is None and outputs:
        loads = [_num(o.get("Load")) for o in outputs]
        load = sum(loads) if all(v is not None for v in loads) else None
    if energy is None and outputs:
        energies = [_num(o.get("Energy")) for o in outputs]
        energy = sum(energies) if all(v is not None for v in energies) else None
    if load is None and energy is None:
        raise ValueError("netio.json has neither GlobalMeasure.TotalLoad/TotalEnergy nor Outputs[].Load/Energy")
    return load, energy


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _http_get_json(url: str, timeout_s: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.load(resp)


class NetioWattmeter(Meter):
    """Wall energy from a NETIO meter's JSON API. Field ``energy_wall_j``."""

    name = "wattmeter"
    field = "energy_wall_j"

    def __init__(self, url: str, output_id: int | None = None, poll_period_s: float = 1.0,
                 timeout_s: float = 0.5, counter_min_wh: float = 100.0,
                 fetch: Callable[[str, float], dict] = _http_get_json,
                 clock: Callable[[], float] = time.monotonic):
        self.url = netio_url(url)
        self.output_id = output_id
        self.poll_period_s = poll_period_s
        self.timeout_s = timeout_s
        self.counter_min_wh = counter_min_wh
        self.fetch = fetch
        self.clock = clock
        self._lock = threading.Lock()
        self._load = Series()
        self._e0_wh: float | None = None
        self._t0: float | None = None
        self._notes: list[str] = []
        self._reason = None
        try:
            self._read()
        except Exception as exc:
            self._reason = f"cannot read {self.url} ({_short(exc)})"

    def unavailable_reason(self) -> str | None:
        return self._reason

    def _read(self) -> tuple[float | None, float | None]:
        return parse_netio(self.fetch(self.url, self.timeout_s), self.output_id)

    def _record(self, load_w: float | None) -> None:
        if load_w is not None:
            with self._lock:
                self._load.points.append((self.clock(), load_w))

    def start(self) -> None:
        self._notes = []
        with self._lock:
            self._load = Series()
        self._t0 = self.clock()
        try:
            load, self._e0_wh = self._read()
            self._record(load)
        except Exception as exc:
            self._e0_wh = None
            self._notes.append(f"wattmeter: read failed at start ({_short(exc)})")

    def read_load(self) -> dict:
        """Sampler probe: the current load. Units: W."""
        load, _ = self._read()
        self._record(load)
        return {"wall_power_w": load}

    def probes(self) -> list[Probe]:
        return [Probe(read=self.read_load, period_s=self.poll_period_s, name="wattmeter load")]

    def stop(self) -> list[Reading]:
        e1_wh = None
        try:
            load, e1_wh = self._read()
            self._record(load)
        except Exception as exc:
            self._notes.append(f"wattmeter: read failed at stop ({_short(exc)})")
        t1 = self.clock()
        with self._lock:
            by_load = self._load.integral(self._t0, t1) if len(self._load.points) >= 2 else None
        counter_wh = (e1_wh - self._e0_wh) if (e1_wh is not None and self._e0_wh is not None) else None
        if counter_wh is not None and counter_wh < 0:  # counter reset on the device
            self._notes.append("wattmeter: energy counter went backwards (reset on the device?)")
            counter_wh = None
        if counter_wh is not None and (counter_wh >= self.counter_min_wh or by_load is None):
            if counter_wh < self.counter_min_wh:
                self._notes.append(
                    f"wattmeter: energy from a whole-Wh counter ({counter_wh:g} Wh); no load readings")
            return [Reading(self.field, counter_wh * WH_TO_J, "J", "wattmeter-netio-counter")]
        return [Reading(self.field, by_load, "J", "wattmeter-netio-load")]

    def sample_notes(self) -> list[str]:
        return list(self._notes)


def _short(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}"


def unavailable_reason(url: str, output_id: int | None = None) -> str | None:
    """Why the NETIO meter at ``url`` cannot be read, or None (one HTTP request)."""
    return NetioWattmeter(url, output_id).unavailable_reason()


def is_available(url: str, output_id: int | None = None) -> bool:
    return unavailable_reason(url, output_id) is None
