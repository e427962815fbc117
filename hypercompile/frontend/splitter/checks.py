"""Statements the host makes between graphs: an `assert` on tensor data (the host raises when it
fails) and `warnings.warn` / logging calls (the host issues them). A data-dependent `if` that
does nothing but warn or log does not split its block: its condition becomes one more boolean
output of the block's graph, and the host warns when it holds."""

from __future__ import annotations

import ast
import inspect
import logging
import warnings
from typing import Any

from ...core.ir import WARNING_CLASSES, HostCheck
from .astutil import with_test
from .state import Env, Frame, St

_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
    "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
    "critical": logging.CRITICAL, "fatal": logging.CRITICAL, "log": None,
}  # fmt: skip


def _logging_call(fn: Any) -> tuple[logging.Logger, str] | None:
    """(logger, method name) for a logger's method or a `logging` module function."""
    name = getattr(fn, "__name__", "")
    if name not in _LEVELS:
        return None
    owner = getattr(fn, "__self__", None) if inspect.ismethod(fn) else None
    if isinstance(owner, logging.LoggerAdapter):
        owner = owner.logger
    if isinstance(owner, logging.Logger):
        return owner, name
    if fn is getattr(logging, name, None):
        return logging.getLogger(), name
    return None


def _builtin_category(cat: Any) -> str:
    """The nearest built-in warning class of `cat` (the runtime cannot import the user's)."""
    if isinstance(cat, type) and issubclass(cat, Warning):
        for c in cat.__mro__:
            if WARNING_CLASSES.get(c.__name__) is c:
                return c.__name__
    return "UserWarning"


