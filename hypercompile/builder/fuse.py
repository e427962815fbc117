"""Fewer graph calls on a program's paths: a block whose graph runs before a branch it does not
decide (the condition was computed earlier: BlockDrop's policy decides every skip up front) is
split by that branch. The host decides first, and each side runs one graph: the block's graph
followed by the side's own, composed in ONNX from the two exported graphs, instead of two calls.

    before:  B: run gB; moves; branch c -> T | E        T: run gT; ...      E: moves; ...
    after:   B: branch c -> B+T | B+E                   B+T: run gB.gT; ... B+E: run gB; moves; ...

Only pairs: a composed block is not composed again, so a program gains at most one graph per
block. The composition is exact (the same nodes, wired by name), and the bundle's parity check
runs the composed program like any other. Blocks whose graphs hold subgraphs or functions, loop
headers and host work between the two graphs (lists, checks) are left as they are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core import ir
from ..core.manifest import Graph

Source = tuple[str, Any]  # ("in", env name) | ("b", output index) | ("s", output index)
# (path of the composed ONNX file, weights, input specs, output specs) -> graph id
AddGraph = Callable[[Path, tuple[list[str], list[dict], list[dict]]], str]


def fuse_known_branches(host: ir.Program, graphs: dict[str, Graph], tmp: Path, add: AddGraph):
    """`host` with every block that qualifies split by its branch (see the module docstring);
    composed graphs are written under `tmp` and registered through `add`."""
    import onnx

    blocks = dict(host.blocks)
    headers = host.find_loop_headers()
    fused: set[int] = set()
    protos: dict[str, Any] = {}
    done: dict[tuple, str] = {}  # (gB, gS, wiring) -> composed graph id
    next_id = max(blocks) + 1

    def proto(gid: str) -> Any:
        if gid not in protos:
            protos[gid] = onnx.load(str(tmp / graphs[gid].path), load_external_data=False)
        return protos[gid]

    for b in sorted(blocks):
        head = blocks[b]
        t = head.term
        if not _fusable_head(head, headers, fused):
            continue
        assert isinstance(t, ir.Branch)
        sides = [blocks[s] for s in (t.then, t.orelse)]
        if any(s.id == b or s.id in headers or s.host_checks and s.graph for s in sides):
            continue
        if all(s.graph is None for s in sides):
            continue  # one call either way
        made = []
        for side in sides:
            block = _fuse(head, side, next_id, graphs, proto, tmp, add, done)
            if block is None:
                break
            made.append(block)
            next_id += 1
        if len(made) != 2:
            continue
        for block in made:
            blocks[block.id] = block
            fused.add(block.id)
        blocks[b] = ir.Block(
            b, ir.Branch(t.cond, made[0].id, made[1].id), loop_header=head.loop_header
        )
    out = replace(host, blocks=blocks)
    keep = set(out.reachable())
    out.blocks = {k: v for k, v in blocks.items() if k in keep}
    return out


def _fusable_head(b: ir.Block, headers: set[int], fused: set[int]) -> bool:
    """A block running a graph, then only moves, then a branch on a value it does not set."""
    if b.graph is None or b.id in fused or not isinstance(b.term, ir.Branch):
        return False
    if b.assign or b.lists or b.host_checks:
        return False
    return b.term.cond not in set(b.outputs) | {d for d, _ in b.moves}


def _fuse(head, side, new_id, graphs, proto, tmp, add, done) -> ir.Block | None:
    """`head` then `side` as one block (`new_id`), or None when they cannot be composed."""
    written: dict[str, Source] = {}

    def source(n: str) -> Source:
        return written.get(n, ("in", n))

    for i, n in enumerate(head.outputs):
        written[n] = ("b", i)
    for d, s in head.moves:
        written[d] = source(s)
    tail = dict(
        assign=dict(side.assign),
        lists=list(side.lists),
        host_checks=list(side.host_checks),
        term=side.term,
        source="\n".join(x for x in (head.source, side.source) if x) or None,
    )
    if side.graph is None:  # head's graph, then head's moves and side's
        moved = {x for m in head.moves for x in m}
        if moved & set(side.assign):
            return None  # side's literals are set before the moves would run
        return ir.Block(
            new_id,
            graph=head.graph,
            inputs=list(head.inputs),
            outputs=list(head.outputs),
            moves=list(head.moves) + list(side.moves),
            **tail,
        )
    side_in = [source(n) for n in side.inputs]
    for j, n in enumerate(side.outputs):
        written[n] = ("s", j)
    outs = [n for n, s in written.items() if s != ("in", n)]
    ins = list(dict.fromkeys(head.inputs))
    ins += [s[1] for s in (*side_in, *(written[n] for n in outs)) if s[0] == "in"]
    ins = list(dict.fromkeys(ins))
    key = (
        head.graph,
        side.graph,
        tuple(head.inputs),
        tuple(side_in),
        tuple(written[n] for n in outs),
        tuple(ins),
    )
    if key not in done:
        made = _compose(
            proto(head.graph),
            proto(side.graph),
            graphs[head.graph],
            graphs[side.graph],
            [ins.index(n) for n in head.inputs],
            [(s[0], ins.index(s[1]) if s[0] == "in" else s[1]) for s in side_in],
            [
                (
                    written[n][0],
                    ins.index(written[n][1]) if written[n][0] == "in" else written[n][1],
                )
                for n in outs
            ],
            len(ins),
        )
        if made is None:
            return None
        path = tmp / "graphs" / f".fused{new_id}.onnx"
        import onnx

        onnx.save(made[0], str(path))
        done[key] = add(path, made[1])
    return ir.Block(
        new_id, graph=done[key], inputs=ins, outputs=outs, moves=list(side.moves), **tail
    )


def _compose(pb, ps, gb: Graph, gs: Graph, b_in: list[int], s_in: list[Source], outs, n_in):
    """One ONNX graph running `pb` then `ps`: its inputs `in0..`, `pb`'s inputs taken from
    `b_in` (indices), `ps`'s from `s_in` sources, its outputs `out0..` from `outs` sources.
    Weights keep their names (bound per variant by name, so one shared by both is one); every
    other value is renamed apart. None when either graph holds a subgraph or a function."""
    from onnx import helper

    for p in (pb, ps):
        if p.functions or p.graph.sparse_initializer:
            return None
        for node in p.graph.node:
            if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
                return None
    opsets: dict[str, int] = {}
    for p in (pb, ps):
        for o in p.opset_import:
            if opsets.setdefault(o.domain, o.version) != o.version:
                return None
    specs_in: list[dict | None] = [None] * n_in
    weights = list(dict.fromkeys([*gb.weights, *gs.weights]))
    nodes, inits, seen = [], [], set()

    def take(p, g: Graph, prefix: str, inputs: list[str]) -> dict[str, str]:
        names = {vi.name: new for vi, new in zip(p.graph.input, inputs)}
        for t in p.graph.initializer:
            names[t.name] = t.name if t.name in g.weights else prefix + t.name
            if names[t.name] not in seen:
                seen.add(names[t.name])
                t2 = type(t)()
                t2.CopyFrom(t)
                t2.name = names[t.name]
                inits.append(t2)
        for node in p.graph.node:
            n2 = type(node)()
            n2.CopyFrom(node)
            n2.name = prefix + node.name
            n2.input[:] = [names.get(x, prefix + x) if x else x for x in node.input]
            for x in node.output:
                names.setdefault(x, prefix + x)
            n2.output[:] = [names[x] if x else x for x in node.output]
            nodes.append(n2)
        return names

    def spec(g: Graph, io: str, i: int, name: str) -> dict:
        s = (g.inputs if io == "in" else g.outputs)[i]
        return {"name": name, "dtype": s.dtype, "shape": list(s.shape)}

    for i, k in enumerate(b_in):
        specs_in[k] = spec(gb, "in", i, f"in{k}")
    b_names = take(pb, gb, "a.", [f"in{k}" for k in b_in])
    b_out = [b_names.get(vi.name, vi.name) for vi in pb.graph.output]
    s_inputs = []
    for j, (kind, k) in enumerate(s_in):
        if kind == "in":
            specs_in[k] = specs_in[k] or spec(gs, "in", j, f"in{k}")
            s_inputs.append(f"in{k}")
        else:
            s_inputs.append(b_out[k])
    s_names = take(ps, gs, "b.", s_inputs)
    s_out = [s_names.get(vi.name, vi.name) for vi in ps.graph.output]
    out_values, specs_out = [], []
    for m, (kind, k) in enumerate(outs):
        if kind == "in":
            if specs_in[k] is None:
                return None  # an input only passed through: its spec is unknown
            value, s = f"in{k}", dict(specs_in[k])
        elif kind == "b":
            value, s = b_out[k], spec(gb, "out", k, "")
        else:
            value, s = s_out[k], spec(gs, "out", k, "")
        s["name"] = f"out{m}"
        nodes.append(helper.make_node("Identity", [value], [s["name"]], name=f"out.{m}"))
        out_values.append(s)
        specs_out.append(s)
    if any(s is None for s in specs_in):
        return None
    graph = helper.make_graph(
        nodes,
        "fused",
        [_value_info(s) for s in specs_in],  # type: ignore[arg-type]
        [_value_info(s) for s in specs_out],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        ir_version=max(pb.ir_version, ps.ir_version),
    )
    return model, (weights, specs_in, specs_out)


def _value_info(s: dict) -> Any:
    import numpy as np
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(s["dtype"]))
    shape = [d if isinstance(d, int) else None for d in s["shape"]]
    return helper.make_tensor_value_info(s["name"], elem, shape)
