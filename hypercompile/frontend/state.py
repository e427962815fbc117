"""State kept between calls: a target whose `forward` changes what a later call reads (a buffer
updated in place, a weight rewritten, a Python counter) cannot be compiled into a graph that
answers the same call after call; hypercompile refuses it, naming the line that writes it.

Found by running, not by reading: the target is called on a private copy, and whatever the call
changed (parameters, buffers, tensor and plain Python attributes of every submodule) is state
only if a later call then answers differently than a fresh copy does. Attributes that `forward`
writes before it reads them (snntorch-style neurons that reset their membrane each call) change
nothing a later call sees, so they are not state.
"""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from typing import Any

import torch

from ..errors import BuildError, UnsupportedModelError

_PLAIN = (bool, int, float, str, type(None))
_LATER_CALLS = 3


def _snapshot(module: torch.nn.Module) -> dict[str, Any]:
    """Every value a module tree keeps: parameters, buffers, and attributes that are tensors,
    plain scalars or containers of them, keyed `path.attr`."""
    out: dict[str, Any] = {}
    for path, m in module.named_modules():
        prefix = f"{path}." if path else ""
        for name, t in list(m._parameters.items()) + list(m._buffers.items()):
            if t is not None:
                out[prefix + name] = t.detach().clone()
        for name, v in vars(m).items():
            if name.startswith("_") or name == "training":
                continue
            if isinstance(v, torch.Tensor):
                out[prefix + name] = v.detach().clone()
            elif isinstance(v, _PLAIN) or _plain_container(v):
                out[prefix + name] = copy.deepcopy(v)
    return out


def _plain_container(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(isinstance(x, _PLAIN) or isinstance(x, torch.Tensor) for x in v)
    if isinstance(v, dict):
        return all(isinstance(x, _PLAIN) or isinstance(x, torch.Tensor) for x in v.values())
    return False


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _same_tensor(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes and values, NaN at the same positions counting as equal."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(torch.equal(a.isnan(), b.isnan())) and bool(
            torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
        )
    return bool(torch.equal(a, b))


def _outputs(module: torch.nn.Module, xs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    from .materialize import flatten_outputs

    with torch.no_grad():
        try:
            return flatten_outputs(module(*[x.clone() for x in xs]))[1]
        except AssertionError as e:  # forward's own assert (on shapes, dtypes) fails
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}: " if tb else ""
            why = f": {e}" if str(e) else ""
            raise BuildError(f"{where}assertion fails on the example inputs{why}") from None


def _differ(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) != len(b) or not all(_same(x, y) for x, y in zip(a, b))


def check_stateless(
    target: torch.nn.Module, inputs_seq: list[tuple[torch.Tensor, ...]], label: str
) -> None:
    """Refuse `target` when one call changes what a later call answers. `inputs_seq`: a few
    input tuples (the example first). The target itself is never called or changed."""
    fresh = copy.deepcopy(target)
    used = copy.deepcopy(target)
    before = _snapshot(used)
    _outputs(used, inputs_seq[0])
    after = _snapshot(used)
    changed = [k for k in after if k not in before or not _same(before[k], after[k])]
    if not changed:
        return
    later = (inputs_seq[1:] or inputs_seq)[:_LATER_CALLS]
    for xs in later:
        want = _outputs(copy.deepcopy(fresh), xs)
        if _differ(want, _outputs(copy.deepcopy(fresh), xs)):
            return  # forward is not deterministic: parity says so with numbers
        if _differ(want, _outputs(used, xs)):
            raise UnsupportedModelError(_message(target, changed, label))


def _message(target: torch.nn.Module, changed: list[str], label: str) -> str:
    where = "" if label == "(single variant)" else f"variant {label}: "
    names = ", ".join(f"`{c}`" for c in changed[:4]) + (" ..." if len(changed) > 4 else "")
    loc = _writer_location(target, changed)
    return (
        f"{loc}{where}forward changes {names} and a later call answers differently: state "
        "kept between calls, which a compiled graph would freeze (wrong from the second call "
        "on). Pass the state in and out of forward explicitly, or reset it at the start of "
        "forward"
    )


def _writer_location(target: torch.nn.Module, changed: list[str]) -> str:
    """`file:line: ` of the first statement in the owning module's methods that assigns,
    augments or updates in place the first changed attribute; '' when not found."""
    modules = dict(target.named_modules())
    for key in changed:
        path, _, attr = key.rpartition(".")
        owner = modules.get(path)
        if owner is None:
            continue
        for cls in type(owner).__mro__:
            if cls.__module__.startswith("torch."):
                break
            found = _find_write(cls, attr)
            if found:
                return found
    return ""


def _find_write(cls: type, attr: str) -> str | None:
    try:
        source, start = inspect.getsourcelines(cls)
        filename = inspect.getsourcefile(cls) or "<unknown>"
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(textwrap.dedent("".join(source)))
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        target = None
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if _is_self_attr(t, attr)), None)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.endswith("_")
            and _is_self_attr(node.func.value, attr)
        ):
            target = node
        if target is not None and _inside_method(tree, node) != "__init__":
            return f"{filename}:{start + node.lineno - 1}: "
    return None


def _is_self_attr(node: ast.AST, attr: str) -> bool:
    """`self.attr`, or something inside it (`self.attr[i]`, `self.attr.data`)."""
    while isinstance(node, ast.Subscript) or (
        isinstance(node, ast.Attribute) and not isinstance(node.value, ast.Name)
    ):
        node = node.value
    return (
        isinstance(node, ast.Attribute)
        and node.attr == attr
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _inside_method(tree: ast.AST, node: ast.AST) -> str | None:
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and any(n is node for n in ast.walk(fn)):
            return fn.name
    return None
