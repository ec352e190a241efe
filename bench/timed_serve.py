"""`octavo serve` with probes, for host-time questions about the server's front process on a CPU:

- per streamed completion: the ASGI entry, the handler's entry and the first SSE body write; their
  mean intervals every 3 s under load ([timing]);
- every garbage collection in the front: the milliseconds by generation so far ([gcsum]), and each
  pass of generation 1 or 2 over 5 ms ([gc]).

    python bench/timed_serve.py serve --model octavo/runtime/demo/target --port 8123 2> server.log
    python bench/burst_probe.py http://127.0.0.1:8123 64 12 32

An older tree runs with PYTHONPATH=DIR (a folder holding its octavo package). Used for
bench/results/2026-12-07-gc-freeze-cpu.md. The probes wrap two public entry points, the app factory
and the completions handler, and add a gc callback."""

from __future__ import annotations

import contextvars
import gc
import statistics
import sys
import threading
import time

from octavo.runtime.server import app as app_module

MARKS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("marks", default=None)
ROWS: list[dict] = []
GC = {"start": 0.0, "ms": [0.0, 0.0, 0.0], "count": [0, 0, 0]}


class Timing:
    """Outermost ASGI layer: the entry and the first body write of each /v1/completions request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/completions":
            return await self.app(scope, receive, send)
        marks = {"asgi": time.monotonic()}
        MARKS.set(marks)

        async def timed_send(message) -> None:
            if message["type"] == "http.response.body" and message.get("body") and "write" not in marks:
                marks["write"] = time.monotonic()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if len(marks) == 3:
                ROWS.append(marks)


def install() -> None:
    build_app, create_completion = app_module.build_app, app_module.create_completion

    def timed_build_app(*args, **kwargs):
        app = build_app(*args, **kwargs)
        app.add_middleware(Timing)
        return app

    async def timed_create_completion(state, body, request):
        MARKS.get()["entry"] = time.monotonic()
        return await create_completion(state, body, request)

    app_module.build_app, app_module.create_completion = timed_build_app, timed_create_completion
    gc.callbacks.append(on_gc)


def on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        GC["start"] = time.monotonic()
        return
    ms, generation = (time.monotonic() - GC["start"]) * 1e3, info["generation"]
    GC["ms"][generation] += ms
    GC["count"][generation] += 1
    if ms > 5 and generation >= 1:
        print(f"[gc] gen {generation} {ms:.1f} ms collected {info['collected']}", file=sys.stderr, flush=True)


def report() -> None:
    while True:
        time.sleep(3)
        if not ROWS:
            continue
        rows = list(ROWS)
        ROWS.clear()

        def mean(a: str, b: str) -> float:
            return statistics.mean((row[b] - row[a]) * 1e3 for row in rows)

        print(f"[gcsum] ms by generation {[round(ms, 1) for ms in GC['ms']]} count {GC['count']}", file=sys.stderr)
        print(f"[timing] n={len(rows)} asgi->entry {mean('asgi', 'entry'):.2f} entry->first write "
              f"{mean('entry', 'write'):.2f} ms", file=sys.stderr, flush=True)


if __name__ == "__main__":  # the engine core process imports this file too (spawn): probes in the front only
    install()
    threading.Thread(target=report, daemon=True).start()
    from octavo.cli import main

    sys.exit(main(sys.argv[1:]))
