"""Speculative serving sweep (PROTOCOL workload 4, issue #6), sized for one device call.

For each pair, `octavo bench serve`'s sweep (streaming /v1/completions with c requests always in
flight, c in 1..64) runs twice against a launched `octavo serve`: without the draft, then with it
(adaptive k, the engine's default, up to k). Per level: output tokens/s (total and per user),
TTFT, TPOT, end-to-end latency, the server's speculative counters over the level (/metrics
deltas: acceptance = accepted / drafted, tokens per verification, mean k), and spec / no-spec
ratios. Both runs of a pair get the same requests (same seeds).

Pairs:

  controlled  llama-3.1-8b (bench/configs) with dummy weights, made into a pair by
              bench/spec_pair.py's construction: the draft is the target's first D layers plus its
              token embedding, final norm and LM head (exact copies); in the target, each later
              layer's self_attn.o_proj and mlp.down_proj are multiplied by s. s = 0 makes the target
              compute the draft's function; acceptance falls steeply as s grows. Unless --scale is
              given, s is calibrated in a child process (one engine, the later projections rescaled in
              place between measurements) to give --target-acceptance: greedy, k fixed, on random
              token prompts of the sweep's lengths. The pair at that s is then written as
              safetensors checkpoints with Hugging Face names (q/k/v and gate/up unfused) and a
              synthetic word-level tokenizer (id i -> "w<i>", as `octavo bench serve --config` uses),
              so the server loads it like any model (16 GB target + 3 GB draft for 8B).
  demo        the shipped demo pair (octavo-demo, 4.2M, + octavo-demo-draft, 0.9M) on real text:
              prompts are windows of held-out Shakespeare (Julius Caesar and Twelfth Night, the two
              plays the pair was not trained on; text below), tokenized by the pair's tokenizer.

Outputs under --out: <date>-spec-sweep-<device>.json (everything: settings, calibration, every
run's levels and per-request records, comparisons, goals), .md (tables, ratios, goals), PNG charts
per pair (TPS total and per user, TTFT, generation time: spec vs no-spec; and ratios with
acceptance), the server logs, and the prompt text. A partial JSON is rewritten after every level.

    # device (H100): about 5-6 minutes; fastapi/uvicorn/pydantic as wheels in .whl (bench/README.md)
    python3 bench/spec_sweep.py --out $OUT
    # CPU smoke test: tiny llama, levels 1 and 2, a few requests (under a minute)
    python bench/spec_sweep.py --smoke --out /tmp/spec-smoke
    # Markdown and charts again from a result (e.g. here, where matplotlib is)
    python bench/spec_sweep.py --report-from RESULT.json --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # octavo from this checkout, bench/spec_pair.py beside this file
    sys.path.insert(0, str(REPO_ROOT))
if str(REPO_ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "bench"))

logger = logging.getLogger("octavo.spec_sweep")

LEVELS = [1, 2, 4, 8, 16, 32, 64]

# The smoke test's model: llama-3.1-8b's config shrunk to a toy (same family and rope scaling).
SMOKE_OVERRIDES = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512, "bos_token_id": 1,
    "eos_token_id": 2, "torch_dtype": "float32",
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 128},
}

# Goals of issue #6 (H100): checked on a CUDA device; on a CPU they are context, not a verdict.
GOAL_TPS_C1 = 2.2  # spec / no-spec output tok/s at concurrency 1, on a pair with about 70% acceptance
GOAL_TPS_EVERY = 1.0  # at every concurrency (adaptive k)
GOAL_TTFT = 1.05  # TTFT p50, spec / no-spec, at every concurrency
ABOUT_70 = (0.6, 0.8)
RUN_WEIGHTS = {"controlled": 1.5, "demo": 1.0}  # shares of the time budget per run

# Held-out text for the demo pair: public-domain passages from the two plays the demo pair was not
# trained on (DATA_CARD.md: Julius Caesar and Twelfth Night are its validation works), in the
# layout of its training text (speaker in capitals, then the lines).
HELD_OUT_TEXT = """\
FLAVIUS.
Hence! home, you idle creatures, get you home.
Is this a holiday? What, know you not,
Being mechanical, you ought not walk
Upon a labouring day without the sign
Of your profession? Speak, what trade art thou?

CARPENTER.
Why, sir, a carpenter.

MARULLUS.
Where is thy leather apron and thy rule?
What dost thou with thy best apparel on?
You, sir; what trade are you?

COBBLER.
Truly, sir, in respect of a fine workman, I am but, as you would say, a cobbler.

MARULLUS.
Wherefore rejoice? What conquest brings he home?
What tributaries follow him to Rome,
To grace in captive bonds his chariot wheels?
You blocks, you stones, you worse than senseless things!
O you hard hearts, you cruel men of Rome,
Knew you not Pompey? Many a time and oft
Have you climb'd up to walls and battlements,
To towers and windows, yea, to chimney tops,
Your infants in your arms, and there have sat
The livelong day with patient expectation
To see great Pompey pass the streets of Rome.
And when you saw his chariot but appear,
Have you not made an universal shout,
That Tiber trembled underneath her banks
To hear the replication of your sounds
Made in her concave shores?
And do you now put on your best attire?
And do you now cull out a holiday?
And do you now strew flowers in his way,
That comes in triumph over Pompey's blood?
Be gone!
Run to your houses, fall upon your knees,
Pray to the gods to intermit the plague
That needs must light on this ingratitude.

CASSIUS.
Why, man, he doth bestride the narrow world
Like a Colossus, and we petty men
Walk under his huge legs and peep about
To find ourselves dishonourable graves.
Men at some time are masters of their fates:
The fault, dear Brutus, is not in our stars,
But in ourselves, that we are underlings.
Brutus and Caesar: what should be in that Caesar?
Why should that name be sounded more than yours?
Write them together, yours is as fair a name;
Sound them, it doth become the mouth as well;
Weigh them, it is as heavy; conjure with 'em,
Brutus will start a spirit as soon as Caesar.
Now, in the names of all the gods at once,
Upon what meat doth this our Caesar feed,
That he is grown so great? Age, thou art sham'd!
Rome, thou hast lost the breed of noble bloods!

