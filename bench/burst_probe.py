"""Bursts of N concurrent streaming completions (128 token-id prompt tokens, MAX_TOKENS out) at a
running octavo server. Per burst: the client's TTFT mean beside the server's own (its /metrics
histogram, over the same requests), so their difference is the time outside the engine. Over the
timed bursts (all but the first): their wall time and the gaps between streamed chunks.

    python bench/burst_probe.py URL N BURSTS [MAX_TOKENS]

bench/timed_serve.py says what it was used for."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import aiohttp

TTFT = "octavo:time_to_first_token_seconds"


def histogram(text: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram in /metrics text."""
    values = [float(re.search(rf"^{name}_{part}{{[^}}]*}} (\S+)", text, re.M).group(1)) for part in ("sum", "count")]
    return values[0], values[1]


async def stream_one(session: aiohttp.ClientSession, url: str, model: str, index: int, max_tokens: int,
                     gaps: list[float] | None) -> float:
    """One streamed completion; its TTFT (ms). Chunk gaps are appended to `gaps` when given."""
    body = {"model": model, "prompt": [(index * 7 + j) % 200 + 10 for j in range(128)], "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True, "temperature": 0}
    start = time.perf_counter()
    first = last = None
    async with session.post(url + "/v1/completions", json=body) as response:
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            elif gaps is not None:
                gaps.append((now - last) * 1e3)
            last = now
    return (first - start) * 1e3


async def probe(url: str, n: int, bursts: int, max_tokens: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async with session.get(url + "/v1/models") as response:
            model = (await response.json())["data"][0]["id"]
        gaps: list[float] = []
        differences: list[float] = []
        timed_start = 0.0
        for burst in range(bursts + 1):
            if burst == 1:
                timed_start = time.perf_counter()
            async with session.get(url + "/metrics") as response:
                before = histogram(await response.text(), TTFT)
            ttfts = await asyncio.gather(*(stream_one(session, url, model, i, max_tokens, gaps if burst else None)
                                           for i in range(n)))
            async with session.get(url + "/metrics") as response:
                after = histogram(await response.text(), TTFT)
            client = sum(ttfts) / n
            server = (after[0] - before[0]) / (after[1] - before[1]) * 1e3
            if burst:
                differences.append(client - server)
            print(f"burst {burst}: client TTFT mean {client:.1f} ms, server {server:.1f} ms, "
                  f"difference {client - server:.1f}; client max {max(ttfts):.1f}", flush=True)
        gaps.sort()
        print(f"timed bursts: {bursts} in {time.perf_counter() - timed_start:.2f} s, mean TTFT difference "
              f"{sum(differences) / len(differences):.1f} ms")
        if gaps:
            print(f"chunk gaps: n={len(gaps)} p50 {gaps[len(gaps) // 2]:.1f} p99 {gaps[int(len(gaps) * 0.99)]:.1f} "
                  f"max {gaps[-1]:.1f} ms")


if __name__ == "__main__":
    url, n, bursts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    asyncio.run(probe(url, n, bursts, int(sys.argv[4]) if len(sys.argv) > 4 else 1))
