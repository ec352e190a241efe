"""The FastAPI app: `build_app(engine, settings)`.

The app does not own the engine: whoever built it shuts it down. With engine=None the app starts
in the STARTING phase (API requests get 503) until `app.state.serving.attach_engine(engine)`,
which is how `octavo serve` answers probes while the model loads.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from octavo import __version__
from octavo.runtime.async_engine import AsyncLLMEngine
from octavo.runtime.server import tokenization
from octavo.runtime.server.chat import create_chat_completion
from octavo.runtime.server.completions import create_completion
from octavo.runtime.server.errors import APIError, install_error_handlers
from octavo.runtime.server.middleware import GatewayMiddleware
from octavo.runtime.server.protocol import (ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                                            CompletionResponse, DetokenizeRequest, DetokenizeResponse, ErrorResponse,
                                            ModelCard, ModelList, TokenizeChatRequest, TokenizeCompletionRequest,
                                            TokenizeResponse, VersionResponse)
from octavo.runtime.server.state import Phase, ServerSettings, ServingState
from octavo.runtime.server.streaming import ClientDisconnected

_ERRORS = {status: {"model": ErrorResponse, "description": description} for status, description in {
    400: "invalid request", 401: "missing or invalid API key", 404: "unknown model",
    413: "request body too large", 429: "queue full",
    503: "loading or shutting down"}.items()}
_TOKENIZER_ERRORS = {status: _ERRORS[status] for status in (400, 401, 404, 413, 503)}
# One server-sent event: its data is a JSON chunk (or error) and the last one is [DONE].
_SSE_EVENT = {"type": "object", "required": ["data"], "properties": {
    "data": {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json"}]},
    "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}
_STREAM = {"text/event-stream": {"schema": _SSE_EVENT, "description": "with stream=true: one event per chunk"}}


def build_app(engine: AsyncLLMEngine | None, settings: ServerSettings | None = None) -> FastAPI:
    if settings is None:
        settings = ServerSettings()
    if not settings.served_model_names:
        if engine is None:
            raise ValueError("served_model_names is required when the engine is not built yet")
        settings.served_model_names = [engine.engine.config.model_config.served_model_name]
    state = ServingState(settings, engine)
    docs = {"docs_url": None, "redoc_url": None, "openapi_url": None} if settings.disable_docs else {}
    app = FastAPI(title="octavo", version=__version__,
                  description="OpenAI-compatible completions and chat, served by octavo.", **docs)
    app.state.serving = state
    install_error_handlers(app)
    app.add_exception_handler(ClientDisconnected, _on_client_disconnected)
    app.add_middleware(GatewayMiddleware, state=state)
    # Outside the gateway: a browser's preflight (OPTIONS, no credentials) is answered here.
    app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                       allow_methods=settings.allowed_methods, allow_headers=settings.allowed_headers,
                       allow_credentials=settings.allow_credentials)

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={**_ERRORS, 200: {"content": _STREAM}})
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(state, body, request)

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse,
              responses={**_ERRORS, 200: {"content": _STREAM}})
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(state, body, request)

    @app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401], 503: _ERRORS[503]})
    async def list_models() -> ModelList:
        return ModelList(data=[_model_card(state, name) for name in settings.served_model_names])

    @app.get("/v1/models/{model:path}", response_model=ModelCard,
             responses={401: _ERRORS[401], 404: {"model": ErrorResponse}, 503: _ERRORS[503]})
    async def retrieve_model(model: str) -> ModelCard:
        if model not in settings.served_model_names:
            raise APIError(404, f"the model {model!r} does not exist here", param="model", code="model_not_found")
        return _model_card(state, model)

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_TOKENIZER_ERRORS)
    async def tokenize(body: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        """vLLM's: a prompt's token ids (add_special_tokens as /v1/completions), or the prompt chat
        would build from messages."""
        return await state.run_tokenizer(tokenization.tokenize, state, body)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_TOKENIZER_ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        """vLLM's: the text of token ids (special tokens included)."""
        return await state.run_tokenizer(tokenization.detokenize, state, body)

    @app.get("/tokenizer_info", responses={status: _ERRORS[status] for status in (400, 401, 503)})
    async def tokenizer_info() -> JSONResponse:
        """vLLM's: the tokenizer's configuration (special tokens, chat template, class)."""
        return JSONResponse(tokenization.tokenizer_info(state))

    # Probes' 200 has an empty body, as vLLM's (and the schema says so: no content).
    @app.get("/health", response_class=Response, responses={503: {"model": ErrorResponse, "description": "not ready"}})
    async def health() -> Response:
        """200 while the engine loop is alive and the server takes requests (readiness)."""
        if state.healthy:
            return Response(status_code=200)
        refusal = state.unavailable() or APIError(503, "not ready")
        return refusal.response()

    @app.get("/live", response_class=Response,
             responses={503: {"model": ErrorResponse, "description": "the engine is dead"}})
    async def live() -> Response:
        """200 while the process can still serve, draining and loading included (liveness: a
        restart helps only when the engine failed)."""
        if state.phase is Phase.FAILED or (state.engine is not None and not state.engine.is_running):
            return (state.unavailable() or APIError(503, "the engine is not running")).response()
        return Response(status_code=200)

    @app.get("/version", response_model=VersionResponse)
    async def version() -> VersionResponse:
        return VersionResponse(version=__version__)

    @app.post("/start_profile", response_class=Response, responses={400: _ERRORS[400], 503: _ERRORS[503]})
    async def start_profile() -> Response:
        """vLLM's: record the engine's next steps with the torch profiler (--profiler-config);
        a 400 naming the flag when none is configured."""
        await state.profile("start")
        return Response(status_code=200)

    @app.post("/stop_profile", response_class=Response, responses={400: _ERRORS[400], 503: _ERRORS[503]})
    async def stop_profile() -> Response:
        """vLLM's: stop recording; the trace is written to the profiler's directory."""
        await state.profile("stop")
        return Response(status_code=200)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    return app


def _model_card(state: ServingState, name: str) -> ModelCard:
    return ModelCard(id=name, created=state.created, root=state.model_root, max_model_len=state.max_model_len or None)


async def _on_client_disconnected(_: Request, __: Exception) -> Response:
    return JSONResponse({"error": {"message": "client disconnected", "type": "client_closed_request",
                                   "param": None, "code": None}}, status_code=499)
