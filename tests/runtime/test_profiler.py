"""start_profile / stop_profile (vLLM's LLM methods): a trace per profile, written where the
profiler config says, covering the steps its delay and limit pick, with the engine's phases."""

from __future__ import annotations

import pytest

from octavo import LLM, SamplingParams
from octavo.bench import profile
from octavo.runtime.config import ProfilerConfig


def step_ranges(path) -> int:
    """The trace's octavo::step ranges, as `octavo bench`'s profile summary counts them."""
    return profile.summarize_trace(profile.load_events(path))["num_steps"]


def make_llm(model_dir, tmp_path, **settings):
    return LLM(model=str(model_dir), device="cpu", num_gpu_blocks_override=128,
               profiler_config={"profiler": "torch", "torch_profiler_dir": str(tmp_path), **settings})


def test_delay_and_limit_pick_the_steps(llama_dir, tmp_path):
    llm = make_llm(llama_dir, tmp_path, delay_iterations=3, max_iterations=4)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    llm.start_profile()
    llm.generate(["a b c"], params, use_tqdm=False)  # 12 steps: skips 3, records 4, then stops by itself
    (trace,) = llm.llm_engine.profiler.traces
    assert step_ranges(trace) == 4
    llm.stop_profile()  # already ended by its limit: nothing more is written
    assert len(llm.llm_engine.profiler.traces) == 1


def test_stop_on_an_idle_engine_writes_at_once(llama_dir, tmp_path):
    llm = make_llm(llama_dir, tmp_path)
    llm.start_profile()
    out = llm.generate(["a b c"], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 5
    assert llm.llm_engine.profiler.traces == []  # unlimited: still recording
    llm.stop_profile()
    (trace,) = llm.llm_engine.profiler.traces
    assert trace.parent == tmp_path and trace.name.endswith(".pt.trace.json.gz")
    assert step_ranges(trace) == 5 + 1  # asynchronous scheduling: a last step reads the fifth token back


def test_profiled_output_equals_unprofiled(llama_dir, tmp_path):
    params = SamplingParams(max_tokens=8, temperature=0.0)
    plain = LLM(model=str(llama_dir), device="cpu", num_gpu_blocks_override=128).generate(["x y"], params, use_tqdm=False)
    llm = make_llm(llama_dir, tmp_path)
    llm.start_profile()
    profiled = llm.generate(["x y"], params, use_tqdm=False)
    llm.stop_profile()
    assert profiled[0].outputs[0].token_ids == plain[0].outputs[0].token_ids


def test_without_a_profiler_start_says_how(llama_dir, monkeypatch):
    for env in ("OCTAVO_TORCH_PROFILER_DIR", "VLLM_TORCH_PROFILER_DIR"):
        monkeypatch.delenv(env, raising=False)
    llm = LLM(model=str(llama_dir), device="cpu", num_gpu_blocks_override=64)
    with pytest.raises(RuntimeError, match="profiler-config"):
        llm.start_profile()


@pytest.mark.parametrize("settings,message", [
    ({"profiler": "torch"}, "needs torch_profiler_dir"),
    ({"profiler": "nsys"}, "must be 'torch'"),
    ({"profiler": "torch", "torch_profiler_dir": "/x", "max_iterations": -1}, "max_iterations"),
    ({"profiler": "torch", "torch_profiler_dir": "/x", "colour": 1}, "colour"),
])
def test_bad_profiler_config_names_the_problem(settings, message):
    with pytest.raises(ValueError, match=message):
        ProfilerConfig.resolve(settings)


def test_vllm_environment_variable_turns_it_on(monkeypatch, tmp_path):
    monkeypatch.delenv("OCTAVO_TORCH_PROFILER_DIR", raising=False)
    monkeypatch.setenv("VLLM_TORCH_PROFILER_DIR", str(tmp_path))
    config = ProfilerConfig.resolve(None)
    assert config.profiler == "torch" and config.torch_profiler_dir == str(tmp_path)
