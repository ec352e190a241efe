"""`octavo serve [MODEL]`: the OpenAI-compatible server, a drop-in for `vllm serve`.

With no MODEL the embedded demo model is served as `octavo-demo`. The port opens at once and
answers 503 (/health too) while the model loads, so probes see "starting" rather than
"refused"; a model that fails to load ends the process with exit code 1.

Every flag comes from a dataclass through one generator (engine_flags.add_engine_args): the
engine's from EngineArgs, the server's from ServerArgs (args.py); vLLM flags that octavo takes
without effect or refuses are in vllm_flags.py. Before parsing, `expand_argv` inlines
`--config YAML` (the command line wins) and rewrites `--flag=false`. `add_arguments` imports
nothing heavy (no torch); `run` does the imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

from octavo.runtime.config import AsyncEngineArgs
from octavo.runtime.engine_flags import add_engine_args, bool_assignments, engine_args_from_namespace
from octavo.runtime.server import vllm_flags
from octavo.runtime.server.args import (API_KEY_ENVS, DEFAULT_HOST, HOST_ENV, METRICS_PREFIX_PATTERN,
                                        ServerArgs)

SERVER_FLAGS_HELP = "the server's own options (ServerArgs); each also takes its underscore spelling"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="model directory, demo name or hub id, or --model (default: the embedded demo model)")
    add_engine_args(parser, ServerArgs, title="server", description=SERVER_FLAGS_HELP)
    add_engine_args(parser, AsyncEngineArgs)
    vllm_flags.add_vllm_flags(parser)


def expand_argv(argv: list[str]) -> list[str]:
    """The command line as argparse should see it: `--config FILE`'s flags first (so the
    command line's own win: argparse keeps the last value), `--flag=false` as `--no-flag`."""
    argv = bool_assignments(list(argv), _bool_flag_names())
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        if option == "--config":
            if eq:
                path, rest = value, argv[:i] + argv[i + 1:]
            elif i + 1 < len(argv):
                path, rest = argv[i + 1], argv[:i] + argv[i + 2:]
            else:
                return argv  # argparse says the value is missing
            return bool_assignments(config_file_args(path), _bool_flag_names()) + rest
    return argv


