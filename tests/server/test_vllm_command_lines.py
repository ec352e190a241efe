"""`vllm serve` command lines from vLLM's docs and from KubeAI's and production-stack's templates
(vllm/command_lines.json), run with only the program name changed: each starts a server that
answers completions and chat, or stops at once with one line saying which flag is not supported.

The hub ids they name resolve, offline, to a tiny local checkpoint (long enough positions for the
context lengths the charts ask for) placed in a hub cache the way huggingface_hub lays one out;
nothing downloads. `--port 0` is appended so that the servers run beside anything else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server_testing import ServerProcess, wait_until

FIXTURE = json.loads((Path(__file__).parent / "vllm" / "command_lines.json").read_text())
REVISION = "0123456789abcdef0123456789abcdef01234567"
PROGRAMS = FIXTURE["programs"]
LINES = FIXTURE["command_lines"]


def model_ids(line: dict) -> list[str]:
    ids = [arg.split("=", 1)[1] for arg in line["args"] if arg.startswith("--model=")]
    return ids or [line["args"][0]]


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """An offline hub cache holding a tiny checkpoint under every hub id the command lines name."""
    from tiny_models import build_checkpoint

    root = tmp_path_factory.mktemp("vllm-command-lines")
    checkpoint = build_checkpoint(root / "checkpoints", "llama", max_position_embeddings=32768)
    for repo_id in {repo for line in LINES for repo in model_ids(line)}:
        repo = root / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / REVISION
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REVISION)
        for file in checkpoint.iterdir():
            (snapshot / file.name).symlink_to(file)
    return root


def command(line: dict) -> list[str]:
    return [sys.executable, *PROGRAMS[line["program"]], *line["args"], "--port", "0"]


def environment(hub_home: Path, line: dict) -> dict[str, str]:
    return {"HF_HOME": str(hub_home / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            **line.get("env", {})}


def test_the_fixture_covers_every_source():
    sources = " ".join(line["source"] for line in LINES)
    for source in ("quickstart.md", "openai_compatible_server.md", "KubeAI", "production-stack"):
        assert source in sources
    assert {line["expect"] for line in LINES} == {"serves", "refused"}
    assert {line["program"] for line in LINES} == set(PROGRAMS)


REFUSED = [line for line in LINES if line["expect"] == "refused"]
SERVED = [line for line in LINES if line["expect"] == "serves"]


@pytest.mark.parametrize("line", REFUSED, ids=[line["source"] for line in REFUSED])
def test_a_command_line_for_a_missing_feature_stops_in_one_line(hub_home, line):
    out = subprocess.run(command(line), capture_output=True, text=True, timeout=120,
                         env={**os.environ, **environment(hub_home, line)})
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1, out.stderr
    assert "not supported" in lines[0] and line["flag"] in lines[0].replace("_", "-"), lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("line", SERVED, ids=[line["source"] for line in SERVED])
def test_a_command_line_octavo_has_every_feature_of_serves(hub_home, tmp_path, line):
    for name, text in line.get("files", {}).items():
        (tmp_path / name).write_text(text)
    server = ServerProcess(command(line), env=environment(hub_home, line), cwd=str(tmp_path))
    try:
        url = server.wait_bound()
        headers = {"Authorization": f"Bearer {line['api_key']}"} if "api_key" in line else {}
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60, connect=10), headers=headers) as http:
            wait_until(lambda: http.get("/health").status_code == 200 or server.proc.poll() is not None,
                       timeout=180, message="the model to load")
            assert server.proc.poll() is None, server.log()
            if "api_key" in line:
                assert http.post("/v1/completions", headers={"Authorization": "Bearer wrong"},
                                 json={"prompt": "x"}).status_code == 401
            models = http.get("/v1/models").json()
            assert models["data"][0]["id"] == line["model_name"], models
            completion = http.post("/v1/completions", json={"model": line["model_name"], "prompt": "San Francisco is a",
                                                            "max_tokens": 7, "temperature": 0})
            assert completion.status_code == 200, completion.text
            assert completion.json()["usage"]["completion_tokens"] >= 1
            chat = http.post("/v1/chat/completions", json={"model": line["model_name"], "max_tokens": 5, "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Who won the world series in 2020?"}]})
            assert chat.status_code == 200, chat.text
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit(60) == 0, server.log()
    finally:
        server.stop()
