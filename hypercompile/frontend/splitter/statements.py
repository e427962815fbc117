"""Lowering of statements other than loops: `if`, `return`, `with`, `assert`, assignments and
expression statements, and the binding of assignment targets."""

from __future__ import annotations

import ast
import contextlib
import warnings
from typing import Any

import torch

from ...core.ir import Branch, ListOp, Return
from .astutil import is_name_target, replace_node, with_test
from .lists import path_list
from .state import (
    DYN,
    MISSING,
    SIDE_EFFECTS,
    DynRef,
    Env,
    Frame,
    HardUnsupported,
    Loop,
    Poisoned,
    St,
    SymList,
    Unsupported,
    loc,
    symitem,
)

_UNSUPPORTED = {
    ast.Try: "try/except", ast.Raise: "raise", ast.Global: "global", ast.Nonlocal: "nonlocal",
    ast.FunctionDef: "a nested function", ast.ClassDef: "a class definition",
    ast.Import: "import", ast.ImportFrom: "import",
}  # fmt: skip


_NEUTRAL_CONTEXTS: tuple[type, ...] = (
    torch.no_grad,
    torch.enable_grad,
    torch.inference_mode,
    torch.set_grad_enabled,
    contextlib.nullcontext,
    warnings.catch_warnings,
)
# tensor attributes and methods whose values are fixed by the example inputs at build time
_STATIC_FACTS = {
    "dim", "ndim", "ndimension", "shape", "size", "dtype", "device", "layout",
    "is_floating_point", "is_complex", "is_cuda",
}  # fmt: skip


def value_neutral(ctx: Any) -> bool:
    """Whether a context manager object changes no value (grad modes and the like)."""
    if isinstance(ctx, torch.autocast):
        return not getattr(ctx, "_enabled", True)
    return isinstance(ctx, _NEUTRAL_CONTEXTS)


def _static_facts(test: ast.expr, env: Env) -> bool:
    """Whether every run-time name in `test` is only asked for static facts (`x.dim()`,
    `x.shape[1]`, `x.dtype`, ...), never for its data."""
    facts = {
        id(n.value)
        for n in ast.walk(test)
        if isinstance(n, ast.Attribute) and n.attr in _STATIC_FACTS
    }
    facts |= {  # isinstance(x, torch.Tensor)
        id(n.args[0])
        for n in ast.walk(test)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id == "isinstance"
        and len(n.args) == 2
    }
    names = [n for n in ast.walk(test) if isinstance(n, ast.Name) and n.id in env.dynamic]
    return bool(names) and all(id(n) in facts for n in names)


