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


def test_a_chain_pair_of_two_shapes_at_tp4(tmp_path):
    """The chain pair (bench/chain_pair.py) as #26 serves it, in miniature: the target split over four
    ranks reads its vocabulary shards of the written embedding and LM head over its own dummy layers
    (partial_checkpoint) and still generates the chain; the draft, narrower and shallower, on rank 0,
    is accepted on exactly the tokens it agrees on (the counters equal a simulation of that)."""
    from octavo.bench import chain_pair

    base = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=1024, hidden_act="silu",
                rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                tie_word_embeddings=False, num_attention_heads=8, num_key_value_heads=2)
    target = {**base, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3}
    draft = {**base, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1}
    record = chain_pair.write_chain_pair(target, draft, tmp_path, 0.75, seed=2, rank=32, dtype="float32")
    successor = chain_pair.chain_successor(tmp_path)
    _, target_source, draft_source = chain_pair.pair_sources(1024, 0.75, 2)
    agrees = draft_source == target_source
    prompts = [[5, 9, 700], [40, 41, 1000, 3]]
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    with make_llm(record["target_dir"], 4, load_format="dummy", model_loader_extra_config=chain_pair.LOADER_EXTRA,
                  enable_prefix_caching=False, speculative_config={"model": record["draft_dir"], "adaptive": False,
                                                                   "num_speculative_tokens": 3}) as llm:
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)
        stats = llm.llm_engine.stats
        accepted, drafted = stats.spec_accepted_tokens, stats.spec_draft_tokens
    expected_accepted = 0
    for prompt, ids in zip(prompts, token_ids(outputs)):
        walk = [prompt[-1], *ids]
        assert all(int(successor[a]) == b for a, b in zip(walk, walk[1:]))
    assert drafted > 0 and 0 < accepted < drafted
    # Each verification accepts the run of agreeing tokens it starts on (at most 3): recount them.
    for ids in token_ids(outputs):
        position = 1
        while position < len(ids):
            run = 0
            while run < 3 and position + run < len(ids) and agrees[ids[position - 1 + run]]:
                run += 1
            expected_accepted += run
            position += run + 1
    assert abs(accepted - expected_accepted) <= 2 * len(prompts)  # a request's last verification may be cut short
