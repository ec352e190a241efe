"""lm-eval's `local-completions` against octavo, string prompts, on a small local multiple-choice
task: the per-choice loglikelihoods it reports equal those of explicit token-id requests.

lm-eval counts a context's tokens through octavo's /tokenize with add_special_tokens false (its
remote tokenizer, found through /tokenizer_info) and sends the context and choice as one string.
With a tokenizer that adds a BOS (the tiny checkpoints' does), the string must be tokenized the
same way, so the completion request carries add_special_tokens false too: lm-eval's own payload
leaves it out, and the workaround its users apply is a subclass that adds it (below). The same
run without it is shifted by one token, which the test shows, so the flag demonstrably works.

Nothing downloads: the task is a JSONL file, loaded through the datasets library's json builder."""

from __future__ import annotations

import json
import textwrap

import httpx
import pytest

from server_testing import MODEL_NAME

lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = [
    {"question": "Paged attention stores keys and values in", "choices": ["fixed-size blocks", "one long buffer",
                                                                         "the disk"], "answer": 0},
    {"question": "The quick brown fox jumps over the", "choices": ["lazy dog", "moon", "quick fox"], "answer": 0},
    {"question": "Continuous batching admits new requests at", "choices": ["every step", "midnight"], "answer": 0},
    {"question": "def add(a, b):", "choices": ["return a + b", "pass", "print(a)"], "answer": 0},
]
TASK = "octavo_tiny_mc"


@pytest.fixture
def task_dir(tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (tmp_path / f"{TASK}.yaml").write_text(textwrap.dedent(f"""\
        task: {TASK}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
          cache_dir: {tmp_path / "datasets-cache"}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        target_delimiter: " "
        metric_list:
          - metric: acc
        """))
    return tmp_path


def completions_lm(base_url: str, send_add_special_tokens: bool):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class Completions(LocalCompletionsAPI):
        """lm-eval's local-completions; with the workaround, its scoring requests say
        add_special_tokens false, as its /tokenize calls do."""

        def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kwargs):
            payload = super()._create_payload(messages, generate=generate, gen_kwargs=gen_kwargs, seed=seed, eos=eos,
                                              **kwargs)
            if send_add_special_tokens and not generate:
                payload["add_special_tokens"] = False
            return payload

    return Completions(base_url=f"{base_url}/v1/completions", model=MODEL_NAME, tokenized_requests=False,
                       num_concurrent=1, max_retries=1, max_length=256, timeout=60)


def lm_eval_loglikelihoods(lm, task_dir) -> dict[tuple[int, int], float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(task_dir)),
                              log_samples=True, batch_size=1, bootstrap_iters=0)
    found = {}
    for sample in results["samples"][TASK]:
        for choice, response in enumerate(sample["resps"]):
            found[(sample["doc_id"], choice)] = response[0][0]
    return found


def token_id_loglikelihood(http: httpx.Client, context: list[int], continuation: list[int]) -> float:
    """The continuation's loglikelihood after the context, asked with explicit token ids."""
    body = {"model": MODEL_NAME, "prompt": context + continuation, "max_tokens": 0, "echo": True, "logprobs": 1}
    logprobs = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
    return sum(logprobs[len(context):len(context) + len(continuation)])


def test_lm_eval_string_prompts_score_as_token_ids(live_server, task_dir, monkeypatch, engine):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = engine.get_tokenizer()
    assert tokenizer.encode("x")[0] == tokenizer.bos_token_id  # a BOS-adding tokenizer: the case that matters

    lm = completions_lm(live_server.url, send_add_special_tokens=True)
    assert lm.tokenizer_backend == "remote"  # found through /tokenizer_info and /tokenize
    scores = lm_eval_loglikelihoods(lm, task_dir)
    assert len(scores) == sum(len(q["choices"]) for q in QUESTIONS)

    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        for doc_id, question in enumerate(QUESTIONS):
            for choice, text in enumerate(question["choices"]):
                context, continuation = lm._encode_pair(question["question"], " " + text)
                expected = token_id_loglikelihood(http, context, continuation)
                assert scores[(doc_id, choice)] == pytest.approx(expected, abs=1e-4), (doc_id, choice)

    # Without add_special_tokens false, octavo adds the BOS to the string, and lm-eval reads every
    # score one token off: what vLLM users of string prompts hit.
    shifted = lm_eval_loglikelihoods(completions_lm(live_server.url, send_add_special_tokens=False), task_dir)
    assert any(abs(shifted[key] - scores[key]) > 1e-3 for key in scores)
