"""Effects that cannot reach an answer: a call whose only effect is on state that no inference
reads (`self.rnn.flatten_parameters()`, which only lays out weights for cuDNN; appending to a
bookkeeping list attribute, `self.saved_actions.append(...)`, that forward never reads back) is
left out of the program, with a note in the manifest (`dropped`). Anything else is refused."""

from __future__ import annotations

import ast
import inspect
from typing import Any

import torch

from .astutil import function_ast
from .state import Env, Frame, Unsupported

_NEUTRAL_METHODS = {
    (torch.nn.RNNBase, "flatten_parameters"): (
        "it only lays out the RNN's weights in memory for cuDNN; no value changes"
    ),
}


class EffectsMixin:
    """Dropped effects, for `Lowerer`."""

    def dropped_effect(self, call: ast.expr, env: Env, frame: Frame) -> str:
        """Why the expression statement `call` cannot change any answer ("" when it may)."""
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            return ""
        f = call.func
        ok, obj = self.static_eval(f.value, env, frame, speculative=True)
        if not ok:
            return ""
        for (cls, method), why in _NEUTRAL_METHODS.items():
            if isinstance(obj, cls) and f.attr == method and not call.args and not call.keywords:
                return why
        if type(obj) is not list or f.attr not in ("append", "extend", "insert"):
            return ""
        if not isinstance(f.value, ast.Attribute):
            return ""
        attr = f.value.attr
        holders = [
            m for m in self.root.modules() if any(v is obj for v in vars(m).values())
        ]  # the list must be this one attribute's alone
        if len(holders) != 1 or vars(holders[0]).get(attr) is not obj:
            return ""
        if attr in self._attributes_read():
            return ""
        return f"forward never reads `{attr}` back, so nothing it holds can reach an answer"

    def _attributes_read(self) -> set[str]:
        """Attribute names that forward, the forwards of all submodules and the methods they
        reach through `self.name` read (growing a list in an expression statement is no
        read; `getattr(obj, "name")` is)."""
        if getattr(self, "_reads", None) is not None:
            return self._reads
        reads: set[str] = set()
        todo = [(type(m), "forward") for m in self.root.modules()]
        seen: set[Any] = set()
        while todo:
            cls, name = todo.pop()
            fn = getattr(cls, name, None)
            if (cls, name) in seen or not inspect.isfunction(fn):
                continue
            seen.add((cls, name))
            if fn.__module__.startswith("torch."):
                continue
            try:
                node, _, _ = function_ast(fn)
            except Unsupported:
                continue
            found = _reads(node)
            reads |= found
            todo += [(cls, n) for n in found]
        self._reads = reads
        return reads


def _reads(node: ast.AST) -> set[str]:
    grown = {
        id(n.value.func.value)
        for n in ast.walk(node)
        if isinstance(n, ast.Expr)
        and isinstance(n.value, ast.Call)
        and isinstance(n.value.func, ast.Attribute)
        and n.value.func.attr in ("append", "extend", "insert")
    }
    out = {
        n.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load) and id(n) not in grown
    }
    for n in ast.walk(node):  # getattr(self, "name")
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr":
            out |= {a.value for a in n.args[1:2] if isinstance(a, ast.Constant)}
    return {x for x in out if isinstance(x, str)}
