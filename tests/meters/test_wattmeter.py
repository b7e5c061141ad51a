from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pytest_greenserve.meters import MeterSet, MeterSettings
from pytest_greenserve.meters.wattmeter import NetioWattmeter, netio_url, parse_netio
from stub_http import answer_json


def netio_doc(total_load_w=120.0, total_energy_wh=2253, outputs=((1, 100.0, 172),)):
    """The shape a NETIO PowerBOX / 4All serves at /netio.json (JSONVer 2.x)."""
    return {
        "Agent": {"Model": "NETIO 4All", "DeviceName": "test", "JSONVer": "2.1", "NumOutputs": len(outputs),
                  "SerialNumber": "24:A4:2C:39:11:5A", "Version": "3.1.0", "Uptime": 490866},
        "GlobalMeasure": {"Voltage": 230.1, "Frequency": 50.0, "TotalCurrent": 520,
                          "OverallPowerFactor": 0.97, "TotalLoad": total_load_w,
                          "TotalEnergy": total_energy_wh, "EnergyStart": "2018-01-19T13:30:26+00:00"},
        "Outputs": [{"ID": i, "Name": f"output_{i}", "State": 1, "Action": 6, "Delay": 5000,
                     "Current": 400, "PowerFactor": 0.97, "Load": load, "Energy": energy}
                    for i, load, energy in outputs],
    }


@pytest.fixture
def netio():
    """A local NETIO look-alike on port 0; ``state`` is the document it serves."""
    state = {"doc": netio_doc(), "gets": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/netio.json":
                self.send_error(404)
                return
            state["gets"] += 1
            answer_json(self, json.dumps(state["doc"]).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def test_netio_url_and_parse():
    assert netio_url("http://10.0.0.5") == "http://10.0.0.5/netio.json"
    assert netio_url("10.0.0.5:8080/") == "http://10.0.0.5:8080/netio.json"
    assert netio_url("http://h/custom.json") == "http://h/custom.json"
    doc = netio_doc(total_load_w=120.0, total_energy_wh=2253, outputs=((1, 100.0, 172), (2, 20.0, 5)))
    assert parse_netio(doc) == (120.0, 2253.0)
    assert parse_netio(doc, output_id=2) == (20.0, 5.0)
    del doc["GlobalMeasure"]
    assert parse_netio(doc) == (120.0, 177.0)  # sum of the outputs
    with pytest.raises(ValueError):
        parse_netio(doc, output_id=9)


def test_wattmeter_integrates_load_when_the_wh_counter_is_too_coarse(netio):
    meter = NetioWattmeter(netio["url"])
    assert meter.unavailable_reason() is None
    t0 = time.monotonic()
    meter.start()
    time.sleep(0.3)
    netio["doc"]["GlobalMeasure"]["TotalEnergy"] += 1  # one whole Wh: 3600 J, far off
    [reading] = meter.stop()
    elapsed = time.monotonic() - t0
    assert reading.source == "wattmeter-netio-load"
    assert reading.value == pytest.approx(120.0 * elapsed, rel=0.1)


def test_wattmeter_uses_the_counter_when_it_moved_enough(netio):
    meter = NetioWattmeter(netio["url"], output_id=1)
    meter.start()
    netio["doc"]["Outputs"][0]["Energy"] += 250  # Wh
    [reading] = meter.stop()
    assert reading.source == "wattmeter-netio-counter"
    assert reading.value == pytest.approx(250 * 3600.0)


def test_wattmeter_load_is_polled_by_the_sampler(netio):
    # a faster poll than NETIO's 1 s refresh, to keep the test short
    ms = MeterSet(MeterSettings(wattmeter_url=netio["url"], gpu_indices=(), sampler_hz=20, wattmeter_poll_s=0.1))
    try:
        idle = ms.measure_idle(0.3)
        assert idle.power_w["energy_wall_j"] == pytest.approx(120.0, rel=0.05)
        gets = netio["gets"]
        ms.start()
        netio["doc"]["GlobalMeasure"]["TotalLoad"] = 220.0
        time.sleep(0.5)
        fields = ms.stop(idle)
    finally:
        ms.close()
    assert netio["gets"] - gets >= 4  # start, polls, stop
    assert fields["energy_wall_source"] == "wattmeter-netio-load"
    t = fields["meter_time_s"]
    assert fields["energy_wall_j"] == pytest.approx(220.0 * t, rel=0.15)
    assert fields["energy_wall_idle_j"] == pytest.approx(idle.power_w["energy_wall_j"] * t)
    assert fields["energy_wall_net_j"] == pytest.approx(fields["energy_wall_j"] - fields["energy_wall_idle_j"])
    assert fields["energy_total_j"] == fields["energy_cpu_j"]  # wall energy is never added to the total


def test_unreachable_wattmeter_is_a_note_and_empty_fields(netio):
    url = netio["url"] + "/missing.json"
    ms = MeterSet(MeterSettings(wattmeter_url=url, gpu_indices=()))
    try:
        [note] = [n for n in ms.notes() if n.startswith("wattmeter")]
        assert note.startswith(f"wattmeter: cannot read {url}") and "404" in note
        ms.start()
        fields = ms.stop()
    finally:
        ms.close()
    assert fields.get("energy_wall_j") is None and fields.get("energy_wall_source") is None
