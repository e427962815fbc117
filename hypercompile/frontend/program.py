"""From the splitter's blocks to a host program: clean the control-flow graph, compute liveness,
generate one Python function per block, run them eagerly (probe) to learn value structures and
example inputs, and export every block with statements to its own ONNX subgraph."""

from __future__ import annotations

import ast
import copy
import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..errors import BuildError
from ..runtime.program import source_coverage  # noqa: F401  (re-exported for the builder)
from .splitter import Lowerer, Unsupported

MAX_ITERATIONS = 10_000
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


def _hc_get(root: torch.nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


HELPERS = {
    f.__name__: f
    for f in (_hc_bool, _hc_and, _hc_or, _hc_not, _hc_item, _hc_int, _hc_float, _hc_get)
}
HELPERS["_hc_bool_"] = _hc_bool


# -- the program ---------------------------------------------------------------------------------
@dataclass
class PBlock:
    id: int
    stmts: list[ast.stmt]
    assign: dict[str, Any]
    moves: list[tuple[str, str]] = field(default_factory=list)
    term: tuple = ()
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    fn: Callable | None = None


@dataclass
class Program:
    blocks: dict[int, PBlock]
    entry: int
    inputs: list[str]
    consts: list[Any]
    globals: dict[str, Any]
    filename: str
    loop_headers: set[int] = field(default_factory=set)
    leaves: dict[str, list[str]] = field(default_factory=dict)  # name -> flat env names
    specs: dict[str, Any] = field(default_factory=dict)  # name -> pytree spec
    examples: dict[int, dict[str, list[Any]]] = field(default_factory=dict)  # by shapes
    output_spec: Any = None
    decisions: dict[str, tuple[int, str]] = field(default_factory=dict)


def split_module(module: torch.nn.Module) -> Program | None:
    """The host program for `module.forward`, or None when it has no data-dependent control
    flow (then the whole module exports as one static graph)."""
    lw = Lowerer(module)
    entry, inputs = lw.lower_forward()
    prog = Program(
        {b.id: PBlock(b.id, b.stmts, dict(b.assign), term=b.term) for b in lw.blocks},
        entry.id,
        inputs,
        lw.consts,
        lw.globals,
        sys.modules[type(module).__module__].__file__ or "<forward>",
        decisions=lw.decisions,
    )
    _clean(prog)
    if len(prog.blocks) == 1 and prog.blocks[prog.entry].term[0] == "return":
        return None
    _finish(prog)
    return prog


def _succ(term: tuple) -> list[int]:
    if term[0] == "goto":
        return [term[1]]
    if term[0] == "branch":
        return [term[2], term[3]]
    if term[0] == "switch":
        return list(term[2])
    return []


def _retarget(term: tuple, old: int, new: int) -> tuple:
    def r(b: int) -> int:
        return new if b == old else b

    if term[0] == "goto":
        return ("goto", r(term[1]))
    if term[0] == "branch":
        return ("branch", term[1], r(term[2]), r(term[3]))
    if term[0] == "switch":
        return ("switch", term[1], [r(b) for b in term[2]])
    return term


def _preds(prog: Program) -> dict[int, list[int]]:
    preds: dict[int, list[int]] = {b: [] for b in prog.blocks}
    for b in prog.blocks.values():
        for s in _succ(b.term):
            preds[s].append(b.id)
    return preds


def _reachable(prog: Program) -> None:
    seen, stack = set(), [prog.entry]
    while stack:
        b = stack.pop()
        if b in seen:
            continue
        seen.add(b)
        stack.extend(_succ(prog.blocks[b].term))
    prog.blocks = {k: v for k, v in prog.blocks.items() if k in seen}


def _empty(b: PBlock) -> bool:
    return not b.stmts and not b.assign and not b.moves


def _clean(prog: Program) -> None:
    """Thread jumps through empty blocks and merge straight-line chains, to a fixed point."""
    for b in prog.blocks.values():
        if b.term is None:
            raise Unsupported("internal: a block has no successor")
    changed = True
    while changed:
        changed = False
        _reachable(prog)
        for b in list(prog.blocks.values()):
            for s in _succ(b.term):
                t = prog.blocks[s]
                if t.id != b.id and _empty(t) and t.term[0] == "goto" and t.term[1] != t.id:
                    b.term = _retarget(b.term, s, t.term[1])
                    changed = True
        if prog.entry in prog.blocks:
            e = prog.blocks[prog.entry]
            if _empty(e) and e.term[0] == "goto" and e.term[1] != e.id:
                prog.entry = e.term[1]
                changed = True
        preds = _preds(prog)
        for b in list(prog.blocks.values()):
            if b.id not in prog.blocks or b.term[0] != "goto":
                continue
            s = b.term[1]
            t = prog.blocks.get(s)
            if t is None or t.id == b.id or preds[s] != [b.id] or s == prog.entry:
                continue
            if b.assign or b.moves:
                if t.stmts:
                    continue
                # host-only tail: carry t's host work after b's
                for k, v in t.assign.items():
                    b.assign[k] = v
                b.moves += t.moves
            else:
                b.stmts = b.stmts + t.stmts
                b.assign = dict(t.assign)
                b.moves = list(t.moves)
            b.term = t.term
            del prog.blocks[s]
            changed = True
            break


# -- liveness --------------------------------------------------------------------------------------
def _stmt_uses_defs(stmt: ast.stmt, names: set[str]) -> tuple[set[str], set[str]]:
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
    for n in ast.walk(stmt):  # x.add_(y) redefines x
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr.endswith("_")
            and isinstance(n.func.value, ast.Name)
        ):
            uses.add(n.func.value.id)
            defs.add(n.func.value.id)
    return uses, defs