class StatementsMixin:
    """Statements, for `Lowerer`. A lowering step takes the state before a statement and
    returns the state after it, None when control cannot continue (a return, or a break or
    continue handed to the loop), or ("break" | "continue", state) for a static one."""

    def lower_body(self, stmts, st: St | None, frame: Frame, loop: Loop | None) -> St | None:
        """Lower a statement list; static break/continue are handed to the loop as states."""
        for stmt in stmts:
            if st is None:
                return None
            res = self.lower_stmt(stmt, st, frame, loop)
            if isinstance(res, tuple):  # ("break" | "continue", state)
                kind, s = res
                if loop is None:
                    raise Unsupported(f"{loc(frame, stmt)}: {kind} outside a loop")
                (loop.breaks if kind == "break" else loop.continues).append(s)
                return None
            st = res
        return st

    def lower_stmt(self, stmt: ast.stmt, st: St, frame: Frame, loop: Loop | None):
        if isinstance(stmt, ast.If):
            return self.lower_if(stmt, st, frame, loop)
        if isinstance(stmt, ast.For):
            return self.lower_for(stmt, st, frame, loop)
        if isinstance(stmt, ast.While):
            return self.lower_while(stmt, st, frame)
        if isinstance(stmt, ast.Break):
            return ("break", st)
        if isinstance(stmt, ast.Continue):
            return ("continue", st)
        if isinstance(stmt, ast.Return):
            return self.lower_return(stmt, st, frame)
        if isinstance(stmt, ast.Pass):
            return st
        if isinstance(stmt, ast.With):
            return self.lower_with(stmt, st, frame, loop)
        if isinstance(stmt, ast.Assert):
            return self.lower_assert(stmt, st, frame)
        if isinstance(stmt, ast.Delete):
            return self.lower_delete(stmt, st, frame)
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)):
            return self.lower_simple(stmt, st, frame)
        what = _UNSUPPORTED.get(type(stmt), type(stmt).__name__)
        raise Unsupported(f"{loc(frame, stmt)}: {what} is not supported in a split forward")

    def lower_with(self, stmt: ast.With, st: St, frame: Frame, loop: Loop | None):
        """Context managers that change no value (grad modes, disabled autocast, warning
        filters, `nullcontext`): the body is lowered as plain statements. Any other manager:
        the statement stays whole in one block (`lower_managed_with`)."""
        for item in stmt.items:
            if self.user_manager(item, st.env, frame):
                return self.lower_managed_with(stmt, st, frame)
            grad = torch.is_grad_enabled()
            ok, ctx = self.static_eval(item.context_expr, st.env, frame)
            torch.set_grad_enabled(grad)  # `torch.set_grad_enabled(False)` sets it when built
            if not ok or not value_neutral(ctx):
                return self.lower_managed_with(stmt, st, frame)
        for item in stmt.items:
            if item.optional_vars is not None:
                src = ast.unparse(item.context_expr)
                raise Unsupported(f"{loc(frame, stmt)}: `with {src} as ...` is not supported")
        return self._static_branch(stmt.body, st, frame, loop)

    def lower_delete(self, stmt: ast.Delete, st: St, frame: Frame):
        """`del name` unbinds the name: reading it later is an error (at its line). `del xs[i]`
        removes an item of a list (`lists.delete_item`)."""
        for t in stmt.targets:
            if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                st = self.delete_item(t, st, frame)
                continue
            if not isinstance(t, ast.Name):
                raise Unsupported(
                    f"{loc(frame, stmt)}: `del {ast.unparse(t)}` is not supported (only `del name`)"
                )
            if t.id not in st.env.static and t.id not in st.env.dynamic:
                raise Unsupported(f"{loc(frame, stmt)}: `del {t.id}`: `{t.id}` is not defined")
            st.env.dynamic.discard(t.id)
            st.env.static[t.id] = Poisoned(
                f"`{t.id}` is read after `del {t.id}` (line {getattr(stmt, 'lineno', '?')})"
            )
        return st

    def lower_assert(self, stmt: ast.Assert, st: St, frame: Frame):
        """An assert on build-time values, or on static facts about tensors (rank, dtype,
        non-batch dims: those of the example inputs), is checked at build time; the latter
        runs in its block, where the probe checks it and the export folds it away. One on
        tensor data is a host check (`lower_host_assert`)."""
        if isinstance(stmt.test, ast.BoolOp) and isinstance(stmt.test.op, ast.And):
            for part in stmt.test.values:  # one assert per operand: no tensor `and` in it
                one = ast.copy_location(ast.Assert(part, stmt.msg), stmt)
                st = self.lower_assert(one, st, frame)
            return st
        ok, value = self.static_eval(stmt.test, st.env, frame)
        if ok:
            if not value:
                raise Unsupported(f"{loc(frame, stmt)}: assertion fails at build time")
            return st
        if not _static_facts(stmt.test, st.env):
            return self.lower_host_assert(stmt, st, frame)
        return self.emit(stmt, st, frame)

    def lower_if(self, stmt: ast.If, st: St, frame: Frame, loop: Loop | None):
        stmt = with_test(stmt, self.state_cells(stmt.test, st.env, frame))
        test, st = self.test_value(stmt.test, st, frame)
        if st is None:
            return None
        stmt = with_test(stmt, test)
        ok, value = self.static_eval(stmt.test, st.env, frame)
        if ok:
            return self._static_branch(stmt.body if value else stmt.orelse, st, frame, loop)
        if self.host_only(stmt.body, st.env, frame) and self.host_only(stmt.orelse, st.env, frame):
            return self.lower_host_if(stmt, st, frame)  # warns or logs only: no branch
        pred = self.emit_predicate(stmt.test, st, frame)
        then_b, else_b = self.new_block(), self.new_block()
        st.block.term = Branch(pred, then_b.id, else_b.id)
        outs = [
            self.lower_body(stmt.body, St(then_b, st.env.copy()), frame, loop),
            self.lower_body(stmt.orelse, St(else_b, st.env.copy()), frame, loop),
        ]
        return self.join([o for o in outs if o is not None], frame, stmt)

    def _static_branch(self, body, st: St, frame: Frame, loop: Loop | None):
        """Lower a statically chosen branch; pass a static break/continue up unchanged."""
        for stmt in body:
            res = self.lower_stmt(stmt, st, frame, loop)
            if isinstance(res, tuple) or res is None:
                return res
            st = res
        return st

    def lower_return(self, stmt: ast.Return, st: St, frame: Frame):
        value_node = stmt.value if stmt.value is not None else ast.Constant(None)
        elts = value_node.elts if isinstance(value_node, (ast.Tuple, ast.List)) else [value_node]
        if frame.ret_name is None and any(
            isinstance(e, ast.Name) and e.id in st.env.lists for e in elts
        ):
            return self.return_lists(stmt, elts, st, frame)
        local = self.fresh("ret")
        assign = ast.copy_location(ast.Assign([ast.Name(local, ast.Store())], value_node), stmt)
        end = self.lower_simple(assign, st, frame)  # dispatch / inlining inside the value
        if end is None:
            return None
        static = end.env.static.get(local, MISSING)
        if (
            frame.ret_name is not None
            and static is not MISSING
            and not isinstance(static, torch.Tensor)
        ):
            frame.rets.append((end, static))
            return None
        target = frame.ret_name or frame.prog(local)
        self.origins.setdefault(target, ("the value returned", loc(frame, stmt)))
        if static is not MISSING or frame.ret_name is not None:
            self.emit(
                ast.Assign([ast.Name(target, ast.Store())], ast.Name(local, ast.Load())),
                end,
                frame,
                program_targets=True,
                node=stmt,
            )
        if frame.ret_name is None:
            end.block.term = Return((target,))
        else:
            frame.rets.append((end, DYN))
        return None

    def return_lists(self, stmt: ast.Return, elts: list[ast.expr], st: St | None, frame: Frame):
        """`return xs` or `return out, xs` with host lists in it: the program returns each
        part, and the host flattens the lists (so the number of outputs depends on the path)."""
        names = []
        for e in elts:
            if st is None:
                return None
            if isinstance(e, ast.Name) and e.id in st.env.lists:
                names.append(frame.prog(e.id))
                continue
            local = self.fresh("ret")
            assign = ast.Assign([ast.Name(local, ast.Store())], e)
            st = self.lower_simple(ast.copy_location(assign, stmt), st, frame)
            if st is not None and local in st.env.static:
                target = ast.Name(frame.prog(local), ast.Store())
                value = ast.Name(local, ast.Load())
                self.emit(ast.Assign([target], value), st, frame, program_targets=True, node=stmt)
            names.append(frame.prog(local))
        if st is not None:
            st.block.term = Return(tuple(names))
            self.outputs_vary = True
        return None

    # -- simple statements ---------------------------------------------------------------------
    def lower_simple(self, stmt: ast.stmt, st: St, frame: Frame):
        stmt = self.state_cells(stmt, st.env, frame)
        if self.reads_host_list(stmt, st.env):
            stmt, st = self.host_list_reads(stmt, st, frame)
        ifexp = self.find_dynamic_ifexp(stmt, st.env, frame)
        if ifexp is not None:
            return self.lower_ifexp(stmt, ifexp, st, frame)
        special = self.find_special_call(stmt, st.env, frame)
        if special is not None:
            kind, node, payload = special
            if kind == "switch":
                return self.lower_switch(stmt, node, payload, st, frame)
            return self.lower_inline_call(stmt, node, payload, st, frame)
        if isinstance(stmt, ast.Expr):
            return self.lower_expr_stmt(stmt, st, frame)
        if isinstance(stmt, ast.AugAssign):
            target = stmt.target
            if isinstance(target, ast.Name) and isinstance(stmt.op, ast.Add):
                if target.id in st.env.lists:  # xs += [...]: extends the list in place
                    parts = self.added_parts(stmt.value, st, frame, stmt, one=False)
                    return self.grow_list(target.id, parts, st, frame, stmt)
                lst = st.env.static.get(target.id)
                if isinstance(lst, SymList):
                    return self.extend_tracked(lst, stmt, st, frame)
            if isinstance(target, ast.Name) and target.id in st.env.static:
                binop = ast.BinOp(ast.Name(target.id, ast.Load()), stmt.op, stmt.value)
                ast.copy_location(binop, stmt)
                assign = ast.Assign([ast.Name(target.id, ast.Store())], binop)
                return self.lower_simple(ast.copy_location(assign, stmt), st, frame)
            return self.emit(stmt, st, frame)
        if isinstance(stmt, ast.AnnAssign):
            if stmt.value is None:
                return st
            assign = ast.copy_location(ast.Assign([stmt.target], stmt.value), stmt)
            return self.lower_simple(assign, st, frame)
        assert isinstance(stmt, ast.Assign)
        for t in stmt.targets:
            self._check_store_target(t, st.env, frame)
        if isinstance(stmt.value, ast.Name) and all(isinstance(t, ast.Name) for t in stmt.targets):
            src = stmt.value.id
            if isinstance(st.env.static.get(src), SymList):  # another name for the same list
                for t in stmt.targets:
                    st.env.set_static(t.id, st.env.static[src])  # type: ignore[attr-defined]
                return st
            if src in st.env.lists:
                return self.copy_host_list(stmt, src, st, frame)
        if isinstance(stmt.value, ast.List) and all(isinstance(t, ast.Name) for t in stmt.targets):
            if not any(isinstance(e, ast.Starred) for e in stmt.value.elts):
                ok, _ = self.static_eval(stmt.value, st.env, frame, allow_list=True)
                if not ok:  # holds tensors: track it (a list of build-time values is one)
                    return self.new_tracked(stmt, st, frame)
        if all(is_name_target(t) for t in stmt.targets):
            ok, value = self.static_eval(stmt.value, st.env, frame, allow_list=True)
            if ok and not isinstance(value, torch.Tensor):
                for t in stmt.targets:
                    self.bind_target(t, value, st, frame)
                return st
        return self.emit(stmt, st, frame)

    def find_dynamic_ifexp(self, node: ast.AST, env: Env, frame: Frame) -> ast.IfExp | None:
        """The first conditional expression in `node` whose test depends on tensor data and
        that runs whenever `node` does (not inside a lambda or comprehension, a later operand
        of `and` / `or`, or a side of another conditional expression)."""
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp)):
            return None
        if isinstance(node, ast.GeneratorExp):
            return None
        if isinstance(node, ast.IfExp):
            found = self.find_dynamic_ifexp(node.test, env, frame)
            if found is not None:
                return found
            ok, value = self.static_eval(node.test, env, frame, speculative=True)
            if not ok:
                return node
            return self.find_dynamic_ifexp(node.body if value else node.orelse, env, frame)
        if isinstance(node, ast.BoolOp):
            return self.find_dynamic_ifexp(node.values[0], env, frame)
        for child in ast.iter_child_nodes(node):
            found = self.find_dynamic_ifexp(child, env, frame)
            if found is not None:
                return found
        return None

    def lower_ifexp(self, stmt: ast.stmt, node: ast.IfExp, st: St, frame: Frame):
        """`a if test else b` with a data-dependent test: lowered as the `if` statement that
        assigns a fresh local either side, then `stmt` reads that local."""
        local = self.fresh("ifx")
        sides = [
            [ast.copy_location(ast.Assign([ast.Name(local, ast.Store())], side), side)]
            for side in (node.body, node.orelse)
        ]
        branch = ast.copy_location(ast.If(node.test, sides[0], sides[1]), node)
        end = self.lower_if(branch, st, frame, None)
        if end is None:
            return None
        rest = replace_node(stmt, node, ast.copy_location(ast.Name(local, ast.Load()), node))
        return self.lower_simple(rest, end, frame)

    def lower_expr_stmt(self, stmt: ast.Expr, st: St, frame: Frame):
        call = stmt.value
        if isinstance(call, ast.Constant):
            return st  # a docstring or a bare constant
        if isinstance(call, (ast.Yield, ast.YieldFrom, ast.Await)):
            raise HardUnsupported(f"{loc(frame, stmt)}: generators (yield) are not supported")
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            recv = call.func.value
            if isinstance(recv, ast.Name) and recv.id in st.env.lists:
                return self.lower_host_list_method(call, recv.id, st, frame)
            if isinstance(recv, ast.Name) and isinstance(st.env.static.get(recv.id), SymList):
                return self.lower_list_method(call, st.env.static[recv.id], st, frame)
            if isinstance(recv, ast.Name) and isinstance(st.env.static.get(recv.id), Poisoned):
                if call.func.attr in ("append", "extend"):
                    return st  # stays unusable; an error only if it is read later
        spec = self.host_call(call, st.env, frame)
        if spec is not None:  # warnings.warn, logging: the host issues it
            return self.add_host_check(st, stmt, frame, None, **spec)
        if isinstance(call, ast.Call):
            ok, fn = self.static_eval(call.func, st.env, frame)
            if ok and getattr(fn, "__name__", "") in SIDE_EFFECTS | {"info", "debug", "warning"}:
                raise HardUnsupported(
                    f"{loc(frame, stmt)}: side effect `{ast.unparse(call.func)}`"
                    " in forward cannot be compiled"
                )
            if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
                if call.func.value.id in st.env.dynamic:
                    return self.emit(stmt, st, frame)  # e.g. x.add_(1): mutates a tensor
            why = self.dropped_effect(call, st.env, frame)
            if why:
                return self.drop_effect(stmt, call, why, st, frame)
        raise Unsupported(
            f"{loc(frame, stmt)}: expression statement `{ast.unparse(stmt)[:60]}` has effects "
            "hypercompile cannot reproduce"
        )

    def new_tracked(self, stmt: ast.Assign, st: St, frame: Frame):
        """`xs = [a, b]`: a tracked list, as if made empty and grown with `append`."""
        lst = SymList()
        for e in stmt.value.elts:  # type: ignore[attr-defined]
            func = ast.Attribute(ast.Name("_", ast.Load()), "append", ast.Load())
            call = ast.copy_location(ast.Call(func, [e], []), stmt)
            st = self.lower_list_method(call, lst, st, frame)
        for t in stmt.targets:
            st.env.set_static(t.id, lst)  # type: ignore[attr-defined]
        return st

    def extend_tracked(self, lst: SymList, stmt: ast.AugAssign, st: St, frame: Frame):
        """`xs += [a, b]` (or `+= ys`) on a tracked list: extends it in place, as Python does."""
        if isinstance(stmt.value, (ast.List, ast.Tuple)):
            calls = [("append", e) for e in stmt.value.elts]
        else:
            calls = [("extend", stmt.value)]
        for method, arg in calls:
            func = ast.Attribute(stmt.target, method, ast.Load())
            call = ast.copy_location(ast.Call(func, [arg], []), stmt)
            st = self.lower_list_method(call, lst, st, frame)
        return st

    def copy_host_list(self, stmt: ast.Assign, src: str, st: St, frame: Frame):
        """`ys = <a host list>`: a copy when the source is the splitter's own (a read such as
        `xs[1:]`); another name for the user's list would alias it, which the host cannot."""
        if not src.startswith("__"):
            targets = [t.id for t in stmt.targets]  # type: ignore[attr-defined]
            what = (
                "returning it from an inlined call is not supported"
                if any(t.startswith("__ret") for t in targets)
                else "a second name for it is not supported (copy it: `list(xs)`)"
            )
            raise path_list(src, frame, stmt, what)
        for t in stmt.targets:
            dst = frame.prog(t.id)  # type: ignore[attr-defined]
            parts = ((frame.prog(src), None, None),)
            st.block.lists.append(ListOp("list", dst, parts=parts, where=loc(frame, stmt)))
            st.env.set_dynamic(t.id, host_list=True)  # type: ignore[attr-defined]
        return st

    def drop_effect(self, stmt: ast.Expr, call: ast.Call, why: str, st: St, frame: Frame):
        """Leave the call out, noted in the manifest; its arguments are still computed (what
        they change in passing, `x.add_(1)`, stays), then dropped if nothing reads them."""
        src = ast.unparse(stmt)
        self.dropped.append(f"{loc(frame, stmt)}: `{src[:80]}` left out: {why}")
        if not call.args:
            return st
        args = ast.Tuple(list(call.args), ast.Load())
        assign = ast.Assign([ast.Name(self.fresh("drop"), ast.Store())], args)
        return self.lower_simple(ast.copy_location(assign, stmt), st, frame)

    def lower_list_method(self, call: ast.Call, lst: SymList, st: St, frame: Frame):
        method = call.func.attr  # type: ignore[attr-defined]
        if method not in ("append", "extend") or len(call.args) != 1 or call.keywords:
            raise Unsupported(f"{loc(frame, call)}: list method {method} is not supported")
        arg = call.args[0]
        ok, value = self.static_eval(arg, st.env, frame, allow_list=True)
        if method == "append":
            if ok and not isinstance(value, torch.Tensor):
                lst.items.append(("s", value))
            else:
                name = self.fresh("item")
                self.emit(
                    ast.Assign([ast.Name(name, ast.Store())], arg),
                    st,
                    frame,
                    program_targets=True,
                    node=call,
                )
                lst.items.append(("d", name))
            return st
        if ok and isinstance(value, SymList):
            lst.items.extend(value.items)
        elif ok and isinstance(value, (list, tuple)):
            lst.items.extend(("s", v) for v in value)
        else:
            raise Unsupported(f"{loc(frame, call)}: extend with a data-dependent list")
        return st

    def _check_store_target(self, t: ast.expr, env: Env, frame: Frame) -> None:
        for n in ast.walk(t):
            if isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(n.ctx, ast.Store):
                base = n.value
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                if not (isinstance(base, ast.Name) and base.id in env.dynamic):
                    raise HardUnsupported(
                        f"{loc(frame, t)}: assigning to `{ast.unparse(n)}` mutates "
                        "module or build-time state"
                    )

    def bind_target(self, target: ast.expr, value: Any, st: St, frame: Frame) -> None:
        if isinstance(target, ast.Name):
            if isinstance(value, DynRef):
                st.env.set_dynamic(target.id)
                self._alias(target.id, value.name, st, frame)
            else:
                st.env.set_static(target.id, value)
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, SymList):
                value = [symitem(it) for it in value.items]
            try:
                values = list(value)
            except TypeError:
                what = type(value).__name__
                raise Unsupported(f"{loc(frame, target)}: cannot unpack {what}") from None
            if len(values) != len(target.elts):
                raise Unsupported(
                    f"{loc(frame, target)}: unpacking {len(values)} values into "
                    f"{len(target.elts)} names"
                )
            for t, v in zip(target.elts, values):
                self.bind_target(t, v, st, frame)
            return
        raise Unsupported(f"{loc(frame, target)}: unsupported assignment target")

    def _alias(self, local: str, program_name: str, st: St, frame: Frame) -> None:
        """Make `local` (dynamic) refer to an existing program value."""
        if frame.prog(local) != program_name:
            stmt = ast.Assign(
                [ast.Name(frame.prog(local), ast.Store())], ast.Name(program_name, ast.Load())
            )
            st.block.stmts.append(stmt)
