"""The target/draft pairs `octavo bench spec` serves: demo (the shipped pair on its held-out plays,
held-out-shakespeare.txt) and controlled, a pair whose agreement is set by one number.

The controlled pair, from a target config of L layers, a draft depth D and a scale s: dummy weights;
the draft is the target's first D layers, token embedding, final norm and LM head (copies); in the
target each later layer's o_proj and down_proj (what writes the residual stream) are multiplied by
s. s = 0 makes the target compute the draft's function; acceptance falls steeply as s grows, while a
token costs what the real model's does. s is calibrated to a target acceptance unless given, and the
pair is exported as safetensors checkpoints with a synthetic tokenizer, in a child process
(`python -m octavo.bench.pairs`) so the parent, which launches servers next, holds no device memory.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("octavo")

HELD_OUT_TEXT = Path(__file__).resolve().parent / "held-out-shakespeare.txt"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_WRITES_RESIDUAL = (".self_attn.o_proj.", ".mlp.down_proj.")


# ---- the construction, on parameter names shared by octavo's and transformers' Llama ------------
def layer_index(name: str) -> int | None:
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


def is_scaled_parameter(name: str, draft_layers: int) -> bool:
    index = layer_index(name)
    return index is not None and index >= draft_layers and any(p in name for p in _WRITES_RESIDUAL)


def controlled_state_dicts(target_state: dict, draft_layers: int, scale: float) -> tuple[dict, dict]:
    """(target, draft) state dicts from a target's: the draft copies the shared part, the target's
    later output projections are scaled."""
    target = {name: t * scale if is_scaled_parameter(name, draft_layers) else t.clone()
              for name, t in target_state.items()}
    draft = {name: t.clone() for name, t in target_state.items()
             if layer_index(name) is None or layer_index(name) < draft_layers}
    return target, draft


def write_pair_dirs(config: dict, out: Path, draft_layers: int) -> tuple[Path, Path]:
    """out/target and out/draft holding config.json: enough for load_format="dummy"."""
    layers = int(config["num_hidden_layers"])
    if not 1 <= draft_layers < layers:
        raise ValueError(f"the draft's depth must be in 1..{layers - 1}, got {draft_layers}")
    dirs = (Path(out) / "target", Path(out) / "draft")
    for directory, layer_count in zip(dirs, (layers, draft_layers)):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layer_count}, indent=2))
    return dirs


def engine_models(llm: Any) -> tuple[Any, Any]:
    """(target, draft) modules of a speculative engine: the one place that reaches inside it."""
    engine = llm.llm_engine
    return engine.model_runner.model, engine.proposer.runner.model


class ControlledPair:
    """An engine's target and draft made into a controlled pair whose scale can change between
    runs: the target's unscaled later projections are kept (on the CPU) so that every scale applies
    to the same original weights. Build the engine without prefix caching (build_controlled_llm
    does): the target's cached K/V would outlive a change of scale."""

    def __init__(self, llm: Any, scale: float) -> None:
        import torch

        self.llm = llm
        self.target, self.draft = engine_models(llm)
        self.draft_layers = len({layer_index(n) for n, _ in self.draft.named_parameters()} - {None})
        draft_params = dict(self.draft.named_parameters())
        with torch.no_grad():
            for name, param in self.target.named_parameters():
                if name in draft_params:
                    draft_params[name].copy_(param)
        self.originals = {name: p.detach().to("cpu", copy=True) for name, p in self.target.named_parameters()
                          if is_scaled_parameter(name, self.draft_layers)}
        self.set_scale(scale)

    def set_scale(self, scale: float) -> None:
        import torch

        if self.llm.llm_engine.has_unfinished_requests():
            raise RuntimeError("change the scale between runs, not while requests are in flight")
        params = dict(self.target.named_parameters())
        with torch.no_grad():
            for name, original in self.originals.items():
                params[name].copy_(original.to(params[name].device) * scale)
        self.scale = scale


