"""The second seed's shape on CPUs (#26 until four GPUs are lent): a target at
tensor_parallel_size=4 (four gloo processes) with a draft, token-exact against one process, and the
seed's AsyncEngineArgs as written (tensor_parallel_size=4, dtype="half", ...) streaming through
AsyncLLMEngine. Four query heads and two KV heads over four ranks: one query head a rank, each KV
head held by two ranks."""

from __future__ import annotations

import pytest

from octavo import SamplingParams
from tiny_models import controlled_pair
from tp_helpers import make_llm, token_ids

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
PROMPTS = ["Machine learning is", "The quick brown fox jumps over", "def add(a, b):"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, llama_dir):
    return controlled_pair(llama_dir, tmp_path_factory.mktemp("pair4") / "pair", 1, 0.12)


@pytest.mark.parametrize("draft_tp", [1, 4])
def test_tp4_target_with_draft_matches_one_process(pair, draft_tp):
    """Draft on rank 0 alone (TP 1) or split like the target (TP 4): greedy output is the target's
    from one process, and drafts were accepted (the verify path ran)."""
    target, draft = pair
    with make_llm(target, 1) as llm:
        alone = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
    with make_llm(target, 4, speculative_config={"model": str(draft), "num_speculative_tokens": 3, "adaptive": False,
                                                 "draft_tensor_parallel_size": draft_tp}) as llm:
        attn = llm.llm_engine.model_runner.model.model.layers[0].self_attn
        assert (attn.num_heads, attn.num_kv_heads) == (1, 1)
        assert llm.llm_engine.proposer.runner.parallel.group.size == draft_tp
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        assert llm.llm_engine.stats.spec_accepted_tokens > 0
    assert token_ids(outputs) == token_ids(alone)


async def test_the_seed_engine_args_at_tp4_stream(pair):
    """The seed's arguments, names and values as written (only the model paths are local): the
    target split over four processes, the draft beside it, float16 (said, on a CPU), streamed.
    Greedy, so the streamed tokens equal an in-process TP 1 run of the same float16 pair."""
    from octavo import AsyncEngineArgs, AsyncLLMEngine

    target, draft = pair
    greedy = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    with make_llm(target, 1, dtype="half", speculative_config={"model": str(draft)}) as llm:
        expected = llm.generate(PROMPTS[:1], greedy, use_tqdm=False)[0].outputs[0].token_ids

    engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
        model=str(target), speculative_model=str(draft), trust_remote_code=True, tensor_parallel_size=4,
        max_num_seqs=8, dtype="half", use_v2_block_manager=True, enforce_eager=True))
    try:
        assert engine.engine.workers is not None and engine.engine.config.parallel_config.tensor_parallel_size == 4
        assert engine.engine.config.speculative_config.adaptive
        streamed = []
        async for request_output in engine.generate(PROMPTS[0], greedy, "seed-tp4"):
            streamed.append(list(request_output.outputs[0].token_ids))
        assert request_output.finished and len(streamed) > 1
        assert streamed[-1] == expected
    finally:
        engine.shutdown()
