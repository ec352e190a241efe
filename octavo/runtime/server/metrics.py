"""Prometheus metrics with vLLM's names and meanings, under a prefix: `octavo:` by default,
`vllm:` with `--metrics-prefix vllm`, so that dashboards, KEDA rules and routers written for
vLLM read octavo unchanged.

Engine-wide numbers (requests running/waiting, KV cache usage, token and prefix-cache counters,
tokens per step, speculative decoding counters) are read from `EngineStats` when /metrics is
scraped, so they cost nothing per step. Per-request latencies (TTFT, inter-token latency, time
per output token, end-to-end, queue, prefill, decode, inference time) and sizes are histograms
observed when a request ends, from its RequestOutput.metrics.

vLLM's older names that dashboards still query are kept beside the current ones
(`gpu_cache_usage_perc`, `gpu_prefix_cache_*`, `num_requests_swapped`, `cpu_cache_usage_perc`,
`time_per_output_token_seconds`: the same numbers, or 0 where octavo has no such thing).

Each app gets its own CollectorRegistry (with the process and platform collectors), so several
apps (tests) never collide. No `_created` series (they double every histogram's series count and
no dashboard reads them). The operator's HPA scales on `octavo:num_requests_waiting`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from octavo.runtime.outputs import RequestOutput
from octavo.runtime.sampling_params import SamplingParams
from octavo.runtime.step_record import ITERATION_TOKEN_BUCKETS

disable_created_metrics()

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
_N_BUCKETS = (1, 2, 5, 10, 20)


class _EngineCollector(Collector):
    """Gauges, counters and the tokens-per-step histogram, read from the engine at scrape time."""

    def __init__(self, source: Callable[[], tuple[object, object, int] | None], model_name: str, prefix: str) -> None:
        self.source = source
        self.model_name = model_name
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        found = self.source()
        if found is None:  # still loading: nothing to report yet
            return
        stats, config, num_blocks = found
        labels = [self.model_name]
        p = self.prefix

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{p}:{name}", doc, labels=["model_name"])
            family.add_metric(labels, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{p}:{name}", doc, labels=["model_name"])
            family.add_metric(labels, value)
            return family

        yield gauge("num_requests_running", "Requests in the running batch.", stats.num_running_requests)
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", stats.num_waiting_requests)
        yield gauge("num_sequences_waiting", "Sequences waiting to be scheduled (each of a request's n samples "
                    "counts; what --max-queue-len bounds), at the end of the engine's last step.", stats.num_waiting)
        yield gauge("num_requests_swapped", "Requests swapped to CPU (vLLM's older name; octavo never swaps: 0).", 0)
        usage = stats.kv_cache_usage
        yield gauge("kv_cache_usage_perc", "Fraction of KV cache blocks held by requests (1 = full).", usage)
        yield gauge("gpu_cache_usage_perc", "kv_cache_usage_perc under vLLM's older name.", usage)
        yield gauge("cpu_cache_usage_perc", "CPU swap space in use (vLLM's older name; octavo has none: 0).", 0)
        queries, hits = stats.prefix_cache_queries, stats.prefix_cache_hits
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", queries)
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", hits)
        yield counter("gpu_prefix_cache_queries", "prefix_cache_queries under vLLM's older name.", queries)
        yield counter("gpu_prefix_cache_hits", "prefix_cache_hits under vLLM's older name.", hits)
        yield gauge("prefix_cache_hit_rate", "Prefix cache hits / queries since start (tokens).",
                    hits / queries if queries else 0.0)
        yield counter("prompt_tokens", "Prompt tokens processed.", stats.prompt_tokens)
        yield counter("generation_tokens", "Tokens generated.", stats.generation_tokens)
        yield counter("num_preemptions", "Requests preempted (KV cache full) and recomputed later.",
                      stats.num_preemptions)
        yield counter("structured_output_grammars_compiled", "Structured-output grammars compiled (new "
                      "schemas, regexes, grammars; cached ones are not compiled again).", stats.grammars_compiled)
        yield counter("structured_output_compile_seconds", "Time spent compiling structured-output grammars "
                      "(on the compiler's thread, off the step path).", stats.grammar_compile_seconds)
        yield self._iteration_tokens(stats, labels)
        yield self._cache_config(config, num_blocks, labels)
        if config.speculative_config is not None:
            drafted, accepted = stats.spec_draft_tokens, stats.spec_accepted_tokens
            yield counter("spec_decode_num_drafts", "Verifications (one per request per speculative step).",
                          stats.spec_num_drafts)
            yield counter("spec_decode_num_draft_tokens", "Draft tokens proposed.", drafted)
            yield counter("spec_decode_num_accepted_tokens", "Draft tokens accepted by the target.", accepted)
            per_pos = CounterMetricFamily(f"{p}:spec_decode_num_accepted_tokens_per_pos",
                                          "Draft tokens accepted, by position in the draft (0 = first).",
                                          labels=["model_name", "position"])
            k = config.speculative_config.num_speculative_tokens
            counts = stats.spec_accepted_per_pos
            for position in range(max(k, len(counts))):
                per_pos.add_metric([self.model_name, str(position)], counts[position] if position < len(counts) else 0)
            yield per_pos
            yield counter("spec_decode_num_emitted_tokens", "Tokens emitted by verification steps.",
                          stats.spec_emitted_tokens)
            yield gauge("spec_decode_draft_acceptance_rate", "Accepted / proposed draft tokens since start.",
                        accepted / drafted if drafted else 0.0)

    def _iteration_tokens(self, stats, labels: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(f"{self.prefix}:iteration_tokens_total",
                                       "Tokens computed per engine step (prompt and generated).",
                                       labels=["model_name"])
        bounds = [str(float(b)) for b in ITERATION_TOKEN_BUCKETS] + ["+Inf"]
        family.add_metric(labels, list(zip(bounds, accumulate(stats.iteration_tokens_buckets))),
                          sum_value=stats.iteration_tokens_sum)
        return family

    def _cache_config(self, config, num_blocks: int, labels: list[str]) -> GaugeMetricFamily:
        cache = config.cache_config
        info = {"block_size": cache.block_size, "cache_dtype": "auto",
                "enable_prefix_caching": cache.enable_prefix_caching,
                "gpu_memory_utilization": cache.gpu_memory_utilization,
                "num_gpu_blocks": num_blocks, "num_cpu_blocks": 0, "swap_space_bytes": 0}
        family = GaugeMetricFamily(f"{self.prefix}:cache_config_info", "Information of the KV cache configuration.",
                                   labels=["model_name", *info])
        family.add_metric([*labels, *(str(v) for v in info.values())], 1)
        return family


class ServerMetrics:
    def __init__(self, model_name: str, engine_stats: Callable[[], tuple[object, object, int] | None],
                 prefix: str = "octavo") -> None:
        self.model_name = model_name
        self.prefix = prefix
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.registry.register(_EngineCollector(engine_stats, model_name, prefix))
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(f"{prefix}:{name}", doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between steps that gave a request tokens.",
                             _ITL_BUCKETS)
        self.tpot = histogram("time_per_output_token_seconds",
                              "inter_token_latency_seconds under vLLM's older name.", _ITL_BUCKETS)
        self.request_tpot = histogram("request_time_per_output_token_seconds",
                                      "Mean time per output token after the first, per request.", _ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to finish.", _LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Arrival to first scheduled.", _LATENCY_BUCKETS)
        self.inference_time = histogram("request_inference_time_seconds", "First scheduled to last token.",
                                        _LATENCY_BUCKETS)
        self.prefill_time = histogram("request_prefill_time_seconds", "First scheduled to first token.",
                                      _LATENCY_BUCKETS)
        self.decode_time = histogram("request_decode_time_seconds", "First token to last token.", _LATENCY_BUCKETS)
        self.prompt_len = histogram("request_prompt_tokens", "Prompt length per request.", _TOKEN_BUCKETS)
        self.generation_len = histogram("request_generation_tokens", "Tokens generated per sequence.",
                                        _TOKEN_BUCKETS)
        self.max_generation_len = histogram("request_max_num_generation_tokens",
                                            "Most tokens generated by one of a request's sequences.", _TOKEN_BUCKETS)
        self.params_n = histogram("request_params_n", "The request's n.", _N_BUCKETS)
        self.params_max_tokens = histogram("request_params_max_tokens", "The request's max_tokens.", _TOKEN_BUCKETS)
        self._success = Counter(f"{prefix}:request_success", "Sequences finished, by finish reason.",
                                labels + ["finished_reason"], registry=self.registry)
        self._rejected = Counter(f"{prefix}:request_rejected", "Requests refused before reaching the engine.",
                                 labels + ["reason"], registry=self.registry)
        self.ready = Gauge(f"{prefix}:server_ready", "1 while the server accepts requests.", labels,
                           registry=self.registry).labels(model_name)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()

    def observe_request(self, output: RequestOutput | None, num_tokens: dict[int, int],
                        finish_reasons: dict[int, str | None], params: SamplingParams | None = None) -> None:
        """One user request ended (finished or aborted); `output` is the last one it produced.
        num_tokens / finish_reasons are per choice index."""
        for index, reason in finish_reasons.items():
            self._success.labels(self.model_name, reason or "abort").inc()
            self.generation_len.observe(num_tokens.get(index, 0))
        if finish_reasons:
            self.max_generation_len.observe(max(num_tokens.get(i, 0) for i in finish_reasons))
        if params is not None:
            self.params_n.observe(params.n)
            if params.max_tokens is not None:
                self.params_max_tokens.observe(params.max_tokens)
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
            if m.first_scheduled_time is not None:
                self.prefill_time.observe(max(0.0, m.first_token_time - m.first_scheduled_time))
            for latency in m.inter_token_latencies:
                self.itl.observe(latency)
                self.tpot.observe(latency)
            if m.last_token_time is not None:
                self.decode_time.observe(max(0.0, m.last_token_time - m.first_token_time))
                if m.first_scheduled_time is not None:
                    self.inference_time.observe(max(0.0, m.last_token_time - m.first_scheduled_time))
                generated = num_tokens.get(0, 0)
                if generated > 1:
                    self.request_tpot.observe(max(0.0, m.last_token_time - m.first_token_time) / (generated - 1))
        end = m.finished_time if m.finished_time is not None else time.monotonic()
        self.e2e.observe(max(0.0, end - m.arrival_time))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