def _term_uses(term: tuple) -> set[str]:
    if term[0] in ("branch", "switch"):
        return {term[1]}
    if term[0] == "return":
        return {term[1]}
    return set()


def _program_names(prog: Program) -> set[str]:
    names = set(prog.inputs)
    for b in prog.blocks.values():
        names |= set(b.assign) | {m[0] for m in b.moves}
        for s in b.stmts:
            names |= {
                n.id
                for n in ast.walk(s)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
    return names


def _block_use_def(b: PBlock, names: set[str]) -> tuple[set[str], set[str]]:
    uses: set[str] = set()
    defs: set[str] = set()
    for s in b.stmts:
        u, d = _stmt_uses_defs(s, names)
        uses |= u - defs
        defs |= d
    for dst, src in b.moves:
        if src not in defs and src not in b.assign:
            uses.add(src)
        defs.add(dst)
    defs |= set(b.assign)
    uses |= _term_uses(b.term) - defs
    return uses, defs


def _liveness(prog: Program) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    names = _program_names(prog)
    ud = {k: _block_use_def(b, names) for k, b in prog.blocks.items()}
    live_in = {k: set() for k in prog.blocks}
    live_out = {k: set() for k in prog.blocks}
    changed = True
    while changed:
        changed = False
        for k, b in prog.blocks.items():
            out = set().union(*(live_in[s] for s in _succ(b.term))) if _succ(b.term) else set()
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
        live = set(live_out[k]) | _term_uses(b.term)
        for dst, src in reversed(b.moves):
            live.discard(dst)
            live.add(src)
        live -= set(b.assign)
        kept = []
        for s in reversed(b.stmts):
            u, d = _stmt_uses_defs(s, names)
            if isinstance(s, (ast.Assign, ast.AugAssign)) and d and not (d & live):
                continue
            live = (live - d) | u
            kept.append(s)
        b.stmts = kept[::-1]
        _copies_to_moves(b)


def _copies_to_moves(b: PBlock) -> None:
    """`a = b` at the end of a block's graph is a host move, not a graph output."""
    while b.stmts:
        s = b.stmts[-1]
        if not (
            isinstance(s, ast.Assign)
            and len(s.targets) == 1
            and isinstance(s.targets[0], ast.Name)
            and isinstance(s.value, ast.Name)
        ):
            break
        b.moves.insert(0, (s.targets[0].id, s.value.id))
        b.stmts.pop()


def _tail_duplicate(prog: Program) -> None:
    """A small block that ends in a branch, switch or return and is reached by plain jumps is
    copied into those predecessors: one subgraph call instead of two on each path."""
    preds = _preds(prog)
    for b in list(prog.blocks.values()):
        if b.term[0] == "goto" or b.assign or b.moves or len(b.stmts) > _TAIL_DUP_MAX_STMTS:
            continue
        if b.id in prog.loop_headers and not b.stmts:
            continue
        for p in preds[b.id]:
            pb = prog.blocks[p]
            if pb.term == ("goto", b.id) and not pb.assign and not pb.moves and p != b.id:
                pb.stmts = pb.stmts + [copy.deepcopy(s) for s in b.stmts]
                pb.term = b.term
    _reachable(prog)


def _loop_headers(prog: Program) -> set[int]:
    headers, state = set(), {}

    def dfs(b: int) -> None:
        state[b] = 1
        for s in _succ(prog.blocks[b].term):
            if state.get(s) == 1:
                headers.add(s)
            elif s not in state:
                dfs(s)
        state[b] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * len(prog.blocks) + 1000))
    dfs(prog.entry)
    return headers


