"""Torch-free runtime: `load(path)` -> Bundle; `Bundle.run(inputs, **cond)`; on the device,
`prepare(bundle)` readies the artifacts it builds there (TensorRT engines)."""

from .bundle import Bundle, load, prepare

__all__ = ["Bundle", "load", "prepare"]
