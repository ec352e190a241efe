"""Model delivery builders (model_delivery.py, model_volumes.py), `octavo fetch-model`, and the
spec's source -> serving path mapping: each manifest field by field and against the Kubernetes
schemas."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from operator_helpers import K8S_VERSION, as_stored, load_example

from octavo.operator import fetch_model, model_delivery, resources
from octavo.operator.spec import LLMServiceSpec

pytestmark = pytest.mark.timeout(60)


def build(spec_dict, name="llm"):
    body = as_stored({"apiVersion": "serving.octavo.dev/v1alpha1", "kind": "LLMService",
                      "metadata": {"name": name}, "spec": spec_dict})
    return body, LLMServiceSpec.from_dict(body["spec"])


def hf_spec(**extra):
    spec = {"model": {"source": "hf://org/model@v1", "hubTokenSecretRef": {"name": "hf-token"}},
            "modelCache": {"size": "20Gi", "storageClassName": "fast"}, "replicas": 2}
    spec.update(extra)
    return spec


def server(deploy):
    return deploy["spec"]["template"]["spec"]["containers"][0]


def test_hf_source_with_a_cache_is_served_from_the_claim_read_only():
    body, spec = build(hf_spec())
    assert spec.cache_delivery and spec.delivery_hash()
    claim = spec.cache_claim("llm")
    assert claim == f"llm-model-{spec.delivery_hash()[:10]}"
    deploy = resources.deployment(body, spec)
    args = server(deploy)["args"]
    assert args[args.index("--model") + 1] == "/models/hf/org--model/v1"  # not the hub id
    assert "--revision" not in args  # a local directory has no revision
    assert args[args.index("--served-model-name") + 1] == "org/model"
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "persistentVolumeClaim": {
        "claimName": claim, "readOnly": True}}
    mounts = {m["name"]: m for m in server(deploy)["volumeMounts"]}
    assert mounts["model-cache"]["readOnly"] is True
    assert deploy["metadata"]["annotations"][resources.ANNOTATION_MODEL] == "hf://org/model@v1"
    kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)


def test_cache_claim_and_download_job():
    body, spec = build(hf_spec(modelCache={"size": "20Gi", "storageClassName": "fast",
                                           "downloadTimeoutSeconds": 600}))
    pvc = model_delivery.cache_claim(body, spec)
    assert pvc["metadata"]["name"] == spec.cache_claim("llm")
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                           "resources": {"requests": {"storage": "20Gi"}}}
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    job = model_delivery.download_job(body, spec)
    assert job["metadata"]["name"] == f"llm-fetch-{spec.delivery_hash()[:12]}"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["octavo", "fetch-model", "--source", "hf://org/model@v1",
                                    "--dest", "/models/hf/org--model/v1",
                                    "--result", "/dev/termination-log"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token",
                                                                "key": "HF_TOKEN"}}} in container["env"]
    # Writable here only; the claim is the one the serving pods mount read-only.
    assert {"name": "model-cache", "mountPath": "/models"} in container["volumeMounts"]
    assert job["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"] == {
        "claimName": pvc["metadata"]["name"]}
    assert job["spec"]["activeDeadlineSeconds"] == 600
    for obj in (pvc, job):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_named_claim_is_not_created_and_a_new_source_is_a_new_claim():
    body, spec = build(hf_spec(modelCache={"claimName": "shared-weights"}))
    assert model_delivery.cache_claim(body, spec) is None
    assert spec.cache_claim("llm") == "shared-weights"
    _, v1 = build(hf_spec())
    _, v2 = build(hf_spec(model={"source": "hf://org/model@v2"}))
    assert v1.cache_claim("llm") != v2.cache_claim("llm")
    assert v1.delivery_hash() != v2.delivery_hash()


def test_hf_draft_is_fetched_too_and_the_validation_job_reads_the_cache():
    body, spec = build(hf_spec(speculative={"draftModel": {"source": "hf://org/draft"}}))
    job = model_delivery.download_job(body, spec)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command.count("--source") == 2 and "/models/hf/org--draft/main" in command
    check = resources.validation_job(body, spec)
    check_container = check["spec"]["template"]["spec"]["containers"][0]
    command = check_container["command"]
    assert command[command.index("--target") + 1] == "/models/hf/org--model/v1"
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in \
        check_container["volumeMounts"]
    volumes = {v["name"]: v for v in check["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["readOnly"] is True


def test_without_a_cache_an_hf_source_is_downloaded_by_the_server():
    body, spec = build({"model": {"source": "hf://org/model@v1"}})
    assert not spec.cache_delivery
    args = server(resources.deployment(body, spec))["args"]
    assert args[args.index("--model") + 1] == "org/model"
    assert args[args.index("--revision") + 1] == "v1"


@pytest.mark.parametrize("example, source_volume, model_arg", [
    ("model-pvc.yaml", {"name": "model-source-target", "persistentVolumeClaim": {
        "claimName": "model-weights", "readOnly": True}},
     "/model-sources/target/mistral/Mistral-7B-Instruct-v0.3"),
    ("model-oci.yaml", {"name": "model-source-target", "image": {
        "reference": "registry.local/models/qwen2.5-0.5b-instruct:1.0",
        "pullPolicy": "IfNotPresent"}}, "/model-sources/target"),
])
def test_mounted_sources(example, source_volume, model_arg):
    body = as_stored(load_example(example))
    spec = LLMServiceSpec.from_dict(body["spec"])
    deploy = resources.deployment(body, spec)
    assert source_volume in deploy["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model-source-target", "mountPath": "/model-sources/target",
            "readOnly": True} in server(deploy)["volumeMounts"]
    args = server(deploy)["args"]
    assert args[args.index("--model") + 1] == model_arg
    kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)


def test_download_state_reads_the_job_and_its_results():
    running = {"status": {"active": 1}}
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True",
                                         "reason": "BackoffLimitExceeded", "message": "x"}]}}
    assert model_delivery.download_state(None, []).phase == "Pending"
    assert model_delivery.download_state({"status": {}}, []).phase == "Pending"
    assert model_delivery.download_state(running, []).phase == "Downloading"
    done = model_delivery.download_state(complete, [{"phase": "Succeeded", "files": 7,
                                                     "bytes": 1234, "message": "ok"}])
    assert (done.phase, done.files, done.bytes) == ("Succeeded", 7, 1234)
    bad = model_delivery.download_state(failed, [{"phase": "Failed",
                                                  "message": "hf://org/m: 401 gated repo"}])
    assert bad.phase == "Failed" and "401 gated repo" in bad.message
    crash = model_delivery.parse_result("Traceback...\nOSError: disk full")
    assert crash["phase"] == "Failed" and "disk full" in crash["message"]


def test_fetch_model_fetches_once_and_reports(tmp_path):
    calls = []

    def fake_download(repo_id, revision, local_dir, token):
        calls.append((repo_id, revision))
        (tmp_path / "m" / "config.json").write_text("{}")
        (tmp_path / "m" / "model.safetensors").write_bytes(b"x" * 100)

    pairs = [("hf://org/m@v1", str(tmp_path / "m"))]
    first = fetch_model.fetch(pairs, fake_download)
    assert first["phase"] == "Succeeded" and (first["files"], first["bytes"]) == (2, 102)
    again = fetch_model.fetch(pairs, fake_download)  # a restarted Job: the marker says done
    assert again["phase"] == "Succeeded" and calls == [("org/m", "v1")]
    assert again["models"][0]["cached"] is True

    def failing(**_):
        raise OSError("401 Client Error: gated repo")

    bad = fetch_model.fetch([("hf://org/other", str(tmp_path / "o"))], failing)
    assert bad["phase"] == "Failed" and "gated repo" in bad["message"]
    assert fetch_model.fetch([("pvc://c/x", str(tmp_path / "p"))])["phase"] == "Failed"
    huge = {"phase": "Succeeded", "message": "m", "files": 1, "bytes": 1,
            "models": [{"model": "x" * 5000}]}
    assert len(fetch_model.encode_result(huge)) <= fetch_model.MAX_RESULT_BYTES
    assert json.loads(fetch_model.encode_result(huge))["phase"] == "Succeeded"


def test_fetch_model_cli_usage(tmp_path):
    from octavo.cli import main

    assert main(["fetch-model", "--source", "hf://a/b", "--source", "hf://c/d",
                 "--dest", str(tmp_path)]) == 2


def test_fetch_model_through_snapshot_download_against_a_fake_hub(tmp_path, monkeypatch):
    """The real huggingface_hub path: revision pinned, files and bytes counted, a second run
    (a restarted Job) fetches nothing, a missing repository is a Failed result naming it."""
    from e2e.fake_hub import FakeHub

    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "sub" / "weights.bin").write_bytes(b"w" * 1000)
    from huggingface_hub import constants

    with FakeHub({"org/m": source}) as hub:
        # The suite runs offline (HF_HUB_OFFLINE=1, read at import): this test's only hub is
        # the fake one on loopback.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        dest = tmp_path / "cache" / "hf" / "org--m" / "main"
        result = fetch_model.fetch([("hf://org/m@main", str(dest))])
        assert result["phase"] == "Succeeded", result
        assert (result["files"], result["bytes"]) == (2, 1000 + len('{"model_type": "llama"}'))
        assert (dest / "sub" / "weights.bin").read_bytes() == b"w" * 1000
        assert hub.downloads["org/m"] == 2
        assert fetch_model.fetch([("hf://org/m@main", str(dest))])["phase"] == "Succeeded"
        assert hub.downloads["org/m"] == 2
        missing = fetch_model.fetch([("hf://org/missing", str(tmp_path / "x"))])
        assert missing["phase"] == "Failed" and "org/missing" in missing["message"]


def test_the_hub_token_goes_to_whoever_downloads():
    token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token",
                                                                 "key": "HF_TOKEN"}}}
    body, cached = build(hf_spec())
    assert token not in server(resources.deployment(body, cached))["env"]
    body, direct = build({"model": {"source": "hf://org/m", "hubTokenSecretRef": {"name": "hf-token"}},
                          "speculative": {"draftModel": {"source": "hf://org/d"}}})
    assert token in server(resources.deployment(body, direct))["env"]
    check = resources.validation_job(body, direct)["spec"]["template"]["spec"]["containers"][0]
    assert token in check["env"]
