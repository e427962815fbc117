"""Host lists: a Python list of tensors grown with `append`, `extend` or `+=` whose length
depends on the path (an append under a data-dependent `if`, an early `break` out of an unrolled
loop, a `while` that appends) is carried by the host as a list of arrays. `ListOp`s of the IR
build it at the end of blocks; the reads the host can make (`torch.stack`, `torch.cat`, `len`,
`list`, a constant index or slice, `return`) end their block, and the rest of the statement
reads their result. Anything else that reads such a list is refused with file:line."""

from __future__ import annotations

import ast
from typing import Any

import torch

from ...core.ir import Goto, ListOp
from .astutil import CopyTransformer
from .state import Env, Frame, St, SymList, Unsupported, loc

_READS = {torch.stack: "stack", torch.cat: "cat", torch.concat: "cat", len: "len", list: "list"}
if hasattr(torch, "concatenate"):
    _READS[torch.concatenate] = "cat"

HOW = (
    "the host can append to it (`append`, `extend`, `+=`), delete a constant index, and read it "
    "with `torch.stack`, `torch.cat`, `len`, `list`, a constant index or slice, or `return`"
)


def path_list(name: str, frame: Frame, node: ast.AST, what: str) -> Unsupported:
    return Unsupported(
        f"{loc(frame, node)}: `{name}` is a list whose length depends on a data-dependent "
        f"path; {what}: {HOW}"
    )


