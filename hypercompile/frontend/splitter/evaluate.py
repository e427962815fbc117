"""Partial evaluation of expressions: what depends only on build-time values is evaluated and
embedded into the block code; the rest is rewritten into run-time statements of a block."""

from __future__ import annotations

import ast
import builtins
import copy
import types
from typing import Any

import torch

from .astutil import CopyTransformer, assigned_names, bound_names, free_names, subscript
from .lists import path_list
from .state import (
    SIDE_EFFECTS,
    STATE_PREFIX,
    DynRef,
    Env,
    Frame,
    Poisoned,
    St,
    StaticLookupError,
    SymList,
    Unsupported,
    loc,
    symitem,
)

_LOOKUP_ERRORS = (AttributeError, KeyError, IndexError)


class EvaluateMixin:
    """Expressions, for `Lowerer`: static evaluation, embedding of build-time values, and the
    rewrite of run-time statements into a block."""

    def const_ref(self, value: Any) -> ast.expr:
        for i, c in enumerate(self.consts):
            if c is value:
                return subscript("__c", i)
        self.consts.append(value)
        return subscript("__c", len(self.consts) - 1)

    def static_eval(
        self,
        node: ast.expr,
        env: Env,
        frame: Frame,
        allow_list: bool = False,
        speculative: bool = False,
    ) -> tuple[bool, Any]:
        """(True, value) when `node` depends only on build-time values, else (False, None).
        A tensor that is not module state counts as run-time (it is recomputed in the graph).

        A missing attribute, key or index of a build-time object (`self.typo`) raises
        `StaticLookupError`, because forward fails there too; unless `speculative` (a probe of
        a subexpression that need not run) or the lowering is a trial."""
        if allow_list:
            fresh = _new_lists(node, env)
            if fresh is not None:
                return True, fresh
        scope = _static_scope(node, env, frame)
        if scope is None:
            return False, None
        try:
            expr = ast.fix_missing_locations(ast.Expression(body=node))
            code = compile(expr, frame.filename, "eval")
            value = eval(code, frame.globals, scope)  # noqa: S307 - the user's own forward
        except _LOOKUP_ERRORS as e:
            if not speculative:
                self._lookup_failed(e, node, frame)
            return False, None
        except Exception:
            return False, None
        if isinstance(value, torch.Tensor) and id(value) not in self.tensor_paths:
            return False, None
        if isinstance(value, types.GeneratorType):
            return False, None
        return True, value

    def _lookup_failed(self, e: Exception, node: ast.expr, frame: Frame) -> None:
        """Raise `StaticLookupError` for a failed lookup in `node`, except in a trial and where
        `node` names an attribute that forward assigns (a state cell: outside the statements
        that `state_cells` rewrites, the module object does not have it yet)."""
        if self.speculative:
            return
        state_attrs = {attr for _, attr in self.cells}
        if any(isinstance(n, ast.Attribute) and n.attr in state_attrs for n in ast.walk(node)):
            return
        src = ast.unparse(node)
        src = src if len(src) <= 80 else src[:77] + "..."
        raise StaticLookupError(f"{loc(frame, node)}: `{src}` raises {type(e).__name__}: {e}")

    def embed(self, value: Any, frame: Frame, node: ast.AST) -> ast.expr:
        """An expression that yields `value` inside a block function."""
        if isinstance(value, DynRef):
            return ast.Name(value.name, ast.Load())
        if value is None or isinstance(value, (bool, int, str)):
            return ast.Constant(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                return ast.Call(ast.Name("float", ast.Load()), [ast.Constant(repr(value))], [])
            return ast.Constant(value)
        if isinstance(value, SymList):
            return ast.List(
                [self.embed(symitem(it), frame, node) for it in value.items], ast.Load()
            )
        if isinstance(value, tuple) and type(value) is tuple:
            return ast.Tuple([self.embed(v, frame, node) for v in value], ast.Load())
        if isinstance(value, list) and type(value) is list and len(value) < 64:
            if all(isinstance(v, (bool, int, float, str, type(None))) for v in value):
                return ast.List([self.embed(v, frame, node) for v in value], ast.Load())
        path = None
        if isinstance(value, torch.nn.Module):
            path = self.module_paths.get(id(value))
        elif isinstance(value, torch.Tensor):
            path = self.tensor_paths.get(id(value))
        if path == "":
            return ast.Name("__root", ast.Load())
        if path is not None:
            return ast.Call(
                ast.Name("_hc_get", ast.Load()),
                [ast.Name("__root", ast.Load()), ast.Constant(path)],
                [],
            )
        if isinstance(value, Poisoned):
            raise Unsupported(f"{loc(frame, node)}: {value.reason}")
        return self.const_ref(value)

    def rewrite(
        self, node: ast.AST, env: Env, frame: Frame, live: bool = False, result: str = ""
    ) -> Any:
        """`node` as block code: see `_Rewriter`. `live`: only names are replaced (a `with`
        kept whole), and a `return` assigns `result`."""
        return _Rewriter(self, env, frame, live=live, result=result).visit(node)

    def emit(
        self,
        stmt: ast.stmt,
        st: St,
        frame: Frame,
        program_targets: bool = False,
        node: ast.AST | None = None,
    ) -> St:
        """Append a run-time statement to the current block. The names it assigns become
        dynamic; with `program_targets`, `stmt` is an assignment to program names, kept as
        they are (only its value is rewritten). `node` gives the line, else `stmt`."""
        loc_node = node or stmt
        read = stmt.value if program_targets else stmt  # type: ignore[attr-defined]
        if st.env.lists and free_names(read) & st.env.lists:
            name = sorted(free_names(read) & st.env.lists)[0]
            internal = isinstance(read, ast.Assign) and all(
                isinstance(t, ast.Name) and t.id.startswith("__") for t in read.targets
            )  # the splitter's own target (a return value): show the expression
            src = ast.unparse(read.value if internal else read)  # type: ignore[attr-defined]
            src = src.splitlines()[0]
            src = src if len(src) <= 60 else src[:57] + "..."
            raise path_list(name, frame, loc_node, f"`{src}` reads it")
        where = loc(frame, loc_node)
        if program_targets:
            assert isinstance(stmt, ast.Assign)
            src = ast.unparse(stmt.value)
            for t in stmt.targets:
                if isinstance(t, ast.Name) and "__" not in src:
                    self.origins.setdefault(t.id, (f"the value of `{src[:60]}`", where))
            value = self.rewrite(stmt.value, st.env, frame)
            new: ast.stmt = ast.Assign(stmt.targets, value)
        else:
            new = self.rewrite(stmt, st.env, frame)
            for name in assigned_names([stmt]):
                st.env.set_dynamic(name)
                if not name.startswith("__"):
                    self.origins.setdefault(frame.prog(name), (name, where))
        ast.copy_location(new, loc_node)
        ast.fix_missing_locations(new)
        st.block.stmts.append(new)
        return st

    def emit_predicate(self, test: ast.expr, st: St, frame: Frame) -> str:
        """Compute the branch condition at the end of the current block; returns its name."""
        if isinstance(test, ast.Name) and test.id in st.env.dynamic:
            return frame.prog(test.id)
        name = self.fresh("p")
        self.decisions[name] = (getattr(test, "lineno", 0), ast.unparse(test))
        call = ast.Call(ast.Name("_hc_bool", ast.Load()), [test], [])
        self.emit(
            ast.Assign([ast.Name(name, ast.Store())], ast.copy_location(call, test)),
            st,
            frame,
            program_targets=True,
            node=test,
        )
        return name


def _new_lists(node: ast.expr, env: Env) -> Any:
    """New empty lists to track: `[]`, `list()`, and tuples of them (`a, b = [], []`)."""
    if isinstance(node, ast.List) and not node.elts:
        return SymList()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "list" and not node.args and not node.keywords:
            return SymList() if node.func.id not in env.static else None
    if isinstance(node, ast.Tuple) and node.elts:
        parts = [_new_lists(e, env) for e in node.elts]
        return None if any(p is None for p in parts) else tuple(parts)
    return None


def _static_scope(node: ast.expr, env: Env, frame: Frame) -> dict[str, Any] | None:
    """The local names `node` reads, with their build-time values; None when it reads a
    dynamic name, calls a side effect or asks a tensor for a Python value."""
    scope: dict[str, Any] = {}
    for n in free_names(node):
        if n in env.dynamic or n.startswith(STATE_PREFIX):
            return None
        if n in env.static:
            v = env.static[n]
            if isinstance(v, Poisoned):
                raise Unsupported(f"{loc(frame, node)}: {v.reason}")
            if isinstance(v, SymList):
                if any(k == "d" for k, _ in v.items):
                    return None
                v = [x for _, x in v.items]
            scope[n] = v
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            if n.func.id in SIDE_EFFECTS and n.func.id not in scope:
                return None
        if isinstance(n, ast.Attribute) and n.attr in ("item", "tolist", "numpy"):
            return None
    return scope


def _is_plain_container(value: Any) -> bool:
    """A large list or dict is not folded into one constant: the expression that reads it (such
    as `self.table`) stays in the code, with its own parts rewritten."""
    return type(value) in (list, dict) and len(value) >= 64


class _Rewriter(CopyTransformer):
    """Substitute static subexpressions and program names; map Python truthiness and
    `.item()` / `int()` / `float()` / `bool()` on tensors to graph operations.

    `bound`: the names that enclosing comprehensions and lambdas bind. `lazy`: the node need
    not run when the statement does (inside a lambda or comprehension, a later operand of
    `and` / `or`, the body of a loop over a run-time iterable), so static evaluation in it is
    speculative: a failing lookup leaves the expression to run time instead of failing."""

    def __init__(
        self,
        lw: Any,
        env: Env,
        frame: Frame,
        bound: frozenset = frozenset(),
        lazy: bool = False,
        live: bool = False,
        result: str = "",
    ):
        self.lw, self.env, self.frame, self.bound, self.lazy = lw, env, frame, bound, lazy
        self.live = live  # no partial evaluation: only names are replaced (see `withs`)
        self.result = result  # live: the name a `return` in the statement assigns

    def _inner(self, bound: frozenset | None = None) -> _Rewriter:
        """A lazy rewriter for a part that need not run, with `bound` names if given."""
        inner = copy.copy(self)
        inner.bound = self.bound if bound is None else bound
        inner.lazy = True
        return inner

    def _dynamic(self, node: ast.AST) -> bool:
        return bool(free_names(node) & self.env.dynamic)

    def visit(self, node: ast.AST) -> Any:
        if self.live:
            pass
        elif isinstance(node, ast.expr) and not isinstance(node, (ast.Starred, ast.Name)):
            names = free_names(node)
            if names & set(self.env.static) and not names & (self.bound | self.env.dynamic):
                ok, value = self.lw.static_eval(node, self.env, self.frame, speculative=self.lazy)
                if ok and not _is_plain_container(value):
                    return ast.copy_location(self.lw.embed(value, self.frame, node), node)
        return super().visit(node)

    def visit_Name(self, node: ast.Name) -> ast.expr:
        env, frame = self.env, self.frame
        if node.id in self.bound:
            return node
        if isinstance(node.ctx, ast.Store):
            return ast.copy_location(ast.Name(frame.prog(node.id), ast.Store()), node)
        if node.id in env.lists:
            raise path_list(node.id, frame, node, f"`{ast.unparse(node)}` is read here")
        if node.id in env.dynamic:
            return ast.copy_location(ast.Name(frame.prog(node.id), ast.Load()), node)
        if node.id in env.static:
            return ast.copy_location(self.lw.embed(env.static[node.id], frame, node), node)
        if node.id.startswith(("_hc_", "__root", "__c", STATE_PREFIX)):
            return node  # helpers the splitter itself wrote, module state cells
        if node.id in frame.globals or hasattr(builtins, node.id):
            value = frame.globals.get(node.id, getattr(builtins, node.id, None))
            known = self.lw.globals.setdefault(node.id, value)
            return node if known is value else self.lw.const_ref(value)
        raise Unsupported(f"{loc(frame, node)}: name `{node.id}` is not defined here")

    def _own_scope(self, node: ast.AST) -> ast.AST:
        return self._inner(self.bound | frozenset(bound_names(node))).generic_visit(node)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _own_scope
    visit_Lambda = _own_scope

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        first, later = self.visit(node.values[0]), self._inner()
        rest = [later.visit(v) for v in node.values[1:]]
        if not self._dynamic(node):
            clone = copy.copy(node)
            clone.op = self.visit(node.op)
            clone.values = [first, *rest]
            return clone
        helper = "_hc_and" if isinstance(node.op, ast.And) else "_hc_or"
        out = first
        for v in rest:
            out = ast.Call(ast.Name(helper, ast.Load()), [out, v], [])
        return ast.copy_location(out, node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        if isinstance(node.op, ast.Not) and self._dynamic(node):
            return self._helper("_hc_not", [node.operand], node)
        return self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        if len(node.ops) > 1 and self._dynamic(node):
            parts = []
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                parts.append(ast.Compare(left, [op], [right]))
                left = right
            return self.visit(ast.copy_location(ast.BoolOp(ast.And(), parts), node))
        return self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> ast.expr:
        if self.live:
            return self.generic_visit(node)
        ok, value = self.lw.static_eval(node.test, self.env, self.frame, speculative=self.lazy)
        if ok:
            return self.visit(node.body if value else node.orelse)
        raise Unsupported(
            f"{loc(self.frame, node)}: a conditional expression on a data-dependent "
            "value; write it as an if statement"
        )

    def visit_Call(self, node: ast.Call) -> ast.expr:
        f = node.func
        if self._dynamic(node):
            if isinstance(f, ast.Attribute) and f.attr == "item" and not node.args:
                return self._helper("_hc_item", [f.value], node)
            if (
                isinstance(f, ast.Name)
                and f.id in ("int", "float", "bool")
                and f.id not in self.env.static
                and len(node.args) == 1
            ):
                return self._helper(f"_hc_{f.id}", node.args, node)
        return self.generic_visit(node)

    def visit_Return(self, node: ast.Return) -> ast.stmt:
        """The final `return` of a `with` kept whole (`withs`): the with's result."""
        if not (self.live and self.result):
            raise Unsupported(f"{loc(self.frame, node)}: internal: a return in block code")
        value = node.value if node.value is not None else ast.Constant(None)
        new = ast.Assign([ast.Name(self.result, ast.Store())], self.visit(value))
        return ast.copy_location(new, node)

    def visit_For(self, node: ast.For) -> ast.For:
        """A loop over a run-time iterable, emitted whole: its body may run zero times."""
        clone = copy.copy(node)
        clone.target = self.visit(node.target)
        clone.iter = self.visit(node.iter)
        body = self._inner()
        clone.body = [body.visit(s) for s in node.body]
        clone.orelse = [self.visit(s) for s in node.orelse]
        return clone

    def _helper(self, name: str, args: list[ast.expr], node: ast.AST) -> ast.expr:
        new = ast.Call(ast.Name(name, ast.Load()), [self.visit(a) for a in args], [])
        return ast.copy_location(new, node)
