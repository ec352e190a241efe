"""Where does a device run stop being token-exact? A diagnosis for one tiny family checkpoint.

families_bench.py says whether octavo on the device reproduces transformers' fp32 CPU tokens. When
it does not, this script measures where the difference comes from, on the same checkpoint and
prompts (seeded as there):

- generation: the first generated position that differs, and the oracle's top-1/top-2 logit gap
  there (a gap near fp32 noise means reordering, a wide one means a bug);
- teacher-forced: octavo's prompt logprobs over the oracle's own trajectory vs the oracle's
  log-softmax, at the generated positions;
- per layer: the relative error of every block's output (a hook on octavo's block modules, one
  eager prefill of the whole trajectory) against transformers' hidden states;
- attention alone: each layer's paged-attention output against a float64 causal softmax of the
  same q/k/v, so the kernel's own error is separated from what the layers around it amplify.

Each is measured for octavo with the Triton kernels and with OCTAVO_DISABLE_TRITON=1 (the torch
references on the same device, run in a child process because the switch is read at import).

    python bench/token_exact_diag.py --family gpt2 --out $OUT/diag
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "models")]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LENGTHS = [5, 17, 64, 130, 700]
MAX_TOKENS = 24


def prompts_for(vocab: int) -> list[list[int]]:
    rng = random.Random(0)  # as families_bench.check_token_exact
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in LENGTHS]


def oracle(model_dir: Path, prompts: list[list[int]]) -> dict:
    """transformers fp32 CPU eager: greedy tokens, then per trajectory its log-softmax at the
    generated positions and its hidden states."""
    from hf_reference import hf_greedy, hf_model

    tokens = hf_greedy(model_dir, prompts, MAX_TOKENS, ignore_eos=True, attn_implementation="eager")
    model = hf_model(model_dir, attn_implementation="eager")
    result = {"tokens": [], "logprobs": [], "hidden": [], "margins": []}
    for ids, generated in zip(prompts, tokens):
        full = torch.tensor(ids + generated)
        with torch.inference_mode():
            forward = model(full[None], output_hidden_states=True)
        logits = forward.logits[0, len(ids) - 1 : -1].float()
        top2 = logits.topk(2, dim=-1).values
        result["tokens"].append(generated)
        result["logprobs"].append(torch.log_softmax(logits, -1))
        result["margins"].append((top2[:, 0] - top2[:, 1]).tolist())
        result["hidden"].append([h[0].float() for h in forward.hidden_states])
    return result


def blocks_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    return next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))


def float64_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      slopes: torch.Tensor | None) -> torch.Tensor:
    """Causal attention of one whole sequence ([T, H, D]) in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    n = q.shape[0]
    pos = torch.arange(n, device=q.device)
    if slopes is not None:
        scores = scores + slopes.double()[:, None, None] * (pos[None, None, :] - pos[None, :, None])
    scores = scores.masked_fill(pos[None, None, :] > pos[None, :, None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v)


def octavo_side(model_dir: Path, prompts: list[list[int]], trajectories: list[list[int]], device: str) -> dict:
    """Everything measured on octavo's side; the oracle's tensors are compared by the parent."""
    from octavo import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="float32", device=device, num_gpu_blocks_override=256, max_num_seqs=8,
              enforce_eager=True, enable_prefix_caching=False, max_num_batched_tokens=4096)
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    generated = [o.outputs[0].token_ids for o in
                 llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)]

    model = llm.llm_engine.model_runner.model
    captured: dict = {"blocks": {}, "attention": {}}
    hooks = []
    for i, block in enumerate(blocks_of(model)):
        hooks.append(block.register_forward_hook(
            lambda mod, args, out, i=i: captured["blocks"].__setitem__(i, out.detach().float().cpu())))
        attn = next(m for m in block.modules() if type(m).__name__ == "PagedAttention")

        def on_attention(mod, args, out, i=i):
            q, k, v, _meta = args
            captured["attention"][i] = {"q": q.detach().clone(), "k": k.detach().clone(), "v": v.detach().clone(),
                                        "out": out.detach().clone(), "scale": mod.scale,
                                        "slopes": None if mod.alibi_slopes is None else mod.alibi_slopes.clone()}
        hooks.append(attn.register_forward_hook(on_attention))
    per_trajectory = []
    for trajectory in trajectories:
        captured["blocks"].clear()
        captured["attention"].clear()
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, ignore_eos=True)
        out = llm.generate([{"prompt_token_ids": trajectory}], params, use_tqdm=False)[0]
        # prompt_logprobs[p] holds the logprob of trajectory[p] (None at p = 0).
        chosen = [None if entry is None else entry[trajectory[p]].logprob
                  for p, entry in enumerate(out.prompt_logprobs)]
        attention = {}
        for i, a in captured["attention"].items():
            exact = float64_attention(a["q"], a["k"], a["v"], a["scale"], a["slopes"])
            got = a["out"].double().reshape(exact.shape)
            attention[i] = float((got - exact).norm() / exact.norm())
        per_trajectory.append({"chosen_logprobs": chosen, "blocks": dict(captured["blocks"]),
                               "attention_rel_err": attention})
    for hook in hooks:
        hook.remove()
    return {"generated": generated, "per_trajectory": per_trajectory}


