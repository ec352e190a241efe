"""Fixtures for the operator's tests: tokenizer model directories and a kmock Kubernetes
emulator that knows the resources the operator uses. Helpers live in operator_helpers.py (a
unique module name: every test folder has a conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from operator_helpers import RESOURCES
from operator_vocab_models import make_models


@pytest.fixture(autouse=True)
def no_leaked_kv_blocks():
    """Overrides the suite-wide KV-leak check: operator tests build no engines, and skipping it
    keeps torch out of this process (the operator itself never imports it)."""
    yield


@pytest.fixture(scope="session")
def vocab_models(tmp_path_factory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("vocab-models"))


@pytest.fixture()
def k8s(kmock):
    """kmock's Kubernetes emulator, knowing every resource the operator touches."""
    for key, (kind, subresources) in RESOURCES.items():
        info = kmock.resources[key]
        info.kind = kind
        info.namespaced = True
        info.verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
        info.subresources = set(subresources)
    # Discovery must show namespaces (kopf resolves them before anything else), as any cluster
    # does; they are never listed (the operator disables kopf's scanning).
    namespaces = kmock.resources["v1/namespaces"]
    namespaces.kind, namespaces.namespaced, namespaces.verbs = "Namespace", False, {"get", "list"}
    return kmock


@pytest.fixture()
def kube(k8s):
    from octavo.operator.kube import Kube

    return Kube.for_server(str(k8s.url), timeout=10)