CAESAR.
Let me have men about me that are fat,
Sleek-headed men, and such as sleep o' nights.
Yond Cassius has a lean and hungry look;
He thinks too much: such men are dangerous.

CAESAR.
Cowards die many times before their deaths;
The valiant never taste of death but once.
Of all the wonders that I yet have heard,
It seems to me most strange that men should fear,
Seeing that death, a necessary end,
Will come when it will come.

BRUTUS.
Romans, countrymen, and lovers! Hear me for my cause, and be silent, that you may hear. Believe me
for mine honour, and have respect to mine honour, that you may believe. Censure me in your wisdom,
and awake your senses, that you may the better judge. If there be any in this assembly, any dear
friend of Caesar's, to him I say that Brutus' love to Caesar was no less than his. If then that
friend demand why Brutus rose against Caesar, this is my answer: Not that I loved Caesar less, but
that I loved Rome more. Had you rather Caesar were living, and die all slaves, than that Caesar were
dead, to live all free men? As Caesar loved me, I weep for him; as he was fortunate, I rejoice at
it; as he was valiant, I honour him; but, as he was ambitious, I slew him. There is tears for his
love; joy for his fortune; honour for his valour; and death for his ambition. Who is here so base
that would be a bondman? If any, speak; for him have I offended. Who is here so rude that would not
be a Roman? If any, speak; for him have I offended. Who is here so vile that will not love his
country? If any, speak; for him have I offended. I pause for a reply.

ANTONY.
Friends, Romans, countrymen, lend me your ears;
I come to bury Caesar, not to praise him.
The evil that men do lives after them;
The good is oft interred with their bones;
So let it be with Caesar. The noble Brutus
Hath told you Caesar was ambitious:
If it were so, it was a grievous fault,
And grievously hath Caesar answer'd it.
Here, under leave of Brutus and the rest,
For Brutus is an honourable man;
So are they all, all honourable men,
Come I to speak in Caesar's funeral.
He was my friend, faithful and just to me:
But Brutus says he was ambitious;
And Brutus is an honourable man.
He hath brought many captives home to Rome,
Whose ransoms did the general coffers fill:
Did this in Caesar seem ambitious?
When that the poor have cried, Caesar hath wept:
Ambition should be made of sterner stuff:
Yet Brutus says he was ambitious;
And Brutus is an honourable man.
You all did see that on the Lupercal
I thrice presented him a kingly crown,
Which he did thrice refuse: was this ambition?
Yet Brutus says he was ambitious;
And, sure, he is an honourable man.
I speak not to disprove what Brutus spoke,
But here I am to speak what I do know.
You all did love him once, not without cause:
What cause withholds you then, to mourn for him?
O judgment! thou art fled to brutish beasts,
And men have lost their reason. Bear with me;
My heart is in the coffin there with Caesar,
And I must pause till it come back to me.

BRUTUS.
There is a tide in the affairs of men,
Which, taken at the flood, leads on to fortune;
Omitted, all the voyage of their life
Is bound in shallows and in miseries.
On such a full sea are we now afloat;
And we must take the current when it serves,
Or lose our ventures.

ANTONY.
This was the noblest Roman of them all:
All the conspirators, save only he,
Did that they did in envy of great Caesar;
He only, in a general honest thought
And common good to all, made one of them.
His life was gentle, and the elements
So mix'd in him that Nature might stand up
And say to all the world, 'This was a man!'

DUKE.
If music be the food of love, play on;
Give me excess of it, that, surfeiting,
The appetite may sicken, and so die.
That strain again! it had a dying fall:
O, it came o'er my ear like the sweet sound
That breathes upon a bank of violets,
Stealing and giving odour! Enough; no more:
'Tis not so sweet now as it was before.
O spirit of love! how quick and fresh art thou,
That, notwithstanding thy capacity
Receiveth as the sea, nought enters there,
Of what validity and pitch soe'er,
But falls into abatement and low price,
Even in a minute: so full of shapes is fancy
That it alone is high fantastical.

VIOLA.
Make me a willow cabin at your gate,
And call upon my soul within the house;
Write loyal cantons of contemned love
And sing them loud even in the dead of night;
Halloo your name to the reverberate hills
And make the babbling gossip of the air
Cry out 'Olivia!' O, you should not rest
Between the elements of air and earth,
But you should pity me!

VIOLA.
I left no ring with her: what means this lady?
Fortune forbid my outside have not charm'd her!
She made good view of me; indeed, so much,
That sure methought her eyes had lost her tongue,
For she did speak in starts distractedly.
She loves me, sure; the cunning of her passion
Invites me in this churlish messenger.
O time! thou must untangle this, not I;
It is too hard a knot for me to untie!

CLOWN.
O mistress mine, where are you roaming?
O, stay and hear; your true love's coming,
That can sing both high and low:
Trip no further, pretty sweeting;
Journeys end in lovers meeting,
Every wise man's son doth know.
What is love? 'Tis not hereafter;
Present mirth hath present laughter;
What's to come is still unsure:
In delay there lies no plenty;
Then come kiss me, sweet and twenty,
Youth's a stuff will not endure.

MALVOLIO.
'In my stars I am above thee, but be not afraid of greatness: some are born great, some achieve
greatness, and some have greatness thrust upon 'em. Thy Fates open their hands; let thy blood and
spirit embrace them.'

CLOWN.
When that I was and a little tiny boy,
With hey, ho, the wind and the rain,
A foolish thing was but a toy,
For the rain it raineth every day.
But when I came to man's estate,
With hey, ho, the wind and the rain,
'Gainst knaves and thieves men shut their gate,
For the rain it raineth every day.
A great while ago the world begun,
With hey, ho, the wind and the rain,
But that's all one, our play is done,
And we'll strive to please you every day.
"""


# ---- calibration: the controlled pair's scale -----------------------------------------------------
def write_held_out_text(directory: Path) -> Path:
    """HELD_OUT_TEXT as held-out-shakespeare.txt in `directory` (created if missing), for
    --prompt-text: the demo pair's prompts in every script that serves it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "held-out-shakespeare.txt"
    path.write_text(HELD_OUT_TEXT, encoding="utf-8")
    return path


