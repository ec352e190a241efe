"""The official `openai` client, unchanged, against the server: completions, chat, streaming of
both, n > 1, logprobs, usage, models."""

from __future__ import annotations

from server_testing import MAX_MODEL_LEN, MODEL_NAME


async def test_models_list_and_retrieve(openai_client):
    models = await openai_client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    card = await openai_client.models.retrieve(MODEL_NAME)
    assert card.id == MODEL_NAME and card.object == "model"
    assert card.model_extra["max_model_len"] == MAX_MODEL_LEN


async def test_completion_usage_is_exact(openai_client, engine):
    prompt = "The quick brown fox"
    result = await openai_client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=7,
                                                    temperature=0.0, extra_body={"ignore_eos": True})
    assert result.object == "text_completion" and result.model == MODEL_NAME
    [choice] = result.choices
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.text
    prompt_ids = engine.get_tokenizer().encode(prompt)
    assert result.usage.prompt_tokens == len(prompt_ids)
    assert result.usage.completion_tokens == 7
    assert result.usage.total_tokens == len(prompt_ids) + 7


async def test_completion_batch_and_token_prompts(openai_client, engine):
    tokenizer = engine.get_tokenizer()
    ids = tokenizer.encode("Paged attention")
    single = await openai_client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=4, temperature=0.0)
    as_text = await openai_client.completions.create(model=MODEL_NAME, prompt="Paged attention", max_tokens=4,
                                                     temperature=0.0)
    assert single.choices[0].text == as_text.choices[0].text  # same tokens in, same tokens out

    batch = await openai_client.completions.create(model=MODEL_NAME, prompt=["Hello", "Kubernetes operators"],
                                                   max_tokens=3, n=2, temperature=0.0, seed=3,
                                                   extra_body={"ignore_eos": True})
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]  # prompt i, sample j -> i * n + j
    assert batch.usage.prompt_tokens == len(tokenizer.encode("Hello")) + len(tokenizer.encode("Kubernetes operators"))
    assert batch.usage.completion_tokens == 4 * 3
    by_index = {c.index: c.text for c in batch.choices}
    assert by_index[0] == by_index[1]  # greedy: both samples of a prompt agree
    batch_ids = await openai_client.completions.create(model=MODEL_NAME, prompt=[ids, ids], max_tokens=4,
                                                       temperature=0.0)
    assert [c.text for c in batch_ids.choices] == [as_text.choices[0].text] * 2


async def test_completion_sampling_fields_and_stop(openai_client):
    base = dict(model=MODEL_NAME, prompt="Speculative decoding", max_tokens=12, temperature=0.8, seed=11)
    first = await openai_client.completions.create(**base, top_p=0.9, presence_penalty=0.5,
                                                   frequency_penalty=0.5, user="tester",
                                                   extra_body={"top_k": 20, "min_p": 0.01,
                                                               "repetition_penalty": 1.1, "min_tokens": 2})
    again = await openai_client.completions.create(**base, top_p=0.9, presence_penalty=0.5,
                                                   frequency_penalty=0.5, user="tester",
                                                   extra_body={"top_k": 20, "min_p": 0.01,
                                                               "repetition_penalty": 1.1, "min_tokens": 2})
    assert first.choices[0].text == again.choices[0].text  # seeded: reproducible
    full = await openai_client.completions.create(**base, extra_body={"ignore_eos": True})
    text = full.choices[0].text
    if len(text) >= 4:
        stop = text[2:4]
        stopped = await openai_client.completions.create(**base, stop=[stop], extra_body={"ignore_eos": True})
        assert stopped.choices[0].finish_reason == "stop"
        assert stop not in stopped.choices[0].text
        assert text.startswith(stopped.choices[0].text)


async def test_completion_logprobs_and_echo(openai_client):
    result = await openai_client.completions.create(model=MODEL_NAME, prompt="Hello world", max_tokens=4,
                                                    temperature=0.0, logprobs=3)
    lp = result.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert all(v <= 0.0 for v in lp.token_logprobs)
    # The top 3 plus the chosen token (fewer when tokens decode to the same text, e.g. partial bytes).
    assert all(1 <= len(top) <= 4 for top in lp.top_logprobs)
    if "\ufffd" not in "".join(lp.tokens):
        assert "".join(lp.tokens) == result.choices[0].text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] == value  # greedy: the chosen token is the most likely one
        assert value == max(top.values())

    echoed = await openai_client.completions.create(model=MODEL_NAME, prompt="Hello world", max_tokens=4,
                                                    temperature=0.0, echo=True, logprobs=1)
    choice = echoed.choices[0]
    assert choice.text == "Hello world" + result.choices[0].text
    assert choice.logprobs.token_logprobs[0] is None  # the first prompt token has no logprob
    assert choice.logprobs.token_logprobs[-4:] == lp.token_logprobs


async def test_chat_completion(openai_client, engine):
    from octavo.runtime.tokenizer import apply_chat_template

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"}]
    result = await openai_client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                                         max_completion_tokens=6, temperature=0.0,
                                                         extra_body={"ignore_eos": True})
    assert result.object == "chat.completion"
    [choice] = result.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    prompt_ids = apply_chat_template(engine.get_tokenizer(), messages)
    assert result.usage.prompt_tokens == len(prompt_ids)
    assert result.usage.completion_tokens == 6

    legacy = await openai_client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6,
                                                         temperature=0.0, extra_body={"ignore_eos": True})
    assert legacy.choices[0].message.content == choice.message.content


async def test_chat_n_and_logprobs(openai_client):
    result = await openai_client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Tell me about paged attention"}],
        max_tokens=5, n=3, temperature=1.0, seed=5, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True})
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert result.usage.completion_tokens == 15
    for choice in result.choices:
        content = choice.logprobs.content
        assert len(content) == 5
        for entry in content:
            assert entry.logprob <= 0.0 and len(entry.top_logprobs) == 2
            assert entry.bytes == list(entry.token.encode())
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


async def test_streaming_completion_with_openai_client(openai_client):
    stream = await openai_client.completions.create(model=MODEL_NAME, prompt="Continuous batching", max_tokens=6,
                                                    temperature=0.0, stream=True,
                                                    stream_options={"include_usage": True},
                                                    extra_body={"ignore_eos": True})
    texts, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        for choice in chunk.choices:
            texts.append(choice.text)
            finish = choice.finish_reason or finish
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 6
    whole = await openai_client.completions.create(model=MODEL_NAME, prompt="Continuous batching", max_tokens=6,
                                                   temperature=0.0, extra_body={"ignore_eos": True})
    assert "".join(texts) == whole.choices[0].text


async def test_streaming_chat_with_openai_client(openai_client):
    messages = [{"role": "user", "content": "Stream please"}]
    stream = await openai_client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, n=2,
                                                         temperature=0.7, seed=9, stream=True,
                                                         stream_options={"include_usage": True})
    roles, contents, finishes, usage = {}, {0: "", 1: ""}, {}, None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
            continue
        for choice in chunk.choices:
            if choice.delta.role:
                roles[choice.index] = choice.delta.role
            contents[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                assert choice.index not in finishes, "one finish chunk per choice"
                finishes[choice.index] = choice.finish_reason
    assert roles == {0: "assistant", 1: "assistant"}
    assert set(finishes) == {0, 1}
    whole = await openai_client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, n=2,
                                                        temperature=0.7, seed=9)
    assert [c.message.content for c in whole.choices] == [contents[0], contents[1]]
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens
