"""State kept between calls: a target whose `forward` changes what a later call reads (a buffer
updated in place, a weight rewritten, a recurrent hidden state kept in `self.h`). A compiled
graph would freeze it and answer wrongly from the second call on, so such state is either carried
through the graph as explicit inputs and outputs (tensors of a fixed shape: the bundle becomes a
stream, see `Bundle.stream`) or refused with the line that writes it (Python values, tensors
that change shape or appear only after the first call).

Found by running, not by reading: the target is called on a private copy, and whatever the call
changed (parameters, buffers, tensor and plain Python attributes of every submodule) is state
only if a later call then answers differently than a fresh copy does, and only the attributes
a call reads before writing them (found by nudging each one) are carried. Attributes `forward`
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
from .clone import clone_module

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


def find_state(
    target: torch.nn.Module, inputs_seq: list[tuple[torch.Tensor, ...]], label: str
) -> tuple[str, ...]:
    """The state `target` keeps between calls, as attribute keys (`path.attr`) to carry through
    its graph: tensors (parameters, buffers, tensor attributes) that a call reads before it
    writes them and that change what a later call answers. () when later calls answer like a
    fresh copy. State that cannot be carried faithfully (a Python value, a tensor that changes
    shape or dtype or appears only after the first call) is refused with the line that writes
    it. `inputs_seq`: a few input tuples, the example first; `target` is never called."""
    fresh = clone_module(target)
    used = clone_module(target)
    before = _snapshot(used)
    _outputs(used, inputs_seq[0])
    after = _snapshot(used)
    changed = [k for k in after if k not in before or not _same(before[k], after[k])]
    if not changed:
        return ()
    later = (inputs_seq[1:] or inputs_seq)[:_LATER_CALLS]
    if not _later_calls_differ(fresh, used, later):
        return ()
    read = [k for k in changed if _read_first(fresh, k, inputs_seq[0], changed)]
    tensors = tuple(
        k
        for k in read
        if isinstance(before.get(k), torch.Tensor)
        and isinstance(after[k], torch.Tensor)
        and (before[k].shape, before[k].dtype) == (after[k].shape, after[k].dtype)
    )
    carried = clone_module(fresh)
    for k in tensors:  # a fresh copy given only the carried state must answer like `used`
        _put(carried, k, after[k])
    if not tensors or _later_calls_differ(carried, used, later, compare_fresh=False):
        rest = [k for k in read if k not in tensors] or changed
        raise UnsupportedModelError(_message(target, rest, label))
    return tensors


def _later_calls_differ(
    a: torch.nn.Module, b: torch.nn.Module, later: list, compare_fresh: bool = True
) -> bool:
    """Whether `b` answers `later` differently from `a` (each call on a copy of `a`, in turn
    on `b` itself, which keeps its state). A non-deterministic forward counts as not differing:
    parity reports it with numbers."""
    b = clone_module(b)
    a_run = clone_module(a)
    for xs in later:
        want = _outputs(clone_module(a) if compare_fresh else a_run, xs)
        if compare_fresh and _differ(want, _outputs(clone_module(a), xs)):
            return False
        if _differ(want, _outputs(b, xs)):
            return True
    return False


def _read_first(fresh: torch.nn.Module, key: str, xs: tuple, changed: list[str]) -> bool:
    """Whether one call reads attribute `key` before writing it: changing its value beforehand
    changes the outputs or the state the call leaves. Written-then-read scratch (snntorch-style
    neurons resetting their membrane each call) is not read first."""
    plain, nudged = clone_module(fresh), clone_module(fresh)
    value = _snapshot(nudged).get(key)
    try:
        _put(nudged, key, _nudge(value))
        got = _outputs(nudged, xs)
    except Exception:  # the nudged value broke the call: it was read
        return True
    want = _outputs(plain, xs)
    if _differ(want, got):
        return True
    a, b = _snapshot(plain), _snapshot(nudged)
    return any(k in a and not _same(a[k], b.get(k)) for k in changed)


def _nudge(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            return ~value
        if value.is_floating_point() or value.is_complex():
            return value + 0.5 + value.abs()
        return value + 1
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    raise TypeError("not nudgeable")  # other Python values count as read


def _put(module: torch.nn.Module, key: str, value: Any) -> None:
    path, _, attr = key.rpartition(".")
    owner = module.get_submodule(path) if path else module
    for table in (owner._parameters, owner._buffers):
        if attr in table:
            table[attr] = value.clone() if isinstance(value, torch.Tensor) else value
            return
    owner.__dict__[attr] = copy.deepcopy(value)


def _message(target: torch.nn.Module, changed: list[str], label: str) -> str:
    where = "" if label == "(single variant)" else f"variant {label}: "
    names = ", ".join(f"`{c}`" for c in changed[:4]) + (" ..." if len(changed) > 4 else "")
    loc = _writer_location(target, changed)
    return (
        f"{loc}{where}forward changes {names} and a later call answers differently: state "
        "kept between calls that cannot be carried through a graph (only tensors of a fixed "
        "shape and dtype, present before the first call, can be; a compiled graph would freeze "
        "the rest). Keep the state in tensors, or pass it in and out of forward explicitly"
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
