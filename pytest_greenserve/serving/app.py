"""The FastAPI app that serves one loaded model in one configuration.

``create_app(engine, ...)`` takes an engine that is already loaded (``greenserve serve`` loads
it before uvicorn starts, so ``/health`` answers only once the model can serve) and keeps it,
with everything else a request needs, on ``app.state``: no module globals, so tests can build
several apps in one process.

* ``POST /v1/completions``: the OpenAI-compatible subset (``stream: true``: server-sent events). ``prompt`` is a string (tokenized
  with the model's tokenizer) or a list of token ids (what the plugin sends, so that HTTP and
  in-process generate from identical inputs); ``max_tokens`` tokens are generated greedily,
  EOS ignored, as every engine does; ``temperature`` must be 0 or absent. The answer holds the
  completion text, the generated ``token_ids`` (an extension, on the choice), ``usage``, and
  ``generation_s``/``ttft_s`` (extensions: the engine's own time for the request).
* ``GET /health``: ``{"status": "ok"}``.
* ``GET /info``: model, engine, provider, library versions, device.

Bad requests (no prompt, ``max_tokens`` <= 0 or above the ceiling, a body that is not JSON,
a prompt over the size limit, prompt plus ``max_tokens`` over the model's context window, a
body over the byte limit however it is sent, a sampling temperature) get a 4xx whose body is
``{"error": {"message": ..., "type": "invalid_request_error"}}`` as OpenAI's API answers; the
server goes on serving. Requests reach the engine one at a time (a lock): engines are written
for a batch of one, and under concurrent clients the queueing shows in the latencies.
"""

from __future__ import annotations

import asyncio
import json
import platform
import threading
import time
import uuid
from typing import Any, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from ..engines.base import failure_line
from . import DEFAULT_BODY_BYTES_MAX, DEFAULT_NEW_TOKENS_MAX, DEFAULT_PROMPT_TOKENS_MAX
from .prometheus import CONTENT_TYPE, GpuEnergy, ServerCounters, render

__all__ = ["create_app", "DEFAULT_NEW_TOKENS_MAX", "DEFAULT_PROMPT_TOKENS_MAX"]


class CompletionRequest(BaseModel):
    model: Optional[str] = Field(None, description="ignored: the server serves one model")
    prompt: Union[str, list[int]] = Field(..., description="text, or the prompt's token ids")
    max_tokens: int = Field(16, description="tokens to generate (greedy, EOS ignored)")
    temperature: Optional[float] = Field(None, description="0 or absent: greedy decoding is the only mode")
    stream: Optional[bool] = Field(None, description="true: server-sent events, one per token, as OpenAI streams")


class Choice(BaseModel):
    index: int
    text: Optional[str]
    token_ids: list[int]
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    generation_s: float = Field(..., description="server-side time of the engine's generate call")
    ttft_s: Optional[float] = Field(None, description="server-side time to first token, where the engine knows it")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    """One sentence for the first problem pydantic found in the body."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    kind = str(first.get("type", ""))
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if kind == "json_invalid":
        return 400, "the body is not valid JSON"
    if kind == "missing" and loc:
        return 400, f"'{loc[0]}' is required"
    if not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
        return 400, "the body must be a JSON object"
    where = f"'{loc[0]}'" if loc else "the body"
    if loc and loc[0] == "prompt":
        return 400, "'prompt' must be a string or a list of token ids (integers)"
    return 400, f"{where}: {first.get('msg', 'invalid value')}"


class _BodyLimit:
    """A plain ASGI middleware (not ``@app.middleware``, whose BaseHTTPMiddleware costs a
    fraction of a millisecond per request) that holds a request body to ``limit`` bytes: a body
    announced larger gets a 413 at once, and every body is read here, counting the bytes that
    actually arrive, so a chunked body (no Content-Length) over the limit gets a 413 too,
    before the app parses anything. The body read is then handed to the app as one message."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(413, f"the body is larger than {self.limit} bytes")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if value.isdigit() and int(value) > self.limit:
                    await too_large(scope, receive, send)
                    return
                break
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal first
            if first is not None:
                message, first = first, None
                return message
            return await receive()  # after the body: http.disconnect, for streamed responses

        await self.app(scope, replay, send)