def find_scale(measure: Callable[[float], float], target: float, tolerance: float = 0.03, high: float = 0.1,
               max_evals: int = 7) -> tuple[float, list[dict]]:
    """The later-layer scale s whose acceptance is closest to `target`, by bracketing.

    measure(s) -> acceptance, falling with s (s = 0 is taken as acceptance 1 without measuring:
    the target then computes the draft's function). The bracket [low, high] is widened (x4) until
    measure(high) <= target, then shrunk by linear interpolation of acceptance in s, kept inside the
    bracket's middle 80% so it always shrinks (regula falsi), until a measurement is within
    `tolerance` of the target or `max_evals` measurements are spent. Returns (s, evaluations)."""
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


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one verification emits when each draft is accepted with probability a: 1 + a + ... + a^k."""
    a = min(max(acceptance, 0.0), 1.0)
    return k + 1.0 if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def bandwidth_ceiling(acceptance: float | None, weight_ratio: float, k_max: int) -> dict | None:
    """The best spec / no-spec speed-up at batch 1 when every forward costs its streamed weights and
    nothing else: max over k <= k_max of expected_tokens(a, k) / (1 + k x draft/target weights).
    Host work, kernel launches and the verification's extra tokens only lower it."""
    if acceptance is None or not math.isfinite(acceptance):
        return None
    best = max(range(1, k_max + 1), key=lambda k: expected_tokens(acceptance, k) / (1 + k * weight_ratio))
    return {"acceptance": acceptance, "k": best,
            "speedup": expected_tokens(acceptance, best) / (1 + best * weight_ratio)}


