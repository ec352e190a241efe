"""Triton kernels for the hot paths, each beside a torch reference of the same signature.
The engine goes through `octavo.kernels.ops`, the only place that picks one or the other."""
