"""Typed reads of manifest JSON objects: every read names its field, every unknown field is
refused, and every failure is a one-line BundleError naming where it is."""

from __future__ import annotations

from typing import Any

from ..errors import BundleError


class Fields:
    """One JSON object being read. `done()` refuses the keys nobody read."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise BundleError(f"{where} must be an object, not {type(data).__name__}")
        self.data, self.where, self.seen = data, where, set()

    def get(self, key: str, types: Any, default: Any = ...) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise BundleError(f"{self.where}: missing field {key!r}")
            return default
        v = self.data[key]
        allowed = types if isinstance(types, tuple) else (types,)
        # bool is an int in Python, but not in a manifest
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            raise BundleError(f"{self.where}.{key} has the wrong type ({type(v).__name__})")
        return v

    def int(self, key: str, default: Any = ...) -> int:
        return self.get(key, int, default)

    def num(self, key: str, default: Any = ...) -> float:
        return self.get(key, (int, float), default)

    def str(self, key: str, default: Any = ...) -> str:
        return self.get(key, str, default)

    def bool(self, key: str, default: Any = ...) -> bool:
        return self.get(key, bool, default)

    def list(self, key: str, default: Any = ...) -> list:
        return self.get(key, list, default)

    def dict(self, key: str, default: Any = ...) -> dict:
        return self.get(key, dict, default)

    def names(self, key: str, default: Any = ...) -> list[str]:
        v = self.list(key, default)
        if not all(isinstance(x, str) for x in v):
            raise BundleError(f"{self.where}.{key} must be a list of strings")
        return list(v)

    def str_map(self, key: str, default: Any = ...) -> dict[str, str]:
        v = self.dict(key, default)
        if not all(isinstance(x, str) for x in v.values()):
            raise BundleError(f"{self.where}.{key} must map names to strings")
        return dict(v)

    def sub(self, key: str, default: Any = ...) -> Fields | None:
        v = self.dict(key, default)
        return None if v is None else Fields(v, f"{self.where}.{key}")

    def ignore(self, *keys: str) -> None:
        self.seen.update(keys)

    def done(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise BundleError(f"{self.where}: unknown field {extra[0]!r}")