def create_app(engine, *, model: str, config: str, handle=None, tokenizer=None,
               new_tokens_max: int = DEFAULT_NEW_TOKENS_MAX, prompt_tokens_max: int = DEFAULT_PROMPT_TOKENS_MAX,
               body_bytes_max: int = DEFAULT_BODY_BYTES_MAX, context_tokens: int | None = None,
               info: dict | None = None, engine_thread=None) -> FastAPI:
    """The app serving ``engine`` (loaded) as ``model`` in configuration ``config``.

    ``context_tokens``: the model's context window (``context_window.context_window_of``); a
    request whose prompt plus ``max_tokens`` exceeds it gets a 400 naming the limit, before any
    engine sees a position past what the model was built for. None: no limit known.

    ``tokenizer`` (a transformers tokenizer, or None) turns string prompts into ids and
    generated ids into text; without one, string prompts are refused and ``text`` is null.
    ``engine_thread``: the :class:`~.engine_thread.EngineThread` that runs every engine call on
    the thread that loaded the engine (``greenserve serve`` passes one); None: anyio's worker
    threads, one call at a time.
    """
    app = FastAPI(title="greenserve serve", version="1",
                  description="One model in one serving configuration (pytest-greenserve).")
    state = app.state
    state.engine = engine
    state.model = model
    state.config = config
    state.handle = handle
    state.tokenizer = tokenizer
    state.new_tokens_max = new_tokens_max
    state.prompt_tokens_max = prompt_tokens_max
    state.body_bytes_max = body_bytes_max
    state.context_tokens = context_tokens
    state.vocab_size = len(tokenizer) if tokenizer is not None else None
    state.lock = threading.Lock()
    state.engine_thread = engine_thread
    state.info = {"model": model, "config": config, "engine": getattr(engine, "name", type(engine).__name__),
                  "provider": getattr(engine, "provider", None), "context_tokens": context_tokens, **(info or {})}
    state.counters = ServerCounters()
    state.gpu_energy = GpuEnergy(getattr(engine, "provider", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        status, message = _validation_message(exc)
        return _error(status, message)

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest):
        return _error(exc.status, exc.message)

    app.add_middleware(_BodyLimit, limit=body_bytes_max)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def info_() -> dict:
        return app.state.info

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_() -> PlainTextResponse:
        """Requests, tokens, the process tree's CPU and energy, in Prometheus' text format."""
        st = app.state
        return PlainTextResponse(render(st.counters, model=st.model, config=st.config, gpu=st.gpu_energy),
                                 media_type=CONTENT_TYPE)

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={400: {"description": "a bad request; the body says why"},
                         500: {"description": "the engine failed; the body says why"},
                         413: {"description": "the body is too large"}})
    async def completions(body: CompletionRequest, request: Request) -> Any:
        st = request.app.state
        if body.temperature not in (None, 0):
            raise BadRequest("only greedy decoding is served: 'temperature' must be 0 or absent")
        if body.max_tokens <= 0:
            raise BadRequest("'max_tokens' must be at least 1")
        if body.max_tokens > st.new_tokens_max:
            raise BadRequest(f"'max_tokens' is {body.max_tokens}, above this server's ceiling of {st.new_tokens_max}")
        if isinstance(body.prompt, str):
            if st.tokenizer is None:
                raise BadRequest("this server has no tokenizer: send the prompt as a list of token ids")
            if len(body.prompt) > 8 * st.prompt_tokens_max:  # before tokenizing a huge string
                raise BadRequest(f"the prompt is over the size limit of {st.prompt_tokens_max} tokens")
            ids = st.tokenizer(body.prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = body.prompt
        if not ids:
            raise BadRequest("'prompt' is empty")
        if len(ids) > st.prompt_tokens_max:
            raise BadRequest(f"the prompt has {len(ids)} tokens, over the size limit of {st.prompt_tokens_max}")
        if st.vocab_size is not None and not all(0 <= i < st.vocab_size for i in ids):
            raise BadRequest(f"'prompt' holds token ids outside the vocabulary (0..{st.vocab_size - 1})")
        if st.context_tokens is not None and len(ids) + body.max_tokens > st.context_tokens:
            raise BadRequest(f"the prompt's {len(ids)} tokens plus 'max_tokens' {body.max_tokens} exceed the "
                             f"model's context window of {st.context_tokens} tokens")
        if body.stream:
            return _stream(st, ids, body.max_tokens)
        try:
            gen, generation_s = await _on_engine_thread(st, _timed_generate, st.engine, ids, body.max_tokens)
        except Exception as exc:  # answered, so the connection and the server go on
            st.counters.failed()
            return JSONResponse({"error": {"message": failure_line("the engine failed", exc),
                                           "type": "server_error"}}, status_code=500)
        new = [int(i) for i in gen.token_ids]
        st.counters.answered(len(ids), len(new), generation_s)
        text = st.tokenizer.decode(new) if st.tokenizer is not None else None
        # a JSONResponse as is: FastAPI validates and re-serialises a returned dict through the
        # response model, which costs more than the rest of the request (the schema still shows it)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": st.model,
            "choices": [{"index": 0, "text": text, "token_ids": new, "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)},
            "generation_s": generation_s,
            "ttft_s": gen.ttft_s,
        })

    return app


def _sse(data) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _stream(st, ids, max_tokens):
    """``stream: true``: one server-sent event per token, the moment the engine makes it, in
    OpenAI's ``text_completion`` chunk shape (``token_ids`` on the choice, as unstreamed), then a
    last chunk with ``finish_reason``, ``usage`` and the server's ``generation_s``/``ttft_s``,
    then ``data: [DONE]``. Engines that stamp each token (transformers ``generate``: torch,
    onnx, openvino) stream as they go; the others (jit, compile) send every token when the
    generation ends, so their time to first token at the client is the whole request, which
    is what such a server gives a client. An engine failure mid-stream is an ``error`` event."""
    from starlette.responses import StreamingResponse

    from ..engines.base import token_listener

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def put(*item) -> None:
        loop.call_soon_threadsafe(events.put_nowait, item)

    def job():
        try:
            with token_listener(lambda token: put("token", token)):
                gen, generation_s = _timed_generate(st.engine, ids, max_tokens)
            put("done", gen, generation_s)
        except Exception as exc:
            put("error", exc)

    if st.engine_thread is not None:
        st.engine_thread.call_soon(job)
    else:
        threading.Thread(target=lambda: _locked(st, job), daemon=True).start()
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": st.model}
    text = _TextDeltas(st.tokenizer)

    def chunk(tokens, finish=None, **extra) -> bytes:
        choice = {"index": 0, "text": text.add(tokens), "token_ids": tokens, "finish_reason": finish,
                  "logprobs": None}
        return _sse({**head, "choices": [choice], **extra})

    async def body():
        sent: list[int] = []
        while True:
            kind, *rest = await events.get()
            if kind == "token":
                sent.append(rest[0])
                yield chunk([rest[0]])
            elif kind == "done":
                gen, generation_s = rest
                new = [int(i) for i in gen.token_ids]
                for token in new[len(sent):]:  # an engine that does not stream: every token now
                    yield chunk([token])
                usage = {"prompt_tokens": len(ids), "completion_tokens": len(new), "total_tokens": len(ids) + len(new)}
                st.counters.answered(len(ids), len(new), generation_s)
                yield chunk([], "length", usage=usage, generation_s=generation_s, ttft_s=gen.ttft_s)
                yield _sse("[DONE]")
                return
            else:
                st.counters.failed()
                message = failure_line("the engine failed", rest[0])
                yield _sse({"error": {"message": message, "type": "server_error"}})
                return

    return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


class _TextDeltas:
    """The text each streamed token adds: the decoded whole minus what was sent before, so a
    character split across tokens (byte-level BPE) is sent once whole, never as U+FFFD."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def add(self, tokens: list[int]) -> str | None:
        if self.tokenizer is None:
            return None
        self.ids += tokens
        whole = self.tokenizer.decode(self.ids)
        if whole.endswith("\ufffd") and tokens:  # an unfinished character: wait for the rest
            return ""
        delta, self.sent = whole[len(self.sent):], whole
        return delta


def _locked(st, fn):
    with st.lock:
        return fn()


def _timed_generate(engine, ids, max_tokens):
    t = time.perf_counter()
    gen = engine.generate(ids, max_tokens)
    return gen, time.perf_counter() - t


async def _on_engine_thread(st, fn, *args):
    """``fn(*args)`` where the engine runs: the server's engine thread, else a worker thread
    under the app's lock (engines are written for one request at a time)."""
    if st.engine_thread is not None:
        return await st.engine_thread.submit(fn, *args)
    from starlette.concurrency import run_in_threadpool

    def locked():
        with st.lock:
            return fn(*args)

    return await run_in_threadpool(locked)


def server_info(engine, handle=None) -> dict:
    """What ``/info`` says beyond model and configuration: versions and device."""
    import sys

    versions = {}
    try:
        versions = dict(engine.versions())
    except Exception:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for name in ("pytest-greenserve", "fastapi", "uvicorn"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    device = platform.processor() or platform.machine()
    if getattr(engine, "provider", None) == "cuda":
        try:
            import torch

            device = torch.cuda.get_device_name(0)
        except Exception:
            device = "cuda"
    return {"versions": versions, "device": device, "python": sys.version.split()[0],
            "weights": getattr(handle, "weights", None), "model_key": getattr(handle, "key", None),
            "dtype": getattr(getattr(engine, "options", None), "dtype", None)}
