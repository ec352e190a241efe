"""octavo: LLM serving on Kubernetes, built from the kernel up.

The public names follow vLLM's so that only the import changes. They are loaded lazily, so
`import octavo.operator` (the operator image) never pulls in torch.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "octavo.runtime.llm",
    "LLMEngine": "octavo.runtime.engine",
    "AsyncLLMEngine": "octavo.runtime.async_engine",
    "EngineArgs": "octavo.runtime.config",
    "AsyncEngineArgs": "octavo.runtime.config",
    "SamplingParams": "octavo.runtime.sampling_params",
    "RequestOutput": "octavo.runtime.outputs",
    "CompletionOutput": "octavo.runtime.outputs",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'octavo' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
