"""The OpenAI-compatible HTTP server: `octavo serve`.

app.py builds the FastAPI app around an AsyncLLMEngine; protocol.py holds the wire format;
completions.py and chat.py turn requests into engine calls and engine outputs into responses;
middleware.py gates every request (startup, drain, API key, request ids, unexpected errors);
metrics.py exposes Prometheus metrics; shutdown.py drains on SIGTERM; cli.py is the command.

This package imports nothing at import time, so `octavo --help` stays fast.
"""
