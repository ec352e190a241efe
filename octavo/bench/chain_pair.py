"""The chain pair: a target and a draft of *any* two shapes with the same vocabulary, dummy weights,
whose greedy agreement is a number chosen in advance, not calibrated.

Why: the controlled pair (pairs.py) shares weights, so its draft must have the target's shape. A
seed such as a 70B-shape target with an 8B-shape draft needs the two to agree without sharing a
tensor, and at 70B neither a calibration loop nor a full checkpoint (141 GB) fits a benchmark run.

Construction (V tokens, rank r <= both hidden sizes, seed):
  * the chain: a random cyclic order of the V tokens; next(x) is the token after x;
  * A: V unit directions in R^r times sqrt(r); P_h: r orthonormal rows in R^h, one per hidden size;
  * embedding of token x = A[src(x)] P_h sqrt(h / r), rows of RMS 1; LM head row v =
    A[prev(v)] P_h x T / sqrt(h r), so that a residual stream equal to x's embedding gives logit T
    to next(src(x)) and about N(0, T^2 / r) to every other token (top-2 gap about 0.7 T at r = 256);
  * the target's src is the identity; the draft's src is the identity on a random share `agreement`
    of the tokens and elsewhere the token half the chain away (so its guess is wrong there);
  * every decoder layer's input and post-attention norm weights are `layer_scale`, so each layer
    adds about 3 x layer_scale per residual entry against the embedding's 1: the layers run at full
    cost (every weight read, every product on small but nonzero random values, so tensor-core power
    is not that of zeros) and never change the greedy token.
So the target greedily walks the chain; the draft proposes next(x) when x is in its share and
something else otherwise: greedy acceptance per drafted token is the share of the visited tokens
that the draft agrees on, `agreement` up to sampling noise, at any depth and width. At temperature 1
both models put nearly all mass on their top token (T = 32), so sampled acceptance is about the same.

Only the embedding, the LM head and the norms are written (safetensors, Hugging Face Llama names);
the engine draws the rest as dummy weights (`--load-format dummy --model-loader-extra-config
'{"partial_checkpoint": true}'`), so a rank of a tensor-parallel target reads its shards of the two
big tables and draws its own layers.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("octavo")

LOADER_EXTRA = {"partial_checkpoint": True}  # how an engine loads a chain pair's directories
DEFAULT_RANK = 256
DEFAULT_LOGIT = 32.0
DEFAULT_LAYER_SCALE = 1e-2
SHAPE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads")


# ---- the construction (pure, given the seed) ---------------------------------------------------------
def chain_order(vocab_size: int, seed: int) -> torch.Tensor:
    """The chain: order[i + 1] follows order[i], and order[0] follows order[-1]."""
    return torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))


def following(order: torch.Tensor, steps: int) -> torch.Tensor:
    """t -> the token `steps` places after t along the chain (steps < 0: before)."""
    after = torch.empty_like(order)
    after[order] = order.roll(-steps)
    return after


def directions(vocab_size: int, rank: int, seed: int) -> torch.Tensor:
    """A: one direction per token in R^rank, each of norm sqrt(rank) (so a token's score with
    itself is exactly rank, with any other about N(0, rank))."""
    a = torch.randn(vocab_size, rank, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return a * (math.sqrt(rank) / a.norm(dim=1, keepdim=True))


def projection(rank: int, hidden: int, seed: int) -> torch.Tensor:
    """P_h: rank orthonormal rows in R^hidden (the same for every model of that width)."""
    g = torch.randn(hidden, rank, generator=torch.Generator().manual_seed(seed + 2 + hidden), dtype=torch.float64)
    q, _ = torch.linalg.qr(g)
    return q.T.contiguous()


def agreeing_tokens(vocab_size: int, agreement: float, seed: int) -> torch.Tensor:
    """The draft's share: a random set of about agreement x V tokens (a bool mask)."""
    u = torch.rand(vocab_size, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    return u < agreement


def acceptance_rate(agreement: float, k: int) -> float:
    """Accepted / drafted tokens (vLLM's "draft acceptance rate") at a fixed k when each drafted
    token is right with probability `agreement` and drafting stops counting at the first miss."""
    return sum(agreement ** i for i in range(1, k + 1)) / k


def agreement_for_rate(rate: float, k: int) -> float:
    """The per-token agreement whose acceptance_rate at k is `rate` (bisection; it is increasing)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"an acceptance rate is in [0, 1], got {rate}")
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if acceptance_rate(middle, k) < rate else (low, middle)
    return (low + high) / 2


def check_shapes(config: dict, rank: int) -> None:
    if config.get("tie_word_embeddings"):
        raise ValueError("a chain pair needs untied embeddings (the LM head differs from the embedding); this "
                         "config ties them")
    if int(config["hidden_size"]) < rank:
        raise ValueError(f"rank {rank} exceeds hidden_size {config['hidden_size']}: give a smaller --rank")


def model_tensors(config: dict, source: torch.Tensor, order: torch.Tensor, a: torch.Tensor, *,
                  rank: int, seed: int, logit: float, layer_scale: float, dtype: torch.dtype,
                  chunk_rows: int = 16384) -> dict[str, torch.Tensor]:
    """One model's written tensors (Hugging Face Llama names): embedding row x is A[source[x]]'s,
    LM head row v scores next(source) = v. Everything else of the model stays dummy."""
    check_shapes(config, rank)
    vocab, hidden, layers = int(config["vocab_size"]), int(config["hidden_size"]), int(config["num_hidden_layers"])
    p = projection(rank, hidden, seed).float()  # float32 products: a 70B-wide table in seconds, exact enough
    a = a.float()
    previous = following(order, -1)
    embed = torch.empty(vocab, hidden, dtype=dtype)
    head = torch.empty(vocab, hidden, dtype=dtype)
    for start in range(0, vocab, chunk_rows):
        rows = slice(start, min(start + chunk_rows, vocab))
        embed[rows] = (a[source[rows]] @ p * math.sqrt(hidden / rank)).to(dtype)
        head[rows] = (a[previous[rows]] @ p * (logit / math.sqrt(hidden * rank))).to(dtype)
    tensors = {"model.embed_tokens.weight": embed, "lm_head.weight": head,
               "model.norm.weight": torch.ones(hidden, dtype=dtype)}
    for layer in range(layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{layer}.{norm}.weight"] = torch.full((hidden,), layer_scale, dtype=dtype)
    return tensors


def pair_sources(vocab_size: int, agreement: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, target's source, draft's source): the draft reads the token half the chain away
    wherever it does not agree."""
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"agreement must be in [0, 1], got {agreement}")
    order = chain_order(vocab_size, seed)
    identity = torch.arange(vocab_size)
    draft = torch.where(agreeing_tokens(vocab_size, agreement, seed), identity,
                        following(order, max(1, vocab_size // 2)))
    return order, identity, draft


# ---- the directories (I/O) ---------------------------------------------------------------------------
def write_chain_pair(target_config: dict, draft_config: dict, out: Path, agreement: float, seed: int = 0,
                     rank: int | None = None, logit: float = DEFAULT_LOGIT, layer_scale: float = DEFAULT_LAYER_SCALE,
                     dtype: str = "bfloat16") -> dict:
    """out/target and out/draft: config.json, a synthetic tokenizer and model.safetensors with the
    chain's tensors; out/pair.json says what was built. Returns that record. rank: unset, 256 or
    the narrower model's width if less."""
    from safetensors.torch import save_file

    from octavo.bench.models import write_synthetic_tokenizer

    if rank is None:
        rank = min(DEFAULT_RANK, int(target_config["hidden_size"]), int(draft_config["hidden_size"]))
    vocab = int(target_config["vocab_size"])
    if int(draft_config["vocab_size"]) != vocab:
        raise ValueError(f"the draft's vocabulary ({draft_config['vocab_size']}) differs from the target's ({vocab})")
    for config in (target_config, draft_config):
        check_shapes(config, rank)
    torch_dtype = getattr(torch, dtype)
    order, target_source, draft_source = pair_sources(vocab, agreement, seed)
    a = directions(vocab, rank, seed)
    record: dict[str, Any] = {"kind": "chain", "agreement": agreement, "agreeing_share": float(
        (draft_source == target_source).double().mean()), "seed": seed, "rank": rank, "logit": logit,
        "layer_scale": layer_scale, "dtype": dtype, "bytes_written": 0}
    for role, config, source in (("target", target_config, target_source), ("draft", draft_config, draft_source)):
        directory = Path(out) / role
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({**config, "torch_dtype": dtype}, indent=2))
        write_synthetic_tokenizer(str(directory), vocab, config.get("eos_token_id"))
        tensors = model_tensors(config, source, order, a, rank=rank, seed=seed, logit=logit,
                                layer_scale=layer_scale, dtype=torch_dtype)
        for stale in directory.glob("*.safetensors*"):
            stale.unlink()
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        record["bytes_written"] += sum(t.numel() * t.element_size() for t in tensors.values())
        record[f"{role}_dir"] = str(directory)
        record[f"{role}_shape"] = {k: config.get(k) for k in SHAPE_KEYS}
        del tensors
    (Path(out) / "pair.json").write_text(json.dumps(record, indent=1))
    return record


def same_pair(record: dict, target_config: dict, draft_config: dict, agreement: float, seed: int,
              rank: int | None, dtype: str) -> bool:
    """Whether a written pair (its pair.json) is the one these arguments would write."""
    def shape(config: dict) -> dict:
        return {k: config.get(k) for k in SHAPE_KEYS}

    return (record.get("kind") == "chain" and record.get("agreement") == agreement and record.get("seed") == seed
            and record.get("dtype") == dtype and (rank is None or record.get("rank") == rank)
            and record.get("target_shape") == shape(target_config) and record.get("draft_shape") == shape(draft_config)
            and all(Path(record.get(f"{role}_dir", "/nonexistent"), "model.safetensors").is_file()
                    for role in ("target", "draft")))


def ensure(target_config: dict, draft_config: dict, out: Path, agreement: float, seed: int = 0,
               rank: int | None = None, dtype: str = "bfloat16") -> dict:
    """The pair these arguments describe: the one already in `out` if it is that pair (its record
    says "reused"), else written there."""
    written = Path(out) / "pair.json"
    if written.is_file():
        record = json.loads(written.read_text())
        if same_pair(record, target_config, draft_config, agreement, seed, rank, dtype):
            logger.info("chain pair: reusing %s", out)
            return {**record, "reused": True}
    return write_chain_pair(target_config, draft_config, Path(out), agreement, seed, rank, dtype=dtype)


def chain_successor(out: Path) -> torch.Tensor:
    """next(x) for every token of a written pair (what its target generates greedily)."""
    record = json.loads((Path(out) / "pair.json").read_text())
    vocab = json.loads((Path(record["target_dir"]) / "config.json").read_text())["vocab_size"]
    return following(chain_order(int(vocab), record["seed"]), 1)


def construction_text(record: dict) -> str:
    """How the pair was built, for a report."""
    t, d = record["target_shape"], record["draft_shape"]
    return (f"Chain pair (octavo/bench/chain_pair.py): target {t['num_hidden_layers']} layers x {t['hidden_size']} "
            f"wide, draft {d['num_hidden_layers']} x {d['hidden_size']}, one vocabulary. Both draw their layers as "
            "octavo's dummy weights; the written embedding and LM head make each predict the next token of one "
            "random cycle through the vocabulary from the last token (logit "
            f"{record['logit']:g} on it, rank {record['rank']}), and every layer norm weight is "
            f"{record['layer_scale']:g}, so the layers cost what they do in the real model but never change the "
            f"greedy token. The draft reads a wrong token (half the cycle away) for {1 - record['agreeing_share']:.3f} "
            f"of the vocabulary, so each drafted token is right with probability about {record['agreeing_share']:.3f} "
            f"by construction (seed {record['seed']}): accepted / drafted about "
            + ", ".join(f"{acceptance_rate(record['agreeing_share'], k):.3f} at k = {k}"
                        for k in sorted({1, 2, 4, 5, record.get("k", 4)}))
            + " when k is fixed" + (f" (asked: {record['acceptance_rate_asked']:g} at k = {record['k']})"
                                    if "acceptance_rate_asked" in record else "")
            + ". The measured acceptance is reported beside it.")


def main(argv: list[str] | None = None) -> None:
    from octavo.bench.pairs import load_config

    parser = argparse.ArgumentParser(prog="python -m octavo.bench.chain_pair", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="the target's config (a bench/configs name or a config.json)")
    parser.add_argument("--draft", required=True, help="the draft's config")
    parser.add_argument("--target-layers", type=int, help="override the target's num_hidden_layers")
    share = parser.add_mutually_exclusive_group(required=True)
    share.add_argument("--agreement", type=float, help="share of tokens the draft agrees on (per-token acceptance)")
    share.add_argument("--acceptance-rate", type=float, help="accepted / drafted tokens wanted at k = --k drafted "
                                                            "tokens a step (vLLM's draft acceptance rate)")
    parser.add_argument("--k", type=int, default=4, help="with --acceptance-rate: the drafted tokens a step")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, help=f"unset: {DEFAULT_RANK} or the narrower width if less")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    target = load_config(args.target)
    if args.target_layers:
        target["num_hidden_layers"] = args.target_layers
    agreement = args.agreement if args.agreement is not None else agreement_for_rate(args.acceptance_rate, args.k)
    record = ensure(target, load_config(args.draft), Path(args.out), agreement, args.seed, args.rank, args.dtype)
    print(construction_text(record))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
