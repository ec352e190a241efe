"""No request field is silently dropped: walking vLLM's request schema field by field
(vllm/request_fields.json), each field set to a value that asks for something either works (the
request succeeds and the field is one octavo's request models declare, so code reads it) or is a
400 whose `param` names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_testing import MODEL_NAME

FIXTURE = json.loads((Path(__file__).parent / "vllm" / "request_fields.json").read_text())
BASES = {"completions": ("/v1/completions", {"model": MODEL_NAME, "prompt": "Walk the schema", "max_tokens": 2}),
         "chat": ("/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Walk"}],
                                           "max_tokens": 2})}
CASES = [(api, field, value) for api in ("completions", "chat") for field, value in FIXTURE[api].items()]
CASES += [("completions", field, value) for field, value in FIXTURE["later_vllm"].items()]
CASES += [("chat", field, value) for field, value in FIXTURE["later_vllm"].items()]
CASES += [("chat", field, value) for field, value in FIXTURE["openai_legacy_chat"].items()]

# What octavo does not do (yet): these must be the 400s. (tools and tool_choice alone are 400s too: auto needs
# --enable-auto-tool-choice, a choice needs tools.)
MUST_REFUSE = {"functions", "function_call", "logit_bias", "suffix", "use_beam_search",
               "allowed_token_ids", "logits_processors", "priority", "prompt_embeds"}
# What real clients need: these must work.
_BOTH = {"prompt_logprobs", "add_special_tokens", "logprobs", "truncate_prompt_tokens", "request_id",
         "return_tokens_as_token_ids", "top_k", "min_p", "repetition_penalty", "stop_token_ids", "ignore_eos",
         "min_tokens", "best_of", "user", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
         "response_format", "structured_outputs"}
MUST_WORK = {"completions": _BOTH | {"echo"},
             "chat": _BOTH | {"chat_template", "chat_template_kwargs", "documents", "add_generation_prompt"}}


def declared(api: str) -> set[str]:
    from octavo.runtime.server.protocol import ChatCompletionRequest, CompletionRequest

    return set((CompletionRequest if api == "completions" else ChatCompletionRequest).model_fields)


@pytest.mark.parametrize("api, field, value", CASES, ids=[f"{api}.{field}" for api, field, _ in CASES])
async def test_each_vllm_field_works_or_is_a_400_naming_it(client, api, field, value):
    path, base = BASES[api]
    body = {**base, field: value}
    response = await client.post(path, json=body)
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["param"] == field or error["param"].startswith(f"{field}."), error
        assert field not in MUST_WORK[api], error["message"]
        return
    assert response.status_code == 200, response.text
    assert field in declared(api), f"{field} is answered 200 but no request model reads it"
    assert field not in MUST_REFUSE


def test_the_walk_covers_vllms_schema():
    completions, chat = FIXTURE["completions"], FIXTURE["chat"]
    assert len(completions) >= 45 and len(chat) >= 60
    for field in ("guided_json", "prompt_logprobs", "add_special_tokens", "kv_transfer_params", "vllm_xargs"):
        assert field in completions and field in chat
    assert {"functions", "function_call"} <= set(FIXTURE["openai_legacy_chat"])