def build_controlled_llm(config: dict, draft_layers: int, scale: float, num_speculative_tokens: int, workdir: Path,
                         seed: int = 0, adaptive: bool = False, **llm_kwargs: Any) -> ControlledPair:
    """An LLM of dummy weights for both models, made into a controlled pair in place (`.llm`).
    adaptive=False pins k at num_speculative_tokens, as a measurement of agreement wants."""
    from octavo import LLM

    target_dir, draft_dir = write_pair_dirs(config, Path(workdir), draft_layers)
    speculative = {"model": str(draft_dir), "num_speculative_tokens": num_speculative_tokens, "adaptive": adaptive}
    llm = LLM(str(target_dir), speculative_config=speculative, load_format="dummy", seed=seed,
              enable_prefix_caching=False, **llm_kwargs)
    return ControlledPair(llm, scale)


def measure_acceptance(llm: Any, num_prompts: int = 8, prompt_len: int = 32, max_tokens: int = 64,
                       temperature: float = 0.0, seed: int = 0) -> dict:
    """Random-token prompts through the engine: the acceptance rate (accepted / drafted) and the
    tokens each verified request-step emitted, from the engine's counters over this run."""
    from octavo import SamplingParams
    from octavo.bench.workload import random_requests

    engine = llm.llm_engine
    names = ("spec_draft_tokens", "spec_accepted_tokens", "spec_emitted_tokens")
    before = [getattr(engine.stats, name) for name in names]
    requests = random_requests(num_prompts, (prompt_len, prompt_len), (max_tokens, max_tokens),
                               engine.config.model_config.vocab_size, seed)
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True, seed=seed,
                            detokenize=False)
    llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in requests], params, use_tqdm=False)
    drafted, accepted, emitted = (getattr(engine.stats, name) - then for name, then in zip(names, before))
    return {"temperature": temperature, "drafted": drafted, "accepted": accepted,
            "acceptance_rate": accepted / drafted if drafted else math.nan,
            "tokens_per_verification": emitted / (emitted - accepted) if emitted > accepted else math.nan}


def find_scale(measure: Callable[[float], float], target: float, tolerance: float = 0.03, high: float = 0.1,
               max_evals: int = 7) -> tuple[float, list[dict]]:
    """The scale s whose acceptance is closest to `target`, by bracketing.

    measure(s) -> acceptance, falling with s (s = 0 is taken as 1 without measuring). The bracket
    [0, high] is widened (x4) until measure(high) <= target, then shrunk by linear interpolation of
    acceptance in s, kept inside the bracket's middle 80% so it always shrinks (regula falsi), until
    a measurement is within `tolerance` of the target or `max_evals` are spent."""
    evaluations: list[dict] = []

    def run(scale: float) -> float:
        value = measure(scale)
        value = 0.0 if value is None or not math.isfinite(value) else float(value)
        evaluations.append({"scale": scale, "acceptance_rate": value})
        logger.info("calibration: s = %.5f -> acceptance %.3f", scale, value)
        return value

    def closest() -> dict:
        return min(evaluations, key=lambda e: abs(e["acceptance_rate"] - target))

    low, a_low = 0.0, 1.0
    a_high = run(high)
    while a_high > target and len(evaluations) < max_evals:
        low, a_low, high = high, a_high, high * 4
        a_high = run(high)
    while len(evaluations) < max_evals and abs(closest()["acceptance_rate"] - target) > tolerance:
        fraction = (a_low - target) / (a_low - a_high) if a_low > a_high else 0.5
        scale = low + min(max(fraction, 0.1), 0.9) * (high - low)
        value = run(scale)
        if value > target:
            low, a_low = scale, value
        else:
            high, a_high = scale, value
    return closest()["scale"], evaluations


# ---- checkpoints ------------------------------------------------------------------------------------
def hf_state(model: Any, vocab_size: int):
    """(name, tensor) in Hugging Face Llama names from an octavo Llama (tensor parallel size 1): the
    fused qkv_proj and gate_up_proj split back into q/k/v_proj and gate/up_proj."""
    for name, param in model.named_parameters():
        tensor = param.detach()
        if ".qkv_proj." in name:
            attention = model.get_submodule(name.split(".qkv_proj.")[0])
            parts = tensor.split([attention.q_size, attention.kv_size, attention.kv_size], dim=0)
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), parts):
                yield name.replace("qkv_proj", part), piece
        elif ".gate_up_proj." in name:
            gate, up = tensor.chunk(2, dim=0)
            yield name.replace("gate_up_proj", "gate_proj"), gate
            yield name.replace("gate_up_proj", "up_proj"), up
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            yield name, tensor[:vocab_size]
        else:
            yield name, tensor


