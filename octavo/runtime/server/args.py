"""The server's own options (what is not an engine setting), declared the way EngineArgs is: one
dataclass field per flag, with vLLM's name, its help and its default, so that `octavo serve`'s
whole command line comes from one generator (engine_flags.add_engine_args).

Imports nothing heavy: `octavo --help` and the operator read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from octavo.runtime.config import CliArgs, _arg

API_KEY_ENVS = ("VLLM_API_KEY", "OCTAVO_API_KEY")  # charts written for vLLM set the first, the operator the second
HOST_ENV = "OCTAVO_HOST"  # the runtime image sets 0.0.0.0: a container's loopback is unreachable
DEFAULT_HOST = "127.0.0.1"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
UVICORN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
METRICS_PREFIX_PATTERN = r"[a-zA-Z_][a-zA-Z0-9_]*"


@dataclass
class ServerArgs(CliArgs):
    """`octavo serve`'s options apart from the engine's: HTTP, auth, CORS, TLS, chat and sampling
    defaults, metrics naming, shutdown."""

    host: str | None = _arg(None, f"address to bind; unset: ${HOST_ENV} if set (the runtime image sets 0.0.0.0), "
                            f"else {DEFAULT_HOST} (loopback only)")
    port: int = _arg(8000, "TCP port")
    uds: str | None = _arg(None, "listen on this Unix domain socket instead of host and port; unset: TCP")
    api_key: list | None = _arg(None, "require 'Authorization: Bearer KEY' on /v1 and the tokenizer routes; "
                                "several keys: any one of them; unset: the keys in $VLLM_API_KEY and "
                                "$OCTAVO_API_KEY, else none", metavar="KEY")
    served_model_name: list | None = _arg(None, "name(s) clients use for the model; the first is reported; "
                                          "unset: MODEL", metavar="NAME")
    chat_template: str | None = _arg(None, "chat template: a file path, or the Jinja template itself; "
                                     "unset: the tokenizer's")
    enable_auto_tool_choice: bool = _arg(False, "serve tool_choice auto (the default when a request has tools): "
                                         "the model decides and --tool-call-parser reads its calls; without it, "
                                         "auto is a 400 (named and required tool choices need neither flag)")
    tool_call_parser: str | None = _arg(None, "how tool calls are read from the model's text: llama3_json "
                                        "(Llama 3.x JSON) or hermes (<tool_call> blocks: Hermes, Qwen2.5); "
                                        "unset: none", metavar="NAME")
    generation_config: str = _arg("auto", "sampling defaults for the fields a request leaves out: auto: the "
                                  "model's generation_config.json; vllm: none (vLLM's own defaults); or a "
                                  "directory holding a generation_config.json")
    override_generation_config: dict | None = _arg(None, "sampling defaults that win over --generation-config's, "
                                                   "as JSON, e.g. '{\"temperature\": 0.5}'; unset: none")
    max_queue_len: int | None = _arg(None, "answer 429 to a request whose sequences (prompts x n) would leave "
                                     "more than this many waiting for the engine; unset: unbounded")
    max_request_body_bytes: int = _arg(4 * 2**20, "answer 413 to a request body over this many bytes, before "
                                       "reading it (a prompt as long as a 128k-token context is about 0.5 MB)")
    max_prompts_per_request: int = _arg(256, "at most this many prompts in one /v1/completions request (400 "
                                        "beyond); --max-queue-len counts each prompt's n sequences")
    max_logprobs: int = _arg(20, "at most this many top log-probabilities per position (logprobs, top_logprobs, "
                             "prompt_logprobs; 400 beyond); the engine's limit is 20")
    max_response_logprobs: int = _arg(2**18, "at most this many log-probability entries in one response "
                                      "(positions x (logprobs + 1) x choices, echoed prompts and prompt_logprobs "
                                      "included; 400 beyond): bounds the work and size of one request's answer")
    shutdown_timeout: float = _arg(30.0, "on SIGTERM, seconds in-flight requests get to finish")
    metrics_prefix: str = _arg("octavo", "prefix of every /metrics series name; vllm: vLLM's own names, so "
                               "dashboards, KEDA rules and routers written for vLLM work unchanged")
    log_level: str = _arg("info", "octavo's log level", choices=LOG_LEVELS)
    uvicorn_log_level: str = _arg("info", "uvicorn's log level (its access log is at info)",
                                  choices=UVICORN_LOG_LEVELS)
    disable_uvicorn_access_log: bool = _arg(False, "no access log line per HTTP request")
    uvicorn_loop: str = _arg("auto", "the event loop (uvicorn's --loop): auto takes uvloop when it is installed",
                             choices=("auto", "asyncio", "uvloop"))
    uvicorn_http: str = _arg("auto", "the HTTP/1.1 parser (uvicorn's --http): auto takes httptools when it is "
                             "installed", choices=("auto", "h11", "httptools"))
    allowed_origins: list = _arg(["*"], "CORS: origins allowed to call the API (strings or one JSON list)",
                                 metavar="ORIGIN")
    allowed_methods: list = _arg(["*"], "CORS: methods allowed", metavar="METHOD")
    allowed_headers: list = _arg(["*"], "CORS: request headers allowed", metavar="HEADER")
    allow_credentials: bool = _arg(False, "CORS: allow credentials (cookies, HTTP auth)")
    root_path: str | None = _arg(None, "the path prefix a reverse proxy serves this under (ASGI root_path); "
                                 "unset: none")
    ssl_keyfile: str | None = _arg(None, "TLS private key file; unset: plain HTTP")
    ssl_certfile: str | None = _arg(None, "TLS certificate file; unset: plain HTTP")
    ssl_ca_certs: str | None = _arg(None, "CA certificates for client certificates; unset: none")
    ssl_cert_reqs: int = _arg(0, "client certificate requirement (Python's ssl.CERT_NONE 0, OPTIONAL 1, "
                              "REQUIRED 2)", choices=(0, 1, 2))
    disable_fastapi_docs: bool = _arg(False, "no /docs, /redoc or /openapi.json")
    config: str | None = _arg(None, "a YAML file of flags, keyed by their names (max-model-len: 4096, "
                              "api-key: [a, b]); flags on the command line win; unset: none", metavar="YAML")
