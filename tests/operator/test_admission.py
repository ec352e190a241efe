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


def test_model_and_draft_need_a_source_name_or_path():
    assert "spec.model needs a source" in check_llmservice({"model": {}})[0]
    assert "draftModel needs a source, a name or a path" in \
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


# --- the cluster's policy ----------------------------------------------------------------------

from octavo.operator.admission import Policy, check_policy, image_allowed, name_allowed  # noqa: E402


def test_policy_from_the_environment():
    assert Policy.from_env({}) == Policy(None, None, None)  # a bare operator: unrestricted
    policy = Policy.from_env({"OCTAVO_ALLOWED_IMAGES": "ghcr.io/a/rt, registry.local/ml/*",
                              "OCTAVO_ALLOWED_SECRETS": "", "OCTAVO_ALLOWED_CLAIMS": "*"})
    assert policy == Policy(("ghcr.io/a/rt", "registry.local/ml/*"), (), ("*",))


@pytest.mark.parametrize("image, allowed", [
    ("ghcr.io/a/rt", True), ("ghcr.io/a/rt:1.2", True), ("ghcr.io/a/rt@sha256:ab", True),
    ("ghcr.io/a/rt:1.2@sha256:ab", True), ("ghcr.io/a/rt-evil:1", False),
    ("ghcr.io/a/rtx", False), ("ghcr.io/a/other:1", False),
    ("registry.local/ml/x:1", True), ("registry.local/ml/team/y", True),
    ("registry.local/mlx/y", False), ("registry.local/ml", False),
    ("docker.io/library/python:3.12", False),
])
def test_image_allow_list(image, allowed):
    assert image_allowed(image, ("ghcr.io/a/rt", "registry.local/ml/*")) is allowed
    assert image_allowed(image, None) and image_allowed(image, ("*",))


def test_the_default_runtime_image_is_always_allowed(monkeypatch):
    monkeypatch.setenv("OCTAVO_RUNTIME_IMAGE", "registry.local/octavo-runtime:7")
    assert image_allowed("registry.local/octavo-runtime:7", ())
    assert not image_allowed("registry.local/octavo-runtime:8", ())


@pytest.mark.parametrize("name, allowed", [
    ("hf-token", True), ("hf-", True), ("hf", False), ("team-key", True), ("team-key2", False),
    ("db-password", False), ("hf.token", False), ("xhf-token", False),
])
def test_name_allow_list(name, allowed):
    assert name_allowed(name, ("hf-*", "team-key")) is allowed
    assert name_allowed(name, None) and name_allowed(name, ("*",))
    assert not name_allowed(name, ())


def test_policy_names_every_forbidden_reference():
    spec = {"model": {"name": "m"}, "image": "evil.example/miner:latest",
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token",
                                                                         "key": "token"}}},
                    {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
                    {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "x"}}},
                    {"name": "PLAIN", "value": "1"}],
            "apiKeySecretRef": {"name": "payments-key"},
            "modelCache": {"claimName": "finance-data"}}
    policy = Policy(images=("ghcr.io/octavo-dev/octavo-runtime",), secrets=("hf-*",),
                    claims=("model-*",))
    errors = check_policy(spec, policy)
    assert len(errors) == 4, errors
    assert errors[0].startswith("spec.image 'evil.example/miner:latest' is not an allowed image "
                                "(allowed: ghcr.io/octavo-dev/octavo-runtime)")
    assert errors[1].startswith("spec.env[1] (DB) valueFrom.secretKeyRef names Secret 'db'")
    assert "policy.allowedSecrets" in errors[1]
    assert errors[2].startswith("spec.apiKeySecretRef names Secret 'payments-key'")
    assert errors[3].startswith("spec.modelCache.claimName 'finance-data' is not an allowed claim")
    assert check_policy(spec, Policy()) == []