class ListsMixin:
    """Host lists, for `Lowerer`."""

    def hold_list(self, name: str, lst: SymList, st: St, frame: Frame, node: ast.AST) -> str:
        """Make `name` a host list holding the items of tracked list `lst`, at the end of the
        current block; returns why it cannot be ("" when it is)."""
        parts = []
        for kind, x in lst.items:
            if kind != "d":
                return f"it holds a build-time {type(x).__name__}, not a tensor"
            parts.append(x)
        for other, v in st.env.static.items():
            if other != name and _holds(v, lst):
                return f"`{other}` refers to the same list"
        op = ListOp("list", frame.prog(name), parts=tuple(parts), where=loc(frame, node))
        st.block.lists.append(op)
        st.env.set_dynamic(name, host_list=True)
        return ""

    def join_lists(self, name: str, states: list[St], vals: list[Any], frame: Frame, node) -> str:
        """At a join where `name` is a list on every path and they differ: a host list on
        every path. Returns why it cannot be ("" when it is)."""
        for s, v in zip(states, vals):
            if isinstance(v, SymList):
                why = self.hold_list(name, v, s, frame, node)
                if why:
                    return why
        return ""

    # -- growing ------------------------------------------------------------------------------
    def added_parts(self, value: ast.expr, st: St, frame: Frame, node: ast.AST, one: bool):
        """The parts (item names, slices of host lists) that `append(value)` (`one`) or
        `extend(value)` / `+= value` add to a host list."""
        if one:
            return [self._item(value, st, frame, node)]
        if isinstance(value, (ast.List, ast.Tuple)):
            return [self._item(e, st, frame, node) for e in value.elts]
        if isinstance(value, ast.Name) and value.id in st.env.lists:
            return [(frame.prog(value.id), None, None)]
        ok, v = self.static_eval(value, st.env, frame, allow_list=True)
        if ok and isinstance(v, SymList) and all(k == "d" for k, _ in v.items):
            return [x for _, x in v.items]
        raise Unsupported(
            f"{loc(frame, node)}: extending a list whose length depends on a data-dependent "
            f"path with `{ast.unparse(value)[:60]}` (only lists of tensors can)"
        )

    def _item(self, value: ast.expr, st: St, frame: Frame, node: ast.AST) -> str:
        if isinstance(value, ast.Name) and value.id in st.env.lists:
            raise path_list(value.id, frame, node, "it cannot be put into another list")
        ok, v = self.static_eval(value, st.env, frame, allow_list=True)
        if ok and not isinstance(v, torch.Tensor):
            raise Unsupported(
                f"{loc(frame, node)}: a list whose length depends on a data-dependent path "
                f"holds tensors only, not `{ast.unparse(value)[:60]}` ({type(v).__name__})"
            )
        item = self.fresh("item")
        assign = ast.Assign([ast.Name(item, ast.Store())], value)
        self.emit(assign, st, frame, program_targets=True, node=node)
        return item

    def grow_list(self, name: str, parts: list, st: St, frame: Frame, node: ast.AST) -> St:
        dst = frame.prog(name)
        op = ListOp("list", dst, parts=((dst, None, None), *parts), where=loc(frame, node))
        st.block.lists.append(op)
        return st

    def lower_host_list_method(self, call: ast.Call, name: str, st: St, frame: Frame) -> St:
        method = call.func.attr  # type: ignore[attr-defined]
        if method not in ("append", "extend") or len(call.args) != 1 or call.keywords:
            raise path_list(name, frame, call, f"`{method}` is not supported on it")
        parts = self.added_parts(call.args[0], st, frame, call, method == "append")
        return self.grow_list(name, parts, st, frame, call)

    def delete_item(self, target: ast.Subscript, st: St, frame: Frame) -> St:
        """`del xs[i]` on a tracked list (build time) or a host list, `i` a constant."""
        name = target.value.id  # type: ignore[attr-defined]
        ok, i = self.static_eval(target.slice, st.env, frame)
        lst = st.env.static.get(name)
        if isinstance(lst, SymList) and ok and isinstance(i, (int, slice)):
            try:
                del lst.items[i]
            except IndexError:
                raise Unsupported(
                    f"{loc(frame, target)}: `del {ast.unparse(target)}`: index out of range"
                ) from None
            return st
        if name not in st.env.lists or not ok or type(i) is not int:
            raise Unsupported(
                f"{loc(frame, target)}: `del {ast.unparse(target)}` is not supported (only `del "
                "name` and `del xs[i]` on a list, `i` a constant)"
            )
        src, where = frame.prog(name), loc(frame, target)
        check = ListOp("get", self.fresh("del"), src, index=i, where=where)  # raises if absent
        parts = ((src, None, i), (src, i + 1, None)) if i != -1 else ((src, None, -1),)
        st.block.lists += [check, ListOp("list", src, parts=parts, where=where)]
        return st

    # -- reading -------------------------------------------------------------------------------
    def reads_host_list(self, node: ast.AST, env: Env) -> bool:
        return bool(env.lists) and any(
            isinstance(n, ast.Name) and n.id in env.lists for n in ast.walk(node)
        )

    def host_list_reads(self, stmt: ast.stmt, st: St, frame: Frame) -> tuple[ast.stmt, St]:
        """`stmt` with every read of a host list it makes (`torch.stack(xs)`, `xs[-1]`, ...)
        replaced by a name the host sets at the end of the current block; the statement then
        goes to a new block. Other reads are left for the rewriter, which refuses them."""
        found = []
        for n in _walk_eager(stmt):
            read = self._read(n, st.env, frame)
            if read is not None:
                found.append((n, read))
        if not found:
            return stmt, st
        new_nodes = {}
        for n, (op, src, index, is_list) in found:
            local = self.fresh("lst" if is_list else "read")
            where = loc(frame, n)
            if op == "slice":
                parts = ((src, index.start, index.stop),)
                new = ListOp("list", frame.prog(local), parts=parts, where=where)
            else:
                new = ListOp(op, frame.prog(local), src, index=index, where=where)
            st.block.lists.append(new)
            st.env.set_dynamic(local, host_list=is_list)
            new_nodes[id(n)] = ast.copy_location(ast.Name(local, ast.Load()), n)
        stmt = _Replace(new_nodes).visit(stmt)
        nb = self.new_block()
        st.block.term = Goto(nb.id)
        return stmt, St(nb, st.env)

    def _read(self, n: ast.AST, env: Env, frame: Frame):
        """(op, list, index or dim, result is a list) for a read of a host list the host makes."""
        if isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Load):
            if not (isinstance(n.value, ast.Name) and n.value.id in env.lists):
                return None
            ok, i = self.static_eval(n.slice, env, frame)
            src = frame.prog(n.value.id)
            if ok and type(i) is int:
                return ("get", src, i, False)
            if ok and isinstance(i, slice) and i.step in (None, 1):
                if all(x is None or type(x) is int for x in (i.start, i.stop)):
                    return ("slice", src, i, True)
            return None
        if not (isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Name)):
            return None
        if n.args[0].id not in env.lists:
            return None
        ok, fn = self.static_eval(n.func, env, frame, speculative=True)
        op = _READS.get(fn) if ok and _hashable(fn) else None
        if op is None:
            return None
        src = frame.prog(n.args[0].id)
        if op in ("len", "list"):
            if len(n.args) != 1 or n.keywords:
                return None
            return ("len", src, 0, False) if op == "len" else ("slice", src, slice(None), True)
        if any(k.arg not in ("dim", "axis") for k in n.keywords):
            return None
        dims = n.args[1:] + [k.value for k in n.keywords]
        if len(dims) > 1:
            return None
        ok, dim = (True, 0) if not dims else self.static_eval(dims[0], env, frame)
        if not ok or type(dim) is not int:
            return None
        return (op, src, dim, False)


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _holds(v: Any, lst: SymList) -> bool:
    """Whether static value `v` is `lst` or holds it."""
    if v is lst:
        return True
    if isinstance(v, SymList):
        return any(k == "s" and _holds(x, lst) for k, x in v.items)
    if isinstance(v, tuple):
        return any(_holds(x, lst) for x in v)
    return False


def _walk_eager(node: ast.AST):
    """The nodes of `node` that run whenever it does (not in lambdas or comprehensions)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(
            child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
        ):
            yield from _walk_eager(child)


class _Replace(CopyTransformer):
    def __init__(self, new: dict[int, ast.expr]):
        self.new = new

    def visit(self, node: ast.AST) -> ast.AST:
        return self.new.get(id(node)) or super().visit(node)
