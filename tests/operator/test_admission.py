"""admission.check_llmservice(): what the schema cannot say, each message naming the fix."""

from __future__ import annotations

import pytest
from operator_helpers import EXAMPLES, load_example

from octavo.operator.admission import check_llmservice

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_pass(name):
    example = load_example(name)
    assert check_llmservice(example["spec"], example["metadata"]["name"]) == []


def spec(**overrides):
    base = {"model": {"name": "org/target"}, "tensorParallelSize": 4,
            "resources": {"gpusPerReplica": 4}}
    base.update(overrides)
    return base


def test_gpus_must_be_a_multiple_of_tensor_parallel():
    errors = check_llmservice(spec(resources={"gpusPerReplica": 6}))
    assert errors == ["resources.gpusPerReplica (6) must be a multiple of tensorParallelSize (4): "
                      "set it to 4 or 8"]
    assert check_llmservice(spec(resources={"gpusPerReplica": 8})) == []
    assert "set it to 4" in check_llmservice(spec(resources={"gpusPerReplica": 2}))[0]


def test_gpus_default_to_tensor_parallel_size():
    assert check_llmservice(spec(resources={})) == []


def test_tensor_parallel_needs_gpus():
    errors = check_llmservice(spec(resources={"gpusPerReplica": 0}))
    assert errors == ["tensorParallelSize 4 needs GPUs: set resources.gpusPerReplica to 4 (or "
                      "tensorParallelSize to 1 to serve on CPU)"]


def test_draft_equal_to_target():
    errors = check_llmservice(spec(speculative={"draftModel": {"name": "org/target"}}))
    assert errors == ["spec.speculative.draftModel is the target itself (org/target): choose a "
                      "smaller draft from the same tokenizer family, or remove spec.speculative"]
    # Another revision of the same repository is a different model.
    assert check_llmservice(spec(speculative={"draftModel": {"name": "org/target",
                                                             "revision": "small"}})) == []


def test_model_and_draft_need_a_name_or_path():
    assert "spec.model needs a name" in check_llmservice({"model": {}})[0]
    assert "draftModel needs a name or a path" in \
        check_llmservice(spec(speculative={"draftModel": {"revision": "x"}}))[0]


def test_autoscaling_bounds():
    errors = check_llmservice(spec(autoscaling={"minReplicas": 5, "maxReplicas": 2}))
    assert errors == ["spec.autoscaling.maxReplicas (2) must be at least minReplicas (5)"]


def test_service_name_must_be_a_dns_label():
    assert "must be a DNS label" in check_llmservice(spec(), "Llama_70B")[0]
    assert "must be a DNS label" in check_llmservice(spec(), "a" * 64)[0]
    assert check_llmservice(spec(), "llama-70b") == []


def test_env_conflicts():
    errors = check_llmservice(spec(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"},
                                        {"name": "OCTAVO_API_KEY", "value": "k"}],
                                   apiKeySecretRef={"name": "key"}))
    assert errors == ["spec.env sets A twice: keep one",
                      "spec.env sets OCTAVO_API_KEY, which the operator sets from the API key "
                      "Secret: remove it, and name your Secret in spec.apiKeySecretRef (or "
                      "leave that out and the operator generates a key)"]
    # Without apiKeySecretRef too: a spec cannot blank the generated key.
    assert len(check_llmservice(spec(env=[{"name": "OCTAVO_API_KEY", "value": ""}]))) == 1
