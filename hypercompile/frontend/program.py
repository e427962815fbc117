"""From the splitter's blocks to a host program: clean the control-flow graph, compute liveness,
generate one Python function per block, run them eagerly (probe) to learn value structures and
example inputs, and export every block with statements to its own ONNX subgraph."""

from __future__ import annotations

import ast
import copy
import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..core import ir
from ..errors import BuildError
from .splitter import STATE_PREFIX, Lowerer, Unsupported

MAX_ITERATIONS = ir.DEFAULT_MAX_ITERATIONS
_TAIL_DUP_MAX_STMTS = 16


# -- helpers available inside block functions -----------------------------------------------------
def _hc_bool(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return v.reshape(()) != 0
    return torch.tensor(bool(v))


def _hc_and(a: Any, b: Any) -> torch.Tensor:
    return torch.logical_and(_hc_bool(a), _hc_bool(b))


def _hc_or(a: Any, b: Any) -> torch.Tensor:
    return torch.logical_or(_hc_bool(a), _hc_bool(b))


def _hc_not(a: Any) -> torch.Tensor:
    return torch.logical_not(_hc_bool(a))


def _hc_item(v: torch.Tensor) -> torch.Tensor:
    """`.item()` kept in the graph: a 0-d tensor with Python's number semantics."""
    t = v.reshape(())
    if t.is_floating_point():
        return t.to(torch.float64)
    return t if t.dtype == torch.bool else t.to(torch.int64)


def _hc_int(v: Any) -> Any:
    return v.reshape(()).to(torch.int64) if isinstance(v, torch.Tensor) else int(v)


def _hc_float(v: Any) -> Any:
    return v.reshape(()).to(torch.float64) if isinstance(v, torch.Tensor) else float(v)


def _hc_data(v: Any) -> Any:
    """`.data` of a tensor: the same values without autograd history, as `.detach()` (the
    exporter crashes on `.data` in native code)."""
    return v.detach() if isinstance(v, torch.Tensor) else v.data


def _hc_get(root: torch.nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


HELPERS = {
    f.__name__: f
    for f in (_hc_bool, _hc_and, _hc_or, _hc_not, _hc_item, _hc_int, _hc_float, _hc_data, _hc_get)
}


# -- the program ---------------------------------------------------------------------------------
@dataclass
class Program(ir.Program):
    """The host program while it is built: the IR, with each block's Python statements in
    `Block.body` (a list of statements) and what the probe learns about values."""

    consts: list[Any] = field(default_factory=list)
    globals: dict[str, Any] = field(default_factory=dict)
    filename: str = "<forward>"
    fns: dict[int, Callable] = field(default_factory=dict)  # block id -> compiled statements
    # blocks of nothing but build-time asserts (on shapes and dtypes): the probe runs them,
    # nothing is exported for them
    build_checks: dict[int, Callable] = field(default_factory=dict)
    specs: dict[str, Any] = field(default_factory=dict)  # value name -> pytree spec
    host_lists: set[str] = field(default_factory=set)  # values the host holds as lists
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (user's name, file:line)
    examples: dict[int, dict[str, list[Any]]] = field(default_factory=dict)  # by shapes


def split_module(module: torch.nn.Module, opaque_state: bool = False) -> Program | None:
    """The host program for `module.forward`, or None when it has no data-dependent control
    flow and no host checks (then the whole module exports as one static graph).
    `opaque_state`: see Lowerer."""
    lw = Lowerer(module, opaque_state)
    entry, inputs = lw.lower_forward()
    for b in lw.blocks:
        if b.term is None:
            raise Unsupported("internal: a block has no successor")
    prog = Program(
        entry=entry.id,
        inputs=inputs,
        blocks={
            b.id: ir.Block(
                b.id,
                b.term,
                body=list(b.stmts),
                assign={k: ir.Literal.of(v) for k, v in b.assign.items()},
                lists=list(b.lists),
                host_checks=list(b.host_checks),
            )
            for b in lw.blocks
        },
        dropped=list(lw.dropped),
        outputs_vary=lw.outputs_vary,
        max_iterations=MAX_ITERATIONS,
        decisions={n: ir.Decision(line, src) for n, (line, src) in lw.decisions.items()},
        consts=lw.consts,
        globals=lw.globals,
        filename=sys.modules[type(module).__module__].__file__ or "<forward>",
        host_lists={op.dst for b in lw.blocks for op in b.lists if op.op == "list"},
        origins=dict(lw.origins),
    )
    _clean(prog)
    only = prog.blocks[prog.entry]
    if len(prog.blocks) == 1 and isinstance(only.term, ir.Return) and not _host_work(only):
        return None
    _finish(prog)
    return prog


def _host_work(b: ir.Block) -> bool:
    return bool(b.host_checks or b.lists)


def _reachable(prog: Program) -> None:
    keep = set(prog.reachable())
    prog.blocks = {k: v for k, v in prog.blocks.items() if k in keep}


def _empty(b: ir.Block) -> bool:
    return not b.body and not b.assign and not b.moves and not b.lists and not b.host_checks


def _thread_jumps(prog: Program) -> bool:
    """Jumps through empty blocks go straight to their target; True when any moved."""
    changed = False
    for b in list(prog.blocks.values()):
        for s in ir.successors(b.term):
            t = prog.blocks[s]
            if t.id != b.id and _empty(t) and isinstance(t.term, ir.Goto) and t.term.target != t.id:
                b.term = ir.retarget(b.term, s, t.term.target)
                changed = True
    if prog.entry in prog.blocks:
        e = prog.blocks[prog.entry]
        if _empty(e) and isinstance(e.term, ir.Goto) and e.term.target != e.id:
            prog.entry = e.term.target
            changed = True
    return changed


def _merge_chain(prog: Program) -> bool:
    """Merge one block into its only predecessor when that one jumps straight to it."""
    preds = prog.predecessors()
    for b in list(prog.blocks.values()):
        if not isinstance(b.term, ir.Goto):
            continue
        s = b.term.target
        t = prog.blocks.get(s)
        if t is None or t.id == b.id or preds[s] != [b.id] or s == prog.entry:
            continue
        if b.lists and (t.body or t.assign or t.moves):
            continue  # t's work must follow b's list work
        if b.assign or b.moves:
            if t.body:
                continue
            # host-only tail: carry t's host work after b's
            b.assign.update(t.assign)
            b.moves += t.moves
            b.lists = b.lists + t.lists
        else:
            b.body = b.body + t.body
            b.assign = dict(t.assign)
            b.moves = list(t.moves)
            b.lists = b.lists + t.lists
        b.host_checks = b.host_checks + t.host_checks  # b's now after t's graph: it is pure
        b.term = t.term
        del prog.blocks[s]
        return True
    return False


def _clean(prog: Program) -> None:
    """Thread jumps through empty blocks and merge straight-line chains, to a fixed point."""
    changed = True
    while changed:
        _reachable(prog)
        changed = _thread_jumps(prog)
        changed = _merge_chain(prog) or changed


# -- liveness --------------------------------------------------------------------------------------
def _stmt_uses_defs(stmt: ast.stmt, names: set[str]) -> tuple[set[str], set[str]]:
    if isinstance(stmt, ast.With):  # a manager kept whole: its body in order
        head = [ast.Expr(i.context_expr) for i in stmt.items]
        head += [
            ast.Assign([i.optional_vars], ast.Constant(None)) for i in stmt.items if i.optional_vars
        ]
        return _stmts_use_def([*head, *stmt.body], names)
    bound = set()
    for n in ast.walk(stmt):
        if isinstance(n, ast.comprehension):
            bound |= {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
    uses = {
        n.id
        for n in ast.walk(stmt)
        if isinstance(n, ast.Name)
        and isinstance(n.ctx, ast.Load)
        and n.id in names
        and n.id not in bound
    }
    defs = {
        n.id
        for n in ast.walk(stmt)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id not in bound
    }
    if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
        uses.add(stmt.target.id)
    for target in _store_targets(stmt):  # out[mask] = v, x.data = v: changes out, x in place
        while isinstance(target, (ast.Subscript, ast.Attribute)):
            target = target.value
        if isinstance(target, ast.Name) and target.id in names:
            uses.add(target.id)
            defs.add(target.id)
    for n in ast.walk(stmt):  # x.add_(y) redefines x, and so does xs.append(y)
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and (n.func.attr.endswith("_") or n.func.attr in ("append", "extend", "insert"))
            and isinstance(n.func.value, ast.Name)
        ):
            uses.add(n.func.value.id)
            defs.add(n.func.value.id)
    return uses, defs


def _store_targets(stmt: ast.stmt) -> list[ast.expr]:
    """The subscript and attribute targets a statement stores into (tuple targets unpacked)."""
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        targets = [stmt.target]
    else:
        return []
    out = []
    while targets:
        t = targets.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            targets.extend(t.elts)
        elif isinstance(t, (ast.Subscript, ast.Attribute)):
            out.append(t)
    return out


def _program_names(prog: Program) -> set[str]:
    names = set(prog.inputs)
    for b in prog.blocks.values():
        names |= set(b.assign) | {m[0] for m in b.moves} | {op.dst for op in b.lists}
        for s in b.body:
            names |= {
                n.id
                for n in ast.walk(s)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
    return names


def _stmts_use_def(stmts: list[ast.stmt], names: set[str]) -> tuple[set[str], set[str]]:
    uses: set[str] = set()
    defs: set[str] = set()
    for s in stmts:
        u, d = _stmt_uses_defs(s, names)
        uses |= u - defs
        defs |= d
    return uses, defs


def _block_use_def(b: ir.Block, names: set[str]) -> tuple[set[str], set[str]]:
    uses, defs = _stmts_use_def(b.body, names)
    for dst, src in b.moves:
        if src not in defs and src not in b.assign:
            uses.add(src)
        defs.add(dst)
    defs |= set(b.assign)
    for op in b.lists:
        uses |= set(op.uses()) - defs
        defs.add(op.dst)
    uses |= ir.block_uses(b) - defs
    return uses, defs


def _liveness(prog: Program) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    names = _program_names(prog)
    ud = {k: _block_use_def(b, names) for k, b in prog.blocks.items()}
    live_in: dict[int, set[str]] = {k: set() for k in prog.blocks}
    live_out: dict[int, set[str]] = {k: set() for k in prog.blocks}
    changed = True
    while changed:
        changed = False
        for k, b in prog.blocks.items():
            out = set().union(*(live_in[s] for s in ir.successors(b.term)))
            new_in = ud[k][0] | (out - ud[k][1])
            if out != live_out[k] or new_in != live_in[k]:
                live_out[k], live_in[k] = out, new_in
                changed = True
    return live_in, live_out


def _eliminate_dead(prog: Program) -> None:
    """Drop statements whose results are never used, then turn `a = b` copies into host moves."""
    names = _program_names(prog)
    _, live_out = _liveness(prog)
    for k, b in prog.blocks.items():
        live = set(live_out[k]) | ir.block_uses(b)
        for op in reversed(b.lists):  # list work is kept: a `get` raises as forward would
            live.discard(op.dst)
            live |= set(op.uses())
        for dst, src in reversed(b.moves):
            live.discard(dst)
            live.add(src)
        live -= set(b.assign)
        kept = []
        for s in reversed(b.body):
            u, d = _stmt_uses_defs(s, names)
            if isinstance(s, (ast.Assign, ast.AugAssign)) and d and not (d & live):
                continue
            live = (live - d) | u
            kept.append(s)
        b.body = kept[::-1]
        _copies_to_moves(b)


def _copies_to_moves(b: ir.Block) -> None:
    """`a = b` at the end of a block's graph is a host move, not a graph output."""
    while b.body:
        s = b.body[-1]
        if not (
            isinstance(s, ast.Assign)
            and len(s.targets) == 1
            and isinstance(s.targets[0], ast.Name)
            and isinstance(s.value, ast.Name)
        ):
            break
        b.moves.insert(0, (s.targets[0].id, s.value.id))
        b.body.pop()


def _tail_duplicate(prog: Program) -> None:
    """A small block that ends in a branch, switch or return and is reached by plain jumps is
    copied into those predecessors: one subgraph call instead of two on each path. A
    predecessor's host literals (`steps = 0` before a `while`) do not block it: the copy reads
    them as graph constants."""
    preds = prog.predecessors()
    headers = prog.find_loop_headers()
    names = _program_names(prog)
    for b in list(prog.blocks.values()):
        if isinstance(b.term, ir.Goto) or b.assign or b.moves or len(b.body) > _TAIL_DUP_MAX_STMTS:
            continue
        if b.lists:
            continue
        if b.id in headers and not b.body:
            continue
        uses, defs = _stmts_use_def(b.body, names)
        for p in preds[b.id]:
            pb = prog.blocks[p]
            if pb.term != ir.Goto(b.id) or pb.moves or pb.lists or p == b.id:
                continue
            if defs & set(pb.assign):
                continue  # the host literal, set after the graph, would overwrite b's value
            consts = [
                _at(ast.Assign([ast.Name(n, ast.Store())], ast.Constant(lit.value)), b.body[0])
                for n, lit in sorted(pb.assign.items())
                if n in uses
            ]
            pb.body = pb.body + consts + [copy.deepcopy(s) for s in b.body]
            pb.host_checks = pb.host_checks + b.host_checks
            pb.term = b.term
    _reachable(prog)


def _at(node: ast.stmt, where: ast.stmt) -> ast.stmt:
    """`node` (and everything in it) at the source location of `where`."""
    for n in ast.walk(node):
        ast.copy_location(n, where)
    return node


# -- hoisting decisions ----------------------------------------------------------------------------
# A decision may move up only when it is cheap and has no effects: names, constants, indexing,
# arithmetic, comparisons, reductions and the _hc_ helpers (no module calls, no in-place ops).
_PURE_FUNCS = {"_hc_bool", "_hc_and", "_hc_or", "_hc_not", "_hc_item", "_hc_int", "_hc_float"}
_PURE_METHODS = {
    "sum", "mean", "amax", "amin", "max", "min", "any", "all", "abs", "float", "int", "long",
    "bool", "item", "numel", "dim", "size", "argmax", "argmin", "contiguous", "detach", "view",
    "reshape", "squeeze", "unsqueeze", "flatten",
}  # fmt: skip
_PURE_NODES = (
    ast.Name, ast.Constant, ast.Subscript, ast.Slice, ast.Tuple, ast.Compare, ast.BinOp,
    ast.UnaryOp, ast.BoolOp, ast.Call, ast.Attribute, ast.keyword, ast.expr_context,
    ast.operator, ast.cmpop, ast.boolop, ast.unaryop,
)  # fmt: skip


def _pure_decision(stmt: ast.stmt) -> str | None:
    """The name `stmt` sets when it is `name = <cheap pure expression>`, else None."""
    if not (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
    ):
        return None
    for n in ast.walk(stmt.value):
        if not isinstance(n, _PURE_NODES):
            return None
        if isinstance(n, ast.Call):
            f = n.func
            if not (
                (isinstance(f, ast.Name) and f.id in _PURE_FUNCS)
                or (isinstance(f, ast.Attribute) and f.attr in _PURE_METHODS)
            ):
                return None
    return stmt.targets[0].id


class _Substitute(ast.NodeTransformer):
    def __init__(self, known: dict[str, ast.expr]):
        self.known = known

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if isinstance(node.ctx, ast.Load) and node.id in self.known:
            return copy.deepcopy(self.known[node.id])
        return node


def _substitute_into_decisions(prog: Program) -> None:
    """Write the cheap pure values a decision reads from its own block into the decision
    (`a = policy[:, 3].contiguous(); p = a.sum() == 0` becomes `p = policy[:, 3]
    .contiguous().sum() == 0`), so that hoisting can move it up to where `policy` is made.
    `a` is still computed where it was, for its other uses."""
    names = _program_names(prog)
    for b in prog.blocks.values():
        if not isinstance(b.term, (ir.Branch, ir.Switch)):
            continue
        decided = ir.term_uses(b.term)
        known: dict[str, tuple[ast.expr, set[str]]] = {}  # name -> its value, what that reads
        for i, stmt in enumerate(b.body):
            target = _pure_decision(stmt)
            value = None
            if target is not None:
                sub = _Substitute({n: e for n, (e, _) in known.items()})
                value = sub.visit(copy.deepcopy(stmt.value))  # type: ignore[attr-defined]
                if target in decided and value is not None:
                    new = ast.copy_location(ast.Assign(stmt.targets, value), stmt)  # type: ignore[attr-defined]
                    b.body[i] = ast.fix_missing_locations(new)
            defs = _stmt_uses_defs(stmt, names)[1]
            known = {n: v for n, v in known.items() if n not in defs and not v[1] & defs}
            if target is not None and value is not None:
                uses = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} & names
                if target not in uses:
                    known[target] = (value, uses)


def _sink_cheap_values(prog: Program) -> None:
    """A cheap pure value that a block's graph reads from its predecessors, made there by the
    same statement on every path and from inputs unchanged since, is made in the block itself
    instead: a predecessor that made it only for this block (BlockDrop's skip path makes the
    next block's `action = policy[:, t]`) may then need no graph call at all. Only values made
    from what the block receives anyway move."""
    names = _program_names(prog)
    preds = prog.predecessors()
    headers = prog.find_loop_headers()
    live_in, _ = _liveness(prog)
    for y in list(prog.blocks.values()):
        if not y.body or y.id in headers:
            continue
        used = _stmts_use_def(y.body, names)[0] & live_in[y.id]
        for v in sorted(used):
            stmt = _single_reaching_def(prog, y.id, v, names, preds, headers)
            # only from values `y` receives anyway: a new input would cost what it saves
            if stmt is not None and _stmt_uses_defs(stmt, names)[0] <= live_in[y.id]:
                y.body = [copy.deepcopy(stmt), *y.body]


def _single_reaching_def(prog, y: int, v: str, names, preds, headers) -> ast.stmt | None:
    """The one cheap pure statement `v = ...` that defines `v` for block `y` on every path,
    when its inputs are not changed between it and `y`; else None."""
    found: list[tuple[int, int]] = []  # (block, index of the statement)
    passed: set[int] = set()
    stack = list(preds[y])
    while stack:
        k = stack.pop()
        if k in passed or any(k == f[0] for f in found):
            continue
        if k == y or k in headers or k == prog.entry and not prog.blocks[k].body:
            return None
        b = prog.blocks[k]
        host = set(b.assign) | {m[0] for m in b.moves} | {op.dst for op in b.lists}
        if v in host:
            return None
        at = next(
            (i for i in reversed(range(len(b.body))) if v in _stmt_uses_defs(b.body[i], names)[1]),
            None,
        )
        if at is not None:
            found.append((k, at))
            continue
        if k == prog.entry or not preds[k]:
            return None  # `v` comes from outside the program
        passed.add(k)
        stack.extend(preds[k])
    if not found:
        return None
    first = prog.blocks[found[0][0]].body[found[0][1]]
    if _pure_decision(first) != v:
        return None
    key = ast.dump(first)
    reads = _stmt_uses_defs(first, names)[0]
    if v in reads:
        return None
    for k, at in found:
        b = prog.blocks[k]
        if ast.dump(b.body[at]) != key:
            return None
        after = _stmts_use_def(b.body[at + 1 :], names)[1]
        host = set(b.assign) | {m[0] for m in b.moves} | {op.dst for op in b.lists}
        if (after | host) & reads:
            return None
    for k in passed:
        if _block_use_def(prog.blocks[k], names)[1] & reads:
            return None
    return first


def _dominators(prog: Program) -> dict[int, set[int]]:
    order = prog.reachable()
    preds = prog.predecessors()
    dom = {k: set(order) for k in order}
    dom[prog.entry] = {prog.entry}
    changed = True
    while changed:
        changed = False
        for k in order[1:]:
            ps = [dom[p] for p in preds[k] if p in dom]
            new = {k} | (set.intersection(*ps) if ps else set())
            if new != dom[k]:
                dom[k], changed = new, True
    return dom


def _hoist_decisions(prog: Program) -> None:
    """Move the statement computing a branch's or switch's decision up into the end of a
    dominating block's graph when every path from there computes it from the same values
    (BlockDrop: the policy block decides every skip, so a skipped residual block costs no
    graph call). Only cheap pure statements move, only over blocks without host checks, list
    work or loops, and only where they were computed on every path anyway, so no path gains an
    exception it did not raise."""
    changed = True
    while changed:
        changed = False
        live_out = _liveness(prog)[1]
        dom = _dominators(prog)
        names = _program_names(prog)
        for b in list(prog.blocks.values()):
            decided = ir.term_uses(b.term) if isinstance(b.term, (ir.Branch, ir.Switch)) else set()
            stmt = next((s for s in reversed(b.body) if _pure_decision(s) in decided), None)
            if stmt is None or b.id not in dom:
                continue
            for d in sorted(dom[b.id] - {b.id}, key=lambda k: -len(dom[k])):  # nearest first
                if _hoist_into(prog, d, stmt, names, live_out[d]):
                    changed = True
                    break
            if changed:
                break


def _hoist_into(prog: Program, d: int, stmt: ast.stmt, names: set[str], live_out: set[str]) -> bool:
    """Hoist `stmt` to the end of block `d`'s graph when the blocks computing it cut every path
    from `d`; True when it moved."""
    db = prog.blocks[d]
    target = _pure_decision(stmt)
    uses, _ = _stmt_uses_defs(stmt, names)
    watched = uses | {target}
    host_set = set(db.assign) | {m[0] for m in db.moves} | {op.dst for op in db.lists}
    _, d_defs = _stmts_use_def(db.body, names)
    if not db.body or db.host_checks or db.lists or target in live_out:
        return False
    if host_set & watched or target in d_defs:
        return False
    key = ast.dump(stmt)
    headers = prog.find_loop_headers()
    preds = prog.predecessors()
    seen: set[int] = set()
    stops: dict[int, int] = {}  # block -> index of the statement in its body
    stack = list(ir.successors(db.term))
    while stack:
        x = stack.pop()
        if x in seen or x in stops:
            continue
        if x == d or x in headers:
            return False
        xb = prog.blocks[x]
        at = next((i for i, s in enumerate(xb.body) if ast.dump(s) == key), None)
        before = xb.body if at is None else xb.body[:at]
        if _stmts_use_def(before, names)[1] & watched:
            return False
        if at is not None:
            stops[x] = at
            continue
        x_host = set(xb.assign) | {m[0] for m in xb.moves} | {op.dst for op in xb.lists}
        if xb.host_checks or xb.lists or x_host & watched or isinstance(xb.term, ir.Return):
            return False
        seen.add(x)
        stack.extend(ir.successors(xb.term))
    region = seen | set(stops)
    if not stops or any(p not in region and p != d for x in region for p in preds[x]):
        return False
    db.body = db.body + [copy.deepcopy(stmt)]
    for x, at in stops.items():
        xb = prog.blocks[x]
        xb.body = xb.body[:at] + xb.body[at + 1 :]
    return True


def _finish(prog: Program) -> None:
    _eliminate_dead(prog)
    _tail_duplicate(prog)
    _eliminate_dead(prog)
    _substitute_into_decisions(prog)
    _hoist_decisions(prog)
    _eliminate_dead(prog)
    _sink_cheap_values(prog)
    _eliminate_dead(prog)
    _clean(prog)
    prog.mark_loop_headers()
    _, live_out = _liveness(prog)
    names = _program_names(prog)
    for k, b in prog.blocks.items():
        uses, defs = _stmts_use_def(b.body, names)
        needed_after = set(live_out[k]) | ir.block_uses(b) | {src for _, src in b.moves}
        needed_after |= {n for op in b.lists for n in op.uses()}
        b.inputs = sorted(uses)
        b.outputs = sorted(defs & needed_after - set(b.assign))  # host literals overwrite
        if b.body and not b.outputs and all(isinstance(s, ast.Assert) for s in b.body):
            prog.build_checks[k] = _compile_block(b, prog)
            b.body = []
        elif b.body:
            prog.fns[k] = _compile_block(b, prog)


class _DataToDetach(ast.NodeTransformer):
    """`x.data` read in a block becomes `_hc_data(x)` (see `_hc_data`)."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr != "data" or not isinstance(node.ctx, ast.Load):
            return node
        call = ast.Call(ast.Name("_hc_data", ast.Load()), [node.value], [])
        return ast.copy_location(call, node)


def _compile_block(b: ir.Block, prog: Program) -> Callable:
    args = [ast.arg("__root")] + [ast.arg(n) for n in b.inputs]
    ret = ast.Return(ast.Tuple([ast.Name(n, ast.Load()) for n in b.outputs], ast.Load()))
    kw: dict[str, Any] = {}
    if sys.version_info >= (3, 12):
        kw["type_params"] = []
    fn = ast.FunctionDef(
        name=f"block{b.id}",
        args=ast.arguments(posonlyargs=[], args=args, kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[_DataToDetach().visit(copy.deepcopy(s)) for s in b.body] + [ret],
        decorator_list=[],
        returns=None,
        **kw,
    )
    ast.copy_location(fn, b.body[0])
    mod = ast.fix_missing_locations(ast.Module([fn], []))
    scope = dict(prog.globals) | HELPERS | {"__c": prog.consts}
    exec(compile(mod, prog.filename, "exec"), scope)  # noqa: S102 - the user's own code
    return scope[f"block{b.id}"]


def block_source(b: ir.Block) -> str:
    return "\n".join(ast.unparse(s) for s in b.body)


# -- eager execution (probe) ---------------------------------------------------------------------
def _as_value(v: Any) -> Any:
    """Block outputs as the runtime sees them: Python numbers become 0-d tensors."""
    if isinstance(v, bool):
        return torch.tensor(v)
    if isinstance(v, int):
        return torch.tensor(v, dtype=torch.int64)
    if isinstance(v, float):
        return torch.tensor(v, dtype=torch.float64)
    return v


class Rejected(Exception):
    """A host assert of the program failed in the probe: forward does not accept the inputs."""

    def __init__(self, check: ir.HostCheck):
        super().__init__(f"{check.file}:{check.line}: assertion failed: {check.message}")
        self.check = check


class Probe(ir.Interpreter):
    """The program's interpreter over PyTorch blocks (the same one the runtime uses over
    compiled runners). As its own observer it records which blocks ran, the first inputs each
    block received (examples to export with), the environment at every decision, how often each
    side was taken, and the structure of every value. Its host checks raise `Rejected` for a
    failing assert and count warnings and log lines (eager forward issues those at build time)."""

    def __init__(self, prog: Program, root: torch.nn.Module):
        self.prog, self.root = prog, root
        self.reached: set[int] = set()
        self.entered: set[int] = set()  # blocks run, not only found infeasible
        self.decisions: dict[int, dict[str, Any]] = {}  # last environment per decision block
        self.counts: dict[int, dict[str, int]] = {}
        self.notified: dict[tuple[str, int], int] = {}  # (file, line) -> times issued
        self._last: ir.Block | None = None
        super().__init__(prog)

    def bind(self, block: ir.Block) -> Callable[[dict[str, Any]], None] | None:
        fn = self.prog.fns.get(block.id) or self.prog.build_checks.get(block.id)
        if fn is None:
            return None
        inputs, outputs = block.inputs, block.outputs

        def call(env: dict[str, Any]) -> None:
            try:
                outs = fn(self.root, *[env[n] for n in inputs])
            except AssertionError as e:
                line = _user_line(e, self.prog.filename) or "?"
                why = f": {e}" if str(e) else ""
                raise BuildError(
                    f"{self.prog.filename}:{line}: assertion fails at build time{why}"
                ) from None
            for n, v in zip(outputs, outs):
                env[n] = pytree.tree_map(_as_value, v)
                self._note_spec(n, env[n])

        return call

    def literal(self, lit: ir.Literal) -> torch.Tensor:
        return _as_value(lit.value)  # a fresh tensor: a block may update it in place

    def exceeded(self) -> Exception:
        return BuildError(f"program exceeded {self.max_iterations} loop iterations")

    def join(self, items: list[Any], dim: int, stack: bool) -> Any:
        return torch.stack(items, dim) if stack else torch.cat(items, dim)

    def failed(self, c: ir.HostCheck) -> Exception:
        return Rejected(c)

    def notify(self, c: ir.HostCheck) -> None:
        self.notified[(c.file, c.line)] = self.notified.get((c.file, c.line), 0) + 1

    def run(self, env: dict[str, Any], start: int | None = None) -> Any:  # type: ignore[override]
        """The value `forward` returns, run from the entry (or from block `start`)."""
        self._last = None
        outs = super().run(env, start=start, observer=self)
        self._note_host_values(env)
        return outs[0] if len(outs) == 1 else tuple(outs)

    # -- observer ----------------------------------------------------------------------------
    def enter(self, block: ir.Block, env: dict[str, Any]) -> None:
        self._note_host_values(env)
        self._last = block
        self.reached.add(block.id)
        self.entered.add(block.id)
        if block.id in self.prog.fns:
            seen = self.prog.examples.setdefault(block.id, {})
            args = [env[n] for n in block.inputs]
            sig = str([tuple(x.shape) for x in pytree.tree_leaves(args)])
            if sig not in seen and len(seen) < 6:
                seen[sig] = [pytree.tree_map(_clone, a) for a in args]

    def decide(self, block: ir.Block, env: dict[str, Any], side: str) -> None:
        self.decisions[block.id] = dict(env)
        c = self.counts.setdefault(
            block.id, {"then": 0, "else": 0} if side in ("then", "else") else {}
        )
        c[side] = c.get(side, 0) + 1

    def _note_host_values(self, env: dict[str, Any]) -> None:
        """Check the structure of what the last block's host work set."""
        last = self._last
        if last is not None:
            for n in last.assign:
                self._note_spec(n, env[n])
            for dst, _ in last.moves:
                self._note_spec(dst, env[dst])
            self._last = None

    def _note_spec(self, name: str, value: Any) -> None:
        if name in self.prog.host_lists:
            return
        leaves, spec = pytree.tree_flatten(value)
        if not all(isinstance(x, torch.Tensor) for x in leaves):
            bad = next(type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor))
            raise Unsupported(
                f"{self._where(name)} holds a {bad}, which cannot cross between "
                "subgraphs (only tensors, numbers and tuples/lists of them can)"
            )
        old = self.prog.specs.get(name)
        if old is not None and old != spec:
            raise Unsupported(
                f"{self._where(name)} is {_describe(old)} on one path and {_describe(spec)} "
                "on another; a value must keep its structure across branches"
            )
        self.prog.specs[name] = spec

    def _where(self, name: str) -> str:
        """`file:line: value `x`` in the user's words (never a program name)."""
        user, where = self.prog.origins.get(name, ("", ""))
        if not user:
            return f"{self.prog.filename}: a value of forward"
        return f"{where}: `{user}`" if user.isidentifier() else f"{where}: {user}"

    def explore(self) -> None:
        """Reach blocks that no input reached by forcing the other side of recorded decisions,
        so every block has example inputs to export with."""
        pending = True
        while pending:
            pending = False
            missing = set(self.prog.fns) - self.reached
            if not missing:
                return
            for b, env in list(self.decisions.items()):
                for s in ir.successors(self.prog.blocks[b].term):
                    if s not in self.reached:
                        try:
                            with torch.no_grad():
                                self.run(pytree.tree_map(_clone, env), start=s)
                        except (Unsupported, BuildError):
                            raise
                        except Exception:
                            self.reached.add(s)  # infeasible from here; try other decisions
                            continue
                        pending = True


_INTERNAL = {
    "ret": "the value returned",
    "inl": "a call's result",
    "p": "a condition",
    "test": "a condition",
    "ifx": "a conditional expression",
    "idx": "an index",
    "item": "a number read from a tensor",
    "case": "a case",
}


def user_name(name: str) -> str:
    """A program value's name as forward's reader knows it: without the suffix an inlined
    call's locals carry (`x__27` is `x`), the splitter's own values said in words."""
    if name.startswith(STATE_PREFIX):
        return f"attribute `{name[len(STATE_PREFIX) :].partition('_')[2]}`"
    m = re.fullmatch(r"__([a-z]+)\d+(__\d+)*", name)
    if m:
        return _INTERNAL.get(m.group(1), "an intermediate value")
    plain = re.sub(r"(__\d+)+$", "", name)
    return f"`{plain}`"


def value_line(prog: Program, name: str) -> str:
    """`file:line: ` of forward's first statement that assigns `name`, or '' (values of
    inlined calls and of the splitter itself have no line in forward)."""
    if name.startswith("__") or re.search(r"__\d+$", name):
        return ""
    for b in prog.blocks.values():
        for stmt in b.body:
            for n in ast.walk(stmt):
                if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store):
                    return f"{prog.filename}:{stmt.lineno}: "
    return ""