class ChecksMixin:
    """Host checks, for `Lowerer`."""

    def host_call(self, node: ast.expr, env: Env, frame: Frame) -> dict[str, Any] | None:
        """The host check a `warnings.warn(...)` or logging call makes (its kind, message and
        category or logger and level), or None for any other expression."""
        if not isinstance(node, ast.Call) or any(k.arg is None for k in node.keywords):
            return None
        ok, fn = self.static_eval(node.func, env, frame, speculative=True)
        if not ok:
            return None
        kw = {k.arg: k.value for k in node.keywords}
        args = list(node.args)
        if fn is warnings.warn:
            msg = args[0] if args else kw.get("message")
            cat_node = args[1] if len(args) > 1 else kw.get("category")
            if msg is None:
                return None
            ok, cat = (False, None) if cat_node is None else self._static(cat_node, env, frame)
            ok_msg, value = self._static(msg, env, frame)
            if ok_msg and isinstance(value, Warning):
                cat = type(value)
            text = self.message_text(msg, env, frame)
            module = str(frame.globals.get("__name__", ""))
            return {
                "kind": "warn",
                "message": text,
                "category": _builtin_category(cat),
                "module": module,
            }
        found = _logging_call(fn)
        if found is None:
            return None
        logger, method = found
        level = _LEVELS[method]
        if level is None:  # logger.log(level, msg, ...)
            if not args:
                return None
            ok, level = self._static(args.pop(0), env, frame)
            if not ok or not isinstance(level, int) or isinstance(level, bool):
                return None
        msg = args[0] if args else kw.get("msg")
        if msg is None:
            return None
        text = self.message_text(msg, env, frame)
        fmt = [self._static(a, env, frame) for a in args[1:]]
        if fmt and all(ok for ok, _ in fmt):
            try:
                text = text % tuple(v for _, v in fmt)
            except (TypeError, ValueError):
                pass
        return {"kind": "log", "message": text, "logger": logger.name, "level": level}

    def _static(self, node: ast.expr, env: Env, frame: Frame) -> tuple[bool, Any]:
        return self.static_eval(node, env, frame, speculative=True)

    def message_text(self, node: ast.expr, env: Env, frame: Frame) -> str:
        """A message as the host shows it: its value when known at build time; in an f-string,
        parts computed from tensor data are shown as their source (`{x.max()}`)."""
        ok, value = self._static(node, env, frame)
        if ok:
            return str(value)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for p in node.values:
                ok, value = self._static(ast.JoinedStr([p]), env, frame)
                parts.append(value if ok else "{" + ast.unparse(getattr(p, "value", p)) + "}")
            return "".join(parts)
        return ast.unparse(node)

    def add_host_check(self, st: St, node: ast.AST, frame: Frame, value: str | None, **spec):
        line = getattr(node, "lineno", 0)
        st.block.host_checks.append(HostCheck(value=value, file=frame.filename, line=line, **spec))
        return st

    # -- assert on tensor data -------------------------------------------------------------
    def lower_host_assert(self, stmt: ast.Assert, st: St, frame: Frame):
        """`assert test, msg` on tensor data: `test` becomes a boolean output of the block, and
        the host raises ModelAssertionError (with file:line and `msg`) when it is false."""
        test, st = self.test_value(stmt.test, st, frame)
        if st is None:
            return None
        value = self.emit_check_value(test, st, frame)
        msg = (
            ast.unparse(stmt.test)
            if stmt.msg is None
            else self.message_text(stmt.msg, st.env, frame)
        )
        return self.add_host_check(st, stmt, frame, value, kind="assert", message=msg)

    def test_value(self, test: ast.expr, st: St, frame: Frame) -> tuple[ast.expr, St | None]:
        """`test` ready to be computed in the current block: a call to inline or dispatch, or a
        data-dependent conditional expression, inside it is evaluated first into a local."""
        if (
            self.find_special_call(ast.Expr(test), st.env, frame) is None
            and self.find_dynamic_ifexp(test, st.env, frame) is None
            and not self.reads_host_list(test, st.env)
        ):
            return test, st
        local = self.fresh("test")
        assign = ast.copy_location(ast.Assign([ast.Name(local, ast.Store())], test), test)
        end = self.lower_simple(assign, st, frame)
        return ast.copy_location(ast.Name(local, ast.Load()), test), end

    def emit_check_value(self, test: ast.expr, st: St, frame: Frame) -> str:
        """Compute `test` as a boolean at the end of the current block; returns its name (not a
        decision: the host does not branch on it)."""
        name = self.fresh("chk")
        call = ast.copy_location(ast.Call(ast.Name("_hc_bool", ast.Load()), [test], []), test)
        assign = ast.Assign([ast.Name(name, ast.Store())], call)
        self.emit(assign, st, frame, program_targets=True, node=test)
        return name

    def _combine(self, st: St, node: ast.AST, helper: str, *names: str) -> str:
        """`helper(*names)` over program values, appended to the current block."""
        name = self.fresh("chk")
        call = ast.Call(ast.Name(helper, ast.Load()), [ast.Name(n, ast.Load()) for n in names], [])
        stmt = ast.copy_location(ast.Assign([ast.Name(name, ast.Store())], call), node)
        st.block.stmts.append(ast.fix_missing_locations(stmt))
        return name

    # -- `if` that only warns or logs --------------------------------------------------------
    def host_only(self, stmts: list[ast.stmt], env: Env, frame: Frame) -> bool:
        """Whether `stmts` do nothing but warn or log (also under nested `if`s)."""
        for s in stmts:
            if isinstance(s, ast.Pass):
                continue
            if isinstance(s, ast.Expr) and self.host_call(s.value, env, frame) is not None:
                continue
            if (
                isinstance(s, ast.If)
                and self.find_special_call(ast.Expr(s.test), env, frame) is None
                and self.find_dynamic_ifexp(s.test, env, frame) is None
                and self.host_only(s.body, env, frame)
                and self.host_only(s.orelse, env, frame)
            ):
                continue
            return False
        return True

    def lower_host_if(self, stmt: ast.If, st: St, frame: Frame, guard: str | None = None):
        """An `if` whose sides only warn or log: each warning or log line is a host check on
        the condition under which its side runs (`guard`: the condition of enclosing `if`s)."""
        ok, value = self.static_eval(stmt.test, st.env, frame)
        if ok:
            sides = [(stmt.body if value else stmt.orelse, guard)]
        else:
            t = self.emit_check_value(stmt.test, st, frame)
            then = t if guard is None else self._combine(st, stmt.test, "_hc_and", guard, t)
            sides = [(stmt.body, then)]
            if any(not isinstance(s, ast.Pass) for s in stmt.orelse):
                f = self._combine(st, stmt.test, "_hc_not", t)
                orelse = f if guard is None else self._combine(st, stmt.test, "_hc_and", guard, f)
                sides.append((stmt.orelse, orelse))
        for body, g in sides:
            for s in body:
                if isinstance(s, ast.If):
                    s = with_test(s, self.state_cells(s.test, st.env, frame))
                    self.lower_host_if(s, st, frame, g)
                elif isinstance(s, ast.Expr):
                    spec = self.host_call(s.value, st.env, frame)
                    self.add_host_check(st, s, frame, g, **spec)
        return st