def save_checkpoint(model: Any, config: dict, directory: Path, max_shard_bytes: int = 4 << 30) -> int:
    """The model's weights as safetensors shards with model.safetensors.index.json, written one
    shard at a time (host memory holds one). Returns the bytes written."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    shard: dict = {}
    size = total = 0

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
            shard, size = {}, 0

    for name, tensor in hf_state(model, int(config["vocab_size"])):
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
        shard[name] = tensor.to("cpu", copy=True).contiguous()  # its own storage (q/k/v are views of one)
        size += nbytes
        total += nbytes
    flush()
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return total


def streamed_bytes(model: Any) -> int:
    """Parameter bytes a decode forward reads in full: all but the embedding table (a forward
    gathers a few rows of it), plus the LM head."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n
               ) + (model.lm_head.weight.numel() * model.lm_head.weight.element_size()
                    if "lm_head.weight" not in dict(model.named_parameters()) else 0)


def bandwidth_ceiling(acceptance: float | None, weight_ratio: float, k_max: int) -> dict | None:
    """The best speed-up at batch 1 when every forward costs its streamed weights and nothing else:
    max over k <= k_max of (1 + a + ... + a^k) / (1 + k x draft/target weights). Host work, launches
    and the verification's extra tokens only lower it."""
    if acceptance is None or not math.isfinite(acceptance):
        return None
    a = min(max(acceptance, 0.0), 1.0)

    def gain(k: int) -> float:
        tokens = k + 1.0 if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)
        return tokens / (1 + k * weight_ratio)

    best = max(range(1, k_max + 1), key=gain)
    return {"acceptance": acceptance, "k": best, "speedup": gain(best)}


# ---- calibration and export (the child process) -----------------------------------------------------
def load_config(name_or_path: str) -> dict:
    from octavo.bench.models import config_file

    return json.loads(config_file(name_or_path).read_text())


