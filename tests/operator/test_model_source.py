"""spec.model.source parsing (model_source.py): each scheme, its revision rules, and refusals
that name the fix."""

from __future__ import annotations

import pytest

from octavo.operator import model_source as ms


@pytest.mark.parametrize("text, revision, expected", [
    ("hf://meta-llama/Llama-3.1-8B", None, ms.ModelSource(ms.HF, "meta-llama/Llama-3.1-8B")),
    ("hf://org/m@v1.0", None, ms.ModelSource(ms.HF, "org/m", revision="v1.0")),
    ("hf://org/m", "abc123", ms.ModelSource(ms.HF, "org/m", revision="abc123")),
    ("hf://org/m@abc123", "abc123", ms.ModelSource(ms.HF, "org/m", revision="abc123")),
    ("pvc://weights/llama/8b", None, ms.ModelSource(ms.PVC, "llama/8b", claim="weights")),
    ("pvc://weights", None, ms.ModelSource(ms.PVC, "", claim="weights")),
    ("pvc://weights/a/../b/", None, ms.ModelSource(ms.PVC, "b", claim="weights")),
    ("oci://registry.local/models/llama:8b", None,
     ms.ModelSource(ms.OCI, "registry.local/models/llama:8b")),
    ("/models/llama", None, ms.ModelSource(ms.PATH, "/models/llama")),
    ("llama/8b", None, ms.ModelSource(ms.PATH, "llama/8b")),
])
def test_parses(text, revision, expected):
    assert ms.parse(text, revision) == expected


@pytest.mark.parametrize("text, revision, fix", [
    ("", None, "use hf://org/name"),
    ("s3://bucket/model", None, "unknown scheme 's3://'"),
    ("hf://just-a-name", None, "is not a hub id (org/name)"),
    ("hf://org/m@", None, "is not a revision"),
    ("hf://org/m@v1", "v2", "set one of them"),
    ("pvc://Bad_Claim/x", None, "is not a PersistentVolumeClaim name"),
    ("pvc://weights/../../etc", None, "must stay inside the claim"),
    ("pvc://weights/x", "main", "applies to hf:// sources only"),
    ("oci://UPPER/case", None, "is not an image reference"),
])
def test_refuses_with_the_fix(text, revision, fix):
    with pytest.raises(ms.SourceError) as info:
        ms.parse(text, revision)
    assert fix in str(info.value)


@pytest.mark.parametrize("text, display, served", [
    ("hf://org/m@v1", "hf://org/m@v1", "org/m"),
    ("pvc://weights/llama/8b", "pvc://weights/llama/8b", "8b"),
    ("pvc://weights", "pvc://weights", "weights"),
    ("oci://registry.local:5000/models/llama:8b", "oci://registry.local:5000/models/llama:8b",
     "llama"),
    ("/models/llama/", "/models/llama/", "llama"),
])
def test_display_and_served_name(text, display, served):
    source = ms.parse(text)
    assert (source.display, source.served_name) == (display, served)
    assert source.needs_download == text.startswith("hf://")