def _finish(prog: Program) -> None:
    prog.loop_headers = _loop_headers(prog)
    _eliminate_dead(prog)
    _tail_duplicate(prog)
    _eliminate_dead(prog)
    _clean(prog)
    prog.loop_headers = _loop_headers(prog)
    live_in, live_out = _liveness(prog)
    names = _program_names(prog)
    for k, b in prog.blocks.items():
        uses, defs = set(), set()
        for s in b.stmts:
            u, d = _stmt_uses_defs(s, names)
            uses |= u - defs
            defs |= d
        needed_after = set(live_out[k]) | _term_uses(b.term) | {src for _, src in b.moves}
        b.inputs = sorted(uses)
        b.outputs = sorted(defs & needed_after)
        b.fn = _compile_block(b, prog) if b.stmts else None


def _compile_block(b: PBlock, prog: Program) -> Callable:
    args = [ast.arg("__root")] + [ast.arg(n) for n in b.inputs]
    ret = ast.Return(ast.Tuple([ast.Name(n, ast.Load()) for n in b.outputs], ast.Load()))
    kw: dict[str, Any] = {}
    if sys.version_info >= (3, 12):
        kw["type_params"] = []
    fn = ast.FunctionDef(
        name=f"block{b.id}",
        args=ast.arguments(posonlyargs=[], args=args, kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[*b.stmts, ret],
        decorator_list=[],
        returns=None,
        **kw,
    )
    ast.copy_location(fn, b.stmts[0])
    mod = ast.fix_missing_locations(ast.Module([fn], []))
    scope = dict(prog.globals) | HELPERS | {"__c": prog.consts}
    exec(compile(mod, prog.filename, "exec"), scope)  # noqa: S102 - the user's own code
    return scope[f"block{b.id}"]


def block_source(b: PBlock) -> str:
    return "\n".join(ast.unparse(s) for s in b.stmts)


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


def host_literal(v: Any) -> torch.Tensor:
    return _as_value(v)


@dataclass
class Probe:
    """Runs a program eagerly over named values, recording what each block first received."""

    prog: Program
    root: torch.nn.Module
    reached: set[int] = field(default_factory=set)
    decisions: dict[int, dict[str, Any]] = field(default_factory=dict)  # last env per decision
    counts: dict[int, dict[str, int]] = field(default_factory=dict)

    def run(self, env: dict[str, Any], start: int | None = None, record: bool = True) -> Any:
        prog = self.prog
        b = prog.entry if start is None else start
        visits = 0
        while True:
            blk = prog.blocks[b]
            if record:
                self.reached.add(b)
                if blk.fn is not None:
                    seen = prog.examples.setdefault(b, {})
                    args = [env[n] for n in blk.inputs]
                    sig = str([tuple(x.shape) for x in pytree.tree_leaves(args)])
                    if sig not in seen and len(seen) < 4:
                        seen[sig] = [pytree.tree_map(_clone, a) for a in args]
            if blk.fn is not None:
                outs = blk.fn(self.root, *[env[n] for n in blk.inputs])
                for n, v in zip(blk.outputs, outs):
                    env[n] = pytree.tree_map(_as_value, v)
                    self._note_spec(n, env[n])
            for n, v in blk.assign.items():
                env[n] = host_literal(v)
                self._note_spec(n, env[n])
            for dst, src in blk.moves:
                env[dst] = env[src]
                self._note_spec(dst, env[dst])
            kind = blk.term[0]
            if kind == "return":
                return env[blk.term[1]]
            if b in prog.loop_headers:
                visits += 1
                if visits > MAX_ITERATIONS:
                    raise BuildError(f"program exceeded {MAX_ITERATIONS} loop iterations")
            if kind == "goto":
                b = blk.term[1]
                continue
            if record:
                self.decisions[b] = dict(env)
            if kind == "branch":
                taken = bool(env[blk.term[1]])
                c = self.counts.setdefault(b, {"then": 0, "else": 0})
                c["then" if taken else "else"] += 1
                b = blk.term[2] if taken else blk.term[3]
            else:
                cases = blk.term[2]
                i = int(env[blk.term[1]])
                if not -len(cases) <= i < len(cases):
                    raise IndexError(f"index {i} out of range for {len(cases)} alternatives")
                i %= len(cases)
                c = self.counts.setdefault(b, {})
                c[str(i)] = c.get(str(i), 0) + 1
                b = cases[i]

    def _note_spec(self, name: str, value: Any) -> None:
        leaves, spec = pytree.tree_flatten(value)
        if not all(isinstance(x, torch.Tensor) for x in leaves):
            bad = next(type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor))
            raise Unsupported(
                f"value `{name}` holds a {bad}, which cannot cross between "
                "subgraphs (only tensors, numbers and tuples/lists of them can)"
            )
        old = self.prog.specs.get(name)
        if old is not None and old != spec:
            raise Unsupported(f"value `{name}` changes structure between paths ({old} vs {spec})")
        self.prog.specs[name] = spec

    def explore(self) -> None:
        """Reach blocks that no input reached by forcing the other side of recorded decisions,
        so every block has example inputs to export with."""
        pending = True
        while pending:
            pending = False
            missing = {k for k, b in self.prog.blocks.items() if b.fn is not None} - self.reached
            if not missing:
                return
            for b, env in list(self.decisions.items()):
                for s in _succ(self.prog.blocks[b].term):
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


