"""AST helpers: reading a function's source, the names an AST reads and binds, and copying
transformers that leave their input alone (the same statements are lowered many times)."""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from typing import Any

from .state import Unsupported


def function_ast(fn: Any) -> tuple[ast.FunctionDef, str, dict[str, Any]]:
    """The AST of a Python function with line numbers of its file."""
    fn = inspect.unwrap(fn)
    func = getattr(fn, "__func__", fn)
    try:
        lines, start = inspect.getsourcelines(func)
        filename = inspect.getsourcefile(func) or "<unknown>"
    except (OSError, TypeError) as e:
        name = getattr(fn, "__qualname__", fn)
        raise Unsupported(f"cannot read the source of {name}: {e}") from None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    ast.increment_lineno(tree, start - 1)
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise Unsupported(f"{filename}:{start}: expected a function definition")
    if isinstance(node, ast.AsyncFunctionDef):
        raise Unsupported(f"{filename}:{start}: async functions are not supported")
    return node, filename, func.__globals__


def has_control_flow(stmts: list[ast.stmt]) -> bool:
    return any(
        isinstance(n, (ast.If, ast.While, ast.For, ast.Break, ast.Continue, ast.Return))
        for s in stmts
        for n in ast.walk(s)
    )


def bound_names(node: ast.AST) -> set[str]:
    """Names bound inside comprehensions and lambdas (their own scopes)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.comprehension):
            out |= {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
        elif isinstance(n, ast.Lambda):
            out |= {a.arg for a in n.args.args}
    return out


def free_names(node: ast.AST) -> set[str]:
    bound = bound_names(node)
    return {
        n.id for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in bound
    }  # fmt: skip


def assigned_names(stmts: list[ast.stmt]) -> set[str]:
    """Names the statements assign, and receivers of in-place methods (`x.add_`, `l.append`)."""
    out: set[str] = set()
    for s in stmts:
        for n in ast.walk(s):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                out.add(n.id)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                recv = n.func.value
                if isinstance(recv, ast.Name) and (
                    n.func.attr.endswith("_") or n.func.attr in ("append", "extend", "insert")
                ):
                    out.add(recv.id)
    return out - bound_names(ast.Module(body=stmts, type_ignores=[]))


def is_name_target(t: ast.expr) -> bool:
    if isinstance(t, ast.Name):
        return True
    return isinstance(t, (ast.Tuple, ast.List)) and all(is_name_target(e) for e in t.elts)


def subscript(name: str, i: int) -> ast.expr:
    return ast.Subscript(ast.Name(name, ast.Load()), ast.Constant(i), ast.Load())


def with_test(stmt: Any, test: ast.expr) -> Any:
    """`stmt` (an `if` or `while`) with its test replaced; `stmt` itself when it is unchanged."""
    if test is stmt.test:
        return stmt
    clone = copy.copy(stmt)
    clone.test = test
    return clone


class CopyTransformer(ast.NodeTransformer):
    """A NodeTransformer that builds a new tree: every node it visits is copied (with fresh
    lists) before its fields are transformed, so the input, which unrolled loops and switch
    cases lower again, stays intact. Subclasses return new nodes from `visit_*`."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        clone = copy.copy(node)
        for name, value in ast.iter_fields(clone):
            if isinstance(value, list):
                setattr(clone, name, list(value))
        return super().generic_visit(clone)


class _Replace(CopyTransformer):
    def __init__(self, old: ast.AST, new: ast.expr):
        self.old, self.new = old, new

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.old:
            return ast.copy_location(self.new, node)
        return super().visit(node)


def replace_node(stmt: ast.stmt, old: ast.AST, new: ast.expr) -> ast.stmt:
    """A copy of `stmt` with the node `old` (by identity) replaced by `new`."""
    return _Replace(old, new).visit(stmt)
