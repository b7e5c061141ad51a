"""The served app's contract: completions, health, info, bad requests (a real uvicorn, the null engine)."""

import subprocess
import sys

import pytest

COMPLETIONS = "/v1/completions"


def post(null_server, **kwargs):
    server, client = null_server
    return client.post(server.url + COMPLETIONS, **kwargs)


def test_health_and_info(null_server):
    server, client = null_server
    assert client.get(server.url + "/health").json() == {"status": "ok"}
    info = client.get(server.url + "/info").json()
    assert info["model"] == "tiny-gpt2" and info["engine"] == "null" and info["provider"] == "cpu"
    assert info["config"] == "null-cpu" and info["device"]
    assert {"pytest-greenserve", "fastapi", "uvicorn"} <= set(info["versions"])


def test_completion_from_token_ids_answers_the_openai_subset(null_server):
    r = post(null_server, json={"prompt": [5, 6, 7], "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny-gpt2" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["token_ids"] == [5, 6, 7, 5, 6]  # the null engine echoes the prompt
    assert isinstance(choice["text"], str) and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert body["generation_s"] >= 0


def test_a_text_prompt_is_tokenized_with_the_models_tokenizer(null_server, tiny_handle):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_handle("gpt2").ref)
    ids = tok("def add(a, b):", add_special_tokens=False)["input_ids"]
    body = post(null_server, json={"prompt": "def add(a, b):", "max_tokens": len(ids)}).json()
    assert body["choices"][0]["token_ids"] == ids and body["choices"][0]["text"].strip() == tok.decode(ids).strip()
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_the_openapi_schema_documents_the_endpoints(null_server):
    server, client = null_server
    schema = client.get(server.url + "/openapi.json").json()
    assert {"/v1/completions", "/health", "/info"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["CompletionRequest"]
    assert request["required"] == ["prompt"] and {"prompt", "max_tokens", "temperature"} <= set(request["properties"])
    assert {"choices", "usage", "generation_s"} <= set(schema["components"]["schemas"]["CompletionResponse"]["properties"])


BAD = [
    ({"json": {"max_tokens": 4}}, 400, "'prompt' is required"),
    ({"json": {"prompt": [1, 2], "max_tokens": 0}}, 400, "'max_tokens' must be at least 1"),
    ({"json": {"prompt": [1, 2], "max_tokens": -3}}, 400, "'max_tokens' must be at least 1"),
    ({"json": {"prompt": [1, 2], "max_tokens": 65}}, 400, "above this server's ceiling of 64"),
    ({"json": {"prompt": [1] * 101, "max_tokens": 4}}, 400, "over the size limit of 100"),
    ({"json": {"prompt": "x " * 2000, "max_tokens": 4}}, 400, "over the size limit of 100"),
    ({"json": {"prompt": [1, 2], "temperature": 0.7}}, 400, "'temperature' must be 0 or absent"),
    ({"json": {"prompt": []}}, 400, "'prompt' is empty"),
    ({"json": {"prompt": [1, "a"]}}, 400, "'prompt' must be a string or a list of token ids"),
    ({"json": {"prompt": [10 ** 9]}}, 400, "outside the vocabulary"),
    ({"json": {"prompt": [1], "max_tokens": "many"}}, 400, "'max_tokens'"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400, "must be a JSON object"),
    # one byte over the 1 MiB limit (the boundary itself: test_the_body_limit_counts_the_bytes_that_arrive)
    ({"content": b"x" * ((1 << 20) + 1), "headers": {"content-type": "application/json"}}, 413, "larger than"),
]


@pytest.mark.parametrize("request_kwargs, status, words", BAD, ids=[w for _, _, w in BAD])
def test_a_bad_request_gets_a_4xx_with_a_clear_message_and_the_server_goes_on(null_server, request_kwargs, status,
                                                                              words):
    r = post(null_server, **request_kwargs)
    assert r.status_code == status
    error = r.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    server, client = null_server
    assert server.exited() is None and client.get(server.url + "/health").status_code == 200


def json_body_of(size: int) -> bytes:
    """A valid completion request of exactly ``size`` bytes (spaces pad it)."""
    body = b'{"prompt": [1, 2], "max_tokens": 2}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_body_limit_counts_the_bytes_that_arrive(null_server, chunked):
    """1 MiB passes, one byte more gets a 413, whether the size is announced or the body is
    chunked (no Content-Length: the bytes are counted as they arrive)."""
    from pytest_greenserve.serving import DEFAULT_BODY_BYTES_MAX

    headers = {"content-type": "application/json"}
    for size, status in ((DEFAULT_BODY_BYTES_MAX, 200), (DEFAULT_BODY_BYTES_MAX + 1, 413)):
        body = json_body_of(size)
        assert len(body) == size
        content = iter([body[:size // 2], body[size // 2:]]) if chunked else body
        r = post(null_server, content=content, headers=headers)
        assert r.status_code == status, r.text[:200]
        if status == 413:
            assert r.json()["error"]["message"] == f"the body is larger than {DEFAULT_BODY_BYTES_MAX} bytes"
        else:
            assert r.json()["choices"][0]["token_ids"] == [1, 2]
    server, client = null_server
    assert server.exited() is None and client.get(server.url + "/health").status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_parsed(null_server):
    """The issue's case: a 9 KB chunked body against a small limit got a 200; here 2 MiB of
    chunks against 1 MiB. No Content-Length is sent, so only the bytes read can tell."""
    chunks = [b'{"prompt": [1], "max_tokens": 1' + b" " * 1000] + [b" " * 65536] * 32 + [b"}"]
    r = post(null_server, content=iter(chunks), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def wide_null_server(tiny_handle):
    """The null engine with ceilings above the tiny gpt2's 512-position context window."""
    from conftest import serve_args
    import httpx
    from pytest_greenserve.serving.server import ServerProcess

    server = ServerProcess(serve_args(tiny_handle("gpt2"), "null-cpu", "pytest_greenserve.serving.null:NullEngine",
                                      "--new-tokens-max", "512", "--prompt-tokens-max", "1000"), health_timeout_s=60)
    server.start()
    try:
        with httpx.Client(trust_env=False, timeout=30) as client:
            server.wait_healthy()
            yield server, client
    finally:
        server.stop()
        server.remove_log()


def test_prompt_plus_max_tokens_over_the_context_window_is_a_400_naming_it(wide_null_server):
    server, client = wide_null_server
    assert client.get(server.url + "/info").json()["context_tokens"] == 512
    ok = client.post(server.url + COMPLETIONS, json={"prompt": [1] * 500, "max_tokens": 12})
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["token_ids"]) == 12
    r = client.post(server.url + COMPLETIONS, json={"prompt": [1] * 500, "max_tokens": 13})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "the prompt's 500 tokens plus 'max_tokens' 13 exceed the model's context window of 512 tokens")


def test_an_engine_error_is_a_500_and_the_server_goes_on(tiny_handle):
    from conftest import serve_args
    import httpx
    from pytest_greenserve.serving.server import ServerProcess

    server = ServerProcess(serve_args(tiny_handle("gpt2"), "raising-cpu", "serving_engines:Raising"),
                           health_timeout_s=60, python_path=[str(__import__("pathlib").Path(__file__).parent)])
    server.start()
    try:
        with httpx.Client(trust_env=False, timeout=30) as client:
            server.wait_healthy()
            r = client.post(server.url + COMPLETIONS, json={"prompt": [1]})
            assert r.status_code == 500
            assert r.json()["error"]["message"] == "the engine failed: RuntimeError: planted failure"
            assert client.get(server.url + "/health").status_code == 200  # on the same connection
    finally:
        server.stop()


@pytest.mark.parametrize("args, words", [
    (["--model", "no-such-model", "--config", "torch-cpu"], "unknown model 'no-such-model'"),
    (["--model", "mini-gpt2", "--config", "torch"], "expected ENGINE-PROVIDER"),
    (["--model", "mini-gpt2", "--config", "nosuch-cpu"], "unknown engine 'nosuch'"),
    (["--model", "mini-gpt2", "--config", "openvino-cuda"], "does not exist"),
    (["--model", "/no/such/dir", "--config", "torch-cpu"], "not a model directory"),
])
def test_bad_command_line_input_is_one_line_never_a_traceback(args, words):
    r = subprocess.run([sys.executable, "-m", "pytest_greenserve", "serve", *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_metrics_endpoint_counts_requests_tokens_and_estimated_cpu_energy(null_server):
    server, client = null_server

    def scrape() -> dict:
        r = client.get(server.url + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name.split("{")[0]] = float(value)
        assert "# TYPE greenserve_requests_total counter" in r.text
        assert 'config="null-cpu"' in r.text and 'source="estimated-cpu-time"' in r.text
        return out

    before = scrape()
    generation_s = 0.0
    for _ in range(3):
        r = post(null_server, json={"prompt": [5, 6, 7], "max_tokens": 4})
        assert r.status_code == 200
        generation_s += r.json()["generation_s"]
    assert post(null_server, json={"prompt": [5], "max_tokens": 0}).status_code == 400  # refused: not counted
    after = scrape()
    assert after["greenserve_requests_total"] - before["greenserve_requests_total"] == 3
    assert after["greenserve_completion_tokens_total"] - before["greenserve_completion_tokens_total"] == 12
    assert after["greenserve_prompt_tokens_total"] - before["greenserve_prompt_tokens_total"] == 9
    # the engine's time: the sum of the answers' generation_s (rounded to the microsecond)
    served_s = after["greenserve_generation_seconds_total"] - before["greenserve_generation_seconds_total"]
    assert served_s == pytest.approx(generation_s, abs=3e-6)
    cpu = after["greenserve_process_cpu_seconds_total"]
    assert cpu >= before["greenserve_process_cpu_seconds_total"] > 0
    assert after["greenserve_cpu_energy_estimated_joules_total"] == pytest.approx(cpu * 10, rel=1e-3)
    assert "greenserve_gpu_energy_joules_total" not in after  # a CPU configuration: absent, never 0
