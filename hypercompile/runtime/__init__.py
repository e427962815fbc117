"""Torch-free runtime: `load(path)` -> Bundle; `Bundle.run(inputs, **cond)`."""

from .bundle import Bundle, load

__all__ = ["Bundle", "load"]
