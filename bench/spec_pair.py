"""A speculative pair whose agreement is set by one number, for benchmarks that must state it.

Construction, from a target config with L decoder layers, a draft depth D < L, a scale s and a
seed:

  1. The target's weights: octavo's dummy initialiser from the seed (load_format="dummy":
     normal(0, 0.02), norms 1, biases 0), or an existing checkpoint's.
  2. The draft has the target's config with num_hidden_layers = D. Its token embedding, its
     decoder layers 0..D-1, its final norm and its LM head are exact copies of the target's.
  3. In the target, each later layer i >= D has the two projections through which it writes into
     the residual stream, self_attn.o_proj and mlp.down_proj (weights and biases), multiplied
     by s.

With s = 0 the later layers add exactly zero: the target computes the draft's function and every
draft token is accepted. As s grows the later layers pull the target away from the draft and
acceptance falls; `measure_acceptance` states the rate a benchmark ran at. The target keeps its
full shapes, so its cost per token is that of the real model; only its function changes. The
draft's cost relative to the target's is about (D layers + LM head) / (L layers + LM head).

Use on the GPU (dummy weights, nothing downloaded):

    llm = build_controlled_llm("llama-3.1-8b", draft_layers=2, later_layer_scale=0.3,
                               num_speculative_tokens=4, workdir="/tmp/pair", seed=0)
    print(measure_acceptance(llm))

On the CPU the tests use `write_controlled_checkpoints`, the same construction applied to a
saved checkpoint. Run as a script for a quick measurement:

    python bench/spec_pair.py --config llama-3.1-8b --draft-layers 2 --scale 0.3 --k 4
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_WRITES_RESIDUAL = (".self_attn.o_proj.", ".mlp.down_proj.")


# ---- the construction, on parameter names shared by octavo's and transformers' Llama --------
def layer_index(name: str) -> int | None:
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


def is_draft_parameter(name: str, draft_layers: int) -> bool:
    """Everything but the decoder layers past the draft's depth."""
    index = layer_index(name)
    return index is None or index < draft_layers


def is_scaled_parameter(name: str, draft_layers: int) -> bool:
    index = layer_index(name)
    return index is not None and index >= draft_layers and any(p in name for p in _WRITES_RESIDUAL)


def controlled_state_dicts(target_state: dict[str, torch.Tensor], draft_layers: int,
                           later_layer_scale: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(target, draft) state dicts from a target's: the draft takes copies of the shared part,
    the target's later output projections are scaled."""
    target = {name: (t * later_layer_scale if is_scaled_parameter(name, draft_layers) else t.clone())
              for name, t in target_state.items()}
    draft = {name: t.clone() for name, t in target_state.items() if is_draft_parameter(name, draft_layers)}
    return target, draft


@torch.no_grad()
def make_controlled_agreement(target: torch.nn.Module, draft: torch.nn.Module, later_layer_scale: float) -> None:
    """Apply the construction in place to two live models (e.g. an engine's, built with dummy
    weights): copy the shared parameters into the draft, scale the target's later projections.
    Do it before any request runs: cached K/V would be stale."""
    copy_shared_parameters(target, draft)
    for name, param in target.named_parameters():
        if is_scaled_parameter(name, _num_layers(draft)):
            param.mul_(later_layer_scale)


@torch.no_grad()
def copy_shared_parameters(target: torch.nn.Module, draft: torch.nn.Module) -> None:
    draft_layers = _num_layers(draft)
    if draft_layers >= _num_layers(target):
        raise ValueError(f"the draft needs fewer layers than the target ({draft_layers} >= {_num_layers(target)})")
    target_params = dict(target.named_parameters())
    for name, param in draft.named_parameters():
        if name not in target_params or target_params[name].shape != param.shape:
            raise ValueError(f"draft parameter {name} has no twin of the same shape in the target: "
                             "the draft must be the target's config with fewer layers")
        param.copy_(target_params[name])


class ControlledPair:
    """An engine's target and draft made into a controlled pair, whose scale can be changed
    between runs: the target's unscaled later projections are kept (on the CPU) so that every
    scale is applied to the same original weights."""

    def __init__(self, llm, later_layer_scale: float) -> None:
        engine = llm.llm_engine
        self.llm = llm
        self.target = engine.model_runner.model
        self.draft = engine.spec_decoder.draft_runner.model
        self.draft_layers = _num_layers(self.draft)
        copy_shared_parameters(self.target, self.draft)
        self.originals = {name: param.detach().to("cpu", copy=True) for name, param in self.target.named_parameters()
                          if is_scaled_parameter(name, self.draft_layers)}
        self.scale = 1.0
        self.set_scale(later_layer_scale)

    @torch.no_grad()
    def set_scale(self, later_layer_scale: float) -> None:
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("change the scale between runs, not while requests are in flight")
        params = dict(self.target.named_parameters())
        for name, original in self.originals.items():
            params[name].copy_(original.to(params[name].device) * later_layer_scale)
        # The target's cached prefixes were computed by the old weights.
        kv = engine.kv_cache
        kv.cached_blocks.clear()
        kv.block_hash = [None] * kv.num_blocks
        self.scale = later_layer_scale


def _num_layers(model: torch.nn.Module) -> int:
    return len({layer_index(n) for n, _ in model.named_parameters() if layer_index(n) is not None})


# ---- directories -----------------------------------------------------------------------------
def load_config(config: str | Path | dict) -> dict[str, Any]:
    """A config dict from a dict, a config.json path, a model directory or a bench/configs name."""
    if isinstance(config, dict):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    elif not path.exists():
        path = CONFIG_DIR / f"{config}.json"
    return json.loads(path.read_text())


def write_pair_dirs(config: str | Path | dict, out_dir: str | Path, draft_layers: int,
                    tokenizer_dir: str | Path | None = None) -> tuple[Path, Path]:
    """target/ and draft/ directories holding config.json (and the tokenizer's files, when
    tokenizer_dir has them): enough for load_format="dummy"."""
    target_config = load_config(config)
    layers = int(target_config["num_hidden_layers"])
    if not 1 <= draft_layers < layers:
        raise ValueError(f"draft_layers must be in 1..{layers - 1}, got {draft_layers}")
    out = Path(out_dir)
    target_dir, draft_dir = out / "target", out / "draft"
    draft_config = {**target_config, "num_hidden_layers": draft_layers}
    for directory, cfg in ((target_dir, target_config), (draft_dir, draft_config)):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(cfg, indent=2))
        if tokenizer_dir is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_dir) / name).is_file():
                    shutil.copy(Path(tokenizer_dir) / name, directory / name)
    return target_dir, draft_dir


