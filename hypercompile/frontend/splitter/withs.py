"""`with` blocks whose manager may change values: a manager from the module's own code (or a
library's), such as hyperlight's `self.mainnet.using_externals(params)`, which sets module
attributes for the body and restores them on exit. The whole statement stays Python code in one
block, so torch.export traces the block with the manager's `__enter__` / `__exit__` around the
body. The body is emitted as written, not partially evaluated (the manager may change what it
reads); a trial lowering first checks that it has no data-dependent control flow, host checks or
module state of its own. A final `return` in the body becomes the with's result."""

from __future__ import annotations

import ast
import sys
import types
from typing import Any

import torch

from ...errors import UnsupportedModelError
from .astutil import assigned_names, free_names
from .state import DYN, Env, Frame, St, SymList, Unsupported, loc

NEUTRAL_HINT = (
    "only context managers that change no value: grad modes, autocast(enabled=False), "
    "warnings.catch_warnings(), nullcontext(); or a manager of the model's own code, "
    "such as `self.net.using_externals(params)`, around a body without data-dependent "
    "control flow"
)
_LIBRARIES = ("torch", "torchvision", "numpy", "hypercompile")


def refusal(frame: Frame, stmt: ast.With, why: str = "") -> Unsupported:
    src = ", ".join(ast.unparse(i.context_expr) for i in stmt.items)
    tail = f"; {why}" if why else ""
    return Unsupported(
        f"{loc(frame, stmt)}: `with {src}` is not supported in a split forward "
        f"({NEUTRAL_HINT}){tail}"
    )


def _library(module: str | None) -> bool:
    """torch's, numpy's, hypercompile's or Python's own modules."""
    top = (module or "").split(".")[0]
    return top in _LIBRARIES or top in sys.stdlib_module_names


def _user_manager(fn: Any) -> bool:
    """Whether `fn`, called in a `with`, makes a manager of the model's (or a model library's)
    code: a function or method (`@contextmanager` ones included) or a class with `__enter__`,
    not one of torch's or Python's own (their modes may not survive export)."""
    if isinstance(fn, type):
        return hasattr(fn, "__enter__") and not _library(fn.__module__)
    func = getattr(fn, "__func__", fn)
    if not isinstance(func, types.FunctionType):
        return False
    return not _library(getattr(func, "__module__", None))


def final_return(stmts: list[ast.stmt]) -> ast.Return | None:
    """The `return` that ends `stmts` (also at the end of a nested `with`), if any."""
    last = stmts[-1] if stmts else None
    if isinstance(last, ast.Return):
        return last
    if isinstance(last, ast.With):
        return final_return(last.body)
    return None


def _jump_out(stmts: list[ast.stmt], skip: ast.AST | None, in_loop: bool = False) -> ast.AST | None:
    """A statement in `stmts` that leaves them other than by falling off the end (a `return`
    other than `skip`, a `break` or `continue` of an enclosing loop, a `yield`)."""
    for s in stmts:
        if isinstance(s, ast.Return) and s is not skip:
            return s
        if isinstance(s, (ast.Break, ast.Continue)) and not in_loop:
            return s
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)) for n in ast.walk(s)):
            return s
        loop = isinstance(s, (ast.For, ast.While))
        for field, value in ast.iter_fields(s):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                found = _jump_out(value, skip, in_loop or (loop and field == "body"))
                if found is not None:
                    return found
            if isinstance(value, list) and value and isinstance(value[0], ast.excepthandler):
                for h in value:
                    found = _jump_out(h.body, skip, in_loop)
                    if found is not None:
                        return found
    return None