def _describe(spec: Any) -> str:
    if spec.is_leaf():
        return "a tensor"
    what = getattr(spec.type, "__name__", str(spec.type))
    return f"a {what} of {spec.num_children}"


def parity_pair(
    probe: Probe, target: torch.nn.Module, xs: tuple[torch.Tensor, ...], example: bool
) -> tuple[Any, Any] | None:
    """Eager forward's and the program's outputs on one input set, or None when an assert of
    forward rejects it in both (nothing to compare). A rejected example is a BuildError, as is
    an input that only one of them rejects."""
    try:
        got = probe.run({n: _clone(x) for n, x in zip(probe.prog.inputs, xs)})
    except Rejected as e:
        if example:
            c = e.check
            raise BuildError(
                f"{c.file}:{c.line}: assertion fails on the example inputs: {c.message}"
            ) from None
        try:
            target(*xs)
        except AssertionError:
            return None
        raise BuildError(f"{e}, but eager forward accepts the input: a hypercompile bug") from None
    try:
        want = target(*xs)
    except AssertionError as e:
        line = _user_line(e, probe.prog.filename) or "?"
        raise BuildError(
            f"{probe.prog.filename}:{line}: an assert of eager forward fails where the split "
            "program's does not: a hypercompile bug"
        ) from None
    return want, got