def write_controlled_checkpoints(target_dir: str | Path, out_dir: str | Path, draft_layers: int,
                                 later_layer_scale: float) -> tuple[Path, Path]:
    """The construction applied to a saved safetensors checkpoint: writes out_dir/target and
    out_dir/draft (weights, config, tokenizer). Small models only: everything is read into memory."""
    from safetensors.torch import load_file, save_file

    target_dir = Path(target_dir)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(target_dir.glob("*.safetensors")):
        state.update(load_file(str(file)))
    target_state, draft_state = controlled_state_dicts(state, draft_layers, later_layer_scale)
    new_target, new_draft = write_pair_dirs(target_dir, out_dir, draft_layers, tokenizer_dir=target_dir)
    save_file({k: v.contiguous() for k, v in target_state.items()}, str(new_target / "model.safetensors"),
              metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in draft_state.items()}, str(new_draft / "model.safetensors"),
              metadata={"format": "pt"})
    return new_target, new_draft


# ---- engines and measurements ----------------------------------------------------------------
def build_controlled_llm(config: str | Path | dict, draft_layers: int, later_layer_scale: float,
                         num_speculative_tokens: int, workdir: str | Path, seed: int = 0,
                         adaptive: bool = False, **llm_kwargs: Any) -> ControlledPair:
    """An LLM with dummy weights for both models, made into a controlled pair in place (the
    pair's `.llm`). adaptive=False pins k at num_speculative_tokens, as an agreement
    measurement wants."""
    from octavo import LLM

    target_dir, draft_dir = write_pair_dirs(config, workdir, draft_layers)
    llm = LLM(str(target_dir), speculative_model=str(draft_dir), num_speculative_tokens=num_speculative_tokens,
              load_format="dummy", seed=seed, **llm_kwargs)
    llm.llm_engine.spec_decoder.adaptive = adaptive
    return ControlledPair(llm, later_layer_scale)


def random_prompts(vocab: int, num_prompts: int, prompt_len: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"prompt_token_ids": torch.randint(0, vocab, (prompt_len,), generator=generator).tolist()}
            for _ in range(num_prompts)]