def config_file_args(path: str) -> list[str]:
    """vLLM's --config: a YAML mapping of flag names (dashes or underscores) to values, as
    arguments. true -> --flag, false -> --no-flag, a list -> several values, a mapping -> JSON."""
    import json

    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise SystemExit(f"octavo serve: --config {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"octavo serve: --config {path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise SystemExit(f"octavo serve: --config {path}: must be a mapping of flag names to values, "
                         f"got {type(data).__name__}")
    argv: list[str] = []
    for key, value in data.items():
        name = str(key).lstrip("-")
        option = "--" + name
        if name in ("model", "model_tag") and isinstance(value, str):
            argv += ["--model", value]
        elif value is True:
            argv.append(option)
        elif value is False:
            argv.append(("--no_" if "_" in name and "-" not in name else "--no-") + name)
        elif isinstance(value, list):
            argv += [option, *map(str, value)]
        elif isinstance(value, dict):
            argv += [option, json.dumps(value)]
        elif value is not None:
            argv += [option, str(value)]
    return argv


def _bool_flag_names() -> list[str]:
    flags = [*ServerArgs.cli_flags(), *AsyncEngineArgs.cli_flags()]
    return [flag.name for flag in flags if flag.type is bool] + vllm_flags.bool_names()


def _check(args: argparse.Namespace) -> str | None:
    """Why this command line cannot serve, in one line, or None."""
    unsupported = vllm_flags.unsupported_flag(args)
    if unsupported:
        return unsupported
    if not 0 <= args.port <= 65535:
        return f"--port must be in 0..65535, got {args.port}"
    if args.max_queue_len is not None and args.max_queue_len < 1:
        return f"--max-queue-len must be >= 1, got {args.max_queue_len}"
    if args.max_request_body_bytes < 1:
        return f"--max-request-body-bytes must be >= 1, got {args.max_request_body_bytes}"
    if args.max_prompts_per_request < 1:
        return f"--max-prompts-per-request must be >= 1, got {args.max_prompts_per_request}"
    if not 0 <= args.max_logprobs <= 20:
        return f"--max-logprobs must be in 0..20 (the engine returns at most 20), got {args.max_logprobs}"
    if args.max_response_logprobs < 1:
        return f"--max-response-logprobs must be >= 1, got {args.max_response_logprobs}"
    if args.shutdown_timeout < 0:
        return f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}"
    if not re.fullmatch(METRICS_PREFIX_PATTERN, args.metrics_prefix):
        return f"--metrics-prefix must be a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*), got {args.metrics_prefix!r}"
    if args.model_tag and args.model and args.model_tag != args.model:
        return f"two models given ({args.model_tag!r} and --model {args.model!r}): give one"
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        return "TLS needs both --ssl-keyfile and --ssl-certfile"
    if args.api_key is not None and not all(args.api_key):
        return "--api-key must not be empty"
    from octavo.runtime.server.tool_parsers import parser_problem

    if parser_problem(args.tool_call_parser):
        return parser_problem(args.tool_call_parser)
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        return "--enable-auto-tool-choice requires --tool-call-parser NAME (llama3_json or hermes)"
    from octavo.runtime.server.defaults import check_generation_config, load_chat_template, sampling_defaults

    problem = check_generation_config(args.generation_config)
    if problem:
        return problem
    try:
        load_chat_template(args.chat_template)
        sampling_defaults("vllm", None, args.override_generation_config)
    except ValueError as exc:
        return str(exc)
    try:  # before the port opens: a speculative setting the engine would refuse is a usage error
        engine_args(args).speculative_settings()
    except ValueError as exc:
        return str(exc)
    return None


def model_arg(args: argparse.Namespace) -> str | None:
    """MODEL, vLLM's positional spelling, or --model."""
    return args.model_tag or args.model


def served_names(args: argparse.Namespace) -> list[str]:
    if args.served_model_name:
        return list(args.served_model_name)
    if model_arg(args) is None:
        from octavo.runtime.demo import DEMO_TARGET_NAME

        return [DEMO_TARGET_NAME]
    return [model_arg(args)]


def host_arg(args: argparse.Namespace) -> str:
    """--host, else $OCTAVO_HOST (the runtime image sets 0.0.0.0), else loopback."""
    return args.host or os.environ.get(HOST_ENV) or DEFAULT_HOST


def api_keys(args: argparse.Namespace) -> list[str]:
    """--api-key (one or several), else the keys in $VLLM_API_KEY and $OCTAVO_API_KEY (either
    works: charts written for vLLM set the first, the operator's apiKeySecretRef the second)."""
    if args.api_key:
        return list(args.api_key)
    return [os.environ[env] for env in API_KEY_ENVS if os.environ.get(env)]


def server_settings(args: argparse.Namespace):
    from octavo.runtime.server.defaults import load_chat_template
    from octavo.runtime.server.state import ServerSettings

    return ServerSettings(served_model_names=served_names(args), api_keys=api_keys(args),
                          max_queue_len=args.max_queue_len, shutdown_timeout=args.shutdown_timeout,
                          max_request_body_bytes=args.max_request_body_bytes,
                          max_prompts_per_request=args.max_prompts_per_request,
                          max_logprobs=args.max_logprobs, max_response_logprobs=args.max_response_logprobs,
                          chat_template=load_chat_template(args.chat_template),
                          enable_auto_tool_choice=args.enable_auto_tool_choice,
                          tool_call_parser=args.tool_call_parser,
                          generation_config=args.generation_config,
                          override_generation_config=args.override_generation_config or {},
                          metrics_prefix=args.metrics_prefix,
                          allowed_origins=list(args.allowed_origins), allowed_methods=list(args.allowed_methods),
                          allowed_headers=list(args.allowed_headers), allow_credentials=args.allow_credentials,
                          disable_docs=args.disable_fastapi_docs)


def engine_args(args: argparse.Namespace) -> AsyncEngineArgs:
    return dataclasses.replace(engine_args_from_namespace(args, AsyncEngineArgs), model=model_arg(args),
                               served_model_name=served_names(args)[0])


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys

    problem = _check(args)
    if problem:
        print(f"octavo serve: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("octavo").setLevel(args.log_level.upper())
    for note in vllm_flags.accepted_notes(args):
        logging.getLogger("octavo.server").info("%s", note)
    with asyncio.Runner(loop_factory=event_loop_factory(args.uvicorn_loop)) as runner:
        return runner.run(_serve(args))


def event_loop_factory(choice: str):
    """The server's event loop, as uvicorn's --loop picks it: uvloop when it is installed (or asked
    for), else asyncio's. Every SSE chunk and request crosses this loop, and uvloop's costs less."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def uvicorn_config(app, args: argparse.Namespace):
    import uvicorn

    ssl = {}
    if args.ssl_keyfile:
        ssl = {"ssl_keyfile": args.ssl_keyfile, "ssl_certfile": args.ssl_certfile,
               "ssl_ca_certs": args.ssl_ca_certs, "ssl_cert_reqs": args.ssl_cert_reqs}
    return uvicorn.Config(app, host=host_arg(args), port=args.port, uds=args.uds, http=args.uvicorn_http,
                          log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
                          root_path=args.root_path or "", timeout_graceful_shutdown=5, lifespan="off", **ssl)


async def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import logging
    import threading

    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.gc_heap import freeze_startup_heap
    from octavo.runtime.server.app import build_app
    from octavo.runtime.server.shutdown import DrainingServer
    from octavo.runtime.usage_defaults import apply_server_defaults

    logger = logging.getLogger("octavo.server")
    settings = server_settings(args)
    app = build_app(None, settings)
    state = app.state.serving
    config = uvicorn_config(app, args)
    server = DrainingServer(config, state, args.shutdown_timeout)
    loop = asyncio.get_running_loop()
    loaded: list[AsyncLLMEngine] = []
    engine_arguments = engine_args(args)
    apply_server_defaults(engine_arguments)

    def on_loaded(engine: AsyncLLMEngine) -> None:
        loaded.append(engine)
        state.attach_engine(engine)
        logger.debug("froze %d start-up objects", freeze_startup_heap())
        if args.uds:
            logger.info("serving %r (max_model_len %d) on the Unix socket %s", state.model_name, state.max_model_len,
                        args.uds)
            return
        host = host_arg(args)
        host = f"[{host}]" if ":" in host else host
        port = server.servers[0].sockets[0].getsockname()[1] if getattr(server, "servers", None) else args.port
        scheme = "https" if args.ssl_keyfile else "http"
        body = json.dumps({"model": state.model_name, "prompt": "To be, or not to be", "max_tokens": 32})
        auth = " -H 'Authorization: Bearer $OCTAVO_API_KEY'" if settings.api_keys else ""
        logger.info("serving %r (max_model_len %d) on %s://%s:%d; try:\n  curl -s %s://%s:%d/v1/completions "
                    "-H 'Content-Type: application/json'%s -d '%s'", state.model_name, state.max_model_len,
                    scheme, host, port, scheme, host, port, auth, body)

    def on_failed(exc: BaseException) -> None:
        logger.error("cannot load the model: %s", exc)
        state.fail(str(exc))
        server.exit_code = 1
        server.should_exit = True

    def load() -> None:
        try:
            engine = AsyncLLMEngine.from_engine_args(engine_arguments)
        except BaseException as exc:  # reported on the event loop; the thread just ends
            logger.debug("model load failed", exc_info=True)
            callback, value = on_failed, exc
        else:
            callback, value = on_loaded, engine
        try:
            loop.call_soon_threadsafe(callback, value)
        except RuntimeError:  # the server already stopped
            if callback is on_loaded:
                value.shutdown()

    threading.Thread(target=load, name="octavo-load", daemon=True).start()
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        return int(exc.code or 1)
    finally:
        for engine in loaded:
            engine.shutdown()
    return server.exit_code
