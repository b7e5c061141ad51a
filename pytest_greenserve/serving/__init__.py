"""Serving one model over HTTP, as the paper did: a FastAPI app under uvicorn (``greenserve serve``).

* :mod:`.app`: the app factory (``POST /v1/completions``, ``GET /health``, ``GET /info``);
* :mod:`.server`: ``greenserve serve`` itself, and :class:`~.server.ServerProcess`, which starts
  it as a child process on a free port, waits for ``/health`` and stops it (no orphans);
* :mod:`.client`: :class:`~.client.HttpTarget`, the measuring core's second target;
* :mod:`.connections`: its kept-alive ``http.client`` connections, one per request in flight;
* :mod:`.null`: an engine that answers at once, to measure what the transport itself costs.

fastapi and uvicorn are the ``serve`` extra (with httpx, which only the benchmarks and tests
use: the plugin's client is the standard library's ``http.client``); nothing here is imported
by the plugin until ``--greenserve-transport=http`` is used, so the plugin and ``greenserve
report`` import without them.
"""

DEFAULT_NEW_TOKENS_MAX = 512  # the ceiling on a request's max_tokens
DEFAULT_PROMPT_TOKENS_MAX = 4096  # the size limit on a prompt, in tokens
DEFAULT_BODY_BYTES_MAX = 1 << 20  # a body larger than this is refused before it is parsed
SERVE_EXTRA_HINT = "pip install 'pytest-greenserve[serve]'"


def missing_serve_reason() -> str | None:
    """Why HTTP serving cannot run here (fastapi or uvicorn missing), or None."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed ({SERVE_EXTRA_HINT})" if missing else None