def measure_acceptance(llm, num_prompts: int = 8, prompt_len: int = 32, max_tokens: int = 64,
                       temperature: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Run random-token prompts and report the per-token acceptance rate and the tokens emitted
    per verification step, from the engine's counters (this run's share of them)."""
    from octavo import SamplingParams

    engine = llm.llm_engine
    prompts = random_prompts(engine.config.model_config.vocab_size, num_prompts, prompt_len, seed)
    stats = engine.stats
    before = (stats.spec_draft_tokens, stats.spec_accepted_tokens, stats.spec_emitted_tokens)
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True, seed=seed,
                            detokenize=False)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    drafted = stats.spec_draft_tokens - before[0]
    accepted = stats.spec_accepted_tokens - before[1]
    emitted = stats.spec_emitted_tokens - before[2]
    steps = sum(o.metrics.spec_num_steps for o in outputs if o.metrics is not None)
    return {
        "temperature": temperature,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else float("nan"),
        "tokens_per_verification": emitted / steps if steps else float("nan"),
    }


def decode_throughput(llm, batch_size: int, k: int | None, prompt_len: int = 128, max_tokens: int = 128,
                      temperature: float = 0.0, seed: int = 0) -> dict[str, float]:
    """Output tokens per second for one batch of `batch_size` requests run to completion.
    k = None: adaptive k (up to the configured maximum); k = 0: plain decoding; else k fixed."""
    import time

    from octavo import SamplingParams

    engine = llm.llm_engine
    spec = engine.spec_decoder
    saved = spec.adaptive, spec.k_max
    spec.adaptive = k is None
    spec.k_max = saved[1] if k is None else k
    prompts = random_prompts(engine.config.model_config.vocab_size, batch_size, prompt_len, seed)
    params = SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=True, seed=seed,
                            detokenize=False)
    before = engine.stats.spec_draft_tokens, engine.stats.spec_accepted_tokens
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        spec.adaptive, spec.k_max = saved
    drafted = engine.stats.spec_draft_tokens - before[0]
    accepted = engine.stats.spec_accepted_tokens - before[1]
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"batch_size": batch_size, "k": "adaptive" if k is None else k, "output_tokens_per_s": tokens / elapsed,
            "seconds": elapsed, "acceptance_rate": accepted / drafted if drafted else None, "drafted": drafted}


class StepBreakdown:
    """Wall time per engine step split into drafting (propose), the target's step (schedule,
    verification forward, rejection sampling) and the rest, with the device synchronised at each
    boundary (the engine syncs once per step anyway, when it reads the sampled tokens back)."""

    def __init__(self, llm) -> None:
        import time

        self.clock = time.perf_counter
        self.engine = llm.llm_engine
        self.totals = {"propose": 0.0, "execute": 0.0, "step": 0.0}
        self.steps = 0
        spec, engine = self.engine.spec_decoder, self.engine
        self._originals = (spec.propose, engine._execute, engine.step)
        spec.propose = self._timed("propose", spec.propose)
        engine._execute = self._timed("execute", engine._execute)
        engine.step = self._timed("step", engine.step, count=True)

    def _timed(self, name, fn, count=False):
        def wrapper(*args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.totals[name] += self.clock() - start
                self.steps += count
        return wrapper

    def close(self) -> dict[str, float]:
        spec, engine = self.engine.spec_decoder, self.engine
        spec.propose, engine._execute, engine.step = self._originals
        steps = max(self.steps, 1)
        ms = {f"{name}_ms_per_step": 1e3 * value / steps for name, value in self.totals.items()}
        ms["other_ms_per_step"] = ms["step_ms_per_step"] - ms["propose_ms_per_step"] - ms["execute_ms_per_step"]
        return {"steps": self.steps, **ms}


class Annotated:
    """The engine's phases as named profiler ranges, patched on the instances only while a
    profile runs (a range costs microseconds; serving never pays for it)."""

    def __init__(self, llm) -> None:
        engine = llm.llm_engine
        spec = engine.spec_decoder
        self.patched = [(engine, "step", "octavo.step"), (engine.scheduler, "schedule", "octavo.schedule"),
                        (spec, "propose", "octavo.draft"), (spec.draft_runner, "execute", "octavo.draft_forward"),
                        (engine.model_runner, "execute", "octavo.target_forward"),
                        (spec, "_verify", "octavo.verify_sample"), (engine.model_runner, "sample", "octavo.sample"),
                        (spec, "after_step", "octavo.after_step"), (engine.model_runner, "prepare", "octavo.prepare"),
                        (spec.draft_runner, "prepare", "octavo.prepare")]
        self.saved = []
        for obj, name, label in self.patched:
            original = getattr(obj, name)
            self.saved.append((obj, name, obj.__dict__.get(name)))
            setattr(obj, name, self._ranged(original, label))

    @staticmethod
    def _ranged(fn, label):
        def wrapper(*args, **kwargs):
            with torch.profiler.record_function(label):
                return fn(*args, **kwargs)
        return wrapper

    def close(self) -> None:
        for obj, name, own in reversed(self.saved):
            if own is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, own)


def profile_steps(llm, batch_size: int, k: int | None, out_dir: Path, label: str, max_tokens: int = 48,
                  seed: int = 0) -> dict[str, Any]:
    """One batch run under torch.profiler: wall time per engine step against the GPU's busy time
    (kernels and copies), the engine's phases (host time), and the top kernels and host ops,
    written as text tables to out_dir/<label>-*.txt."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    steps = [0]
    engine = llm.llm_engine
    step = engine.step

    def counted(*args, **kwargs):
        steps[0] += 1
        return step(*args, **kwargs)

    engine.step = counted
    annotated = Annotated(llm)
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run = decode_throughput(llm, batch_size, k, max_tokens=max_tokens, seed=seed)
    finally:
        annotated.close()
        del engine.step
    averages = prof.key_averages()
    n = max(steps[0], 1)
    # Kernels and copies are events of their own on the device (a CPU op's device total repeats them).
    # (the octavo.* ranges also appear on the device, as spans: not counted either).
    busy_us = sum(e.self_device_time_total for e in averages
                  if e.device_type == DeviceType.CUDA and not e.key.startswith("octavo."))
    phases: dict[str, dict[str, float]] = {}
    for event in prof.events():  # host spans of the ranges (their device twins are spans too)
        if event.name.startswith("octavo.") and event.device_type == DeviceType.CPU:
            phase = phases.setdefault(event.name, {"calls_per_step": 0.0, "host_ms_per_step": 0.0})
            phase["calls_per_step"] += 1 / n
            phase["host_ms_per_step"] += event.time_range.elapsed_us() / n / 1e3
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{label}-device.txt").write_text(averages.table(sort_by="self_device_time_total", row_limit=30))
    (out_dir / f"{label}-host.txt").write_text(averages.table(sort_by="self_cpu_time_total", row_limit=30))
    wall_ms = 1e3 * run["seconds"] / n
    return {"label": label, "batch_size": batch_size, "k": run["k"], "steps": steps[0],
            "wall_ms_per_step": wall_ms, "gpu_busy_ms_per_step": busy_us / n / 1e3,
            "gpu_idle_fraction": 1.0 - busy_us / n / 1e3 / wall_ms, "output_tokens_per_s": run["output_tokens_per_s"],
            "acceptance_rate": run["acceptance_rate"], "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="llama-3.1-8b", help="bench/configs name, config.json or model dir")
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--scale", type=float, nargs="+", default=[0.0, 0.3, 1.0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--workdir", default="/tmp/octavo-spec-pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--throughput", type=int, nargs="*", default=[],
                        help="batch sizes at which to time plain, fixed-k and adaptive decoding")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--profile", metavar="DIR",
                        help="profile plain, k and adaptive decoding per throughput point (the k run with the "
                             "draft chained on the device and with each proposal read back); tables in DIR")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each step's parts (drafting, verification, the rest) per throughput point")
    args = parser.parse_args()
    pair = build_controlled_llm(args.config, args.draft_layers, args.scale[0], args.k, args.workdir, seed=args.seed,
                                max_model_len=args.max_model_len, dtype=args.dtype, max_num_seqs=256)

    def emit(record: dict) -> None:
        line = json.dumps({"config": str(args.config), "draft_layers": args.draft_layers, "scale": pair.scale,
                           **record})
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    for batch_size in args.throughput:  # compile and autotune every shape before timing anything
        for k in (0, args.k):
            decode_throughput(pair.llm, batch_size, k, max_tokens=16, seed=args.seed)
    pair.llm.llm_engine.spec_decoder.set_cost_model(pair.llm.llm_engine.spec_decoder.cost)
    for scale in args.scale:
        pair.set_scale(scale)
        for temperature in (0.0, 1.0):
            emit({"k": args.k, **measure_acceptance(pair.llm, temperature=temperature, seed=args.seed)})
        for batch_size in args.throughput:
            for k in (0, args.k, None):
                emit(decode_throughput(pair.llm, batch_size, k, seed=args.seed))
                if args.profile:
                    spec = pair.llm.llm_engine.spec_decoder
                    for on_device in ((True, False) if k else (True,)):
                        spec.draft_on_device = on_device
                        label = (f"s{pair.scale:g}-b{batch_size}-k{'adaptive' if k is None else k}"
                                 + ("" if k == 0 else "-chained" if on_device else "-readback"))
                        emit({"profile": profile_steps(pair.llm, batch_size, k, Path(args.profile), label,
                                                       seed=args.seed)})
                    spec.draft_on_device = True
                if args.breakdown:
                    timer = StepBreakdown(pair.llm)
                    try:
                        decode_throughput(pair.llm, batch_size, k, seed=args.seed, max_tokens=64)
                    finally:
                        emit({"batch_size": batch_size, "k": "adaptive" if k is None else k,
                              "breakdown": timer.close()})


if __name__ == "__main__":
    main()
