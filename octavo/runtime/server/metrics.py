"""Prometheus metrics with vLLM's meanings under an `octavo:` prefix.

Engine-wide numbers (requests running/waiting, KV cache usage, token and prefix-cache counters,
speculative decoding counters) are read from `EngineStats` when /metrics is scraped, so they cost
nothing per step. Per-request latencies (TTFT, time per output token, end-to-end, queue time) are
histograms observed when a request ends, from its RequestOutput.metrics.

Each app gets its own CollectorRegistry, so several apps (tests) never collide.
The operator's HPA scales on `octavo:num_requests_waiting`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from octavo.runtime.outputs import RequestOutput

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                 10.0, 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class _EngineCollector(Collector):
    """Gauges and counters read from the engine's stats at scrape time."""

    def __init__(self, source: Callable[[], tuple[object, bool] | None], model_name: str) -> None:
        self.source = source
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        found = self.source()
        if found is None:  # still loading: nothing to report yet
            return
        stats, speculative = found
        labels = [self.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"octavo:{name}", doc, labels=["model_name"])
            family.add_metric(labels, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"octavo:{name}", doc, labels=["model_name"])
            family.add_metric(labels, value)
            return family

        yield gauge("num_requests_running", "Sequences in the running batch.", stats.num_running)
        yield gauge("num_requests_waiting", "Sequences waiting to be scheduled.", stats.num_waiting)
        yield gauge("kv_cache_usage_perc", "Fraction of KV cache blocks held by requests (1 = full).",
                    stats.kv_cache_usage)
        queries, hits = stats.prefix_cache_queries, stats.prefix_cache_hits
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", queries)
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", hits)
        yield gauge("prefix_cache_hit_rate", "Prefix cache hits / queries since start (tokens).",
                    hits / queries if queries else 0.0)
        yield counter("prompt_tokens", "Prompt tokens processed.", stats.prompt_tokens)
        yield counter("generation_tokens", "Tokens generated.", stats.generation_tokens)
        yield counter("num_preemptions", "Requests preempted (KV cache full) and recomputed later.",
                      stats.num_preemptions)
        if speculative:
            drafted, accepted = stats.spec_draft_tokens, stats.spec_accepted_tokens
            yield counter("spec_decode_num_draft_tokens", "Draft tokens proposed.", drafted)
            yield counter("spec_decode_num_accepted_tokens", "Draft tokens accepted by the target.", accepted)
            yield counter("spec_decode_num_emitted_tokens", "Tokens emitted by verification steps.",
                          stats.spec_emitted_tokens)
            yield gauge("spec_decode_draft_acceptance_rate", "Accepted / proposed draft tokens since start.",
                        accepted / drafted if drafted else 0.0)


class ServerMetrics:
    def __init__(self, model_name: str, engine_stats: Callable[[], tuple[object, bool] | None]) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine_stats, model_name))
        labels = ["model_name"]
        self.ttft = Histogram("octavo:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=_TTFT_BUCKETS, registry=self.registry).labels(model_name)
        self.tpot = Histogram("octavo:time_per_output_token_seconds",
                              "Mean time per output token after the first, per request.", labels,
                              buckets=_TPOT_BUCKETS, registry=self.registry).labels(model_name)
        self.e2e = Histogram("octavo:e2e_request_latency_seconds", "Arrival to finish.", labels,
                             buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.queue_time = Histogram("octavo:request_queue_time_seconds", "Arrival to first scheduled.", labels,
                                    buckets=_LATENCY_BUCKETS, registry=self.registry).labels(model_name)
        self.prompt_len = Histogram("octavo:request_prompt_tokens", "Prompt length per request.", labels,
                                    buckets=_TOKEN_BUCKETS, registry=self.registry).labels(model_name)
        self.generation_len = Histogram("octavo:request_generation_tokens", "Tokens generated per sequence.",
                                        labels, buckets=_TOKEN_BUCKETS, registry=self.registry).labels(model_name)
        self._success = Counter("octavo:request_success", "Sequences finished, by finish reason.",
                                labels + ["finished_reason"], registry=self.registry)
        self._rejected = Counter("octavo:request_rejected", "Requests refused before reaching the engine.",
                                 labels + ["reason"], registry=self.registry)
        self.ready = Gauge("octavo:server_ready", "1 while the server accepts requests.", labels,
                           registry=self.registry).labels(model_name)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()

    def observe_request(self, output: RequestOutput | None, num_tokens: dict[int, int],
                        finish_reasons: dict[int, str | None]) -> None:
        """One user request ended (finished or aborted); `output` is the last one it produced.
        num_tokens / finish_reasons are per choice index."""
        for index, reason in finish_reasons.items():
            self._success.labels(self.model_name, reason or "abort").inc()
            self.generation_len.observe(num_tokens.get(index, 0))
        if output is None:
            return
        self.prompt_len.observe(len(output.prompt_token_ids))
        m = output.metrics
        if m is None:
            return
        if m.first_scheduled_time is not None:
            self.queue_time.observe(max(0.0, m.first_scheduled_time - m.arrival_time))
        if m.first_token_time is not None:
            self.ttft.observe(max(0.0, m.first_token_time - m.arrival_time))
            generated = num_tokens.get(0, 0)
            if m.last_token_time is not None and generated > 1:
                self.tpot.observe(max(0.0, m.last_token_time - m.first_token_time) / (generated - 1))
        end = m.finished_time if m.finished_time is not None else time.monotonic()
        self.e2e.observe(max(0.0, end - m.arrival_time))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
