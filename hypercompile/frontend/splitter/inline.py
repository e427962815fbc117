"""Calls that need splitting: a user function or submodule whose own code has data-dependent
control flow (or assigns module state) is inlined; `container[run-time index]` over a list of
modules or values becomes a switch with one case per item."""

from __future__ import annotations

import ast
import inspect
import types
from typing import Any

import torch

from ...core.ir import Goto, Switch
from ...errors import UnsupportedModelError
from .astutil import free_names, function_ast, replace_node
from .state import (
    DYN,
    SCALARS,
    Env,
    Frame,
    HardUnsupported,
    St,
    Unsupported,
    loc,
)


class InlineMixin:
    """Inlined calls and switches, for `Lowerer`."""

    def find_special_call(self, stmt: ast.stmt, env: Env, frame: Frame):
        """The first call in `stmt` that must be dispatched (container[dynamic index]) or inlined
        (a user function or submodule whose own forward has data-dependent control flow)."""
        for node in ast.walk(stmt):
            try:
                if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                    if free_names(node.slice) & env.dynamic:
                        ok, container = self.static_eval(node.value, env, frame, speculative=True)
                        if ok and _is_dispatch_container(container):
                            return ("switch", node, container)
                if isinstance(node, ast.Call):
                    ok, fn = self.static_eval(node.func, env, frame, speculative=True)
                    if ok and self.needs_inline(fn):
                        return ("inline", node, fn)
            except Unsupported:
                continue  # reading a poisoned name: reported where the value is used
        return None

    def needs_inline(self, fn: Any) -> bool:
        """Whether a call of `fn` must be inlined: its code assigns module state, or a trial
        lowering with dynamic arguments finds data-dependent control flow."""
        target = _python_target(fn)
        if target is None:
            return False
        key = id(target)
        if key not in self._inline_cache:
            self._inline_cache[key] = False  # recursion guard during the trial
            try:
                node, filename, globs = function_ast(target)
            except Unsupported:
                return False
            if not self.opaque_state and any(
                isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
                for n in ast.walk(node)
            ):
                self._inline_cache[key] = True  # it assigns module state: inline so it flows
                return True
            frame = Frame(globs, filename, "_trial", "__trial_ret", stack=(target,))
            self._inline_cache[key] = self._trial_branches(fn, node, frame)
        return self._inline_cache[key]

    def _trial_branches(self, fn: Any, node: ast.FunctionDef, frame: Frame) -> bool:
        """Lower the body of `fn` on its own, its parameters dynamic: does it branch, or make
        host checks (asserts on data, warnings)?"""
        trial = type(self)(self.root, self.opaque_state)
        trial._inline_cache = self._inline_cache  # shared: guards against recursion
        trial.speculative = True  # its arguments are stand-ins: lookups may fail
        a = node.args
        params = [x.arg for x in a.args]
        env = Env()
        if isinstance(fn, torch.nn.Module) or inspect.ismethod(fn):
            params = params[1:]
            env.static["self"] = fn if isinstance(fn, torch.nn.Module) else fn.__self__
        params += [x.arg for x in (*a.kwonlyargs, a.vararg, a.kwarg) if x is not None]
        env.dynamic |= set(params)
        b = trial.new_block()
        try:
            end = trial.lower_body(node.body, St(b, env), frame, None)
            dynamic = len(trial.blocks) > 1 or end is None and len(frame.rets) > 1
            return dynamic or any(
                (blk.term and not isinstance(blk.term, Goto)) or blk.host_checks
                for blk in trial.blocks
            )
        except UnsupportedModelError:
            return False  # leave it opaque: the exporter traces it or says why not

    def lower_inline_call(self, stmt, call: ast.Call, fn: Any, st: St, frame: Frame):
        target = _python_target(fn)
        if target in frame.stack:
            raise HardUnsupported(f"{loc(frame, call)}: recursion into {target.__qualname__}")
        node, filename, globs = function_ast(target)
        self._counter += 1
        result_local = f"__inl{self._counter}"
        callee = Frame(
            globs,
            filename,
            f"__{self._counter}",
            frame.prog(result_local),
            stack=(*frame.stack, target),
        )
        env = self._bind_arguments(fn, call, node, st, frame, callee)
        end = self.lower_body(node.body, St(st.block, env), callee, None)
        if end is not None:
            callee.rets.append((end, None))
        # back in the caller, with its names as before the call: the value is `result_local`
        states = self._call_results(callee, result_local, st, frame, node)
        joined = self.join(states, frame, call)
        if joined is None:
            return None
        if isinstance(stmt, ast.Expr) and stmt.value is call:
            return joined  # a call for its effects (host checks): its value is dropped
        new_stmt = replace_node(stmt, call, ast.Name(result_local, ast.Load()))
        return self.lower_simple(new_stmt, joined, frame)

    def _bind_arguments(
        self, fn: Any, call: ast.Call, node: ast.FunctionDef, st: St, frame: Frame, callee: Frame
    ) -> Env:
        """The callee's environment: static arguments bound to their values, dynamic ones
        assigned to the callee's program names in the caller's block, defaults filled in;
        `*args` and `**kwargs` collect the rest (a tuple and a dict, static when every item
        is)."""
        a = node.args
        if a.posonlyargs:
            raise Unsupported(
                f"{loc(callee, node)}: positional-only parameters in a call to inline"
            )
        params = [x.arg for x in a.args]
        env = Env()
        if isinstance(fn, torch.nn.Module) or inspect.ismethod(fn):
            env.static["self"] = fn if isinstance(fn, torch.nn.Module) else fn.__self__
            params = params[1:]
        if call.keywords and any(k.arg is None for k in call.keywords):
            raise Unsupported(f"{loc(frame, call)}: **kwargs in a call that must be inlined")
        if any(isinstance(x, ast.Starred) for x in call.args):
            raise Unsupported(f"{loc(frame, call)}: *args in a call that must be inlined")
        if len(call.args) > len(params) and a.vararg is None:
            raise Unsupported(f"{loc(frame, call)}: too many arguments in a call to inline")
        bound: dict[str, ast.expr] = dict(zip(params, call.args))
        extra_kw: dict[str, ast.expr] = {}
        kwonly = [x.arg for x in a.kwonlyargs]
        for k in call.keywords:
            if k.arg in bound:
                raise Unsupported(f"{loc(frame, call)}: argument {k.arg} given twice")
            if k.arg in params or k.arg in kwonly:
                bound[k.arg] = k.value  # type: ignore[index]
            elif a.kwarg is not None:
                extra_kw[k.arg] = k.value  # type: ignore[index]
            else:
                raise Unsupported(f"{loc(frame, call)}: unexpected keyword argument {k.arg}")
        if a.vararg is not None:
            elts = list(call.args[len(params) :])
            bound[a.vararg.arg] = ast.copy_location(ast.Tuple(elts, ast.Load()), call)
        if a.kwarg is not None:
            keys: list[ast.expr | None] = [ast.Constant(k) for k in extra_kw]
            value = ast.Dict(keys, list(extra_kw.values()))
            bound[a.kwarg.arg] = ast.copy_location(value, call)
        defaults = dict(zip(params[len(params) - len(a.defaults) :], a.defaults))
        defaults |= {x.arg: d for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None}
        names = params + kwonly + [x.arg for x in (a.vararg, a.kwarg) if x is not None]
        for p in names:
            if p in bound:
                self._bind_one(p, bound[p], env, st, frame, callee, call)
            elif p in defaults:
                ok, value = self.static_eval(defaults[p], Env(), callee)
                if not ok:
                    raise Unsupported(f"{loc(callee, node)}: default of {p} is not a constant")
                env.static[p] = value
            else:
                raise Unsupported(f"{loc(frame, call)}: missing argument {p}")
        return env

    def _bind_one(
        self, p: str, arg: ast.expr, env: Env, st: St, frame: Frame, callee: Frame, call: ast.AST
    ) -> None:
        """Bind parameter `p` to `arg`: its value when known at build time, else a program name
        assigned in the caller's block."""
        ok, value = self.static_eval(arg, st.env, frame, allow_list=True)
        if ok and not isinstance(value, torch.Tensor):
            env.static[p] = value
            return
        target = ast.Name(callee.prog(p), ast.Store())
        self.emit(ast.Assign([target], arg), st, frame, program_targets=True, node=call)
        env.dynamic.add(p)

    def _call_results(
        self, callee: Frame, result_local: str, st: St, frame: Frame, node: ast.FunctionDef
    ) -> list[St]:
        """One caller state per return of the callee, with `result_local` bound: static when
        every return gives the same static value, else dynamic (scalars carried by the host)."""
        states = []
        static_vals = {id(v): v for _, v in callee.rets if v is not DYN}
        all_static = all(v is not DYN for _, v in callee.rets)
        for s, v in callee.rets:
            cst = St(s.block, st.env.copy())
            if all_static and len(static_vals) == 1:
                cst.env.set_static(result_local, next(iter(static_vals.values())))
            elif v is DYN:
                cst.env.set_dynamic(result_local)
            elif isinstance(v, SCALARS):
                cst.block.assign[frame.prog(result_local)] = v
                cst.env.set_dynamic(result_local)
            else:
                raise Unsupported(
                    f"{loc(callee, node)}: returns a {type(v).__name__} on some "
                    "paths and a tensor on others"
                )
            states.append(cst)
        return states

    def lower_switch(self, stmt, sub: ast.Subscript, container: Any, st: St, frame: Frame):
        index = self.fresh("idx")
        self.decisions[index] = (getattr(sub, "lineno", 0), ast.unparse(sub))
        self.emit(
            ast.Assign(
                [ast.Name(index, ast.Store())],
                ast.Call(ast.Name("_hc_int", ast.Load()), [sub.slice], []),
            ),
            st,
            frame,
            program_targets=True,
            node=sub,
        )
        items = list(container)
        cases = [self.new_block() for _ in items]
        st.block.term = Switch(index, tuple(c.id for c in cases))
        outs = []
        local = f"__case{self._counter}"
        for case, item in zip(cases, items):
            env = st.env.copy()
            env.set_static(local, item)
            new_stmt = replace_node(stmt, sub, ast.Name(local, ast.Load()))
            outs.append(self.lower_simple(new_stmt, St(case, env), frame))
        return self.join([o for o in outs if o is not None], frame, stmt)


def _is_dispatch_container(value: Any) -> bool:
    return isinstance(value, (torch.nn.ModuleList, torch.nn.Sequential, list, tuple)) and all(
        not isinstance(v, torch.Tensor) for v in value
    )


def _python_target(fn: Any) -> Any:
    """The Python function to inline for `fn` (a user submodule's forward, a method of a module,
    or a plain function defined in user code), or None to keep the call opaque."""
    if isinstance(fn, torch.nn.Module):
        forward = type(fn).forward
        mod = getattr(forward, "__module__", "") or ""
        if mod.startswith("torch.") or not isinstance(forward, types.FunctionType):
            return None
        return forward
    func = getattr(fn, "__func__", fn)
    if not isinstance(func, types.FunctionType):
        return None
    mod = getattr(func, "__module__", "") or ""
    if mod.startswith(("torch", "numpy", "hypercompile")):
        return None
    return func
