"""Lowering of statements other than loops: `if`, `return`, `with`, `assert`, assignments and
expression statements, and the binding of assignment targets."""

from __future__ import annotations

import ast
from typing import Any

import torch

from ...core.ir import Branch, Return
from .astutil import is_name_target, with_test
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
    ast.FunctionDef: "a nested function", ast.ClassDef: "a class definition", ast.Delete: "del",
    ast.Import: "import", ast.ImportFrom: "import",
}  # fmt: skip


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
            ok, value = self.static_eval(stmt.test, st.env, frame)
            if not ok:
                raise Unsupported(f"{loc(frame, stmt)}: assert on a data-dependent value")
            if not value:
                raise Unsupported(f"{loc(frame, stmt)}: assertion fails at build time")
            return st
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)):
            return self.lower_simple(stmt, st, frame)
        what = _UNSUPPORTED.get(type(stmt), type(stmt).__name__)
        raise Unsupported(f"{loc(frame, stmt)}: {what} is not supported in a split forward")

    def lower_with(self, stmt: ast.With, st: St, frame: Frame, loop: Loop | None):
        for item in stmt.items:
            ok, ctx = self.static_eval(item.context_expr, st.env, frame)
            if not ok or not isinstance(ctx, (torch.no_grad, torch.inference_mode)):
                raise Unsupported(f"{loc(frame, stmt)}: only `with torch.no_grad()` is supported")
        return self._static_branch(stmt.body, st, frame, loop)

    def lower_if(self, stmt: ast.If, st: St, frame: Frame, loop: Loop | None):
        stmt = with_test(stmt, self.state_cells(stmt.test, st.env, frame))
        if self.find_special_call(ast.Expr(stmt.test), st.env, frame) is not None:
            # a call to inline or dispatch inside the test: evaluate it first, then branch
            local = self.fresh("test")
            assign = ast.copy_location(ast.Assign([ast.Name(local, ast.Store())], stmt.test), stmt)
            st = self.lower_simple(assign, st, frame)
            if st is None:
                return None
            stmt = with_test(stmt, ast.copy_location(ast.Name(local, ast.Load()), stmt.test))
        ok, value = self.static_eval(stmt.test, st.env, frame)
        if ok:
            return self._static_branch(stmt.body if value else stmt.orelse, st, frame, loop)
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

    # -- simple statements ---------------------------------------------------------------------
    def lower_simple(self, stmt: ast.stmt, st: St, frame: Frame):
        stmt = self.state_cells(stmt, st.env, frame)
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
        if all(is_name_target(t) for t in stmt.targets):
            ok, value = self.static_eval(stmt.value, st.env, frame, allow_list=True)
            if ok and not isinstance(value, torch.Tensor):
                for t in stmt.targets:
                    self.bind_target(t, value, st, frame)
                return st
        return self.emit(stmt, st, frame)

    def lower_expr_stmt(self, stmt: ast.Expr, st: St, frame: Frame):
        call = stmt.value
        if isinstance(call, ast.Constant):
            return st  # a docstring or a bare constant
        if isinstance(call, (ast.Yield, ast.YieldFrom, ast.Await)):
            raise HardUnsupported(f"{loc(frame, stmt)}: generators (yield) are not supported")
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            recv = call.func.value
            if isinstance(recv, ast.Name) and isinstance(st.env.static.get(recv.id), SymList):
                return self.lower_list_method(call, st.env.static[recv.id], st, frame)
            if isinstance(recv, ast.Name) and isinstance(st.env.static.get(recv.id), Poisoned):
                if call.func.attr in ("append", "extend"):
                    return st  # stays unusable; an error only if it is read later
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
        raise Unsupported(
            f"{loc(frame, stmt)}: expression statement `{ast.unparse(stmt)[:60]}` has effects "
            "hypercompile cannot reproduce"
        )

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
