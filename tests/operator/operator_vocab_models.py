"""Tiny Hugging Face-format model directories for vocabulary tests: BPE tokenizers trained here on
a few sentences (no downloads), wrapped in transformers' fast tokenizer and saved with a
config.json. Only what the compatibility check reads is written: no weights."""

from __future__ import annotations

import json
from pathlib import Path

ENGLISH = [
    "the quick brown fox jumps over the lazy dog",
    "speculative decoding lets a small draft model propose tokens for a large target",
    "the target verifies every proposal in one forward pass and keeps the accepted prefix",
    "a paged key value cache stores attention state in fixed size blocks",
    "continuous batching admits new requests while others are still decoding",
    "tensor parallel layers shard the weights across several accelerators",
    "all the world's a stage, and all the men and women merely players",
    "to be, or not to be, that is the question",
]
CODE = [
    "def forward(self, input_ids, positions): return self.lm_head(hidden_states)",
    "for block in block_table: slot_mapping.append(block * block_size + offset)",
    "if request.is_finished(): scheduler.free(request.request_id)",
    "logits = torch.matmul(hidden, weight.t()); probs = logits.softmax(dim=-1)",
    "kubectl apply -f examples/speculative.yaml && kubectl get llms -w",
]

# Special tokens in the style of two tokenizer families.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|reserved_0|>"]
LLAMA2_SPECIALS = ["<unk>", "<s>", "</s>"]


def train_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE tokenizer (the Llama 3 / GPT-2 style) trained on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus * 4, trainer)
    return tokenizer


def save_model(directory: Path, tokenizer, *, bos: str, eos: str, pad: str | None = None,
               unk: str | None = None, vocab_size: int | None = None) -> Path:
    """Write tokenizer files (through transformers' save_pretrained) and a config.json whose
    vocab_size defaults to the tokenizer's size."""
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    specials = {"bos_token": bos, "eos_token": eos}
    if pad is not None:
        specials["pad_token"] = pad
    if unk is not None:
        specials["unk_token"] = unk
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials).save_pretrained(str(directory))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size if vocab_size is not None else tokenizer.get_vocab_size(),
        "bos_token_id": vocab[bos],
        "eos_token_id": vocab[eos],
        "hidden_size": 64,
        "num_hidden_layers": 2,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def make_models(root: Path) -> dict[str, Path]:
    """Every directory the tests use, by role."""
    llama3 = train_bpe(ENGLISH + CODE, 420, LLAMA3_SPECIALS)
    llama2 = train_bpe(ENGLISH, 300, LLAMA2_SPECIALS)
    # Same corpus and size as the target, other special tokens: every id shifts.
    other_specials = train_bpe(ENGLISH + CODE, 420, ["<s>", "</s>", "<pad>", "<mask>"])
    size = llama3.get_vocab_size()
    models = {
        "target": save_model(root / "target", llama3, bos="<|begin_of_text|>",
                             eos="<|end_of_text|>"),
        "draft-same": save_model(root / "draft-same", llama3, bos="<|begin_of_text|>",
                                 eos="<|end_of_text|>"),
        # The draft's embedding rounded up to a multiple of 64 rows: padding only.
        "draft-padded": save_model(root / "draft-padded", llama3, bos="<|begin_of_text|>",
                                   eos="<|end_of_text|>", vocab_size=(size // 64 + 2) * 64),
        # An instruct-style draft stopping on <|eot_id|>: same ids, another EOS role.
        "draft-eos": save_model(root / "draft-eos", llama3, bos="<|begin_of_text|>",
                                eos="<|eot_id|>"),
        "draft-other-family": save_model(root / "draft-other-family", llama2, bos="<s>",
                                         eos="</s>", unk="<unk>"),
        "draft-other-specials": save_model(root / "draft-other-specials", other_specials,
                                           bos="<s>", eos="</s>", pad="<pad>"),
        # An embedding smaller than its tokenizer: ids it cannot score.
        "draft-short-embedding": save_model(root / "draft-short-embedding", llama3,
                                            bos="<|begin_of_text|>", eos="<|end_of_text|>",
                                            vocab_size=size - 3),
    }
    broken = root / "broken"  # a config but no tokenizer at all
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"vocab_size": 10}))
    models["broken"] = broken
    return models
