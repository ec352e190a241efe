"""`octavo serve [MODEL]`: the OpenAI-compatible server, with vLLM's flag names.

With no MODEL the embedded demo model is served as `octavo-demo`. The port opens at once and
answers 503 (/health too) while the model loads, so probes see "starting" rather than
"refused"; a model that fails to load ends the process with exit code 1.

Engine flags are EngineArgs' fields (engine_flags.py); only the server's own options are
declared here. `add_arguments` imports nothing heavy (no torch); `run` does the imports.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from octavo.runtime.config import AsyncEngineArgs
from octavo.runtime.engine_flags import add_engine_args, engine_args_from_namespace

API_KEY_ENV = "OCTAVO_API_KEY"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="model directory, demo name or hub id, or --model (default: the embedded demo model)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set)")
    server.add_argument("--served-model-name", nargs="+", default=None,
                        help="name(s) clients use for the model; the first is reported (default: MODEL)")
    server.add_argument("--max-queue-len", type=int, default=None,
                        help="answer 429 once this many sequences wait for the engine (default: unbounded)")
    server.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="on SIGTERM, seconds in-flight requests get to finish (default: 30)")
    server.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    add_engine_args(parser, AsyncEngineArgs)


def _check(args: argparse.Namespace) -> str | None:
    if not 0 <= args.port <= 65535:
        return f"--port must be in 0..65535, got {args.port}"
    if args.max_queue_len is not None and args.max_queue_len < 1:
        return f"--max-queue-len must be >= 1, got {args.max_queue_len}"
    if args.shutdown_timeout < 0:
        return f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}"
    if args.model_tag and args.model and args.model_tag != args.model:
        return f"two models given ({args.model_tag!r} and --model {args.model!r}): give one"
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


def server_settings(args: argparse.Namespace):
    from octavo.runtime.server.state import ServerSettings

    return ServerSettings(served_model_names=served_names(args),
                          api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                          max_queue_len=args.max_queue_len, shutdown_timeout=args.shutdown_timeout)


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
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import logging
    import threading

    import uvicorn

    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.server.app import build_app
    from octavo.runtime.server.shutdown import DrainingServer

    logger = logging.getLogger("octavo.server")
    settings = server_settings(args)
    app = build_app(None, settings)
    state = app.state.serving
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5, lifespan="off")
    server = DrainingServer(config, state, args.shutdown_timeout)
    loop = asyncio.get_running_loop()
    loaded: list[AsyncLLMEngine] = []
    engine_arguments = engine_args(args)

    def on_loaded(engine: AsyncLLMEngine) -> None:
        loaded.append(engine)
        state.attach_engine(engine)
        host = f"[{args.host}]" if ":" in args.host else args.host
        port = server.servers[0].sockets[0].getsockname()[1] if getattr(server, "servers", None) else args.port
        body = json.dumps({"model": state.model_name, "prompt": "To be, or not to be", "max_tokens": 32})
        auth = " -H 'Authorization: Bearer $OCTAVO_API_KEY'" if settings.api_key else ""
        logger.info("serving %r (max_model_len %d) on http://%s:%d; try:\n  curl -s http://%s:%d/v1/completions "
                    "-H 'Content-Type: application/json'%s -d '%s'", state.model_name, state.max_model_len,
                    host, port, host, port, auth, body)

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