def child_main(args) -> int:
    payload = torch.load(args.child, weights_only=False)
    result = octavo_side(Path(payload["model_dir"]), payload["prompts"], payload["trajectories"], payload["device"])
    torch.save(result, args.child + ".out")
    return 0


def compare(side: dict, ref: dict, prompts: list[list[int]]) -> list[dict]:
    rows = []
    for n, (ids, got, want) in enumerate(zip(prompts, side["generated"], ref["tokens"])):
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        traj = side["per_trajectory"][n]
        start = len(ids)
        chosen = torch.tensor(traj["chosen_logprobs"][start:])
        want_lp = ref["logprobs"][n][torch.arange(len(want)), torch.tensor(want)]
        hidden = ref["hidden"][n]
        block_err = {}
        for i, out in traj["blocks"].items():
            if i + 1 < len(hidden) - 1:  # transformers' last hidden state has the final norm applied
                block_err[i] = float((out - hidden[i + 1]).norm() / hidden[i + 1].norm())
        rows.append({
            "prompt_len": len(ids),
            "first_diff_generated_index": first,
            "oracle_margin_at_first_diff": None if first is None else ref["margins"][n][first],
            "oracle_min_margin": min(ref["margins"][n]),
            "teacher_forced_max_abs_logprob_err": float((chosen - want_lp).abs().max()),
            "block_rel_err": block_err,
            "attention_rel_err_vs_float64": traj["attention_rel_err"],
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="gpt2")
    parser.add_argument("--out", default=".")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    from family_checkpoints import build_family_checkpoint

    torch.backends.cuda.matmul.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="diag_"))
    model_dir = build_family_checkpoint(work, args.family)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = prompts_for(vocab)
    ref = oracle(model_dir, prompts)
    trajectories = [p + t for p, t in zip(prompts, ref["tokens"])]
    report = {"family": args.family, "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "variants": {}}
    for variant, env in (("triton", {}), ("torch_reference", {"OCTAVO_DISABLE_TRITON": "1"})):
        payload = work / f"{variant}.pt"
        torch.save({"model_dir": str(model_dir), "prompts": prompts, "trajectories": trajectories,
                    "device": args.device}, payload)
        subprocess.run([sys.executable, __file__, "--child", str(payload)], check=True,
                       env={**os.environ, **env}, timeout=900)
        side = torch.load(str(payload) + ".out", weights_only=False)
        report["variants"][variant] = compare(side, ref, prompts)
        for row in report["variants"][variant]:
            print(variant, json.dumps(row), flush=True)
    (out / f"token_exact_diag_{args.family}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
