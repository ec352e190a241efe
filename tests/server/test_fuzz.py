"""Schemathesis fuzzes every operation of the app's OpenAPI schema with valid and invalid inputs:
none may produce a 5xx, every answer must conform to the schema (a status it declares, its
content type, a body that validates), and every error must be OpenAI-shaped. The engine behind it
has a short context (32 tokens) so that whatever max_tokens and n the fuzzer picks, a case is
quick; the number of cases per operation is bounded for CI, most of them on the POST routes (at
least 500 there: 4 routes x 2 modes x 64)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from server_testing import MODEL_NAME, engine_is_idle, wait_until

MAX_EXAMPLES = {"POST": 64, "GET": 5}  # per operation and generation mode

OPERATIONS = ["POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models", "GET /v1/models/{model}",
              "POST /tokenize", "POST /detokenize", "GET /tokenizer_info",
              "GET /health", "GET /live", "GET /version", "GET /metrics",
              "POST /start_profile", "POST /stop_profile"]
BODYLESS = {"POST /start_profile", "POST /stop_profile"}  # no body: nothing invalid to send


@pytest.fixture(scope="module")
def fuzz_engine(model_dir):
    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.config import AsyncEngineArgs

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), device="cpu", max_model_len=32, num_gpu_blocks_override=512, max_num_seqs=256))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_engine):
    from octavo.runtime.server.app import build_app
    from octavo.runtime.server.state import ServerSettings

    app = build_app(fuzz_engine, ServerSettings(served_model_names=[MODEL_NAME]))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed(fuzz_schema):
    found = {f"{result.ok().method.upper()} {result.ok().path}" for result in fuzz_schema.get_all_operations()}
    assert found == set(OPERATIONS)


CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Operations without a body or typed parameters have no invalid inputs to generate.
CASES = [(op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (op, GenerationMode.NEGATIVE) for op in OPERATIONS if op.startswith("POST") and op not in BODYLESS]


@pytest.mark.parametrize("operation,mode", CASES, ids=[f"{op}-{mode.value}" for op, mode in CASES])
def test_no_input_gets_a_server_error(fuzz_engine, fuzz_schema, operation, mode):
    method, path = operation.split()

    @given(case=fuzz_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES[method], deadline=None, suppress_health_check=list(HealthCheck),
              database=None, print_blob=True, derandomize=True)
    def check(case):
        calls.append(case)
        response = case.call()
        assert response.status_code < 500, (f"{case.method} {case.formatted_path} {case.body!r} -> "
                                            f"{response.status_code} {response.text[:500]}")
        case.validate_response(response, checks=CONFORMANCE)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    calls: list = []
    check()
    if method == "POST" and operation not in BODYLESS:  # the POST routes' budget is really spent (not cut short by the strategy)
        assert len(calls) >= MAX_EXAMPLES["POST"], len(calls)
    assert fuzz_engine.is_running, f"the fuzzer killed the engine: {fuzz_engine.errored!r}"
    wait_until(lambda: engine_is_idle(fuzz_engine), timeout=30, message="the engine to be idle after fuzzing")


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": MODEL_NAME, "prompt": "hello", "max_tokens": 4, "stream": True}),
    ("/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": 4, "stream": True,
                              "stream_options": {"include_usage": True}})])
def test_a_stream_conforms_to_its_declared_events(fuzz_schema, path, body):
    """The fuzzer reaches stream=true only by chance; this case always checks each event's schema."""
    case = fuzz_schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call()
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    assert response.text.rstrip().endswith("data: [DONE]")
    case.validate_response(response, checks=CONFORMANCE)
