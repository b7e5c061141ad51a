"""The server's own safety: it dies with its parent (on the watchdog alone too), and it warns
when it listens beyond loopback. (A killed pytest session: test_plugin_http.py.)"""

import re
import subprocess
import sys
import time

import psutil

from conftest import serve_args

NULL = "pytest_greenserve.serving.null:NullEngine"

# a parent that starts the server, prints its pid, and waits to be killed
PARENT = '''
import os, subprocess, sys, time
args = sys.argv[1:] + ["--parent-pid", str(os.getpid()), "--no-parent-death-signal"]
server = subprocess.Popen([sys.executable, "-m", "pytest_greenserve", "serve", *args], start_new_session=True)
print(server.pid, flush=True)
time.sleep(600)
'''


def test_the_watchdog_alone_stops_the_server_when_its_parent_is_killed(tiny_handle):
    """Without Linux's parent-death signal (other systems, or a parent thread that may end), the
    watchdog on the parent's pid stops the server within a few seconds of a SIGKILL."""
    args = ["--port", "0", *serve_args(tiny_handle("gpt2"), "null-cpu", NULL)]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *args], stdout=subprocess.PIPE, text=True)
    server = psutil.Process(int(parent.stdout.readline()))
    try:
        time.sleep(2.0)
        assert server.is_running()
        parent.kill()
        parent.wait()
        gone = time.monotonic() + 5.0
        while time.monotonic() < gone and server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.1)
        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, "the server outlived its parent"
    finally:
        if server.is_running():
            server.kill()


def test_a_host_beyond_loopback_is_warned_about(tiny_handle):
    cmd = [sys.executable, "-m", "pytest_greenserve", "serve", "--host", "0.0.0.0", "--port", "0",
           *serve_args(tiny_handle("gpt2"), "null-cpu", NULL)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if re.search(r"serving .* at http://", line):
                break
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    warning = [ln for ln in lines if "warning" in ln]
    assert warning == ["greenserve serve: warning: --host 0.0.0.0 is not a loopback address: anyone who can reach "
                       "this machine can send requests (there is no authentication)\n"]


def test_loopback_hosts_are_recognised():
    from pytest_greenserve.serving.server import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "example.org"]))
