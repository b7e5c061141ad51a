""":class:`HttpTarget`: a model served by ``greenserve serve``, reached over loopback HTTP.

It is a :class:`~pytest_greenserve.targets.Target` like any engine, so the runner and the
measure step handle it the same way: ``load()`` starts the server (a child of this process,
so the meters' process tree covers it) and waits for ``/health`` (not measured: the runner
loads and warms up outside the meters' window); ``generate()`` posts one request through a
kept-alive ``http.client`` connection (:class:`~.connections.ConnectionPool`: one connection
per request in flight; httpx, used before, cost ~0.6 ms more per request) and returns the
token ids the server generated (``stream=True``: as server-sent events, each token's arrival
stamped at the client); ``close()`` stops the server. A server that dies mid-request makes
``generate()`` raise :class:`EngineError` with its exit status and log tail; the runner then
discards the target, and the next sample starts a fresh server.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Sequence

from ..engines.base import EngineError, EngineOptions, Generation
from .connections import FAILURES, ConnectionPool
from .server import ServeError, ServerProcess, engine_class_ref, handle_to_json

__all__ = ["HttpTarget"]


class HttpTarget:
    """``engine_cls`` serving ``handle`` on ``provider``, in a ``greenserve serve`` child process."""

    def __init__(self, handle, provider: str, engine_cls, options: EngineOptions | None = None, *,
                 config_name: str | None = None, new_tokens_max: int | None = None, host: str = "127.0.0.1",
                 health_timeout_s: float = 600.0, request_timeout_s: float = 600.0, concurrency: int = 1,
                 stream: bool = False, python: str | None = None):
        self.handle = handle
        self.provider = provider
        self.engine_cls = engine_cls
        self.options = options or EngineOptions()
        self.config_name = config_name or f"{engine_cls.name}-{provider}"
        self.new_tokens_max = new_tokens_max
        self.host = host
        self.health_timeout_s = health_timeout_s
        self.request_timeout_s = request_timeout_s
        self.concurrency = concurrency
        self.stream = stream
        self.python = python  # another environment's interpreter (an interleaved A/B's A side), or ours
        self.server: ServerProcess | None = None
        self._pool: ConnectionPool | None = None
        self._info: dict = {}

    # -- the Target protocol ------------------------------------------------------------
    def load(self) -> None:
        ref, root = engine_class_ref(self.engine_cls)
        args = ["--config", self.config_name, "--handle-json", handle_to_json(self.handle), "--engine-class", ref,
                "--openvino-precision", self.options.openvino_precision,
                "--ort-spinning", "on" if self.options.ort_spinning else "off", "--dtype", self.options.dtype,
                "--compile-mode", self.options.compile_mode]
        if self.options.threads:
            args += ["--threads", str(self.options.threads)]
        if self.new_tokens_max:
            args += ["--new-tokens-max", str(self.new_tokens_max)]
        self.server = ServerProcess(args, host=self.host, health_timeout_s=self.health_timeout_s,
                                    python_path=[root] if root else [], python=self.python,
                                    label=f"greenserve serve ({self.handle.name} on {self.config_name})")
        self.server.start()
        # one connection per request in flight: the client threads never exceed the concurrency
        self._pool = ConnectionPool(self.host, self.server.port, max(1, self.concurrency), connect_timeout_s=10.0,
                                    timeout_s=self.request_timeout_s)
        try:
            self.server.wait_healthy()
            status, raw = self._pool.request("GET", "/info")
            if status != 200:
                raise ValueError(f"HTTP {status}: {_error_message(raw)}")
            self._info = json.loads(raw)
        except ServeError as exc:
            self.close()
            raise EngineError(str(exc)) from None
        except (*FAILURES, ValueError) as exc:
            self.close()
            raise EngineError(f"greenserve serve did not answer /info: {type(exc).__name__}: {exc}") from None

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        if self.server is None or self._pool is None:
            raise EngineError("the HTTP target is not loaded")
        body = {"prompt": list(input_ids), "max_tokens": new_tokens, "temperature": 0}
        if self.stream:
            return self._generate_streamed(body)
        try:
            status, raw = self._pool.request("POST", "/v1/completions", json.dumps(body).encode())
        except FAILURES as exc:
            raise EngineError(self._why_failed(f"{type(exc).__name__}: {exc}", wait=True)) from None
        if status != 200:
            raise EngineError(self._why_failed(f"HTTP {status}: {_error_message(raw)}"))
        data = json.loads(raw)
        return Generation(token_ids=list(data["choices"][0]["token_ids"]), ttft_s=None)

    def _generate_streamed(self, body: dict) -> Generation:
        """``stream: true``: every token's arrival stamped here, at the client, as the field's
        load generators measure (TTFT: the first token's; ITL: the gaps between them)."""
        tokens: list[int] = []
        times: list[float] = []
        start = time.perf_counter()
        try:
            # leaving the block before the body's end (an error) drops the connection
            with self._pool.stream("POST", "/v1/completions", json.dumps({**body, "stream": True}).encode()) as response:
                if response.status != 200:
                    raise EngineError(self._why_failed(f"HTTP {response.status}: {_error_message(response.read())}"))
                for event in sse_events(response_lines(response)):
                    if event == "[DONE]":
                        response.read()  # the chunked body's end: the connection is then reusable
                        break
                    data = json.loads(event)
                    if "error" in data:
                        raise EngineError(self._why_failed(str(data["error"].get("message"))))
                    new = data["choices"][0].get("token_ids") or []
                    now = time.perf_counter() - start
                    tokens += new
                    times += [now] * len(new)
        except FAILURES as exc:
            raise EngineError(self._why_failed(f"{type(exc).__name__}: {exc}", wait=True)) from None
        return Generation(token_ids=tokens, ttft_s=times[0] if times else None, token_times_s=times or None)

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()
            server.remove_log()

    def versions(self) -> dict[str, str]:
        # the server's libraries: the client is the standard library's http.client, no library of its own
        return dict(self._info.get("versions") or {})

    # -- for the meters and the tests -----------------------------------------------------
    def pids(self) -> list[int]:
        """The server's pid (its process tree is a subtree of this process's), if it runs."""
        pid = self.server.pid if self.server is not None else None
        return [pid] if pid is not None and self.server.exited() is None else []

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    @property
    def connections_opened(self) -> int:
        """How many connections the requests have opened so far (kept alive: one per client thread)."""
        return self._pool.opened if self._pool is not None else 0

    def _why_failed(self, what: str, wait: bool = False) -> str:
        """Why a request failed: the server's death (status and log tail) when it died."""
        server = self.server
        if server is not None and server.proc is not None:
            if wait:  # the connection broke: give a dying server a moment to be seen dead
                try:
                    server.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            code = server.exited()
            if code is not None:
                how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                return f"the server (pid {server.pid}) {how} during the request; log tail: {server.log_tail()}"
        return f"the server failed the request: {what}"


def sse_events(lines):
    """The ``data:`` payloads of a server-sent-event stream, given its lines."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def response_lines(response):
    """An ``http.client`` response's lines as they arrive, without their line ends (``readline``
    reads a chunked body too)."""
    while True:
        line = response.readline()
        if not line:
            return
        yield line.decode("utf-8").rstrip("\r\n")


def _error_message(raw: bytes) -> str:
    """A refused request's reason, on one line: the JSON error's message, else the body's first line."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except Exception:
        lines = raw.decode("utf-8", errors="replace").strip().splitlines()
        return lines[0][:200] if lines else "(no body)"