def _clone(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else x


# -- export --------------------------------------------------------------------------------------
class BlockModule(torch.nn.Module):
    """One block as a module over flat tensors (tuples rebuilt from their recorded structure)."""

    def __init__(self, root: torch.nn.Module, fn: Callable, in_specs: list[Any], n_out: int):
        super().__init__()
        self.root = root
        self._fn, self._in_specs = fn, in_specs

    def forward(self, *flat: torch.Tensor):
        args, i = [], 0
        for spec in self._in_specs:
            n = spec.num_leaves
            args.append(pytree.tree_unflatten(list(flat[i : i + n]), spec))
            i += n
        outs = self._fn(self.root, *args)
        leaves = pytree.tree_leaves([pytree.tree_map(_as_value, o) for o in outs])
        ins = {id(x) for x in flat}
        return tuple(x.clone() if id(x) in ins else x for x in leaves)  # an output is a node


class _Batch(torch.nn.Module):
    """Several blocks as one module: each on its own inputs, their outputs one after another."""

    def __init__(self, root: torch.nn.Module, jobs: list[_Job]):
        super().__init__()
        self.root = root
        self._parts = [(j.module, len(j.flat)) for j in jobs]

    def forward(self, *flat: torch.Tensor):
        outs, i = [], 0
        for module, n in self._parts:
            outs += module(*flat[i : i + n])
            i += n
        return tuple(outs)


def leaves_of(prog: Program, name: str) -> list[str]:
    spec = prog.specs.get(name)
    if spec is None or spec.is_leaf():
        return [name]
    return [f"{name}#{i}" for i in range(spec.num_leaves)]


# what the manifest records of an exported block: weight names, input specs, output specs
BlockGraph = tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class _Job:
    """One block ready to export: its module, example inputs, symbolic dims and eager outputs."""

    block: ir.Block
    module: BlockModule
    flat: list[torch.Tensor]
    dynamic: list[dict[int, Any]]
    outs: tuple[torch.Tensor, ...]
    paths: set[str]  # of the root's submodules and tensors the block uses


def _job(prog: Program, b: ir.Block, root: torch.nn.Module) -> _Job:
    examples = list(prog.examples.get(b.id, {}).values())
    if not examples:
        line = getattr(b.body[0], "lineno", "?")
        raise BuildError(
            f"{prog.filename}:{line}: this part of forward was never reached on any "
            "input, so it cannot be exported"
        )
    example = examples[0]
    in_specs = [pytree.tree_flatten(v)[1] for v in example]
    flat = [x for v in example for x in pytree.tree_leaves(v)]
    # dims that differ between the shapes this block was reached with stay symbolic
    others = [[x for v in ex for x in pytree.tree_leaves(v)] for ex in examples[1:]]
    dynamic = [
        {
            d: torch.export.Dim.DYNAMIC
            for d in range(x.dim())
            if any(o[i].shape[d] != x.shape[d] for o in others)
        }
        for i, x in enumerate(flat)
    ]
    module = BlockModule(root, prog.fns[b.id], in_specs, len(b.outputs))
    with torch.no_grad():
        outs = module(*flat)
    gets = [
        n
        for s in b.body
        for n in ast.walk(s)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "_hc_get"
    ]
    paths = {n.args[1].value for n in gets if isinstance(n.args[1], ast.Constant)}
    roots = sum(isinstance(n, ast.Name) and n.id == "__root" for s in b.body for n in ast.walk(s))
    constant = sum(isinstance(n.args[1], ast.Constant) for n in gets)
    if roots > constant:  # the root used otherwise (a model-owned `with` reads it as it runs)
        paths.add("")
    return _Job(b, module, flat, dynamic, outs, paths)


def _used_root(root: torch.nn.Module, paths: set[str]) -> torch.nn.Module:
    """A module holding only what the blocks use of `root`, at the same paths (so weights keep
    their state_dict names): the exporter's work grows with every parameter its module has."""
    if "" in paths:
        return root
    keys = set(root.state_dict(keep_vars=True))
    top = torch.nn.Module()
    for path in sorted(paths, key=lambda p: p.count(".")):
        *parents, name = path.split(".")
        box = top
        for part in parents:
            if not hasattr(box, part):
                box.add_module(part, torch.nn.Module())
            box = getattr(box, part)
        if hasattr(box, name):
            continue  # inside a module already there
        value = _hc_get(root, path)
        if isinstance(value, torch.nn.Parameter):
            box.register_parameter(name, value)
        elif isinstance(value, torch.Tensor):
            box.register_buffer(name, value, persistent=path in keys)
        elif isinstance(value, torch.nn.Module):
            box.add_module(name, value)
        else:
            return root
    return top


def _run_exporter(root: torch.nn.Module, jobs: list[_Job], prefixes: list[str]) -> Any:
    """torch.onnx's graph of the jobs' blocks, one after another, over their inputs named
    `<prefix>in<i>` and `<prefix>out<i>` per job."""
    from .export import OPSET, quiet, warm_exporter

    warm_exporter()
    used = _used_root(root, set().union(*(j.paths for j in jobs)))
    for j in jobs:
        j.module.root = used
    module = jobs[0].module if len(jobs) == 1 else _Batch(used, jobs)
    flat = tuple(x for j in jobs for x in j.flat)
    dynamic = [d for j in jobs for d in j.dynamic]
    with quiet():
        return torch.onnx.export(
            module,
            flat,
            dynamo=True,
            input_names=[f"{p}in{i}" for j, p in zip(jobs, prefixes) for i in range(len(j.flat))],
            output_names=[f"{p}out{i}" for j, p in zip(jobs, prefixes) for i in range(len(j.outs))],
            optimize=False,
            opset_version=OPSET,
            verbose=False,
            dynamic_shapes=(tuple(dynamic),) if any(dynamic) else None,
        ).model_proto


def _save(proto: Any, job: _Job, root: torch.nn.Module, path: Path) -> BlockGraph:
    """Stub the weights, simplify, drop source locations and save; the manifest's record."""
    import onnx

    from .export import canonical_names, simplify, stub_weights

    weights = stub_weights(proto, root.state_dict(keep_vars=True), prefix="root.")
    proto = simplify(proto, weights)
    for node in proto.graph.node:  # source locations would make identical blocks differ
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.metadata_props[:]
    proto.graph.doc_string = ""
    canonical_names(proto, set(weights))  # so would the exporter's value names
    onnx.save(proto, str(path))
    ins = [
        {
            "name": f"in{i}",
            "dtype": str(x.numpy().dtype),
            "shape": [None if d in dyn else s for d, s in enumerate(x.shape)],
        }
        for i, (x, dyn) in enumerate(zip(job.flat, job.dynamic))
    ]
    outs = [
        {"name": f"out{i}", "dtype": str(o.detach().numpy().dtype), "shape": list(o.shape)}
        for i, o in enumerate(job.outs)
    ]
    return weights, ins, outs


def export_block(prog: Program, b: ir.Block, root: torch.nn.Module, path: Path) -> BlockGraph:
    """Export block `b` to `path`; returns (weight names, input specs, output specs)."""
    job = _job(prog, b, root)
    try:
        proto = _run_exporter(root, [job], [""])
    except Exception as e:
        raise export_failure(e, prog, b) from None
    return _save(proto, job, root, path)


def export_blocks(
    prog: Program,
    blocks: list[ir.Block],
    root: torch.nn.Module,
    paths: dict[int, Path],
    started: Callable[[list[int]], None] = lambda ks: None,
) -> dict[int, BlockGraph]:
    """Export several blocks in one exporter call, then cut its graph into one graph per block:
    the exporter's fixed cost, most of a small block's, is paid once. When the batch fails or
    cannot be cut, each block is exported alone, so an error names its own block. `started` is
    told the blocks of each exporter call before it runs."""
    from .export import cut_graph

    jobs = [_job(prog, b, root) for b in blocks]
    if len(jobs) > 1:
        prefixes = [f"b{i}_" for i in range(len(jobs))]
        started([j.block.id for j in jobs])
        try:
            whole = _run_exporter(root, jobs, prefixes)
            parts = [
                cut_graph(
                    whole,
                    {f"{p}in{i}": f"in{i}" for i in range(len(j.flat))},
                    {f"{p}out{i}": f"out{i}" for i in range(len(j.outs))},
                )
                for j, p in zip(jobs, prefixes)
            ]
        except Exception:  # noqa: BLE001 - each block alone says what is wrong
            parts = None
        if parts is not None:
            return {j.block.id: _save(g, j, root, paths[j.block.id]) for j, g in zip(jobs, parts)}
    out = {}
    for j in jobs:
        started([j.block.id])
        try:
            proto = _run_exporter(root, [j], [""])
        except Exception as e:
            raise export_failure(e, prog, j.block) from None
        out[j.block.id] = _save(proto, j, root, paths[j.block.id])
    return out


def export_failure(e: BaseException, prog: Program, b: ir.Block) -> Exception:
    """The exporter's error as a build error at the innermost user line that it came from."""
    from .export import first_line, user_frame

    where = user_frame(e)
    if not where:
        line = _user_line(e, prog.filename) or getattr(b.body[0], "lineno", "?")
        where = f"{prog.filename}:{line}: "
    text = first_line(e)
    if "data-dependent" in text or "DataDependent" in text:
        return Unsupported(
            f"{where}a value computed from tensor data is used where the "
            f"graph needs a fixed number (a shape or a size); it cannot be compiled ({text})"
        )
    return BuildError(f"{where}exporting a block failed: {text}")


def _user_line(e: BaseException, filename: str) -> int | None:
    """The last line of the user's file in the exception's traceback chain."""
    line = None
    while e is not None:
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        e = e.__cause__ or e.__context__
    return line


def block_key(prog: Program, b: ir.Block) -> str:
    """Blocks with the same code over the same input shapes and dtypes, using equal constants,
    export to the same graph."""
    shapes = sorted(prog.examples.get(b.id, {}))
    dtypes = [
        str(x.dtype) for ex in prog.examples.get(b.id, {}).values() for x in pytree.tree_leaves(ex)
    ]
    used = sorted({int(i) for i in re.findall(r"\b__c\[(\d+)\]", block_source(b))})
    consts = [repr(prog.consts[i]) for i in used]
    text = "\n".join(
        [block_source(b), repr(b.inputs), repr(b.outputs), repr(shapes), repr(dtypes), *consts]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def graph_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def program_ir(prog: Program, graph_of: dict[int, str]) -> ir.Program:
    """The host program as the runtime runs it: values flattened to their tensor leaves
    (`name#i`), each block with a graph naming it; no Python."""
    blocks = {}
    for k in sorted(prog.blocks):
        b = prog.blocks[k]
        t = b.term
        if isinstance(t, ir.Branch):
            t = ir.Branch(leaves_of(prog, t.cond)[0], t.then, t.orelse)
        elif isinstance(t, ir.Switch):
            t = ir.Switch(leaves_of(prog, t.index)[0], t.cases)
        elif isinstance(t, ir.Return):
            t = ir.Return(tuple(x for n in t.values for x in leaves_of(prog, n)))
        calls = k in prog.fns
        blocks[k] = ir.Block(
            k,
            t,
            graph=graph_of.get(k),
            inputs=[x for n in b.inputs for x in leaves_of(prog, n)] if calls else [],
            outputs=[x for n in b.outputs for x in leaves_of(prog, n)] if calls else [],
            assign=dict(b.assign),
            moves=[
                (d, s)
                for dst, src in b.moves
                for d, s in zip(leaves_of(prog, dst), leaves_of(prog, src))
            ],
            lists=[_list_op(prog, op) for op in b.lists],
            host_checks=[
                c if c.value is None else replace(c, value=leaves_of(prog, c.value)[0])
                for c in b.host_checks
            ],
            loop_header=b.loop_header,
            source=block_source(b) if calls else None,
        )
    counts = {len(b.term.values) for b in blocks.values() if isinstance(b.term, ir.Return)}
    return ir.Program(
        entry=prog.entry,
        inputs=list(prog.inputs),
        blocks=blocks,
        max_iterations=prog.max_iterations,
        decisions={leaves_of(prog, n)[0]: d for n, d in prog.decisions.items()},
        dropped=list(prog.dropped),
        # host lists in a return, or returns of different structures (`x` or `(x, aux)`)
        outputs_vary=prog.outputs_vary or len(counts) > 1,
    )


def _list_op(prog: Program, op: ir.ListOp) -> ir.ListOp:
    """A list op as the runtime runs it: every item it takes must be one tensor."""
    for n in op.uses():
        if len(leaves_of(prog, n)) != 1:
            raise Unsupported(
                f"{op.where}: an item of a list whose length depends on a data-dependent path "
                f"is {_describe(prog.specs[n])}; only tensors can be (stack them first)"
            )
    return op
