"""The CRD: generated file in sync, a valid CustomResourceDefinition, a structural schema whose
defaults, enums and bounds accept the examples and reject bad specs."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml
from operator_helpers import EXAMPLES, K8S_VERSION, REPO, load_example

from octavo.operator import crd
from octavo.operator.spec import ENGINE_SETTINGS
from octavo.runtime.config import DEFAULT_MAX_NUM_SEQS, DEFAULT_NUM_SPECULATIVE_TOKENS, DTYPES, EngineArgs

pytestmark = pytest.mark.timeout(60)

SCHEMA = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


def validate(obj):
    """OpenAPI v3.0 schemas are JSON Schema draft 4 (boolean exclusiveMinimum); the API server
    defaults first, then validates."""
    defaulted = dict(obj, spec=crd.apply_defaults(crd.SPEC_SCHEMA, obj.get("spec", {})))
    jsonschema.Draft4Validator(SCHEMA).validate(defaulted)


@pytest.mark.parametrize("path", ["crds/llmservice.yaml", "charts/octavo-operator/crds/llmservice.yaml"])
def test_checked_in_crd_is_generated_from_crd_py(path):
    assert (REPO / path).read_text() == crd.render_yaml(), \
        f"{path} is stale: python -m octavo.operator.crd > {path}"


def test_crd_is_a_valid_custom_resource_definition():
    kubernetes_validate.validate(yaml.safe_load(crd.render_yaml()), K8S_VERSION, strict=True)


def test_names_subresources_and_printer_columns():
    spec = crd.build_crd()["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["shortNames"]) == \
        ("serving.octavo.dev", "LLMService", ["llms"])
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    # Status-backed: the Model column shows path and source models too, Replicas the live pods,
    # Ready the kstatus condition.
    assert columns == {"Model": ".status.model", "Draft": ".status.draft",
                       "Ready": '.status.conditions[?(@.type=="Ready")].status',
                       "Replicas": ".status.replicas", "Available": ".status.readyReplicas",
                       "Phase": ".status.phase", "URL": ".status.url",
                       "Age": ".metadata.creationTimestamp"}


def _walk(schema, path="$"):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    """Every node has a type (or explicitly preserves unknown fields, or is an int-or-string),
    no oneOf/anyOf at type level but the int-or-string's own, and defaults sit only where the
    type allows them."""
    for path, node in _walk(SCHEMA):
        if node.get("x-kubernetes-int-or-string"):
            assert node.get("anyOf") == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not {"oneOf", "anyOf", "allOf"} & set(node), path
        if "default" in node:
            jsonschema.Draft4Validator(node).validate(node["default"])


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_examples_are_valid_llmservices(name):
    example = load_example(name)
    assert example["apiVersion"] == crd.API_VERSION and example["kind"] == crd.KIND
    validate(example)


def test_defaults_fill_a_minimal_spec():
    spec = crd.apply_defaults(crd.SPEC_SCHEMA, {"model": {"name": "m"},
                                                "speculative": {"draftModel": {"name": "d"}}})
    assert spec["replicas"] == 1 and spec["tensorParallelSize"] == 1
    assert spec["dtype"] == "auto" and spec["maxNumSeqs"] == 256
    assert spec["gpuMemoryUtilization"] == 0.9 and spec["shutdownTimeoutSeconds"] == 30
    assert spec["speculative"]["numSpeculativeTokens"] == 4
    assert spec["speculative"]["validationTimeoutSeconds"] == 600  # was a fixed 1800 s
    assert spec["service"] == {"type": "ClusterIP", "port": 8000}
    assert spec["resources"] == {}  # gpusPerReplica defaults to tensorParallelSize in the operator


# Spec properties that are not engine settings (the operator's own, or mapped another way:
# model -> model/revision, modelCache -> download_dir). Anything else must be in ENGINE_SETTINGS.
NOT_ENGINE_SETTINGS = {"model", "speculative", "speculative.draftModel", "speculative.validationTimeoutSeconds",
                       "replicas", "shutdownTimeoutSeconds",
                       "resources", "image", "imagePullPolicy", "env", "apiKeySecretRef", "modelCache",
                       "autoscaling", "service",
                       # production fields: extraArgs is checked against the server's parser
                       "podTemplate", "extraArgs", "rollout", "inferencePool"}


def _spec_keys(schema, prefix=""):
    for key, sub in schema.get("properties", {}).items():
        yield prefix + key
        if key == "speculative":
            yield from _spec_keys(sub, f"{key}.")


def _node(dotted):
    node = crd.SPEC_SCHEMA
    for key in dotted.split("."):
        node = node["properties"][key]
    return node


def test_every_engine_setting_the_crd_exposes_is_mapped():
    assert set(_spec_keys(crd.SPEC_SCHEMA)) == set(ENGINE_SETTINGS) | NOT_ENGINE_SETTINGS
    assert not set(ENGINE_SETTINGS) & NOT_ENGINE_SETTINGS
    assert set(ENGINE_SETTINGS.values()) <= {flag.name for flag in EngineArgs.cli_flags()}


@pytest.mark.parametrize("key", sorted(ENGINE_SETTINGS))
def test_crd_defaults_are_the_engines(key):
    """A spec that leaves a setting out runs what `octavo serve` would without the flag."""
    name = ENGINE_SETTINGS[key]
    if name == "num_speculative_tokens":  # the engine's default is a cap applied when a draft is set
        engine_default = EngineArgs(speculative_model="d").speculative_settings()[name]
        assert engine_default == DEFAULT_NUM_SPECULATIVE_TOKENS
    elif name == "max_num_seqs":  # unset resolves to the server's 256 (only the offline LLM class widens it)
        engine_default = DEFAULT_MAX_NUM_SEQS
    else:
        engine_default = getattr(EngineArgs(), name)
    assert _node(key).get("default") == engine_default


def test_crd_bounds_are_within_what_the_engine_takes():
    assert set(crd.DTYPES) <= set(DTYPES)
    k = _node("speculative.numSpeculativeTokens")
    assert k["minimum"] == 1
    EngineArgs(speculative_model="d", num_speculative_tokens=k["maximum"]).speculative_settings()
    with pytest.raises(ValueError, match="num_speculative_tokens must be in"):
        EngineArgs(speculative_model="d", num_speculative_tokens=k["maximum"] + 1).speculative_settings()


@pytest.mark.parametrize("path, value", [
    (("speculative", "numSpeculativeTokens"), 0),
    (("speculative", "numSpeculativeTokens"), 17),
    (("dtype",), "fp8"),
    (("gpuMemoryUtilization",), 0),
    (("gpuMemoryUtilization",), 1.5),
    (("replicas",), -1),
    (("tensorParallelSize",), 0),
    (("service", "port"), 70000),
    (("service", "type"), "ExternalName"),
    (("resources", "memory"), "lots"),
    (("resources", "gpusPerReplica"), -1),
    (("autoscaling", "targetQueueDepth"), 0),
    (("modelCache", "mountPath"), "relative/path"),
    (("speculative", "validationTimeoutSeconds"), 5),
    (("resources", "ephemeralStorage"), "a lot"),
])
def test_schema_rejects(path, value):
    example = copy.deepcopy(load_example("speculative.yaml"))
    node = example["spec"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(example)


def test_schema_requires_a_model_and_a_draft_model():
    with pytest.raises(jsonschema.ValidationError):
        validate({"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "x"},
                  "spec": {"replicas": 1}})
    with pytest.raises(jsonschema.ValidationError):
        validate({"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "x"},
                  "spec": {"model": {"name": "m"}, "speculative": {"numSpeculativeTokens": 3}}})


def test_cel_rules_cover_what_json_schema_cannot():
    """CEL is evaluated by the API server (the e2e suite); here: the rules exist, and the same
    checks run in admission.py for clusters without them."""
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert spec["model"]["x-kubernetes-validations"][0]["rule"] == \
        "has(self.name) || has(self.path) || has(self.source)"
    assert spec["modelCache"]["x-kubernetes-validations"][0]["rule"] == \
        "has(self.claimName) || has(self.size)"
    assert spec["autoscaling"]["x-kubernetes-validations"][0]["rule"] == \
        "self.maxReplicas >= self.minReplicas"
