"""An instant OpenAI-style streaming server, to measure what a benchmark client costs by itself.

Each POST /v1/completions is answered with `max_tokens` SSE chunks, one per tick of a shared clock
(an engine's steps: every running request gets a token per step), the last carrying the finish
reason and then a usage chunk and [DONE]. It writes when each request's body was read
(time.perf_counter(), the clock `octavo bench serve` records as `sent_at`) to ARRIVALS at exit, so
the delay from a client's send to the server's read can be read off. Anything else gets a 404.

    python bench/fake_sse_server.py --port 8130 --tick-ms 7 --seconds 40 --arrivals /tmp/arrivals.json &
    octavo bench serve --base-url http://127.0.0.1:8130 --served-model-name m --model DIR \\
        --concurrency 64 --input-len 128 --output-len 128 --prompts-per-user 3 --num-warmups 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


class Clock:
    """A tick every `period` seconds that any number of streams can wait for."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.event = asyncio.Event()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            event, self.event = self.event, asyncio.Event()
            event.set()

    async def tick(self) -> None:
        await self.event.wait()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve_stream(writer: asyncio.StreamWriter, clock: Clock, max_tokens: int) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    await clock.tick()  # the prefill step
    for index in range(max_tokens):
        await clock.tick()
        finish = b'"length"' if index == max_tokens - 1 else b"null"
        writer.write(chunk(b'data: {"choices":[{"index":0,"text":" x","finish_reason":%s}]}\n\n' % finish))
    usage = b'data: {"choices":[],"usage":{"completion_tokens":%d}}\n\n' % max_tokens
    writer.write(chunk(usage) + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, clock: Clock,
                 arrivals: list[float]) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *headers = head.decode("latin-1").split("\r\n")
            length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length)
            if not request_line.startswith("POST /v1/completions "):
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                continue
            arrivals.append(time.perf_counter())
            await serve_stream(writer, clock, int(json.loads(body).get("max_tokens") or 16))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    clock, arrivals = Clock(args.tick_ms / 1e3), []
    ticking = asyncio.create_task(clock.run())
    server = await asyncio.start_server(lambda r, w: handle(r, w, clock, arrivals), "127.0.0.1", args.port)
    async with server:
        await asyncio.sleep(args.seconds)
    ticking.cancel()
    with open(args.arrivals, "w") as f:
        json.dump(arrivals, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8130)
    parser.add_argument("--tick-ms", type=float, default=7.0, help="one token per stream per tick")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long it serves")
    parser.add_argument("--arrivals", default="/tmp/arrivals.json", help="where the read times go at exit")
    asyncio.run(main(parser.parse_args()))
