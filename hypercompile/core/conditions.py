"""Conditions: dicts of str -> JSON value (scalars, lists, nested objects), and their canonical
key, the text by which a bundle files, matches and deduplicates them. Torch-free.

The key is the JSON text with sorted object keys and no spaces, so the order of a dict's keys
does not matter while the order of a list does; an integral float keys like the int
(`2.0` and `2` are one number), while `true` and `1` stay apart (JSON tells them apart).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 16  # lists and objects nested deeper than this are refused


def value_problem(value: Any, where: str, depth: int = 0) -> str | None:
    """Why `value` is not a JSON value a condition may hold, or None. Tuples count as lists."""
    if depth > MAX_DEPTH:
        return f"{where} is nested more than {MAX_DEPTH} levels deep"
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value}, which JSON cannot hold"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = value_problem(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                return f"{where} has key {k!r}, not a string"
            problem = value_problem(item, f"{where}.{k}", depth + 1)
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, not a JSON value"


def cond_problem(cond: Any, where: str = "condition") -> str | None:
    """Why `cond` is not a condition (a dict of str -> JSON value), or None."""
    if not isinstance(cond, dict):
        return f"{where} is a {type(cond).__name__}, not a dict"
    return value_problem(cond, where)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return _canonical(value.item())
    return value


def value_key(value: Any) -> str:
    """The canonical text of one condition value (ValueError/TypeError if it is not JSON)."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def cond_key(cond: dict[str, Any]) -> str:
    """The canonical text of a whole condition: equal for conditions that are equal as JSON."""
    return value_key(cond)


def as_json(cond: dict[str, Any]) -> dict[str, Any]:
    """A copy of `cond` as JSON holds it (tuples become lists), for the manifest."""
    return json.loads(json.dumps(cond, allow_nan=False))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_value(text: str) -> Any:
    """A condition value as the command line writes it: JSON first (`3`, `true`, `"3"`,
    `[3,5,7]`, `{"ks":3}`), else the text itself as a string (`en`). Text that opens like a
    JSON list, object or string but does not parse is a ValueError, not a string."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        if text.lstrip()[:1] in ("[", "{", '"'):
            raise ValueError(f"{text!r} is not valid JSON ({str(e).splitlines()[0]})") from None
        return text


def show(value: Any) -> str:
    """A value as the command line writes it (`parse_value` gives it back): a string bare
    unless it would read as something else (`"1"`, `"true"`), anything else as JSON."""
    if isinstance(value, str):
        try:
            if parse_value(value) == value:
                return value
        except ValueError:
            pass
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)
