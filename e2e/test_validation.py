"""Scenario 4: invalid LLMServices are refused at `kubectl apply`, by the CRD's structural schema
(no operator needed) and by the operator's validating webhook (semantic rules)."""

from __future__ import annotations

import copy

import pytest

from e2e import serving

pytestmark = pytest.mark.e2e

MINIMAL = {"apiVersion": serving.GROUP_VERSION, "kind": serving.KIND, "metadata": {"name": "minimal"},
           "spec": {"model": {"name": "octavo-demo"}}}


def base_document() -> dict:
    if serving.repo_path("examples", "demo.yaml").exists():
        return serving.example("demo.yaml")
    return copy.deepcopy(MINIMAL)


def schema_violations(spec_schema: dict, spec: dict) -> list[tuple[str, dict]]:
    """Specs the schema must refuse, derived from the CRD itself so the test follows its fields:
    a value outside an enum, a number below its minimum, a string where a number belongs, and a
    required field removed."""
    cases: list[tuple[str, dict]] = []

    def walk(schema: dict, path: tuple[str, ...]):
        for key, sub in (schema.get("properties") or {}).items():
            yield path + (key,), sub
            if sub.get("type") == "object":
                yield from walk(sub, path + (key,))

    def with_value(path: tuple[str, ...], value) -> dict:
        result = copy.deepcopy(spec)
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        return result

    fields = list(walk(spec_schema, ()))
    enum = next(((p, s) for p, s in fields if s.get("enum") and s.get("type") == "string"), None)
    if enum:
        cases.append((f"{'.'.join(enum[0])} outside its enum", with_value(enum[0], "not-a-choice")))
    minimum = next(((p, s) for p, s in fields if s.get("type") == "integer" and "minimum" in s), None)
    if minimum:
        cases.append((f"{'.'.join(minimum[0])} below its minimum",
                      with_value(minimum[0], int(minimum[1]["minimum"]) - 1)))
    integer = next(((p, s) for p, s in fields if s.get("type") == "integer"), None)
    if integer:
        cases.append((f"{'.'.join(integer[0])} as a string", with_value(integer[0], "many")))
    required = spec_schema.get("required") or []
    if required:
        without = copy.deepcopy(spec)
        without.pop(required[0], None)
        cases.append((f"spec.{required[0]} missing", without))
    return cases


def test_schema_rejects_invalid_specs(cluster, crd, namespace):
    document = base_document()
    accepted = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                               input=serving.yaml.safe_dump(document), check=False)
    assert accepted.returncode == 0, f"the valid document was refused: {accepted.stderr}"

    cases = schema_violations(serving.crd_spec_schema(crd), document["spec"])
    assert len(cases) >= 3, f"the CRD schema constrains too little to test: {[c[0] for c in cases]}"
    for description, spec in cases:
        invalid = dict(document, spec=spec)
        result = serving.apply(cluster, namespace, invalid, check=False)
        assert result.returncode != 0, f"{description}: the API server accepted it"
        assert "is invalid" in result.stderr or "Invalid value" in result.stderr \
            or "Unsupported value" in result.stderr or "Required value" in result.stderr, \
            f"{description}: unexpected error {result.stderr}"
    # Nothing was stored.
    assert not cluster.kube.get(serving.llms_path(namespace))["items"]


def test_webhook_rejects_semantically_invalid_specs(cluster, operator, namespace):
    configurations = cluster.kube.get(
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations")["items"]
    assert any("llmservices" in rule.get("resources", [])
               for c in configurations for hook in c.get("webhooks") or [] for rule in hook.get("rules") or []), \
        "no validating webhook is registered for llmservices"

    document = base_document()
    target = document["spec"]["model"]
    draft_is_target = copy.deepcopy(document)
    draft_is_target["spec"]["speculative"] = {"draftModel": copy.deepcopy(target), "numSpeculativeTokens": 3}
    inverted_autoscaling = copy.deepcopy(document)
    inverted_autoscaling["spec"]["autoscaling"] = {"minReplicas": 3, "maxReplicas": 1}

    # The webhook alone can see that a draft is its own target.
    result = serving.apply(cluster, namespace, draft_is_target, check=False)
    assert result.returncode != 0, "a draft equal to the target was accepted"
    assert "admission webhook" in result.stderr and "denied the request" in result.stderr, \
        f"not refused by the webhook: {result.stderr}"
    # The schema (CEL) or the webhook may refuse this one; either way it is never stored.
    result = serving.apply(cluster, namespace, inverted_autoscaling, check=False)
    assert result.returncode != 0, "autoscaling.maxReplicas below minReplicas was accepted"
    assert not cluster.kube.get(serving.llms_path(namespace))["items"]
