"""Tiny GPT-2 and BLOOM checkpoints, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from family_checkpoints import build_family_checkpoint


@pytest.fixture(scope="session")
def family_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("family_checkpoints")


@pytest.fixture(scope="session")
def gpt2_dir(family_root) -> Path:
    return build_family_checkpoint(family_root, "gpt2")


@pytest.fixture(scope="session")
def bloom_dir(family_root) -> Path:
    return build_family_checkpoint(family_root, "bloom")