def test_the_charts_default_policy_and_the_examples():
    """The chart's defaults: the runtime repository, no Secrets, any claim. The examples that
    name Secrets need them allowed (the chart README says how)."""
    chart_default = Policy(images=("ghcr.io/octavo-dev/octavo-runtime",), secrets=(),
                           claims=("*",))
    for name in ("demo.yaml", "demo-speculative.yaml", "llmservice.yaml"):
        assert check_policy(load_example(name)["spec"], chart_default) == []
    errors = check_policy(load_example("speculative.yaml")["spec"], chart_default)
    assert [e.split(" names ")[1].split(",")[0] for e in errors] == \
        ["Secret 'hf-token'", "Secret 'llama-70b-key'"]
    allowing = Policy(chart_default.images, ("hf-token", "*-key"), ("*",))
    assert check_policy(load_example("speculative.yaml")["spec"], allowing) == []


def test_model_sources_are_checked_and_name_the_fix():
    assert check_llmservice({"model": {"source": "hf://org/m@v1"}}) == []
    bad = check_llmservice({"model": {"source": "s3://bucket/m"}})
    assert bad and bad[0].startswith("spec.model.source: ") and "hf://, pvc://, oci://" in bad[0]
    both = check_llmservice({"model": {"source": "hf://org/m", "name": "org/m"}})
    assert both == ["spec.model sets source and name: keep source (hf://org/name is the hub id's "
                    "form)"]
    draft = check_llmservice({"model": {"source": "hf://org/m"},
                              "speculative": {"draftModel": {"source": "pvc://Bad/x"}}})
    assert draft[0].startswith("spec.speculative.draftModel.source: ")
    same = check_llmservice({"model": {"source": "hf://org/m@v1"},
                             "speculative": {"draftModel": {"source": "hf://org/m@v1"}}})
    assert "is the target itself" in same[0]


def test_policy_covers_the_delivery_fields():
    spec = {"model": {"source": "pvc://finance-data/llama", "hubTokenSecretRef": {"name": "db"}},
            "speculative": {"draftModel": {"source": "oci://evil.example/draft:1"}}}
    policy = Policy(images=("ghcr.io/octavo-dev/octavo-runtime",), secrets=("hf-*",),
                    claims=("model-*",))
    errors = check_policy(spec, policy)
    assert errors[0].startswith("spec.model.hubTokenSecretRef names Secret 'db'")
    assert errors[1].startswith("spec.model.source 'finance-data' is not an allowed claim")
    assert errors[2].startswith("spec.speculative.draftModel.source image 'evil.example/draft:1' "
                                "is not an allowed image")
    off = Policy(image_volumes=False)
    assert check_policy({"model": {"source": "oci://registry.local/m:1"}}, off) == [
        "spec.model.source 'oci://registry.local/m:1' needs Kubernetes image volumes, which this "
        "cluster does not enable: use hf:// or pvc://, or ask a cluster admin to set the "
        "octavo-operator chart value modelDelivery.imageVolumes"]
    # Claims the operator creates itself are not the user's to name: no entry needed.
    assert check_policy({"model": {"source": "hf://org/m"}, "modelCache": {"size": "10Gi"}},
                        Policy(claims=())) == []


def test_the_delivery_examples_under_the_charts_default_policy():
    chart_default = Policy(images=("ghcr.io/octavo-dev/octavo-runtime",), secrets=(),
                           claims=("*",), image_volumes=False)
    assert check_llmservice(load_example("model-pvc.yaml")["spec"]) == []
    assert check_policy(load_example("model-pvc.yaml")["spec"], chart_default) == []
    hf = load_example("model-hf-cache.yaml")["spec"]
    assert check_llmservice(hf) == []
    assert check_policy(hf, Policy(chart_default.images, ("hf-token",), ("*",))) == []
    assert "needs Kubernetes image volumes" in check_policy(
        load_example("model-oci.yaml")["spec"], chart_default)[0]
    assert check_policy(load_example("model-oci.yaml")["spec"],
                        Policy(("registry.local/models/*",), (), ("*",), image_volumes=True)) == []
