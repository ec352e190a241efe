"""spec.extraArgs: extra `octavo serve` flags, read by the server's own parser before rollout.

A flag the server does not know would crash every new pod (exit 2 at start) while the rollout
waits on them; checking here, with `octavo serve`'s parser (which imports no torch), turns that
into SpecValid=False naming the flag, and nothing is rolled out. Flags whose value the operator
already sets from the spec (the model, host, port, served name, shutdown timeout, the engine
settings the spec has fields for) and the API key are refused too: each names the spec field to
use instead, so the spec stays the one place a setting lives.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from octavo.runtime.server import cli as serve_cli
from octavo.runtime.server import vllm_flags

# Never from extraArgs: the operator passes the model positionally and the API key through the
# environment (from its Secret); --config names a file the operator cannot read to check.
_REFUSED = {
    "model_tag": "the model comes from spec.model",
    "model": "the model comes from spec.model",
    "api_key": "the API key comes from spec.apiKeySecretRef (or the generated Secret)",
}
_SPEC_FIELD_FOR = {
    "tensor_parallel_size": "spec.tensorParallelSize", "dtype": "spec.dtype",
    "max_num_seqs": "spec.maxNumSeqs", "max_model_len": "spec.maxModelLen",
    "gpu_memory_utilization": "spec.gpuMemoryUtilization",
    "speculative_model": "spec.speculative.draftModel",
    "num_speculative_tokens": "spec.speculative.numSpeculativeTokens",
    "revision": "spec.model.revision", "download_dir": "spec.modelCache.mountPath",
    "served_model_name": "the operator (the model's name)",
    "shutdown_timeout": "spec.shutdownTimeoutSeconds",
    "host": "the operator (every pod listens on its pod IP)", "port": "the operator (port 8000)",
}


class _Refused(Exception):
    pass


class _CheckingParser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting."""

    def error(self, message: str):
        raise _Refused(message)

    def exit(self, status: int = 0, message: str | None = None):
        raise _Refused(message or "the flag would end the server at start")


def _parser() -> argparse.ArgumentParser:
    parser = _CheckingParser(prog="octavo serve", add_help=False)
    serve_cli.add_arguments(parser)
    return parser


def _dest_of(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-").replace("-", "_")


def check(extra: Sequence[str], operator_argv: Sequence[str]) -> list[str]:
    """Why `extra` cannot follow the operator's `octavo serve` arguments (`operator_argv`,
    without `octavo serve`); empty when it can."""
    if not extra:
        return []
    for arg in extra:
        if arg in ("-h", "--help") or arg.split("=", 1)[0] in ("--config", "--version"):
            return [f"spec.extraArgs: {arg.split('=', 1)[0]} cannot be used in a pod: give the "
                    "flags themselves in spec.extraArgs"]
    parser = _parser()
    try:
        base = parser.parse_args(serve_cli.expand_argv(list(operator_argv)))
        args, unknown = parser.parse_known_args(serve_cli.expand_argv([*operator_argv, *extra]))
    except _Refused as exc:
        return [f"spec.extraArgs: {exc} (see `octavo serve --help`)"]
    if unknown:
        return [f"spec.extraArgs: {' '.join(unknown)} is not a flag `octavo serve` knows (neither "
                "its own nor vLLM's): remove it or fix its spelling (see `octavo serve --help`)"]
    errors: list[str] = []
    unsupported = vllm_flags.unsupported_flag(args)
    if unsupported:
        errors.append(f"spec.extraArgs: {unsupported}")
    # What the operator passes, and every setting the spec has a field for (passed or defaulted).
    operator_dests = {_dest_of(a) for a in operator_argv if a.startswith("--")} | set(_SPEC_FIELD_FOR)
    base_values, values = vars(base), vars(args)
    mentioned = {_dest_of(a) for a in extra if a.startswith("--")}
    for dest in sorted(values):
        changed = values[dest] != base_values.get(dest)
        if dest in _REFUSED and (changed or dest in mentioned):
            flag = "a MODEL argument" if dest == "model_tag" else f"--{dest.replace('_', '-')}"
            errors.append(f"spec.extraArgs sets {flag}: {_REFUSED[dest]}")
        elif dest in operator_dests and changed:
            where = _SPEC_FIELD_FOR.get(dest, "the operator")
            errors.append(f"spec.extraArgs sets --{dest.replace('_', '-')}, which "
                          f"{'is set by ' + where if where.startswith('the ') else 'comes from ' + where}"
                          f": {'leave it out' if where.startswith('the ') else 'set it there'}")
    return errors
