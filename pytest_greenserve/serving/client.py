""":class:`HttpTarget`: a model served by ``greenserve serve``, reached over loopback HTTP.

It is a :class:`~pytest_greenserve.targets.Target` like any engine, so the runner and the
measure step handle it the same way: ``load()`` starts the server (a child of this process,
so the meters' process tree covers it) and waits for ``/health`` (not measured: the runner
loads and warms up outside the meters' window); ``generate()`` posts one request through one
kept-alive httpx connection and returns the token ids the server generated (``stream=True``:
as server-sent events, each token's arrival stamped at the client); ``close()`` stops
the server. A server that dies mid-request makes ``generate()`` raise :class:`EngineError`
with its exit status and log tail; the runner then discards the target, and the next sample
starts a fresh server.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Sequence

from ..engines.base import EngineError, EngineOptions, Generation, library_versions
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
        self._client = None
        self._info: dict = {}

    # -- the Target protocol ------------------------------------------------------------
    def load(self) -> None:
        import httpx

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
        self._client = self._new_client(httpx)
        try:
            self.server.wait_healthy(self._client)
            self._info = self._client.get(f"{self.server.url}/info").json()
        except ServeError as exc:
            self.close()
            raise EngineError(str(exc)) from None
        except httpx.HTTPError as exc:
            self.close()
            raise EngineError(f"greenserve serve did not answer /info: {type(exc).__name__}: {exc}") from None

    def _new_client(self, httpx):
        # trust_env=False: no proxy from the environment between us and loopback
        client = httpx.Client(trust_env=False, timeout=httpx.Timeout(self.request_timeout_s, connect=10.0),
                              limits=httpx.Limits(max_connections=max(1, self.concurrency),
                                                  max_keepalive_connections=max(1, self.concurrency)))
        return client

    def _thread_client(self):
        """The one client, shared by every client thread: httpx's client is thread-safe and its
        pool (sized to the concurrency) gives each request in flight a kept-alive connection of
        its own. A client per thread would cost every open-loop request a new client (its SSL
        context is built at creation: milliseconds of CPU on the machine being measured) and a
        new connection."""
        return self._client

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        import httpx

        if self.server is None or self._client is None:
            raise EngineError("the HTTP target is not loaded")
        body = {"prompt": list(input_ids), "max_tokens": new_tokens, "temperature": 0}
        if self.stream:
            return self._generate_streamed(body)
        try:
            response = self._thread_client().post(f"{self.server.url}/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise EngineError(self._why_failed(f"{type(exc).__name__}: {exc}", wait=True)) from None
        if response.status_code != 200:
            raise EngineError(self._why_failed(f"HTTP {response.status_code}: {_error_message(response)}"))
        data = response.json()
        return Generation(token_ids=list(data["choices"][0]["token_ids"]), ttft_s=None)

    def _generate_streamed(self, body: dict) -> Generation:
        """``stream: true``: every token's arrival stamped here, at the client, as the field's
        load generators measure (TTFT: the first token's; ITL: the gaps between them)."""
        import httpx

        tokens: list[int] = []
        times: list[float] = []
        start = time.perf_counter()
        try:
            with self._thread_client().stream("POST", f"{self.server.url}/v1/completions",
                                              json={**body, "stream": True}) as response:
                if response.status_code != 200:
                    response.read()
                    raise EngineError(self._why_failed(f"HTTP {response.status_code}: {_error_message(response)}"))
                for event in sse_events(response.iter_lines()):
                    if event == "[DONE]":
                        break
                    data = json.loads(event)
                    if "error" in data:
                        raise EngineError(self._why_failed(str(data["error"].get("message"))))
                    new = data["choices"][0].get("token_ids") or []
                    now = time.perf_counter() - start
                    tokens += new
                    times += [now] * len(new)
        except httpx.HTTPError as exc:
            raise EngineError(self._why_failed(f"{type(exc).__name__}: {exc}", wait=True)) from None
        return Generation(token_ids=tokens, ttft_s=times[0] if times else None, token_times_s=times or None)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self._client = None
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()
            server.remove_log()

    def versions(self) -> dict[str, str]:
        versions = dict(self._info.get("versions") or {})
        versions.update(library_versions(("httpx",)))
        return versions

    # -- for the meters and the tests -----------------------------------------------------
    def pids(self) -> list[int]:
        """The server's pid (its process tree is a subtree of this process's), if it runs."""
        pid = self.server.pid if self.server is not None else None
        return [pid] if pid is not None and self.server.exited() is None else []

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

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


def _error_message(response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except Exception:
        return (response.text or "").strip().splitlines()[0][:200] if response.text else "(no body)"
