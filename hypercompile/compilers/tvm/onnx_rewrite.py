"""ONNX-to-ONNX rewrites for back ends whose importers lack an operator.

TVM's Relax ONNX importer has no `LSTM`: `lstm_to_cells` unrolls each LSTM over its (static)
sequence length into MatMul/Sigmoid/Tanh cells, so SkipNet's RNN gate compiles on TVM. ONNX
Runtime keeps the fused operator; only the TVM copy of the graph is rewritten."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ...errors import BuildError


def lstm_to_cells(model: Any) -> int:
    """Replace every LSTM node of `model.graph` by its unrolled cells; returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    if not any(n.op_type == "LSTM" for n in graph.node):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    fresh = (f"hc_lstm_{i}" for i in itertools.count())
    consts: list[Any] = []

    def const(values: list[int]) -> str:
        name = next(fresh)
        consts.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    new_nodes, rewritten = [], 0
    for node in graph.node:
        if node.op_type != "LSTM":
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        hidden = int(attrs.get("hidden_size", 0))
        direction = attrs.get("direction", b"forward")
        unsupported = [
            k for k in ("activations", "clip", "activation_alpha", "activation_beta") if k in attrs
        ]
        ins = list(node.input) + [""] * (8 - len(node.input))
        if (
            direction not in (b"forward", "forward")
            or attrs.get("layout", 0) != 0
            or attrs.get("input_forget", 0) != 0
            or unsupported
            or ins[4]  # sequence_lens
            or ins[7]  # peepholes
            or not hidden
        ):
            raise BuildError(
                "TVM: LSTM with reverse/bidirectional direction, batch-first layout, "
                "sequence_lens, peepholes, clip or custom activations is not supported"
            )
        seq = (shapes.get(ins[0]) or [None])[0]
        if not seq:
            raise BuildError("TVM: an LSTM's sequence length must be static to unroll it")

        def emit(op: str, inputs: list[str], **kw: Any) -> str:
            out = next(fresh)
            new_nodes.append(helper.make_node(op, inputs, [out], **kw))
            return out

        axis0 = const([0])
        w_t = emit("Transpose", [emit("Squeeze", [ins[1], axis0])], perm=[1, 0])
        r_t = emit("Transpose", [emit("Squeeze", [ins[2], axis0])], perm=[1, 0])
        bias = None
        if ins[3]:
            b = emit("Squeeze", [ins[3], axis0])
            wb = emit("Slice", [b, const([0]), const([4 * hidden]), axis0])
            rb = emit("Slice", [b, const([4 * hidden]), const([8 * hidden]), axis0])
            bias = emit("Add", [wb, rb])
        # a missing initial state is zero: its terms are left out of the first cell
        h = emit("Squeeze", [ins[5], axis0]) if ins[5] else None
        c = emit("Squeeze", [ins[6], axis0]) if ins[6] else None
        ys = []
        for t in range(seq):
            step = emit("Slice", [ins[0], const([t]), const([t + 1]), axis0])
            gates = emit("MatMul", [emit("Squeeze", [step, axis0]), w_t])
            if h is not None:
                gates = emit("Add", [gates, emit("MatMul", [h, r_t])])
            if bias:
                gates = emit("Add", [gates, bias])
            parts = [
                emit("Slice", [gates, const([k * hidden]), const([(k + 1) * hidden]), const([1])])
                for k in range(4)
            ]
            i_g, o_g, f_g = (emit("Sigmoid", [p]) for p in parts[:3])
            cand = emit("Tanh", [parts[3]])
            new_c = emit("Mul", [i_g, cand])
            c = new_c if c is None else emit("Add", [emit("Mul", [f_g, c]), new_c])
            h = emit("Mul", [o_g, emit("Tanh", [c])])
            ys.append(emit("Unsqueeze", [h, axis0]))
        outs = list(node.output) + [""] * (3 - len(node.output))
        if outs[0]:
            y = emit("Concat", ys, axis=0) if len(ys) > 1 else ys[0]
            new_nodes.append(helper.make_node("Unsqueeze", [y, const([1])], [outs[0]]))
        if outs[1]:
            new_nodes.append(helper.make_node("Unsqueeze", [h, axis0], [outs[1]]))
        if outs[2]:
            new_nodes.append(helper.make_node("Unsqueeze", [c, axis0], [outs[2]]))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(consts)
    return rewritten