def calibrate_and_export(request: dict, workdir: Path) -> dict:
    """Build the controlled pair in one engine (dummy weights), find s unless given, measure it,
    write target and draft checkpoints under workdir/checkpoints and what was done to
    workdir/pair.json."""
    import torch

    from octavo.bench.models import release, write_synthetic_tokenizer

    started = time.monotonic()
    config = load_config(request["config"])
    k, prompts, length = request["k"], request["prompts"], request["prompt_len"] + request["output_len"]
    engine = {"dtype": request["dtype"], "device": request["device"], "max_model_len": length + k + 16,
              "enforce_eager": True, "max_num_seqs": max(prompts, 8)}
    if torch.cuda.is_available() and request["device"] in ("auto", "cuda"):
        engine["num_gpu_blocks_override"] = max(256, 2 * prompts * ((length + k) // 16 + 3))
    pair = build_controlled_llm(config, request["draft_layers"], request["scale"] or request["scale_high"], k,
                                workdir / "engine", seed=request["seed"], **engine)
    built = time.monotonic() - started

    def measure(scale: float, temperature: float = 0.0) -> dict:
        pair.set_scale(scale)
        return measure_acceptance(pair.llm, prompts, request["prompt_len"], request["output_len"], temperature,
                                  request["seed"])

    if request["scale"] is None:
        scale, evaluations = find_scale(lambda s: measure(s)["acceptance_rate"], request["target_acceptance"],
                                        request["tolerance"], request["scale_high"], request["max_evals"])
    else:
        scale, evaluations = request["scale"], []
    final = {"greedy": measure(scale, 0.0), "temperature_1": measure(scale, 1.0)}
    pair.set_scale(scale)
    weight_ratio = streamed_bytes(pair.draft) / streamed_bytes(pair.target)
    measured = time.monotonic() - started - built

    out = workdir / "checkpoints"
    shutil.rmtree(out, ignore_errors=True)
    target_dir, draft_dir = write_pair_dirs(config, out, request["draft_layers"])
    need = sum(p.numel() * p.element_size() for m in (pair.target, pair.draft) for p in m.parameters())
    if shutil.disk_usage(out).free < need * 1.1:
        raise RuntimeError(f"{out} has {shutil.disk_usage(out).free / 1e9:.1f} GB free; the pair needs "
                           f"{need / 1e9:.1f} GB (give a --controlled-workdir on a larger disk)")
    written = save_checkpoint(pair.target, config, target_dir)
    written += save_checkpoint(pair.draft, {**config, "num_hidden_layers": request["draft_layers"]}, draft_dir)
    write_synthetic_tokenizer(str(target_dir), int(config["vocab_size"]), config.get("eos_token_id"))
    for file in target_dir.glob("*token*"):
        shutil.copy(file, draft_dir / file.name)
    result = {
        "request": request, "num_layers": int(config["num_hidden_layers"]), "scale": scale,
        "evaluations": evaluations, "measured_at_scale": final, "engine": engine, "draft_weight_ratio": weight_ratio,
        "bandwidth_ceiling": bandwidth_ceiling(final["greedy"]["acceptance_rate"], weight_ratio, k),
        "target_dir": str(target_dir), "draft_dir": str(draft_dir), "bytes_written": written,
        "seconds": {"build": built, "measure": measured, "export": time.monotonic() - started - built - measured},
    }
    (workdir / "pair.json").write_text(json.dumps(result, indent=1, default=str))
    del pair
    release()
    return result


def controlled_pair(request: dict, workdir: Path, timeout_s: float, env: dict | None = None) -> dict:
    """The controlled pair asked for: the one in workdir when it was made from the same request,
    else calibrated and exported by a child process (under `env`, within timeout_s)."""
    done = workdir / "pair.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("request") == request and Path(previous["draft_dir"], "config.json").is_file():
            logger.info("controlled pair: reusing %s (s = %.5g)", workdir, previous["scale"])
            return {**previous, "reused": True}
        done.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-P", "-m", "octavo.bench.pairs", json.dumps(request), str(workdir)]
    logger.info("calibrating and exporting the controlled pair in %s", workdir)
    subprocess.run(command, check=True, timeout=timeout_s, env=env)
    return json.loads(done.read_text())


def construction_text(pair: dict) -> str:
    """How the controlled pair was built and what it measured, in a paragraph for the report."""
    request, layers, scale = pair["request"], pair["num_layers"], pair["scale"]
    depth, greedy = request["draft_layers"], pair["measured_at_scale"]["greedy"]
    how = (f"calibrated to greedy acceptance {request['target_acceptance']} +- {request['tolerance']} over "
           f"{len(pair['evaluations'])} measurements (" + ", ".join(
               f"s = {e['scale']:.4g}: {e['acceptance_rate']:.3f}" for e in pair["evaluations"]) + ")"
           if request["scale"] is None else "given")
    ceiling = pair.get("bandwidth_ceiling")
    return (f"{request['config']} config, octavo's dummy weights (normal(0, 0.02), norms 1, seed "
            f"{request['seed']}). Draft: the target's config with {depth} of its {layers} layers; its token "
            f"embedding, layers 0..{depth - 1}, final norm and LM head are exact copies of the target's. Target: each "
            f"layer {depth}..{layers - 1} has self_attn.o_proj and mlp.down_proj multiplied by s = {scale:.5g} "
            f"({how}). At that s, in process with k = {request['k']} fixed on {request['prompts']} random-token "
            f"prompts of {request['prompt_len']} tokens, {request['output_len']} generated: acceptance "
            f"{greedy['acceptance_rate']:.3f} greedy ({greedy['tokens_per_verification']:.2f} tokens per "
            f"verification), {pair['measured_at_scale']['temperature_1']['acceptance_rate']:.3f} at temperature 1. "
            "Served from safetensors checkpoints (Hugging Face names) with a synthetic word-level tokenizer."
            + (f" The draft streams {pair['draft_weight_ratio']:.3f}x the target's weight bytes per forward, so at "
               f"this acceptance even a purely bandwidth-bound engine gains at most {ceiling['speedup']:.2f}x at "
               f"concurrency 1 (k = {ceiling['k']})." if ceiling else ""))


if __name__ == "__main__":  # the child of controlled_pair: python -m octavo.bench.pairs REQUEST_JSON WORKDIR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    calibrate_and_export(json.loads(sys.argv[1]), Path(sys.argv[2]))
