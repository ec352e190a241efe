"""LLM: offline batch generation with vLLM's interface (`LLM(model=...).generate(prompts, params)`)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

from octavo.runtime.config import EngineArgs
from octavo.runtime.engine import PromptType
from octavo.runtime.front_engine import build_engine
from octavo.runtime.outputs import CompletionOutput, RequestOutput
from octavo.runtime.sampling_params import RequestOutputKind, SamplingParams
from octavo.runtime.tokenizer import apply_chat_template
from octavo.runtime.usage_defaults import apply_offline_defaults

logger = logging.getLogger("octavo")


class LLM:
    """An engine for offline use. With no model, the embedded demo model is served."""

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        self.engine_args = EngineArgs.from_kwargs(model=model, **kwargs)
        apply_offline_defaults(self.engine_args)
        self.llm_engine = build_engine(self.engine_args)
        self._counter = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(self, prompts: PromptType | Sequence[PromptType],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run every prompt to completion; results in input order. A prompt that cannot run (too
        long, empty) fails alone: its RequestOutput carries `error` and no text."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = (list(sampling_params) if isinstance(sampling_params, Sequence)
                       else [sampling_params] * len(prompts))
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} sampling params for {len(prompts)} prompts")
        return self._run(prompts, params_list, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]], sampling_params: SamplingParams | None = None,
             use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template: str | None = None) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, through the chat template."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [{"prompt_token_ids": apply_chat_template(self.get_tokenizer(), conv, add_generation_prompt,
                                                            chat_template)} for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def start_profile(self) -> None:
        """Profile the steps of the next generate calls (vLLM's LLM.start_profile); needs
        profiler_config (or $VLLM_TORCH_PROFILER_DIR)."""
        self.llm_engine.start_profile()

    def stop_profile(self) -> None:
        """Write the trace to the profiler's directory."""
        self.llm_engine.stop_profile()

    def _run(self, prompts: list[PromptType], params_list: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        ids = [str(next(self._counter)) for _ in prompts]
        results: dict[str, RequestOutput] = {}
        for request_id, prompt, params in zip(ids, prompts, params_list):
            if params.output_kind != RequestOutputKind.FINAL_ONLY:
                params = params.clone()
                params.output_kind = RequestOutputKind.FINAL_ONLY
            try:
                engine.add_request(request_id, prompt, params)
            except ValueError as exc:
                logger.warning("request %s failed: %s", request_id, exc)
                results[request_id] = failed_output(request_id, prompt, str(exc))
        progress = None
        if use_tqdm:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(prompts) - len(results), desc="Processed prompts", dynamic_ncols=True)
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        results[output.request_id] = output
                        if progress is not None:
                            progress.update(1)
                failed, engine.failed_requests = engine.failed_requests, {}
                for request_id, exc in failed.items():  # e.g. a grammar that did not compile
                    logger.warning("request %s failed: %s", request_id, exc)
                    results[request_id] = failed_output(request_id, prompts[ids.index(request_id)], str(exc))
        except BaseException:
            engine.abort_request([rid for rid in ids if rid not in results])
            raise
        finally:
            if progress is not None:
                progress.close()
        return [results[rid] for rid in ids]


def failed_output(request_id: str, prompt: PromptType, error: str) -> RequestOutput:
    text = prompt if isinstance(prompt, str) else None
    return RequestOutput(request_id=request_id, prompt=text, prompt_token_ids=[], prompt_logprobs=None,
                         outputs=[CompletionOutput(0, "", [], None, None, finish_reason="error")],
                         finished=True, error=error)