def hf_state(model: Any, vocab_size: int):
    """(name, tensor) in Hugging Face Llama names from an octavo Llama (tensor parallel size 1):
    the fused qkv_proj and gate_up_proj are split back into q/k/v_proj and gate/up_proj."""
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
    """The model's weights as safetensors shards with model.safetensors.index.json (shards are
    written one at a time, so host memory holds one shard). Returns the bytes written."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    shard: dict = {}
    size = total = 0
    files: list[str] = []

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            files.append(name)
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


def calibrate_and_export(args: argparse.Namespace, result_path: str) -> dict:
    """The child process: build the controlled pair in one engine (dummy weights), find s, export
    target and draft checkpoints, write what was done to result_path."""
    import torch

    import spec_pair
    from octavo.bench.models import release, write_synthetic_tokenizer

    started = time.monotonic()
    config = pair_config(args)
    workdir = Path(args.workdir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    max_len = args.input_len + args.output_len + args.k + 16
    engine = dict(dtype=args.dtype, max_model_len=max_len, enforce_eager=True,
                  max_num_seqs=max(args.calibration_prompts, 8))
    if device == "cuda":
        engine["num_gpu_blocks_override"] = max(256, 2 * args.calibration_prompts * (max_len // 16 + 2))
    first_scale = args.scale if args.scale is not None else args.scale_high
    pair = spec_pair.build_controlled_llm(config, args.draft_layers, first_scale, args.k, workdir / "engine",
                                          seed=args.seed, adaptive=False, **engine)
    built = time.monotonic() - started

    def measure(scale: float, temperature: float = 0.0) -> dict:
        pair.set_scale(scale)
        return spec_pair.measure_acceptance(pair.llm, num_prompts=args.calibration_prompts,
                                            prompt_len=args.input_len, max_tokens=args.output_len,
                                            temperature=temperature, seed=args.seed)

    if args.scale is None:
        scale, evaluations = find_scale(lambda s: measure(s)["acceptance_rate"], args.target_acceptance,
                                        args.tolerance, args.scale_high, args.calibration_evals)
    else:
        scale = args.scale
        evaluations = [{"scale": scale, "acceptance_rate": measure(scale)["acceptance_rate"]}]
    final = {"greedy": measure(scale, 0.0), "temperature_1": measure(scale, 1.0)}
    pair.set_scale(scale)
    from octavo.runtime.spec_policy import streamed_weights

    weight_ratio = streamed_weights(pair.draft) / streamed_weights(pair.target)
    measured = time.monotonic() - started - built

    out = workdir / "checkpoints"
    if out.exists():
        shutil.rmtree(out)
    target_dir, draft_dir = spec_pair.write_pair_dirs(config, out, args.draft_layers)
    need = sum(p.numel() * p.element_size() for p in pair.target.parameters())
    need += sum(p.numel() * p.element_size() for p in pair.draft.parameters())
    free = shutil.disk_usage(out).free
    if free < need * 1.1:
        raise RuntimeError(f"{out} has {free / 1e9:.1f} GB free; the pair's checkpoints need {need / 1e9:.1f} GB "
                           "(give --workdir on a larger disk)")
    written = save_checkpoint(pair.target, config, target_dir)
    written += save_checkpoint(pair.draft, {**config, "num_hidden_layers": args.draft_layers}, draft_dir)
    eos = config.get("eos_token_id")
    write_synthetic_tokenizer(str(target_dir), int(config["vocab_size"]), eos if isinstance(eos, int) else None)
    for file in target_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, draft_dir / file.name)
    exported = time.monotonic() - started - built - measured
    result = {
        "config": str(args.config), "hf_overrides": SMOKE_OVERRIDES if args.smoke else None,
        "num_layers": int(config["num_hidden_layers"]), "draft_layers": args.draft_layers,
        "scale": scale, "scale_given": args.scale is not None, "k": args.k,
        "target_acceptance": None if args.scale is not None else args.target_acceptance,
        "tolerance": args.tolerance, "evaluations": evaluations,
        "measured_at_scale": final,
        "measurement": {"prompts": args.calibration_prompts, "prompt_len": args.input_len,
                        "max_tokens": args.output_len, "prompt_kind": "random token ids", "k": args.k,
                        "adaptive_k": False, "engine": {**engine, "device": device}, "seed": args.seed},
        "draft_weight_ratio": weight_ratio,
        "bandwidth_ceiling": bandwidth_ceiling(final["greedy"]["acceptance_rate"], weight_ratio, args.k),
        "target_dir": str(target_dir), "draft_dir": str(draft_dir), "bytes_written": written,
        "seconds": {"build": built, "measure": measured, "export": exported},
    }
    Path(result_path).write_text(json.dumps(result, indent=1))
    del pair
    release()
    return result


def pair_config(args: argparse.Namespace) -> dict:
    import spec_pair

    config = spec_pair.load_config(args.config)
    if args.smoke:
        config.update(SMOKE_OVERRIDES)
    return config


# ---- the sweep -----------------------------------------------------------------------------------
class Sweep:
    """The parent process: no model of its own; children calibrate, servers serve."""

    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        from octavo.bench.env import environment

        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        env = environment("auto")
        env["command"] = shlex.join(["python", "bench/spec_sweep.py", *argv])
        self.doc: dict = {
            "kind": "spec-sweep", "env": env,
            "settings": {
                "concurrency": args.concurrency, "input_len": args.input_len, "output_len": args.output_len,
                "prompts_per_user": args.prompts_per_user, "min_prompts_per_level": args.min_prompts_per_level,
                "demo_prompts_per_user": args.demo_prompts_per_user,
                "demo_min_prompts_per_level": args.demo_min_prompts_per_level,
                "num_warmups": args.num_warmups, "warmup_each_level": True, "temperature": args.temperature,
                "seed": args.seed, "budget_s": args.budget, "smoke": args.smoke, "adaptive_k": True,
            },
            "pairs": [], "total_seconds": None,
        }
        self.stem = "-".join([env["date"], "spec-sweep", _device_slug(env)] + ([args.tag] if args.tag else []))

    # -- files
    def save_partial(self) -> None:
        write_json_atomically(self.doc, self.out / f"{self.stem}.partial.json")

    def remaining(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    # -- pairs
    def run(self) -> dict:
        for name in self.args.pairs:
            entry: dict = {"name": name, "runs": {}, "comparison": [], "goals": [], "error": None}
            self.doc["pairs"].append(entry)
            try:
                if name == "controlled":
                    target, draft, k, dtype, text = self.controlled(entry)
                else:
                    target, draft, k, dtype, text = self.demo(entry)
                entry.update(target=target, draft=draft, k=k, dtype=dtype)
                for mode in ("no-spec", "spec"):
                    entry["runs"][mode] = self.serve(name, mode, target, draft if mode == "spec" else None, k, dtype,
                                                     text, entry)
                entry["comparison"] = compare(entry["runs"]["no-spec"], entry["runs"]["spec"])
            except Exception as exc:  # one pair failing leaves the other's results
                logger.exception("pair %s failed", name)
                entry["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                if name == "controlled" and not self.args.keep_checkpoints:
                    shutil.rmtree(Path(self.args.workdir) / "checkpoints", ignore_errors=True)
            entry["goals"] = goals(entry, self.doc["env"], self.args.smoke)
            self.save_partial()
        self.doc["total_seconds"] = time.monotonic() - self.started
        return self.doc

    def controlled(self, entry: dict) -> tuple[str, str, int, str, None]:
        args = self.args
        result_path = self.out / "calibration.json"
        command = [sys.executable, str(Path(__file__).resolve()), *self.child_argv(), "--calibrate-only",
                   str(result_path)]
        logger.info("calibrating and exporting the controlled pair: %s", shlex.join(command))
        started = time.monotonic()
        subprocess.run(command, check=True, timeout=args.calibration_timeout)
        calibration = json.loads(result_path.read_text())
        calibration["wall_s"] = time.monotonic() - started
        entry["calibration"] = calibration
        entry["construction"] = construction_text(calibration)
        logger.info("controlled pair: s = %.5f, greedy acceptance %.3f (k = %d fixed), %.1f GB written in %.0f s",
                    calibration["scale"], calibration["measured_at_scale"]["greedy"]["acceptance_rate"], args.k,
                    calibration["bytes_written"] / 1e9, calibration["wall_s"])
        return calibration["target_dir"], calibration["draft_dir"], args.k, args.dtype, None

    def child_argv(self) -> list[str]:
        a = self.args
        argv = ["--config", str(a.config), "--draft-layers", str(a.draft_layers), "--k", str(a.k), "--dtype", a.dtype,
                "--seed", str(a.seed), "--input-len", str(a.input_len), "--output-len", str(a.output_len),
                "--workdir", str(a.workdir), "--target-acceptance", str(a.target_acceptance),
                "--tolerance", str(a.tolerance), "--scale-high", str(a.scale_high),
                "--calibration-prompts", str(a.calibration_prompts), "--calibration-evals", str(a.calibration_evals),
                "--out", str(a.out)]
        if a.scale is not None:
            argv += ["--scale", str(a.scale)]
        if a.smoke:
            argv.append("--smoke")
        return argv

    def demo(self, entry: dict) -> tuple[str, str, int, str, str]:
        from octavo.runtime.demo import DEMO_DRAFT_DIR, DEMO_TARGET_DIR

        text = write_held_out_text(self.out)
        entry["construction"] = (
            "The shipped demo pair: octavo-demo (4.2M parameters, 4 layers) verifies octavo-demo-draft (0.9M, "
            "2 layers), trained on 40 of Shakespeare's works (octavo/runtime/demo/DATA_CARD.md). Prompts are "
            f"windows of held-out text ({text.name}: passages of Julius Caesar and Twelfth Night, the pair's "
            "validation plays), tokenized by the pair's tokenizer, after <|bos|>.")
        return str(DEMO_TARGET_DIR), str(DEMO_DRAFT_DIR), self.args.demo_k, self.args.demo_dtype, str(text)

    def serve(self, pair: str, mode: str, target: str, draft: str | None, k: int, dtype: str, text: str | None,
              entry: dict) -> dict:
        from octavo.bench import cli as bench_cli
        from octavo.bench import serve as serve_mode

        args = self.args
        # This run's share of the time left, by weight (an 8B run costs more than a demo run), less
        # its server's start-up: its sweep starts no level past that.
        weights = [RUN_WEIGHTS[p] for p in args.pairs for _ in range(2)]
        index = 2 * (len(self.doc["pairs"]) - 1) + (mode == "spec")
        share = self.remaining() * weights[index] / sum(weights[index:])
        budget = max(20.0, share - (args.launch_estimate if pair == "controlled" else 10.0))
        argv = ["serve", "--model", target, "--launch", "--launch-timeout", str(args.launch_timeout),
                "--dtype", dtype, "--seed", str(args.seed), "--concurrency", ",".join(map(str, args.concurrency)),
                "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                "--prompts-per-user", str(args.demo_prompts_per_user if pair == "demo" else args.prompts_per_user),
                "--min-prompts-per-level",
                str(args.demo_min_prompts_per_level if pair == "demo" else args.min_prompts_per_level),
                "--num-warmups", str(args.num_warmups),
                "--warmup-each-level", "--temperature", str(args.temperature), "--request-timeout", "300",
                "--time-budget", f"{budget:.0f}", "--tag", f"{pair}-{mode}", "--out", str(self.out)]
        if text:
            argv += ["--prompt-text", text]
        if draft:
            argv += ["--speculative-model", draft, "--num-speculative-tokens", str(k)]
        if args.server_args:
            argv += ["--server-args", args.server_args]
        parser = argparse.ArgumentParser(prog="octavo bench")
        bench_cli.add_arguments(parser)
        namespace = parser.parse_args(argv)
        logger.info("%s pair, %s: octavo bench %s (sweep budget %.0f s)", pair, mode, shlex.join(argv), budget)

        def save_partial(result: dict) -> None:
            entry["runs"][mode] = result
            self.save_partial()

        return serve_mode.benchmark(namespace, str(self.out), save_partial)


def construction_text(calibration: dict) -> str:
    layers, depth, scale = calibration["num_layers"], calibration["draft_layers"], calibration["scale"]
    greedy = calibration["measured_at_scale"]["greedy"]
    sampled = calibration["measured_at_scale"]["temperature_1"]
    how = (f"calibrated to greedy acceptance {calibration['target_acceptance']} +- {calibration['tolerance']} over "
           f"{len(calibration['evaluations'])} measurements"
           if not calibration["scale_given"] else "given")
    measurement = calibration["measurement"]
    return (
        f"{calibration['config']} config{' (shrunk for the smoke test)' if calibration.get('hf_overrides') else ''}, "
        f"octavo's dummy weights (normal(0, 0.02), norms 1, seed {measurement['seed']}). Draft: the target's config "
        f"with {depth} of its {layers} layers; its token embedding, layers 0..{depth - 1}, final norm and LM head are "
        f"exact copies of the target's. Target: each layer {depth}..{layers - 1} has self_attn.o_proj and "
        f"mlp.down_proj multiplied by s = {scale:.5g} ({how}). At that s, measured in process with k = "
        f"{calibration['k']} fixed on {measurement['prompts']} random-token prompts of {measurement['prompt_len']} "
        f"tokens, {measurement['max_tokens']} generated: acceptance {greedy['acceptance_rate']:.3f} greedy "
        f"({greedy['tokens_per_verification']:.2f} tokens per verification), {sampled['acceptance_rate']:.3f} at "
        "temperature 1. Written as safetensors checkpoints (Hugging Face names) with a synthetic word-level "
        "tokenizer and served like any model."
        + (f" The draft streams {calibration['draft_weight_ratio']:.3f}x the target's weight bytes per forward "
           f"(its LM head is the target's full one), so at this acceptance even a purely bandwidth-bound engine "
           f"gains at most {ceiling['speedup']:.2f}x at concurrency 1 (k = {ceiling['k']}; "
           f"expected tokens per verification / (1 + k x weight ratio))."
           if (ceiling := calibration.get("bandwidth_ceiling")) else ""))


def _device_slug(env: dict) -> str:
    from octavo.bench.env import device_slug

    return device_slug(env["device"])


def jsonable(value: Any) -> Any:
    """json.dumps' default: non-finite floats as null, anything else as its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def write_json_atomically(doc: dict, path: Path) -> None:
    """A result written so that a reader (or a killed run) never sees half of it."""
    path.with_suffix(".tmp").write_text(json.dumps(doc, indent=1, default=jsonable))
    os.replace(path.with_suffix(".tmp"), path)


