"""The architecture registry: what it serves, and an error that lists it for anything else."""

from __future__ import annotations

import json

import pytest

from octavo import LLM
from octavo.runtime.models.registry import model_class, supported_architectures


def test_every_family_is_registered():
    from octavo.runtime.models.bloom import BloomForCausalLM
    from octavo.runtime.models.gpt2 import GPT2LMHeadModel
    from octavo.runtime.models.llama import LlamaForCausalLM

    assert model_class("GPT2LMHeadModel") is GPT2LMHeadModel
    assert model_class("BloomForCausalLM") is BloomForCausalLM
    for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"):
        assert model_class(name) is LlamaForCausalLM
    assert supported_architectures() == sorted(supported_architectures())


@pytest.mark.parametrize("architecture", ["FalconForCausalLM", ""])
def test_unknown_architecture_names_the_supported_ones(architecture):
    with pytest.raises(ValueError) as info:
        model_class(architecture)
    message = str(info.value)
    assert "is not supported" in message
    for name in supported_architectures():
        assert name in message
    if not architecture:
        assert "(none in config.json)" in message


def test_engine_refuses_an_unknown_architecture(gpt2_dir, tmp_path):
    config = json.loads((gpt2_dir / "config.json").read_text())
    config["architectures"] = ["GPT2ForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'GPT2ForSequenceClassification' is not supported; supported: .*"
                                         r"BloomForCausalLM, GPT2LMHeadModel"):
        LLM(model=str(tmp_path), load_format="dummy", dtype="float32", num_gpu_blocks=16)
