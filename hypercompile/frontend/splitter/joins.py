"""Where control-flow paths meet: joining their environments (values that differ become
host-carried scalars or poisoned names), and module attributes that forward assigns."""

from __future__ import annotations

import ast
from typing import Any

import torch

from ...core.ir import Goto
from .astutil import CopyTransformer, free_names
from .state import (
    DYN,
    MISSING,
    SCALARS,
    STATE_PREFIX,
    Env,
    Frame,
    HardUnsupported,
    Poisoned,
    St,
    SymList,
    Unsupported,
    loc,
    same,
)


class JoinsMixin:
    """Joins and module state cells, for `Lowerer`."""

    def join(self, states: list[St], frame: Frame, node: ast.AST) -> St | None:
        """A new block that all `states` go to, with their environments merged: a name keeps a
        static value all paths agree on; a scalar that differs is demoted (the host carries
        it), and so is a list of tensors (a host list); other differences, and names missing on
        some path, poison the name."""
        if not states:
            return None
        if len(states) == 1:
            return states[0]
        names = set().union(*(set(s.env.static) | s.env.dynamic for s in states))
        merged = Env()
        for name in sorted(names):
            vals = [
                s.env.static.get(name, DYN if name in s.env.dynamic else MISSING) for s in states
            ]
            if any(v is MISSING for v in vals):
                merged.static[name] = Poisoned(f"`{name}` is not defined on every path")
                continue
            first = vals[0]
            lists = [isinstance(v, SymList) or name in s.env.lists for s, v in zip(states, vals)]
            if all(v is not DYN and same(v, first) for v in vals):
                merged.static[name] = first
            elif any(lists):
                why = "" if all(lists) else "a list on some paths only"
                why = why or self.join_lists(name, states, vals, frame, node)
                if why:
                    merged.static[name] = Poisoned(
                        f"`{name}` differs between data-dependent paths ({why})"
                    )
                else:
                    merged.set_dynamic(name, host_list=True)
            elif any(isinstance(v, (SymList, Poisoned)) for v in vals):
                merged.static[name] = Poisoned(f"`{name}` differs between data-dependent paths")
            elif all(v is DYN or isinstance(v, SCALARS) for v in vals):
                for s, v in zip(states, vals):
                    if v is not DYN:
                        self.demote(name, s, frame, node)
                merged.dynamic.add(name)
            else:
                merged.static[name] = Poisoned(f"`{name}` differs between data-dependent paths")
        j = self.new_block()
        for s in states:
            s.block.term = Goto(j.id)
        return St(j, merged)

    def demote(self, name: str, st: St, frame: Frame, node: ast.AST) -> None:
        """A static scalar whose value now depends on the path: the host carries it."""
        value = st.env.static[name]
        if not (isinstance(value, SCALARS) or value is None):
            raise Unsupported(
                f"{loc(frame, node)}: `{name}` ({type(value).__name__}) would "
                "depend on a data-dependent path"
            )
        if value is None:
            raise Unsupported(f"{loc(frame, node)}: `{name}` is None on some data-dependent paths")
        st.block.assign[frame.prog(name)] = value
        st.env.set_dynamic(name)

    def state_cells(self, node: ast.AST, env: Env, frame: Frame) -> Any:
        """Attributes of modules that forward assigns (`self.hidden = ...`, SkipNet's recurrent
        gate) become program values: a store creates the cell, later loads read it. Returns a
        copy of `node` with those attributes replaced by their cells' names."""
        if not self.cells and not any(
            isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) for n in ast.walk(node)
        ):
            return node  # the common case: no module state involved
        return _StateCells(self, env, frame).visit(node)


class _StateCells(CopyTransformer):
    def __init__(self, lw: Any, env: Env, frame: Frame):
        self.lw, self.env, self.frame = lw, env, frame

    def cell(self, attr_node: ast.Attribute, create: bool) -> str | None:
        """The program name of the cell for `attr_node`, when it is a plain attribute of a
        module that forward assigns; a store creates the cell."""
        if not (
            isinstance(attr_node.value, (ast.Name, ast.Attribute))
            and not (free_names(attr_node.value) & self.env.dynamic)
        ):
            return None
        ok, obj = self.lw.static_eval(attr_node.value, self.env, self.frame, speculative=True)
        if not ok or not isinstance(obj, torch.nn.Module):
            return None
        attr = attr_node.attr
        if attr in obj._parameters or attr in obj._buffers or attr in obj._modules:
            return None
        key = (id(obj), attr)
        cells = self.lw.cells
        if create and key not in cells:
            cells[key] = f"{STATE_PREFIX}{len(cells)}_{attr}"
        return cells.get(key)

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        name = self.cell(node, isinstance(node.ctx, ast.Store))
        if name is not None:
            return ast.copy_location(ast.Name(name, node.ctx), node)
        return self.generic_visit(node)

    def _assignment(self, node: ast.Assign | ast.AugAssign) -> ast.stmt:
        """An assignment that creates a cell must not read the attribute first."""
        stores = [
            t
            for t in ast.walk(node)
            if isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store)
        ]
        reads = {ast.unparse(t) for t in ast.walk(node.value) if isinstance(t, ast.Attribute)}
        for t in stores:
            new_cell = self.cell(t, False) is None and self.cell(t, True) is not None
            if new_cell and (isinstance(node, ast.AugAssign) or ast.unparse(t) in reads):
                raise HardUnsupported(
                    f"{loc(self.frame, node)}: `{ast.unparse(t)}` is read before forward "
                    "assigns it: module state carried between calls cannot be compiled"
                )
        return self.generic_visit(node)

    visit_Assign = visit_AugAssign = _assignment