def write_result(doc: dict, out: Path, stem: str, text: str) -> list[str]:
    """The final <stem>.json and its Markdown `text` as <stem>.md, the partial JSON gone."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(doc, indent=1, default=jsonable) + "\n")
    partial = out / f"{stem}.partial.json"
    if partial.exists():
        partial.unlink()
    md_path = out / f"{stem}.md"
    md_path.write_text(text)
    return [str(json_path), str(md_path)]


# ---- comparisons and goals -----------------------------------------------------------------------
def _level_view(level: dict) -> dict:
    return {
        "output_tokens_per_s": level["output_tokens_per_s"],
        "per_user_tokens_per_s_p50": level["per_user_tokens_per_s"]["p50"],
        "ttft_ms_p50": level["ttft_ms"]["p50"], "ttft_ms_p99": level["ttft_ms"]["p99"],
        "tpot_ms_p50": level["tpot_ms"]["p50"], "e2e_ms_p50": level["e2e_ms"]["p50"],
        "num_requests": level["num_requests"], "num_errors": level["num_errors"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def compare(no_spec: dict, spec: dict) -> list[dict]:
    """Per concurrency level both runs measured: the two views, spec / no-spec ratios and the
    speculative counters of the spec run."""
    base = {level["concurrency"]: level for level in no_spec.get("levels", [])}
    rows = []
    for level in spec.get("levels", []):
        c = level["concurrency"]
        if c not in base:
            continue
        ours, theirs = _level_view(level), _level_view(base[c])
        rows.append({
            "concurrency": c, "no_spec": theirs, "spec": ours,
            "ratios": {key: _ratio(ours[key], theirs[key])
                       for key in ("output_tokens_per_s", "per_user_tokens_per_s_p50", "ttft_ms_p50", "tpot_ms_p50",
                                   "e2e_ms_p50")},
            "speculation": level.get("spec"),
        })
    return rows


def goals(entry: dict, env: dict, smoke: bool = False) -> list[dict]:
    rows = entry.get("comparison") or []
    if not rows:
        return []
    verdict = env["device"].get("type") == "cuda" and not smoke
    checks = []
    first = next((r for r in rows if r["concurrency"] == 1), None)
    if first is not None:
        acceptance = (first["speculation"] or {}).get("acceptance_rate")
        about = acceptance is not None and ABOUT_70[0] <= acceptance <= ABOUT_70[1]
        ratio = first["ratios"]["output_tokens_per_s"]
        weight_ratio = (entry.get("calibration") or {}).get("draft_weight_ratio")
        ceiling = bandwidth_ceiling(acceptance, weight_ratio, entry["k"]) if weight_ratio else None
        checks.append({"name": f"output tok/s at concurrency 1 >= {GOAL_TPS_C1}x no-spec (pair at ~70% acceptance)",
                       "measured": f"{_fmt_ratio(ratio)} at acceptance {_fmt(acceptance, 3)}"
                                   + (f"; bandwidth-bound ceiling at that acceptance {ceiling['speedup']:.2f}x"
                                      if ceiling else ""),
                       "applies": about, "met": ratio is not None and ratio >= GOAL_TPS_C1})
    worst = min(rows, key=lambda r: r["ratios"]["output_tokens_per_s"] or 0.0)
    checks.append({"name": f"output tok/s >= {GOAL_TPS_EVERY}x no-spec at every concurrency (adaptive k)",
                   "measured": f"lowest {_fmt_ratio(worst['ratios']['output_tokens_per_s'])} at "
                               f"c = {worst['concurrency']}", "applies": True,
                   "met": all((r["ratios"]["output_tokens_per_s"] or 0.0) >= GOAL_TPS_EVERY for r in rows)})
    worst = max(rows, key=lambda r: r["ratios"]["ttft_ms_p50"] or math.inf)
    checks.append({"name": f"TTFT p50 <= {GOAL_TTFT}x no-spec at every concurrency",
                   "measured": f"highest {_fmt_ratio(worst['ratios']['ttft_ms_p50'])} at c = {worst['concurrency']}",
                   "applies": True,
                   "met": all(r["ratios"]["ttft_ms_p50"] is not None and r["ratios"]["ttft_ms_p50"] <= GOAL_TTFT
                              for r in rows)})
    for check in checks:
        check["verdict"] = verdict
    return checks


# ---- Markdown -------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def markdown(doc: dict) -> str:
    from octavo.bench.report import table

    env = doc["env"]
    settings = doc["settings"]
    versions = env.get("versions", {})
    commit = (env.get("git_commit") or "unknown")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    lines = [
        f"## Speculative serving sweep on {env['device'].get('name')}",
        "",
        f"`{env['command']}`",
        "",
        f"{env['time_utc']} · commit {commit} · torch {versions.get('torch')} · triton {versions.get('triton')} · "
        f"transformers {versions.get('transformers')}" + (
            f" · {doc['total_seconds']:.0f} s in all" if doc.get("total_seconds") else ""),
        "",
        f"Each pair is served twice by `octavo serve` (launched on loopback): without the draft, then with it "
        f"(adaptive k up to the pair's k, the engine's default). Streaming /v1/completions, c requests always in "
        f"flight, prompt {settings['input_len']} and output {settings['output_len']} tokens (ignore_eos), "
        f"temperature {settings['temperature']}; per level max({settings['min_prompts_per_level']}, "
        f"{settings['prompts_per_user']} x c) timed requests"
        + (f" (the demo pair, whose requests take about 0.1 s: max({settings['demo_min_prompts_per_level']}, "
           f"{settings['demo_prompts_per_user']} x c))" if settings.get("demo_min_prompts_per_level") else "")
        + " after one untimed round of c requests (and "
        f"{settings['num_warmups']} warm-up requests when the server starts). Both runs get the same requests. "
        "Acceptance, tokens per verification and mean k are the server's /metrics counter deltas over the "
        "level (accepted / drafted; emitted / verified request-steps; drafted / verified request-steps).",
        "",
    ]
    if doc.get("interrupted"):
        lines += ["**Interrupted**: the run was stopped before the end; what it measured is below.", ""]
    for entry in doc["pairs"]:
        lines += pair_markdown(entry, table)
    return "\n".join(lines) + "\n"


def pair_markdown(entry: dict, table: Callable) -> list[str]:
    lines = [f"### {entry['name']} pair" + (f" (k <= {entry['k']}, {entry.get('dtype')})" if entry.get("k") else ""),
             ""]
    if entry.get("construction"):
        lines += [entry["construction"], ""]
    calibration = entry.get("calibration")
    if calibration and calibration.get("evaluations") and not calibration["scale_given"]:
        lines += ["Calibration (greedy, k fixed): " + ", ".join(
            f"s = {e['scale']:.4g} -> {e['acceptance_rate']:.3f}" for e in calibration["evaluations"])
            + f"; chosen s = {calibration['scale']:.4g}. Build {calibration['seconds']['build']:.0f} s, "
              f"measurements {calibration['seconds']['measure']:.0f} s, export "
              f"{calibration['bytes_written'] / 1e9:.2f} GB in {calibration['seconds']['export']:.0f} s.", ""]
    if entry.get("error"):
        lines += [f"**Failed**: {entry['error']}", ""]
    rows = entry.get("comparison") or []
    if rows:
        head = ["c", "tok/s no-spec", "tok/s spec", "ratio", "per-user p50 no/spec", "ratio", "TTFT p50 ms no/spec",
                "ratio", "TPOT p50 ms no/spec", "E2E p50 ms no/spec", "ratio", "acceptance (drafted)", "tokens/verif.",
                "mean k"]
        body = []
        for r in rows:
            n, s, q, p = r["no_spec"], r["spec"], r["ratios"], r["speculation"] or {}
            body.append([
                str(r["concurrency"]), _fmt(n["output_tokens_per_s"]), _fmt(s["output_tokens_per_s"]),
                _fmt_ratio(q["output_tokens_per_s"]),
                f"{_fmt(n['per_user_tokens_per_s_p50'])}/{_fmt(s['per_user_tokens_per_s_p50'])}",
                _fmt_ratio(q["per_user_tokens_per_s_p50"]),
                f"{_fmt(n['ttft_ms_p50'])}/{_fmt(s['ttft_ms_p50'])}", _fmt_ratio(q["ttft_ms_p50"]),
                f"{_fmt(n['tpot_ms_p50'], 2)}/{_fmt(s['tpot_ms_p50'], 2)}",
                f"{_fmt(n['e2e_ms_p50'])}/{_fmt(s['e2e_ms_p50'])}", _fmt_ratio(q["e2e_ms_p50"]),
                f"{_fmt(p.get('acceptance_rate'), 3)} ({p.get('drafted', '—'):,})" if p else "—",
                _fmt(p.get("tokens_per_verification"), 2),
                _fmt(p.get("drafts_per_verification"), 2)])
        lines += [table(head, body)]
        errors = sum(r["no_spec"]["num_errors"] + r["spec"]["num_errors"] for r in rows)
        if errors:
            lines += [f"{errors} requests failed (see the records in the JSON).", ""]
    for mode, run in (entry.get("runs") or {}).items():
        skipped = (run.get("settings") or {}).get("skipped_levels")
        if skipped:
            lines += [f"{mode}: levels {skipped} skipped (time budget).", ""]
        command = (run.get("settings") or {}).get("server_command")
        if command:
            lines += [f"{mode} server: `{command}`", ""]
    if entry.get("goals"):
        lines += ["Goals (issue #6, set for an H100):", ""]
        for g in entry["goals"]:
            state = ("met" if g["met"] else "NOT met") if g["verdict"] else "context only (not a CUDA run)"
            if g["verdict"] and not g["applies"]:
                state += " (does not apply: acceptance is not about 70%)"
            lines.append(f"- {state}: {g['name']} (measured {g['measured']})")
        lines.append("")
    return lines


# ---- charts ---------------------------------------------------------------------------------------
def plots(doc: dict, out: Path, stem: str) -> list[str]:
    """Per pair: the seed's three charts (TPS total and per user, generation time, TTFT: one line
    without the draft, one with it) and a summary of ratios and acceptance. Nothing (with a log line)
    when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("matplotlib is not installed: no charts (run --report-from on the JSON where it is)")
        return []
    from octavo.bench.report import _pyplot, log2_axis, plot_serve

    paths: list[str] = []
    for entry in doc["pairs"]:
        runs = entry.get("runs") or {}
        configurations = [(label, runs[mode]["levels"]) for mode, label in
                          (("no-spec", "no draft"), ("spec", f"draft, adaptive k <= {entry.get('k')}"))
                          if mode in runs and runs[mode].get("levels")]
        if not configurations:
            continue
        pair_stem = str(out / f"{stem}-{entry['name']}")
        paths += plot_serve(configurations, pair_stem)
        rows = entry.get("comparison") or []
        if not rows:
            continue
        plt = _pyplot()
        xs = [r["concurrency"] for r in rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        for key, label in (("output_tokens_per_s", "total output tok/s"), ("per_user_tokens_per_s_p50",
                                                                          "per-user tok/s p50"),
                           ("ttft_ms_p50", "TTFT p50"), ("e2e_ms_p50", "end-to-end p50")):
            left.plot(xs, [r["ratios"][key] for r in rows], marker="o", label=label)
        left.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        left.axhline(GOAL_TTFT, color="grey", linestyle=":", linewidth=1, label=f"TTFT goal {GOAL_TTFT}x")
        left.set_ylabel("spec / no-spec")
        left.set_title(f"{entry['name']} pair: ratios")
        def series(key: str) -> list[float]:
            return [math.nan if (r["speculation"] or {}).get(key) is None else r["speculation"][key] for r in rows]

        right.set_title(f"{entry['name']} pair: speculation")
        right.set_ylabel("acceptance rate")
        right.set_ylim(0, 1.05)
        if all(math.isnan(v) for v in series("acceptance_rate")):
            right.text(0.5, 0.5, "no draft tokens at any level", ha="center", va="center", transform=right.transAxes)
            right.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)
        else:
            right.plot(xs, series("acceptance_rate"), marker="o", label="acceptance (accepted / drafted)")
            twin = right.twinx()
            twin.plot(xs, series("drafts_per_verification"), marker="s", color="tab:orange", label="mean k")
            twin.plot(xs, series("tokens_per_verification"), marker="^", color="tab:green",
                      label="tokens per verification")
            twin.set_ylabel("tokens per verified request-step")
            twin.set_ylim(bottom=0)
            handles, labels = right.get_legend_handles_labels()
            more_handles, more_labels = twin.get_legend_handles_labels()
            right.legend(handles + more_handles, labels + more_labels, fontsize=8)
        for axis in (left, right):
            log2_axis(axis, xs, "concurrency (requests in flight)")
        left.legend(fontsize=8)
        fig.tight_layout()
        path = f"{pair_stem}-summary.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(doc: dict, out: Path, stem: str) -> list[str]:
    return write_result(doc, out, stem, markdown(doc)) + plots(doc, out, stem)


