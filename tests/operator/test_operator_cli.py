"""`octavo operator` and `octavo check-pair` as commands."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from operator_helpers import REPO

from octavo.operator import cli

pytestmark = pytest.mark.timeout(120)


def parse(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_namespaces_from_flags_then_environment(monkeypatch):
    monkeypatch.delenv("OCTAVO_WATCH_NAMESPACES", raising=False)
    assert cli.namespaces_from(parse(["-n", "ml", "--namespace", "a,b"])) == (False, ["ml", "a", "b"])
    assert cli.namespaces_from(parse(["-A"])) == (True, [])
    assert cli.namespaces_from(parse([])) == (True, [])
    monkeypatch.setenv("OCTAVO_WATCH_NAMESPACES", "team-a, team-b")
    assert cli.namespaces_from(parse([])) == (False, ["team-a", "team-b"])
    assert cli.namespaces_from(parse(["-n", "ml"])) == (False, ["ml"])
    monkeypatch.setenv("OCTAVO_WATCH_NAMESPACES", "*")
    assert cli.namespaces_from(parse([])) == (True, [])


def test_run_starts_kopf_with_the_handlers(monkeypatch):
    import kopf

    calls = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(kopf, "configure", lambda **kwargs: None)
    code = cli.run(parse(["-n", "ml", "--standalone", "--liveness", "http://0.0.0.0:8080/healthz"]))
    assert code == 0
    assert calls == [{"clusterwide": False, "namespaces": ["ml"], "standalone": True,
                      "priority": 0, "liveness_endpoint": "http://0.0.0.0:8080/healthz"}]
    assert "octavo.operator.main" in sys.modules  # imported by run(): the handlers registered


def test_parsers_import_nothing_heavy():
    code = ("import argparse, sys\n"
            "from octavo.operator import cli, check_pair\n"
            "for m in (cli, check_pair): m.add_arguments(argparse.ArgumentParser())\n"
            "print(sorted(n for n in ('kopf', 'torch', 'transformers', 'tokenizers', 'kubernetes')"
            " if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_octavo_check_pair_command(vocab_models, tmp_path):
    """Through the `octavo` entry point, as the validation Job runs it."""
    log = tmp_path / "termination-log"
    out = subprocess.run(
        [sys.executable, "-m", "octavo.cli", "check-pair", "--target", str(vocab_models["target"]),
         "--draft", str(vocab_models["draft-other-family"]), "--json", "--termination-log",
         str(log)], capture_output=True, text=True, timeout=90, cwd=REPO)
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["reason"] == "VocabularyMismatch"
    assert json.loads(log.read_text())["verdict"] == "incompatible"
