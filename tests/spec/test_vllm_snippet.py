"""The second seed's vLLM snippet, with only the import changed, on the demo pair (a CPU and one
device, so tensor_parallel_size=1): it builds with no num_speculative_tokens (adaptive k chooses,
capped at the engine's default) and streams through AsyncLLMEngine.generate."""

from __future__ import annotations

import logging

from octavo.runtime.config import DEFAULT_NUM_SPECULATIVE_TOKENS
from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR


async def test_the_seed_snippet_runs_as_written_and_streams(caplog):
    from octavo import AsyncEngineArgs, AsyncLLMEngine, SamplingParams

    with caplog.at_level(logging.INFO, logger="octavo"):
        engine_args = AsyncEngineArgs(model=str(DEMO_TARGET_DIR), speculative_model=str(DEMO_DRAFT_DIR),
                                      trust_remote_code=True, tensor_parallel_size=1, max_num_seqs=8, dtype="half",
                                      use_v2_block_manager=True, enforce_eager=True)
        engine = AsyncLLMEngine.from_engine_args(engine_args)
    try:
        spec = engine.engine.config.speculative_config
        assert spec.method == "draft_model" and spec.adaptive
        assert spec.num_speculative_tokens == DEFAULT_NUM_SPECULATIVE_TOKENS  # the cap; adaptive k picks below it
        messages = " ".join(record.getMessage() for record in caplog.records)
        assert "trust_remote_code=True accepted" in messages
        assert "running float16 on a CPU" in messages  # dtype="half" on a CPU is said, not silent

        texts = []
        async for request_output in engine.generate("To be, or not", SamplingParams(max_tokens=24, seed=0, ignore_eos=True),
                                                    "seed-snippet"):
            texts.append(request_output.outputs[0].text)
        assert len(texts) > 1 and request_output.finished  # streamed: several outputs, the last one final
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))  # cumulative text
        assert len(request_output.outputs[0].token_ids) == 24
    finally:
        engine.shutdown()