# ---- entry ----------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    from octavo.bench.cli import int_list

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench/results/spec-sweep")
    parser.add_argument("--tag", help="appended to the result file names")
    parser.add_argument("--pairs", default="controlled,demo", help="comma list of controlled, demo (in this order)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke test: a tiny llama pair, levels 1 and 2, a few short requests")
    parser.add_argument("--report-from", help="a result JSON: write its Markdown and charts to --out, run nothing")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--concurrency", type=int_list, default=None, help="default 1,2,4,8,16,32,64")
    sweep.add_argument("--input-len", type=int, default=None, help="prompt tokens (default 128)")
    sweep.add_argument("--output-len", type=int, default=None, help="output tokens (default 128)")
    sweep.add_argument("--prompts-per-user", type=int, default=None, help="timed requests per level = max(min, "
                                                                          "this x c) (default 2)")
    sweep.add_argument("--min-prompts-per-level", type=int, default=None, help="(default 8)")
    sweep.add_argument("--num-warmups", type=int, default=None, help="requests when a server starts (default 4)")
    sweep.add_argument("--temperature", type=float, default=0.0)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--budget", type=float, default=None,
                       help="seconds for the whole sweep (default 420): each run's levels stop at its share")
    sweep.add_argument("--launch-timeout", type=float, default=240.0)
    sweep.add_argument("--launch-estimate", type=float, default=45.0,
                       help="seconds a controlled-pair server takes to start (taken off its share of the budget)")
    sweep.add_argument("--server-args", default="", help="extra `octavo serve` arguments for every server")
    controlled = parser.add_argument_group("controlled pair")
    controlled.add_argument("--config", default="llama-3.1-8b", help="bench/configs name or config.json path")
    controlled.add_argument("--draft-layers", type=int, default=2, help="D: the draft's depth")
    controlled.add_argument("--k", type=int, default=4, help="num_speculative_tokens (the most adaptive k uses)")
    controlled.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --smoke)")
    controlled.add_argument("--scale", type=float, help="s, fixed: no calibration")
    controlled.add_argument("--target-acceptance", type=float, default=0.7)
    controlled.add_argument("--tolerance", type=float, default=0.03)
    controlled.add_argument("--scale-high", type=float, default=0.1, help="first upper end of the s bracket")
    controlled.add_argument("--calibration-prompts", type=int, default=None, help="(default 16)")
    controlled.add_argument("--calibration-evals", type=int, default=None, help="most measurements (default 7)")
    controlled.add_argument("--calibration-timeout", type=float, default=240.0,
                            help="seconds for the calibration and export child")
    controlled.add_argument("--workdir", default="/tmp/octavo-spec-sweep", help="where the checkpoints go")
    controlled.add_argument("--keep-checkpoints", action="store_true")
    demo = parser.add_argument_group("demo pair")
    demo.add_argument("--demo-k", type=int, default=4)
    demo.add_argument("--demo-dtype", default="auto")
    demo.add_argument("--demo-prompts-per-user", type=int, default=None,
                      help="the demo pair's timed requests per level = max(min, this x c) (default 8: its "
                           "requests take about 0.1 s, so the controlled pair's counts would time a fraction of a second)")
    demo.add_argument("--demo-min-prompts-per-level", type=int, default=None, help="(default 32)")
    parser.add_argument("--calibrate-only", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    smoke = args.smoke
    defaults = {"concurrency": [1, 2] if smoke else LEVELS, "input_len": 16 if smoke else 128,
                "output_len": 8 if smoke else 128, "prompts_per_user": 1 if smoke else 2,
                "min_prompts_per_level": 2 if smoke else 8, "num_warmups": 0 if smoke else 4,
                "demo_prompts_per_user": 1 if smoke else 8, "demo_min_prompts_per_level": 2 if smoke else 32,
                "budget": 300.0 if smoke else 420.0, "dtype": "float32" if smoke else "bfloat16",
                "calibration_prompts": 2 if smoke else 16, "calibration_evals": 3 if smoke else 7}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = sorted(set(args.pairs) - {"controlled", "demo"})
    if unknown or not args.pairs:
        parser.error(f"--pairs takes controlled and/or demo, got {unknown or args.pairs}")
    return args


def check_server_packages() -> None:
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "pydantic", "prometheus_client", "httpx")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"the server and client need {', '.join(missing)}: install them (on the device: carry their "
                         "wheels in .whl and pip install --target, see bench/README.md)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if args.report_from:
        doc = json.loads(Path(args.report_from).read_text())
        stem = Path(args.report_from).name.removesuffix(".json").removesuffix(".partial")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.md").write_text(markdown(doc))
        print(markdown(doc))
        for path in [str(out / f"{stem}.md")] + plots(doc, out, stem):
            print(f"wrote {path}")
        return 0
    if args.calibrate_only:
        calibrate_and_export(args, args.calibrate_only)
        return 0
    check_server_packages()
    if args.smoke:  # tiny models on shared cores: one thread per process (servers inherit it)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    sweep = Sweep(args, argv)
    try:
        doc = sweep.run()
    except KeyboardInterrupt:  # e.g. `timeout --signal=INT`: report what was measured
        logger.warning("interrupted: writing what was measured")
        doc = sweep.doc
        doc["interrupted"] = True
        doc["total_seconds"] = time.monotonic() - sweep.started
        for entry in doc["pairs"]:
            runs = entry.get("runs") or {}
            if not entry.get("comparison") and "no-spec" in runs and "spec" in runs:
                entry["comparison"] = compare(runs["no-spec"], runs["spec"])
                entry["goals"] = goals(entry, doc["env"], args.smoke)
    paths = write_outputs(doc, sweep.out, sweep.stem)
    print(markdown(doc))
    for path in paths:
        print(f"wrote {path}")
    failed = [e["name"] for e in doc["pairs"] if e.get("error")] + (["interrupted"] if doc.get("interrupted") else [])
    errors = sum(r["no_spec"]["num_errors"] + r["spec"]["num_errors"] for e in doc["pairs"]
                 for r in e.get("comparison") or [])
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