class WithsMixin:
    """`with` blocks whose manager may change values, for `Lowerer`."""

    def lower_managed_with(self, stmt: ast.With, st: St, frame: Frame):
        """Keep `stmt` whole in the current block (see the module docstring); refused with
        file:line when a manager is not the model's own or the body cannot be one block."""
        for item in stmt.items:
            self._check_manager(item, stmt, st, frame)
        ret = final_return(stmt.body)
        jump = _jump_out(stmt.body, ret)
        if jump is not None:
            line = getattr(jump, "lineno", "?")
            raise refusal(frame, stmt, f"its body leaves it early at line {line}")
        state = {attr for _, attr in self.cells}
        read = [n for n in ast.walk(stmt) if isinstance(n, ast.Attribute) and n.attr in state]
        if read:
            why = f"its body reads `{ast.unparse(read[0])}`, module state that forward assigns"
            raise refusal(frame, stmt, why)
        why = self._body_problem(stmt, st, frame)
        if why:
            raise refusal(frame, stmt, why)
        self._bind_body_names(stmt, st, frame)
        target = (frame.ret_name or frame.prog(self.fresh("ret"))) if ret is not None else ""
        new = self.rewrite(stmt, st.env, frame, live=True, result=target)
        ast.copy_location(new, stmt)
        st.block.stmts.append(ast.fix_missing_locations(new))
        if ret is None:
            return st
        if frame.ret_name is None:
            from ...core.ir import Return

            st.block.term = Return((target,))
        else:
            frame.rets.append((st, DYN))
        return None

    def user_manager(self, item: ast.withitem, env: Env, frame: Frame) -> bool:
        """Whether `item` calls a manager of the model's code (not evaluated here: the manager
        is made anew at each run)."""
        expr = item.context_expr
        if not isinstance(expr, ast.Call):
            return False
        ok, fn = self.static_eval(expr.func, env, frame, speculative=True)
        return ok and _user_manager(fn)

    def _check_manager(self, item: ast.withitem, stmt: ast.With, st: St, frame: Frame) -> None:
        """A manager of the model's code, or a value-neutral one; else the refusal."""
        from .statements import value_neutral

        if not self.user_manager(item, st.env, frame):
            grad = torch.is_grad_enabled()
            ok, ctx = self.static_eval(item.context_expr, st.env, frame, speculative=True)
            torch.set_grad_enabled(grad)  # `torch.set_grad_enabled(False)` sets it when built
            if not (ok and value_neutral(ctx)):
                raise refusal(frame, stmt)
        if item.optional_vars is not None and not isinstance(item.optional_vars, ast.Name):
            src = ast.unparse(item.optional_vars)
            raise Unsupported(f"{loc(frame, stmt)}: `with ... as {src}` is not supported")

    def _body_problem(self, stmt: ast.With, st: St, frame: Frame) -> str:
        """Why the body of `stmt` cannot be kept as straight-line code in one block ("" when it
        can): a trial lowering, its names as they are here, must make one block with no
        decisions, host checks or module state cells."""
        trial = type(self)(self.root, self.opaque_state)
        trial._inline_cache = self._inline_cache
        trial.speculative = True
        env = st.env.copy()
        for item in stmt.items:
            if isinstance(item.optional_vars, ast.Name):
                env.set_dynamic(item.optional_vars.id)
        tframe = Frame(
            frame.globals, frame.filename, frame.prefix, "__trial_ret", stack=frame.stack
        )
        block = trial.new_block()
        try:
            trial.lower_body(stmt.body, St(block, env), tframe, None)
        except UnsupportedModelError as e:
            return f"its body cannot be compiled: {e}"
        if trial.decisions:
            line, src = next(iter(trial.decisions.values()))
            return f"its body has data-dependent control flow (line {line}: `{src}`)"
        if len(trial.blocks) > 1 or block.term is not None or block.assign:
            return "its body has data-dependent control flow"
        if block.host_checks:
            c = block.host_checks[0]
            what = "an assert on tensor data" if c.kind == "assert" else "a warning or log line"
            return f"its body makes {what} ({c.file}:{c.line}), which the host cannot run there"
        if trial.cells:
            return "its body assigns module state"
        return ""

    def _bind_body_names(self, stmt: ast.With, st: St, frame: Frame) -> None:
        """Every name the statement binds becomes a program name; one that held a build-time
        value and is read in the body first gets that value in the block."""
        names = assigned_names([stmt]) | {
            i.optional_vars.id for i in stmt.items if isinstance(i.optional_vars, ast.Name)
        }
        reads = free_names(stmt)
        for name in sorted(names):
            value = st.env.static.get(name)
            if name in st.env.static and name in reads:
                if isinstance(value, SymList) and any(
                    v is value for k, v in st.env.static.items() if k != name
                ):
                    raise Unsupported(
                        f"{loc(frame, stmt)}: the body of this `with` changes the list "
                        f"`{name}`, which another name also refers to"
                    )
                assign = ast.Assign(
                    [ast.Name(frame.prog(name), ast.Store())], ast.Name(name, ast.Load())
                )
                self.emit(assign, st, frame, program_targets=True, node=stmt)
            st.env.set_dynamic(name)
