import httpx
import pytest

from pytest_greenserve.serving.server import ServerProcess, handle_to_json


def serve_args(handle, config: str, engine_class: str | None = None, *extra: str) -> list[str]:
    args = ["--config", config, "--handle-json", handle_to_json(handle), *extra]
    return args + (["--engine-class", engine_class] if engine_class else [])


@pytest.fixture(scope="module")
def null_server(tiny_handle):
    """``greenserve serve`` with the null (echo) engine on the tiny gpt2's tokenizer, and a client."""
    server = ServerProcess(serve_args(tiny_handle("gpt2"), "null-cpu", "pytest_greenserve.serving.null:NullEngine",
                                      "--new-tokens-max", "64", "--prompt-tokens-max", "100"),
                           health_timeout_s=60)
    server.start()
    client = httpx.Client(trust_env=False, timeout=30)
    try:
        server.wait_healthy()
        yield server, client
    finally:
        client.close()
        server.stop()
        server.remove_log()
