"""`spec.model.source` (and the draft's): where a model's files come from, parsed once.

    hf://org/name[@revision]   the Hugging Face hub; fetched once into the model cache by a Job
    pvc://claim/path           a directory on an existing PersistentVolumeClaim, mounted read-only
    oci://image[:tag]          an OCI image holding the files (a Kubernetes image volume)
    /abs/path or rel/path      a directory in the container (relative: under the model cache)

Pure: no I/O, so the webhook, the reconcile and the builders read the same answer.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

HF, PVC, OCI, PATH = "hf", "pvc", "oci", "path"
SCHEMES = (HF, PVC, OCI)

# Hub ids: org/name of letters, digits, '-', '_', '.'; revisions: a branch, tag or commit.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# A PVC name is a DNS subdomain.
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# An image reference: [registry[:port]/]repository[:tag][@digest], lower-case repository.
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._:/-]*[a-z0-9](:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?"
                    r"(@sha256:[0-9a-f]{64})?$")


class SourceError(ValueError):
    """A source string that names nothing usable; the message names the fix."""


@dataclass(frozen=True)
class ModelSource:
    """One parsed source. `location` is the hub id (hf), the directory inside the claim (pvc,
    '' for its root), the image (oci) or the path (path)."""

    kind: str
    location: str
    revision: str | None = None
    claim: str | None = None

    @property
    def display(self) -> str:
        if self.kind == HF:
            return f"hf://{self.location}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == PVC:
            return f"pvc://{self.claim}/{self.location}".rstrip("/")
        if self.kind == OCI:
            return f"oci://{self.location}"
        return self.location

    @property
    def served_name(self) -> str:
        """The model name clients send: the hub id, else the last path or repository part."""
        if self.kind == HF:
            return self.location
        tail = self.location
        if self.kind == OCI:
            tail = tail.split("@", 1)[0]
            last = tail.rsplit("/", 1)[-1]
            tail = tail.rsplit(":", 1)[0] if ":" in last else tail
        if self.kind == PVC and not tail:
            return self.claim or "model"
        return posixpath.basename(tail.rstrip("/")) or "model"

    @property
    def needs_download(self) -> bool:
        """Only hub sources are fetched into the model cache; the others are mounted."""
        return self.kind == HF


def parse(source: str, revision: str | None = None) -> ModelSource:
    """Parse a source string; `revision` (spec.model.revision) applies to hub sources and must
    agree with an `@revision` in the string."""
    text = (source or "").strip()
    if not text:
        raise SourceError("model source is empty: use hf://org/name, pvc://claim/path, "
                          "oci://image:tag or a path")
    scheme, sep, rest = text.partition("://")
    if not sep:
        if "://" in text or ":" in text.split("/", 1)[0]:
            raise SourceError(f"model source {text!r} has an unknown scheme: use one of "
                              "hf://, pvc://, oci:// or a plain path")
        return ModelSource(PATH, text)
    if scheme not in SCHEMES:
        raise SourceError(f"model source {text!r}: unknown scheme {scheme + '://'!r}; use one of "
                          "hf://, pvc://, oci:// or a plain path")
    if scheme == HF:
        hub_id, at, pinned = rest.partition("@")
        if not _HUB_ID.match(hub_id):
            raise SourceError(f"model source {text!r}: {hub_id!r} is not a hub id (org/name)")
        if at and not _REVISION.match(pinned):
            raise SourceError(f"model source {text!r}: {pinned!r} is not a revision (a branch, "
                              "tag or commit)")
        if at and revision and pinned != revision:
            raise SourceError(f"model source {text!r} pins revision {pinned!r} but revision is "
                              f"{revision!r}: set one of them")
        return ModelSource(HF, hub_id, revision=pinned if at else revision)
    if revision:
        raise SourceError(f"revision {revision!r} applies to hf:// sources only; {scheme}:// "
                          "sources are whatever the claim or image holds")
    if scheme == PVC:
        claim, _, path = rest.partition("/")
        if not _CLAIM.match(claim):
            raise SourceError(f"model source {text!r}: {claim!r} is not a PersistentVolumeClaim "
                              "name")
        path = posixpath.normpath(path).lstrip("/") if path else ""
        if path == ".":
            path = ""
        if path.startswith(".."):
            raise SourceError(f"model source {text!r}: the path must stay inside the claim")
        return ModelSource(PVC, path, claim=claim)
    if not _IMAGE.match(rest):
        raise SourceError(f"model source {text!r}: {rest!r} is not an image reference "
                          "(registry/repository[:tag][@sha256:digest])")
    return ModelSource(OCI, rest)