def leaves_of(prog: Program, name: str) -> list[str]:
    spec = prog.specs.get(name)
    if spec is None or spec.is_leaf():
        return [name]
    return [f"{name}#{i}" for i in range(spec.num_leaves)]


def export_block(
    prog: Program, b: PBlock, root: torch.nn.Module, path: Path
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Export block `b` to `path`; returns (weight names, input specs, output specs)."""
    import onnx

    from .export import OPSET, _first_line, _quiet, simplify, stub_weights

    examples = list(prog.examples.get(b.id, {}).values())
    if not examples:
        line = getattr(b.stmts[0], "lineno", "?")
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
    module = BlockModule(root, b.fn, in_specs, len(b.outputs))
    with torch.no_grad():
        outs = module(*flat)
    in_names = [f"in{i}" for i in range(len(flat))]
    out_names = [f"out{i}" for i in range(len(outs))]
    try:
        with _quiet():
            proto = torch.onnx.export(
                module,
                tuple(flat),
                dynamo=True,
                input_names=in_names,
                output_names=out_names,
                optimize=False,
                opset_version=OPSET,
                verbose=False,
                dynamic_shapes=tuple(dynamic) if any(dynamic) else None,
            ).model_proto
    except Exception as e:
        line = _user_line(e, prog.filename) or getattr(b.stmts[0], "lineno", "?")
        text = _first_line(e)
        if "data-dependent" in text or "DataDependent" in text:
            raise Unsupported(
                f"{prog.filename}:{line}: a value computed from tensor data is used where the "
                f"graph needs a fixed number (a shape or a size); it cannot be compiled ({text})"
            ) from None
        raise BuildError(f"{prog.filename}:{line}: exporting a block failed: {text}") from None
    weights = stub_weights(proto, root.state_dict(keep_vars=True), prefix="root.")
    proto = simplify(proto, weights)
    for node in proto.graph.node:  # source locations would make identical blocks differ
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.metadata_props[:]
    proto.graph.doc_string = ""
    onnx.save(proto, str(path))
    ins = [
        {
            "name": n,
            "dtype": str(x.numpy().dtype),
            "shape": [None if d in dyn else s for d, s in enumerate(x.shape)],
        }
        for n, x, dyn in zip(in_names, flat, dynamic)
    ]
    outs_spec = [
        {"name": n, "dtype": str(o.detach().numpy().dtype), "shape": list(o.shape)}
        for n, o in zip(out_names, outs)
    ]
    return weights, ins, outs_spec


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


def block_key(prog: Program, b: PBlock) -> str:
    """Blocks with the same code over the same input shapes export to the same graph."""
    shapes = sorted(prog.examples.get(b.id, {}))
    text = "\n".join([block_source(b), repr(b.inputs), repr(b.outputs), repr(shapes)])
    return hashlib.sha256(text.encode()).hexdigest()


def graph_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def program_entry(prog: Program, graph_of: dict[int, str], coverage: dict | None = None) -> dict:
    """The host program as manifest data (no Python)."""
    blocks = []
    for k in sorted(prog.blocks):
        b = prog.blocks[k]
        term = b.term
        if term[0] == "goto":
            nxt: dict[str, Any] = {"goto": term[1]}
        elif term[0] == "branch":
            nxt = {"branch": leaves_of(prog, term[1])[0], "then": term[2], "else": term[3]}
        elif term[0] == "switch":
            nxt = {"switch": leaves_of(prog, term[1])[0], "cases": list(term[2])}
        else:
            nxt = {"return": leaves_of(prog, term[1])}
        moves = [
            [d, s]
            for dst, src in b.moves
            for d, s in zip(leaves_of(prog, dst), leaves_of(prog, src))
        ]
        assign = {}
        for n, v in b.assign.items():
            arr = host_literal(v).numpy()
            assign[n] = {"value": arr.item(), "dtype": str(arr.dtype)}
        entry = {
            "id": k,
            "graph": graph_of.get(k),
            "inputs": [x for n in b.inputs for x in leaves_of(prog, n)] if b.fn else [],
            "outputs": [x for n in b.outputs for x in leaves_of(prog, n)] if b.fn else [],
            "assign": assign,
            "moves": moves,
            "next": nxt,
        }
        if k in prog.loop_headers:
            entry["loop_header"] = True
        if b.fn is not None:
            entry["source"] = block_source(b)
        blocks.append(entry)
    return {
        "entry": prog.entry,
        "inputs": list(prog.inputs),
        "blocks": blocks,
        "max_iterations": MAX_ITERATIONS,
        "decisions": {
            leaves_of(prog, n)[0]: {"line": line, "source": src}
            for n, (line, src) in prog.decisions.items()
        },
        "coverage": coverage or {},
    }


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy()
