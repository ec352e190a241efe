"""Dashboards find their series on a running octavo: vLLM's own Grafana dashboard (a copy of
examples/online_serving/prometheus_grafana/grafana.json from the vLLM repository, in vllm/) with
`--metrics-prefix vllm`, and the chart's dashboard (charts/octavo-operator/dashboards/octavo.json)
with either prefix. Every metric name in their PromQL must be a series on /metrics, carrying the
model_name label their selectors filter on."""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_testing import MODEL_NAME, ServerProcess, wait_until

REPO = Path(__file__).resolve().parents[2]
VLLM_DASHBOARD = Path(__file__).parent / "vllm" / "grafana.json"
CHART_DASHBOARD = REPO / "charts" / "octavo-operator" / "dashboards" / "octavo.json"


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else "")
    return exprs


def series_names(exprs: list[str], prefix_pattern: str) -> set[str]:
    return {match for expr in exprs for match in re.findall(rf"\b{prefix_pattern}:[a-zA-Z0-9_]+", expr)}


def exposed(text: str) -> dict[str, list[dict]]:
    """Series name -> the label sets it has on /metrics."""
    found: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample.labels)
    return found


def assert_dashboard_finds_its_series(names: set[str], text: str, model: str) -> None:
    series = exposed(text)
    missing = sorted(name for name in names if name not in series)
    assert not missing, f"series the dashboard queries that /metrics lacks: {missing}"
    for name in names:
        assert any(labels.get("model_name") == model for labels in series[name]), name


def test_the_vllm_dashboard_is_vllms():
    dashboard = json.loads(VLLM_DASHBOARD.read_text())
    assert dashboard["title"] == "vLLM" and dashboard["description"] == "Monitoring vLLM Inference Server"
    names = series_names(queries(dashboard), "vllm")
    assert {"vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
            "vllm:num_requests_waiting", "vllm:request_decode_time_seconds_sum"} <= names


@pytest.mark.slow
def test_vllm_and_chart_dashboards_find_every_series_on_a_running_octavo(model_dir):
    """One real `octavo serve --metrics-prefix vllm` (with a draft, so that the speculative panels
    have series), a few requests, then every series either dashboard queries is on /metrics."""
    spec = json.dumps({"model": str(model_dir), "num_speculative_tokens": 2, "adaptive": False})
    server = ServerProcess([sys.executable, "-m", "octavo.cli", "serve", str(model_dir), "--port", "0",
                            "--device", "cpu", "--max-model-len", "256", "--num-gpu-blocks-override", "128",
                            "--served-model-name", MODEL_NAME, "--metrics-prefix", "vllm",
                            "--speculative-config", spec])
    try:
        url = server.wait_bound()
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60, connect=10)) as http:
            wait_until(lambda: http.get("/health").status_code == 200 or server.proc.poll() is not None,
                       timeout=120, message="the model to load")
            body = {"model": MODEL_NAME, "prompt": "Dashboards read this", "max_tokens": 8, "temperature": 0,
                    "ignore_eos": True}
            assert http.post("/v1/completions", json=body).status_code == 200
            assert http.post("/v1/completions", json={**body, "stream": True}).status_code == 200
            text = http.get("/metrics").text
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit(60) == 0, server.log()
    finally:
        server.stop()
    assert_dashboard_finds_its_series(series_names(queries(json.loads(VLLM_DASHBOARD.read_text())), "vllm"),
                                      text, MODEL_NAME)
    chart = CHART_DASHBOARD.read_text().replace("${prefix}", "vllm")
    assert_dashboard_finds_its_series(series_names(queries(json.loads(chart)), "vllm"), text, MODEL_NAME)


async def test_chart_dashboard_finds_every_series_under_octavos_own_prefix(model_dir, settings):
    from octavo.runtime.async_engine import AsyncLLMEngine
    from octavo.runtime.config import AsyncEngineArgs
    from octavo.runtime.server.app import build_app

    dashboard = json.loads(CHART_DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["DS_PROMETHEUS", "prefix", "model_name"]
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("first token", "inter-token", "per output token", "throughput", "kv cache", "queue",
                  "prefix cache", "speculative"):
        assert topic in titles, topic
    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(model_dir), device="cpu", max_model_len=128, num_gpu_blocks_override=64,
        speculative_config={"model": str(model_dir), "num_speculative_tokens": 2, "adaptive": False}))
    try:
        app = build_app(engine, settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d", timeout=60) as c:
            body = {"model": MODEL_NAME, "prompt": "Dashboards read this", "max_tokens": 8, "temperature": 0}
            assert (await c.post("/v1/completions", json=body)).status_code == 200
            text = (await c.get("/metrics")).text
    finally:
        engine.shutdown()
        wait_until(lambda: engine.is_stopped, timeout=10, message="the engine to stop")
    chart = CHART_DASHBOARD.read_text().replace("${prefix}", "octavo")
    assert_dashboard_finds_its_series(series_names(queries(json.loads(chart)), "octavo"), text, MODEL_NAME)
